//! DAC object changes on real files: owners and modes as the plan says, originals recorded
//! first, exactly restored by restore_all, shared objects kept until their last user stops,
//! nothing left changed when set_all fails midway.

mod dac_support;

use std::path::Path;

use dac_support::*;
use svirt_domain::{Access, DacAction, ResourceKind, Sharing};
use svirt_drivers::SecurityDriver;

const SHARED_GID: u32 = 600_100;

/// The ids of every test here.
const FIRST_ID: u32 = 600_000;
const LAST_ID: u32 = 600_050;

fn file(p: &Path, mode: u32) {
    std::fs::write(p, b"data").expect("write");
    chmod(p, mode);
}

#[test]
fn dac_set_and_restore_exactly() {
    let Some((dir, _acc, d)) = dac_setup(FIRST_ID, LAST_ID, Some(SHARED_GID)) else {
        return;
    };
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    let private = data.join("private.img");
    let public = data.join("public.img");
    let shared = data.join("shared.img");
    let iso = data.join("cd.iso");
    let tree = data.join("share");
    file(&private, 0o4755); // set-uid bit too: private tightening must drop it
    file(&public, 0o640);
    file(&shared, 0o600);
    file(&iso, 0o600);
    std::fs::create_dir_all(tree.join("sub")).expect("mkdir tree");
    chmod(&tree.join("sub"), 0o700);
    file(&tree.join("a"), 0o644);
    file(&tree.join("sub/b"), 0o600);
    std::os::unix::fs::symlink("/etc/shadow", tree.join("link")).expect("symlink");
    let p = plan(
        "restore-a",
        vec![
            disk(&private),
            res(
                &public,
                ResourceKind::DiskImage,
                Access::Rw,
                Sharing::Private,
                DacAction::OwnGuest { private: false },
            ),
            shared_disk(&shared),
            cdrom(&iso),
            private_tree(&tree),
        ],
    );
    let paths = [
        private.clone(),
        public.clone(),
        shared.clone(),
        iso.clone(),
        tree.clone(),
        tree.join("a"),
        tree.join("sub"),
        tree.join("sub/b"),
        tree.join("link"),
        Path::new("/etc/shadow").to_path_buf(),
    ];
    let before: Vec<_> = paths.iter().map(|p| owner_mode(p)).collect();

    let mut g = guest("restore-a");
    d.reserve(&p, &mut g).expect("reserve");
    let (uid, gid) = g.ids.expect("ids");
    d.set_all(&p, &g).expect("set_all");
    assert_eq!(
        owner_mode(&private),
        (uid, gid, 0o700),
        "private: owner only, set-uid gone"
    );
    assert_eq!(owner_mode(&public), (uid, gid, 0o640));
    let sg = owner_mode(&shared).1;
    assert!(
        (FIRST_ID..=LAST_ID).contains(&sg) && sg != uid,
        "shared: its own group {sg}"
    );
    assert_eq!(owner_mode(&shared), (0, sg, 0o660));
    // Read granted to the guest's uid alone: the mode's group bits show the ACL mask (r--),
    // "other" stays at nothing.
    assert_eq!(owner_mode(&iso), (0, 0, 0o640));
    let acl = get_acl(&iso).expect("an access ACL on the read-only image");
    assert!(
        acl[4..].chunks_exact(8).any(|e| {
            u16::from_le_bytes([e[0], e[1]]) == 0x02
                && u16::from_le_bytes([e[2], e[3]]) == 4
                && u32::from_le_bytes([e[4], e[5], e[6], e[7]]) == uid
        }),
        "user:{uid}:r-- in the ACL"
    );
    assert_eq!(owner_mode(&tree), (uid, gid, 0o700));
    assert_eq!(owner_mode(&tree.join("a")), (uid, gid, 0o600));
    assert_eq!(owner_mode(&tree.join("sub")), (uid, gid, 0o700));
    assert_eq!(owner_mode(&tree.join("sub/b")), (uid, gid, 0o600));
    // The symlink and what it points to are untouched.
    assert_eq!(owner_mode(&tree.join("link")), before[8]);
    assert_eq!(owner_mode(Path::new("/etc/shadow")), before[9]);

    let errors = d.restore_all(&p, &g);
    assert!(errors.is_empty(), "{errors:?}");
    let after: Vec<_> = paths.iter().map(|p| owner_mode(p)).collect();
    assert_eq!(before, after, "owners/modes not exactly restored");
    d.release(&g).expect("release");
}

