//! The data plane's first schema: its copy of the configuration, the durable queue
//! (messages and their deliveries), and the outbox of outcomes for the control plane.

use sea_orm_migration::{prelude::*, schema::*};

use crate::m0001_control_initial::index;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0001_data_initial"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("dp_state")
                .col(string("name").primary_key())
                .col(text("value"))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("dp_subscriptions")
                .col(string("id").primary_key())
                .col(string("workspace_id"))
                .col(blob("config"))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("dp_api_keys")
                .col(string("id").primary_key())
                .col(string("workspace_id"))
                .col(string_uniq("key_hash"))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("dp_messages")
                .col(string("id").primary_key())
                .col(string("workspace_id"))
                .col(string("event_type"))
                .col(blob("envelope"))
                .col(string_null("idempotency_key"))
                .col(string_null("traceparent"))
                .col(string_null("tracestate"))
                .col(big_integer("create_ms"))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_dp_messages_idempotency")
                .table("dp_messages")
                .col("workspace_id")
                .col("idempotency_key")
                .unique()
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("dp_deliveries")
                .col(string("message_id"))
                .col(string("subscription_id"))
                .col(string("workspace_id"))
                .col(string("status"))
                .col(integer("attempt_count"))
                .col(big_integer("next_attempt_ms"))
                .col(big_integer_null("lease_until_ms"))
                .col(big_integer_null("first_failure_ms"))
                .col(big_integer("create_ms"))
                .primary_key(Index::create().col("message_id").col("subscription_id"))
                .to_owned(),
        )
        .await?;
        index(m, "dp_deliveries", &["status", "next_attempt_ms"]).await?;
        index(m, "dp_deliveries", &["subscription_id", "status"]).await?;

        m.create_table(
            Table::create()
                .table("dp_outbox")
                .col(pk_auto("seq").big_integer())
                .col(blob("body"))
                .col(big_integer("create_ms"))
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            "dp_outbox",
            "dp_deliveries",
            "dp_messages",
            "dp_api_keys",
            "dp_subscriptions",
            "dp_state",
        ] {
            m.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}
