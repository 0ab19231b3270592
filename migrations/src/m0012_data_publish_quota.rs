//! A workspace's own publish quota on the data plane (issue 22, item 4):
//! `dp_workspaces.publish_quota`, its `PublishQuota` as the configuration watch sent it
//! (protobuf bytes; null: the data plane's flags), so it holds after a restart without the
//! control plane.

use sea_orm_migration::{prelude::*, schema::*};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0012_data_publish_quota"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table("dp_workspaces")
                .add_column(blob_null("publish_quota"))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table("dp_workspaces")
                .drop_column("publish_quota")
                .to_owned(),
        )
        .await
    }
}
