//! DAC releases never lose an original: a process killed between an object's restore and
//! the release of its record leaves the record for the next attempt, and releases of one
//! shared object (a disk, a tree, the `/dev/kvm` grant) by guests stopping at the same time,
//! or stopping while another guest starts, restore it exactly once its last DAC user is
//! gone, and never leave it changed without a record.
//!
//! Everything lives under a temporary platform root (`DacConfig::fs_root`) whose `dev/kvm`
//! is a private `mknod` copy of `/dev/null` (a regular file where mknod is refused).

mod dac_support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};

use dac_support::*;
use svirt_domain::{DacAction, PlannedResource, Sharing};
use svirt_drivers::dac::{DacConfig, DacDriver, owner_key};
use svirt_drivers::{GuestSecurity, SecurityDriver};
use svirt_store::Store;

const KVM_GID: u32 = 630_993;
const SHARED_GID: u32 = 630_100;

/// Entries of the share below its root (the root is the share itself).
const TREE: &[&str] = &["", "a", "b", "sub", "sub/c", "sub/d"];

/// A temporary platform root with `dev/kvm`, `data/disk.img` and the tree `data/share`.
struct Env {
    dir: PathBuf,
    /// The temporary directory, removed on drop (None: a child process using its parent's).
    _tmp: Option<tempfile::TempDir>,
}

