#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a failed unwrap is a failed test
//! A process killed (SIGKILL) in the middle of allocating leaves every reservation whole or
//! absent, never a level handed out without its record, and reopening rebuilds the index.
//!
//! The test re-executes its own binary as the child: with `SVIRT_STORE_KILL_CHILD` set, the
//! test function runs the child's allocation loop instead.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use svirt_labels::Level;
use svirt_store::{AllocatorConfig, LevelAllocator, ReservationKind, Store};

const CHILD_ENV: &str = "SVIRT_STORE_KILL_CHILD";
const BATCH: usize = 64;

fn child(dir: &str) {
    let store = Arc::new(Store::open(std::path::Path::new(dir)).unwrap());
    let a = Arc::new(LevelAllocator::open(store, AllocatorConfig::default()).unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let a = a.clone();
            std::thread::spawn(move || {
                while Instant::now() < deadline {
                    // Threads 0..4 allocate one at a time (group commit), 4 and 5 in batches.
                    let got = if t < 4 {
                        vec![a.allocate(&format!("single{t}")).unwrap()]
                    } else {
                        a.allocate_many("batch", BATCH).unwrap()
                    };
                    let mut out = std::io::stdout().lock();
                    for l in got {
                        writeln!(out, "ALLOC {l}").unwrap();
                    }
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    // Only reached if the parent never killed us.
    std::process::exit(3);
}

#[test]
fn sigkill_mid_allocation_leaves_all_or_nothing() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(&dir);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut reported_total: HashSet<Level> = HashSet::new();
    for round in 0..4u64 {
        let mut c = Command::new(&exe)
            .args([
                "--exact",
                "sigkill_mid_allocation_leaves_all_or_nothing",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = c.id();
        let mut reader = BufReader::new(c.stdout.take().unwrap());
        let want = 300 + 150 * round as usize;
        let mut reported = Vec::new();
        let mut line = String::new();
        while reported.len() < want {
            line.clear();
            if reader.read_line(&mut line).unwrap() == 0 {
                let _ = c.kill();
                panic!("child {pid} ended early after {} levels", reported.len());
            }
            if let Some(l) = line.trim().strip_prefix("ALLOC ") {
                reported.push(Level::parse(l).unwrap());
            }
        }
        // Vary the moment of death within the child's commit cycle.
        std::thread::sleep(Duration::from_micros(300 * round));
        c.kill().unwrap(); // SIGKILL, on our own child's pid
        let status = c.wait().unwrap();
        assert!(!status.success());
        // Drain what the child printed before dying: also handed out, so also durable.
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut reader, &mut rest);
        for l in rest.lines().filter_map(|l| l.strip_prefix("ALLOC ")) {
            if let Ok(l) = Level::parse(l) {
                reported.push(l);
            }
        }

        let store = Arc::new(Store::open(dir.path()).unwrap());
        let records = store.level_reservations().unwrap();
        let mut sets = HashSet::new();
        for r in &records {
            assert_eq!(r.kind, ReservationKind::Dynamic);
            assert_eq!(r.owners.len(), 1);
            assert!(sets.insert(r.level.categories), "{} twice", r.level);
            assert_eq!(r.level.categories.len(), 2);
        }
        let in_db: HashSet<Level> = records.iter().map(|r| r.level).collect();
        for l in &reported {
            assert!(
                in_db.contains(l),
                "{l} was handed out but is not in the database"
            );
            assert!(
                reported_total.insert(*l),
                "{l} handed out twice across restarts"
            );
        }
        // Each allocate_many is one transaction: the batch owner holds whole batches only.
        let batch = store.levels_of("batch").unwrap().len();
        assert_eq!(batch % BATCH, 0, "partial batch of {batch} levels survived");
        // Rebuilt index agrees with the file and continues without collisions.
        let a = LevelAllocator::open(store.clone(), AllocatorConfig::default()).unwrap();
        a.check_consistency().unwrap();
        assert_eq!(a.stats().allocated as usize, records.len());
        assert_eq!(a.stats().free as usize, 523_776 - records.len());
        let next = a.allocate("parent").unwrap();
        assert!(!in_db.contains(&next));
        a.release(&next, "parent").unwrap();
        eprintln!(
            "round {round}: {} handed out before SIGKILL, {} in the database ({} in batches)",
            reported.len(),
            records.len(),
            batch
        );
    }
}
