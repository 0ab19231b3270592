//! Ordered delivery per key (`docs/ordering.md`): which delivery of a (subscription,
//! ordering key) may be attempted, and what the log says when a head fails for good.
//!
//! The database is the one authority: a delivery of an ordered subscription with a key is
//! claimed only while it is its key's head, the pending row of lowest `seq` (commit order).
//! A head's retries keep it pending, so its key waits; other keys go on. When it ends
//! (delivered, or failed with no attempt left), the writer notes its key in
//! `state::heads`, and the scanner claims the next head at once with [`claim_heads`]. The
//! scanner's periodic claim has the same rule ([`HEAD_ONLY`]), for restarts, replicas and
//! retries that waited in the database. Since a key is in one process at a time, lanes
//! and timers need nothing of their own: a subscription that does not order is untouched.

use std::sync::Arc;

use sea_orm::{ConnectionTrait, DbErr, EntityTrait, Statement, Value};
use sluice_proto::control::v1::Attempt;
use sluice_store::data::delivery;

use crate::work::DeliveryTask;

/// The condition, on a `dp_deliveries` row `d`, that it is not behind an earlier pending
/// delivery of its key: always true for rows without a key.
pub(crate) const HEAD_ONLY: &str = "(d.ordering_key IS NULL OR NOT EXISTS ( \
     SELECT 1 FROM dp_deliveries e \
     WHERE e.subscription_id = d.subscription_id AND e.ordering_key = d.ordering_key \
       AND e.status = 'pending' AND e.seq < d.seq))";

/// What the final attempt of a head that failed for good says in the log.
pub(crate) const MOVES_ON: &str = "no attempt left: the ordering key moves on to its next event";

/// Keys per claim statement (two bound values each).
pub(crate) const KEYS_PER_CLAIM: usize = 200;

/// Claims the heads of `keys` ((subscription, ordering key) pairs, at most
/// [`KEYS_PER_CLAIM`]) for this replica until `lease_until`: each that is free (no replica
/// holds it) and due by `due_by`. A head held elsewhere keeps its key waiting: the rows
/// behind it are not heads.
pub(crate) async fn claim_heads<C: ConnectionTrait>(
    db: &C,
    keys: &[(String, Arc<str>)],
    now: i64,
    due_by: i64,
    lease_until: i64,
) -> Result<Vec<delivery::Model>, DbErr> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let backend = db.get_database_backend();
    let p = |n: usize| sluice_store::placeholder(backend, n);
    let pairs: Vec<String> = (0..keys.len())
        .map(|i| format!("({}, {})", p(4 + 2 * i), p(5 + 2 * i)))
        .collect();
    let lock = sluice_store::skip_locked(backend);
    // `status` as a literal, like the partial index's condition: planners match a partial
    // index on literals only.
    let sql = format!(
        "UPDATE dp_deliveries SET lease_until_ms = {p1} \
         WHERE (message_id, subscription_id) IN ( \
           SELECT message_id, subscription_id FROM dp_deliveries d \
           WHERE ordering_key IS NOT NULL AND status = 'pending' \
             AND (subscription_id, ordering_key) IN (VALUES {pairs}) \
             AND next_attempt_ms <= {p2} \
             AND (lease_until_ms IS NULL OR lease_until_ms <= {p3}) AND {HEAD_ONLY}{lock}) \
         RETURNING *",
        p1 = p(1),
        p2 = p(2),
        p3 = p(3),
        pairs = pairs.join(", "),
    );
    let mut values = vec![
        Value::from(lease_until),
        Value::from(due_by),
        Value::from(now),
    ];
    for (subscription_id, ordering_key) in keys {
        values.push(Value::from(subscription_id.as_str()));
        values.push(Value::from(ordering_key.as_ref()));
    }
    let statement = Statement::from_sql_and_values(backend, sql, values);
    delivery::Entity::find()
        .from_raw_sql(statement)
        .all(db)
        .await
}

/// Says in the final attempt of a head that failed for good that its key moves on, in the
/// delivery log and in this process's log.
pub(crate) fn key_moves_on(task: &DeliveryTask, attempt: &mut Attempt) {
    attempt.error_message = if attempt.error_message.is_empty() {
        MOVES_ON.to_owned()
    } else {
        format!("{}; {MOVES_ON}", attempt.error_message)
    };
    tracing::warn!(
        subscription_id = %task.key.subscription_id,
        message_id = %task.key.message_id,
        attempt_number = attempt.attempt_number,
        "ordered delivery failed for good; its ordering key moves on to the next event"
    );
}
