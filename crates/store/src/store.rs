//! The database file, its tables, and the simple record kinds (levels, ids, guests).

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};
use svirt_labels::Level;

use crate::error::{Error, Result};
use crate::object::{KeyLocks, ObjectKey, ObjectLock, ObjectLocks};

/// Name of the database file inside the state directory.
pub const DB_FILE: &str = "svirt.redb";

/// Schema version written by this build; a newer one in the file is refused.
pub const SCHEMA_VERSION: u64 = 1;

pub(crate) const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
/// Canonical level string → JSON [`LevelValue`].
pub(crate) const LEVELS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("levels");
/// (owner, canonical level) → (): the reverse index of [`LEVELS`].
pub(crate) const LEVEL_OWNERS: TableDefinition<'_, (&str, &str), ()> =
    TableDefinition::new("level_owners");
/// uid/gid → owner.
pub(crate) const IDS: TableDefinition<'_, u32, &str> = TableDefinition::new("ids");
/// (dev, ino) → JSON [`crate::OriginalRecord`].
pub(crate) const ORIGINALS: TableDefinition<'_, (u64, u64), &[u8]> =
    TableDefinition::new("originals");
/// (owner, dev, ino) → (): the reverse index of [`ORIGINALS`].
pub(crate) const ORIGINAL_OWNERS: TableDefinition<'_, (&str, u64, u64), ()> =
    TableDefinition::new("original_owners");
/// (dev, ino) → JSON `ClaimRecord`: which guests use an object, and how.
pub(crate) const CLAIMS: TableDefinition<'_, (u64, u64), &[u8]> = TableDefinition::new("claims");
/// (owner, dev, ino) → (): reverse index of `claims`.
pub(crate) const CLAIM_OWNERS: TableDefinition<'_, (&str, u64, u64), ()> =
    TableDefinition::new("claim_owners");

/// Guest name → (state, opaque record bytes).
pub(crate) const GUESTS: TableDefinition<'_, &str, (&str, &[u8])> = TableDefinition::new("guests");

/// Longest owner (guest) name accepted, in bytes.
pub const MAX_OWNER_LEN: usize = 255;

pub(crate) fn check_owner(owner: &str) -> Result<()> {
    if owner.is_empty() || owner.len() > MAX_OWNER_LEN {
        return Err(Error::BadOwner(owner.chars().take(300).collect()));
    }
    Ok(())
}

/// Whether a level reservation was made for a static label or handed out dynamically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReservationKind {
    /// A level written in the guest's configuration (`<seclabel type='static'>`).
    Static,
    /// A level the [`crate::LevelAllocator`] chose.
    Dynamic,
}

impl ReservationKind {
    /// `static` or `dynamic`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReservationKind::Static => "static",
            ReservationKind::Dynamic => "dynamic",
        }
    }
}

/// One reserved level and who holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LevelReservation {
    /// The level.
    pub level: Level,
    /// Static or dynamic.
    pub kind: ReservationKind,
    /// Whether further owners may join (each must ask for sharing too).
    pub shared: bool,
    /// The owners (guest names); the reference count is their number.
    pub owners: BTreeSet<String>,
}

/// What is stored under a level's key (the level itself is the key).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LevelValue {
    pub kind: ReservationKind,
    pub shared: bool,
    pub owners: BTreeSet<String>,
}

impl LevelReservation {
    pub(crate) fn value(&self) -> LevelValue {
        LevelValue {
            kind: self.kind,
            shared: self.shared,
            owners: self.owners.clone(),
        }
    }
}

/// A guest's record: the manager's serialized guest (opaque here) and its lifecycle state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestRecord {
    /// The guest's name (the key).
    pub name: String,
    /// Lifecycle state as the manager names it (`defined`, `running`, ...).
    pub state: String,
    /// The manager's serialized guest (serde_json bytes, opaque to the store).
    pub record: Vec<u8>,
}

/// The embedded database under a state directory.
///
/// One process holds it for writing at a time (redb's exclusive-writer mode): a second daemon
/// or tool opening it gets [`Error::AlreadyOpen`] instead of a silently diverging copy of the
/// reservations. Every mutating call is one redb write transaction committed with
/// `Durability::Immediate` (fsync) before it returns.
pub struct Store {
    pub(crate) db: Database,
    path: PathBuf,
    /// Objects whose record a caller is deciding on (see [`Store::lock_object`]).
    pub(crate) object_locks: KeyLocks,
    /// Commit order: each write transaction takes the next number while it holds redb's
    /// (exclusive) write lock, so numbers follow the order of the commits.
    commits: AtomicU64,
    /// The highest number committed durably: it and every commit before it are on disk.
    durable_upto: AtomicU64,
    /// The highest number committed without an fsync.
    deferred_upto: AtomicU64,
}

