//! What a guest that is not active left outside the drivers' records (processes in its
//! cgroups, its pid file's QEMU) is removed at the next open before anything of it is
//! restored, and only when its record says its cleanup did not finish: the cgroup of a
//! guest whose stop completed is never touched (another manager sharing the cgroup parent
//! may run a guest of the same name there). Real QEMU under TCG, DAC + Landlock, real
//! cgroups.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use common::{Env, owner_mode, require_env};
use svirt_manager::cgroup::{Layout, join_dirs};
use svirt_manager::{ExitReason, GuestState, Manager, StartOptions};

const WATCH_ENV: &str = "SVIRT_TEST_WATCH_DIR";

/// Runs only inside the re-executed test binary: watches the owner of `<dir>/disk` (a
/// path in `<dir>/disk-path`) without pausing; writes `<dir>/ready` once watching, and
/// `<dir>/restored` and exits as soon as the owner is no longer the uid in `<dir>/uid`.
/// Killed by the manager before the restore, it never writes `restored`.
#[test]
fn watcher_child_entry() {
    use std::os::unix::fs::MetadataExt;
    let Ok(dir) = std::env::var(WATCH_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let disk = PathBuf::from(std::fs::read_to_string(dir.join("disk-path")).unwrap());
    let uid: u32 = std::fs::read_to_string(dir.join("uid"))
        .unwrap()
        .parse()
        .unwrap();
    std::fs::write(dir.join("ready"), b"").unwrap();
    loop {
        if std::fs::metadata(&disk).map(|m| m.uid()).ok() != Some(uid) {
            std::fs::write(dir.join("restored"), b"").unwrap();
            return;
        }
    }
}

/// The watcher above, on `disk` owned by `uid`, ready when this returns.
fn watcher(env: &Env, disk: &Path, uid: u32) -> (Child, PathBuf) {
    let dir = env.path("watch");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("disk-path"), disk.as_os_str().as_encoded_bytes()).unwrap();
    std::fs::write(dir.join("uid"), uid.to_string()).unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "watcher_child_entry", "--nocapture"])
        .env(WATCH_ENV, &dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        common::poll_until(Duration::from_secs(20), || dir.join("ready").exists()),
        "the watcher did not start"
    );
    (child, dir)
}

fn layout() -> Layout {
    Layout::detect(Path::new("/sys/fs/cgroup"))
}

/// A cleanup that panicked before its undo leaves the guest's cgroup (and its uid and
/// disk owner). A process left in that cgroup is killed at the next open before the
/// disk is restored: it never sees the restored owner (before the fix the sweep restored
/// first and killed after).
#[test]
fn leftover_processes_are_killed_before_the_restore() {
    require_env!();
    let env = Env::new("leftkill");
    let disk = env.raw("d.img");
    let before = owner_mode(&disk);
    let mut cfg = env.config("dac,landlock");
    cfg.fault = Some("during-stop:panic".into());
    let (m, _) = Manager::open(cfg).unwrap();
    let info = m
        .start(
            &env.xml("p", &[(disk.clone(), "raw", false)]),
            StartOptions { paused: true },
        )
        .unwrap();
    let uid = info.uid.unwrap();
    let exit = m.destroy("p").unwrap();
    assert_eq!(exit.reason, ExitReason::Destroyed);
    assert!(
        exit.restore_errors
            .last()
            .is_some_and(|e| e.contains("panicked")),
        "{exit:?}"
    );
    assert_eq!(m.info("p").unwrap().state, GuestState::ShutOff);
    drop(m);
    assert_eq!(
        owner_mode(&disk).0,
        uid,
        "the panicked cleanup restored the disk"
    );
    let dirs = layout().guest_dirs(&env.cgroup_parent, "p");
    assert!(dirs.iter().all(|d| d.exists()), "no cgroup left: {dirs:?}");

    let (mut child, dir) = watcher(&env, &disk, uid);
    join_dirs(&dirs, child.id() as i32).unwrap();
    let (m, report) = Manager::open(env.config("dac,landlock")).unwrap();
    eprintln!("recovered: {:?}", report.recovered);
    let status = child.wait().unwrap();
    assert!(
        !dir.join("restored").exists(),
        "a process left in the guest's cgroup saw the disk restored ({status:?}): the sweep restored before it killed"
    );
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "{status:?}"
    );
    assert_eq!(owner_mode(&disk), before);
    assert!(dirs.iter().all(|d| !d.exists()), "cgroup left: {dirs:?}");
    drop(m);
    env.assert_store_clean("after the open");
}

/// A guest whose stop completed has nothing left: at the next open its name's cgroup is
/// not touched. A process in `<cgroup parent>/<name>` there (as another manager with
/// another state dir, sharing the cgroup parent, would run a guest of the same name)
/// survives the open (before the fix every open killed it).
#[test]
fn the_cgroup_of_a_completed_stop_is_never_touched_at_open() {
    require_env!();
    let env = Env::new("leftkeep");
    let (m, _) = Manager::open(env.config("dac,landlock")).unwrap();
    m.start(&env.xml("g", &[]), StartOptions { paused: true })
        .unwrap();
    let exit = m.destroy("g").unwrap();
    assert!(exit.restore_errors.is_empty(), "{exit:?}");
    drop(m);
    let dirs = layout().guest_dirs(&env.cgroup_parent, "g");
    for d in &dirs {
        assert!(!d.exists(), "the stop left {}", d.display());
        std::fs::create_dir_all(d).unwrap();
    }
    // Killed by pid on every path (the Env's drop kills what is left in its cgroups too).
    struct Reaped(Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut other = Reaped(Command::new("sleep").arg("600").spawn().unwrap());
    join_dirs(&dirs, other.0.id() as i32).unwrap();
    let (m, report) = Manager::open(env.config("dac,landlock")).unwrap();
    eprintln!("recovered: {:?}", report.recovered);
    assert!(
        other.0.try_wait().unwrap().is_none() && common::alive(other.0.id() as i32),
        "the open killed a process in the cgroup of a guest whose stop completed"
    );
    assert!(dirs.iter().all(|d| d.exists()));
    drop(m);
    drop(other);
    env.assert_store_clean("after the open");
}
