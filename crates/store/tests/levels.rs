#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a failed unwrap is a failed test
//! Level allocator tests against real database files in temporary directories.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use svirt_labels::{CategorySet, Level};
use svirt_store::{AllocatorConfig, Error, LevelAllocator, ReservationKind, Store};

fn lvl(s: &str) -> Level {
    Level::parse(s).unwrap()
}

fn open(dir: &std::path::Path, config: AllocatorConfig) -> LevelAllocator {
    let store = Arc::new(Store::open(dir).unwrap());
    LevelAllocator::open(store, config).unwrap()
}

fn is_valid_pair(l: &Level, lo: u16, hi: u16) -> bool {
    let c: Vec<u16> = l.categories.iter().collect();
    l.sensitivity == 0 && c.len() == 2 && c[0] < c[1] && c[0] >= lo && c[1] <= hi
}

#[test]
fn exhaustion_of_c0_c10_errors_at_once_with_capacity_and_range() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path(), AllocatorConfig::with_categories(0, 10));
    assert_eq!(a.capacity(), 55);
    let mut seen = HashSet::new();
    for i in 0..55 {
        let l = a.allocate(&format!("g{i}")).unwrap();
        assert!(is_valid_pair(&l, 0, 10), "{l}");
        assert!(seen.insert(l.categories), "duplicate {l}");
    }
    let t = Instant::now();
    let err = a.allocate("g55").unwrap_err();
    assert!(t.elapsed() < Duration::from_millis(50), "{:?}", t.elapsed());
    assert!(
        matches!(err, Error::Exhausted { capacity: 55, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("s0:c0.c10") && msg.contains("55"), "{msg}");
    // Freed pair is the only one that can come back.
    let back = lvl("s0:c3,c7");
    let owner = a
        .reservation(&back)
        .unwrap()
        .owners
        .into_iter()
        .next()
        .unwrap();
    a.release(&back, &owner).unwrap();
    assert_eq!(a.allocate("again").unwrap(), back);
    assert!(matches!(a.allocate("more"), Err(Error::Exhausted { .. })));
    a.check_consistency().unwrap();
}

#[test]
fn restart_restores_every_reservation_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (before, stats) = {
        let a = open(dir.path(), AllocatorConfig::default());
        // Statics first: a random earlier allocation containing c5 would (rightly) make the
        // static s0:c5 a dominance conflict.
        a.reserve(&lvl("s0:c5"), "static1", false).unwrap();
        a.reserve(&lvl("s0:c100.c110"), "s-a", true).unwrap();
        a.reserve(&lvl("s0:c100.c110"), "s-b", true).unwrap();
        a.reserve(&lvl("s0"), "plain", false).unwrap();
        for i in 0..100 {
            a.allocate(&format!("d{i}")).unwrap();
        }
        a.allocate_many("bulk", 50).unwrap();
        let released = a.store().levels_of("d7").unwrap();
        a.release(&released[0], "d7").unwrap();
        (a.store().level_reservations().unwrap(), a.stats())
    };
    let a = open(dir.path(), AllocatorConfig::default());
    assert_eq!(a.store().level_reservations().unwrap(), before);
    assert_eq!(a.stats(), stats);
    assert_eq!(stats.allocated, 149);
    assert_eq!(stats.static_levels, 3);
    // c5 blocks its 1023 pairs, c100.c110 its 55 (disjoint from c5's pairs).
    assert_eq!(stats.blocked, 1023 + 55);
    a.check_consistency().unwrap();
    let shared = a.reservation(&lvl("s0:c100.c110")).unwrap();
    assert_eq!(shared.owners.len(), 2);
    assert!(shared.shared);
    assert_eq!(a.store().levels_of("bulk").unwrap().len(), 50);
    // New allocations avoid everything restored.
    let existing: HashSet<_> = before.iter().map(|r| r.level).collect();
    for l in a.allocate_many("after", 1000).unwrap() {
        assert!(!existing.contains(&l));
        assert!(!l.categories.contains(5));
    }
}

