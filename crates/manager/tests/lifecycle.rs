//! Start/list/info/dumpxml/monitor/shutdown/destroy with a real QEMU under TCG.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::{Env, alive, require_env};
use svirt_manager::{ExitReason, GuestState, Manager, ManagerError, StartOptions};

#[test]
fn lifecycle_without_drivers() {
    require_env!();
    let env = Env::new("life");
    let (m, report) = Manager::open(env.config("none")).unwrap();
    assert!(report.stack.is_empty());
    assert_eq!(report.accel, "tcg");
    let disk = env.qcow2("a.qcow2");
    let xml = env.xml("g1", &[(disk.clone(), "qcow2", false)]);
    let info = m.start(&xml, StartOptions { paused: true }).unwrap();
    assert_eq!(info.state, GuestState::Paused);
    let pid = info.pid.unwrap();
    assert!(alive(pid));
    // Own session: QEMU does not share the manager's process group or session.
    let sid = unsafe { libc::getsid(pid) };
    assert_eq!(sid, pid, "QEMU leads its own session");
    // In its cgroup(s).
    assert!(!info.cgroups.is_empty());
    for cg in &info.cgroups {
        let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap();
        assert!(
            procs.lines().any(|l| l.trim() == pid.to_string()),
            "{} lacks {pid}",
            cg.display()
        );
    }
    // Memory limit from <memory> + overhead.
    let mem = info
        .cgroups
        .iter()
        .find(|c| c.to_string_lossy().contains("/memory/"))
        .cloned();
    if let Some(mem) = mem {
        let lim: u64 = std::fs::read_to_string(mem.join("memory.limit_in_bytes"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(lim, (16 << 20) + (192 << 20));
    }
    // Disk passed with an explicit format, never probed.
    assert!(
        info.command_line
            .iter()
            .any(|a| a.contains("\"driver\":\"qcow2\""))
    );
    assert!(info.command_line.iter().any(|a| a == "-S"));
    // Clean environment of QEMU.
    let env_of = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let vars: Vec<&[u8]> = env_of
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .collect();
    assert!(
        vars.iter().all(|v| v.starts_with(b"LC_ALL=")
            || v.starts_with(b"PATH=")
            || v.starts_with(b"HOME=")),
        "{vars:?}"
    );
    // Only stdio and the QMP listener (plus what QEMU opened itself) — none of ours:
    // the test's own files are not inherited.
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    assert!(
        !fds.iter().any(|f| f.ends_with("svirt.redb")),
        "store fd leaked into QEMU: {fds:?}"
    );
    assert!(
        !fds.iter()
            .any(|f| f.contains("cgroup.procs") || f.ends_with("trees.redb")),
        "manager fd leaked into QEMU: {fds:?}"
    );

    let list = m.list(false).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].name, "g1");
    assert_eq!(list[0].pid, Some(pid));

    let r = m
        .qemu_monitor_command("g1", serde_json::json!({"execute": "query-status"}))
        .unwrap();
    assert_eq!(r["return"]["status"], "prelaunch");
    let r = m
        .qemu_monitor_command("g1", serde_json::json!({"execute": "cont"}))
        .unwrap();
    assert!(r.get("return").is_some());
    assert_eq!(m.info("g1").unwrap().state, GuestState::Running);
    let bad = m
        .qemu_monitor_command("g1", serde_json::json!({"execute": "no-such-command"}))
        .unwrap();
    assert_eq!(bad["error"]["class"], "CommandNotFound");

    let xml_live = m.dumpxml("g1").unwrap();
    assert!(xml_live.contains("<name>g1</name>"));

    // No OS answers ACPI: shutdown falls back to kill after the timeout.
    let exit = m
        .shutdown_timeout("g1", Duration::from_millis(300))
        .unwrap();
    assert_eq!(exit.reason, ExitReason::ShutdownTimeout);
    assert!(exit.restore_errors.is_empty(), "{:?}", exit.restore_errors);
    assert!(!alive(pid));
    for cg in &info.cgroups {
        assert!(!cg.exists(), "cgroup {} left behind", cg.display());
    }
    assert!(!info.runtime_dir.exists());
    assert!(m.list(false).unwrap().is_empty());
    let all = m.list(true).unwrap();
    assert_eq!(all[0].state, GuestState::ShutOff);
    // Stopping a shut-off guest is refused (409 in svirtd), naming the guest; its exit
    // record stays as it was.
    for (err, op) in [
        (m.destroy("g1").unwrap_err(), "destroy"),
        (m.shutdown("g1").unwrap_err(), "shut down"),
    ] {
        assert!(matches!(err, ManagerError::BadState { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("guest \"g1\" is shut-off: cannot {op}")
        );
    }
    assert_eq!(m.info("g1").unwrap().exit, Some(exit.clone()));

    // Start again under the same name, then destroy.
    let info = m.start(&xml, StartOptions { paused: false }).unwrap();
    assert_eq!(info.state, GuestState::Running);
    let exit = m.destroy("g1").unwrap();
    assert_eq!(exit.reason, ExitReason::Destroyed);
    assert!(!alive(info.pid.unwrap()));
}

#[test]
fn guest_exit_is_noticed_and_cleaned_up() {
    require_env!();
    let env = Env::new("exit");
    let (m, _) = Manager::open(env.config("none")).unwrap();
    let xml = env.xml("q", &[]);
    let info = m.start(&xml, StartOptions { paused: true }).unwrap();
    // QEMU quits on its own (as on guest poweroff): the supervisor reaps and cleans up.
    let _ = m.qemu_monitor_command("q", serde_json::json!({"execute": "quit"}));
    let exit = m
        .wait("q", Duration::from_secs(10))
        .unwrap()
        .expect("exit noticed");
    assert!(
        matches!(exit.reason, ExitReason::Shutdown),
        "{:?}",
        exit.reason
    );
    assert!(!info.runtime_dir.exists());
    for cg in &info.cgroups {
        assert!(!cg.exists());
    }
    // Reaped by us: no zombie left.
    assert!(std::fs::metadata(format!("/proc/{}", info.pid.unwrap())).is_err());
}

#[test]
fn dac_landlock_stack_runs_guest_under_its_uid() {
    require_env!();
    let env = Env::new("dac");
    let (m, report) = Manager::open(env.config("dac,landlock")).unwrap();
    assert_eq!(report.stack.len(), 2);
    let disk = env.qcow2("d.qcow2");
    let before = std::fs::metadata(&disk).unwrap();
    let xml = env.xml("d1", &[(disk.clone(), "qcow2", false)]);
    let info = m.start(&xml, StartOptions { paused: true }).unwrap();
    let (uid, gid) = (info.uid.unwrap(), info.gid.unwrap());
    let pid = info.pid.unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line
            .split_whitespace()
            .skip(1)
            .all(|u| u == uid.to_string()),
        "{uid_line}"
    );
    let nnp = status
        .lines()
        .find(|l| l.starts_with("NoNewPrivs:"))
        .unwrap();
    assert!(nnp.ends_with('1'));
    // The disk belongs to the guest while it runs.
    let during = std::fs::metadata(&disk).unwrap();
    assert_eq!((during.uid(), during.gid()), (uid, gid));
    let dump = m.dumpxml("d1").unwrap();
    assert!(
        dump.contains(&format!("<label>+{uid}:+{gid}</label>")),
        "{dump}"
    );
    assert!(dump.contains("model='dac'"));
    let res = info.resources.iter().find(|r| r.path == disk).unwrap();
    assert!(
        res.labels["dac"]
            .as_deref()
            .unwrap()
            .contains(&uid.to_string())
    );
    m.destroy("d1").unwrap();
    let after = std::fs::metadata(&disk).unwrap();
    assert_eq!(
        (after.uid(), after.gid(), after.mode()),
        (before.uid(), before.gid(), before.mode())
    );
}

/// A panic anywhere in the cleanup after QEMU's exit (a driver's bug; injected at each
/// cleanup step) ends the stop: the destroy returns with the panic among the restore errors
/// (after the restore errors gathered before it), the guest is shut off, a second stop is
/// refused at once, and the next open restores and releases what the guest still held.
#[test]
fn a_cleanup_panicking_at_any_step_ends_the_stop_and_the_next_open_restores_the_rest() {
    require_env!();
    for &step in svirt_manager::fault::STOP_STEPS {
        let env = Env::new("panic");
        let disk = env.raw("p.img");
        let locked = env.raw("locked.img");
        let before = [common::owner_mode(&disk), common::owner_mode(&locked)];
        let mut cfg = env.config("dac,landlock");
        cfg.fault = Some(format!("{step}:panic"));
        let (m, _) = Manager::open(cfg).unwrap();
        m.start(
            &env.xml(
                "p",
                &[(disk.clone(), "raw", false), (locked.clone(), "raw", false)],
            ),
            StartOptions { paused: true },
        )
        .unwrap();
        // Its restore fails (EPERM): an error gathered before the panic.
        let immutable = common::Immutable::set(&locked);
        let stop = |destroy: bool| {
            let (tx, rx) = std::sync::mpsc::channel();
            let m2 = m.clone();
            let t = std::thread::spawn(move || {
                let _ = tx.send(if destroy {
                    m2.destroy("p")
                } else {
                    m2.shutdown("p")
                });
            });
            let r = rx
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("{step}: the stop hangs after a panic in the cleanup"));
            // Its manager handle is gone before the next open (one process holds the store).
            t.join().unwrap();
            r
        };
        let exit = stop(true).unwrap();
        eprintln!("{step}: {exit:?}");
        assert_eq!(exit.reason, ExitReason::Destroyed, "{step}");
        let errors = &exit.restore_errors;
        assert!(
            errors.last().is_some_and(|e| e.contains("panicked")),
            "{step}: {errors:?}"
        );
        if step != "during-stop" {
            assert!(
                errors.iter().any(|e| e.contains("locked.img")),
                "{step}: the restore error before the panic was lost: {errors:?}"
            );
        }
        assert_eq!(m.info("p").unwrap().state, GuestState::ShutOff, "{step}");
        assert!(
            matches!(stop(false), Err(ManagerError::BadState { .. })),
            "{step}: a second stop"
        );
        drop(immutable);
        drop(m);
        // What the panic left (labels, the uid) is restored and released by the next open.
        let (m, report) = Manager::open(env.config("dac,landlock")).unwrap();
        eprintln!("{step}: recovered {:?}", report.recovered);
        assert!(
            report
                .recovered
                .iter()
                .map(|r| (&r.guest, &r.what))
                .any(|(g, _)| g == "p"),
            "{step}: {:?}",
            report.recovered
        );
        assert_eq!(
            [common::owner_mode(&disk), common::owner_mode(&locked)],
            before,
            "{step}"
        );
        // Nor are its runtime dir and cgroups left until its next start.
        env.assert_guest_dirs_gone("p", step);
        drop(m);
        env.assert_store_clean(step);
    }
}

