//! Recovery of what belongs to no guest record: a guest whose record was lost still has
//! labels set by the drivers. At open the manager restores them (the guests it knows to be
//! alive excepted): single objects and trees recorded by DAC, trees recorded by the
//! SELinux relabel engine. Real files, a real reattached QEMU left alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{Env, owner_mode, require_env};
use svirt_drivers::dac::{DacConfig, DacDriver};
use svirt_drivers::relabel::{LabelJob, Relabeler};
use svirt_drivers::{GuestSecurity, SecurityDriver};
use svirt_hostfs::FsRoot;
use svirt_manager::{Manager, StartOptions};
use svirt_store::{AllocatorConfig, IdAllocator, IdConfig, LevelAllocator, Store};

const LABEL: &str = "system_u:object_r:svirt_image_t:s0:c1,c2";

fn selinux_xattr(p: &Path) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            c"security.selinux".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n >= 0).then(|| {
        buf.truncate(n as usize);
        buf
    })
}

/// [`Env::xml_with_share`] with the serial on a pty: the share is the guest's only file.
fn share_only_xml(env: &Env, name: &str, tree: &Path) -> String {
    let xml = env.xml_with_share(name, tree);
    let start = xml.find("<serial type='file'>").unwrap();
    let end = xml[start..].find("</serial>").unwrap() + start + "</serial>".len();
    format!(
        "{}<serial type='pty'><target port='0'/></serial>{}",
        &xml[..start],
        &xml[end..]
    )
}

/// A DAC driver on the manager's store (closed), as the manager builds it.
fn dac_on(store: &Arc<Store>) -> DacDriver {
    let ids = IdAllocator::open(
        store.clone(),
        IdConfig {
            first: 300_000,
            last: 365_535,
            root: PathBuf::from("/"),
        },
    )
    .unwrap();
    DacDriver::new(DacConfig::default(), store.clone(), Arc::new(ids))
}

