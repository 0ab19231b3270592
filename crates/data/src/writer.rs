//! The group-commit writer of publishes: one task takes every event queued by `Publish` and
//! `PublishStream`, writes all of them (messages, deliveries and one outbox row) in one
//! transaction, answers each publisher, then hands the new deliveries straight to the
//! dispatcher. Durability costs one commit per batch, however many publishers wait on it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseTransaction, DbErr, EntityTrait, QueryFilter,
    QuerySelect, TransactionTrait,
};
use sluice_core::outcome::DeliveryStatus;
use sluice_proto::control::v1::{MessageRecord, ReportOutcomesRequest};
use sluice_proto::data::v1::PublishResponse;
use sluice_store::data::{delivery, message};
use sluice_store::is_unique_violation;
use tokio::sync::{mpsc, oneshot};

use crate::dispatcher;
use crate::error::DataError;
use crate::outcomes::insert_outbox;
use crate::queue::{DeliveryKey, DeliveryTask, StoredMessage};
use crate::scheduler::{MAX_HELD, ScheduledRetry};
use crate::shared::Shared;
use crate::time::{duration_ms, timestamp_from_ms};

/// The most events committed together.
const MAX_BATCH: usize = 1000;
/// Rows per INSERT statement, well under SQLite's and PostgreSQL's bound-parameter limits.
const ROWS_PER_INSERT: usize = 1000;

/// An event validated by ingest, waiting to be made durable.
pub(crate) struct PublishJob {
    pub(crate) message: NewMessage,
    /// The subscriptions it matched, in a stable order.
    pub(crate) subscription_ids: Vec<String>,
    pub(crate) reply: oneshot::Sender<Result<PublishResponse, DataError>>,
}

/// A message as ingest built it.
pub(crate) struct NewMessage {
    pub(crate) id: String,
    pub(crate) workspace_id: String,
    pub(crate) event_type: String,
    pub(crate) envelope: Bytes,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) traceparent: Option<String>,
    pub(crate) tracestate: Option<String>,
    pub(crate) create_ms: i64,
}

/// What became of one job.
enum Resolution {
    /// Written now.
    Created,
    /// A repeat of an earlier idempotency key: nothing written.
    Duplicate {
        message_id: String,
        delivery_count: u32,
    },
    /// A repeat of an earlier job of the same batch.
    DuplicateOfJob(usize),
}