/// A durable write transaction on the ledger ([`Store::begin_write`]); derefs to redb's
/// [`WriteTransaction`] for opening tables.
pub struct LedgerWrite<'s> {
    store: &'s Store,
    txn: WriteTransaction,
    n: u64,
}

impl LedgerWrite<'_> {
    /// Commits durably (fsync): this and every earlier commit of the store are on disk.
    pub fn commit(self) -> Result<()> {
        self.txn.commit()?;
        self.store.durable_upto.fetch_max(self.n, Ordering::SeqCst);
        Ok(())
    }

    /// Ends the transaction without writing anything.
    pub fn abort(self) -> Result<()> {
        Ok(self.txn.abort()?)
    }
}

impl std::ops::Deref for LedgerWrite<'_> {
    type Target = WriteTransaction;
    fn deref(&self) -> &WriteTransaction {
        &self.txn
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) `state_dir/svirt.redb`; the directory is created mode 0700.
    pub fn open(state_dir: &Path) -> Result<Store> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|source| Error::StateDir {
                path: state_dir.to_path_buf(),
                source,
            })?;
        Self::open_file(&state_dir.join(DB_FILE))
    }

    /// Opens (creating if needed) the database at an explicit file path.
    pub fn open_file(path: &Path) -> Result<Store> {
        let db = Database::create(path).map_err(|source| match source {
            redb::DatabaseError::DatabaseAlreadyOpen => Error::AlreadyOpen {
                path: path.to_path_buf(),
            },
            source => Error::Open {
                path: path.to_path_buf(),
                source,
            },
        })?;
        // The file holds who owns which label and every file's original label: not for others.
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o600));
        let store = Store {
            db,
            path: path.to_path_buf(),
            object_locks: Default::default(),
            commits: AtomicU64::new(0),
            durable_upto: AtomicU64::new(0),
            deferred_upto: AtomicU64::new(0),
        };
        store.init()?;
        Ok(store)
    }

    fn init(&self) -> Result<()> {
        self.write(|txn| {
            {
                let mut meta = txn.open_table(META)?;
                let found = meta.get("schema_version")?.map(|v| v.value());
                match found {
                    Some(v) if v > SCHEMA_VERSION => {
                        return Err(Error::Schema {
                            found: v,
                            supported: SCHEMA_VERSION,
                        });
                    }
                    Some(_) => {}
                    None => {
                        meta.insert("schema_version", SCHEMA_VERSION)?;
                    }
                }
            }
            // Create every table now so that readers never meet a missing one.
            txn.open_table(LEVELS)?;
            txn.open_table(LEVEL_OWNERS)?;
            txn.open_table(IDS)?;
            txn.open_table(ORIGINALS)?;
            txn.open_table(ORIGINAL_OWNERS)?;
            txn.open_table(GUESTS)?;
            txn.open_table(CLAIMS)?;
            txn.open_table(CLAIM_OWNERS)?;
            Ok(())
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in a write transaction and commits it durably; on error nothing is written.
    pub(crate) fn write<T>(&self, f: impl FnOnce(&WriteTransaction) -> Result<T>) -> Result<T> {
        self.write_maybe_deferred(true, f)
    }

    /// Like [`Self::write`], but with `durable == false` the commit is not fsynced
    /// (`Durability::None`): it is visible at once to every reader of this process, and
    /// becomes durable with the next durable commit of ANY kind (redb orders commits), or
    /// is lost if the process dies before one. Only for writes whose users promise a
    /// durable commit before what they wrote is put to use (see the allocators'
    /// `with_deferred_commits`, [`Self::put_guest_deferred`] and
    /// [`Self::sync_if_pending`]).
    pub(crate) fn write_maybe_deferred<T>(
        &self,
        durable: bool,
        f: impl FnOnce(&WriteTransaction) -> Result<T>,
    ) -> Result<T> {
        let mut txn = self.db.begin_write()?;
        // Taken under the write lock: numbers follow the commits' order.
        let n = self.commits.fetch_add(1, Ordering::SeqCst) + 1;
        let mut deferred = false;
        if !durable {
            // Refused only in multi-process modes, which this store does not use; the
            // commit then stays durable, the safe direction.
            deferred = txn.set_durability(Durability::None).is_ok();
        }
        let out = f(&txn)?;
        txn.commit()?;
        if deferred {
            self.deferred_upto.fetch_max(n, Ordering::SeqCst);
        } else {
            self.durable_upto.fetch_max(n, Ordering::SeqCst);
        }
        Ok(out)
    }

    /// A durable write transaction of the ledger for tables other layers own (the
    /// drivers' tree records): the caller opens its tables on it and ends it with
    /// [`LedgerWrite::commit`] (dropped or [`LedgerWrite::abort`]ed, nothing is written).
    ///
    /// One file and one commit order for everything svirt records: such a commit also
    /// makes every earlier deferred commit of the store durable, so a driver recording a
    /// tree's originals needs no sync of its own before it (there is no second database
    /// whose commits could overtake the store's). Waits while another write runs (redb has
    /// one writer); the tree writers hold it for one record at a time.
    pub fn begin_write(&self) -> Result<LedgerWrite<'_>> {
        let txn = self.db.begin_write()?;
        // Taken under the write lock: numbers follow the commits' order.
        let n = self.commits.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(LedgerWrite {
            store: self,
            txn,
            n,
        })
    }

    /// A read transaction of the ledger (a snapshot of every table).
    pub fn begin_read(&self) -> Result<redb::ReadTransaction> {
        Ok(self.db.begin_read()?)
    }

    /// Makes every earlier commit durable now (one empty durable commit).
    pub fn sync(&self) -> Result<()> {
        self.write(|_| Ok(()))
    }

    /// Makes every earlier commit durable, with an fsync only if a deferred commit is not
    /// yet covered by a later durable one. Whether it had to sync.
    pub fn sync_if_pending(&self) -> Result<bool> {
        if self.deferred_upto.load(Ordering::SeqCst) <= self.durable_upto.load(Ordering::SeqCst) {
            return Ok(false);
        }
        self.sync()?;
        Ok(true)
    }

    // ---- levels (written by the LevelAllocator; read by anyone) ----

    /// Every level reservation, in key order.
    pub fn level_reservations(&self) -> Result<Vec<LevelReservation>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LEVELS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            out.push(decode_level(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// The reservation of one level, if any.
    pub fn level_reservation(&self, level: &Level) -> Result<Option<LevelReservation>> {
        let key = level.to_string();
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LEVELS)?;
        let row = table.get(key.as_str())?;
        row.map(|v| decode_level(&key, v.value())).transpose()
    }

    /// The levels an owner holds (static and dynamic).
    pub fn levels_of(&self, owner: &str) -> Result<Vec<Level>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LEVEL_OWNERS)?;
        let mut out = Vec::new();
        for row in table.range((owner, "")..)? {
            let (k, _) = row?;
            let (o, level) = k.value();
            if o != owner {
                break;
            }
            out.push(parse_level_key("level_owners", level)?);
        }
        Ok(out)
    }

    // ---- uid/gid reservations (written by the IdAllocator) ----

    /// Every reserved uid/gid with its owner, ascending.
    pub fn id_reservations(&self) -> Result<Vec<(u32, String)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(IDS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            out.push((k.value(), v.value().to_string()));
        }
        Ok(out)
    }

    // ---- guests ----

    /// Creates or replaces a guest's record.
    pub fn put_guest(&self, name: &str, state: &str, record: &[u8]) -> Result<()> {
        self.put_guest_with(true, name, state, record)
    }

    /// Like [`Self::put_guest`], without an fsync: the record becomes durable with the
    /// next durable commit (a driver recording an object's original before changing it)
    /// or [`Self::sync_if_pending`]; a crash before loses it.
    pub fn put_guest_deferred(&self, name: &str, state: &str, record: &[u8]) -> Result<()> {
        self.put_guest_with(false, name, state, record)
    }

    fn put_guest_with(&self, durable: bool, name: &str, state: &str, record: &[u8]) -> Result<()> {
        check_owner(name)?;
        self.write_maybe_deferred(durable, |txn| {
            txn.open_table(GUESTS)?.insert(name, (state, record))?;
            Ok(())
        })
    }

    /// A guest's record, if defined.
    pub fn get_guest(&self, name: &str) -> Result<Option<GuestRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(GUESTS)?;
        Ok(table.get(name)?.map(|v| {
            let (state, record) = v.value();
            GuestRecord {
                name: name.to_string(),
                state: state.to_string(),
                record: record.to_vec(),
            }
        }))
    }

    /// Deletes a guest's record; false if there was none.
    pub fn delete_guest(&self, name: &str) -> Result<bool> {
        self.write(|txn| Ok(txn.open_table(GUESTS)?.remove(name)?.is_some()))
    }

    /// Every guest record, by name.
    pub fn list_guests(&self) -> Result<Vec<GuestRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(GUESTS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let (state, record) = v.value();
            out.push(GuestRecord {
                name: k.value().to_string(),
                state: state.to_string(),
                record: record.to_vec(),
            });
        }
        Ok(out)
    }
}

