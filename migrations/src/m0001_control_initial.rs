//! The control plane's first schema: tenants, keys, event types, subscriptions, the change
//! log the data plane watches, and the delivery log.

use sea_orm_migration::{prelude::*, schema::*};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0001_control_initial"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("workspaces")
                .col(string("id").primary_key())
                .col(string("display_name"))
                .col(big_integer("create_ms"))
                .col(big_integer("update_ms"))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("api_keys")
                .col(string("id").primary_key())
                .col(string("workspace_id"))
                .col(string("display_name"))
                .col(string_uniq("key_hash"))
                .col(string("key_prefix"))
                .col(big_integer("create_ms"))
                .col(big_integer_null("revoke_ms"))
                .to_owned(),
        )
        .await?;
        index(m, "api_keys", &["workspace_id", "id"]).await?;

        m.create_table(
            Table::create()
                .table("event_types")
                .col(string("workspace_id"))
                .col(string("name"))
                .col(integer("version"))
                .col(text("description"))
                .col(text_null("json_schema"))
                .col(text_null("example"))
                .col(boolean("archived"))
                .col(big_integer("create_ms"))
                .col(big_integer("update_ms"))
                .primary_key(Index::create().col("workspace_id").col("name"))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("subscriptions")
                .col(string("id").primary_key())
                .col(string("workspace_id"))
                .col(text("description"))
                .col(text("url"))
                .col(string("destination_type"))
                .col(text("filters"))
                .col(text("headers"))
                .col(integer("rate_limit_per_second"))
                .col(boolean("enabled"))
                .col(string_null("disabled_reason"))
                .col(text_null("disabled_message"))
                .col(big_integer_null("disable_ms"))
                .col(string("secret"))
                .col(string_null("previous_secret"))
                .col(big_integer_null("previous_secret_expire_ms"))
                .col(big_integer("create_ms"))
                .col(big_integer("update_ms"))
                .to_owned(),
        )
        .await?;
        index(m, "subscriptions", &["workspace_id", "id"]).await?;

        m.create_table(
            Table::create()
                .table("config_changes")
                .col(pk_auto("revision").big_integer())
                .col(string("kind"))
                .col(string("resource_id"))
                .col(string("workspace_id"))
                .col(big_integer("create_ms"))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("messages")
                .col(string("id").primary_key())
                .col(string("workspace_id"))
                .col(string("event_type"))
                .col(big_integer("create_ms"))
                .col(integer("delivery_count"))
                .to_owned(),
        )
        .await?;
        index(m, "messages", &["workspace_id", "id"]).await?;

        m.create_table(
            Table::create()
                .table("deliveries")
                .col(string("message_id"))
                .col(string("subscription_id"))
                .col(string("workspace_id"))
                .col(string("event_type"))
                .col(string("status"))
                .col(integer("attempt_count"))
                .col(big_integer_null("last_attempt_ms"))
                .col(big_integer_null("next_attempt_ms"))
                .col(integer("last_status_code"))
                .col(string("last_error_kind"))
                .col(big_integer("create_ms"))
                .primary_key(Index::create().col("message_id").col("subscription_id"))
                .to_owned(),
        )
        .await?;
        index(
            m,
            "deliveries",
            &["workspace_id", "subscription_id", "status"],
        )
        .await?;
        index(m, "deliveries", &["workspace_id", "message_id"]).await?;

        m.create_table(
            Table::create()
                .table("attempts")
                .col(string("id").primary_key())
                .col(string("workspace_id"))
                .col(string("message_id"))
                .col(string("subscription_id"))
                .col(string("event_type"))
                .col(integer("attempt_number"))
                .col(big_integer("attempt_ms"))
                .col(boolean("success"))
                .col(integer("status_code"))
                .col(string("error_kind"))
                .col(text("error_message"))
                .col(big_integer("latency_us"))
                .col(text("response_excerpt"))
                .col(string("trigger"))
                .col(text("url"))
                .to_owned(),
        )
        .await?;
        index(m, "attempts", &["workspace_id", "subscription_id", "id"]).await?;
        index(m, "attempts", &["workspace_id", "message_id"]).await?;

        m.create_table(
            Table::create()
                .table("endpoint_health")
                .col(string("subscription_id").primary_key())
                .col(string("workspace_id"))
                .col(big_integer("consecutive_failures"))
                .col(big_integer_null("last_success_ms"))
                .col(big_integer_null("last_failure_ms"))
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            "endpoint_health",
            "attempts",
            "deliveries",
            "messages",
            "config_changes",
            "subscriptions",
            "event_types",
            "api_keys",
            "workspaces",
        ] {
            m.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}

/// Creates a non-unique index named after its table and columns.
pub(crate) async fn index(
    m: &SchemaManager<'_>,
    table: &'static str,
    cols: &[&'static str],
) -> Result<(), DbErr> {
    let mut stmt = Index::create();
    stmt.name(format!("idx_{table}_{}", cols.join("_")))
        .table(table);
    for c in cols {
        stmt.col(*c);
    }
    m.create_index(stmt.to_owned()).await
}
