//! Sluice's own operational events: what happened to a subscription or its endpoint
//! (disabled, enabled again, its circuit breaker opened or closed), published into the
//! subscription's workspace like any other event. Their names are reserved (`sluice.` is
//! Sluice's family: users neither publish nor define event types in it), they are in every
//! workspace's catalog, and their payload is built here, once, for both planes.

use serde_json::json;

/// The family every operational event belongs to.
pub const RESERVED_PREFIX: &str = "sluice.";

/// A subscription was disabled: 410 Gone, persistent failure, or a user.
pub const SUBSCRIPTION_DISABLED: &str = "sluice.subscription.disabled";
/// A disabled subscription was enabled again.
pub const SUBSCRIPTION_ENABLED: &str = "sluice.subscription.enabled";
/// The endpoint's circuit breaker opened: Sluice stopped sending to it for a while.
pub const ENDPOINT_UNHEALTHY: &str = "sluice.endpoint.unhealthy";
/// The endpoint's circuit breaker closed again: it answers.
pub const ENDPOINT_RECOVERED: &str = "sluice.endpoint.recovered";

/// An operational event type as the catalog lists it.
#[derive(Clone, Copy, Debug)]
pub struct BuiltinEventType {
    pub name: &'static str,
    pub description: &'static str,
}

/// The catalog entries every workspace has, sorted by name.
pub const BUILTIN_EVENT_TYPES: [BuiltinEventType; 4] = [
    BuiltinEventType {
        name: ENDPOINT_RECOVERED,
        description: "Sluice: the endpoint's circuit breaker closed; deliveries to it resumed.",
    },
    BuiltinEventType {
        name: ENDPOINT_UNHEALTHY,
        description: "Sluice: the endpoint's circuit breaker opened after consecutive failures; \
                      deliveries to it pause and a probe follows.",
    },
    BuiltinEventType {
        name: SUBSCRIPTION_DISABLED,
        description: "Sluice: a subscription was disabled (410 Gone, persistent failure, or a \
                      user); nothing is delivered to it until it is enabled.",
    },
    BuiltinEventType {
        name: SUBSCRIPTION_ENABLED,
        description: "Sluice: a disabled subscription was enabled again.",
    },
];

/// Whether a normalised event name is in Sluice's reserved family.
pub fn is_reserved(normalized_name: &str) -> bool {
    normalized_name.starts_with(RESERVED_PREFIX)
}

/// The built-in catalog entry of this normalised name, if it is one.
pub fn builtin(normalized_name: &str) -> Option<&'static BuiltinEventType> {
    BUILTIN_EVENT_TYPES
        .iter()
        .find(|t| t.name == normalized_name)
}

/// The last attempt's failure, as an operational event reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LastError {
    /// The HTTP status answered, if any.
    pub status_code: Option<u16>,
    /// The error's kind (`timeout`, `connect`, ...), empty for an HTTP status alone.
    pub kind: String,
    /// The error's text, for people.
    pub message: String,
}

/// What an operational event says.
#[derive(Clone, Debug)]
pub struct Notice<'a> {
    pub subscription_id: &'a str,
    /// The endpoint's URL without credentials ([`redact_url`]).
    pub endpoint_url: &'a str,
    /// A stable code: `endpoint_gone`, `persistent_failure`, `user`, `consecutive_failures`,
    /// `probe_succeeded`.
    pub reason: &'a str,
    /// The reason for people.
    pub message: &'a str,
    pub last_error: Option<&'a LastError>,
}

impl Notice<'_> {
    /// The event's payload as JSON text.
    pub fn payload_json(&self) -> String {
        let last_error = self.last_error.map(|e| {
            json!({
                "status_code": e.status_code,
                "kind": e.kind,
                "message": e.message,
            })
        });
        json!({
            "subscription_id": self.subscription_id,
            "endpoint_url": self.endpoint_url,
            "reason": self.reason,
            "message": self.message,
            "last_error": last_error,
        })
        .to_string()
    }
}

/// An endpoint URL fit to show in an event: no user info, query or fragment (they may carry
/// credentials), and for a Slack incoming webhook, whose path is its secret, no path.
pub fn redact_url(url: &url::Url, slack: bool) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    if slack {
        shown.set_path("/redacted");
    }
    shown.to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn urls_lose_their_credentials() {
        let cases = [
            (
                "https://user:pw@example.com/hook?token=x#f",
                false,
                "https://example.com/hook",
            ),
            (
                "https://hooks.slack.com/services/T0/B0/secret",
                true,
                "https://hooks.slack.com/redacted",
            ),
            ("http://127.0.0.1:8080/a", false, "http://127.0.0.1:8080/a"),
        ];
        for (url, slack, want) in cases {
            assert_eq!(redact_url(&url::Url::parse(url).unwrap(), slack), want);
        }
    }

    #[test]
    fn the_catalog_is_sorted_and_reserved() {
        let names: Vec<&str> = BUILTIN_EVENT_TYPES.iter().map(|t| t.name).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
        assert!(names.iter().all(|n| is_reserved(n)));
        for name in names {
            assert_eq!(crate::event::normalize_event_name(name).unwrap(), name);
        }
        assert!(!is_reserved("sluicer.x"));
    }

    #[test]
    fn the_payload_carries_the_reason_and_last_error() {
        let error = LastError {
            status_code: Some(410),
            kind: String::new(),
            message: "gone".into(),
        };
        let json: serde_json::Value = serde_json::from_str(
            &Notice {
                subscription_id: "sub_1",
                endpoint_url: "https://e.example/",
                reason: "endpoint_gone",
                message: "the endpoint answered 410 Gone",
                last_error: Some(&error),
            }
            .payload_json(),
        )
        .unwrap();
        assert_eq!(json["subscription_id"], "sub_1");
        assert_eq!(json["reason"], "endpoint_gone");
        assert_eq!(json["last_error"]["status_code"], 410);
    }
}
