//! Crash safety: a child process running a Manager is killed with SIGKILL at each fault
//! point (or while a guest runs); a new Manager on the same state must reattach to running
//! guests, clean up after the others, and leak no uid, reservation, original or file owner.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Env, alive, require_env};
use svirt_manager::fault::{START_STEPS, STOP_STEPS};
use svirt_manager::{Config, ExitReason, GuestState, Manager, StartOptions};
use svirt_store::GuestRecord;

const CHILD_ENV: &str = "SVIRT_MGR_CRASH_CHILD";

fn child_config(dir: &Path) -> Config {
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Runs only inside the re-executed test binary: starts the guest (and stops it when
/// asked) with SVIRT_FAULT set by the parent; the fault kills this process.
#[test]
fn crash_child_entry() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let (m, _) = Manager::open(child_config(&dir)).unwrap();
    let xml = std::fs::read_to_string(dir.join("guest.xml")).unwrap();
    let info = m.start(&xml, StartOptions { paused: true }).unwrap();
    std::fs::write(dir.join("started"), info.pid.unwrap().to_string()).unwrap();
    if std::env::var("CRASH_STOP").is_ok() {
        let _ = m.destroy(&info.name);
    } else {
        // Wait to be killed by the parent.
        std::thread::sleep(Duration::from_secs(60));
    }
}

fn run_child(env: &Env, cfg: &Config, xml: &str, fault: Option<&str>, stop: bool) -> i32 {
    let dir = env.path("child");
    std::fs::create_dir_all(&dir).unwrap();
    let _ = std::fs::remove_file(dir.join("started"));
    std::fs::write(dir.join("config.json"), serde_json::to_string(cfg).unwrap()).unwrap();
    std::fs::write(dir.join("guest.xml"), xml).unwrap();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "crash_child_entry",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, &dir)
    .env_remove("SVIRT_FAULT")
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    if let Some(f) = fault {
        cmd.env("SVIRT_FAULT", f);
    }
    if stop {
        cmd.env("CRASH_STOP", "1");
    }
    let mut child = cmd.spawn().unwrap();
    if fault.is_none() {
        // Kill -9 the daemon while its guest runs.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !dir.join("started").exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "child never started the guest"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        unsafe {
            libc::kill(child.id() as i32, libc::SIGKILL);
        }
    }
    let st = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    st.signal().unwrap_or(0)
}

struct Files {
    paths: Vec<PathBuf>,
    before: Vec<(u32, u32, u32)>,
}

impl Files {
    fn snapshot(paths: Vec<PathBuf>) -> Files {
        let before = paths.iter().map(|p| meta(p)).collect();
        Files { paths, before }
    }
    fn assert_restored(&self, what: &str) {
        for (p, b) in self.paths.iter().zip(&self.before) {
            if p.exists() {
                assert_eq!(meta(p), *b, "{what}: {} not restored", p.display());
            }
        }
    }
}

fn meta(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::metadata(p).unwrap();
    (m.uid(), m.gid(), m.mode())
}

/// Live (non-zombie) processes whose argv mentions `needle` (the test's unique disk path):
/// QEMUs of this test, whether or not any manager recorded their pid.
fn processes_using(needle: &Path) -> Vec<i32> {
    let needle = needle.as_os_str().as_encoded_bytes();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if cmd.windows(needle.len()).any(|w| w == needle) && alive(pid) {
            out.push(pid);
        }
    }
    out
}

