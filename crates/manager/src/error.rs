//! The manager's error type: one variant per kind of failure a caller may act on.

use std::io;
use std::path::PathBuf;

/// A manager failure. `Display` is one clear line (the CLI prints it as is).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The domain XML or its plan was refused by the planner (typed: the element, the
    /// object and the rule).
    #[error("domain: {0}")]
    Plan(#[from] svirt_domain::Error),
    /// The domain was refused by the manager (a uuid already in use, a name it cannot
    /// use, a chain QEMU cannot be given).
    #[error("domain: {0}")]
    Domain(String),
    /// No guest of that name.
    #[error("no guest named {0:?}")]
    NoSuchGuest(String),
    /// A guest of that name already exists (running or starting).
    #[error("guest {0:?} already exists")]
    GuestExists(String),
    /// The guest is not in a state that allows the operation.
    #[error("guest {name:?} is {state}: cannot {op}")]
    BadState {
        /// Guest.
        name: String,
        /// Its state.
        state: String,
        /// The refused operation.
        op: &'static str,
    },
    /// A security driver failed.
    #[error("security driver: {0}")]
    Driver(#[from] svirt_drivers::DriverError),
    /// Several restore errors (restore runs to the end and reports all).
    #[error("restore of guest {name:?}: {}", .errors.join("; "))]
    Restore {
        /// Guest.
        name: String,
        /// Every error, as text.
        errors: Vec<String>,
    },
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] svirt_store::Error),
    /// The store failed while opening what a model needs from it.
    #[error("store: {what}: {source}")]
    StoreFor {
        /// What was being opened (`uid allocator`, `level allocator`).
        what: &'static str,
        /// The store's error.
        #[source]
        source: svirt_store::Error,
    },
    /// A cgroup operation failed.
    #[error("cgroup {path}: {source}")]
    Cgroup {
        /// The cgroup file or directory.
        path: PathBuf,
        /// The system error.
        source: io::Error,
    },
    /// QEMU could not be started or died during start.
    #[error("qemu: {0}")]
    Qemu(String),
    /// The QMP conversation failed.
    #[error("qmp: {0}")]
    Qmp(String),
    /// QEMU answered a command with an error.
    #[error("qmp command failed: {class}: {desc}")]
    QmpCommand {
        /// QMP error class.
        class: String,
        /// QMP error description.
        desc: String,
    },
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file.
        path: PathBuf,
        /// The system error.
        source: io::Error,
    },
    /// A fault injection point fired (`SVIRT_FAULT`) in a mode that returns an error.
    #[error("injected fault at {0}")]
    Fault(String),
}

impl ManagerError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        ManagerError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Result alias of the crate.
pub type Result<T, E = ManagerError> = std::result::Result<T, E>;
