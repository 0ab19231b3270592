//! The dispatcher: one lane per subscription, each with its own queue, concurrency limit,
//! rate limit and circuit breaker, so a slow or dead endpoint only ever delays itself.
//!
//! A lane is a small task that waits until its endpoint may take another attempt, then
//! spawns the attempt with a concurrency permit and goes on. No shared worker ever waits on
//! an endpoint. After each attempt the retry policy decides what happens next, the outcome
//! goes to the batching outcome writer, and a near retry is put on a timer.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use sluice_core::ids::{IdKind, new_id};
use sluice_core::outcome::DeliveryStatus;
use sluice_delivery::{AttemptResult, DeliveryRequest, slack_message};
use sluice_proto::control::v1::{
    Attempt, AttemptOutcome, AttemptTrigger, DeliveryStatus as ProtoDeliveryStatus, DisabledReason,
    SubscriptionDisabled,
};
use sluice_store::now_ms;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, sleep_until};
use tracing::Instrument;

use crate::breaker::{Breaker, Gate};
use crate::config_copy::{Endpoint, Subscription};
use crate::decision::{Next, Streak, after_attempt};
use crate::outcomes::{AttemptRecord, Disabled, FinishedRecord, OutcomeEvent, StreakChange};
use crate::queue::{DeliveryTask, StoredMessage};
use crate::scheduler::ScheduledRetry;
use crate::shared::Shared;
use crate::time::{duration_ms, proto_duration, timestamp_from_ms};

/// Retries due within this stay in memory on a timer; later ones go back to the database
/// (lease released) and the scanner loads them when due, so memory holds only near work.
pub(crate) const IN_MEMORY_RETRY_HORIZON: Duration = Duration::from_secs(60);

/// Every lane, by subscription id.
#[derive(Default)]
pub(crate) struct Lanes {
    map: Mutex<foldhash::HashMap<String, Arc<Lane>>>,
}

impl Lanes {
    fn get(&self, subscription_id: &str) -> Option<Arc<Lane>> {
        self.lock().get(subscription_id).cloned()
    }

