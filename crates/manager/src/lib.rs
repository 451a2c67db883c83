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
//! Start order (each step undone on failure, and recoverable after a crash at any point;
//! `docs/manager.md` has the details): parse → plan → reserve labels/uids (drivers;
//! deferred commits) → guest record written durably (this makes the reservations durable
//! too), cgroup created on a separate thread meanwhile → set labels (stack) → spawn QEMU
//! (child: new session, pid file, driver hooks, every fd but stdio and the QMP listener
//! closed on exec, clean environment) → the parent joins the child to the cgroup while QEMU
//! starts, and records pid + start time → QMP answers → `running`/`paused`.

pub mod accel;
pub mod cgroup;
mod config;
mod dumpxml;
mod error;
pub mod fault;
pub mod firmware;
mod glue;
mod helper;
mod host_cache;
pub mod host_checks;
pub mod idmap;
pub mod jail;
mod manager;
pub mod namespaces;
pub mod process;
mod progress;
pub mod qemu;
pub mod qmp;
mod record;
mod recover;
mod stack;
mod start;
mod stop;
mod supervise;
mod swtpm;
mod types;
mod undo;
mod vfork;
mod virtiofs;

pub use config::{
    AccelChoice, CategoryRange, Config, DEFAULT_NVRAM_DIR, DEFAULT_TPM_STATE_DIR,
    DEFAULT_UID_RANGE, DriverSelection, Settings, UidRange,
};
pub use error::{ManagerError, Result};
pub use progress::{TreePhase, TreeProgress};
pub use types::{
    DriverReport, ExitInfo, ExitReason, GuestInfo, GuestState, GuestSummary, ModelLabels,
    OpenReport, Recovered, ResourceInfo,
};

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::manager::Inner;

/// Options of [`Manager::start`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartOptions {
    /// Start with the vCPUs stopped (QEMU `-S`).
    pub paused: bool,
}

/// The guest manager. Cheap to clone; all clones share one state and one supervisor
/// thread. When the last clone is dropped the supervisor stops, the cleanups after QEMU
/// exits that are under way are waited for (however long their restores take), and the
/// store is closed; running guests keep running and the next [`Manager::open`] reattaches
/// to them.
#[derive(Clone)]
pub struct Manager {
    inner: Arc<Inner>,
    _guard: Arc<supervise::Guard>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("stack", &self.inner.report.stack)
            .finish_non_exhaustive()
    }
}

