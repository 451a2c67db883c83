//! The MCS level allocator: unique `s0:cA,cB` levels, static reservations, group commit.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};

use rand::rngs::StdRng;
use svirt_labels::{CategorySet, Level, MAX_CATEGORIES, MlsRange};

use crate::error::{Error, Result};
use crate::pairs::{PairIndex, pair_count, pair_from_index, pair_index};
use crate::store::{
    LEVEL_OWNERS, LEVELS, LevelReservation, LevelValue, ReservationKind, Store, check_owner,
    insert_dynamic, set_level,
};

/// Which levels the allocator hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocatorConfig {
    /// Sensitivity of every allocated level (the low sensitivity of the manager's range).
    pub sensitivity: u16,
    /// Categories pairs are drawn from (the high categories of the manager's range).
    pub categories: CategorySet,
    /// Categories never handed out (reserved for other uses), even inside `categories`.
    pub excluded: CategorySet,
}

impl Default for AllocatorConfig {
    /// `s0`, `c0.c1023`, nothing excluded: what a manager without an MLS range uses.
    fn default() -> Self {
        AllocatorConfig {
            sensitivity: 0,
            categories: CategorySet::range(0, MAX_CATEGORIES - 1),
            excluded: CategorySet::EMPTY,
        }
    }
}

impl AllocatorConfig {
    /// From the manager's own range (`s0-s0:c0.c1023`): the low sensitivity and the high
    /// categories.
    pub fn from_range(range: &MlsRange) -> Self {
        AllocatorConfig {
            sensitivity: range.low.sensitivity,
            categories: range.high.categories,
            excluded: CategorySet::EMPTY,
        }
    }

    /// Categories `c{first}..c{last}` at `s0`.
    pub fn with_categories(first: u16, last: u16) -> Self {
        AllocatorConfig {
            categories: CategorySet::range(first, last),
            ..Self::default()
        }
    }

    /// The same config with `excluded` left out.
    pub fn excluding(mut self, excluded: CategorySet) -> Self {
        self.excluded = excluded;
        self
    }

    /// The range as a level, e.g. `s0:c0.c1023`.
    pub fn range_string(&self) -> String {
        Level {
            sensitivity: self.sensitivity,
            categories: self.categories,
        }
        .to_string()
    }

    /// The categories actually used: `categories` minus `excluded`, ascending.
    pub fn usable_categories(&self) -> Vec<u16> {
        self.categories
            .iter()
            .filter(|c| !self.excluded.contains(*c))
            .collect()
    }

    /// Number of distinct pairs that can be handed out.
    pub fn capacity(&self) -> u64 {
        // usable ≤ 1024 categories.
        pair_count(self.usable_categories().len() as u32)
    }
}

/// Counts describing the allocator's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocatorStats {
    /// Distinct pairs in the configured range (excluded categories left out).
    pub capacity: u64,
    /// Pairs that can be handed out now.
    pub free: u64,
    /// Pairs held by dynamic allocations (including ones being committed).
    pub allocated: u64,
    /// Pairs neither allocated nor free: blocked by static levels.
    pub blocked: u64,
    /// Static reservations.
    pub static_levels: u64,
}

/// A batch member waiting for the group commit.
struct Pending {
    pairs: Vec<u32>,
    keys: Vec<String>,
    owner: Arc<str>,
    value: Vec<u8>,
    done: mpsc::SyncSender<Msg>,
}

/// What a queued allocation hears back.
enum Msg {
    /// Its batch committed (or failed and was rolled back).
    Done(Result<()>),
    /// The previous leader finished: this request's thread commits the next batch.
    Lead,
}

/// The group-commit queue.
#[derive(Default)]
struct Queue {
    items: Vec<Pending>,
    /// Whether some thread is (or has been told to become) the committing leader.
    leader: bool,
}

