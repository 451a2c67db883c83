//! DAC on big trees: a 30,000-file share changed and restored exactly with RLIMIT_NOFILE at
//! 256 (no fd per object), symlinks never changed nor followed, and a tree changed by a
//! process killed with SIGKILL restored from its one durable record afterwards.

mod dac_support;

use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::Instant;

use dac_support::*;
use svirt_drivers::SecurityDriver;
use svirt_drivers::dac::owner_key;

const FILES: usize = 30_000;

/// A tree of `files` files in directories of 1000, with owners and modes that vary (so the
/// record has exceptions), symlinks pointing inside and outside, and a fifo.
fn make_tree(tree: &Path, files: usize, outside: &Path) {
    std::fs::create_dir(tree).expect("mkdir");
    chmod(tree, 0o755);
    for d in 0..files.div_ceil(1000) {
        let sub = tree.join(format!("d{d}"));
        std::fs::create_dir(&sub).expect("mkdir");
        chmod(&sub, if d % 3 == 0 { 0o750 } else { 0o755 });
        for f in 0..1000.min(files - d * 1000) {
            let p = sub.join(format!("f{f}"));
            std::fs::File::create(&p).expect("create");
            let n = d * 1000 + f;
            if n % 97 == 0 {
                std::os::unix::fs::chown(&p, Some(1234), Some(4321)).expect("chown");
                chmod(&p, 0o4755);
            } else if n % 13 == 0 {
                chmod(&p, 0o600);
            } else {
                chmod(&p, 0o644);
            }
        }
    }
    std::os::unix::fs::symlink(outside, tree.join("d0/out")).expect("symlink out");
    std::os::unix::fs::symlink("f1", tree.join("d0/in")).expect("symlink in");
    std::os::unix::fs::symlink(outside.parent().expect("parent"), tree.join("d1/outdir"))
        .expect("symlink dir");
    let fifo = std::ffi::CString::new(tree.join("d2/fifo").as_os_str().as_encoded_bytes())
        .expect("cstring");
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
}

fn set_nofile(n: u64) {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer to an rlimit of this process.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut l), 0);
        l.rlim_cur = n.min(l.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &l), 0);
    }
}

fn share_plan(name: &str, tree: &Path) -> svirt_domain::Plan {
    plan(name, vec![private_tree(tree)])
}

/// The ids of the tests here.
const FIRST_ID: u32 = 600_300;
const LAST_ID: u32 = 600_350;

#[test]
fn dac_tree_of_30000_files_with_256_fds_is_changed_and_restored_exactly() {
    let Some((dir, _acc, d)) = dac_setup(FIRST_ID, LAST_ID, None) else {
        return;
    };
    let outside = dir.path().join("outside.txt");
    std::fs::write(&outside, b"secret").expect("write");
    chmod(&outside, 0o600);
    let tree = dir.path().join("share");
    make_tree(&tree, FILES, &outside);
    let before = tree_snapshot(&tree);
    let outside_before = owner_mode(&outside);
    assert!(before.len() > FILES);
    let p = share_plan("big-tree", &tree);
    let mut g = guest("big-tree");
    d.reserve(&p, &mut g).expect("reserve");
    let (uid, gid) = g.ids.expect("ids");

    // Far fewer fds than objects: one per object cannot work.
    set_nofile(256);
    let t = Instant::now();
    d.set_all(&p, &g).expect("set_all with 256 fds");
    let label_time = t.elapsed();
    let during = tree_snapshot(&tree);
    for (path, &(u, gr, mode)) in &during {
        let (bu, bg, bmode) = before[path];
        if bmode & libc::S_IFMT == libc::S_IFLNK {
            assert_eq!((u, gr, mode), (bu, bg, bmode), "symlink changed: {path:?}");
            continue;
        }
        let dir_bit = if bmode & libc::S_IFMT == libc::S_IFDIR {
            0o100
        } else {
            0
        };
        // Private: owner only, set-id bits gone, owner rw (x on directories).
        let want = (bmode & libc::S_IFMT) | (bmode & 0o700) | 0o600 | dir_bit;
        assert_eq!((u, gr, mode), (uid, gid, want), "{path:?}");
    }
    assert_eq!(
        owner_mode(&outside),
        outside_before,
        "symlink target changed"
    );
    assert!(
        std::fs::symlink_metadata(tree.join("d2/fifo"))
            .expect("fifo")
            .file_type()
            .is_fifo()
    );
    // One tree record, no per-object record.
    assert_eq!(
        d.tree_records().expect("trees"),
        vec![(tree.clone(), vec![owner_key("big-tree")])]
    );

    let t = Instant::now();
    let errors = d.restore_all(&p, &g);
    let restore_time = t.elapsed();
    set_nofile(u64::MAX);
    assert!(errors.is_empty(), "{errors:?}");
    let after = tree_snapshot(&tree);
    assert_eq!(before.len(), after.len());
    for (path, b) in &before {
        assert_eq!(after.get(path), Some(b), "not restored exactly: {path:?}");
    }
    assert_eq!(owner_mode(&outside), outside_before);
    assert!(d.tree_records().expect("trees").is_empty());
    eprintln!(
        "{} entries: set_all {label_time:?}, restore_all {restore_time:?}",
        before.len()
    );
    d.release(&g).expect("release");
}