/// The writer's loop. After shutdown it still writes what is queued (those publishers are
/// waiting and the write is quick), then stops.
pub(crate) async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<PublishJob>) {
    loop {
        let mut batch = Vec::new();
        tokio::select! {
            biased;
            job = rx.recv() => match job {
                Some(job) => batch.push(job),
                None => return,
            },
            () = shared.shutdown.cancelled() => {
                rx.close();
                while let Ok(job) = rx.try_recv() {
                    batch.push(job);
                    if batch.len() == MAX_BATCH {
                        process(&shared, std::mem::take(&mut batch)).await;
                    }
                }
                if !batch.is_empty() {
                    process(&shared, batch).await;
                }
                return;
            }
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        process(&shared, batch).await;
    }
}

async fn process(shared: &Arc<Shared>, jobs: Vec<PublishJob>) {
    let started = std::time::Instant::now();
    let written = write(shared, &jobs).await;
    tracing::debug!(
        events = jobs.len(),
        micros = started.elapsed().as_micros() as u64,
        "publish batch written"
    );
    match written {
        Ok(written) => finish(shared, jobs, written),
        // Another writer (a replica, or a racing batch) took an idempotency key between our
        // check and our insert: redo each event alone, where the check then sees it.
        Err(err) if is_unique_violation(&err) && jobs.len() > 1 => {
            for job in jobs {
                Box::pin(process(shared, vec![job])).await;
            }
        }
        Err(err) if is_unique_violation(&err) => match write(shared, &jobs).await {
            Ok(written) => finish(shared, jobs, written),
            Err(err) => fail(jobs, &err),
        },
        Err(err) => fail(jobs, &err),
    }
}

/// Answers every job of a failed write. The cause is logged once here; publishers get
/// UNAVAILABLE, which tells them the event was not stored and may be published again.
fn fail(jobs: Vec<PublishJob>, err: &DbErr) {
    tracing::error!(error = %err, events = jobs.len(), "writing published events failed");
    for job in jobs {
        let _ = job.reply.send(Err(DataError::Unavailable(
            "the event could not be stored; publish it again".to_owned(),
        )));
    }
}

/// What a batch write did.
struct Written {
    /// One per job, in order.
    resolutions: Vec<Resolution>,
    /// The lease the new deliveries got; `Some` means this process holds them and hands
    /// them to its dispatcher, `None` leaves them to the scanner.
    lease_until: Option<i64>,
}

/// Resolves idempotency, then writes every new event in one transaction.
async fn write(shared: &Shared, jobs: &[PublishJob]) -> Result<Written, DbErr> {
    let existing = existing_keys(shared, jobs).await?;
    let mut first_in_batch: HashMap<(&str, &str), usize> = HashMap::new();
    let mut resolutions = Vec::with_capacity(jobs.len());
    for (index, job) in jobs.iter().enumerate() {
        let Some(key) = job.message.idempotency_key.as_deref() else {
            resolutions.push(Resolution::Created);
            continue;
        };
        let workspace = job.message.workspace_id.as_str();
        if let Some((message_id, delivery_count)) =
            existing.get(&(workspace.to_owned(), key.to_owned()))
        {
            resolutions.push(Resolution::Duplicate {
                message_id: message_id.clone(),
                delivery_count: *delivery_count,
            });
        } else if let Some(first) = first_in_batch.get(&(workspace, key)) {
            resolutions.push(Resolution::DuplicateOfJob(*first));
        } else {
            first_in_batch.insert((workspace, key), index);
            resolutions.push(Resolution::Created);
        }
    }

    let created: Vec<&PublishJob> = jobs
        .iter()
        .zip(&resolutions)
        .filter(|(_, r)| matches!(r, Resolution::Created))
        .map(|(job, _)| job)
        .collect();
    if created.is_empty() {
        return Ok(Written {
            resolutions,
            lease_until: None,
        });
    }
    let lease_until = in_memory_lease(shared, &created);
    let tx = shared.db.begin().await?;
    insert_created(&tx, &created, lease_until, shared).await?;
    tx.commit().await?;
    Ok(Written {
        resolutions,
        lease_until,
    })
}

/// The lease new deliveries get: held by this process when it will dispatch them from
/// memory, free (for the scanner) when memory is full or shutdown began.
fn in_memory_lease(shared: &Shared, created: &[&PublishJob]) -> Option<i64> {
    let deliveries: usize = created.iter().map(|j| j.subscription_ids.len()).sum();
    let fits = shared.held.len().saturating_add(deliveries) <= MAX_HELD;
    (fits && !shared.shutdown.is_cancelled())
        .then(|| sluice_store::now_ms().saturating_add(shared.lease_ms()))
}

async fn insert_created(
    tx: &DatabaseTransaction,
    created: &[&PublishJob],
    lease_until: Option<i64>,
    shared: &Shared,
) -> Result<(), DbErr> {
    let first_delay = shared
        .policy
        .schedule
        .delay_before_attempt(1)
        .map_or(0, duration_ms);
    for chunk in created.chunks(ROWS_PER_INSERT) {
        message::Entity::insert_many(chunk.iter().map(|job| {
            let m = &job.message;
            message::ActiveModel {
                id: Set(m.id.clone()),
                workspace_id: Set(m.workspace_id.clone()),
                event_type: Set(m.event_type.clone()),
                envelope: Set(m.envelope.to_vec()),
                idempotency_key: Set(m.idempotency_key.clone()),
                traceparent: Set(m.traceparent.clone()),
                tracestate: Set(m.tracestate.clone()),
                create_ms: Set(m.create_ms),
            }
        }))
        .exec_without_returning(tx)
        .await?;
    }
    let deliveries: Vec<delivery::ActiveModel> = created
        .iter()
        .flat_map(|job| {
            let m = &job.message;
            job.subscription_ids
                .iter()
                .map(move |subscription_id| delivery::ActiveModel {
                    message_id: Set(m.id.clone()),
                    subscription_id: Set(subscription_id.clone()),
                    workspace_id: Set(m.workspace_id.clone()),
                    status: Set(DeliveryStatus::Pending.as_str().to_owned()),
                    attempt_count: Set(0),
                    next_attempt_ms: Set(m.create_ms.saturating_add(first_delay)),
                    lease_until_ms: Set(lease_until),
                    first_failure_ms: Set(None),
                    create_ms: Set(m.create_ms),
                })
        })
        .collect();
    let mut deliveries = deliveries.into_iter().peekable();
    while deliveries.peek().is_some() {
        let chunk: Vec<delivery::ActiveModel> = deliveries.by_ref().take(ROWS_PER_INSERT).collect();
        delivery::Entity::insert_many(chunk)
            .exec_without_returning(tx)
            .await?;
    }
    let report = ReportOutcomesRequest {
        messages: created
            .iter()
            .map(|job| MessageRecord {
                id: job.message.id.clone(),
                workspace_id: job.message.workspace_id.clone(),
                event_type: job.message.event_type.clone(),
                create_time: Some(timestamp_from_ms(job.message.create_ms)),
                subscription_ids: job.subscription_ids.clone(),
            })
            .collect(),
        ..Default::default()
    };
    insert_outbox(tx, &report).await
}

/// The stored messages that already carry an idempotency key of this batch:
/// (workspace, key) → (message id, its delivery count).
async fn existing_keys(
    shared: &Shared,
    jobs: &[PublishJob],
) -> Result<HashMap<(String, String), (String, u32)>, DbErr> {
    let keys: Vec<String> = jobs
        .iter()
        .filter_map(|j| j.message.idempotency_key.clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let workspaces: HashSet<&str> = jobs
        .iter()
        .map(|j| j.message.workspace_id.as_str())
        .collect();
    let mut found = Vec::new();
    for chunk in keys.chunks(ROWS_PER_INSERT) {
        let rows: Vec<(String, String, Option<String>)> = message::Entity::find()
            .select_only()
            .column(message::Column::Id)
            .column(message::Column::WorkspaceId)
            .column(message::Column::IdempotencyKey)
            .filter(message::Column::WorkspaceId.is_in(workspaces.iter().copied()))
            .filter(message::Column::IdempotencyKey.is_in(chunk.to_vec()))
            .into_tuple()
            .all(&shared.db)
            .await?;
        found.extend(
            rows.into_iter()
                .filter(|(_, workspace, _)| workspaces.contains(workspace.as_str()))
                .filter_map(|(id, workspace, key)| Some((id, workspace, key?))),
        );
    }
    if found.is_empty() {
        return Ok(HashMap::new());
    }
    let ids: Vec<String> = found.iter().map(|(id, _, _)| id.clone()).collect();
    let counts: HashMap<String, i64> = delivery::Entity::find()
        .select_only()
        .column(delivery::Column::MessageId)
        .column_as(delivery::Column::SubscriptionId.count(), "n")
        .filter(delivery::Column::MessageId.is_in(ids))
        .group_by(delivery::Column::MessageId)
        .into_tuple::<(String, i64)>()
        .all(&shared.db)
        .await?
        .into_iter()
        .collect();
    Ok(found
        .into_iter()
        .map(|(id, workspace, key)| {
            let count = counts.get(&id).copied().unwrap_or(0);
            ((workspace, key), (id, u32::try_from(count).unwrap_or(0)))
        })
        .collect())
}

/// Answers every publisher, then hands the new deliveries to the dispatcher.
fn finish(shared: &Arc<Shared>, jobs: Vec<PublishJob>, written: Written) {
    let Written {
        resolutions,
        lease_until,
    } = written;
    let answers: Vec<PublishResponse> = jobs
        .iter()
        .zip(&resolutions)
        .map(|(job, resolution)| match resolution {
            Resolution::Created => PublishResponse {
                message_id: job.message.id.clone(),
                duplicate: false,
                delivery_count: count(&job.subscription_ids),
            },
            Resolution::Duplicate {
                message_id,
                delivery_count,
            } => PublishResponse {
                message_id: message_id.clone(),
                duplicate: true,
                delivery_count: *delivery_count,
            },
            Resolution::DuplicateOfJob(first) => PublishResponse {
                message_id: jobs[*first].message.id.clone(),
                duplicate: true,
                delivery_count: count(&jobs[*first].subscription_ids),
            },
        })
        .collect();
    let created = resolutions
        .iter()
        .filter(|r| matches!(r, Resolution::Created))
        .count();
    if created > 0 {
        shared.outbox_written.notify_one();
    }

    let mut due_now = Vec::new();
    let mut later = Vec::new();
    let first_delay = shared
        .policy
        .schedule
        .delay_before_attempt(1)
        .map_or(0, duration_ms);
    for ((job, resolution), answer) in jobs.into_iter().zip(&resolutions).zip(answers) {
        // The publisher may have gone away; the event is durable and is delivered anyway.
        if matches!(resolution, Resolution::Created) {
            crate::metrics::metrics().published.add(1, &[]);
        }
        let _ = job.reply.send(Ok(answer));
        let (Resolution::Created, Some(lease_until)) = (resolution, lease_until) else {
            continue;
        };
        let NewMessage {
            id,
            workspace_id,
            event_type,
            envelope,
            traceparent,
            tracestate,
            create_ms,
            ..
        } = job.message;
        let message = Arc::new(StoredMessage {
            id,
            workspace_id,
            event_type,
            envelope,
            traceparent,
            tracestate,
            create_ms,
        });
        for subscription_id in job.subscription_ids {
            let key = DeliveryKey {
                message_id: message.id.clone(),
                subscription_id,
            };
            let Some(generation) = shared.held.claim(&key, lease_until) else {
                continue;
            };
            let task = DeliveryTask {
                key,
                message: Arc::clone(&message),
                attempt_count: 0,
                first_failure_ms: None,
                trigger: sluice_proto::control::v1::AttemptTrigger::Scheduled,
                generation,
            };
            if first_delay == 0 {
                due_now.push(task);
            } else {
                later.push(ScheduledRetry {
                    due_ms: message.create_ms.saturating_add(first_delay),
                    task,
                });
            }
        }
    }
    dispatcher::enqueue(shared, due_now);
    for retry in later {
        if let Err(err) = shared.retry_tx.try_send(retry) {
            // Timers busy or stopped: the scanner finds the delivery due in the database
            // once this process's lease on it runs out.
            let retry = err.into_inner();
            shared.held.release(&retry.task.key, retry.task.generation);
        }
    }
}

fn count(subscription_ids: &[String]) -> u32 {
    u32::try_from(subscription_ids.len()).unwrap_or(u32::MAX)
}