struct State {
    index: PairIndex,
    rng: StdRng,
    /// Pair → owner of every dynamic allocation inside the index.
    dynamic: HashMap<u32, Arc<str>>,
    /// Pairs handed to a batch whose commit has not finished.
    tentative: HashSet<u32>,
    /// Static reservations, and dynamic ones outside the current index (config changed).
    others: HashMap<Level, LevelReservation>,
}

/// Hands out unique MCS levels and keeps static reservations, backed by the [`Store`].
///
/// - A dynamic level is a pair of distinct categories chosen uniformly at random among the FREE
///   pairs, in O(1) whatever the occupancy (see [`crate::pairs`]); a full range is an immediate
///   [`Error::Exhausted`].
/// - A static reservation of level S blocks every pair P comparable with S under dominance
///   (P ⊆ cats(S) when sens(S) ≥ the allocator's sensitivity, or cats(S) ⊆ P when S has at
///   least one category and the allocator's sensitivity ≥ sens(S)): a dynamic guest at such a
///   P could read the static guest's files or the other way round. Blocks are counted per pair,
///   so releasing restores exactly. A static level without categories (`s0`) blocks nothing:
///   it is readable by every guest by design, like shared content.
/// - Nothing is returned before it is durable (unless [`LevelAllocator::with_deferred_commits`]:
///   then before it is committed, durable with the store's next durable commit).
///   Concurrent allocations are batched into one transaction by whichever caller finds no
///   commit running (group commit).
pub struct LevelAllocator {
    store: Arc<Store>,
    config: AllocatorConfig,
    /// Local index → category.
    cats: Vec<u16>,
    /// Category → local index (u16::MAX: not usable).
    local: Vec<u16>,
    capacity: u64,
    state: Mutex<State>,
    queue: Mutex<Queue>,
    /// Held by whoever writes the levels table: the group-commit leader, or a static
    /// reservation or release.
    writer: Mutex<()>,
    /// Reservations committed without fsync (see [`LevelAllocator::with_deferred_commits`]).
    deferred: bool,
}

impl std::fmt::Debug for LevelAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LevelAllocator")
            .field("range", &self.config.range_string())
            .field("capacity", &self.capacity)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not make every later allocation fail; the state is only mutated
    // in short sections that do not panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

const NOT_USABLE: u16 = u16::MAX;

impl LevelAllocator {
    /// Builds the allocator from every reservation in the store.
    pub fn open(store: Arc<Store>, config: AllocatorConfig) -> Result<LevelAllocator> {
        let cats = config.usable_categories();
        if cats.len() < 2 {
            return Err(Error::Config(format!(
                "range {} with excluded categories {} leaves {} usable categories; a pair needs 2",
                config.range_string(),
                display_set(&config.excluded),
                cats.len()
            )));
        }
        let mut local = vec![NOT_USABLE; usize::from(MAX_CATEGORIES)];
        for (i, c) in cats.iter().enumerate() {
            // i < 1024
            local[usize::from(*c)] = i as u16;
        }
        let capacity = pair_count(cats.len() as u32);
        let alloc = LevelAllocator {
            store,
            state: Mutex::new(State {
                index: PairIndex::new(cats.len() as u32),
                rng: rand::make_rng(),
                dynamic: HashMap::new(),
                tentative: HashSet::new(),
                others: HashMap::new(),
            }),
            config,
            cats,
            local,
            capacity,
            queue: Mutex::new(Queue::default()),
            writer: Mutex::new(()),
            deferred: false,
        };
        alloc.rebuild()?;
        Ok(alloc)
    }

    /// With `on`, allocations and static reservations commit without an fsync of their own
    /// (releases stay durable); each becomes durable with the store's next durable commit.
    /// Same promise as [`crate::IdAllocator::with_deferred_commits`]: the caller uses the
    /// level for nothing (no file labeled, no process run at it) before a durable commit of
    /// the store follows; a crash before that loses a reservation nothing used.
    pub fn with_deferred_commits(mut self, on: bool) -> Self {
        self.deferred = on;
        self
    }