pub(crate) fn parse_level_key(table: &'static str, key: &str) -> Result<Level> {
    let level = Level::parse(key).map_err(|e| Error::Corrupt {
        table,
        key: key.to_string(),
        reason: e.to_string(),
    })?;
    // Keys are canonical: two spellings of one set would be two reservations of one level.
    if level.to_string() != key {
        return Err(Error::Corrupt {
            table,
            key: key.to_string(),
            reason: format!("not canonical (canonical form: {level})"),
        });
    }
    Ok(level)
}

pub(crate) fn decode_level(key: &str, value: &[u8]) -> Result<LevelReservation> {
    let level = parse_level_key("levels", key)?;
    let v: LevelValue = serde_json::from_slice(value).map_err(|e| Error::Corrupt {
        table: "levels",
        key: key.to_string(),
        reason: e.to_string(),
    })?;
    if v.owners.is_empty() {
        return Err(Error::Corrupt {
            table: "levels",
            key: key.to_string(),
            reason: "reservation without owners".into(),
        });
    }
    Ok(LevelReservation {
        level,
        kind: v.kind,
        shared: v.shared,
        owners: v.owners,
    })
}

/// Writes (or with `None`, deletes) a level's reservation and keeps the owner index in step.
pub(crate) fn set_level(txn: &WriteTransaction, key: &str, new: Option<&LevelValue>) -> Result<()> {
    let mut levels = txn.open_table(LEVELS)?;
    let mut owners = txn.open_table(LEVEL_OWNERS)?;
    let old = match levels.get(key)? {
        Some(v) => Some(decode_level(key, v.value())?.owners),
        None => None,
    };
    if let Some(old) = &old {
        for o in old {
            if new.is_none_or(|n| !n.owners.contains(o)) {
                owners.remove((o.as_str(), key))?;
            }
        }
    }
    match new {
        Some(n) => {
            let bytes = serde_json::to_vec(n).map_err(Error::Encode)?;
            levels.insert(key, bytes.as_slice())?;
            for o in &n.owners {
                owners.insert((o.as_str(), key), ())?;
            }
        }
        None => {
            levels.remove(key)?;
        }
    }
    Ok(())
}

