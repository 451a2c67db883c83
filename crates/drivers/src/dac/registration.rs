//! DAC in the registry: a uid/gid of its own per guest, stacked on every host.

use std::sync::Arc;

use svirt_domain::Model;
use svirt_store::{IdAllocator, IdConfig};

use super::acl::{ACL_MASK, ACL_UNDEFINED_ID, ACL_USER, Acl};
use super::{DacConfig, DacDriver};
use crate::host_check::{Check, HostView, Status, check, xattr_checks};
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
    host_checks,
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

/// `svirt host-validate`'s lines for DAC: the privilege to give each guest its own uid,
/// and POSIX ACLs where images live (read-only content is granted to the guest's uid
/// through an ACL entry, never `o+r`).
fn host_checks(view: &HostView<'_>) -> Vec<Check> {
    // A named-user entry (svirt's default first guest uid) with its mask: the shape of
    // the entry a read grant adds.
    let mut acl = Acl::from_mode(0o600);
    acl.set(ACL_USER, crate::registration::DEFAULT_UID_FIRST, 4);
    acl.set(ACL_MASK, ACL_UNDEFINED_ID, acl.group_class_union());
    let mut out = vec![privilege_check()];
    out.extend(xattr_checks(
        view,
        "POSIX ACLs",
        "system.posix_acl_access",
        &acl.encode(),
    ));
    out
}

fn privilege_check() -> Check {
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        check(
            "DAC",
            "privileges to give each guest its own uid",
            Status::Pass,
            "running as root",
        )
    } else {
        check(
            "DAC",
            "privileges to give each guest its own uid",
            Status::Warn,
            format!("running as uid {euid}: svirtd must run as root"),
        )
    }
}
