//! AppArmor in the registry: the MAC model where AppArmor is the host's enabled LSM.

use std::path::PathBuf;
use std::sync::Arc;

use svirt_domain::Model;

use super::driver::{ApparmorConfig, ApparmorDriver, enabled, find_parser};
use crate::host_check::{Check, HostView, Status, check};
use crate::registration::{OpenContext, Registration, Role};
use crate::vmm_needs::VmmNeeds;
use crate::{DriverError, SecurityDriver};

/// The registration. AppArmor records nothing in the ledger (its profiles are files in
/// the state directory, which a stacked driver's recovery sweeps): a driver no longer
/// stacked has nothing there to put back.
pub(crate) const REGISTRATION: Registration = Registration {
    name: "apparmor",
    model: Model::Apparmor,
    role: Role::Mac { active: enabled },
    changes_files: false,
    open,
    has_records: |_| Ok(false),
    open_retired: |_| {
        Err(DriverError::Other {
            model: Model::Apparmor,
            message: "AppArmor records nothing in the ledger to recover".into(),
        })
    },
    host_checks,
};

fn open(ctx: &OpenContext<'_>) -> Result<Arc<dyn SecurityDriver>, DriverError> {
    let parser = find_parser().ok_or_else(|| DriverError::Unavailable {
        model: Model::Apparmor,
        reason: "apparmor_parser not found (apt-get install apparmor)".into(),
    })?;
    Ok(Arc::new(ApparmorDriver::new(ApparmorConfig {
        root: ctx.root_dir.to_path_buf(),
        profile_dir: ctx.state_dir.join("apparmor"),
        parser,
        needs: VmmNeeds::default(),
    })))
}

/// `svirt host-validate`'s lines for AppArmor: enabled, and `apparmor_parser` present.
fn host_checks(view: &HostView<'_>) -> Vec<Check> {
    let (on, why) = enabled(&view.host.path("/"));
    let listed = view.lsm_active("apparmor");
    let mut out = vec![check(
        "AppArmor",
        "enabled",
        if on { Status::Pass } else { Status::Warn },
        if on || listed {
            why
        } else {
            format!("{why}: svirt confines guests without it")
        },
    )];
    let parser: Option<PathBuf> = find_parser();
    out.push(match parser {
        Some(p) => check(
            "AppArmor",
            "apparmor_parser",
            Status::Pass,
            format!("{} (profiles are compiled with it)", p.display()),
        ),
        None => check(
            "AppArmor",
            "apparmor_parser",
            if on { Status::Fail } else { Status::Warn },
            "not found (apt-get install apparmor)",
        ),
    });
    out
}
