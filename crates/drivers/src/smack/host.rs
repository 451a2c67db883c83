//! What SMACK offers on the host: whether it is active, a process's label, and
//! `svirt host-validate`'s lines.

use std::path::{Path, PathBuf};

use crate::host_check::{Check, HostView, Status, check, xattr_checks};

/// Where smackfs is mounted.
pub const SMACKFS: &str = "/sys/fs/smackfs";

/// Whether SMACK is active under `root`, and why (not): listed in the kernel's LSM list
/// (when the kernel has one) and smackfs mounted with its rule interface.
pub fn active(root: &Path) -> (bool, String) {
    let fs = root.join(SMACKFS.trim_start_matches('/'));
    let lsm = root.join("sys/kernel/security/lsm");
    if let Ok(list) = std::fs::read_to_string(&lsm)
        && !list.trim().split(',').any(|m| m == "smack")
    {
        return (
            false,
            format!(
                "SMACK is not an active LSM ({}: {})",
                lsm.display(),
                list.trim()
            ),
        );
    }
    if !fs.join("load2").exists() {
        return (
            false,
            format!(
                "smackfs is not mounted at {} (no {})",
                fs.display(),
                fs.join("load2").display()
            ),
        );
    }
    (true, format!("SMACK active, smackfs at {}", fs.display()))
}

/// The attribute files of a process's SMACK label, the LSM-specific one first (Linux 5.1+;
/// `attr/current` is SMACK's only where it is the one major LSM).
pub fn label_paths(root: &Path, pid: &str) -> [PathBuf; 2] {
    let base = root.join("proc").join(pid).join("attr");
    [base.join("smack/current"), base.join("current")]
}

/// The SMACK label of process `pid` (`self`, `thread-self` or a number) under `root`.
pub fn process_label(root: &Path, pid: &str) -> std::io::Result<Option<String>> {
    let mut last = None;
    for p in label_paths(root, pid) {
        match std::fs::read(&p) {
            Ok(b) => {
                let t = String::from_utf8_lossy(&b)
                    .trim_end_matches(['\0', '\n'])
                    .to_string();
                return Ok((!t.is_empty()).then_some(t));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => last = Some(e),
            // EINVAL: no LSM provides the attribute.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::from_raw_os_error(libc::ENOENT)))
}

/// `svirt host-validate`'s lines for SMACK: whether it is active, and whether
/// `security.SMACK64` can be written where images live.
pub fn host_checks(view: &HostView<'_>) -> Vec<Check> {
    let listed = view.lsm_active("smack");
    let mounted = view.host.mounts_of("smackfs").iter().any(|m| m == SMACKFS);
    let mode = match (listed, mounted) {
        (true, true) => check(
            "SMACK",
            "mode",
            Status::Pass,
            "active, smackfs mounted: svirt can use the smack driver",
        ),
        (true, false) => check(
            "SMACK",
            "mode",
            Status::Warn,
            format!("active but smackfs is not mounted on {SMACKFS}"),
        ),
        (false, _) => check(
            "SMACK",
            "mode",
            Status::Warn,
            "not an active LSM: the smack driver is unusable",
        ),
    };
    let mut out = vec![mode];
    if listed {
        out.extend(xattr_checks(
            view,
            "security.SMACK64 xattrs",
            "security.SMACK64",
            svirt_domain::smack::SHARED.as_bytes(),
        ));
    }
    out
}
