//! `DispatchService`, which the control plane calls with the internal token to make
//! deliveries happen now: a test send, a manual redelivery, a replay of failed deliveries.

use std::sync::Arc;

use chrono::Utc;
use sea_orm::{DbBackend, EntityTrait, Statement, Value};
use sluice_core::envelope::{build_envelope, validate_payload};
use sluice_core::event::normalize_event_name;
use sluice_core::ids::{IdKind, new_id};
use sluice_core::outcome::DeliveryStatus;
use sluice_proto::control::v1::{AttemptOutcome, AttemptTrigger, DisabledReason};
use sluice_proto::data::v1::dispatch_service_server::DispatchService;
use sluice_proto::data::v1::{
    RedeliverRequest, RedeliverResponse, ReplayRequest, ReplayResponse, SendTestRequest,
    SendTestResponse,
};
use sluice_store::data::{delivery, fanout, message};
use sluice_store::now_ms;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::config_copy::Endpoint;
use crate::dispatcher::{
    self, disable, make_attempt, note_endpoint_result, persistent_failure_message, proto_status,
};
use crate::error::{DataError, Violation};
use crate::outcomes::{self, AttemptRecord, OutcomeEvent};
use crate::queue::{DeliveryKey, StoredMessage};
use crate::scheduler::{placeholder, take_rows};
use crate::shared::Shared;
use crate::time::{ms_from_timestamp, timestamp_from_ms};

/// Rows requeued per statement by a replay.
const REPLAY_CHUNK: i64 = 1000;

/// The DispatchService implementation.
pub(crate) struct DispatchApi {
    pub(crate) shared: Arc<Shared>,
}

/// Checks the internal token in constant time (a timing leak would reveal it bytewise).
fn authorize(shared: &Shared, metadata: &MetadataMap) -> Result<(), DataError> {
    let presented = metadata
        .get("authorization")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let expected = shared.internal_authorization.as_bytes();
    let mut difference = presented.len() ^ expected.len();
    for (i, byte) in expected.iter().enumerate() {
        difference |= usize::from(byte ^ presented.get(i).copied().unwrap_or(0));
    }
    if difference == 0 {
        Ok(())
    } else {
        Err(DataError::Unauthenticated(
            "DispatchService needs the internal token (`authorization: Bearer <token>`)".to_owned(),
        ))
    }
}

fn required(field: &str, value: &str, violations: &mut Vec<Violation>) {
    if value.is_empty() {
        violations.push(Violation::new(field, "is required"));
    }
}

#[tonic::async_trait]
impl DispatchService for DispatchApi {
    async fn send_test(
        &self,
        request: Request<SendTestRequest>,
    ) -> Result<Response<SendTestResponse>, Status> {
        let shared = &self.shared;
        authorize(shared, request.metadata())?;
        let request = request.into_inner();
        let mut violations = Vec::new();
        let endpoint = match &request.subscription {
            None => {
                violations.push(Violation::new("subscription", "is required"));
                None
            }
            Some(subscription) => match Endpoint::parse(subscription) {
                Ok(endpoint) => Some(endpoint),
                Err(why) => {
                    violations.push(Violation::new("subscription", why));
                    None
                }
            },
        };
        let event_type = match normalize_event_name(&request.event_type) {
            Ok(name) => Some(name),
            Err(e) => {
                violations.push(Violation::new("event_type", e.to_string()));
                None
            }
        };
        if let Err(e) = validate_payload(&request.payload_json, shared.config.max_payload_bytes) {
            violations.push(Violation::new("payload_json", e.to_string()));
        }
        let (Some(endpoint), Some(event_type), Some(subscription), true) = (
            endpoint,
            event_type,
            request.subscription.as_ref(),
            violations.is_empty(),
        ) else {
            return Err(DataError::InvalidArgument(violations).into());
        };
        let now = Utc::now();
        let id = new_id(IdKind::Message);
        let envelope = build_envelope(
            &id,
            &event_type,
            1,
            now,
            &subscription.workspace_id,
            &request.payload_json,
        );
        let message = StoredMessage {
            id,
            workspace_id: subscription.workspace_id.clone(),
            event_type,
            envelope: envelope.into(),
            // The test send is part of the control plane's SendTestEvent trace.
            traceparent: sluice_telemetry::span_headers(&tracing::Span::current()).map(|(p, _)| p),
            tracestate: None,
            create_ms: now.timestamp_millis(),
        };
        let (attempt, _) = make_attempt(
            shared,
            &endpoint,
            &message,
            &subscription.id,
            1,
            AttemptTrigger::Manual,
        )
        .await;
        Ok(Response::new(SendTestResponse {
            attempt: Some(attempt),
        }))
    }

