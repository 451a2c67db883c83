//! The BPF-LSM driver: sVirt's MCS isolation on hosts without SELinux, enforced by the
//! BPF LSM programs of `svirt-bpf`.
//!
//! The guest's level is SELinux's (allocated the same way, from the same ledger); every
//! object of the plan is labeled, by identity, with the level and access SELinux's plan
//! gives it; the VMM's host needs (libraries, firmware, base devices, the emulator) get
//! `s0` labels of their kind. The prepared child labels itself before exec, so QEMU runs
//! as the guest from its first instruction. What each guest labeled is recorded in a file
//! per guest under the state directory, written durably before the maps change, so a
//! restore or the open's recovery removes exactly those labels (a label several guests
//! hold stays until the last one stops), and when no guest is left, the programs and maps
//! are unpinned. See docs/drivers/bpf-lsm.md.

pub mod driver;
pub mod host;
mod records;
mod registration;

pub use driver::{BpfLsmConfig, BpfLsmDriver};
pub use host::{btf_find_func, host_checks, usable};
pub(crate) use registration::REGISTRATION;
pub use registration::{BPFFS, PIN_ROOT, instance};
