//! One module per subcommand.

pub mod label;
