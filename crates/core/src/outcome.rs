//! The vocabulary for how a delivery attempt failed and where a delivery stands, with the
//! stable snake_case strings stored in the database and shown in the API.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why one delivery attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptErrorKind {
    /// No complete response within the per-attempt timeout.
    Timeout,
    /// The TCP connection could not be made (refused, unreachable, reset).
    Connect,
    /// The host name did not resolve.
    Dns,
    /// The TLS handshake failed (bad certificate, protocol mismatch).
    Tls,
    /// Every address the name resolved to is forbidden by the egress rules.
    EgressDenied,
    /// The endpoint answered with a redirect, which is not followed.
    Redirect,
    /// The endpoint answered with a status other than 2xx.
    HttpStatus,
    /// The response body could not be read.
    Body,
    /// Anything else.
    Other,
}

impl AttemptErrorKind {
    /// Every kind, in declaration order.
    pub const ALL: [AttemptErrorKind; 9] = [
        AttemptErrorKind::Timeout,
        AttemptErrorKind::Connect,
        AttemptErrorKind::Dns,
        AttemptErrorKind::Tls,
        AttemptErrorKind::EgressDenied,
        AttemptErrorKind::Redirect,
        AttemptErrorKind::HttpStatus,
        AttemptErrorKind::Body,
        AttemptErrorKind::Other,
    ];

    /// The stored and displayed name, in snake_case.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptErrorKind::Timeout => "timeout",
            AttemptErrorKind::Connect => "connect",
            AttemptErrorKind::Dns => "dns",
            AttemptErrorKind::Tls => "tls",
            AttemptErrorKind::EgressDenied => "egress_denied",
            AttemptErrorKind::Redirect => "redirect",
            AttemptErrorKind::HttpStatus => "http_status",
            AttemptErrorKind::Body => "body",
            AttemptErrorKind::Other => "other",
        }
    }
}

/// Where a delivery (one message to one subscription) stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting for its first attempt or for a retry.
    Pending,
    /// An attempt got a 2xx response.
    Succeeded,
    /// Every attempt in the schedule failed, or the failure was not retryable.
    Failed,
    /// Stopped before success, for example because the subscription was deleted.
    Cancelled,
}

impl DeliveryStatus {
    /// Every status, in declaration order.
    pub const ALL: [DeliveryStatus; 4] = [
        DeliveryStatus::Pending,
        DeliveryStatus::Succeeded,
        DeliveryStatus::Failed,
        DeliveryStatus::Cancelled,
    ];

    /// The stored and displayed name, in snake_case.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Cancelled => "cancelled",
        }
    }

    /// Whether no further attempts will be made on their own (a manual retry still can).
    pub fn is_final(self) -> bool {
        !matches!(self, DeliveryStatus::Pending)
    }
}

/// A string that names no variant of one of this module's enums.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("unknown {what} `{value}`; expected one of: {expected}")]
pub struct UnknownVariant {
    /// What was being parsed ("attempt error kind").
    pub what: &'static str,
    /// The input, shortened.
    pub value: String,
    /// The accepted names, comma-separated.
    pub expected: String,
}

impl FromStr for AttemptErrorKind {
    type Err = UnknownVariant;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_variant(s, "attempt error kind", &Self::ALL, |k| k.as_str())
    }
}

impl FromStr for DeliveryStatus {
    type Err = UnknownVariant;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_variant(s, "delivery status", &Self::ALL, |k| k.as_str())
    }
}

impl fmt::Display for AttemptErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn parse_variant<T: Copy>(
    s: &str,
    what: &'static str,
    all: &[T],
    name: impl Fn(T) -> &'static str,
) -> Result<T, UnknownVariant> {
    all.iter()
        .copied()
        .find(|v| name(*v) == s)
        .ok_or_else(|| UnknownVariant {
            what,
            value: s
                .chars()
                .take(64)
                .collect::<String>()
                .escape_debug()
                .to_string(),
            expected: all.iter().map(|v| name(*v)).collect::<Vec<_>>().join(", "),
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn attempt_error_kinds() {
        let cases = [
            (AttemptErrorKind::Timeout, "timeout"),
            (AttemptErrorKind::Connect, "connect"),
            (AttemptErrorKind::Dns, "dns"),
            (AttemptErrorKind::Tls, "tls"),
            (AttemptErrorKind::EgressDenied, "egress_denied"),
            (AttemptErrorKind::Redirect, "redirect"),
            (AttemptErrorKind::HttpStatus, "http_status"),
            (AttemptErrorKind::Body, "body"),
            (AttemptErrorKind::Other, "other"),
        ];
        assert_eq!(cases.len(), AttemptErrorKind::ALL.len());
        for (kind, name) in cases {
            assert_eq!(kind.as_str(), name);
            assert_eq!(kind.to_string(), name);
            assert_eq!(name.parse::<AttemptErrorKind>(), Ok(kind));
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{name}\""));
        }
    }

    #[test]
    fn delivery_statuses() {
        let cases = [
            (DeliveryStatus::Pending, "pending", false),
            (DeliveryStatus::Succeeded, "succeeded", true),
            (DeliveryStatus::Failed, "failed", true),
            (DeliveryStatus::Cancelled, "cancelled", true),
        ];
        assert_eq!(cases.len(), DeliveryStatus::ALL.len());
        for (status, name, is_final) in cases {
            assert_eq!(status.as_str(), name);
            assert_eq!(status.to_string(), name);
            assert_eq!(name.parse::<DeliveryStatus>(), Ok(status));
            assert_eq!(status.is_final(), is_final);
            assert_eq!(
                serde_json::from_str::<DeliveryStatus>(&format!("\"{name}\"")).unwrap(),
                status
            );
        }
    }

    #[test]
    fn rejects_unknown_names() {
        for input in [
            "",
            "Timeout",
            "TIMEOUT",
            "egress-denied",
            "egressDenied",
            " dns",
            "x",
        ] {
            assert!(input.parse::<AttemptErrorKind>().is_err(), "{input:?}");
        }
        for input in ["", "Pending", "canceled", "success", "pending "] {
            assert!(input.parse::<DeliveryStatus>().is_err(), "{input:?}");
        }
        assert_eq!(
            "canceled"
                .parse::<DeliveryStatus>()
                .unwrap_err()
                .to_string(),
            "unknown delivery status `canceled`; expected one of: pending, succeeded, failed, cancelled"
        );
    }
}
