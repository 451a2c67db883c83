use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Everything the store and the allocators can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The state directory could not be created or secured.
    #[error("cannot prepare state directory {path}: {source}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Another process (another daemon or a tool) has the database open for writing.
    #[error(
        "database {path} is already open in another process (only one writer may hold it at a time)"
    )]
    AlreadyOpen {
        /// The database file.
        path: PathBuf,
    },
    /// The database file could not be opened.
    #[error("cannot open database {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// Why.
        #[source]
        source: redb::DatabaseError,
    },
    /// The database was written by a newer svirt with a schema we do not know.
    #[error("database schema version {found} is newer than the supported version {supported}")]
    Schema {
        /// Version found in the file.
        found: u64,
        /// Highest version this build understands.
        supported: u64,
    },
    /// A redb operation failed (I/O, corruption detected by redb, ...).
    #[error("database error: {0}")]
    Db(#[source] Arc<redb::Error>),
    /// A record could not be decoded, or violates an invariant of its table.
    #[error("corrupt record in table `{table}` at key {key}: {reason}")]
    Corrupt {
        /// Table name.
        table: &'static str,
        /// The key, printed.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A record could not be encoded.
    #[error("cannot encode record: {0}")]
    Encode(#[source] serde_json::Error),
    /// The durable commit of a batch of allocations failed; every allocation in the batch was
    /// rolled back and none of them was handed out.
    #[error("group commit failed: {0}")]
    GroupCommit(#[source] Arc<Error>),

    /// The allocator configuration is unusable.
    #[error("invalid allocator configuration: {0}")]
    Config(String),
    /// An owner name was empty or too long.
    #[error("invalid owner name {0:?}: must be 1..=255 bytes")]
    BadOwner(String),
    /// No free category pair is left in the configured range.
    #[error(
        "no free MCS level: the category range {range} is full (capacity {capacity} pairs: \
         {allocated} allocated, {blocked} blocked by static levels; excluded categories: {excluded})"
    )]
    Exhausted {
        /// The configured range, e.g. `s0:c0.c10`.
        range: String,
        /// Number of distinct pairs the range holds, excluded categories left out.
        capacity: u64,
        /// Pairs held by dynamic allocations.
        allocated: u64,
        /// Pairs not allocated but unusable because a static level blocks them.
        blocked: u64,
        /// The excluded categories, or `none`.
        excluded: String,
    },
    /// More levels were requested at once than are free.
    #[error(
        "cannot allocate {requested} MCS levels: only {free} of {capacity} pairs in {range} are free"
    )]
    NotEnoughFree {
        /// The configured range.
        range: String,
        /// Number requested.
        requested: usize,
        /// Number free.
        free: u64,
        /// Capacity of the range.
        capacity: u64,
    },
    /// The level is reserved by someone else and cannot be taken (not shared on both sides).
    #[error("level {level} is already reserved ({kind}{shared}) by {owners}", shared = if *.shared { ", shared" } else { "" }, owners = .owners.join(", "))]
    LevelInUse {
        /// The level asked for.
        level: String,
        /// The current owners.
        owners: Vec<String>,
        /// Whether the existing reservation is shared.
        shared: bool,
        /// `static` or `dynamic`.
        kind: &'static str,
    },
    /// A static level would be comparable (under dominance) with a level a dynamic guest holds:
    /// one guest could read the other's files.
    #[error(
        "static level {level} is comparable with dynamic level {dynamic} held by {owner}: \
         one of the two guests could access the other's resources"
    )]
    DominanceConflict {
        /// The static level asked for.
        level: String,
        /// The dynamic level in the way.
        dynamic: String,
        /// Its owner.
        owner: String,
    },
    /// An object cannot be used as asked: another live guest's use of it conflicts
    /// (a private read-write object is one guest's alone).
    #[error("{path}: refused: {rule} (in use by guest {other})", path = .path.display())]
    Claimed {
        /// The object.
        path: PathBuf,
        /// The other guest.
        other: String,
        /// The rule, in words.
        rule: String,
    },
    /// A release named a level or id the owner does not hold.
    #[error("{what} is not held by {owner}")]
    NotOwner {
        /// The level or id, printed.
        what: String,
        /// The owner that asked.
        owner: String,
    },

    /// No free id is left in the configured uid/gid range.
    #[error(
        "no free uid/gid: the range {first}..={last} is full ({capacity} usable ids, {system} taken by \
         passwd/group/subuid/subgid entries)"
    )]
    IdsExhausted {
        /// First id of the range.
        first: u32,
        /// Last id of the range.
        last: u32,
        /// Ids of the range usable by guests (range minus system ids).
        capacity: u64,
        /// Ids of the range present in the system databases.
        system: u64,
    },
    /// The id is reserved by another owner.
    #[error("uid/gid {id} is already reserved by {owner}")]
    IdInUse {
        /// The id.
        id: u32,
        /// Its owner.
        owner: String,
    },
    /// The id is used by the system (a passwd/group entry or a subordinate id range).
    #[error("uid/gid {id} is used by the system ({source_file})")]
    IdIsSystem {
        /// The id.
        id: u32,
        /// Which file lists it.
        source_file: String,
    },
    /// The id lies outside the configured range.
    #[error("uid/gid {id} is outside the configured range {first}..={last}")]
    IdOutOfRange {
        /// The id.
        id: u32,
        /// First id of the range.
        first: u32,
        /// Last id of the range.
        last: u32,
    },
    /// A system account database could not be read.
    #[error("cannot read {path}: {source}")]
    SystemDb {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Result with the store's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Db(Arc::new(e.into()))
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
