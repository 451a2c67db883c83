//! File operations on guest resources, through file descriptors that never follow links.
//!
//! Every object is reached from a root directory fd ([`FsRoot`]) with `openat2(2)` and
//! `RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_IN_ROOT`, as an `O_PATH` fd: a symlink
//! anywhere in the path, including the last component, fails with `ELOOP` instead of being
//! followed. All later operations (xattrs, owner, mode, identity) act on that fd, so a path
//! swapped after the open cannot redirect them (no check-then-act on paths).
//!
//! Inside directory trees, entries are labeled relative to an open directory fd with
//! `setxattrat(dirfd, name, AT_SYMLINK_NOFOLLOW, …)` (Linux 6.13+), which costs what
//! `lsetxattr` costs and can neither follow a symlink nor leave the directory. On older
//! kernels the same operations fall back to an `O_PATH|O_NOFOLLOW` fd per entry and the
//! `/proc/self/fd/N` form (twice the system calls, same safety).
//!
//! Where `openat2` is missing (`ENOSYS`) or filtered by a seccomp profile (`EPERM`, some
//! container runtimes), opens fall back to one `openat(O_NOFOLLOW)` per component with the
//! same guarantees (no symlink followed, nothing above the start; for [`Dir::open_subdir`], no
//! mount crossed, checked by mount id).
//!
//! Tests use a temporary directory as the root; the daemon uses `/`.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

/// `setxattrat(2)`: the same number on every architecture using the generic syscall table.
const SYS_SETXATTRAT: libc::c_long = 463;
/// `getxattrat(2)`.
const SYS_GETXATTRAT: libc::c_long = 464;
/// `removexattrat(2)`.
const SYS_REMOVEXATTRAT: libc::c_long = 466;

/// Largest xattr value the kernel accepts (`XATTR_SIZE_MAX`).
const XATTR_SIZE_MAX: usize = 65536;

/// `struct xattr_args` of `setxattrat(2)` / `getxattrat(2)`.
#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

/// 0 = unknown, 1 = `*xattrat` syscalls work, 2 = not available (fallback in use).
static XATTRAT: AtomicU8 = AtomicU8::new(0);
/// 0 = unknown, 1 = `openat2` works, 2 = not available.
static OPENAT2: AtomicU8 = AtomicU8::new(0);

/// Forces the fallback paths (no `*xattrat`, no `openat2`) as on kernels older than 6.13,
/// so that tests can exercise them on a new kernel. Process-wide.
#[doc(hidden)]
pub fn force_legacy_syscalls(on: bool) {
    let v = if on { 2 } else { 0 };
    XATTRAT.store(v, Ordering::Relaxed);
    OPENAT2.store(v, Ordering::Relaxed);
}

fn cvt(r: libc::c_long) -> io::Result<libc::c_long> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cstr(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Identity of a file: what tells a replaced file from the one whose original we recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    /// Device number (`makedev(major, minor)`).
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Birth time (seconds, nanoseconds), when the filesystem reports it (ext4, tmpfs,
    /// btrfs, xfs do). An inode number reused by a new file has a new birth time.
    pub btime: Option<(i64, u32)>,
}

/// Owner, group and mode (including the file type bits) of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Owner uid.
    pub uid: u32,
    /// Group gid.
    pub gid: u32,
    /// `st_mode`: type and permission bits.
    pub mode: u32,
}

impl Meta {
    /// Whether the object is a directory.
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
    /// Whether the object is a symbolic link.
    pub fn is_symlink(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFLNK
    }
}

fn statx_fd(fd: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<(Identity, Meta)> {
    statx_full(fd, name, flags, 0).map(|st| (st.id, st.meta))
}

/// [`statx_fd`], plus the mount id (`STATX_MNT_ID`, Linux 5.8+) when `want` has it and the
/// kernel reports it.
fn statx_mnt(
    fd: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
    want: libc::c_uint,
) -> io::Result<(Identity, Meta, Option<u64>)> {
    statx_full(fd, name, flags, want).map(|st| (st.id, st.meta, st.mnt))
}

/// Everything a walk or a judge of an object needs from one `statx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryStat {
    /// Identity.
    pub id: Identity,
    /// Owner, group and mode.
    pub meta: Meta,
    /// Device number of a device node (`st_rdev`).
    pub rdev: u64,
    /// Hard links.
    pub nlink: u64,
    /// Mount id, when asked for and reported.
    pub mnt: Option<u64>,
}

