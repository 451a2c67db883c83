//! Manager configuration: where state and runtime files live, the label and uid pools,
//! which drivers to stack and how to run QEMU.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ManagerError;
pub use svirt_drivers::registry::{CategoryRange, DEFAULT_UID_RANGE, Settings, UidRange};

/// Makes `dir` a directory only root (the manager) can use: created 0700 if missing
/// (with its parents), else checked to be a real directory (not a symlink) owned by the
/// manager's uid and set to 0700. Refused, naming it, if it is anything else: the manager
/// keeps files there it later reads or connects to by path.
pub(crate) fn private_dir(dir: &Path) -> Result<(), ManagerError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) => return Err(ManagerError::io("create", dir, e)),
    }
    let md = std::fs::symlink_metadata(dir).map_err(|e| ManagerError::io("stat", dir, e))?;
    let me = rustix::process::geteuid().as_raw();
    if !md.is_dir() || md.uid() != me {
        return Err(ManagerError::Config(format!(
            "{}: must be a directory owned by uid {me} (it holds the manager's private files); it is {} owned by uid {}",
            dir.display(),
            if md.file_type().is_symlink() {
                "a symlink"
            } else if md.is_dir() {
                "a directory"
            } else {
                "not a directory"
            },
            md.uid()
        )));
    }
    if md.mode() & 0o7777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| ManagerError::io("chmod 0700", dir, e))?;
    }
    Ok(())
}

/// Restricts everything below `dir` (a private dir of the manager's) to root: regular
/// files 0600 (keeping no group/other bit), directories 0700. Symlinks are not followed.
/// Used on the state directory after the store and the drivers opened their databases
/// (they create them with the process umask).
pub(crate) fn restrict_tree(dir: &Path) -> Result<(), ManagerError> {
    use std::os::unix::fs::PermissionsExt;
    let rd = std::fs::read_dir(dir).map_err(|e| ManagerError::io("read", dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| ManagerError::io("read", dir, e))?;
        let path = entry.path();
        let ft = entry
            .file_type()
            .map_err(|e| ManagerError::io("stat", &path, e))?;
        let want = if ft.is_dir() {
            restrict_tree(&path)?;
            0o700
        } else if ft.is_file() {
            0o600
        } else {
            continue;
        };
        let md =
            std::fs::symlink_metadata(&path).map_err(|e| ManagerError::io("stat", &path, e))?;
        if md.permissions().mode() & 0o7777 != want {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(want))
                .map_err(|e| ManagerError::io("chmod", &path, e))?;
        }
    }
    Ok(())
}

/// Which security drivers the manager stacks.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "mode", content = "drivers")]
pub enum DriverSelection {
    /// Probe the host ([`svirt_drivers::registry::auto`]): the MAC model it enforces
    /// (SELinux) and DAC, else DAC + Landlock.
    #[default]
    Auto,
    /// Exactly these drivers, by their registered names (`none` alone: no confinement),
    /// stacked in the order of [`svirt_drivers::registry::order`] whatever order they
    /// are listed in.
    Explicit(Vec<String>),
}

impl FromStr for DriverSelection {
    type Err = ManagerError;
    /// Parses `auto` or a comma-separated list (`selinux,dac`, `dac,landlock`, `none`),
    /// checked against the registered drivers and put in stack order.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim() == "auto" {
            return Ok(DriverSelection::Auto);
        }
        let list: Vec<String> = s.split(',').map(|n| n.trim().to_string()).collect();
        let ordered = svirt_drivers::registry::order(&list).map_err(ManagerError::Config)?;
        Ok(DriverSelection::Explicit(if ordered.is_empty() {
            vec![svirt_drivers::registry::NONE.to_string()]
        } else {
            ordered.iter().map(|r| r.name.to_string()).collect()
        }))
    }
}

/// How QEMU accelerates guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    /// Probe KVM once at open; use it when it really works, else TCG.
    #[default]
    Auto,
    /// Always KVM (start fails when it does not work).
    Kvm,
    /// Always TCG (emulation).
    Tcg,
}

