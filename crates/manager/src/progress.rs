//! Progress of the tree operations (filesystem shares, TPM state) a start or a stop is
//! running, per guest, for `svirt start`'s progress bar.
//!
//! The relabel engine reports from its worker threads (every few thousand entries, see
//! `svirt_drivers::relabel`); a report only updates counters in place under one short
//! lock, and a report for a tree no running operation owns (crash recovery at open) is
//! dropped. The DAC driver walks trees itself and reports through a callback of its own.
//! A driver that does not report still shows its trees while it runs, with unknown
//! counts: "busy with this tree" is worth telling a user waiting on a large share even
//! without numbers.
//!
//! Reports are matched to operations by driver and tree root only: a report
//! ([`Progress`]) does not name its guest, and starts and cleanups of different guests run
//! at the same time. So when two guests' operations work on the same tree root with the
//! same driver at once (a share both use, one starting while the other stops), each
//! report updates both guests' counts: one guest's bar may show the other's progress.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use svirt_domain::{Model, Plan};
use svirt_drivers::progress::{Phase, Progress, ProgressFn};

/// What is being done to a tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TreePhase {
    /// Walking the tree and reading the original labels.
    Scanning,
    /// Writing the guest's labels.
    Labeling,
    /// Writing the original labels back.
    Restoring,
}

impl TreePhase {
    /// `scanning`, `labeling`, `restoring`.
    pub fn as_str(self) -> &'static str {
        match self {
            TreePhase::Scanning => "scanning",
            TreePhase::Labeling => "labeling",
            TreePhase::Restoring => "restoring",
        }
    }
}

impl From<Phase> for TreePhase {
    fn from(p: Phase) -> Self {
        match p {
            Phase::Scanning => TreePhase::Scanning,
            Phase::Labeling => TreePhase::Labeling,
            Phase::Restoring => TreePhase::Restoring,
        }
    }
}

/// One tree operation in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeProgress {
    /// The tree's root, as the plan names it.
    pub path: String,
    /// The driver working on it (`selinux`, `dac`).
    pub model: String,
    /// What is being done.
    pub phase: TreePhase,
    /// Entries handled so far; `None` when the driver does not report counts.
    pub done: Option<u64>,
    /// Entries to handle (during `scanning`: entries seen so far); `None` when unknown.
    pub total: Option<u64>,
    /// Milliseconds since this driver started on the guest's trees.
    pub elapsed_ms: u64,
}

/// Whether an operation sets labels (start) or restores them (stop, rollback).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Labeling,
    Restoring,
}

struct Counts {
    phase: Phase,
    done: u64,
    total: u64,
}

struct GuestOp {
    action: Action,
    roots: Vec<PathBuf>,
    /// Parallel to `roots`: the engine's last report for that tree.
    counts: Vec<Option<Counts>>,
    /// The driver running now, when it touches files.
    model: Option<Model>,
    since: Instant,
    /// Tells the guard of an older operation of the same guest not to clear a newer one.
    serial: u64,
}

/// Every guest's tree operations in flight.
#[derive(Default)]
pub(crate) struct Board {
    ops: Mutex<(u64, HashMap<String, GuestOp>)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Board {
    /// The callback to register on `model`'s driver (the relabel engine for SELinux, the
    /// DAC driver), so its reports reach only operations in that driver's stage.
    pub(crate) fn callback(self: &Arc<Self>, model: Model) -> ProgressFn {
        // Weak: the engine lives in the driver stack, which the manager (holding the
        // board) owns; no cycle, but no reason to keep the board alive either.
        let board = Arc::downgrade(self);
        Arc::new(move |p: &Progress| {
            if let Some(b) = board.upgrade() {
                b.report(model, p);
            }
        })
    }

    fn report(&self, model: Model, p: &Progress) {
        let mut g = lock(&self.ops);
        for op in g.1.values_mut() {
            // Within one operation the stack runs one driver at a time, but operations of
            // several guests run at once: a report goes to every operation in this
            // driver's stage with this root (the report does not name its guest, see the
            // module doc).
            if op.model != Some(model) {
                continue;
            }
            if let Some(i) = op.roots.iter().position(|r| *r == p.path) {
                let c = Counts {
                    phase: p.phase,
                    done: p.done,
                    total: p.total,
                };
                // Workers race: never let a late, smaller count move the bar back.
                match &mut op.counts[i] {
                    Some(old) if old.phase == c.phase && old.done > c.done => {}
                    slot => *slot = Some(c),
                }
            }
        }
    }

    /// Starts tracking `plan`'s trees for its guest; `None` when the plan has none (the
    /// common case costs one scan of the resource list). Cleared when the guard drops.
    pub(crate) fn begin<'a>(&'a self, plan: &Plan, action: Action) -> Option<OpGuard<'a>> {
        let roots: Vec<PathBuf> = plan
            .resources
            .iter()
            .filter(|r| r.resource.recursive)
            .map(|r| r.resource.path.clone())
            .collect();
        self.begin_roots(&plan.name, roots, action)
    }

    fn begin_roots<'a>(
        &'a self,
        name: &str,
        roots: Vec<PathBuf>,
        action: Action,
    ) -> Option<OpGuard<'a>> {
        if roots.is_empty() {
            return None;
        }
        let mut g = lock(&self.ops);
        g.0 += 1;
        let serial = g.0;
        g.1.insert(
            name.to_string(),
            GuestOp {
                action,
                counts: roots.iter().map(|_| None).collect(),
                roots,
                model: None,
                since: Instant::now(),
                serial,
            },
        );
        Some(OpGuard {
            board: self,
            name: name.to_string(),
            serial,
        })
    }

    /// The guest's tree operations in flight (empty when none).
    pub(crate) fn snapshot(&self, name: &str) -> Vec<TreeProgress> {
        let g = lock(&self.ops);
        let Some(op) = g.1.get(name) else {
            return Vec::new();
        };
        let Some(model) = op.model else {
            return Vec::new();
        };
        let elapsed_ms = u64::try_from(op.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        let default_phase = match op.action {
            Action::Labeling => TreePhase::Labeling,
            Action::Restoring => TreePhase::Restoring,
        };
        op.roots
            .iter()
            .zip(&op.counts)
            .map(|(root, c)| TreeProgress {
                path: root.display().to_string(),
                model: model.as_str().to_string(),
                phase: c.as_ref().map_or(default_phase, |c| c.phase.into()),
                done: c.as_ref().map(|c| c.done),
                total: c.as_ref().map(|c| c.total),
                elapsed_ms,
            })
            .collect()
    }
}