    async fn redeliver(
        &self,
        request: Request<RedeliverRequest>,
    ) -> Result<Response<RedeliverResponse>, Status> {
        let shared = &self.shared;
        authorize(shared, request.metadata())?;
        let request = request.into_inner();
        let mut violations = Vec::new();
        required("workspace_id", &request.workspace_id, &mut violations);
        required("message_id", &request.message_id, &mut violations);
        required("subscription_id", &request.subscription_id, &mut violations);
        if !violations.is_empty() {
            return Err(DataError::InvalidArgument(violations).into());
        }
        Ok(Response::new(redeliver(shared, request).await?))
    }

    async fn replay(
        &self,
        request: Request<ReplayRequest>,
    ) -> Result<Response<ReplayResponse>, Status> {
        let shared = &self.shared;
        authorize(shared, request.metadata())?;
        let request = request.into_inner();
        let mut violations = Vec::new();
        required("workspace_id", &request.workspace_id, &mut violations);
        required("subscription_id", &request.subscription_id, &mut violations);
        let since_ms = match request.since_time.as_ref().map(ms_from_timestamp) {
            Some(Some(ms)) => Some(ms),
            Some(None) => {
                violations.push(Violation::new("since_time", "is not a valid timestamp"));
                None
            }
            None => {
                violations.push(Violation::new("since_time", "is required"));
                None
            }
        };
        let Some(since_ms) = since_ms.filter(|_| violations.is_empty()) else {
            return Err(DataError::InvalidArgument(violations).into());
        };
        let queued = replay(
            shared,
            &request.workspace_id,
            &request.subscription_id,
            since_ms,
        )
        .await?;
        Ok(Response::new(ReplayResponse {
            queued_count: queued,
        }))
    }
}

/// What is known of a delivery before a manual attempt.
struct Known {
    pending: bool,
    attempt_count: i32,
    next_attempt_ms: i64,
    first_failure_ms: Option<i64>,
}

/// One attempt of a stored delivery, now, whatever its status; recorded like any other.
async fn redeliver(
    shared: &Arc<Shared>,
    request: RedeliverRequest,
) -> Result<RedeliverResponse, DataError> {
    let not_found = || {
        DataError::NotFound(format!(
            "no delivery of message {:?} to subscription {:?}",
            request.message_id, request.subscription_id
        ))
    };
    // Outcomes still queued would make the row look older than it is.
    outcomes::flush(shared).await;
    let message = message::Entity::find_by_id(request.message_id.clone())
        .one(&shared.db)
        .await?
        .filter(|message| message.workspace_id == request.workspace_id)
        .ok_or_else(not_found)?;
    let row =
        delivery::Entity::find_by_id((request.message_id.clone(), request.subscription_id.clone()))
            .one(&shared.db)
            .await?;
    let known = match row {
        Some(row) if row.workspace_id == request.workspace_id => Known {
            pending: row.status == DeliveryStatus::Pending.as_str(),
            attempt_count: row.attempt_count,
            next_attempt_ms: row.next_attempt_ms,
            first_failure_ms: row.first_failure_ms,
        },
        Some(_) => return Err(not_found()),
        None => {
            // A first attempt has no row of its own (see `fanout`): it is still to be made
            // while its message's fan-out is open, and succeeded otherwise.
            let matched = message
                .subscription_ids
                .as_deref()
                .is_some_and(|ids| ids.split(',').any(|id| id == request.subscription_id));
            if !matched {
                return Err(not_found());
            }
            let pending = shared
                .fanouts
                .is_unconcluded(&message.id, &request.subscription_id)
                || (!shared.fanouts.is_open(&message.id)
                    && fanout::Entity::find_by_id(message.id.clone())
                        .one(&shared.db)
                        .await?
                        .is_some());
            Known {
                pending,
                attempt_count: i32::from(!pending),
                next_attempt_ms: message.create_ms,
                first_failure_ms: None,
            }
        }
    };
    let snapshot = shared.copy.current();
    let subscription = snapshot
        .subscription(&request.subscription_id)
        .cloned()
        .ok_or_else(|| {
            DataError::NotFound(format!(
                "subscription {:?} is not in the data plane's configuration",
                request.subscription_id
            ))
        })?;
    if !subscription.enabled {
        return Err(DataError::FailedPrecondition(format!(
            "subscription {:?} is disabled; enable it first",
            request.subscription_id
        )));
    }

    let key = DeliveryKey {
        message_id: request.message_id.clone(),
        subscription_id: request.subscription_id.clone(),
    };
    // Withdraw any copy this process holds, so the manual attempt is not doubled by a
    // scheduled one; a pending delivery goes back to its schedule afterwards.
    let generation = shared.held.take_over(&key, 0);
    let message_create_ms = message.create_ms;
    let message = StoredMessage::from_row(message);
    let attempt_number = u32::try_from(known.attempt_count)
        .unwrap_or(0)
        .saturating_add(1);
    let (attempt, result) = make_attempt(
        shared,
        &subscription.endpoint,
        &message,
        &subscription.id,
        attempt_number,
        AttemptTrigger::Manual,
    )
    .await;
    shared.held.release(&key, generation);

    let now = now_ms();
    let success = result.is_success();
    dispatcher::note_breaker(shared, &subscription.id, success);
    let (streak, persistent_failure) = note_endpoint_result(shared, &subscription.id, success, now);
    let was_pending = known.pending;
    let status = if success {
        DeliveryStatus::Succeeded
    } else if was_pending && !result.is_gone() {
        // A failed manual attempt does not end a delivery that still has its schedule.
        DeliveryStatus::Pending
    } else {
        DeliveryStatus::Failed
    };
    let next_attempt = (status == DeliveryStatus::Pending).then_some(known.next_attempt_ms);
    let record = AttemptRecord {
        key,
        workspace_id: request.workspace_id.clone(),
        message_create_ms,
        outcome: AttemptOutcome {
            attempt: Some(attempt.clone()),
            delivery_status: proto_status(status) as i32,
            next_attempt_time: next_attempt.map(timestamp_from_ms),
            retry_delay: None,
        },
        status,
        attempt_count: attempt_number,
        next_attempt_ms: None,
        // Released, so the scanner takes a still-pending delivery up at its due time.
        lease_until_ms: None,
        first_failure_ms: if success {
            known.first_failure_ms
        } else {
            known.first_failure_ms.or(Some(now))
        },
        streak,
    };
    shared.record(OutcomeEvent::Attempt(Box::new(record))).await;
    if result.is_gone() {
        disable(
            shared,
            &subscription,
            DisabledReason::EndpointGone,
            "the endpoint answered 410 Gone".to_owned(),
        )
        .await;
    } else if let Some(streak) = persistent_failure {
        let message = persistent_failure_message(&streak);
        disable(
            shared,
            &subscription,
            DisabledReason::PersistentFailure,
            message,
        )
        .await;
    }
    Ok(RedeliverResponse {
        attempt: Some(attempt),
    })
}

