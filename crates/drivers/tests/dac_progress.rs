//! Progress of DAC tree walks: a 10,000-file share set and restored through the driver
//! reports (to the relabel engine's callback type) while it works, not only at the end,
//! with counts that match the tree as it is at the moment of each report, monotonic per
//! phase, final counts equal to the entries changed and restored, and `path` the plan's
//! tree root. A second guest joining a shared tree reports its labeling (no scan) with the
//! recorded size, and only the last user's stop reports a restore.

mod dac_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use dac_support::*;
use svirt_domain::{DacAction, Plan, Sharing};
use svirt_drivers::SecurityDriver;
use svirt_drivers::progress::{Phase, Progress, ProgressFn};

type Snapshot = BTreeMap<PathBuf, (u32, u32, u32)>;

/// The ids of the tests here.
const FIRST_ID: u32 = 600_400;
const LAST_ID: u32 = 600_450;

/// Entries whose state differs between `a` and `b`.
fn differing(a: &Snapshot, b: &Snapshot) -> u64 {
    a.iter().filter(|(p, s)| b.get(*p) != Some(*s)).count() as u64
}

/// `files` files in directories of 1000, with varied modes, and a symlink (never counted:
/// walks skip symlinks).
fn make_tree(tree: &Path, files: usize) {
    std::fs::create_dir(tree).expect("mkdir");
    chmod(tree, 0o755);
    for d in 0..files.div_ceil(1000) {
        let sub = tree.join(format!("d{d}"));
        std::fs::create_dir(&sub).expect("mkdir");
        for f in 0..1000.min(files - d * 1000) {
            let p = sub.join(format!("f{f}"));
            std::fs::File::create(&p).expect("create");
            chmod(
                &p,
                if (d * 1000 + f) % 7 == 0 {
                    0o600
                } else {
                    0o644
                },
            );
        }
    }
    std::os::unix::fs::symlink("f1", tree.join("d0/link")).expect("symlink");
}

fn tree_plan(name: &str, tree: &Path, sharing: Sharing, dac: DacAction) -> Plan {
    plan(name, vec![tree_resource(tree, sharing, dac)])
}

/// One report, with what the tree looked like when it was made.
struct Seen {
    p: Progress,
    /// Entries differing from the reference snapshot of the phase, at report time.
    differing: u64,
    thread: std::thread::ThreadId,
}

/// A callback recording every report; at each one, compares the tree to the reference of
/// the phase (`before` while scanning and labeling, `set` while restoring).
struct Recorder {
    tree: PathBuf,
    reference: Mutex<BTreeMap<&'static str, Snapshot>>,
    seen: Mutex<Vec<Seen>>,
}

impl Recorder {
    fn new(tree: &Path) -> Arc<Recorder> {
        Arc::new(Recorder {
            tree: tree.to_path_buf(),
            reference: Mutex::new(BTreeMap::new()),
            seen: Mutex::new(Vec::new()),
        })
    }

    fn set_reference(&self, phase: &'static str, s: Snapshot) {
        self.reference.lock().expect("lock").insert(phase, s);
    }

    fn callback(self: &Arc<Self>) -> ProgressFn {
        let me = self.clone();
        Arc::new(move |p: &Progress| {
            let key = if p.phase == Phase::Restoring {
                "restore"
            } else {
                "set"
            };
            let differing = match me.reference.lock().expect("lock").get(key) {
                Some(r) => differing(r, &tree_snapshot(&me.tree)),
                None => u64::MAX,
            };
            me.seen.lock().expect("lock").push(Seen {
                p: p.clone(),
                differing,
                thread: std::thread::current().id(),
            });
        })
    }

    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().expect("lock"))
    }
}

