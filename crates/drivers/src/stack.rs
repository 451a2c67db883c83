//! The driver stack: every driver of a guest in a fixed order, all-or-nothing labeling,
//! restore that runs everything and reports every error.
//!
//! Order (see `docs/drivers/stack.md`): label-based MAC (SELinux, AppArmor) first, DAC
//! second, Landlock last. The same order is used for the child hooks, which matters:
//! 1. SELinux writes the exec label (`/proc/thread-self/attr/exec`) while the child still
//!    has the manager's identity;
//! 2. DAC switches groups, gid and uid, drops capabilities and sets `no_new_privs`;
//! 3. Landlock's `landlock_restrict_self` needs `no_new_privs` (or `CAP_SYS_ADMIN`, gone
//!    after step 2), so it comes after it, right before `exec`.
//!
//! `set_all` runs in that order and, when a driver fails, restores the drivers that had
//! already succeeded, newest first (the failing driver has already undone its own partial
//! work: that is part of the [`SecurityDriver::set_all`] contract). `restore_all` runs in
//! the reverse order.

use std::sync::Arc;

use svirt_domain::{Access, Model, Plan, PlannedResource, ResourceKind, Sharing};
use svirt_store::{ClaimItem, ClaimUse, Store};

use crate::tree_common::{object_key, store_identity};
use crate::{ChildHook, DriverError, ExecContext, GuestSecurity, ProbeReport, SecurityDriver};
use svirt_hostfs::FsRoot;

/// How a planned resource is claimed (see [`claim_plan`]); `None`: not claimed (sockets and
/// pipes are rendezvous points, not content: several guests may connect to one listener).
pub fn claim_use(pr: &PlannedResource) -> Option<ClaimUse> {
    if matches!(
        pr.resource.kind,
        ResourceKind::ChardevSocket | ResourceKind::ChardevPipe
    ) {
        return None;
    }
    Some(match (pr.resource.sharing, pr.resource.access) {
        (Sharing::Private, Access::Rw) => ClaimUse::Exclusive,
        (Sharing::Shared, _) => ClaimUse::Shared,
        _ => ClaimUse::Read,
    })
}

/// Claims every object of `plan` for `<model>/<guest>` in the store, before the driver
/// changes anything: refused ([`DriverError::InUse`], naming the object, the other guest and
/// the rule) when another live guest holds the object privately read-write, or when the plan
/// wants privately read-write an object another guest uses in any way. One durable
/// transaction: two starts racing for one object cannot both pass, and a refusal writes
/// nothing. Objects that do not exist yet are not claimed (nothing to share). Called by
/// every driver that changes objects (DAC, SELinux), so it holds under every model; a guest's
/// claims under several models never conflict with each other.
pub fn claim_plan(
    store: &Store,
    root: &FsRoot,
    model: Model,
    plan: &Plan,
) -> Result<(), DriverError> {
    let owner = crate::owners::owner_key(model.as_str(), &plan.name);
    let mut items = Vec::new();
    for pr in &plan.resources {
        let Some(usage) = claim_use(pr) else { continue };
        let obj = match root.open_planned(
            &pr.resource.path,
            pr.resource.identity.map(|i| (i.dev, i.ino)),
        ) {
            Ok(o) => o,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(source) => {
                return Err(DriverError::Object {
                    model,
                    op: "open",
                    path: pr.resource.path.clone(),
                    source,
                });
            }
        };
        // The directories above it, opened as the object was (no symlink followed): an
        // object inside another guest's tree conflicts with that tree's use.
        let ancestors = pr
            .resource
            .path
            .ancestors()
            .skip(1)
            .filter_map(|a| root.open_object(a).ok())
            .map(|o| store_identity(o.identity()))
            .collect();
        // A block device shares its blocks with its partitions and holders and with any
        // other node of the same device number: each is claimed too, under a key no file
        // has (device numbers in their own namespace). Of two overlapping devices one is
        // always among the other's descendants, so their claims meet.
        if obj.meta().mode & libc::S_IFMT == libc::S_IFBLK {
            let rdev = obj.rdev().map_err(|source| DriverError::Object {
                model,
                op: "stat",
                path: pr.resource.path.clone(),
                source,
            })?;
            for d in svirt_domain::block_descendants(rdev) {
                let id = svirt_store::ObjectIdentity {
                    dev: BLOCK_DEVICE_KEYS,
                    ino: d,
                    btime: None,
                    generation: None,
                    ctime: None,
                };
                items.push(ClaimItem {
                    key: svirt_store::ObjectKey {
                        dev: BLOCK_DEVICE_KEYS,
                        ino: d,
                    },
                    identity: id,
                    path: std::path::PathBuf::from(format!(
                        "{} (block device {}:{})",
                        pr.resource.path.display(),
                        libc::major(d),
                        libc::minor(d)
                    )),
                    usage,
                    recursive: false,
                    ancestors: Vec::new(),
                });
            }
        }
        items.push(ClaimItem {
            key: object_key(obj.identity()),
            identity: store_identity(obj.identity()),
            path: pr.resource.path.clone(),
            usage,
            recursive: pr.resource.recursive && obj.meta().is_dir(),
            ancestors,
        });
    }
    store.claim_objects(&owner, &items).map_err(|e| match e {
        svirt_store::Error::Claimed { path, other, rule } => DriverError::InUse {
            model,
            path,
            other,
            rule,
        },
        e => DriverError::Store {
            model,
            message: e.to_string(),
        },
    })
}

