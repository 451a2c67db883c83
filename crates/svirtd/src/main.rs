//! svirtd: the svirt daemon.
fn main() {}
