//! Ordered delivery per key (docs/ordering.md): `subscriptions.ordered_delivery`, false for
//! every existing subscription (they keep today's concurrency), and `messages.ordering_key`,
//! the key an ordered event was published with, for the delivery log.

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

#[derive(DeriveIden)]
enum Messages {
    Table,
    OrderingKey,
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
        .await?;
        m.alter_table(
            Table::alter()
                .table(Messages::Table)
                .add_column(ColumnDef::new(Messages::OrderingKey).text().null())
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Messages::Table)
                .drop_column(Messages::OrderingKey)
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Subscriptions::Table)
                .drop_column(Subscriptions::OrderedDelivery)
                .to_owned(),
        )
        .await
    }
}
