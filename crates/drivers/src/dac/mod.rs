//! DAC: a distinct uid and gid per guest, the VMM run under them with no capabilities, and
//! the guest's resources owned or made readable accordingly.
//!
//! The reference runs every guest under one shared uid, so without a MAC layer guests can
//! open each other's disks. Here each guest gets its own id (used as uid and gid, the
//! Firecracker jailer model) from the store's [`IdAllocator`], which is persistent, skips
//! every id the system's `passwd`/`group` (and `subuid`/`subgid`) use, and commits before it
//! returns.
//!
//! Objects are changed through `O_PATH` fds opened without following any symlink
//! ([`svirt_hostfs`]); the original owner, group and mode are committed to the store before
//! the first change, reference counted per guest, and restored when the last user stops:
//! restored first, released after (a crash in between keeps the record), under the store's
//! per-object lock ([`Store::lock_object`], shared with the relabel engine), on which guests
//! starting and stopping on the same object take turns.
//!
//! Device nodes the VMM needs but cannot open by their mode (`/dev/kvm` is `root:root 0600`
//! on some hosts) get one POSIX ACL entry granting the device group (`kvm` from the
//! accounts' `etc/group`) read-write, written as the `system.posix_acl_access` xattr through
//! the fd; the VMM gets that group as a supplementary group. The ACL is shared by all guests
//! (one group entry, not one per uid) and removed when the last guest using it stops.
//!
//! The child hook (between fork and exec, system calls only): drop the capability bounding
//! set, clear ambient capabilities, lock the securebits, `setgroups`, `setresgid`,
//! `setresuid`, `capset` to zero, `PR_SET_NO_NEW_PRIVS`, then check the ids took.
//!
//! Files: this one is the driver (reserve, set, restore, release, recover); `acl.rs` the
//! POSIX ACL codec; `credentials.rs` the child hook; `accounts.rs` account lookups; the
//! tree records are `tree`.

use std::collections::HashSet;
use std::collections::{BTreeMap, HashMap};
use std::ffi::CStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use svirt_domain::{Access, DacAction, DeviceOverride, Model, Plan, PlannedResource};
use svirt_store::{IdAllocator, ObjectKey, Original, Store};

use crate::owners::split_owner;
use crate::progress::{FaultHook, ProgressFn};
use crate::tree_common::{object_key, store_identity};
use crate::{ChildHook, DriverError, ExecContext, GuestSecurity, ProbeReport, SecurityDriver};
use svirt_hostfs::{FsRoot, Meta, Object};
use tree::{Rule, Rules, TreeDb, TreeError, TreeKey};

mod accounts;
mod acl;
mod credentials;
mod grant;
mod registration;
mod restore;
mod shared;
pub(crate) mod tree;

use accounts::lookup_id;
use acl::{ACL_GROUP, ACL_MASK, ACL_UNDEFINED_ID, ACL_USER, Acl};
pub use credentials::Credentials;
pub(crate) use grant::{tree_drop_read, tree_grant_read};
pub(crate) use registration::REGISTRATION;
pub use restore::{drop_read_entry, restore_original};
use restore::{is_grant, is_read_grant};
pub(crate) use restore::{leave, leave_keys};
pub use shared::shared_owner;

/// The name DAC's flags are stored under in an [`Original`]'s `model_flags`.
pub const MODEL_KEY: &str = "dac";

/// `model_flags` bits: what DAC changed on an object, so restore undoes exactly that.
pub mod flags {
    /// Owner or group changed.
    pub const OWNER: u32 = crate::owners::FLAG_DAC_OWNER;
    /// Permission bits changed.
    pub const MODE: u32 = crate::owners::FLAG_DAC_MODE;
    /// The object had no access ACL; DAC created one (restore removes it).
    pub const ACL_CREATED: u32 = 4;
    /// The object had an access ACL; DAC added a group entry (restore removes it and puts
    /// the original mask back).
    pub const ACL_ENTRY: u32 = 8;
    /// The original ACL had a mask entry; its permissions are in bits 16..19.
    pub const ACL_HAD_MASK: u32 = 1 << 20;
    /// Shift of the original mask's permission bits.
    pub const ACL_MASK_SHIFT: u32 = 16;
    /// The original ACL had an entry for the granted group (the gid under
    /// [`ACL_GID_KEY`](super::ACL_GID_KEY)); its permissions are in bits 24..27. Without this
    /// bit the entry did not exist and restore removes it.
    pub const ACL_HAD_GROUP_ENTRY: u32 = 1 << 21;
    /// Shift of the original group entry's permission bits.
    pub const ACL_GROUP_PERM_SHIFT: u32 = 24;
    /// The ACL change is a read grant ([`DacAction::GrantRead`](svirt_domain::DacAction)):
    /// one `user:<guest uid>` entry per guest (recorded under
    /// [`read_uid_key`](super::read_uid_key)), no group entry, so no device gid is needed to
    /// undo it.
    pub const READ_GRANT: u32 = 1 << 4;
    /// In a guest's [`read_prev_key`](super::read_prev_key) value: its uid had an entry before
    /// the grant, with the rights in bits 0..3 (restored instead of removed).
    pub const READ_PREV_HAD: u32 = 1 << 8;
}

/// `model_flags` key holding the uid whose `user:` ACL entry DAC added for `guest`'s read
/// grant: each guest reading an object has its own entry, and its stop removes only that one.
pub fn read_uid_key(guest: &str) -> String {
    format!("{MODEL_KEY}.read_uid/{guest}")
}

/// `model_flags` key holding what `guest`'s uid entry was before its read grant
/// ([`flags::READ_PREV_HAD`] and the rights), so its removal puts back exactly that.
pub fn read_prev_key(guest: &str) -> String {
    format!("{MODEL_KEY}.read_prev/{guest}")
}

