//! Builds Sluice's operational events (`sluice.subscription.disabled`, `...enabled`,
//! `sluice.endpoint.unhealthy`, `...recovered`) as messages of the subscription's workspace,
//! matched against its subscriptions from the configuration copy in memory, leaving out the
//! subscription the event is about. Nothing here touches the database: the attempts and the
//! config watcher hand what this builds to the writer, which stores it like a publish.

use bytes::Bytes;
use chrono::Utc;
use sluice_core::envelope::build_envelope;
use sluice_core::ids::{IdKind, new_id};
use sluice_core::operational::{LastError, Notice, redact_url};

use crate::state::config_copy::{ConfigSnapshot, Subscription};
use crate::work::{NewMessage, OperationalEvent};

/// The envelope format's version, as ingest writes it.
const ENVELOPE_VERSION: u32 = 1;

/// Why an operational event is published.
pub(crate) struct Cause<'a> {
    /// `sluice_core::operational`'s event name.
    pub(crate) event_type: &'static str,
    /// A stable reason code (see `sluice_core::operational::Notice`).
    pub(crate) reason: &'a str,
    /// The reason for people.
    pub(crate) message: &'a str,
    pub(crate) last_error: Option<&'a LastError>,
    /// Makes a repeat of the same event (by another replica) harmless; see the watcher.
    pub(crate) idempotency_key: Option<String>,
}

/// The operational event about `subscription`, for the other subscriptions of its
/// workspace in `snapshot` that filter it.
pub(crate) fn build(
    snapshot: &ConfigSnapshot,
    subscription: &Subscription,
    cause: Cause<'_>,
) -> OperationalEvent {
    let endpoint_url = redact_url(&subscription.endpoint.url, subscription.endpoint.slack);
    let payload = Notice {
        subscription_id: &subscription.id,
        endpoint_url: &endpoint_url,
        reason: cause.reason,
        message: cause.message,
        last_error: cause.last_error,
    }
    .payload_json();
    let now = Utc::now();
    let id = new_id(IdKind::Message);
    let envelope = build_envelope(
        &id,
        cause.event_type,
        ENVELOPE_VERSION,
        now,
        &subscription.workspace_id,
        &payload,
    );
    let subscription_ids = snapshot
        .matching(&subscription.workspace_id, cause.event_type)
        .filter(|s| s.id != subscription.id)
        .map(|s| s.id.clone())
        .collect();
    tracing::info!(
        subscription_id = %subscription.id,
        workspace_id = %subscription.workspace_id,
        event_type = cause.event_type,
        message_id = %id,
        reason = cause.reason,
        "operational event"
    );
    OperationalEvent {
        message: NewMessage {
            id,
            workspace_id: subscription.workspace_id.clone(),
            event_type: cause.event_type.to_owned(),
            envelope: Bytes::from(envelope),
            idempotency_key: cause.idempotency_key,
            traceparent: None,
            tracestate: None,
            create_ms: now.timestamp_millis(),
            ordered: None,
        },
        subscription_ids,
    }
}
