//! DAC on trees (filesystem shares, TPM state): one durable record per tree, walks that hold
//! one directory fd per level of depth, and restore from the record.
//!
//! One record per object would mean one fd and one store row per file: a 50,000-file share
//! ran out of fds (EMFILE) and its restore cost one fsync'ed transaction per file. A tree
//! instead gets ONE record in the store's ledger (tables `dac_trees`,
//! `dac_tree_exceptions`), committed durably before the first change: the most common original
//! (uid, gid, mode) of directories and of other objects (the "dominant" ones) and every
//! entry whose original differs ("exceptions"), keyed by the tree root's (dev, ino).
//!
//! Walks go depth first, holding the fds of the directories on the path from the root only
//! (names are read into memory with `getdents64`, subdirectories are opened relative to
//! their parent with `RESOLVE_NO_SYMLINKS|RESOLVE_NO_XDEV`). Each entry is changed through
//! an `O_PATH|O_NOFOLLOW` fd opened relative to its directory and checked (same inode, not
//! a symlink) before `fchownat`/`fchmodat2` on that fd, then closed: a symlink is never
//! changed and never followed, and an entry swapped for a symlink is skipped. Mount points
//! inside the tree are left alone, as the relabel engine does.
//!
//! An entry is changed only when its state is the recorded original (or the change of
//! another user of the tree, when a second guest joins it), so nothing whose original is
//! not durable is ever changed. Restore writes the original back on every entry that still
//! carries a change of one of the tree's users (owned by the guest's uid, or for mode-only
//! changes, with the added bits), once the last DAC user of the tree stops.
//!
//! Progress goes to the relabel engine's callback type ([`crate::progress::ProgressFn`]),
//! from the thread doing the walk, every [`REPORT_EVERY`] entries visited and once at the
//! end of each phase of a tree, with `path` = the tree's root as the plan names it (on
//! restore: as the record names it, i.e. as the plan of the guest that recorded it did).

use std::collections::{BTreeMap, HashMap};
use std::ffi::CStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::progress::{Phase, Progress, ProgressFn};
use crate::tree_common::{
    Bytes, DbError, Record, RecordReader, RecordWriter, db_err, full_path, get_json, insert_chunks,
    path_of_bytes, put_json, read_chunks, remove_chunks, same_root,
};
use svirt_hostfs::{Dir, Identity, Meta, Object};

/// Root (dev, ino) → JSON [`TreeRecord`].
const TREES: TableDefinition<'_, (u64, u64), Bytes> = TableDefinition::new("dac_trees");
/// Root (dev, ino, chunk) → encoded exceptions ([`Exception`] records).
const TREE_EXC: TableDefinition<'_, (u64, u64, u32), Bytes> =
    TableDefinition::new("dac_tree_exceptions");

/// The chunk rows of tree `k`.
fn chunk_key(k: TreeKey) -> impl Fn(u32) -> (u64, u64, u32) {
    move |c| (k.0, k.1, c)
}

/// Entries visited between two progress reports (the relabel engine's interval).
pub(crate) const REPORT_EVERY: u64 = 4096;

/// Progress of one phase of one tree. Counting costs two additions and a test per entry;
/// only a report (every [`REPORT_EVERY`] entries) allocates (the `Progress`'s path).
struct Meter<'a> {
    f: Option<&'a ProgressFn>,
    path: &'a Path,
    phase: Phase,
    /// Entries visited.
    seen: u64,
    /// Entries handled (read in the scan, changed or restored after it).
    done: u64,
    /// Entries the tree is known to hold (0: unknown): the bar's length while `seen` is
    /// below it.
    expected: u64,
}

impl<'a> Meter<'a> {
    fn new(f: Option<&'a ProgressFn>, path: &'a Path, phase: Phase, expected: u64) -> Self {
        Meter {
            f,
            path,
            phase,
            seen: 0,
            done: 0,
            expected,
        }
    }

    /// One entry visited (`handled`: and counted as done).
    fn step(&mut self, handled: bool) {
        self.seen += 1;
        self.done += u64::from(handled);
        if self.seen.is_multiple_of(REPORT_EVERY) {
            self.report();
        }
    }

    /// Reports where the phase stands: `done` so far, of `expected` or of the entries
    /// seen when more (the tree grew, or its size is not known).
    fn report(&self) {
        if let Some(f) = self.f {
            f(&Progress {
                path: self.path.to_path_buf(),
                phase: self.phase,
                done: self.done,
                total: self.expected.max(self.seen),
            });
        }
    }
}

