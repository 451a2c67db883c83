//! The object policy: which host objects a guest may be given at all, decided on the
//! opened object's identity (device, inode, the mount it lives on and that mount's root),
//! never on the spelling of its path.
//!
//! Every object a guest gets — named by the XML, by a qcow2 header, or met in a tree walk —
//! passes [`PolicyState`] after [`crate::Host`] has resolved it. Refused, with the rule:
//!
//! - **protected trees and objects**: system trees (`/etc`, `/usr`, `/boot`, `/root`,
//!   `/proc`, `/sys`, `/dev`, `/run`, the library and binary directories, `/var/log`, …)
//!   and what the host configuration adds (svirtd's API socket, state and run directories,
//!   which hold every guest's runtime objects). An object is *under* a protected tree when
//!   it lives on the same file system and its path **within that file system** (the mount's
//!   root joined with the path below the mount point) lies below the tree's own: a bind mount
//!   of `/etc/ssh` elsewhere is still `/etc/ssh` to this rule;
//! - **device nodes**: under `/dev` only device nodes are acceptable at all; a character
//!   device must be of a class a VMM legitimately gets (VFIO groups, USB devices, TPMs,
//!   serial ports, `/dev/kvm`, `/dev/net/tun`, `/dev/vhost-*`), wherever its node lives; a
//!   block device must not hold a mounted file system or swap, directly or through a
//!   partition or a holder (device-mapper, md);
//! - **hard links**: a non-directory with more than one name on a file system that holds a
//!   protected tree may be another name of a protected object; its other names cannot be
//!   found, so it is refused;
//! - a tree that **contains** a protected tree.
//!
//! The mount table is read once per [`crate::Host`] (one per start).

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, StatxFlags};

/// Trees that are never given to a guest, nor anything below them (the same trees under a
/// test root are protected too). `/dev` is special: device nodes of the allowed classes
/// below it are fine.
pub const SYSTEM_TREES: &[&str] = &[
    "/etc",
    "/usr",
    "/boot",
    "/root",
    "/proc",
    "/sys",
    "/dev",
    "/dev/pts",
    "/dev/mqueue",
    "/run",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/var/log",
    "/var/spool",
    "/var/mail",
    "/var/cache",
    "/var/lib/dpkg",
    "/var/lib/apt",
    "/var/lib/systemd",
];

/// Kernel names of `misc` character devices a VMM may be given.
const MISC_ALLOWED: &[&str] = &["kvm", "tun", "vhost-net", "vhost-vsock", "vfio"];
/// Character device classes (sysfs subsystems) a VMM may be given whole.
const CHAR_CLASSES_ALLOWED: &[&str] = &["vfio", "tpm", "tpmrm", "usb", "usbmisc"];
/// Serial ports (class `tty`) a VMM may be given, by kernel name prefix.
const TTY_PREFIXES_ALLOWED: &[&str] = &["ttyS", "ttyUSB", "ttyACM", "ttyAMA"];

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Mount id (as `statx`'s `STATX_MNT_ID`).
    pub id: u64,
    /// Device of the file system (`st_dev`).
    pub dev: u64,
    /// The path within the file system that is the mount's root (`/etc/ssh` for a bind
    /// mount of `/etc/ssh`).
    pub root: PathBuf,
    /// Where it is mounted.
    pub point: PathBuf,
}

/// Parses `/proc/self/mountinfo` text. Lines that do not parse are skipped (the kernel
/// writes them; a malformed line cannot be attributed to anything).
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(' ');
            let id = f.next()?.parse().ok()?;
            let _parent = f.next()?;
            let (maj, min) = f.next()?.split_once(':')?;
            let dev = rustix::fs::makedev(maj.parse().ok()?, min.parse().ok()?);
            let root = unescape(f.next()?);
            let point = unescape(f.next()?);
            Some(Mount {
                id,
                dev,
                root,
                point,
            })
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\134` for a backslash…).
fn unescape(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = u32::from(b[i + 1] - b'0') * 64
                + u32::from(b[i + 2] - b'0') * 8
                + u32::from(b[i + 3] - b'0');
            // Three octal digits from the kernel never exceed 0o377.
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(OsStr::from_bytes(&out))
}

/// A path to protect, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectSpec {
    /// The path (a directory protects its whole tree).
    pub path: PathBuf,
    /// What it is, for errors (`system tree /etc`, `svirtd's state directory`).
    pub what: String,
    /// A device directory: device nodes of the allowed classes below it may be given.
    pub devices: bool,
}

