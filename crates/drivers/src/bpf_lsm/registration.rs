//! BPF-LSM in the registry: the MAC model where the kernel runs BPF LSM programs and
//! neither SELinux nor AppArmor is enabled.

use std::path::Path;
use std::sync::Arc;

use svirt_bpf::enforcer::Programs;
use svirt_domain::Model;
use svirt_store::LevelAllocator;

use super::driver::{BpfLsmConfig, BpfLsmDriver};
use crate::registration::{OpenContext, Registration, Role};
use crate::vmm_needs::VmmNeeds;
use crate::{DriverError, SecurityDriver};

/// Where the bpffs is.
pub const BPFFS: &str = "/sys/fs/bpf";

/// The directory of svirt's pins beneath it; each svirtd pins in a subdirectory named
/// after its state directory ([`instance`]).
pub const PIN_ROOT: &str = "/sys/fs/bpf/svirt";

/// The name of one svirtd's pin directory: a hash (FNV-1a, 64 bits) of its state
/// directory's path, so two svirtds never share maps and a restarted one finds its own.
pub fn instance(state_dir: &Path) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in state_dir.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The registration.
pub(crate) const REGISTRATION: Registration = Registration {
    name: "bpf-lsm",
    model: Model::BpfLsm,
    role: Role::Mac { active },
    changes_files: false,
    open,
    has_records,
    open_retired,
    host_checks: super::host::host_checks,
};

/// Active where LSM programs load and the BPF LSM calls them (no load tried unless the
/// BPF LSM is known to be active: see `host::usable_if_active`).
fn active(root: &Path) -> (bool, String) {
    super::host::usable_if_active(root)
}

fn store_err(e: impl std::fmt::Display) -> DriverError {
    DriverError::Store {
        model: Model::BpfLsm,
        message: e.to_string(),
    }
}

fn config(ctx: &OpenContext<'_>, programs: Programs) -> BpfLsmConfig {
    BpfLsmConfig {
        root: ctx.root_dir.to_path_buf(),
        bpffs: ctx.root_dir.join(BPFFS.trim_start_matches('/')),
        pin_dir: ctx
            .root_dir
            .join(PIN_ROOT.trim_start_matches('/'))
            .join(instance(
                &std::fs::canonicalize(ctx.state_dir).unwrap_or(ctx.state_dir.to_path_buf()),
            )),
        records: ctx.state_dir.join("bpf-lsm"),
        needs: VmmNeeds::default(),
        programs,
    }
}

fn open(ctx: &OpenContext<'_>) -> Result<Arc<dyn SecurityDriver>, DriverError> {
    let levels = LevelAllocator::open(
        ctx.store.clone(),
        crate::selinux::level_config(ctx.root_dir, ctx.settings),
    )
    .map_err(store_err)?
    // As for SELinux: the guest record is durable before the level is used.
    .with_deferred_commits(true);
    Ok(Arc::new(BpfLsmDriver::new(
        config(ctx, Programs::Enforce),
        ctx.store.clone(),
        Some(Arc::new(levels)),
    )?))
}

/// What BPF-LSM recorded: a record file per guest that has labels.
fn has_records(store: &svirt_store::Store) -> Result<bool, DriverError> {
    let dir = store
        .path()
        .parent()
        .map(|d| d.join("bpf-lsm"))
        .ok_or_else(|| store_err("the ledger has no directory"))?;
    Ok(std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some()))
}

/// For the open's recovery: removes the labels of guests that are gone, unpins when none
/// is left; never loads the programs.
fn open_retired(ctx: &OpenContext<'_>) -> Result<Arc<dyn SecurityDriver>, DriverError> {
    let levels = LevelAllocator::open(ctx.store.clone(), svirt_store::AllocatorConfig::default())
        .map_err(store_err)?;
    Ok(Arc::new(BpfLsmDriver::new(
        config(ctx, Programs::MapsOnly),
        ctx.store.clone(),
        Some(Arc::new(levels)),
    )?))
}
