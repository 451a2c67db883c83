//! One module per subcommand.

pub mod label;
pub mod client;
pub mod guest;
pub mod host_validate;
pub mod plan;