/// A protected tree or object, by identity.
#[derive(Debug, Clone)]
struct Protected {
    /// File system device.
    dev: u64,
    /// Inode of the object itself.
    ino: u64,
    /// Its path within its file system (from the mount table), when known.
    fs_path: Option<PathBuf>,
    /// A directory: everything below it is protected too.
    tree: bool,
    /// Its path as configured, for the error.
    path: PathBuf,
    /// What it is, for the error (`system tree /etc`, `svirtd's state directory`).
    what: String,
    /// `/dev`: device nodes of the allowed classes below it are fine.
    dev_tree: bool,
}

/// The identity of an object the policy judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectStat {
    /// File type and mode bits (`st_mode`).
    pub mode: u32,
    /// File system device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Device number of a device node.
    pub rdev: u64,
    /// Hard links.
    pub nlink: u64,
    /// Owner.
    pub uid: u32,
    /// Mount id, when the kernel reports it.
    pub mnt_id: Option<u64>,
    /// Whether its mount is `nodev` (device nodes there are inert).
    pub nodev: bool,
}

impl ObjectStat {
    /// `fstat` + `statx(STATX_MNT_ID)` of an fd (an `O_PATH` fd is fine).
    pub fn of(fd: impl AsFd) -> std::io::Result<ObjectStat> {
        let st = rustix::fs::statx(
            &fd,
            "",
            AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
            StatxFlags::BASIC_STATS | StatxFlags::MNT_ID,
        )?;
        let has_mnt = StatxFlags::from_bits_retain(st.stx_mask).contains(StatxFlags::MNT_ID);
        let nodev = rustix::fs::fstatvfs(&fd)?
            .f_flag
            .contains(rustix::fs::StatVfsMountFlags::NODEV);
        Ok(ObjectStat {
            mode: u32::from(st.stx_mode),
            dev: rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor),
            ino: st.stx_ino,
            rdev: rustix::fs::makedev(st.stx_rdev_major, st.stx_rdev_minor),
            nlink: u64::from(st.stx_nlink),
            uid: st.stx_uid,
            mnt_id: has_mnt.then_some(st.stx_mnt_id),
            nodev,
        })
    }

    /// From a `stat` result (no mount id: used for tree entries, which share their root's
    /// mount).
    pub fn from_stat(st: &rustix::fs::Stat) -> ObjectStat {
        ObjectStat {
            mode: st.st_mode,
            dev: st.st_dev,
            ino: st.st_ino,
            rdev: st.st_rdev,
            #[allow(clippy::useless_conversion)]
            nlink: u64::from(st.st_nlink),
            uid: st.st_uid,
            mnt_id: None,
            nodev: false,
        }
    }

    fn is(&self, t: u32) -> bool {
        self.mode & S_IFMT == t
    }
}

const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFCHR: u32 = 0o020000;
const S_IFBLK: u32 = 0o060000;

/// The policy's view of the host: mounts, protected objects, mounted block devices.
#[derive(Debug)]
pub struct PolicyState {
    mounts: HashMap<u64, Mount>,
    protected: Vec<Protected>,
    /// Devices of file systems that hold a protected tree (hard links there are refused).
    protected_devs: HashSet<u64>,
    /// Block devices holding a mounted file system or swap.
    busy_block: HashSet<u64>,
    /// sysfs (the real one: device nodes are kernel objects whatever the test root).
    sys: PathBuf,
}

