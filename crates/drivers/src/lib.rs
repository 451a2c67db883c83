//! Security drivers behind one trait, and the stack that runs them in order.
//!
//! A driver receives the guest's resolved [`Plan`](svirt_domain::Plan); it never parses XML
//! and never walks the domain itself. Everything a driver does to the VMM process is
//! prepared in the parent and applied in the child between `fork` and `exec` by a
//! [`ChildHook`], which may only make system calls on precomputed data (the child of a
//! multi-threaded parent must not allocate or take locks).

pub mod dac;
mod dac_tree;
pub mod fsops;
pub mod landlock;
pub mod relabel;
pub mod selinux;
pub mod stack;
mod tree_common;

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

/// One security driver. Implementations: SELinux, DAC, Landlock (AppArmor and BPF-LSM later).
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
}
