//! `DataPlaneService` (internal): the configuration watch stream and the outcome intake.
//!
//! Watch: a snapshot at revision R, then every change after R in revision order. Each change
//! sends the resource's current state (or its deletion), so replaying a change is harmless
//! and a snapshot taken while writes go on converges. Watchers wake on this process's
//! commits at once and poll every second for other replicas' commits.
//!
//! Outcomes: each batch is stored in one transaction, idempotent by attempt id, then acked.
//! A batch marked `first_send` was never sent before, so it is stored without finding out
//! which of its attempts are stored already; any other batch counts only the attempts its
//! own transaction stores, also when another replica of the same database is storing the
//! same batch at that moment (the data plane moved to it after a broken stream).

use std::pin::Pin;
use std::time::Duration;

use foldhash::{HashMap as FastMap, HashMapExt as _, HashSet as FastSet};
use futures::Stream;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait,
    IntoActiveModel, QueryFilter, QueryOrder, QuerySelect, Set,
};
use sluice_core::sealing::Keyring;
use sluice_proto::control::v1 as pb;
use sluice_store::control::{api_key, config_change, subscription, workspace};
use sluice_store::hot::{self, Session};
use sluice_store::{lock_config_writes, now_ms};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::convert::{self, ms};
use crate::error::ApiError;
use crate::{
    CHANGE_API_KEY, CHANGE_SUBSCRIPTION, CHANGE_WORKSPACE, ControlPlane, latest_revision,
    record_change,
};

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
                // Batches that arrive within STORE_LINGER are stored in the same
                // transaction: a busy data plane costs a commit per group of batches, not
                // per batch, and a commit's fixed cost (the sync, the pages every insert
                // touches) is shared by more rows.
                let mut ended = false;
                let linger = tokio::time::Instant::now() + STORE_LINGER;
                let mut attempts: usize = batches[0].attempts.len();
                while batches.len() < MAX_BATCHES_PER_COMMIT && attempts < MAX_ATTEMPTS_PER_COMMIT {
                    match tokio::time::timeout_at(linger, inbound.next()).await {
                        Ok(Some(Ok(batch))) => {
                            attempts += batch.attempts.len();
                            batches.push(batch);
                        }
                        Ok(Some(Err(_)) | None) => {
                            ended = true;
                            break;
                        }
                        Err(_) => break,
                    }
                }
                if ended {
                    // The data plane's session ended before these were acked, so it sends
                    // them again, to this replica or another one, maybe before this store
                    // commits: checked for repeats like any batch that may have been sent
                    // before, never taken as a first send.
                    for batch in &mut batches {
                        batch.first_send = false;
                    }
                }
                let ids: Vec<u64> = batches.iter().map(|b| b.batch_id).collect();
                let span = tracing::info_span!(
                    "store_outcomes",
                    otel.name = "sluice.store_outcomes",
                    otel.kind = "consumer",
                    sluice.batches = sluice_telemetry::int_attr(batches.len()),
                    sluice.messages = sluice_telemetry::int_attr(
                        batches.iter().map(|b| b.messages.len()).sum::<usize>()
                    ),
                    sluice.attempts = sluice_telemetry::int_attr(
                        batches.iter().map(|b| b.attempts.len()).sum::<usize>()
                    ),
                );
                sluice_telemetry::set_parent(&span, Some(&batches[0].traceparent), None);
                let started = std::time::Instant::now();
                let counts = (
                    batches.len(),
                    batches.iter().map(|b| b.attempts.len()).sum::<usize>(),
                );
                let stored = match store_outcomes(&plane, batches).instrument(span).await {
                    Ok(()) => Ok(()),
                    // The database is down or slow: the data plane keeps the batches and
                    // sends them again later; nothing is wrong with them.
                    Err((err @ ApiError::Unavailable(_), _)) => Err(err),
                    Err((err, batches)) => {
                        tracing::warn!(error = %err, batches = batches.len(), "storing outcome batches failed; trying each alone");
                        store_or_set_aside(&plane, batches).await
                    }
                };
                tracing::debug!(
                    batches = counts.0,
                    attempts = counts.1,
                    micros = started.elapsed().as_micros() as u64,
                    "outcome batches stored"
                );
                match stored {
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
    // watched before (restored or replaced): start over with a snapshot. So does one from
    // before the oldest change retention kept: the changes after it are gone.
    let oldest = sluice_store::retention::oldest_config_revision(&db).await?;
    let compacted = oldest > 0 && from < oldest - 1;
    if compacted && from != 0 {
        tracing::info!(
            from_revision = from,
            oldest_kept = oldest,
            "a watcher resumes from before the compacted changes; it gets a snapshot"
        );
    }
    let mut current = if from == 0 || from > latest || compacted {
        snapshot(&db, &plane.config().keyring, tx).await?
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
            // A gap after `current`: a rolled-back revision, or changes this watcher had
            // not read yet compacted away meanwhile (it lagged by a whole window). Then
            // only a snapshot makes it whole again.
            if changes[0].revision > current + 1
                && current < sluice_store::retention::oldest_config_revision(&db).await? - 1
            {
                tracing::info!(
                    revision = current,
                    "a watcher fell behind the compacted changes; it gets a snapshot"
                );
                current = snapshot(&db, &plane.config().keyring, tx).await?;
                continue;
            }
            let response = resolve_changes(&db, &plane.config().keyring, &changes, last).await?;
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
async fn snapshot(
    db: &DatabaseConnection,
    keyring: &Keyring,
    tx: &WatchSender,
) -> Result<i64, ApiError> {
    let revision = latest_revision(db).await?;
    let now = now_ms();
    let keys = api_key::Entity::find()
        .filter(api_key::Column::RevokeMs.is_null())
        .all(db)
        .await?;
    // Only the workspaces with a window, a retry policy or a publish quota of their own: the
    // rest take the defaults.
    let workspaces = workspace::Entity::find()
        .filter(
            sea_orm::Condition::any()
                .add(workspace::Column::RetentionMs.is_not_null())
                .add(workspace::Column::IdempotencyRetentionMs.is_not_null())
                .add(workspace::Column::RetryPolicy.is_not_null())
                .add(workspace::Column::PublishQuotaRate.is_not_null()),
        )
        .all(db)
        .await?;
    let mut first = pb::WatchConfigResponse {
        reset: true,
        upserted_api_keys: keys.iter().map(config_key).collect(),
        upserted_workspaces: workspaces.iter().map(config_workspace).collect(),
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
            .map(|s| convert::config_subscription(s, now, keyring))
            .collect::<Result<_, _>>()?;
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

fn config_workspace(w: &workspace::Model) -> pb::ConfigWorkspace {
    pb::ConfigWorkspace {
        id: w.id.clone(),
        retention: w.retention_ms.map(convert::duration_ms),
        idempotency_retention: w.idempotency_retention_ms.map(convert::duration_ms),
        retry_policy: crate::policy::to_proto(w.retry_policy.as_deref()),
        publish_quota: crate::policy::quota_to_proto(w.publish_quota_rate, w.publish_quota_burst),
    }
}

async fn resolve_changes(
    db: &DatabaseConnection,
    keyring: &Keyring,
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
                        .push(convert::config_subscription(&s, now, keyring)?),
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
            CHANGE_WORKSPACE => match workspace::Entity::find_by_id(change.resource_id.clone())
                .one(db)
                .await?
            {
                Some(w) if crate::policy::held(&w) => {
                    response.upserted_workspaces.push(config_workspace(&w))
                }
                _ => response
                    .deleted_workspace_ids
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
        Ok(pb::DeliveryStatus::Cancelled) => "cancelled",
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
/// Attempts beyond which a transaction is stored without waiting for more batches.
const MAX_ATTEMPTS_PER_COMMIT: usize = 4000;
/// How long outcome batches wait for others to share their transaction. The delivery log
/// lags by this much more; the data plane holds the batches until they are acked, so
/// nothing is at risk meanwhile.
const STORE_LINGER: Duration = Duration::from_millis(10);

/// How many times an outcome batch that fails to store is tried alone before it is set
/// aside in `quarantined_outcomes`.
const MAX_TRIES: u32 = 3;
/// The wait before trying a failed batch again, times the tries so far.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Stores each of `batches` alone, each tried up to [`MAX_TRIES`] times; one that still
/// fails (or is malformed, which no retry mends) is set aside in `quarantined_outcomes`
/// with its error, counted and logged, and acked like the rest, so the data plane's outbox
/// moves on and the log never stalls behind it. Fails only when the database is
/// unavailable (the data plane sends the batches again later).
async fn store_or_set_aside(
    plane: &ControlPlane,
    batches: Vec<pb::ReportOutcomesRequest>,
) -> Result<(), ApiError> {
    for mut batch in batches {
        let mut tries = 0;
        loop {
            tries += 1;
            let error = match store_outcomes(plane, vec![batch]).await {
                Ok(()) => break,
                Err((err @ ApiError::Unavailable(_), _)) => return Err(err),
                Err((err, mut back)) => {
                    batch = back.pop().unwrap_or_default();
                    err
                }
            };
            let malformed = matches!(error, ApiError::Invalid(_));
            if tries < MAX_TRIES && !malformed {
                tokio::time::sleep(RETRY_PAUSE * tries).await;
                continue;
            }
            set_aside(plane, &batch, &error, tries).await?;
            break;
        }
    }
    Ok(())
}

/// Keeps a batch the control plane cannot store in `quarantined_outcomes`, encoded as it
/// arrived, for an operator to look at; its attempts are missing from the log meanwhile.
async fn set_aside(
    plane: &ControlPlane,
    batch: &pb::ReportOutcomesRequest,
    error: &ApiError,
    tries: u32,
) -> Result<(), ApiError> {
    use prost::Message as _;
    use sluice_store::control::quarantined_outcome;
    quarantined_outcome::ActiveModel {
        batch_id: Set(i64::try_from(batch.batch_id).unwrap_or(i64::MAX)),
        body: Set(batch.encode_to_vec()),
        error: Set(error.to_string()),
        tries: Set(i32::try_from(tries).unwrap_or(i32::MAX)),
        create_ms: Set(now_ms()),
        ..Default::default()
    }
    .insert(plane.db())
    .await?;
    crate::metrics::metrics().quarantined.add(1, &[]);
    tracing::error!(
        batch_id = batch.batch_id,
        messages = batch.messages.len(),
        attempts = batch.attempts.len(),
        tries,
        error = %error,
        "an outcome batch could not be stored; set aside in quarantined_outcomes"
    );
    Ok(())
}

/// Refuses a batch whose ids are not Sluice's: it could not be listed or purged by them.
fn check_batch(batch: &pb::ReportOutcomesRequest) -> Result<(), ApiError> {
    use sluice_core::ids::{IdKind, is_valid_id};
    let bad = |field: &str, kind: IdKind, id: &str| {
        (!is_valid_id(kind, id)).then(|| {
            let shown: String = id.chars().take(64).collect();
            ApiError::invalid(field, format!("{shown:?} is not {} id", kind.noun()))
        })
    };
    for m in &batch.messages {
        if let Some(err) = bad("messages.id", IdKind::Message, &m.id)
            .or_else(|| bad("messages.workspace_id", IdKind::Workspace, &m.workspace_id))
        {
            return Err(err);
        }
    }
    for a in batch.attempts.iter().filter_map(|o| o.attempt.as_ref()) {
        if let Some(err) = bad("attempts.attempt.id", IdKind::Attempt, &a.id)
            .or_else(|| {
                bad(
                    "attempts.attempt.message_id",
                    IdKind::Message,
                    &a.message_id,
                )
            })
            .or_else(|| {
                bad(
                    "attempts.attempt.workspace_id",
                    IdKind::Workspace,
                    &a.workspace_id,
                )
            })
            .or_else(|| {
                bad(
                    "attempts.attempt.subscription_id",
                    IdKind::Subscription,
                    &a.subscription_id,
                )
            })
        {
            return Err(err);
        }
    }
    Ok(())
}

/// How many of each part a batch brought, to split merged batches back apart.
struct Shape {
    batch_id: u64,
    first_send: bool,
    traceparent: String,
    messages: usize,
    attempts: usize,
    disabled: usize,
}

/// Stores one batch in one transaction, with a handful of multi-row statements whatever its
/// size (a statement costs a round trip to the database, so per-attempt statements would
/// dominate the cost of a busy data plane). Every insert ignores rows already there, so a
/// batch resent after a lost ack changes nothing. On failure the batches come back, as
/// they were, with the error.
async fn store_outcomes(
    plane: &ControlPlane,
    batches: Vec<pb::ReportOutcomesRequest>,
) -> Result<(), (ApiError, Vec<pb::ReportOutcomesRequest>)> {
    // Checked for repeats unless every batch says it was never sent before.
    let first_send = batches.iter().all(|b| b.first_send);
    let mut shapes = Vec::with_capacity(batches.len());
    let mut batch = pb::ReportOutcomesRequest::default();
    for b in batches {
        shapes.push(Shape {
            batch_id: b.batch_id,
            first_send: b.first_send,
            traceparent: b.traceparent,
            messages: b.messages.len(),
            attempts: b.attempts.len(),
            disabled: b.disabled_subscriptions.len(),
        });
        batch.messages.extend(b.messages);
        batch.attempts.extend(b.attempts);
        batch
            .disabled_subscriptions
            .extend(b.disabled_subscriptions);
    }
    match store_merged(plane, &batch, first_send).await {
        Ok(()) => Ok(()),
        Err(err) => Err((err, split(batch, shapes))),
    }
}

/// The batches `shapes` describe, taken back out of their merge.
fn split(
    mut merged: pb::ReportOutcomesRequest,
    shapes: Vec<Shape>,
) -> Vec<pb::ReportOutcomesRequest> {
    let mut messages = merged.messages.drain(..);
    let mut attempts = merged.attempts.drain(..);
    let mut disabled = merged.disabled_subscriptions.drain(..);
    shapes
        .into_iter()
        .map(|shape| pb::ReportOutcomesRequest {
            batch_id: shape.batch_id,
            first_send: shape.first_send,
            traceparent: shape.traceparent,
            messages: messages.by_ref().take(shape.messages).collect(),
            attempts: attempts.by_ref().take(shape.attempts).collect(),
            disabled_subscriptions: disabled.by_ref().take(shape.disabled).collect(),
        })
        .collect()
}

async fn store_merged(
    plane: &ControlPlane,
    batch: &pb::ReportOutcomesRequest,
    first_send: bool,
) -> Result<(), ApiError> {
    check_batch(batch)?;
    let session = Session::begin(plane.db()).await?;
    match store_in(&session, batch, first_send).await {
        Ok((statements, revision)) => {
            // Each statement writes its own table, so PostgreSQL may send them as one when
            // nothing went before them (a first send).
            session.commit_independent(statements).await?;
            plane.published(revision);
            if !batch.attempts.is_empty() {
                plane.logged_attempts();
            }
            Ok(())
        }
        Err(err) => {
            session.rollback().await;
            Err(err)
        }
    }
}

/// Everything of `store_outcomes` but the commit, which takes the returned statements
/// along (one round trip on SQLite).
async fn store_in(
    session: &Session,
    batch: &pb::ReportOutcomesRequest,
    first_send: bool,
) -> Result<(Vec<sea_orm::Statement>, i64), ApiError> {
    // Only a disable changes config; plain outcome batches do not take the config lock,
    // so several control-plane replicas store outcomes side by side. (On SQLite the one
    // connection already serialises writers.)
    if !batch.disabled_subscriptions.is_empty() {
        lock_config_writes(session).await?;
    }
    let statements = store_log(session, &batch.messages, &batch.attempts, first_send).await?;
    let mut revision = 0;
    if batch.disabled_subscriptions.is_empty() {
        return Ok((statements, revision));
    }
    // Rare: the log's statements go now, so the disables see them.
    session.run(statements).await?;
    for d in &batch.disabled_subscriptions {
        let Some(row) = subscription::Entity::find_by_id(d.subscription_id.clone())
            .one(session)
            .await?
        else {
            continue;
        };
        if !row.enabled {
            continue;
        }
        let workspace_id = row.workspace_id.clone();
        let mut row = row.into_active_model();
        let reason =
            pb::DisabledReason::try_from(d.reason).unwrap_or(pb::DisabledReason::PersistentFailure);
        row.enabled = Set(false);
        row.disabled_reason = Set(Some(convert::reason_name(reason).to_owned()));
        row.disabled_message = Set(Some(d.message.clone()));
        row.disable_ms = Set(Some(
            d.disable_time.as_ref().and_then(ms).unwrap_or_else(now_ms),
        ));
        row.update_ms = Set(now_ms());
        row.update(session).await?;
        crate::fail_pending_deliveries(session, &workspace_id, &d.subscription_id).await?;
        revision = record_change(
            session,
            CHANGE_SUBSCRIPTION,
            &d.subscription_id,
            &workspace_id,
        )
        .await?;
        tracing::warn!(subscription_id = %d.subscription_id, reason = convert::reason_name(reason), "subscription disabled by the data plane");
    }
    Ok((Vec::new(), revision))
}

/// The statements that store a batch of the delivery log, to go with the commit: the
/// messages, the attempts not stored before, each delivery once in its latest state (a
/// message's record usually arrives with its first attempts, so most deliveries are written
/// once, already final) and each endpoint's health. Unless the batch is a `first_send`,
/// only the attempts this transaction stores count (a batch resent after a lost ack, maybe
/// to another replica): on PostgreSQL the insert says which it stored, on SQLite (one
/// writer) which are stored already is asked first, so a resent batch counts nothing twice
/// in the health. Every statement leaves rows already there alone (or keeps the later
/// state).
async fn store_log(
    session: &Session,
    messages: &[pb::MessageRecord],
    outcomes: &[pb::AttemptOutcome],
    first_send: bool,
) -> Result<Vec<sea_orm::Statement>, ApiError> {
    let backend = session.get_database_backend();
    // The batch's maps are keyed by Sluice's own ids: no need for SipHash's flood resistance.
    let mut created: FastMap<&str, i64> = FastMap::with_capacity(messages.len());
    let mut message_rows = Vec::with_capacity(messages.len());
    for m in messages {
        let create_ms = m.create_time.as_ref().and_then(ms).unwrap_or_else(now_ms);
        created.insert(m.id.as_str(), create_ms);
        message_rows.push(hot::control::MessageRow {
            id: &m.id,
            workspace_id: &m.workspace_id,
            event_type: &m.event_type,
            create_ms,
            delivery_count: i64::try_from(m.subscription_ids.len()).unwrap_or(i64::MAX),
            ordering_key: (!m.ordering_key.is_empty()).then_some(m.ordering_key.as_str()),
        });
    }

    let mut new: Vec<NewAttempt> = Vec::with_capacity(outcomes.len());
    let mut seen_in_batch = FastSet::default();
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
    new.sort_by_key(|n| (n.attempt_ms, n.attempt.attempt_number));
    let mut statements = Vec::with_capacity(5);
    if !message_rows.is_empty() {
        if message_rows.iter().any(|m| m.ordering_key.is_some()) {
            // Rare (ordered delivery): those with an ordering key in a statement of their own.
            let (keyed, plain): (Vec<_>, Vec<_>) = message_rows
                .into_iter()
                .partition(|m| m.ordering_key.is_some());
            statements.push(hot::control::insert_keyed_messages(backend, &keyed));
            if !plain.is_empty() {
                statements.push(hot::control::insert_messages(backend, &plain));
            }
        } else {
            statements.push(hot::control::insert_messages(backend, &message_rows));
        }
    }
    if !new.is_empty() {
        if first_send {
            statements.push(hot::control::insert_attempts(
                backend,
                &new.iter().map(attempt_row).collect::<Vec<_>>(),
            ));
        } else if backend == DbBackend::Postgres {
            // The batch may have been stored before (its ack lost), or be being stored right
            // now by another replica the data plane sent it to first: only the attempts this
            // insert stores count, so nothing counts twice. The messages go in the same
            // round trip.
            statements.push(hot::control::insert_attempts_returning_id(
                backend,
                &new.iter().map(attempt_row).collect::<Vec<_>>(),
            ));
            let inserted = returned_ids(session.run(std::mem::take(&mut statements)).await?);
            new.retain(|n| inserted.contains(&n.attempt.id));
        } else {
            // Which attempts were stored before (the batch was sent before and its ack
            // lost): those count for nothing again. SQLite has one writer, so nothing is
            // being stored beside this. The messages go in the same round trip.
            statements.push(hot::control::existing_attempts(
                backend,
                new.iter().map(|n| n.attempt.id.as_str()),
            ));
            let stored = returned_ids(session.run(std::mem::take(&mut statements)).await?);
            if !stored.is_empty() {
                new.retain(|n| !stored.contains(&n.attempt.id));
            }
            if !new.is_empty() {
                statements.push(hot::control::insert_attempts(
                    backend,
                    &new.iter().map(attempt_row).collect::<Vec<_>>(),
                ));
            }
        }
    }

    // Deliveries: as the messages describe them, then each takes its latest new attempt's
    // state (attempts are sorted, so the last one of a key wins).
    let mut deliveries: FastMap<(&str, &str), hot::control::DeliveryRow> = FastMap::default();
    let mut order: Vec<(&str, &str)> = Vec::new();
    for m in messages {
        let create_ms = created.get(m.id.as_str()).copied().unwrap_or_default();
        for sub in &m.subscription_ids {
            let key = (m.id.as_str(), sub.as_str());
            if deliveries.contains_key(&key) {
                continue;
            }
            order.push(key);
            deliveries.insert(
                key,
                hot::control::DeliveryRow {
                    message_id: &m.id,
                    subscription_id: sub,
                    workspace_id: &m.workspace_id,
                    event_type: &m.event_type,
                    status: "pending",
                    attempt_count: 0,
                    last_attempt_ms: None,
                    next_attempt_ms: Some(create_ms),
                    last_status_code: 0,
                    last_error_kind: "",
                    create_ms,
                },
            );
        }
    }
    for n in &new {
        let a = n.attempt;
        let key = (a.message_id.as_str(), a.subscription_id.as_str());
        if !deliveries.contains_key(&key) {
            order.push(key);
        }
        deliveries.insert(
            key,
            hot::control::DeliveryRow {
                message_id: &a.message_id,
                subscription_id: &a.subscription_id,
                workspace_id: &a.workspace_id,
                event_type: &a.event_type,
                status: delivery_status_name(n.outcome.delivery_status),
                attempt_count: i64::from(a.attempt_number),
                last_attempt_ms: Some(n.attempt_ms),
                next_attempt_ms: n.outcome.next_attempt_time.as_ref().and_then(ms),
                last_status_code: i64::from(a.status_code),
                last_error_kind: &a.error_kind,
                create_ms: created.get(key.0).copied().unwrap_or(n.attempt_ms),
            },
        );
    }
    let delivery_rows: Vec<hot::control::DeliveryRow> = order
        .iter()
        .filter_map(|key| deliveries.remove(key))
        .collect();
    if !delivery_rows.is_empty() {
        statements.push(hot::control::upsert_deliveries(backend, &delivery_rows));
    }
    let health = health_rows(&new);
    if !health.is_empty() {
        statements.push(hot::control::upsert_health(backend, &health));
    }
    Ok(statements)
}

/// The `id` column of the rows `results` holds.
fn returned_ids(results: Vec<sea_orm::QueryResult>) -> FastSet<String> {
    results
        .into_iter()
        .filter_map(|row| row.try_get::<String>("", "id").ok())
        .collect()
}

/// The `attempts` row of one new attempt.
fn attempt_row<'a>(n: &NewAttempt<'a>) -> hot::control::AttemptRow<'a> {
    let a = n.attempt;
    hot::control::AttemptRow {
        id: &a.id,
        workspace_id: &a.workspace_id,
        message_id: &a.message_id,
        subscription_id: &a.subscription_id,
        event_type: &a.event_type,
        attempt_number: i64::from(a.attempt_number),
        attempt_ms: n.attempt_ms,
        success: a.success,
        status_code: i64::from(a.status_code),
        error_kind: &a.error_kind,
        error_message: &a.error_message,
        latency_us: a
            .latency
            .as_ref()
            .map(|d| {
                d.seconds
                    .saturating_mul(1_000_000)
                    .saturating_add(i64::from(d.nanos / 1000))
            })
            .unwrap_or(0),
        response_excerpt: &a.response_excerpt,
        trigger: trigger_name(a.trigger),
        url: &a.url,
    }
}

/// One attempt, flattened for storage.
struct NewAttempt<'a> {
    attempt: &'a pb::Attempt,
    outcome: &'a pb::AttemptOutcome,
    attempt_ms: i64,
}

/// Endpoint health: per subscription, the failures since its last success.
fn health_rows<'a>(new: &'a [NewAttempt<'a>]) -> Vec<hot::control::HealthRow<'a>> {
    let mut health: std::collections::BTreeMap<&str, hot::control::HealthRow> =
        std::collections::BTreeMap::new();
    for n in new {
        let h =
            health
                .entry(n.attempt.subscription_id.as_str())
                .or_insert(hot::control::HealthRow {
                    subscription_id: &n.attempt.subscription_id,
                    workspace_id: &n.attempt.workspace_id,
                    consecutive_failures: 0,
                    last_success_ms: None,
                    last_failure_ms: None,
                    concurrency_limit: None,
                });
        if n.outcome.concurrency_limit > 0 {
            h.concurrency_limit = Some(i64::from(n.outcome.concurrency_limit));
        }
        if n.attempt.success {
            h.consecutive_failures = 0;
            h.last_success_ms = Some(n.attempt_ms);
        } else {
            h.consecutive_failures += 1;
            h.last_failure_ms = Some(n.attempt_ms);
        }
    }
    health.into_values().collect()
}
