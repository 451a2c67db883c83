//! Every file the manager writes under its state and run directories is root's and 0600,
//! every directory root's and 0700 (before the fix the databases were 0644: any user read
//! the names of every guest's disks and shares). The one exception is each running
//! guest's runtime directory: its own (its uid, 0700), whose contents are QEMU's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::{Env, require_env};
use svirt_manager::{Manager, StartOptions};

/// Every entry below `root` (and `root` itself) that is not inside one of `guest_dirs`:
/// (path, uid, mode).
fn entries(root: &Path, guest_dirs: &[(PathBuf, u32)], out: &mut Vec<String>) {
    let md = std::fs::symlink_metadata(root).unwrap();
    let mode = md.mode() & 0o7777;
    if let Some((_, uid)) = guest_dirs.iter().find(|(d, _)| d == root) {
        if md.uid() != *uid || mode != 0o700 || !md.is_dir() {
            out.push(format!(
                "{}: guest runtime dir uid {} mode {mode:o} (want uid {uid}, 0700)",
                root.display(),
                md.uid()
            ));
        }
        return;
    }
    let want = if md.is_dir() { 0o700 } else { 0o600 };
    if md.uid() != 0 || mode != want {
        out.push(format!(
            "{}: uid {} mode {mode:o} (want uid 0, {want:o})",
            root.display(),
            md.uid()
        ));
    }
    if md.is_dir() {
        for e in std::fs::read_dir(root).unwrap().flatten() {
            entries(&e.path(), guest_dirs, out);
        }
    }
}

fn check(env: &Env, guest_dirs: &[(PathBuf, u32)], what: &str) -> usize {
    let mut bad = Vec::new();
    let mut n = 0;
    for d in ["state", "run"] {
        let mut all = Vec::new();
        entries(&env.path(d), guest_dirs, &mut all);
        bad.extend(all);
        n += walk_count(&env.path(d));
    }
    assert!(bad.is_empty(), "{what}: {}", bad.join("\n"));
    n
}

fn walk_count(p: &Path) -> usize {
    1 + std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    if e.file_type().unwrap().is_dir() {
                        walk_count(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn state_and_run_files_are_root_only() {
    require_env!();
    let env = Env::new("modes");
    let share = env.tree(&env.path("images/share"), 10);
    let (m, _) = Manager::open(env.config("dac,landlock")).unwrap();
    let info = m
        .start(
            &env.xml_with_share("g", &share),
            StartOptions { paused: true },
        )
        .unwrap();
    let guest = [(info.runtime_dir.clone(), info.uid.unwrap())];
    // The databases, the control dir and its socket, log and the guest's runtime dir: a
    // walk that checks nothing would count only the two roots.
    let n = check(&env, &guest, "while the guest runs");
    assert!(n >= 8, "only {n} entries walked");
    m.destroy("g").unwrap();
    check(&env, &[], "after the stop");
    drop(m);
    check(&env, &[], "after close");
    // Control: a loose file left by an older version is made private at the next open.
    let db = std::fs::read_dir(env.path("state"))
        .unwrap()
        .flatten()
        .find(|e| e.file_type().unwrap().is_file())
        .unwrap()
        .path();
    std::fs::set_permissions(&db, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (m, _) = Manager::open(env.config("dac,landlock")).unwrap();
    check(&env, &[], "after a reopen");
    drop(m);
    env.assert_store_clean("modes");
}
