#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a failed unwrap is a failed test
//! Deferred reservation commits: an allocation made `with_deferred_commits` is visible at
//! once, is lost if the process is killed before any durable commit follows it, and is
//! kept once one does (whatever that commit writes).
//!
//! The test re-executes its own binary as the child (`SVIRT_STORE_DEFERRED_CHILD`), which
//! allocates, writes a guest record as `DEFERRED_MODE` says (not, durably, deferred, or
//! deferred and then synced if pending), says so, and waits to be killed.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use svirt_store::{AllocatorConfig, IdAllocator, IdConfig, LevelAllocator, Store};

const CHILD_ENV: &str = "SVIRT_STORE_DEFERRED_CHILD";

/// A table of another layer (as the drivers' tree tables are) in the ledger.
const FOREIGN: redb::TableDefinition<'_, u64, &[u8]> = redb::TableDefinition::new("foreign");

fn accounts(dir: &Path) {
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
    std::fs::write(dir.join("etc/group"), "root:x:0:\n").unwrap();
}

fn open(dir: &Path) -> (Arc<Store>, IdAllocator, LevelAllocator) {
    let store = Arc::new(Store::open(&dir.join("state")).unwrap());
    let ids = IdAllocator::open(
        store.clone(),
        IdConfig {
            first: 5000,
            last: 5999,
            root: dir.to_path_buf(),
        },
    )
    .unwrap()
    .with_deferred_commits(true);
    let levels = LevelAllocator::open(store.clone(), AllocatorConfig::default())
        .unwrap()
        .with_deferred_commits(true);
    (store, ids, levels)
}

#[test]
fn deferred_child_entry() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = Path::new(&dir);
    let (store, ids, levels) = open(dir);
    let id = ids.allocate("g").unwrap();
    let level = levels.allocate("g").unwrap();
    // Visible at once to this process's readers.
    assert!(store.id_reservations().unwrap().contains(&(id, "g".into())));
    assert_eq!(store.levels_of("g").unwrap(), vec![level]);
    match std::env::var("DEFERRED_MODE").as_deref() {
        // A durable commit of something else.
        Ok("durable") => store.put_guest("g", "starting", b"{}").unwrap(),
        // The record deferred too, then made durable only if still pending.
        Ok("deferred+sync") => {
            store.put_guest_deferred("g", "starting", b"{}").unwrap();
            assert!(store.sync_if_pending().unwrap(), "nothing was pending");
            assert!(
                !store.sync_if_pending().unwrap(),
                "still pending after a sync"
            );
        }
        Ok("deferred") => store.put_guest_deferred("g", "starting", b"{}").unwrap(),
        // The record deferred, then a commit of another layer's table in the ledger (a
        // driver's tree record), committed or aborted.
        Ok(m @ ("deferred+ledger" | "deferred+ledger-abort")) => {
            store.put_guest_deferred("g", "starting", b"{}").unwrap();
            let txn = store.begin_write().unwrap();
            txn.open_table(FOREIGN)
                .unwrap()
                .insert(1, b"tree".as_slice())
                .unwrap();
            if m == "deferred+ledger" {
                txn.commit().unwrap();
                assert!(
                    !store.sync_if_pending().unwrap(),
                    "the ledger commit covers it"
                );
            } else {
                txn.abort().unwrap();
            }
        }
        _ => {}
    }
    println!("READY {id} {level}");
    std::thread::sleep(std::time::Duration::from_secs(60));
}

fn run(mode: &str) -> (Vec<(u32, String)>, usize, bool) {
    let dir = tempfile::tempdir().unwrap();
    accounts(dir.path());
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "deferred_child_entry", "--nocapture"])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped());
    cmd.env("DEFERRED_MODE", mode);
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    while !line.starts_with("READY") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "child ended early");
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let (store, ids, levels) = open(dir.path());
    let got = (
        store.id_reservations().unwrap(),
        store.level_reservations().unwrap().len(),
        store.get_guest("g").unwrap().is_some(),
    );
    // The allocators rebuilt from the file agree with it.
    assert_eq!(ids.id_of("g").is_some(), !got.0.is_empty());
    assert_eq!(levels.stats().allocated as usize, got.1);
    got
}

#[test]
fn deferred_reservation_lost_without_a_durable_commit() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    for mode in ["none", "deferred", "deferred+ledger-abort"] {
        let (ids, levels, guest) = run(mode);
        assert!(ids.is_empty(), "{mode}: {ids:?}");
        assert_eq!(levels, 0, "{mode}");
        assert!(!guest, "{mode}");
    }
}

#[test]
fn deferred_reservation_kept_by_the_next_durable_commit() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    for mode in ["durable", "deferred+sync", "deferred+ledger"] {
        let (ids, levels, guest) = run(mode);
        assert_eq!(ids.len(), 1, "{mode}: {ids:?}");
        assert_eq!(ids[0].1, "g");
        assert_eq!(levels, 1, "{mode}");
        assert!(guest, "{mode}");
    }
}

/// `sync_if_pending` syncs only when a deferred commit is not yet covered by a durable one.
#[test]
fn sync_if_pending_syncs_only_what_is_pending() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    assert!(!store.sync_if_pending().unwrap(), "nothing written yet");
    store.put_guest_deferred("g", "starting", b"{}").unwrap();
    // A later durable commit of anything covers it.
    store.put_guest("h", "starting", b"{}").unwrap();
    assert!(!store.sync_if_pending().unwrap());
    store.put_guest_deferred("g", "starting", b"{}").unwrap();
    assert!(store.sync_if_pending().unwrap());
    assert!(!store.sync_if_pending().unwrap());
}
