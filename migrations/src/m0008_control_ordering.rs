//! Ordered delivery per key (docs/ordering.md): `subscriptions.ordered_delivery`, false for
//! every existing subscription (they keep today's concurrency).

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0008_control_ordering"
    }
}

#[derive(DeriveIden)]
enum Subscriptions {
    Table,
    OrderedDelivery,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Subscriptions::Table)
                .add_column(
                    ColumnDef::new(Subscriptions::OrderedDelivery)
                        .boolean()
                        .not_null()
                        .default(false),
                )
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Subscriptions::Table)
                .drop_column(Subscriptions::OrderedDelivery)
                .to_owned(),
        )
        .await
    }
}