    fn lock(&self) -> MutexGuard<'_, foldhash::HashMap<String, Arc<Lane>>> {
        // Inserting is the only mutation; a poisoned map is still a valid map.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One subscription's queue and limits.
pub(crate) struct Lane {
    subscription_id: String,
    /// Deliveries due now, oldest first.
    queue: Mutex<VecDeque<DeliveryTask>>,
    /// Wakes the lane: new work, an attempt finished, a probe ended.
    wake: Notify,
    /// `endpoint_concurrency` permits: attempts in flight to this endpoint.
    concurrency: Arc<Semaphore>,
    gate: Mutex<LaneGate>,
}

struct LaneGate {
    breaker: Breaker,
    rate: crate::rate_limit::RateLimiter,
}

impl Lane {
    fn queue(&self) -> MutexGuard<'_, VecDeque<DeliveryTask>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn gate(&self) -> MutexGuard<'_, LaneGate> {
        self.gate.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Hands deliveries that are due now to their lanes. Never waits.
pub(crate) fn enqueue(shared: &Arc<Shared>, tasks: impl IntoIterator<Item = DeliveryTask>) {
    if shared.shutdown.is_cancelled() {
        // They are pending in the database; the next start (or another replica) sends them.
        return;
    }
    // Tasks are grouped by lane with a scan of the few lanes seen so far (a message has a
    // handful of subscriptions), so no key is copied per task.
    let mut by_lane: Vec<(Arc<Lane>, Vec<DeliveryTask>)> = Vec::new();
    for task in tasks {
        let subscription_id = task.key.subscription_id.as_str();
        match by_lane
            .iter_mut()
            .find(|(lane, _)| lane.subscription_id == subscription_id)
        {
            Some((_, queued)) => queued.push(task),
            None => by_lane.push((lane(shared, subscription_id), vec![task])),
        }
    }
    for (lane, tasks) in by_lane {
        lane.queue().extend(tasks);
        lane.wake.notify_one();
    }
}

/// The lane of a subscription, created (and its task started) on first use.
fn lane(shared: &Arc<Shared>, subscription_id: &str) -> Arc<Lane> {
    let mut lanes = shared.lanes.lock();
    if let Some(lane) = lanes.get(subscription_id) {
        return Arc::clone(lane);
    }
    let config = &shared.config;
    let lane = Arc::new(Lane {
        subscription_id: subscription_id.to_owned(),
        queue: Mutex::new(VecDeque::new()),
        wake: Notify::new(),
        concurrency: Arc::new(Semaphore::new(config.endpoint_concurrency.max(1))),
        gate: Mutex::new(LaneGate {
            breaker: Breaker::new(
                config.circuit_breaker_failures,
                config.circuit_breaker_cooldown,
            ),
            rate: crate::rate_limit::RateLimiter::default(),
        }),
    });
    lanes.insert(subscription_id.to_owned(), Arc::clone(&lane));
    shared
        .lane_tasks
        .spawn(run_lane(Arc::clone(shared), Arc::clone(&lane)));
    lane
}

/// A lane's loop: wait for work, for the breaker, for the rate limit and for a concurrency
/// permit, then spawn the attempt and go round again.
async fn run_lane(shared: Arc<Shared>, lane: Arc<Lane>) {
    loop {
        if shared.shutdown.is_cancelled() {
            return;
        }
        drop_withdrawn(&shared, &lane);
        if lane.queue().is_empty() {
            tokio::select! {
                () = lane.wake.notified() => continue,
                () = shared.shutdown.cancelled() => return,
            }
        }

        // Deliveries of a deleted or disabled subscription end without an attempt, and
        // without waiting for the breaker or the rate limit.
        let snapshot = shared.copy.current();
        let subscription = snapshot.subscription(&lane.subscription_id).cloned();
        let rate = match &subscription {
            Some(sub) if sub.enabled => sub.rate_limit_per_second,
            _ => {
                let tasks: Vec<DeliveryTask> = lane.queue().drain(..).collect();
                let status = undeliverable_status(subscription.as_deref());
                for task in tasks {
                    finish_undelivered(&shared, &task, status).await;
                }
                continue;
            }
        };

        let now = Instant::now();
        let gate = lane.gate().breaker.gate(now);
        let probe = match gate {
            Gate::Pass => false,
            Gate::Probe => true,
            Gate::WaitUntil(until) => {
                tokio::select! {
                    () = sleep_until(until) => {}
                    () = shared.shutdown.cancelled() => return,
                }
                continue;
            }
            Gate::WaitForProbe => {
                tokio::select! {
                    () = lane.wake.notified() => {}
                    () = shared.shutdown.cancelled() => return,
                }
                continue;
            }
        };

        let wait = lane.gate().rate.acquire(rate, now);
        if let Some(until) = wait {
            tokio::select! {
                () = sleep_until(until) => {}
                () = shared.shutdown.cancelled() => return,
            }
            continue;
        }

        let permit = tokio::select! {
            permit = Arc::clone(&lane.concurrency).acquire_owned() => match permit {
                Ok(permit) => permit,
                // The semaphore is never closed; if it were, the lane could do nothing more.
                Err(_) => return,
            },
            () = shared.shutdown.cancelled() => return,
        };
        let Some(task) = lane.queue().pop_front() else {
            continue;
        };
        if probe {
            lane.gate().breaker.start_probe();
        }
        let span = tracing::info_span!(
            "delivery.attempt",
            subscription_id = %task.key.subscription_id,
            message_id = %task.key.message_id,
            attempt_number = task.attempt_count + 1,
        );
        shared.attempts.spawn(
            run_attempt(Arc::clone(&shared), Arc::clone(&lane), task, permit, probe)
                .instrument(span),
        );
    }
}

/// Drops queued copies whose claim was withdrawn from the front of the queue, so they
/// take no permit or rate token. Only the front is checked, keeping each turn of the lane
/// cheap however long its backlog; stale copies further back go when they reach it.
fn drop_withdrawn(shared: &Shared, lane: &Lane) {
    let mut queue = lane.queue();
    while let Some(task) = queue.front() {
        if shared.held.is_current(&task.key, task.generation) {
            break;
        }
        queue.pop_front();
    }
}

fn undeliverable_status(subscription: Option<&Subscription>) -> DeliveryStatus {
    match subscription {
        // Disabled (by a user, or here after 410 or persistent failure): failed, visible
        // and replayable once the subscription is enabled again.
        Some(_) => DeliveryStatus::Failed,
        // Deleted: nothing will ever deliver it.
        None => DeliveryStatus::Cancelled,
    }
}

async fn finish_undelivered(shared: &Arc<Shared>, task: &DeliveryTask, status: DeliveryStatus) {
    if !shared.held.is_current(&task.key, task.generation) {
        return;
    }
    shared.held.release(&task.key, task.generation);
    shared
        .record(OutcomeEvent::Finished(Box::new(FinishedRecord {
            key: task.key.clone(),
            status,
            workspace_id: task.message.workspace_id.clone(),
            create_ms: task.message.create_ms,
        })))
        .await;
}

async fn run_attempt(
    shared: Arc<Shared>,
    lane: Arc<Lane>,
    task: DeliveryTask,
    permit: OwnedSemaphorePermit,
    probe: bool,
) {
    let attempted = attempt_task(&shared, &lane, task).await;
    if probe && !attempted {
        lane.gate().breaker.cancel_probe();
    }
    drop(permit);
    lane.wake.notify_one();
}

/// Makes the attempt and records it; false when no request was sent.
async fn attempt_task(shared: &Arc<Shared>, lane: &Lane, task: DeliveryTask) -> bool {
    if !shared.held.is_current(&task.key, task.generation) {
        return false;
    }
    let snapshot = shared.copy.current();
    let subscription = match snapshot.subscription(&task.key.subscription_id) {
        Some(sub) if sub.enabled => Arc::clone(sub),
        other => {
            let status = undeliverable_status(other.map(Arc::as_ref));
            finish_undelivered(shared, &task, status).await;
            return false;
        }
    };
    let attempt_number = task.attempt_count.saturating_add(1);
    let sent = tokio::select! {
        sent = make_attempt(shared, &subscription.endpoint, &task.message, &subscription.id, attempt_number, task.trigger) => sent,
        () = shared.abort_attempts.cancelled() => {
            // Shutdown's grace ran out. Nothing is recorded: the delivery stays pending and
            // is attempted again after the restart (the receiver dedupes by webhook-id).
            shared.held.release(&task.key, task.generation);
            return false;
        }
    };
    let (attempt, result) = sent;
    {
        let mut gate = lane.gate();
        let before = gate.breaker.state_name();
        gate.breaker.record(result.is_success(), Instant::now());
        let after = gate.breaker.state_name();
        if before != after {
            crate::metrics::metrics()
                .breaker_changes
                .add(1, &[opentelemetry::KeyValue::new("state", after)]);
            tracing::info!(subscription_id = %subscription.id, from = before, to = after, "circuit breaker changed state");
        }
    }
    conclude(shared, &subscription, task, attempt, &result).await;
    true
}

/// Sends one attempt to `endpoint` and describes it as an `Attempt` for the log.
pub(crate) async fn make_attempt(
    shared: &Shared,
    endpoint: &Endpoint,
    message: &StoredMessage,
    subscription_id: &str,
    attempt_number: u32,
    trigger: AttemptTrigger,
) -> (Attempt, AttemptResult) {
    let attempt_ms = now_ms();
    let body = if endpoint.slack {
        slack_body(message)
    } else {
        message.envelope.clone()
    };
    let secrets = endpoint.signing_secrets(attempt_ms);
    let request = DeliveryRequest {
        url: &endpoint.url,
        msg_id: &message.id,
        body,
        secrets: &secrets,
        headers: &endpoint.custom_headers,
        traceparent: message.traceparent.as_deref(),
        tracestate: message.tracestate.as_deref(),
        resend_count: attempt_number.saturating_sub(1),
    };
    // One span per delivery attempt, a child of the message's ingest span (its context was
    // stored with the message, so the trace survives the queue, retries and restarts).
    let span = tracing::info_span!(
        "webhook.deliver",
        otel.name = "sluice.deliver",
        otel.kind = "internal",
        sluice.message_id = %message.id,
        sluice.subscription_id = %subscription_id,
        sluice.event_type = %message.event_type,
        sluice.attempt_number = attempt_number,
        sluice.trigger = trigger.as_str_name(),
    );
    sluice_telemetry::set_parent(
        &span,
        message.traceparent.as_deref(),
        message.tracestate.as_deref(),
    );
    let result = shared.sender.send(&request).instrument(span).await;
    let attempt = Attempt {
        id: new_id(IdKind::Attempt),
        message_id: message.id.clone(),
        subscription_id: subscription_id.to_owned(),
        workspace_id: message.workspace_id.clone(),
        event_type: message.event_type.clone(),
        attempt_number,
        attempt_time: Some(timestamp_from_ms(attempt_ms)),
        success: result.is_success(),
        status_code: result.status_code.map_or(0, u32::from),
        error_kind: result
            .error_kind
            .map(|kind| kind.as_str().to_owned())
            .unwrap_or_default(),
        error_message: result.error_message.clone().unwrap_or_default(),
        latency: Some(proto_duration(result.latency)),
        response_excerpt: result.response_excerpt.clone(),
        trigger: trigger as i32,
        url: endpoint.url.to_string(),
    };
    (attempt, result)
}

/// Slack gets a readable message built from the envelope's payload instead of the envelope.
fn slack_body(message: &StoredMessage) -> Bytes {
    let payload = serde_json::from_slice::<serde_json::Value>(&message.envelope)
        .ok()
        .and_then(|mut envelope| envelope.get_mut("payload").map(serde_json::Value::take))
        .unwrap_or(serde_json::Value::Null);
    Bytes::from(slack_message(
        &message.event_type,
        &message.id,
        &message.workspace_id,
        &payload,
    ))
}

/// Applies the retry policy to a scheduled (or replayed) attempt's result, records the
/// outcome, and schedules the retry or gives the delivery up.
async fn conclude(
    shared: &Arc<Shared>,
    subscription: &Subscription,
    task: DeliveryTask,
    attempt: Attempt,
    result: &AttemptResult,
) {
    let now = now_ms();
    let success = result.is_success();
    let (streak, persistent_failure) = note_endpoint_result(shared, &subscription.id, success, now);
    let next = match task.trigger {
        // A replay is one more attempt, not a new run of the schedule.
        AttemptTrigger::Replay => match (success, result.is_gone()) {
            (true, _) => Next::Succeeded,
            (false, true) => Next::Gone,
            (false, false) => Next::Failed,
        },
        _ => after_attempt(
            &shared.policy,
            attempt.attempt_number,
            success,
            result.is_gone(),
            result.retry_after,
        ),
    };
    let disabling = if next == Next::Gone {
        Some((
            DisabledReason::EndpointGone,
            "the endpoint answered 410 Gone".to_owned(),
        ))
    } else {
        persistent_failure.map(|streak| {
            (
                DisabledReason::PersistentFailure,
                persistent_failure_message(&streak),
            )
        })
    };
    // A delivery whose subscription is being disabled ends here, whatever the schedule says.
    let next = if disabling.is_some() && next != Next::Succeeded {
        Next::Failed
    } else {
        next
    };
    let attempt_count = attempt.attempt_number;
    let first_failure_ms = if success {
        task.first_failure_ms
    } else {
        task.first_failure_ms.or(Some(now))
    };
    let mut status = DeliveryStatus::Failed;
    let mut next_attempt_ms = None;
    let mut lease_until_ms = None;
    let mut retry_delay = None;
    let mut keep_in_memory = false;
    let seconds = result.latency.as_secs_f64();
    match next {
        Next::Succeeded => crate::metrics::attempt("succeeded", seconds),
        Next::Failed | Next::Gone => crate::metrics::attempt("failed", seconds),
        Next::RetryIn(_) => {
            crate::metrics::attempt("retry_scheduled", seconds);
            crate::metrics::metrics().retries.add(1, &[]);
        }
    }
    match next {
        Next::Succeeded => status = DeliveryStatus::Succeeded,
        Next::Failed | Next::Gone => {}
        Next::RetryIn(delay) => {
            status = DeliveryStatus::Pending;
            let due = now.saturating_add(duration_ms(delay));
            next_attempt_ms = Some(due);
            retry_delay = Some(delay);
            if delay <= IN_MEMORY_RETRY_HORIZON && !shared.shutdown.is_cancelled() {
                keep_in_memory = true;
                lease_until_ms = Some(due.saturating_add(shared.lease_ms()));
            }
        }
    }
    let key = task.key.clone();
    let record = AttemptRecord {
        key: key.clone(),
        workspace_id: task.message.workspace_id.clone(),
        message_create_ms: task.message.create_ms,
        outcome: AttemptOutcome {
            attempt: Some(attempt),
            delivery_status: proto_status(status) as i32,
            next_attempt_time: next_attempt_ms.map(timestamp_from_ms),
            retry_delay: retry_delay.map(proto_duration),
        },
        status,
        attempt_count,
        next_attempt_ms,
        lease_until_ms,
        first_failure_ms,
        streak,
    };
    shared.record(OutcomeEvent::Attempt(Box::new(record))).await;

    let generation = task.generation;
    if let Some((reason, message)) = disabling {
        shared.held.release(&key, generation);
        disable(shared, subscription, reason, message).await;
        return;
    }
    match (keep_in_memory, next_attempt_ms, lease_until_ms) {
        (true, Some(due_ms), Some(lease)) => {
            shared.held.set_lease(&key, generation, lease);
            let retry = ScheduledRetry {
                due_ms,
                task: DeliveryTask {
                    attempt_count,
                    first_failure_ms,
                    ..task
                },
            };
            if shared.retry_tx.send(retry).await.is_err() {
                // The timers stopped (shutdown): the retry is due in the database anyway.
                shared.held.release(&key, generation);
            }
        }
        _ => shared.held.release(&key, generation),
    }
}

/// Why a subscription is disabled after a long run of failures, for people.
pub(crate) fn persistent_failure_message(streak: &Streak) -> String {
    format!(
        "{} attempts in a row failed since {}",
        streak.failures,
        chrono::DateTime::from_timestamp_millis(streak.since_ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default()
    )
}

/// Records one attempt's result in the endpoint's failure streak. Returns what to persist,
/// and the streak when it now warrants disabling the subscription.
pub(crate) fn note_endpoint_result(
    shared: &Shared,
    subscription_id: &str,
    success: bool,
    now: i64,
) -> (StreakChange, Option<Streak>) {
    let mut streaks = shared.streaks();
    let before = streaks.get(subscription_id).copied();
    let after = Streak::after(before, success, now);
    let change = match (before, after) {
        (_, Some(streak)) => {
            streaks.insert(subscription_id.to_owned(), streak);
            StreakChange::Set(streak)
        }
        (Some(_), None) => {
            streaks.remove(subscription_id);
            StreakChange::Clear
        }
        (None, None) => StreakChange::Unchanged,
    };
    let config = &shared.config;
    let exceeded = after.filter(|streak| {
        streak.warrants_disable(
            now,
            config.disable_after_failing_for,
            config.disable_after_failed_attempts,
        )
    });
    (change, exceeded)
}

/// Disables a subscription from the data plane's side: at once in memory (nothing more is
/// sent), then in the database with its pending deliveries failed, and reported to the
/// control plane, which owns the subscription and echoes the change back.
pub(crate) async fn disable(
    shared: &Arc<Shared>,
    subscription: &Subscription,
    reason: DisabledReason,
    message: String,
) {
    if !shared.copy.disable_locally(&subscription.id) {
        return;
    }
    shared.held.release_subscription(&subscription.id);
    if let Some(lane) = shared.lanes.get(&subscription.id) {
        lane.queue().clear();
        lane.wake.notify_one();
    }
    shared.streaks().remove(&subscription.id);
    tracing::warn!(
        subscription_id = %subscription.id,
        workspace_id = %subscription.workspace_id,
        reason = reason.as_str_name(),
        details = %message,
        "subscription disabled by the data plane"
    );
    let mut config = subscription.config.clone();
    config.enabled = false;
    shared
        .record(OutcomeEvent::Disabled(Box::new(Disabled {
            report: SubscriptionDisabled {
                subscription_id: subscription.id.clone(),
                workspace_id: subscription.workspace_id.clone(),
                reason: reason as i32,
                message,
                disable_time: Some(timestamp_from_ms(now_ms())),
            },
            config,
        })))
        .await;
}

/// The proto status for a stored one; cancelled deliveries show as failed.
pub(crate) fn proto_status(status: DeliveryStatus) -> ProtoDeliveryStatus {
    match status {
        DeliveryStatus::Pending => ProtoDeliveryStatus::Pending,
        DeliveryStatus::Succeeded => ProtoDeliveryStatus::Succeeded,
        DeliveryStatus::Failed | DeliveryStatus::Cancelled => ProtoDeliveryStatus::Failed,
    }
}

/// Lets a manual attempt's result count for the endpoint's breaker too: a success shows the
/// endpoint is back.
pub(crate) fn note_breaker(shared: &Shared, subscription_id: &str, success: bool) {
    if let Some(lane) = shared.lanes.get(subscription_id) {
        lane.gate().breaker.record(success, Instant::now());
        lane.wake.notify_one();
    }
}
