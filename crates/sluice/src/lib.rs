//! The `sluice` binary as a library: configuration, telemetry, serving each plane, signals.
//! `main.rs` only parses flags and calls in here, so tests run the same code on port 0.

pub mod cli;
#[path = "dataplane_stub.rs"]
pub mod dataplane;
pub mod server;
pub mod shutdown;
pub mod telemetry;
