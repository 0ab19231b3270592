//! The `sluice` binary as a library: configuration, telemetry, serving each plane, signals.
//! `main.rs` only parses flags and calls in here, so tests run the same code on port 0.

pub mod cli;
pub mod dataplane;
pub mod keys;
pub mod listen;
pub mod policy_flags;
pub mod prometheus;
pub mod publish;
pub mod server;
pub mod shutdown;
pub mod telemetry;
