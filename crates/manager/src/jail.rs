//! The per-guest jail: the VMM runs in its own mount namespace, which shows only what its
//! plan grants plus what the VMM binary needs, in its own network namespace (loopback
//! only, and down) and its own IPC namespace.
//!
//! Everything is decided in the parent ([`prepare`]): every object is opened there with
//! `O_PATH` (guest resources with `RESOLVE_NO_SYMLINKS`, as the Landlock driver opens
//! them) and turned into a detached bind mount of itself (`open_tree(OPEN_TREE_CLONE)`)
//! carrying the jail's flags (`mount_setattr`: `nosuid`, `nodev` except on granted device
//! nodes, `noexec` except where the VMM runs from, `ro` for read-only objects). Every
//! path string and message is built there too. Then the mount namespace is built, in the
//! manager, on a thread of its own ([`PreparedJail::assemble`], beside the labeling):
//! `unshare(CLONE_NEWNS)`, `/` made private recursively so nothing propagates back to the
//! host, a tmpfs on `/tmp` (of the new namespace only) as the new root, each detached
//! mount attached (`move_mount`) onto an empty file or directory at its canonical path,
//! the tmpfs made read-only, `pivot_root`, and the old root detached. No host path is
//! resolved again: a path swapped after planning cannot redirect a bind. (A plain bind
//! from `/proc/self/fd/N` cannot be used: after `unshare` the fd's mount belongs to the
//! parent's namespace and the kernel refuses it.) Between fork and exec the child only
//! joins the built namespaces (`setns`: mount, then a fresh network and IPC namespace
//! from [`crate::namespaces`]) and changes to its runtime directory: four system calls,
//! no allocation. Nothing of the jail's construction is on the start's critical path.
//!
//! Landlock rules are attached to inodes, and every bind shows the host's inode at its
//! mount root: the ruleset the Landlock driver builds from the same paths in the parent
//! applies unchanged inside the jail.
//!
//! A failing build step is an error naming the step and the object. A failing step of the
//! child reports its index through a pipe ([`JailReport`]); the parent turns it into an
//! error naming the step (std only carries the errno back).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::FileType;
use svirt_domain::{Access, Plan};

use crate::error::{ManagerError, Result};
use crate::namespaces::Namespaces;

/// Where the new root is mounted in the child's own mount namespace before `pivot_root`
/// (as bubblewrap does): `/tmp` always exists and only root can replace its entry in `/`.
const STAGING: &str = "/tmp";

/// What every VMM is given besides its plan. Paths missing on this host are skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailConfig {
    /// Directories the VMM reads and executes from (its binary, libraries, data, firmware):
    /// bound read-only, `nosuid`, `nodev`. Top-level symlinks among them (`/lib -> usr/lib`
    /// on merged-/usr systems) are recreated as the same symlinks.
    pub exec_paths: Vec<PathBuf>,
    /// Files and directories the VMM reads (loader cache, time zone, CPU topology): bound
    /// read-only, `nosuid`, `nodev`, `noexec`.
    pub read_paths: Vec<PathBuf>,
    /// Device nodes every VMM gets read-write.
    pub base_devices: Vec<PathBuf>,
    /// Whether the VMM gets its own mount namespace showing only its plan. Off under
    /// SELinux: the reference policy lets the manager's domain (`virtd_t`) mount on
    /// directories only (`/dev`, `/`, its runtime and tmpfs types), never on a file, and
    /// neither remount nor unmount a file system, so the jail's binds cannot be made
    /// there; SELinux's labels confine the VMM's file and socket access instead. The
    /// network and IPC namespaces are made either way.
    pub mount_namespace: bool,
}

impl Default for JailConfig {
    /// What every VMM needs from the host ([`svirt_drivers::vmm_needs`]), the list the
    /// path-based models grant: the jail shows that and nothing more (and Landlock's rules,
    /// attached to those directories' inodes, match inside the jail).
    fn default() -> Self {
        let l = svirt_drivers::vmm_needs::VmmNeeds::default();
        JailConfig {
            exec_paths: l.exec_paths,
            read_paths: l.read_paths,
            base_devices: l.base_devices,
            mount_namespace: true,
        }
    }
}

/// What the manager adds to the plan for one VMM.
#[derive(Debug, Clone)]
pub struct JailInputs<'a> {
    /// The VMM binary (bound read-only where it lies, if not beneath an exec path).
    pub emulator: &'a Path,
    /// Device nodes this VMM needs (`/dev/kvm`).
    pub devices: &'a [PathBuf],
    /// The paths QEMU is told on its command line, as the XML spells them. One that is
    /// not a plan resource's canonical path but resolves to one (a symlink in a root-owned
    /// directory, which the planner accepted and resolved) is shown at that spelling too,
    /// as the same object: the jail has no symlinks of the host.
    pub spelled: &'a [PathBuf],
    /// The guest's uid and gid: what an idmapped share ([`svirt_domain::DacAction::IdmapGuest`])
    /// shows its root's owner and group as.
    pub ids: Option<(u32, u32)>,
    /// Which share owners may be mapped (checked again on the object the jail shows).
    pub map_policy: crate::idmap::MapPolicy,
}

