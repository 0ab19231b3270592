//! Attempt outcomes: what the dispatcher hands the writer after each attempt (the delivery
//! row's new state, the failure streak, what the control plane is told) and how a batch of
//! them is written inside the writer's transaction, grouped into few statements, so a busy
//! dispatcher costs a statement per group of deliveries, not per attempt.

use std::collections::HashMap;
use std::time::Duration;

use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter};
use sluice_core::outcome::DeliveryStatus;
use sluice_proto::control::v1::{
    AttemptOutcome, ConfigSubscription, ReportOutcomesRequest, SubscriptionDisabled,
};
use sluice_store::data::{delivery, state};
use tokio::sync::oneshot;

use crate::config_copy::{set_state, upsert_subscription};
use crate::decision::Streak;
use crate::queue::DeliveryKey;
use crate::shared::Shared;

/// The `dp_state` name prefix of an endpoint's failure streak.
pub(crate) const STREAK_STATE_PREFIX: &str = "endpoint_failing:";

/// What the writer is asked to store.
pub(crate) enum OutcomeEvent {
    /// An attempt was made.
    Attempt(Box<AttemptRecord>),
    /// A delivery ended without an attempt (its subscription was deleted or disabled).
    Finished {
        key: DeliveryKey,
        status: DeliveryStatus,
    },
    /// The data plane disabled a subscription: fail its pending deliveries, keep the local
    /// copy disabled, and tell the control plane.
    Disabled(Box<Disabled>),
    /// Answered once everything sent before it is committed.
    Flush(oneshot::Sender<()>),
}

/// A subscription the data plane disabled.
pub(crate) struct Disabled {
    /// What the control plane is told.
    pub(crate) report: SubscriptionDisabled,
    /// The local copy, with `enabled` false, to persist.
    pub(crate) config: ConfigSubscription,
}

/// One attempt's effect on its delivery.
pub(crate) struct AttemptRecord {
    pub(crate) key: DeliveryKey,
    /// What the control plane is told.
    pub(crate) outcome: AttemptOutcome,
    pub(crate) status: DeliveryStatus,
    pub(crate) attempt_count: u32,
    /// The next attempt's due time; `None` leaves the stored one.
    pub(crate) next_attempt_ms: Option<i64>,
    /// The row's lease after this; `None` clears it so any replica's scanner may take it.
    pub(crate) lease_until_ms: Option<i64>,
    pub(crate) first_failure_ms: Option<i64>,
    pub(crate) streak: StreakChange,
}

/// How an endpoint's failure streak changed, to persist it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum StreakChange {
    Unchanged,
    Set(Streak),
    Clear,
}