/// A disk's backing chain is the plan's, given to QEMU node by node: the layers named by
/// headers get svirt's own node names (QEMU did not open them by following a header), and
/// an XML chain left open below a qcow2 layer is continued from that layer's header (the
/// same rule as for a chain the XML does not give at all).
#[test]
fn backing_chains_are_given_to_qemu_layer_by_layer() {
    require_env!();
    let env = Env::new("chain");
    let (m, _) = Manager::open(env.config("dac,landlock")).unwrap();
    let dir = env.path("images");
    let base = svirt_testkit::qcow2(&dir, "base.qcow2", None);
    let mid = svirt_testkit::qcow2(&dir, "mid.qcow2", Some(("base.qcow2", "qcow2")));
    let top = svirt_testkit::qcow2(&dir, "top.qcow2", Some(("mid.qcow2", "qcow2")));
    let from_headers = env.xml("chain", &[(top.clone(), "qcow2", false)]);
    let open_xml_chain = from_headers.replace(
        "<target dev='vda'",
        &format!(
            "<backingStore type='file'><format type='qcow2'/><source file='{}'/></backingStore><target dev='vda'",
            mid.display()
        ),
    );
    assert_ne!(from_headers, open_xml_chain);
    for (what, xml) in [
        ("headers", &from_headers),
        ("open XML chain", &open_xml_chain),
    ] {
        m.start(xml, StartOptions { paused: true })
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let nodes = m
            .qemu_monitor_command(
                "chain",
                serde_json::json!({"execute": "query-named-block-nodes"}),
            )
            .unwrap();
        let nodes = nodes["return"].as_array().unwrap();
        let file_of = |node: &str| {
            nodes
                .iter()
                .find(|n| n["node-name"] == node)
                .and_then(|n| n["file"].as_str())
                .map(std::path::PathBuf::from)
        };
        // The protocol node of each layer is svirt's, on the planned file.
        assert_eq!(file_of("drive0-file"), Some(top.clone()), "{what}");
        assert_eq!(file_of("drive0-b0-file"), Some(mid.clone()), "{what}");
        assert_eq!(file_of("drive0-b1-file"), Some(base.clone()), "{what}");
        // Six nodes, all svirt's: QEMU opened none by following a header (those would
        // carry generated `#block…` names).
        let mut names: Vec<&str> = nodes
            .iter()
            .filter_map(|n| n["node-name"].as_str())
            .collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "drive0",
                "drive0-b0",
                "drive0-b0-file",
                "drive0-b1",
                "drive0-b1-file",
                "drive0-file"
            ],
            "{what}"
        );
        m.destroy("chain").unwrap();
    }
}
