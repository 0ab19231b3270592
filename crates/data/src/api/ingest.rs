//! `IngestService`: publishers' events come in here. Each is authenticated by its API key,
//! validated, turned into its envelope once, matched against the workspace's subscriptions
//! and queued for the group-commit writer; the answer goes out once the event is durable.

use std::pin::Pin;
use std::sync::Arc;
use tracing::Instrument;

use bytes::Bytes;
use chrono::{DateTime, TimeDelta, Utc};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use sluice_core::apikey::hash_api_key;
use sluice_core::envelope::{build_envelope, validate_payload};
use sluice_core::event::normalize_event_name;
use sluice_core::ids::{IdKind, new_id};
use sluice_core::validate::bounded_text;
use sluice_proto::data::v1::ingest_service_server::IngestService;
use sluice_proto::data::v1::{
    PublishRequest, PublishResponse, PublishStreamRequest, PublishStreamResponse,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::api::quota::PublishQuota;
use crate::error::{DataError, Violation};
use crate::shutdown::Shutdown;
use crate::state::config_copy::{ConfigCopy, Subscription};
use crate::time::ms_from_timestamp;
use crate::work::{NewMessage, Ordered, PublishJob};
use sluice_proto::json::struct_to_json;

/// The longest idempotency key, in bytes.
pub(crate) const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;
/// The longest ordering key, in bytes.
pub(crate) const MAX_ORDERING_KEY_BYTES: usize = 256;
/// The envelope's version field: the envelope format, not the event's.
const ENVELOPE_VERSION: u32 = 1;
/// Events of one stream waiting for their commit; beyond it the stream stops reading until
/// some are answered, which bounds memory per stream.
const MAX_IN_FLIGHT_PER_STREAM: usize = 4096;
/// Responses buffered per stream before the stream waits for the client to read.
const STREAM_RESPONSE_BUFFER: usize = 1024;
/// The longest trace header kept; W3C's traceparent is 55 characters, tracestate at most
/// 32 entries.
const MAX_TRACE_HEADER_BYTES: usize = 512;
/// How far in the future an occurred_time may be (clock skew between services).
const MAX_OCCURRED_AHEAD: TimeDelta = TimeDelta::days(1);
/// The earliest accepted occurred_time: 2000-01-01T00:00:00Z. Anything earlier is a bug
/// (an unset clock, seconds passed as milliseconds) rather than an event.
const MIN_OCCURRED_MS: i64 = 946_684_800_000;

/// The IngestService implementation. Cheap to clone: a publish stream takes a copy.
#[derive(Clone)]
pub(crate) struct IngestApi {
    /// Subscriptions to match events against, and API keys to authenticate publishers.
    pub(crate) copy: Arc<ConfigCopy>,
    /// To the group-commit writer.
    pub(crate) publishes: mpsc::Sender<PublishJob>,
    /// The largest accepted payload, in bytes.
    pub(crate) max_payload_bytes: usize,
    /// How long an event may wait to be made durable before the publisher is told it was not.
    pub(crate) store_timeout: std::time::Duration,
    /// Events a second each workspace may publish (`--workspace-publish-rate`).
    pub(crate) quota: Arc<PublishQuota>,
    pub(crate) shutdown: Shutdown,
}

/// W3C trace context from the publisher's metadata.
#[derive(Clone, Debug, Default)]
pub(crate) struct TraceContext {
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl TraceContext {
    fn from_metadata(metadata: &MetadataMap) -> TraceContext {
        let read = |name: &str| {
            metadata
                .get(name)
                .and_then(|v| v.to_str().ok())
                .filter(|v| {
                    !v.is_empty()
                        && v.len() <= MAX_TRACE_HEADER_BYTES
                        && v.bytes().all(|b| (0x20..0x7f).contains(&b))
                })
                .map(str::to_owned)
        };
        let traceparent = read("traceparent").filter(|v| is_traceparent(v));
        // tracestate without a traceparent means nothing (W3C trace context, section 3.3).
        let tracestate = traceparent.as_ref().and_then(|_| read("tracestate"));
        TraceContext {
            traceparent,
            tracestate,
        }
    }
}

/// `version-traceid-parentid-flags` in lowercase hex, as W3C defines it.
fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    parts.len() >= 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1].bytes().any(|b| b != b'0')
        && hex(parts[2], 16)
        && parts[2].bytes().any(|b| b != b'0')
        && hex(parts[3], 2)
}

