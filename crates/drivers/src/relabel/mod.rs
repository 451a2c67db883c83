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

use crate::owners::{FLAG_LABEL, owner_key, split_owner};
use crate::progress::{FaultHook, Phase, Progress, ProgressFn};
use crate::tree_common::{
    Bytes, DbError, Record, RecordReader, RecordWriter, db_err, full_path, get_json, insert_chunks,
    join_rel, object_key, path_of_bytes, put_json, read_chunks, remove_chunks, same_root,
    store_identity,
};
use svirt_hostfs::{Dir, EntryKind, FsRoot, Identity, Object};

mod object;
mod scan;
mod tree;

/// The SELinux label attribute.
pub const XATTR_SELINUX: &CStr = c"security.selinux";
/// The SMACK label attribute of a file (its access label).
pub const XATTR_SMACK: &CStr = c"security.SMACK64";

/// A label model the engine writes: which attribute, how its value is written, and whose
/// records (`"<model>/<guest>"` owners, the ledger's tree rows of that model) it keeps. One
/// engine per model; SELinux and SMACK share the code, the ledger and its rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelAttr {
    /// The model whose label this is.
    pub model: svirt_domain::Model,
    /// The extended attribute holding it.
    pub xattr: &'static CStr,
    /// Whether the value is written with a trailing NUL (libselinux's convention; SMACK's
    /// tools write the text alone).
    pub nul: bool,
}

/// SELinux's file label.
pub const SELINUX: LabelAttr = LabelAttr {
    model: svirt_domain::Model::Selinux,
    xattr: XATTR_SELINUX,
    nul: true,
};

/// SMACK's file (access) label.
pub const SMACK: LabelAttr = LabelAttr {
    model: svirt_domain::Model::Smack,
    xattr: XATTR_SMACK,
    nul: false,
};

impl LabelAttr {
    /// The label model named `name` (`selinux`, `smack`), if the engine writes one.
    pub fn of_name(name: &str) -> Option<LabelAttr> {
        [SELINUX, SMACK].into_iter().find(|a| a.name() == name)
    }

    /// The model's name: its owner prefix and tree-row key in the ledger.
    pub fn name(&self) -> &'static str {
        self.model.as_str()
    }

    /// The bytes written for `label`.
    pub fn bytes(&self, label: &str) -> Vec<u8> {
        if self.nul {
            label_bytes(label)
        } else {
            label.as_bytes().to_vec()
        }
    }

    /// This model's original label in a ledger record.
    pub fn original<'a>(&self, o: &'a Original) -> &'a Option<Vec<u8>> {
        match self.model {
            svirt_domain::Model::Smack => &o.smack_label,
            _ => &o.selinux_label,
        }
    }
}

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

impl Relabeler {
    /// A label driver's whole restore of `guest`: every object it holds under the engine's
    /// model put back (the ledger knows what was changed, whatever the plan says now), then
    /// `more` (the model's other state, e.g. SMACK's rules), and the guest's claims released
    /// only once all of it came back (a failed restore keeps them, and its records).
    pub fn restore_guest(
        &self,
        guest: &str,
        more: impl FnOnce() -> Vec<crate::DriverError>,
    ) -> Vec<crate::DriverError> {
        let model = self.attr.model;
        let mut errors: Vec<crate::DriverError> = self
            .restore_labels(guest)
            .into_iter()
            .map(|e| crate::selinux::map_relabel(model, e))
            .collect();
        errors.extend(more());
        if errors.is_empty()
            && let Err(e) = crate::stack::release_claims(&self.store, model, guest)
        {
            errors.push(e);
        }
        errors
    }
}