/// What DAC does to one kind of object: owner and group set (or kept), mode bits
/// `(mode & and) | or`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Rule {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub and: u32,
    pub or: u32,
    /// A read-only share: this uid gets a `user:` ACL entry on every entry (owner and mode
    /// unchanged). Absent from records of other rules (their bytes stay as they were).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_acl: Option<u32>,
}

impl Rule {
    pub(crate) fn apply(&self, m: Meta) -> Meta {
        Meta {
            uid: self.uid.unwrap_or(m.uid),
            gid: self.gid.unwrap_or(m.gid),
            mode: (m.mode & libc::S_IFMT) | (((m.mode & self.and) | self.or) & 0o7777),
        }
    }

    /// Whether `m` still carries this rule's change: the owner or group it sets, or for a
    /// mode-only rule, the bits it adds.
    ///
    /// An owner rule is carried while the entry has the owner it sets, whatever its group:
    /// the guest owns the entry and may `chgrp` it to any of its supplementary groups (a
    /// shared object's, the device group); requiring both would leave such an entry owned by
    /// the guest's uid after the stop, for whoever gets that uid next.
    fn carried_by(&self, m: Meta) -> bool {
        match (self.uid, self.gid) {
            (None, None) => self.or != 0 && m.mode & self.or == self.or,
            (Some(u), _) => u == m.uid,
            (None, Some(g)) => g == m.gid,
        }
    }
}

/// The rules of one user of a tree: for directories and for everything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Rules {
    pub dir: Rule,
    pub other: Rule,
}

impl Rules {
    fn for_meta(&self, m: Meta) -> &Rule {
        if m.is_dir() { &self.dir } else { &self.other }
    }
}

/// (uid, gid, permission bits).
type Orig = (u32, u32, u32);

fn orig_of(m: Meta) -> Orig {
    (m.uid, m.gid, m.mode & 0o7777)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TreeRecord {
    path: Vec<u8>,
    btime: Option<(i64, u32)>,
    /// The most common original of the directories.
    dir: Option<Orig>,
    /// The most common original of everything else.
    other: Option<Orig>,
    chunks: u32,
    /// Each user (`dac/<guest>`) with the change it made.
    owners: BTreeMap<String, Rules>,
    /// Entries (the root included) when the tree was recorded: the length of the progress
    /// of later walks. 0 in records written before it existed.
    #[serde(default)]
    entries: u64,
}

/// Key of a tree record: the root's (dev, ino).
pub(crate) type TreeKey = (u64, u64);

/// A failure of a tree operation.
#[derive(Debug)]
pub(crate) enum TreeError {
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// The ledger failed.
    Ledger(svirt_store::Error),
    /// A tree record does not decode, or changed under a step that needed it.
    Record(String),
}

impl From<DbError> for TreeError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Ledger(e) => TreeError::Ledger(e),
            DbError::Corrupt(m) => TreeError::Record(m),
        }
    }
}

impl From<svirt_store::Error> for TreeError {
    fn from(e: svirt_store::Error) -> Self {
        TreeError::Ledger(e)
    }
}

/// An entry whose original differs from the dominant one of its kind. Layout of its
/// record: `rel` (length-prefixed), `ino` (u64 LE), then uid, gid and mode (u32 LE each);
/// pinned byte for byte in `tree_common`'s tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Exception {
    /// Path relative to the tree root (empty: the root).
    pub(crate) rel: Vec<u8>,
    /// Its inode when recorded.
    pub(crate) ino: u64,
    /// Its original (uid, gid, mode bits).
    pub(crate) orig: Orig,
}

impl Record for Exception {
    fn write(&self, w: &mut RecordWriter) {
        w.bytes(&self.rel);
        w.u64(self.ino);
        w.u32(self.orig.0);
        w.u32(self.orig.1);
        w.u32(self.orig.2);
    }

    fn read(r: &mut RecordReader<'_>) -> Option<Self> {
        Some(Exception {
            rel: r.bytes()?.to_vec(),
            ino: r.u64()?,
            orig: (r.u32()?, r.u32()?, r.u32()?),
        })
    }
}

/// A walk's visitor: (directory fd, path relative to the root, name in the directory,
/// identity, metadata).
type Visit<'a> = dyn FnMut(&Dir, &[u8], &CStr, Identity, Meta) -> Result<(), TreeError> + 'a;

