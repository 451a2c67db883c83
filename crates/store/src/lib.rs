//! The embedded transactional store (redb): label and uid reservations, originals, guests.
//!
//! One [`Store`] per state directory holds everything svirt must remember across crashes
//! (see `docs/store.md` for the tables and why redb):
//! - level reservations, written by the [`LevelAllocator`] (unique dynamic MCS pairs, static
//!   levels with owners and sharing);
//! - uid/gid reservations, written by the [`IdAllocator`];
//! - originals: every object's security state before svirt changed it, reference counted by
//!   guest ([`Store::record_original_if_absent`], [`Store::release_original`]);
//! - guests: the manager's opaque guest records ([`Store::put_guest`] and friends).
//!
//! Every mutation is a transaction committed durably (fsync) before the call returns.

mod claims;
mod error;
mod ids;
mod levels;
mod object;
mod originals;
pub mod pairs;
mod store;

pub use claims::{ClaimItem, ClaimRecord, ClaimUse};
pub use error::{Error, Result};
pub use ids::{
    DEFAULT_ID_FIRST, DEFAULT_ID_LAST, IdAllocator, IdConfig, MAX_ID_RANGE, RangeConflict,
};
pub use levels::{AllocatorConfig, AllocatorStats, LevelAllocator};
pub use object::{ObjectIdentity, ObjectKey, ObjectLock, ObjectLocks, Timestamp};
pub use originals::{Original, OriginalRecord, RecordOutcome};
pub use store::{
    DB_FILE, GuestRecord, LedgerWrite, LevelReservation, MAX_OWNER_LEN, ReservationKind,
    SCHEMA_VERSION, Store,
};
