//! How svirt reaches host objects: the one owner of path resolution and tree walks.
//!
//! Every layer that touches a host object (the planner, every security driver, the jail)
//! reaches it through this crate, through file descriptors:
//!
//! - [`resolve`]: a path as a domain XML spells it, walked one component at a time with
//!   `openat(O_PATH|O_NOFOLLOW)` from a directory fd, each symlink read and judged by the
//!   caller's rule before it is followed. The canonical path it returns has no symlink in
//!   any component, so every later open of it can refuse links outright.
//! - [`FsRoot`] / [`Object`] / [`Dir`] ([`open`]): a canonical path opened beneath a root
//!   with `openat2(RESOLVE_NO_SYMLINKS|RESOLVE_NO_MAGICLINKS|RESOLVE_IN_ROOT)` (or the
//!   equivalent per-component fallback), its identity checked against the one planned,
//!   and every change (xattrs, owner, mode) made on that fd.
//! - [`walk`]: the tree walk (no symlink followed, no mount crossed, a directory swapped
//!   between its stat and its open skipped): sequential ([`walk::walk`], the planner's and
//!   the DAC driver's) and parallel on a thread pool ([`walk::par_walk`], the SELinux
//!   relabel engine's), both entering directories by one rule ([`walk::enter`]).
//!
//! Nothing here judges whether an object may be given to a guest: that is the object
//! policy's (`svirt_domain::object_policy`), which this crate's callers apply to what it
//! reaches.

pub mod open;
pub mod resolve;
pub mod walk;

pub use open::*;
