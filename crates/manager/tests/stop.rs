//! Stops that meet a QEMU that does not answer or does not die at once: a shutdown talking
//! to a hung monitor holds no lock other callers need. Real QEMU under TCG, DAC + Landlock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Env, require_env};
use svirt_manager::{ExitReason, GuestState, Manager, StartOptions};

/// A shutdown of a guest whose QEMU accepts monitor connections but never answers (stopped
/// by SIGSTOP here, as a hung QEMU would be) waits up to 5 s for QMP's greeting. Meanwhile
/// `list` and `info` answer, another guest starts, and another guest's exit is reaped and
/// cleaned up: the shutdown holds no guest lock during the conversation.
#[test]
fn a_hung_monitor_blocks_no_other_call() {
    require_env!();
    let env = Env::new("hungqmp");
    let (m, _) = Manager::open(env.config("dac,landlock")).unwrap();
    let paused = StartOptions { paused: true };
    let a = m.start(&env.xml("a", &[]), paused).unwrap();
    m.start(&env.xml("b", &[]), paused).unwrap();
    let a_pid = a.pid.unwrap();
    // SAFETY: a signal to the QEMU this test started.
    assert_eq!(unsafe { libc::kill(a_pid, libc::SIGSTOP) }, 0);
    let m2 = m.clone();
    let shutdown = std::thread::spawn(move || m2.shutdown_timeout("a", Duration::from_secs(1)));
    // The shutdown records its intent and connects to the silent monitor.
    assert!(common::poll_until(Duration::from_secs(2), || {
        m.list(false)
            .unwrap()
            .iter()
            .any(|g| g.name == "a" && g.state == GuestState::Stopping)
    }));
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let listed = m.list(true).unwrap();
    let info = m.info("a").unwrap();
    let took = t.elapsed();
    eprintln!("list + info during the hung QMP conversation: {took:?}");
    assert_eq!(listed.len(), 2);
    assert_eq!(info.state, GuestState::Stopping);
    assert!(
        took < Duration::from_secs(1),
        "list/info waited {took:?} for the shutdown's QMP conversation"
    );
    // A start wakes the supervisor, which then walks every guest; another guest's exit
    // must still be reaped and cleaned up at once.
    let t = Instant::now();
    m.start(&env.xml("c", &[]), paused).unwrap();
    let _ = m.qemu_monitor_command("b", serde_json::json!({"execute": "quit"}));
    let exit = m.wait("b", Duration::from_secs(3)).unwrap();
    let took = t.elapsed();
    eprintln!("start of c, quit and cleanup of b during the hung QMP conversation: {took:?}");
    assert_eq!(
        exit.map(|e| e.reason),
        Some(ExitReason::Shutdown),
        "b's exit was not handled within 3 s"
    );
    assert!(!shutdown.is_finished(), "the QMP conversation ended early");
    // The silent monitor fails the power-down: the guest is killed (SIGKILL ends a
    // stopped process too).
    let exit = shutdown.join().unwrap().unwrap();
    assert_eq!(exit.reason, ExitReason::ShutdownTimeout);
    assert!(exit.restore_errors.is_empty(), "{:?}", exit.restore_errors);
    assert!(!common::alive(a_pid));
    m.destroy("c").unwrap();
    drop(m);
    env.assert_store_clean("after the stops");
}
