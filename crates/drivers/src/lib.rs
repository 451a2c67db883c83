//! Security drivers behind one trait, and the stack that runs them in order.
//!
//! A driver receives the guest's resolved [`Plan`](svirt_domain::Plan); it never parses XML
//! and never walks the domain itself. Everything a driver does to the VMM process is
//! prepared in the parent and applied in the child between `fork` and `exec` by a
//! [`ChildHook`], which may only make system calls on precomputed data (the child of a
//! multi-threaded parent must not allocate or take locks).

pub mod apparmor;
mod audit_fields;
pub mod bpf_lsm;
pub mod dac;
mod guest_records;
pub mod host_check;
pub mod landlock;
mod mcs_level;
pub mod owners;
pub mod proc_attr;
pub mod progress;
pub mod registration;
pub mod registry;
pub mod relabel;
pub mod selinux;
pub mod smack;
pub mod stack;
mod tree_common;
pub mod vmm_needs;

use std::io;

use svirt_domain::{Model, Plan};
use svirt_labels::MlsRange;

/// What the host offers a driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    /// The driver's model.
    pub model: Model,
    /// Whether the driver can confine guests on this host.
    pub usable: bool,
    /// Why (or why not), in one line for logs and `svirt host-validate`.
    pub reason: String,
}

/// The security identity of one guest, as allocated by the manager and handed to drivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestSecurity {
    /// Guest name (also the owner key in the store).
    pub name: String,
    /// The guest's MCS level/range (SELinux), when it has one.
    pub level: Option<MlsRange>,
    /// The guest's uid and gid (DAC), when it has them.
    pub ids: Option<(u32, u32)>,
}

/// A step run in the child between fork and exec. It must only make system calls on data
/// prepared before the fork.
pub type ChildHook = Box<dyn FnMut() -> io::Result<()> + Send + Sync>;

/// What the manager tells drivers about the VMM it is about to exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecContext {
    /// The VMM binary (e.g. `/usr/bin/qemu-system-x86_64`).
    pub emulator: std::path::PathBuf,
    /// The guest's private runtime directory (QMP socket, pid file…), read-write.
    pub runtime_dir: std::path::PathBuf,
    /// Device nodes the VMM needs read-write (`/dev/kvm` when KVM is used, `/dev/net/tun`…).
    pub devices: Vec<std::path::PathBuf>,
    /// Whether the domain asks for TCP (e.g. a tcp chardev): otherwise TCP bind/connect is denied.
    pub tcp_ports: Vec<u16>,
    /// Files the manager opened for the VMM, which it inherits (its log, opened for
    /// append): a model that checks inherited files at exec (AppArmor) must allow them.
    pub inherited: Vec<std::path::PathBuf>,
    /// A procfs instance the process sees at `/proc` (an fd of its root, open while the
    /// hooks are prepared): path-based models let the process read beneath it (virtiofsd
    /// reopens its own files through `/proc/self/fd`). `None`: the process is given no
    /// `/proc` (the VMM).
    pub procfs: Option<std::os::fd::RawFd>,
}

/// A driver failure, naming the object and the operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// An operation on a host object failed.
    #[error("{model}: {op} {path}: {source}")]
    Object {
        /// The driver.
        model: Model,
        /// What was being done (`set label`, `chown`, `restore label`…).
        op: &'static str,
        /// The object.
        path: std::path::PathBuf,
        /// The system error.
        source: io::Error,
    },
    /// The host cannot provide what the driver needs (e.g. Landlock ABI too old).
    #[error("{model}: unavailable: {reason}")]
    Unavailable {
        /// The driver.
        model: Model,
        /// Why.
        reason: String,
    },
    /// The store failed (reservations, originals).
    #[error("{model}: store: {message}")]
    Store {
        /// The driver.
        model: Model,
        /// The store's error, as text.
        message: String,
    },
    /// The object is refused before anything changed: another live guest's use of it
    /// conflicts (a private read-write object belongs to one guest at a time).
    #[error("{model}: {path}: refused: {rule} (in use by guest {other})", path = .path.display())]
    InUse {
        /// The driver that checked.
        model: Model,
        /// The object, as the plan names it.
        path: std::path::PathBuf,
        /// The other guest.
        other: String,
        /// The rule, in words.
        rule: String,
    },
    /// Something else, with a clear message.
    #[error("{model}: {message}")]
    Other {
        /// The driver.
        model: Model,
        /// What went wrong.
        message: String,
    },
}

