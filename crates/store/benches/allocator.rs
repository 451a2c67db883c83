//! Allocator benchmarks (a plain `harness = false` binary: the numbers go in docs/store.md).
//!
//! 1. Cost of choosing a free pair of c0.c1023 at 0%, 50%, 99%, 99.9% occupancy: our free
//!    set against the reference's method (draw two random categories, retry until the pair
//!    is free), both on the same occupancy and the same RNG.
//! 2. Filling the whole range (523,776 pairs) to exhaustion: in memory, and durably through
//!    the allocator into a real database file; zero duplicates checked.
//! 3. Durable allocations per second: one thread, many threads (group commit), batches.
//!
//! `cargo bench -p svirt-store --bench allocator`

use std::collections::HashSet;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use svirt_store::pairs::{PairIndex, pair_count, pair_index};
use svirt_store::{AllocatorConfig, Error, LevelAllocator, Store};

const M: u32 = 1024;

/// Runs `f` repeatedly for about `budget`, returns ns per call.
fn time_per_op(budget: Duration, mut f: impl FnMut()) -> (f64, u64) {
    // Warm-up.
    for _ in 0..1000 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..256 {
            f();
        }
        n += 256;
    }
    (start.elapsed().as_nanos() as f64 / n as f64, n)
}

fn choice_cost() -> Vec<(f64, f64, f64)> {
    println!("## 1. choosing a free pair of c0.c1023 (523,776 pairs)");
    println!();
    println!(
        "| occupancy | free pairs | ours (ns/choice) | random-retry baseline (ns/choice) | mean draws (baseline) | baseline / ours |"
    );
    println!("|---|---|---|---|---|---|");
    let total = pair_count(M) as usize;
    let mut rows = Vec::new();
    for occ in [0.0, 0.5, 0.99, 0.999] {
        let mut rng = StdRng::seed_from_u64(42);
        let mut idx = PairIndex::new(M);
        let used = (total as f64 * occ).round() as usize;
        let mut occupied = vec![false; total];
        for _ in 0..used {
            let Some(i) = idx.take_random(&mut rng) else {
                break;
            };
            occupied[i as usize] = true;
        }
        let free = idx.free_len();

        // Ours: choose (take_random) and give back, so the occupancy stays put.
        let mut r1 = StdRng::seed_from_u64(1);
        let (ours, _) = time_per_op(Duration::from_millis(700), || {
            if let Some(i) = idx.take_random(&mut r1) {
                black_box(i);
                idx.release(i);
            }
        });

        // Baseline: the reference's loop (two random categories, distinct, until free).
        let mut r2 = StdRng::seed_from_u64(2);
        let mut draws = 0u64;
        let (base, n) = time_per_op(Duration::from_millis(700), || {
            loop {
                draws += 1;
                let a: u32 = r2.random_range(0..M);
                let b: u32 = r2.random_range(0..M);
                if a == b {
                    continue;
                }
                let i = pair_index(a.min(b), a.max(b)) as usize;
                if !occupied[i] {
                    occupied[i] = true;
                    black_box(i);
                    occupied[i] = false;
                    break;
                }
            }
        });
        let mean_draws = draws as f64 / (n + 1000) as f64;
        println!(
            "| {:.1}% | {free} | {ours:.1} | {base:.1} | {mean_draws:.1} | {:.1}× |",
            occ * 100.0,
            base / ours
        );
        rows.push((occ, ours, base));
    }
    let zero = rows[0].1;
    let last = rows[3].1;
    println!();
    println!(
        "ours at 99.9% / ours at 0% = {:.2} (target ≤ 2): {}",
        last / zero,
        if last <= 2.0 * zero { "MET" } else { "MISSED" }
    );
    println!();
    rows
}