#[test]
fn labels_of_guests_without_a_record_are_restored_at_open() {
    require_env!();
    let env = Env::new("orphans");
    let keep_disk = env.raw("keep.img");
    let ghost_disk = env.raw("ghost.img");
    let tree = env.tree(&env.path("tree"), 300);
    let se_tree = env.tree(&env.path("setree"), 300);
    let tree_file = tree.join("d0/f7");
    let se_file = se_tree.join("d0/f7");
    let before = [
        owner_mode(&keep_disk),
        owner_mode(&ghost_disk),
        owner_mode(&tree_file),
        owner_mode(&tree),
    ];
    let se_before = selinux_xattr(&se_file);

    // A guest that runs on across the restart: what it holds must stay.
    let (m, _) = Manager::open(env.config("dac,landlock")).unwrap();
    let keep = m
        .start(
            &env.xml("keep", &[(keep_disk.clone(), "raw", false)]),
            StartOptions { paused: true },
        )
        .unwrap();
    let keep_uid = keep.uid.unwrap();
    // Its serial log exists (a plan removes the chardev files it had to create).
    std::fs::write(env.path("images").join("ghost-disk.serial.log"), b"").unwrap();
    // The tree guest's only file is its share (serial on a pty): nothing but the DAC tree
    // record names it once its uid is released.
    let tree_xml = share_only_xml(&env, "ghost-tree", &tree);
    let plans = [
        m.plan(&tree_xml).unwrap(),
        m.plan(&env.xml("ghost-disk", &[(ghost_disk.clone(), "raw", false)]))
            .unwrap(),
    ];
    drop(m);

    // The drivers label for guests the manager has no record of (records lost).
    let store = Arc::new(Store::open(&env.path("state")).unwrap());
    let dac = dac_on(&store);
    let mut ghost_uids = Vec::new();
    for plan in &plans {
        let mut sec = GuestSecurity {
            name: plan.name.clone(),
            level: None,
            ids: None,
        };
        dac.reserve(plan, &mut sec).unwrap();
        dac.set_all(plan, &sec).unwrap();
        ghost_uids.push(sec.ids.unwrap().0);
        if plan.name == "ghost-tree" {
            // As the recovery before this fix did: the uid released, the tree left.
            dac.release(&sec).unwrap();
        }
    }
    drop(dac);
    assert_eq!(owner_mode(&tree_file).0, ghost_uids[0]);
    assert_eq!(owner_mode(&ghost_disk).0, ghost_uids[1]);
    let engine = Relabeler::open(store.clone(), FsRoot::host().unwrap(), 1).unwrap();
    let se_labeled = engine
        .set_labels(
            "ghost-se",
            &[LabelJob {
                path: se_tree.clone(),
                label: LABEL.into(),
                restore: true,
                recursive: true,
                identity: None,
            }],
        )
        .map(|_| ());
    drop(engine);
    // A level reserved for a guest of an earlier SELinux stack whose record was lost:
    // released by the open although SELinux is not stacked now.
    let levels = LevelAllocator::open(store.clone(), AllocatorConfig::default()).unwrap();
    let ghost_level = levels.allocate("ghost-level").unwrap();
    drop(levels);
    assert_eq!(store.levels_of("ghost-level").unwrap(), vec![ghost_level]);
    drop(store);
    if let Err(e) = &se_labeled {
        svirt_testkit::skip(
            "selinux-xattrs",
            format!("SELinux part: cannot label here: {e}"),
        );
    } else {
        assert_eq!(
            selinux_xattr(&se_file)
                .as_deref()
                .map(|v| v.strip_suffix(b"\0").unwrap_or(v)),
            Some(LABEL.as_bytes())
        );
    }

    let (m, report) = Manager::open(env.config("dac,landlock")).unwrap();
    eprintln!("recovered: {:#?}", report.recovered);
    assert_eq!(report.reattached, vec!["keep".to_string()]);
    let said = |guest: &str, needle: &str| {
        report
            .recovered
            .iter()
            .map(|r| (&r.guest, &r.what))
            .any(|(g, what)| g == guest && what.contains(needle))
    };
    assert_eq!(
        owner_mode(&keep_disk).0,
        keep_uid,
        "a running guest's disk was restored"
    );
    assert_eq!(
        owner_mode(&ghost_disk),
        before[1],
        "lost guest's disk not restored"
    );
    assert!(said("ghost-disk", "restored"), "{:?}", report.recovered);
    assert!(
        said("ghost-level", "reservations released"),
        "{:?}",
        report.recovered
    );
    assert_eq!(
        owner_mode(&tree_file),
        before[2],
        "lost guest's DAC tree not restored"
    );
    assert_eq!(
        owner_mode(&tree),
        before[3],
        "lost guest's DAC tree root not restored"
    );
    assert!(
        said(
            "ghost-tree",
            &format!("DAC tree {} of no running guest: restored", tree.display())
        ),
        "{:?}",
        report.recovered
    );
    if se_labeled.is_ok() {
        assert_eq!(
            selinux_xattr(&se_file),
            se_before,
            "SELinux tree not restored"
        );
        assert!(
            said(
                "(orphaned records)",
                &format!("{}: restored", se_tree.display())
            ),
            "{:?}",
            report.recovered
        );
    }
    m.destroy("keep").unwrap();
    assert_eq!(owner_mode(&keep_disk), before[0]);
    drop(m);
    env.assert_store_clean("after the sweep");
}

