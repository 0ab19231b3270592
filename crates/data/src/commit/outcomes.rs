//! Attempt outcomes in the writer's transaction: how a batch of what attempts handed the
//! writer (the delivery row's new state, the failure streak, what the control plane is
//! told) is written. A first attempt that succeeds writes nothing of its own (its
//! message's fan-out row covers it, see `state::fanouts`); the other rows of a batch go in
//! one multi-row statement.

use std::collections::HashMap;

use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveValue::NotSet, ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait,
    QueryFilter,
};
use sluice_core::outcome::DeliveryStatus;
use sluice_store::data::{delivery, state};

use crate::state::claims::{Claims, DeliveryKey};
use crate::state::config_copy::{set_state, upsert_subscription};
use crate::state::fanouts::{FanoutPlan, Fanouts};
use crate::state::heads::Heads;
use crate::state::outbox::ReportBody;
use crate::state::streaks::{STREAK_STATE_PREFIX, StreakChange};
use crate::work::{AttemptRecord, DisabledSubscription, OutcomeEvent};

/// Applies a batch of outcome events inside the writer's transaction, and adds what the
/// control plane must hear of them (attempts, disabled subscriptions) to `report`. First
/// attempts are concluded in `plan` (see `state::fanouts`): one that succeeded writes nothing for
/// its delivery, any other outcome writes the delivery's row.
pub(crate) async fn apply<C: ConnectionTrait>(
    tx: &C,
    fanouts: &Fanouts,
    batch: &[OutcomeEvent],
    report: &mut ReportBody,
    plan: &mut FanoutPlan,
) -> Result<(), DbErr> {
    let mut streaks: HashMap<&str, StreakChange> = HashMap::new();
    let mut rows = DeliveryRows::default();
    for event in batch {
        match event {
            OutcomeEvent::Attempt(record) => {
                report.attempt(&record.outcome);
                if !matches!(record.streak, StreakChange::Unchanged) {
                    streaks.insert(&record.key.subscription_id, record.streak);
                }
                let first =
                    plan.concludes(fanouts, &record.key.message_id, &record.key.subscription_id);
                if !(first && record.status == DeliveryStatus::Succeeded) {
                    rows.attempt(record);
                }
            }
            OutcomeEvent::Ended(ended) => {
                let first =
                    plan.concludes(fanouts, &ended.key.message_id, &ended.key.subscription_id);
                if first {
                    rows.finished(
                        &ended.key,
                        &ended.workspace_id,
                        ended.create_ms,
                        ended.status,
                    );
                } else {
                    // Statements keep their order: attempts before this event are written
                    // first, so a delivery pending before them ends now.
                    rows.write(tx).await?;
                    finish_pending(tx, &ended.key, ended.status).await?;
                }
            }
            OutcomeEvent::Disabled(disabled) => {
                let DisabledSubscription {
                    report: disabled,
                    config,
                    notice: _,
                } = disabled.as_ref();
                // First attempts cut off by the disable end failed, with a row of their own.
                for cut in fanouts.unconcluded_to(&disabled.subscription_id, plan) {
                    let key = DeliveryKey {
                        message_id: cut.message_id,
                        subscription_id: disabled.subscription_id.clone(),
                    };
                    plan.concludes(fanouts, &key.message_id, &key.subscription_id);
                    rows.finished(
                        &key,
                        &cut.workspace_id,
                        cut.create_ms,
                        DeliveryStatus::Failed,
                    );
                }
                rows.write(tx).await?;
                fail_pending(tx, &disabled.subscription_id).await?;
                upsert_subscription(tx, config).await?;
                streaks.insert(&disabled.subscription_id, StreakChange::Clear);
                report.disabled(disabled);
            }
            OutcomeEvent::Flush(_) => {}
        }
    }
    rows.write(tx).await?;
    for (subscription_id, change) in streaks {
        let name = format!("{STREAK_STATE_PREFIX}{subscription_id}");
        match change {
            StreakChange::Set(streak) => set_state(tx, &name, &streak.encode()).await?,
            StreakChange::Clear => {
                state::Entity::delete_by_id(name).exec(tx).await?;
            }
            StreakChange::Unchanged => {}
        }
    }
    Ok(())
}

/// Gives back the claims of a committed batch's deliveries that no longer stay held here.
pub(crate) fn release_claims(claims: &Claims, batch: &[OutcomeEvent]) {
    for event in batch {
        match event {
            OutcomeEvent::Attempt(record) => {
                if let Some(generation) = record.release_after_commit {
                    claims.release(&record.key, generation);
                }
            }
            OutcomeEvent::Ended(ended) => claims.release(&ended.key, ended.release_after_commit),
            OutcomeEvent::Disabled(_) | OutcomeEvent::Flush(_) => {}
        }
    }
}

/// Notes the ordering keys whose head a committed batch ended (its final outcome), so the
/// scanner claims each key's next delivery at once.
pub(crate) fn heads_moved(heads: &Heads, batch: &[OutcomeEvent]) {
    for event in batch {
        let (key, ordering_key) = match event {
            OutcomeEvent::Attempt(record) if record.status != DeliveryStatus::Pending => {
                (&record.key, &record.ordering_key)
            }
            OutcomeEvent::Ended(ended) => (&ended.key, &ended.ordering_key),
            _ => continue,
        };
        if let Some(ordering_key) = ordering_key {
            heads.moved(&key.subscription_id, ordering_key);
        }
    }
}

/// Answers the `Flush` events of a batch: everything before them is committed (or, at the
/// end of shutdown, given up).
pub(crate) fn answer_flushes(batch: Vec<OutcomeEvent>) {
    for event in batch {
        if let OutcomeEvent::Flush(done) = event {
            // The asker may have gone away; nothing to do then.
            let _ = done.send(());
        }
    }
}