fn statx_full(
    fd: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
    want: libc::c_uint,
) -> io::Result<EntryStat> {
    // SAFETY: `statx` is plain old data: all zeroes is a valid value.
    let mut buf: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd, a NUL-terminated name and a buffer we own.
    let r = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            name.as_ptr(),
            flags,
            libc::STATX_BASIC_STATS | libc::STATX_BTIME | want,
            &mut buf,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let btime = if buf.stx_mask & libc::STATX_BTIME != 0 {
        Some((buf.stx_btime.tv_sec, buf.stx_btime.tv_nsec))
    } else {
        None
    };
    let dev = libc::makedev(buf.stx_dev_major, buf.stx_dev_minor);
    let mnt = (buf.stx_mask & want & libc::STATX_MNT_ID != 0).then_some(buf.stx_mnt_id);
    Ok(EntryStat {
        id: Identity {
            dev,
            ino: buf.stx_ino,
            btime,
        },
        meta: Meta {
            uid: buf.stx_uid,
            gid: buf.stx_gid,
            mode: u32::from(buf.stx_mode),
        },
        rdev: libc::makedev(buf.stx_rdev_major, buf.stx_rdev_minor),
        nlink: u64::from(buf.stx_nlink),
        mnt,
    })
}

fn empty() -> &'static CStr {
    c""
}

/// Opens `path` (absolute, on the host) as an `O_PATH` fd for path-based confinement (the
/// Landlock rules, the jail's binds). Magic links (`/proc/*/fd`) are never followed; other
/// symlinks only with `follow_symlinks` (system and manager paths), never for a guest's
/// planned resources, which the planner resolved to a path without any.
pub fn open_host_path(path: &Path, follow_symlinks: bool) -> rustix::io::Result<OwnedFd> {
    let resolve = if follow_symlinks {
        rustix::fs::ResolveFlags::NO_MAGICLINKS
    } else {
        rustix::fs::ResolveFlags::NO_SYMLINKS | rustix::fs::ResolveFlags::NO_MAGICLINKS
    };
    rustix::fs::openat2(
        rustix::fs::CWD,
        path,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
        resolve,
    )
}

/// Opens a planned object's canonical path (absolute, on the host) as an `O_PATH` fd for
/// path-based confinement, never following any link, and checks it is the object the
/// planner judged (`expected` = its device and inode): a name swapped for another object
/// since planning is refused, naming both identities, and never given a rule or a bind. What [`FsRoot::open_planned`] is for the drivers that change objects.
pub fn open_planned_path(path: &Path, expected: Option<(u64, u64)>) -> io::Result<OwnedFd> {
    let fd = open_host_path(path, false)?;
    if let Some(expected) = expected {
        let st = rustix::fs::fstat(&fd)?;
        check_planned(expected, (st.st_dev, st.st_ino)).map_err(io::Error::other)?;
    }
    Ok(fd)
}

/// `Err(why)` when the object found (`now`, device and inode) is not the one planned: the
/// one identity check of every planned open ([`open_planned_path`],
/// [`FsRoot::open_planned`]).
fn check_planned((dev, ino): (u64, u64), now: (u64, u64)) -> Result<(), String> {
    if now == (dev, ino) {
        return Ok(());
    }
    Err(format!(
        "replaced since it was planned (device {}:{} inode {ino}, now {}:{} inode {})",
        libc::major(dev),
        libc::minor(dev),
        libc::major(now.0),
        libc::minor(now.0),
        now.1
    ))
}

/// The root every path is resolved under (`/` for the daemon, a temporary directory in tests).
#[derive(Debug)]
pub struct FsRoot {
    fd: OwnedFd,
    path: PathBuf,
}

