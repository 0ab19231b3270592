//! Ordered delivery per key at commit (`docs/ordering.md`): each delivery of a new event to
//! a subscription it orders gets its `dp_deliveries` row now, pending, with its ordering key
//! and `seq`, its place in the commit order. (A fan-out's first attempts need no row; these
//! do, because the database says which delivery of a key is its head.)
//!
//! `seq` is taken from the one `dp_ordering_seq` counter in the writer's transaction: on
//! PostgreSQL its row lock holds until the commit, so replicas writing ordered events commit
//! in `seq` order, and an event published after another's publish was answered always has
//! the higher `seq`. Cycles without ordered events never touch it.

use sea_orm::{ActiveValue::Set, ConnectionTrait, DbErr, EntityTrait, Statement, Value};
use sluice_core::outcome::DeliveryStatus;
use sluice_store::data::delivery;

use crate::work::NewMessage;
use sluice_store::placeholder;

/// Rows per insert statement (12 values each), well under the bound-parameter limits.
const ROWS_PER_STATEMENT: usize = 500;

/// Writes the ordered deliveries of the `created` messages, due after `first_delay_ms`,
/// free for any scanner to claim. Nothing when none has any.
pub(crate) async fn store<C: ConnectionTrait>(
    tx: &C,
    created: &[(&NewMessage, &[String])],
    first_delay_ms: i64,
) -> Result<(), DbErr> {
    let count: usize = created
        .iter()
        .filter_map(|(message, _)| message.ordered.as_ref())
        .map(|ordered| ordered.subscription_ids.len())
        .sum();
    if count == 0 {
        return Ok(());
    }
    let backend = tx.get_database_backend();
    let taken = i64::try_from(count).unwrap_or(i64::MAX);
    let sql = format!(
        "UPDATE dp_ordering_seq SET last_seq = last_seq + {} WHERE id = 1 RETURNING last_seq",
        placeholder(backend, 1)
    );
    let row = tx
        .query_one_raw(Statement::from_sql_and_values(
            backend,
            sql,
            [Value::from(taken)],
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("dp_ordering_seq has no row (migration m0008)".to_owned()))?;
    let last: i64 = row.try_get("", "last_seq")?;
    let mut seq = last.saturating_sub(taken);
    let mut rows = Vec::with_capacity(count);
    for (message, _) in created {
        let Some(ordered) = &message.ordered else {
            continue;
        };
        for subscription_id in &ordered.subscription_ids {
            seq = seq.saturating_add(1);
            rows.push(delivery::ActiveModel {
                message_id: Set(message.id.clone()),
                subscription_id: Set(subscription_id.clone()),
                workspace_id: Set(message.workspace_id.clone()),
                status: Set(DeliveryStatus::Pending.as_str().to_owned()),
                attempt_count: Set(0),
                next_attempt_ms: Set(message.create_ms.saturating_add(first_delay_ms)),
                lease_until_ms: Set(None),
                first_failure_ms: Set(None),
                schedule_start: Set(0),
                create_ms: Set(message.create_ms),
                ordering_key: Set(Some(ordered.key.to_string())),
                seq: Set(Some(seq)),
            });
        }
    }
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        delivery::Entity::insert_many(chunk.to_vec())
            .exec_without_returning(tx)
            .await?;
    }
    Ok(())
}
