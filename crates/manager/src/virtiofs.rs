//! virtiofs shares (`<filesystem><driver type='virtiofs'/>`): one `virtiofsd` per share,
//! started by the manager before QEMU and confined with the guest's identity as the VMM
//! is ([`crate::helper`], which also says the stacks that refuse it): the guest's uid
//! (DAC), its label (the MAC model's exec hook), a jail of its own that shows the share
//! and nothing of the guest's other objects, and a Landlock ruleset beneath the share.
//! QEMU never opens the share: it gets one end of a connected vhost-user socket
//! (`-chardev socket,fd=N`), virtiofsd the listener (`--fd=N`), both made in the guest's
//! control directory (root's) and unlinked at once, so no other process can reach either.
//!
//! virtiofsd runs with `--sandbox=none`: its own namespace sandbox needs mount operations
//! that Landlock refuses, and svirt's jail takes its place. It needs `/proc/self/fd` (it
//! reopens its files through it) and `/proc/sys/fs/nr_open`: its jail shows a procfs of
//! its own, mounted `hidepid=invisible`, read-only. It is never given the share as
//! `/proc/self/fd/N` (it would resolve that to `/` and export the jail's root): the jail
//! shows the share at its own path, idmapped to the guest's uid where DAC maps it.
//!
//! It exits by itself when QEMU goes (the vhost-user connection closes).

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use svirt_domain::{Plan, ResourceKind};

use crate::cgroup::GuestCgroup;
use crate::error::{ManagerError, Result};
use crate::helper::HelperLaunch;
use crate::manager::Inner;
use crate::qemu::{FilesystemSpec, FsDriver, VmSpec};
use crate::record::Record;

/// Where distributions install virtiofsd outside `PATH` (Fedora, Debian's QEMU of old).
const FALLBACK_PATHS: [&str; 2] = ["/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"];

/// The virtiofsd to run: the configured one, else `virtiofsd` on `PATH`, else a
/// distribution's place for it.
pub(crate) fn virtiofsd_binary(configured: Option<&PathBuf>) -> Result<PathBuf> {
    if let Some(p) = configured {
        return Ok(p.clone());
    }
    if let Ok(p) = crate::glue::find_in_path("virtiofsd") {
        return Ok(p);
    }
    FALLBACK_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            ManagerError::Qemu(
                "virtiofs: no virtiofsd found (on PATH, /usr/libexec, /usr/lib/qemu); \
                 scripts/test and scripts/demo build it (scripts/lib.sh: \
                 ensure_virtiofsd), or give svirtd --virtiofsd PATH"
                    .into(),
            )
        })
}

/// The virtiofs shares of `spec`, with their index in [`VmSpec::filesystems`].
pub(crate) fn shares(spec: &VmSpec) -> impl Iterator<Item = (usize, &FilesystemSpec)> {
    spec.filesystems
        .iter()
        .enumerate()
        .filter(|(_, f)| f.driver == FsDriver::Virtiofs)
}

/// The planned resource of the share with mount tag `tag` (the planner names it
/// `filesystem TAG`).
pub(crate) fn is_share(r: &svirt_domain::PlannedResource, tag: &str) -> bool {
    r.resource.kind == ResourceKind::FilesystemTree
        && r.resource
            .device
            .strip_prefix("filesystem ")
            .is_some_and(|t| t == tag)
}

/// What the virtiofsd of the share tagged `tag` reaches of `plan`: that share alone.
/// Errors when the planner did not list the share under its own tag (its directory is
/// also another device's object): one object cannot be QEMU's and virtiofsd's at once.
pub(crate) fn plan_for_share(plan: &Plan, tag: &str) -> Result<Plan> {
    let mut p = plan.clone();
    p.resources.retain(|r| is_share(r, tag));
    if p.resources.len() != 1 {
        return Err(ManagerError::Domain(format!(
            "filesystem {tag}: its directory is another device's object too; a virtiofs \
             share must be a directory of its own"
        )));
    }
    p.disk_chains.clear();
    Ok(p)
}

/// virtiofsd's arguments for a share served over the listening socket `fd`.
pub(crate) fn args(share: &Path, fd: i32, readonly: bool) -> Vec<String> {
    let mut a = vec![
        format!("--fd={fd}"),
        format!("--shared-dir={}", share.display()),
        // svirt's jail stands in for virtiofsd's own sandbox (see the module's text).
        "--sandbox=none".into(),
        // Opening by file handle needs CAP_DAC_READ_SEARCH, which it never has.
        "--inode-file-handles=never".into(),
        // Leave RLIMIT_NOFILE as the manager set it (raising it needs a capability).
        "--rlimit-nofile=0".into(),
        "--log-level=warn".into(),
    ];
    if readonly {
        a.push("--readonly".into());
    }
    a
}

/// The two ends of one share's vhost-user connection.
pub(crate) struct VhostUser {
    /// virtiofsd's (`--fd`): it accepts the connection already queued on it.
    pub listener: OwnedFd,
    /// QEMU's (`-chardev socket,fd=`), connected.
    pub qemu_end: OwnedFd,
}

/// Binds a listener in `dir` (the guest's control directory: root's, mode 0700), connects
/// to it and unlinks the name: the connection QEMU and virtiofsd share exists before
/// either runs, and nothing else can join it.
pub(crate) fn connect(dir: &Path, index: usize) -> Result<VhostUser> {
    let path = dir.join(format!("virtiofs-{index}.sock"));
    let err = |what: &str, e: std::io::Error| {
        ManagerError::Qemu(format!("virtiofs: {what} {}: {e}", path.display()))
    };
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err("remove the stale socket", e)),
    }
    let listener = UnixListener::bind(&path).map_err(|e| err("bind", e))?;
    let connected = UnixStream::connect(&path);
    let _ = std::fs::remove_file(&path);
    let qemu_end = connected.map_err(|e| err("connect to", e))?;
    Ok(VhostUser {
        listener: listener.into(),
        qemu_end: qemu_end.into(),
    })
}

impl Inner {
    /// Starts the virtiofsd of every virtiofs share of the guest ([`crate::helper`]).
    /// Returns QEMU's end of each one's connection, by the share's index. On error, the
    /// ones started are ended with the cgroup by the start's undo.
    pub(crate) fn start_virtiofsd(
        &self,
        rec: &Record,
        cg: &GuestCgroup,
    ) -> Result<Vec<(usize, OwnedFd)>> {
        let mut ends = Vec::new();
        if shares(&rec.spec).next().is_none() {
            return Ok(ends);
        }
        let binary = virtiofsd_binary(self.config.virtiofsd_binary.as_ref())?;
        let ctl = self.control_dir(&rec.name);
        for (i, fs) in shares(&rec.spec) {
            let plan = plan_for_share(&rec.plan, &fs.tag)?;
            let share = plan.resources[0].resource.path.clone();
            let conn = connect(&ctl, i)?;
            self.spawn_helper(
                rec,
                cg,
                HelperLaunch {
                    what: format!("virtiofsd of share {}", fs.tag),
                    log_name: format!("virtiofsd-{i}.log"),
                    binary: binary.clone(),
                    args: args(&share, conn.listener.as_raw_fd(), fs.readonly),
                    plan: &plan,
                    keep_fds: vec![conn.listener.as_raw_fd()],
                    procfs: true,
                },
            )?;
            ends.push((i, conn.qemu_end));
        }
        Ok(ends)
    }
}