#[test]
fn dac_shared_object_survives_until_its_last_user_stops() {
    let Some((dir, _acc, d)) = dac_setup(FIRST_ID, LAST_ID, Some(SHARED_GID)) else {
        return;
    };
    let shared = dir.path().join("shared.img");
    file(&shared, 0o600);
    let before = owner_mode(&shared);
    let (pa, pb) = (
        plan("sh-a", vec![shared_disk(&shared)]),
        plan("sh-b", vec![shared_disk(&shared)]),
    );
    let mut ga = guest("sh-a");
    let mut gb = guest("sh-b");
    d.reserve(&pa, &mut ga).expect("reserve a");
    d.reserve(&pb, &mut gb).expect("reserve b");
    d.set_all(&pa, &ga).expect("set a");
    d.set_all(&pb, &gb).expect("set b");
    let sg = owner_mode(&shared).1;
    assert!(
        (FIRST_ID..=LAST_ID).contains(&sg),
        "shared: its own group {sg}"
    );
    assert_eq!(owner_mode(&shared), (0, sg, 0o660));
    assert!(d.restore_all(&pa, &ga).is_empty());
    assert_eq!(owner_mode(&shared), (0, sg, 0o660), "b still uses it");
    assert!(d.restore_all(&pb, &gb).is_empty());
    assert_eq!(owner_mode(&shared), before);
}

#[test]
fn dac_failure_midway_leaves_everything_as_it_was() {
    let Some((dir, _acc, d)) = dac_setup(FIRST_ID, LAST_ID, None) else {
        return;
    };
    let first = dir.path().join("first.img");
    let shared = dir.path().join("shared.img");
    file(&first, 0o644);
    file(&shared, 0o644);
    let before = (owner_mode(&first), owner_mode(&shared));
    // A shared resource needs no configured group any more (its own is allocated): with
    // none configured, set and restore work.
    let p = plan("fail", vec![disk(&first), shared_disk(&shared)]);
    let mut g = guest("fail");
    d.reserve(&p, &mut g).expect("reserve");
    d.set_all(&p, &g)
        .expect("<shareable/> with zero configuration");
    assert!(d.restore_all(&p, &g).is_empty());
    assert_eq!((owner_mode(&first), owner_mode(&shared)), before);
    // A missing file fails too (ENOENT is fatal), after the first was changed.
    let p = plan(
        "fail",
        vec![disk(&first), disk(&dir.path().join("missing.img"))],
    );
    let e = d.set_all(&p, &g).expect_err("must fail");
    assert!(e.to_string().contains("missing.img"), "{e}");
    assert_eq!(owner_mode(&first), before.0);
    assert!(
        d.restore_all(&p, &g)
            .iter()
            .all(|e| e.to_string().contains("missing.img"))
    );
}

#[test]
fn dac_refuses_a_symlinked_resource() {
    let Some((dir, _acc, d)) = dac_setup(FIRST_ID, LAST_ID, None) else {
        return;
    };
    let target = dir.path().join("target");
    file(&target, 0o600);
    let link = dir.path().join("evil.img");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let before = owner_mode(&target);
    let p = plan("evil", vec![disk(&link)]);
    let mut g = guest("evil");
    d.reserve(&p, &mut g).expect("reserve");
    assert!(d.set_all(&p, &g).is_err());
    assert_eq!(owner_mode(&target), before);
}

#[test]
fn dac_changes_are_recovered_by_the_relabel_engine_after_a_crash() {
    use std::sync::Arc;
    use svirt_drivers::dac::DacConfig;
    use svirt_drivers::relabel::Relabeler;
    use svirt_hostfs::FsRoot;
    if skip_unless_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let acc = root_accounts(dir.path());
    let state = dir.path().join("state");
    let private = dir.path().join("private.img");
    let iso = dir.path().join("cd.iso");
    file(&private, 0o644);
    file(&iso, 0o600);
    let before = (owner_mode(&private), owner_mode(&iso));
    let p = plan("crashed", vec![disk(&private), cdrom(&iso)]);
    {
        let d = dac_driver(&state, &acc, FIRST_ID, LAST_ID, None);
        let mut g = guest("crashed");
        d.reserve(&p, &mut g).expect("reserve");
        d.set_all(&p, &g).expect("set_all");
        assert_ne!(owner_mode(&private), before.0);
        // The manager dies here: no restore_all.
    }
    let store = Arc::new(svirt_store::Store::open(&state).expect("reopen store"));
    let engine = Relabeler::open(
        store.clone(),
        FsRoot::open(Path::new("/")).expect("root"),
        1,
    )
    .expect("engine");
    let rep = engine.recover(&|_guest| false);
    assert!(rep.errors.is_empty(), "{:?}", rep.errors);
    assert_eq!((owner_mode(&private), owner_mode(&iso)), before, "{rep:?}");
    assert!(get_acl(&iso).is_none(), "the read grant's ACL is gone too");
    // Nothing left for the DAC driver to do afterwards.
    let d = dac_driver_on(
        store,
        FIRST_ID,
        LAST_ID,
        DacConfig {
            accounts_root: acc,
            ..Default::default()
        },
    );
    let g = guest("crashed");
    assert!(d.restore_all(&p, &g).is_empty());
    assert_eq!((owner_mode(&private), owner_mode(&iso)), before);
}

