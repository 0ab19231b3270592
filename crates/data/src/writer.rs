//! The data plane's one writer of the hot path. One task takes every event queued by
//! `Publish` and `PublishStream`, every attempt outcome queued by the dispatcher and every
//! outbox row the control plane acked, and writes all of it in one transaction: messages
//! and their fan-out rows, what the outcomes change, one outbox row for the control plane,
//! and the deletion of acked rows (through `sluice_store::hot`: one round trip on SQLite).
//! Then it answers each publisher, hands the new deliveries straight to the dispatcher and
//! the outbox row straight to the reporter.
//!
//! Durability costs one commit per cycle, however many publishers and attempts wait on it;
//! while a commit is under way the next cycle's work piles up (group commit). A cycle of
//! outcomes alone waits a little for publishes to share their commit.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use sea_orm::{ColumnTrait, DbBackend, DbErr, EntityTrait, QueryFilter, QuerySelect, Statement};
use sluice_proto::data::v1::PublishResponse;
use sluice_store::data::{delivery, message};
use sluice_store::hot::{self, Session};
use sluice_store::is_unique_violation;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};

use crate::backoff::Backoff;
use crate::dispatcher;
use crate::error::DataError;
use crate::fanout::{Plan, REPORT_DELAY, Record};
use crate::outbox::{self, Committed, ReportBody};
use crate::outcomes::{self, OutcomeEvent};
use crate::queue::{StoredMessage, first_attempts};
use crate::scheduler::{MAX_HELD, ScheduledRetry};
use crate::shared::Shared;
use crate::time::duration_ms;

/// The most events, and separately the most outcomes, committed together.
const MAX_BATCH: usize = 1000;
/// How long a cycle of outcomes alone waits for publishes to share its commit.
const OUTCOME_LINGER: std::time::Duration = std::time::Duration::from_millis(2);
/// How often a failing outcome write is tried during shutdown before its outcomes are
/// given up (the deliveries then stay pending and are attempted again after the restart).
const SHUTDOWN_WRITE_TRIES: u32 = 3;
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

/// Work for one transaction, as the loop gathered it.
#[derive(Default)]
struct Cycle {
    publishes: Vec<PublishJob>,
    outcomes: Vec<OutcomeEvent>,
    /// Acked outbox rows to delete.
    acked: Vec<i64>,
    /// A message's record is due for the control plane.
    reports_due: bool,
    /// Report every message not yet reported (the last cycle of shutdown).
    all_reports: bool,
}

impl Cycle {
    fn is_empty(&self) -> bool {
        self.publishes.is_empty()
            && self.outcomes.is_empty()
            && self.acked.is_empty()
            && !self.reports_due
            && !self.all_reports
    }
}

