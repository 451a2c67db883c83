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

/// Where the programs and maps are pinned.
pub const PIN_DIR: &str = "/sys/fs/bpf/svirt";

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

/// Active where LSM programs load and the BPF LSM calls them.
fn active(root: &Path) -> (bool, String) {
    super::host::usable(root)
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
        pin_dir: ctx
            .root_dir
            .join(PIN_DIR.strip_prefix('/').unwrap_or(PIN_DIR)),
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
