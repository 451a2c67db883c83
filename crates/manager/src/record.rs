//! The guest record kept in the store: everything needed to show, stop, and recover a guest
//! after a crash of the manager at any point.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use svirt_domain::{Model, Plan};
use svirt_drivers::GuestSecurity;
use svirt_labels::MlsRange;

use crate::process::SpawnFloor;
use crate::qemu::VmSpec;
use crate::types::{ExitInfo, ExitReason, GuestState};

/// How far a start got; recovery undoes exactly what the phase implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Record written, nothing reserved yet (reservations may exist if the crash came
    /// between the driver's commit and ours: recovery looks them up by owner).
    Recorded,
    /// Identity reserved and recorded.
    Reserved,
    /// Labels being set (restore needed).
    Labeling,
    /// Cgroup being created.
    Cgroup,
    /// QEMU being spawned (its pid may not be recorded: the pid file the child writes
    /// before exec finds it).
    Spawning,
    /// QEMU spawned, pid and start time recorded.
    Spawned,
    /// QMP answered: the guest runs.
    Up,
}

/// What a stop in progress was asked for, so a restarted manager reports the right reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Intent {
    /// ACPI shutdown requested.
    Shutdown,
    /// Shutdown timed out; killed.
    ShutdownKilled,
    /// Destroy requested.
    Destroy,
}

impl Intent {
    /// How a guest whose stop had this intent ended (the live cleanup and recovery agree).
    pub fn exit_reason(self) -> ExitReason {
        match self {
            Intent::Destroy => ExitReason::Destroyed,
            Intent::ShutdownKilled => ExitReason::ShutdownTimeout,
            Intent::Shutdown => ExitReason::Shutdown,
        }
    }
}

/// The persisted guest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Name.
    pub name: String,
    /// UUID.
    pub uuid: String,
    /// The XML as given.
    pub xml: String,
    /// The plan.
    pub plan: Plan,
    /// What QEMU was built from.
    pub spec: VmSpec,
    /// Lifecycle state.
    pub state: GuestState,
    /// Start progress.
    pub phase: Phase,
    /// Models of the stack used.
    pub models: Vec<Model>,
    /// Allocated or static level (SELinux).
    pub level: Option<String>,
    /// uid/gid (DAC).
    pub ids: Option<(u32, u32)>,
    /// QEMU pid.
    pub pid: Option<i32>,
    /// QEMU start time (`/proc/PID/stat` field 22).
    pub start_time: Option<u64>,
    /// Written before QEMU is forked: no process of this start began earlier. With the
    /// pid file the child writes, it identifies a QEMU forked before its pid was
    /// recorded (see `process::find_unrecorded`).
    #[serde(default)]
    pub spawn_floor: Option<SpawnFloor>,
    /// Runtime directory.
    pub runtime_dir: PathBuf,
    /// QMP socket.
    pub qmp_socket: PathBuf,
    /// Cgroup directories.
    pub cgroups: Vec<PathBuf>,
    /// `kvm` or `tcg`.
    pub accel: String,
    /// QEMU argv (binary first).
    pub argv: Vec<String>,
    /// Stop in progress.
    pub intent: Option<Intent>,
    /// Exit, once shut off.
    pub exit: Option<ExitInfo>,
    /// While a start that replaced a shut-off record of the same name is not up yet: that
    /// record, put back (with the failure as its exit) if the start fails or a crash
    /// interrupts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Box<Record>>,
    /// Set on a shut-off record when the cleanup of the run that ended did not run to its
    /// end (it panicked): where that run may have left processes and files. The next open
    /// removes them (processes killed before anything is restored) and clears this. A
    /// record without it, a stop that completed, never has its cgroups touched at open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leftovers: Option<Leftovers>,
}

/// What a cleanup that did not finish may have left, as the run that ended recorded it
/// (not as the current configuration would name it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leftovers {
    /// The run's cgroup directories.
    pub cgroups: Vec<PathBuf>,
    /// The run's runtime directory.
    pub runtime_dir: PathBuf,
    /// The run's spawn floor (verifies the QEMU of its pid file, if one is there).
    pub spawn_floor: Option<SpawnFloor>,
}

impl Record {
    /// The identity handed to drivers.
    pub fn security(&self) -> GuestSecurity {
        GuestSecurity {
            name: self.name.clone(),
            level: self
                .level
                .as_deref()
                .and_then(|l| l.parse::<MlsRange>().ok()),
            ids: self.ids,
        }
    }

    /// Marks the guest shut off: its exit recorded now, no pid, no stop intent, no earlier
    /// record carried any more.
    pub fn shut_off(&mut self, reason: ExitReason, restore_errors: Vec<String>) {
        self.exit = Some(ExitInfo::now(reason, restore_errors));
        self.state = GuestState::ShutOff;
        self.pid = None;
        self.intent = None;
        self.previous = None;
    }

    /// For a start that never came up (`phase < Up`) and replaced a shut-off record of the
    /// same name: that record, taken out, with the failed start as its exit
    /// (`start-failed{message}`, `restore_errors`). `None` for a first start, or a guest
    /// that was up.
    pub fn take_earlier(&mut self, message: String, restore_errors: Vec<String>) -> Option<Record> {
        if self.phase >= Phase::Up {
            return None;
        }
        let mut earlier = *self.previous.take()?;
        earlier.exit = Some(ExitInfo::now(
            ExitReason::StartFailed { message },
            restore_errors,
        ));
        Some(earlier)
    }

    /// Serialized for the store.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing plain data structures cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}
