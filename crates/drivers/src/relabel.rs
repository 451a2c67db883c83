//! The relabel engine: change an object's security attributes only after its original state
//! is durably recorded, restore it when its last user stops, and recover after a crash.
//!
//! - Single objects (disks, chardevs, kernels…) get one record each in the store's originals
//!   table ([`Store::record_original_if_absent`]), keyed by (dev, ino) with the birth time to
//!   detect a replaced file, committed before the object is touched. Users are recorded as
//!   `"<model>/<guest>"` so that each model restores its own attribute when the last user
//!   *of that model* leaves, whatever other models still hold.
//! - Trees (filesystem shares, TPM state) would need one record per file: a million fsync'ed
//!   JSON records is not an option. A tree gets one record in the store's ledger (tables
//!   `trees`, `tree_exceptions`): the most common original label of the entries changed
//!   (the "dominant" one) and the entries whose original differs from it ("exceptions"),
//!   committed once before the first entry is touched.
//! - No xattr of our own is ever written on a user's file.
//!
//! Tree walks run on a thread pool, open every directory relative to its parent fd with
//! `O_NOFOLLOW`/`RESOLVE_NO_SYMLINKS|RESOLVE_NO_XDEV`, and label entries with
//! `setxattrat(dirfd, name, AT_SYMLINK_NOFOLLOW)`: a symlink is labeled as itself and never
//! followed, and a directory swapped for a symlink during the walk fails to open (`ELOOP`)
//! instead of leading out of the tree.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use svirt_store::{ObjectIdentity, ObjectKey, Original, Store};

use crate::owners::{FLAG_SELINUX_LABEL, owner_key, split_owner};
use crate::progress::{FaultHook, Phase, Progress, ProgressFn};
use crate::tree_common::{
    Bytes, DbError, Record, RecordReader, RecordWriter, db_err, full_path, get_json, insert_chunks,
    join_rel, object_key, path_of_bytes, put_json, read_chunks, remove_chunks, same_root,
    store_identity,
};
use svirt_hostfs::walk::Enter;
use svirt_hostfs::{Dir, EntryKind, FsRoot, Identity, Object};

/// The SELinux label attribute.
pub const XATTR_SELINUX: &CStr = c"security.selinux";

/// An engine failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelabelError {
    /// A system call on an object failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The object.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] svirt_store::Error),
    /// A tree record in the ledger does not decode.
    #[error("tree originals: {0}")]
    TreeDb(String),
    /// The tree walkers' thread pool could not be made.
    #[error("tree walkers: {0}")]
    ThreadPool(String),
    /// A path the engine never relabels.
    #[error("{0}: refusing to relabel a system path")]
    SystemPath(PathBuf),
    /// The object is in use by another guest with another label.
    #[error(
        "{path}: already in use by {owners} with label {current}; refusing to relabel it to {wanted}"
    )]
    InUse {
        /// The object.
        path: PathBuf,
        /// The other users.
        owners: String,
        /// Its label now.
        current: String,
        /// The label asked for.
        wanted: String,
    },
    /// Stopped by an injected fault (tests).
    #[error("injected fault at {0}")]
    Injected(String),
}

impl From<DbError> for RelabelError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Ledger(e) => RelabelError::Store(e),
            DbError::Corrupt(m) => RelabelError::TreeDb(m),
        }
    }
}

impl RelabelError {
    /// The errno of an I/O failure, if that is what it is.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            RelabelError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
    /// The object the error is about, when there is one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            RelabelError::Io { path, .. }
            | RelabelError::SystemPath(path)
            | RelabelError::InUse { path, .. } => Some(path),
            _ => None,
        }
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RelabelError + 'a {
    move |source| RelabelError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Errors that do not stop a guest: the filesystem cannot store labels.
pub fn is_soft_errno(errno: Option<i32>) -> bool {
    matches!(errno, Some(libc::ENOTSUP) | Some(libc::EROFS)) || errno == Some(libc::EOPNOTSUPP)
}

/// Paths never relabeled themselves (a file below them is fine): the planner's own list, so
/// that the engine refuses exactly what the planner refuses, even for a hand-made plan.
pub const SYSTEM_PATHS: &[&str] = svirt_domain::SYSTEM_PATHS;

/// Whether `path` is one the engine refuses to relabel (the list above, and the invoking
/// user's home directory): the planner's own check ([`svirt_domain::Host::is_system_path`]).
pub fn is_system_path(path: &Path) -> bool {
    svirt_domain::Host::new("/")
        .with_home(std::env::var_os("HOME").map(PathBuf::from))
        .is_system_path(path)
}

/// Entries written or restored between two progress reports of a tree.
const REPORT_EVERY: u64 = 4096;
/// Entries read between two reports of a scan (reading is cheaper than writing).
const SCAN_REPORT_EVERY: u64 = 65536;

/// Reports `done` of `total` entries of `phase` on the tree at `path` through `report`
/// (only a report allocates: the `Progress`'s path).
fn report_at(
    (path, phase): (&Path, Phase),
    (done, total): (u64, u64),
    report: impl FnOnce(&Progress),
) {
    report(&Progress {
        path: path.to_path_buf(),
        phase,
        done,
        total,
    });
}

/// One worker's share of a tree-wide counter, added to it every [`Tally::BATCH`] entries
/// rather than per entry: two cores bouncing the counter's cache line every few
/// microseconds cost several percent of a relabel. The rest is added when it is dropped.
struct Tally<'a> {
    shared: &'a AtomicU64,
    pending: u64,
    every: u64,
}

impl<'a> Tally<'a> {
    const BATCH: u64 = 64;

    fn new(shared: &'a AtomicU64, every: u64) -> Self {
        Tally {
            shared,
            pending: 0,
            every,
        }
    }

    /// Counts one entry; the new total when it crossed a multiple of `every` (time to
    /// report).
    fn bump(&mut self) -> Option<u64> {
        self.pending += 1;
        if self.pending >= Self::BATCH {
            self.flush()
        } else {
            None
        }
    }

    fn flush(&mut self) -> Option<u64> {
        if self.pending == 0 {
            return None;
        }
        let prev = self.shared.fetch_add(self.pending, Ordering::Relaxed);
        let now = prev + self.pending;
        self.pending = 0;
        (now / self.every > prev / self.every).then_some(now)
    }
}

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// One object to label (SELinux).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelJob {
    /// Absolute path (under the engine's root).
    pub path: PathBuf,
    /// The label to write (text, without trailing NUL).
    pub label: String,
    /// Whether the original is restored when the last user stops.
    pub restore: bool,
    /// Whether the whole tree below a directory is labeled.
    pub recursive: bool,
    /// `(dev, ino)` of the object planned: anything else found at `path` is refused.
    pub identity: Option<(u64, u64)>,
}

/// A non-fatal outcome worth telling the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The object.
    pub path: PathBuf,
    /// What happened.
    pub message: String,
    /// The errno, when it comes from a system call.
    pub errno: Option<i32>,
    /// The filesystem type (`statfs.f_type`) of the object, when known.
    pub fs_type: Option<i64>,
}

/// What a successful labeling did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Objects (tree entries included) whose label was written.
    pub changed: u64,
    /// Objects already carrying the wanted label.
    pub unchanged: u64,
    /// Soft failures (label not supported by the filesystem, entries skipped).
    pub warnings: Vec<Warning>,
}

/// What [`Relabeler::recover`] did.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Objects (or trees) restored because every user of them is gone.
    pub restored: Vec<PathBuf>,
    /// Records dropped without restoring (object gone or replaced).
    pub dropped: Vec<PathBuf>,
    /// Failures (the records stay for the next attempt).
    pub errors: Vec<RelabelError>,
}

/// The owners whose guest is not running.
fn dead_owners(owners: &BTreeSet<String>, running: &dyn Fn(&str) -> bool) -> Vec<String> {
    owners
        .iter()
        .filter(|o| !running(split_owner(o).1))
        .cloned()
        .collect()
}

