//! One attempt, whoever asked for it: a lane (scheduled attempts and replays) or the
//! control plane (a manual redelivery, a test send). Signs and sends the request, then
//! concludes it the same way for all: the endpoint's breaker and failure streak, the rule of
//! what follows ([`decision`](crate::deliver::decision)), the outcome handed to the writer,
//! the retry put on a timer or given back to the database, and the subscription disabled
//! when the endpoint is gone or keeps failing.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_core::ids::{IdKind, new_id};
use sluice_core::operational::{self, LastError};
use sluice_core::outcome::DeliveryStatus;
use sluice_core::policy::{Effective, PayloadShape, Source};
use sluice_core::sealing::Keyring;
use sluice_delivery::{AttemptResult, DeliveryRequest, SendOptions, Sender, slack_message};
use sluice_proto::control::v1::{
    Attempt, AttemptOutcome, AttemptTrigger, DeliveryStatus as ProtoDeliveryStatus, DisabledReason,
    SubscriptionDisabled,
};
use sluice_store::now_ms;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::deliver::decision::{NextStep, RetryPolicy, Rule, next_step};
use crate::deliver::lanes::{BreakerChange, Lane, LanePermit, Lanes};
use crate::notices::{self, Cause};
use crate::shutdown::Shutdown;
use crate::state::claims::Claims;
use crate::state::config_copy::{ConfigCopy, ConfigSnapshot, Endpoint, Subscription};
use crate::state::sealed::SealedConfig;
use crate::state::streaks::Streaks;
use crate::time::{duration_ms, proto_duration, timestamp_from_ms};
use crate::work::{
    AttemptRecord, DeliveryTask, DisabledSubscription, EndedDelivery, OperationalEvent,
    OutcomeEvent, OutcomeSender, ScheduledRetry, StoredMessage,
};

/// Retries due within this stay in memory on a timer; later ones go back to the database
/// (lease released) and the scanner loads them when due, so memory holds only near work.
pub(crate) const IN_MEMORY_RETRY_HORIZON: Duration = Duration::from_secs(60);

/// Everything an attempt needs, shared by every lane and by manual attempts.
pub(crate) struct Attempts {
    pub(crate) sender: Sender,
    pub(crate) copy: Arc<ConfigCopy>,
    pub(crate) claims: Arc<Claims>,
    pub(crate) lanes: Arc<Lanes>,
    pub(crate) streaks: Arc<Streaks>,
    pub(crate) outcomes: OutcomeSender,
    /// To the retry timers.
    pub(crate) retries: mpsc::Sender<ScheduledRetry>,
    pub(crate) policy: RetryPolicy,
    /// How long a replica owns a delivery it holds, in milliseconds.
    pub(crate) lease_ms: i64,
    pub(crate) shutdown: Shutdown,
    /// Seals the copy of a subscription this replica disables, before it is persisted.
    pub(crate) keyring: Keyring,
}