impl PolicyState {
    /// Reads the mount table and opens every protected path. `protected` lists
    /// `(path, what)`; system trees are given here too. Missing paths are skipped (a host
    /// without `/lib32`).
    pub fn new(protected: &[ProtectSpec]) -> std::io::Result<PolicyState> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")?;
        let mounts: HashMap<u64, Mount> = parse_mountinfo(&text)
            .into_iter()
            .map(|m| (m.id, m))
            .collect();
        let mut busy_block: HashSet<u64> = mounts.values().map(|m| m.dev).collect();
        if let Ok(swaps) = std::fs::read_to_string("/proc/swaps") {
            for line in swaps.lines().skip(1) {
                if let Some(p) = line.split_whitespace().next()
                    && let Ok(st) = rustix::fs::stat(unescape(p).as_path())
                    && st.st_mode & S_IFMT == S_IFBLK
                {
                    busy_block.insert(st.st_rdev);
                }
            }
        }
        let mut state = PolicyState {
            mounts,
            protected: Vec::new(),
            protected_devs: HashSet::new(),
            busy_block,
            sys: PathBuf::from("/sys"),
        };
        for ProtectSpec {
            path,
            what,
            devices,
        } in protected
        {
            // Opened following links as root would: a protected path is configuration,
            // and what it names is what must be protected.
            let fd = match rustix::fs::open(
                path.as_path(),
                rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            ) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::NOTDIR) => continue,
                Err(e) => return Err(e.into()),
            };
            let st = ObjectStat::of(&fd)?;
            let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
            let fs_path = state.fs_path(&st, &canon);
            let tree = st.is(S_IFDIR);
            if tree {
                state.protected_devs.insert(st.dev);
            }
            state.protected.push(Protected {
                dev: st.dev,
                ino: st.ino,
                fs_path,
                tree,
                path: path.clone(),
                what: what.clone(),
                dev_tree: *devices && tree,
            });
        }
        Ok(state)
    }

    /// The object's path within its file system: its mount's root joined with the part of
    /// `canonical` below the mount point. `None` when the mount is unknown.
    fn fs_path(&self, st: &ObjectStat, canonical: &Path) -> Option<PathBuf> {
        let m = self.mounts.get(&st.mnt_id?)?;
        let rest = canonical.strip_prefix(&m.point).ok()?;
        Some(if rest.as_os_str().is_empty() {
            m.root.clone()
        } else {
            m.root.join(rest)
        })
    }

    /// Judges an object reached at `canonical`, whose directories from `/` down to its
    /// parent have the identities `ancestors` (`(dev, ino)`). `Err(rule)` when refused.
    pub fn check(
        &self,
        st: &ObjectStat,
        canonical: &Path,
        ancestors: &[(u64, u64)],
    ) -> Result<(), String> {
        let fs_path = self.fs_path(st, canonical);
        if fs_path.is_none()
            && let Some(id) = st.mnt_id
        {
            // A mount made after the table was read (or a path not below its mount
            // point): where it lives within its file system cannot be told. Refused, not
            // guessed; the next start reads the table again.
            return Err(format!(
                "its mount (id {id}) is not in the mount table read for this start; mounted meanwhile? try again"
            ));
        }
        let under_dev_tree = self.protected_hit(st, fs_path.as_deref(), ancestors)?;
        if (st.is(S_IFCHR) || st.is(S_IFBLK)) && st.nodev {
            return Err(
                "it is a device node on a file system mounted nodev (whoever mounted it chose that its nodes give no device; a guest is given devices from /dev)"
                    .to_string(),
            );
        }
        if st.is(S_IFCHR) {
            return self.check_char(st.rdev);
        }
        if st.is(S_IFBLK) {
            return self.check_block(st.rdev);
        }
        if under_dev_tree {
            return Err(format!(
                "it lies in the device directory {}, where only device nodes of the allowed classes may be given",
                self.dev_tree_path()
            ));
        }
        self.check_links(st)
    }

    /// Judges an entry met in the walk of a tree that passed [`PolicyState::check`] (the
    /// walk stays on the root's file system, so only what an entry is matters). In a tree
    /// the guest may write (`writable`), a set-id program is refused: the guest could
    /// rewrite it while it owns it, and the restore would give the set-id bit back to the
    /// guest's content.
    pub fn check_entry(&self, st: &ObjectStat, writable: bool) -> Result<(), String> {
        const S_ISUID: u32 = 0o4000;
        const S_ISGID: u32 = 0o2000;
        const S_IXGRP: u32 = 0o010;
        let setid = st.mode & S_ISUID != 0 || st.mode & (S_ISGID | S_IXGRP) == S_ISGID | S_IXGRP;
        if writable && !st.is(S_IFDIR) && setid {
            return Err(format!(
                "it is a set-id program (mode {:o}) in a tree the guest may write: the guest could replace its content and the restore would give it the set-id bit back",
                st.mode & 0o7777
            ));
        }
        if st.is(S_IFCHR) {
            return self.check_char(st.rdev);
        }
        if st.is(S_IFBLK) {
            return self.check_block(st.rdev);
        }
        self.check_links(st)
    }

    /// Refuses a tree (a directory given recursively) that contains a protected object.
    pub fn check_tree_root(&self, st: &ObjectStat, canonical: &Path) -> Result<(), String> {
        let Some(root) = self.fs_path(st, canonical) else {
            return Ok(());
        };
        for p in &self.protected {
            if p.dev == st.dev
                && let Some(pp) = &p.fs_path
                && pp != &root
                && below(pp, &root)
            {
                return Err(format!(
                    "the tree contains {} ({})",
                    p.path.display(),
                    p.what
                ));
            }
        }
        Ok(())
    }

    fn dev_tree_path(&self) -> String {
        self.protected
            .iter()
            .find(|p| p.dev_tree)
            .map_or_else(|| "/dev".to_string(), |p| p.path.display().to_string())
    }

    /// Whether the object is, or lies under, a protected object. `Ok(true)` when the only
    /// protection is a device tree (device nodes are judged by class there).
    fn protected_hit(
        &self,
        st: &ObjectStat,
        fs_path: Option<&Path>,
        ancestors: &[(u64, u64)],
    ) -> Result<bool, String> {
        let mut in_dev_tree = false;
        for p in &self.protected {
            let same = p.dev == st.dev && p.ino == st.ino;
            // A device directory is judged on its own file system only: `/dev/shm` and
            // `/dev/hugepages` are other file systems below it, and fine.
            let by_ancestor = p.tree && !p.dev_tree && ancestors.contains(&(p.dev, p.ino));
            let by_fs_path = p.tree
                && p.dev == st.dev
                && matches!((&p.fs_path, fs_path), (Some(pp), Some(op)) if below(op, pp));
            if !(same || by_ancestor || by_fs_path) {
                continue;
            }
            if p.dev_tree && !same {
                in_dev_tree = true;
                continue;
            }
            return Err(if same {
                format!("it is {} ({})", p.path.display(), p.what)
            } else {
                format!("it lies under {} ({})", p.path.display(), p.what)
            });
        }
        Ok(in_dev_tree)
    }

    fn check_links(&self, st: &ObjectStat) -> Result<(), String> {
        if !st.is(S_IFDIR) && st.nlink > 1 && self.protected_devs.contains(&st.dev) {
            return Err(format!(
                "it has {} hard links on a file system that holds system files: another name may be a protected file",
                st.nlink
            ));
        }
        Ok(())
    }

    fn check_char(&self, rdev: u64) -> Result<(), String> {
        let (maj, min) = (rustix::fs::major(rdev), rustix::fs::minor(rdev));
        let node = self.sys.join(format!("dev/char/{maj}:{min}"));
        let name = std::fs::read_link(&node)
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()));
        let class = std::fs::read_link(node.join("subsystem"))
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()));
        let (Some(name), Some(class)) = (name, class) else {
            return Err(format!(
                "character device {maj}:{min} is of no class a guest may be given (unknown to sysfs)"
            ));
        };
        let ok = CHAR_CLASSES_ALLOWED.contains(&class.as_str())
            || (class == "misc" && MISC_ALLOWED.contains(&name.as_str()))
            || (class == "tty" && TTY_PREFIXES_ALLOWED.iter().any(|p| name.starts_with(p)));
        if ok {
            Ok(())
        } else {
            Err(format!(
                "character device {maj}:{min} ({class} {name}) is not of a class a guest may be given (VFIO, USB, TPM, serial ports, kvm, tun, vhost)"
            ))
        }
    }

    fn check_block(&self, rdev: u64) -> Result<(), String> {
        let (maj, min) = (rustix::fs::major(rdev), rustix::fs::minor(rdev));
        match block_descendants(rdev)
            .into_iter()
            .find(|d| self.busy_block.contains(d))
        {
            None => Ok(()),
            Some(d) if d == rdev => Err(format!(
                "block device {maj}:{min} holds a mounted file system or swap"
            )),
            Some(d) => Err(format!(
                "block device {maj}:{min} holds a mounted file system or swap through {}:{}",
                rustix::fs::major(d),
                rustix::fs::minor(d)
            )),
        }
    }
}

