//! Adaptive concurrency (issue 22): `endpoint_health.concurrency_limit`, the concurrency
//! limit the data plane last reported for the endpoint with an attempt's outcome (null until
//! one did).

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0009_control_concurrency"
    }
}

#[derive(DeriveIden)]
enum EndpointHealth {
    Table,
    ConcurrencyLimit,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(EndpointHealth::Table)
                .add_column(
                    ColumnDef::new(EndpointHealth::ConcurrencyLimit)
                        .big_integer()
                        .null(),
                )
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(EndpointHealth::Table)
                .drop_column(EndpointHealth::ConcurrencyLimit)
                .to_owned(),
        )
        .await
    }
}