    fn rebuild(&self) -> Result<()> {
        let records = self.store.level_reservations()?;
        let mut st = lock(&self.state);
        for r in records {
            match (r.kind, self.pair_of(&r.level)) {
                (ReservationKind::Dynamic, Some(i)) => {
                    let owner = r.owners.iter().next().map(|o| Arc::from(o.as_str()));
                    if r.owners.len() != 1 || !st.index.mark_allocated(i) {
                        return Err(Error::Corrupt {
                            table: "levels",
                            key: r.level.to_string(),
                            reason: "dynamic level with several owners or recorded twice".into(),
                        });
                    }
                    if let Some(o) = owner {
                        st.dynamic.insert(i, o);
                    }
                }
                (ReservationKind::Static, _) => {
                    for p in self.comparable_pairs(&r.level) {
                        st.index.block(p);
                    }
                    st.others.insert(r.level, r);
                }
                (ReservationKind::Dynamic, None) => {
                    st.others.insert(r.level, r);
                }
            }
        }
        Ok(())
    }

    /// The configuration.
    pub fn config(&self) -> &AllocatorConfig {
        &self.config
    }

    /// The store behind the allocator.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Number of distinct pairs of the range.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Current counts.
    pub fn stats(&self) -> AllocatorStats {
        let st = lock(&self.state);
        let free = st.index.free_len() as u64;
        let allocated = st.dynamic.len() as u64;
        AllocatorStats {
            capacity: self.capacity,
            free,
            allocated,
            blocked: self.capacity - free - allocated,
            static_levels: st
                .others
                .values()
                .filter(|r| r.kind == ReservationKind::Static)
                .count() as u64,
        }
    }

    /// The pair index of a level, if it is a pair of this allocator's range.
    fn pair_of(&self, level: &Level) -> Option<u32> {
        if level.sensitivity != self.config.sensitivity || level.categories.len() != 2 {
            return None;
        }
        let mut it = level.categories.iter();
        let (a, b) = (it.next()?, it.next()?);
        let (la, lb) = (self.local_of(a)?, self.local_of(b)?);
        Some(pair_index(u32::from(la), u32::from(lb)))
    }

    fn local_of(&self, c: u16) -> Option<u16> {
        self.local
            .get(usize::from(c))
            .copied()
            .filter(|l| *l != NOT_USABLE)
    }

    fn level_of(&self, i: u32) -> Level {
        let (a, b) = pair_from_index(i);
        Level::pair(
            self.config.sensitivity,
            self.cats[a as usize],
            self.cats[b as usize],
        )
    }

    /// The pairs of the index comparable with `s` under dominance (see the type's docs).
    fn comparable_pairs(&self, s: &Level) -> Vec<u32> {
        let sens = self.config.sensitivity;
        let local: Vec<u32> = s
            .categories
            .iter()
            .filter_map(|c| self.local_of(c))
            .map(u32::from)
            .collect();
        let mut out = Vec::new();
        // P ⊆ cats(S): S dominates P.
        if s.sensitivity >= sens {
            for (j, &b) in local.iter().enumerate() {
                for &a in &local[..j] {
                    out.push(pair_index(a, b));
                }
            }
        }
        // cats(S) ⊆ P: P dominates S. Only a 1- or 2-category S fits in a pair, and only if all
        // its categories are usable ones.
        let n = s.categories.len();
        if sens >= s.sensitivity && n == local.len() {
            match local.as_slice() {
                [c] => {
                    let m = self.cats.len() as u32;
                    for x in (0..m).filter(|x| x != c) {
                        out.push(pair_index((*c).min(x), (*c).max(x)));
                    }
                }
                [a, b] if s.sensitivity < sens => out.push(pair_index(*a, *b)),
                _ => {}
            }
        }
        out
    }

    fn exhausted(&self, st: &State) -> Error {
        let allocated = st.dynamic.len() as u64;
        Error::Exhausted {
            range: self.config.range_string(),
            capacity: self.capacity,
            allocated,
            blocked: self.capacity - allocated - st.index.free_len() as u64,
            excluded: display_set(&self.config.excluded),
        }
    }