/// Block device `rdev` and every block device built on it: its partitions and holders
/// (device-mapper, md), and theirs, from the real sysfs. Two block devices share storage
/// exactly when one is among the other's descendants, so a device is busy when one of
/// these holds a mounted file system, and exclusivity claims them all (a sibling partition
/// is not among them, and stays free for another guest).
pub fn block_descendants(rdev: u64) -> Vec<u64> {
    let sys = Path::new("/sys");
    let mut seen: Vec<u64> = Vec::new();
    let mut todo = vec![rdev];
    while let Some(d) = todo.pop() {
        if seen.contains(&d) {
            continue;
        }
        seen.push(d);
        let dir = sys.join(format!(
            "dev/block/{}:{}",
            rustix::fs::major(d),
            rustix::fs::minor(d)
        ));
        // Partitions: subdirectories with a `partition` file.
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.join("partition").exists()
                    && let Some(n) = read_devnum(&p.join("dev"))
                {
                    todo.push(n);
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir(dir.join("holders")) {
            for e in rd.flatten() {
                if let Some(n) =
                    read_devnum(&sys.join("class/block").join(e.file_name()).join("dev"))
                {
                    todo.push(n);
                }
            }
        }
    }
    seen
}

/// A sysfs `dev` file (`8:1`) as a device number.
fn read_devnum(p: &Path) -> Option<u64> {
    let s = std::fs::read_to_string(p).ok()?;
    let (a, b) = s.trim().split_once(':')?;
    Some(rustix::fs::makedev(a.parse().ok()?, b.parse().ok()?))
}

/// Whether `p` is `dir` or lies below it, component-wise.
fn below(p: &Path, dir: &Path) -> bool {
    let norm = |x: &Path| -> Vec<PathBuf> {
        x.components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(PathBuf::from(n)),
                _ => None,
            })
            .collect()
    };
    let (p, d) = (norm(p), norm(dir));
    p.len() >= d.len() && p[..d.len()] == d[..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines() {
        let t = "36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw\n\
                 37 35 0:5 / /a\\040b rw - tmpfs tmpfs rw\nbad line\n";
        let m = parse_mountinfo(t);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].id, 36);
        assert_eq!(m[0].dev, rustix::fs::makedev(98, 0));
        assert_eq!(m[0].root, Path::new("/mnt1"));
        assert_eq!(m[0].point, Path::new("/mnt/parent"));
        assert_eq!(m[1].point, Path::new("/a b"));
    }

    #[test]
    fn below_is_component_wise() {
        assert!(below(Path::new("/etc/ssh"), Path::new("/etc")));
        assert!(below(Path::new("/etc"), Path::new("/etc")));
        assert!(!below(Path::new("/etcx"), Path::new("/etc")));
        assert!(below(Path::new("/anything"), Path::new("/")));
    }
}
