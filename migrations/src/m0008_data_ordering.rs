//! Ordered delivery per key (docs/ordering.md). A delivery of an event with an ordering key
//! to a subscription with `ordered_delivery` gets its `dp_deliveries` row when the event is
//! committed (not a fan-out's first attempt), with its `ordering_key` and `seq`, its place
//! in the commit order. Only the pending delivery of lowest `seq` of a (subscription, key),
//! its head, is ever claimed: the partial index finds it, and holds pending keyed rows only,
//! so other deliveries cost it nothing.
//!
//! `dp_ordering_seq` is the one counter `seq` is taken from: the writer adds to it in its
//! transaction, so on PostgreSQL its row lock orders the commits of replicas that write
//! ordered deliveries, and `seq` order is commit order.

use sea_orm_migration::{prelude::*, schema::*};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0008_data_ordering"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite's ALTER TABLE adds one at a time.
        m.alter_table(
            Table::alter()
                .table("dp_deliveries")
                .add_column(text_null("ordering_key"))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table("dp_deliveries")
                .add_column(big_integer_null("seq"))
                .to_owned(),
        )
        .await?;
        let db = m.get_connection();
        db.execute_unprepared(
            "CREATE INDEX idx_dp_deliveries_ordered ON dp_deliveries \
             (subscription_id, ordering_key, seq) \
             WHERE ordering_key IS NOT NULL AND status = 'pending'",
        )
        .await?;
        m.create_table(
            Table::create()
                .table("dp_ordering_seq")
                .col(integer("id").primary_key())
                .col(big_integer("last_seq"))
                .to_owned(),
        )
        .await?;
        db.execute_unprepared("INSERT INTO dp_ordering_seq (id, last_seq) VALUES (1, 0)")
            .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table("dp_ordering_seq").to_owned())
            .await?;
        m.get_connection()
            .execute_unprepared("DROP INDEX idx_dp_deliveries_ordered")
            .await?;
        for column in ["seq", "ordering_key"] {
            m.alter_table(
                Table::alter()
                    .table("dp_deliveries")
                    .drop_column(column)
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}
