//! The narrow interface to the host file system used while building a guest's resources.
//!
//! Every lookup walks the path one component at a time with `openat(O_PATH|O_NOFOLLOW)`
//! from a directory fd, reading symlinks itself, so the object reached is the object
//! checked (no check-then-act on path strings) and the canonical path it returns has no
//! symlink in any component: drivers can later open it with `RESOLVE_NO_SYMLINKS`.
//!
//! `root` is where host-derived paths live (`/etc/selinux`, `/sys`, `/dev/vfio`,
//! `/dev/bus/usb`, the TPM state root): `/` in production, a temporary directory in
//! tests. Paths written in the domain XML are absolute host paths and are resolved as
//! they are.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::object_policy::{ObjectStat, PolicyState, ProtectSpec, SYSTEM_TREES};

/// Directories that must never be relabeled themselves (a file below them is fine).
pub const SYSTEM_PATHS: &[&str] = &[
    "/",
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/etc/passwd",
    "/etc/shadow",
    "/etc/pki",
    "/home",
    "/lib",
    "/lib64",
    "/media",
    "/opt",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/srv",
    "/sys",
    "/tmp",
    "/usr",
    "/var",
    "/var/lib",
    "/var/log",
];

/// Deepest directory nesting walked in a tree.
const MAX_TREE_DEPTH: usize = 128;
/// Most entries walked in one tree.
const MAX_TREE_ENTRIES: usize = 1_000_000;

/// The kind of a file system object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link (only seen inside trees, never followed there).
    Symlink,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
    /// Character device.
    CharDevice,
    /// Block device.
    BlockDevice,
    /// Anything else.
    Unknown,
}

impl FileKind {
    fn from_mode(mode: u32) -> FileKind {
        match FileType::from_raw_mode(mode) {
            FileType::RegularFile => FileKind::File,
            FileType::Directory => FileKind::Dir,
            FileType::Symlink => FileKind::Symlink,
            FileType::Fifo => FileKind::Fifo,
            FileType::Socket => FileKind::Socket,
            FileType::CharacterDevice => FileKind::CharDevice,
            FileType::BlockDevice => FileKind::BlockDevice,
            _ => FileKind::Unknown,
        }
    }
}

/// What `fstat` says about an object: enough to identify it and know its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileInfo {
    /// Object type.
    pub kind: FileKind,
    /// Device of the file system holding it.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Number of hard links.
    pub nlink: u64,
}

impl FileInfo {
    fn from_stat(st: &rustix::fs::Stat) -> FileInfo {
        FileInfo {
            kind: FileKind::from_mode(st.st_mode),
            dev: st.st_dev,
            ino: st.st_ino,
            #[allow(clippy::useless_conversion)]
            nlink: u64::from(st.st_nlink),
        }
    }
}

/// An object reached safely ([`svirt_hostfs::resolve`]) and judged by the object policy:
/// its canonical path and an `O_PATH` fd to it.
#[derive(Debug)]
pub struct Resolved {
    /// The path as written.
    pub given: PathBuf,
    /// Canonical absolute path: no symlink, `.` or `..` in it.
    pub path: PathBuf,
    /// Type and identity.
    pub info: FileInfo,
    /// What the object policy judged: mode, owner, device number, mount.
    pub stat: ObjectStat,
    /// `(dev, ino)` of every directory the object was reached through, from `/` down to
    /// its parent.
    pub ancestors: Vec<(u64, u64)>,
    reached: svirt_hostfs::resolve::Resolved,
}

impl Resolved {
    /// The `O_PATH` fd of the object.
    pub fn fd(&self) -> &OwnedFd {
        self.reached.fd()
    }

    /// Opens the object for reading, by name in its parent directory without following
    /// a symlink, and checks it is still the object resolved. FIFOs are opened
    /// non-blocking so a pipe never hangs the planner.
    pub fn open_read(&self) -> std::io::Result<std::fs::File> {
        self.reached.open_read()
    }

    /// Opens the object as a directory (readable), checking it is the object resolved.
    pub fn open_dir(&self) -> std::io::Result<OwnedFd> {
        self.reached.open_dir()
    }
}

