//! Every start step failing (injected `step:error`) leaves nothing behind: no record, no
//! reservation, no original, owners/modes of files as before, no cgroup, no runtime dir,
//! no QEMU.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Env, owner_mode, require_env};
use svirt_manager::fault::START_STEPS;
use svirt_manager::{GuestState, Manager, StartOptions};

/// A manager on `env` whose start fails at `step` (injected `step:error`), after a start of
/// `xml` that failed there and said so.
fn start_failing_at(env: &Env, xml: &str, step: &str) -> Manager {
    let mut cfg = env.config("dac,landlock");
    cfg.fault = Some(format!("{step}:error"));
    let (m, _) = Manager::open(cfg).unwrap();
    let err = m.start(xml, StartOptions { paused: true }).unwrap_err();
    assert!(err.to_string().contains(step), "{step}: {err}");
    m
}

#[test]
fn failure_at_every_start_step_rolls_back_everything() {
    require_env!();
    for step in START_STEPS {
        let env = Env::new("rb");
        let disk = env.qcow2("r.qcow2");
        let before = owner_mode(&disk);
        let xml = env.xml("rb", &[(disk.clone(), "qcow2", false)]);
        let serial = env.path("images").join("rb.serial.log");
        let m = start_failing_at(&env, &xml, step);
        assert!(m.list(true).unwrap().is_empty(), "{step}: record left");
        assert_eq!(owner_mode(&disk), before, "{step}: disk not restored");
        assert!(!serial.exists(), "{step}: created serial log left behind");
        env.assert_guest_dirs_gone("rb", step);
        drop(m);
        env.assert_store_clean(step);
        let store = svirt_store::Store::open(&env.path("state")).unwrap();
        assert!(
            store.list_guests().unwrap().is_empty(),
            "{step}: record left"
        );
    }
}

/// A restart that fails keeps the guest's earlier shut-off record: the guest stays listed
/// with the failure as its exit, and starts again afterwards.
#[test]
fn failed_restart_keeps_the_earlier_record() {
    require_env!();
    let env = Env::new("rbprev");
    let disk = env.qcow2("p.qcow2");
    let before = owner_mode(&disk);
    let xml = env.xml("prev", &[(disk.clone(), "qcow2", false)]);
    let uuid = {
        let (m, _) = Manager::open(env.config("dac,landlock")).unwrap();
        let info = m.start(&xml, StartOptions { paused: true }).unwrap();
        assert_eq!(
            m.destroy("prev").unwrap().reason,
            svirt_manager::ExitReason::Destroyed
        );
        info.uuid
    };
    for step in &START_STEPS[1..] {
        let m = start_failing_at(&env, &xml, step);
        let all = m.list(true).unwrap();
        assert_eq!(all.len(), 1, "{step}: {all:?}");
        let info = m.info("prev").unwrap();
        assert_eq!(info.state, GuestState::ShutOff, "{step}");
        assert_eq!(info.uuid, uuid, "{step}: not the earlier record");
        let exit = info.exit.expect("exit");
        match &exit.reason {
            svirt_manager::ExitReason::StartFailed { message } => {
                assert!(message.contains(step), "{step}: {message}")
            }
            r => panic!("{step}: exit reason {r:?}"),
        }
        assert!(exit.restore_errors.is_empty(), "{step}: {exit:?}");
        assert_eq!(
            m.wait("prev", std::time::Duration::ZERO).unwrap(),
            Some(exit.clone())
        );
        assert_eq!(owner_mode(&disk), before, "{step}: disk not restored");
        drop(m);
        let store = svirt_store::Store::open(&env.path("state")).unwrap();
        let stored = store.list_guests().unwrap();
        assert_eq!(stored.len(), 1, "{step}: record not kept in the store");
        assert_eq!(stored[0].state, "shut-off", "{step}");
        let rec: serde_json::Value = serde_json::from_slice(&stored[0].record).unwrap();
        assert_eq!(rec["exit"]["reason"], "start-failed", "{step}: {rec}");
        assert!(rec.get("previous").is_none(), "{step}: {rec}");
        drop(store);
        env.assert_store_clean(step);
    }
    // Nothing of the failures is left in the way: the guest starts again.
    let (m, _) = Manager::open(env.config("dac,landlock")).unwrap();
    m.start(&xml, StartOptions { paused: true }).unwrap();
    assert_eq!(m.info("prev").unwrap().exit, None);
    m.destroy("prev").unwrap();
}