/// Everything [`crate::Manager::open`] needs. [`Config::new`] gives working defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Persistent state (the embedded database). Default `/var/lib/svirt`.
    pub state_dir: PathBuf,
    /// Runtime files: per-guest directories with QMP sockets and logs. Default `/run/svirt`.
    pub run_dir: PathBuf,
    /// Root under which host files (`/proc`, `/etc/passwd`, SELinux config…) are read;
    /// `/` except in tests.
    pub root_dir: PathBuf,
    /// Where cgroup hierarchies are mounted. Default `/sys/fs/cgroup`.
    pub cgroup_root: PathBuf,
    /// The cgroup below which each guest's group is made (`<hierarchy>/<parent>/<guest>`).
    pub cgroup_parent: String,
    /// The drivers' settings (DAC's uid/gid pool, SELinux's category range); the defaults
    /// work.
    #[serde(default)]
    pub driver_settings: Settings,
    /// QEMU binary; `None`: the domain's `<emulator>` or `qemu-system-x86_64` from `PATH`.
    pub qemu_binary: Option<PathBuf>,
    /// Drivers to stack.
    pub drivers: DriverSelection,
    /// Accelerator choice.
    pub accel: AccelChoice,
    /// How long `shutdown` waits after the ACPI power-down before killing QEMU.
    pub shutdown_timeout: Duration,
    /// How long `shutdown`/`destroy` wait for QEMU to exit after SIGKILL (a process stuck
    /// in uninterruptible I/O may take long to die) before failing with "QEMU did not
    /// exit". The restore that follows the exit is waited for apart, without a limit.
    #[serde(default = "default_kill_timeout")]
    pub kill_timeout: Duration,
    /// `pids.max` of each guest's cgroup (QEMU threads count).
    pub pids_limit: u64,
    /// Extra memory allowed above the guest's `<memory>` for QEMU itself, in bytes.
    pub memory_overhead: u64,
    /// Fault injection (`step` or `step:error`, see [`crate::fault`]); `None`: read the
    /// `SVIRT_FAULT` environment variable. Only in builds with the `fault-injection`
    /// feature (test builds); elsewhere `Some` is refused by `Manager::open` and the
    /// variable is never read.
    pub fault: Option<String>,
    /// Directories below which a backing file named only by a qcow2 header is accepted,
    /// besides the directory of the image naming it (the header is guest data: anything
    /// else must be declared with `<backingStore>`).
    #[serde(default)]
    pub image_roots: Vec<PathBuf>,
    /// Where each guest's UEFI variable store is made from its template (`<os
    /// firmware='efi'>`, `<nvram template=…>`), kept across starts. Default
    /// `/var/lib/svirt-nvram` (not below the state directory: the planner refuses the
    /// guest anything of svirtd's own).
    pub nvram_dir: PathBuf,
    /// Whether a private filesystem share reaches its guest's uid through an idmapped
    /// mount in the VMM's jail (O(1), nothing on disk changes) rather than a chown of
    /// every entry (DAC with the jail's mount namespace; a file system that cannot be
    /// idmapped falls back to the chown, said in the log). Default on.
    #[serde(default = "yes")]
    pub idmap_shares: bool,
    /// The `virtiofsd` that serves virtiofs shares (`<driver type='virtiofs'/>`); `None`:
    /// `virtiofsd` on `PATH`, else `/usr/libexec/virtiofsd` or `/usr/lib/qemu/virtiofsd`
    /// (where distributions put it), looked up when a guest first needs it.
    #[serde(default)]
    pub virtiofsd_binary: Option<PathBuf>,
    /// Where each guest's emulated TPM keeps its state when the XML names no place
    /// (`<uuid>/tpm2`, as libvirt's `/var/lib/libvirt/swtpm`), kept across starts.
    /// Default `/var/lib/svirt-swtpm` (not below the state directory: the planner refuses
    /// the guest anything of svirtd's own).
    #[serde(default = "default_tpm_state_dir")]
    pub tpm_state_dir: PathBuf,
}

fn default_tpm_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_TPM_STATE_DIR)
}

/// The default [`Config::tpm_state_dir`].
pub const DEFAULT_TPM_STATE_DIR: &str = "/var/lib/svirt-swtpm";

fn yes() -> bool {
    true
}

/// The default [`Config::nvram_dir`].
pub const DEFAULT_NVRAM_DIR: &str = "/var/lib/svirt-nvram";

impl Config {
    /// Defaults for a given state and runtime directory.
    pub fn new(state_dir: impl Into<PathBuf>, run_dir: impl Into<PathBuf>) -> Self {
        Config {
            state_dir: state_dir.into(),
            run_dir: run_dir.into(),
            root_dir: PathBuf::from("/"),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            cgroup_parent: "svirt".into(),
            driver_settings: Settings::default(),
            qemu_binary: None,
            drivers: DriverSelection::Auto,
            accel: AccelChoice::Auto,
            shutdown_timeout: Duration::from_secs(30),
            kill_timeout: default_kill_timeout(),
            pids_limit: 4096,
            memory_overhead: 256 << 20,
            fault: None,
            image_roots: Vec::new(),
            nvram_dir: PathBuf::from(DEFAULT_NVRAM_DIR),
            idmap_shares: true,
            virtiofsd_binary: None,
            tpm_state_dir: default_tpm_state_dir(),
        }
    }
}

fn default_kill_timeout() -> Duration {
    Duration::from_secs(60)
}