impl Manager {
    /// Opens the store under `config.state_dir`, probes drivers and picks the stack,
    /// probes KVM, detects the cgroup layout, then recovers: reattaches to guests whose
    /// QEMU still runs (same pid AND same start time), and restores and releases everything
    /// of guests that died meanwhile or never finished starting. Returns the manager and a
    /// report of what it chose and found (svirtd logs it).
    pub fn open(config: Config) -> Result<(Manager, OpenReport)> {
        // Root's alone, before anything is created in them: the databases name every
        // share and disk, the run dir holds the monitor sockets and pid files.
        config::private_dir(&config.state_dir)?;
        config::private_dir(&config.run_dir)?;
        config::private_dir(&config.run_dir.join(manager::GUESTS_DIR))?;
        config::private_dir(&config.run_dir.join(manager::CONTROL_DIR))?;
        let store =
            Arc::new(svirt_store::Store::open(&config.state_dir).map_err(ManagerError::Store)?);
        let progress = Arc::new(progress::Board::default());
        let mut stack = stack::build(&config, &store, &progress)?;
        let retired_errors = std::mem::take(&mut stack.retired_errors);
        // The store and the drivers made their databases with the process umask.
        config::restrict_tree(&config.state_dir)?;
        let qemu = glue::qemu_binary(config.qemu_binary.as_ref(), None)?;
        let (accel, accel_reason) = match config.accel {
            AccelChoice::Tcg => ("tcg".to_string(), "configured: TCG".to_string()),
            AccelChoice::Kvm => ("kvm".to_string(), "configured: KVM".to_string()),
            AccelChoice::Auto => {
                let p = accel::probe_kvm(&qemu, &config.root_dir.join("dev/kvm"));
                (p.accel.to_string(), p.reason)
            }
        };
        let layout = cgroup::Layout::detect(&config.cgroup_root);
        let (wake_rd, wake_wr) = rustix::pipe::pipe_with(
            rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
        )
        .map_err(|e| ManagerError::Qemu(format!("pipe: {e}")))?;
        let report = OpenReport {
            stack: stack.drivers.iter().map(|d| d.model()).collect(),
            why: stack.why,
            drivers: stack.reports,
            accel,
            accel_reason,
            cgroup: layout.describe(),
            qemu: qemu.clone(),
            reattached: Vec::new(),
            recovered: Vec::new(),
        };
        let fault = match &config.fault {
            Some(f) if !fault::Fault::available() => {
                return Err(ManagerError::Config(format!(
                    "fault injection ({f:?}) asked for, but this build has no fault injection \
                     (feature fault-injection, for test builds)"
                )));
            }
            Some(f) => fault::Fault::parse(f),
            None => fault::Fault::from_env(),
        };
        let mut inner = Inner {
            accel: report.accel.clone(),
            config,
            report,
            store,
            stack: svirt_drivers::stack::Stack::new(stack.drivers).with_retired(stack.retired),
            layout,
            qemu,
            fault,
            guests: std::sync::Mutex::new(Default::default()),
            wake_rd,
            wake_wr,
            stopping: AtomicBool::new(false),
            cleanups: std::sync::Mutex::new(Vec::new()),
            progress,
            unreadable: Default::default(),
            namespaces: namespaces::NamespacePool::new(),
            host_cache: Default::default(),
        };
        let found = recover::recover(&inner)?;
        inner.report.reattached = found.reattached;
        inner.report.recovered = found.recovered;
        inner.report.recovered.extend(
            retired_errors
                .into_iter()
                .map(|e| Recovered::new(recover::UNNAMED, e)),
        );
        inner.unreadable = found.unreadable;
        let report = inner.report.clone();
        if !inner.stack.is_empty() {
            // The first start's jail finds its network namespace made.
            inner.namespaces.refill();
        }
        let inner = Arc::new(inner);
        let sup = inner.clone();
        let thread = std::thread::Builder::new()
            .name("svirt-supervisor".into())
            .spawn(move || supervise::run(sup))
            .map_err(|e| ManagerError::Qemu(format!("spawn supervisor thread: {e}")))?;
        let guard = Arc::new(supervise::Guard {
            inner: inner.clone(),
            thread: std::sync::Mutex::new(Some(thread)),
        });
        Ok((
            Manager {
                inner,
                _guard: guard,
            },
            report,
        ))
    }

    /// What `open` chose and found.
    pub fn report(&self) -> &OpenReport {
        &self.inner.report
    }

    /// Parses and plans `xml` for this manager's stack without touching anything (a dry
    /// run, `svirt plan`). A domain the start would refuse for what QEMU cannot be given
    /// (a hostdev, a TPM passthrough, virtiofs without shared memory…) is refused here
    /// too, with the same error.
    pub fn plan(&self, xml: &str) -> Result<svirt_domain::Plan> {
        let (domain, plan, created, _) = glue::parse_and_plan(&self.inner, xml, false)?;
        glue::remove_created(&created);
        let spec = glue::vm_spec(&domain, &plan, &self.inner.runtime_dir(&plan.name))?;
        helper::check(&spec, &plan, !self.inner.stack.is_empty())?;
        Ok(plan)
    }

    /// The QEMU command line `xml` would get (binary first), for a dry run or a benchmark
    /// baseline; `qmp_fd` is the fd number the QMP listener would have.
    pub fn command_line(&self, xml: &str, paused: bool, qmp_fd: i32) -> Result<Vec<String>> {
        let (domain, plan, created, _) = glue::parse_and_plan(&self.inner, xml, false)?;
        glue::remove_created(&created);
        let spec = glue::vm_spec(&domain, &plan, &self.inner.runtime_dir(&plan.name))?;
        let args = qemu::command_line(
            &spec,
            &qemu::LaunchOptions {
                accel: self.inner.accel.clone(),
                paused,
                qmp_fd,
                sandbox: true,
                chardev_fds: Vec::new(),
                vhost_user_fds: Vec::new(),
                tpm_fd: None,
            },
        );
        Ok(
            std::iter::once(self.inner.qemu.to_string_lossy().into_owned())
                .chain(args)
                .collect(),
        )
    }

