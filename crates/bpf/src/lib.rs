//! svirt's BPF-LSM enforcer: sVirt's MCS isolation, enforced by BPF LSM programs on hosts
//! without SELinux.
//!
//! The programs (`bpf/svirt_mcs.bpf.c`, compiled with clang at build time) decide as SELinux
//! decides for `svirt_t` under the MCS policy: a guest's VMM may use an object only if the
//! object's kind permits the access and the guest's categories contain the object's
//! (`bpf/mcs.h`). This crate holds what user space needs around them: the labels in the
//! programs' layout ([`label`]), loading, attaching and pinning them ([`enforcer`]), the
//! decision alone for tests ([`decide`]) and the denial events ([`events`]).
//!
//! Security drivers use it through `svirt-drivers`' BPF-LSM driver; nothing here knows a
//! domain or a plan.

pub mod decide;
pub mod enforcer;
pub mod error;
pub mod events;
pub mod label;

mod skel;

pub use error::BpfError;
pub use label::{Allow, InodeKey, ObjectLabel, SubjectLabel};
