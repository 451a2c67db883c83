//! AppArmor: a profile per guest, generated from its plan ([`profile`]), and its audit
//! records read back ([`audit`]).
//!
//! So far the profile generator, proven against the real `apparmor_parser` for every
//! conformance case (`tests/apparmor_conformance.rs`); the driver that loads profiles,
//! enters them at exec and removes them comes with its lab scenario (it is not
//! registered until an AppArmor kernel has enforced it).

pub mod audit;
pub mod profile;