/// The `dev` of claim keys that stand for block device numbers (no file system has it).
const BLOCK_DEVICE_KEYS: u64 = u64::MAX;

/// Drops every claim `<model>/<guest>` holds (at stop, once its objects are restored, and
/// after a refused or failed start).
pub fn release_claims(store: &Store, model: Model, guest: &str) -> Result<(), DriverError> {
    store
        .release_claims(&crate::owners::owner_key(model.as_str(), guest))
        .map(|_| ())
        .map_err(|e| DriverError::Store {
            model,
            message: e.to_string(),
        })
}

/// Crash recovery of claims: drops the claims of every `<model>/<guest>` user whose guest
/// is not running. Returns the errors.
pub fn recover_claims(
    store: &Store,
    model: Model,
    running: &dyn Fn(&str) -> bool,
) -> Vec<DriverError> {
    let err = |e: svirt_store::Error| DriverError::Store {
        model,
        message: e.to_string(),
    };
    let claims = match store.list_claims() {
        Ok(c) => c,
        Err(e) => return vec![err(e)],
    };
    let mut dead = std::collections::BTreeSet::new();
    for (_, rec) in claims {
        for user in rec.users.keys() {
            let (m, g) = crate::owners::split_owner(user);
            if m == model.as_str() && !running(g) {
                dead.insert(user.clone());
            }
        }
    }
    dead.into_iter()
        .filter_map(|u| store.release_claims(&u).err().map(err))
        .collect()
}

/// Position of a model in the stack.
pub fn rank(m: Model) -> u8 {
    match m {
        Model::Selinux | Model::Apparmor | Model::BpfLsm | Model::Smack => 0,
        Model::Dac => 1,
        Model::Landlock => 2,
    }
}

/// A set of drivers applied together to each guest.
#[derive(Clone, Default)]
pub struct Stack {
    drivers: Vec<Arc<dyn SecurityDriver>>,
    /// Drivers of models no longer stacked whose records are still in the state dir:
    /// used only by [`Stack::recover`], so those records are not kept for ever.
    retired: Vec<Arc<dyn SecurityDriver>>,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.drivers.iter().map(|d| d.model()))
            .finish()
    }
}

/// What a failed `set_all` of the whole stack left behind.
#[derive(Debug, thiserror::Error)]
#[error("{cause}{}", if .rollback.is_empty() { String::new() } else { format!(" (and {} error(s) while rolling back: {})", .rollback.len(), .rollback.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")) })]
pub struct StackError {
    /// The driver error that stopped the stack.
    #[source]
    pub cause: DriverError,
    /// Errors while restoring the drivers that had already succeeded.
    pub rollback: Vec<DriverError>,
}

impl Stack {
    /// A stack of `drivers`, put into the canonical order (label MAC, DAC, Landlock; stable
    /// among equals).
    pub fn new(mut drivers: Vec<Arc<dyn SecurityDriver>>) -> Stack {
        drivers.sort_by_key(|d| rank(d.model()));
        Stack {
            drivers,
            retired: Vec::new(),
        }
    }

    /// Adds drivers that only recover: models no longer stacked whose records remain.
    pub fn with_retired(mut self, retired: Vec<Arc<dyn SecurityDriver>>) -> Stack {
        self.retired = retired;
        self
    }

    /// Every driver's own sweep ([`SecurityDriver::recover`]), stacked ones in order, then
    /// the retired ones.
    pub fn recover(&self, running: &dyn Fn(&str) -> bool) -> Vec<crate::RecoveryNote> {
        self.drivers
            .iter()
            .chain(&self.retired)
            .flat_map(|d| d.recover(running))
            .collect()
    }

    /// The drivers, in order.
    pub fn drivers(&self) -> &[Arc<dyn SecurityDriver>] {
        &self.drivers
    }

    /// The drivers that only recover (models no longer stacked whose records remain).
    pub fn retired(&self) -> &[Arc<dyn SecurityDriver>] {
        &self.retired
    }

    /// The driver of `model`, if stacked.
    pub fn driver(&self, model: Model) -> Option<&Arc<dyn SecurityDriver>> {
        self.drivers.iter().find(|d| d.model() == model)
    }