/// The writer's loop, until shutdown is over: publishes queued when shutdown began are
/// still written and answered (those publishers are waiting and the write is quick), then
/// the publish queue is closed; outcomes are written until `outcomes_closing` and nothing
/// is left; a last cycle reports every message the control plane has not heard of yet.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut publishes: mpsc::Receiver<PublishJob>,
    mut outcomes: mpsc::Receiver<OutcomeEvent>,
) {
    // However the loop ends, shutdown must not wait for publishes forever.
    let _drained = shared.publishes_drained.clone().drop_guard();
    let mut publishes_open = true;
    let mut publishes_closed = false;
    let mut closing = false;
    // Outcomes whose write failed, tried again at `retry_at` (publishes never wait for them).
    let mut carried: Vec<OutcomeEvent> = Vec::new();
    let mut retry_at: Option<Instant> = None;
    let mut backoff = Backoff::new();
    let mut failures_while_closing = 0u32;
    loop {
        let mut cycle = Cycle::default();
        let carried_due = !carried.is_empty() && retry_at.is_none_or(|at| at <= Instant::now());
        if !carried_due {
            if closing && !publishes_open && carried.is_empty() && outcomes.is_empty() {
                if failures_while_closing >= SHUTDOWN_WRITE_TRIES
                    || shared.fanouts.next_report_due().is_none()
                {
                    return;
                }
                cycle.all_reports = true;
            } else {
                let acked_deadline = shared.outbox.acked_deadline();
                let report_due = shared.fanouts.next_report_due();
                tokio::select! {
                    biased;
                    () = shared.shutdown.cancelled(), if !publishes_closed => {
                        // Ingest refuses new events from now on; what is queued is still
                        // written.
                        publishes.close();
                        publishes_closed = true;
                    }
                    () = shared.outcomes_closing.cancelled(), if !closing => closing = true,
                    job = publishes.recv(), if publishes_open => match job {
                        Some(job) => cycle.publishes.push(job),
                        None => {
                            publishes_open = false;
                            shared.publishes_drained.cancel();
                        }
                    },
                    event = outcomes.recv() => {
                        // The senders live in `Shared`, so the channel never ends while we run.
                        if let Some(event) = event {
                            cycle.outcomes.push(event);
                        }
                    }
                    () = sleep_until(retry_at.unwrap_or_else(Instant::now)), if !carried.is_empty() => {}
                    () = shared.outbox.acked_waiting.notified(), if acked_deadline.is_none() => {}
                    () = sleep_until(acked_deadline.unwrap_or_else(Instant::now)), if acked_deadline.is_some() => {
                        cycle.acked = shared.outbox.acked_rows(MAX_BATCH);
                    }
                    () = sleep_until(report_due.unwrap_or_else(Instant::now)), if report_due.is_some() => {
                        cycle.reports_due = true;
                    }
                }
            }
        }
        while publishes_open && cycle.publishes.len() < MAX_BATCH {
            match publishes.try_recv() {
                Ok(job) => cycle.publishes.push(job),
                Err(_) => break,
            }
        }
        if !carried.is_empty() && retry_at.is_none_or(|at| at <= Instant::now()) {
            // Older outcomes first: statements keep the order of events.
            carried.append(&mut cycle.outcomes);
            cycle.outcomes = std::mem::take(&mut carried);
        }
        while cycle.outcomes.len() < MAX_BATCH {
            match outcomes.try_recv() {
                Ok(event) => cycle.outcomes.push(event),
                Err(_) => break,
            }
        }
        if cycle.publishes.is_empty()
            && !cycle.outcomes.is_empty()
            && !closing
            && publishes_open
            && !cycle.outcomes.iter().any(OutcomeEvent::is_flush)
        {
            linger(&mut cycle, &mut publishes, &mut outcomes).await;
            while cycle.publishes.len() < MAX_BATCH {
                match publishes.try_recv() {
                    Ok(job) => cycle.publishes.push(job),
                    Err(_) => break,
                }
            }
        }
        if cycle.is_empty() {
            continue;
        }
        if cycle.acked.is_empty() {
            // Acked rows ride along with the rest of the work.
            cycle.acked = shared.outbox.acked_rows(MAX_BATCH);
        }
        match commit_cycle(&shared, cycle).await {
            Ok(()) => {
                backoff.reset();
                retry_at = None;
                failures_while_closing = 0;
            }
            Err((failed, retry_now)) => {
                if closing {
                    failures_while_closing += 1;
                    if failures_while_closing >= SHUTDOWN_WRITE_TRIES {
                        tracing::error!(
                            outcomes = failed.len(),
                            "giving up on these outcomes at shutdown; their deliveries stay pending"
                        );
                        outcomes::answer_flushes(failed);
                        continue;
                    }
                }
                carried = failed;
                retry_at = (!retry_now).then(|| Instant::now() + backoff.next_delay());
            }
        }
    }
}

/// Lets a cycle of outcomes alone wait up to [`OUTCOME_LINGER`] for more work, so that it
/// shares the next publishes' commit (publishes are answered only after theirs; outcomes
/// need no hurry). Ends at the first publish, at a `Flush`, or when the cycle is full.
async fn linger(
    cycle: &mut Cycle,
    publishes: &mut mpsc::Receiver<PublishJob>,
    outcomes: &mut mpsc::Receiver<OutcomeEvent>,
) {
    let until = Instant::now() + OUTCOME_LINGER;
    while cycle.outcomes.len() < MAX_BATCH {
        tokio::select! {
            biased;
            job = publishes.recv() => {
                if let Some(job) = job {
                    cycle.publishes.push(job);
                }
                return;
            }
            event = outcomes.recv() => match event {
                Some(event) => {
                    let flush = event.is_flush();
                    cycle.outcomes.push(event);
                    if flush {
                        return;
                    }
                }
                None => return,
            },
            () = sleep_until(until) => return,
        }
    }
}

