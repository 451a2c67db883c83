//! The SMACK driver: a SMACK label per guest, on its VMM and its objects, with only the
//! rules its plan needs.
//!
//! The guest's label is its MCS level in words (`svirt-c41-c264`,
//! [`svirt_labels::SmackLabel::for_guest`]): the level is drawn by the same allocator, from
//! the same ledger, as SELinux's, so labels never collide, persist across restarts of
//! svirtd and are released at stop. The prepared child enters the label before exec
//! (`/proc/thread-self/attr/smack/current`, while it still holds `CAP_MAC_ADMIN`; the
//! VMM itself keeps no capability, so it can neither change its label nor override SMACK).
//! Objects get `security.SMACK64` through the relabel engine (originals in the ledger,
//! restored exactly when their last user stops): private ones the guest's label, shared
//! ones `svirt-shared`, read-only content `svirt-content` ([`svirt_domain::smack`]). A
//! guest is given one rule per such label its plan uses (`load2`), recorded per guest
//! before it is loaded and revoked when no running guest of that label needs it. See
//! docs/drivers/smack.md.

pub mod audit;
pub mod driver;
pub mod host;
mod registration;
pub mod rules;

pub use driver::{SmackConfig, SmackDriver};
pub(crate) use registration::REGISTRATION;
