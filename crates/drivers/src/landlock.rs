//! Landlock: confines the VMM process to the paths, TCP ports and scopes its plan needs.
//!
//! The ruleset is built in the parent: every path is opened there (guest resources with
//! `RESOLVE_NO_SYMLINKS`, so a symlink planted in a resource path cannot widen the grant)
//! and the rules are loaded into a ruleset fd. The child hook then only makes two system
//! calls on that fd: `prctl(PR_SET_NO_NEW_PRIVS)` and `landlock_restrict_self`. Nothing is
//! allocated after the fork.
//!
//! The ruleset handles every filesystem right the kernel knows (up to the newest ABI the
//! `landlock` crate knows), TCP bind/connect from ABI 4, and signal and abstract-unix-socket
//! scoping from ABI 6. A right that is handled and not granted by a rule is denied.
//!
//! The minimum ABI is configurable: below it the guest does not start
//! ([`DriverError::Unavailable`]) unless best effort is explicitly configured.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, NetPort, PathBeneath,
    Ruleset, RulesetAttr, RulesetCreatedAttr, Scope,
};
use rustix::fs::FileType;
use svirt_domain::{Access as PlanAccess, Model, Plan};

use crate::host_check::{Check, HostView, Status, check};
use crate::{ChildHook, DriverError, ExecContext, GuestSecurity, ProbeReport, SecurityDriver};

/// `LANDLOCK_CREATE_RULESET_VERSION`: ask the kernel for its ABI version.
const CREATE_RULESET_VERSION: libc::c_uint = 1;

/// The newest ABI the `landlock` crate in use knows; a newer kernel is used at this ABI.
pub const NEWEST_KNOWN_ABI: u32 = 9;

/// Configuration of the Landlock driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LandlockConfig {
    /// The lowest kernel Landlock ABI the guest may start under (default 6: signal and
    /// abstract-socket scoping).
    pub min_abi: u32,
    /// Start the guest with whatever the kernel offers (possibly nothing) when it is older
    /// than `min_abi`. Off by default: an old kernel refuses the guest.
    pub best_effort: bool,
    /// Directories and files the VMM may read and execute beneath (its libraries, helpers).
    /// Entries missing on this host are skipped.
    pub exec_paths: Vec<PathBuf>,
    /// Directories and files the VMM may read beneath (loader cache, time zone, firmware).
    /// Entries missing on this host are skipped.
    pub read_paths: Vec<PathBuf>,
    /// Device nodes every VMM may read and write (in addition to [`ExecContext::devices`]).
    /// Entries missing on this host are skipped.
    pub base_devices: Vec<PathBuf>,
}

impl Default for LandlockConfig {
    fn default() -> Self {
        let needs = crate::vmm_needs::VmmNeeds::default();
        LandlockConfig {
            min_abi: 6,
            best_effort: false,
            exec_paths: needs.exec_paths,
            read_paths: needs.read_paths,
            base_devices: needs.base_devices,
        }
    }
}

/// The kernel's Landlock ABI version; 0 when Landlock is not available (not built in, not
/// enabled at boot, or blocked by seccomp).
pub fn kernel_abi() -> u32 {
    abi_or_error()
        .ok()
        .and_then(|r| u32::try_from(r).ok())
        .unwrap_or(0)
}

/// What one rule grants, for logs and `svirt` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantedRule {
    /// The path opened for the rule.
    pub path: PathBuf,
    /// The rights, in the kernel's names (`read_file`, `write_file`, …).
    pub rights: Vec<&'static str>,
    /// Why the VMM gets it (`disk vda`, `runtime dir`, `system`, …).
    pub why: String,
}

/// A Landlock ruleset prepared in the parent for one guest, ready to be applied in the child.
#[derive(Debug)]
pub struct PreparedRuleset {
    fd: Option<OwnedFd>,
    abi: u32,
    rules: Vec<GrantedRule>,
    tcp_ports: Vec<u16>,
    skipped: Vec<PathBuf>,
}

impl PreparedRuleset {
    /// The ABI the ruleset was built for; 0 when best effort left the guest unconfined.
    pub fn abi(&self) -> u32 {
        self.abi
    }