/// How an object is shown in the jail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Show {
    /// Read-write guest data: `nosuid,nodev,noexec`.
    ReadWrite,
    /// Read-only guest data or host data: `ro,nosuid,nodev,noexec`.
    ReadOnly,
    /// Where the VMM runs from: `ro,nosuid,nodev`.
    Exec,
}

impl Show {
    fn covers(self, inner: Show) -> bool {
        match self {
            Show::ReadWrite => inner != Show::Exec,
            Show::ReadOnly => inner == Show::ReadOnly,
            Show::Exec => inner != Show::ReadWrite,
        }
    }
}

/// How a path is opened in the parent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// A guest resource: no symlink in any component, must exist, and must be the object
    /// the planner judged (`(dev, ino)`, when the plan records it).
    Resource(Option<(u64, u64)>),
    /// Given by the manager: must exist, symlinks followed.
    Manager,
    /// System: symlinks followed, skipped when missing.
    System,
}

/// One step of the child's sequence.
#[derive(Debug)]
enum Op {
    Mkdir(CString),
    Touch(CString),
    Symlink {
        text: CString,
        at: CString,
    },
    /// Attach a detached mount (made in the parent) at `dst`.
    Attach {
        tree: RawFd,
        dst: CString,
    },
}

/// A bind planned in the parent.
struct Planned {
    target: PathBuf,
    fd: OwnedFd,
    dir: bool,
    device: bool,
    show: Show,
    why: String,
    /// Shown through an idmapped mount (a private share under DAC).
    idmap: Option<crate::idmap::IdMap>,
}

/// The jail prepared in the parent for one VMM: every object opened and cloned, the mount
/// sequence decided. [`PreparedJail::assemble`] builds it.
#[derive(Debug)]
pub struct PreparedJail {
    ops: Vec<Op>,
    /// A description per op (same index), and then the fixed steps.
    steps: Vec<String>,
    /// The detached mounts the `Attach` ops name (close-on-exec).
    trees: Vec<OwnedFd>,
    staging: CString,
    cwd: CString,
    /// The mount namespace and binds (else only the network and IPC namespaces).
    mounts: bool,
}

/// A built jail: its namespaces exist, and the child only joins them.
#[derive(Debug)]
pub struct Jail {
    /// The jail's mount namespace (`None`: the VMM keeps the manager's, under SELinux).
    mnt: Option<OwnedFd>,
    ns: Namespaces,
    cwd: CString,
    report: OwnedFd,
    report_rd: OwnedFd,
}

/// The read end of the child's failure report.
#[derive(Debug)]
pub struct JailReport {
    rd: OwnedFd,
}

impl JailReport {
    /// The step that failed in the child, if the child reported one.
    pub fn failed_step(&self) -> Option<String> {
        let mut b = [0u8; 4];
        match rustix::io::read(&self.rd, &mut b) {
            Ok(4) => {
                let i = u32::from_ne_bytes(b) as usize;
                Some(
                    CHILD_STEPS
                        .get(i)
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| format!("step {i}")),
                )
            }
            _ => None,
        }
    }
}

/// Fixed steps of the build after the per-object ops (indices `ops.len() + k`).
const FIXED: [&str; 8] = [
    "unshare(CLONE_NEWNS)",
    "open the new mount namespace",
    "make / private (MS_REC|MS_PRIVATE)",
    "mount the jail's tmpfs root on /tmp",
    "remount the jail's root read-only",
    "chdir to the jail root",
    "pivot_root into the jail",
    "detach the host's root",
];

/// The child's steps, in order.
const CHILD_STEPS: [&str; 4] = [
    "enter the jail's mount namespace (setns)",
    "enter the jail's network namespace (setns)",
    "enter the jail's IPC namespace (setns)",
    "chdir to the runtime directory in the jail",
];

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| ManagerError::Qemu(format!("jail: {}: path contains NUL", p.display())))
}

fn jail_err(path: &Path, what: &str, e: impl std::fmt::Display) -> ManagerError {
    ManagerError::Qemu(format!("jail: {what} {}: {e}", path.display()))
}

