//! Deliveries the control plane asks for: a redelivery (one attempt of a stored delivery,
//! now, whatever its status) and a replay (every failed delivery of a subscription since a
//! time, each queued for one more attempt). Both are concluded and recorded like any other
//! attempt, by `attempt`.

use std::sync::Arc;

use sea_orm::{DatabaseConnection, EntityTrait, Statement, Value};
use sluice_core::outcome::DeliveryStatus;
use sluice_proto::control::v1::{Attempt, AttemptTrigger};
use sluice_store::data::{delivery, fanout, message};
use sluice_store::now_ms;

use crate::deliver::attempt::Attempts;
use crate::deliver::decision::Rule;
use crate::deliver::scanner::Scanner;
use crate::error::DataError;
use crate::state::claims::DeliveryKey;
use crate::state::fanouts::Fanouts;
use crate::work::{DeliveryTask, StoredMessage};
use sluice_store::placeholder;

/// Rows requeued per statement by a replay.
const REPLAY_CHUNK: i64 = 1000;

/// Redelivery and replay, with what they read and hand on.
pub(crate) struct ManualDeliveries {
    pub(crate) db: DatabaseConnection,
    pub(crate) fanouts: Arc<Fanouts>,
    pub(crate) attempts: Arc<Attempts>,
    pub(crate) scanner: Arc<Scanner>,
    pub(crate) lease_ms: i64,
    /// The default windows, to tell a purged message from one that never was.
    pub(crate) retention: sluice_core::retention::RetentionDefaults,
}

/// A delivery as stored before a manual attempt.
struct StoredDelivery {
    pending: bool,
    attempt_count: i32,
    next_attempt_ms: i64,
    first_failure_ms: Option<i64>,
    schedule_start: i32,
}

impl ManualDeliveries {
    /// The oldest time `workspace_id` still keeps messages from (unix milliseconds).
    fn oldest_kept_ms(&self, workspace_id: &str) -> (i64, std::time::Duration) {
        let windows =
            crate::retention::windows(&self.retention, &self.attempts.copy.current(), workspace_id);
        (
            sluice_core::retention::cutoff_ms(now_ms(), windows.retention),
            windows.retention,
        )
    }

    /// FAILED_PRECONDITION when message `message_id` is older than its workspace's
    /// retention window: it was purged (or is about to be), so it cannot be sent again.
    fn refuse_purged(&self, workspace_id: &str, message_id: &str) -> Result<(), DataError> {
        let (oldest_kept, window) = self.oldest_kept_ms(workspace_id);
        let created =
            sluice_core::ids::id_timestamp_ms(sluice_core::ids::IdKind::Message, message_id)
                .and_then(|ms| i64::try_from(ms).ok())
                .unwrap_or(i64::MAX);
        if created < oldest_kept {
            return Err(DataError::FailedPrecondition(format!(
                "message {message_id:?} was purged: the workspace keeps messages for {} (its retention)",
                sluice_core::retention::format_window(window)
            )));
        }
        Ok(())
    }

