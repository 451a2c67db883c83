//! svirtd as a library: the API types with their OpenAPI description, and the HTTP server.
//! The `svirtd` binary (src/main.rs) parses its options, opens the manager and serves.

pub mod api;
pub mod server;