/// The `model_flags` keys of `guest`'s read grant (cleared from a record when it leaves).
fn read_keys(guest: &str) -> [String; 2] {
    [read_uid_key(guest), read_prev_key(guest)]
}

/// `model_flags` key holding the gid whose ACL entry DAC granted on a device, so restore
/// does not depend on the device group still resolving to the same gid when the guest stops.
/// Records written before it existed lack it: restore then resolves the configured device
/// group, and fails (naming the device) if it cannot.
pub const ACL_GID_KEY: &str = "dac.acl_gid";

/// Why a device's ACL grant cannot be made or undone exactly. Carried as the source (an
/// [`io::Error`] of kind `Other` wrapping this) of a [`DriverError::Object`] whose path is
/// the device; [`DeviceAclError::of`] gets it back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceAclError {
    /// The record does not say which group's entry DAC changed (a record from before
    /// [`ACL_GID_KEY`]), and the device group cannot be resolved now.
    #[error("{device}: no granted gid recorded and the device group cannot be resolved: {reason}")]
    NoGroup {
        /// The device.
        device: PathBuf,
        /// Why the lookup failed.
        reason: String,
    },
    /// The device had an access ACL before DAC's grant, and it is gone now: the group entry
    /// DAC changed cannot be put back.
    #[error("{device}: the access ACL holding the group {gid} entry DAC changed is gone")]
    AclGone {
        /// The device.
        device: PathBuf,
        /// The group whose entry DAC changed.
        gid: u32,
    },
    /// The access ACL cannot be parsed.
    #[error("{device}: unreadable access ACL")]
    Unreadable {
        /// The device.
        device: PathBuf,
    },
    /// Another guest's grant on the device, still recorded, is for another gid than the
    /// device group's now: the record can hold one.
    #[error(
        "{device}: a running guest's grant is for gid {recorded}, the device group is now gid {configured}"
    )]
    GroupChanged {
        /// The device.
        device: PathBuf,
        /// The gid of the recorded grant.
        recorded: u32,
        /// The device group's gid now.
        configured: u32,
    },
}

impl DeviceAclError {
    /// The device ACL error carried by `e`, if it is one.
    pub fn of(e: &DriverError) -> Option<&DeviceAclError> {
        match e {
            DriverError::Object { source, .. } => source.get_ref()?.downcast_ref(),
            _ => None,
        }
    }

    fn device(&self) -> &Path {
        match self {
            DeviceAclError::NoGroup { device, .. }
            | DeviceAclError::AclGone { device, .. }
            | DeviceAclError::Unreadable { device }
            | DeviceAclError::GroupChanged { device, .. } => device,
        }
    }

    fn into_driver(self, op: &'static str) -> DriverError {
        DriverError::Object {
            model: Model::Dac,
            op,
            path: self.device().to_path_buf(),
            source: io::Error::other(self),
        }
    }
}

/// The store owner of DAC's records for `guest` (`dac/<guest>`, the relabel engine's
/// convention), so DAC's reference count of an object is separate from other models' records
/// of the same object, and the engine's crash recovery restores DAC's owner and mode too.
pub fn owner_key(guest: &str) -> String {
    crate::owners::owner_key(MODEL_KEY, guest)
}

const ACL_XATTR: &CStr = c"system.posix_acl_access";

/// Configuration of the DAC driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DacConfig {
    /// Root whose `etc/group` names the device group (the same root the [`IdAllocator`]
    /// reads `etc/passwd` and `etc/group` from): `/` in production, a temporary directory
    /// in tests.
    pub accounts_root: PathBuf,
    /// Root the plan's paths are resolved under (`/` in production).
    pub fs_root: PathBuf,
    /// Unused, kept so that configurations naming it still load: a `<shareable/>` object
    /// gets a group of its own from the guest id range (see [`DacDriver`]'s `shared_gid`),
    /// so that only the guests sharing that object can open it. One configured group for
    /// every shared object would let any guest with a shared disk open every other one.
    pub shared_gid: Option<u32>,
    /// Group granted read-write on device nodes the VMM cannot open by their mode
    /// (looked up in `accounts_root/etc/group`).
    pub device_group: String,
    /// Gid used when `device_group` is not in `etc/group`.
    pub device_gid_fallback: Option<u32>,
    /// Further supplementary groups for every VMM.
    pub extra_groups: Vec<u32>,
}

impl Default for DacConfig {
    fn default() -> Self {
        DacConfig {
            accounts_root: PathBuf::from("/"),
            fs_root: PathBuf::from("/"),
            shared_gid: None,
            device_group: "kvm".into(),
            device_gid_fallback: None,
            extra_groups: Vec::new(),
        }
    }
}

/// The DAC driver.
pub struct DacDriver {
    config: DacConfig,
    store: Arc<Store>,
    ids: Arc<IdAllocator>,
    /// The tree records' database, opened at first use (`new` cannot fail).
    trees: Mutex<Option<Arc<TreeDb>>>,
    /// Where tree walks report their progress.
    progress: Mutex<Option<ProgressFn>>,
    /// Crash tests' hook ([`DacDriver::set_fault_hook`]).
    fault: Mutex<Option<FaultHook>>,
}

impl std::fmt::Debug for DacDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DacDriver")
            .field("config", &self.config)
            .finish()
    }
}

