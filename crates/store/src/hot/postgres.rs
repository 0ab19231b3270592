//! A [`Session`](super::Session) on PostgreSQL: a transaction begun by the first statement
//! that cannot go alone, or, for a commit of independent statements with nothing sent
//! before, no transaction of our own at all: the statements go as one (data-modifying
//! CTEs), which PostgreSQL runs atomically in one round trip.

use std::fmt::Write as _;

use sea_orm::sqlx::{self, PgPool, Postgres};
use sea_orm::{DbBackend, DbErr, ExecResult, QueryResult, Statement};

use super::finish::{Finish, exec_err, finished, query};

/// The PostgreSQL half of a session.
pub(super) struct PostgresSession {
    pool: PgPool,
    /// Begun by the first statement that cannot go alone (see [`PostgresSession::send`]).
    tx: Option<sqlx::Transaction<'static, Postgres>>,
    done: bool,
}

impl PostgresSession {
    /// Takes nothing from the pool yet: the transaction begins with the first statement
    /// sent, so a session whose only statements are its commit's can send them as one.
    pub(super) fn begin(pool: &PgPool) -> PostgresSession {
        PostgresSession {
            pool: pool.clone(),
            tx: None,
            done: false,
        }
    }

    /// Sends `statements`, then commits if `finish` says so. Independent statements of a
    /// commit with nothing sent before go as one statement (see [`combine`]). On an error
    /// the transaction is rolled back and the session ends.
    pub(super) async fn send(
        &mut self,
        statements: Vec<Statement>,
        finish: Finish,
    ) -> Result<Vec<QueryResult>, DbErr> {
        if self.done {
            return Err(finished());
        }
        if finish == Finish::CommitIndependent && self.tx.is_none() && combinable(&statements) {
            // Nothing sent yet: the statements can go as one, which PostgreSQL runs
            // atomically without a transaction of our own (one round trip, no BEGIN or
            // COMMIT).
            self.done = true;
            let Some(statement) = combine(statements) else {
                return Ok(Vec::new());
            };
            let (sql, values) = query(statement);
            return sqlx::query_with(sqlx::AssertSqlSafe(sql), values)
                .fetch_all(&self.pool)
                .await
                .map(|rows| rows.into_iter().map(QueryResult::from).collect())
                .map_err(exec_err);
        }
        let t = match &mut self.tx {
            Some(t) => t,
            None => self.tx.insert(self.pool.begin().await.map_err(exec_err)?),
        };
        let mut rows = Vec::new();
        for statement in statements {
            let (sql, values) = query(statement);
            match sqlx::query_with(sqlx::AssertSqlSafe(sql), values)
                .fetch_all(&mut **t)
                .await
            {
                Ok(got) => rows.extend(got.into_iter().map(QueryResult::from)),
                Err(err) => {
                    self.rollback().await;
                    return Err(exec_err(err));
                }
            }
        }
        if finish.commits() {
            self.done = true;
            if let Some(t) = self.tx.take() {
                t.commit().await.map_err(exec_err)?;
            }
        }
        Ok(rows)
    }

    /// Runs one statement in the transaction, beginning it first if needed: a sea-orm
    /// write of the cycle.
    pub(super) async fn execute(&mut self, stmt: Statement) -> Result<ExecResult, DbErr> {
        if self.done {
            return Err(finished());
        }
        let t = match &mut self.tx {
            Some(t) => t,
            None => self.tx.insert(self.pool.begin().await.map_err(exec_err)?),
        };
        let (sql, values) = query(stmt);
        sqlx::query_with(sqlx::AssertSqlSafe(sql), values)
            .execute(&mut **t)
            .await
            .map(ExecResult::from)
            .map_err(exec_err)
    }

    /// Rolls back what was sent; the session ends.
    pub(super) async fn rollback(&mut self) {
        self.done = true;
        if let Some(tx) = self.tx.take() {
            let _ = tx.rollback().await;
        }
    }
}