impl FsRoot {
    /// Opens `root` (which must be a directory; a symlink is refused).
    pub fn open(root: &Path) -> io::Result<FsRoot> {
        let c = cstr(root.as_os_str())?;
        // SAFETY: plain open(2) of a NUL-terminated path.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by open and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(FsRoot {
            fd,
            path: root.to_path_buf(),
        })
    }

    /// The host's root `/`.
    pub fn host() -> io::Result<FsRoot> {
        FsRoot::open(Path::new("/"))
    }

    /// The path this root was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `abs` relative to the root, refusing `..` and non-normal components.
    fn relative(abs: &Path) -> io::Result<PathBuf> {
        let mut rel = PathBuf::new();
        for c in abs.components() {
            match c {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(n) => rel.push(n),
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{}: `..` is not allowed in a resource path", abs.display()),
                    ));
                }
            }
        }
        if rel.as_os_str().is_empty() {
            rel.push(".");
        }
        Ok(rel)
    }

    /// Opens the object at absolute path `abs` (interpreted under this root) as an `O_PATH`
    /// fd without following any symlink. A symlink in any component gives `ELOOP`.
    pub fn open_object(&self, abs: &Path) -> io::Result<Object> {
        let rel = Self::relative(abs)?;
        let fd = open_beneath(self.fd.as_fd(), &rel, libc::O_PATH)?;
        Object::from_fd(fd, abs.to_path_buf())
    }

    /// Like [`FsRoot::open_object`], and checks the object is the one the planner resolved
    /// and judged (`expected` = its device and inode): a name swapped for another object
    /// between planning and labeling is refused, not labeled.
    pub fn open_planned(&self, abs: &Path, expected: Option<(u64, u64)>) -> io::Result<Object> {
        let obj = self.open_object(abs)?;
        if let Some(expected) = expected {
            let id = obj.identity();
            check_planned(expected, (id.dev, id.ino))
                .map_err(|why| io::Error::other(format!("{}: {why}", abs.display())))?;
        }
        Ok(obj)
    }

    /// Opens the directory at `abs` for reading its entries (tree walks), without following
    /// any symlink and without crossing into another mount below the root.
    pub fn open_dir(&self, abs: &Path) -> io::Result<Dir> {
        let rel = Self::relative(abs)?;
        let fd = open_beneath(self.fd.as_fd(), &rel, libc::O_RDONLY | libc::O_DIRECTORY)?;
        Dir::from_fd(fd)
    }
}

/// What an `openat2` attempt came to.
enum Openat2 {
    /// Opened, or failed for a reason the fallback would fail for too.
    Done(io::Result<OwnedFd>),
    /// `openat2` is missing (`ENOSYS`, remembered process-wide) or may be filtered (`EPERM`):
    /// use the `openat` fallback for this call.
    Fallback {
        /// `EPERM`: if the fallback succeeds, `openat2` is filtered (a seccomp profile of
        /// some container runtimes), and the caller marks it unavailable with
        /// [`openat2_filtered`].
        filtered: bool,
    },
}