/// Rows per multi-row statement: 10 values each, well under the bound-parameter limits.
const ROWS_PER_STATEMENT: usize = 500;

/// Delivery rows to write, the last state of each delivery, in the order first seen.
#[derive(Default)]
struct DeliveryRows {
    rows: Vec<delivery::ActiveModel>,
    /// Whether each row sets `next_attempt_ms` (false: a stored row keeps its own).
    sets_next: Vec<bool>,
    index: HashMap<DeliveryKey, usize>,
}

impl DeliveryRows {
    fn attempt(&mut self, record: &AttemptRecord) {
        let row = delivery::ActiveModel {
            message_id: Set(record.key.message_id.clone()),
            subscription_id: Set(record.key.subscription_id.clone()),
            workspace_id: Set(record.workspace_id.clone()),
            status: Set(record.status.as_str().to_owned()),
            attempt_count: Set(i32::try_from(record.attempt_count).unwrap_or(i32::MAX)),
            // A new row with no schedule of its own is due from its creation.
            next_attempt_ms: Set(record.next_attempt_ms.unwrap_or(record.message_create_ms)),
            lease_until_ms: Set(record.lease_until_ms),
            first_failure_ms: Set(record.first_failure_ms),
            schedule_start: Set(i32::try_from(record.schedule_start).unwrap_or(i32::MAX)),
            create_ms: Set(record.message_create_ms),
            ordering_key: NotSet,
            seq: NotSet,
        };
        self.put(&record.key, row, record.next_attempt_ms.is_some());
    }

    fn finished(
        &mut self,
        key: &DeliveryKey,
        workspace_id: &str,
        create_ms: i64,
        status: DeliveryStatus,
    ) {
        let row = delivery::ActiveModel {
            message_id: Set(key.message_id.clone()),
            subscription_id: Set(key.subscription_id.clone()),
            workspace_id: Set(workspace_id.to_owned()),
            status: Set(status.as_str().to_owned()),
            attempt_count: Set(0),
            next_attempt_ms: Set(create_ms),
            lease_until_ms: Set(None),
            first_failure_ms: Set(None),
            schedule_start: Set(0),
            create_ms: Set(create_ms),
            ordering_key: NotSet,
            seq: NotSet,
        };
        self.put(key, row, true);
    }

    fn put(&mut self, key: &DeliveryKey, row: delivery::ActiveModel, sets_next: bool) {
        match self.index.get(key) {
            Some(&at) => {
                self.rows[at] = row;
                self.sets_next[at] = sets_next;
            }
            None => {
                self.index.insert(key.clone(), self.rows.len());
                self.rows.push(row);
                self.sets_next.push(sets_next);
            }
        }
    }

    /// Writes the rows (inserted, or updated where they exist) and starts over.
    async fn write<C: ConnectionTrait>(&mut self, tx: &C) -> Result<(), DbErr> {
        let rows = std::mem::take(&mut self.rows);
        let sets_next = std::mem::take(&mut self.sets_next);
        self.index.clear();
        let (with_next, keeping_next): (Vec<_>, Vec<_>) =
            rows.into_iter().zip(sets_next).partition(|(_, sets)| *sets);
        for (group, next) in [(with_next, true), (keeping_next, false)] {
            let group: Vec<delivery::ActiveModel> = group.into_iter().map(|(row, _)| row).collect();
            for chunk in group.chunks(ROWS_PER_STATEMENT) {
                let mut columns = vec![
                    delivery::Column::Status,
                    delivery::Column::AttemptCount,
                    delivery::Column::LeaseUntilMs,
                    delivery::Column::FirstFailureMs,
                    delivery::Column::ScheduleStart,
                ];
                if next {
                    columns.push(delivery::Column::NextAttemptMs);
                }
                delivery::Entity::insert_many(chunk.to_vec())
                    .on_conflict(
                        OnConflict::columns([
                            delivery::Column::MessageId,
                            delivery::Column::SubscriptionId,
                        ])
                        .update_columns(columns)
                        .to_owned(),
                    )
                    .exec_without_returning(tx)
                    .await?;
            }
        }
        Ok(())
    }
}

/// Ends a delivery that is still pending with `status`.
async fn finish_pending<C: ConnectionTrait>(
    tx: &C,
    key: &DeliveryKey,
    status: DeliveryStatus,
) -> Result<(), DbErr> {
    delivery::Entity::update_many()
        .col_expr(delivery::Column::Status, Expr::value(status.as_str()))
        .col_expr(
            delivery::Column::LeaseUntilMs,
            Expr::value(Option::<i64>::None),
        )
        .filter(delivery::Column::MessageId.eq(&key.message_id))
        .filter(delivery::Column::SubscriptionId.eq(&key.subscription_id))
        .filter(delivery::Column::Status.eq(DeliveryStatus::Pending.as_str()))
        .exec(tx)
        .await?;
    Ok(())
}

/// Ends every pending delivery of a subscription as failed.
async fn fail_pending<C: ConnectionTrait>(tx: &C, subscription_id: &str) -> Result<(), DbErr> {
    delivery::Entity::update_many()
        .col_expr(
            delivery::Column::Status,
            Expr::value(DeliveryStatus::Failed.as_str()),
        )
        .col_expr(
            delivery::Column::LeaseUntilMs,
            Expr::value(Option::<i64>::None),
        )
        .filter(delivery::Column::SubscriptionId.eq(subscription_id))
        .filter(delivery::Column::Status.eq(DeliveryStatus::Pending.as_str()))
        .exec(tx)
        .await?;
    Ok(())
}
