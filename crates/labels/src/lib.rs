//! Security labels for svirt: SELinux security contexts with MCS/MLS ranges.
//!
//! Everything here is pure (no I/O) so that every other layer, the fuzzers and the
//! property tests can use it freely. Parsing and canonical formatting follow the Linux
//! kernel (`security/selinux/ss/mls.c`): what the kernel would accept we accept, what it
//! would reject we reject with an error naming the offending position and token, and the
//! canonical text is byte-for-byte what the kernel prints back.

mod category;
mod context;
mod error;
mod level;
pub mod setrans;
pub mod smack;

pub use category::{CategorySet, MAX_CATEGORIES};
pub use context::{Context, Identifier};
pub use error::{ErrorKind, ParseError};
pub use level::{Level, LevelOrdering, MAX_SENSITIVITIES, MlsLimits, MlsRange};
pub use smack::{SmackLabel, SmackLabelError};