/// Queues every failed delivery of a subscription whose message was accepted at or after
/// `since_ms`, each for one more attempt now.
async fn replay(
    shared: &Arc<Shared>,
    workspace_id: &str,
    subscription_id: &str,
    since_ms: i64,
) -> Result<u64, DataError> {
    outcomes::flush(shared).await;
    let backend = shared.db.get_database_backend();
    let lock = if backend == DbBackend::Postgres {
        " FOR UPDATE SKIP LOCKED"
    } else {
        ""
    };
    let p = |n| placeholder(backend, n);
    let sql = format!(
        "UPDATE dp_deliveries SET status = {p1}, next_attempt_ms = {p2}, lease_until_ms = {p3}, \
           first_failure_ms = NULL \
         WHERE (message_id, subscription_id) IN ( \
           SELECT message_id, subscription_id FROM dp_deliveries \
           WHERE workspace_id = {p4} AND subscription_id = {p5} AND status = {p6} \
             AND create_ms >= {p7} \
           ORDER BY create_ms LIMIT {p8}{lock}) \
         RETURNING *",
        p1 = p(1),
        p2 = p(2),
        p3 = p(3),
        p4 = p(4),
        p5 = p(5),
        p6 = p(6),
        p7 = p(7),
        p8 = p(8),
    );
    let mut queued = 0u64;
    loop {
        let now = now_ms();
        let lease_until = now.saturating_add(shared.lease_ms());
        let statement = Statement::from_sql_and_values(
            backend,
            sql.clone(),
            [
                Value::from(DeliveryStatus::Pending.as_str()),
                Value::from(now),
                Value::from(lease_until),
                Value::from(workspace_id),
                Value::from(subscription_id),
                Value::from(DeliveryStatus::Failed.as_str()),
                Value::from(since_ms),
                Value::from(REPLAY_CHUNK),
            ],
        );
        let rows = delivery::Entity::find()
            .from_raw_sql(statement)
            .all(&shared.db)
            .await?;
        let count = rows.len();
        queued += u64::try_from(count).unwrap_or(0);
        if count > 0 {
            take_rows(shared, rows, AttemptTrigger::Replay, lease_until).await?;
        }
        if i64::try_from(count).unwrap_or(0) < REPLAY_CHUNK {
            return Ok(queued);
        }
    }
}
