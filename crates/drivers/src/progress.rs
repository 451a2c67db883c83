//! Progress of tree walks (labeling, restoring a share) and their fault points, the same
//! for every driver that walks trees (the relabel engine, DAC's trees): the manager shows
//! them whatever the model.

use std::path::PathBuf;
use std::sync::Arc;

/// A progress report for a tree: `done` of `total` entries in `phase`.
#[derive(Debug, Clone)]
pub struct Progress {
    /// The tree's root.
    pub path: PathBuf,
    /// What is being done.
    pub phase: Phase,
    /// Entries handled so far.
    pub done: u64,
    /// Entries to handle (known once the scan is over; during the scan, entries seen).
    pub total: u64,
}

/// Phase of a tree operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Walking and reading the original labels.
    Scanning,
    /// Writing the new labels.
    Labeling,
    /// Writing the original labels back.
    Restoring,
}

/// A progress callback (called from worker threads; keep it cheap).
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// A fault hook for tests: called with a point name (`after-record`, `after-label`); it may
/// kill the process (crash tests) or return an error name to fail the operation there.
pub type FaultHook = Arc<dyn Fn(&str) -> bool + Send + Sync>;