impl Recovery {
    /// What the recovery did, as the open's report lists it (`model`: whose labels).
    pub fn notes(self, model: svirt_domain::Model) -> Vec<crate::RecoveryNote> {
        let mut notes = Vec::new();
        for (paths, what) in [
            (self.restored, "restored"),
            (self.dropped, "record dropped (object gone or replaced)"),
        ] {
            for p in paths {
                notes.push(crate::RecoveryNote {
                    guest: None,
                    what: format!(
                        "{}: {what}, no running guest uses it ({model} label)",
                        p.display()
                    ),
                    failed: false,
                });
            }
        }
        for e in self.errors {
            notes.push(crate::RecoveryNote {
                guest: None,
                what: format!("{model} relabel recovery failed: {e}"),
                failed: true,
            });
        }
        notes
    }
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

/// Writes `value` as the label `xattr`, or removes the attribute for `None`.
fn write_label_obj(o: &Object, xattr: &CStr, value: &Option<Vec<u8>>) -> io::Result<()> {
    match value {
        Some(v) => o.set_xattr(xattr, v),
        None => o.remove_xattr(xattr),
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
    attr: LabelAttr,
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

    /// Whether the ledger holds any record of the engine's SELinux labeling (a tree, or a
    /// single object's original; or an earlier svirt's tree file, not yet adopted): what a
    /// stack without SELinux must still restore.
    pub fn has_records(store: &Store) -> Result<bool, RelabelError> {
        if Self::legacy_trees_path(store).exists() {
            return Ok(true);
        }
        Self::has_records_of(store, SELINUX)
    }

    /// Whether the ledger holds any record of `attr`'s labeling (a tree, or a single
    /// object's original).
    pub fn has_records_of(store: &Store, attr: LabelAttr) -> Result<bool, RelabelError> {
        let trees = {
            let txn = store.begin_read()?;
            match txn.open_table(TREES) {
                Ok(t) => {
                    let mut any = false;
                    for row in t.iter().map_err(db_err)? {
                        let (k, _) = row.map_err(db_err)?;
                        if k.value().0 == attr.name() {
                            any = true;
                            break;
                        }
                    }
                    any
                }
                Err(redb::TableError::TableDoesNotExist(_)) => false,
                Err(e) => return Err(db_err(e).into()),
            }
        };
        Ok(trees
            || store
                .list_originals()?
                .iter()
                .any(|(_, rec)| rec.owners.iter().any(|o| split_owner(o).0 == attr.name())))
    }

    /// Opens the SELinux engine on `store` (see [`Relabeler::open_for`]).
    pub fn open(
        store: Arc<Store>,
        root: FsRoot,
        threads: usize,
    ) -> Result<Arc<Relabeler>, RelabelError> {
        Self::open_for(SELINUX, store, root, threads)
    }

    /// Opens the engine for `attr` on `store`, resolving every path under `root`, with
    /// `threads` workers for tree walks (0: one per CPU). An earlier svirt's tree file is
    /// adopted into the ledger first ([`Relabeler::legacy_trees_path`]).
    pub fn open_for(
        attr: LabelAttr,
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
            attr,
            store,
            root,
            pool,
            progress: Mutex::new(None),
            fault: Mutex::new(None),
        }))
    }

    /// The label model this engine writes.
    pub fn attr(&self) -> LabelAttr {
        self.attr
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

    /// Labels every job for `guest` (under the engine's model). Originals are recorded durably before the
    /// first change of each object. On error, every change this call made is undone and
    /// every record it added is released before it returns.
    pub fn set_labels(&self, guest: &str, jobs: &[LabelJob]) -> Result<Applied, RelabelError> {
        let owner = owner_key(self.attr.name(), guest);
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

    /// Restores every object `guest` holds under the engine's model whose last user of
    /// that model `guest` is,
    /// and releases its records. Runs to the end and returns every error (records whose
    /// restore failed are kept for [`Relabeler::recover`]).
    pub fn restore_labels(&self, guest: &str) -> Vec<RelabelError> {
        let owner = owner_key(self.attr.name(), guest);
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
                    if k.model == self.attr.name()
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
                    // Another label model's users are that model's engine's to release
                    // (it restores its own attribute).
                    let dead: Vec<String> = dead_owners(&rec.owners, running)
                        .into_iter()
                        .filter(|o| {
                            let m = split_owner(o).0;
                            m == self.attr.name() || LabelAttr::of_name(m).is_none()
                        })
                        .collect();
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
        for e in crate::stack::recover_claims(&self.store, self.attr.model, running) {
            tracing::error!("releasing dead guests' {} claims: {e}", self.attr.model);
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

fn remove_at(dir: &Dir, name: &CStr, xattr: &CStr) -> io::Result<()> {
    dir.remove_xattr_at(name, xattr)
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

fn snapshot(
    attr: LabelAttr,
    o: &Object,
    label: &Option<Vec<u8>>,
    identity: ObjectIdentity,
) -> Original {
    let m = o.meta();
    let smack = attr.model == svirt_domain::Model::Smack;
    Original {
        path: o.path().to_path_buf(),
        selinux_label: if smack { None } else { label.clone() },
        smack_label: if smack { label.clone() } else { None },
        uid: m.uid,
        gid: m.gid,
        mode: m.mode & 0o7777,
        identity,
        model_flags: [(attr.name().to_string(), FLAG_LABEL)]
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