/// One object inside a walked tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    /// Path relative to the tree root.
    pub rel: PathBuf,
    /// Type and identity (of the entry itself; symlinks are not followed).
    pub info: FileInfo,
    /// A directory on another file system: not descended into.
    pub mount_point: bool,
    /// What the object policy judges of the entry.
    pub stat: ObjectStat,
}

/// The host as the resource builder sees it.
#[derive(Debug, Clone)]
pub struct Host {
    root: PathBuf,
    home: Option<PathBuf>,
    tpm_state_root: PathBuf,
    /// Objects protected beyond the system trees (svirtd's socket, state and run dirs).
    protected: Vec<ProtectSpec>,
    /// Where backing files named only by an image header may also live.
    image_roots: Vec<PathBuf>,
    /// The object policy's view of the host, built at the first resolve.
    policy: Arc<OnceLock<std::result::Result<PolicyState, String>>>,
}

impl Host {
    /// A host whose system files (`/etc/selinux`, `/sys`, `/dev`) live under `root`.
    /// The TPM state root defaults to `<root>/var/lib/libvirt/swtpm`, as libvirt's.
    pub fn new(root: impl Into<PathBuf>) -> Host {
        let root = root.into();
        let tpm_state_root = root.join("var/lib/libvirt/swtpm");
        Host {
            root,
            home: None,
            tpm_state_root,
            protected: Vec::new(),
            image_roots: Vec::new(),
            policy: Arc::new(OnceLock::new()),
        }
    }

    /// Also protects `path` (and, for a directory, everything below it) as `what`: no
    /// guest is ever given it, whatever it is reached through.
    pub fn with_protected(mut self, path: impl Into<PathBuf>, what: impl Into<String>) -> Host {
        self.protected.push(ProtectSpec {
            path: path.into(),
            what: what.into(),
            devices: false,
        });
        self.policy = Arc::new(OnceLock::new());
        self
    }

    /// Directories below which a backing file named only by a qcow2 header is accepted,
    /// besides the directory of the image that names it.
    pub fn with_image_roots(mut self, roots: Vec<PathBuf>) -> Host {
        self.image_roots = roots;
        self
    }

    /// The configured image roots.
    pub fn image_roots(&self) -> &[PathBuf] {
        &self.image_roots
    }

    /// The object policy, built once per host value (the mount table read at the first
    /// resolve: one start).
    fn policy(&self) -> Result<&PolicyState> {
        let state = self.policy.get_or_init(|| {
            let mut specs: Vec<ProtectSpec> = Vec::new();
            let mut push = |base: &Path, test_root: bool| {
                for t in SYSTEM_TREES {
                    let devices = *t == "/dev";
                    // A test root's `/dev` holds stand-in files for device nodes; the
                    // host's own `/dev` is protected whatever the root.
                    if devices && test_root {
                        continue;
                    }
                    specs.push(ProtectSpec {
                        path: base.join(t.trim_start_matches('/')),
                        what: format!("system tree {t}"),
                        devices,
                    });
                }
            };
            push(Path::new("/"), false);
            if self.root != Path::new("/") {
                push(&self.root, true);
            }
            specs.extend(self.protected.iter().cloned());
            PolicyState::new(&specs).map_err(|e| format!("read the mount table: {e}"))
        });
        state.as_ref().map_err(|m| Error::PolicyConfig {
            path: PathBuf::from("/proc/self/mountinfo"),
            message: m.clone(),
        })
    }

    /// Judges an entry met while walking the tree of `root` (see
    /// [`crate::object_policy`]); the error names the entry and the rule.
    pub fn check_tree_entry(
        &self,
        device: &str,
        path: &Path,
        st: &ObjectStat,
        writable: bool,
    ) -> Result<()> {
        self.policy()?
            .check_entry(st, writable)
            .map_err(|rule| Error::Refused {
                device: device.to_string(),
                path: path.to_path_buf(),
                given: path.to_path_buf(),
                rule,
            })
    }

