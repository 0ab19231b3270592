//! The one test kit of Sluice: everything the suites of every crate stand on, so each piece
//! exists once. Fresh databases on SQLite and PostgreSQL ([`database`]), gRPC clients with
//! bearer keys ([`clients`]), a recording HTTP receiver ([`receiver`]) and a raw TCP peer
//! ([`raw`]), the control plane ([`control`]), the data plane ([`data`]) and both wired
//! together ([`planes`]) in-process on `127.0.0.1:0`, the real binary as child processes
//! ([`process`]) and as a cluster of replicas on one database under load ([`cluster`]), a
//! cuttable TCP forwarder for network faults ([`proxy`]), an OTLP trace collector ([`otlp`]), and the small assertions
//! ([`assertions`]).
//!
//! Only tests depend on it (as a dev-dependency), so it panics on anything unexpected: a
//! failed set-up is a failed test.

#![allow(clippy::unwrap_used)]

pub mod assertions;
pub mod clients;
pub mod cluster;
pub mod control;
pub mod data;
pub mod database;
pub mod otlp;
pub mod planes;
pub mod process;
pub mod proxy;
pub mod raw;
pub mod raw_grpc;
pub mod receiver;
pub mod tls;

use std::time::Duration;

pub use assertions::{assert_invalid, field_violations};
pub use clients::{
    Bearer, Clients, Intercepted, all_attempts, authed, connect, publish_when_configured,
};
pub use control::ControlHarness;
pub use database::{Backend, TestDatabase, backends, count_rows, max_revision};

/// The admin key of every in-process control plane and deployment.
pub const ADMIN_KEY: &str = "sk_test_admin_key_0123456789";
/// The internal token between the planes in every test.
pub const INTERNAL_TOKEN: &str = "it_test_internal_token_0123456789";
/// The master key that seals the stored secrets in every test (`SLUICE_MASTER_KEY`'s form:
/// base64 of the 32 bytes `sluice-test-master-key-32-bytes!`).
pub const MASTER_KEY: &str = "c2x1aWNlLXRlc3QtbWFzdGVyLWtleS0zMi1ieXRlcyE=";

/// The keyring of [`MASTER_KEY`].
pub fn keyring() -> sluice_core::sealing::Keyring {
    sluice_core::sealing::Keyring::parse(MASTER_KEY).unwrap()
}

/// How long a test waits for something that should happen promptly (a POST, an outcome, a
/// configuration revision) before it fails: a hang is a failure, not a pass. Generous, for
/// loaded CI machines; a passing test never waits this long.
pub const WAIT: Duration = Duration::from_secs(20);

/// A free loopback address: bound, then released, for a server that must be started
/// later on a known address (or never, for a closed port).
pub fn free_addr() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// The current time in unix seconds.
pub fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}