    /// Whether the ruleset confines anything (false only under best effort on a kernel
    /// without Landlock).
    pub fn enforces(&self) -> bool {
        self.fd.is_some()
    }

    /// The path rules, in the order they were added.
    pub fn rules(&self) -> &[GrantedRule] {
        &self.rules
    }

    /// TCP ports allowed for bind and connect (empty: no TCP at all, from ABI 4).
    pub fn tcp_ports(&self) -> &[u16] {
        &self.tcp_ports
    }

    /// Configured system paths that do not exist on this host and got no rule.
    pub fn skipped(&self) -> &[PathBuf] {
        &self.skipped
    }

    /// The step to run in the child: `no_new_privs`, then `landlock_restrict_self` on the
    /// prepared fd. Only system calls; the fd is close-on-exec and leaves with the exec.
    pub fn into_hook(self) -> ChildHook {
        let fd = self.fd;
        Box::new(move || {
            let Some(fd) = fd.as_ref() else {
                return Ok(());
            };
            // Landlock requires no_new_privs (or CAP_SYS_ADMIN, which the DAC step has
            // already dropped); setting it twice is harmless.
            // SAFETY: prctl with integer arguments only.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: a ruleset fd we own and no flags.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_landlock_restrict_self,
                    fd.as_raw_fd(),
                    0 as libc::c_uint,
                )
            };
            if r != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// The Landlock driver.
#[derive(Debug, Clone)]
pub struct LandlockDriver {
    config: LandlockConfig,
}

/// How a path is opened for a rule.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// A guest resource: no symlink anywhere, must exist, and be the object planned
    /// (its device and inode, when the plan recorded them).
    Resource(Option<(u64, u64)>),
    /// Given by the manager (emulator, runtime dir, devices): must exist; symlinks are
    /// followed (e.g. an alternatives link to the emulator).
    Manager,
    /// A configured system path: followed, skipped when missing.
    System,
}

/// Rights classes, mapped to concrete rights per ABI and per file type.
#[derive(Clone, Copy)]
enum Grant {
    ReadWrite,
    ReadOnly,
    ReadExec,
    Device,
}

impl LandlockDriver {
    /// A driver with this configuration.
    pub fn new(config: LandlockConfig) -> Self {
        LandlockDriver { config }
    }

    /// The configuration.
    pub fn config(&self) -> &LandlockConfig {
        &self.config
    }

    /// The ABI to build rulesets for: the kernel's, or an error when it is below the
    /// configured minimum and best effort is off.
    pub fn usable_abi(&self) -> Result<u32, DriverError> {
        let k = kernel_abi();
        if self.config.min_abi > NEWEST_KNOWN_ABI && !self.config.best_effort {
            return Err(DriverError::Unavailable {
                model: Model::Landlock,
                reason: format!(
                    "minimum Landlock ABI {} configured, but svirt knows ABIs up to {NEWEST_KNOWN_ABI} \
                     (kernel offers {k})",
                    self.config.min_abi
                ),
            });
        }
        if k < self.config.min_abi && !self.config.best_effort {
            return Err(DriverError::Unavailable {
                model: Model::Landlock,
                reason: if k == 0 {
                    format!(
                        "Landlock is not available in this kernel (minimum ABI {} configured; \
                         best effort is off)",
                        self.config.min_abi
                    )
                } else {
                    format!(
                        "kernel Landlock ABI {k} is below the configured minimum {} (best effort is off)",
                        self.config.min_abi
                    )
                },
            });
        }
        Ok(k.min(NEWEST_KNOWN_ABI))
    }