/// `openat2(dirfd, path, flags|O_CLOEXEC, resolve)` unless known to be unavailable.
fn try_openat2(dirfd: BorrowedFd<'_>, path: &CStr, flags: libc::c_int, resolve: u64) -> Openat2 {
    if OPENAT2.load(Ordering::Relaxed) == 2 {
        return Openat2::Fallback { filtered: false };
    }
    let how = open_how((flags | libc::O_CLOEXEC) as u64, resolve);
    // SAFETY: openat2 reads `how` (size given) and the NUL-terminated path.
    let r = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd.as_raw_fd(),
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    match cvt(r) {
        Ok(fd) => {
            OPENAT2.store(1, Ordering::Relaxed);
            // SAFETY: a fresh fd from the kernel; fits in c_int.
            Openat2::Done(Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
            OPENAT2.store(2, Ordering::Relaxed);
            Openat2::Fallback { filtered: false }
        }
        // A seccomp filter (installed at any time, for any thread) answers EPERM; a real
        // EPERM the fallback meets again and returns. The fallback's guarantees are the same,
        // so trying it is never less safe.
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => Openat2::Fallback { filtered: true },
        Err(e) => Openat2::Done(Err(e)),
    }
}

/// After a fallback succeeded where `openat2` said `EPERM`: `openat2` is filtered, so later
/// calls go to the fallback directly.
fn openat2_filtered<T>(filtered: bool, r: io::Result<T>) -> io::Result<T> {
    if filtered && r.is_ok() {
        OPENAT2.store(2, Ordering::Relaxed);
    }
    r
}

/// `openat2(dirfd, rel, flags, RESOLVE_NO_SYMLINKS|RESOLVE_NO_MAGICLINKS|RESOLVE_IN_ROOT)`, with
/// a component-by-component `O_NOFOLLOW` walk when `openat2` is missing or filtered.
fn open_beneath(dirfd: BorrowedFd<'_>, rel: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let c = cstr(rel.as_os_str())?;
    let resolve = libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS | libc::RESOLVE_IN_ROOT;
    match try_openat2(dirfd, &c, flags, resolve) {
        Openat2::Done(r) => r,
        Openat2::Fallback { filtered } => {
            openat2_filtered(filtered, open_beneath_legacy(dirfd, rel, flags))
        }
    }
}

/// The fallback of [`open_beneath`].
fn open_beneath_legacy(
    dirfd: BorrowedFd<'_>,
    rel: &Path,
    flags: libc::c_int,
) -> io::Result<OwnedFd> {
    // One O_NOFOLLOW open per component, each relative to the previous fd.
    let comps: Vec<&OsStr> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    // SAFETY: dup of a valid fd.
    let mut cur = dup_cloexec(dirfd)?;
    for (i, name) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        let n = cstr(name)?;
        let fl = if last {
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC
        } else {
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC
        };
        // SAFETY: openat on a valid dirfd with a NUL-terminated single component.
        let fd = unsafe { libc::openat(cur.as_raw_fd(), n.as_ptr(), fl) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh fd.
        cur = unsafe { OwnedFd::from_raw_fd(fd) };
    }
    if comps.is_empty() {
        // SAFETY: reopen "." of the root with the wanted flags.
        let fd = unsafe { libc::openat(cur.as_raw_fd(), c".".as_ptr(), flags | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh fd.
        cur = unsafe { OwnedFd::from_raw_fd(fd) };
    }
    // O_PATH|O_NOFOLLOW opens a trailing symlink itself: refuse it like openat2 would.
    let (_, meta) = statx_fd(cur.as_fd(), empty(), libc::AT_EMPTY_PATH)?;
    if meta.is_symlink() {
        return Err(io::Error::from_raw_os_error(libc::ELOOP));
    }
    Ok(cur)
}

fn open_how(flags: u64, resolve: u64) -> libc::open_how {
    // SAFETY: open_how is plain data; all-zero is valid (the struct is non_exhaustive in libc).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags;
    how.resolve = resolve;
    how
}

fn dup_cloexec(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a valid fd.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// `openat(dirfd, name, O_RDONLY|O_DIRECTORY|O_NOFOLLOW|O_CLOEXEC)`: one component, a
/// directory, never through a symlink.
fn reopen_dir(dirfd: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: openat of a NUL-terminated name relative to a valid dirfd.
    let fd = unsafe {
        libc::openat(
            dirfd.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn proc_fd_path(fd: BorrowedFd<'_>) -> CString {
    // Digits only: cannot contain NUL.
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

/// Reads xattr `name` of `dirfd`/`path` (`path` empty: the fd itself) without following
/// symlinks. `Ok(None)` when the object has no such attribute.
fn getxattr_at(dirfd: BorrowedFd<'_>, path: &CStr, name: &CStr) -> io::Result<Option<Vec<u8>>> {
    let mut buf = [0u8; 256];
    match getxattr_at_into(dirfd, path, name, &mut buf) {
        Ok(n) => Ok(n.map(|n| buf[..n].to_vec())),
        Err(e) if e.raw_os_error() == Some(libc::ERANGE) => getxattr_big(dirfd, path, name),
        Err(e) => Err(e),
    }
}

/// [`getxattr_at`] into `buf`, without allocating: the length read, `None` when absent,
/// `ERANGE` when the value is longer than `buf`.
fn getxattr_at_into(
    dirfd: BorrowedFd<'_>,
    path: &CStr,
    name: &CStr,
    buf: &mut [u8],
) -> io::Result<Option<usize>> {
    if XATTRAT.load(Ordering::Relaxed) != 2 {
        let flags = if path.is_empty() {
            libc::AT_EMPTY_PATH
        } else {
            libc::AT_SYMLINK_NOFOLLOW
        };
        let mut args = XattrArgs {
            value: buf.as_mut_ptr() as u64,
            size: u32::try_from(buf.len()).unwrap_or(u32::MAX),
            flags: 0,
        };
        // SAFETY: the kernel writes at most args.size (<= buf.len()) bytes at args.value.
        let r = unsafe {
            libc::syscall(
                SYS_GETXATTRAT,
                dirfd.as_raw_fd(),
                path.as_ptr(),
                flags,
                name.as_ptr(),
                &mut args as *mut XattrArgs,
                std::mem::size_of::<XattrArgs>(),
            )
        };
        match cvt(r) {
            Ok(n) => return Ok(Some(n as usize)),
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                XATTRAT.store(2, Ordering::Relaxed);
            }
            Err(e) => return Err(e),
        }
    }
    match getxattr_big(dirfd, path, name)? {
        None => Ok(None),
        Some(v) if v.len() <= buf.len() => {
            buf[..v.len()].copy_from_slice(&v);
            Ok(Some(v.len()))
        }
        Some(_) => Err(io::Error::from_raw_os_error(libc::ERANGE)),
    }
}

/// Fallback and large values: an `O_PATH|O_NOFOLLOW` fd and the `/proc/self/fd/N` form.
fn getxattr_big(dirfd: BorrowedFd<'_>, path: &CStr, name: &CStr) -> io::Result<Option<Vec<u8>>> {
    let owned;
    let fd = if path.is_empty() {
        dirfd
    } else {
        owned = open_entry(dirfd, path)?;
        owned.as_fd()
    };
    let p = proc_fd_path(fd);
    let mut buf = vec![0u8; XATTR_SIZE_MAX];
    // SAFETY: getxattr writes at most buf.len() bytes.
    let r = unsafe {
        libc::getxattr(
            p.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENODATA) {
            return Ok(None);
        }
        return Err(e);
    }
    buf.truncate(r as usize);
    Ok(Some(buf))
}

/// `openat(dirfd, name, O_PATH|O_NOFOLLOW)`: the entry itself, even if it is a symlink.
fn open_entry(dirfd: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: openat of a single component relative to a valid dirfd.
    let fd = unsafe {
        libc::openat(
            dirfd.as_raw_fd(),
            name.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn setxattr_at(dirfd: BorrowedFd<'_>, path: &CStr, name: &CStr, value: &[u8]) -> io::Result<()> {
    if XATTRAT.load(Ordering::Relaxed) != 2 {
        let flags = if path.is_empty() {
            libc::AT_EMPTY_PATH
        } else {
            libc::AT_SYMLINK_NOFOLLOW
        };
        let args = XattrArgs {
            value: value.as_ptr() as u64,
            size: value.len() as u32,
            flags: 0,
        };
        // SAFETY: the kernel reads args.size bytes at args.value.
        let r = unsafe {
            libc::syscall(
                SYS_SETXATTRAT,
                dirfd.as_raw_fd(),
                path.as_ptr(),
                flags,
                name.as_ptr(),
                &args as *const XattrArgs,
                std::mem::size_of::<XattrArgs>(),
            )
        };
        match cvt(r) {
            Ok(_) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                XATTRAT.store(2, Ordering::Relaxed);
            }
            Err(e) => return Err(e),
        }
    }
    if path.is_empty() {
        return setxattr_proc(dirfd, name, value);
    }
    let owned = open_entry(dirfd, path)?;
    setxattr_proc(owned.as_fd(), name, value)
}

fn setxattr_proc(fd: BorrowedFd<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
    let p = proc_fd_path(fd);
    // SAFETY: setxattr reads value.len() bytes.
    let r = unsafe {
        libc::setxattr(
            p.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn removexattr_at(dirfd: BorrowedFd<'_>, path: &CStr, name: &CStr) -> io::Result<()> {
    if XATTRAT.load(Ordering::Relaxed) != 2 {
        let flags = if path.is_empty() {
            libc::AT_EMPTY_PATH
        } else {
            libc::AT_SYMLINK_NOFOLLOW
        };
        // SAFETY: removexattrat reads two NUL-terminated strings.
        let r = unsafe {
            libc::syscall(
                SYS_REMOVEXATTRAT,
                dirfd.as_raw_fd(),
                path.as_ptr(),
                flags,
                name.as_ptr(),
            )
        };
        match cvt(r) {
            Ok(_) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                XATTRAT.store(2, Ordering::Relaxed);
            }
            Err(e) => return Err(e),
        }
    }
    if path.is_empty() {
        return removexattr_proc(dirfd, name);
    }
    let owned = open_entry(dirfd, path)?;
    removexattr_proc(owned.as_fd(), name)
}

fn removexattr_proc(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let p = proc_fd_path(fd);
    // SAFETY: removexattr reads two NUL-terminated strings.
    let r = unsafe { libc::removexattr(p.as_ptr(), name.as_ptr()) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENODATA) {
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

/// One object opened `O_PATH` without following links, with its identity at open time.
#[derive(Debug)]
pub struct Object {
    fd: OwnedFd,
    path: PathBuf,
    id: Identity,
    meta: Meta,
}

impl Object {
    /// The device number of a device node (`st_rdev`).
    pub fn rdev(&self) -> io::Result<u64> {
        Ok(rustix::fs::fstat(&self.fd)?.st_rdev)
    }

    fn from_fd(fd: OwnedFd, path: PathBuf) -> io::Result<Object> {
        let (id, meta) = statx_fd(fd.as_fd(), empty(), libc::AT_EMPTY_PATH)?;
        Ok(Object { fd, path, id, meta })
    }

    /// The path it was opened by (for messages and records).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Identity at open time.
    pub fn identity(&self) -> Identity {
        self.id
    }

    /// Owner, group and mode at open time.
    pub fn meta(&self) -> Meta {
        self.meta
    }

    /// Owner, group and mode now.
    pub fn current_meta(&self) -> io::Result<Meta> {
        Ok(statx_fd(self.fd.as_fd(), empty(), libc::AT_EMPTY_PATH)?.1)
    }

    // The kernel refuses xattr calls on O_PATH fds (EBADF, even for `*xattrat` with
    // AT_EMPTY_PATH), and sockets and fifos cannot be opened any other way without side
    // effects: the `/proc/self/fd/N` magic link resolves to exactly this object.

    /// Reads an extended attribute; `None` when absent.
    pub fn get_xattr(&self, name: &CStr) -> io::Result<Option<Vec<u8>>> {
        getxattr_big(self.fd.as_fd(), empty(), name)
    }

    /// Writes an extended attribute.
    pub fn set_xattr(&self, name: &CStr, value: &[u8]) -> io::Result<()> {
        setxattr_proc(self.fd.as_fd(), name, value)
    }

    /// Removes an extended attribute (absent is fine).
    pub fn remove_xattr(&self, name: &CStr) -> io::Result<()> {
        removexattr_proc(self.fd.as_fd(), name)
    }

    /// Changes owner and group (`u32::MAX` leaves one unchanged), never following a link.
    pub fn chown(&self, uid: u32, gid: u32) -> io::Result<()> {
        // SAFETY: fchownat with AT_EMPTY_PATH acts on the fd itself.
        let r = unsafe {
            libc::fchownat(
                self.fd.as_raw_fd(),
                empty().as_ptr(),
                uid,
                gid,
                libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Changes the permission bits (`fchmodat2(fd, "", mode, AT_EMPTY_PATH)`, falling back to
    /// `/proc/self/fd/N` before Linux 6.6). Refused on symlinks (they have no mode).
    pub fn chmod(&self, mode: u32) -> io::Result<()> {
        if self.meta.is_symlink() {
            return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        }
        let mode = mode & 0o7777;
        // SAFETY: fchmodat2 with AT_EMPTY_PATH acts on the fd itself.
        let r = unsafe {
            libc::syscall(
                libc::SYS_fchmodat2,
                self.fd.as_raw_fd(),
                empty().as_ptr(),
                mode,
                libc::AT_EMPTY_PATH,
            )
        };
        match cvt(r) {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EINVAL)) => {
                let p = proc_fd_path(self.fd.as_fd());
                // SAFETY: chmod of the magic link resolves to this very object.
                let r = unsafe { libc::chmod(p.as_ptr(), mode as libc::mode_t) };
                if r < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The filesystem type (`statfs.f_type`) the object lives on.
    pub fn fs_type(&self) -> io::Result<i64> {
        fs_type(self.fd.as_fd())
    }

    /// A directory handle for walking this object's entries (it must be a directory).
    pub fn open_as_dir(&self) -> io::Result<Dir> {
        // SAFETY: openat(".") of an O_PATH directory fd reopens the same directory.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c".".as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh fd.
        Dir::from_fd(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

fn fs_type(fd: BorrowedFd<'_>) -> io::Result<i64> {
    // SAFETY: fstatfs fills the struct.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::fstatfs(fd.as_raw_fd(), &mut s) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    Ok(s.f_type as i64)
}

/// Kind of a directory entry, from `d_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A symbolic link (never followed).
    Symlink,
    /// Anything else (file, fifo, socket, device).
    Other,
    /// The filesystem did not say (`DT_UNKNOWN`): ask with `statx`.
    Unknown,
}

/// One directory entry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Name within the directory (no NUL, no `/`).
    pub name: CString,
    /// Inode number from `getdents64`.
    pub ino: u64,
    /// Its kind.
    pub kind: EntryKind,
}

/// An open directory (read access), for tree walks relative to its fd.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    id: Identity,
    /// Mount id, when the kernel reports it (5.8+): what tells a mount point, a bind mount
    /// of the same filesystem included, from a plain subdirectory without `openat2`.
    mnt: Option<u64>,
}

impl Dir {
    /// A directory handle for `fd`, which must be a directory opened for reading (an
    /// `O_PATH` fd cannot be listed).
    pub fn from_fd(fd: OwnedFd) -> io::Result<Dir> {
        let (id, meta, mnt) =
            statx_mnt(fd.as_fd(), empty(), libc::AT_EMPTY_PATH, libc::STATX_MNT_ID)?;
        if !meta.is_dir() {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        Ok(Dir { fd, id, mnt })
    }

    /// Whether `other` is on the same mount as `self` (by mount id where both have one,
    /// else by device).
    fn same_mount(&self, other: &Dir) -> bool {
        match (self.mnt, other.mnt) {
            (Some(a), Some(b)) => a == b && self.id.dev == other.id.dev,
            _ => self.id.dev == other.id.dev,
        }
    }

    /// Identity of the directory.
    pub fn identity(&self) -> Identity {
        self.id
    }

    /// Every entry except `.` and `..`, read with `getdents64`.
    pub fn entries(&self) -> io::Result<Vec<Entry>> {
        // Rewind: a Dir may be listed more than once.
        // SAFETY: lseek on a valid directory fd.
        unsafe { libc::lseek(self.fd.as_raw_fd(), 0, libc::SEEK_SET) };
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: the kernel writes at most buf.len() bytes.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_getdents64,
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr(),
                    buf.len(),
                )
            };
            let n = cvt(n)? as usize;
            if n == 0 {
                break;
            }
            let mut off = 0usize;
            while off + 19 <= n {
                // struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
                let ino = u64::from_ne_bytes(buf[off..off + 8].try_into().unwrap_or([0; 8]));
                let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
                let dtype = buf[off + 18];
                if reclen == 0 || off + reclen > n {
                    return Err(io::Error::from_raw_os_error(libc::EIO));
                }
                let name_bytes = &buf[off + 19..off + reclen];
                let len = name_bytes
                    .iter()
                    .position(|&b| b == 0)
                    .unwrap_or(name_bytes.len());
                let name = &name_bytes[..len];
                off += reclen;
                if name == b"." || name == b".." {
                    continue;
                }
                let kind = match dtype {
                    libc::DT_DIR => EntryKind::Dir,
                    libc::DT_LNK => EntryKind::Symlink,
                    libc::DT_UNKNOWN => EntryKind::Unknown,
                    _ => EntryKind::Other,
                };
                out.push(Entry {
                    name: CString::new(name)
                        .map_err(|_| io::Error::from_raw_os_error(libc::EIO))?,
                    ino,
                    kind,
                });
            }
        }
        Ok(out)
    }

    /// Opens a subdirectory without following a symlink (`ELOOP`, in any component) and
    /// without crossing a mount point (`EXDEV`, bind mounts of the same filesystem too) or
    /// going above this directory (`..` or an absolute name: `EXDEV`).
    ///
    /// `openat2(RESOLVE_NO_SYMLINKS|RESOLVE_NO_MAGICLINKS|RESOLVE_BENEATH|RESOLVE_NO_XDEV)`;
    /// where it is missing (`ENOSYS`) or filtered (`EPERM`, seccomp), the same guarantees
    /// from one `openat(O_NOFOLLOW|O_DIRECTORY)` per component, each checked with `statx` to
    /// be on the parent's mount (mount id, else device).
    pub fn open_subdir(&self, name: &CStr) -> io::Result<Dir> {
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
        let resolve = libc::RESOLVE_NO_SYMLINKS
            | libc::RESOLVE_NO_MAGICLINKS
            | libc::RESOLVE_BENEATH
            | libc::RESOLVE_NO_XDEV;
        match try_openat2(self.fd.as_fd(), name, flags, resolve) {
            Openat2::Done(r) => Dir::from_fd(r?),
            Openat2::Fallback { filtered } => {
                openat2_filtered(filtered, self.open_subdir_legacy(name))
            }
        }
    }

    /// The fallback of [`Dir::open_subdir`].
    fn open_subdir_legacy(&self, name: &CStr) -> io::Result<Dir> {
        // An absolute name starts above this directory (openat2's RESOLVE_BENEATH: EXDEV);
        // dropping the empty component below would walk it as a relative one.
        if name.to_bytes().starts_with(b"/") {
            return Err(io::Error::from_raw_os_error(libc::EXDEV));
        }
        let comps: Vec<&[u8]> = name
            .to_bytes()
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
            .collect();
        if comps.is_empty() {
            // Only `.` components: this directory itself, as openat2 gives.
            return Dir::from_fd(reopen_dir(self.fd.as_fd(), c".")?);
        }
        let last = comps.len() - 1;
        let mut cur: Option<Dir> = None;
        for (i, comp) in comps.into_iter().enumerate() {
            if comp == b".." {
                return Err(io::Error::from_raw_os_error(libc::EXDEV));
            }
            let c = CString::new(comp).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            let parent = cur.as_ref().unwrap_or(self);
            let fd = reopen_dir(parent.fd.as_fd(), &c).map_err(|e| {
                // openat2 refuses a symlink before the last component with ELOOP (the last
                // one, not followed, is just not a directory): the same errno here.
                let link = e.raw_os_error() == Some(libc::ENOTDIR)
                    && i != last
                    && statx_fd(parent.fd.as_fd(), &c, libc::AT_SYMLINK_NOFOLLOW)
                        .is_ok_and(|(_, m)| m.is_symlink());
                if link {
                    io::Error::from_raw_os_error(libc::ELOOP)
                } else {
                    e
                }
            })?;
            let next = Dir::from_fd(fd)?;
            if !parent.same_mount(&next) {
                return Err(io::Error::from_raw_os_error(libc::EXDEV));
            }
            cur = Some(next);
        }
        cur.ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
    }

    /// Reads an xattr of entry `name` (a symlink itself, never its target).
    pub fn get_xattr_at(&self, name: &CStr, attr: &CStr) -> io::Result<Option<Vec<u8>>> {
        getxattr_at(self.fd.as_fd(), name, attr)
    }

    /// [`Dir::get_xattr_at`] into `buf`, without allocating (a tree walk reads one label per
    /// entry): the length read, `None` when absent, `ERANGE` when longer than `buf`.
    pub fn get_xattr_at_into(
        &self,
        name: &CStr,
        attr: &CStr,
        buf: &mut [u8],
    ) -> io::Result<Option<usize>> {
        getxattr_at_into(self.fd.as_fd(), name, attr, buf)
    }

    /// Writes an xattr of entry `name` (a symlink itself, never its target).
    pub fn set_xattr_at(&self, name: &CStr, attr: &CStr, value: &[u8]) -> io::Result<()> {
        setxattr_at(self.fd.as_fd(), name, attr, value)
    }

    /// Removes an xattr of entry `name` (a symlink itself, never its target); absent is fine.
    pub fn remove_xattr_at(&self, name: &CStr, attr: &CStr) -> io::Result<()> {
        removexattr_at(self.fd.as_fd(), name, attr)
    }

    /// Reads an xattr of the directory itself.
    pub fn get_xattr(&self, attr: &CStr) -> io::Result<Option<Vec<u8>>> {
        getxattr_at(self.fd.as_fd(), empty(), attr)
    }

    /// Writes an xattr of the directory itself.
    pub fn set_xattr(&self, attr: &CStr, value: &[u8]) -> io::Result<()> {
        setxattr_at(self.fd.as_fd(), empty(), attr, value)
    }

    /// Opens entry `name` itself as an `O_PATH` object (a symlink is opened as the link).
    pub fn open_entry(&self, name: &CStr, display: PathBuf) -> io::Result<Object> {
        let fd = open_entry(self.fd.as_fd(), name)?;
        Object::from_fd(fd, display)
    }

    /// Identity and metadata of entry `name` without following it.
    pub fn stat_entry(&self, name: &CStr) -> io::Result<(Identity, Meta)> {
        statx_fd(self.fd.as_fd(), name, libc::AT_SYMLINK_NOFOLLOW)
    }

    /// Everything [`EntryStat`] holds of entry `name`, without following it.
    pub fn stat_entry_full(&self, name: &CStr) -> io::Result<EntryStat> {
        statx_full(self.fd.as_fd(), name, libc::AT_SYMLINK_NOFOLLOW, 0)
    }

    /// The filesystem type of the directory.
    pub fn fs_type(&self) -> io::Result<i64> {
        fs_type(self.fd.as_fd())
    }
}

/// `statfs.f_type` values that decide which SELinux boolean isolation depends on when a
/// label cannot be written.
pub mod fstype {
    /// NFS.
    pub const NFS: i64 = 0x6969;
    /// FUSE.
    pub const FUSE: i64 = 0x6573_5546;
    /// SMB/CIFS.
    pub const CIFS: i64 = 0xFF53_4D42;
    /// SMB2.
    pub const SMB2: i64 = 0xFE53_4D42;
    /// SMB (old smbfs).
    pub const SMB: i64 = 0x517B;
    /// 9p (virtio-9p, often used for shares).
    pub const V9FS: i64 = 0x0102_1997;
    /// vfat / msdos.
    pub const MSDOS: i64 = 0x4d44;
    /// ISO 9660.
    pub const ISOFS: i64 = 0x9660;
}