/// One security driver. Implementations: SELinux, SMACK, AppArmor, BPF-LSM, DAC, Landlock.
///
/// Life of a guest as the manager drives it:
/// `probe` (once per host) → `reserve` → `set_all` → `child_hooks` (prepared in the parent,
/// run in the child) → … guest runs … → `restore_all` → `release`.
pub trait SecurityDriver: Send + Sync {
    /// The model this driver implements.
    fn model(&self) -> Model;

    /// Whether the driver is usable on this host, and why (not).
    fn probe(&self) -> ProbeReport;

    /// Generates or reserves the guest's identity for this model (level, uid/gid) and
    /// records it in `guest`. Must be durable before returning (the store commits).
    fn reserve(&self, plan: &Plan, guest: &mut GuestSecurity) -> Result<(), DriverError>;

    /// Releases what `reserve` took. Idempotent.
    fn release(&self, guest: &GuestSecurity) -> Result<(), DriverError>;

    /// Labels every resource of the plan. On error, everything this call changed is
    /// already restored when it returns (fail closed, nothing half-labeled).
    fn set_all(&self, plan: &Plan, guest: &GuestSecurity) -> Result<(), DriverError>;

    /// Restores every resource this driver labeled for the guest; runs to the end and
    /// reports every error.
    fn restore_all(&self, plan: &Plan, guest: &GuestSecurity) -> Vec<DriverError>;

    /// Prepares the steps to apply to the VMM process between fork and exec.
    fn child_hooks(
        &self,
        plan: &Plan,
        guest: &GuestSecurity,
        exec: &ExecContext,
    ) -> Result<Vec<ChildHook>, DriverError>;

    /// The label of a running process under this model, if it has one.
    fn process_label(&self, pid: i32) -> Result<Option<String>, DriverError>;

    /// When this driver's child hooks run relative to the jail (the VMM's own mount
    /// namespace, which shows only its plan).
    fn hook_phase(&self) -> HookPhase {
        HookPhase::InJail
    }

    /// Whether this model lets the manager build the VMM's own mount namespace (its
    /// policy may forbid the manager the mounts: then the model confines files itself).
    fn permits_mount_namespace(&self) -> bool {
        true
    }

    /// Labels for the objects the manager creates for the VMM itself (its QMP socket, its
    /// log), which the VMM must be able to use under this model.
    fn create_labels(
        &self,
        plan: &Plan,
        guest: &GuestSecurity,
    ) -> Result<CreateLabels, DriverError> {
        let _ = (plan, guest);
        Ok(CreateLabels::default())
    }

    /// Releases everything this model holds for the guest's name: `release`, plus any
    /// identity an earlier run of the name kept because its restore failed (the driver's
    /// restore, which goes by owner, has just put back every object recorded for it).
    fn release_owner(&self, guest: &GuestSecurity) -> Vec<DriverError> {
        self.release(guest).err().into_iter().collect()
    }

    /// Sweeps this model's own records (tree records, the relabel engine's records) of
    /// owners `running` says are not running: restores what no running guest uses and
    /// drops the records. Runs at open, after the manager's undo of dead guests; reports
    /// everything it did and every failure (a record whose restore failed stays for the
    /// next open).
    fn recover(&self, running: &dyn Fn(&str) -> bool) -> Vec<RecoveryNote> {
        let _ = running;
        Vec::new()
    }

    /// What the store holds for `owner` under this model, in words (`uid/gid 2000000005`,
    /// `level s0:c1,c2`), or `None` when it holds nothing (a static label).
    fn held_for(&self, owner: &str) -> Option<String> {
        let _ = owner;
        None
    }
}

/// One thing a driver's [`SecurityDriver::recover`] did or failed to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryNote {
    /// The guest it concerns, when the record names one.
    pub guest: Option<String>,
    /// What was done, in words (naming the object).
    pub what: String,
    /// Whether it is a failure.
    pub failed: bool,
}

/// When a driver's child hooks run, relative to entering the jail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookPhase {
    /// Before: the hook needs the host's view (SELinux writes its exec label through
    /// `/proc`, which the jail does not show).
    BeforeJail,
    /// Inside the jail (ids, Landlock, no_new_privs).
    InJail,
}

/// Labels the manager creates its own objects for the VMM with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateLabels {
    /// For the QMP listening socket (SELinux: the VMM's process label).
    pub socket: Option<String>,
    /// For the log file (SELinux: the guest's image label).
    pub file: Option<String>,
}
