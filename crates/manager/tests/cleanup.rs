//! The cleanup after a QEMU exit (restore of every label, release, cgroup and runtime
//! files) with a share large enough that its restore takes about a second: other guests
//! are reaped and cleaned up meanwhile; the guest is `stopping` in memory as in the store
//! while it runs, a stop arriving meanwhile waits for it, and the stored record ends as the
//! one shown. Real QEMU under TCG, DAC + Landlock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Env, OwnerMode, Tmpfs, owner_mode, poll_until, require_env};
use svirt_manager::{ExitReason, GuestState, Manager, ManagerError, StartOptions, TreePhase};

/// Files in the share: its DAC restore takes about a second on this host.
const FILES: usize = 150_000;

/// The tests of this file one at a time: their timing must not compete for the two cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A share of [`FILES`] files on a tmpfs of its own (unmounted when the guard drops,
/// before `env` removes its directory), a file in it to probe and that file's owner and
/// mode before any guest.
fn big_share(env: &Env) -> Option<(Tmpfs, PathBuf, PathBuf, OwnerMode)> {
    let t = Instant::now();
    let fs = match Tmpfs::mount(&env.path("fast")) {
        Ok(fs) => fs,
        Err(e) => {
            svirt_testkit::skip("root", format!("a tmpfs for the share: {e}"));
            return None;
        }
    };
    let share = env.tree(&env.path("fast/share"), FILES);
    eprintln!("{FILES}-file share made in {:?}", t.elapsed());
    let probe = share.join("d7/f7");
    let before = owner_mode(&probe);
    Some((fs, share, probe, before))
}

/// Whether the guest's share is being restored right now.
fn restoring(m: &Manager, name: &str) -> bool {
    m.progress(name)
        .is_ok_and(|t| t.iter().any(|t| t.phase == TreePhase::Restoring))
}

#[test]
fn guest_exiting_on_its_own_is_stopping_until_cleaned_up() {
    require_env!();
    let _one = serial();
    let env = Env::new("own-exit");
    let Some((_fs, share, probe, before)) = big_share(&env) else {
        return;
    };
    let (m, _) = Manager::open(env.config("dac,landlock")).unwrap();
    let info = m
        .start(
            &env.xml_with_share("a", &share),
            StartOptions { paused: true },
        )
        .unwrap();
    assert_eq!(Some(owner_mode(&probe).0), info.uid);
    // QEMU quits on its own (as on a guest poweroff); the reply may be lost with it.
    let _ = m.qemu_monitor_command("a", serde_json::json!({"execute": "quit"}));
    assert!(
        poll_until(Duration::from_secs(30), || restoring(&m, "a")),
        "the share's restore was never seen"
    );
    let t = Instant::now();
    // While the cleanup runs the guest is `stopping` in memory (as the store says), so
    // its monitor is refused like any stopping guest's.
    assert_eq!(m.info("a").unwrap().state, GuestState::Stopping);
    assert!(
        matches!(
            m.qemu_monitor_command("a", serde_json::json!({"execute": "query-status"})),
            Err(ManagerError::BadState { .. })
        ),
        "monitor of a stopping guest"
    );
    // A destroy arriving now changes nothing: it waits for the cleanup and answers with
    // the exit QEMU chose itself.
    assert!(restoring(&m, "a"), "the cleanup ended before the destroy");
    let exit = m.destroy("a").unwrap();
    eprintln!("destroy waited {:?} for the cleanup", t.elapsed());
    assert_eq!(exit.reason, ExitReason::Shutdown);
    assert!(exit.restore_errors.is_empty(), "{:?}", exit.restore_errors);
    let shown = m.info("a").unwrap();
    assert_eq!(shown.state, GuestState::ShutOff);
    assert_eq!(shown.exit.as_ref(), Some(&exit));
    assert_eq!(owner_mode(&probe), before, "share not restored");
    drop(m);
    // The stored record is the one shown: shut off, QEMU's own exit, no stop intent.
    let store = svirt_store::Store::open(&env.path("state")).unwrap();
    let stored = store
        .list_guests()
        .unwrap()
        .into_iter()
        .find(|g| g.name == "a")
        .expect("record kept");
    assert_eq!(stored.state, "shut-off");
    let rec: serde_json::Value = serde_json::from_slice(&stored.record).unwrap();
    assert_eq!(rec["state"], "shut-off", "{rec}");
    assert_eq!(rec["exit"]["reason"], "shutdown", "{rec}");
    assert_eq!(rec["intent"], serde_json::Value::Null, "{rec}");
    drop(store);
    env.assert_store_clean("after the guest's own exit");
}

