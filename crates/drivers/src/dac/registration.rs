//! DAC in the registry: a uid/gid of its own per guest, stacked on every host.

use std::sync::Arc;

use svirt_domain::Model;
use svirt_store::{IdAllocator, IdConfig};

use super::{DacConfig, DacDriver};
use crate::registration::{OpenContext, Registration, Role};
use crate::{DriverError, SecurityDriver};

/// The registration.
pub(crate) const REGISTRATION: Registration = Registration {
    name: "dac",
    model: Model::Dac,
    role: Role::Base,
    changes_files: true,
    open,
    has_records: |store| DacDriver::has_records(store).map_err(super::store_err),
    // Opened the same way: its recovery needs the uid allocator and the trees.
    open_retired: open,
};

/// The DAC driver on the ledger, with the configured uid range (else the store's
/// default).
fn open(ctx: &OpenContext<'_>) -> Result<Arc<dyn SecurityDriver>, DriverError> {
    let range = ctx.settings.uid_range.unwrap_or_default();
    let ids = IdAllocator::open(
        ctx.store.clone(),
        IdConfig {
            first: range.first,
            last: range.last,
            root: ctx.root_dir.to_path_buf(),
        },
    )
    .map_err(super::store_err)?
    // The start writes the guest record durably before the uid is used (the runtime dir
    // chown comes after it): one fsync fewer per start.
    .with_deferred_commits(true);
    let d = DacDriver::new(
        DacConfig {
            accounts_root: ctx.root_dir.to_path_buf(),
            fs_root: ctx.root_dir.to_path_buf(),
            ..DacConfig::default()
        },
        ctx.store.clone(),
        Arc::new(ids),
    );
    d.set_progress(Some((ctx.progress)(Model::Dac)));
    Ok(Arc::new(d))
}
