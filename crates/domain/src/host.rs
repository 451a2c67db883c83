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

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::error::{Error, Result};

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

/// Most symlinks followed in one path (the kernel's own limit).
const MAX_SYMLINKS: u32 = 40;
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

/// An object reached safely: its canonical path and an `O_PATH` fd to it.
#[derive(Debug)]
pub struct Resolved {
    /// The path as written.
    pub given: PathBuf,
    /// Canonical absolute path: no symlink, `.` or `..` in it.
    pub path: PathBuf,
    /// Type and identity.
    pub info: FileInfo,
    fd: OwnedFd,
    parent: OwnedFd,
    name: OsString,
}

impl Resolved {
    /// The `O_PATH` fd of the object.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Opens the object for reading, by name in its parent directory without following
    /// a symlink, and checks it is still the object resolved. FIFOs are opened
    /// non-blocking so a pipe never hangs the planner.
    pub fn open_read(&self) -> std::io::Result<std::fs::File> {
        let fd = rustix::fs::openat(
            &self.parent,
            self.name.as_os_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
            Mode::empty(),
        )?;
        let st = rustix::fs::fstat(&fd)?;
        if st.st_dev != self.info.dev || st.st_ino != self.info.ino {
            return Err(std::io::Error::other(
                "the object was replaced while it was being resolved",
            ));
        }
        Ok(std::fs::File::from(fd))
    }

    /// Opens the object as a directory (readable), checking it is the object resolved.
    fn open_dir(&self) -> std::io::Result<OwnedFd> {
        let fd = rustix::fs::openat(
            &self.parent,
            self.name.as_os_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = rustix::fs::fstat(&fd)?;
        if st.st_dev != self.info.dev || st.st_ino != self.info.ino {
            return Err(std::io::Error::other(
                "the directory was replaced while it was being resolved",
            ));
        }
        Ok(fd)
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
}

/// The host as the resource builder sees it.
#[derive(Debug, Clone)]
pub struct Host {
    root: PathBuf,
    home: Option<PathBuf>,
    tpm_state_root: PathBuf,
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
        }
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
        let rootfd = rustix::fs::openat(
            CWD,
            "/",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io("open /", e.into()))?;
        let mut queue: VecDeque<OsString> = components(given);
        // Directories reached so far, each with its O_PATH fd; the root is implicit.
        let mut stack: Vec<(OsString, OwnedFd)> = Vec::new();
        let mut links = 0;
        while let Some(comp) = queue.pop_front() {
            if comp == ".." {
                stack.pop();
                continue;
            }
            let dir = stack.last().map_or(rootfd.as_fd(), |(_, fd)| fd.as_fd());
            let fd = match rustix::fs::openat(
                dir,
                comp.as_os_str(),
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => return Ok(None),
                Err(e) => return Err(io("open", e.into())),
            };
            let st = rustix::fs::fstat(&fd).map_err(|e| io("stat", e.into()))?;
            let kind = FileKind::from_mode(st.st_mode);
            if kind == FileKind::Symlink {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(io("resolve", Errno::LOOP.into()));
                }
                let target = rustix::fs::readlinkat(&fd, "", Vec::new())
                    .map_err(|e| io("readlink", e.into()))?;
                let target = PathBuf::from(OsStr::from_bytes(target.to_bytes()));
                if target.is_absolute() {
                    stack.clear();
                }
                for c in components(&target).into_iter().rev() {
                    queue.push_front(c);
                }
                continue;
            }
            if !queue.is_empty() && kind != FileKind::Dir {
                return Err(io("resolve", Errno::NOTDIR.into()));
            }
            stack.push((comp, fd));
        }
        let mut path = PathBuf::from("/");
        for (name, _) in &stack {
            path.push(name);
        }
        if self.is_system_path(&path) {
            return Err(refuse(path));
        }
        let Some((name, fd)) = stack.pop() else {
            return Err(refuse(path));
        };
        let parent = match stack.pop() {
            Some((_, p)) => p,
            None => rootfd,
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| io("stat", e.into()))?;
        Ok(Some(Resolved {
            given: given.to_path_buf(),
            path,
            info: FileInfo::from_stat(&st),
            fd,
            parent,
            name,
        }))
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
        let mut out = Vec::new();
        walk(&fd, root.info.dev, Path::new(""), 0, &mut out)
            .map_err(|(rel, e)| io("walk", &root.path.join(rel), e))?;
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

type WalkError = (PathBuf, std::io::Error);

fn walk(
    dirfd: &OwnedFd,
    dev: u64,
    rel: &Path,
    depth: usize,
    out: &mut Vec<TreeEntry>,
) -> Result<(), WalkError> {
    if depth > MAX_TREE_DEPTH {
        return Err((
            rel.to_path_buf(),
            std::io::Error::other(format!("deeper than {MAX_TREE_DEPTH} levels")),
        ));
    }
    let werr = |e: std::io::Error| (rel.to_path_buf(), e);
    let dup = rustix::io::fcntl_dupfd_cloexec(dirfd, 0).map_err(|e| werr(e.into()))?;
    let dir = rustix::fs::Dir::new(dup).map_err(|e| werr(e.into()))?;
    let mut names: Vec<OsString> = Vec::new();
    for ent in dir {
        let ent = ent.map_err(|e| werr(e.into()))?;
        let name = ent.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        names.push(OsStr::from_bytes(name).to_os_string());
    }
    names.sort();
    for name in names {
        let child_rel = rel.join(&name);
        let cerr = |e: Errno| (child_rel.clone(), std::io::Error::from(e));
        let st = match rustix::fs::statat(dirfd, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            // Removed while walking: nothing to label.
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(cerr(e)),
        };
        let info = FileInfo::from_stat(&st);
        let mount_point = info.kind == FileKind::Dir && info.dev != dev;
        out.push(TreeEntry {
            rel: child_rel.clone(),
            info,
            mount_point,
        });
        if out.len() > MAX_TREE_ENTRIES {
            return Err((
                child_rel,
                std::io::Error::other(format!("more than {MAX_TREE_ENTRIES} entries")),
            ));
        }
        if info.kind == FileKind::Dir && !mount_point {
            let sub = rustix::fs::openat(
                dirfd,
                name.as_os_str(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(cerr)?;
            walk(&sub, dev, &child_rel, depth + 1, out)?;
        }
    }
    Ok(())
}

/// Path components as a queue of names (`..` kept, `.` and the root dropped).
fn components(p: &Path) -> VecDeque<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
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
        // A file below a system directory is fine, even through a link.
        assert!(
            h.resolve("t", &d.join("etcdir/hostname")).is_ok()
                || !Path::new("/etc/hostname").exists()
        );
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