    /// Refuses a tree root that contains a protected object.
    pub fn check_tree_root(&self, device: &str, root: &Resolved) -> Result<()> {
        self.policy()?
            .check_tree_root(&root.stat, &root.path)
            .map_err(|rule| Error::Refused {
                device: device.to_string(),
                path: root.path.clone(),
                given: root.given.clone(),
                rule,
            })
    }

    /// Whether `r` lies below the directory `dir` (by identity: `dir` is one of the
    /// directories `r` was reached through).
    pub fn is_beneath(&self, r: &Resolved, dir: &Path) -> bool {
        let Ok(fd) = rustix::fs::open(
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            return false;
        };
        let Ok(st) = rustix::fs::fstat(&fd) else {
            return false;
        };
        r.ancestors.contains(&(st.st_dev, st.st_ino))
    }

    /// Also refuses the invoking user's home directory itself.
    pub fn with_home(mut self, home: Option<PathBuf>) -> Host {
        self.home = home.filter(|h| h.is_absolute());
        self
    }

    /// Where TPM emulator state directories are derived when the XML gives none.
    pub fn with_tpm_state_root(mut self, dir: impl Into<PathBuf>) -> Host {
        self.tpm_state_root = dir.into();
        self
    }

    /// The host root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The TPM state root.
    pub fn tpm_state_root(&self) -> &Path {
        &self.tpm_state_root
    }

    /// A host-derived path (`/dev/vfio/3`) under the root.
    pub fn host_path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    /// Whether `path` is one of the paths that must never be relabeled (the list, the
    /// same list under the host root, and the invoking user's home).
    pub fn is_system_path(&self, path: &Path) -> bool {
        let p = lexical(path);
        if SYSTEM_PATHS.iter().any(|s| p == Path::new(s)) {
            return true;
        }
        if self.root != Path::new("/") {
            let root = lexical(&self.root);
            if SYSTEM_PATHS
                .iter()
                .any(|s| p == root.join(s.trim_start_matches('/')))
            {
                return true;
            }
        }
        self.home.as_ref().is_some_and(|h| p == lexical(h))
    }

    /// Resolves `given` (an absolute path from the domain) safely, refusing system paths
    /// both as written and as reached through symlinks.
    pub fn resolve(&self, device: &str, given: &Path) -> Result<Resolved> {
        match self.try_resolve(device, given)? {
            Some(r) => Ok(r),
            None => Err(Error::NotFound {
                device: device.to_string(),
                path: given.to_path_buf(),
            }),
        }
    }