/// Label bytes compared as the kernel does: a trailing NUL is not part of the context.
fn trim(v: &[u8]) -> &[u8] {
    let mut v = v;
    while let [rest @ .., 0] = v {
        v = rest;
    }
    v
}

fn label_eq(cur: &Option<Vec<u8>>, want: &[u8]) -> bool {
    eq_label(cur.as_deref(), want)
}

fn eq_label(cur: Option<&[u8]>, want: &[u8]) -> bool {
    cur.is_some_and(|c| trim(c) == trim(want))
}

fn show(v: &Option<Vec<u8>>) -> String {
    match v {
        Some(b) => String::from_utf8_lossy(trim(b)).into_owned(),
        None => "(none)".into(),
    }
}

/// `j` refused: its object is in use by the guests of `others` (owner strings) with the
/// label `current`.
fn in_use(j: &LabelJob, others: &[&String], current: String) -> RelabelError {
    RelabelError::InUse {
        path: j.path.clone(),
        owners: others
            .iter()
            .map(|w| split_owner(w).1)
            .collect::<Vec<_>>()
            .join(", "),
        current,
        wanted: j.label.clone(),
    }
}

/// Writes `value` as the label, or removes the attribute for `None`.
fn write_label_obj(o: &Object, value: &Option<Vec<u8>>) -> io::Result<()> {
    match value {
        Some(v) => o.set_xattr(XATTR_SELINUX, v),
        None => o.remove_xattr(XATTR_SELINUX),
    }
}

// ---------------------------------------------------------------------------------------
// The tree tables (in the store's ledger).

/// (model, dev, ino) → JSON [`TreeRecord`].
const TREES: TableDefinition<'_, (&str, u64, u64), Bytes> = TableDefinition::new("trees");
/// (model, dev, ino, chunk) → encoded exceptions ([`Exception`] records).
const TREE_EXC: TableDefinition<'_, (&str, u64, u64, u32), Bytes> =
    TableDefinition::new("tree_exceptions");

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TreeRecord {
    path: Vec<u8>,
    btime: Option<(i64, u32)>,
    /// The label set on the tree (what restore looks for).
    target: Vec<u8>,
    /// The most common original of the entries changed.
    dominant: Option<Vec<u8>>,
    /// Number of exception chunks stored.
    chunks: u32,
    owners: BTreeSet<String>,
    /// Entries svirt changed in the tree (the most over its users): what a restore expects
    /// to write, for its progress. Absent (0) in records of earlier versions.
    #[serde(default)]
    entries: u64,
}

/// One entry whose original differs from the dominant one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Exception {
    rel: Vec<u8>,
    ino: u64,
    orig: Option<Vec<u8>>,
}

/// Layout: `rel` (length-prefixed), `ino` (u64 LE), `orig` (0, or 1 and length-prefixed).
impl Record for Exception {
    fn write(&self, w: &mut RecordWriter) {
        w.bytes(&self.rel);
        w.u64(self.ino);
        w.opt_bytes(self.orig.as_deref());
    }
    fn read(r: &mut RecordReader<'_>) -> Option<Self> {
        Some(Exception {
            rel: r.bytes()?.to_vec(),
            ino: r.u64()?,
            orig: r.opt_bytes()?.map(<[u8]>::to_vec),
        })
    }
}

// ---------------------------------------------------------------------------------------

/// (path relative to the tree root, inode, original label) of an entry to record.
type EntryRef<'a> = (Vec<u8>, u64, &'a Option<Vec<u8>>);

/// One entry to change inside a tree.
struct Item {
    name: CString,
    ino: u64,
    orig: Option<Vec<u8>>,
}

/// One directory of a tree with the entries that need a change.
struct DirWork {
    dir: Dir,
    /// Path of the directory relative to the tree root (empty for the root).
    rel: Vec<u8>,
    /// Entries still to write (their original must be recorded first).
    items: Vec<Item>,
    /// Entries already written during the walk (original = the recorded dominant one).
    eager: Vec<Item>,
    /// Entries that already carry the target label although the tree's dominant original
    /// is another: never written, but recorded as exceptions so that restore leaves them
    /// as they were.
    same: Vec<Item>,
}

/// The engine. One per process (it holds the walkers' thread pool): share it between
/// drivers.
pub struct Relabeler {
    store: Arc<Store>,
    root: FsRoot,
    pool: rayon::ThreadPool,
    progress: Mutex<Option<ProgressFn>>,
    fault: Mutex<Option<FaultHook>>,
}