    /// Every driver's probe.
    pub fn probe(&self) -> Vec<ProbeReport> {
        self.drivers.iter().map(|d| d.probe()).collect()
    }

    /// Reserves the guest's identity with every driver; on failure, releases what the
    /// earlier drivers reserved.
    pub fn reserve(&self, plan: &Plan, guest: &mut GuestSecurity) -> Result<(), StackError> {
        for (i, d) in self.drivers.iter().enumerate() {
            if let Err(cause) = d.reserve(plan, guest) {
                let rollback = self.drivers[..i]
                    .iter()
                    .rev()
                    .filter_map(|d| d.release(guest).err())
                    .collect();
                return Err(StackError { cause, rollback });
            }
        }
        Ok(())
    }

    /// Releases with every driver (reverse order); every error is returned.
    pub fn release(&self, guest: &GuestSecurity) -> Vec<DriverError> {
        self.drivers
            .iter()
            .rev()
            .filter_map(|d| d.release(guest).err())
            .collect()
    }

    /// Whether the stack has no driver (`--drivers none`: nothing is confined).
    pub fn is_empty(&self) -> bool {
        self.drivers.is_empty()
    }

    /// Labels with every driver in order. If one fails, the drivers that already succeeded
    /// are restored (newest first) and the error is returned: nothing stays half-labeled.
    pub fn set_all(&self, plan: &Plan, guest: &GuestSecurity) -> Result<(), StackError> {
        self.set_all_observed(plan, guest, &|_| {})
    }

    /// [`Self::set_all`], telling `starting` which driver's turn it is (progress reports).
    pub fn set_all_observed(
        &self,
        plan: &Plan,
        guest: &GuestSecurity,
        starting: &dyn Fn(Model),
    ) -> Result<(), StackError> {
        for (i, d) in self.drivers.iter().enumerate() {
            starting(d.model());
            if let Err(cause) = d.set_all(plan, guest) {
                let mut rollback = Vec::new();
                for done in self.drivers[..i].iter().rev() {
                    rollback.extend(done.restore_all(plan, guest));
                }
                return Err(StackError { cause, rollback });
            }
        }
        Ok(())
    }

    /// Restores with every driver (reverse order), running all of them; every error.
    pub fn restore_all(&self, plan: &Plan, guest: &GuestSecurity) -> Vec<DriverError> {
        let mut errors = Vec::new();
        for d in self.drivers.iter().rev() {
            errors.extend(d.restore_all(plan, guest));
        }
        errors
    }

    /// Every driver's child hooks, concatenated in stack order (see the module docs for why
    /// that order).
    pub fn child_hooks(
        &self,
        plan: &Plan,
        guest: &GuestSecurity,
        exec: &ExecContext,
    ) -> Result<Vec<ChildHook>, DriverError> {
        let mut hooks = Vec::new();
        for d in &self.drivers {
            hooks.extend(d.child_hooks(plan, guest, exec)?);
        }
        Ok(hooks)
    }

    /// Every driver's child hooks in stack order, split by [`crate::HookPhase`]: those to
    /// run before the VMM enters its jail, and those to run inside it.
    pub fn child_hooks_phased(
        &self,
        plan: &Plan,
        guest: &GuestSecurity,
        exec: &ExecContext,
    ) -> Result<(Vec<ChildHook>, Vec<ChildHook>), DriverError> {
        let (mut before, mut inside) = (Vec::new(), Vec::new());
        for d in &self.drivers {
            let hooks = d.child_hooks(plan, guest, exec)?;
            match d.hook_phase() {
                crate::HookPhase::BeforeJail => before.extend(hooks),
                crate::HookPhase::InJail => inside.extend(hooks),
            }
        }
        Ok((before, inside))
    }

    /// Whether every stacked model lets the manager build the VMM's own mount namespace.
    pub fn permits_mount_namespace(&self) -> bool {
        self.drivers.iter().all(|d| d.permits_mount_namespace())
    }

    /// The labels for the manager's own objects for the VMM: each the first any driver
    /// gives (one MAC model per stack).
    pub fn create_labels(
        &self,
        plan: &Plan,
        guest: &GuestSecurity,
    ) -> Result<crate::CreateLabels, DriverError> {
        let mut out = crate::CreateLabels::default();
        for d in &self.drivers {
            let l = d.create_labels(plan, guest)?;
            out.socket = out.socket.or(l.socket);
            out.file = out.file.or(l.file);
        }
        Ok(out)
    }

    /// The label of a running process under every model that gives one.
    pub fn process_labels(&self, pid: i32) -> Vec<(Model, Result<Option<String>, DriverError>)> {
        self.drivers
            .iter()
            .map(|d| (d.model(), d.process_label(pid)))
            .collect()
    }
}