#[test]
fn concurrent_allocation_never_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let a = Arc::new(open(dir.path(), AllocatorConfig::default()));
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let a = a.clone();
            std::thread::spawn(move || {
                (0..150)
                    .map(|i| a.allocate(&format!("t{t}-{i}")).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all = HashSet::new();
    for t in threads {
        for l in t.join().unwrap() {
            assert!(all.insert(l.categories), "duplicate {l}");
        }
    }
    assert_eq!(all.len(), 2400);
    assert_eq!(a.store().level_reservations().unwrap().len(), 2400);
    a.check_consistency().unwrap();
}

#[test]
fn concurrent_exhaustion_hands_out_each_pair_once() {
    let dir = tempfile::tempdir().unwrap();
    let a = Arc::new(open(dir.path(), AllocatorConfig::with_categories(0, 10)));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let a = a.clone();
            std::thread::spawn(move || {
                (0..10)
                    .map(|i| a.allocate(&format!("t{t}-{i}")))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut ok = HashSet::new();
    let mut exhausted = 0;
    for t in threads {
        for r in t.join().unwrap() {
            match r {
                Ok(l) => assert!(ok.insert(l.categories), "duplicate {l}"),
                Err(Error::Exhausted { .. }) => exhausted += 1,
                Err(e) => panic!("{e}"),
            }
        }
    }
    assert_eq!((ok.len(), exhausted), (55, 25));
    a.check_consistency().unwrap();
}

#[test]
fn static_conflicts_name_the_owner() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path(), AllocatorConfig::with_categories(0, 10));
    let l = lvl("s0:c1,c2");
    let r = a.reserve(&l, "alice", false).unwrap();
    assert_eq!(r.kind, ReservationKind::Static);
    // Idempotent for the same owner.
    assert_eq!(a.reserve(&l, "alice", false).unwrap(), r);
    for shared in [false, true] {
        let e = a.reserve(&l, "bob", shared).unwrap_err();
        assert!(matches!(e, Error::LevelInUse { .. }), "{e:?}");
        assert!(e.to_string().contains("alice"), "{e}");
    }
    // The same set written the other way round is the same level.
    let e = a.reserve(&lvl("s0:c2,c1"), "bob", false).unwrap_err();
    assert!(e.to_string().contains("alice"), "{e}");
    // Dynamic allocation never hands it out.
    let got = a.allocate_many("dyn", 54).unwrap();
    assert!(!got.contains(&l));
    assert!(matches!(a.allocate("dyn"), Err(Error::Exhausted { .. })));
    // A dynamic level cannot be taken as static by another owner either.
    let e = a.reserve(&got[0], "carol", false).unwrap_err();
    assert!(
        e.to_string().contains("dyn") && e.to_string().contains("dynamic"),
        "{e}"
    );
    // Releasing by a non-owner is refused; by the owner frees the pair for dynamic use.
    assert!(matches!(a.release(&l, "bob"), Err(Error::NotOwner { .. })));
    a.release(&l, "alice").unwrap();
    assert_eq!(a.allocate("dyn").unwrap(), l);
    a.check_consistency().unwrap();
}

#[test]
fn shared_reservations_are_reference_counted() {
    let dir = tempfile::tempdir().unwrap();
    let l = lvl("s0:c7,c9");
    {
        let a = open(dir.path(), AllocatorConfig::default());
        a.reserve(&l, "g1", true).unwrap();
        let r = a.reserve(&l, "g2", true).unwrap();
        assert_eq!(r.owners.len(), 2);
        let e = a.reserve(&l, "g3", false).unwrap_err();
        assert!(
            e.to_string().contains("g1") && e.to_string().contains("g2"),
            "{e}"
        );
        a.release(&l, "g1").unwrap();
    }
    // The count survives a restart.
    let a = open(dir.path(), AllocatorConfig::default());
    let r = a.store().level_reservation(&l).unwrap().unwrap();
    assert_eq!(r.owners.iter().collect::<Vec<_>>(), vec!["g2"]);
    assert_eq!(a.stats().blocked, 1);
    a.reserve(&l, "g4", true).unwrap();
    a.release(&l, "g2").unwrap();
    assert_eq!(a.stats().blocked, 1, "still held by g4");
    a.release(&l, "g4").unwrap();
    assert_eq!(a.store().level_reservation(&l).unwrap(), None);
    assert_eq!(a.stats().blocked, 0);
    assert_eq!(a.stats().free, 523_776);
    // A non-shared holder refuses a later shared request.
    a.reserve(&l, "solo", false).unwrap();
    assert!(matches!(
        a.reserve(&l, "g5", true),
        Err(Error::LevelInUse { .. })
    ));
    a.check_consistency().unwrap();
}

#[test]
fn excluded_categories_are_never_handed_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut ex = CategorySet::new();
    ex.insert(3);
    ex.insert(5);
    let a = open(
        dir.path(),
        AllocatorConfig::with_categories(0, 10).excluding(ex),
    );
    assert_eq!(a.capacity(), 36);
    let got = a.allocate_many("g", 36).unwrap();
    for l in &got {
        assert!(
            !l.categories.contains(3) && !l.categories.contains(5),
            "{l}"
        );
    }
    let e = a.allocate("g").unwrap_err();
    assert!(
        e.to_string().contains("c3,c5") && e.to_string().contains("36"),
        "{e}"
    );
    // Too few categories left is a configuration error.
    let dir2 = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir2.path()).unwrap());
    let e = LevelAllocator::open(
        store,
        AllocatorConfig::with_categories(3, 5).excluding(CategorySet::range(4, 5)),
    )
    .unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e:?}");
}

