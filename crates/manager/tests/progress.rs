//! Progress of tree operations through the manager's API, with the stack the other
//! manager tests use (DAC + Landlock, real QEMU TCG, paused): the guest's trees listed, with
//! the DAC driver's counts, while its start labels them and its destroy restores them,
//! nothing before or after. The relabel engine's counted reports are tested in
//! `src/progress.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Env, require_env};
use svirt_manager::{Manager, ManagerError, StartOptions, TreePhase, TreeProgress};

/// Polls `m.progress(name)` until `done` (or for at most 5 minutes, so a failed start
/// cannot hang the test), collecting every non-empty answer.
fn poll(m: &Manager, name: &str, done: &AtomicBool) -> Vec<TreeProgress> {
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while !done.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
        if let Ok(t) = m.progress(name) {
            seen.extend(t);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    seen
}

/// Files in the share: enough for several of the driver's reports (every 4096 entries).
const FILES: usize = 15_000;

/// The counted DAC reports of `phase` seen; at least one, never more done than total.
fn counted(seen: &[TreeProgress], phase: TreePhase) -> Vec<&TreeProgress> {
    let c: Vec<&TreeProgress> = seen
        .iter()
        .filter(|t| t.model == "dac" && t.phase == phase && t.done.is_some())
        .collect();
    assert!(!c.is_empty(), "no DAC count while {phase:?}: {seen:?}");
    assert!(c.iter().all(|t| t.done <= t.total), "{c:?}");
    c
}

#[test]
fn share_of_15000_files_is_listed_while_labeled_and_restored() {
    require_env!();
    raise_nofile();
    let env = Env::new("progress");
    let (m, _) = Manager::open(env.config("dac,landlock")).unwrap();
    let share = env.tree(&env.path("share"), FILES);
    let before = std::fs::metadata(share.join("d7/f7")).unwrap();
    let xml = env.xml_with_share("fs1", &share);
    assert!(matches!(
        m.progress("fs1"),
        Err(ManagerError::NoSuchGuest(_))
    ));
    let done = AtomicBool::new(false);
    let (info, seen) = std::thread::scope(|s| {
        let p = s.spawn(|| poll(&m, "fs1", &done));
        let t = std::time::Instant::now();
        let info = m.start(&xml, StartOptions { paused: true });
        eprintln!("start with a {FILES}-file share: {:?}", t.elapsed());
        done.store(true, Ordering::SeqCst);
        (info, p.join().unwrap())
    });
    let info = info.unwrap();
    assert!(
        m.progress("fs1").unwrap().is_empty(),
        "cleared once the start is over"
    );
    let share_s = share.display().to_string();
    assert!(
        seen.iter()
            .any(|t| t.path == share_s && t.phase == TreePhase::Labeling && t.model == "dac"),
        "the share was never listed while labeled: {seen:?}"
    );
    let labeled = counted(&seen, TreePhase::Labeling);
    assert!(
        labeled.iter().any(|t| t.done >= Some(4096)),
        "counts while labeling: {labeled:?}"
    );
    assert!(seen.iter().all(|t| t.path == share_s));
    // The guest's uid really owns the tree while it runs.
    let during = std::fs::metadata(share.join("d7/f7")).unwrap();
    assert_eq!(Some(during.uid()), info.uid);

    done.store(false, Ordering::SeqCst);
    let (exit, seen) = std::thread::scope(|s| {
        let p = s.spawn(|| poll(&m, "fs1", &done));
        let t = std::time::Instant::now();
        let exit = m.destroy("fs1");
        eprintln!("destroy with a {FILES}-file share: {:?}", t.elapsed());
        done.store(true, Ordering::SeqCst);
        (exit, p.join().unwrap())
    });
    let exit = exit.unwrap();
    assert!(exit.restore_errors.is_empty(), "{:?}", exit.restore_errors);
    assert!(m.progress("fs1").unwrap().is_empty());
    assert!(
        seen.iter()
            .any(|t| t.path == share_s && t.phase == TreePhase::Restoring && t.model == "dac"),
        "the share was never listed while restored: {seen:?}"
    );
    let restored = counted(&seen, TreePhase::Restoring);
    assert!(
        restored.iter().any(|t| t.done >= Some(4096)),
        "counts while restoring: {restored:?}"
    );
    let after = std::fs::metadata(share.join("d7/f7")).unwrap();
    assert_eq!(
        (after.uid(), after.gid(), after.mode()),
        (before.uid(), before.gid(), before.mode())
    );
    assert!(m.progress_all().is_empty());
    drop(m);
    env.assert_store_clean("after the destroy");
}

/// As a daemon does (svirtd raises it at startup): the soft limit up to the hard one.
fn raise_nofile() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}
