//! The vocabulary of `svirt host-validate`'s checks, and what each driver checks with it.
//!
//! Each driver's registration carries its own checks ([`crate::registration::Registration`]'s
//! `host_checks`): what the host offers that driver, tried for real (a mode read from the
//! kernel, an ABI asked for, an xattr written on a temporary file that is deleted again).
//! The manager runs the checks of the host itself (QEMU, KVM, cgroups) and then every
//! registration's ([`crate::registry::host_checks`]), naming no driver.
//!
//! The host's pseudo-filesystems are read below a root ([`Host`]), so tests can point them
//! at a fake tree. Nothing here mounts anything or leaves anything behind.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// Works as svirt needs.
    Pass,
    /// Works partly, or svirt falls back to something weaker.
    Warn,
    /// Does not work.
    Fail,
}

impl Status {
    /// `PASS`, `WARN` or `FAIL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// The area (`QEMU`, `KVM`, `LSM`, `SELinux`, `Landlock`, `BPF-LSM`, `cgroup`, `xattr`, `DAC`).
    pub component: &'static str,
    /// What was checked.
    pub check: String,
    /// The outcome.
    pub status: Status,
    /// Why, always present.
    pub reason: String,
}

/// One check's line.
pub fn check(
    component: &'static str,
    what: impl Into<String>,
    status: Status,
    reason: impl Into<String>,
) -> Check {
    Check {
        component,
        check: what.into(),
        status,
        reason: reason.into(),
    }
}

/// What every check is given: the host, its active LSMs (or why they are unknown), and
/// the directories images will live in (for the checks that write there).
pub struct HostView<'a> {
    /// The host's pseudo-filesystems.
    pub host: &'a Host,
    /// The active LSMs ([`Host::active_lsms`]).
    pub lsms: &'a Result<Vec<String>, String>,
    /// Where guests' images live (`svirt host-validate --images`).
    pub image_dirs: &'a [PathBuf],
}

impl HostView<'_> {
    /// Whether `lsm` is listed as active (false when the list is unknown).
    pub fn lsm_active(&self, lsm: &str) -> bool {
        matches!(self.lsms, Ok(l) if l.iter().any(|x| x == lsm))
    }
}

/// An I/O error's text without std's " (os error N)" suffix: what people are shown (the
/// host checks, the CLI's messages).
pub fn io_text(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// The host's pseudo-filesystems, below a root (tests can point it at a fake tree).
pub struct Host {
    root: PathBuf,
}

impl Host {
    /// A host whose `/proc` and `/sys` are under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Host { root: root.into() }
    }

    /// `abs` below the root.
    pub fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    /// The text of the file `abs` below the root.
    pub fn read(&self, abs: &str) -> io::Result<String> {
        fs::read_to_string(self.path(abs))
    }

    /// Mount points of a filesystem type, from `/proc/self/mountinfo`.
    pub fn mounts_of(&self, fstype: &str) -> Vec<String> {
        let Ok(info) = self.read("/proc/self/mountinfo") else {
            return Vec::new();
        };
        info.lines()
            .filter_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                let mount_point = left.split(' ').nth(4)?;
                let ty = right.split(' ').next()?;
                (ty == fstype).then(|| mount_point.to_string())
            })
            .collect()
    }

    /// The active LSMs, or why they are unknown.
    pub fn active_lsms(&self) -> Result<Vec<String>, String> {
        if !self
            .mounts_of("securityfs")
            .iter()
            .any(|m| m == "/sys/kernel/security")
        {
            return Err("securityfs is not mounted on /sys/kernel/security \
                        (mount -t securityfs none /sys/kernel/security to list LSMs)"
                .into());
        }
        match self.read("/sys/kernel/security/lsm") {
            Ok(s) => Ok(s
                .trim()
                .split(',')
                .filter(|x| !x.is_empty())
                .map(String::from)
                .collect()),
            Err(e) => Err(format!("cannot read /sys/kernel/security/lsm: {e}")),
        }
    }
}