impl Attempts {
    /// The retry policy that applies to `subscription` now: its own, its workspace's, the
    /// flags'. Borrowed, nothing built: the default path is a check for no overrides.
    pub(crate) fn plan<'a>(
        &'a self,
        snapshot: &'a ConfigSnapshot,
        workspace_id: &str,
        own: Option<&'a sluice_core::policy::Overrides>,
    ) -> Effective<'a> {
        sluice_core::policy::resolve(
            &self.policy.defaults,
            snapshot.workspace_policy(workspace_id),
            own,
        )
    }

    /// Makes a lane's attempt of a held delivery and concludes it; false when no request was
    /// sent (the claim was withdrawn, the subscription is gone or disabled, or shutdown's
    /// grace ran out).
    pub(crate) async fn run_from_lane(
        &self,
        lane: &Lane,
        permit: &LanePermit,
        task: DeliveryTask,
    ) -> bool {
        if !self.claims.is_current(&task.key, task.generation) {
            return false;
        }
        let snapshot = self.copy.current();
        let subscription = match snapshot.subscription(&task.key.subscription_id) {
            Some(sub) if sub.enabled => Arc::clone(sub),
            other => {
                let status = undeliverable_status(other.map(Arc::as_ref));
                self.end_undelivered(&task, status).await;
                return false;
            }
        };
        let attempt_number = task.attempt_count.saturating_add(1);
        let timeout = self
            .plan(
                &snapshot,
                &subscription.workspace_id,
                subscription.policy.as_ref(),
            )
            .request_timeout_override();
        let sent = tokio::select! {
            sent = self.send(&subscription.endpoint, &task.message, &subscription.id, attempt_number, task.trigger, timeout) => sent,
            () = self.shutdown.attempts_aborted() => {
                // Shutdown's grace ran out. Nothing is recorded: the delivery stays pending and
                // is attempted again after the restart (the receiver dedupes by webhook-id).
                self.claims.release(&task.key, task.generation);
                return false;
            }
        };
        let (attempt, result) = sent;
        let breaker = lane.record_attempt(&result, permit);
        let rule = match task.trigger {
            // A replay is one more attempt, not a new run of the schedule.
            AttemptTrigger::Replay => Rule::OneMore,
            _ => Rule::Schedule,
        };
        let limit = u32::try_from(lane.concurrency_limit()).unwrap_or(u32::MAX);
        self.conclude_with_limit(&subscription, task, rule, attempt, &result, breaker, limit)
            .await;
        true
    }

    /// Sends one attempt to `endpoint` (within `timeout` when the subscription's policy sets
    /// one) and describes it as an `Attempt` for the log.
    pub(crate) async fn send(
        &self,
        endpoint: &Endpoint,
        message: &StoredMessage,
        subscription_id: &str,
        attempt_number: u32,
        trigger: AttemptTrigger,
        timeout: Option<Duration>,
    ) -> (Attempt, AttemptResult) {
        let attempt_ms = now_ms();
        let mut options = SendOptions {
            timeout,
            event_type: None,
        };
        let body = if endpoint.slack {
            slack_body(message)
        } else if endpoint.shape == PayloadShape::Envelope {
            message.envelope.clone()
        } else {
            // The body no longer carries the event type: a header does.
            options.event_type = Some(&message.event_type);
            crate::deliver::shape::body(endpoint.shape, &message.envelope)
        };
        let secrets = endpoint.signing_secrets(attempt_ms);
        let keys = endpoint.signing_keys(attempt_ms);
        let request = DeliveryRequest {
            url: &endpoint.url,
            msg_id: &message.id,
            body,
            secrets: &secrets,
            asymmetric_keys: &keys,
            headers: &endpoint.custom_headers,
            traceparent: message.traceparent.as_deref(),
            tracestate: message.tracestate.as_deref(),
            resend_count: attempt_number.saturating_sub(1),
            credentials: endpoint.credentials.as_ref(),
        };
        // One span per delivery attempt, a child of the message's ingest span (its context
        // was stored with the message, so the trace survives the queue, retries and restarts).
        let span = tracing::info_span!(
            "webhook.deliver",
            otel.name = "sluice.deliver",
            otel.kind = "internal",
            sluice.message_id = %message.id,
            sluice.subscription_id = %subscription_id,
            sluice.event_type = %message.event_type,
            sluice.attempt_number = sluice_telemetry::int_attr(attempt_number),
            sluice.trigger = trigger.as_str_name(),
        );
        sluice_telemetry::set_parent(
            &span,
            message.traceparent.as_deref(),
            message.tracestate.as_deref(),
        );
        let result = self
            .sender
            .send_with(&request, options)
            .instrument(span)
            .await;
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
            // Without user info: a URL stored before it was refused had it taken out (and
            // sent as Basic auth) when the subscription was parsed.
            url: endpoint.url.as_str().to_owned(),
        };
        (attempt, result)
    }

    /// Concludes an attempt of a held delivery under `rule`: counts it in the endpoint's
    /// failure streak, hands the outcome to the writer, then puts a near retry on a timer,
    /// gives the delivery back to the database, or disables the subscription. A change of
    /// the endpoint's breaker (`breaker`) or a disable is published as an operational event,
    /// written with this outcome.
    ///
    /// `task` carries the delivery as it was before the attempt; its claim is this
    /// attempt's and is released here unless the retry stays in memory.
    pub(crate) async fn conclude(
        &self,
        subscription: &Subscription,
        task: DeliveryTask,
        rule: Rule,
        attempt: Attempt,
        result: &AttemptResult,
        breaker: Option<BreakerChange>,
    ) {
        self.conclude_with_limit(subscription, task, rule, attempt, result, breaker, 0)
            .await;
    }

    /// [`Attempts::conclude`], reporting the endpoint's concurrency limit (0: not known).
    #[allow(clippy::too_many_arguments)]
    async fn conclude_with_limit(
        &self,
        subscription: &Subscription,
        task: DeliveryTask,
        rule: Rule,
        mut attempt: Attempt,
        result: &AttemptResult,
        breaker: Option<BreakerChange>,
        concurrency_limit: u32,
    ) {
        let now = now_ms();
        let success = result.is_success();
        // Resolved now, from the copy in effect: a workspace's change applies at once. The
        // snapshot is read only when some workspace sets a policy.
        let snapshot = self
            .copy
            .any_workspace_policy()
            .then(|| self.copy.current());
        let plan = sluice_core::policy::resolve(
            &self.policy.defaults,
            snapshot
                .as_deref()
                .and_then(|s| s.workspace_policy(&subscription.workspace_id)),
            subscription.policy.as_ref(),
        );
        let failing_for =
            (plan.disable_after_ms.1 != Source::ServerDefault).then(|| plan.disable_after());
        let (streak, persistent_failure) =
            self.streaks
                .note(&subscription.id, success, now, failing_for);
        let schedule_start = schedule_start(rule, &task, attempt.attempt_number);
        let age = Duration::from_millis(
            u64::try_from(now.saturating_sub(task.message.create_ms)).unwrap_or(0),
        );
        let next = next_step(
            &self.policy,
            &plan,
            age,
            rule,
            attempt.attempt_number.saturating_sub(schedule_start),
            success,
            result.is_gone(),
            result.retry_after,
        );
        let disabling = if next == NextStep::Gone {
            Some((
                DisabledReason::EndpointGone,
                "the endpoint answered 410 Gone".to_owned(),
            ))
        } else {
            persistent_failure
                .map(|streak| (DisabledReason::PersistentFailure, streak.disable_reason()))
        };
        // A delivery whose subscription is being disabled ends here, whatever the rule says.
        let next = if disabling.is_some() && next != NextStep::Succeeded {
            NextStep::Failed
        } else {
            next
        };
        let seconds = result.latency.as_secs_f64();
        let mut status = DeliveryStatus::Failed;
        // The due time the control plane is shown, and the one written (`None` keeps the
        // row's own).
        let mut shown_due_ms = None;
        let mut next_attempt_ms = None;
        let mut retry_delay = None;
        let mut lease_until_ms = None;
        match next {
            NextStep::Succeeded => {
                crate::metrics::attempt("succeeded", seconds);
                status = DeliveryStatus::Succeeded;
            }
            NextStep::Failed | NextStep::Gone => crate::metrics::attempt("failed", seconds),
            NextStep::KeepSchedule => {
                crate::metrics::attempt("failed", seconds);
                status = DeliveryStatus::Pending;
                if let Rule::Manual { pending_due_ms } = rule {
                    shown_due_ms = pending_due_ms;
                }
            }
            NextStep::RetryIn(delay) => {
                crate::metrics::attempt("retry_scheduled", seconds);
                crate::metrics::metrics().retries.add(1, &[]);
                status = DeliveryStatus::Pending;
                let due = now.saturating_add(duration_ms(delay));
                shown_due_ms = Some(due);
                next_attempt_ms = Some(due);
                retry_delay = Some(delay);
                if delay <= IN_MEMORY_RETRY_HORIZON && !self.shutdown.is_requested() {
                    lease_until_ms = Some(due.saturating_add(self.lease_ms));
                }
            }
        }
        if status == DeliveryStatus::Failed && task.ordering_key.is_some() {
            crate::deliver::ordering::key_moves_on(&task, &mut attempt);
        }
        let attempt_count = attempt.attempt_number;
        // A retry due soon stays held here, on a timer; anything else gives its claim back
        // once the outcome is committed.
        let stays_held = disabling.is_none() && lease_until_ms.is_some();
        let first_failure_ms = if success {
            task.first_failure_ms
        } else {
            task.first_failure_ms.or(Some(now))
        };
        let last_error = (!success).then(|| LastError {
            status_code: result.status_code,
            kind: attempt.error_kind.clone(),
            message: attempt.error_message.clone(),
        });
        // A disable says more than the breaker opening on the same attempt: that one is left out.
        let notice = match (breaker, &disabling) {
            (Some(change), None) => Some(Box::new(self.breaker_notice(
                subscription,
                change,
                last_error.as_ref(),
            ))),
            _ => None,
        };
        let record = AttemptRecord {
            key: task.key.clone(),
            workspace_id: task.message.workspace_id.clone(),
            message_create_ms: task.message.create_ms,
            outcome: AttemptOutcome {
                attempt: Some(attempt),
                delivery_status: proto_status(status) as i32,
                next_attempt_time: shown_due_ms.map(timestamp_from_ms),
                retry_delay: retry_delay.map(proto_duration),
                concurrency_limit,
            },
            status,
            attempt_count,
            next_attempt_ms,
            lease_until_ms,
            first_failure_ms,
            schedule_start,
            streak,
            release_after_commit: (!stays_held).then_some(task.generation),
            notice,
            ordering_key: task.ordering_key.clone(),
        };
        self.outcomes
            .record(OutcomeEvent::Attempt(Box::new(record)))
            .await;

        if let Some((reason, message)) = disabling {
            self.disable(subscription, reason, message, last_error.as_ref())
                .await;
            return;
        }
        if let (Some(due_ms), Some(lease), true) = (next_attempt_ms, lease_until_ms, stays_held) {
            self.claims.set_lease(&task.key, task.generation, lease);
            let (key, generation) = (task.key.clone(), task.generation);
            let retry = ScheduledRetry {
                due_ms,
                task: DeliveryTask {
                    attempt_count,
                    first_failure_ms,
                    schedule_start,
                    trigger: AttemptTrigger::Scheduled,
                    ..task
                },
            };
            if self.retries.send(retry).await.is_err() {
                // The timers stopped (shutdown): the retry is due in the database anyway.
                self.claims.release(&key, generation);
            }
        }
    }

    /// Ends a held delivery without an attempt: its subscription was deleted (cancelled) or
    /// disabled (failed).
    pub(crate) async fn end_undelivered(&self, task: &DeliveryTask, status: DeliveryStatus) {
        if !self.claims.is_current(&task.key, task.generation) {
            return;
        }
        self.outcomes
            .record(OutcomeEvent::Ended(Box::new(EndedDelivery {
                key: task.key.clone(),
                status,
                workspace_id: task.message.workspace_id.clone(),
                create_ms: task.message.create_ms,
                release_after_commit: task.generation,
                ordering_key: task.ordering_key.clone(),
            })))
            .await;
    }

    /// Disables a subscription from the data plane's side: at once in memory (nothing more
    /// is sent), then in the database with its pending deliveries failed, and reported to
    /// the control plane, which owns the subscription and echoes the change back.
    pub(crate) async fn disable(
        &self,
        subscription: &Subscription,
        reason: DisabledReason,
        message: String,
        last_error: Option<&LastError>,
    ) {
        if !self.copy.disable_locally(&subscription.id) {
            return;
        }
        // Only the replica whose attempt concluded the disable gets here (`disable_locally`
        // answers true once), so it alone publishes the event.
        let notice = notices::build(
            &self.copy.current(),
            subscription,
            Cause {
                event_type: operational::SUBSCRIPTION_DISABLED,
                reason: disabled_reason_code(reason),
                message: &message,
                last_error,
                idempotency_key: None,
            },
        );
        self.claims.release_subscription(&subscription.id);
        self.lanes.clear(&subscription.id);
        self.streaks.forget(&subscription.id);
        tracing::warn!(
            subscription_id = %subscription.id,
            workspace_id = %subscription.workspace_id,
            reason = reason.as_str_name(),
            details = %message,
            "subscription disabled by the data plane"
        );
        let mut config = subscription.config.clone();
        config.enabled = false;
        self.outcomes
            .record(OutcomeEvent::Disabled(Box::new(DisabledSubscription {
                report: SubscriptionDisabled {
                    subscription_id: subscription.id.clone(),
                    workspace_id: subscription.workspace_id.clone(),
                    reason: reason as i32,
                    message,
                    disable_time: Some(timestamp_from_ms(now_ms())),
                },
                config: SealedConfig::seal(&self.keyring, &config),
                notice: Some(notice),
            })))
            .await;
    }

    /// `sluice.endpoint.unhealthy` or `sluice.endpoint.recovered` for a breaker's change.
    fn breaker_notice(
        &self,
        subscription: &Subscription,
        change: BreakerChange,
        last_error: Option<&LastError>,
    ) -> OperationalEvent {
        let (event_type, reason, message) = match change {
            BreakerChange::Opened => (
                operational::ENDPOINT_UNHEALTHY,
                "consecutive_failures",
                "consecutive failed attempts opened the endpoint's circuit breaker; deliveries \
                 pause for the cooldown, then one probe is sent",
            ),
            BreakerChange::Closed => (
                operational::ENDPOINT_RECOVERED,
                "attempt_succeeded",
                "an attempt succeeded and closed the endpoint's circuit breaker; deliveries resume",
            ),
        };
        notices::build(
            &self.copy.current(),
            subscription,
            Cause {
                event_type,
                reason,
                message,
                last_error,
                idempotency_key: None,
            },
        )
    }
}