/// Opens `path` with `O_PATH` for a bind. `None`: a missing system path.
fn open_object(path: &Path, origin: Origin) -> Result<Option<(OwnedFd, bool, bool)>> {
    // A resource is the object the planner judged, reached without any link: a name
    // swapped since (for a device node on a mount of the user's, say) is refused, not
    // bound. Everything else may be reached through root's symlinks.
    let opened = match origin {
        Origin::Resource(expected) => svirt_hostfs::open_planned_path(path, expected),
        _ => svirt_hostfs::open_host_path(path, true).map_err(io::Error::from),
    };
    let fd = match opened {
        Ok(fd) => fd,
        Err(e) if origin == Origin::System && e.raw_os_error() == Some(libc::ENOENT) => {
            return Ok(None);
        }
        Err(e) => return Err(jail_err(path, "open", e)),
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| jail_err(path, "stat", io::Error::from(e)))?;
    let ft = FileType::from_raw_mode(st.st_mode);
    let device = matches!(ft, FileType::CharacterDevice | FileType::BlockDevice);
    Ok(Some((fd, ft == FileType::Directory, device)))
}

/// Whether `inner` is `outer` or lies beneath it (by components).
fn beneath(inner: &Path, outer: &Path) -> bool {
    inner.starts_with(outer)
}

/// The objects of a jail, opened: everything but the runtime directory, which the start
/// makes meanwhile ([`OpenedJail::finish`] adds it).
pub struct OpenedJail {
    planned: Vec<Planned>,
    symlinks: Vec<(PathBuf, PathBuf)>,
    mounts: bool,
}

/// Prepares the jail of a VMM: every object of `plan`, the system paths of `config` and
/// what `inputs` names, opened now. Errors name the object.
pub fn prepare(config: &JailConfig, plan: &Plan, inputs: &JailInputs<'_>) -> Result<OpenedJail> {
    let mut planned: Vec<Planned> = Vec::new();
    let mut symlinks: Vec<(PathBuf, PathBuf)> = Vec::new();
    if !config.mount_namespace {
        return Ok(OpenedJail {
            planned,
            symlinks,
            mounts: false,
        });
    }
    let mut add = |path: &Path, origin: Origin, show: Show, why: &str| {
        add_object(&mut planned, &mut symlinks, path, origin, show, why)
    };
    add_all(&mut add, config, plan, inputs)?;
    set_idmaps(&mut planned, plan, inputs.ids, inputs.map_policy)?;
    add_spellings(&mut planned, inputs.spelled)?;
    // The emulator, unless an exec path already shows it (a configured wrapper outside
    // /usr in tests). Checked on the canonical path: /usr/bin/qemu may be a link.
    let emulator = std::fs::canonicalize(inputs.emulator)
        .map_err(|e| jail_err(inputs.emulator, "resolve the emulator", e))?;
    let emulator_shown = planned
        .iter()
        .any(|p| p.show == Show::Exec && beneath(&emulator, &p.target));
    if !emulator_shown {
        add_object(
            &mut planned,
            &mut symlinks,
            &emulator,
            Origin::Manager,
            Show::Exec,
            "emulator",
        )?;
    }
    Ok(OpenedJail {
        planned,
        symlinks,
        mounts: true,
    })
}

impl OpenedJail {
    /// Adds the guest's runtime directory (read-write, and QEMU's working directory) and
    /// decides the mount sequence.
    pub fn finish(mut self, runtime_dir: &Path) -> Result<PreparedJail> {
        if !self.mounts {
            return Ok(PreparedJail {
                ops: Vec::new(),
                steps: Vec::new(),
                trees: Vec::new(),
                staging: cstr(Path::new(STAGING))?,
                cwd: cstr(runtime_dir)?,
                mounts: false,
            });
        }
        add_object(
            &mut self.planned,
            &mut self.symlinks,
            runtime_dir,
            Origin::Manager,
            Show::ReadWrite,
            "runtime directory",
        )?;
        build(self.planned, self.symlinks, runtime_dir)
    }
}

/// For each spelled path that is not shown as it is but resolves to a planned object, the
/// same object (the fd opened for it, duplicated) at the spelling. A spelling that resolves
/// to nothing planned is left out: QEMU then cannot open it, as it could not before under
/// Landlock.
fn add_spellings(planned: &mut Vec<Planned>, spelled: &[PathBuf]) -> Result<()> {
    for sp in spelled {
        if !sp.is_absolute() || planned.iter().any(|p| &p.target == sp) {
            continue;
        }
        let Ok(canon) = std::fs::canonicalize(sp) else {
            continue;
        };
        let Some(orig) = planned.iter().find(|p| p.target == canon) else {
            continue;
        };
        let fd = orig
            .fd
            .try_clone()
            .map_err(|e| jail_err(sp, "duplicate the fd of", e))?;
        let alias = Planned {
            target: sp.clone(),
            fd,
            dir: orig.dir,
            device: orig.device,
            show: orig.show,
            idmap: orig.idmap,
            why: format!("{}, as the XML spells it", orig.why),
        };
        planned.push(alias);
    }
    Ok(())
}

