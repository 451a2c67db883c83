//! AppArmor: a profile per guest, generated from its plan ([`profile`]), loaded for its
//! VMM and removed when the guest is gone ([`driver`]); its audit records read back
//! ([`audit`]).

pub mod audit;
pub mod driver;
pub mod profile;
mod registration;

pub use driver::{ApparmorConfig, ApparmorDriver};
pub(crate) use registration::REGISTRATION;