impl Env {
    fn new() -> Option<Env> {
        if skip_unless_root() {
            return None;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let e = Env {
            dir: tmp.path().to_path_buf(),
            _tmp: Some(tmp),
        };
        accounts(
            &e.dir,
            "root:x:0:0::/root:/bin/sh\n",
            &format!("root:x:0:\nkvm:x:{KVM_GID}:\n"),
        );
        let root = e.root();
        std::fs::create_dir_all(root.join("dev")).expect("mkdir dev");
        let node = e.host("/dev/kvm");
        // SAFETY: mknod with a NUL-terminated path.
        if unsafe {
            libc::mknod(
                cpath(&node).as_ptr(),
                libc::S_IFCHR | 0o600,
                libc::makedev(1, 3),
            )
        } != 0
        {
            eprintln!(
                "note: mknod refused ({}); a regular file stands for /dev/kvm",
                std::io::Error::last_os_error()
            );
            std::fs::write(&node, b"").expect("create node");
        }
        chmod(&node, 0o600);
        std::fs::create_dir_all(e.host("/data/share/sub")).expect("mkdir share");
        std::fs::write(e.host("/data/disk.img"), b"disk").expect("disk");
        chmod(&e.host("/data/disk.img"), 0o644);
        for f in ["a", "b", "sub/c", "sub/d"] {
            std::fs::write(e.host("/data/share").join(f), b"x").expect("file");
            chmod(&e.host("/data/share").join(f), 0o644);
        }
        Some(e)
    }

    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// Where the host sees the platform path `p`.
    fn host(&self, p: &str) -> PathBuf {
        self.root().join(p.trim_start_matches('/'))
    }

    /// The store and a DAC driver over it.
    fn open(&self) -> (Arc<Store>, DacDriver) {
        let acc = self.dir.join("accounts");
        let store = Arc::new(Store::open(&self.dir.join("state")).expect("store"));
        let dac = dac_driver_on(
            store.clone(),
            630_000,
            630_050,
            DacConfig {
                accounts_root: acc,
                fs_root: self.root(),
                shared_gid: Some(SHARED_GID),
                ..Default::default()
            },
        );
        (store, dac)
    }

    /// Owner, group and mode of the disk, the device and every tree entry, and the device's
    /// ACL bytes.
    fn snapshot(&self) -> Snapshot {
        let mut objs = vec![
            owner_mode(&self.host("/data/disk.img")),
            owner_mode(&self.host("/dev/kvm")),
        ];
        objs.extend(
            TREE.iter()
                .map(|t| owner_mode(&self.host("/data/share").join(t))),
        );
        (objs, get_acl(&self.host("/dev/kvm")))
    }
}

type Snapshot = (Vec<(u32, u32, u32)>, Option<Vec<u8>>);

/// Whether the ACL has `group:<KVM_GID>:rw-` behind a mask letting it through.
fn kvm_granted(e: &Env) -> bool {
    let Some(b) = get_acl(&e.host("/dev/kvm")) else {
        return false;
    };
    let entries: Vec<(u16, u16, u32)> = b[4..]
        .chunks_exact(8)
        .map(|c| {
            (
                u16::from_le_bytes([c[0], c[1]]),
                u16::from_le_bytes([c[2], c[3]]),
                u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            )
        })
        .collect();
    let has = |tag: u16, id: u32| {
        entries
            .iter()
            .any(|x| x.0 == tag && x.2 == id && x.1 & 6 == 6)
    };
    has(0x08, KVM_GID) && has(0x10, u32::MAX)
}

/// Reserves ids, sets the plan's resources and grants the device, as a start does.
fn start(dac: &DacDriver, p: &svirt_domain::Plan, g: &mut GuestSecurity) {
    dac.reserve(p, g).expect("reserve");
    dac.set_all(p, g).expect("set_all");
    let mut ctx = exec_ctx(Path::new("/run"));
    ctx.devices = vec![PathBuf::from("/dev/kvm")];
    let creds = dac.prepare_credentials(p, g, &ctx).expect("grant");
    assert!(creds.groups.contains(&KVM_GID), "{creds:?}");
}

fn tree_res(path: &str, dac: DacAction) -> PlannedResource {
    tree_resource(Path::new(path), Sharing::Shared, dac)
}

// ---- a process killed between a restore and the release of its record ----

const CHILD_ENV: &str = "SVIRT_DAC_CRASH_CHILD";
const POINT_ENV: &str = "SVIRT_DAC_CRASH_POINT";

fn crash_plan() -> svirt_domain::Plan {
    plan(
        "crash",
        vec![
            disk(Path::new("/data/disk.img")),
            tree_res("/data/share", DacAction::OwnGuest { private: true }),
        ],
    )
}

#[test]
fn dac_release_survives_sigkill_between_restore_and_release() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        return crash_child(Path::new(&dir));
    }
    let Some(e) = Env::new() else { return };
    let before = e.snapshot();
    let me = owner_key("crash");
    {
        let (_, dac) = e.open();
        start(&dac, &crash_plan(), &mut guest("crash"));
    }
    let changed = e.snapshot();
    assert_ne!(changed.0[0], before.0[0], "disk changed");
    assert!(kvm_granted(&e));

    // Whether `path` still has a record naming the guest.
    let recorded = |store: &Store, path: &str| {
        store
            .originals_for_owner(&me)
            .expect("records")
            .iter()
            .any(|(_, r)| r.original.path == Path::new(path))
    };

    // 1. Killed once the disk is restored: the disk is as before, its record still there.
    run_crash_child(&e, "after-restore");
    let now = e.snapshot();
    assert_eq!(now.0[0], before.0[0], "disk restored before the kill");
    let (store, dac) = e.open();
    assert!(
        recorded(&store, "/data/disk.img"),
        "the disk's record survives the kill"
    );
    drop((store, dac));

    // 2. Killed once the tree is restored: its record is still there.
    run_crash_child(&e, "after-tree-restore");
    assert_eq!(e.snapshot().0[2..], before.0[2..], "tree restored");
    let (store, dac) = e.open();
    assert!(
        !recorded(&store, "/data/disk.img"),
        "disk released by run 2"
    );
    let trees = dac.tree_records().expect("tree records");
    assert_eq!(trees.len(), 1, "the tree's record survives the kill");
    assert_eq!(trees[0].1, vec![me.clone()]);
    drop((store, dac));

    // 3. Killed once the device grant is undone: its record is still there.
    run_crash_child(&e, "after-restore");
    let now = e.snapshot();
    assert_eq!(now, before, "everything restored before the kill");
    let (store, dac) = e.open();
    assert!(
        recorded(&store, "/dev/kvm"),
        "the grant's record survives the kill"
    );
    assert!(dac.tree_records().expect("tree records").is_empty());

    // The next stop restores exactly (again) and releases everything.
    let errors = dac.restore_all(&crash_plan(), &guest("crash"));
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(e.snapshot(), before);
    assert!(store.list_originals().expect("originals").is_empty());
    assert!(dac.tree_records().expect("tree records").is_empty());
}

/// Runs this test in a child that restores the guest and SIGKILLs itself at the first
/// `point` of the fault hook.
fn run_crash_child(e: &Env, point: &str) {
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "dac_release_survives_sigkill_between_restore_and_release",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &e.dir)
        .env(POINT_ENV, point)
        .output()
        .expect("run the child");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "the child is killed at {point}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn crash_child(dir: &Path) {
    let e = Env {
        dir: dir.to_path_buf(),
        _tmp: None,
    };
    let (_store, dac) = e.open();
    let point = std::env::var(POINT_ENV).expect("point");
    dac.set_fault_hook(Some(Arc::new(move |p: &str| {
        if p == point {
            // SAFETY: kill of our own pid, as `kill -9` would.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
        false
    })));
    let errors = dac.restore_all(&crash_plan(), &guest("crash"));
    panic!("not killed; restore_all returned {errors:?}");
}