/// The reports of `phase`, checked: path, monotonic `done` and `total`, `done <= total`.
fn phase<'a>(seen: &'a [Seen], phase: Phase, tree: &Path) -> Vec<&'a Seen> {
    let v: Vec<&Seen> = seen.iter().filter(|s| s.p.phase == phase).collect();
    for w in v.windows(2) {
        assert!(
            w[1].p.done >= w[0].p.done && w[1].p.total >= w[0].p.total,
            "{phase:?}: not monotonic: {:?} then {:?}",
            w[0].p,
            w[1].p
        );
    }
    for s in &v {
        assert_eq!(s.p.path, tree, "{phase:?}: path is not the plan's root");
        assert!(s.p.done <= s.p.total, "{:?}", s.p);
    }
    v
}

/// The phases in the order their reports arrived, each once.
fn phase_order(seen: &[Seen]) -> Vec<Phase> {
    let mut out: Vec<Phase> = Vec::new();
    for s in seen {
        if out.last() != Some(&s.p.phase) {
            out.push(s.p.phase);
        }
    }
    out
}

#[test]
fn dac_tree_of_10000_files_reports_progress_while_set_and_restored() {
    const FILES: usize = 10_000;
    let Some((dir, _acc, d)) = dac_setup(FIRST_ID, LAST_ID, None) else {
        return;
    };
    let tree = dir.path().join("share");
    make_tree(&tree, FILES);
    let p = tree_plan(
        "progress",
        &tree,
        Sharing::Private,
        DacAction::OwnGuest { private: true },
    );
    let mut g = guest("progress");
    d.reserve(&p, &mut g).expect("reserve");
    let (uid, gid) = g.ids.expect("ids");
    // 300 files already as DAC wants them: visited, not changed, not restored.
    for f in 0..300 {
        let path = tree.join(format!("d3/f{f}"));
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown");
        chmod(&path, 0o600);
    }
    let before = tree_snapshot(&tree);
    // Every entry but the symlink.
    let entries = before.len() as u64 - 1;
    assert!(entries > FILES as u64);

    let rec = Recorder::new(&tree);
    rec.set_reference("set", before.clone());
    d.set_progress(Some(rec.callback()));
    let me = std::thread::current().id();

    d.set_all(&p, &g).expect("set_all");
    let set = tree_snapshot(&tree);
    let changed = differing(&before, &set);
    assert_eq!(
        changed,
        entries - 300,
        "the share was not changed as planned"
    );
    let seen = rec.take();
    assert!(
        seen.iter().all(|s| s.thread == me),
        "DAC walks on the caller"
    );
    assert_eq!(phase_order(&seen), vec![Phase::Scanning, Phase::Labeling]);

    let scan = phase(&seen, Phase::Scanning, &tree);
    assert!(
        scan.iter().all(|s| s.differing == 0),
        "the scan changed something"
    );
    let last = scan.last().expect("scan reports");
    assert_eq!((last.p.done, last.p.total), (entries, entries));
    // During the scan: reports before its end (the first walk finds the size, the second
    // reads the originals).
    assert!(scan.len() >= 4, "{} scanning reports", scan.len());
    assert!(scan.iter().any(|s| s.p.done == 0 && s.p.total < entries));
    assert!(scan.iter().any(|s| s.p.done > 0 && s.p.done < entries));

    let label = phase(&seen, Phase::Labeling, &tree);
    let last = label.last().expect("labeling reports");
    assert_eq!(
        last.p.done, changed,
        "final count is not the entries changed"
    );
    assert_eq!(last.p.total, entries);
    let during: Vec<_> = label.iter().filter(|s| s.p.done < changed).collect();
    assert!(
        during.len() >= 2,
        "{} reports during labeling",
        during.len()
    );
    for s in &label {
        // `done` is what the tree shows at that moment, not an estimate.
        assert_eq!(s.differing, s.p.done, "{:?}", s.p);
        assert_eq!(s.p.total, entries, "{:?}", s.p);
    }

    rec.set_reference("restore", set.clone());
    let errors = d.restore_all(&p, &g);
    assert!(errors.is_empty(), "{errors:?}");
    let after = tree_snapshot(&tree);
    assert_eq!(after, before, "not restored exactly");
    let restored = differing(&set, &after);
    let seen = rec.take();
    assert!(seen.iter().all(|s| s.thread == me));
    assert_eq!(phase_order(&seen), vec![Phase::Restoring]);
    let rest = phase(&seen, Phase::Restoring, &tree);
    let last = rest.last().expect("restoring reports");
    assert_eq!(
        last.p.done, restored,
        "final count is not the entries restored"
    );
    assert_eq!(last.p.done, changed);
    assert_eq!(last.p.total, entries);
    let during: Vec<_> = rest.iter().filter(|s| s.p.done < restored).collect();
    assert!(during.len() >= 2, "{} reports during restore", during.len());
    for s in &rest {
        assert_eq!(s.differing, s.p.done, "{:?}", s.p);
    }

    // Cleared: the next walks report nothing.
    d.set_progress(None);
    d.set_all(&p, &g).expect("set_all again");
    assert!(d.restore_all(&p, &g).is_empty());
    assert!(rec.take().is_empty());
    assert_eq!(tree_snapshot(&tree), before);
    d.release(&g).expect("release");
}