    /// Allocates one level for `owner`, durable before it is returned.
    pub fn allocate(&self, owner: &str) -> Result<Level> {
        let mut v = self.allocate_many(owner, 1)?;
        v.pop()
            .ok_or_else(|| Error::Config("empty allocation".into()))
    }

    /// Allocates `n` distinct levels for `owner` in one transaction (all or none).
    pub fn allocate_many(&self, owner: &str, n: usize) -> Result<Vec<Level>> {
        check_owner(owner)?;
        if n == 0 {
            return Ok(Vec::new());
        }
        let owner: Arc<str> = Arc::from(owner);
        let pairs = {
            let mut st = lock(&self.state);
            let free = st.index.free_len();
            if free == 0 {
                return Err(self.exhausted(&st));
            }
            if free < n {
                return Err(Error::NotEnoughFree {
                    range: self.config.range_string(),
                    requested: n,
                    free: free as u64,
                    capacity: self.capacity,
                });
            }
            let st = &mut *st;
            let mut pairs = Vec::with_capacity(n);
            for _ in 0..n {
                let Some(i) = st.index.take_random(&mut st.rng) else {
                    break; // unreachable: free ≥ n was checked under the same lock
                };
                st.dynamic.insert(i, owner.clone());
                st.tentative.insert(i);
                pairs.push(i);
            }
            pairs
        };
        let levels: Vec<Level> = pairs.iter().map(|&i| self.level_of(i)).collect();
        let value = serde_json::to_vec(&LevelValue {
            kind: ReservationKind::Dynamic,
            shared: false,
            owners: BTreeSet::from([owner.to_string()]),
        })
        .map_err(Error::Encode);
        let value = match value {
            Ok(v) => v,
            Err(e) => {
                self.rollback(&pairs);
                return Err(e);
            }
        };
        let (tx, rx) = mpsc::sync_channel(1);
        let pending = Pending {
            keys: levels.iter().map(Level::to_string).collect(),
            pairs,
            owner,
            value,
            done: tx,
        };
        let leader_running = {
            let mut q = lock(&self.queue);
            q.items.push(pending);
            std::mem::replace(&mut q.leader, true)
        };
        if leader_running {
            match rx.recv() {
                Ok(Msg::Done(r)) => return r.map(|()| levels),
                Ok(Msg::Lead) => {}
                Err(_) => return Err(Error::Config("group commit leader vanished".into())),
            }
        }
        self.lead_one_batch();
        match rx.try_recv() {
            Ok(Msg::Done(r)) => r.map(|()| levels),
            _ => Err(Error::Config("own request missing from its batch".into())),
        }
    }

    /// Group commit. Exactly one thread at a time is the leader: it drains the whole queue
    /// (its own request included) into one durable transaction, answers every request of the
    /// batch, then hands leadership to the first request queued meanwhile (or clears it). So
    /// every thread commits at most one batch, followers sleep on their own channel, and
    /// whatever arrives during a commit (fsync) goes into the next one.
    fn lead_one_batch(&self) {
        let batch = std::mem::take(&mut lock(&self.queue).items);
        let res = {
            let _w = lock(&self.writer);
            self.store.write_maybe_deferred(!self.deferred, |txn| {
                let mut levels = txn.open_table(LEVELS)?;
                let mut owners = txn.open_table(LEVEL_OWNERS)?;
                for p in &batch {
                    for k in &p.keys {
                        insert_dynamic(&mut levels, &mut owners, k, &p.owner, &p.value)?;
                    }
                }
                Ok(())
            })
        };
        {
            let mut st = lock(&self.state);
            for p in &batch {
                for i in &p.pairs {
                    st.tentative.remove(i);
                    if res.is_err() {
                        st.dynamic.remove(i);
                        st.index.release(*i);
                    }
                }
            }
        }
        let shared = res.err().map(Arc::new);
        for p in batch {
            let r = match &shared {
                None => Ok(()),
                Some(e) => Err(Error::GroupCommit(e.clone())),
            };
            // Every receiver lives until it hears back (buffer of one: never blocks).
            let _ = p.done.send(Msg::Done(r));
        }
        let mut q = lock(&self.queue);
        match q.items.first() {
            Some(next) => {
                let _ = next.done.send(Msg::Lead);
            }
            None => q.leader = false,
        }
    }

