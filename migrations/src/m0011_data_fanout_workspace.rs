//! Fair fan-out claims (issue 22): `dp_fanout` carries its message's workspace, with an
//! index on `(workspace_id, message_id)` of the rows nobody holds (`lease_until_ms IS
//! NULL`), so the scanner lists the workspaces with fan-outs waiting by a skip scan and
//! claims each one's oldest in one index range. Before, sharing the claim between
//! workspaces meant ranking the whole claimable backlog joined with its messages (a window
//! function), which held SQLite's one connection for tens of milliseconds once a second
//! while a big workspace's backlog waited in the database.
//!
//! The index is partial because nearly every fan-out row is written already leased (the
//! process that commits the message holds its first attempts) and deleted milliseconds
//! later: such rows never enter it, so the hot path pays nothing for it. A lease that ran
//! out (a replica that died) is cleared by the scanner, which puts the row in the index.
//!
//! Fan-out rows live for milliseconds to minutes; the ones present are filled in from their
//! messages.

use sea_orm_migration::{prelude::*, schema::*};

pub struct Migration;

const INDEX: &str = "idx_dp_fanout_unleased";

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0011_data_fanout_workspace"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table("dp_fanout")
                .add_column(string("workspace_id").default(""))
                .to_owned(),
        )
        .await?;
        m.get_connection()
            .execute_unprepared(
                "UPDATE dp_fanout SET workspace_id = COALESCE(( \
                   SELECT m.workspace_id FROM dp_messages m \
                   WHERE m.id = dp_fanout.message_id), '')",
            )
            .await?;
        m.get_connection()
            .execute_unprepared(&format!(
                "CREATE INDEX {INDEX} ON dp_fanout (workspace_id, message_id) \
                 WHERE lease_until_ms IS NULL"
            ))
            .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(Index::drop().name(INDEX).table("dp_fanout").to_owned())
            .await?;
        m.alter_table(
            Table::alter()
                .table("dp_fanout")
                .drop_column("workspace_id")
                .to_owned(),
        )
        .await
    }
}