/// PostgreSQL statements as one: `WITH s1 AS (...), s2 AS (...) SELECT * FROM sN`, where
/// sN is the one statement that returns rows (if any; statements in `WITH` run whether
/// or not the query reads them). They all see the database as it was before any of them,
/// which is fine for the hot path's statements: no two touch the same rows. More than one
/// statement returning rows cannot be combined (see [`combinable`]); `None` for none.
fn combine(statements: Vec<Statement>) -> Option<Statement> {
    if statements.len() <= 1 {
        return statements.into_iter().next();
    }
    let returning: Vec<usize> = statements
        .iter()
        .enumerate()
        .filter(|(_, s)| returns_rows(s))
        .map(|(i, _)| i)
        .collect();
    let mut sql = String::from("WITH ");
    let mut values = Vec::new();
    for (i, statement) in statements.into_iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        let _ = write!(sql, "s{i} AS (");
        renumber(&mut sql, &statement.sql, values.len());
        sql.push(')');
        if let Some(v) = statement.values {
            values.extend(v.0);
        }
    }
    match returning.first() {
        Some(i) => {
            let _ = write!(sql, " SELECT * FROM s{i}");
        }
        None => sql.push_str(" SELECT 1 WHERE false"),
    }
    Some(Statement::from_sql_and_values(
        DbBackend::Postgres,
        sql,
        values,
    ))
}

/// Whether `combine` can join these: at most one of them returns rows.
fn combinable(statements: &[Statement]) -> bool {
    statements.iter().filter(|s| returns_rows(s)).count() <= 1
}

fn returns_rows(statement: &Statement) -> bool {
    statement.sql.contains(" RETURNING ") || statement.sql.starts_with("SELECT")
}

/// Appends `sql` with each `$n` placeholder shifted by `offset`.
fn renumber(out: &mut String, sql: &str, offset: usize) {
    let bytes = sql.as_bytes();
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
            let start = i + 1;
            let mut end = start;
            while end < bytes.len() && bytes[end].is_ascii_digit() {
                end += 1;
            }
            let n: usize = sql[start..end].parse().unwrap_or(0);
            out.push_str(&sql[copied..i]);
            let _ = write!(out, "${}", n + offset);
            copied = end;
            i = end;
        } else {
            i += 1;
        }
    }
    out.push_str(&sql[copied..]);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use sea_orm::Value;

    use super::*;

    #[test]
    fn postgres_statements_combine_with_their_placeholders_shifted() {
        let s = |sql: &str, n: i64| {
            Statement::from_sql_and_values(
                DbBackend::Postgres,
                sql,
                (0..n).map(|i| Value::BigInt(Some(i))),
            )
        };
        let combined = combine(vec![
            s("INSERT INTO a SELECT $1, $2", 2),
            s("DELETE FROM b WHERE x = $1", 1),
            s("INSERT INTO c VALUES ($1) RETURNING seq", 1),
        ])
        .unwrap();
        assert_eq!(
            combined.sql,
            "WITH s0 AS (INSERT INTO a SELECT $1, $2), s1 AS (DELETE FROM b WHERE x = $3), \
             s2 AS (INSERT INTO c VALUES ($4) RETURNING seq) SELECT * FROM s2"
        );
        assert_eq!(combined.values.unwrap().0.len(), 4);
        let none = combine(vec![s("DELETE FROM a", 0), s("DELETE FROM b WHERE $1", 1)]).unwrap();
        assert!(none.sql.ends_with(" SELECT 1 WHERE false"), "{}", none.sql);
        assert!(!combinable(&[
            s("INSERT INTO a VALUES (1) RETURNING x", 0),
            s("INSERT INTO b VALUES (1) RETURNING y", 0)
        ]));
        assert!(combinable(&[
            s("DELETE FROM a", 0),
            s("INSERT INTO b VALUES (1) RETURNING y", 0)
        ]));
        let mut out = String::new();
        renumber(&mut out, "$10::json, $2, 'a$'", 5);
        assert_eq!(out, "$15::json, $7, 'a$'");
    }
}
