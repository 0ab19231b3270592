//! The HTTP sender of webhook attempts: one signed POST per call, behind the egress guard.
//!
//! This crate turns a prepared delivery (URL, message id, body, signing secrets, custom
//! headers) into exactly one HTTP attempt and reports what happened as an [`AttemptResult`].
//! It decides nothing about retries or scheduling and never touches a database or gRPC: the
//! data plane owns those and calls [`Sender::send`] for every attempt.
//!
//! Safety properties held here, because this is the only code that dials customer endpoints:
//! - the egress guard checks the address actually dialled (it is the DNS resolver reqwest
//!   uses), so a name that resolves to loopback, private or cloud-metadata space is refused
//!   unless allowed;
//! - redirects are never followed and no proxy is taken from the environment, so neither can
//!   route around the guard;
//! - every attempt is bounded by a connect timeout, a total timeout and a cap on the response
//!   body that is read;
//! - error messages never contain the URL (Slack webhook URLs carry their token in the path),
//!   signatures or header values.

mod config;
mod credentials;
mod egress;
mod excerpt;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod sender;
mod slack;

pub use config::{DEFAULT_USER_AGENT, SenderConfig};
pub use credentials::{
    EndpointCredentials, MAX_PEM_BYTES, MutualTlsClient, MutualTlsError, MutualTlsSettings,
    OAuth2Client, OAuth2Settings,
};
pub use egress::EgressDenied;
pub use sender::{
    AttemptResult, CustomHeaders, DeliveryRequest, MAX_RESPONSE_HEAD_BYTES, MAX_RESPONSE_HEADERS,
    SendOptions, Sender, SenderBuildError, redacted_url,
};
pub use slack::slack_message;

/// Re-exported so callers can match on [`AttemptResult::error_kind`] without naming core.
pub use sluice_core::outcome::AttemptErrorKind;
