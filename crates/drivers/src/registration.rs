//! What a driver registers ([`Registration`]) and what it is opened with
//! ([`OpenContext`]); the list of drivers and the choice of a stack are in
//! [`crate::registry`].

use std::path::Path;
use std::sync::Arc;

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

/// Settings of the drivers that take any; `None` everywhere is a working default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settings {
    /// DAC: the guests' uid/gid pool `(first, last)`; `None`: the store's default range.
    pub uid_range: Option<(u32, u32)>,
    /// SELinux: the categories dynamic levels are drawn from `(first, last)`; `None`: the
    /// manager's own context's range, else `c0.c1023`.
    pub category_range: Option<(u16, u16)>,
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
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("name", &self.name)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}
