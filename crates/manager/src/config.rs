//! Manager configuration: where state and runtime files live, the label and uid pools,
//! which drivers to stack and how to run QEMU.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ManagerError;

/// An inclusive range of MCS categories (`c0.c1023`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CategoryRange {
    /// First category.
    pub first: u16,
    /// Last category (inclusive).
    pub last: u16,
}

impl Default for CategoryRange {
    fn default() -> Self {
        CategoryRange {
            first: 0,
            last: 1023,
        }
    }
}

impl fmt::Display for CategoryRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}.c{}", self.first, self.last)
    }
}

impl FromStr for CategoryRange {
    type Err = ManagerError;
    /// Parses `cA.cB` (the form of `--category-range`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ManagerError::Config(format!("category range {s:?}: expected cA.cB"));
        let (a, b) = s.split_once('.').ok_or_else(bad)?;
        let num = |t: &str| -> Result<u16, ManagerError> {
            t.strip_prefix('c')
                .and_then(|n| n.parse::<u16>().ok())
                .ok_or_else(bad)
        };
        let (first, last) = (num(a)?, num(b)?);
        if first >= last || last > 1023 {
            return Err(ManagerError::Config(format!(
                "category range {s:?}: needs first < last <= 1023 (a label is two distinct categories)"
            )));
        }
        Ok(CategoryRange { first, last })
    }
}

/// An inclusive range of host uids (and the same gids) handed to guests, one each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UidRange {
    /// First uid.
    pub first: u32,
    /// Last uid (inclusive).
    pub last: u32,
}

impl Default for UidRange {
    /// 300000-365535: above the usual login, systemd dynamic and first subordinate id
    /// ranges (the store's allocator skips ids the system's passwd/group/subuid use anyway).
    fn default() -> Self {
        UidRange {
            first: 300_000,
            last: 365_535,
        }
    }
}

impl fmt::Display for UidRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for UidRange {
    type Err = ManagerError;
    /// Parses `FIRST-LAST` (the form of `--uid-range`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ManagerError::Config(format!("uid range {s:?}: expected FIRST-LAST"));
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let first: u32 = a.trim().parse().map_err(|_| bad())?;
        let last: u32 = b.trim().parse().map_err(|_| bad())?;
        if first == 0 || first > last {
            return Err(ManagerError::Config(format!(
                "uid range {s:?}: needs 0 < FIRST <= LAST"
            )));
        }
        Ok(UidRange { first, last })
    }
}

/// One driver name as accepted in an explicit driver list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverName {
    /// SELinux.
    Selinux,
    /// Per-guest uid/gid.
    Dac,
    /// Landlock confinement of the VMM.
    Landlock,
    /// No confinement at all (tests, comparisons). Only valid alone.
    None,
}

impl FromStr for DriverName {
    type Err = ManagerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "selinux" => Ok(DriverName::Selinux),
            "dac" => Ok(DriverName::Dac),
            "landlock" => Ok(DriverName::Landlock),
            "none" => Ok(DriverName::None),
            other => Err(ManagerError::Config(format!(
                "unknown driver {other:?} (selinux, dac, landlock, none)"
            ))),
        }
    }
}

/// Which security drivers the manager stacks.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "mode", content = "drivers")]
pub enum DriverSelection {
    /// Probe the host: SELinux (then DAC) when SELinux is enabled, else DAC + Landlock.
    #[default]
    Auto,
    /// Exactly these drivers, in this order (`none` alone: no confinement).
    Explicit(Vec<DriverName>),
}

impl FromStr for DriverSelection {
    type Err = ManagerError;
    /// Parses `auto` or a comma-separated list (`selinux,dac`, `dac,landlock`, `none`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim() == "auto" {
            return Ok(DriverSelection::Auto);
        }
        let list = s
            .split(',')
            .map(DriverName::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        if list.contains(&DriverName::None) && list.len() > 1 {
            return Err(ManagerError::Config(
                "driver 'none' cannot be combined with other drivers".into(),
            ));
        }
        Ok(DriverSelection::Explicit(list))
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
    /// Categories dynamic labels are drawn from; `None`: the manager's own range or c0.c1023.
    pub category_range: Option<CategoryRange>,
    /// Guest uid/gid pool; `None`: [`UidRange::default`].
    pub uid_range: Option<UidRange>,
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
    /// `SVIRT_FAULT` environment variable.
    pub fault: Option<String>,
}

impl Config {
    /// Defaults for a given state and runtime directory.
    pub fn new(state_dir: impl Into<PathBuf>, run_dir: impl Into<PathBuf>) -> Self {
        Config {
            state_dir: state_dir.into(),
            run_dir: run_dir.into(),
            root_dir: PathBuf::from("/"),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            cgroup_parent: "svirt".into(),
            category_range: None,
            uid_range: None,
            qemu_binary: None,
            drivers: DriverSelection::Auto,
            accel: AccelChoice::Auto,
            shutdown_timeout: Duration::from_secs(30),
            kill_timeout: default_kill_timeout(),
            pids_limit: 4096,
            memory_overhead: 256 << 20,
            fault: None,
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
        assert_eq!(
            "dac,landlock".parse::<DriverSelection>().unwrap(),
            DriverSelection::Explicit(vec![DriverName::Dac, DriverName::Landlock])
        );
        assert!("none,dac".parse::<DriverSelection>().is_err());
        assert!("apparmor".parse::<DriverSelection>().is_err());
    }
}