/// Who is publishing: the workspace their API key acts for, and the key's hash (to check,
/// event by event on a long stream, that the key was not revoked meanwhile).
pub(crate) struct Caller {
    pub(crate) workspace_id: String,
    key_hash: String,
}

impl Caller {
    /// Fails once the key has been revoked (or moved to another workspace).
    fn still_valid(&self, copy: &ConfigCopy) -> Result<(), DataError> {
        match copy.current().workspace_for_key_hash(&self.key_hash) {
            Some(workspace) if workspace == self.workspace_id => Ok(()),
            _ => Err(DataError::Unauthenticated(
                "the API key was revoked".to_owned(),
            )),
        }
    }
}

/// The caller, from the `authorization: Bearer sk_...` metadata.
pub(crate) fn authenticate(copy: &ConfigCopy, metadata: &MetadataMap) -> Result<Caller, DataError> {
    let Some(value) = metadata.get("authorization") else {
        return Err(DataError::Unauthenticated(
            "missing `authorization: Bearer sk_...` metadata".to_owned(),
        ));
    };
    let key = value
        .to_str()
        .ok()
        .and_then(|v| {
            let (scheme, key) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
        })
        .filter(|key| !key.is_empty())
        .ok_or_else(|| {
            DataError::Unauthenticated("authorization must be `Bearer <API key>`".to_owned())
        })?;
    let key_hash = hash_api_key(key);
    let workspace_id = copy
        .current()
        .workspace_for_key_hash(&key_hash)
        .map(str::to_owned)
        .ok_or_else(|| DataError::Unauthenticated("unknown or revoked API key".to_owned()))?;
    Ok(Caller {
        workspace_id,
        key_hash,
    })
}

/// An event that passed validation.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ValidEvent {
    pub(crate) event_type: String,
    pub(crate) payload_json: String,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) occurred_ms: Option<i64>,
    pub(crate) ordering_key: Option<String>,
}

