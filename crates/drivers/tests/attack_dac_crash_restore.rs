//! Attack class 7 (issue 11): svirtd killed (kill -9) while it restores a large share.
//!
//! A 20,001-entry share with mixed owners, groups, modes, set-uid/set-gid/sticky bits, ACLs
//! and user xattrs is given to a guest (private read-write: every entry chowned to the guest)
//! by the parent; a child process then restores it and is SIGKILLed part way: right after an
//! entry's owner was put back (the window between chown and chmod that lost modes before),
//! at entry 1 and after every 4,096 entries, and at the progress reports of the restore
//! (every 4,096 entries visited). Each time, the next open's recovery (`recover_trees`) must
//! leave every entry exactly as it was before the guest started: owner, group, mode, access
//! ACL bytes and xattrs. The control: the same restore, not killed, is exact too.

mod dac_support;

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dac_support::*;
use svirt_domain::Plan;
use svirt_drivers::SecurityDriver;
use svirt_drivers::dac::{DacConfig, DacDriver};
use svirt_store::Store;

const FIRST_ID: u32 = 640_000;
const LAST_ID: u32 = 640_050;
const CHILD_ENV: &str = "SVIRT_DAC_KILL_RESTORE_DIR";
const KILL_AT_ENV: &str = "SVIRT_DAC_KILL_RESTORE_AT";
const USER_XATTR: &CStr = c"user.svirt-test";

/// Subdirectories of the share, and files in each: 1 + 100 + 100 * 199 = 20,001 entries.
const DIRS: usize = 100;
const FILES: usize = 199;

type Snap = BTreeMap<PathBuf, (u32, u32, u32, Option<Vec<u8>>, Option<Vec<u8>>)>;

/// Owner, group, mode, access ACL and the user xattr of every entry of the share.
fn snapshot(root: &Path) -> Snap {
    tree_snapshot(root)
        .into_iter()
        .map(|(p, (u, g, m))| {
            let acl = get_acl(&p);
            let x = get_xattr(&p, USER_XATTR);
            (p, (u, g, m, acl, x))
        })
        .collect()
}

/// An access ACL `user::rwx user:4242:r-- group::r-x mask::r-x other::---`-like, with
/// `named` rights for uid 4242.
fn acl_bytes(owner: u16, named: u16, group: u16, other: u16) -> Vec<u8> {
    let mut out = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, owner, u32::MAX),
        (0x02, named, 4242),
        (0x04, group, u32::MAX),
        (0x10, group | named, u32::MAX),
        (0x20, other, u32::MAX),
    ] {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}

