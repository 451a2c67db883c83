//! Fault injection for crash tests, compiled in only with the `fault-injection` feature
//! (enabled for test builds through the crates' dev-dependencies; `cargo build` of the
//! daemon leaves it out): `SVIRT_FAULT=<step>` kills the process with SIGKILL at
//! that step (as `kill -9` would); `SVIRT_FAULT=<step>:error` makes the step fail with an
//! error instead (rollback tests); `SVIRT_FAULT=<step>:panic` panics there (a bug in a
//! driver, as the cleanup must survive). Steps: `after-plan`, `after-record`, `after-reserve`,
//! `after-record-deferred` (runtime dir made, guest record written without an fsync),
//! `after-label`, `after-cgroup`, `after-fork` (QEMU forked, pid not yet
//! recorded), `after-spawn`, `after-qmp`, `during-stop`,
//! `after-restore`, `after-release`; and `stop-signal` (a stop about to SIGKILL QEMU
//! through its pidfd, intent recorded: `:error` there stands for a failed
//! `pidfd_send_signal`; in no step list, as no crash or rollback test iterates it).

use crate::error::{ManagerError, Result};

/// The steps of a start, in the order they occur (`after-fork`: QEMU forked, its pid not
/// yet recorded).
pub const START_STEPS: &[&str] = &[
    "after-plan",
    "after-record",
    "after-reserve",
    "after-record-deferred",
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

/// What a fault does when its step is reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Mode {
    /// SIGKILL to the process.
    #[default]
    Kill,
    /// The step fails with [`ManagerError::Fault`].
    Error,
    /// The step panics.
    Panic,
}

/// A parsed fault setting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fault {
    step: Option<String>,
    mode: Mode,
}

impl Fault {
    /// Parses `step`, `step:error` or `step:panic`; empty means none.
    pub fn parse(spec: &str) -> Fault {
        let spec = spec.trim();
        if spec.is_empty() {
            return Fault::default();
        }
        let (step, mode) = if let Some(step) = spec.strip_suffix(":error") {
            (step, Mode::Error)
        } else if let Some(step) = spec.strip_suffix(":panic") {
            (step, Mode::Panic)
        } else {
            (spec, Mode::Kill)
        };
        Fault {
            step: Some(step.to_string()),
            mode,
        }
    }

    /// From the environment (`SVIRT_FAULT`), in builds with the `fault-injection` feature
    /// (test builds: the crates' dev-dependencies enable it); none in production builds,
    /// which never read the variable.
    pub fn from_env() -> Fault {
        if cfg!(feature = "fault-injection") {
            Fault::parse(&std::env::var("SVIRT_FAULT").unwrap_or_default())
        } else {
            Fault::default()
        }
    }

    /// Whether this build can inject faults (the `fault-injection` feature).
    pub const fn available() -> bool {
        cfg!(feature = "fault-injection")
    }

    /// Fires if `step` is the configured one.
    pub fn point(&self, step: &str) -> Result<()> {
        // Every step of a start or stop passes here: at trace level, their timestamps show
        // where the time goes (`SVIRTD_LOG=svirt_manager::fault=trace`).
        tracing::trace!(step, "step");
        if self.step.as_deref() != Some(step) {
            return Ok(());
        }
        match self.mode {
            Mode::Error => Err(ManagerError::Fault(step.to_string())),
            Mode::Panic => panic!("SVIRT_FAULT: injected panic at {step}"),
            Mode::Kill => {
                tracing::error!(step, "SVIRT_FAULT: killing the manager process");
                // SAFETY: kill(getpid(), SIGKILL): the crash the tests simulate.
                unsafe {
                    libc::kill(libc::getpid(), libc::SIGKILL);
                }
                // SIGKILL to ourselves is delivered before kill returns; never reached.
                std::process::abort()
            }
        }
    }
}