/// Checks every field of a publish request, reporting all violations at once.
pub(crate) fn validate(
    request: &PublishRequest,
    max_payload_bytes: usize,
    now: DateTime<Utc>,
) -> Result<ValidEvent, DataError> {
    let mut violations = Vec::new();

    let event_type = match normalize_event_name(&request.event_type) {
        Ok(name) if sluice_core::operational::is_reserved(&name) => {
            violations.push(Violation::new(
                "event_type",
                "the `sluice.` family is reserved for Sluice's operational events",
            ));
            None
        }
        Ok(name) => Some(name),
        Err(e) => {
            violations.push(Violation::new("event_type", e.to_string()));
            None
        }
    };

    let payload_json = match (&request.payload, request.payload_json.is_empty()) {
        (Some(_), false) => {
            violations.push(Violation::new(
                "payload_json",
                "give the payload either as payload or as payload_json, not both",
            ));
            None
        }
        (None, true) => {
            violations.push(Violation::new(
                "payload_json",
                "is required: give the event's payload as a JSON object in payload_json (or as payload)",
            ));
            None
        }
        (Some(payload), true) => match struct_to_json(payload) {
            Ok(json) => check_payload(json, "payload", max_payload_bytes, &mut violations),
            Err(e) => {
                violations.push(Violation::new("payload", e.to_string()));
                None
            }
        },
        (None, false) => check_payload(
            request.payload_json.clone(),
            "payload_json",
            max_payload_bytes,
            &mut violations,
        ),
    };

    let idempotency_key = if request.idempotency_key.is_empty() {
        None
    } else if let Err(e) = bounded_text(&request.idempotency_key, MAX_IDEMPOTENCY_KEY_BYTES) {
        violations.push(Violation::new("idempotency_key", e.to_string()));
        None
    } else {
        Some(request.idempotency_key.clone())
    };

    let ordering_key = if request.ordering_key.is_empty() {
        None
    } else if let Err(e) = bounded_text(&request.ordering_key, MAX_ORDERING_KEY_BYTES) {
        violations.push(Violation::new("ordering_key", e.to_string()));
        None
    } else {
        Some(request.ordering_key.clone())
    };

    let mut occurred_ms = None;
    if let Some(occurred) = &request.occurred_time {
        let latest = now.timestamp_millis() + MAX_OCCURRED_AHEAD.num_milliseconds();
        match ms_from_timestamp(occurred) {
            None => violations.push(Violation::new(
                "occurred_time",
                "is not a valid timestamp (nanos must be within 0..999999999)",
            )),
            Some(ms) if ms < MIN_OCCURRED_MS => violations.push(Violation::new(
                "occurred_time",
                "is before 2000-01-01; was it given in milliseconds instead of seconds?",
            )),
            Some(ms) if ms > latest => violations.push(Violation::new(
                "occurred_time",
                "is more than a day in the future; check the publisher's clock",
            )),
            Some(ms) => occurred_ms = Some(ms),
        }
    }

    match (event_type, payload_json) {
        (Some(event_type), Some(payload_json)) if violations.is_empty() => Ok(ValidEvent {
            event_type,
            payload_json,
            idempotency_key,
            occurred_ms,
            ordering_key,
        }),
        _ => Err(DataError::InvalidArgument(violations)),
    }
}

fn check_payload(
    json: String,
    field: &str,
    max_bytes: usize,
    violations: &mut Vec<Violation>,
) -> Option<String> {
    match validate_payload(&json, max_bytes) {
        Ok(()) => Some(json),
        Err(e) => {
            violations.push(Violation::new(field, e.to_string()));
            None
        }
    }
}

/// Validates an event, builds its envelope and queues it for the writer. The receiver
/// yields the answer once the event is durable.
async fn submit(
    api: &IngestApi,
    key_workspace: &str,
    trace: &TraceContext,
    request: PublishRequest,
) -> Result<
    (
        oneshot::Receiver<Result<PublishResponse, DataError>>,
        tracing::Span,
    ),
    DataError,
> {
    if api.shutdown.is_requested() {
        return Err(shutting_down());
    }
    if !request.workspace_id.is_empty() && request.workspace_id != key_workspace {
        return Err(DataError::PermissionDenied(format!(
            "the API key does not act for workspace {:?}",
            truncate(&request.workspace_id, 64)
        )));
    }
    let now = Utc::now();
    let event = validate(&request, api.max_payload_bytes, now)?;
    let snapshot = api.copy.current();
    // After validation, so a malformed event is told what is wrong with it and does not
    // count against the quota.
    api.quota
        .check(key_workspace, snapshot.workspace_quota(key_workspace))?;
    let create_ms = now.timestamp_millis();
    let timestamp = event
        .occurred_ms
        .and_then(DateTime::from_timestamp_millis)
        .unwrap_or(now);
    let id = new_id(IdKind::Message);
    // The message's span: a child of the publisher's call. Its context is stored with the
    // message, so every delivery attempt, even days later, joins this trace.
    let span = tracing::info_span!(
        "ingest",
        otel.name = "sluice.ingest",
        otel.kind = "internal",
        sluice.message_id = %id,
        sluice.event_type = %event.event_type,
        sluice.workspace_id = %key_workspace,
    );
    let (traceparent, tracestate) = match sluice_telemetry::span_headers(&span) {
        Some((parent, state)) => (Some(parent), state),
        None => (trace.traceparent.clone(), trace.tracestate.clone()),
    };
    let envelope = build_envelope(
        &id,
        &event.event_type,
        ENVELOPE_VERSION,
        timestamp,
        key_workspace,
        &event.payload_json,
    );
    let matching = snapshot.matching(key_workspace, &event.event_type);
    let (subscription_ids, ordered) = match event.ordering_key {
        // Without a key, nothing is looked at beyond the match.
        None => (matching.map(|s| s.id.clone()).collect(), None),
        Some(key) => split_ordered(matching, key),
    };
    let (reply, answer) = oneshot::channel();
    let job = PublishJob {
        message: NewMessage {
            id,
            workspace_id: key_workspace.to_owned(),
            event_type: event.event_type,
            envelope: Bytes::from(envelope),
            idempotency_key: event.idempotency_key,
            traceparent,
            tracestate,
            create_ms,
            ordered,
        },
        subscription_ids,
        deadline: tokio::time::Instant::now() + api.store_timeout,
        reply,
    };
    api.publishes.send(job).await.map_err(|_| shutting_down())?;
    let durable_write =
        tracing::info_span!(parent: &span, "durable_write", otel.name = "sluice.durable_write");
    Ok((answer, durable_write))
}