fn full_fill() {
    println!("## 2. filling c0.c1023 to exhaustion");
    println!();
    // In memory.
    let mut rng = StdRng::seed_from_u64(3);
    let mut idx = PairIndex::new(M);
    let mut seen = vec![false; pair_count(M) as usize];
    let start = Instant::now();
    let mut n = 0usize;
    let mut dups = 0usize;
    while let Some(i) = idx.take_random(&mut rng) {
        if std::mem::replace(&mut seen[i as usize], true) {
            dups += 1;
        }
        n += 1;
    }
    let t = start.elapsed();
    println!(
        "- in-memory index: {n} pairs in {:.1} ms ({:.0} ns/pair), duplicates: {dups}, next choice: {:?}",
        t.as_secs_f64() * 1e3,
        t.as_nanos() as f64 / n as f64,
        idx.take_random(&mut rng)
    );

    // Durable, through the allocator, into a real database file.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(dir.path()).expect("store"));
    let a = LevelAllocator::open(store, AllocatorConfig::default()).expect("allocator");
    let mut sets = HashSet::with_capacity(523_776);
    let mut dup = 0usize;
    let batch = 4096;
    let start = Instant::now();
    let mut commits = 0;
    loop {
        let want = batch.min(a.stats().free as usize);
        if want == 0 {
            break;
        }
        let got = a.allocate_many("fill", want).expect("allocate_many");
        commits += 1;
        for l in got {
            if !sets.insert(l.categories) {
                dup += 1;
            }
        }
    }
    let t = start.elapsed();
    let t_err = Instant::now();
    let err = a.allocate("one-more");
    let t_err = t_err.elapsed();
    let exhausted = matches!(err, Err(Error::Exhausted { .. }));
    println!(
        "- durable (allocate_many × {batch}, {commits} commits): {} levels in {:.2} s ({:.0} levels/s), duplicates: {dup}",
        sets.len(),
        t.as_secs_f64(),
        sets.len() as f64 / t.as_secs_f64()
    );
    println!(
        "- the next allocation: {} in {:.1} µs: {}",
        if exhausted { "Exhausted" } else { "UNEXPECTED" },
        t_err.as_secs_f64() * 1e6,
        err.map(|l| l.to_string()).unwrap_or_else(|e| e.to_string())
    );
    let size = std::fs::metadata(a.store().path())
        .map(|m| m.len())
        .unwrap_or(0);
    drop(a);
    let start = Instant::now();
    let store = Arc::new(Store::open(dir.path()).expect("store"));
    let a = LevelAllocator::open(store, AllocatorConfig::default()).expect("allocator");
    println!(
        "- reopening the full database ({:.1} MiB) and rebuilding the index: {:.2} s, {} allocated, {} free",
        size as f64 / (1 << 20) as f64,
        start.elapsed().as_secs_f64(),
        a.stats().allocated,
        a.stats().free
    );
    let ok = sets.len() == 523_776 && dup == 0 && dups == 0 && exhausted;
    println!(
        "- full fill with zero duplicates and immediate exhaustion: {}",
        if ok { "MET" } else { "MISSED" }
    );
    println!();
}

fn durable_rate() {
    println!("## 3. durable allocations per second (real file, fsync per commit)");
    println!();
    println!("| mode | allocations | seconds | allocations/s |");
    println!("|---|---|---|---|");
    let mut best = 0.0f64;
    // One thread, one allocate() per transaction: the fsync latency bound.
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(dir.path()).expect("store"));
        let a = LevelAllocator::open(store, AllocatorConfig::default()).expect("allocator");
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_secs(2) {
            a.allocate("single").expect("allocate");
            n += 1;
        }
        let s = start.elapsed().as_secs_f64();
        println!(
            "| 1 thread, allocate() | {n} | {s:.2} | {:.0} |",
            n as f64 / s
        );
    }
    // Many threads calling allocate(): group commit batches them.
    for threads in [8usize, 32, 128] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(dir.path()).expect("store"));
        let a =
            Arc::new(LevelAllocator::open(store, AllocatorConfig::default()).expect("allocator"));
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let (a, stop, count) = (a.clone(), stop.clone(), count.clone());
                std::thread::spawn(move || {
                    let owner = format!("vm{t}");
                    while !stop.load(Ordering::Relaxed) {
                        a.allocate(&owner).expect("allocate");
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, Ordering::Relaxed);
        for h in hs {
            let _ = h.join();
        }
        let s = start.elapsed().as_secs_f64();
        let n = count.load(Ordering::Relaxed);
        let rate = n as f64 / s;
        best = best.max(rate);
        println!("| {threads} threads, allocate() (group commit) | {n} | {s:.2} | {rate:.0} |");
        if let Err(e) = a.check_consistency() {
            println!("CONSISTENCY FAILURE: {e}");
        }
    }
    // One thread, allocate_many.
    for n_batch in [16usize, 64] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(dir.path()).expect("store"));
        let a = LevelAllocator::open(store, AllocatorConfig::default()).expect("allocator");
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_secs(2) {
            n += a
                .allocate_many("batch", n_batch)
                .expect("allocate_many")
                .len() as u64;
        }
        let s = start.elapsed().as_secs_f64();
        let rate = n as f64 / s;
        best = best.max(rate);
        println!("| 1 thread, allocate_many({n_batch}) | {n} | {s:.2} | {rate:.0} |");
    }
    println!();
    println!(
        "best durable rate {best:.0}/s (target ≥ 5,000): {}",
        if best >= 5000.0 { "MET" } else { "MISSED" }
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing special either.
    let quick = std::env::args().any(|a| a == "--quick");
    println!("# svirt-store allocator benchmarks");
    println!();
    let _ = choice_cost();
    if quick {
        return;
    }
    full_fill();
    durable_rate();
}