/// Keeps a guest's operation listed; removes it when dropped.
pub(crate) struct OpGuard<'a> {
    board: &'a Board,
    name: String,
    serial: u64,
}

impl OpGuard<'_> {
    /// The driver `model` now works on the trees (its counts start afresh).
    pub(crate) fn stage(&self, model: Model) {
        let mut g = lock(&self.board.ops);
        if let Some(op) = g.1.get_mut(&self.name)
            && op.serial == self.serial
        {
            // Landlock and the like do not touch files: nothing to show while they run.
            op.model = svirt_drivers::registry::of_model(model)
                .is_some_and(|r| r.changes_files)
                .then_some(model);
            op.counts.iter_mut().for_each(|c| *c = None);
            op.since = Instant::now();
        }
    }
}

impl Drop for OpGuard<'_> {
    fn drop(&mut self) {
        let mut g = lock(&self.board.ops);
        if g.1
            .get(&self.name)
            .is_some_and(|op| op.serial == self.serial)
        {
            g.1.remove(&self.name);
        }
    }
}

/// Every guest's tree operations in flight, keyed by guest.
pub(crate) fn all(board: &Board) -> Vec<(String, Vec<TreeProgress>)> {
    let names: Vec<String> = lock(&board.ops).1.keys().cloned().collect();
    names
        .into_iter()
        .map(|n| {
            let t = board.snapshot(&n);
            (n, t)
        })
        .filter(|(_, t)| !t.is_empty())
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use svirt_drivers::relabel::{LabelJob, Relabeler};
    use svirt_hostfs::FsRoot;
    use svirt_store::Store;

    /// The real engine labels a real 50,000-file tree (writing `security.selinux` works
    /// on this host without SELinux enabled) while the board is polled, as svirtd does.
    #[test]
    fn engine_reports_reach_the_board_and_clear_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("share");
        std::fs::create_dir(&tree).unwrap();
        for d in 0..50 {
            let sub = tree.join(format!("d{d}"));
            std::fs::create_dir(&sub).unwrap();
            for f in 0..1000 {
                std::fs::File::create(sub.join(format!("f{f}"))).unwrap();
            }
        }
        let probe = tree.join("d0/f0");
        if let Err(e) = xattr_set(&probe) {
            svirt_testkit::skip(
                "selinux-xattrs",
                format!("cannot write security.selinux here: {e}"),
            );
            return;
        }
        let store = Arc::new(Store::open(&dir.path().join("state")).unwrap());
        let r = Relabeler::open(store, FsRoot::host().unwrap(), 2).unwrap();
        let board = Arc::new(Board::default());
        r.set_progress(Some(board.callback(Model::Selinux)));
        // A report for a tree no operation owns (recovery) is dropped.
        assert!(board.snapshot("g").is_empty());
        let done = AtomicBool::new(false);
        let seen: Vec<TreeProgress> = std::thread::scope(|s| {
            let op = board
                .begin_roots("g", vec![tree.clone()], Action::Labeling)
                .unwrap();
            op.stage(Model::Selinux);
            // Stops the poller even when an assertion below fails (else the scope hangs).
            let _stop = SetOnDrop(&done);
            let poller = s.spawn(|| {
                let mut seen = Vec::new();
                while !done.load(Ordering::SeqCst) {
                    seen.extend(board.snapshot("g"));
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                seen
            });
            let job = LabelJob {
                path: tree.clone(),
                label: "system_u:object_r:svirt_image_t:s0:c1,c2".into(),
                restore: true,
                recursive: true,
                identity: None,
            };
            let applied = r.set_labels("g", std::slice::from_ref(&job)).unwrap();
            assert!(applied.changed >= 50_000, "{applied:?}");
            // Still listed until the operation (the guard) ends, with the final count.
            let last = board.snapshot("g");
            assert_eq!(last.len(), 1);
            assert_eq!(last[0].phase, TreePhase::Labeling);
            // The engine's final report (its total counts the root, labeled apart).
            assert!(last[0].done <= last[0].total, "{last:?}");
            assert!(last[0].done.unwrap() >= 50_000, "{last:?}");
            drop(op);
            drop(_stop);
            poller.join().unwrap()
        });
        assert!(
            board.snapshot("g").is_empty(),
            "cleared after the operation"
        );
        let counted: Vec<&TreeProgress> = seen.iter().filter(|t| t.done.is_some()).collect();
        assert!(!counted.is_empty(), "no counted report observed: {seen:?}");
        assert!(counted.iter().all(|t| t.path == tree.display().to_string()
            && t.model == "selinux"
            && t.done <= t.total));
        // Never backwards within a phase.
        for w in counted.windows(2) {
            if w[0].phase == w[1].phase {
                assert!(w[0].done <= w[1].done, "{:?} then {:?}", w[0], w[1]);
            }
        }
        // Restore under a new operation: listed while it runs, gone after.
        let op = board
            .begin_roots("g", vec![tree.clone()], Action::Restoring)
            .unwrap();
        op.stage(Model::Selinux);
        assert_eq!(board.snapshot("g")[0].phase, TreePhase::Restoring);
        assert!(r.restore_labels("g").is_empty());
        let after = board.snapshot("g");
        assert_eq!(after[0].phase, TreePhase::Restoring);
        assert!(after[0].done.unwrap() >= 50_000, "{after:?}");
        assert_eq!(all(&board).len(), 1);
        drop(op);
        assert!(board.snapshot("g").is_empty());
        assert!(all(&board).is_empty());
    }

    struct SetOnDrop<'a>(&'a AtomicBool);

    impl Drop for SetOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn xattr_set(p: &std::path::Path) -> std::io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
        let v = b"system_u:object_r:svirt_image_t:s0";
        // SAFETY: valid NUL-terminated strings and buffer.
        let r = unsafe {
            libc::lsetxattr(
                c.as_ptr(),
                c"security.selinux".as_ptr(),
                v.as_ptr().cast(),
                v.len(),
                0,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    #[test]
    fn stages_without_files_and_older_guards_do_not_show_or_clear() {
        let board = Board::default();
        let a = board
            .begin_roots("g", vec![PathBuf::from("/srv/a")], Action::Labeling)
            .unwrap();
        assert!(board.snapshot("g").is_empty(), "no driver yet");
        a.stage(Model::Landlock);
        assert!(board.snapshot("g").is_empty(), "landlock touches no file");
        a.stage(Model::Dac);
        let s = board.snapshot("g");
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].done, s[0].total), (None, None));
        assert_eq!(s[0].model, "dac");
        // A later operation of the same guest replaces it; the older guard leaves it be.
        let b = board
            .begin_roots("g", vec![PathBuf::from("/srv/a")], Action::Restoring)
            .unwrap();
        b.stage(Model::Dac);
        drop(a);
        assert_eq!(board.snapshot("g")[0].phase, TreePhase::Restoring);
        drop(b);
        assert!(board.snapshot("g").is_empty());
        assert!(board.begin_roots("h", vec![], Action::Labeling).is_none());
    }

    #[test]
    fn reports_reach_only_operations_in_their_drivers_stage() {
        let board = Arc::new(Board::default());
        let root = PathBuf::from("/srv/a");
        let (dac, selinux) = (board.callback(Model::Dac), board.callback(Model::Selinux));
        let report = |f: &ProgressFn, done| {
            f(&Progress {
                path: root.clone(),
                phase: Phase::Labeling,
                done,
                total: 100,
            })
        };
        let a = board
            .begin_roots("a", vec![root.clone()], Action::Labeling)
            .unwrap();
        a.stage(Model::Selinux);
        let b = board
            .begin_roots("b", vec![root.clone()], Action::Restoring)
            .unwrap();
        b.stage(Model::Dac);
        // A's SELinux stage does not take B's DAC counts, nor B's stage A's engine counts.
        report(&dac, 40);
        report(&selinux, 7);
        assert_eq!(board.snapshot("a")[0].done, Some(7));
        assert_eq!(board.snapshot("b")[0].done, Some(40));
        drop((a, b));
    }
}
