//! Stops that meet a QEMU that does not answer or does not die at once: a shutdown talking
//! to a hung monitor holds no lock other callers need; a second stop arriving during one
//! never downgrades its intent. Real QEMU under TCG, DAC + Landlock; a QEMU held between
//! SIGKILL and its death by the cgroup v1 freezer (a frozen task dies only when thawed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
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

/// A QEMU in a freezer cgroup (v1) of this test: frozen, it does not die of SIGKILL until
/// thawed, which holds a stop between its signal and QEMU's exit for as long as the test
/// needs. Thawed and removed on drop (also on failure).
struct Frozen(PathBuf);

impl Frozen {
    /// Why this host cannot freeze a task through SIGKILL, if it cannot.
    fn unavailable() -> Option<String> {
        let root = std::path::Path::new("/sys/fs/cgroup/freezer");
        (!root.join("cgroup.procs").exists()).then(|| {
            "no cgroup v1 freezer at /sys/fs/cgroup/freezer (a v2-frozen task dies of SIGKILL)"
                .to_string()
        })
    }

    fn freeze(pid: i32, tag: &str) -> Frozen {
        let dir = PathBuf::from(format!(
            "/sys/fs/cgroup/freezer/svirt-test-{}-{tag}",
            std::process::id()
        ));
        std::fs::create_dir(&dir).unwrap();
        let f = Frozen(dir);
        std::fs::write(f.0.join("cgroup.procs"), pid.to_string()).unwrap();
        std::fs::write(f.0.join("freezer.state"), "FROZEN").unwrap();
        assert!(
            common::poll_until(Duration::from_secs(5), || {
                std::fs::read_to_string(f.0.join("freezer.state"))
                    .unwrap_or_default()
                    .trim()
                    == "FROZEN"
            }),
            "{pid} not frozen"
        );
        f
    }

    fn thaw(&self) {
        let _ = std::fs::write(self.0.join("freezer.state"), "THAWED");
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.thaw();
        // Killed tasks die once thawed; anything left goes back to the root group.
        common::poll_until(Duration::from_secs(5), || {
            std::fs::read_to_string(self.0.join("cgroup.procs")).is_ok_and(|s| s.trim().is_empty())
        });
        if let Ok(procs) = std::fs::read_to_string(self.0.join("cgroup.procs")) {
            for p in procs.lines() {
                let _ = std::fs::write("/sys/fs/cgroup/freezer/cgroup.procs", p);
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A second stop arriving while one is under way never downgrades its intent: a shutdown
/// arriving during a destroy waits for it, and a shutdown whose ACPI wait ends after a
/// destroy escalated it does not rewrite the intent as `shutdown-timeout`. Every caller
/// gets `destroyed`.
#[test]
fn a_second_stop_never_downgrades_the_first() {
    require_env!();
    if let Some(why) = Frozen::unavailable() {
        svirt_testkit::skip("cgroup-freezer", why);
        return;
    }
    let env = Env::new("intent");
    let mut cfg = env.config("dac,landlock");
    // Far longer than the test holds a killed QEMU frozen.
    cfg.kill_timeout = Duration::from_secs(30);
    let (m, _) = Manager::open(cfg).unwrap();
    let paused = StartOptions { paused: true };
    let stopping = |name: &str| {
        assert!(
            common::poll_until(Duration::from_secs(5), || {
                m.info(name).unwrap().state == GuestState::Stopping
            }),
            "{name} never stopping"
        );
    };
    std::thread::scope(|s| {
        // A destroy under way (QEMU frozen: killed, not dead yet), then a shutdown.
        let a = m.start(&env.xml("a", &[]), paused).unwrap();
        let frozen = Frozen::freeze(a.pid.unwrap(), "a");
        let destroy = s.spawn(|| m.destroy("a"));
        stopping("a");
        std::thread::sleep(Duration::from_millis(200));
        let shutdown = s.spawn(|| m.shutdown_timeout("a", Duration::from_secs(1)));
        std::thread::sleep(Duration::from_millis(300));
        frozen.thaw();
        let d = destroy.join().unwrap().unwrap();
        let sd = shutdown.join().unwrap().unwrap();
        drop(frozen);
        eprintln!("destroy then shutdown: {:?} / {:?}", d.reason, sd.reason);
        assert_eq!(d.reason, ExitReason::Destroyed);
        assert_eq!(
            sd.reason,
            ExitReason::Destroyed,
            "the shutdown rewrote the intent"
        );
        assert_eq!(
            m.info("a").unwrap().exit.map(|e| e.reason),
            Some(ExitReason::Destroyed)
        );

        // A shutdown waiting for the power-down; a destroy escalates it (QEMU frozen
        // first); the shutdown's wait then ends before QEMU dies.
        m.start(&env.xml("b", &[]), paused).unwrap();
        let b_pid = m.info("b").unwrap().pid.unwrap();
        let t = Instant::now();
        let shutdown = s.spawn(|| m.shutdown_timeout("b", Duration::from_secs(1)));
        stopping("b");
        // The power-down is asked (QEMU answers at once) before QEMU is frozen.
        std::thread::sleep(Duration::from_millis(300));
        let frozen = Frozen::freeze(b_pid, "b");
        let destroy = s.spawn(|| m.destroy("b"));
        std::thread::sleep((Duration::from_millis(1500)).saturating_sub(t.elapsed()));
        assert!(!shutdown.is_finished() && !destroy.is_finished());
        frozen.thaw();
        let sd = shutdown.join().unwrap().unwrap();
        let d = destroy.join().unwrap().unwrap();
        drop(frozen);
        eprintln!("shutdown then destroy: {:?} / {:?}", sd.reason, d.reason);
        assert_eq!(
            d.reason,
            ExitReason::Destroyed,
            "the shutdown's timeout downgraded the destroy"
        );
        assert_eq!(sd.reason, ExitReason::Destroyed);
    });
    drop(m);
    env.assert_store_clean("after the stops");
}

/// A destroy whose SIGKILL failed (`stop-signal:error` stands for a failed
/// `pidfd_send_signal`, after the intent `destroy` is recorded) leaves QEMU running; the
/// next destroy sends SIGKILL again instead of only waiting (before: it waited the kill
/// timeout and failed, and so did every later one).
#[test]
fn a_destroy_after_a_failed_kill_signals_again() {
    require_env!();
    let env = Env::new("rekill");
    let mut cfg = env.config("dac,landlock");
    cfg.fault = Some("stop-signal:error".into());
    cfg.kill_timeout = Duration::from_secs(3);
    let (m, _) = Manager::open(cfg).unwrap();
    let info = m
        .start(&env.xml("g", &[]), StartOptions { paused: true })
        .unwrap();
    let pid = info.pid.unwrap();
    assert!(
        matches!(m.destroy("g"), Err(svirt_manager::ManagerError::Fault(_))),
        "the injected signal failure"
    );
    assert_eq!(m.info("g").unwrap().state, GuestState::Stopping);
    assert!(common::alive(pid));
    let t = Instant::now();
    let exit = m.destroy("g").unwrap();
    eprintln!("second destroy: {:?}", t.elapsed());
    assert_eq!(exit.reason, ExitReason::Destroyed);
    assert!(exit.restore_errors.is_empty(), "{exit:?}");
    assert!(!common::alive(pid));
    drop(m);
    env.assert_store_clean("after the second destroy");
}