/// Marks the private shares DAC shows through an idmapped mount: the share root's owner
/// and group (as the opened root says, not as planning saw them) become the guest's.
fn set_idmaps(
    planned: &mut [Planned],
    plan: &Plan,
    ids: Option<(u32, u32)>,
    policy: crate::idmap::MapPolicy,
) -> Result<()> {
    for pr in plan
        .resources
        .iter()
        .filter(|r| r.dac == svirt_domain::DacAction::IdmapGuest)
    {
        let path = &pr.resource.path;
        let (uid, gid) = ids.ok_or_else(|| {
            jail_err(
                path,
                "idmap",
                "the guest has no uid/gid to show the share as",
            )
        })?;
        let Some(p) = planned.iter_mut().find(|p| &p.target == path) else {
            continue;
        };
        let st =
            rustix::fs::fstat(&p.fd).map_err(|e| jail_err(path, "stat", io::Error::from(e)))?;
        // Checked again on the object the jail shows (glue::settle_idmaps checked it when
        // it tried the mount): never a mapping that lets the guest write as a system
        // account or group.
        policy
            .check(st.st_uid, st.st_gid)
            .map_err(|why| jail_err(path, "idmap", why))?;
        p.idmap = Some(crate::idmap::IdMap {
            on_disk_uid: st.st_uid,
            on_disk_gid: st.st_gid,
            shown_uid: uid,
            shown_gid: gid,
        });
    }
    Ok(())
}

fn add_object(
    planned: &mut Vec<Planned>,
    symlinks: &mut Vec<(PathBuf, PathBuf)>,
    path: &Path,
    origin: Origin,
    show: Show,
    why: &str,
) -> Result<()> {
    if !path.is_absolute()
        || path
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(jail_err(path, "bind", "not a canonical absolute path"));
    }
    if origin == Origin::System
        && path.parent() == Some(Path::new("/"))
        && let Ok(text) = std::fs::read_link(path)
    {
        // A top-level symlink (`/lib -> usr/lib`): the same link in the jail. Whatever
        // its text, it resolves inside the jail's root, to what the jail shows.
        symlinks.push((path.to_path_buf(), text));
        return Ok(());
    }
    let Some((fd, dir, device)) = open_object(path, origin)? else {
        return Ok(());
    };
    planned.push(Planned {
        target: path.to_path_buf(),
        fd,
        dir,
        device,
        show,
        why: why.to_string(),
        idmap: None,
    });
    Ok(())
}

fn add_all(
    add: &mut impl FnMut(&Path, Origin, Show, &str) -> Result<()>,
    config: &JailConfig,
    plan: &Plan,
    inputs: &JailInputs<'_>,
) -> Result<()> {
    for pr in &plan.resources {
        let show = match pr.path_access {
            Access::Rw => Show::ReadWrite,
            Access::Ro => Show::ReadOnly,
        };
        add(
            &pr.resource.path,
            Origin::Resource(pr.resource.identity.map(|i| (i.dev, i.ino))),
            show,
            &pr.resource.device,
        )?;
    }
    for d in inputs.devices {
        add(d, Origin::Manager, Show::ReadWrite, "device")?;
    }
    for p in &config.exec_paths {
        add(p, Origin::System, Show::Exec, "system")?;
    }
    for p in &config.read_paths {
        add(p, Origin::System, Show::ReadOnly, "system")?;
    }
    for p in &config.base_devices {
        add(p, Origin::System, Show::ReadWrite, "system device")?;
    }
    Ok(())
}

