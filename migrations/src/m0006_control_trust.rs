//! Asymmetric (ed25519, Standard Webhooks `v1a`) signing per subscription: which scheme it
//! signs with, and its key pair's secret half sealed like the `whsec_` secret (the previous
//! one kept through a rotation's grace period, which `previous_secret_expire_ms` bounds for
//! both kinds), and the current public key in clear (it is public; Get and List show it
//! without opening anything). Existing subscriptions stay symmetric. Endpoint
//! authentication: `auth`, the `Authorization` header value sealed, and `auth_type`
//! (`basic` or `bearer`; null for none).

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0006_control_trust"
    }
}

#[derive(DeriveIden)]
enum Subscriptions {
    Table,
    SignatureScheme,
    SigningKey,
    PreviousSigningKey,
    PublicKey,
    Auth,
    AuthType,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite's ALTER TABLE adds one at a time.
        m.alter_table(
            Table::alter()
                .table(Subscriptions::Table)
                .add_column(
                    ColumnDef::new(Subscriptions::SignatureScheme)
                        .string()
                        .not_null()
                        .default("symmetric"),
                )
                .to_owned(),
        )
        .await?;
        for column in [
            Subscriptions::SigningKey,
            Subscriptions::PreviousSigningKey,
            Subscriptions::PublicKey,
            Subscriptions::Auth,
            Subscriptions::AuthType,
        ] {
            m.alter_table(
                Table::alter()
                    .table(Subscriptions::Table)
                    .add_column(ColumnDef::new(column).text().null())
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for column in [
            Subscriptions::AuthType,
            Subscriptions::Auth,
            Subscriptions::PublicKey,
            Subscriptions::PreviousSigningKey,
            Subscriptions::SigningKey,
            Subscriptions::SignatureScheme,
        ] {
            m.alter_table(
                Table::alter()
                    .table(Subscriptions::Table)
                    .drop_column(column)
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}