impl Default for Config {
    fn default() -> Self {
        Config::new("/var/lib/svirt", "/run/svirt")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ranges_and_selections() {
        let r: CategoryRange = "c0.c10".parse().unwrap();
        assert_eq!((r.first, r.last), (0, 10));
        assert!("c5.c5".parse::<CategoryRange>().is_err());
        assert!("c0.c1024".parse::<CategoryRange>().is_err());
        assert!("0.10".parse::<CategoryRange>().is_err());
        let u: UidRange = "100000-100099".parse().unwrap();
        assert_eq!((u.first, u.last), (100000, 100099));
        assert!("0-5".parse::<UidRange>().is_err());
        assert_eq!(
            "auto".parse::<DriverSelection>().unwrap(),
            DriverSelection::Auto
        );
        let names =
            |v: &[&str]| DriverSelection::Explicit(v.iter().map(|s| s.to_string()).collect());
        assert_eq!(
            "landlock, dac".parse::<DriverSelection>().unwrap(),
            names(&["dac", "landlock"]),
            "put in stack order"
        );
        assert_eq!("none".parse::<DriverSelection>().unwrap(), names(&["none"]));
        assert!("none,dac".parse::<DriverSelection>().is_err());
        assert!("tomoyo".parse::<DriverSelection>().is_err(), "not a driver");
        assert_eq!(
            "dac,smack".parse::<DriverSelection>().unwrap(),
            names(&["smack", "dac"]),
            "SMACK is a MAC model, stacked first"
        );
        assert!(
            "smack,selinux".parse::<DriverSelection>().is_err(),
            "two MAC models"
        );
        assert!(
            "apparmor,selinux".parse::<DriverSelection>().is_err(),
            "two MAC models"
        );
        assert_eq!(
            "landlock,dac,apparmor".parse::<DriverSelection>().unwrap(),
            names(&["apparmor", "dac", "landlock"]),
            "AppArmor first, like SELinux"
        );
        assert_eq!(
            UidRange::default().to_string(),
            DEFAULT_UID_RANGE,
            "the help text's range is the code's"
        );
    }

    /// The range is checked against the four account files of a temporary root: each kind
    /// of overlap is refused naming the file and the entry; a range clear of all is
    /// accepted (the control).
    #[test]
    fn uid_range_is_checked_against_accounts_and_subordinate_ids() {
        let root = tempfile::tempdir().unwrap();
        let etc = root.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        let write = |f: &str, t: &str| std::fs::write(etc.join(f), t).unwrap();
        write(
            "passwd",
            "root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n",
        );
        write("group", "root:x:0:\nalice:x:1000:\n");
        let r: UidRange = "300000-365535".parse().unwrap();
        r.check_against_host(root.path()).unwrap();
        // Debian's fourth subordinate block (100000 + 3·65536) overlaps the old default.
        write("subuid", "alice:100000:65536\nbob:296608:65536\n");
        let e = r.check_against_host(root.path()).unwrap_err().to_string();
        assert!(
            e.contains("etc/subuid") && e.contains("bob:296608:65536"),
            "{e}"
        );
        std::fs::remove_file(etc.join("subuid")).unwrap();
        write("subgid", "carol:365535:1\n");
        let e = r.check_against_host(root.path()).unwrap_err().to_string();
        assert!(e.contains("etc/subgid") && e.contains("carol"), "{e}");
        std::fs::remove_file(etc.join("subgid")).unwrap();
        write(
            "passwd",
            "root:x:0:0::/root:/bin/sh\nsvc:x:300001:10::/:/bin/false\n",
        );
        let e = r.check_against_host(root.path()).unwrap_err().to_string();
        assert!(e.contains("etc/passwd") && e.contains("\"svc\""), "{e}");
        write(
            "passwd",
            "root:x:0:0::/root:/bin/sh\nsvc:x:10:365000::/:/bin/false\n",
        );
        let e = r.check_against_host(root.path()).unwrap_err().to_string();
        assert!(e.contains("etc/passwd") && e.contains("365000"), "{e}");
        write("passwd", "root:x:0:0::/root:/bin/sh\n");
        write("group", "g:x:300000:\n");
        let e = r.check_against_host(root.path()).unwrap_err().to_string();
        assert!(e.contains("etc/group") && e.contains("\"g\""), "{e}");
        write("group", "root:x:0:\n");
        // A missing passwd is an error (ids could not be checked), not a pass.
        std::fs::remove_file(etc.join("passwd")).unwrap();
        assert!(r.check_against_host(root.path()).is_err());
        write("passwd", "root:x:0:0::/root:/bin/sh\n");
        // The default range clears Debian's whole subordinate id space.
        write("subuid", "u:600100000:65536\n");
        UidRange::default().check_against_host(root.path()).unwrap();
    }
}