    /// Like [`Host::resolve`], but `Ok(None)` when the object (or a directory above it)
    /// does not exist.
    ///
    /// Symlinks are followed only where nobody but root could have planted them, or their
    /// owner, who also owns the directory they are in (the kernel's `protected_symlinks`
    /// rule, applied to every directory); and a link owned by a user leads only to that
    /// user's own objects, so nobody gains through svirt an object they do not own. The
    /// object reached then passes the object policy ([`crate::object_policy`]).
    pub fn try_resolve(&self, device: &str, given: &Path) -> Result<Option<Resolved>> {
        if !given.is_absolute() {
            return Err(Error::RelativePath {
                device: device.to_string(),
                path: given.to_path_buf(),
            });
        }
        let refuse = |path: PathBuf| Error::SystemPath {
            device: device.to_string(),
            path,
            given: given.to_path_buf(),
        };
        if self.is_system_path(given) {
            return Err(refuse(lexical(given)));
        }
        let io = |op: &'static str, e: std::io::Error| Error::Io {
            device: device.to_string(),
            op,
            path: given.to_path_buf(),
            source: e,
        };
        let policy_refusal = |path: PathBuf, rule: String| Error::Refused {
            device: device.to_string(),
            path,
            given: given.to_path_buf(),
            rule,
        };
        let policy = self.policy()?;
        // The symlink rule: followed only where nobody but root, or the link's owner who
        // also owns its directory, could have planted it; and all the links a user owns
        // on one path must be one user's, whose object it then must be.
        let mut link_owner: Option<(u32, PathBuf)> = None;
        let mut judge = |l: &svirt_hostfs::resolve::Link<'_>| -> std::result::Result<(), String> {
            if l.uid == 0 {
                return Ok(());
            }
            if l.uid != l.dir_uid {
                return Err(format!(
                    "it is a symlink owned by uid {} in a directory owned by uid {}: someone other than root or the directory's owner planted it; not followed",
                    l.uid, l.dir_uid
                ));
            }
            match &link_owner {
                Some((u, first)) if *u != l.uid => Err(format!(
                    "it is a symlink owned by uid {}, reached through {} owned by uid {u}: not followed",
                    l.uid,
                    first.display()
                )),
                Some(_) => Ok(()),
                None => {
                    link_owner = Some((l.uid, l.path.to_path_buf()));
                    Ok(())
                }
            }
        };
        let reached = match svirt_hostfs::resolve::resolve(given, &mut judge) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(None),
            Err(svirt_hostfs::resolve::Error::Io { op, source }) => return Err(io(op, source)),
            Err(svirt_hostfs::resolve::Error::Refused { path, rule }) => {
                return Err(policy_refusal(path, rule));
            }
            Err(svirt_hostfs::resolve::Error::Root) => return Err(refuse(PathBuf::from("/"))),
        };
        let path = reached.path.clone();
        if self.is_system_path(&path) {
            return Err(refuse(path));
        }
        let fd = reached.fd();
        let st = rustix::fs::fstat(fd).map_err(|e| io("stat", e.into()))?;
        let ost = ObjectStat::of(fd).map_err(|e| io("stat", e))?;
        if let Some((uid, link)) = &link_owner
            && ost.uid != *uid
        {
            return Err(policy_refusal(
                path,
                format!(
                    "it was reached through {}, a symlink owned by uid {uid}, but it is owned by uid {}: a user's link leads only to that user's own objects",
                    link.display(),
                    ost.uid
                ),
            ));
        }
        let ancestors = reached.ancestors.clone();
        policy
            .check(&ost, &path, &ancestors)
            .map_err(|rule| policy_refusal(path.clone(), rule))?;
        Ok(Some(Resolved {
            given: given.to_path_buf(),
            path,
            info: FileInfo::from_stat(&st),
            stat: ost,
            ancestors,
            reached,
        }))
    }

    /// Creates an empty file `path` (mode 0600) if nothing exists there, as libvirt does
    /// for chardev output files, and says whether it did. Its directory is reached through
    /// [`Host::resolve`] (so it passes the symlink rule and the object policy) and the file
    /// is created relative to that directory's fd, never through a link: a protected or
    /// planted directory gets nothing created in it.
    pub fn create_file(&self, device: &str, path: &Path) -> Result<bool> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(Error::RelativePath {
                device: device.to_string(),
                path: path.to_path_buf(),
            });
        };
        let dir = self.resolve(device, parent)?;
        let dirfd = dir.open_dir().map_err(|e| Error::Io {
            device: device.to_string(),
            op: "open directory",
            path: dir.path.clone(),
            source: e,
        })?;
        match rustix::fs::openat(
            &dirfd,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(_) => Ok(true),
            Err(Errno::EXIST) => Ok(false),
            Err(e) => Err(Error::Io {
                device: device.to_string(),
                op: "create",
                path: path.to_path_buf(),
                source: e.into(),
            }),
        }
    }

    /// Binds the listening socket of a chardev QEMU serves (`<source mode='bind'>`) at
    /// `path`, as libvirt does: QEMU gets the listening fd, so it needs no write access to
    /// the socket's directory (its jail shows that read-only). Reached like
    /// [`Host::create_file`] (the directory through [`Host::resolve`], the socket relative
    /// to its fd). A socket an earlier run left (root's, and nothing listens:
    /// `ECONNREFUSED`, asked without blocking) is replaced; one something listens on, or
    /// another user's, is refused. `None` when something else is
    /// there: planning judges it (a non-socket is refused as a socket chardev).
    pub fn bind_socket(
        &self,
        device: &str,
        path: &Path,
    ) -> Result<Option<std::os::unix::net::UnixListener>> {
        use std::os::fd::AsRawFd;
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(Error::RelativePath {
                device: device.to_string(),
                path: path.to_path_buf(),
            });
        };
        let io = |op: &'static str, e: std::io::Error| Error::Io {
            device: device.to_string(),
            op,
            path: path.to_path_buf(),
            source: e,
        };
        let dir = self.resolve(device, parent)?;
        let dirfd = dir.open_dir().map_err(|e| Error::Io {
            device: device.to_string(),
            op: "open directory",
            path: dir.path.clone(),
            source: e,
        })?;
        // The socket's address, through the directory's fd: bind and connect never
        // resolve the directory's path again.
        let via = PathBuf::from(format!("/proc/self/fd/{}", dirfd.as_raw_fd())).join(name);
        match rustix::fs::statat(&dirfd, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Socket => {
                // Only svirtd's own leftover (root's) is replaced: another user's socket
                // (a sticky /var/tmp does not stop root) is not svirt's to remove.
                if st.st_uid != 0 {
                    return Err(io(
                        "bind socket",
                        std::io::Error::new(
                            std::io::ErrorKind::AlreadyExists,
                            format!("a socket of uid {} is there, not svirt's", st.st_uid),
                        ),
                    ));
                }
                match stale_socket(&via) {
                    Ok(false) => {
                        return Err(io(
                            "bind socket",
                            std::io::Error::new(
                                std::io::ErrorKind::AddrInUse,
                                "something listens on it already",
                            ),
                        ));
                    }
                    Ok(true) => {
                        rustix::fs::unlinkat(&dirfd, name, rustix::fs::AtFlags::empty())
                            .map_err(|e| io("remove the stale socket", e.into()))?;
                    }
                    Err(e) => return Err(io("connect to the existing socket", e)),
                }
            }
            Ok(_) => return Ok(None),
            Err(Errno::NOENT) => {}
            Err(e) => return Err(io("stat", e.into())),
        }
        let l = std::os::unix::net::UnixListener::bind(&via).map_err(|e| io("bind socket", e))?;
        // Root's alone until a driver gives it to the guest (it is planned, labeled and
        // restored like any socket of the guest's). Changed through an O_PATH fd of the
        // name, opened without following a link and checked to be a socket: a name swapped
        // for a symlink since the bind never leads the chmod elsewhere.
        let node = rustix::fs::openat(
            &dirfd,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io("open the bound socket", e.into()))?;
        let st = rustix::fs::fstat(&node).map_err(|e| io("stat the bound socket", e.into()))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::Socket {
            return Err(io(
                "bind socket",
                std::io::Error::other("the bound socket was replaced"),
            ));
        }
        std::fs::set_permissions(
            format!("/proc/self/fd/{}", node.as_raw_fd()),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .map_err(|e| io("chmod 0600", e))?;
        Ok(Some(l))
    }

    /// Walks a directory tree without following symlinks and without crossing into other
    /// file systems. Entries are listed in a stable (sorted) order; the root itself is
    /// not listed.
    pub fn walk_tree(&self, device: &str, root: &Resolved) -> Result<Vec<TreeEntry>> {
        let io = |op: &'static str, path: &Path, e: std::io::Error| Error::Io {
            device: device.to_string(),
            op,
            path: path.to_path_buf(),
            source: e,
        };
        if root.info.kind != FileKind::Dir {
            return Err(Error::WrongType {
                device: device.to_string(),
                path: root.path.clone(),
                message: "expected a directory".into(),
            });
        }
        let fd = root
            .open_dir()
            .map_err(|e| io("open directory", &root.path, e))?;
        let dir =
            svirt_hostfs::Dir::from_fd(fd).map_err(|e| io("open directory", &root.path, e))?;
        let mut out = Vec::new();
        let opts = svirt_hostfs::walk::Options {
            sorted: true,
            max_depth: Some(MAX_TREE_DEPTH),
            max_entries: Some(MAX_TREE_ENTRIES),
        };
        svirt_hostfs::walk::walk(dir, &opts, &mut |e| {
            let st = ObjectStat {
                mode: e.stat.meta.mode,
                dev: e.stat.id.dev,
                ino: e.stat.id.ino,
                rdev: e.stat.rdev,
                nlink: e.stat.nlink,
                uid: e.stat.meta.uid,
                mnt_id: None,
                nodev: false,
            };
            out.push(TreeEntry {
                rel: PathBuf::from(OsStr::from_bytes(e.rel)),
                info: FileInfo {
                    kind: FileKind::from_mode(st.mode),
                    dev: st.dev,
                    ino: st.ino,
                    nlink: st.nlink,
                },
                mount_point: e.kind == svirt_hostfs::walk::Kind::MountPoint,
                stat: st,
            });
            Ok::<(), std::convert::Infallible>(())
        })
        .map_err(|e| {
            use svirt_hostfs::walk::Error as W;
            let (op, rel, source) = match e {
                W::Io { op, rel, source } => (op, rel, source),
                W::TooDeep { rel, max } => (
                    "walk",
                    rel,
                    std::io::Error::other(format!("deeper than {max} levels")),
                ),
                W::TooMany { rel, max } => (
                    "walk",
                    rel,
                    std::io::Error::other(format!("more than {max} entries")),
                ),
                W::Visit(never) => match never {},
            };
            io(op, &root.path.join(OsStr::from_bytes(&rel)), source)
        })?;
        Ok(out)
    }

    /// The IOMMU group of a PCI device, from the `iommu_group` symlink in sysfs.
    pub fn pci_iommu_group(&self, device: &str, addr: &str) -> Result<u32> {
        let link = self.host_path(&format!("/sys/bus/pci/devices/{addr}/iommu_group"));
        let target = std::fs::read_link(&link).map_err(|e| Error::Hostdev {
            device: device.to_string(),
            message: format!(
                "PCI device {addr}: cannot read {}: {e} (no such device, or no IOMMU)",
                link.display()
            ),
        })?;
        target
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok())
            .ok_or_else(|| Error::Hostdev {
                device: device.to_string(),
                message: format!(
                    "PCI device {addr}: {} points at {}, not an IOMMU group",
                    link.display(),
                    target.display()
                ),
            })
    }

    /// Finds a USB device's bus and device numbers by vendor and product in sysfs.
    pub fn usb_by_id(&self, device: &str, vendor: u16, product: u16) -> Result<(u16, u16)> {
        let dir = self.host_path("/sys/bus/usb/devices");
        let err = |message: String| Error::Hostdev {
            device: device.to_string(),
            message,
        };
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| err(format!("cannot list {}: {e}", dir.display())))?;
        let read = |d: &Path, f: &str| {
            std::fs::read_to_string(d.join(f))
                .ok()
                .map(|s| s.trim().to_string())
        };
        let mut found = Vec::new();
        for e in entries.flatten() {
            let d = e.path();
            let (Some(v), Some(p)) = (read(&d, "idVendor"), read(&d, "idProduct")) else {
                continue;
            };
            if u16::from_str_radix(&v, 16) != Ok(vendor)
                || u16::from_str_radix(&p, 16) != Ok(product)
            {
                continue;
            }
            let bus = read(&d, "busnum").and_then(|s| s.parse().ok());
            let dev = read(&d, "devnum").and_then(|s| s.parse().ok());
            if let (Some(b), Some(n)) = (bus, dev) {
                found.push((b, n));
            }
        }
        found.sort_unstable();
        found.dedup();
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(err(format!(
                "no USB device {vendor:04x}:{product:04x} on this host"
            ))),
            _ => Err(err(format!(
                "{} USB devices match {vendor:04x}:{product:04x}: give <address bus device>",
                found.len()
            ))),
        }
    }
}