#[test]
fn dac_shared_tree_joined_reports_labeling_with_the_recorded_size() {
    const SHARED_GID: u32 = 600_499;
    const FILES: usize = 5_000;
    let Some((dir, _acc, d)) = dac_setup(FIRST_ID, LAST_ID, Some(SHARED_GID)) else {
        return;
    };
    let tree = dir.path().join("share");
    make_tree(&tree, FILES);
    let before = tree_snapshot(&tree);
    let entries = before.len() as u64 - 1;
    let rec = Recorder::new(&tree);
    rec.set_reference("set", before.clone());
    d.set_progress(Some(rec.callback()));

    let mut guests = Vec::new();
    for name in ["join-a", "join-b"] {
        let p = tree_plan(name, &tree, Sharing::Shared, DacAction::SharedGroup);
        let mut g = guest(name);
        d.reserve(&p, &mut g).expect("reserve");
        d.set_all(&p, &g).expect("set_all");
        guests.push((p, g, rec.take()));
    }
    let set = tree_snapshot(&tree);
    let changed = differing(&before, &set);
    assert_eq!(changed, entries, "g+rw and the shared group on every entry");

    let first = &guests[0].2;
    assert_eq!(phase_order(first), vec![Phase::Scanning, Phase::Labeling]);
    let last = phase(first, Phase::Labeling, &tree)
        .pop()
        .expect("labeling");
    assert_eq!((last.p.done, last.p.total), (changed, entries));

    // The second guest finds the tree recorded: no scan; it visits every entry (reports
    // during its walk), of the size recorded, and changes none (the first one's change is
    // its change too).
    let second = &guests[1].2;
    assert_eq!(phase_order(second), vec![Phase::Labeling]);
    let label = phase(second, Phase::Labeling, &tree);
    assert!(label.len() >= 2, "{} reports", label.len());
    for s in &label {
        assert_eq!((s.p.done, s.p.total), (0, entries), "{:?}", s.p);
    }

    rec.set_reference("restore", set.clone());
    // The first user stops: the tree stays as it is, nothing walked, nothing reported.
    let (p, g, _) = &guests[0];
    assert!(d.restore_all(p, g).is_empty());
    assert!(rec.take().is_empty());
    assert_eq!(tree_snapshot(&tree), set);
    // The last one stops: restored, with progress.
    let (p, g, _) = &guests[1];
    assert!(d.restore_all(p, g).is_empty());
    assert_eq!(tree_snapshot(&tree), before);
    let seen = rec.take();
    assert_eq!(phase_order(&seen), vec![Phase::Restoring]);
    let rest = phase(&seen, Phase::Restoring, &tree);
    assert!(rest.len() >= 2, "{} reports", rest.len());
    for s in &rest {
        assert_eq!(s.differing, s.p.done, "{:?}", s.p);
    }
    let last = rest.last().expect("restoring");
    assert_eq!((last.p.done, last.p.total), (changed, entries));
    for (_, g, _) in &guests {
        d.release(g).expect("release");
    }
}
