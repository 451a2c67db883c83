//! SMACK in the registry: the MAC model where SMACK is active and smackfs mounted.

use std::sync::Arc;

use svirt_domain::Model;
use svirt_store::LevelAllocator;

use super::driver::{SmackConfig, SmackDriver};
use crate::registration::{OpenContext, Registration, Role};
use crate::relabel::{Relabeler, SMACK};
use crate::{DriverError, SecurityDriver};

/// The registration.
pub(crate) const REGISTRATION: Registration = Registration {
    name: "smack",
    model: Model::Smack,
    role: Role::Mac {
        active: super::host::active,
    },
    changes_files: true,
    open,
    has_records,
    open_retired,
    host_checks: super::host::host_checks,
};

fn store_err(e: impl std::fmt::Display) -> DriverError {
    DriverError::Store {
        model: Model::Smack,
        message: e.to_string(),
    }
}

/// SMACK's relabel engine on the ledger, under the host root.
fn engine(ctx: &OpenContext<'_>, threads: usize) -> Result<Arc<Relabeler>, DriverError> {
    let root = svirt_hostfs::FsRoot::open(ctx.root_dir).map_err(|source| DriverError::Object {
        model: Model::Smack,
        op: "open root",
        path: ctx.root_dir.to_path_buf(),
        source,
    })?;
    Relabeler::open_for(SMACK, ctx.store.clone(), root, threads).map_err(|e| DriverError::Other {
        model: Model::Smack,
        message: format!("relabel engine: {e}"),
    })
}

fn open(ctx: &OpenContext<'_>) -> Result<Arc<dyn SecurityDriver>, DriverError> {
    let levels = LevelAllocator::open(
        ctx.store.clone(),
        crate::selinux::level_config(ctx.root_dir, ctx.settings),
    )
    .map_err(store_err)?
    // As for SELinux: the guest record is durable before the level is used.
    .with_deferred_commits(true);
    let relabeler = engine(ctx, 2)?;
    relabeler.set_progress(Some((ctx.progress)(Model::Smack)));
    Ok(Arc::new(SmackDriver::new(
        SmackConfig::new(ctx.root_dir, ctx.state_dir),
        relabeler,
        Some(Arc::new(levels)),
    )?))
}

/// What SMACK recorded: the relabel engine's SMACK records, or a rule record.
fn has_records(store: &svirt_store::Store) -> Result<bool, DriverError> {
    if Relabeler::has_records_of(store, SMACK).map_err(store_err)? {
        return Ok(true);
    }
    let dir = store
        .path()
        .parent()
        .map(|d| d.join("smack"))
        .ok_or_else(|| store_err("the ledger has no directory"))?;
    Ok(std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some()))
}

/// For the open's recovery: restores what guests that are gone labeled, revokes their
/// rules, releases their levels.
fn open_retired(ctx: &OpenContext<'_>) -> Result<Arc<dyn SecurityDriver>, DriverError> {
    let levels = LevelAllocator::open(ctx.store.clone(), svirt_store::AllocatorConfig::default())
        .map_err(store_err)?;
    Ok(Arc::new(SmackDriver::new(
        SmackConfig::new(ctx.root_dir, ctx.state_dir),
        engine(ctx, 1)?,
        Some(Arc::new(levels)),
    )?))
}