/// Inserts a fresh single-owner dynamic reservation; refuses if the key exists, which would
/// mean the in-memory index and the database disagree.
pub(crate) fn insert_dynamic(
    levels: &mut redb::Table<'_, &str, &[u8]>,
    owners: &mut redb::Table<'_, (&str, &str), ()>,
    key: &str,
    owner: &str,
    value: &[u8],
) -> Result<()> {
    if levels.insert(key, value)?.is_some() {
        return Err(Error::Corrupt {
            table: "levels",
            key: key.to_string(),
            reason: "dynamic allocation of a level that is already reserved".into(),
        });
    }
    owners.insert((owner, key), ())?;
    Ok(())
}

impl Store {
    /// [`Store::lock_object`] for several objects (duplicates allowed), taken all at once:
    /// waits until none of them is held, then holds them all. A caller never holds some
    /// while waiting for others, so this cannot deadlock with other callers of either
    /// function. For a driver that records many objects in one transaction and then changes
    /// them.
    pub fn lock_objects(&self, keys: impl IntoIterator<Item = ObjectKey>) -> ObjectLocks<'_> {
        self.object_locks.lock_many(keys)
    }

    /// Locks one object against every other holder of this store in the process until the
    /// guard is dropped. Each transaction on a record is atomic, but "read the record,
    /// decide (am I its last user? is it recorded yet?), change the object, update the
    /// record" is not: two guests' stops releasing a shared object at once could each see
    /// the other as remaining user and leave it changed with no record, or a start could
    /// record a label a concurrent stop is about to restore. Drivers hold this lock around
    /// that whole sequence. One object at a time per caller (no nesting; several at once:
    /// [`Store::lock_objects`]), so it cannot deadlock; other objects are not blocked.
    pub fn lock_object(&self, key: ObjectKey) -> ObjectLock<'_> {
        self.object_locks.lock(key)
    }
}