/// The child of the SIGKILL test: changes the tree named by the environment, then kills
/// itself before any restore.
#[test]
#[ignore = "helper, run by dac_tree_changed_by_a_killed_process_is_restored"]
fn dac_tree_child_killed_after_set_all() {
    let (Some(state), Some(acc), Some(tree)) = (
        std::env::var_os("DAC_TREE_STATE"),
        std::env::var_os("DAC_TREE_ACCOUNTS"),
        std::env::var_os("DAC_TREE_ROOT"),
    ) else {
        panic!("run by dac_tree_changed_by_a_killed_process_is_restored only");
    };
    let d = dac_driver(Path::new(&state), Path::new(&acc), FIRST_ID, LAST_ID, None);
    let p = share_plan("killed", Path::new(&tree));
    let mut g = guest("killed");
    d.reserve(&p, &mut g).expect("reserve");
    d.set_all(&p, &g).expect("set_all");
    // SAFETY: kill of our own pid.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
}

#[test]
fn dac_tree_changed_by_a_killed_process_is_restored() {
    if skip_unless_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let acc = root_accounts(dir.path());
    let state = dir.path().join("state");
    let outside = dir.path().join("outside.txt");
    std::fs::write(&outside, b"secret").expect("write");
    chmod(&outside, 0o600);
    let tree = dir.path().join("share");
    make_tree(&tree, 3000, &outside);
    let before = tree_snapshot(&tree);
    for (round, recover) in ["restore_all", "recover_trees"].iter().enumerate() {
        let st = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args([
                "--exact",
                "dac_tree_child_killed_after_set_all",
                "--ignored",
                "--nocapture",
            ])
            .env("DAC_TREE_STATE", &state)
            .env("DAC_TREE_ACCOUNTS", &acc)
            .env("DAC_TREE_ROOT", &tree)
            .status()
            .expect("spawn child");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(st.signal(), Some(libc::SIGKILL), "round {round}: {st:?}");
        let during = tree_snapshot(&tree);
        assert_ne!(during, before, "the child changed nothing");
        let d = dac_driver(&state, &acc, FIRST_ID, LAST_ID, None);
        let g = guest("killed");
        let errors = if *recover == "restore_all" {
            // What the manager's recovery does for a guest found dead.
            d.restore_all(&share_plan("killed", &tree), &g)
        } else {
            d.recover_trees(&|_guest| false)
        };
        assert!(errors.is_empty(), "{recover}: {errors:?}");
        assert_eq!(tree_snapshot(&tree), before, "{recover}: not restored");
        assert!(d.tree_records().expect("trees").is_empty());
        assert_eq!(owner_mode(&outside), (0, 0, 0o600));
        d.release(&g).expect("release");
    }
}

