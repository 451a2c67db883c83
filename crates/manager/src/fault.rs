//! Fault injection for crash tests: `SVIRT_FAULT=<step>` kills the process with SIGKILL at
//! that step (as `kill -9` would); `SVIRT_FAULT=<step>:error` makes the step fail with an
//! error instead (rollback tests). Steps: `after-plan`, `after-record`, `after-reserve`,
//! `after-label`, `after-cgroup`, `after-fork` (QEMU forked, pid not yet
//! recorded), `after-spawn`, `after-qmp`, `during-stop`,
//! `after-restore`, `after-release`.

use crate::error::{ManagerError, Result};

/// The steps of a start, in the order they occur (`after-fork`: QEMU forked, its pid not
/// yet recorded).
pub const START_STEPS: &[&str] = &[
    "after-plan",
    "after-record",
    "after-reserve",
    "after-label",
    "after-cgroup",
    "after-fork",
    "after-spawn",
    "after-qmp",
];

/// The steps of the cleanup after QEMU's exit, in the order they occur.
pub const STOP_STEPS: &[&str] = &["during-stop", "after-restore", "after-release"];

/// Every step a fault can be injected at, in the order they occur.
pub fn steps() -> impl Iterator<Item = &'static str> {
    START_STEPS.iter().chain(STOP_STEPS).copied()
}

/// A parsed fault setting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fault {
    step: Option<String>,
    error: bool,
}

impl Fault {
    /// Parses `step` or `step:error`; empty means none.
    pub fn parse(spec: &str) -> Fault {
        let spec = spec.trim();
        if spec.is_empty() {
            return Fault::default();
        }
        match spec.strip_suffix(":error") {
            Some(step) => Fault {
                step: Some(step.to_string()),
                error: true,
            },
            None => Fault {
                step: Some(spec.to_string()),
                error: false,
            },
        }
    }

    /// From the environment (`SVIRT_FAULT`).
    pub fn from_env() -> Fault {
        Fault::parse(&std::env::var("SVIRT_FAULT").unwrap_or_default())
    }

    /// Fires if `step` is the configured one.
    pub fn point(&self, step: &str) -> Result<()> {
        if self.step.as_deref() != Some(step) {
            return Ok(());
        }
        if self.error {
            return Err(ManagerError::Fault(step.to_string()));
        }
        tracing::error!(step, "SVIRT_FAULT: killing the manager process");
        // SAFETY: kill(getpid(), SIGKILL): the crash the tests simulate.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        // SIGKILL to ourselves is delivered before kill returns; never reached.
        std::process::abort()
    }
}
