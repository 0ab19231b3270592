//! Which replica streams the outbox. On PostgreSQL several data planes share one outbox; if
//! each streamed all of it, the control plane would get every batch once per replica. So
//! only the replica holding a PostgreSQL advisory lock reports. The lock is session-level,
//! on a connection set aside for it: if that replica or its connection dies, PostgreSQL
//! releases the lock and another replica takes over. SQLite has one process: no election.

use sea_orm::DatabaseConnection;
use sea_orm::sqlx::pool::PoolConnection;
use sea_orm::sqlx::{self, Postgres};

/// The advisory lock key of the outbox reporter (the control plane uses 7411001).
const REPORTER_LOCK_KEY: i64 = 7_411_002;

/// Holding the reporter lock.
pub(crate) struct Leader {
    connection: PoolConnection<Postgres>,
}

/// Tries to become the reporting replica. `Ok(None)`: another replica reports.
pub(crate) async fn try_lead(db: &DatabaseConnection) -> Result<Option<Leader>, sqlx::Error> {
    let sea_orm::DatabaseConnectionType::SqlxPostgresPoolConnection(_) = &db.inner else {
        return Err(sqlx::Error::Configuration(
            "reporter election needs a PostgreSQL pool".into(),
        ));
    };
    let mut connection = db.get_postgres_connection_pool().acquire().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(REPORTER_LOCK_KEY)
        .fetch_one(&mut *connection)
        .await?;
    // Not locked: the connection goes back to the pool holding nothing.
    Ok(locked.then_some(Leader { connection }))
}

impl Leader {
    /// Whether the lock is still held: true while its connection is alive.
    pub(crate) async fn still_held(&mut self) -> bool {
        sqlx::query_scalar::<_, i32>("SELECT 1")
            .fetch_one(&mut *self.connection)
            .await
            .is_ok()
    }

    /// Gives the lock up by closing its connection, so the session (and with it the lock)
    /// ends even if an unlock statement would fail, and no pooled connection keeps it.
    pub(crate) async fn resign(self) {
        if let Err(err) = self.connection.close().await {
            tracing::debug!(error = %err, "closing the reporter's lock connection failed");
        }
    }
}
