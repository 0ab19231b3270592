//! Fan-out rows: the first attempts of a message are tracked by one small `dp_fanout` row
//! instead of a `dp_deliveries` row per subscription, and each message keeps the
//! subscriptions it matched (`dp_messages.subscription_ids`) so those attempts can be
//! recovered after a restart. A delivery gets its own row only once its first attempt
//! failed or could not be made.
//!
//! The idempotency index becomes partial: most messages have no key, and an index entry
//! per message for a NULL that can never conflict was one more b-tree insert each.

use sea_orm_migration::{prelude::*, schema::*};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0002_data_fanout"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table("dp_messages")
                .add_column(text_null("subscription_ids"))
                .to_owned(),
        )
        .await?;
        if m.get_database_backend() == sea_orm::DbBackend::Sqlite {
            // Keyed by the message id itself: one b-tree, no separate rowid table (rows are a
            // few dozen bytes, written and deleted within milliseconds on the hot path).
            m.get_connection()
                .execute_unprepared(
                    "CREATE TABLE dp_fanout (\
                       message_id TEXT NOT NULL PRIMARY KEY, \
                       due_ms BIGINT NOT NULL, \
                       lease_until_ms BIGINT NULL\
                     ) WITHOUT ROWID",
                )
                .await?;
        } else {
            m.create_table(
                Table::create()
                    .table("dp_fanout")
                    .col(string("message_id").primary_key())
                    .col(big_integer("due_ms"))
                    .col(big_integer_null("lease_until_ms"))
                    .to_owned(),
            )
            .await?;
        }
        partial_idempotency_index(m, true).await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        partial_idempotency_index(m, false).await?;
        m.drop_table(Table::drop().table("dp_fanout").to_owned())
            .await?;
        m.alter_table(
            Table::alter()
                .table("dp_messages")
                .drop_column("subscription_ids")
                .to_owned(),
        )
        .await
    }
}

/// Recreates the idempotency index over messages with a key only (`partial`), or over all.
async fn partial_idempotency_index(m: &SchemaManager<'_>, partial: bool) -> Result<(), DbErr> {
    let db = m.get_connection();
    db.execute_unprepared("DROP INDEX idx_dp_messages_idempotency")
        .await?;
    let filter = if partial {
        " WHERE idempotency_key IS NOT NULL"
    } else {
        ""
    };
    db.execute_unprepared(&format!(
        "CREATE UNIQUE INDEX idx_dp_messages_idempotency \
         ON dp_messages (workspace_id, idempotency_key){filter}"
    ))
    .await?;
    Ok(())
}