impl std::fmt::Debug for Relabeler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relabeler")
            .field("store", &self.store.path())
            .field("root", &self.root.path())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Relabeler {
    /// Where an earlier svirt kept the engine's tree records: `svirt.trees.redb` next to
    /// the store file. Its rows move into the ledger at [`Relabeler::open`].
    pub fn legacy_trees_path(store: &Store) -> PathBuf {
        store.path().with_extension("trees.redb")
    }

    /// Whether the ledger (or an earlier svirt's tree file, not yet adopted) holds any
    /// record of the engine's SELinux labeling (a tree, or a single object's original):
    /// what a stack without SELinux must still restore.
    pub fn has_records(store: &Store) -> Result<bool, RelabelError> {
        if Self::legacy_trees_path(store).exists() {
            return Ok(true);
        }
        let trees = {
            let txn = store.begin_read()?;
            match txn.open_table(TREES) {
                Ok(t) => t.iter().map_err(db_err)?.next().is_some(),
                Err(redb::TableError::TableDoesNotExist(_)) => false,
                Err(e) => return Err(db_err(e).into()),
            }
        };
        Ok(trees
            || store.list_originals()?.iter().any(|(_, rec)| {
                rec.owners
                    .iter()
                    .any(|o| split_owner(o).0 == svirt_domain::Model::Selinux.as_str())
            }))
    }

    /// Opens the engine on `store`, resolving every path under `root`, with `threads` workers
    /// for tree walks (0: one per CPU). An earlier svirt's tree file is adopted into the
    /// ledger first ([`Relabeler::legacy_trees_path`]).
    pub fn open(
        store: Arc<Store>,
        root: FsRoot,
        threads: usize,
    ) -> Result<Arc<Relabeler>, RelabelError> {
        crate::tree_common::open_tree_tables(
            &store,
            &Self::legacy_trees_path(&store),
            TREES,
            TREE_EXC,
        )?;
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("svirt-relabel-{i}"))
            .build()
            .map_err(|e| RelabelError::ThreadPool(e.to_string()))?;
        // Tree walks keep one fd per directory with pending changes until the labels are
        // written: use the hard limit (a daemon's usual setting).
        raise_nofile();
        Ok(Arc::new(Relabeler {
            store,
            root,
            pool,
            progress: Mutex::new(None),
            fault: Mutex::new(None),
        }))
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The root paths are resolved under.
    pub fn root(&self) -> &FsRoot {
        &self.root
    }

    /// Sets (or clears) the progress callback for tree operations.
    pub fn set_progress(&self, f: Option<ProgressFn>) {
        *lock(&self.progress) = f;
    }

    /// Sets (or clears) the fault hook (tests).
    #[doc(hidden)]
    pub fn set_fault_hook(&self, f: Option<FaultHook>) {
        *lock(&self.fault) = f;
    }

    fn fault(&self, point: &str) -> Result<(), RelabelError> {
        let hook = lock(&self.fault).clone();
        if let Some(h) = hook
            && h(point)
        {
            return Err(RelabelError::Injected(point.to_string()));
        }
        Ok(())
    }

    fn report(&self, p: &Progress) {
        let f = lock(&self.progress).clone();
        if let Some(f) = f {
            f(p);
        }
    }

    /// Labels every job for `guest` (SELinux). Originals are recorded durably before the
    /// first change of each object. On error, every change this call made is undone and
    /// every record it added is released before it returns.
    pub fn set_labels(&self, guest: &str, jobs: &[LabelJob]) -> Result<Applied, RelabelError> {
        let owner = owner_key("selinux", guest);
        // Refuse and open everything before touching anything: a missing file or a system
        // path must leave every object as it was.
        let mut objs = Vec::with_capacity(jobs.len());
        for j in jobs {
            if is_system_path(&j.path) {
                return Err(RelabelError::SystemPath(j.path.clone()));
            }
            let o = self
                .root
                .open_planned(&j.path, j.identity)
                .map_err(io_err("open", &j.path))?;
            objs.push(o);
        }
        let mut applied = Applied::default();
        let mut undo: Vec<Undo> = Vec::new();
        for (j, o) in jobs.iter().zip(&objs) {
            let r = if j.recursive && o.meta().is_dir() {
                self.label_tree(&owner, j, o, &mut applied, &mut undo)
            } else {
                self.label_one(&owner, j, o, &mut applied, &mut undo)
            };
            if let Err(e) = r {
                self.rollback(&owner, undo);
                return Err(e);
            }
        }
        Ok(applied)
    }

    fn label_one(
        &self,
        owner: &str,
        j: &LabelJob,
        o: &Object,
        applied: &mut Applied,
        undo: &mut Vec<Undo>,
    ) -> Result<(), RelabelError> {
        let want = label_bytes(&j.label);
        let key = object_key(o.identity());
        let ident = store_identity(o.identity());
        // Read, record and write as one step against other guests' stops releasing the same
        // object (which would otherwise restore it between our read and our record).
        let _lock = self.store.lock_object(key);
        let cur = match o.get_xattr(XATTR_SELINUX) {
            Ok(v) => v,
            Err(e) if is_soft_errno(e.raw_os_error()) => {
                applied.warnings.push(soft_warning(o, &e));
                return Ok(());
            }
            Err(e) => return Err(io_err("read label", &j.path)(e)),
        };
        if label_eq(&cur, &want) {
            applied.unchanged += 1;
            // Already right: join the record if another guest changed it, so that its
            // stop does not restore the object under us.
            if j.restore
                && let Some(rec) = self.store.get_original(key)?
                && rec.original.identity.same_object(&ident)
                && !rec.owners.contains(owner)
            {
                self.store
                    .record_original_if_absent(key, &snapshot(o, &cur, ident), owner)?;
                undo.push(Undo::Release { key });
            }
            return Ok(());
        }
        if j.restore {
            if let Some(rec) = self.store.get_original(key)? {
                let others: Vec<&String> = rec
                    .owners
                    .iter()
                    .filter(|w| w.as_str() != owner && split_owner(w).0 == "selinux")
                    .collect();
                if rec.original.identity.same_object(&ident)
                    && !others.is_empty()
                    && rec.original.selinux_label != cur
                {
                    return Err(in_use(j, &others, show(&cur)));
                }
            }
            let outcome =
                self.store
                    .record_original_if_absent(key, &snapshot(o, &cur, ident), owner)?;
            if !matches!(outcome, svirt_store::RecordOutcome::AlreadyOwner { .. }) {
                undo.push(Undo::Release { key });
            }
            self.fault("after-record")?;
        }
        // Who else uses it now: a rollback leaves the label only for users who came later.
        let others = self.other_selinux_users(key, owner)?;
        match o.set_xattr(XATTR_SELINUX, &want) {
            Ok(()) => {
                applied.changed += 1;
                undo.push(Undo::Single {
                    path: j.path.clone(),
                    ident: o.identity(),
                    old: cur,
                    others,
                });
                self.fault("after-label")?;
                Ok(())
            }
            Err(e) if is_soft_errno(e.raw_os_error()) => {
                applied.warnings.push(soft_warning(o, &e));
                // Nothing changed: drop the record this call added.
                // Only this object's own record: an earlier job's must stay.
                if j.restore && matches!(undo.last(), Some(Undo::Release { key: k }) if *k == key) {
                    undo.pop();
                    self.store.release_original(key, owner)?;
                }
                Ok(())
            }
            Err(e) => Err(io_err("set label", &j.path)(e)),
        }
    }

    fn rollback(&self, owner: &str, undo: Vec<Undo>) {
        for u in undo.into_iter().rev() {
            match u {
                Undo::Single {
                    path,
                    ident,
                    old,
                    others,
                } => {
                    // Reopen by path and check identity: the Object was dropped with `objs`
                    // only after this runs, but a fresh open keeps the rule simple.
                    match self.root.open_object(&path) {
                        Ok(o) if o.identity() == ident => {
                            let key = object_key(ident);
                            let _lock = self.store.lock_object(key);
                            // A guest that joined the record since (the label was right for
                            // it) keeps the label.
                            match self.other_selinux_users(key, owner) {
                                Ok(now) if now.is_subset(&others) => {
                                    if let Err(e) = write_label_obj(&o, &old) {
                                        tracing::error!("rollback of {}: {e}", path.display());
                                    }
                                }
                                Ok(_) => {}
                                Err(e) => tracing::error!("rollback of {}: {e}", path.display()),
                            }
                        }
                        Ok(_) => tracing::warn!("rollback: {} was replaced", path.display()),
                        Err(e) => tracing::error!("rollback of {}: {e}", path.display()),
                    }
                }
                Undo::Release { key } => {
                    // As a stop would: if the other users have left meanwhile, this was the
                    // last one and the object gets its original back.
                    if let Err(e) = self.release_one(key, &[owner.to_string()]) {
                        tracing::error!("rollback: releasing record {}:{}: {e}", key.dev, key.ino);
                    }
                }
                Undo::Tree { work, undo_record } => self.rollback_tree(owner, &work, undo_record),
            }
        }
    }

    /// Undoes one tree of a failed labeling, under the tree's lock.
    fn rollback_tree(&self, owner: &str, work: &TreeUndo, undo_record: Option<(TreeKey, bool)>) {
        let _lock = work.root_key.map(|k| self.store.lock_object(k));
        let Some((tkey, created)) = undo_record else {
            // Not recorded (not restored at stop): our own writes back.
            self.tree_rollback(work);
            return;
        };
        let rec = match self.tree_get(&tkey) {
            Ok(r) => r,
            Err(e) => {
                // Unknown users: leave labels and record as they are for `recover`.
                tracing::error!("rollback: reading tree record: {e}");
                return;
            }
        };
        let others = rec
            .as_ref()
            .is_some_and(|r| r.owners.iter().any(|o| o != owner));
        let r = if others {
            // A guest uses the tree now (it joined after us, or we joined it): its labels stay.
            self.tree_release(&tkey, owner, false)
        } else if created {
            // Ours alone: exactly our writes back, then the record goes.
            self.tree_rollback(work);
            self.tree_release(&tkey, owner, true)
        } else {
            // We joined a record whose other users have all stopped meanwhile: we are its
            // last user, so the whole tree gets its originals back, as at a stop.
            match rec {
                Some(rec) => self
                    .tree_restore(&tkey, &rec)
                    .and_then(|_| self.tree_delete(&tkey)),
                None => Ok(()),
            }
        };
        if let Err(e) = r {
            tracing::error!("rollback: tree record: {e}");
        }
    }

    // ---- trees ----

    fn label_tree(
        &self,
        owner: &str,
        j: &LabelJob,
        root_obj: &Object,
        applied: &mut Applied,
        undo: &mut Vec<Undo>,
    ) -> Result<(), RelabelError> {
        // The tree's record is committed durably to the ledger before the tree carries the
        // guest's label; that commit also makes what the store holds without an fsync (the
        // guest's level, its record, its claims) durable (one file, one commit order).
        let want = label_bytes(&j.label);
        let id = root_obj.identity();
        let tkey = TreeKey {
            model: "selinux",
            dev: id.dev,
            ino: id.ino,
        };
        // The whole tree against other guests' labeling or release of it.
        let _lock = self.store.lock_object(object_key(id));
        let existing = self.tree_get(&tkey)?;
        let existing = match existing {
            Some(r) if same_root(tkey.dev, tkey.ino, r.btime, id) => Some(r),
            Some(_) => {
                // An earlier directory at the same inode: stale.
                self.tree_delete(&tkey)?;
                None
            }
            None => None,
        };
        if let Some(r) = &existing {
            let others: Vec<&String> = r.owners.iter().filter(|o| o.as_str() != owner).collect();
            if !others.is_empty() && trim(&r.target) != trim(&want) {
                return Err(in_use(j, &others, show(&Some(r.target.clone()))));
            }
        }
        let root_dir = root_obj
            .open_as_dir()
            .map_err(io_err("open directory", &j.path))?;
        let root_cur = match root_dir.get_xattr(XATTR_SELINUX) {
            Ok(v) => v,
            Err(e) if is_soft_errno(e.raw_os_error()) => {
                applied.warnings.push(soft_warning(root_obj, &e));
                return Ok(());
            }
            Err(e) => return Err(io_err("read label", &j.path)(e)),
        };
        // One pass for the common case: the tree's record (target, and the "dominant"
        // original: the existing record's, else the root's own label) is committed before
        // the walk; an entry whose original is the dominant one is then written as soon as
        // it is read. Entries with another original are written only after their exception
        // record is committed, at the end.
        let dominant = existing
            .as_ref()
            .map_or_else(|| root_cur.clone(), |r| r.dominant.clone());
        let mut undo_record = None;
        let fresh = existing.is_none();
        if j.restore {
            let created = existing.is_none();
            self.tree_record(&tkey, j, id, &want, existing, owner, &[], dominant.clone())?;
            undo_record = Some((tkey.clone(), created));
            self.fault("after-record")?;
        }
        let eager = if j.restore {
            Eager::IfOriginal {
                dominant: &dominant,
                // With an earlier record, entries at the target were labeled under it (or
                // created inside the labeled tree): their original is already accounted for.
                record_same: fresh,
            }
        } else {
            Eager::All
        };
        let (work, scanned, warns, scan_error) = self.scan(&j.path, root_dir, &want, eager);
        applied.warnings.extend(warns);
        let eager_done: u64 = work.iter().map(|w| w.eager.len() as u64).sum();
        applied.changed += eager_done;
        let mut tree_undo = TreeUndo {
            work,
            root_key: Some(object_key(id)),
            root: None,
            done: Vec::new(),
            eager_orig: j.restore.then(|| dominant.clone()),
        };
        let root_needs = !label_eq(&root_cur, &want);
        let deferred: u64 = tree_undo.work.iter().map(|w| w.items.len() as u64).sum();
        let same: u64 = tree_undo.work.iter().map(|w| w.same.len() as u64).sum();
        let total = eager_done + deferred + u64::from(root_needs);
        applied.unchanged += (scanned + 1).saturating_sub(total);
        let step = || -> Result<(), RelabelError> {
            if let Some(e) = scan_error {
                return Err(e);
            }
            if j.restore && (deferred > 0 || same > 0 || (root_needs && root_cur != dominant)) {
                let mut entries: Vec<EntryRef<'_>> =
                    Vec::with_capacity((deferred + same) as usize + 1);
                if root_needs && root_cur != dominant {
                    entries.push((Vec::new(), id.ino, &root_cur));
                }
                for w in &tree_undo.work {
                    for it in w.items.iter().chain(&w.same) {
                        entries.push((join_rel(&w.rel, it.name.as_bytes()), it.ino, &it.orig));
                    }
                }
                let current = self.tree_get(&tkey)?;
                self.tree_record(
                    &tkey,
                    j,
                    id,
                    &want,
                    current,
                    owner,
                    &entries,
                    dominant.clone(),
                )?;
            }
            if root_needs {
                root_obj
                    .set_xattr(XATTR_SELINUX, &want)
                    .map_err(io_err("set label", &j.path))?;
                tree_undo.root = Some((j.path.clone(), id, root_cur.clone()));
                applied.changed += 1;
            }
            let already = eager_done + u64::from(tree_undo.root.is_some());
            let res = self.apply(&j.path, &tree_undo.work, &want, (already, total));
            applied.changed += res.done;
            tree_undo.set_done(&res.done_per_dir);
            if let Some(e) = res.error {
                return Err(e);
            }
            // Only a progress total for the restore: a failure to keep it must not undo
            // the labeling.
            if j.restore
                && let Err(e) = self.tree_note_entries(&tkey, already + res.done)
            {
                tracing::warn!("{}: entry count not recorded: {e}", j.path.display());
            }
            Ok(())
        };
        let r = step();
        // The undo entry owns the work list and knows what was written.
        undo.push(Undo::Tree {
            work: tree_undo,
            undo_record,
        });
        r?;
        self.fault("after-label")?;
        Ok(())
    }

    /// Parallel walk: every directory below `root` (not following symlinks, not crossing
    /// mounts), with the entries whose label is not `want` (written during the walk as
    /// `eager` says). Returns the work, the number of entries seen, warnings and the first
    /// hard error.
    #[allow(clippy::type_complexity)]
    fn scan(
        &self,
        path: &Path,
        root: Dir,
        want: &[u8],
        eager: Eager<'_>,
    ) -> (Vec<DirWork>, u64, Vec<Warning>, Option<RelabelError>) {
        let out: Mutex<Vec<DirWork>> = Mutex::new(Vec::new());
        let errors: Mutex<Vec<RelabelError>> = Mutex::new(Vec::new());
        let warnings: Mutex<Vec<Warning>> = Mutex::new(Vec::new());
        let seen = AtomicU64::new(0);
        let abort = AtomicBool::new(false);
        let ctx = ScanCtx {
            base: path,
            want,
            out: &out,
            errors: &errors,
            warnings: &warnings,
            seen: &seen,
            abort: &abort,
            eng: self,
            eager,
        };
        self.pool.scope(|s| {
            scan_dir(s, &ctx, root, Vec::new());
        });
        let errors = errors.into_inner().unwrap_or_else(|e| e.into_inner());
        (
            out.into_inner().unwrap_or_else(|e| e.into_inner()),
            seen.load(Ordering::Relaxed),
            warnings.into_inner().unwrap_or_else(|e| e.into_inner()),
            errors.into_iter().next(),
        )
    }

    /// Writes `want` on every item, in parallel; stops at the first hard error.
    /// `already`: entries of this tree written before (eagerly during the walk, the root).
    fn apply(
        &self,
        path: &Path,
        work: &[DirWork],
        want: &[u8],
        (already, total): (u64, u64),
    ) -> ApplyResult {
        // Split big directories so both workers stay busy.
        const SLICE: usize = 2048;
        let mut tasks: Vec<(usize, usize, usize)> = Vec::new();
        for (i, w) in work.iter().enumerate() {
            let mut s = 0;
            while s < w.items.len() {
                let e = (s + SLICE).min(w.items.len());
                tasks.push((i, s, e));
                s = e;
            }
        }
        let done = AtomicU64::new(0);
        let abort = AtomicBool::new(false);
        let error: Mutex<Option<RelabelError>> = Mutex::new(None);
        let work_ref: &[DirWork] = work;
        let progress = lock(&self.progress).clone();
        let results: Vec<usize> = {
            use rayon::prelude::*;
            self.pool.install(|| {
                tasks
                    .par_iter()
                    .map(|&(i, s, e)| {
                        let w = &work_ref[i];
                        let mut n = 0;
                        let mut tally = Tally::new(&done, REPORT_EVERY);
                        for it in &w.items[s..e] {
                            if abort.load(Ordering::Relaxed) {
                                break;
                            }
                            if let Err(err) = w.dir.set_xattr_at(&it.name, XATTR_SELINUX, want) {
                                if err.raw_os_error() == Some(libc::ENOENT) {
                                    // Removed since the scan: nothing to label or restore.
                                    n += 1;
                                    continue;
                                }
                                abort.store(true, Ordering::Relaxed);
                                let p = full_path(path, &join_rel(&w.rel, it.name.as_bytes()));
                                let mut slot = lock(&error);
                                if slot.is_none() {
                                    *slot = Some(RelabelError::Io {
                                        op: "set label",
                                        path: p,
                                        source: err,
                                    });
                                }
                                break;
                            }
                            n += 1;
                            if let (Some(d), Some(f)) = (tally.bump(), &progress) {
                                report_at((path, Phase::Labeling), (already + d, total), &**f);
                            }
                        }
                        n
                    })
                    .collect()
            })
        };
        let d = done.load(Ordering::Relaxed);
        self.report(&Progress {
            path: path.to_path_buf(),
            phase: Phase::Labeling,
            done: already + d,
            total,
        });
        let error = error.into_inner().unwrap_or_else(|e| e.into_inner());
        ApplyResult {
            done: d,
            done_per_dir: DoneMap {
                tasks,
                task_done: results,
            },
            error,
        }
    }

    fn tree_rollback(&self, u: &TreeUndo) {
        use rayon::prelude::*;
        self.pool.install(|| {
            u.work.par_iter().enumerate().for_each(|(i, w)| {
                let eager = w
                    .eager
                    .iter()
                    .map(|it| (it, u.eager_orig.as_ref().unwrap_or(&it.orig)));
                let written = w
                    .items
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| u.is_done(i, *k))
                    .map(|(_, it)| (it, &it.orig))
                    .chain(eager);
                for (it, orig) in written {
                    let r = match orig {
                        Some(v) => w.dir.set_xattr_at(&it.name, XATTR_SELINUX, v),
                        None => remove_at(&w.dir, &it.name),
                    };
                    if let Err(e) = r
                        && e.raw_os_error() != Some(libc::ENOENT)
                    {
                        tracing::error!("rollback of tree entry: {e}");
                    }
                }
            });
        });
        if let Some((path, id, old)) = &u.root {
            match self.root.open_object(path) {
                Ok(o) if o.identity() == *id => {
                    if let Err(e) = write_label_obj(&o, old) {
                        tracing::error!("rollback of {}: {e}", path.display());
                    }
                }
                _ => tracing::warn!("rollback: tree root {} changed", path.display()),
            }
        }
    }

    fn tree_get(&self, k: &TreeKey) -> Result<Option<TreeRecord>, RelabelError> {
        let txn = self.store.begin_read()?;
        let t = txn.open_table(TREES).map_err(db_err)?;
        Ok(get_json(&t, k.row())?)
    }

    /// Calls `f` with every exception of the tree.
    fn tree_exceptions(
        &self,
        k: &TreeKey,
        chunks: u32,
        f: impl FnMut(Exception),
    ) -> Result<(), RelabelError> {
        let txn = self.store.begin_read()?;
        let t = txn.open_table(TREE_EXC).map_err(db_err)?;
        Ok(read_chunks(&t, |c| k.chunk(c), chunks, f)?)
    }

    fn tree_delete(&self, k: &TreeKey) -> Result<(), RelabelError> {
        let txn = self.store.begin_write()?;
        {
            let mut t = txn.open_table(TREES).map_err(db_err)?;
            let chunks = match t.remove(k.row()).map_err(db_err)? {
                Some(v) => serde_json::from_slice::<TreeRecord>(v.value()).map_or(0, |r| r.chunks),
                None => 0,
            };
            let mut e = txn.open_table(TREE_EXC).map_err(db_err)?;
            remove_chunks(&mut e, |c| k.chunk(c), chunks)?;
        }
        Ok(txn.commit()?)
    }

    /// Stores `rec` as the tree's record (its exception rows untouched).
    fn tree_put(&self, k: &TreeKey, rec: &TreeRecord) -> Result<(), RelabelError> {
        let txn = self.store.begin_write()?;
        {
            let mut t = txn.open_table(TREES).map_err(db_err)?;
            put_json(&mut t, k.row(), rec)?;
        }
        Ok(txn.commit()?)
    }

    #[allow(clippy::too_many_arguments)]
    fn tree_record(
        &self,
        k: &TreeKey,
        j: &LabelJob,
        id: Identity,
        want: &[u8],
        existing: Option<TreeRecord>,
        owner: &str,
        entries: &[EntryRef<'_>],
        dominant: Option<Vec<u8>>,
    ) -> Result<(), RelabelError> {
        let mut rec = match existing {
            Some(r) => r,
            None => TreeRecord {
                path: j.path.as_os_str().as_bytes().to_vec(),
                btime: id.btime,
                target: want.to_vec(),
                dominant,
                chunks: 0,
                owners: BTreeSet::new(),
                entries: 0,
            },
        };
        rec.owners.insert(owner.to_string());
        let exc: Vec<Exception> = entries
            .iter()
            .filter(|(_, _, o)| **o != rec.dominant)
            .map(|(rel, ino, o)| Exception {
                rel: rel.clone(),
                ino: *ino,
                orig: (*o).clone(),
            })
            .collect();
        let txn = self.store.begin_write()?;
        {
            let mut e = txn.open_table(TREE_EXC).map_err(db_err)?;
            insert_chunks(&mut e, |c| k.chunk(c), &mut rec.chunks, &exc)?;
            let mut t = txn.open_table(TREES).map_err(db_err)?;
            put_json(&mut t, k.row(), &rec)?;
        }
        Ok(txn.commit()?)
    }

    /// Keeps the most entries any user's labeling changed in the tree's record.
    fn tree_note_entries(&self, k: &TreeKey, n: u64) -> Result<(), RelabelError> {
        match self.tree_get(k)? {
            Some(mut r) if r.entries < n => {
                r.entries = n;
                self.tree_put(k, &r)
            }
            _ => Ok(()),
        }
    }

    /// Removes `owner`; deletes the record when `delete_if_last` and nobody is left.
    fn tree_release(
        &self,
        k: &TreeKey,
        owner: &str,
        delete_if_last: bool,
    ) -> Result<(), RelabelError> {
        let Some(mut rec) = self.tree_get(k)? else {
            return Ok(());
        };
        rec.owners.remove(owner);
        if rec.owners.is_empty() && delete_if_last {
            return self.tree_delete(k);
        }
        self.tree_put(k, &rec)
    }

    fn trees_all(&self) -> Result<Vec<(TreeKey, TreeRecord)>, RelabelError> {
        let txn = self.store.begin_read()?;
        let t = txn.open_table(TREES).map_err(db_err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let (model, dev, ino) = k.value();
            let model: &'static str = match model {
                "selinux" => "selinux",
                "dac" => "dac",
                _ => continue,
            };
            let rec: TreeRecord = serde_json::from_slice(v.value()).map_err(|e| {
                RelabelError::TreeDb(format!("the record of tree ({dev}, {ino}): {e}"))
            })?;
            out.push((TreeKey { model, dev, ino }, rec));
        }
        Ok(out)
    }

    /// Writes the originals back on a tree: every entry still carrying the label svirt set
    /// gets its recorded original (its exception, else the dominant original).
    fn tree_restore(&self, k: &TreeKey, rec: &TreeRecord) -> Result<u64, RelabelError> {
        let path = path_of_bytes(&rec.path);
        let root_obj = match self.root.open_object(&path) {
            Ok(o) => o,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(0),
            Err(e) => return Err(io_err("open", &path)(e)),
        };
        let id = root_obj.identity();
        if !same_root(k.dev, k.ino, rec.btime, id) {
            tracing::warn!(
                "{}: replaced since it was labeled; not restoring",
                path.display()
            );
            return Ok(0);
        }
        let mut exc: HashMap<Vec<u8>, (u64, Option<Vec<u8>>)> = HashMap::new();
        self.tree_exceptions(k, rec.chunks, |e| {
            exc.insert(e.rel, (e.ino, e.orig));
        })?;
        let root_dir = root_obj
            .open_as_dir()
            .map_err(io_err("open directory", &path))?;
        let target = rec.target.clone();
        let original_for = |rel: &[u8], ino: u64| -> Option<Vec<u8>> {
            match exc.get(rel) {
                Some((i, o)) if *i == ino => o.clone(),
                _ => rec.dominant.clone(),
            }
        };
        // One pass: each entry still carrying the target gets its original as soon as it is
        // read, so progress is real and nothing is held in memory per entry.
        let restored = AtomicU64::new(0);
        let errors: Mutex<Vec<RelabelError>> = Mutex::new(Vec::new());
        let rctx = RestoreCtx {
            target: &target,
            exceptions: &exc,
            dominant: &rec.dominant,
            restored: &restored,
            expected: rec.entries,
            errors: &errors,
        };
        let (_, _, _, err) = self.scan(&path, root_dir, &target, Eager::Restore(&rctx));
        if let Some(e) = err {
            lock(&errors).insert(0, e);
        }
        let cur = root_obj
            .get_xattr(XATTR_SELINUX)
            .map_err(io_err("read label", &path))?;
        if label_eq(&cur, &target) {
            let orig = original_for(b"", id.ino);
            if orig.as_deref().map(trim) != Some(trim(&target)) {
                write_label_obj(&root_obj, &orig).map_err(io_err("restore label", &path))?;
                restored.fetch_add(1, Ordering::Relaxed);
            }
        }
        let n = restored.load(Ordering::Relaxed);
        self.report(&Progress {
            path: path.clone(),
            phase: Phase::Restoring,
            done: n,
            total: n,
        });
        let mut errors = errors
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .into_iter();
        let first = errors.next();
        // One error is returned (the record stays for a retry); the others are not lost.
        let more = errors.len();
        for e in errors {
            tracing::error!("{}: restore: {e}", path.display());
        }
        match first {
            Some(e) if more > 0 => {
                tracing::error!("{}: {} more restore errors logged", path.display(), more);
                Err(e)
            }
            Some(e) => Err(e),
            None => Ok(n),
        }
    }

    /// Restores every object `guest` holds under SELinux whose last SELinux user `guest` is,
    /// and releases its records. Runs to the end and returns every error (records whose
    /// restore failed are kept for [`Relabeler::recover`]).
    pub fn restore_labels(&self, guest: &str) -> Vec<RelabelError> {
        let owner = owner_key("selinux", guest);
        let mut errors = Vec::new();
        match self.store.originals_for_owner(&owner) {
            Ok(recs) => {
                for (key, _) in recs {
                    if let Err(e) = self.release_one(key, std::slice::from_ref(&owner)) {
                        errors.push(e);
                    }
                }
            }
            Err(e) => errors.push(e.into()),
        }
        match self.trees_all() {
            Ok(trees) => {
                for (k, rec) in trees {
                    if k.model == "selinux"
                        && rec.owners.contains(&owner)
                        && let Err(e) = self.release_tree(&k, std::slice::from_ref(&owner))
                    {
                        errors.push(e);
                    }
                }
            }
            Err(e) => errors.push(e),
        }
        errors
    }

    /// The SELinux users other than `owner` the object's record has now.
    fn other_selinux_users(
        &self,
        key: ObjectKey,
        owner: &str,
    ) -> Result<BTreeSet<String>, RelabelError> {
        Ok(self
            .store
            .get_original(key)?
            .map(|r| {
                r.owners
                    .into_iter()
                    .filter(|o| o.as_str() != owner && split_owner(o).0 == "selinux")
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Releases `owners` (all of one record) and restores each model's attributes (SELinux
    /// label, DAC owner and mode, and a device ACL grant of DAC's) whose last user of that
    /// model is being released. A grant recorded without its gid (written before DAC
    /// recorded it) cannot be undone here: that is an error naming the device, and the
    /// record stays (DAC's `restore_all` resolves the device group).
    fn release_one(&self, key: ObjectKey, owners: &[String]) -> Result<bool, RelabelError> {
        // Decide from the record as it is now, not from a listing taken earlier: another
        // guest's stop may have released (or a start joined) it since.
        let _lock = self.store.lock_object(key);
        let Some(rec) = self.store.get_original(key)? else {
            return Ok(false);
        };
        let owners: Vec<String> = owners
            .iter()
            .filter(|o| rec.owners.contains(*o))
            .cloned()
            .collect();
        let owners = owners.as_slice();
        let remaining_selinux = rec
            .owners
            .iter()
            .filter(|o| !owners.contains(o) && split_owner(o).0 == "selinux")
            .count();
        let remaining_dac = rec
            .owners
            .iter()
            .filter(|o| !owners.contains(o) && split_owner(o).0 == "dac")
            .count();
        let releasing_models: BTreeSet<&str> = owners.iter().map(|o| split_owner(o).0).collect();
        let flags = |m: &str| rec.original.model_flags.get(m).copied().unwrap_or(0);
        let restore_label = releasing_models.contains("selinux")
            && remaining_selinux == 0
            && flags("selinux") & FLAG_SELINUX_LABEL != 0;
        // DAC's part is DAC's own (one path: `dac::leave`): undone when its last user
        // leaves, else only the leaving guests' read entries go.
        let dac_leaving: Vec<&str> = owners
            .iter()
            .filter(|o| split_owner(o).0 == "dac")
            .map(|o| split_owner(o).1)
            .collect();
        let mut restored = false;
        if restore_label || !dac_leaving.is_empty() {
            // Restore before releasing: a crash in between leaves the record for recovery.
            let path = &rec.original.path;
            match self.root.open_object(path) {
                Ok(o) => {
                    let id = store_identity(o.identity());
                    if !rec.original.identity.same_object(&id) {
                        tracing::warn!(
                            "{}: replaced since it was labeled; not restoring",
                            path.display()
                        );
                    } else {
                        if restore_label {
                            write_label_obj(&o, &rec.original.selinux_label)
                                .map_err(io_err("restore label", path))?;
                            restored = true;
                        }
                        if !dac_leaving.is_empty() {
                            // Without the DAC driver's configuration, a record that does
                            // not name its device gid cannot be undone here: said, and
                            // kept for the DAC driver's own restore.
                            crate::dac::leave(
                                &o,
                                &rec.original,
                                &dac_leaving,
                                remaining_dac > 0,
                                &|| {
                                    Err(crate::DriverError::Other {
                                        model: svirt_domain::Model::Dac,
                                        message: "the device group is the DAC driver's to look up"
                                            .into(),
                                    })
                                },
                            )
                            .map_err(|e| dac_restore_err(path, e))?;
                            restored |= remaining_dac == 0 && flags("dac") != 0;
                        }
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(io_err("open", path)(e)),
            }
        }
        for o in owners {
            // DAC's entries go with its last user (as DAC's own release does): left in a
            // record another model keeps, a later grant's flags and gid would be or-ed in.
            // A DAC user's own read-grant keys go with it in any case.
            let (model, guest) = split_owner(o);
            let clear: Vec<String> = if model == "dac" {
                crate::dac::leave_keys(guest, remaining_dac == 0)
            } else {
                Vec::new()
            };
            let clear: Vec<&str> = clear.iter().map(String::as_str).collect();
            self.store.release_original_clearing(key, o, &clear)?;
        }
        Ok(restored)
    }

    fn release_tree(&self, k: &TreeKey, owners: &[String]) -> Result<bool, RelabelError> {
        // As for single objects: the record as it is now, under the tree's lock.
        let _lock = self.store.lock_object(ObjectKey {
            dev: k.dev,
            ino: k.ino,
        });
        let Some(rec) = self.tree_get(k)? else {
            return Ok(false);
        };
        let rec = &rec;
        let left = rec.owners.iter().filter(|o| !owners.contains(o)).count();
        let mut restored = false;
        if left == 0 {
            self.tree_restore(k, rec)?;
            restored = true;
            self.tree_delete(k)?;
        } else {
            let mut r = rec.clone();
            for o in owners {
                r.owners.remove(o);
            }
            self.tree_put(k, &r)?;
        }
        Ok(restored)
    }

    /// Crash recovery: for every recorded object (and tree) some of whose users are guests
    /// that are not running (`running(guest)` is false), releases those users and restores
    /// what they changed when no user of that model is left (a DAC device ACL grant
    /// included). Idempotent. The manager restores a crashed guest through `restore_all` from
    /// its own record (written before any label); this sweep is the last resort when that
    /// record is gone (the manager runs it at open, after its own orphan sweep).
    pub fn recover(&self, running: &dyn Fn(&str) -> bool) -> Recovery {
        let mut rep = Recovery::default();
        match self.store.list_originals() {
            Ok(recs) => {
                for (key, rec) in recs {
                    let dead = dead_owners(&rec.owners, running);
                    if dead.is_empty() {
                        continue;
                    }
                    match self.release_one(key, &dead) {
                        Ok(true) => rep.restored.push(rec.original.path.clone()),
                        Ok(false) => rep.dropped.push(rec.original.path.clone()),
                        Err(e) => rep.errors.push(e),
                    }
                }
            }
            Err(e) => rep.errors.push(e.into()),
        }
        for e in crate::stack::recover_claims(&self.store, svirt_domain::Model::Selinux, running) {
            tracing::error!("releasing dead guests' SELinux claims: {e}");
        }
        match self.trees_all() {
            Ok(trees) => {
                for (k, rec) in trees {
                    let dead = dead_owners(&rec.owners, running);
                    // A record with no owner at all is a crash between record and release.
                    if dead.is_empty() && !rec.owners.is_empty() {
                        continue;
                    }
                    let path = path_of_bytes(&rec.path);
                    match self.release_tree(&k, &dead) {
                        Ok(true) => rep.restored.push(path),
                        Ok(false) => rep.dropped.push(path),
                        Err(e) => rep.errors.push(e),
                    }
                }
            }
            Err(e) => rep.errors.push(e),
        }
        rep
    }
}

fn remove_at(dir: &Dir, name: &CStr) -> io::Result<()> {
    dir.remove_xattr_at(name, XATTR_SELINUX)
}

/// A DAC restore failure as an engine error: an object error keeps its operation and source
/// (so [`crate::dac::DeviceAclError::of`] still finds a device ACL error after
/// `map_relabel`); anything else is carried as the source of an I/O error on `path`.
fn dac_restore_err(path: &Path, e: crate::DriverError) -> RelabelError {
    match e {
        crate::DriverError::Object {
            op, path, source, ..
        } => RelabelError::Io { op, path, source },
        e => RelabelError::Io {
            op: "restore DAC",
            path: path.to_path_buf(),
            source: io::Error::other(e),
        },
    }
}

/// The bytes written for a label: the text plus a trailing NUL, as libselinux writes it.
pub fn label_bytes(label: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(label.len() + 1);
    v.extend_from_slice(label.as_bytes());
    v.push(0);
    v
}

fn snapshot(o: &Object, label: &Option<Vec<u8>>, identity: ObjectIdentity) -> Original {
    let m = o.meta();
    Original {
        path: o.path().to_path_buf(),
        selinux_label: label.clone(),
        uid: m.uid,
        gid: m.gid,
        mode: m.mode & 0o7777,
        identity,
        model_flags: [("selinux".to_string(), FLAG_SELINUX_LABEL)]
            .into_iter()
            .collect(),
    }
}

fn soft_warning(o: &Object, e: &io::Error) -> Warning {
    Warning {
        path: o.path().to_path_buf(),
        message: e.to_string(),
        errno: e.raw_os_error(),
        fs_type: o.fs_type().ok(),
    }
}

fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit on our own process with a valid struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

#[derive(Debug, Clone)]
struct TreeKey {
    model: &'static str,
    dev: u64,
    ino: u64,
}

impl TreeKey {
    /// Its row in [`TREES`].
    fn row(&self) -> (&'static str, u64, u64) {
        (self.model, self.dev, self.ino)
    }
    /// Its exception chunk `c` in [`TREE_EXC`].
    fn chunk(&self, c: u32) -> (&'static str, u64, u64, u32) {
        (self.model, self.dev, self.ino, c)
    }
}

enum Undo {
    Single {
        path: PathBuf,
        ident: Identity,
        old: Option<Vec<u8>>,
        /// The object's other SELinux users when it was written.
        others: BTreeSet<String>,
    },
    Release {
        key: ObjectKey,
    },
    Tree {
        work: TreeUndo,
        /// The tree record to release, and whether this call created it.
        undo_record: Option<(TreeKey, bool)>,
    },
}

struct TreeUndo {
    /// The tree root's key, locked while the undo runs.
    root_key: Option<ObjectKey>,
    work: Vec<DirWork>,
    root: Option<(PathBuf, Identity, Option<Vec<u8>>)>,
    /// Per directory, per item: written.
    done: Vec<Vec<bool>>,
    /// The original of every `eager` entry when they share one (the dominant original:
    /// not kept per entry, a million copies of one label would be wasted memory).
    eager_orig: Option<Option<Vec<u8>>>,
}

impl TreeUndo {
    fn set_done(&mut self, m: &DoneMap) {
        self.done = self
            .work
            .iter()
            .map(|w| vec![false; w.items.len()])
            .collect();
        // Each task handled a prefix of its slice; count per slice is not kept, so mark by
        // the per-task counts recorded in the map.
        for ((i, s, _), n) in m.tasks.iter().zip(&m.task_done) {
            for k in *s..(*s + *n) {
                if let Some(d) = self.done.get_mut(*i).and_then(|v| v.get_mut(k)) {
                    *d = true;
                }
            }
        }
    }
    fn is_done(&self, i: usize, k: usize) -> bool {
        self.done
            .get(i)
            .and_then(|v| v.get(k))
            .copied()
            .unwrap_or(false)
    }
}

struct DoneMap {
    tasks: Vec<(usize, usize, usize)>,
    task_done: Vec<usize>,
}

struct ApplyResult {
    done: u64,
    done_per_dir: DoneMap,
    error: Option<RelabelError>,
}

struct ScanCtx<'a> {
    base: &'a Path,
    want: &'a [u8],
    out: &'a Mutex<Vec<DirWork>>,
    errors: &'a Mutex<Vec<RelabelError>>,
    warnings: &'a Mutex<Vec<Warning>>,
    seen: &'a AtomicU64,
    abort: &'a AtomicBool,
    eng: &'a Relabeler,
    eager: Eager<'a>,
}

/// Which entries a walk writes as soon as it reads them.
#[derive(Clone, Copy)]
enum Eager<'a> {
    /// Every entry that needs it (nothing to record: the tree is not restored).
    All,
    /// Entries whose original is `dominant` (already recorded as the tree's dominant
    /// original); with `record_same`, entries already at the target but whose original is
    /// not `dominant` are listed for recording as exceptions.
    IfOriginal {
        dominant: &'a Option<Vec<u8>>,
        record_same: bool,
    },
    /// A restore walk: every entry carrying the target gets its original back at once.
    Restore(&'a RestoreCtx<'a>),
}

/// What a restore walk needs: the recorded originals and where to count and report.
struct RestoreCtx<'a> {
    target: &'a [u8],
    /// Relative path → (inode, original) of the entries whose original is not `dominant`.
    exceptions: &'a HashMap<Vec<u8>, (u64, Option<Vec<u8>>)>,
    dominant: &'a Option<Vec<u8>>,
    restored: &'a AtomicU64,
    /// Entries the labeling changed (the progress total; 0 when unknown).
    expected: u64,
    /// Restore goes on after a failed entry; every failure is kept.
    errors: &'a Mutex<Vec<RelabelError>>,
}

impl RestoreCtx<'_> {
    fn original(&self, rel: &[u8], name: &[u8], ino: u64) -> Option<Vec<u8>> {
        if !self.exceptions.is_empty() {
            let key = join_rel(rel, name);
            if let Some((i, o)) = self.exceptions.get(&key)
                && *i == ino
            {
                return o.clone();
            }
        }
        self.dominant.clone()
    }
}

impl ScanCtx<'_> {
    fn fail(&self, op: &'static str, rel: &[u8], e: io::Error) {
        self.abort.store(true, Ordering::Relaxed);
        lock(self.errors).push(RelabelError::Io {
            op,
            path: full_path(self.base, rel),
            source: e,
        });
    }
    fn warn(&self, rel: &[u8], message: String, e: Option<&io::Error>) {
        lock(self.warnings).push(Warning {
            path: full_path(self.base, rel),
            message,
            errno: e.and_then(|e| e.raw_os_error()),
            fs_type: None,
        });
    }
}

