//! Retention and the outcome quarantine. A workspace may set its own windows
//! (`workspaces.retention_ms`, `idempotency_retention_ms`; NULL keeps the server's
//! default). `quarantined_outcomes` holds the outcome batches the control plane could not
//! store after a few tries, set aside (the encoded batch and the error) so the data plane's
//! outbox moves on. The purge deletes `attempts` by `(workspace_id, message_id)` ranges,
//! which the m0001 index already serves; nothing else needs an index of its own.

use sea_orm_migration::{prelude::*, schema::*};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0004_control_retention"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one at a time.
        for column in ["retention_ms", "idempotency_retention_ms"] {
            m.alter_table(
                Table::alter()
                    .table("workspaces")
                    .add_column(big_integer_null(column))
                    .to_owned(),
            )
            .await?;
        }
        m.create_table(
            Table::create()
                .table("quarantined_outcomes")
                .col(pk_auto("id").big_integer())
                .col(big_integer("batch_id"))
                .col(blob("body"))
                .col(text("error"))
                .col(integer("tries"))
                .col(big_integer("create_ms"))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table("quarantined_outcomes").to_owned())
            .await?;
        for column in ["idempotency_retention_ms", "retention_ms"] {
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