fn build(
    mut planned: Vec<Planned>,
    symlinks: Vec<(PathBuf, PathBuf)>,
    runtime_dir: &Path,
) -> Result<PreparedJail> {
    // Outer objects before the ones beneath them: a path sorts after its ancestors.
    planned.sort_by(|a, b| a.target.cmp(&b.target));
    let staging = PathBuf::from(STAGING);
    let at = |p: &Path| -> PathBuf {
        let rel = p.strip_prefix("/").unwrap_or(p);
        staging.join(rel)
    };
    let mut ops = Vec::new();
    let mut steps = Vec::new();
    let mut trees = Vec::new();
    let mut made_dirs: Vec<PathBuf> = Vec::new();
    let mut bound: Vec<(PathBuf, bool, Show)> = Vec::new();
    let mkdirs = |made_dirs: &mut Vec<PathBuf>,
                  ops: &mut Vec<Op>,
                  steps: &mut Vec<String>,
                  dir: &Path|
     -> Result<()> {
        // Every missing ancestor, outermost first; all of them in the tmpfs we made.
        let mut chain: Vec<&Path> = dir
            .ancestors()
            .take_while(|a| *a != Path::new("/"))
            .collect();
        chain.reverse();
        for d in chain {
            if !made_dirs.iter().any(|m| m == d) {
                ops.push(Op::Mkdir(cstr(&at(d))?));
                steps.push(format!("create directory {} in the jail", d.display()));
                made_dirs.push(d.to_path_buf());
            }
        }
        Ok(())
    };
    for (link, text) in &symlinks {
        ops.push(Op::Symlink {
            text: cstr(text)?,
            at: cstr(&at(link))?,
        });
        steps.push(format!(
            "create symlink {} -> {} in the jail",
            link.display(),
            text.display()
        ));
    }
    for p in planned {
        if let Some((outer, _, show)) = bound
            .iter()
            .find(|(o, dir, _)| *dir && beneath(&p.target, o))
        {
            if show.covers(p.show) {
                // Already visible, with at least the access it needs, through the outer
                // bind (the same host object at the same path).
                continue;
            }
            return Err(ManagerError::Qemu(format!(
                "jail: {} ({}) lies beneath {} which the jail shows with less access; \
                 svirt does not mount inside another object",
                p.target.display(),
                p.why,
                outer.display()
            )));
        }
        if bound.iter().any(|(o, _, _)| *o == p.target) {
            continue;
        }
        if let Some(parent) = p.target.parent() {
            mkdirs(&mut made_dirs, &mut ops, &mut steps, parent)?;
        }
        let dst = at(&p.target);
        if p.dir {
            ops.push(Op::Mkdir(cstr(&dst)?));
            made_dirs.push(p.target.clone());
        } else {
            ops.push(Op::Touch(cstr(&dst)?));
        }
        steps.push(format!(
            "create the mount point {} ({}) in the jail",
            p.target.display(),
            p.why
        ));
        let tree = detached_clone(&p)?;
        ops.push(Op::Attach {
            tree: tree.as_raw_fd(),
            dst: cstr(&dst)?,
        });
        steps.push(format!(
            "attach {} ({}) in the jail{}",
            p.target.display(),
            p.why,
            if p.show == Show::ReadWrite {
                ""
            } else {
                " read-only"
            }
        ));
        bound.push((p.target.clone(), p.dir, p.show));
        trees.push(tree);
    }
    steps.extend(FIXED.iter().map(|s| s.to_string()));
    Ok(PreparedJail {
        ops,
        steps,
        trees,
        staging: cstr(&staging)?,
        cwd: cstr(runtime_dir)?,
        mounts: true,
    })
}

/// The pipe the child reports a failing step's index through.
fn report_pipe() -> Result<(OwnedFd, OwnedFd)> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK)
        .map_err(|e| ManagerError::Qemu(format!("jail: report pipe: {e}")))
}