    /// Builds the guest's ruleset from its plan and exec context, opening every path now.
    pub fn prepare(&self, plan: &Plan, exec: &ExecContext) -> Result<PreparedRuleset, DriverError> {
        let abi_num = self.usable_abi()?;
        if abi_num == 0 {
            // Only reachable with best effort configured: the guest runs unconfined by Landlock.
            return Ok(PreparedRuleset {
                fd: None,
                abi: 0,
                rules: Vec::new(),
                tcp_ports: exec.tcp_ports.clone(),
                skipped: Vec::new(),
            });
        }
        let abi = ABI::from(i32::try_from(abi_num).unwrap_or(i32::MAX));
        let mut b = Builder {
            abi,
            rules: Vec::new(),
            opened: Vec::new(),
            skipped: Vec::new(),
        };

        // Guest resources, as planned.
        for pr in &plan.resources {
            let grant = match pr.path_access {
                PlanAccess::Rw => Grant::ReadWrite,
                PlanAccess::Ro => Grant::ReadOnly,
            };
            b.add(
                &pr.resource.path,
                Origin::Resource(pr.resource.identity.map(|i| (i.dev, i.ino))),
                grant,
                &pr.resource.device,
            )?;
        }
        // What the manager sets up for this VMM.
        b.add(&exec.emulator, Origin::Manager, Grant::ReadExec, "emulator")?;
        b.add(
            &exec.runtime_dir,
            Origin::Manager,
            Grant::ReadWrite,
            "runtime dir",
        )?;
        for d in &exec.devices {
            b.add(d, Origin::Manager, Grant::Device, "device")?;
            if d.file_name().is_some_and(|n| n == "ptmx") {
                // A pty: the slave side opens under /dev/pts.
                b.add(Path::new("/dev/pts"), Origin::Manager, Grant::Device, "pty")?;
            }
        }
        // What every VMM needs from the host.
        for p in &self.config.exec_paths {
            b.add(p, Origin::System, Grant::ReadExec, "system")?;
        }
        for p in &self.config.read_paths {
            b.add(p, Origin::System, Grant::ReadOnly, "system")?;
        }
        for p in &self.config.base_devices {
            b.add(p, Origin::System, Grant::Device, "system device")?;
        }
        if let Some(fd) = exec.procfs {
            b.add_procfs(fd)?;
        }

        let ll = |e: landlock::RulesetError| DriverError::Other {
            model: Model::Landlock,
            message: format!("building the ruleset (ABI {abi_num}): {e}"),
        };
        // Every right requested below exists at `abi`, which the kernel supports: a hard
        // requirement turns any surprise into an error instead of a silently weaker ruleset.
        let mut rs = Ruleset::default()
            .set_compatibility(CompatLevel::HardRequirement)
            .handle_access(AccessFs::from_all(abi))
            .map_err(ll)?;
        if abi_num >= 4 {
            rs = rs.handle_access(AccessNet::from_all(abi)).map_err(ll)?;
        }
        if abi_num >= 6 {
            rs = rs.scope(Scope::from_all(abi)).map_err(ll)?;
        }
        let mut created = rs.create().map_err(ll)?;
        for (fd, rights) in b.opened.drain(..) {
            created = created.add_rule(PathBeneath::new(fd, rights)).map_err(ll)?;
        }
        if abi_num >= 4 {
            for &port in &exec.tcp_ports {
                created = created
                    .add_rule(NetPort::new(port, AccessNet::from_all(abi)))
                    .map_err(ll)?;
            }
        }
        let fd: Option<OwnedFd> = created.into();
        let fd = fd.ok_or_else(|| DriverError::Unavailable {
            model: Model::Landlock,
            reason: "the kernel did not create a Landlock ruleset".into(),
        })?;
        Ok(PreparedRuleset {
            fd: Some(fd),
            abi: abi_num,
            rules: b.rules,
            tcp_ports: exec.tcp_ports.clone(),
            skipped: b.skipped,
        })
    }
}

struct Builder {
    abi: ABI,
    rules: Vec<GrantedRule>,
    opened: Vec<(OwnedFd, BitFlags<AccessFs>)>,
    skipped: Vec<PathBuf>,
}

impl Builder {
    fn add(
        &mut self,
        path: &Path,
        origin: Origin,
        grant: Grant,
        why: &str,
    ) -> Result<(), DriverError> {
        let err = |op: &'static str, source: io::Error| DriverError::Object {
            model: Model::Landlock,
            op,
            path: path.to_path_buf(),
            source,
        };
        let opened = match origin {
            Origin::Resource(expected) => svirt_hostfs::open_planned_path(path, expected),
            _ => svirt_hostfs::open_host_path(path, true).map_err(io::Error::from),
        };
        let fd = match opened {
            Ok(fd) => fd,
            Err(e) if origin == Origin::System && e.raw_os_error() == Some(libc::ENOENT) => {
                self.skipped.push(path.to_path_buf());
                return Ok(());
            }
            Err(e) => return Err(err("open for a Landlock rule", e)),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| err("stat for a Landlock rule", e.into()))?;
        let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
        let rights = rights(self.abi, grant, is_dir);
        self.rules.push(GrantedRule {
            path: path.to_path_buf(),
            rights: rights.iter().map(right_name).collect(),
            why: why.to_string(),
        });
        self.opened.push((fd, rights));
        Ok(())
    }
}