async fn await_answer(
    answer: oneshot::Receiver<Result<PublishResponse, DataError>>,
) -> Result<PublishResponse, DataError> {
    // A dropped sender means the writer stopped before writing: not durable.
    answer.await.unwrap_or_else(|_| Err(shutting_down()))
}

/// Splits the subscriptions an event with an ordering key matched: those with ordered
/// delivery wait their turn behind the key's earlier events (`work::Ordered`), the others
/// are its fan-out's first attempts as usual.
fn split_ordered<'a>(
    matching: impl Iterator<Item = &'a Arc<Subscription>>,
    key: String,
) -> (Vec<String>, Option<Box<Ordered>>) {
    let mut fanout = Vec::new();
    let mut ordered = Vec::new();
    for subscription in matching {
        if subscription.config.ordered_delivery {
            ordered.push(subscription.id.clone());
        } else {
            fanout.push(subscription.id.clone());
        }
    }
    let ordered = (!ordered.is_empty()).then(|| {
        Box::new(Ordered {
            key: Arc::from(key),
            subscription_ids: ordered,
        })
    });
    (fanout, ordered)
}

fn shutting_down() -> DataError {
    DataError::Unavailable("the data plane is shutting down; publish again shortly".to_owned())
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

type PublishStreamResponses =
    Pin<Box<dyn futures::Stream<Item = Result<PublishStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl IngestService for IngestApi {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let caller = authenticate(&self.copy, request.metadata())?;
        let trace = TraceContext::from_metadata(request.metadata());
        let (answer, durable_write) =
            submit(self, &caller.workspace_id, &trace, request.into_inner()).await?;
        Ok(Response::new(
            await_answer(answer).instrument(durable_write).await?,
        ))
    }

    type PublishStreamStream = PublishStreamResponses;

    async fn publish_stream(
        &self,
        request: Request<Streaming<PublishStreamRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        if self.shutdown.is_requested() {
            return Err(shutting_down().into());
        }
        let caller = authenticate(&self.copy, request.metadata())?;
        let trace = TraceContext::from_metadata(request.metadata());
        let (tx, rx) = mpsc::channel(STREAM_RESPONSE_BUFFER);
        tokio::spawn(
            serve_stream(self.clone(), caller, trace, request.into_inner(), tx)
                .instrument(tracing::Span::current()),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Reads a publish stream: every request is queued at once and answered when its commit
/// lands, so many events of one stream share a commit.
async fn serve_stream(
    api: IngestApi,
    caller: Caller,
    trace: TraceContext,
    mut inbound: Streaming<PublishStreamRequest>,
    out: mpsc::Sender<Result<PublishStreamResponse, Status>>,
) {
    let mut pending = FuturesUnordered::new();
    let mut reading = true;
    let mut stopped_by_shutdown = false;
    // A request that does not decode ends the stream with INVALID_ARGUMENT (naming the
    // field) or RESOURCE_EXHAUSTED, after the answers of the events before it.
    let mut refused: Option<Status> = None;
    loop {
        if !reading && pending.is_empty() {
            break;
        }
        tokio::select! {
            request = inbound.message(), if reading && pending.len() < MAX_IN_FLIGHT_PER_STREAM => {
                match request {
                    Ok(Some(request)) => {
                        let sequence = request.sequence;
                        let submitted = match (request.event, caller.still_valid(&api.copy)) {
                            (_, Err(err)) => Err(err),
                            (Some(event), Ok(())) => {
                                submit(&api, &caller.workspace_id, &trace, event).await
                            }
                            (None, Ok(())) => Err(DataError::invalid("event", "is required")),
                        };
                        match submitted {
                            Ok((answer, durable_write)) => pending.push(async move {
                                (sequence, await_answer(answer).instrument(durable_write).await)
                            }),
                            Err(err) => {
                                if out.send(Ok(response(sequence, Err(err)))).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    Ok(None) => reading = false,
                    Err(status) => {
                        tracing::debug!(code = ?status.code(), "publish stream broke off");
                        refused = crate::error::decode_failure(&status);
                        reading = false;
                    }
                }
            }
            Some((sequence, result)) = pending.next(), if !pending.is_empty() => {
                if out.send(Ok(response(sequence, result))).await.is_err() {
                    // The client went away; its events are durable (or failed) regardless.
                    return;
                }
            }
            () = api.shutdown.requested(), if reading => {
                reading = false;
                stopped_by_shutdown = true;
            }
        }
    }
    if let Some(status) = refused {
        let _ = out.send(Err(status)).await;
    } else if stopped_by_shutdown {
        let _ = out.send(Err(shutting_down().into())).await;
    }
}

fn response(sequence: u64, result: Result<PublishResponse, DataError>) -> PublishStreamResponse {
    match result {
        Ok(result) => PublishStreamResponse {
            sequence,
            result: Some(result),
            error: None,
        },
        Err(err) => PublishStreamResponse {
            sequence,
            result: None,
            error: Some(err.into_publish_error()),
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use prost_types::value::Kind;
    use prost_types::{Struct, Timestamp, Value};

    use super::*;

    fn fields(err: DataError) -> Vec<String> {
        match err {
            DataError::InvalidArgument(v) => v.into_iter().map(|v| v.field).collect(),
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    fn request() -> PublishRequest {
        PublishRequest {
            event_type: "CONVERSATION_CREATED".into(),
            payload_json: r#"{"conversation":{"id":"cnv_1"}}"#.into(),
            ..Default::default()
        }
    }

    #[test]
    fn accepts_and_normalises() {
        let now = Utc::now();
        let event = validate(&request(), 1024, now).unwrap();
        assert_eq!(event.event_type, "conversation.created");
        assert_eq!(event.payload_json, r#"{"conversation":{"id":"cnv_1"}}"#);
        assert_eq!(event.idempotency_key, None);

        let mut with_struct = request();
        with_struct.payload_json.clear();
        with_struct.payload = Some(Struct {
            fields: BTreeMap::from([(
                "n".into(),
                Value {
                    kind: Some(Kind::NumberValue(2.0)),
                },
            )]),
        });
        with_struct.idempotency_key = "order-1".into();
        with_struct.occurred_time = Some(Timestamp {
            seconds: 1_705_314_600,
            nanos: 0,
        });
        let event = validate(&with_struct, 1024, now).unwrap();
        assert_eq!(event.payload_json, r#"{"n":2}"#);
        assert_eq!(event.idempotency_key.as_deref(), Some("order-1"));
        assert_eq!(event.occurred_ms, Some(1_705_314_600_000));
    }

    #[test]
    fn names_every_bad_field() {
        let now = Utc::now();
        let cases: Vec<(PublishRequest, Vec<&str>)> = vec![
            (
                PublishRequest {
                    event_type: "".into(),
                    ..request()
                },
                vec!["event_type"],
            ),
            (
                PublishRequest {
                    event_type: "sluice.subscription.disabled".into(),
                    ..request()
                },
                vec!["event_type"],
            ),
            (
                PublishRequest {
                    event_type: "no-dots!".into(),
                    ..request()
                },
                vec!["event_type"],
            ),
            (
                PublishRequest {
                    payload_json: "".into(),
                    ..request()
                },
                vec!["payload_json"],
            ),
            (
                PublishRequest {
                    payload_json: "[1]".into(),
                    ..request()
                },
                vec!["payload_json"],
            ),
            (
                PublishRequest {
                    payload_json: "{".into(),
                    ..request()
                },
                vec!["payload_json"],
            ),
            (
                PublishRequest {
                    payload_json: format!(r#"{{"x":"{}"}}"#, "a".repeat(2000)),
                    ..request()
                },
                vec!["payload_json"],
            ),
            (
                PublishRequest {
                    payload: Some(Struct::default()),
                    ..request()
                },
                vec!["payload_json"],
            ),
            (
                PublishRequest {
                    payload_json: "".into(),
                    payload: Some(Struct {
                        fields: BTreeMap::from([(
                            "x".into(),
                            Value {
                                kind: Some(Kind::NumberValue(f64::NAN)),
                            },
                        )]),
                    }),
                    ..request()
                },
                vec!["payload"],
            ),
            (
                PublishRequest {
                    idempotency_key: "k".repeat(257),
                    ..request()
                },
                vec!["idempotency_key"],
            ),
            (
                PublishRequest {
                    idempotency_key: "a\nb".into(),
                    ..request()
                },
                vec!["idempotency_key"],
            ),
            (
                PublishRequest {
                    occurred_time: Some(Timestamp {
                        seconds: 1,
                        nanos: 0,
                    }),
                    ..request()
                },
                vec!["occurred_time"],
            ),
            (
                PublishRequest {
                    occurred_time: Some(Timestamp {
                        seconds: now.timestamp() + 2 * 86_400,
                        nanos: 0,
                    }),
                    ..request()
                },
                vec!["occurred_time"],
            ),
            (
                PublishRequest {
                    occurred_time: Some(Timestamp {
                        seconds: 1_705_314_600,
                        nanos: -5,
                    }),
                    ..request()
                },
                vec!["occurred_time"],
            ),
            (
                PublishRequest {
                    event_type: "".into(),
                    payload_json: "".into(),
                    ..request()
                },
                vec!["event_type", "payload_json"],
            ),
        ];
        for (request, want) in cases {
            let got = fields(validate(&request, 1024, now).unwrap_err());
            assert_eq!(got, want, "{request:?}");
        }
        // Exactly 256 bytes is fine.
        let ok = PublishRequest {
            idempotency_key: "k".repeat(256),
            ..request()
        };
        assert!(validate(&ok, 1024, now).is_ok());
    }

    #[test]
    fn trace_context_is_checked() {
        let mut metadata = MetadataMap::new();
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        metadata.insert("traceparent", good.parse().unwrap());
        metadata.insert("tracestate", "congo=t61rcWkgMzE".parse().unwrap());
        let trace = TraceContext::from_metadata(&metadata);
        assert_eq!(trace.traceparent.as_deref(), Some(good));
        assert_eq!(trace.tracestate.as_deref(), Some("congo=t61rcWkgMzE"));

        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            let mut metadata = MetadataMap::new();
            metadata.insert("traceparent", bad.parse().unwrap());
            metadata.insert("tracestate", "a=b".parse().unwrap());
            let trace = TraceContext::from_metadata(&metadata);
            assert_eq!(trace.traceparent, None, "{bad}");
            assert_eq!(trace.tracestate, None, "{bad}");
        }
    }
}
