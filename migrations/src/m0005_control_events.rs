//! The delivery log's position of each attempt, for `DeliveryService.WatchAttempts`: where
//! an attempt was logged, in the order in which attempts become visible, so a watcher reads
//! what follows its cursor and misses nothing. `(log_txid, log_seq)`:
//! - PostgreSQL: the inserting transaction's id (`pg_current_xact_id()`) and a sequence
//!   number, both column defaults (the insert statements do not change). Transactions
//!   commit out of sequence order, but every row of a transaction older than the oldest
//!   one still running (`pg_snapshot_xmin`) is visible: a watcher reads up to there.
//! - SQLite: `log_txid` 0 and `log_seq` numbered by the insert itself (one writer, so
//!   numbering order is commit order).
//!
//! One index, `(log_txid, log_seq)`, serves both the watchers' reads and SQLite's
//! numbering; rows logged before this migration have no position and are not streamed.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0005_control_events"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        if m.get_database_backend() == DbBackend::Postgres {
            // The columns first, without defaults (no rewrite of the table: a volatile
            // default would be evaluated for every stored row), then the defaults, which
            // apply to new rows only.
            db.execute_unprepared(
                "CREATE SEQUENCE attempts_log_seq; \
                 ALTER TABLE attempts ADD COLUMN log_txid BIGINT, ADD COLUMN log_seq BIGINT; \
                 ALTER TABLE attempts \
                   ALTER COLUMN log_txid SET DEFAULT (pg_current_xact_id()::text::bigint), \
                   ALTER COLUMN log_seq SET DEFAULT nextval('attempts_log_seq'); \
                 ALTER SEQUENCE attempts_log_seq OWNED BY attempts.log_seq",
            )
            .await?;
        } else {
            db.execute_unprepared("ALTER TABLE attempts ADD COLUMN log_txid BIGINT")
                .await?;
            db.execute_unprepared("ALTER TABLE attempts ADD COLUMN log_seq BIGINT")
                .await?;
        }
        db.execute_unprepared(
            "CREATE INDEX idx_attempts_log_position ON attempts (log_txid, log_seq)",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        db.execute_unprepared("DROP INDEX idx_attempts_log_position")
            .await?;
        db.execute_unprepared("ALTER TABLE attempts DROP COLUMN log_seq")
            .await?;
        db.execute_unprepared("ALTER TABLE attempts DROP COLUMN log_txid")
            .await?;
        if m.get_database_backend() == DbBackend::Postgres {
            db.execute_unprepared("DROP SEQUENCE IF EXISTS attempts_log_seq")
                .await?;
        }
        Ok(())
    }
}
