//! libvirt domain XML to one resource model and a per-model labeling plan.
//!
//! `model` is the contract every driver consumes; parsing and planning fill it.

pub mod model;

pub use model::*;