/// A stored guest record the manager cannot read (a newer format, a damaged row) may
/// describe a guest whose QEMU still runs: nothing of it is restored or released at open
/// (its uid is not handed out again while it may be in use), its name cannot be started,
/// and the open report says so. With its record readable again, the next open reattaches
/// it as usual.
#[test]
fn an_unreadable_record_keeps_everything_of_its_guest() {
    require_env!();
    let env = Env::new("unreadable");
    let disk = env.raw("u.img");
    let before = owner_mode(&disk);
    let xml = env.xml("u", &[(disk.clone(), "raw", false)]);
    let (m, _) = Manager::open(env.config("dac,landlock")).unwrap();
    let info = m.start(&xml, StartOptions { paused: true }).unwrap();
    let (pid, uid) = (info.pid.unwrap(), info.uid.unwrap());
    drop(m);
    let good = {
        let store = Store::open(&env.path("state")).unwrap();
        let good = store
            .list_guests()
            .unwrap()
            .into_iter()
            .find(|g| g.name == "u")
            .unwrap();
        store
            .put_guest("u", &good.state, b"{\"not\": \"a guest record\"}")
            .unwrap();
        good
    };

    let (m, report) = Manager::open(env.config("dac,landlock")).unwrap();
    eprintln!("recovered: {:#?}", report.recovered);
    assert!(
        report
            .recovered
            .iter()
            .map(|r| (&r.guest, &r.what))
            .any(|(g, what)| g == "u" && what.contains("unreadable")),
        "{:?}",
        report.recovered
    );
    assert!(common::alive(pid), "the guest's QEMU was killed");
    assert_eq!(
        owner_mode(&disk).0,
        uid,
        "the disk of a guest that may run was restored"
    );
    assert!(
        matches!(
            m.start(&xml, StartOptions { paused: true }),
            Err(svirt_manager::ManagerError::GuestExists(_))
        ),
        "a start took the name of an unreadable record"
    );
    // Its uid stays reserved: another guest gets another one.
    let other = m
        .start(&env.xml("v", &[]), StartOptions { paused: true })
        .unwrap();
    assert_ne!(other.uid, Some(uid), "the uid went to another guest");
    m.destroy("v").unwrap();
    drop(m);
    let store = Store::open(&env.path("state")).unwrap();
    assert!(
        store
            .id_reservations()
            .unwrap()
            .contains(&(uid, "u".to_string())),
        "uid of the unreadable guest released"
    );
    store.put_guest("u", &good.state, &good.record).unwrap();
    drop(store);

    let (m, report) = Manager::open(env.config("dac,landlock")).unwrap();
    assert_eq!(report.reattached, vec!["u".to_string()]);
    assert_eq!(m.info("u").unwrap().pid, Some(pid));
    m.destroy("u").unwrap();
    assert_eq!(owner_mode(&disk), before);
    drop(m);
    env.assert_store_clean("after the record was repaired");
}