#[test]
fn static_levels_block_every_comparable_pair() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path(), AllocatorConfig::with_categories(0, 10));
    // s0:c4 is dominated by each of the 10 pairs containing c4.
    a.reserve(&lvl("s0:c4"), "one", false).unwrap();
    assert_eq!(a.stats().blocked, 10);
    // s0:c0.c2 dominates its 3 pairs; s0:c4,c5 is one pair already blocked by s0:c4.
    a.reserve(&lvl("s0:c0.c2"), "three", false).unwrap();
    a.reserve(&lvl("s0:c4,c5"), "pair", false).unwrap();
    assert_eq!(a.stats().blocked, 13);
    // No categories: readable by every guest by design, blocks nothing.
    a.reserve(&lvl("s0"), "plain", false).unwrap();
    // A higher sensitivity with one category is incomparable with every s0 pair.
    a.reserve(&lvl("s1:c6"), "high", false).unwrap();
    assert_eq!(a.stats().blocked, 13);
    let got = a.allocate_many("dyn", 42).unwrap();
    for l in &got {
        let c: Vec<u16> = l.categories.iter().collect();
        assert!(!c.contains(&4), "{l}");
        assert!(!(c[0] <= 2 && c[1] <= 2), "{l}");
    }
    assert!(matches!(
        a.allocate("dyn"),
        Err(Error::Exhausted { blocked: 13, .. })
    ));
    // Counting: releasing s0:c4 keeps c4,c5 blocked by the pair reservation.
    a.release(&lvl("s0:c4"), "one").unwrap();
    assert_eq!(a.stats().free, 9);
    let freed: HashSet<_> = a
        .allocate_many("dyn", 9)
        .unwrap()
        .into_iter()
        .map(|l| l.to_string())
        .collect();
    assert!(!freed.contains("s0:c4,c5"));
    assert!(freed.contains("s0:c4,c6"));
    a.release(&lvl("s0:c4,c5"), "pair").unwrap();
    assert_eq!(a.allocate("dyn").unwrap(), lvl("s0:c4,c5"));
    a.check_consistency().unwrap();
}

#[test]
fn static_level_comparable_with_a_live_dynamic_guest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path(), AllocatorConfig::with_categories(0, 10));
    let got = a.allocate("vm1").unwrap();
    let c: Vec<u16> = got.categories.iter().collect();
    for bad in [
        format!("s0:c{}", c[0]),
        format!("s0:c{}", c[1]),
        "s0:c0.c10".to_string(),
    ] {
        let e = a.reserve(&lvl(&bad), "static", false).unwrap_err();
        assert!(matches!(e, Error::DominanceConflict { .. }), "{bad}: {e:?}");
        assert!(e.to_string().contains("vm1"), "{e}");
    }
    // Nothing was left behind by the refusals.
    assert_eq!(a.stats().blocked, 0);
    a.check_consistency().unwrap();
}

#[test]
fn release_all_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path(), AllocatorConfig::default());
    let mine = a.allocate_many("vm", 3).unwrap();
    a.reserve(&lvl("s0:c1,c2"), "vm", true).unwrap();
    assert!(matches!(
        a.release(&mine[0], "other"),
        Err(Error::NotOwner { .. })
    ));
    let unheld = lvl("s0:c999,c1000");
    if !mine.contains(&unheld) {
        assert!(matches!(
            a.release(&unheld, "vm"),
            Err(Error::NotOwner { .. })
        ));
    }
    let mut released = a.release_all("vm").unwrap();
    released.sort_by_key(|l| l.to_string());
    assert_eq!(released.len(), 4);
    assert_eq!(a.stats().allocated, 0);
    assert_eq!(a.stats().free, 523_776);
    assert!(matches!(a.allocate(""), Err(Error::BadOwner(_))));
    assert!(a.allocate_many("vm", 0).unwrap().is_empty());
    let e = a.allocate_many("vm", 600_000).unwrap_err();
    assert!(matches!(e, Error::NotEnoughFree { .. }), "{e:?}");
    a.check_consistency().unwrap();
}

