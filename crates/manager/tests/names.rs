//! Guest names and uuids as keys: no name can make another guest's files or cgroups
//! collide with its own, and no two live guests share a uuid (as libvirt refuses), also
//! across a restart of the manager. Real QEMU under TCG.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::{Env, alive, require_env};
use svirt_manager::{Manager, StartOptions};

/// Guests named `x.pid` and `x` (the pid file of `x` was `guests/x.pid`, the runtime dir
/// of `x.pid`: before the fix `x` failed to start), and guests named like the files the
/// kernel puts in every cgroup (`tasks`, `cgroup.procs`, `memory.limit_in_bytes`: before
/// the fix their "group" was that file and the start failed) all run side by side, each
/// in a group of its own, and leave nothing behind.
#[test]
fn guest_names_never_collide() {
    require_env!();
    let env = Env::new("names");
    let (m, _) = Manager::open(env.config("dac,landlock")).unwrap();
    let names = [
        "x.pid",
        "x",
        "tasks",
        "cgroup.procs",
        "memory.limit_in_bytes",
        "_x",
    ];
    let paused = StartOptions { paused: true };
    let mut pids = Vec::new();
    for n in names {
        let info = m
            .start(&env.xml(n, &[]), paused)
            .unwrap_or_else(|e| panic!("start {n}: {e}"));
        pids.push(info.pid.unwrap());
    }
    let layout = svirt_manager::cgroup::Layout::detect(Path::new("/sys/fs/cgroup"));
    let mut seen = std::collections::HashSet::new();
    for (n, pid) in names.iter().zip(&pids) {
        assert!(alive(*pid), "{n} is not running");
        let dirs = layout.guest_dirs(&env.cgroup_parent, n);
        for d in &dirs {
            assert!(d.is_dir(), "{n}: group {} is not a directory", d.display());
            assert!(seen.insert(d.clone()), "{n}: group {} shared", d.display());
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap();
            assert!(
                procs.lines().any(|l| l == pid.to_string()),
                "{n}: QEMU {pid} not in {}",
                d.display()
            );
        }
        assert_eq!(m.info(n).unwrap().pid, Some(*pid));
    }
    for n in names {
        m.destroy(n).unwrap_or_else(|e| panic!("destroy {n}: {e}"));
        env.assert_guest_dirs_gone(n, n);
    }
    drop(m);
    env.assert_store_clean("names");
}

fn with_uuid(xml: &str, uuid: &str) -> String {
    xml.replacen("</name>", &format!("</name>\n  <uuid>{uuid}</uuid>"), 1)
}

/// A second guest with a live guest's uuid is refused with an error naming that guest
/// (before the fix both ran), also when the first was started by an earlier manager
/// (reattached at open) and when the uuid is spelled differently (upper case, no
/// dashes). Control: once the first is off, the uuid is free again.
#[test]
fn a_uuid_in_use_is_refused() {
    require_env!();
    let env = Env::new("uuid");
    let u = "3c1b7f7a-52f8-4b9a-9d55-0c7b3a1e2f40";
    let paused = StartOptions { paused: true };
    {
        let (m, _) = Manager::open(env.config("dac,landlock")).unwrap();
        m.start(&with_uuid(&env.xml("a", &[]), u), paused).unwrap();
        let e = m
            .start(&with_uuid(&env.xml("b", &[]), u), paused)
            .expect_err("a second guest with a's uuid")
            .to_string();
        assert!(e.contains(u) && e.contains("\"a\""), "{e}");
        assert!(m.info("b").is_err(), "b left a record");
        // The manager goes; a keeps running.
    }
    let (m, report) = Manager::open(env.config("dac,landlock")).unwrap();
    assert!(
        report.reattached.iter().any(|n| n == "a"),
        "{:?}",
        report.reattached
    );
    let spelled = u.replace('-', "").to_uppercase();
    let e = m
        .start(&with_uuid(&env.xml("b", &[]), &spelled), paused)
        .expect_err("after a restart, in another spelling")
        .to_string();
    assert!(e.contains("\"a\""), "{e}");
    m.destroy("a").unwrap();
    // Control: the uuid is free once a is off.
    m.start(&with_uuid(&env.xml("b", &[]), u), paused).unwrap();
    m.destroy("b").unwrap();
    drop(m);
    env.assert_store_clean("uuid");
}

/// The guest uid range is checked at open against the host's account files (a temporary
/// root here): a subordinate id block or an account in it refuses the open, naming the
/// file and the entry (before: open succeeded and the allocator merely skipped listed
/// ids, while the help text promised another range); a range clear of all opens.
#[test]
fn a_uid_range_used_by_the_host_is_refused_at_open() {
    require_env!();
    let env = Env::new("uidrange");
    let etc = env.path("root/etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
    std::fs::write(etc.join("group"), "root:x:0:\n").unwrap();
    std::fs::write(etc.join("subuid"), "alice:100000:65536\nbob:296608:65536\n").unwrap();
    let mut cfg = env.config("dac,landlock");
    cfg.root_dir = env.path("root");
    cfg.driver_settings.uid_range = Some("300000-365535".parse().unwrap());
    let e = Manager::open(cfg.clone()).unwrap_err().to_string();
    assert!(
        e.contains("etc/subuid") && e.contains("bob:296608:65536"),
        "{e}"
    );
    // Control: the default range is clear of the same files.
    cfg.driver_settings.uid_range = None;
    let (m, _) = Manager::open(cfg).unwrap();
    drop(m);
    env.assert_store_clean("uid range");
}
