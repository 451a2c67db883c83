//! Helper processes of a guest (a `virtiofsd` per virtiofs share, `swtpm` for an emulated
//! TPM): started by the manager before QEMU, each confined with the guest's identity on
//! every stack exactly as the VMM is — the MAC model's exec hook (its label), the guest's
//! uid (DAC), a jail of its own that shows only the part of the plan it serves, a Landlock
//! ruleset over the same part — and with no capability. Each joins the guest's cgroup
//! before it gives up its parent-death signal, so it is ended with the guest (and found
//! after a crash of the manager) like every process of the guest; the manager reaps it.
//! One linear sequence: log, jail, hooks, spawn.

use std::fs::OpenOptions;
use std::os::fd::RawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use svirt_domain::Plan;
use svirt_drivers::ExecContext;

use crate::cgroup::GuestCgroup;
use crate::error::{ManagerError, Result};
use crate::manager::Inner;
use crate::process::{self, SpawnRequest};
use crate::record::Record;

/// One helper process to start.
pub(crate) struct HelperLaunch<'a> {
    /// What it is, for logs and errors (`virtiofsd of share vfs0`).
    pub what: String,
    /// Its log's file name in the guest's control directory (stdout and stderr).
    pub log_name: String,
    /// The binary.
    pub binary: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// The part of the guest's plan it may reach (its jail shows that, its Landlock
    /// ruleset grants that).
    pub plan: &'a Plan,
    /// Fds it inherits under the same numbers (its sockets).
    pub keep_fds: Vec<RawFd>,
    /// Whether its jail shows it a procfs of its own (`hidepid=invisible`).
    pub procfs: bool,
}

/// Refuses what the guest's helpers cannot run confined (checked before anything
/// changes, at start and in a dry run):
/// - any helper under SELinux or AppArmor: their policies give the guest's label nothing
///   a helper needs besides the guest's objects (the reference policy lets `svirt_t` read
///   no `sysctl_fs_t` file, and virtiofsd reads `/proc/sys/fs/nr_open`; the sockets the
///   manager makes for a helper carry no label `svirt_t` may use, so they would be closed
///   at exec; svirt's AppArmor profile of a guest is one per guest and each process's
///   hook replaces it, so a helper would lose its objects when QEMU's profile loads);
/// - a virtiofs share for a confined guest without a uid of its own (no DAC): virtiofsd
///   would run as root without a capability, which it cannot (it manages its own).
pub(crate) fn check(spec: &crate::qemu::VmSpec, plan: &Plan, confined: bool) -> Result<()> {
    use svirt_domain::Model;
    let share = crate::virtiofs::shares(spec)
        .next()
        .map(|(_, f)| f.tag.clone());
    let what = match (&share, &spec.tpm) {
        (Some(tag), _) => format!("filesystem {tag}: a virtiofs share (virtiofsd)"),
        (None, Some(_)) => "tpm: an emulated TPM (swtpm)".to_string(),
        (None, None) => return Ok(()),
    };
    if let Some(m) = [Model::Selinux, Model::Apparmor]
        .into_iter()
        .find(|m| plan.is_confined(*m))
    {
        return Err(ManagerError::Domain(format!(
            "{what} is not supported under {m} yet: its policy gives the guest's label \
             nothing the helper process needs besides the guest's objects (see \
             docs/manager.md, \"Helper processes\")"
        )));
    }
    if let Some(tag) = share
        && confined
        && !plan.is_confined(Model::Dac)
    {
        return Err(ManagerError::Domain(format!(
            "filesystem {tag}: a virtiofs share needs the DAC driver (virtiofsd runs as the \
             guest's own uid; this guest's VMM would run as root): add dac to svirtd's \
             --drivers, or use a 9p share"
        )));
    }
    Ok(())
}

/// What the VMM reaches of `plan`: everything but what its helpers serve (the virtiofs
/// shares, the TPM's state), which QEMU never opens.
pub(crate) fn plan_for_vmm(plan: &Plan, spec: &crate::qemu::VmSpec) -> Plan {
    let tags: Vec<&str> = crate::virtiofs::shares(spec)
        .map(|(_, f)| f.tag.as_str())
        .collect();
    let mut p = plan.clone();
    p.resources.retain(|r| {
        r.resource.kind != svirt_domain::ResourceKind::TpmState
            && !tags.iter().any(|t| crate::virtiofs::is_share(r, t))
    });
    p
}

