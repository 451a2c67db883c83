//! Per-guest uid/gid allocation (the jailer model: one distinct id per VM, used as both its
//! uid and its gid), persistent, never colliding with accounts of the system.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rand::rngs::StdRng;

use crate::error::{Error, Result};
use crate::pairs::FreeSet;
use crate::store::{IDS, Store, check_owner};

/// Largest id range accepted (the free set costs 8 bytes per id).
pub const MAX_ID_RANGE: u32 = 1 << 22;

/// Where ids come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdConfig {
    /// First id of the range.
    pub first: u32,
    /// Last id of the range (inclusive).
    pub last: u32,
    /// Root directory whose `etc/passwd`, `etc/group` (required) and `etc/subuid`,
    /// `etc/subgid` (optional) list the ids the system already uses. `/` in production, a
    /// temporary directory in tests. Read directly, not through NSS: ids served by LDAP or
    /// sssd are not seen, so choose a range those do not use.
    pub root: PathBuf,
}

/// Why a uid/gid range cannot be used on a host (see [`IdConfig::check_against_host`]).
#[derive(Debug, thiserror::Error)]
pub enum RangeConflict {
    /// An account (user or group) uses an id of the range.
    #[error(
        "uid range {first}-{last}: /{file} entry {name:?} uses id {id} (field {field}): choose a range no account uses"
    )]
    Account {
        /// The range.
        first: u32,
        /// The range's last id.
        last: u32,
        /// `etc/passwd` or `etc/group`.
        file: &'static str,
        /// The entry's name.
        name: String,
        /// The id.
        id: u64,
        /// Its field (1-based).
        field: usize,
    },
    /// A subordinate id block (`etc/subuid`, `etc/subgid`) overlaps the range.
    #[error(
        "uid range {first}-{last}: /{file} entry {line:?} delegates ids {from}-{to} to {name:?}: choose a range outside every subordinate id block"
    )]
    Subordinate {
        /// The range.
        first: u32,
        /// The range's last id.
        last: u32,
        /// `etc/subuid` or `etc/subgid`.
        file: &'static str,
        /// The line.
        line: String,
        /// The block's first id.
        from: u64,
        /// The block's last id.
        to: u64,
        /// Who it is delegated to.
        name: String,
    },
    /// An accounts file could not be read.
    #[error("read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl IdConfig {
    /// Checks the range against the host's accounts under `root`: no id of it may be a
    /// uid or gid in `etc/passwd` or a gid in `etc/group`, nor lie in a subordinate id
    /// block of `etc/subuid` or `etc/subgid` (rootless containers map those ids), or the
    /// allocator would give the guest that account's files (or the account the guest's).
    /// Missing `subuid`/`subgid` are fine; `passwd` and `group` must be readable.
    pub fn check_against_host(&self) -> std::result::Result<(), RangeConflict> {
        let (first, last) = (self.first, self.last);
        let overlap = |a: u64, b: u64| a <= u64::from(last) && b >= u64::from(first);
        for (file, fields) in [
            ("etc/passwd", &[2usize, 3][..]),
            ("etc/group", &[2usize][..]),
        ] {
            let path = self.root.join(file);
            let text = std::fs::read_to_string(&path)
                .map_err(|source| RangeConflict::Read { path, source })?;
            for line in text.lines() {
                let cols: Vec<&str> = line.split(':').collect();
                for &i in fields {
                    if let Some(id) = cols.get(i).and_then(|c| c.trim().parse::<u64>().ok())
                        && overlap(id, id)
                    {
                        return Err(RangeConflict::Account {
                            first,
                            last,
                            file,
                            name: cols[0].to_string(),
                            id,
                            field: i + 1,
                        });
                    }
                }
            }
        }
        for file in ["etc/subuid", "etc/subgid"] {
            let path = self.root.join(file);
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(RangeConflict::Read { path, source }),
            };
            for line in text.lines() {
                let cols: Vec<&str> = line.trim().split(':').collect();
                let (Some(from), Some(count)) = (
                    cols.get(1).and_then(|c| c.parse::<u64>().ok()),
                    cols.get(2).and_then(|c| c.parse::<u64>().ok()),
                ) else {
                    continue;
                };
                if count > 0 && overlap(from, from + count - 1) {
                    return Err(RangeConflict::Subordinate {
                        first,
                        last,
                        file,
                        line: line.trim().to_string(),
                        from,
                        to: from + count - 1,
                        name: cols[0].to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// First id of the default guest range: far above login users (1000–60000), systemd's
/// dynamic users (61184–65519) and the subordinate blocks `useradd` hands out from 100000
/// in steps of 65536 (300000–365535, the old default, overlapped the fourth block).
pub const DEFAULT_ID_FIRST: u32 = 2_000_000_000;
/// Last id (inclusive) of the default guest range.
pub const DEFAULT_ID_LAST: u32 = 2_000_065_535;

impl Default for IdConfig {
    /// [`DEFAULT_ID_FIRST`]..=[`DEFAULT_ID_LAST`] under `/`.
    fn default() -> Self {
        IdConfig {
            first: DEFAULT_ID_FIRST,
            last: DEFAULT_ID_LAST,
            root: PathBuf::from("/"),
        }
    }
}

/// One of the system files, with what identifies its current version.
type Stamp = Option<(u64, u64, i64, i64, u64)>;

struct IdState {
    free: FreeSet,
    rng: StdRng,
    owners: HashMap<u32, Arc<str>>,
    by_owner: HashMap<Arc<str>, u32>,
    /// Ids of the range the system uses, with the file naming them.
    system: HashMap<u32, &'static str>,
    stamps: Vec<Stamp>,
}

/// Allocates one id per guest from a configured range, skipping ids present in the system's
/// passwd/group (and subuid/subgid ranges), O(1) per allocation (no retry loop), committed to
/// the [`Store`] before it is returned.
pub struct IdAllocator {
    store: Arc<Store>,
    config: IdConfig,
    state: Mutex<IdState>,
    /// Allocations committed without fsync (see [`IdAllocator::with_deferred_commits`]).
    deferred: bool,
}

impl std::fmt::Debug for IdAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdAllocator")
            .field("config", &self.config)
            .finish()
    }
}

const FILES: [&str; 4] = ["etc/passwd", "etc/group", "etc/subuid", "etc/subgid"];

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl IdAllocator {
    /// Builds the allocator from the store's id reservations and the system files.
    pub fn open(store: Arc<Store>, config: IdConfig) -> Result<IdAllocator> {
        if config.last < config.first || config.last - config.first >= MAX_ID_RANGE {
            return Err(Error::Config(format!(
                "id range {}..={} must be non-empty and hold at most {MAX_ID_RANGE} ids",
                config.first, config.last
            )));
        }
        if config.first == 0 {
            return Err(Error::Config("id range must not include 0 (root)".into()));
        }
        let size = config.last - config.first + 1;
        let mut st = IdState {
            free: FreeSet::new(size, true),
            rng: rand::make_rng(),
            owners: HashMap::new(),
            by_owner: HashMap::new(),
            system: HashMap::new(),
            stamps: Vec::new(),
        };
        for (id, owner) in store.id_reservations()? {
            let owner: Arc<str> = Arc::from(owner.as_str());
            if let Some(off) = offset(&config, id) {
                st.free.remove(off);
            }
            st.by_owner.insert(owner.clone(), id);
            st.owners.insert(id, owner);
        }
        let alloc = IdAllocator {
            store,
            config,
            state: Mutex::new(st),
            deferred: false,
        };
        {
            let mut st = lock(&alloc.state);
            alloc.refresh_locked(&mut st, true)?;
        }
        Ok(alloc)
    }

    /// With `on`, [`Self::allocate`] and [`Self::reserve`] commit without an fsync of their
    /// own: the reservation is at once visible (and refused to others) in this process, and
    /// becomes durable with the store's next durable commit, whatever writes it. Releases
    /// stay durable.
    ///
    /// The caller's promise: the id is put to no use (no file chowned to it, no process run
    /// under it) before some durable commit of the store follows the allocation, e.g. the
    /// guest record written before the first change. A crash before that loses the
    /// reservation, and with it nothing, since nothing used the id. It saves one fsync per
    /// start (the svirt manager's choice); the default is durable before returning.
    pub fn with_deferred_commits(mut self, on: bool) -> Self {
        self.deferred = on;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &IdConfig {
        &self.config
    }

    /// Number of ids that can be handed out now.
    pub fn free(&self) -> u64 {
        lock(&self.state).free.len() as u64
    }

    /// Re-reads the system files if any changed since last read (accounts created after the
    /// daemon started must not be handed out). Called by [`Self::allocate`] and
    /// [`Self::reserve`]; cheap (four `stat`s) when nothing changed.
    pub fn refresh(&self) -> Result<()> {
        let mut st = lock(&self.state);
        self.refresh_locked(&mut st, false)
    }

    fn refresh_locked(&self, st: &mut IdState, force: bool) -> Result<()> {
        let stamps = FILES
            .iter()
            .map(|f| stamp(&self.config.root.join(f)))
            .collect::<Result<Vec<_>>>()?;
        if !force && stamps == st.stamps {
            return Ok(());
        }
        let system = self.read_system()?;
        // Apply the difference so the free set stays exact.
        let old: Vec<u32> = st.system.keys().copied().collect();
        for id in old {
            if !system.contains_key(&id)
                && !st.owners.contains_key(&id)
                && let Some(off) = offset(&self.config, id)
            {
                st.free.insert(off);
            }
        }
        for id in system.keys() {
            if let Some(off) = offset(&self.config, *id) {
                st.free.remove(off);
            }
        }
        st.system = system;
        st.stamps = stamps;
        Ok(())
    }

    fn read_system(&self) -> Result<HashMap<u32, &'static str>> {
        let mut out = HashMap::new();
        let in_range = |id: u32| (self.config.first..=self.config.last).contains(&id);
        let read = |rel: &str, required: bool| -> Result<String> {
            let path = self.config.root.join(rel);
            match fs::read_to_string(&path) {
                Ok(s) => Ok(s),
                Err(e) if !required && e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
                Err(source) => Err(Error::SystemDb { path, source }),
            }
        };
        let fields =
            |line: &str| -> Vec<String> { line.split(':').map(str::to_string).collect::<Vec<_>>() };
        for line in read("etc/passwd", true)?.lines() {
            let f = fields(line);
            // name:pw:uid:gid:...; a primary gid counts too, it may lack a group entry.
            for (i, name) in [(2, "etc/passwd (uid)"), (3, "etc/passwd (gid)")] {
                if let Some(id) = f.get(i).and_then(|s| s.trim().parse::<u32>().ok())
                    && in_range(id)
                {
                    out.insert(id, name);
                }
            }
        }
        for line in read("etc/group", true)?.lines() {
            let f = fields(line);
            if let Some(id) = f.get(2).and_then(|s| s.trim().parse::<u32>().ok())
                && in_range(id)
            {
                out.entry(id).or_insert("etc/group");
            }
        }
        for (file, name) in [("etc/subuid", "etc/subuid"), ("etc/subgid", "etc/subgid")] {
            for line in read(file, false)?.lines() {
                // owner:start:count — a rootless container maps its ids onto this range.
                let f = fields(line);
                let (Some(start), Some(count)) = (
                    f.get(1).and_then(|s| s.trim().parse::<u64>().ok()),
                    f.get(2).and_then(|s| s.trim().parse::<u64>().ok()),
                ) else {
                    continue;
                };
                let lo = start.max(u64::from(self.config.first));
                let hi = (start + count)
                    .saturating_sub(1)
                    .min(u64::from(self.config.last));
                for id in lo..=hi {
                    // within [first, last] ⊆ u32
                    out.entry(id as u32).or_insert(name);
                }
            }
        }
        Ok(out)
    }

    /// The id `owner` holds, or a new one (used as both uid and gid), durable before it is
    /// returned (unless [`Self::with_deferred_commits`]). Idempotent: a guest holds at most one id.
    pub fn allocate(&self, owner: &str) -> Result<u32> {
        check_owner(owner)?;
        let mut st = lock(&self.state);
        if let Some(id) = st.by_owner.get(owner) {
            return Ok(*id);
        }
        self.refresh_locked(&mut st, false)?;
        let st = &mut *st;
        let Some(off) = st.free.take_random(&mut st.rng) else {
            let size = u64::from(self.config.last - self.config.first) + 1;
            return Err(Error::IdsExhausted {
                first: self.config.first,
                last: self.config.last,
                capacity: size - st.system.len() as u64,
                system: st.system.len() as u64,
            });
        };
        let id = self.config.first + off;
        // The store is written under the state lock: ids are rare, and this keeps memory and
        // file in the same order without a second protocol.
        let res = self.store.write_maybe_deferred(!self.deferred, |txn| {
            let mut t = txn.open_table(IDS)?;
            if t.insert(id, owner)?.is_some() {
                return Err(Error::Corrupt {
                    table: "ids",
                    key: id.to_string(),
                    reason: "allocation of an id that is already reserved".into(),
                });
            }
            Ok(())
        });
        if let Err(e) = res {
            st.free.insert(off);
            return Err(e);
        }
        let owner: Arc<str> = Arc::from(owner);
        st.owners.insert(id, owner.clone());
        st.by_owner.insert(owner, id);
        Ok(id)
    }

    /// Reserves a specific id for `owner` (a configuration naming its uid). Refused if another
    /// owner holds it or the system uses it. Ids outside the range are refused too, since the
    /// range is the only part of the id space known to be free of accounts.
    pub fn reserve(&self, id: u32, owner: &str) -> Result<()> {
        check_owner(owner)?;
        let Some(off) = offset(&self.config, id) else {
            return Err(Error::IdOutOfRange {
                id,
                first: self.config.first,
                last: self.config.last,
            });
        };
        let mut st = lock(&self.state);
        match st.owners.get(&id) {
            Some(o) if &**o == owner => return Ok(()),
            Some(o) => {
                return Err(Error::IdInUse {
                    id,
                    owner: o.to_string(),
                });
            }
            None => {}
        }
        if let Some(other) = st.by_owner.get(owner) {
            return Err(Error::IdInUse {
                id: *other,
                owner: format!("{owner} (which already holds {other}; one id per guest)"),
            });
        }
        self.refresh_locked(&mut st, false)?;
        if let Some(f) = st.system.get(&id) {
            return Err(Error::IdIsSystem {
                id,
                source_file: f.to_string(),
            });
        }
        self.store.write_maybe_deferred(!self.deferred, |txn| {
            txn.open_table(IDS)?.insert(id, owner)?;
            Ok(())
        })?;
        st.free.remove(off);
        let owner: Arc<str> = Arc::from(owner);
        st.owners.insert(id, owner.clone());
        st.by_owner.insert(owner, id);
        Ok(())
    }

    /// Releases `owner`'s id; durable before it returns.
    pub fn release(&self, id: u32, owner: &str) -> Result<()> {
        let mut st = lock(&self.state);
        if st.owners.get(&id).map(|o| &**o) != Some(owner) {
            return Err(Error::NotOwner {
                what: format!("uid/gid {id}"),
                owner: owner.to_string(),
            });
        }
        self.store.write(|txn| {
            txn.open_table(IDS)?.remove(id)?;
            Ok(())
        })?;
        st.owners.remove(&id);
        st.by_owner.remove(owner);
        if !st.system.contains_key(&id)
            && let Some(off) = offset(&self.config, id)
        {
            st.free.insert(off);
        }
        Ok(())
    }

    /// The id an owner holds.
    pub fn id_of(&self, owner: &str) -> Option<u32> {
        lock(&self.state).by_owner.get(owner).copied()
    }

    /// The owner of an id.
    pub fn owner_of(&self, id: u32) -> Option<String> {
        lock(&self.state).owners.get(&id).map(|o| o.to_string())
    }

    /// Ids of the range that the system files list.
    pub fn system_ids(&self) -> HashSet<u32> {
        lock(&self.state).system.keys().copied().collect()
    }
}

fn offset(config: &IdConfig, id: u32) -> Option<u32> {
    (config.first..=config.last)
        .contains(&id)
        .then(|| id - config.first)
}

fn stamp(path: &Path) -> Result<Stamp> {
    match fs::metadata(path) {
        Ok(m) => Ok(Some((
            m.dev(),
            m.ino(),
            m.mtime(),
            m.mtime_nsec(),
            m.size(),
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::SystemDb {
            path: path.to_path_buf(),
            source,
        }),
    }
}