fn obj_err(op: &'static str, path: &Path, source: io::Error) -> DriverError {
    DriverError::Object {
        model: Model::Dac,
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn store_err(e: svirt_store::Error) -> DriverError {
    DriverError::Store {
        model: Model::Dac,
        message: e.to_string(),
    }
}

fn tree_err(e: TreeError) -> DriverError {
    match e {
        TreeError::Io { op, path, source } => DriverError::Object {
            model: Model::Dac,
            op,
            path,
            source,
        },
        TreeError::Ledger(e) => DriverError::Store {
            model: Model::Dac,
            message: format!("tree records: {e}"),
        },
        TreeError::Record(m) => DriverError::Store {
            model: Model::Dac,
            message: format!("tree records: {m}"),
        },
    }
}

fn other(message: String) -> DriverError {
    DriverError::Other {
        model: Model::Dac,
        message,
    }
}

/// What DAC wants an object to look like, computed from its current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Target {
    uid: Option<u32>,
    gid: Option<u32>,
    mode: u32,
}

impl DacDriver {
    /// A driver allocating ids from `ids` and recording originals in `store` (the same
    /// store the allocator writes to).
    pub fn new(config: DacConfig, store: Arc<Store>, ids: Arc<IdAllocator>) -> Self {
        DacDriver {
            config,
            store,
            ids,
            trees: Mutex::new(None),
            progress: Mutex::new(None),
            fault: Mutex::new(None),
        }
    }

    /// Sets (or clears) the fault hook (tests): called with `after-restore` once a single
    /// object (a device ACL grant included) is restored and before its record is released,
    /// with `tree-entry-chowned` after each tree entry's owner is put back and before its
    /// set-id bits are (its answer is ignored), and with `after-tree-restore` once a tree is
    /// restored and before its record is deleted. It may kill the process (crash tests); `true` fails the operation there.
    #[doc(hidden)]
    pub fn set_fault_hook(&self, f: Option<FaultHook>) {
        *self.fault.lock().unwrap_or_else(|p| p.into_inner()) = f;
    }

    /// Whether the fault hook fails the operation at `point`.
    fn fault_at(&self, point: &str) -> bool {
        let hook = self.fault.lock().unwrap_or_else(|p| p.into_inner()).clone();
        hook.is_some_and(|h| h(point))
    }

    /// The error of a fault injected at `point`.
    fn injected(point: &str) -> DriverError {
        other(format!("injected fault at {point}"))
    }

    /// Sets (or clears) the progress callback of tree walks (filesystem shares, TPM state),
    /// the relabel engine's type so one callback can serve both: reports for a tree come
    /// from the thread walking it, every 4096 entries and at the end of each phase, with
    /// `path` = the tree's root as the plan names it. Setting a tree: `Scanning` while its
    /// originals are recorded (a tree already recorded by another guest is not scanned),
    /// then `Labeling` (`done` = entries changed). Restoring it (its last DAC user stops,
    /// a failed start is rolled back, or crash recovery): `Restoring` (`done` = entries
    /// restored). `total` is the number of entries when the tree was recorded, or the
    /// number visited when more.
    pub fn set_progress(&self, f: Option<ProgressFn>) {
        *self.progress.lock().unwrap_or_else(|p| p.into_inner()) = f;
    }

    /// The progress callback now (cloned: a report is not made under the lock).
    fn progress(&self) -> Option<ProgressFn> {
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The configuration.
    pub fn config(&self) -> &DacConfig {
        &self.config
    }

    fn root(&self) -> Result<FsRoot, DriverError> {
        FsRoot::open(&self.config.fs_root)
            .map_err(|e| obj_err("open root", &self.config.fs_root, e))
    }

    /// The device group's gid: from `etc/group`, else the configured fallback.
    pub fn device_gid(&self) -> Result<u32, DriverError> {
        let path = self.config.accounts_root.join("etc/group");
        let text = std::fs::read_to_string(&path).map_err(|e| obj_err("read", &path, e))?;
        lookup_id(&text, &self.config.device_group)
            .or(self.config.device_gid_fallback)
            .ok_or_else(|| {
                other(format!(
                    "no group {:?} in {} and no fallback gid configured",
                    self.config.device_group,
                    path.display()
                ))
            })
    }

    /// The guest's (uid, gid), or an error when `reserve` did not run.
    fn guest_ids(guest: &GuestSecurity) -> Result<(u32, u32), DriverError> {
        guest
            .ids
            .ok_or_else(|| other(format!("guest {} has no uid/gid reserved", guest.name)))
    }

    /// What `pr` should look like for this guest, given its current metadata; `None` when
    /// DAC leaves it alone.
    fn target(
        &self,
        pr: &PlannedResource,
        ids: (u32, u32),
        meta: &Meta,
        key: ObjectKey,
    ) -> Result<Option<Target>, DriverError> {
        Ok(self.rule(pr, ids, meta.is_dir(), key)?.map(|r| Target {
            uid: r.uid,
            gid: r.gid,
            mode: ((meta.mode & 0o7777) & r.and) | r.or,
        }))
    }

    /// DAC's change for `pr` on a directory (`dir`) or another object, as a rule on the
    /// current state; `None` when DAC leaves it alone.
    fn rule(
        &self,
        pr: &PlannedResource,
        ids: (u32, u32),
        dir: bool,
        key: ObjectKey,
    ) -> Result<Option<Rule>, DriverError> {
        let want_w = pr.resource.access == Access::Rw;
        if let Some(DeviceOverride::NoRelabel) = pr.resource.overrides.get(&Model::Dac) {
            return Ok(None);
        }
        let owner_bits = 0o400 | if want_w { 0o200 } else { 0 } | if dir { 0o100 } else { 0 };
        let rule = |uid, gid, and, or| Rule {
            uid,
            gid,
            and,
            or,
            read_acl: None,
        };
        Ok(match pr.dac {
            DacAction::Untouched | DacAction::IdmapGuest => None,
            // Private: owner only; set-id bits go too (nobody else may run it as us).
            DacAction::OwnGuest { private } => Some(rule(
                Some(ids.0),
                Some(ids.1),
                if private { 0o700 } else { 0o7777 },
                owner_bits,
            )),
            // The object's own group (see `shared_gid`): only the guests sharing this object
            // get it; "other" bits go, since every other guest is "other" to it.
            DacAction::SharedGroup => Some(rule(
                None,
                Some(self.shared_gid(key)?),
                0o0770,
                0o060 | if dir { 0o010 } else { 0 },
            )),
            DacAction::Owner { uid, gid } => Some(rule(Some(uid), Some(gid), 0o7777, 0)),
            // An ACL entry, not a mode: see `grant_read_locked`; trees: `dac_tree`, with
            // this rule (owner and mode unchanged, `read_acl` = the guest's uid).
            DacAction::GrantRead if pr.resource.recursive => Some(Rule {
                uid: None,
                gid: None,
                and: 0o7777,
                or: 0,
                read_acl: Some(ids.0),
            }),
            DacAction::GrantRead => None,
        })
    }

    /// The tree records' database (opened on first use).
    fn tree_db(&self) -> Result<Arc<TreeDb>, DriverError> {
        let mut slot = self.trees.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(db) = &*slot {
            return Ok(db.clone());
        }
        let db = Arc::new(TreeDb::open(self.store.clone()).map_err(tree_err)?);
        *slot = Some(db.clone());
        Ok(db)
    }

    /// Whether `store` holds anything DAC recorded: a uid or gid reservation, an original
    /// with a DAC user, a tree record (in the ledger, or in an earlier svirt's file not
    /// yet adopted). What a stack without DAC must still restore and release.
    pub fn has_records(store: &Store) -> Result<bool, svirt_store::Error> {
        if tree::TreeDb::legacy_path(store).exists() || !store.id_reservations()?.is_empty() {
            return Ok(true);
        }
        if store
            .list_originals()?
            .iter()
            .any(|(_, rec)| rec.owners.iter().any(|o| split_owner(o).0 == MODEL_KEY))
        {
            return Ok(true);
        }
        tree::has_rows(store)
    }

    /// Paths and users of every DAC tree record (what restore and recovery will put back).
    pub fn tree_records(&self) -> Result<Vec<(PathBuf, Vec<String>)>, DriverError> {
        Ok(self
            .tree_db()?
            .list()
            .map_err(tree_err)?
            .into_iter()
            .map(|(_, p, o)| (p, o))
            .collect())
    }

    /// Releases `guest`'s tree records, restoring each tree whose last DAC user it is.
    fn restore_trees(&self, root: &FsRoot, guest: &str, errors: &mut Vec<DriverError>) {
        let me = owner_key(guest);
        let db = match self.tree_db() {
            Ok(d) => d,
            Err(e) => return errors.push(e),
        };
        let list = match db.list() {
            Ok(l) => l,
            Err(e) => return errors.push(tree_err(e)),
        };
        // Any order works for nested trees: an entry goes back to what its record holds only
        // while it carries a change of that record's users.
        for (k, _, owners) in list.into_iter().rev() {
            if owners.contains(&me) {
                self.release_tree(root, &db, k, &me, errors);
            }
        }
    }

    fn release_tree(
        &self,
        root: &FsRoot,
        db: &TreeDb,
        k: TreeKey,
        me: &str,
        errors: &mut Vec<DriverError>,
    ) {
        // The record is re-read, the tree restored and the record updated under the root's
        // key: another user of the tree cannot join or leave in between.
        let _key = self.store.lock_object(tree_object_key(k));
        let progress = self.progress();
        let fault = |point: &str| self.fault_at(point);
        if let Err(e) = db.release(k, me, &|p| root.open_object(p), progress.as_ref(), &fault) {
            errors.push(tree_err(e));
        } else if let Err(e) = self.release_shared_gid_if_unused(tree_object_key(k)) {
            errors.push(e);
        }
    }

    /// Crash recovery of DAC trees: releases (and restores, when no user is left) every
    /// tree record user whose guest is not running. The manager's recovery does the same
    /// per dead guest through `restore_all`; this covers records whose guest is unknown.
    pub fn recover_trees(&self, running: &dyn Fn(&str) -> bool) -> Vec<DriverError> {
        let mut errors = Vec::new();
        let root = match self.root() {
            Ok(r) => r,
            Err(e) => return vec![e],
        };
        let db = match self.tree_db() {
            Ok(d) => d,
            Err(e) => return vec![e],
        };
        let list = match db.list() {
            Ok(l) => l,
            Err(e) => return vec![tree_err(e)],
        };
        for (k, _, owners) in list {
            for o in owners {
                let (model, guest) = crate::owners::split_owner(&o);
                if model == MODEL_KEY && !running(guest) {
                    self.release_tree(&root, &db, k, &o, &mut errors);
                }
            }
        }
        errors.extend(crate::stack::recover_claims(
            &self.store,
            Model::Dac,
            running,
        ));
        self.recover_shared_gids(&mut errors);
        errors
    }

    /// Applies the plan's DAC changes. Everything is opened first (a missing object changes
    /// nothing). Trees (recursive directories) come first, each with ONE durable record of
    /// its originals committed before its first change ([`tree`]); their keys go
    /// to `trees`. Then single objects, in two passes: their targets are worked out from
    /// their current state (so an object inside a tree gets its change on top of the
    /// tree's), their originals committed in ONE durable transaction, then the changes
    /// made. Every recorded single object is pushed to `done`. On error the caller restores
    /// and releases both.
    fn set_all_inner(
        &self,
        root: &FsRoot,
        plan: &Plan,
        ids: (u32, u32),
        done: &mut Vec<Object>,
        trees: &mut Vec<TreeKey>,
    ) -> Result<(), DriverError> {
        let me = owner_key(&plan.name);
        let mut opened = Vec::new();
        for pr in &plan.resources {
            // An idmapped share changes nothing on disk: the jail shows it to the guest.
            if matches!(pr.dac, DacAction::Untouched | DacAction::IdmapGuest) {
                continue;
            }
            let obj = root
                .open_planned(&pr.resource.path, planned_identity(pr))
                .map_err(|e| obj_err("open", &pr.resource.path, e))?;
            opened.push((pr, obj));
        }
        let (tree_objs, singles): (Vec<_>, Vec<_>) = opened
            .into_iter()
            .partition(|(pr, obj)| pr.resource.recursive && obj.meta().is_dir());
        let mut planned: Vec<Planned> = Vec::new();
        let mut seen: HashMap<ObjectKey, usize> = HashMap::new();
        if !tree_objs.is_empty() {
            let db = self.tree_db()?;
            let progress = self.progress();
            for (pr, obj) in &tree_objs {
                let key = object_key(obj.identity());
                // The rules under the root's lock: a shared tree's group is allocated (or
                // found) while no other guest can release it.
                let _key = self.store.lock_object(key);
                if let (Some(dir), Some(other)) = (
                    self.rule(pr, ids, true, key)?,
                    self.rule(pr, ids, false, key)?,
                ) {
                    // A shared tree's group may have just been allocated (committed without
                    // an fsync): the tree's record, committed durably to the same ledger
                    // before the tree's first change, makes that allocation durable too.
                    db.set_tree(&me, obj, Rules { dir, other }, trees, progress.as_ref())
                        .map_err(tree_err)?;
                }
            }
        }
        // From the read of each object's state to its change: a stop of another guest
        // using it cannot restore it (or drop its record) in between.
        let _keys = self
            .store
            .lock_objects(singles.iter().map(|(_, obj)| object_key(obj.identity())));
        let mut reads: Vec<Object> = Vec::new();
        for (pr, obj) in singles {
            if pr.dac == DacAction::GrantRead
                && pr.resource.overrides.get(&Model::Dac) != Some(&DeviceOverride::NoRelabel)
            {
                let k = object_key(obj.identity());
                if !reads.iter().any(|o| object_key(o.identity()) == k) {
                    reads.push(obj);
                }
                continue;
            }
            let k = object_key(obj.identity());
            if let Some(&i) = seen.get(&k) {
                // Named again: this target applies on top of the earlier one, as if made
                // one after the other.
                let p = &mut planned[i];
                if let Some(t) = self.target(pr, ids, &p.after, k)? {
                    p.after = apply(&p.after, t);
                }
                continue;
            }
            // Now, not at open: a tree may have changed it since.
            let before = obj
                .current_meta()
                .map_err(|e| obj_err("stat", obj.path(), e))?;
            let Some(t) = self.target(pr, ids, &before, k)? else {
                continue;
            };
            seen.insert(k, planned.len());
            planned.push(Planned {
                after: apply(&before, t),
                before,
                obj,
            });
        }
        let mut batch = Vec::with_capacity(planned.len());
        for p in &planned {
            let original = original_of(&p.obj, p.before, p.flags())?;
            batch.push((object_key(p.obj.identity()), original));
        }
        self.store
            .record_originals_if_absent_many(&batch, &me)
            .map_err(store_err)?;
        drop(batch);
        let mut changes = Vec::with_capacity(planned.len());
        for p in planned {
            changes.push((p.before, p.after));
            done.push(p.obj);
        }
        for (obj, (before, after)) in done.iter().zip(changes) {
            let owner_change = after.uid != before.uid || after.gid != before.gid;
            if owner_change {
                obj.chown(after.uid, after.gid)
                    .map_err(|e| obj_err("chown", obj.path(), e))?;
            }
            if owner_change || after.mode != before.mode {
                // chown clears set-id bits: the mode is written after it in any case.
                obj.chmod(after.mode & 0o7777)
                    .map_err(|e| obj_err("chmod", obj.path(), e))?;
            }
        }
        // Read grants last: an object also changed above (named twice) gets its entry on
        // top of its new owner and mode. Still under the objects' locks.
        for obj in reads {
            let r = self.grant_read_locked(&plan.name, ids.0, &obj);
            // Recorded (or partly done): the caller's rollback must see it.
            done.push(obj);
            r?;
        }
        Ok(())
    }

    /// Undoes DAC's changes on `obj` if `guest` was the last guest DAC changed it for, then
    /// drops `guest` from the record. Records of other guests keep the object as it is.
    ///
    /// Under the object's key, the record is read afresh, the object restored, and only then
    /// released: a crash before the release leaves the record (restoring again is
    /// harmless), a failed restore keeps it, and another guest's start or stop on the object
    /// waits (it cannot record the changed state as an original, nor decide from a record
    /// about to change).
    fn restore_object(&self, guest: &str, obj: &Object) -> Result<(), DriverError> {
        let me = owner_key(guest);
        let id = obj.identity();
        let k = object_key(id);
        let _key = self.store.lock_object(k);
        let Some(rec) = self.store.get_original(k).map_err(store_err)? else {
            return Ok(());
        };
        if !rec.owners.contains(&me) {
            return Ok(());
        }
        // The file at this inode is not the one we changed: leave the newcomer alone.
        let stale = !rec.original.identity.same_object(&store_identity(id));
        // Other models' users do not hold DAC's change in place; another DAC user does.
        let other_dac_user = rec
            .owners
            .iter()
            .any(|o| *o != me && crate::owners::split_owner(o).0 == MODEL_KEY);
        if !stale {
            leave(obj, &rec.original, &[guest], other_dac_user, &|| {
                self.device_gid()
            })?;
            if !other_dac_user && self.fault_at("after-restore") {
                return Err(Self::injected("after-restore"));
            }
        }
        self.release_record(k, &me, !other_dac_user)?;
        if !other_dac_user {
            self.release_shared_gid_if_unused(k)?;
        }
        Ok(())
    }

    /// Drops `me` from the record of `k`. When it is the record's `last_dac_user`, DAC's
    /// entries of `model_flags` (its flags and the granted gid) go too, in the same
    /// transaction, should other models' users keep the record: they describe changes undone
    /// now, and the store merges a later DAC user's flags into them with a bitwise or (a
    /// grant for another gid would record the two gids or-ed).
    fn release_record(
        &self,
        k: ObjectKey,
        me: &str,
        last_dac_user: bool,
    ) -> Result<(), DriverError> {
        let keys = leave_keys(crate::owners::split_owner(me).1, last_dac_user);
        let clear: Vec<&str> = keys.iter().map(String::as_str).collect();
        self.store
            .release_original_clearing(k, me, &clear)
            .map_err(store_err)?;
        Ok(())
    }
}

/// The store's key of a tree's root directory: a tree record and the root's own record
/// are locked alike ([`Store::lock_object`]).
fn tree_object_key(k: TreeKey) -> ObjectKey {
    ObjectKey { dev: k.0, ino: k.1 }
}

/// One object DAC changes: as it was opened, and as DAC leaves it.
struct Planned {
    obj: Object,
    before: Meta,
    after: Meta,
}

impl Planned {
    /// DAC's `model_flags` for the object: what restore must put back.
    fn flags(&self) -> u32 {
        let owner_change = self.after.uid != self.before.uid || self.after.gid != self.before.gid;
        let mode_change = self.after.mode != self.before.mode;
        let mut f = 0;
        if owner_change {
            f |= flags::OWNER;
        }
        if mode_change || owner_change {
            // chown clears set-id bits: restore puts the mode back too.
            f |= flags::MODE;
        }
        f
    }
}

/// `m` with `t` applied.
fn apply(m: &Meta, t: Target) -> Meta {
    Meta {
        uid: t.uid.unwrap_or(m.uid),
        gid: t.gid.unwrap_or(m.gid),
        mode: (m.mode & libc::S_IFMT) | (t.mode & 0o7777),
    }
}

/// `obj`'s state as the store keeps it, with DAC's flags `f`.
fn original_of(obj: &Object, m: Meta, f: u32) -> Result<Original, DriverError> {
    let id = obj.identity();
    let selinux_label = obj
        .get_xattr(c"security.selinux")
        .or_else(|e| match e.raw_os_error() {
            Some(libc::ENOTSUP) => Ok(None),
            _ => Err(e),
        })
        .map_err(|e| obj_err("read label", obj.path(), e))?;
    Ok(Original {
        path: obj.path().to_path_buf(),
        selinux_label,
        // SMACK's part is SMACK's to read when it joins (the store refreshes a model's
        // part when its first user records).
        smack_label: None,
        uid: m.uid,
        gid: m.gid,
        mode: m.mode & 0o7777,
        identity: store_identity(id),
        model_flags: BTreeMap::from([(MODEL_KEY.to_string(), f)]),
    })
}

/// Whether DAC confines this guest (on for it, and not `type='none'`).
fn active(plan: &Plan) -> bool {
    plan.dac_enabled && !plan.unconfined.contains(&Model::Dac)
}

/// Whether a process with `ids` and `groups` may read and write an object by its mode bits.
fn can_rw(m: &Meta, ids: (u32, u32), groups: &[u32]) -> bool {
    let mode = m.mode;
    if m.uid == ids.0 {
        return mode & 0o600 == 0o600;
    }
    if m.gid == ids.1 || groups.contains(&m.gid) {
        return mode & 0o060 == 0o060;
    }
    mode & 0o006 == 0o006
}

impl DacDriver {
    /// The credentials and supplementary groups the guest's VMM runs with; grants (and
    /// records) device access first when a device needs it.
    pub fn prepare_credentials(
        &self,
        plan: &Plan,
        guest: &GuestSecurity,
        exec: &ExecContext,
    ) -> Result<Credentials, DriverError> {
        let ids = Self::guest_ids(guest)?;
        let mut groups: Vec<u32> = Vec::new();
        // Each shared object's own group (allocated by `set_all`, which ran before).
        if plan
            .resources
            .iter()
            .any(|r| r.dac == DacAction::SharedGroup)
        {
            let root = self.root()?;
            for pr in plan
                .resources
                .iter()
                .filter(|r| r.dac == DacAction::SharedGroup)
            {
                let obj = root
                    .open_object(&pr.resource.path)
                    .map_err(|e| obj_err("open", &pr.resource.path, e))?;
                let owner = shared_owner(object_key(obj.identity()));
                let g = self.ids.id_of(&owner).ok_or_else(|| {
                    other(format!(
                        "{}: shared object has no group (set_all did not run for it)",
                        pr.resource.path.display()
                    ))
                })?;
                groups.push(g);
            }
        }
        groups.extend(self.config.extra_groups.iter().copied());
        let extra = self.grant_devices(&guest.name, ids, &groups, &exec.devices)?;
        groups.extend(extra);
        groups.sort_unstable();
        groups.dedup();
        groups.retain(|&g| g != ids.1);
        Ok(Credentials {
            uid: ids.0,
            gid: ids.1,
            groups,
        })
    }

    fn restore_resources(
        &self,
        root: &FsRoot,
        plan: &Plan,
        guest: &str,
        errors: &mut Vec<DriverError>,
        tried: &mut HashSet<ObjectKey>,
    ) {
        for pr in &plan.resources {
            // An idmapped share changes nothing on disk: the jail shows it to the guest.
            if matches!(pr.dac, DacAction::Untouched | DacAction::IdmapGuest) {
                continue;
            }
            let obj = match root.open_object(&pr.resource.path) {
                Ok(o) => o,
                Err(e) => {
                    errors.push(obj_err("open", &pr.resource.path, e));
                    continue;
                }
            };
            // Trees are restored from their records (`restore_trees`), after the single
            // objects: an object inside a tree was changed after the tree.
            if pr.resource.recursive && obj.meta().is_dir() {
                continue;
            }
            tried.insert(object_key(obj.identity()));
            if let Err(e) = self.restore_object(guest, &obj) {
                errors.push(e);
            }
        }
    }

    /// Restores or releases every record `guest` still holds after the plan's objects and
    /// trees: DAC's device ACL grants (found from the store, since the exec context is not
    /// known at stop, and after a crash only the store knows), and objects DAC can no longer
    /// reach by the plan (deleted files: nothing to restore on them, but the store must not
    /// keep the guest as a user).
    ///
    /// Fails closed: a record is released without a restore only when its object is gone
    /// (`ENOENT`) or another object now holds the path. Any other failure to open it
    /// (`ELOOP`, `EACCES`, `EMFILE`, …) is returned and the record, the only copy of the
    /// original, stays for the next attempt.
    fn release_leftovers(
        &self,
        root: &FsRoot,
        guest: &str,
        errors: &mut Vec<DriverError>,
        tried: &HashSet<ObjectKey>,
    ) {
        let me = owner_key(guest);
        let recs = match self.store.originals_for_owner(&me) {
            Ok(r) => r,
            Err(e) => {
                errors.push(store_err(e));
                return;
            }
        };
        for (k, rec) in recs {
            if tried.contains(&k) {
                continue;
            }
            let path = &rec.original.path;
            match root.open_object(path) {
                Ok(obj) if object_key(obj.identity()) == k => {
                    if let Err(e) = self.restore_object(guest, &obj) {
                        errors.push(e);
                    }
                }
                // Gone or replaced: nothing of ours is left on it.
                Ok(_) => self.release_unreachable(k, &me, errors),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    self.release_unreachable(k, &me, errors)
                }
                Err(e) => {
                    // Said once: the plan's pass may have failed to open it already.
                    let said = errors.iter().any(|x| {
                        matches!(x, DriverError::Object { op: "open", path: p, .. } if p == path)
                    });
                    if !said {
                        errors.push(obj_err("open", path, e));
                    }
                }
            }
        }
    }

    /// Drops `guest`'s DAC claims once it holds no DAC record any more (every object it
    /// changed is restored): while one is kept (a failed restore), so is the claim, and no
    /// other guest can take the object privately before it is back.
    fn release_claims_if_clear(&self, guest: &str) {
        let me = owner_key(guest);
        let holds_object = self
            .store
            .originals_for_owner(&me)
            .map(|r| !r.is_empty())
            .unwrap_or(true);
        let holds_tree = self
            .tree_db()
            .and_then(|db| db.list().map_err(tree_err))
            .map(|l| l.iter().any(|(_, _, o)| o.contains(&me)))
            .unwrap_or(true);
        if holds_object || holds_tree {
            return;
        }
        if let Err(e) = crate::stack::release_claims(&self.store, Model::Dac, guest) {
            tracing::error!("{guest}: releasing DAC claims: {e}");
        }
    }

    /// Drops `me` from the record of an object that is gone or replaced.
    fn release_unreachable(&self, k: ObjectKey, me: &str, errors: &mut Vec<DriverError>) {
        let _key = self.store.lock_object(k);
        let r = self
            .store
            .get_original(k)
            .map_err(store_err)
            .and_then(|rec| {
                let Some(rec) = rec else { return Ok(()) };
                let last = !rec
                    .owners
                    .iter()
                    .any(|o| o != me && crate::owners::split_owner(o).0 == MODEL_KEY);
                self.release_record(k, me, last)
            });
        if let Err(e) = r {
            errors.push(e);
        }
    }
}

impl SecurityDriver for DacDriver {
    fn model(&self) -> Model {
        Model::Dac
    }

    fn probe(&self) -> ProbeReport {
        // SAFETY: geteuid cannot fail.
        let euid = unsafe { libc::geteuid() };
        let free = self.ids.free();
        let (usable, reason) = if euid != 0 {
            (
                false,
                format!("running as uid {euid}: changing owners and ids needs root"),
            )
        } else if let Err(e) = self.ids.config().check_against_host() {
            (false, e.to_string())
        } else if free == 0 {
            (
                false,
                "no free uid/gid left in the configured range".to_string(),
            )
        } else {
            let cfg = self.ids.config();
            (
                true,
                format!("{free} free uid/gid in {}..={}", cfg.first, cfg.last),
            )
        };
        ProbeReport {
            model: Model::Dac,
            usable,
            reason,
        }
    }

    fn reserve(&self, plan: &Plan, guest: &mut GuestSecurity) -> Result<(), DriverError> {
        if !active(plan) {
            return Ok(());
        }
        if let Some(ids) = plan.dac_ids {
            // A static `<seclabel model='dac'>` label: used as given, nothing allocated.
            guest.ids = Some(ids);
            return Ok(());
        }
        let id = self.ids.allocate(&guest.name).map_err(store_err)?;
        guest.ids = Some((id, id));
        Ok(())
    }

    fn release(&self, guest: &GuestSecurity) -> Result<(), DriverError> {
        let held = self.ids.id_of(&guest.name);
        match (guest.ids, held) {
            (_, None) => Ok(()),
            (Some((u, _)), Some(h)) if u != h => Err(other(format!(
                "guest {} holds uid {h}, not {u}: not released",
                guest.name
            ))),
            (_, Some(h)) => self.ids.release(h, &guest.name).map_err(store_err),
        }
    }

    fn set_all(&self, plan: &Plan, guest: &GuestSecurity) -> Result<(), DriverError> {
        if !active(plan) {
            return Ok(());
        }
        let ids = Self::guest_ids(guest)?;
        let root = self.root()?;
        // Before anything changes: a private read-write object another live guest uses (or
        // an object another guest holds privately) is refused here, untouched.
        crate::stack::claim_plan(&self.store, &root, Model::Dac, plan)?;
        let mut done = Vec::new();
        let mut trees = Vec::new();
        let r = self.set_all_inner(&root, plan, ids, &mut done, &mut trees);
        if r.is_err() {
            // Fail closed: put back what this call changed, newest first.
            for obj in done.iter().rev() {
                let _ = self.restore_object(&guest.name, obj);
            }
            if !trees.is_empty()
                && let Ok(db) = self.tree_db()
            {
                let me = owner_key(&guest.name);
                let mut errors = Vec::new();
                for k in trees.into_iter().rev() {
                    self.release_tree(&root, &db, k, &me, &mut errors);
                }
                for e in errors {
                    tracing::error!("rollback of a DAC tree: {e}");
                }
            }
            self.release_claims_if_clear(&guest.name);
            // Groups allocated for shared objects this start was to join first.
            for pr in plan
                .resources
                .iter()
                .filter(|p| p.dac == DacAction::SharedGroup)
            {
                if let Ok(obj) = root.open_object(&pr.resource.path)
                    && let Err(e) = self.release_shared_gid_if_unused(object_key(obj.identity()))
                {
                    tracing::error!("rollback of a shared object's group: {e}");
                }
            }
        }
        r
    }

    fn restore_all(&self, plan: &Plan, guest: &GuestSecurity) -> Vec<DriverError> {
        let mut errors = Vec::new();
        let root = match self.root() {
            Ok(r) => r,
            Err(e) => return vec![e],
        };
        // Objects the plan's pass tried (restored, or failed and reported): the leftover pass
        // must not try them again and report the same failure twice.
        let mut tried = HashSet::new();
        self.restore_resources(&root, plan, &guest.name, &mut errors, &mut tried);
        self.restore_trees(&root, &guest.name, &mut errors);
        self.release_leftovers(&root, &guest.name, &mut errors, &tried);
        self.release_claims_if_clear(&guest.name);
        errors
    }

    /// The tree records: every tree whose users are all gone is restored; each dead
    /// owner's outcome is reported (restored, released while others still use the tree,
    /// or failed with the record kept).
    fn recover(&self, running: &dyn Fn(&str) -> bool) -> Vec<crate::RecoveryNote> {
        let mut notes = Vec::new();
        let failed = |notes: &mut Vec<crate::RecoveryNote>, what: String| {
            notes.push(crate::RecoveryNote {
                guest: None,
                what: format!("DAC tree recovery failed: {what}"),
                failed: true,
            })
        };
        let before = self.tree_records().unwrap_or_else(|e| {
            failed(&mut notes, format!("listing the tree records: {e}"));
            Vec::new()
        });
        let errors = self.recover_trees(running);
        let left: Option<HashMap<PathBuf, Vec<String>>> = match self.tree_records() {
            Ok(l) => Some(l.into_iter().collect()),
            Err(e) => {
                failed(
                    &mut notes,
                    format!("listing the tree records after the sweep: {e}"),
                );
                None
            }
        };
        for e in &errors {
            failed(&mut notes, e.to_string());
        }
        for (path, owners) in before {
            for owner in owners.iter().filter(|o| !running(split_owner(o).1)) {
                let (outcome, bad) = match left.as_ref().map(|l| l.get(&path)) {
                    None => (
                        "outcome unknown (the records could not be listed again)",
                        true,
                    ),
                    Some(None) => ("restored", false),
                    // Still a user of the record: its release (and the restore, when it was
                    // the last user) failed; the record stays for the next open.
                    Some(Some(o)) if o.contains(owner) => (
                        "restore failed (see the DAC tree recovery errors), record kept for the next open",
                        true,
                    ),
                    Some(Some(_)) => ("released (other guests still use it)", false),
                };
                notes.push(crate::RecoveryNote {
                    guest: Some(split_owner(owner).1.to_string()),
                    what: format!("DAC tree {} of no running guest: {outcome}", path.display()),
                    failed: bad,
                });
            }
        }
        notes
    }

    fn held_for(&self, owner: &str) -> Option<String> {
        match self.store.id_reservations() {
            Ok(ids) => ids
                .iter()
                .find(|(_, o)| o == owner)
                .map(|(id, _)| format!("uid/gid {id}")),
            Err(_) => Some("its uid/gid".into()),
        }
    }

    fn child_hooks(
        &self,
        plan: &Plan,
        guest: &GuestSecurity,
        exec: &ExecContext,
    ) -> Result<Vec<ChildHook>, DriverError> {
        if !active(plan) {
            return Ok(Vec::new());
        }
        Ok(vec![
            self.prepare_credentials(plan, guest, exec)?.into_hook(),
        ])
    }

    fn process_label(&self, pid: i32) -> Result<Option<String>, DriverError> {
        let path = PathBuf::from(format!("/proc/{pid}/status"));
        let text = std::fs::read_to_string(&path).map_err(|e| obj_err("read", &path, e))?;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .map(str::to_string)
        };
        Ok(match (field("Uid:"), field("Gid:")) {
            (Some(u), Some(g)) => Some(format!("+{u}:+{g}")),
            _ => None,
        })
    }
}