#[test]
fn second_process_or_handle_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _s = Store::open(dir.path()).unwrap();
    let e = Store::open(dir.path()).unwrap_err();
    assert!(matches!(e, Error::AlreadyOpen { .. }), "{e:?}");
}

mod props {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Alloc(u8),
        ReleaseDyn(u8),
        Reserve(u16, u16, bool, u8),
        ReleaseStatic(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..4).prop_map(Op::Alloc),
            any::<u8>().prop_map(Op::ReleaseDyn),
            (0u16..8, 0u16..8, any::<bool>(), 0u8..3)
                .prop_map(|(a, b, s, o)| Op::Reserve(a, b, s, o)),
            any::<u8>().prop_map(Op::ReleaseStatic),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

        /// Any sequence of allocations, static reservations (single categories, pairs, runs)
        /// and releases keeps memory and database in step, never hands out a pair comparable
        /// with a static level, and reopening rebuilds the same state.
        #[test]
        fn allocator_matches_database(ops in proptest::collection::vec(op(), 1..40)) {
            let dir = tempfile::tempdir().unwrap();
            let a = open(dir.path(), AllocatorConfig::with_categories(0, 7));
            let mut dynamic: Vec<(Level, String)> = Vec::new();
            let mut statics: Vec<(Level, String)> = Vec::new();
            for (n, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Alloc(k) => match a.allocate_many(&format!("d{n}"), usize::from(k)) {
                        Ok(ls) => {
                            for l in ls {
                                for (s, _) in &statics {
                                    prop_assert!(s.categories.is_empty() || (!s.dominates(&l) && !l.dominates(s)), "{l} vs {s}");
                                }
                                dynamic.push((l, format!("d{n}")));
                            }
                        }
                        Err(Error::Exhausted { .. } | Error::NotEnoughFree { .. }) => {}
                        Err(e) => prop_assert!(false, "{e}"),
                    },
                    Op::ReleaseDyn(i) if !dynamic.is_empty() => {
                        let (l, o) = dynamic.remove(usize::from(i) % dynamic.len());
                        a.release(&l, &o).unwrap();
                    }
                    Op::Reserve(x, y, shared, o) => {
                        let (lo, hi) = (x.min(y), x.max(y));
                        let l = lvl(&if lo == hi { format!("s0:c{lo}") } else { format!("s0:c{lo}.c{hi}") });
                        let owner = format!("s{o}");
                        if let Ok(r) = a.reserve(&l, &owner, shared) {
                            prop_assert!(r.owners.contains(&owner));
                            if !statics.contains(&(l, owner.clone())) {
                                statics.push((l, owner));
                            }
                        }
                    }
                    Op::ReleaseStatic(i) if !statics.is_empty() => {
                        let (l, o) = statics.remove(usize::from(i) % statics.len());
                        a.release(&l, &o).unwrap();
                    }
                    _ => {}
                }
                prop_assert!(a.check_consistency().is_ok(), "{:?}", a.check_consistency());
            }
            let stats = a.stats();
            drop(a);
            let b = open(dir.path(), AllocatorConfig::with_categories(0, 7));
            prop_assert_eq!(b.stats(), stats);
            prop_assert!(b.check_consistency().is_ok());
        }
    }
}

#[test]
fn failed_commit_rolls_back_and_hands_out_nothing() {
    // Two allocators over one store violate the single-writer design on purpose: the second
    // one's index is stale, so its commit meets an existing record, fails, and must roll back.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let config = AllocatorConfig::with_categories(0, 1);
    let a = LevelAllocator::open(store.clone(), config.clone()).unwrap();
    let b = LevelAllocator::open(store.clone(), config).unwrap();
    assert_eq!(a.allocate("first").unwrap(), lvl("s0:c0,c1"));
    let e = b.allocate("second").unwrap_err();
    assert!(matches!(e, Error::GroupCommit(_)), "{e:?}");
    assert!(e.to_string().contains("already reserved"), "{e}");
    assert_eq!(b.stats().free, 1, "rolled back in memory");
    assert_eq!(b.stats().allocated, 0);
    let r = store.level_reservation(&lvl("s0:c0,c1")).unwrap().unwrap();
    assert_eq!(r.owners.into_iter().collect::<Vec<_>>(), vec!["first"]);
    assert!(store.levels_of("second").unwrap().is_empty());
    a.check_consistency().unwrap();
}