fn set_xattr(p: &Path, name: &CStr, value: &[u8]) {
    // SAFETY: NUL-terminated path and name, value of the given length.
    let r = unsafe {
        libc::lsetxattr(
            cpath(p).as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "setxattr {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).expect("chown");
}

/// The share: mixed owners and modes, set-id and sticky bits (set after the chown, which
/// would clear them), ACLs on every 7th entry, a user xattr on every 5th.
fn build_share(root: &Path) {
    std::fs::create_dir(root).expect("mkdir share");
    const FILE_MODES: [u32; 8] = [0o644, 0o600, 0o4755, 0o2755, 0o6750, 0o640, 0o1644, 0o2644];
    const DIR_MODES: [u32; 4] = [0o755, 0o2775, 0o1777, 0o750];
    const OWNERS: [(u32, u32); 4] = [(0, 0), (1000, 1000), (1001, 100), (0, 50)];
    for d in 0..DIRS {
        let dir = root.join(format!("d{d:03}"));
        std::fs::create_dir(&dir).expect("mkdir");
        for f in 0..FILES {
            let i = d * FILES + f;
            let p = dir.join(format!("f{f:03}"));
            std::fs::write(&p, b"x").expect("write");
            let (u, g) = OWNERS[i % OWNERS.len()];
            chown(&p, u, g);
            chmod(&p, FILE_MODES[i % FILE_MODES.len()]);
            if i.is_multiple_of(7) {
                set_xattr(&p, ACL_XATTR, &acl_bytes(6, 4, 4, 0));
            }
            if i.is_multiple_of(5) {
                set_xattr(&p, USER_XATTR, format!("v{i}").as_bytes());
            }
        }
        let (u, g) = OWNERS[d % OWNERS.len()];
        chown(&dir, u, g);
        chmod(&dir, DIR_MODES[d % DIR_MODES.len()]);
        if d % 7 == 3 {
            set_xattr(&dir, ACL_XATTR, &acl_bytes(7, 5, 5, 0));
        }
    }
    chmod(root, 0o2755);
}

fn share_plan(share: &Path) -> Plan {
    plan("victim", vec![private_tree(share)])
}

fn driver(dir: &Path) -> (Arc<Store>, DacDriver) {
    let store = Arc::new(Store::open(&dir.join("state")).expect("store"));
    let dac = dac_driver_on(
        store.clone(),
        FIRST_ID,
        LAST_ID,
        DacConfig {
            accounts_root: dir.join("accounts"),
            ..Default::default()
        },
    );
    (store, dac)
}

/// What kills the child: after the Nth entry's owner is put back, or at the Nth progress
/// report of the restore.
#[derive(Clone, Copy, Debug)]
enum KillAt {
    Chowned(u64),
    Report(u64),
}

impl KillAt {
    fn encode(self) -> String {
        match self {
            KillAt::Chowned(n) => format!("chowned:{n}"),
            KillAt::Report(n) => format!("report:{n}"),
        }
    }

    fn decode(s: &str) -> KillAt {
        let (k, n) = s.split_once(':').expect("kill point");
        let n = n.parse().expect("count");
        match k {
            "chowned" => KillAt::Chowned(n),
            _ => KillAt::Report(n),
        }
    }
}

fn die() -> ! {
    // SAFETY: kill of our own pid, as `kill -9` would.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    unreachable!("SIGKILL delivered")
}

/// The child: restores the guest and is killed where `KILL_AT_ENV` says.
fn restore_child(dir: &Path) {
    let at = KillAt::decode(&std::env::var(KILL_AT_ENV).expect("kill point"));
    let (_store, dac) = driver(dir);
    let count = Arc::new(AtomicU64::new(0));
    match at {
        KillAt::Chowned(n) => {
            let c = count.clone();
            dac.set_fault_hook(Some(Arc::new(move |p: &str| {
                if p == "tree-entry-chowned" && c.fetch_add(1, Ordering::SeqCst) + 1 == n {
                    die();
                }
                false
            })));
        }
        KillAt::Report(n) => {
            let c = count.clone();
            dac.set_progress(Some(Arc::new(
                move |p: &svirt_drivers::progress::Progress| {
                    if p.phase == svirt_drivers::progress::Phase::Restoring
                        && c.fetch_add(1, Ordering::SeqCst) + 1 == n
                    {
                        die();
                    }
                },
            )));
        }
    }
    let errors = dac.restore_all(&share_plan(&dir.join("share")), &guest("victim"));
    panic!("not killed at {at:?}; restore_all returned {errors:?}");
}

/// Starts the guest on a fresh share, runs the restore in a child killed at `at`, then
/// recovers as the next open would; returns the share's snapshot after the recovery and the
/// one before the start.
fn kill_and_recover(at: Option<KillAt>) -> (Snap, Snap) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    root_accounts(dir);
    let share = dir.join("share");
    build_share(&share);
    let before = snapshot(&share);
    assert_eq!(before.len(), 1 + DIRS + DIRS * FILES);
    {
        let (_store, dac) = driver(dir);
        let mut g = guest("victim");
        dac.reserve(&share_plan(&share), &mut g).expect("reserve");
        dac.set_all(&share_plan(&share), &g).expect("set_all");
        let uid = g.ids.expect("ids").0;
        // The guest holds every entry (the precondition of the attack).
        assert!(
            tree_snapshot(&share).values().all(|&(u, _, _)| u == uid),
            "every entry owned by the guest"
        );
    }
    match at {
        Some(at) => {
            let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
                .args([
                    "--exact",
                    "attack_crash_restore_kill9_every_4096_entries",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, dir)
                .env(KILL_AT_ENV, at.encode())
                .output()
                .expect("run the child");
            assert_eq!(
                out.status.signal(),
                Some(libc::SIGKILL),
                "the child is killed at {at:?}: {:?}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            let (_store, dac) = driver(dir);
            // The next open: the guest is not running.
            let errors = dac.recover_trees(&|_| false);
            assert!(errors.is_empty(), "{at:?}: recovery: {errors:?}");
            assert!(dac.tree_records().expect("records").is_empty());
        }
        None => {
            let (_store, dac) = driver(dir);
            let errors = dac.restore_all(&share_plan(&share), &guest("victim"));
            assert!(errors.is_empty(), "{errors:?}");
        }
    }
    (snapshot(&share), before)
}

fn first_difference(after: &Snap, before: &Snap) -> String {
    before
        .iter()
        .find(|(p, v)| after.get(*p) != Some(v))
        .map(|(p, v)| {
            format!(
                "{} was {:?}, is {:?} ({} entries differ)",
                p.display(),
                v,
                after.get(p),
                before
                    .iter()
                    .filter(|(p, v)| after.get(*p) != Some(v))
                    .count()
            )
        })
        .unwrap_or_default()
}

#[test]
fn attack_crash_restore_kill9_every_4096_entries() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        return restore_child(Path::new(&dir));
    }
    if skip_unless_root() {
        panic!("this attack test needs root: not counted as a pass");
    }
    // Killed right after an entry's owner went back, before its mode did: at the first
    // entry and after every 4,096; then at progress reports (between entries).
    let points = [
        KillAt::Chowned(1),
        KillAt::Chowned(4096),
        KillAt::Chowned(8192),
        KillAt::Chowned(12288),
        KillAt::Chowned(16384),
        KillAt::Report(1),
        KillAt::Report(3),
    ];
    for at in points {
        let (after, before) = kill_and_recover(Some(at));
        assert!(
            after == before,
            "killed at {at:?}: not exactly restored: {}",
            first_difference(&after, &before)
        );
    }
}

#[test]
fn attack_crash_restore_control_unkilled_restore_is_exact() {
    if skip_unless_root() {
        panic!("this attack test needs root: not counted as a pass");
    }
    let (after, before) = kill_and_recover(None);
    assert!(
        after == before,
        "not exactly restored: {}",
        first_difference(&after, &before)
    );
}