    fn rollback(&self, pairs: &[u32]) {
        let mut st = lock(&self.state);
        for i in pairs {
            st.tentative.remove(i);
            st.dynamic.remove(i);
            st.index.release(*i);
        }
    }

    /// The reservation of `level` as the allocator sees it (including commits in progress).
    pub fn reservation(&self, level: &Level) -> Option<LevelReservation> {
        let st = lock(&self.state);
        self.reservation_locked(&st, level)
    }

    fn reservation_locked(&self, st: &State, level: &Level) -> Option<LevelReservation> {
        if let Some(i) = self.pair_of(level)
            && let Some(o) = st.dynamic.get(&i)
        {
            return Some(LevelReservation {
                level: *level,
                kind: ReservationKind::Dynamic,
                shared: false,
                owners: BTreeSet::from([o.to_string()]),
            });
        }
        st.others.get(level).cloned()
    }

    /// Reserves a static level for `owner`. A level held by another owner is refused with
    /// [`Error::LevelInUse`] naming the owner(s), unless both the existing reservation and this
    /// request are `shared` (the level is then reference counted by its owners). Reserving a
    /// level the owner already holds returns the existing reservation unchanged. A new static
    /// level comparable with a pair a dynamic guest holds is refused with
    /// [`Error::DominanceConflict`]. Durable before it returns.
    pub fn reserve(&self, level: &Level, owner: &str, shared: bool) -> Result<LevelReservation> {
        check_owner(owner)?;
        let _w = lock(&self.writer);
        let key = level.to_string();
        // Decide and apply in memory first, so that concurrent allocations already avoid the
        // blocked pairs while the transaction commits; undone if the commit fails.
        let (new, blocked) = {
            let mut st = lock(&self.state);
            match self.reservation_locked(&st, level) {
                Some(r) if r.owners.contains(owner) => return Ok(r),
                Some(mut r) if r.shared && shared && r.kind == ReservationKind::Static => {
                    r.owners.insert(owner.to_string());
                    st.others.insert(*level, r.clone());
                    (r, Vec::new())
                }
                Some(r) => {
                    return Err(Error::LevelInUse {
                        level: key,
                        owners: r.owners.into_iter().collect(),
                        shared: r.shared,
                        kind: r.kind.as_str(),
                    });
                }
                None => {
                    let pairs = self.comparable_pairs(level);
                    for p in &pairs {
                        if let Some(o) = st.dynamic.get(p)
                            && &**o != owner
                        {
                            return Err(Error::DominanceConflict {
                                level: key,
                                dynamic: self.level_of(*p).to_string(),
                                owner: o.to_string(),
                            });
                        }
                    }
                    for p in &pairs {
                        st.index.block(*p);
                    }
                    let r = LevelReservation {
                        level: *level,
                        kind: ReservationKind::Static,
                        shared,
                        owners: BTreeSet::from([owner.to_string()]),
                    };
                    st.others.insert(*level, r.clone());
                    (r, pairs)
                }
            }
        };
        let res = self.store.write_maybe_deferred(!self.deferred, |txn| {
            set_level(txn, &key, Some(&new.value()))
        });
        if let Err(e) = res {
            let mut st = lock(&self.state);
            let mut prev = new.clone();
            prev.owners.remove(owner);
            if prev.owners.is_empty() {
                st.others.remove(level);
            } else {
                st.others.insert(*level, prev);
            }
            for p in blocked {
                st.index.unblock(p);
            }
            return Err(e);
        }
        Ok(new)
    }