// ---- guests stopping (and starting) at the same time ----

/// One guest's plan over the shared disk and the shared tree.
fn shared_plan(name: &str) -> svirt_domain::Plan {
    plan(
        name,
        vec![
            shared_disk(Path::new("/data/disk.img")),
            tree_res("/data/share", DacAction::SharedGroup),
        ],
    )
}

/// Whether the shared resources carry the shared group's change (what a running guest
/// using them needs) and the device grant.
fn assert_shared_change(e: &Env, round: usize) {
    let (objs, _) = e.snapshot();
    let disk = objs[0];
    // Each shared object has its own group, from the id range.
    assert!(
        (630_000..=630_050).contains(&disk.1) && disk.2 & 0o060 == 0o060,
        "round {round}: disk {disk:?}"
    );
    let tree_gid = objs[2].1;
    assert!(
        (630_000..=630_050).contains(&tree_gid) && tree_gid != disk.1,
        "round {round}: the share's group {tree_gid}, the disk's {}",
        disk.1
    );
    for (t, m) in TREE.iter().zip(&objs[2..]) {
        assert_eq!(
            (m.1, m.2 & 0o060),
            (tree_gid, 0o060),
            "round {round}: tree entry {t:?}"
        );
    }
    assert!(kvm_granted(e), "round {round}: device grant");
}

const ROUNDS: usize = 60;

#[test]
fn dac_concurrent_releases_of_a_shared_object_restore_it_once() {
    let Some(e) = Env::new() else { return };
    let before = e.snapshot();
    let (store, dac) = e.open();
    let (pa, pb) = (shared_plan("conc-a"), shared_plan("conc-b"));
    let (mut ga, mut gb) = (guest("conc-a"), guest("conc-b"));
    for round in 0..ROUNDS {
        start(&dac, &pa, &mut ga);
        start(&dac, &pb, &mut gb);
        assert_shared_change(&e, round);
        let go = Barrier::new(2);
        let (ea, eb) = std::thread::scope(|s| {
            let a = s.spawn(|| {
                go.wait();
                dac.restore_all(&pa, &ga)
            });
            let b = s.spawn(|| {
                go.wait();
                dac.restore_all(&pb, &gb)
            });
            (a.join().expect("a"), b.join().expect("b"))
        });
        assert!(
            ea.is_empty() && eb.is_empty(),
            "round {round}: {ea:?} {eb:?}"
        );
        assert_eq!(e.snapshot(), before, "round {round}: restored exactly");
        assert!(
            store.list_originals().expect("originals").is_empty(),
            "round {round}: no record left"
        );
        assert!(
            dac.tree_records().expect("tree records").is_empty(),
            "round {round}: no tree record left"
        );
    }
}

#[test]
fn dac_release_while_another_guest_joins_keeps_the_joiner_s_change() {
    let Some(e) = Env::new() else { return };
    let before = e.snapshot();
    let (store, dac) = e.open();
    let mut running = (shared_plan("join-a"), guest("join-a"));
    let mut next = (shared_plan("join-b"), guest("join-b"));
    start(&dac, &running.0, &mut running.1);
    for round in 0..ROUNDS {
        // The running guest stops while the next one starts on the same objects.
        let go = Barrier::new(2);
        let stop_errors = std::thread::scope(|s| {
            let stop = s.spawn(|| {
                go.wait();
                dac.restore_all(&running.0, &running.1)
            });
            let st = s.spawn(|| {
                go.wait();
                start(&dac, &next.0, &mut next.1);
            });
            st.join().expect("start");
            stop.join().expect("stop")
        });
        assert!(stop_errors.is_empty(), "round {round}: {stop_errors:?}");
        // The starting guest runs: its change is in place, and every record is its own.
        assert_shared_change(&e, round);
        let me = owner_key(&next.1.name);
        for (_, r) in store.list_originals().expect("originals") {
            assert_eq!(
                r.owners.iter().collect::<Vec<_>>(),
                vec![&me],
                "round {round}: {}",
                r.original.path.display()
            );
        }
        for (p, owners) in dac.tree_records().expect("tree records") {
            assert_eq!(owners, vec![me.clone()], "round {round}: {}", p.display());
        }
        std::mem::swap(&mut running, &mut next);
    }
    let errors = dac.restore_all(&running.0, &running.1);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(e.snapshot(), before, "restored exactly");
    assert!(store.list_originals().expect("originals").is_empty());
    assert!(dac.tree_records().expect("tree records").is_empty());
}