/// Applies a batch of outcome events inside the writer's transaction, and adds what the
/// control plane must hear of them (attempts, disabled subscriptions) to `report`.
pub(crate) async fn apply<C: ConnectionTrait>(
    tx: &C,
    batch: &[OutcomeEvent],
    report: &mut ReportOutcomesRequest,
) -> Result<(), DbErr> {
    let mut streaks: HashMap<&str, StreakChange> = HashMap::new();
    let mut last_state: HashMap<&DeliveryKey, &AttemptRecord> = HashMap::new();
    let mut order: Vec<&DeliveryKey> = Vec::new();
    for event in batch {
        match event {
            OutcomeEvent::Attempt(record) => {
                // Only the last state of a delivery in the batch matters; the rows are
                // written below, grouped, a statement per group rather than per attempt.
                if last_state.insert(&record.key, record).is_none() {
                    order.push(&record.key);
                }
                report.attempts.push(record.outcome.clone());
                if !matches!(record.streak, StreakChange::Unchanged) {
                    streaks.insert(&record.key.subscription_id, record.streak);
                }
            }
            OutcomeEvent::Finished { key, status } => {
                // Statements keep their order: attempts before this event are written first.
                write_delivery_states(tx, &order, &last_state).await?;
                order.clear();
                last_state.clear();
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
            }
            OutcomeEvent::Disabled(disabled) => {
                let Disabled {
                    report: disabled,
                    config,
                } = disabled.as_ref();
                write_delivery_states(tx, &order, &last_state).await?;
                order.clear();
                last_state.clear();
                fail_pending(tx, &disabled.subscription_id).await?;
                upsert_subscription(tx, config).await?;
                streaks.insert(&disabled.subscription_id, StreakChange::Clear);
                report.disabled_subscriptions.push(disabled.clone());
            }
            OutcomeEvent::Flush(_) => {}
        }
    }
    write_delivery_states(tx, &order, &last_state).await?;
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

/// The new state of each delivery a batch of attempts touched, as one UPDATE per group of
/// deliveries of one subscription that end in the same state (on a busy endpoint: one
/// statement for the whole batch).
async fn write_delivery_states<C: ConnectionTrait>(
    tx: &C,
    order: &[&DeliveryKey],
    last_state: &HashMap<&DeliveryKey, &AttemptRecord>,
) -> Result<(), DbErr> {
    type Group<'a> = (
        &'a str,
        &'static str,
        u32,
        Option<i64>,
        Option<i64>,
        Option<i64>,
    );
    let mut groups: Vec<(Group, Vec<String>)> = Vec::new();
    let mut index: HashMap<Group, usize> = HashMap::new();
    for key in order {
        let Some(record) = last_state.get(key) else {
            continue;
        };
        let group: Group = (
            key.subscription_id.as_str(),
            record.status.as_str(),
            record.attempt_count,
            record.lease_until_ms,
            record.first_failure_ms,
            record.next_attempt_ms,
        );
        let at = *index.entry(group).or_insert_with(|| {
            groups.push((group, Vec::new()));
            groups.len() - 1
        });
        groups[at].1.push(key.message_id.clone());
    }
    for (
        (subscription_id, status, attempt_count, lease_until_ms, first_failure_ms, next_attempt_ms),
        ids,
    ) in groups
    {
        for chunk in ids.chunks(500) {
            let mut update = delivery::Entity::update_many()
                .col_expr(delivery::Column::Status, Expr::value(status))
                .col_expr(
                    delivery::Column::AttemptCount,
                    Expr::value(i32::try_from(attempt_count).unwrap_or(i32::MAX)),
                )
                .col_expr(delivery::Column::LeaseUntilMs, Expr::value(lease_until_ms))
                .col_expr(
                    delivery::Column::FirstFailureMs,
                    Expr::value(first_failure_ms),
                );
            if let Some(next) = next_attempt_ms {
                update = update.col_expr(delivery::Column::NextAttemptMs, Expr::value(next));
            }
            update
                .filter(delivery::Column::SubscriptionId.eq(subscription_id))
                .filter(delivery::Column::MessageId.is_in(chunk.iter().cloned()))
                .exec(tx)
                .await?;
        }
    }
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

/// Waits until every outcome handed to the writer before this call is committed, so a
/// caller reads the delivery rows as the dispatcher left them.
pub(crate) async fn flush(shared: &Shared) {
    let (done, wait) = oneshot::channel();
    if shared
        .outcome_tx
        .send(OutcomeEvent::Flush(done))
        .await
        .is_ok()
    {
        // Bounded, in case the writer is stuck retrying a broken database.
        let _ = tokio::time::timeout(Duration::from_secs(10), wait).await;
    }
}

/// Loads every persisted failure streak.
pub(crate) async fn load_streaks<C: ConnectionTrait>(
    db: &C,
) -> Result<HashMap<String, Streak>, DbErr> {
    let rows = state::Entity::find()
        .filter(state::Column::Name.starts_with(STREAK_STATE_PREFIX))
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let id = row.name.strip_prefix(STREAK_STATE_PREFIX)?.to_owned();
            Some((id, Streak::decode(&row.value)?))
        })
        .collect())
}
