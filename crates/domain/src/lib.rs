//! libvirt domain XML to one resource model and a per-model labeling plan.
//!
//! Three steps, each usable alone:
//! 1. [`parse`]: XML → [`Domain`] (everything QEMU and the planner need) + warnings;
//! 2. [`build_resources`]: [`Domain`] → every host object once ([`Resource`]), resolved
//!    through [`Host`] with fds, system paths refused, qcow2 chains read from headers
//!    only for images declared qcow2;
//! 3. [`plan()`]: resources → [`Plan`]: the label/owner/access every model gives each
//!    resource, and why.
//!
//! [`plan_xml`] does all three; [`report()`] renders a plan as the stable JSON/text of
//! `svirt plan`. `model` is the contract every driver consumes.

pub mod devices;
pub mod domain;
pub mod error;
pub mod host;
pub mod model;
pub mod object_policy;
pub mod parse;
pub mod planner;
pub mod qcow2;
pub mod report;
pub mod resources;
pub mod smack;

pub use devices::PlainDevice;
pub use domain::*;
pub use error::{Error, Result};
pub use host::{FileInfo, FileKind, Host, Resolved, SYSTEM_PATHS, TreeEntry};
pub use model::*;
pub use object_policy::{ObjectStat, SYSTEM_TREES, block_descendants};
pub use parse::{MAX_XML_BYTES, parse};
pub use planner::{PlanConfig, Planned, SelinuxContexts, dac_ids, dac_reason, plan, plan_xml};
/// The labels a plan gives one resource, keyed by model (`None`: untouched).
pub use report::resource_labels as labels_of;
pub use report::{PlanReport, ResourceReport, guest_labels, render_text, report};
pub use resources::{
    MAX_CHAIN_DEPTH, Resources, SYSTEM_FIRMWARE_DIRS, build_resources, check_trees,
    in_system_firmware_dir, kind_name, tree_entries_change,
};