impl Builder {
    /// Read-only beneath the procfs instance whose root `fd` is (it has no host path: the
    /// manager mounted it for one process's jail).
    fn add_procfs(&mut self, fd: std::os::fd::RawFd) -> Result<(), DriverError> {
        let err = |source: io::Error| DriverError::Object {
            model: Model::Landlock,
            op: "duplicate for a Landlock rule the procfs of",
            path: PathBuf::from("/proc"),
            source,
        };
        // SAFETY: the caller keeps `fd` open while the hooks are prepared (ExecContext).
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let owned = rustix::io::fcntl_dupfd_cloexec(borrowed, 0).map_err(|e| err(e.into()))?;
        let rights = rights(self.abi, Grant::ReadOnly, true);
        self.rules.push(GrantedRule {
            path: PathBuf::from("/proc"),
            rights: rights.iter().map(right_name).collect(),
            why: "the process's own procfs (hidepid=invisible)".into(),
        });
        self.opened.push((owned, rights));
        Ok(())
    }
}

/// Concrete rights for a class of grant. Files only get file rights (the kernel rejects
/// directory rights on a file rule).
fn rights(abi: ABI, grant: Grant, is_dir: bool) -> BitFlags<AccessFs> {
    let all = AccessFs::from_all(abi);
    let set: BitFlags<AccessFs> = match grant {
        // Everything but executing guest data and creating device nodes.
        Grant::ReadWrite => all & !(AccessFs::Execute | AccessFs::MakeChar | AccessFs::MakeBlock),
        Grant::ReadOnly => AccessFs::ReadFile | AccessFs::ReadDir,
        Grant::ReadExec => AccessFs::ReadFile | AccessFs::ReadDir | AccessFs::Execute,
        // Truncate: shells and QEMU open /dev/null with O_TRUNC; ioctl: KVM, TUN, ptys.
        Grant::Device => {
            AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate | AccessFs::IoctlDev
        }
    };
    let set = set & all;
    if is_dir {
        set
    } else {
        set & AccessFs::from_file(abi)
    }
}

fn right_name(a: AccessFs) -> &'static str {
    match a {
        AccessFs::Execute => "execute",
        AccessFs::WriteFile => "write_file",
        AccessFs::ReadFile => "read_file",
        AccessFs::ReadDir => "read_dir",
        AccessFs::RemoveDir => "remove_dir",
        AccessFs::RemoveFile => "remove_file",
        AccessFs::MakeChar => "make_char",
        AccessFs::MakeDir => "make_dir",
        AccessFs::MakeReg => "make_reg",
        AccessFs::MakeSock => "make_sock",
        AccessFs::MakeFifo => "make_fifo",
        AccessFs::MakeBlock => "make_block",
        AccessFs::MakeSym => "make_sym",
        AccessFs::Refer => "refer",
        AccessFs::Truncate => "truncate",
        AccessFs::IoctlDev => "ioctl_dev",
        _ => "other",
    }
}

impl SecurityDriver for LandlockDriver {
    fn model(&self) -> Model {
        Model::Landlock
    }

