//! A [`Session`](super::Session) on SQLite: its pooled connection, and a cycle (`BEGIN`, the
//! statements, `COMMIT`) sent to the connection's thread as one multi-statement query
//! instead of one hand-off per statement.

use sea_orm::sqlx::pool::{Pool, PoolConnection};
use sea_orm::sqlx::{self, Sqlite};
use sea_orm::{DbErr, ExecResult, QueryResult, Statement, Values};
use sea_query_sqlx::SqlxValues;

use super::finish::{Finish, exec_err, finished, query};

/// The SQLite half of a session.
pub(super) struct SqliteSession {
    /// `None` once the session has ended.
    conn: Option<PoolConnection<Sqlite>>,
    /// `BEGIN` has been sent.
    begun: bool,
}

impl SqliteSession {
    /// Takes a connection from the pool; `BEGIN` goes with the first statements.
    pub(super) async fn begin(pool: &Pool<Sqlite>) -> Result<SqliteSession, DbErr> {
        Ok(SqliteSession {
            conn: Some(pool.acquire().await.map_err(exec_err)?),
            begun: false,
        })
    }

    /// Sends `statements` (after `BEGIN` if not sent yet, before `COMMIT` if `finish`
    /// commits) as one query. On an error the transaction is rolled back and the session
    /// ends.
    pub(super) async fn send(
        &mut self,
        statements: Vec<Statement>,
        finish: Finish,
    ) -> Result<Vec<QueryResult>, DbErr> {
        let Some(c) = self.conn.as_mut() else {
            return Err(finished());
        };
        if statements.is_empty() && !finish.commits() {
            return Ok(Vec::new());
        }
        if statements.is_empty() && !self.begun {
            // Nothing was written: nothing to commit.
            self.conn = None;
            return Ok(Vec::new());
        }
        let mut sql = String::new();
        let mut values = Vec::new();
        if !self.begun {
            sql.push_str("BEGIN;\n");
        }
        for statement in statements {
            sql.push_str(&statement.sql);
            sql.push_str(";\n");
            if let Some(v) = statement.values {
                values.extend(v.0);
            }
        }
        if finish.commits() {
            sql.push_str("COMMIT");
        }
        self.begun = true;
        let result = sqlx::query_with(sqlx::AssertSqlSafe(sql), SqlxValues(Values(values)))
            .fetch_all(&mut **c)
            .await;
        match result {
            Ok(rows) => {
                if finish.commits() {
                    self.conn = None;
                }
                Ok(rows.into_iter().map(QueryResult::from).collect())
            }
            Err(err) => {
                // The statements before the failing one (and BEGIN) took effect.
                self.rollback().await;
                Err(exec_err(err))
            }
        }
    }

    /// Runs one statement in the transaction (beginning it first if needed): a sea-orm
    /// write of the cycle.
    pub(super) async fn execute(&mut self, stmt: Statement) -> Result<ExecResult, DbErr> {
        let Some(c) = self.conn.as_mut() else {
            return Err(finished());
        };
        if !self.begun {
            sqlx::raw_sql("BEGIN")
                .execute(&mut **c)
                .await
                .map_err(exec_err)?;
            self.begun = true;
        }
        let (sql, values) = query(stmt);
        sqlx::query_with(sqlx::AssertSqlSafe(sql), values)
            .execute(&mut **c)
            .await
            .map(ExecResult::from)
            .map_err(exec_err)
    }

    /// Rolls back what was sent and gives the connection back; a connection that cannot
    /// roll back is closed instead.
    pub(super) async fn rollback(&mut self) {
        if let Some(mut c) = self.conn.take()
            && self.begun
            && sqlx::raw_sql("ROLLBACK").execute(&mut *c).await.is_err()
        {
            c.close_on_drop();
        }
    }

    /// The session is dropped: a connection abandoned mid-transaction must not go back to
    /// the pool with the transaction open.
    pub(super) fn abandon(&mut self) {
        if let Some(c) = self.conn.as_mut()
            && self.begun
        {
            c.close_on_drop();
        }
    }
}
