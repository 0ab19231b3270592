//! Delivery policy (issue 22) on the data plane: `dp_workspaces.retry_policy`, the
//! workspace's `RetryPolicy` as the configuration watch sent it (protobuf bytes; null: none),
//! so its subscriptions keep it after a restart without the control plane. A subscription's
//! own policy and payload shape travel inside `dp_subscriptions.config` already.

use sea_orm_migration::{prelude::*, schema::*};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0007_data_policy"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table("dp_workspaces")
                .add_column(blob_null("retry_policy"))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table("dp_workspaces")
                .drop_column("retry_policy")
                .to_owned(),
        )
        .await
    }
}
