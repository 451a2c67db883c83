//! `svirt`: the command line of svirt.
fn main() {}