/// Calls `f(dir, rel, name, identity, meta)` for every entry below `root` that is neither a
/// symlink nor a mount point nor below one, directories before their contents: the one
/// tree walk ([`svirt_hostfs::walk`]), in the directories' own order.
fn walk(base: &Path, root: Dir, f: &mut Visit<'_>) -> Result<(), TreeError> {
    use svirt_hostfs::walk::{Error as W, Kind, Options};
    svirt_hostfs::walk::walk(root, &Options::default(), &mut |e| match e.kind {
        Kind::Symlink | Kind::MountPoint => Ok(()),
        Kind::Dir | Kind::Other => f(e.dir, e.rel, e.name, e.stat.id, e.stat.meta),
    })
    .map_err(|e| match e {
        W::Io { op, rel, source } => TreeError::Io {
            op,
            path: full_path(base, &rel),
            source,
        },
        W::Visit(e) => e,
        // No limits were set.
        W::TooDeep { rel, .. } | W::TooMany { rel, .. } => TreeError::Io {
            op: "walk",
            path: full_path(base, &rel),
            source: io::Error::other("walk limit"),
        },
    })
}

/// Owner, group and mode of `obj` from `before` to `after` (mode written after chown, which
/// clears set-id bits).
fn set_meta(obj: &Object, before: Meta, after: Meta) -> io::Result<bool> {
    let owner_change = after.uid != before.uid || after.gid != before.gid;
    if owner_change {
        obj.chown(after.uid, after.gid)?;
    }
    if owner_change || after.mode & 0o7777 != before.mode & 0o7777 {
        obj.chmod(after.mode & 0o7777)?;
        return Ok(true);
    }
    Ok(owner_change)
}

/// Changes entry `name` of `dir` as `want` says, through an `O_PATH` fd checked to be the
/// entry `id` walked to and not a symlink. `Ok(false)`: gone, replaced, or nothing to do.
fn change_at(
    dir: &Dir,
    name: &CStr,
    id: Identity,
    want: &dyn Fn(Meta) -> Option<Meta>,
) -> io::Result<bool> {
    let Some(obj) = walked_entry(dir, name, id)? else {
        return Ok(false);
    };
    let cur = obj.meta();
    match want(cur) {
        Some(after) => set_meta(&obj, cur, after),
        None => Ok(false),
    }
}