/// The `(dev, ino)` the planner judged for a resource, for [`FsRoot::open_planned`].
fn planned_identity(pr: &PlannedResource) -> Option<(u64, u64)> {
    pr.resource.identity.map(|i| (i.dev, i.ino))
}

/// An object's owner and mode and its access ACL (None: it has none), read now.
fn meta_and_acl(obj: &Object) -> Result<(Meta, Option<Vec<u8>>), DriverError> {
    let meta = obj
        .current_meta()
        .map_err(|e| obj_err("stat", obj.path(), e))?;
    let acl = obj
        .get_xattr(ACL_XATTR)
        .map_err(|e| obj_err("read ACL", obj.path(), e))?;
    Ok((meta, acl))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn can_rw_by_mode() {
        let m = |uid, gid, mode| Meta { uid, gid, mode };
        assert!(can_rw(&m(5, 0, 0o600), (5, 5), &[]));
        assert!(!can_rw(&m(0, 0, 0o600), (5, 5), &[]));
        assert!(can_rw(&m(0, 36, 0o660), (5, 5), &[36]));
        assert!(
            !can_rw(&m(0, 36, 0o606), (5, 5), &[36]),
            "group class decides, not other"
        );
        assert!(can_rw(&m(0, 0, 0o666), (5, 5), &[]));
    }
}
