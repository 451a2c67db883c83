//! svirtd's JSON API, shared by the daemon and the CLI: request and response types, their
//! OpenAPI schemas, and the conversion from the manager's types. svirtd serializes them,
//! `svirt` deserializes them: one definition of every wire shape.
//!
//! The wire shapes are the manager's own (`svirt_manager::types`, documented in
//! docs/manager.md); this module mirrors them only to attach OpenAPI schemas. Every
//! conversion destructures the manager's struct without `..`, so a field added there
//! fails to compile here until the API (and thus docs/openapi.json) says what it is.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use svirt_manager as m;

/// `POST /v1/domains`: start a guest.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// libvirt domain XML.
    pub xml: String,
    /// Start with the vCPUs stopped (QEMU `-S`).
    #[serde(default)]
    pub paused: bool,
}

/// `POST /v1/domains/{name}/shutdown`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShutdownRequest {
    /// Seconds to wait after the ACPI power-down before killing QEMU (default: the daemon's).
    /// Any u64: one too large to reach (past the clock's range) means no limit.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// `GET /v1/domains/{name}/xml`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DomainXml {
    /// The live XML, with the `<seclabel>` labels in use.
    pub xml: String,
}

/// Every error: one line, for people.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiError {
    /// What went wrong.
    pub error: String,
}

/// `GET /v1/domains` query.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Include shut-off guests.
    #[serde(default)]
    pub all: bool,
}

/// Lifecycle state: `starting`, `running`, `paused`, `stopping`, `shut-off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Labels and cgroup being set up, QEMU not answering yet.
    Starting,
    /// QEMU runs the guest.
    Running,
    /// vCPUs stopped.
    Paused,
    /// A shutdown or destroy is in progress.
    Stopping,
    /// QEMU gone, everything restored.
    ShutOff,
}

impl State {
    /// The wire name (`running`, `shut-off`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Paused => "paused",
            State::Stopping => "stopping",
            State::ShutOff => "shut-off",
        }
    }
}

impl std::fmt::Display for Reason {
    /// `exited (code 1)`, `start-failed: …`, as people read it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Shutdown => f.write_str("shutdown"),
            Reason::Destroyed => f.write_str("destroyed"),
            Reason::ShutdownTimeout => f.write_str("shutdown-timeout"),
            Reason::Exited { code, signal } => {
                f.write_str("exited")?;
                if let Some(c) = code {
                    write!(f, " (code {c})")?;
                }
                if let Some(s) = signal {
                    write!(f, " (signal {s})")?;
                }
                Ok(())
            }
            Reason::DiedWhileDetached => f.write_str("died-while-detached"),
            Reason::StartFailed { message } => write!(f, "start-failed: {message}"),
        }
    }
}

impl From<m::GuestState> for State {
    fn from(s: m::GuestState) -> Self {
        match s {
            m::GuestState::Starting => State::Starting,
            m::GuestState::Running => State::Running,
            m::GuestState::Paused => State::Paused,
            m::GuestState::Stopping => State::Stopping,
            m::GuestState::ShutOff => State::ShutOff,
        }
    }
}

/// One entry of `GET /v1/domains`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Summary {
    /// Guest name.
    pub name: String,
    /// UUID.
    pub uuid: String,
    /// State.
    pub state: State,
    /// QEMU's pid while it runs.
    pub pid: Option<i32>,
    /// Process label per driver: `selinux` → context, `dac` → `+uid:+gid`, `landlock` → ruleset summary.
    pub labels: BTreeMap<String, String>,
}

impl From<m::GuestSummary> for Summary {
    fn from(g: m::GuestSummary) -> Self {
        let m::GuestSummary {
            name,
            uuid,
            state,
            pid,
            labels,
        } = g;
        Summary {
            name,
            uuid,
            state: state.into(),
            pid,
            labels,
        }
    }
}

/// Why a guest stopped (`reason`, plus `code`/`signal` or `message` for some reasons).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case", tag = "reason")]
pub enum Reason {
    /// The guest powered off.
    Shutdown,
    /// `destroy` killed it.
    Destroyed,
    /// ACPI power-down timed out and QEMU was killed.
    ShutdownTimeout,
    /// QEMU exited on its own.
    Exited {
        /// Exit code, when it exited.
        code: Option<i32>,
        /// Signal, when killed by one.
        signal: Option<i32>,
    },
    /// QEMU ended while no svirtd ran.
    DiedWhileDetached,
    /// The start failed and was rolled back.
    StartFailed {
        /// What failed.
        message: String,
    },
}

