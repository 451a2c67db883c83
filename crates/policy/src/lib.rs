//! A model of the SELinux virt policy rules that isolate guests: decide and explain. Pure.
//!
//! The rules are data ([`generated`]) taken from Debian's `selinux-policy-default`
//! (refpolicy 2.20221101) by `tools/gen_table.py`: every type-enforcement allow/dontaudit
//! rule for the virt domains (`svirt_t`, `qemu_t`, `svirt_prot_exec_t`) and `virtd_t` on the
//! file, device, `process` and `unix_stream_socket` classes towards the modelled types,
//! the booleans those rules depend on, and every constraint (UBAC, RBAC, MCS) on those
//! classes. [`decide`] evaluates them in the kernel's order; a differential test
//! (`tests/differential.rs`) checks the verdicts against libsepol on the real policy.
//!
//! Wiring for the CLI (`svirt explain`):
//!
//! ```
//! use svirt_labels::Context;
//! use svirt_policy::{Booleans, explain, parse_avc, run_batch};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // svirt explain SCONTEXT TCONTEXT CLASS PERM... [--bool name=on]...
//! let s = Context::parse("system_u:system_r:svirt_t:s0:c1,c2")?;
//! let t = Context::parse("system_u:object_r:nfs_t:s0")?;
//! let mut booleans = Booleans::defaults();
//! for b in ["virt_use_samba=on"] {
//!     booleans.set_from_str(b)?; // errors on a boolean the policy lacks
//! }
//! let e = explain(&s, &t, "file", &["read", "write"], &booleans);
//! print!("{e}"); // "deny: …\n  why: …\n  fix: virt_use_nfs=on would allow it …"
//! assert!(e.decision.is_denied());
//! let exit_code = if e.decision.is_allowed() { 0 } else { 1 };
//! # let _ = exit_code;
//!
//! // svirt explain --batch  (stdin -> stdout)
//! let input = "system_u:system_r:svirt_t:s0:c1,c2\tsystem_u:object_r:svirt_image_t:s0:c1,c2\tfile\tread,write\n";
//! let mut out = Vec::new();
//! run_batch(input.as_bytes(), &mut out)?; // run_batch(std::io::stdin().lock(), std::io::stdout().lock())
//! assert_eq!(out, b"allow\n");
//!
//! // svirt explain --avc LINE  (or each line of stdin that is_avc_line)
//! let rec = parse_avc("type=AVC msg=audit(1700000000.123:45): avc:  denied  { read } for  pid=4242 comm=\"qemu-system-x86\" name=\"disk.img\" dev=\"vda\" ino=12 scontext=system_u:system_r:svirt_t:s0:c1,c2 tcontext=system_u:object_r:svirt_image_t:s0:c3,c4 tclass=file permissive=0")?;
//! // (name the guests by looking rec.scontext / rec.tcontext levels up in svirtd)
//! print!("{}", rec.explain(&Booleans::defaults()));
//! # Ok(())
//! # }
//! ```

mod avc;
mod batch;
mod decide;
mod error;
mod explain;
#[rustfmt::skip]
pub mod generated;
mod model;
pub mod table;

pub use avc::{AvcRecord, is_avc_line, parse_avc};
pub use batch::{BatchRequest, BatchSummary, answer_line, parse_batch_line, run_batch};
pub use decide::{Decision, Denial, Reason, decide};
pub use error::PolicyError;
pub use explain::{Explanation, explain};
pub use model::{
    AccessVector, Booleans, Outcome, PermVerdict, UnknownToModel, access_vector, class,
    modelled_booleans,
};
