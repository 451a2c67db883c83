//! Guest lifecycle: allocation, plans, QEMU launch and supervision.
//!
//! [`Manager`] is the one entry point svirtd uses. It is `Clone + Send + Sync` (an `Arc`
//! inside) and its methods block: call them from `tokio::task::spawn_blocking` in an async
//! server. A supervisor thread owned by the manager reaps QEMU processes through pidfds and
//! cleans up after them, whether they were stopped through the manager or died on their own.
//!
//! ```no_run
//! use svirt_manager::{Config, Manager, StartOptions};
//! # fn main() -> Result<(), svirt_manager::ManagerError> {
//! let (manager, report) = Manager::open(Config::new("/var/lib/svirt", "/run/svirt"))?;
//! eprintln!("stack {:?}: {}; accel {}", report.stack, report.why, report.accel);
//! let xml = std::fs::read_to_string("guest.xml").map_err(|e| svirt_manager::ManagerError::Config(e.to_string()))?;
//! let info = manager.start(&xml, StartOptions { paused: true })?;
//! println!("{} runs as pid {:?}", info.name, info.pid);
//! manager.shutdown(&info.name)?;
//! # Ok(()) }
//! ```
//!
//! Start order (each step undone on failure, and recoverable after a crash at any point):
//! parse → plan → guest record `starting` → reserve labels/uids (drivers, committed to the
//! store) → record the identity → set labels (stack) → cgroup → spawn QEMU (child: new
//! session, cgroup join, driver hooks, every fd but stdio and the QMP listener closed on
//! exec, clean environment) → record pid + start time → QMP answers → `running`/`paused`.

mod config;
mod error;
pub mod qmp;
mod types;

pub use config::{AccelChoice, CategoryRange, Config, DriverName, DriverSelection, UidRange};
pub use error::{ManagerError, Result};
pub use types::{
    DriverReport, ExitInfo, ExitReason, GuestInfo, GuestState, GuestSummary, ModelLabels,
    OpenReport, ResourceInfo,
};

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Options of [`Manager::start`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartOptions {
    /// Start with the vCPUs stopped (QEMU `-S`).
    pub paused: bool,
}

/// The guest manager. Cheap to clone; all clones share one state and one supervisor.
#[derive(Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

struct Inner {
    report: OpenReport,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("stack", &self.inner.report.stack)
            .finish_non_exhaustive()
    }
}

fn not_yet(op: &str) -> ManagerError {
    ManagerError::Config(format!("{op}: not implemented yet in this build"))
}

impl Manager {
    /// Opens the store under `config.state_dir`, probes drivers and picks the stack,
    /// probes KVM, sets up the cgroup parent, then recovers: reattaches to guests whose
    /// QEMU still runs (same pid AND same start time), and restores and releases everything
    /// of guests that died meanwhile or never finished starting. Returns the manager and a
    /// report of what it chose and found (svirtd logs it).
    pub fn open(config: Config) -> Result<(Manager, OpenReport)> {
        let _ = config;
        Err(not_yet("open"))
    }

    /// What `open` chose and found.
    pub fn report(&self) -> &OpenReport {
        &self.inner.report
    }

    /// Parses and plans `xml` without touching anything (a dry run, `svirt plan`).
    pub fn plan(&self, xml: &str) -> Result<svirt_domain::Plan> {
        let _ = xml;
        Err(not_yet("plan"))
    }

    /// Starts a guest from domain XML text. Returns once QMP answers. On any failure
    /// everything done so far is undone (labels restored, reservations released, cgroup and
    /// runtime files removed, record removed) and the error returned.
    pub fn start(&self, xml: &str, options: StartOptions) -> Result<GuestInfo> {
        let _ = (xml, options);
        Err(not_yet("start"))
    }

    /// Guests: the active ones, and with `all` also those shut off (kept until the next
    /// start of the same name).
    pub fn list(&self, all: bool) -> Result<Vec<GuestSummary>> {
        let _ = all;
        Err(not_yet("list"))
    }

    /// Everything about one guest.
    pub fn info(&self, name: &str) -> Result<GuestInfo> {
        let _ = name;
        Err(not_yet("info"))
    }

    /// The live domain XML: the original with `<seclabel>` elements for every active model
    /// showing the labels in use (`<label>`, `<imagelabel>`), as libvirt shows them.
    pub fn dumpxml(&self, name: &str) -> Result<String> {
        let _ = name;
        Err(not_yet("dumpxml"))
    }

    /// Graceful stop: ACPI power-down over QMP, then kill after the configured shutdown
    /// timeout. Returns once QEMU is reaped and everything restored.
    pub fn shutdown(&self, name: &str) -> Result<ExitInfo> {
        let _ = name;
        Err(not_yet("shutdown"))
    }

    /// Like [`Manager::shutdown`] with an explicit timeout.
    pub fn shutdown_timeout(&self, name: &str, timeout: Duration) -> Result<ExitInfo> {
        let _ = (name, timeout);
        Err(not_yet("shutdown"))
    }

    /// Immediate stop: SIGKILL to QEMU. Returns once QEMU is reaped and everything restored.
    pub fn destroy(&self, name: &str) -> Result<ExitInfo> {
        let _ = name;
        Err(not_yet("destroy"))
    }

    /// Passes one QMP command (a JSON object with `execute` and optional `arguments`)
    /// through to the guest's QEMU, like `virsh qemu-monitor-command`; returns QEMU's whole
    /// reply (`{"return": …}` or `{"error": …}`).
    pub fn qemu_monitor_command(
        &self,
        name: &str,
        command: serde_json::Value,
    ) -> Result<serde_json::Value> {
        let _ = (name, command);
        Err(not_yet("qemu-monitor-command"))
    }

    /// Waits until the guest is shut off (or `timeout` passes); returns its exit.
    pub fn wait(&self, name: &str, timeout: Duration) -> Result<Option<ExitInfo>> {
        let _ = (name, timeout);
        Err(not_yet("wait"))
    }
}
