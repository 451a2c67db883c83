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

use svirt_domain::{Model, Plan};

use crate::{ChildHook, DriverError, ExecContext, GuestSecurity, ProbeReport, SecurityDriver};

/// Position of a model in the stack.
pub fn rank(m: Model) -> u8 {
    match m {
        Model::Selinux | Model::Apparmor => 0,
        Model::Dac => 1,
        Model::Landlock => 2,
    }
}

/// A set of drivers applied together to each guest.
#[derive(Clone, Default)]
pub struct Stack {
    drivers: Vec<Arc<dyn SecurityDriver>>,
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
        Stack { drivers }
    }

    /// The drivers, in order.
    pub fn drivers(&self) -> &[Arc<dyn SecurityDriver>] {
        &self.drivers
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

    /// Labels with every driver in order. If one fails, the drivers that already succeeded
    /// are restored (newest first) and the error is returned: nothing stays half-labeled.
    pub fn set_all(&self, plan: &Plan, guest: &GuestSecurity) -> Result<(), StackError> {
        for (i, d) in self.drivers.iter().enumerate() {
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

    /// The label of a running process under every model that gives one.
    pub fn process_labels(&self, pid: i32) -> Vec<(Model, Result<Option<String>, DriverError>)> {
        self.drivers
            .iter()
            .map(|d| (d.model(), d.process_label(pid)))
            .collect()
    }
}