    fn probe(&self) -> ProbeReport {
        let k = kernel_abi();
        let min = self.config.min_abi;
        let (usable, reason) = match self.usable_abi() {
            Ok(_) if k >= min => (true, format!("Landlock ABI {k} (minimum {min})")),
            Ok(_) => (
                k > 0,
                format!("Landlock ABI {k} below the minimum {min}: best effort configured"),
            ),
            Err(e) => (false, e.to_string()),
        };
        ProbeReport {
            model: Model::Landlock,
            usable,
            reason,
        }
    }

    fn reserve(&self, plan: &Plan, _guest: &mut GuestSecurity) -> Result<(), DriverError> {
        if plan.unconfined.contains(&Model::Landlock) {
            return Ok(());
        }
        // Nothing to reserve, but an unusable kernel must stop the guest before anything
        // is labeled.
        self.usable_abi().map(|_| ())
    }

    fn release(&self, _guest: &GuestSecurity) -> Result<(), DriverError> {
        Ok(())
    }

    fn set_all(&self, _plan: &Plan, _guest: &GuestSecurity) -> Result<(), DriverError> {
        // Landlock confines the process; it changes no object.
        Ok(())
    }

    fn restore_all(&self, _plan: &Plan, _guest: &GuestSecurity) -> Vec<DriverError> {
        Vec::new()
    }

    fn child_hooks(
        &self,
        plan: &Plan,
        _guest: &GuestSecurity,
        exec: &ExecContext,
    ) -> Result<Vec<ChildHook>, DriverError> {
        if plan.unconfined.contains(&Model::Landlock) {
            return Ok(Vec::new());
        }
        Ok(vec![self.prepare(plan, exec)?.into_hook()])
    }

    fn process_label(&self, _pid: i32) -> Result<Option<String>, DriverError> {
        // A Landlock domain has no name a process could be read back by.
        Ok(None)
    }
}
/// `landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)`: the ABI, or why
/// there is none.
fn abi_or_error() -> io::Result<i64> {
    // SAFETY: the documented version probe: NULL attributes, size 0, the VERSION flag. The
    // kernel reads no memory from us.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `svirt host-validate`'s line for Landlock: the kernel's ABI and what it restricts.
fn host_checks(view: &HostView<'_>) -> Vec<Check> {
    vec![abi_check(view.lsms)]
}

fn abi_check(lsms: &Result<Vec<String>, String>) -> Check {
    let what = "ABI";
    match abi_or_error() {
        Ok(abi) => {
            let mut covers = vec!["filesystem"];
            if abi >= 4 {
                covers.push("TCP bind/connect");
            }
            if abi >= 6 {
                covers.push("signal and abstract-socket scoping");
            }
            let status = if abi >= 1 { Status::Pass } else { Status::Warn };
            check(
                "Landlock",
                what,
                status,
                format!("ABI {abi}: restricts {}", covers.join(", ")),
            )
        }
        Err(e) => {
            let why = match e.raw_os_error() {
                Some(libc::EOPNOTSUPP) => {
                    "built in but disabled at boot (add landlock to lsm=)".to_string()
                }
                Some(libc::ENOSYS) => "not built into this kernel".to_string(),
                _ => e.to_string(),
            };
            let listed = match lsms {
                Ok(l) if !l.iter().any(|x| x == "landlock") => "; landlock is not an active LSM",
                _ => "",
            };
            check("Landlock", what, Status::Fail, format!("{why}{listed}"))
        }
    }
}

/// Landlock in the registry: path confinement of the VMM where no MAC model runs. It
/// changes no object and records nothing, so it has nothing to recover.
pub(crate) const REGISTRATION: crate::registration::Registration =
    crate::registration::Registration {
        name: "landlock",
        model: Model::Landlock,
        role: crate::registration::Role::WithoutMac,
        changes_files: false,
        open: |_| {
            Ok(std::sync::Arc::new(LandlockDriver::new(
                LandlockConfig::default(),
            )))
        },
        has_records: |_| Ok(false),
        open_retired: |_| {
            Err(DriverError::Other {
                model: Model::Landlock,
                message: "Landlock records nothing to recover".into(),
            })
        },
        host_checks,
    };
