//! [`Session`]: the hot path's transaction on one pooled connection, which runs the fixed
//! statements of `data` and `control` and, as a sea-orm `ConnectionTrait`, any other query
//! in the same transaction. How each backend sends a cycle is in `sqlite` and `postgres`.

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, ExecResult, QueryResult, Statement,
};
use tokio::sync::Mutex;

use super::finish::Finish;
use super::postgres::PostgresSession;
use super::sqlite::SqliteSession;

/// A transaction on one connection, for the hot path. Finish it with [`Session::commit`]
/// or [`Session::rollback`]; a session dropped in the middle closes its connection (a
/// SQLite transaction cannot be rolled back from a destructor).
pub struct Session {
    backend: DbBackend,
    inner: Mutex<Backend>,
}

/// The session's state on its backend.
enum Backend {
    Sqlite(SqliteSession),
    Postgres(PostgresSession),
}

impl Session {
    /// Takes a connection from the pool (SQLite; `BEGIN` goes with the first statements), or
    /// nothing yet (PostgreSQL: the transaction begins with the first statement sent, so a
    /// session whose only statements are its commit's can send them as one).
    pub async fn begin(db: &DatabaseConnection) -> Result<Session, DbErr> {
        let backend = db.get_database_backend();
        let inner = match backend {
            DbBackend::Sqlite => {
                Backend::Sqlite(SqliteSession::begin(db.get_sqlite_connection_pool()).await?)
            }
            DbBackend::Postgres => {
                Backend::Postgres(PostgresSession::begin(db.get_postgres_connection_pool()))
            }
            other => {
                return Err(DbErr::Custom(format!("{other:?} is not supported")));
            }
        };
        Ok(Session {
            backend,
            inner: Mutex::new(inner),
        })
    }

    /// Runs `statements` in order and returns the rows they return (every statement's, in
    /// order). On an error the transaction is rolled back and the session ends.
    pub async fn run(&self, statements: Vec<Statement>) -> Result<Vec<QueryResult>, DbErr> {
        self.send(statements, Finish::Open).await
    }

    /// Runs `statements` in order, then commits.
    pub async fn commit(self, statements: Vec<Statement>) -> Result<Vec<QueryResult>, DbErr> {
        self.send(statements, Finish::Commit).await
    }

    /// Like [`Session::commit`], for statements that do not depend on each other's effects
    /// (no two touch the same rows): PostgreSQL may then run them as one statement, when
    /// nothing was sent before them and at most one returns rows.
    pub async fn commit_independent(
        self,
        statements: Vec<Statement>,
    ) -> Result<Vec<QueryResult>, DbErr> {
        self.send(statements, Finish::CommitIndependent).await
    }

    /// Rolls back what was sent and gives the connection back.
    pub async fn rollback(mut self) {
        match self.inner.get_mut() {
            Backend::Sqlite(sqlite) => sqlite.rollback().await,
            Backend::Postgres(postgres) => postgres.rollback().await,
        }
    }

    async fn send(
        &self,
        statements: Vec<Statement>,
        finish: Finish,
    ) -> Result<Vec<QueryResult>, DbErr> {
        match &mut *self.inner.lock().await {
            Backend::Sqlite(sqlite) => sqlite.send(statements, finish).await,
            Backend::Postgres(postgres) => postgres.send(statements, finish).await,
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Backend::Sqlite(sqlite) = self.inner.get_mut() {
            sqlite.abandon();
        }
    }
}

#[async_trait::async_trait]
impl ConnectionTrait for Session {
    fn get_database_backend(&self) -> DbBackend {
        self.backend
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        match &mut *self.inner.lock().await {
            Backend::Sqlite(sqlite) => sqlite.execute(stmt).await,
            Backend::Postgres(postgres) => postgres.execute(stmt).await,
        }
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        self.execute_raw(Statement::from_string(self.backend, sql.to_owned()))
            .await
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        Ok(self.query_all_raw(stmt).await?.into_iter().next())
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        self.run(vec![stmt]).await
    }
}