    /// One attempt of the delivery of `message_id` to `subscription_id` in `workspace_id`,
    /// now; its outcome is recorded like any other.
    pub(crate) async fn redeliver(
        &self,
        workspace_id: &str,
        message_id: &str,
        subscription_id: &str,
    ) -> Result<Attempt, DataError> {
        let not_found = || {
            DataError::NotFound(format!(
                "no delivery of message {message_id:?} to subscription {subscription_id:?}"
            ))
        };
        self.refuse_purged(workspace_id, message_id)?;
        // Outcomes still queued would make the row look older than it is.
        self.attempts.outcomes.flush().await;
        let message = message::Entity::find_by_id(message_id.to_owned())
            .one(&self.db)
            .await?
            .filter(|message| message.workspace_id == workspace_id)
            .ok_or_else(not_found)?;
        let row = delivery::Entity::find_by_id((message_id.to_owned(), subscription_id.to_owned()))
            .one(&self.db)
            .await?;
        let stored = match row {
            Some(row) if row.workspace_id == workspace_id => StoredDelivery {
                pending: row.status == DeliveryStatus::Pending.as_str(),
                attempt_count: row.attempt_count,
                next_attempt_ms: row.next_attempt_ms,
                first_failure_ms: row.first_failure_ms,
                schedule_start: row.schedule_start,
            },
            Some(_) => return Err(not_found()),
            None => {
                // A first attempt has no row of its own (see `fanouts`): it is still to be
                // made while its message's fan-out is open, and succeeded otherwise.
                let matched = message
                    .subscription_ids
                    .as_deref()
                    .is_some_and(|ids| ids.split(',').any(|id| id == subscription_id));
                if !matched {
                    return Err(not_found());
                }
                let pending = self.fanouts.is_unconcluded(&message.id, subscription_id)
                    || (!self.fanouts.is_open(&message.id)
                        && fanout::Entity::find_by_id(message.id.clone())
                            .one(&self.db)
                            .await?
                            .is_some());
                StoredDelivery {
                    pending,
                    attempt_count: i32::from(!pending),
                    next_attempt_ms: message.create_ms,
                    first_failure_ms: None,
                    schedule_start: 0,
                }
            }
        };
        let snapshot = self.attempts.copy.current();
        let subscription = snapshot
            .subscription(subscription_id)
            .cloned()
            .ok_or_else(|| {
                DataError::NotFound(format!(
                    "subscription {subscription_id:?} is not in the data plane's configuration"
                ))
            })?;
        if !subscription.enabled {
            return Err(DataError::FailedPrecondition(format!(
                "subscription {subscription_id:?} is disabled; enable it first"
            )));
        }
        if subscription.awaiting_verification {
            return Err(DataError::FailedPrecondition(format!(
                "subscription {subscription_id:?} has not verified its endpoint yet (see its verification_state); nothing is sent to it until it does"
            )));
        }

        let key = DeliveryKey {
            message_id: message_id.to_owned(),
            subscription_id: subscription_id.to_owned(),
        };
        // Withdraw any copy this process holds, so the manual attempt is not doubled by a
        // scheduled one; a pending delivery goes back to its schedule afterwards.
        let generation = self
            .attempts
            .claims
            .take_over(&key, &message.workspace_id, 0);
        let task = DeliveryTask {
            key,
            message: Arc::new(StoredMessage::from_row(message)),
            attempt_count: u32::try_from(stored.attempt_count).unwrap_or(0),
            first_failure_ms: stored.first_failure_ms,
            schedule_start: u32::try_from(stored.schedule_start).unwrap_or(0),
            trigger: AttemptTrigger::Manual,
            generation,
            // A manual attempt is outside its key's order; when it ends an ordered head,
            // the scanner's next pass claims the key's next delivery.
            ordering_key: None,
        };
        let attempt_number = task.attempt_count.saturating_add(1);
        let timeout = self
            .attempts
            .plan(&snapshot, workspace_id, subscription.policy.as_ref())
            .request_timeout_override();
        let (attempt, result) = self
            .attempts
            .send(
                &subscription.endpoint,
                &task.message,
                &subscription.id,
                attempt_number,
                AttemptTrigger::Manual,
                timeout,
            )
            .await;
        let breaker = self
            .attempts
            .lanes
            .record_result(&subscription.id, result.is_success());
        let rule = Rule::Manual {
            pending_due_ms: stored.pending.then_some(stored.next_attempt_ms),
        };
        self.attempts
            .conclude(&subscription, task, rule, attempt.clone(), &result, breaker)
            .await;
        Ok(attempt)
    }

    /// Queues every failed delivery of a subscription whose message was accepted at or
    /// after `since_ms`, each for one more attempt now. Returns how many were queued.
    pub(crate) async fn replay(
        &self,
        workspace_id: &str,
        subscription_id: &str,
        since_ms: i64,
    ) -> Result<u64, DataError> {
        let (oldest_kept, window) = self.oldest_kept_ms(workspace_id);
        if since_ms < oldest_kept {
            return Err(DataError::FailedPrecondition(format!(
                "since_time is before the workspace's retention window: deliveries older than {} were purged",
                sluice_core::retention::format_window(window)
            )));
        }
        self.attempts.outcomes.flush().await;
        let backend = self.db.get_database_backend();
        let lock = sluice_store::skip_locked(backend);
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
            let lease_until = now.saturating_add(self.lease_ms);
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
                .all(&self.db)
                .await?;
            let count = rows.len();
            queued += u64::try_from(count).unwrap_or(0);
            if count > 0 {
                self.scanner
                    .take_rows(rows, AttemptTrigger::Replay, lease_until)
                    .await?;
            }
            if i64::try_from(count).unwrap_or(0) < REPLAY_CHUNK {
                return Ok(queued);
            }
        }
    }
}
