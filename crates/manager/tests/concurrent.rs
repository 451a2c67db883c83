//! 20 guests started at once get distinct uids (and distinct labels per model), all run,
//! and all are cleaned up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;

use common::{Env, alive, require_env};
use svirt_manager::{Manager, StartOptions};

#[test]
fn twenty_concurrent_guests_get_distinct_identities() {
    require_env!();
    let env = Env::new("conc");
    let (m, _) = Manager::open(env.config("dac,landlock")).unwrap();
    let n = 20;
    let xmls: Vec<(String, std::path::PathBuf)> = (0..n)
        .map(|i| {
            let disk = env.raw(&format!("d{i}.img"));
            (
                env.xml(&format!("g{i}"), &[(disk.clone(), "raw", false)]),
                disk,
            )
        })
        .collect();
    let infos: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = xmls
            .iter()
            .map(|(xml, _)| {
                let m = m.clone();
                s.spawn(move || m.start(xml, StartOptions { paused: true }))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let infos: Vec<_> = infos.into_iter().map(|r| r.unwrap()).collect();
    let uids: HashSet<u32> = infos.iter().map(|i| i.uid.unwrap()).collect();
    assert_eq!(uids.len(), n, "uids not distinct");
    let labels: HashSet<String> = m
        .list(false)
        .unwrap()
        .iter()
        .map(|g| g.labels["dac"].clone())
        .collect();
    assert_eq!(labels.len(), n, "dac labels not distinct");
    for (info, (_, disk)) in infos.iter().zip(&xmls) {
        assert!(alive(info.pid.unwrap()));
        assert_eq!(std::fs::metadata(disk).unwrap().uid(), info.uid.unwrap());
    }
    std::thread::scope(|s| {
        for i in &infos {
            let m = m.clone();
            let name = i.name.clone();
            s.spawn(move || m.destroy(&name).unwrap());
        }
    });
    for info in &infos {
        assert!(!alive(info.pid.unwrap()));
    }
    for (_, disk) in &xmls {
        assert_eq!(std::fs::metadata(disk).unwrap().uid(), 0);
    }
    drop(m);
    env.assert_store_clean("20 guests destroyed");
}

/// Another thread of svirtd forking (a concurrent start's spawn, a helper) copies the fd
/// table at that instant: the jail's build must hold no fd that a copy could turn into a
/// failed start (an fd open for writing on the jail's root made its read-only remount
/// fail with EBUSY). Control: the same starts, with the forks, succeed and run.
#[test]
fn forks_in_other_threads_never_fail_a_start() {
    require_env!();
    let env = Env::new("forks");
    let (m, _) = Manager::open(env.config("dac,landlock")).unwrap();
    let disks: Vec<_> = (0..8).map(|i| env.raw(&format!("f{i}.img"))).collect();
    let spec: Vec<_> = disks.iter().map(|d| (d.clone(), "raw", false)).collect();
    let xml = env.xml("forky", &spec);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let forks = std::sync::atomic::AtomicU32::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            // Only our own children are reaped (never `waitpid(-1)`: the VMMs are the
            // manager's children too).
            let mut pending: Vec<libc::pid_t> = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // SAFETY: the child only sleeps and exits (async-signal-safe calls).
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    let ts = libc::timespec {
                        tv_sec: 0,
                        tv_nsec: 2_000_000,
                    };
                    // SAFETY: as above.
                    unsafe {
                        libc::nanosleep(&ts, std::ptr::null_mut());
                        libc::_exit(0);
                    }
                }
                assert!(pid > 0, "fork failed");
                forks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                pending.push(pid);
                // Reap without waiting: the children keep overlapping.
                // SAFETY: waitpid on children forked above.
                pending.retain(|&p| unsafe {
                    libc::waitpid(p, std::ptr::null_mut(), libc::WNOHANG) == 0
                });
            }
            for p in pending {
                // SAFETY: as above.
                unsafe { libc::waitpid(p, std::ptr::null_mut(), 0) };
            }
        });
        let result = (|| {
            for round in 0..30 {
                let info = m
                    .start(&xml, StartOptions { paused: true })
                    .map_err(|e| format!("start {round}: {e}"))?;
                assert!(alive(info.pid.unwrap()));
                m.destroy("forky")
                    .map_err(|e| format!("destroy {round}: {e}"))?;
            }
            Ok::<(), String>(())
        })();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        result.unwrap();
    });
    assert!(
        forks.load(std::sync::atomic::Ordering::Relaxed) > 100,
        "too few forks to test"
    );
    drop(m);
    env.assert_store_clean("30 starts beside forks");
}

/// The supervisor writes a started guest's `Up` record after the start has answered,
/// beside whatever the caller does next. A guest destroyed and forgotten right away must
/// stay forgotten: no record of it written after its deletion, in the store or after the
/// next open. Control: forget is refused while the guest runs, and a guest destroyed but
/// not forgotten keeps its shut-off record across the open. (The narrowest interleaving,
/// a forget between the supervisor's listing of the guests and its write, is not forced
/// here: `forget` clears the pending write under the guest's lock, which the supervisor's
/// write takes too.)
#[test]
fn a_guest_forgotten_right_after_its_start_stays_forgotten() {
    require_env!();
    let env = Env::new("forget");
    let (m, _) = Manager::open(env.config("dac,landlock")).unwrap();
    let disk = env.raw("fg.img");
    let xml = env.xml("fg", &[(disk.clone(), "raw", false)]);
    for round in 0..15 {
        m.start(&xml, StartOptions { paused: true })
            .unwrap_or_else(|e| panic!("start {round}: {e}"));
        assert!(m.forget("fg").is_err(), "forget of a running guest");
        m.destroy("fg")
            .unwrap_or_else(|e| panic!("destroy {round}: {e}"));
        m.forget("fg")
            .unwrap_or_else(|e| panic!("forget {round}: {e}"));
        assert!(
            m.list(true).unwrap().iter().all(|g| g.name != "fg"),
            "round {round}: still listed"
        );
    }
    // The control: destroyed, not forgotten.
    let kept = env.xml("kept", &[(env.raw("kept.img"), "raw", false)]);
    m.start(&kept, StartOptions { paused: true }).unwrap();
    m.destroy("kept").unwrap();
    // Whatever the supervisor still had to write has been written by now.
    std::thread::sleep(std::time::Duration::from_millis(300));
    drop(m);
    let store = svirt_store::Store::open(&env.path("state")).unwrap();
    let names: Vec<String> = store
        .list_guests()
        .unwrap()
        .into_iter()
        .map(|g| g.name)
        .collect();
    assert_eq!(names, vec!["kept".to_string()], "stored guest records");
    drop(store);
    let (m, _) = Manager::open(env.config("dac,landlock")).unwrap();
    let listed: Vec<String> = m.list(true).unwrap().into_iter().map(|g| g.name).collect();
    assert_eq!(listed, vec!["kept".to_string()]);
    m.forget("kept").unwrap();
    drop(m);
    env.assert_store_clean("forgotten guests");
}
