//! Sluice's domain types and pure logic: ids, event names and filters, the envelope, retry
//! policy, Standard Webhooks signing, secrets sealed at rest, egress rules and input validation.
//!
//! This crate does no I/O and knows nothing of protobuf or the database, so every other crate
//! can depend on it and every rule here can be tested as a plain function.

pub mod apikey;
pub mod egress;
pub mod envelope;
pub mod event;
pub mod ids;
pub mod operational;
pub mod outcome;
pub mod policy;
pub mod retention;
pub mod retry;
pub mod sealing;
pub mod signing;
pub mod signing_ed25519;
pub mod validate;