/// Writes one cycle in one transaction and completes it: answers publishers, hands the
/// new deliveries to the dispatcher and the outbox batch to the reporter. When the
/// transaction fails, publishes are written again on their own (so they never wait on a
/// failing outcome write) and the outcomes are returned, to be tried again (at once when
/// the failure may have been the publishes').
async fn commit_cycle(shared: &Arc<Shared>, cycle: Cycle) -> Result<(), (Vec<OutcomeEvent>, bool)> {
    let started = std::time::Instant::now();
    let written = write(
        shared,
        &cycle.publishes,
        &cycle.outcomes,
        &cycle.acked,
        cycle.all_reports,
    )
    .await;
    tracing::debug!(
        events = cycle.publishes.len(),
        outcomes = cycle.outcomes.len(),
        acked = cycle.acked.len(),
        micros = started.elapsed().as_micros() as u64,
        "write cycle committed"
    );
    let Cycle {
        publishes,
        outcomes: events,
        acked,
        ..
    } = cycle;
    match written {
        Ok(written) => {
            shared.outbox.deleted(&acked);
            completed(shared, publishes, written);
            outcomes::answer_flushes(events);
            Ok(())
        }
        Err(err) if publishes.is_empty() => {
            tracing::error!(error = %err, outcomes = events.len(), "writing attempt outcomes failed; retrying");
            Err((events, false))
        }
        Err(err) => {
            if !is_unique_violation(&err) {
                tracing::warn!(error = %err, "writing a batch failed; writing its events on their own");
            }
            publish_alone(shared, publishes, err).await;
            // The outcomes go again at once, with the next cycle.
            Err((events, true))
        }
    }
}

/// After a commit: open fan-outs move on, the batch goes to the reporter, publishers get
/// their answers and the new deliveries go to the dispatcher.
fn completed(shared: &Arc<Shared>, publishes: Vec<PublishJob>, written: Written) {
    let Written {
        resolutions,
        lease_until,
        batch,
        plan,
    } = written;
    shared.fanouts.committed(plan);
    if let Some(batch) = batch {
        shared.outbox.committed(batch);
    }
    finish(shared, publishes, resolutions, lease_until);
}

