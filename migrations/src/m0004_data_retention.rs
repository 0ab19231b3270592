//! Retention on the data plane: `dp_workspaces` keeps the workspaces' own windows from the
//! configuration watch (so the purge knows them after a restart without the control
//! plane), and a partial index over the ids of messages that still carry an idempotency
//! key lets the purge find the keys past their window without reading every message (one
//! more b-tree insert per keyed publish only; most publishes carry no key).
//!
//! `dp_deliveries.schedule_start` (the attempts made before the current run of the retry
//! schedule) lets a manual retry or a replay that fails start the schedule over: the
//! schedule's step is the attempt number minus it. 0 for every existing row: one run.

use sea_orm_migration::{prelude::*, schema::*};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0004_data_retention"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("dp_workspaces")
                .col(string("id").primary_key())
                .col(big_integer_null("retention_ms"))
                .col(big_integer_null("idempotency_retention_ms"))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table("dp_deliveries")
                .add_column(integer("schedule_start").default(0))
                .to_owned(),
        )
        .await?;
        m.get_connection()
            .execute_unprepared(
                "CREATE INDEX idx_dp_messages_keyed ON dp_messages (id) \
                 WHERE idempotency_key IS NOT NULL",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.get_connection()
            .execute_unprepared("DROP INDEX idx_dp_messages_keyed")
            .await?;
        m.alter_table(
            Table::alter()
                .table("dp_deliveries")
                .drop_column("schedule_start")
                .to_owned(),
        )
        .await?;
        m.drop_table(Table::drop().table("dp_workspaces").to_owned())
            .await
    }
}
