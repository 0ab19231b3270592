//! A workspace's own publish quota (issue 22, item 4): `workspaces.publish_quota_rate`, events
//! a second (0: no quota for this workspace, whatever the server's; null: the server's), and
//! `workspaces.publish_quota_burst` (0: one second's worth). Both null unless set.

use sea_orm_migration::{prelude::*, schema::*};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0012_control_publish_quota"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite's ALTER TABLE adds one at a time.
        for column in ["publish_quota_rate", "publish_quota_burst"] {
            m.alter_table(
                Table::alter()
                    .table("workspaces")
                    .add_column(big_integer_null(column))
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for column in ["publish_quota_burst", "publish_quota_rate"] {
            m.alter_table(
                Table::alter()
                    .table("workspaces")
                    .drop_column(column)
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}
