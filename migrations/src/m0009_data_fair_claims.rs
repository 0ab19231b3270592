//! Fair claims between workspaces (issue 22): an index on `dp_deliveries (status,
//! workspace_id, next_attempt_ms)`, so the scanner lists the workspaces with pending
//! deliveries by a skip scan (one seek each) and claims each one's due rows in due order.
//! `dp_deliveries` is written only for deliveries whose first attempt did not succeed, so
//! the index costs nothing to a delivery that succeeds at once.

use sea_orm_migration::prelude::*;

use crate::m0001_control_initial::index;

pub struct Migration;

const COLUMNS: [&str; 3] = ["status", "workspace_id", "next_attempt_ms"];

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0009_data_fair_claims"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        index(m, "dp_deliveries", &COLUMNS).await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .name(format!("idx_dp_deliveries_{}", COLUMNS.join("_")))
                .table("dp_deliveries")
                .to_owned(),
        )
        .await
    }
}
