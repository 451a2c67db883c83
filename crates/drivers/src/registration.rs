//! What a driver registers ([`Registration`]) and what it is opened with
//! ([`OpenContext`]); the list of drivers and the choice of a stack are in
//! [`crate::registry`].

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use svirt_domain::Model;
use svirt_store::Store;

use crate::progress::ProgressFn;
use crate::{DriverError, SecurityDriver};

/// What the host gives every driver it opens.
pub struct OpenContext<'a> {
    /// Root under which host files are read and objects reached (`/` but in tests).
    pub root_dir: &'a Path,
    /// The manager's state directory (the ledger lives there).
    pub state_dir: &'a Path,
    /// The manager's runtime directory.
    pub run_dir: &'a Path,
    /// The ledger.
    pub store: &'a Arc<Store>,
    /// The settings svirtd was given for drivers.
    pub settings: &'a Settings,
    /// A progress callback for the driver's tree walks (`svirt start`'s bars).
    pub progress: &'a (dyn Fn(Model) -> ProgressFn + Sync),
}

/// Settings of the drivers that take any; `None` everywhere is a working default. A new
/// driver's setting is a field here (and svirtd's flag for it), not the manager's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// DAC: the guests' uid/gid pool; `None`: [`UidRange::default`].
    pub uid_range: Option<UidRange>,
    /// SELinux: the categories dynamic levels are drawn from; `None`: the manager's own
    /// context's range, else `c0.c1023`.
    pub category_range: Option<CategoryRange>,
}

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
    type Err = String;
    /// Parses `cA.cB` (the form of `--category-range`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("category range {s:?}: expected cA.cB");
        let (a, b) = s.split_once('.').ok_or_else(bad)?;
        let num = |t: &str| -> Result<u16, String> {
            t.strip_prefix('c')
                .and_then(|n| n.parse::<u16>().ok())
                .ok_or_else(bad)
        };
        let (first, last) = (num(a)?, num(b)?);
        if first >= last || last > 1023 {
            return Err(format!(
                "category range {s:?}: needs first < last <= 1023 (a label is two distinct categories)"
            ));
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

/// First uid of the default guest range (see [`DEFAULT_UID_RANGE`]; the store's default).
pub const DEFAULT_UID_FIRST: u32 = svirt_store::DEFAULT_ID_FIRST;
/// Last uid (inclusive) of the default guest range.
pub const DEFAULT_UID_LAST: u32 = svirt_store::DEFAULT_ID_LAST;
/// The default guest uid/gid range as `svirtd --help` shows it (one constant: the help
/// text and the code cannot disagree).
pub const DEFAULT_UID_RANGE: &str = "2000000000-2000065535";

// The help text's string and the numbers must agree.
const _: () = assert!(DEFAULT_UID_FIRST == 2_000_000_000 && DEFAULT_UID_LAST == 2_000_065_535);

impl Default for UidRange {
    /// 2000000000-2000065535: far above login accounts (1000–60000), systemd's dynamic ids
    /// (61184–65519) and Debian's subordinate id blocks (`SUB_UID_MIN` 100000 up to
    /// `SUB_UID_MAX` 600100000 plus one 65536 block), below 2^31 (no sign trouble in tools
    /// that print ids as `int`). `Manager::open` still refuses it if the host's passwd,
    /// group, subuid or subgid name an id in it.
    fn default() -> Self {
        UidRange {
            first: DEFAULT_UID_FIRST,
            last: DEFAULT_UID_LAST,
        }
    }
}

impl UidRange {
    /// Refuses the range if `<root>/etc/passwd`, `group` (uid and gid fields), `subuid` or
    /// `subgid` (blocks `name:first:count`) name an id in it: such an id belongs to an
    /// account, or to the user namespaces of a user, and handing it to a guest would give
    /// the guest that account's files (or the account the guest's). The error names the
    /// file, the line's entry and the overlap. Missing `subuid`/`subgid` are fine;
    /// `passwd` and `group` must be readable.
    pub fn check_against_host(&self, root: &Path) -> Result<(), svirt_store::RangeConflict> {
        svirt_store::IdConfig {
            first: self.first,
            last: self.last,
            root: root.to_path_buf(),
        }
        .check_against_host()
    }
}

impl fmt::Display for UidRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for UidRange {
    type Err = String;
    /// Parses `FIRST-LAST` (the form of `--uid-range`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("uid range {s:?}: expected FIRST-LAST");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let first: u32 = a.trim().parse().map_err(|_| bad())?;
        let last: u32 = b.trim().parse().map_err(|_| bad())?;
        if first == 0 || first > last {
            return Err(format!("uid range {s:?}: needs 0 < FIRST <= LAST"));
        }
        Ok(UidRange { first, last })
    }
}

/// A driver's part when the stack is chosen automatically.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    /// A mandatory-access-control model (at most one per stack): stacked when `active`
    /// says the host enforces it, first. `active(root)` gives the answer and one line on
    /// why, which is reported either way.
    Mac {
        /// Whether the host runs this model (under `root`).
        active: fn(&Path) -> (bool, String),
    },
    /// Stacked always (DAC: a uid per guest).
    Base,
    /// Stacked only when no MAC model is (Landlock: path confinement where there are no
    /// labels).
    WithoutMac,
}

/// Opens a driver, or says why it cannot be.
pub type OpenFn = fn(&OpenContext<'_>) -> Result<Arc<dyn SecurityDriver>, DriverError>;

/// One driver svirt knows.
pub struct Registration {
    /// Its name in `--drivers`.
    pub name: &'static str,
    /// The model it stacks.
    pub model: Model,
    /// Its part in an automatic choice.
    pub role: Role,
    /// Whether it walks and changes files (its stage shows progress bars).
    pub changes_files: bool,
    /// Opens it for a stack.
    pub open: OpenFn,
    /// Whether the ledger holds records of this model (a retired driver is then needed).
    pub has_records: fn(&Store) -> Result<bool, DriverError>,
    /// Opens it for the open's recovery only (not stacked).
    pub open_retired: OpenFn,
    /// `svirt host-validate`'s lines for this driver: what the host offers it, tried for
    /// real ([`crate::host_check`]).
    pub host_checks: fn(&crate::host_check::HostView<'_>) -> Vec<crate::host_check::Check>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("name", &self.name)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}