/// The stable code of a disable's reason, as operational events carry it.
pub(crate) fn disabled_reason_code(reason: DisabledReason) -> &'static str {
    match reason {
        DisabledReason::EndpointGone => "endpoint_gone",
        DisabledReason::PersistentFailure => "persistent_failure",
        DisabledReason::User => "user",
        DisabledReason::Unspecified => "unspecified",
    }
}

/// The attempts made before the run of the retry schedule that follows attempt
/// `attempt_number` under `rule`. A replay, or a manual attempt of a delivery that had
/// ended, starts a new run whose first attempt it is (so a failure retries on the
/// schedule's second step); a manual attempt of a pending delivery is outside its run
/// (the run goes on where it was); a scheduled attempt continues its run.
fn schedule_start(rule: Rule, task: &DeliveryTask, attempt_number: u32) -> u32 {
    match rule {
        Rule::Schedule => task.schedule_start,
        Rule::OneMore
        | Rule::Manual {
            pending_due_ms: None,
        } => attempt_number.saturating_sub(1),
        Rule::Manual {
            pending_due_ms: Some(_),
        } => task.schedule_start.saturating_add(1),
    }
}

/// How a delivery ends when its subscription cannot take it.
pub(crate) fn undeliverable_status(subscription: Option<&Subscription>) -> DeliveryStatus {
    match subscription {
        // Disabled (by a user, or here after 410 or persistent failure): failed, visible
        // and replayable once the subscription is enabled again.
        Some(_) => DeliveryStatus::Failed,
        // Deleted: nothing will ever deliver it.
        None => DeliveryStatus::Cancelled,
    }
}

/// The proto status for a stored one.
fn proto_status(status: DeliveryStatus) -> ProtoDeliveryStatus {
    match status {
        DeliveryStatus::Pending => ProtoDeliveryStatus::Pending,
        DeliveryStatus::Succeeded => ProtoDeliveryStatus::Succeeded,
        DeliveryStatus::Failed => ProtoDeliveryStatus::Failed,
        DeliveryStatus::Cancelled => ProtoDeliveryStatus::Cancelled,
    }
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
