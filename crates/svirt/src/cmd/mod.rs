//! One module per subcommand.

pub mod client;
pub mod console;
pub mod explain;
pub mod guest;
pub mod host_validate;
pub mod label;
pub mod plan;