    /// Starts a guest from domain XML text. Returns once QMP answers. On any failure
    /// everything done so far is undone (labels restored, reservations released, cgroup and
    /// runtime files removed, record removed) and the error returned; a shut-off record of
    /// the same name that the start replaced is kept, with the failure as its exit.
    pub fn start(&self, xml: &str, options: StartOptions) -> Result<GuestInfo> {
        self.inner.start(xml, options)
    }

    /// Guests: the active ones, and with `all` also those shut off (kept until the next
    /// start of the same name).
    pub fn list(&self, all: bool) -> Result<Vec<GuestSummary>> {
        Ok(self.inner.list(all))
    }

    /// The tree operations (filesystem shares, TPM state being labeled or restored) the
    /// guest's start or stop is running now; empty when none. Cheap: meant to be polled
    /// while a start or stop runs. Fails only for an unknown guest.
    pub fn progress(&self, name: &str) -> Result<Vec<TreeProgress>> {
        let _ = self.inner.slot(name)?;
        Ok(self.inner.progress.snapshot(name))
    }

    /// Every guest's tree operations in flight (guests with none are left out).
    pub fn progress_all(&self) -> Vec<(String, Vec<TreeProgress>)> {
        progress::all(&self.inner.progress)
    }

    /// Everything about one guest.
    pub fn info(&self, name: &str) -> Result<GuestInfo> {
        let slot = self.inner.slot(name)?;
        self.inner.info_of(&slot)
    }

    /// The live domain XML: the original with `<seclabel>` elements for every active model
    /// showing the labels in use (`<label>`, `<imagelabel>`), as libvirt shows them.
    pub fn dumpxml(&self, name: &str) -> Result<String> {
        let slot = self.inner.slot(name)?;
        let rec = slot
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record
            .clone();
        if !rec.state.is_active() {
            // Shut off: the labels are released; show the XML as defined.
            return Ok(rec.xml);
        }
        dumpxml::live_xml(&rec, &self.inner.labels_of(&rec))
    }

    /// Graceful stop: ACPI power-down over QMP, then kill after the configured shutdown
    /// timeout. Returns once QEMU has exited and everything is restored: QEMU's exit is
    /// awaited with the timeouts ([`Config::kill_timeout`] after SIGKILL), the restore after
    /// it without a limit. A guest that is not running (shut off, or still starting) is
    /// refused with [`ManagerError::BadState`]; one whose QEMU has just exited gets the
    /// exit it had. A stop already under way is never downgraded: this call then sends
    /// nothing, waits (its timeout plus the kill timeout at most) for QEMU's exit and the
    /// cleanup, and returns the same exit. A `timeout` too large to reach is no limit.
    pub fn shutdown(&self, name: &str) -> Result<ExitInfo> {
        self.inner
            .stop(name, false, self.inner.config.shutdown_timeout)
    }

    /// Like [`Manager::shutdown`] with an explicit timeout.
    pub fn shutdown_timeout(&self, name: &str, timeout: Duration) -> Result<ExitInfo> {
        self.inner.stop(name, false, timeout)
    }

    /// Immediate stop: SIGKILL to QEMU. Returns once QEMU has exited (within
    /// [`Config::kill_timeout`]) and everything is restored; refused like
    /// [`Manager::shutdown`] for a guest that is not running. A shutdown under way is
    /// escalated (its ACPI wait is cut short, the exit is `destroyed`); a destroy under way
    /// is waited for.
    pub fn destroy(&self, name: &str) -> Result<ExitInfo> {
        self.inner.stop(name, true, Duration::ZERO)
    }

    /// Passes one QMP command (a JSON object with `execute` and optional `arguments`)
    /// through to the guest's QEMU, like `virsh qemu-monitor-command`; returns QEMU's whole
    /// reply (`{"return": …}` or `{"error": …}`).
    pub fn qemu_monitor_command(
        &self,
        name: &str,
        command: serde_json::Value,
    ) -> Result<serde_json::Value> {
        self.inner.monitor(name, command)
    }

    /// Waits until the guest is shut off (or `timeout` passes); returns its exit, `None`
    /// on timeout.
    pub fn wait(&self, name: &str, timeout: Duration) -> Result<Option<ExitInfo>> {
        let slot = self.inner.slot(name)?;
        Ok(self.inner.wait_exit(&slot, timeout))
    }

    /// Forgets a shut-off guest's record.
    pub fn forget(&self, name: &str) -> Result<()> {
        self.inner.forget(name)
    }
}
