//! Endpoint ownership verification (issue 23), opt-in per workspace
//! (`workspaces.require_endpoint_verification`: its new subscriptions require it) or per
//! subscription:
//! `verification_required`, and the state of the last verification (`verification_state`:
//! `pending`, `verified` or `failed`; null when not required), why, for people
//! (`verification_message`), and when it concluded (`verify_ms`). Existing subscriptions
//! do not require it.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0010_control_verification"
    }
}

#[derive(DeriveIden)]
enum Workspaces {
    Table,
    RequireEndpointVerification,
}

#[derive(DeriveIden)]
enum Subscriptions {
    Table,
    VerificationRequired,
    VerificationState,
    VerificationMessage,
    VerifyMs,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Workspaces::Table)
                .add_column(
                    ColumnDef::new(Workspaces::RequireEndpointVerification)
                        .boolean()
                        .not_null()
                        .default(false),
                )
                .to_owned(),
        )
        .await?;
        // One column per statement: SQLite's ALTER TABLE adds one at a time.
        let columns = [
            ColumnDef::new(Subscriptions::VerificationRequired)
                .boolean()
                .not_null()
                .default(false)
                .to_owned(),
            ColumnDef::new(Subscriptions::VerificationState)
                .text()
                .null()
                .to_owned(),
            ColumnDef::new(Subscriptions::VerificationMessage)
                .text()
                .null()
                .to_owned(),
            ColumnDef::new(Subscriptions::VerifyMs)
                .big_integer()
                .null()
                .to_owned(),
        ];
        for column in columns {
            m.alter_table(
                Table::alter()
                    .table(Subscriptions::Table)
                    .add_column(column)
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for column in [
            Subscriptions::VerifyMs,
            Subscriptions::VerificationMessage,
            Subscriptions::VerificationState,
            Subscriptions::VerificationRequired,
        ] {
            m.alter_table(
                Table::alter()
                    .table(Subscriptions::Table)
                    .drop_column(column)
                    .to_owned(),
            )
            .await?;
        }
        m.alter_table(
            Table::alter()
                .table(Workspaces::Table)
                .drop_column(Workspaces::RequireEndpointVerification)
                .to_owned(),
        )
        .await?;
        Ok(())
    }
}
