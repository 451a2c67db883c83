//! What every VMM needs from the host, whatever its guest: its libraries, the read-only
//! data QEMU loads (firmware, option ROMs, keymaps), and a few device nodes. One list, so
//! the jail shows exactly what the path-based models (Landlock, AppArmor) grant.

use std::path::PathBuf;

/// System paths a VMM uses. Entries missing on a host are skipped by every consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmNeeds {
    /// Directories and files the VMM may read and execute (map) beneath: its libraries.
    pub exec_paths: Vec<PathBuf>,
    /// Directories and files the VMM may read beneath (loader cache, time zone, firmware).
    pub read_paths: Vec<PathBuf>,
    /// Device nodes every VMM may read and write.
    pub base_devices: Vec<PathBuf>,
}

impl Default for VmmNeeds {
    fn default() -> Self {
        let p = |s: &[&str]| s.iter().map(PathBuf::from).collect::<Vec<_>>();
        VmmNeeds {
            // The library directories only, not all of /usr: the manager's jail shows the
            // VMM exactly these paths, and QEMU needs nothing else beneath /usr but its
            // own binary (given per guest) and the data below. On merged-/usr hosts /lib*
            // are symlinks to the same directories.
            exec_paths: p(&[
                "/usr/lib",
                "/usr/lib64",
                "/usr/lib32",
                "/usr/libx32",
                "/lib",
                "/lib64",
                "/lib32",
                "/libx32",
            ]),
            // The firmware directories are the planner's (a loader there is the host's,
            // not planned): one list.
            read_paths: p(&["/etc/ld.so.cache", "/etc/ld.so.preload", "/etc/localtime"])
                .into_iter()
                .chain(svirt_domain::SYSTEM_FIRMWARE_DIRS.iter().map(PathBuf::from))
                .chain(p(&["/sys/devices/system/cpu", "/sys/devices/system/node"]))
                .collect(),
            base_devices: p(&[
                "/dev/null",
                "/dev/zero",
                "/dev/full",
                "/dev/urandom",
                "/dev/random",
            ]),
        }
    }
}
