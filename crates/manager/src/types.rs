//! What the manager returns: serializable (serde) so svirtd can send them as JSON as is.
//! Field names are part of the JSON API (see docs/manager.md): add, do not rename.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use svirt_domain::{Access, Model, ResourceKind, Sharing};

/// Lifecycle state of a guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuestState {
    /// Being started (labels and cgroup being set up, QEMU not yet answering).
    Starting,
    /// QEMU runs the guest.
    Running,
    /// QEMU runs but the vCPUs are stopped (`--paused`, or `stop` over QMP).
    Paused,
    /// A shutdown or destroy is in progress.
    Stopping,
    /// QEMU is gone and everything is restored; the record stays for `list --all`.
    ShutOff,
}

impl GuestState {
    /// The name used in JSON and in the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            GuestState::Starting => "starting",
            GuestState::Running => "running",
            GuestState::Paused => "paused",
            GuestState::Stopping => "stopping",
            GuestState::ShutOff => "shut-off",
        }
    }

    /// Whether a QEMU process belongs to the guest in this state.
    pub fn is_active(self) -> bool {
        !matches!(self, GuestState::ShutOff)
    }
}

impl std::fmt::Display for GuestState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a guest stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "reason")]
pub enum ExitReason {
    /// The guest powered off (ACPI shutdown, or QMP `quit`/guest `poweroff`).
    Shutdown,
    /// `destroy` killed it.
    Destroyed,
    /// `shutdown` asked for ACPI power-down, the guest did not stop in time, QEMU was killed.
    ShutdownTimeout,
    /// QEMU exited on its own with this status.
    Exited {
        /// Exit code, when it exited.
        code: Option<i32>,
        /// Signal, when it was killed by one.
        signal: Option<i32>,
    },
    /// QEMU ended while no manager was running (found at open, status unknown).
    DiedWhileDetached,
    /// The start failed (or the manager died during the start) and was rolled back.
    StartFailed {
        /// What failed.
        message: String,
    },
}

/// The end of a guest: why, when, and whether everything was restored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Why it stopped.
    #[serde(flatten)]
    pub reason: ExitReason,
    /// Unix time (seconds) of the exit.
    pub at: u64,
    /// Restore errors, if any (empty: every label, owner and mode restored).
    pub restore_errors: Vec<String>,
}

impl ExitInfo {
    /// An exit happening now.
    pub(crate) fn now(reason: ExitReason, restore_errors: Vec<String>) -> ExitInfo {
        ExitInfo {
            reason,
            at: now_secs(),
            restore_errors,
        }
    }
}

/// One line of `list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestSummary {
    /// Guest name.
    pub name: String,
    /// Guest UUID.
    pub uuid: String,
    /// State.
    pub state: GuestState,
    /// QEMU's pid while it runs.
    pub pid: Option<i32>,
    /// Process label per driver model (`selinux` → context, `dac` → `+uid:+gid`,
    /// `landlock` → ruleset summary).
    pub labels: BTreeMap<String, String>,
}

/// The labels of a guest under one model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelLabels {
    /// The model.
    pub model: Model,
    /// The process label (`None`: unconfined under this model).
    pub process: Option<String>,
    /// The guest's private image label, where the model has one.
    pub image: Option<String>,
}

/// A resource of a running guest with what each model did to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceInfo {
    /// Absolute path.
    pub path: PathBuf,
    /// Kind.
    pub kind: ResourceKind,
    /// Access the VMM has.
    pub access: Access,
    /// Who else may use it.
    pub sharing: Sharing,
    /// Device it belongs to (`disk vda`, `serial 0`…).
    pub device: String,
    /// Label per model (`None`: left untouched by that model).
    pub labels: BTreeMap<String, Option<String>>,
}

/// Everything about one guest (`info`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestInfo {
    /// Guest name.
    pub name: String,
    /// UUID.
    pub uuid: String,
    /// State.
    pub state: GuestState,
    /// QEMU pid while active.
    pub pid: Option<i32>,
    /// Start time of the QEMU process in clock ticks since boot (`/proc/PID/stat` field 22),
    /// used with the pid to recognise the process after a manager restart.
    pub start_time: Option<u64>,
    /// Accelerator used (`kvm` or `tcg`).
    pub accel: String,
    /// Labels per model.
    pub labels: Vec<ModelLabels>,
    /// The guest's uid, when DAC gives it one.
    pub uid: Option<u32>,
    /// The guest's gid, when DAC gives it one.
    pub gid: Option<u32>,
    /// The guest's cgroup directories (one per v1 controller hierarchy, or one v2 group).
    pub cgroups: Vec<PathBuf>,
    /// The guest's runtime directory.
    pub runtime_dir: PathBuf,
    /// QMP socket path.
    pub qmp_socket: PathBuf,
    /// Every resource with its label per model and access.
    pub resources: Vec<ResourceInfo>,
    /// The QEMU command line (argv).
    pub command_line: Vec<String>,
    /// The exit, once shut off.
    pub exit: Option<ExitInfo>,
}

/// One driver the manager stacked (or considered), and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriverReport {
    /// The model.
    pub model: Model,
    /// Whether it is in the stack.
    pub active: bool,
    /// Why (its probe result, or why it was not chosen).
    pub reason: String,
}

/// What `open` found and decided: svirtd logs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenReport {
    /// Models stacked, in order.
    pub stack: Vec<Model>,
    /// One line on why this stack.
    pub why: String,
    /// Every driver considered.
    pub drivers: Vec<DriverReport>,
    /// Accelerator chosen (`kvm` or `tcg`).
    pub accel: String,
    /// Why that accelerator.
    pub accel_reason: String,
    /// The cgroup layout used (`v1 (memory, pids)` or `v2 (…)`).
    pub cgroup: String,
    /// QEMU binary.
    pub qemu: PathBuf,
    /// Guests found running and reattached.
    pub reattached: Vec<String>,
    /// What the open's recovery did, guest by guest (failures included).
    pub recovered: Vec<Recovered>,
}

/// One thing the open's recovery did, or failed to do.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Recovered {
    /// The guest it concerns (`(orphaned records)` when the records name none).
    pub guest: String,
    /// What was done, or what failed, naming the object.
    pub what: String,
}

impl Recovered {
    /// `what` was done for `guest`.
    pub fn new(guest: impl Into<String>, what: impl Into<String>) -> Recovered {
        Recovered {
            guest: guest.into(),
            what: what.into(),
        }
    }
}

/// Seconds since the epoch (0 if the clock is before it).
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