/// Entry `name` of `dir` as an `O_PATH` object, if it is still the entry `id` the walk saw
/// and not a symlink; `None` when it is gone or replaced.
fn walked_entry(dir: &Dir, name: &CStr, id: Identity) -> io::Result<Option<Object>> {
    let obj = match dir.open_entry(name, PathBuf::new()) {
        Ok(o) => o,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    if obj.identity().ino != id.ino || obj.meta().is_symlink() {
        return Ok(None);
    }
    Ok(Some(obj))
}

/// The set-id bits a chown of a regular file clears (the kernel's
/// `setattr_should_drop_suidgid`: set-uid always, set-gid with group-exec; root included).
/// Directories keep theirs, so for them this never matches a changed mode.
const SETID_CLEARED_BY_CHOWN: u32 = 0o6000;

/// Puts an entry back from `before` to `after` (its recorded original) so that a kill at
/// any point leaves it either still carrying the change (so a later restore finds it) or
/// with its original owner and mode but for the set-id bits the kernel's chown cleared (which
/// the restore's `want` recognizes):
/// 1. the mode first, without set-id bits, while the guest's change (the marker) stays: never
///    a set-id file owned by the guest, even for an instant;
/// 2. then the owner (the marker goes; the kernel clears set-id bits, none are left to clear);
/// 3. then the set-id bits, if the original had any.
///
/// Writing the owner first (as `set_meta` does at set time) and being killed before the
/// chmod left entries with the original owner and the guest's mode, which nothing could tell
/// from an entry nobody changed: the next start then recorded that mode as the original.
fn restore_meta(obj: &Object, before: Meta, after: Meta, chowned: &dyn Fn()) -> io::Result<bool> {
    let owner_change = after.uid != before.uid || after.gid != before.gid;
    let mode = after.mode & 0o7777;
    if !owner_change {
        if mode != before.mode & 0o7777 {
            obj.chmod(mode)?;
            return Ok(true);
        }
        return Ok(false);
    }
    let without_setid = mode & !SETID_CLEARED_BY_CHOWN;
    if before.mode & 0o7777 != without_setid {
        obj.chmod(without_setid)?;
    }
    obj.chown(after.uid, after.gid)?;
    chowned();
    if mode != without_setid {
        obj.chmod(mode)?;
    }
    Ok(true)
}

/// [`change_at`] for a restore: the entry is put back with [`restore_meta`].
fn restore_at(
    dir: &Dir,
    name: &CStr,
    id: Identity,
    want: &dyn Fn(Meta) -> Option<Meta>,
    chowned: &dyn Fn(),
) -> io::Result<bool> {
    let Some(obj) = walked_entry(dir, name, id)? else {
        return Ok(false);
    };
    let cur = obj.meta();
    match want(cur) {
        Some(after) => restore_meta(&obj, cur, after, chowned),
        None => Ok(false),
    }
}

/// Applies `f` to the root of a tree and every entry below it (not symlinks, not other
/// mounts), reporting `phase` progress; the root first (a failure there leaves the rest).
/// Returns the number of entries `f` changed.
fn acl_walk(
    base: &Path,
    root: &Object,
    progress: Option<&ProgressFn>,
    phase: Phase,
    expected: u64,
    f: &dyn Fn(&Object) -> io::Result<bool>,
) -> Result<u64, TreeError> {
    let op = if phase == Phase::Restoring {
        "restore ACL"
    } else {
        "grant read ACL"
    };
    let mut meter = Meter::new(progress, base, phase, expected);
    let changed = f(root).map_err(|source| TreeError::Io {
        op,
        path: base.to_path_buf(),
        source,
    })?;
    meter.step(changed);
    let dir = root.open_as_dir().map_err(|source| TreeError::Io {
        op: "open directory",
        path: base.to_path_buf(),
        source,
    })?;
    walk(base, dir, &mut |dir, rel, name, eid, _| {
        let r = match walked_entry(dir, name, eid) {
            Ok(Some(obj)) => f(&obj),
            Ok(None) => Ok(false),
            Err(e) => Err(e),
        };
        match r {
            Ok(c) => {
                meter.step(c);
                Ok(())
            }
            Err(source) => Err(TreeError::Io {
                op,
                path: full_path(base, rel),
                source,
            }),
        }
    })?;
    meter.report();
    Ok(meter.done)
}

type Exceptions = HashMap<Vec<u8>, (u64, Orig)>;

/// Whether the ledger holds any DAC tree record (without making the tables).
pub(crate) fn has_rows(store: &svirt_store::Store) -> Result<bool, svirt_store::Error> {
    let txn = store.begin_read()?;
    match txn.open_table(TREES) {
        Ok(t) => Ok(t.iter()?.next().is_some()),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// DAC's tree records, in the store's ledger (tables `dac_trees`, `dac_tree_exceptions`).
pub(crate) struct TreeDb {
    store: Arc<svirt_store::Store>,
}

/// The recorded original of an entry: its exception, else the dominant one of its kind.
/// A tree recorded with no entry of that kind (a TPM's state directory, empty at the first
/// start) has none: an entry made since gets the root's owner and group, and its own
/// permission bits without set-id or sticky bits, so nothing the guest made stays its
/// uid's after the stop (for the next guest given that uid).
fn original(rec: &TreeRecord, exc: &Exceptions, rel: &[u8], ino: u64, m: Meta) -> Option<Orig> {
    match exc.get(rel) {
        Some((i, o)) if *i == ino => Some(*o),
        _ if m.is_dir() => rec.dir,
        _ => rec
            .other
            .or_else(|| rec.dir.map(|(uid, gid, _)| (uid, gid, m.mode & 0o777))),
    }
}

fn with_orig(m: Meta, o: Orig) -> Meta {
    Meta {
        uid: o.0,
        gid: o.1,
        mode: (m.mode & libc::S_IFMT) | o.2,
    }
}

impl TreeDb {
    /// Where an earlier svirt kept DAC's tree records: `svirt.dac-trees.redb` next to the
    /// store file. Its rows move into the ledger at [`TreeDb::open`].
    pub(crate) fn legacy_path(store: &svirt_store::Store) -> PathBuf {
        store.path().with_extension("dac-trees.redb")
    }

    /// DAC's tree tables in `store`'s ledger, made if missing, after adopting an earlier
    /// svirt's file of them ([`TreeDb::legacy_path`]).
    pub(crate) fn open(store: Arc<svirt_store::Store>) -> Result<TreeDb, TreeError> {
        crate::tree_common::open_tree_tables(&store, &Self::legacy_path(&store), TREES, TREE_EXC)?;
        Ok(TreeDb { store })
    }

    fn get(&self, k: TreeKey) -> Result<Option<TreeRecord>, TreeError> {
        let txn = self.store.begin_read()?;
        let t = txn.open_table(TREES).map_err(db_err)?;
        Ok(get_json(&t, k)?)
    }

    fn exceptions(&self, k: TreeKey, chunks: u32) -> Result<Exceptions, TreeError> {
        let txn = self.store.begin_read()?;
        let t = txn.open_table(TREE_EXC).map_err(db_err)?;
        let mut out = HashMap::new();
        read_chunks(&t, chunk_key(k), chunks, |e: Exception| {
            out.insert(e.rel, (e.ino, e.orig));
        })?;
        Ok(out)
    }

    /// Read-modify-write of record `k` in ONE durable transaction (so concurrent starts and
    /// stops of guests sharing a tree cannot lose each other's updates): `f` gets the stored
    /// record and returns what to store (`exc` is added as new chunks), or `None` to write
    /// nothing. Returns what was stored.
    fn update(
        &self,
        k: TreeKey,
        exc: &[Exception],
        f: impl FnOnce(Option<TreeRecord>) -> Option<TreeRecord>,
    ) -> Result<Option<TreeRecord>, TreeError> {
        let txn = self.store.begin_write()?;
        let stored = {
            let mut t = txn.open_table(TREES).map_err(db_err)?;
            let cur = get_json(&t, k)?;
            let Some(mut rec) = f(cur) else {
                drop(t);
                txn.abort()?;
                return Ok(None);
            };
            let mut e = txn.open_table(TREE_EXC).map_err(db_err)?;
            insert_chunks(&mut e, chunk_key(k), &mut rec.chunks, exc)?;
            put_json(&mut t, k, &rec)?;
            rec
        };
        txn.commit()?;
        Ok(Some(stored))
    }

    fn delete(&self, k: TreeKey) -> Result<(), TreeError> {
        let txn = self.store.begin_write()?;
        {
            let mut t = txn.open_table(TREES).map_err(db_err)?;
            let chunks = match t.remove(k).map_err(db_err)? {
                Some(v) => serde_json::from_slice::<TreeRecord>(v.value()).map_or(0, |r| r.chunks),
                None => 0,
            };
            let mut e = txn.open_table(TREE_EXC).map_err(db_err)?;
            remove_chunks(&mut e, chunk_key(k), chunks)?;
        }
        Ok(txn.commit()?)
    }

    /// Every tree record: key, root path, users.
    pub(crate) fn list(&self) -> Result<Vec<(TreeKey, PathBuf, Vec<String>)>, TreeError> {
        let txn = self.store.begin_read()?;
        let t = txn.open_table(TREES).map_err(db_err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let rec: TreeRecord = serde_json::from_slice(v.value()).map_err(|e| {
                TreeError::Record(format!("the record of tree {:?}: {e}", k.value()))
            })?;
            out.push((
                k.value(),
                path_of_bytes(&rec.path),
                rec.owners.into_keys().collect(),
            ));
        }
        Ok(out)
    }

    /// Records (or joins) the tree at `root` for `owner` with `rules`, then changes it. The
    /// key is pushed to `joined` once the record holds `owner` (the caller releases it on
    /// error). Returns the number of entries changed. The caller holds the tree's key (see
    /// [`TreeDb::release`]).
    ///
    /// Progress (to `progress`, path = `root.path()`): recording a new tree is `Scanning`
    /// over two read-only walks, the first finding how many entries there are (`done` 0,
    /// `total` = entries seen), the second reading their originals against the dominant
    /// ones (`done` = entries read, of that total); changing it is `Labeling` (`done` =
    /// entries changed, `total` = entries recorded, or seen when more).
    pub(crate) fn set_tree(
        &self,
        owner: &str,
        root: &Object,
        rules: Rules,
        joined: &mut Vec<TreeKey>,
        progress: Option<&ProgressFn>,
    ) -> Result<u64, TreeError> {
        let base = root.path();
        let id = root.identity();
        let k = (id.dev, id.ino);
        let io = |op| {
            let path = base.to_path_buf();
            move |source| TreeError::Io { op, path, source }
        };
        let existing = match self.get(k)? {
            Some(r) if same_root(k.0, k.1, r.btime, id) => Some(r),
            // An earlier directory at the same inode: stale.
            Some(_) => {
                self.delete(k)?;
                None
            }
            None => None,
        };
        let root_meta = root.current_meta().map_err(io("stat"))?;
        let mut created = None;
        if existing.is_none() {
            // Two read-only passes: the dominant originals, then the exceptions (so
            // memory holds the exceptions only, not the whole tree).
            let mut scan = Meter::new(progress, base, Phase::Scanning, 0);
            let mut counts: HashMap<(bool, Orig), u64> = HashMap::new();
            *counts.entry((true, orig_of(root_meta))).or_default() += 1;
            scan.step(false);
            walk(
                base,
                root.open_as_dir().map_err(io("open directory"))?,
                &mut |_, _, _, _, m| {
                    *counts.entry((m.is_dir(), orig_of(m))).or_default() += 1;
                    scan.step(false);
                    Ok(())
                },
            )?;
            let entries = scan.seen;
            // The second walk counts from 0 again, of the entries the first one found.
            scan.expected = entries;
            scan.seen = 0;
            let dominant = |dir: bool| {
                counts
                    .iter()
                    .filter(|((d, _), _)| *d == dir)
                    .max_by_key(|((_, o), n)| (**n, std::cmp::Reverse(*o)))
                    .map(|((_, o), _)| *o)
            };
            let mut rec = TreeRecord {
                path: base.as_os_str().as_bytes().to_vec(),
                btime: id.btime,
                dir: dominant(true),
                other: dominant(false),
                chunks: 0,
                owners: BTreeMap::new(),
                entries,
            };
            let mut list: Vec<Exception> = Vec::new();
            let dom = |m: Meta, rec: &TreeRecord| if m.is_dir() { rec.dir } else { rec.other };
            if dom(root_meta, &rec) != Some(orig_of(root_meta)) {
                list.push(Exception {
                    rel: Vec::new(),
                    ino: id.ino,
                    orig: orig_of(root_meta),
                });
            }
            scan.step(true);
            walk(
                base,
                root.open_as_dir().map_err(io("open directory"))?,
                &mut |_, rel, _, eid, m| {
                    if dom(m, &rec) != Some(orig_of(m)) {
                        list.push(Exception {
                            rel: rel.to_vec(),
                            ino: eid.ino,
                            orig: orig_of(m),
                        });
                    }
                    scan.step(true);
                    Ok(())
                },
            )?;
            scan.report();
            rec.owners.insert(owner.to_string(), rules);
            // Only if nobody recorded the tree meanwhile (else join that record: its
            // originals are the true ones, ours may be another guest's changes).
            if let Some(rec) = self.update(k, &list, |cur| match cur {
                None => Some(rec),
                Some(_) => None,
            })? {
                joined.push(k);
                let exc: Exceptions = list.into_iter().map(|e| (e.rel, (e.ino, e.orig))).collect();
                created = Some((rec, exc));
            }
        }
        let (rec, exc) = match created {
            Some(v) => v,
            None => {
                let mut added = false;
                let rec = self
                    .update(k, &[], |cur| {
                        let mut r = cur?;
                        if !r.owners.contains_key(owner) {
                            r.owners.insert(owner.to_string(), rules);
                            added = true;
                        }
                        Some(r)
                    })?
                    .ok_or_else(|| {
                        TreeError::Record(format!(
                            "{}: tree record removed while joining it; retry",
                            base.display()
                        ))
                    })?;
                if added {
                    joined.push(k);
                }
                let exc = self.exceptions(k, rec.chunks)?;
                (rec, exc)
            }
        };
        if let Some(uid) = rules.dir.read_acl {
            return acl_walk(base, root, progress, Phase::Labeling, rec.entries, &|obj| {
                crate::dac::tree_grant_read(obj, uid)
            });
        }
        let others: Vec<Rules> = rec
            .owners
            .iter()
            .filter(|(o, _)| o.as_str() != owner)
            .map(|(_, r)| *r)
            .collect();
        // Changed only from a recorded state: its original, or another user's change.
        let want = |rel: &[u8], ino: u64, cur: Meta| -> Option<Meta> {
            let o = original(&rec, &exc, rel, ino, cur)?;
            let from_original = orig_of(cur) == o;
            if !from_original && !others.iter().any(|r| r.for_meta(cur).carried_by(cur)) {
                return None;
            }
            let after = rules.for_meta(cur).apply(cur);
            (after != cur).then_some(after)
        };
        let mut meter = Meter::new(progress, base, Phase::Labeling, rec.entries);
        // The top first: a failure there leaves the tree untouched.
        if let Some(after) = want(b"", id.ino, root_meta) {
            set_meta(root, root_meta, after).map_err(io("change owner/mode"))?;
            meter.step(true);
        } else {
            meter.step(false);
        }
        walk(
            base,
            root.open_as_dir().map_err(io("open directory"))?,
            &mut |dir, rel, name, eid, _| {
                let w = |cur: Meta| want(rel, eid.ino, cur);
                match change_at(dir, name, eid, &w) {
                    Ok(changed) => meter.step(changed),
                    Err(source) => {
                        return Err(TreeError::Io {
                            op: "change owner/mode",
                            path: full_path(base, rel),
                            source,
                        });
                    }
                }
                Ok(())
            },
        )?;
        meter.report();
        Ok(meter.done)
    }

    /// Removes `owner` from the tree record `k`; when no user is left, writes the originals
    /// back first (`open_root` opens the recorded root path) and then deletes the record. A
    /// failed restore keeps the record (with `owner`) for the next attempt, and so does a
    /// crash before the delete. Returns the number of entries restored. `fault` (tests) is
    /// asked between the restore and the delete; `true` fails the release there.
    ///
    /// The caller holds the store's lock of the root's (dev, ino)
    /// (`svirt_store::Store::lock_object`, also held over [`TreeDb::set_tree`]): the record
    /// read here is the one the decision to restore and the delete act on, and no other user
    /// joins or leaves in between (two users leaving at once would otherwise each see the
    /// other and neither restore).
    ///
    /// A restore reports `Restoring` to `progress` (path = the recorded root path): `done` =
    /// entries restored, `total` = entries recorded, or visited when more.
    pub(crate) fn release(
        &self,
        k: TreeKey,
        owner: &str,
        open_root: &dyn Fn(&Path) -> io::Result<Object>,
        progress: Option<&ProgressFn>,
        fault: &dyn Fn(&str) -> bool,
    ) -> Result<u64, TreeError> {
        let Some(rec) = self.get(k)? else {
            return Ok(0);
        };
        if !rec.owners.contains_key(owner) {
            return Ok(0);
        }
        let mut n = 0;
        if rec.owners.len() == 1 {
            // Restore before releasing: a crash in between leaves the record for recovery.
            n = self.restore(k, &rec, open_root, progress, fault)?;
            if fault("after-tree-restore") {
                return Err(TreeError::Record(
                    "injected fault at after-tree-restore".into(),
                ));
            }
        } else if let Some(uid) = rec.owners.get(owner).and_then(|r| r.dir.read_acl)
            // Guests with one static uid share its entries: kept while another has it.
            && !rec
                .owners
                .iter()
                .any(|(o, r)| o != owner && r.dir.read_acl == Some(uid))
        {
            // Other users remain: only this reader's own entries go (its uid is released
            // and will be another guest's). A crash midway keeps the record; the walk is
            // idempotent.
            n = self.drop_reader(k, &rec, uid, open_root, progress)?;
        }
        // Deleted only if still ours alone (a guest may have joined meanwhile: then only
        // `owner` goes).
        let txn = self.store.begin_write()?;
        let chunks = {
            let mut t = txn.open_table(TREES).map_err(db_err)?;
            match get_json::<_, TreeRecord>(&t, k)? {
                Some(mut r) if r.owners.contains_key(owner) => {
                    r.owners.remove(owner);
                    if r.owners.is_empty() {
                        t.remove(k).map_err(db_err)?;
                        r.chunks
                    } else {
                        put_json(&mut t, k, &r)?;
                        0
                    }
                }
                _ => 0,
            }
        };
        {
            let mut e = txn.open_table(TREE_EXC).map_err(db_err)?;
            remove_chunks(&mut e, chunk_key(k), chunks)?;
        }
        txn.commit()?;
        Ok(n)
    }

    /// Removes reader `uid`'s ACL entries from the tree of record `rec` (other users keep
    /// the tree as it is).
    fn drop_reader(
        &self,
        k: TreeKey,
        rec: &TreeRecord,
        uid: u32,
        open_root: &dyn Fn(&Path) -> io::Result<Object>,
        progress: Option<&ProgressFn>,
    ) -> Result<u64, TreeError> {
        let base = path_of_bytes(&rec.path);
        let root = match open_root(&base) {
            Ok(o) => o,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(0),
            Err(source) => {
                return Err(TreeError::Io {
                    op: "open",
                    path: base,
                    source,
                });
            }
        };
        if !same_root(k.0, k.1, rec.btime, root.identity()) || !root.meta().is_dir() {
            return Ok(0);
        }
        acl_walk(
            &base,
            &root,
            progress,
            Phase::Restoring,
            rec.entries,
            &|obj| crate::dac::tree_drop_read(obj, &[uid], None),
        )
    }

    fn restore(
        &self,
        k: TreeKey,
        rec: &TreeRecord,
        open_root: &dyn Fn(&Path) -> io::Result<Object>,
        progress: Option<&ProgressFn>,
        fault: &dyn Fn(&str) -> bool,
    ) -> Result<u64, TreeError> {
        let base = path_of_bytes(&rec.path);
        let io = |op| {
            let path = base.clone();
            move |source| TreeError::Io { op, path, source }
        };
        let root = match open_root(&base) {
            Ok(o) => o,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(0),
            Err(e) => return Err(io("open")(e)),
        };
        let id = root.identity();
        if !same_root(k.0, k.1, rec.btime, id) || !root.meta().is_dir() {
            tracing::warn!(
                "{}: replaced since DAC changed it; not restoring",
                base.display()
            );
            return Ok(0);
        }
        let exc = self.exceptions(k, rec.chunks)?;
        let users: Vec<Rules> = rec.owners.values().copied().collect();
        let want = |rel: &[u8], ino: u64, cur: Meta| -> Option<Meta> {
            let o = original(rec, &exc, rel, ino, cur)?;
            if orig_of(cur) == o {
                return None;
            }
            // Carries a user's change, or is an entry this restore (or one killed midway)
            // already gave its original owner, whose set-id bits the kernel cleared at that
            // chown and which was killed before its final chmod (see `restore_meta`).
            let carried = users.iter().any(|r| r.for_meta(cur).carried_by(cur));
            let chowned_back = (cur.uid, cur.gid) == (o.0, o.1)
                && o.2 & 0o7000 != 0
                && cur.mode & 0o7777 == o.2 & !SETID_CLEARED_BY_CHOWN;
            if !carried && !chowned_back {
                return None;
            }
            Some(with_orig(cur, o))
        };
        let chowned = || {
            fault("tree-entry-chowned");
        };
        let readers: Vec<u32> = users.iter().filter_map(|r| r.dir.read_acl).collect();
        // A reader's entries come off, and the entry's original ACL and mode back.
        let acl_back = |obj: &Object, rel: &[u8], ino: u64| -> io::Result<bool> {
            if readers.is_empty() {
                return Ok(false);
            }
            let cur = obj.current_meta()?;
            let Some(o) = original(rec, &exc, rel, ino, cur) else {
                return Ok(false);
            };
            crate::dac::tree_drop_read(obj, &readers, Some(o.2))
        };
        let mut meter = Meter::new(progress, &base, Phase::Restoring, rec.entries);
        let mut first_err: Option<TreeError> = None;
        walk(
            &base,
            root.open_as_dir().map_err(io("open directory"))?,
            &mut |dir, rel, name, eid, _| {
                let w = |cur: Meta| want(rel, eid.ino, cur);
                let r = restore_at(dir, name, eid, &w, &chowned).and_then(|changed| {
                    let acl = match walked_entry(dir, name, eid)? {
                        Some(obj) => acl_back(&obj, rel, eid.ino)?,
                        None => false,
                    };
                    Ok(changed || acl)
                });
                match r {
                    Ok(restored) => meter.step(restored),
                    // Go on with the others; the record stays for another attempt.
                    Err(source) => {
                        meter.step(false);
                        if first_err.is_none() {
                            first_err = Some(TreeError::Io {
                                op: "restore owner/mode",
                                path: full_path(&base, rel),
                                source,
                            });
                        }
                    }
                }
                Ok(())
            },
        )?;
        // The top last (it was changed first).
        let cur = root.current_meta().map_err(io("stat"))?;
        let mut changed = false;
        if let Some(after) = want(b"", id.ino, cur) {
            restore_meta(&root, cur, after, &chowned).map_err(io("restore owner/mode"))?;
            changed = true;
        }
        changed |= acl_back(&root, b"", id.ino).map_err(io("restore ACL"))?;
        meter.step(changed);
        meter.report();
        match first_err {
            Some(e) => Err(e),
            None => Ok(meter.done),
        }
    }
}