    /// Releases `owner`'s hold on `level` (static or dynamic). The level becomes free (and a
    /// static level's blocks are lifted) when its last owner releases it. Durable before it
    /// returns; [`Error::NotOwner`] if `owner` does not hold it.
    pub fn release(&self, level: &Level, owner: &str) -> Result<()> {
        let _w = lock(&self.writer);
        let key = level.to_string();
        let not_owner = || Error::NotOwner {
            what: format!("level {key}"),
            owner: owner.to_string(),
        };
        let current = {
            let st = lock(&self.state);
            if let Some(i) = self.pair_of(level)
                && st.tentative.contains(&i)
            {
                // Not yet handed out to anyone: nobody can be releasing it legitimately.
                return Err(not_owner());
            }
            self.reservation_locked(&st, level).ok_or_else(not_owner)?
        };
        if !current.owners.contains(owner) {
            return Err(not_owner());
        }
        let mut next = current.clone();
        next.owners.remove(owner);
        let last = next.owners.is_empty();
        // Database first: a pair must never be free in memory while the file still holds it.
        self.store
            .write(|txn| set_level(txn, &key, (!last).then(|| next.value()).as_ref()))?;
        let mut st = lock(&self.state);
        match (current.kind, self.pair_of(level)) {
            (ReservationKind::Dynamic, Some(i)) if st.dynamic.contains_key(&i) => {
                st.dynamic.remove(&i);
                st.index.release(i);
            }
            (kind, _) => {
                if last {
                    st.others.remove(level);
                    if kind == ReservationKind::Static {
                        for p in self.comparable_pairs(level) {
                            st.index.unblock(p);
                        }
                    }
                } else {
                    st.others.insert(*level, next);
                }
            }
        }
        Ok(())
    }

    /// Releases everything `owner` holds (a guest undefined or cleaned up after a crash);
    /// returns the levels released.
    pub fn release_all(&self, owner: &str) -> Result<Vec<Level>> {
        let levels = self.store.levels_of(owner)?;
        for l in &levels {
            self.release(l, owner)?;
        }
        Ok(levels)
    }

    /// Compares the in-memory index with the database (diagnostics and tests): every record
    /// is reflected exactly, and nothing else is held.
    pub fn check_consistency(&self) -> std::result::Result<(), String> {
        let _w = lock(&self.writer);
        let records = self.store.level_reservations().map_err(|e| e.to_string())?;
        let st = lock(&self.state);
        if !st.tentative.is_empty() {
            return Err(format!("{} tentative pairs", st.tentative.len()));
        }
        let mut expect_blocks: HashMap<u32, u32> = HashMap::new();
        let mut dynamic_in_db = 0usize;
        for r in &records {
            match (r.kind, self.pair_of(&r.level)) {
                (ReservationKind::Dynamic, Some(i)) => {
                    dynamic_in_db += 1;
                    let owner = r.owners.iter().next().map(String::as_str);
                    if st.dynamic.get(&i).map(|o| &**o) != owner || !st.index.is_allocated(i) {
                        return Err(format!("{} not allocated in memory", r.level));
                    }
                }
                (kind, _) => {
                    if st.others.get(&r.level) != Some(r) {
                        return Err(format!("{} differs in memory", r.level));
                    }
                    if kind == ReservationKind::Static {
                        for p in self.comparable_pairs(&r.level) {
                            *expect_blocks.entry(p).or_default() += 1;
                        }
                    }
                }
            }
        }
        if dynamic_in_db != st.dynamic.len() {
            return Err(format!(
                "{} dynamic records in the database, {} in memory",
                dynamic_in_db,
                st.dynamic.len()
            ));
        }
        if st.others.len() + dynamic_in_db != records.len() {
            return Err("extra reservations in memory".into());
        }
        for i in 0..st.index.capacity() {
            let b = expect_blocks.get(&i).copied().unwrap_or(0);
            if st.index.blocks(i) != b {
                return Err(format!(
                    "{}: {} blocks in memory, {} expected",
                    self.level_of(i),
                    st.index.blocks(i),
                    b
                ));
            }
        }
        st.index.check()
    }
}

fn display_set(s: &CategorySet) -> String {
    if s.is_empty() {
        "none".into()
    } else {
        s.to_string()
    }
}