/// `.` and `..` removed lexically, no trailing slash: only for comparing with the list.
fn lexical(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// Whether the unix socket at `path` is stale (nothing listens: `ECONNREFUSED`). The
/// connect does not block (a listener whose backlog is full answers `EAGAIN`: in use).
fn stale_socket(path: &Path) -> std::io::Result<bool> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: a zeroed sockaddr_un is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(std::io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: socket/connect/close with a valid sockaddr_un of the given length.
    unsafe {
        let fd = libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let r = libc::connect(
            fd,
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        );
        let e = std::io::Error::last_os_error();
        libc::close(fd);
        if r == 0 {
            return Ok(false);
        }
        match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => Ok(true),
            Some(libc::EAGAIN) | Some(libc::EINPROGRESS) => Ok(false),
            _ => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn system_paths_lexically() {
        let h = Host::new("/").with_home(Some("/home/alice".into()));
        for p in [
            "/",
            "/etc",
            "/etc/",
            "/var/lib",
            "/tmp/../etc/shadow",
            "/home/alice",
            "/usr/./",
        ] {
            assert!(h.is_system_path(Path::new(p)), "{p}");
        }
        for p in [
            "/etc/hostname",
            "/var/lib/libvirt",
            "/home/alice/vm.img",
            "/tmpx",
        ] {
            assert!(!h.is_system_path(Path::new(p)), "{p}");
        }
    }

    #[test]
    fn resolve_follows_links_and_refuses_escapes() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().canonicalize().unwrap();
        std::fs::create_dir(d.join("a")).unwrap();
        std::fs::write(d.join("a/f"), b"x").unwrap();
        symlink("a/f", d.join("rel")).unwrap();
        symlink(d.join("a"), d.join("absdir")).unwrap();
        symlink("/etc/shadow", d.join("shadow")).unwrap();
        symlink("../../../../../../../../../etc", d.join("etcdir")).unwrap();
        symlink("loop2", d.join("loop1")).unwrap();
        symlink("loop1", d.join("loop2")).unwrap();
        let h = Host::new("/");
        let r = h.resolve("t", &d.join("rel")).unwrap();
        assert_eq!(r.path, d.join("a/f"));
        assert_eq!(r.info.kind, FileKind::File);
        let r = h.resolve("t", &d.join("absdir/./f")).unwrap();
        assert_eq!(r.path, d.join("a/f"));
        let r = h.resolve("t", &d.join("absdir/../a/f")).unwrap();
        assert_eq!(r.path, d.join("a/f"));
        let mut buf = String::new();
        std::io::Read::read_to_string(&mut r.open_read().unwrap(), &mut buf).unwrap();
        assert_eq!(buf, "x");
        let e = h
            .resolve("disk vda", &d.join("shadow"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("refusing system path /etc/shadow") && e.contains("reached from"),
            "{e}"
        );
        let e = h
            .resolve("disk vda", &d.join("etcdir"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("system path /etc "), "{e}");
        // A file below a system tree is refused too, by identity (the object policy).
        let e = h
            .resolve("t", &d.join("etcdir/hostname"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("lies under /etc (system tree /etc)"), "{e}");
        let e = h.resolve("t", &d.join("loop1")).unwrap_err().to_string();
        assert!(e.contains("symbolic links"), "{e}");
        let e = h
            .resolve("disk vdb", &d.join("a/missing"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("{}: no such file", d.join("a/missing").display())),
            "{e}"
        );
        assert!(e.contains("ENOENT"));
        let e = h.resolve("t", &d.join("a/f/g")).unwrap_err().to_string();
        assert!(e.contains("directory"), "{e}");
        assert!(matches!(
            h.resolve("t", Path::new("rel/x")),
            Err(Error::RelativePath { .. })
        ));
    }

    #[test]
    fn walk_does_not_follow_links() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::create_dir_all(d.join("tree/sub")).unwrap();
        std::fs::write(d.join("tree/sub/b"), b"").unwrap();
        std::fs::write(d.join("outside"), b"").unwrap();
        symlink("../outside", d.join("tree/escape")).unwrap();
        symlink(d, d.join("tree/sub/up")).unwrap();
        let h = Host::new("/");
        let r = h.resolve("fs", &d.join("tree")).unwrap();
        let ents = h.walk_tree("fs", &r).unwrap();
        let rels: Vec<_> = ents
            .iter()
            .map(|e| (e.rel.to_str().unwrap().to_string(), e.info.kind))
            .collect();
        assert_eq!(
            rels,
            vec![
                ("escape".into(), FileKind::Symlink),
                ("sub".into(), FileKind::Dir),
                ("sub/b".into(), FileKind::File),
                ("sub/up".into(), FileKind::Symlink),
            ]
        );
    }
}
