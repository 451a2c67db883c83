//! Placeholder so the workspace manifest parses until the allocator bench lands.
fn main() {}