#[test]
fn other_guests_are_reaped_and_cleaned_up_during_a_long_restore() {
    require_env!();
    let _one = serial();
    let env = Env::new("overlap");
    let Some((_fs, share, probe, before)) = big_share(&env) else {
        return;
    };
    let disk = env.raw("small.img");
    let disk_before = owner_mode(&disk);
    let (m, _) = Manager::open(env.config("dac,landlock")).unwrap();
    m.start(
        &env.xml_with_share("big", &share),
        StartOptions { paused: true },
    )
    .unwrap();
    let small = m
        .start(
            &env.xml("small", &[(disk.clone(), "raw", false)]),
            StartOptions { paused: true },
        )
        .unwrap();
    let small_pid = small.pid.unwrap();
    let big_done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let destroy = s.spawn(|| {
            let r = m.destroy("big");
            big_done.store(true, Ordering::SeqCst);
            r
        });
        assert!(
            poll_until(Duration::from_secs(30), || restoring(&m, "big")),
            "the big share's restore was never seen"
        );
        // The small guest's QEMU quits while the big share is being restored.
        let t = Instant::now();
        let _ = m.qemu_monitor_command("small", serde_json::json!({"execute": "quit"}));
        let exit = m
            .wait("small", Duration::from_secs(60))
            .unwrap()
            .expect("the small guest's exit was noticed");
        let took = t.elapsed();
        let overlapped = !big_done.load(Ordering::SeqCst);
        eprintln!("small guest cleaned up in {took:?}; big restore still running: {overlapped}");
        assert!(
            overlapped,
            "the small guest's cleanup waited for the big guest's restore ({took:?})"
        );
        assert_eq!(exit.reason, ExitReason::Shutdown);
        assert!(exit.restore_errors.is_empty(), "{:?}", exit.restore_errors);
        // Reaped by the manager: no zombie left behind.
        assert!(std::fs::metadata(format!("/proc/{small_pid}")).is_err());
        assert_eq!(
            owner_mode(&disk),
            disk_before,
            "small guest's disk not restored"
        );
        let big = destroy.join().unwrap().unwrap();
        assert_eq!(big.reason, ExitReason::Destroyed);
        assert!(big.restore_errors.is_empty(), "{:?}", big.restore_errors);
    });
    assert_eq!(owner_mode(&probe), before, "share not restored");
    drop(m);
    env.assert_store_clean("after both guests");
}

#[test]
fn stop_waits_for_qemu_exit_within_the_kill_timeout_then_for_the_restore() {
    require_env!();
    let _one = serial();
    let env = Env::new("killwait");
    let Some((_fs, share, probe, before)) = big_share(&env) else {
        return;
    };
    let mut cfg = env.config("dac,landlock");
    // Far shorter than the share's restore, far longer than QEMU takes to die of SIGKILL.
    cfg.kill_timeout = Duration::from_millis(300);
    let (m, _) = Manager::open(cfg).unwrap();
    let xml = env.xml_with_share("big", &share);
    for destroy in [true, false] {
        m.start(&xml, StartOptions { paused: true }).unwrap();
        let done = AtomicBool::new(false);
        let (exit, took, phases) = std::thread::scope(|s| {
            let poller = s.spawn(|| {
                let mut phases = Vec::new();
                while !done.load(Ordering::SeqCst) {
                    if let Ok(t) = m.progress("big") {
                        phases.extend(t.into_iter().map(|t| t.phase));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                phases
            });
            let t = Instant::now();
            // No OS answers the ACPI power-down: the shutdown kills QEMU after 100 ms.
            let exit = if destroy {
                m.destroy("big")
            } else {
                m.shutdown_timeout("big", Duration::from_millis(100))
            };
            let took = t.elapsed();
            done.store(true, Ordering::SeqCst);
            (exit, took, poller.join().unwrap())
        });
        eprintln!("destroy={destroy}: stop with the restore took {took:?}");
        let exit = exit.unwrap_or_else(|e| panic!("destroy={destroy}: {e} (after {took:?})"));
        assert_eq!(
            exit.reason,
            if destroy {
                ExitReason::Destroyed
            } else {
                ExitReason::ShutdownTimeout
            }
        );
        assert!(exit.restore_errors.is_empty(), "{:?}", exit.restore_errors);
        // The case this is about: the restore outlasted the kill timeout.
        assert!(
            took > Duration::from_millis(300) + Duration::from_millis(500),
            "the stop took only {took:?}: the restore was too short to test anything"
        );
        assert!(
            phases.contains(&TreePhase::Restoring),
            "the restore was not shown while the stop waited: {phases:?}"
        );
        assert_eq!(owner_mode(&probe), before, "share not restored");
    }
    drop(m);
    env.assert_store_clean("after the stops");
}
