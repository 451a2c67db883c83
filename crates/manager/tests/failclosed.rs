//! A restore that fails keeps the guest's identity reserved: a disk DAC cannot give back
//! (immutable, so even root's chown fails) still belongs to the guest's uid, and a new
//! guest drawing that uid could open it. The uid stays reserved until a later restore of
//! the disk succeeds: the next open's sweep, or the cleanup of a restart of the same name.
//! Real QEMU under TCG, DAC + Landlock, real files made immutable with `chattr +i`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Env, Immutable, OwnerMode, owner_mode, require_env};
use svirt_manager::{Manager, StartOptions};

/// Why `chattr +i` cannot be used under `dir`, if it cannot.
fn chattr_skip(dir: &Path) -> Option<String> {
    let probe = dir.join("chattr-probe");
    std::fs::write(&probe, b"").unwrap();
    let set = Command::new("chattr").arg("+i").arg(&probe).output();
    let _ = Command::new("chattr").arg("-i").arg(&probe).status();
    let _ = std::fs::remove_file(&probe);
    match set {
        Err(e) => Some(format!("chattr not runnable: {e}")),
        Ok(o) if !o.status.success() => Some(format!(
            "chattr +i unsupported here: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(_) => None,
    }
}

/// The uid reservations of the store (the manager closed).
fn uid_reservations(env: &Env) -> Vec<(u32, String)> {
    svirt_store::Store::open(&env.path("state"))
        .unwrap()
        .id_reservations()
        .unwrap()
}

/// Starts guest `name` on `disk`, makes the disk immutable and destroys the guest: the
/// destroy reports the failed restore and that the uid is kept. Returns the uid and the
/// guard keeping the disk immutable.
fn destroy_with_stuck_disk(m: &Manager, env: &Env, name: &str, disk: &Path) -> (u32, Immutable) {
    let info = m
        .start(
            &env.xml(name, &[(disk.to_path_buf(), "raw", false)]),
            StartOptions { paused: true },
        )
        .unwrap();
    let uid = info.uid.unwrap();
    assert_eq!(owner_mode(disk).0, uid);
    let immutable = Immutable::set(disk);
    let exit = m.destroy(name).unwrap();
    eprintln!("destroy with an immutable disk: {:?}", exit.restore_errors);
    let disk_s = disk.display().to_string();
    assert!(
        exit.restore_errors.iter().any(|e| e.contains(&disk_s)),
        "the failed restore is not reported: {:?}",
        exit.restore_errors
    );
    assert!(
        exit.restore_errors
            .iter()
            .any(|e| e.contains("kept reserved") && e.contains(&uid.to_string())),
        "the kept uid is not reported: {:?}",
        exit.restore_errors
    );
    // Still the guest's: nothing restored it.
    assert_eq!(owner_mode(disk).0, uid);
    (uid, immutable)
}

/// A manager on `env` in which guest `a` was destroyed with its disk `stuck.img` stuck (see
/// [`destroy_with_stuck_disk`]): the disk, its owner and mode before the start, the
/// manager, the kept uid and the guard keeping the disk immutable. `None`, after a loud
/// SKIP, where `chattr +i` cannot be used.
fn guest_a_with_stuck_disk(env: &Env) -> Option<(PathBuf, OwnerMode, Manager, u32, Immutable)> {
    if let Some(r) = chattr_skip(&env.path("images")) {
        svirt_testkit::skip("chattr", r);
        return None;
    }
    let disk = env.raw("stuck.img");
    let before = owner_mode(&disk);
    let (m, _) = Manager::open(env.config("dac,landlock")).unwrap();
    let (uid, immutable) = destroy_with_stuck_disk(&m, env, "a", &disk);
    Some((disk, before, m, uid, immutable))
}

#[test]
fn a_failed_restore_keeps_the_uid_until_the_next_open_restores_it() {
    require_env!();
    let env = Env::new("keepuid");
    let Some((disk, before, m, uid, immutable)) = guest_a_with_stuck_disk(&env) else {
        return;
    };
    // Another guest does not draw the uid the stuck disk still carries.
    let b = m
        .start(&env.xml("b", &[]), StartOptions { paused: true })
        .unwrap();
    assert_ne!(
        b.uid,
        Some(uid),
        "a new guest got the uid of a disk not restored"
    );
    m.destroy("b").unwrap();
    drop(m);
    assert_eq!(
        uid_reservations(&env),
        vec![(uid, "a".to_string())],
        "the uid of the guest whose restore failed is not kept (alone)"
    );

    // Still immutable: the next open tries, fails, and keeps the uid again.
    let (m, report) = Manager::open(env.config("dac,landlock")).unwrap();
    eprintln!("open with the disk still immutable: {:?}", report.recovered);
    assert!(
        report
            .recovered
            .iter()
            .map(|r| (&r.guest, &r.what))
            .any(|(g, w)| g == "a" && w.contains("kept reserved")),
        "{:?}",
        report.recovered
    );
    drop(m);
    assert_eq!(uid_reservations(&env), vec![(uid, "a".to_string())]);
    assert_eq!(owner_mode(&disk).0, uid);

    // Mutable again: the next open restores the disk and releases the uid.
    drop(immutable);
    let (m, report) = Manager::open(env.config("dac,landlock")).unwrap();
    eprintln!("open with the disk mutable: {:?}", report.recovered);
    assert!(
        report
            .recovered
            .iter()
            .map(|r| (&r.guest, &r.what))
            .any(|(g, w)| g == "a" && w.contains("restored") && !w.contains("error")),
        "{:?}",
        report.recovered
    );
    assert_eq!(owner_mode(&disk), before);
    drop(m);
    env.assert_store_clean("after the open that restored the disk");
}

/// A restart of the same name while its uid is still kept gets that uid back (the disk
/// that still carries it is this guest's own), and its stop restores the disk and releases
/// the uid.
#[test]
fn a_restart_while_the_uid_is_kept_reuses_it_and_its_stop_releases_it() {
    require_env!();
    let env = Env::new("keepuid-restart");
    let Some((disk, before, m, uid, immutable)) = guest_a_with_stuck_disk(&env) else {
        return;
    };
    drop(immutable);
    let again = m
        .start(
            &env.xml("a", &[(disk.clone(), "raw", false)]),
            StartOptions { paused: true },
        )
        .unwrap();
    assert_eq!(again.uid, Some(uid));
    assert_eq!(owner_mode(&disk).0, uid);
    let exit = m.destroy("a").unwrap();
    assert!(exit.restore_errors.is_empty(), "{:?}", exit.restore_errors);
    assert_eq!(owner_mode(&disk), before);
    drop(m);
    env.assert_store_clean("after the restart's stop");
}