impl Inner {
    /// A helper's own working directory (its HOME), `<run>/helpers/<guest>/<name>`: empty,
    /// the guest's uid's, 0700. Not the guest's runtime directory, whose sockets (VNC,
    /// SPICE, the guest agent) are QEMU's alone. Made fresh (a stale one is removed:
    /// root's directories above it, so no one else can have planted it).
    fn helper_cwd(&self, rec: &Record, log_name: &str) -> Result<PathBuf> {
        use std::os::unix::fs::DirBuilderExt;
        let guest = self.helpers_dir(&rec.name);
        let top = guest.parent().unwrap_or(&guest).to_path_buf();
        for d in [&top, &guest] {
            match std::fs::DirBuilder::new().mode(0o711).create(d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(ManagerError::io("create", d.as_path(), e)),
            }
        }
        let stem = log_name.strip_suffix(".log").unwrap_or(log_name);
        let cwd = guest.join(stem);
        crate::manager::remove_tree(&cwd).map_err(|e| ManagerError::io("remove", &cwd, e))?;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&cwd)
            .map_err(|e| ManagerError::io("create", &cwd, e))?;
        crate::start::own_runtime_dir(&cwd, rec.ids)?;
        Ok(cwd)
    }

    /// Starts `h` for the guest of `rec`, confined as the module's text says, in the
    /// guest's cgroup `cg`. Returns its pid. An error names the helper and the step.
    pub(crate) fn spawn_helper(
        &self,
        rec: &Record,
        cg: &GuestCgroup,
        h: HelperLaunch<'_>,
    ) -> Result<i32> {
        let what = &h.what;
        let log_path = self.control_dir(&rec.name).join(&h.log_name);
        let cwd = self.helper_cwd(rec, &h.log_name)?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&log_path)
            .map_err(|e| ManagerError::io("open the helper log", &log_path, e))?;
        let confined = !self.stack.is_empty();
        let in_context = |e: ManagerError| ManagerError::Qemu(format!("{what}: {e}"));
        let (prepared, procfs) = if confined {
            let opened = crate::jail::prepare(
                &crate::jail::JailConfig {
                    mount_namespace: self.stack.permits_mount_namespace(),
                    ..crate::jail::JailConfig::default()
                },
                h.plan,
                &crate::jail::JailInputs {
                    emulator: &h.binary,
                    devices: &[],
                    spelled: &[],
                    ids: rec.ids,
                    map_policy: self.idmap_policy(),
                },
            )
            .map_err(in_context)?;
            let mut prepared = opened.finish(&cwd).map_err(in_context)?;
            let procfs = if h.procfs {
                Some(prepared.add_procfs().map_err(in_context)?)
            } else {
                None
            };
            (Some(prepared), procfs)
        } else {
            (None, None)
        };
        let exec = ExecContext {
            emulator: h.binary.clone(),
            runtime_dir: cwd.clone(),
            devices: Vec::new(),
            tcp_ports: Vec::new(),
            inherited: vec![log_path.clone()],
            procfs,
        };
        let (pre_jail, hooks) = self
            .stack
            .child_hooks_phased(h.plan, &rec.security(), &exec)
            .map_err(|e| in_context(ManagerError::Driver(e)))?;
        let jail = match prepared {
            Some(p) => {
                let ns = crate::namespaces::Namespaces::make().map_err(|e| {
                    ManagerError::Qemu(format!("{what}: make a network and IPC namespace: {e}"))
                })?;
                Some(p.assemble(ns).map_err(in_context)?)
            }
            None => None,
        };
        let spawned = process::spawn(SpawnRequest {
            binary: &h.binary,
            args: &h.args,
            runtime_dir: &cwd,
            log,
            keep_fds: h.keep_fds,
            pid_fd: None,
            cgroup_procs: cg.procs_fds(),
            pre_jail_hooks: pre_jail,
            jail,
            hooks,
            drop_capabilities: confined,
        })
        .map_err(in_context)?;
        tracing::info!(guest = %rec.name, pid = spawned.pid, "{what} started");
        let pid = spawned.pid;
        process::reap_in_background(spawned.pidfd, rec.name.clone(), h.what);
        Ok(pid)
    }
}