/// For each image directory: whether the extended attribute `name` can be written there
/// (`value` on a temporary file made with `O_EXCL` and deleted again). One line per
/// directory, component `xattr`, check `{what} in {dir}`.
pub fn xattr_checks(view: &HostView<'_>, what: &str, name: &str, value: &[u8]) -> Vec<Check> {
    view.image_dirs
        .iter()
        .map(|dir| {
            let line = format!("{what} in {}", dir.display());
            let file = match TempFile::new_in(dir) {
                Ok(f) => f,
                Err(e) => {
                    return check(
                        "xattr",
                        line,
                        Status::Fail,
                        format!(
                            "cannot create a temporary file in {}: {}",
                            dir.display(),
                            io_text(&e)
                        ),
                    );
                }
            };
            match fsetxattr(&file.fd, name, value) {
                Ok(()) => check(
                    "xattr",
                    line,
                    Status::Pass,
                    format!("wrote {name} on a temporary file"),
                ),
                Err(e) => {
                    let hint = match e.raw_os_error() {
                        Some(libc::EOPNOTSUPP) => {
                            " (filesystem does not support them: svirt cannot set them here)"
                        }
                        Some(libc::EPERM) => {
                            " (not permitted: unprivileged, or inside a container)"
                        }
                        _ => "",
                    };
                    check(
                        "xattr",
                        line,
                        Status::Fail,
                        format!("setxattr {name}: {}{hint}", io_text(&e)),
                    )
                }
            }
        })
        .collect()
}

/// A file created for a check, deleted when dropped.
struct TempFile {
    fd: OwnedFd,
    path: PathBuf,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

impl TempFile {
    fn new_in(dir: &Path) -> io::Result<TempFile> {
        for n in 0..100u32 {
            let path = dir.join(format!(".svirt-validate-{}-{n}", std::process::id()));
            let c = CString::new(path.as_os_str().as_bytes())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            // SAFETY: valid path; O_EXCL so we never touch an existing file.
            let fd = unsafe {
                libc::open(
                    c.as_ptr(),
                    libc::O_RDWR
                        | libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_NOFOLLOW
                        | libc::O_CLOEXEC,
                    0o600,
                )
            };
            if fd >= 0 {
                // SAFETY: a fresh fd.
                return Ok(TempFile {
                    fd: unsafe { OwnedFd::from_raw_fd(fd) },
                    path,
                });
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(e);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no free temporary name",
        ))
    }
}

fn fsetxattr(fd: &OwnedFd, name: &str, value: &[u8]) -> io::Result<()> {
    let c = CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: valid fd, name and value buffer.
    let r = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            c.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]
    use super::*;

    #[test]
    fn xattr_check_reports_each_dir_and_cleans_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing");
        let host = Host::new("/");
        let lsms = Ok(Vec::new());
        let dirs = [dir.path().to_path_buf(), missing.clone()];
        let view = HostView {
            host: &host,
            lsms: &lsms,
            image_dirs: &dirs,
        };
        let checks = xattr_checks(&view, "user xattrs", "user.svirt.validate", b"1");
        assert_eq!(checks.len(), 2);
        assert_eq!(checks[0].status, Status::Pass, "{:?}", checks[0]);
        assert!(checks[0].check.ends_with(&dir.path().display().to_string()));
        // Control: a directory that does not exist fails, naming it.
        assert_eq!(checks[1].status, Status::Fail);
        assert!(
            checks[1].reason.contains(&missing.display().to_string()),
            "{:?}",
            checks[1]
        );
        assert_eq!(
            fs::read_dir(dir.path()).expect("readdir").count(),
            0,
            "temporary file left behind"
        );
    }

    #[test]
    fn missing_securityfs_is_reported_not_mounted() {
        let root = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(root.path().join("proc/self")).expect("mkdir");
        fs::write(
            root.path().join("proc/self/mountinfo"),
            "22 1 0:21 / /proc rw - proc proc rw\n",
        )
        .expect("write");
        let err = Host::new(root.path())
            .active_lsms()
            .expect_err("not mounted");
        assert!(err.contains("not mounted"), "{err}");
        fs::write(
            root.path().join("proc/self/mountinfo"),
            "22 1 0:21 / /sys/kernel/security rw - securityfs securityfs rw\n",
        )
        .expect("write");
        fs::create_dir_all(root.path().join("sys/kernel/security")).expect("mkdir");
        fs::write(
            root.path().join("sys/kernel/security/lsm"),
            "lockdown,capability,landlock,bpf",
        )
        .expect("write");
        assert_eq!(
            Host::new(root.path()).active_lsms().expect("lsms"),
            vec!["lockdown", "capability", "landlock", "bpf"]
        );
    }
}