/// A detached bind mount of the object behind `p.fd` (`open_tree(OPEN_TREE_CLONE)`, not
/// recursive: only the object's own mount, never mounts beneath it) with the jail's
/// flags set on it (`mount_setattr`). Made in the parent, where the object's mount is in
/// the caller's namespace (a bind from a mount of another namespace is refused), so the
/// child only attaches it: no path is resolved again between planning and exec.
fn detached_clone(p: &Planned) -> Result<OwnedFd> {
    // SAFETY: open_tree on an fd we own with an empty path; returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            p.fd.as_raw_fd(),
            c"".as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_EMPTY_PATH as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(jail_err(
            &p.target,
            "clone a bind mount of",
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: a fresh fd returned by the kernel, owned from here.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let mut set = libc::MOUNT_ATTR_NOSUID;
    let mut clr = 0u64;
    // A device node keeps the `nodev` of the mount it came from: a node on a mount its
    // owner made `nodev` (a user's FUSE or removable-media mount) stays inert in the jail.
    let source_nodev = rustix::fs::fstatvfs(&p.fd)
        .map(|s| s.f_flag.contains(rustix::fs::StatVfsMountFlags::NODEV))
        .map_err(|e| jail_err(&p.target, "statvfs", io::Error::from(e)))?;
    if p.device && !source_nodev {
        clr |= libc::MOUNT_ATTR_NODEV;
    } else {
        set |= libc::MOUNT_ATTR_NODEV;
    }
    match p.show {
        Show::ReadWrite => {
            set |= libc::MOUNT_ATTR_NOEXEC;
            clr |= libc::MOUNT_ATTR_RDONLY;
        }
        Show::ReadOnly => set |= libc::MOUNT_ATTR_NOEXEC | libc::MOUNT_ATTR_RDONLY,
        Show::Exec => {
            set |= libc::MOUNT_ATTR_RDONLY;
            clr |= libc::MOUNT_ATTR_NOEXEC;
        }
    }
    // An idmapped share: its mapping is set with the flags, on the still detached
    // mount (the only time the kernel allows it). The namespace fd is needed only here.
    let userns = match p.idmap {
        Some(m) => Some(
            crate::idmap::userns_for(m)
                .map_err(|e| jail_err(&p.target, "make the user namespace of the idmap of", e))?,
        ),
        None => None,
    };
    if userns.is_some() {
        set |= libc::MOUNT_ATTR_IDMAP;
    }
    let attr = libc::mount_attr {
        attr_set: set,
        attr_clr: clr,
        propagation: libc::MS_PRIVATE,
        userns_fd: userns.as_ref().map_or(0, |u| u.as_raw_fd() as u64),
    };
    // SAFETY: mount_setattr on the detached tree we own, reading one mount_attr.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r != 0 {
        return Err(jail_err(
            &p.target,
            "set the jail's mount flags on",
            io::Error::last_os_error(),
        ));
    }
    Ok(tree)
}

fn cvt(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl PreparedJail {
    /// What the build will do, one line per step (for logs and tests).
    pub fn steps(&self) -> &[String] {
        &self.steps
    }

    /// Shows the process a procfs of its own at `/proc`: a new instance mounted
    /// `hidepid=invisible` (it lists only the processes of the process's own uid) and
    /// read-only, `nosuid`, `nodev`, `noexec`. Without a mount namespace (SELinux), the
    /// host's `/proc`. Returns an fd of its root for the hooks' preparation
    /// ([`svirt_drivers::ExecContext::procfs`]), valid until [`PreparedJail::assemble`].
    /// For helper processes that need `/proc/self/fd` (virtiofsd); a VMM gets none.
    pub fn add_procfs(&mut self) -> Result<RawFd> {
        use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags};
        let proc = Path::new("/proc");
        if !self.mounts {
            let fd = rustix::fs::open(
                proc,
                rustix::fs::OFlags::PATH
                    | rustix::fs::OFlags::DIRECTORY
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(|e| jail_err(proc, "open", io::Error::from(e)))?;
            let raw = fd.as_raw_fd();
            self.trees.push(fd);
            return Ok(raw);
        }
        let e = |what: &str, err: rustix::io::Errno| jail_err(proc, what, io::Error::from(err));
        let fs = rustix::mount::fsopen("proc", FsOpenFlags::FSOPEN_CLOEXEC)
            .map_err(|err| e("open a new procfs for", err))?;
        rustix::mount::fsconfig_set_string(&fs, "hidepid", "invisible")
            .map_err(|err| e("set hidepid=invisible on the procfs for", err))?;
        rustix::mount::fsconfig_create(&fs).map_err(|err| e("create the procfs for", err))?;
        let mnt = rustix::mount::fsmount(
            &fs,
            FsMountFlags::FSMOUNT_CLOEXEC,
            MountAttrFlags::MOUNT_ATTR_RDONLY
                | MountAttrFlags::MOUNT_ATTR_NOSUID
                | MountAttrFlags::MOUNT_ATTR_NODEV
                | MountAttrFlags::MOUNT_ATTR_NOEXEC,
        )
        .map_err(|err| e("mount the procfs for", err))?;
        let dst = self
            .staging
            .to_str()
            .map(|s| PathBuf::from(s).join("proc"))
            .map_err(|_| jail_err(proc, "mount", "staging path is not UTF-8"))?;
        // Before the fixed steps, whose indices follow the ops'.
        let at = self.ops.len();
        self.ops.push(Op::Mkdir(cstr(&dst)?));
        self.steps
            .insert(at, "create the mount point /proc in the jail".into());
        self.ops.push(Op::Attach {
            tree: mnt.as_raw_fd(),
            dst: cstr(&dst)?,
        });
        self.steps.insert(
            at + 1,
            "attach the process's own procfs at /proc in the jail".into(),
        );
        let raw = mnt.as_raw_fd();
        self.trees.push(mnt);
        Ok(raw)
    }

    /// Builds the jail's mount namespace (when it has one) on a thread of its own, and
    /// pairs it with the network and IPC namespaces `ns`. Runs in the manager, before the
    /// fork and beside the labeling: the child only joins what is built here. An error
    /// names the step (and the object, for a per-object step).
    pub fn assemble(self, ns: Namespaces) -> Result<Jail> {
        let mnt = if self.mounts {
            let built = std::thread::scope(|s| {
                std::thread::Builder::new()
                    .name("svirt-jail".into())
                    .spawn_scoped(s, || {
                        // SAFETY: a thread of our own that exits right after; the data
                        // was built by `prepare` and outlives the scope.
                        unsafe { build_mount_namespace(&self.ops, &self.staging) }
                    })
                    .map_err(|e| ManagerError::Qemu(format!("jail: start the build thread: {e}")))?
                    .join()
                    .map_err(|_| ManagerError::Qemu("jail: the build thread panicked".into()))
            })?;
            match built {
                Ok(fd) => Some(fd),
                Err((step, e)) => {
                    let what = self
                        .steps
                        .get(step)
                        .cloned()
                        .unwrap_or_else(|| format!("step {step}"));
                    return Err(ManagerError::Qemu(format!("jail: {what}: {e}")));
                }
            }
        } else {
            None
        };
        // The detached mounts are attached now (or unused): their fds can go.
        drop(self.trees);
        let (report_rd, report) = report_pipe()?;
        Ok(Jail {
            mnt,
            ns,
            cwd: self.cwd,
            report,
            report_rd,
        })
    }
}

impl Jail {
    /// The step for the child, and the parent's end of its failure report.
    pub fn into_hook(self) -> (svirt_drivers::ChildHook, JailReport) {
        let Jail {
            mnt,
            ns,
            cwd,
            report,
            report_rd,
        } = self;
        let reader = JailReport { rd: report_rd };
        let hook: svirt_drivers::ChildHook = Box::new(move || {
            // SAFETY: runs between fork and exec on fds and a string made before the
            // fork; only system calls, no allocation.
            let entered = unsafe {
                join(
                    mnt.as_ref().map(|f| f.as_raw_fd()),
                    ns.net.as_raw_fd(),
                    ns.ipc.as_raw_fd(),
                    &cwd,
                )
            };
            match entered {
                Ok(()) => Ok(()),
                Err((step, e)) => {
                    let b = (step as u32).to_ne_bytes();
                    // SAFETY: a write of 4 bytes we own to the pipe we own. A failed
                    // report leaves the errno-only error: nothing else to do here.
                    unsafe {
                        libc::write(report.as_raw_fd(), b.as_ptr().cast(), b.len());
                    }
                    Err(e)
                }
            }
        });
        (hook, reader)
    }
}

/// The child's steps ([`CHILD_STEPS`]): join the built namespaces, then go to the runtime
/// directory (with a mount namespace; else the working directory is already there).
///
/// # Safety
/// Only to be called in a freshly forked child before exec.
unsafe fn join(
    mnt: Option<RawFd>,
    net: RawFd,
    ipc: RawFd,
    cwd: &CString,
) -> std::result::Result<(), (usize, io::Error)> {
    // SAFETY (all blocks below): plain system calls on fds and a NUL-terminated string
    // built in the parent.
    unsafe {
        if let Some(m) = mnt {
            // Root and working directory become the jail's root.
            cvt(libc::setns(m, libc::CLONE_NEWNS)).map_err(|e| (0, e))?;
        }
        cvt(libc::setns(net, libc::CLONE_NEWNET)).map_err(|e| (1, e))?;
        // IPC too: System V objects and POSIX message queues of the host are then out of
        // reach as well (they are keyed by number, not by path).
        cvt(libc::setns(ipc, libc::CLONE_NEWIPC)).map_err(|e| (2, e))?;
        if mnt.is_some() {
            cvt(libc::chdir(cwd.as_ptr())).map_err(|e| (3, e))?;
        }
    }
    Ok(())
}

/// Builds the jail's mount namespace in the calling thread and returns it. On error: the
/// index of the failing step (ops first, then [`FIXED`]) and the system error.
///
/// `unshare(CLONE_NEWNS)`, the new namespace opened (through `/proc`, before the pivot
/// hides it), `/` made private recursively so nothing propagates back to the host, a
/// tmpfs on `/tmp` (of the new namespace only) as the new root, each detached mount
/// attached onto an empty file or directory at its canonical path, the tmpfs made
/// read-only, `pivot_root`, and the old root detached.
///
/// # Safety
/// Changes the calling thread's mount namespace, root and working directory: only for a
/// thread that exits afterwards.
unsafe fn build_mount_namespace(
    ops: &[Op],
    staging: &CString,
) -> std::result::Result<OwnedFd, (usize, io::Error)> {
    let n = ops.len();
    let fixed = |k: usize| move |e: io::Error| (n + k, e);
    // SAFETY (all blocks below): plain system calls on NUL-terminated strings built by
    // `prepare`; null pointers where the calls take none.
    unsafe {
        // Only this thread's: a namespace unshared with CLONE_NEWNS gives the thread its
        // own root and working directory (CLONE_FS is unshared with it).
        cvt(libc::unshare(libc::CLONE_NEWNS)).map_err(fixed(0))?;
        let ns = libc::open(
            c"/proc/thread-self/ns/mnt".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if ns < 0 {
            return Err((n + 1, io::Error::last_os_error()));
        }
        let ns = OwnedFd::from_raw_fd(ns);
        // Nothing mounted here may propagate to the host's mounts (and nothing mounted
        // later on the host appears here).
        cvt(libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))
        .map_err(fixed(2))?;
        cvt(libc::mount(
            c"svirt-jail".as_ptr(),
            staging.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            c"mode=0755,size=1m".as_ptr().cast(),
        ))
        .map_err(fixed(3))?;
        for (i, op) in ops.iter().enumerate() {
            let r = match op {
                Op::Mkdir(p) => {
                    let r = libc::mkdir(p.as_ptr(), 0o755);
                    // An ancestor shared by two objects is listed once; EEXIST cannot
                    // come from anything else in a tmpfs only this thread sees.
                    if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EEXIST) {
                        0
                    } else {
                        r
                    }
                }
                // mknod, not open(O_CREAT): an fd open for writing, even for an
                // instant, can be copied by another thread's fork (a concurrent start's
                // spawn) and would then make the read-only remount below fail (EBUSY).
                Op::Touch(p) => libc::mknod(p.as_ptr(), libc::S_IFREG | 0o644, 0),
                Op::Symlink { text, at } => libc::symlink(text.as_ptr(), at.as_ptr()),
                Op::Attach { tree, dst } => libc::syscall(
                    libc::SYS_move_mount,
                    *tree,
                    c"".as_ptr(),
                    libc::AT_FDCWD,
                    dst.as_ptr(),
                    libc::MOVE_MOUNT_F_EMPTY_PATH,
                ) as libc::c_int,
            };
            cvt(r).map_err(|e| (i, e))?;
        }
        cvt(libc::mount(
            std::ptr::null(),
            staging.as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        ))
        .map_err(fixed(4))?;
        cvt(libc::chdir(staging.as_ptr())).map_err(fixed(5))?;
        // pivot_root(".", "."): the old root ends up mounted on top of the new one and is
        // detached right away; no directory for it is needed in the read-only root. Only
        // this thread's root and working directory move: every other task has its root
        // in the host's namespace, not in this copy of it.
        let r = libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr());
        if r != 0 {
            return Err((n + 6, io::Error::last_os_error()));
        }
        cvt(libc::umount2(c".".as_ptr(), libc::MNT_DETACH)).map_err(fixed(7))?;
        Ok(ns)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn nesting_rules() {
        assert!(Show::ReadWrite.covers(Show::ReadOnly));
        assert!(Show::ReadWrite.covers(Show::ReadWrite));
        assert!(!Show::ReadOnly.covers(Show::ReadWrite));
        assert!(!Show::Exec.covers(Show::ReadWrite));
        assert!(!Show::ReadWrite.covers(Show::Exec));
        assert!(beneath(Path::new("/a/b/c"), Path::new("/a/b")));
        assert!(!beneath(Path::new("/a/bc"), Path::new("/a/b")));
    }

    /// A step failing in the child is reported by name (std only carries the errno):
    /// here the runtime directory the jail does not show, so the last step fails, after
    /// the namespaces were built and joined, and the binary never runs.
    #[test]
    fn a_failing_step_is_named() {
        if !svirt_testkit::root("namespaces, mounts") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mark = dir.path().join("ran");
        let jail = build(Vec::new(), Vec::new(), Path::new("/svirt-no-such-dir"))
            .unwrap()
            .assemble(Namespaces::make().unwrap())
            .unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let pid_file = std::fs::File::create(dir.path().join("pid")).unwrap();
        let args = vec!["-c".to_string(), format!("touch {}", mark.display())];
        let e = crate::process::spawn(crate::process::SpawnRequest {
            binary: Path::new("/bin/sh"),
            args: &args,
            runtime_dir: dir.path(),
            log,
            keep_fds: Vec::new(),
            pid_fd: Some(pid_file.as_raw_fd()),
            cgroup_procs: Vec::new(),
            pre_jail_hooks: Vec::new(),
            jail: Some(jail),
            hooks: Vec::new(),
            drop_capabilities: true,
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("jail: chdir to the runtime directory in the jail")
                && e.contains("No such file"),
            "{e}"
        );
        assert!(!mark.exists());
        // Nothing of it is mounted on the host.
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mi.contains("svirt-jail"));
    }

    /// The object shown is the object planned: a name swapped since planning (a user's
    /// nodev mount with a device node put over the planned file, say) is refused, naming
    /// it; the planned object itself is accepted (control).
    #[test]
    fn attack_jail_refuses_an_object_swapped_since_planning() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().canonicalize().unwrap().join("disk.img");
        std::fs::write(&img, b"planned").unwrap();
        let id = |p: &Path| {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata(p).unwrap();
            (m.dev(), m.ino())
        };
        let planned = id(&img);
        let (mut v, mut links) = (Vec::new(), Vec::new());
        let mut add = || {
            add_object(
                &mut v,
                &mut links,
                &img,
                Origin::Resource(Some(planned)),
                Show::ReadWrite,
                "disk vda",
            )
        };
        add().unwrap();
        let other = img.with_file_name("other");
        std::fs::write(&other, b"swapped in").unwrap();
        std::fs::rename(&other, &img).unwrap();
        let e = add().expect_err("refused").to_string();
        assert_eq!(
            v.len(),
            1,
            "the planned object is opened, the swapped one is not"
        );
        assert!(
            e.contains("disk.img") && e.contains("replaced since it was planned"),
            "{e}"
        );
    }
}
