//! `DataPlaneService` (internal): the configuration watch stream and the outcome intake.
//!
//! Watch: a snapshot at revision R, then every change after R in revision order. Each change
//! sends the resource's current state (or its deletion), so replaying a change is harmless
//! and a snapshot taken while writes go on converges. Watchers wake on this process's
//! commits at once and poll every second for other replicas' commits.
//!
//! Outcomes: each batch is stored in one transaction, idempotent by attempt id, then acked.

use std::pin::Pin;
use std::time::Duration;

use futures::{FutureExt, Stream};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait,
    IntoActiveModel, QueryFilter, QueryOrder, QuerySelect, Set, TransactionTrait,
};
use sluice_proto::control::v1 as pb;
use sluice_store::control::{
    api_key, attempt, config_change, delivery, endpoint_health, message, subscription,
};
use sluice_store::{lock_config_writes, now_ms};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::convert::{self, ms};
use crate::error::ApiError;
use crate::{CHANGE_API_KEY, CHANGE_SUBSCRIPTION, ControlPlane, latest_revision, record_change};

/// Subscriptions per snapshot piece.
const SNAPSHOT_CHUNK: u64 = 500;
/// Changes per watch response.
const CHANGE_CHUNK: u64 = 500;
/// How often a watcher looks for changes committed by other replicas.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// The `DataPlaneService` implementation.
pub struct DataPlaneApi(pub(crate) ControlPlane);

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchConfigResponse, Status>> + Send>>;
type OutcomeStream = Pin<Box<dyn Stream<Item = Result<pb::ReportOutcomesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::data_plane_service_server::DataPlaneService for DataPlaneApi {
    type WatchConfigStream = WatchStream;
    type ReportOutcomesStream = OutcomeStream;

    async fn watch_config(
        &self,
        request: Request<pb::WatchConfigRequest>,
    ) -> Result<Response<Self::WatchConfigStream>, Status> {
        self.0.auth().internal(request.metadata())?;
        let from = i64::try_from(request.into_inner().from_revision)
            .map_err(|_| ApiError::invalid("from_revision", "too large"))?;
        let (tx, rx) = mpsc::channel(4);
        let plane = self.0.clone();
        tokio::spawn(async move {
            if let Err(e) = watch(plane, from, &tx).await {
                let _ = tx.send(Err(e.into())).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn report_outcomes(
        &self,
        request: Request<Streaming<pb::ReportOutcomesRequest>>,
    ) -> Result<Response<Self::ReportOutcomesStream>, Status> {
        self.0.auth().internal(request.metadata())?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let plane = self.0.clone();
        tokio::spawn(async move {
            loop {
                let first = tokio::select! {
                    batch = inbound.next() => batch,
                    () = plane.inner.streams.cancelled() => break,
                };
                let mut batches = match first {
                    Some(Ok(batch)) => vec![batch],
                    Some(Err(status)) => {
                        tracing::debug!(%status, "outcome stream ended");
                        break;
                    }
                    None => break,
                };
                // Batches already waiting are stored in the same transaction: a busy data
                // plane costs a commit per group of batches, not per batch.
                let mut ended = false;
                while batches.len() < MAX_BATCHES_PER_COMMIT {
                    match inbound.next().now_or_never() {
                        Some(Some(Ok(batch))) => batches.push(batch),
                        Some(Some(Err(_)) | None) => {
                            ended = true;
                            break;
                        }
                        None => break,
                    }
                }
                let ids: Vec<u64> = batches.iter().map(|b| b.batch_id).collect();
                let span = tracing::info_span!(
                    "store_outcomes",
                    otel.name = "sluice.store_outcomes",
                    otel.kind = "consumer",
                    sluice.batches = batches.len(),
                    sluice.messages = batches.iter().map(|b| b.messages.len()).sum::<usize>(),
                    sluice.attempts = batches.iter().map(|b| b.attempts.len()).sum::<usize>(),
                );
                sluice_telemetry::set_parent(&span, Some(&batches[0].traceparent), None);
                match store_outcomes(&plane, batches).instrument(span).await {
                    Ok(()) => {
                        for batch_id in ids {
                            if tx
                                .send(Ok(pb::ReportOutcomesResponse { batch_id }))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                    Err(err) => {
                        let _ = tx.send(Err(Status::from(err))).await;
                        return;
                    }
                }
                if ended {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

type WatchSender = mpsc::Sender<Result<pb::WatchConfigResponse, Status>>;

async fn watch(plane: ControlPlane, from: i64, tx: &WatchSender) -> Result<(), ApiError> {
    let db = plane.db().clone();
    let mut woken = plane.inner.revision.subscribe();
    let latest = latest_revision(&db).await?;
    // A revision from the future means this database is not the one the data plane
    // watched before (restored or replaced): start over with a snapshot.
    let mut current = if from == 0 || from > latest {
        snapshot(&db, tx).await?
    } else {
        from
    };
    loop {
        loop {
            let changes = config_change::Entity::find()
                .filter(config_change::Column::Revision.gt(current))
                .order_by_asc(config_change::Column::Revision)
                .limit(CHANGE_CHUNK)
                .all(&db)
                .await?;
            let Some(last) = changes.last().map(|c| c.revision) else {
                break;
            };
            let response = resolve_changes(&db, &changes, last).await?;
            if tx.send(Ok(response)).await.is_err() {
                return Ok(());
            }
            current = last;
        }
        tokio::select! {
            changed = woken.changed() => if changed.is_err() { return Ok(()) },
            () = tokio::time::sleep(POLL_EVERY) => {}
            () = tx.closed() => return Ok(()),
            () = plane.inner.streams.cancelled() => return Ok(()),
        }
    }
}

/// Sends the whole configuration in pieces; returns the revision it is consistent at.
async fn snapshot(db: &DatabaseConnection, tx: &WatchSender) -> Result<i64, ApiError> {
    let revision = latest_revision(db).await?;
    let now = now_ms();
    let keys = api_key::Entity::find()
        .filter(api_key::Column::RevokeMs.is_null())
        .all(db)
        .await?;
    let mut first = pb::WatchConfigResponse {
        reset: true,
        upserted_api_keys: keys.iter().map(config_key).collect(),
        ..Default::default()
    };
    let mut after = String::new();
    loop {
        let subs = subscription::Entity::find()
            .filter(subscription::Column::Id.gt(after.clone()))
            .order_by_asc(subscription::Column::Id)
            .limit(SNAPSHOT_CHUNK)
            .all(db)
            .await?;
        let done = (subs.len() as u64) < SNAPSHOT_CHUNK;
        if let Some(last) = subs.last() {
            after = last.id.clone();
        }
        let mut piece = std::mem::take(&mut first);
        piece.upserted_subscriptions = subs
            .iter()
            .map(|s| convert::config_subscription(s, now))
            .collect();
        if done {
            piece.revision = revision as u64;
        }
        if tx.send(Ok(piece)).await.is_err() {
            return Ok(revision);
        }
        if done {
            return Ok(revision);
        }
    }
}

fn config_key(k: &api_key::Model) -> pb::ConfigApiKey {
    pb::ConfigApiKey {
        id: k.id.clone(),
        workspace_id: k.workspace_id.clone(),
        key_hash: k.key_hash.clone(),
    }
}

async fn resolve_changes(
    db: &DatabaseConnection,
    changes: &[config_change::Model],
    revision: i64,
) -> Result<pb::WatchConfigResponse, ApiError> {
    let now = now_ms();
    let mut response = pb::WatchConfigResponse {
        revision: revision as u64,
        ..Default::default()
    };
    let mut seen = std::collections::HashSet::new();
    for change in changes.iter().rev() {
        // Only the latest state matters; later changes of the same resource come first here.
        if !seen.insert((change.kind.as_str(), change.resource_id.as_str())) {
            continue;
        }
        match change.kind.as_str() {
            CHANGE_SUBSCRIPTION => {
                match subscription::Entity::find_by_id(change.resource_id.clone())
                    .one(db)
                    .await?
                {
                    Some(s) => response
                        .upserted_subscriptions
                        .push(convert::config_subscription(&s, now)),
                    None => response
                        .deleted_subscription_ids
                        .push(change.resource_id.clone()),
                }
            }
            CHANGE_API_KEY => match api_key::Entity::find_by_id(change.resource_id.clone())
                .one(db)
                .await?
            {
                Some(k) if k.revoke_ms.is_none() => response.upserted_api_keys.push(config_key(&k)),
                _ => response
                    .deleted_api_key_ids
                    .push(change.resource_id.clone()),
            },
            other => tracing::warn!(kind = other, "unknown config change kind"),
        }
    }
    Ok(response)
}

fn delivery_status_name(status: i32) -> &'static str {
    match pb::DeliveryStatus::try_from(status) {
        Ok(pb::DeliveryStatus::Succeeded) => "succeeded",
        Ok(pb::DeliveryStatus::Failed) => "failed",
        _ => "pending",
    }
}

fn trigger_name(trigger: i32) -> &'static str {
    match pb::AttemptTrigger::try_from(trigger) {
        Ok(pb::AttemptTrigger::Manual) => "manual",
        Ok(pb::AttemptTrigger::Replay) => "replay",
        _ => "scheduled",
    }
}

/// The most outcome batches stored in one transaction.
const MAX_BATCHES_PER_COMMIT: usize = 64;

/// Rows per multi-row statement: well under SQLite's 32,766 bound parameters.
const ROWS_PER_STATEMENT: usize = 500;

/// Stores one batch in one transaction, with a handful of multi-row statements whatever its
/// size (a statement costs a round trip to the database, so per-attempt statements would
/// dominate the cost of a busy data plane). Every insert ignores rows already there, so a
/// batch resent after a lost ack changes nothing.
async fn store_outcomes(
    plane: &ControlPlane,
    batches: Vec<pb::ReportOutcomesRequest>,
) -> Result<(), ApiError> {
    let mut batch = pb::ReportOutcomesRequest::default();
    for b in batches {
        batch.messages.extend(b.messages);
        batch.attempts.extend(b.attempts);
        batch
            .disabled_subscriptions
            .extend(b.disabled_subscriptions);
    }
    let revision = plane
        .db()
        .transaction::<_, i64, ApiError>(|tx| {
            Box::pin(async move {
                // Only a disable changes config; plain outcome batches do not take the config
                // lock, so several control-plane replicas store outcomes side by side. (On
                // SQLite the one connection already serialises writers.)
                if !batch.disabled_subscriptions.is_empty() {
                    lock_config_writes(tx).await?;
                }
                store_log(tx, &batch.messages, &batch.attempts).await?;
                let mut revision = 0;
                for d in &batch.disabled_subscriptions {
                    let Some(row) = subscription::Entity::find_by_id(d.subscription_id.clone())
                        .one(tx)
                        .await?
                    else {
                        continue;
                    };
                    if !row.enabled {
                        continue;
                    }
                    let workspace_id = row.workspace_id.clone();
                    let mut row = row.into_active_model();
                    let reason = pb::DisabledReason::try_from(d.reason)
                        .unwrap_or(pb::DisabledReason::PersistentFailure);
                    row.enabled = Set(false);
                    row.disabled_reason = Set(Some(convert::reason_name(reason).to_owned()));
                    row.disabled_message = Set(Some(d.message.clone()));
                    row.disable_ms = Set(Some(
                        d.disable_time.as_ref().and_then(ms).unwrap_or_else(now_ms),
                    ));
                    row.update_ms = Set(now_ms());
                    row.update(tx).await?;
                    crate::fail_pending_deliveries(tx, &d.subscription_id).await?;
                    revision =
                        record_change(tx, CHANGE_SUBSCRIPTION, &d.subscription_id, &workspace_id)
                            .await?;
                    tracing::warn!(subscription_id = %d.subscription_id, reason = convert::reason_name(reason), "subscription disabled by the data plane");
                }
                Ok(revision)
            })
        })
        .await?;
    plane.published(revision);
    Ok(())
}

/// Stores a batch of the delivery log with a few multi-row statements whatever its size:
/// the messages, the attempts not stored before, each delivery once in its latest state
/// (a message's record usually arrives with its first attempts, so most deliveries are
/// written once, already final), and each endpoint's health. Every statement leaves rows
/// already there alone (or keeps the later state), so a batch resent after a lost ack
/// changes nothing.
async fn store_log<C: ConnectionTrait>(
    tx: &C,
    messages: &[pb::MessageRecord],
    outcomes: &[pb::AttemptOutcome],
) -> Result<(), ApiError> {
    // Messages, and what their deliveries look like before any attempt.
    let mut message_rows = Vec::with_capacity(messages.len());
    let mut deliveries: std::collections::HashMap<(&str, &str), delivery::ActiveModel> =
        std::collections::HashMap::new();
    let mut order: Vec<(&str, &str)> = Vec::new();
    let mut created: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
    for m in messages {
        let create_ms = m.create_time.as_ref().and_then(ms).unwrap_or_else(now_ms);
        created.insert(m.id.as_str(), create_ms);
        message_rows.push(message::ActiveModel {
            id: Set(m.id.clone()),
            workspace_id: Set(m.workspace_id.clone()),
            event_type: Set(m.event_type.clone()),
            create_ms: Set(create_ms),
            delivery_count: Set(i32::try_from(m.subscription_ids.len()).unwrap_or(i32::MAX)),
        });
        for sub in &m.subscription_ids {
            let key = (m.id.as_str(), sub.as_str());
            if deliveries.contains_key(&key) {
                continue;
            }
            order.push(key);
            deliveries.insert(
                key,
                delivery::ActiveModel {
                    message_id: Set(m.id.clone()),
                    subscription_id: Set(sub.clone()),
                    workspace_id: Set(m.workspace_id.clone()),
                    event_type: Set(m.event_type.clone()),
                    status: Set("pending".into()),
                    attempt_count: Set(0),
                    last_attempt_ms: Set(None),
                    next_attempt_ms: Set(Some(create_ms)),
                    last_status_code: Set(0),
                    last_error_kind: Set(String::new()),
                    create_ms: Set(create_ms),
                },
            );
        }
    }
    for chunk in message_rows.chunks(ROWS_PER_STATEMENT) {
        insert_ignore(
            tx,
            sea_orm::Insert::<message::ActiveModel>::many(chunk.to_vec()).on_conflict(
                OnConflict::column(message::Column::Id)
                    .do_nothing()
                    .to_owned(),
            ),
        )
        .await?;
    }

    let new = store_new_attempts(tx, outcomes).await?;

    // Each delivery takes its latest attempt's state (attempts are sorted, so the last one
    // of a key wins).
    for n in &new {
        let a = n.attempt;
        let key = (a.message_id.as_str(), a.subscription_id.as_str());
        let create_ms = created.get(key.0).copied().unwrap_or(n.attempt_ms);
        if !deliveries.contains_key(&key) {
            order.push(key);
        }
        deliveries.insert(
            key,
            delivery::ActiveModel {
                message_id: Set(a.message_id.clone()),
                subscription_id: Set(a.subscription_id.clone()),
                workspace_id: Set(a.workspace_id.clone()),
                event_type: Set(a.event_type.clone()),
                status: Set(delivery_status_name(n.outcome.delivery_status).to_owned()),
                attempt_count: Set(i32::try_from(a.attempt_number).unwrap_or(i32::MAX)),
                last_attempt_ms: Set(Some(n.attempt_ms)),
                next_attempt_ms: Set(n.outcome.next_attempt_time.as_ref().and_then(ms)),
                last_status_code: Set(i32::try_from(a.status_code).unwrap_or(0)),
                last_error_kind: Set(a.error_kind.clone()),
                create_ms: Set(create_ms),
            },
        );
    }
    let delivery_rows: Vec<delivery::ActiveModel> = order
        .iter()
        .filter_map(|key| deliveries.remove(key))
        .collect();
    // A stored row is replaced only by a state at least as late: outcomes of different
    // replicas may arrive out of order, and a message's record (no attempt) never
    // overwrites an attempt's state.
    for chunk in delivery_rows.chunks(ROWS_PER_STATEMENT / 2) {
        let newer = Expr::col((delivery::Entity, delivery::Column::LastAttemptMs))
            .is_null()
            .or(
                Expr::col((delivery::Entity, delivery::Column::LastAttemptMs))
                    .lte(Expr::cust("excluded.last_attempt_ms")),
            );
        insert_ignore(
            tx,
            sea_orm::Insert::<delivery::ActiveModel>::many(chunk.to_vec()).on_conflict(
                OnConflict::columns([
                    delivery::Column::MessageId,
                    delivery::Column::SubscriptionId,
                ])
                .update_columns([
                    delivery::Column::Status,
                    delivery::Column::AttemptCount,
                    delivery::Column::LastAttemptMs,
                    delivery::Column::NextAttemptMs,
                    delivery::Column::LastStatusCode,
                    delivery::Column::LastErrorKind,
                ])
                .action_and_where(newer)
                .to_owned(),
            ),
        )
        .await?;
    }
    store_health(tx, &new).await
}

/// Runs an insert (whose ON CONFLICT clause decides about existing rows) and returns the
/// number of rows it wrote.
async fn insert_ignore<C: ConnectionTrait, Q: sea_orm::QueryTrait>(
    tx: &C,
    insert: Q,
) -> Result<u64, sea_orm::DbErr> {
    let statement = insert.build(tx.get_database_backend());
    Ok(tx.execute_raw(statement).await?.rows_affected())
}

/// One attempt, flattened for storage.
struct NewAttempt<'a> {
    attempt: &'a pb::Attempt,
    outcome: &'a pb::AttemptOutcome,
    attempt_ms: i64,
}

/// Inserts the attempts not stored before and returns them, oldest first. The insert
/// itself says which rows are new (`ON CONFLICT DO NOTHING RETURNING id`), so a resent
/// batch counts nothing twice.
async fn store_new_attempts<'a, C: ConnectionTrait>(
    tx: &C,
    outcomes: &'a [pb::AttemptOutcome],
) -> Result<Vec<NewAttempt<'a>>, ApiError> {
    let mut new: Vec<NewAttempt> = Vec::with_capacity(outcomes.len());
    let mut seen_in_batch = std::collections::HashSet::new();
    for outcome in outcomes {
        if let Some(attempt) = &outcome.attempt
            && seen_in_batch.insert(attempt.id.as_str())
        {
            let attempt_ms = attempt
                .attempt_time
                .as_ref()
                .and_then(ms)
                .unwrap_or_else(now_ms);
            new.push(NewAttempt {
                attempt,
                outcome,
                attempt_ms,
            });
        }
    }
    if new.is_empty() {
        return Ok(new);
    }
    new.sort_by_key(|n| (n.attempt_ms, n.attempt.attempt_number));
    let backend = tx.get_database_backend();
    let mut inserted: std::collections::HashSet<String> = std::collections::HashSet::new();
    for chunk in new.chunks(ROWS_PER_STATEMENT / 4) {
        let rows = chunk.iter().map(|n| {
            let a = n.attempt;
            let latency_us = a
                .latency
                .as_ref()
                .map(|d| d.seconds * 1_000_000 + i64::from(d.nanos / 1000))
                .unwrap_or(0);
            attempt::ActiveModel {
                id: Set(a.id.clone()),
                workspace_id: Set(a.workspace_id.clone()),
                message_id: Set(a.message_id.clone()),
                subscription_id: Set(a.subscription_id.clone()),
                event_type: Set(a.event_type.clone()),
                attempt_number: Set(i32::try_from(a.attempt_number).unwrap_or(i32::MAX)),
                attempt_ms: Set(n.attempt_ms),
                success: Set(a.success),
                status_code: Set(i32::try_from(a.status_code).unwrap_or(0)),
                error_kind: Set(a.error_kind.clone()),
                error_message: Set(a.error_message.clone()),
                latency_us: Set(latency_us),
                response_excerpt: Set(a.response_excerpt.clone()),
                trigger: Set(trigger_name(a.trigger).to_owned()),
                url: Set(a.url.clone()),
            }
        });
        let mut insert = sea_orm::QueryTrait::into_query(
            sea_orm::Insert::<attempt::ActiveModel>::many(rows).on_conflict(
                OnConflict::column(attempt::Column::Id)
                    .do_nothing()
                    .to_owned(),
            ),
        );
        insert.returning_col(attempt::Column::Id);
        for row in tx.query_all_raw(backend.build(&insert)).await? {
            inserted.insert(row.try_get::<String>("", "id")?);
        }
    }
    new.retain(|n| inserted.contains(&n.attempt.id));
    Ok(new)
}

/// Endpoint health: per subscription, the failures since its last success, in one
/// statement for the whole batch.
async fn store_health<C: ConnectionTrait>(tx: &C, new: &[NewAttempt<'_>]) -> Result<(), ApiError> {
    struct Health<'a> {
        workspace_id: &'a str,
        failures_after_success: i64,
        last_success_ms: Option<i64>,
        last_failure_ms: Option<i64>,
    }
    let mut health: std::collections::BTreeMap<&str, Health> = std::collections::BTreeMap::new();
    for n in new {
        let h = health
            .entry(n.attempt.subscription_id.as_str())
            .or_insert(Health {
                workspace_id: &n.attempt.workspace_id,
                failures_after_success: 0,
                last_success_ms: None,
                last_failure_ms: None,
            });
        if n.attempt.success {
            h.failures_after_success = 0;
            h.last_success_ms = Some(n.attempt_ms);
        } else {
            h.failures_after_success += 1;
            h.last_failure_ms = Some(n.attempt_ms);
        }
    }
    if health.is_empty() {
        return Ok(());
    }
    let rows: Vec<endpoint_health::ActiveModel> = health
        .into_iter()
        .map(|(subscription_id, h)| endpoint_health::ActiveModel {
            subscription_id: Set(subscription_id.to_owned()),
            workspace_id: Set(h.workspace_id.to_owned()),
            consecutive_failures: Set(h.failures_after_success),
            last_success_ms: Set(h.last_success_ms),
            last_failure_ms: Set(h.last_failure_ms),
        })
        .collect();
    for chunk in rows.chunks(ROWS_PER_STATEMENT / 5) {
        // A batch with a success restarts the count (a success is its only way to carry
        // last_success_ms); otherwise its failures add up.
        let mut on_conflict = OnConflict::column(endpoint_health::Column::SubscriptionId);
        on_conflict
            .value(
                endpoint_health::Column::ConsecutiveFailures,
                Expr::cust(
                    "CASE WHEN excluded.last_success_ms IS NULL \
                     THEN endpoint_health.consecutive_failures + excluded.consecutive_failures \
                     ELSE excluded.consecutive_failures END",
                ),
            )
            .value(
                endpoint_health::Column::LastSuccessMs,
                Expr::cust("COALESCE(excluded.last_success_ms, endpoint_health.last_success_ms)"),
            )
            .value(
                endpoint_health::Column::LastFailureMs,
                Expr::cust("COALESCE(excluded.last_failure_ms, endpoint_health.last_failure_ms)"),
            );
        insert_ignore(
            tx,
            endpoint_health::Entity::insert_many(chunk.to_vec())
                .on_conflict(on_conflict.to_owned()),
        )
        .await?;
    }
    Ok(())
}