/// A DAC tree of a lost guest whose restore fails (a file in it is immutable) is reported
/// as failed, with the error, not as "released": its record stays, and the next open,
/// with the file mutable again, restores it.
#[test]
fn a_tree_whose_restore_fails_is_reported_as_failed() {
    require_env!();
    let env = Env::new("treefail");
    let tree = env.tree(&env.path("tree"), 50);
    let (stuck, other) = (tree.join("d0/f3"), tree.join("d0/f4"));
    let before = [owner_mode(&stuck), owner_mode(&other), owner_mode(&tree)];
    let (m, _) = Manager::open(env.config("dac,landlock")).unwrap();
    let plan = m.plan(&share_only_xml(&env, "ghost", &tree)).unwrap();
    drop(m);
    {
        let store = Arc::new(Store::open(&env.path("state")).unwrap());
        let dac = dac_on(&store);
        let mut sec = GuestSecurity {
            name: "ghost".into(),
            level: None,
            ids: None,
        };
        dac.reserve(&plan, &mut sec).unwrap();
        dac.set_all(&plan, &sec).unwrap();
        // Lost with its record: only the tree record names it.
        dac.release(&sec).unwrap();
        assert_eq!(owner_mode(&stuck).0, sec.ids.unwrap().0);
    }
    let immutable = common::Immutable::set(&stuck);
    let (m, report) = Manager::open(env.config("dac,landlock")).unwrap();
    eprintln!("recovered: {:#?}", report.recovered);
    let on_tree: Vec<&String> = report
        .recovered
        .iter()
        .map(|r| (&r.guest, &r.what))
        .filter(|(g, w)| *g == "ghost" && w.contains(&tree.display().to_string()))
        .map(|(_, w)| w)
        .collect();
    assert!(
        on_tree.iter().any(|w| w.contains("restore failed")),
        "the failed restore is not reported: {on_tree:?}"
    );
    assert!(
        !on_tree.iter().any(|w| w.contains("released")),
        "a failed restore reported as released: {on_tree:?}"
    );
    assert!(
        report
            .recovered
            .iter()
            .map(|r| (&r.guest, &r.what))
            .any(|(_, w)| w.contains("failed") && w.contains("d0/f3")),
        "the error itself is not reported: {:?}",
        report.recovered
    );
    drop(m);
    // The record is kept, and the leak check sees it.
    let rows = env.tree_rows();
    assert!(
        rows.iter().any(|r| r.starts_with("dac_trees")),
        "the kept DAC tree record is not seen: {rows:?}"
    );
    drop(immutable);
    let (m, report) = Manager::open(env.config("dac,landlock")).unwrap();
    assert!(
        report
            .recovered
            .iter()
            .map(|r| (&r.guest, &r.what))
            .any(|(g, w)| g == "ghost" && w.contains("restored")),
        "{:?}",
        report.recovered
    );
    assert_eq!(
        [owner_mode(&stuck), owner_mode(&other), owner_mode(&tree)],
        before
    );
    drop(m);
    env.assert_store_clean("after the second open");
}

/// A start killed after it made its runtime directory and before its record was durable
/// leaves dirs of a name with no record. The next open removes them, and the name's cgroup
/// only when empty: a group with a process in it (a guest of the same name of another
/// manager sharing the cgroup parent) is left, its process alive, and reported. Control:
/// the empty group of another such name is removed.
#[test]
fn open_removes_unrecorded_dirs_and_kills_nothing() {
    require_env!();
    let env = Env::new("unrecorded");
    let cfg = env.config("dac,landlock");
    drop(Manager::open(cfg.clone()).unwrap());
    let layout = svirt_manager::cgroup::Layout::detect(Path::new("/sys/fs/cgroup"));
    let mut made = Vec::new();
    for name in ["busy", "idle"] {
        for d in [format!("run/guests/{name}"), format!("run/ctl/{name}")] {
            std::fs::create_dir_all(env.path(&d)).unwrap();
            std::fs::write(env.path(&d).join("left"), b"x").unwrap();
        }
        let dirs = layout.guest_dirs(&env.cgroup_parent, name);
        for d in &dirs {
            std::fs::create_dir_all(d).unwrap();
        }
        made.push(dirs);
    }
    let mut other = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    for d in &made[0] {
        std::fs::write(d.join("cgroup.procs"), other.id().to_string()).unwrap();
    }
    let (m, report) = Manager::open(cfg).unwrap();
    for name in ["busy", "idle"] {
        assert!(!env.path(&format!("run/guests/{name}")).exists(), "{name}");
        assert!(!env.path(&format!("run/ctl/{name}")).exists(), "{name}");
    }
    assert!(
        other.try_wait().unwrap().is_none(),
        "a process in a cgroup of a name without a record was killed"
    );
    assert!(
        made[0].iter().all(|d| d.exists()),
        "a busy group was removed"
    );
    assert!(
        report
            .recovered
            .iter()
            .any(|r| r.guest == "busy" && r.what.contains("cgroup")),
        "{:?}",
        report.recovered
    );
    assert!(
        made[1].iter().all(|d| !d.exists()),
        "the empty group stayed"
    );
    drop(m);
    let _ = other.kill();
    let _ = other.wait();
}