impl From<m::ExitReason> for Reason {
    fn from(r: m::ExitReason) -> Self {
        match r {
            m::ExitReason::Shutdown => Reason::Shutdown,
            m::ExitReason::Destroyed => Reason::Destroyed,
            m::ExitReason::ShutdownTimeout => Reason::ShutdownTimeout,
            m::ExitReason::Exited { code, signal } => Reason::Exited { code, signal },
            m::ExitReason::DiedWhileDetached => Reason::DiedWhileDetached,
            m::ExitReason::StartFailed { message } => Reason::StartFailed { message },
        }
    }
}

/// The end of a guest.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Exit {
    /// Why it stopped.
    #[serde(flatten)]
    pub reason: Reason,
    /// Unix time (seconds) of the exit.
    pub at: u64,
    /// Restore errors (empty: every label, owner and mode restored).
    pub restore_errors: Vec<String>,
}

impl From<m::ExitInfo> for Exit {
    fn from(e: m::ExitInfo) -> Self {
        let m::ExitInfo {
            reason,
            at,
            restore_errors,
        } = e;
        Exit {
            reason: reason.into(),
            at,
            restore_errors,
        }
    }
}

/// The labels of a guest under one security model.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Labels {
    /// `selinux`, `dac`, `landlock` or `apparmor`.
    pub model: String,
    /// Process label (`null`: unconfined under this model).
    pub process: Option<String>,
    /// Private image label, where the model has one.
    pub image: Option<String>,
}

/// Text of a serde enum value (the manager's enums serialize as plain strings).
fn enum_text<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(e) => format!("<{e}>"),
    }
}

impl From<m::ModelLabels> for Labels {
    fn from(l: m::ModelLabels) -> Self {
        let m::ModelLabels {
            model,
            process,
            image,
        } = l;
        Labels {
            model: model.as_str().to_string(),
            process,
            image,
        }
    }
}

/// One host object the guest uses, with its label under each model.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Resource {
    /// Absolute path.
    pub path: String,
    /// Kind (`disk-image`, `backing-image`, `cdrom`, `kernel`, `initrd`, `chardev-file`, …).
    pub kind: String,
    /// `rw` or `ro`.
    pub access: String,
    /// `private`, `shared` or `read-only-content`.
    pub sharing: String,
    /// Device it belongs to (`disk vda`, `serial 0`…).
    pub device: String,
    /// Label per model (`null`: left untouched by that model).
    pub labels: BTreeMap<String, Option<String>>,
}

impl From<m::ResourceInfo> for Resource {
    fn from(r: m::ResourceInfo) -> Self {
        let m::ResourceInfo {
            path,
            kind,
            access,
            sharing,
            device,
            labels,
        } = r;
        Resource {
            path: path.display().to_string(),
            kind: enum_text(&kind),
            access: enum_text(&access),
            sharing: enum_text(&sharing),
            device,
            labels,
        }
    }
}

/// Everything about one guest.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Info {
    /// Guest name.
    pub name: String,
    /// UUID.
    pub uuid: String,
    /// State.
    pub state: State,
    /// QEMU pid while active.
    pub pid: Option<i32>,
    /// QEMU's start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start_time: Option<u64>,
    /// `kvm` or `tcg`.
    pub accel: String,
    /// Labels per model.
    pub labels: Vec<Labels>,
    /// The guest's uid (DAC).
    pub uid: Option<u32>,
    /// The guest's gid (DAC).
    pub gid: Option<u32>,
    /// cgroup directories (one per v1 hierarchy, or one v2 group).
    pub cgroups: Vec<String>,
    /// Runtime directory.
    pub runtime_dir: String,
    /// QMP socket.
    pub qmp_socket: String,
    /// Every resource with its label per model and access.
    pub resources: Vec<Resource>,
    /// QEMU argv.
    pub command_line: Vec<String>,
    /// The exit, once shut off.
    pub exit: Option<Exit>,
}