fn cgroup_pids(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Asserts that within 5 s no QEMU uses `disk` any more (`msg` if one still does).
fn assert_no_qemu_soon(disk: &Path, msg: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !processes_using(disk).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(processes_using(disk), Vec::<i32>::new(), "{msg}");
}

fn check_step(step: Option<&str>, stop: bool) {
    let what = format!("{step:?} stop={stop}");
    let env = Env::new("crash");
    let disk = env.qcow2("c.qcow2");
    let serial = env.path("images").join("c.serial.log");
    std::fs::write(&serial, b"").unwrap();
    let files = Files::snapshot(vec![disk.clone(), serial.clone()]);
    let xml = env.xml("c", &[(disk.clone(), "qcow2", false)]);
    let cfg = env.config("dac,landlock");
    let sig = run_child(&env, &cfg, &xml, step, stop);
    assert_eq!(
        sig,
        libc::SIGKILL,
        "{what}: child was not killed (fault point not reached?)"
    );
    if !processes_using(&disk).is_empty() {
        // A QEMU outlived the manager. Let it finish its own start-up (open its disks)
        // before recovery runs: otherwise it may just die of the restored disk owner and
        // hide a recovery that failed to find it.
        std::thread::sleep(Duration::from_secs(1));
    }
    let qemu_pid: Option<i32> = std::fs::read_to_string(env.path("child/started"))
        .ok()
        .and_then(|s| s.parse().ok());
    let (m, report) = Manager::open(cfg.clone()).unwrap();
    let guests = m.list(true).unwrap();
    let reattached = report.reattached.contains(&"c".to_string());
    eprintln!(
        "{what}: reattached={reattached} recovered={:?}",
        report.recovered
    );
    if reattached {
        // Running guest survived the crash and is supervised again.
        let info = m.info("c").unwrap();
        assert!(
            matches!(info.state, GuestState::Paused | GuestState::Running),
            "{what}"
        );
        let pid = info.pid.unwrap();
        assert!(alive(pid), "{what}: reattached guest is dead");
        if let Some(p) = qemu_pid {
            assert_eq!(p, pid, "{what}");
        }
        // In its cgroup(s), even if the crash came before the start's own join.
        let layout = svirt_manager::cgroup::Layout::detect(Path::new("/sys/fs/cgroup"));
        for d in layout.guest_dirs(&env.cgroup_parent, "c") {
            assert!(
                cgroup_pids(&d).contains(&pid),
                "{what}: reattached QEMU {pid} not in {}",
                d.display()
            );
        }
        assert_eq!(
            processes_using(&disk),
            vec![pid],
            "{what}: a QEMU other than the reattached one uses the disk"
        );
        // Its uid is still reserved and owns the disk.
        assert_eq!(
            std::fs::metadata(&disk).unwrap().uid(),
            info.uid.unwrap(),
            "{what}"
        );
        m.destroy("c").unwrap();
        assert!(!alive(pid), "{what}");
    } else {
        assert!(
            guests.iter().all(|g| g.state == GuestState::ShutOff),
            "{what}: {guests:?} (report {report:?})"
        );
        if let Some(p) = qemu_pid {
            // Give init a moment to reap the killed orphan.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while alive(p) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(!alive(p), "{what}: QEMU of a cleaned-up guest still runs");
        }
        // Also the QEMU a start forked before recording its pid (`after-fork`): found
        // through the pid file, not through the cgroup it may not have joined.
        assert_no_qemu_soon(
            &disk,
            &format!("{what}: a QEMU of a cleaned-up guest still runs"),
        );
    }
    assert!(!env.path("run/ctl/c/pid").exists(), "{what}: pid file left");
    files.assert_restored(&what);
    env.assert_guest_dirs_gone("c", &what);
    drop(m);
    env.assert_store_clean(&what);
}

#[test]
fn kill_during_start_at_each_step() {
    require_env!();
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    for &step in START_STEPS {
        check_step(Some(step), false);
    }
}

#[test]
fn kill_during_stop_at_each_step() {
    require_env!();
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    for &step in STOP_STEPS {
        check_step(Some(step), true);
    }
}

#[test]
fn kill_while_guest_runs_then_reattach() {
    require_env!();
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    check_step(None, false);
}

/// Guest `c` on a private disk, started and destroyed once (its shut-off record is the
/// earlier one), then restarted by a child killed at fault point `step`.
struct Restart {
    disk: PathBuf,
    files: Files,
    cfg: Config,
    /// The uuid of the earlier record.
    uuid: String,
}

impl Restart {
    fn killed_at(env: &Env, step: &str) -> Restart {
        let disk = env.qcow2("c.qcow2");
        let files = Files::snapshot(vec![disk.clone()]);
        let xml = env.xml("c", &[(disk.clone(), "qcow2", false)]);
        let cfg = env.config("dac,landlock");
        let uuid = {
            let (m, _) = Manager::open(cfg.clone()).unwrap();
            let info = m.start(&xml, StartOptions { paused: true }).unwrap();
            m.destroy("c").unwrap();
            info.uuid
        };
        assert_eq!(run_child(env, &cfg, &xml, Some(step), false), libc::SIGKILL);
        Restart {
            disk,
            files,
            cfg,
            uuid,
        }
    }

    /// Asserts the interrupted restart left nothing (no QEMU, owners restored, store clean
    /// once `m` is closed) and only the earlier record is stored; returns the stored rows.
    fn assert_cleaned_up(&self, env: &Env, m: Manager, what: &str) -> Vec<GuestRecord> {
        assert_no_qemu_soon(&self.disk, what);
        self.files.assert_restored(what);
        drop(m);
        env.assert_store_clean(what);
        let store = svirt_store::Store::open(&env.path("state")).unwrap();
        let stored = store.list_guests().unwrap();
        assert_eq!(stored.len(), 1, "{what}");
        stored
    }
}

/// Whether `reason` is the exit recovery gives a start the manager died in.
fn start_interrupted(reason: &ExitReason) -> bool {
    matches!(reason, ExitReason::StartFailed { message } if message.contains("manager stopped"))
}

/// A restart killed before QEMU runs: recovery rolls it back and puts the guest's earlier
/// shut-off record back, with the interrupted start as its exit.
#[test]
fn kill_during_restart_keeps_the_earlier_record() {
    require_env!();
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    for step in ["after-label", "after-fork"] {
        let what = format!("restart killed {step}");
        let env = Env::new("recrash");
        let r = Restart::killed_at(&env, step);
        let (m, report) = Manager::open(r.cfg.clone()).unwrap();
        eprintln!("{what}: recovered={:?}", report.recovered);
        let info = m.info("c").unwrap();
        assert_eq!(info.state, GuestState::ShutOff, "{what}");
        assert_eq!(info.uuid, r.uuid, "{what}");
        assert!(
            start_interrupted(&info.exit.as_ref().expect("exit").reason),
            "{what}: {:?}",
            info.exit
        );
        r.assert_cleaned_up(&env, m, &what);
    }
}

/// A restart killed at `after-spawn` (QEMU forked and its pid recorded, QMP not confirmed):
/// whether its QEMU is gone by the next open or does not answer QMP there (stopped, so
/// recovery kills it), the start is rolled back and the guest's earlier shut-off record
/// comes back with the interrupted start as its exit.
#[test]
fn restart_killed_after_spawn_keeps_the_earlier_record() {
    require_env!();
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    for qemu in ["gone", "silent"] {
        let what = format!("restart killed after-spawn, QEMU {qemu}");
        let env = Env::new("respawn");
        let r = Restart::killed_at(&env, "after-spawn");
        // Its own start-up done (see check_step).
        std::thread::sleep(Duration::from_secs(1));
        let pids = processes_using(&r.disk);
        assert_eq!(pids.len(), 1, "{what}: {pids:?}");
        let sig = if qemu == "gone" {
            libc::SIGKILL
        } else {
            libc::SIGSTOP
        };
        // SAFETY: a signal to the QEMU this test's child started.
        assert_eq!(unsafe { libc::kill(pids[0], sig) }, 0);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sig == libc::SIGKILL && alive(pids[0]) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let (m, report) = Manager::open(r.cfg.clone()).unwrap();
        eprintln!("{what}: recovered={:?}", report.recovered);
        assert!(report.reattached.is_empty(), "{what}");
        // A killed QEMU is cleaned up by the supervisor, after the open.
        let exit = m
            .wait("c", Duration::from_secs(30))
            .unwrap()
            .unwrap_or_else(|| panic!("{what}: not shut off"));
        let info = m.info("c").unwrap();
        assert_eq!(info.state, GuestState::ShutOff, "{what}");
        assert_eq!(info.uuid, r.uuid, "{what}: not the earlier record");
        assert_eq!(info.exit.as_ref(), Some(&exit), "{what}");
        assert!(start_interrupted(&exit.reason), "{what}: {exit:?}");
        assert!(exit.restore_errors.is_empty(), "{what}: {exit:?}");
        let stored = r.assert_cleaned_up(&env, m, &what);
        let rec: serde_json::Value = serde_json::from_slice(&stored[0].record).unwrap();
        assert_eq!(rec["uuid"], r.uuid.as_str(), "{what}: stored {rec}");
        assert_eq!(
            rec["exit"]["reason"], "start-failed",
            "{what}: stored {rec}"
        );
    }
}

/// svirtd killed mid-start under `dac,landlock` (the disk already the guest's), then
/// opened with a stack without DAC (`--drivers landlock`): DAC's records are still put
/// back. The DAC driver is opened for the open's recovery alone (a retired driver, as for
/// SELinux's records), restores the disk's owner and mode and releases the uid; nothing
/// is left in the ledger. Control: the crash did leave the disk owned by the guest.
#[test]
fn a_stack_without_dac_still_restores_what_dac_recorded() {
    require_env!();
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let env = Env::new("retired");
    let disk = env.qcow2("r.qcow2");
    let serial = env.path("images").join("r.serial.log");
    std::fs::write(&serial, b"").unwrap();
    let files = Files::snapshot(vec![disk.clone(), serial.clone()]);
    let xml = env.xml("r", &[(disk.clone(), "qcow2", false)]);
    let sig = run_child(
        &env,
        &env.config("dac,landlock"),
        &xml,
        Some("after-label"),
        false,
    );
    assert_eq!(sig, libc::SIGKILL);
    assert_ne!(meta(&disk).0, 0, "the crash left the disk the guest's");
    let (m, report) = Manager::open(env.config("landlock")).unwrap();
    files.assert_restored("opened without DAC");
    assert!(
        report
            .recovered
            .iter()
            .any(|r| r.guest == "r" && !r.what.contains("error")),
        "{:?}",
        report.recovered
    );
    assert_eq!(
        report.stack,
        vec![svirt_domain::Model::Landlock],
        "DAC only recovers, it is not stacked"
    );
    drop(m);
    env.assert_store_clean("opened without DAC");
}