#[test]
fn dac_object_out_of_reach_at_stop_keeps_its_record() {
    let Some((dir, _acc, d)) = dac_setup(FIRST_ID, LAST_ID, None) else {
        return;
    };
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    let img = data.join("disk.img");
    file(&img, 0o644);
    let before = owner_mode(&img);
    let p = plan("reach", vec![disk(&img)]);
    let mut g = guest("reach");
    d.reserve(&p, &mut g).expect("reserve");
    d.set_all(&p, &g).expect("set");
    let changed = owner_mode(&img);
    assert_ne!(changed, before);
    // The directory becomes a symlink to itself moved: the image cannot be opened without
    // following it (ELOOP), but it is not gone.
    let moved = dir.path().join("data.real");
    std::fs::rename(&data, &moved).expect("move");
    std::os::unix::fs::symlink("data.real", &data).expect("symlink");
    let errors = d.restore_all(&p, &g);
    assert_eq!(errors.len(), 1, "said once: {errors:?}");
    assert!(errors[0].to_string().contains("disk.img"), "{}", errors[0]);
    assert_eq!(owner_mode(&moved.join("disk.img")), changed, "not restored");
    std::fs::remove_file(&data).expect("remove symlink");
    std::fs::rename(&moved, &data).expect("move back");
    // The record was kept: the next stop restores exactly.
    let errors = d.restore_all(&p, &g);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(owner_mode(&img), before);
}

/// A disk whose restore fails (made immutable while the guest ran) is reported once, keeps
/// its record, and is restored exactly by the next attempt.
#[test]
fn dac_failed_restore_is_reported_once_and_retried() {
    let Some((dir, _acc, d)) = dac_setup(FIRST_ID, LAST_ID, None) else {
        return;
    };
    let img = dir.path().join("disk.img");
    file(&img, 0o644);
    let before = owner_mode(&img);
    let p = plan("immutable-a", vec![disk(&img)]);
    let mut g = guest("immutable-a");
    d.reserve(&p, &mut g).expect("reserve");
    d.set_all(&p, &g).expect("set_all");
    let chattr = |flag: &str| {
        std::process::Command::new("chattr")
            .arg(flag)
            .arg(&img)
            .status()
    };
    if !chattr("+i").is_ok_and(|s| s.success()) {
        svirt_testkit::skip("chattr", "chattr +i failed on this filesystem");
        return;
    }
    let errors = d.restore_all(&p, &g);
    let _ = chattr("-i");
    let about_img = errors
        .iter()
        .filter(|e| e.to_string().contains(&*img.to_string_lossy()))
        .count();
    assert_eq!(about_img, 1, "one error for the disk: {errors:?}");
    assert_ne!(owner_mode(&img), before, "immutable: not restored yet");
    let errors = d.restore_all(&p, &g);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(owner_mode(&img), before);
    d.release(&g).expect("release");
}

/// The ledger's sweep after a crash puts DAC's change back the way the DAC driver does
/// (one path, `dac::leave`): owner first, then the mode, so set-id bits the owner change
/// cleared come back too. Control: the object was changed (owner and set-id bits) before.
/// (A guard: the two paths agreed on this before they became one.)
#[test]
fn dac_set_id_bits_come_back_from_the_crash_sweep() {
    use std::sync::Arc;
    use svirt_drivers::relabel::Relabeler;
    use svirt_hostfs::FsRoot;
    if skip_unless_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let acc = root_accounts(dir.path());
    let state = dir.path().join("state");
    let img = dir.path().join("setid.img");
    file(&img, 0o6750);
    let before = owner_mode(&img);
    let p = plan("setid", vec![disk(&img)]);
    {
        let d = dac_driver(&state, &acc, FIRST_ID, LAST_ID, None);
        let mut g = guest("setid");
        d.reserve(&p, &mut g).expect("reserve");
        d.set_all(&p, &g).expect("set_all");
        let now = owner_mode(&img);
        assert_ne!(now.0, before.0, "owned by the guest");
        assert_eq!(
            now.2 & 0o6000,
            0,
            "the owner change cleared the set-id bits"
        );
        // The manager dies here: no restore_all.
    }
    let store = Arc::new(svirt_store::Store::open(&state).expect("reopen store"));
    let engine =
        Relabeler::open(store, FsRoot::open(Path::new("/")).expect("root"), 1).expect("engine");
    let rep = engine.recover(&|_guest| false);
    assert!(rep.errors.is_empty(), "{:?}", rep.errors);
    assert_eq!(owner_mode(&img), before, "{rep:?}");
}