impl From<m::GuestInfo> for Info {
    fn from(g: m::GuestInfo) -> Self {
        let m::GuestInfo {
            name,
            uuid,
            state,
            pid,
            start_time,
            accel,
            labels,
            uid,
            gid,
            cgroups,
            runtime_dir,
            qmp_socket,
            resources,
            command_line,
            exit,
        } = g;
        Info {
            name,
            uuid,
            state: state.into(),
            pid,
            start_time,
            accel,
            labels: labels.into_iter().map(Into::into).collect(),
            uid,
            gid,
            cgroups: cgroups.iter().map(|p| p.display().to_string()).collect(),
            runtime_dir: runtime_dir.display().to_string(),
            qmp_socket: qmp_socket.display().to_string(),
            resources: resources.into_iter().map(Into::into).collect(),
            command_line,
            exit: exit.map(Into::into),
        }
    }
}

/// One security driver considered at startup.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Driver {
    /// Model.
    pub model: String,
    /// Whether it is in the stack.
    pub active: bool,
    /// Why.
    pub reason: String,
}

/// A guest cleaned up at startup.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Recovered {
    /// Guest name.
    pub name: String,
    /// What was done.
    pub action: String,
}

/// `GET /v1/host`: what the daemon chose and found at startup.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Host {
    /// svirtd version.
    pub version: String,
    /// Models stacked, in order (empty: `--drivers none`).
    pub stack: Vec<String>,
    /// Why this stack.
    pub why: String,
    /// Every driver considered.
    pub drivers: Vec<Driver>,
    /// `kvm` or `tcg`.
    pub accel: String,
    /// Why that accelerator.
    pub accel_reason: String,
    /// cgroup layout used.
    pub cgroup: String,
    /// QEMU binary.
    pub qemu: String,
    /// Guests found running at startup and reattached.
    pub reattached: Vec<String>,
    /// Guests found dead or half-started at startup and cleaned up.
    pub recovered: Vec<Recovered>,
}

impl From<m::OpenReport> for Host {
    fn from(r: m::OpenReport) -> Self {
        let m::OpenReport {
            stack,
            why,
            drivers,
            accel,
            accel_reason,
            cgroup,
            qemu,
            reattached,
            recovered,
        } = r;
        Host {
            version: env!("CARGO_PKG_VERSION").to_string(),
            stack: stack.iter().map(|m| m.as_str().to_string()).collect(),
            why,
            drivers: drivers
                .into_iter()
                .map(|d| {
                    let m::DriverReport {
                        model,
                        active,
                        reason,
                    } = d;
                    Driver {
                        model: model.as_str().to_string(),
                        active,
                        reason,
                    }
                })
                .collect(),
            accel,
            accel_reason,
            cgroup,
            qemu: qemu.display().to_string(),
            reattached,
            recovered: recovered
                .into_iter()
                .map(|m::Recovered { guest, what }| Recovered {
                    name: guest,
                    action: what,
                })
                .collect(),
        }
    }
}

/// What is being done to a tree: `scanning`, `labeling`, `restoring`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TreePhase {
    /// Walking the tree and reading the original labels.
    Scanning,
    /// Writing the guest's labels.
    Labeling,
    /// Writing the original labels back.
    Restoring,
}

impl TreePhase {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            TreePhase::Scanning => "scanning",
            TreePhase::Labeling => "labeling",
            TreePhase::Restoring => "restoring",
        }
    }
}

impl From<m::TreePhase> for TreePhase {
    fn from(p: m::TreePhase) -> Self {
        match p {
            m::TreePhase::Scanning => TreePhase::Scanning,
            m::TreePhase::Labeling => TreePhase::Labeling,
            m::TreePhase::Restoring => TreePhase::Restoring,
        }
    }
}

/// One entry of `GET /v1/domains/{name}/progress`: a tree (filesystem share, TPM state)
/// the guest's start or stop is labeling or restoring right now.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TreeProgress {
    /// The tree's root, as the plan names it.
    pub path: String,
    /// The driver working on it (`selinux`, `dac`).
    pub model: String,
    /// What is being done.
    pub phase: TreePhase,
    /// Entries handled so far; null until the driver's first report.
    pub done: Option<u64>,
    /// Entries to handle (while `scanning`: entries seen so far); null when unknown.
    pub total: Option<u64>,
    /// Milliseconds since this driver started on the guest's trees.
    pub elapsed_ms: u64,
}

impl From<m::TreeProgress> for TreeProgress {
    fn from(t: m::TreeProgress) -> Self {
        let m::TreeProgress {
            path,
            model,
            phase,
            done,
            total,
            elapsed_ms,
        } = t;
        TreeProgress {
            path,
            model,
            phase: phase.into(),
            done,
            total,
            elapsed_ms,
        }
    }
}
