//! Delivery policy (issue 22): a workspace's and a subscription's own retry policy
//! (`retry_policy`, JSON of `sluice_core::policy::Overrides` in milliseconds; null inherits),
//! and the body shape a subscription receives (`payload_shape`: `envelope`, `raw` or
//! `thin`). Existing rows inherit everything and keep the envelope.

use sea_orm_migration::{prelude::*, schema::*};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0007_control_policy"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite's ALTER TABLE adds one at a time.
        for table in ["workspaces", "subscriptions"] {
            m.alter_table(
                Table::alter()
                    .table(table)
                    .add_column(text_null("retry_policy"))
                    .to_owned(),
            )
            .await?;
        }
        m.alter_table(
            Table::alter()
                .table("subscriptions")
                .add_column(string("payload_shape").default("envelope"))
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table("subscriptions")
                .drop_column("payload_shape")
                .to_owned(),
        )
        .await?;
        for table in ["subscriptions", "workspaces"] {
            m.alter_table(
                Table::alter()
                    .table(table)
                    .drop_column("retry_policy")
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}