#[test]
fn dac_shared_tree_is_restored_when_its_last_user_stops() {
    const SHARED_GID: u32 = 600_399;
    let Some((dir, _acc, d)) = dac_setup(FIRST_ID, LAST_ID, Some(SHARED_GID)) else {
        return;
    };
    let outside = dir.path().join("outside.txt");
    std::fs::write(&outside, b"secret").expect("write");
    let tree = dir.path().join("share");
    make_tree(&tree, 3000, &outside);
    let before = tree_snapshot(&tree);
    let mut guests = Vec::new();
    for name in ["share-a", "share-b"] {
        let p = plan(name, vec![shared_tree(&tree)]);
        let mut g = guest(name);
        d.reserve(&p, &mut g).expect("reserve");
        d.set_all(&p, &g).expect("set_all");
        guests.push((p, g));
    }
    let shared = tree_snapshot(&tree);
    for (path, &(_, gid, mode)) in &shared {
        if mode & libc::S_IFMT != libc::S_IFLNK {
            assert!(
                (FIRST_ID..=LAST_ID).contains(&gid) && gid == shared[&tree].1,
                "{path:?}: the share's own group from the id range, not {gid}"
            );
            assert_eq!(mode & 0o060, 0o060, "{path:?}");
        }
    }
    assert_eq!(
        d.tree_records().expect("trees"),
        vec![(
            tree.clone(),
            vec![owner_key("share-a"), owner_key("share-b")]
        )]
    );
    // The first user stops: the other still uses the tree as it is.
    let (p, g) = &guests[0];
    assert!(d.restore_all(p, g).is_empty());
    assert_eq!(tree_snapshot(&tree), shared);
    // The last one stops: everything as it was.
    let (p, g) = &guests[1];
    assert!(d.restore_all(p, g).is_empty());
    assert_eq!(tree_snapshot(&tree), before);
    assert!(d.tree_records().expect("trees").is_empty());
    for (_, g) in &guests {
        d.release(g).expect("release");
    }
}

/// A tree recorded empty (a TPM's state directory at the first start) and filled by the
/// guest: at the stop every entry the guest made goes back to the root's owner and group,
/// set-id and sticky bits dropped (before, with no file original recorded, they stayed
/// the guest's uid's, for the next guest given it). The root is restored exactly.
#[test]
fn dac_entries_made_in_a_tree_recorded_empty_are_not_left_to_the_guest() {
    let Some((dir, _acc, d)) = dac_setup(FIRST_ID + 40, LAST_ID, None) else {
        return;
    };
    let tree = dir.path().join("tpm2");
    std::fs::create_dir(&tree).expect("mkdir");
    chmod(&tree, 0o700);
    let root_before = owner_mode(&tree);
    let p = share_plan("empty-tree", &tree);
    let mut g = guest("empty-tree");
    d.reserve(&p, &mut g).expect("reserve");
    let (uid, gid) = g.ids.expect("ids");
    d.set_all(&p, &g).expect("set_all");
    // What the guest's process makes there (as its uid).
    let file = tree.join("tpm2-00.permall");
    std::fs::write(&file, b"state").expect("write");
    std::os::unix::fs::chown(&file, Some(uid), Some(gid)).expect("chown");
    chmod(&file, 0o4640);
    let sub = tree.join("sub");
    std::fs::create_dir(&sub).expect("mkdir");
    std::os::unix::fs::chown(&sub, Some(uid), Some(gid)).expect("chown");
    // Control: an entry of someone else's stays as it is.
    let other = tree.join("other");
    std::fs::write(&other, b"x").expect("write");
    std::os::unix::fs::chown(&other, Some(4242), Some(4242)).expect("chown");
    let errors = d.restore_all(&p, &g);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(owner_mode(&tree), root_before);
    let (ru, rg, _) = root_before;
    let (fu, fg, fmode) = owner_mode(&file);
    assert_eq!(
        (fu, fg, fmode & 0o7777),
        (ru, rg, 0o640),
        "file made by the guest"
    );
    let (su, sg, _) = owner_mode(&sub);
    assert_eq!((su, sg), (ru, rg), "directory made by the guest");
    let (ou, og, _) = owner_mode(&other);
    assert_eq!((ou, og), (4242, 4242), "someone else's entry");
    d.release(&g).expect("release");
}