/// Writes publishes without anything else, after a combined write failed with `err`.
async fn publish_alone(shared: &Arc<Shared>, jobs: Vec<PublishJob>, err: DbErr) {
    if !is_unique_violation(&err) {
        match write(shared, &jobs, &[], &[], false).await {
            Ok(written) => completed(shared, jobs, written),
            Err(err) if is_unique_violation(&err) => {
                Box::pin(publish_alone(shared, jobs, err)).await
            }
            Err(err) => fail(jobs, &err),
        }
        return;
    }
    // Another writer (a replica, or a racing batch) took an idempotency key between our
    // check and our insert: redo each event alone, where the check then sees it.
    for job in jobs {
        let jobs = vec![job];
        match write(shared, &jobs, &[], &[], false).await {
            Ok(written) => completed(shared, jobs, written),
            Err(err) => fail(jobs, &err),
        }
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

/// What a write did.
struct Written {
    /// One per publish job, in order.
    resolutions: Vec<Resolution>,
    /// The lease the new deliveries got; `Some` means this process holds them and hands
    /// them to its dispatcher, `None` leaves them to the scanner.
    lease_until: Option<i64>,
    /// The outbox row committed.
    batch: Option<Committed>,
    /// What the write did to open fan-outs, applied once committed.
    plan: Plan,
}

/// Resolves idempotency, then writes in one transaction: the new events (messages and
/// their fan-out rows), the outcomes, one outbox row with everything the control plane must
/// hear, and the deletion of outbox rows it acked. `all_reports` reports every message not
/// yet reported (shutdown), not only those due.
async fn write(
    shared: &Shared,
    jobs: &[PublishJob],
    events: &[OutcomeEvent],
    acked: &[i64],
    all_reports: bool,
) -> Result<Written, DbErr> {
    let resolutions = resolve(shared, jobs).await?;
    let created: Vec<&PublishJob> = jobs
        .iter()
        .zip(&resolutions)
        .filter(|(_, r)| matches!(r, Resolution::Created))
        .map(|(job, _)| job)
        .collect();
    let lease_until = if created.is_empty() {
        None
    } else {
        in_memory_lease(shared, &created)
    };
    let backend = shared.db.get_database_backend();
    let session = Session::begin(&shared.db).await?;
    let mut report = ReportBody::default();
    // Outcomes first: their rare writes (a failed delivery's row, a disabled subscription)
    // go through sea-orm on the session now; the rest of the cycle is sent below, with
    // the commit, in as few round trips as the database allows.
    let mut plan = Plan::default();
    if let Err(err) =
        outcomes::apply(&session, &shared.fanouts, events, &mut report, &mut plan).await
    {
        session.rollback().await;
        return Err(err);
    }
    let mut statements = Vec::new();
    if !created.is_empty() {
        insert_created(
            backend,
            &created,
            lease_until,
            shared,
            &mut report,
            &mut statements,
        );
    }
    // Messages whose first attempts all concluded go with those outcomes; so do those that
    // waited long enough.
    shared
        .fanouts
        .finish_plan(&mut plan, all_reports, |_, record| report.message(record));
    if !plan.finished.is_empty() {
        statements.push(hot::data::delete_fanouts(
            backend,
            plan.finished.iter().map(String::as_str),
        ));
    }
    let reporting = !report.is_empty();
    let (messages, attempts) = (report.messages, report.attempts);
    let body = Bytes::from(report.into_bytes());
    if reporting {
        statements.push(hot::data::insert_outbox(
            backend,
            body.to_vec(),
            sluice_store::now_ms(),
        ));
    }
    if !acked.is_empty() {
        statements.push(hot::data::delete_outbox(backend, acked));
    }
    // Independent: the fan-outs and outbox rows deleted were committed by earlier cycles.
    let rows = session.commit_independent(statements).await?;
    let batch = if reporting {
        let seq = rows
            .iter()
            .find_map(|row| row.try_get::<i64>("", "seq").ok())
            .ok_or_else(|| DbErr::Custom("the outbox insert returned no seq".to_owned()))?;
        outbox::inserted();
        Some(Committed {
            seq,
            body,
            messages,
            attempts,
        })
    } else {
        None
    };
    Ok(Written {
        resolutions,
        lease_until,
        batch,
        plan,
    })
}

/// What each job is: new, or a repeat of an idempotency key already stored or earlier in
/// the batch.
async fn resolve(shared: &Shared, jobs: &[PublishJob]) -> Result<Vec<Resolution>, DbErr> {
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
    Ok(resolutions)
}

/// The lease new deliveries get: held by this process when it will dispatch them from
/// memory, free (for the scanner) when memory is full or shutdown began.
fn in_memory_lease(shared: &Shared, created: &[&PublishJob]) -> Option<i64> {
    let deliveries: usize = created.iter().map(|j| j.subscription_ids.len()).sum();
    let fits = shared.held.len().saturating_add(deliveries) <= MAX_HELD;
    (fits && !shared.shutdown.is_cancelled())
        .then(|| sluice_store::now_ms().saturating_add(shared.lease_ms()))
}

/// The statements that store new events: their messages and their fan-out rows.
fn insert_created(
    backend: DbBackend,
    created: &[&PublishJob],
    lease_until: Option<i64>,
    shared: &Shared,
    report: &mut ReportBody,
    statements: &mut Vec<Statement>,
) {
    let first_delay = first_delay_ms(shared);
    let subscription_lists: Vec<String> = created
        .iter()
        .map(|job| job.subscription_ids.join(","))
        .collect();
    let rows: Vec<hot::data::MessageRow> = created
        .iter()
        .zip(&subscription_lists)
        .map(|(job, subscriptions)| {
            let m = &job.message;
            hot::data::MessageRow {
                id: &m.id,
                workspace_id: &m.workspace_id,
                event_type: &m.event_type,
                envelope: &m.envelope,
                idempotency_key: m.idempotency_key.as_deref(),
                traceparent: m.traceparent.as_deref(),
                tracestate: m.tracestate.as_deref(),
                create_ms: m.create_ms,
                subscription_ids: subscriptions,
            }
        })
        .collect();
    statements.push(hot::data::insert_messages(backend, &rows));
    // One fan-out row per message stands for all of its first attempts (see `fanout`).
    let fanouts: Vec<(&str, i64, Option<i64>)> = created
        .iter()
        .filter(|job| !job.subscription_ids.is_empty())
        .map(|job| {
            (
                job.message.id.as_str(),
                job.message.create_ms.saturating_add(first_delay),
                lease_until,
            )
        })
        .collect();
    if !fanouts.is_empty() {
        statements.push(hot::data::insert_fanouts(backend, &fanouts));
    }
    // The control plane hears of a message with its first attempts' outcomes, unless this
    // process does not make them itself (no subscription, or left to the scanner).
    for job in created
        .iter()
        .filter(|job| job.subscription_ids.is_empty() || lease_until.is_none())
    {
        report.message(&message_record(&job.message, &job.subscription_ids));
    }
}

/// What the control plane is told of an accepted message.
fn message_record(message: &NewMessage, subscription_ids: &[String]) -> Record {
    Record::encode(
        &message.id,
        &message.workspace_id,
        &message.event_type,
        message.create_ms,
        subscription_ids,
    )
}

/// The wait before first attempts, in milliseconds.
fn first_delay_ms(shared: &Shared) -> i64 {
    shared
        .policy
        .schedule
        .delay_before_attempt(1)
        .map_or(0, duration_ms)
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
        let rows: Vec<MessageKey> = message::Entity::find()
            .select_only()
            .column(message::Column::Id)
            .column(message::Column::WorkspaceId)
            .column(message::Column::IdempotencyKey)
            .column(message::Column::SubscriptionIds)
            .filter(message::Column::WorkspaceId.is_in(workspaces.iter().copied()))
            .filter(message::Column::IdempotencyKey.is_in(chunk.to_vec()))
            .into_tuple()
            .all(&shared.db)
            .await?;
        found.extend(
            rows.into_iter()
                .filter(|(_, workspace, _, _)| workspaces.contains(workspace.as_str())),
        );
    }
    // Messages stored before fan-out rows existed have no subscription list: count their
    // delivery rows instead.
    let older: Vec<String> = found
        .iter()
        .filter(|(_, _, _, subscriptions)| subscriptions.is_none())
        .map(|(id, _, _, _)| id.clone())
        .collect();
    let counts: HashMap<String, i64> = if older.is_empty() {
        HashMap::new()
    } else {
        delivery::Entity::find()
            .select_only()
            .column(delivery::Column::MessageId)
            .column_as(delivery::Column::SubscriptionId.count(), "n")
            .filter(delivery::Column::MessageId.is_in(older))
            .group_by(delivery::Column::MessageId)
            .into_tuple::<(String, i64)>()
            .all(&shared.db)
            .await?
            .into_iter()
            .collect()
    };
    Ok(found
        .into_iter()
        .filter_map(|(id, workspace, key, subscriptions)| {
            let count = match subscriptions {
                Some(list) => list.split(',').filter(|s| !s.is_empty()).count(),
                None => usize::try_from(counts.get(&id).copied().unwrap_or(0)).unwrap_or(0),
            };
            Some((
                (workspace, key?),
                (id, u32::try_from(count).unwrap_or(u32::MAX)),
            ))
        })
        .collect())
}

/// A stored message's id, workspace, idempotency key and subscription list.
type MessageKey = (String, String, Option<String>, Option<String>);

/// Answers every publisher, then hands the new deliveries to the dispatcher.
fn finish(
    shared: &Arc<Shared>,
    jobs: Vec<PublishJob>,
    resolutions: Vec<Resolution>,
    lease_until: Option<i64>,
) {
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
    let mut due_now = Vec::new();
    let mut later = Vec::new();
    let first_delay = first_delay_ms(shared);
    for ((job, resolution), answer) in jobs.into_iter().zip(&resolutions).zip(answers) {
        // The publisher may have gone away; the event is durable and is delivered anyway.
        if matches!(resolution, Resolution::Created) {
            crate::metrics::metrics().published.add(1, &[]);
        }
        let _ = job.reply.send(Ok(answer));
        let (Resolution::Created, Some(lease_until)) = (resolution, lease_until) else {
            continue;
        };
        if job.subscription_ids.is_empty() {
            continue;
        }
        // Opened before any attempt can conclude, so the writer sees each conclusion.
        shared.fanouts.open(
            &job.message.id,
            message_record(&job.message, &job.subscription_ids),
            job.subscription_ids.clone(),
            REPORT_DELAY,
        );
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
        for task in first_attempts(&shared.held, &message, job.subscription_ids, lease_until) {
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