fn scan_dir<'s>(s: &rayon::Scope<'s>, ctx: &'s ScanCtx<'s>, dir: Dir, rel: Vec<u8>) {
    if ctx.abort.load(Ordering::Relaxed) {
        return;
    }
    let mut entries = match dir.entries() {
        Ok(e) => e,
        Err(e) => return ctx.fail("read directory", &rel, e),
    };
    // Inode order, not the directory's hash order: neighbouring inodes share an inode table
    // block, which stays cached from one entry to the next (about 15% faster on ext4).
    entries.sort_unstable_by_key(|e| e.ino);

    let mut items = Vec::new();
    let mut eager = Vec::new();
    let mut same = Vec::new();
    let mut seen = Tally::new(ctx.seen, SCAN_REPORT_EVERY);
    let mut lbuf = [0u8; 256];
    let mut restored = match ctx.eager {
        Eager::Restore(r) => Some(Tally::new(r.restored, REPORT_EVERY)),
        _ => None,
    };
    for e in entries {
        let mut kind = e.kind;
        if kind == EntryKind::Unknown {
            kind = match dir.stat_entry(&e.name) {
                Ok((_, m)) if m.is_dir() => EntryKind::Dir,
                Ok((_, m)) if m.is_symlink() => EntryKind::Symlink,
                Ok(_) => EntryKind::Other,
                Err(err) if err.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(err) => {
                    // Keep what this directory already labeled (eager) for rollback.
                    ctx.fail("stat", &join_rel(&rel, e.name.as_bytes()), err);
                    break;
                }
            };
        }
        // Read into the stack (no allocation per entry); a label too long for it, rarely.
        let read = match dir.get_xattr_at_into(&e.name, XATTR_SELINUX, &mut lbuf) {
            Ok(n) => Ok(n.map(|n| Cow::Borrowed(&lbuf[..n]))),
            Err(err) if err.raw_os_error() == Some(libc::ERANGE) => dir
                .get_xattr_at(&e.name, XATTR_SELINUX)
                .map(|v| v.map(Cow::Owned)),
            Err(err) => Err(err),
        };
        let cur: Option<Cow<'_, [u8]>> = match read {
            Ok(v) => v,
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(err) if is_soft_errno(err.raw_os_error()) => {
                ctx.warn(
                    &join_rel(&rel, e.name.as_bytes()),
                    format!("cannot read label: {err}"),
                    Some(&err),
                );
                continue;
            }
            Err(err) => {
                // Keep what this directory already labeled (eager) for rollback.
                ctx.fail("read label", &join_rel(&rel, e.name.as_bytes()), err);
                break;
            }
        };
        // A restore walk reports its own phase (below), not a scan.
        if let Some(n) = seen.bump()
            && !matches!(ctx.eager, Eager::Restore(_))
        {
            report_at((ctx.base, Phase::Scanning), (n, n), |p| ctx.eng.report(p));
        }
        if kind == EntryKind::Dir {
            let child_rel = join_rel(&rel, e.name.as_bytes());
            match svirt_hostfs::walk::enter(&dir, &e.name, None) {
                Ok(Enter::Dir(sub)) => s.spawn(move |s| scan_dir(s, ctx, sub, child_rel)),
                Ok(Enter::MountPoint) => {
                    // A mount point inside the tree: another filesystem is not part of it.
                    ctx.warn(
                        &child_rel,
                        "mount point inside the tree: not descended".into(),
                        None,
                    );
                    continue;
                }
                // Replaced by a symlink or a file since getdents: label what is there now
                // (as itself) below.
                Ok(Enter::Replaced) => {}
                Ok(Enter::Gone) => continue,
                Err(err) => {
                    // Keep what this directory already labeled (eager) for rollback.
                    ctx.fail("open directory", &child_rel, err);
                    break;
                }
            }
        }
        let cur = cur.as_deref();
        if let Eager::Restore(r) = ctx.eager {
            if eq_label(cur, r.target)
                && restore_entry(ctx, r, &dir, &rel, &e.name, e.ino)
                && let Some(n) = restored.as_mut().and_then(Tally::bump)
            {
                let total = r.expected.max(n);
                report_at((ctx.base, Phase::Restoring), (n, total), |p| {
                    ctx.eng.report(p)
                });
            }
            continue;
        }
        if eq_label(cur, ctx.want) {
            if let Eager::IfOriginal {
                dominant,
                record_same: true,
            } = ctx.eager
                && dominant.as_deref() != cur
            {
                same.push(Item {
                    name: e.name,
                    ino: e.ino,
                    orig: cur.map(<[u8]>::to_vec),
                });
            }
        } else {
            let (now, keep) = match ctx.eager {
                Eager::All => (true, true),
                // The tree's undo holds the dominant original once for all eager entries.
                Eager::IfOriginal { dominant, .. } => {
                    let d = dominant.as_deref() == cur;
                    (d, !d)
                }
                Eager::Restore(_) => (false, true),
            };
            let item = Item {
                name: e.name,
                ino: e.ino,
                orig: if keep { cur.map(<[u8]>::to_vec) } else { None },
            };
            if now {
                match dir.set_xattr_at(&item.name, XATTR_SELINUX, ctx.want) {
                    Ok(()) => eager.push(item),
                    Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(err) => {
                        let r = join_rel(&rel, item.name.as_bytes());
                        ctx.fail("set label", &r, err);
                        break;
                    }
                }
            } else {
                items.push(item);
            }
        }
    }
    if !items.is_empty() || !eager.is_empty() || !same.is_empty() {
        lock(ctx.out).push(DirWork {
            dir,
            rel,
            items,
            eager,
            same,
        });
    }
}

/// Writes the original back on one entry of a restore walk (true when written); a failure
/// is kept and the walk goes on.
fn restore_entry(
    ctx: &ScanCtx<'_>,
    r: &RestoreCtx<'_>,
    dir: &Dir,
    rel: &[u8],
    name: &CStr,
    ino: u64,
) -> bool {
    let orig = r.original(rel, name.to_bytes(), ino);
    if orig.as_deref().map(trim) == Some(trim(r.target)) {
        return false;
    }
    let res = match &orig {
        Some(v) => dir.set_xattr_at(name, XATTR_SELINUX, v),
        None => remove_at(dir, name),
    };
    match res {
        Ok(()) => true,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => false,
        Err(e) => {
            lock(r.errors).push(RelabelError::Io {
                op: "restore label",
                path: full_path(ctx.base, &join_rel(rel, name.to_bytes())),
                source: e,
            });
            false
        }
    }
}
