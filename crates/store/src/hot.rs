//! The hot path's writes: one round trip per write cycle where the database allows it, and
//! statements whose SQL never changes.
//!
//! The data plane's writer and the control plane's outcome intake write many rows per
//! transaction, many times a second. Going through sea-orm's query builder for them cost
//! more than the database's own work: every statement is built and its values copied
//! several times, and a multi-row `INSERT` with a different row count is a different
//! statement for SQLite to prepare. Here the rows of a statement travel as one JSON
//! parameter (a JSONB blob read by Sluice's own `sluice_rows` table-valued function on
//! SQLite, text read by `jsonb_array_elements` on PostgreSQL), so each
//! statement has one fixed SQL text, prepared once and cached by the driver; and on SQLite
//! a whole cycle (`BEGIN`, the statements, `COMMIT`) is sent to its connection's thread as
//! one multi-statement query instead of one hand-off per statement.
//!
//! [`Session`] is a transaction on one pooled connection that runs such statements and,
//! implementing sea-orm's `ConnectionTrait`, any sea-orm query too, so the rare writes of a
//! cycle (a failed delivery's row, a disabled subscription) keep using the entities.

use std::sync::Arc;

use sea_orm::sqlx::pool::PoolConnection;
use sea_orm::sqlx::{self, Postgres, Sqlite};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, ExecResult, QueryResult, RuntimeErr,
    Statement, Value, Values,
};
use sea_query_sqlx::SqlxValues;
// JSONB's element types, shared with the reader of SQLite's rows (`sluice_rows`).
use sluice_sqlite_rows::jsonb::{
    ARRAY as JSONB_ARRAY, FALSE as JSONB_FALSE, INT as JSONB_INT, NULL as JSONB_NULL,
    TEXTRAW as JSONB_TEXTRAW, TRUE as JSONB_TRUE,
};
use tokio::sync::Mutex;

/// A transaction on one connection, for the hot path. Finish it with [`Session::commit`]
/// or [`Session::rollback`]; a session dropped in the middle closes its connection (a
/// SQLite transaction cannot be rolled back from a destructor).
pub struct Session {
    backend: DbBackend,
    inner: Mutex<Inner>,
}

enum Inner {
    Sqlite {
        conn: Option<PoolConnection<Sqlite>>,
        /// `BEGIN` has been sent.
        begun: bool,
    },
    Postgres {
        pool: sqlx::PgPool,
        /// Begun by the first statement that cannot go alone (see [`Session::commit`]).
        tx: Option<sqlx::Transaction<'static, Postgres>>,
        done: bool,
    },
}

fn exec_err(err: sqlx::Error) -> DbErr {
    DbErr::Exec(RuntimeErr::SqlxError(Arc::new(err)))
}

fn finished() -> DbErr {
    DbErr::Custom("the session has already ended".to_owned())
}

fn query(stmt: Statement) -> (String, SqlxValues) {
    (
        stmt.sql,
        SqlxValues(stmt.values.unwrap_or(Values(Vec::new()))),
    )
}

impl Session {
    /// Takes a connection from the pool (SQLite; `BEGIN` goes with the first statements), or
    /// nothing yet (PostgreSQL: the transaction begins with the first statement sent, so a
    /// session whose only statements are its commit's can send them as one).
    pub async fn begin(db: &DatabaseConnection) -> Result<Session, DbErr> {
        let backend = db.get_database_backend();
        let inner = match backend {
            DbBackend::Sqlite => Inner::Sqlite {
                conn: Some(
                    db.get_sqlite_connection_pool()
                        .acquire()
                        .await
                        .map_err(exec_err)?,
                ),
                begun: false,
            },
            DbBackend::Postgres => Inner::Postgres {
                pool: db.get_postgres_connection_pool().clone(),
                tx: None,
                done: false,
            },
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
        self.send(statements, false, false).await
    }

    /// Runs `statements` in order, then commits.
    pub async fn commit(self, statements: Vec<Statement>) -> Result<Vec<QueryResult>, DbErr> {
        self.send(statements, true, false).await
    }

    /// Like [`Session::commit`], for statements that do not depend on each other's effects
    /// (no two touch the same rows): PostgreSQL may then run them as one statement, when
    /// nothing was sent before them and at most one returns rows.
    pub async fn commit_independent(
        self,
        statements: Vec<Statement>,
    ) -> Result<Vec<QueryResult>, DbErr> {
        self.send(statements, true, true).await
    }

    /// Rolls back what was sent and gives the connection back.
    pub async fn rollback(mut self) {
        match self.inner.get_mut() {
            Inner::Sqlite { conn, begun } => {
                if let Some(mut c) = conn.take()
                    && *begun
                    && sqlx::raw_sql("ROLLBACK").execute(&mut *c).await.is_err()
                {
                    c.close_on_drop();
                }
            }
            Inner::Postgres { tx, done, .. } => {
                *done = true;
                if let Some(tx) = tx.take() {
                    let _ = tx.rollback().await;
                }
            }
        }
    }

    async fn send(
        &self,
        statements: Vec<Statement>,
        commit: bool,
        independent: bool,
    ) -> Result<Vec<QueryResult>, DbErr> {
        let mut inner = self.inner.lock().await;
        match &mut *inner {
            Inner::Sqlite { conn, begun } => {
                let Some(c) = conn.as_mut() else {
                    return Err(finished());
                };
                if statements.is_empty() && !commit {
                    return Ok(Vec::new());
                }
                if statements.is_empty() && !*begun {
                    // Nothing was written: nothing to commit.
                    *conn = None;
                    return Ok(Vec::new());
                }
                let mut sql = String::new();
                let mut values = Vec::new();
                if !*begun {
                    sql.push_str("BEGIN;\n");
                }
                for statement in statements {
                    sql.push_str(&statement.sql);
                    sql.push_str(";\n");
                    if let Some(v) = statement.values {
                        values.extend(v.0);
                    }
                }
                if commit {
                    sql.push_str("COMMIT");
                }
                *begun = true;
                let result = sqlx::query_with(sqlx::AssertSqlSafe(sql), SqlxValues(Values(values)))
                    .fetch_all(&mut **c)
                    .await;
                match result {
                    Ok(rows) => {
                        if commit {
                            *conn = None;
                        }
                        Ok(rows.into_iter().map(QueryResult::from).collect())
                    }
                    Err(err) => {
                        // The statements before the failing one (and BEGIN) took effect.
                        if let Some(mut c) = conn.take()
                            && sqlx::raw_sql("ROLLBACK").execute(&mut *c).await.is_err()
                        {
                            c.close_on_drop();
                        }
                        Err(exec_err(err))
                    }
                }
            }
            Inner::Postgres { pool, tx, done } => {
                if *done {
                    return Err(finished());
                }
                if commit && independent && tx.is_none() && combinable(&statements) {
                    // Nothing sent yet: the statements can go as one, which PostgreSQL runs
                    // atomically without a transaction of our own (one round trip, no
                    // BEGIN or COMMIT).
                    *done = true;
                    let Some(statement) = combine(statements) else {
                        return Ok(Vec::new());
                    };
                    let (sql, values) = query(statement);
                    return sqlx::query_with(sqlx::AssertSqlSafe(sql), values)
                        .fetch_all(&*pool)
                        .await
                        .map(|rows| rows.into_iter().map(QueryResult::from).collect())
                        .map_err(exec_err);
                }
                let t = match tx {
                    Some(t) => t,
                    None => tx.insert(pool.begin().await.map_err(exec_err)?),
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
                            *done = true;
                            if let Some(t) = tx.take() {
                                let _ = t.rollback().await;
                            }
                            return Err(exec_err(err));
                        }
                    }
                }
                if commit {
                    *done = true;
                    if let Some(t) = tx.take() {
                        t.commit().await.map_err(exec_err)?;
                    }
                }
                Ok(rows)
            }
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
        use std::fmt::Write as _;
        let _ = write!(sql, "s{i} AS (");
        renumber(&mut sql, &statement.sql, values.len());
        sql.push(')');
        if let Some(v) = statement.values {
            values.extend(v.0);
        }
    }
    match returning.first() {
        Some(i) => {
            use std::fmt::Write as _;
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
            use std::fmt::Write as _;
            let _ = write!(out, "${}", n + offset);
            copied = end;
            i = end;
        } else {
            i += 1;
        }
    }
    out.push_str(&sql[copied..]);
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Inner::Sqlite {
            conn: Some(c),
            begun: true,
        } = self.inner.get_mut()
        {
            // Abandoned mid-transaction: the connection must not go back to the pool
            // with the transaction open.
            c.close_on_drop();
        }
    }
}

#[async_trait::async_trait]
impl ConnectionTrait for Session {
    fn get_database_backend(&self) -> DbBackend {
        self.backend
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        let mut inner = self.inner.lock().await;
        let result = match &mut *inner {
            Inner::Sqlite { conn, begun } => {
                let Some(c) = conn.as_mut() else {
                    return Err(finished());
                };
                if !*begun {
                    sqlx::raw_sql("BEGIN")
                        .execute(&mut **c)
                        .await
                        .map_err(exec_err)?;
                    *begun = true;
                }
                let (sql, values) = query(stmt);
                sqlx::query_with(sqlx::AssertSqlSafe(sql), values)
                    .execute(&mut **c)
                    .await
                    .map(ExecResult::from)
            }
            Inner::Postgres { pool, tx, done } => {
                if *done {
                    return Err(finished());
                }
                let t = match tx {
                    Some(t) => t,
                    None => tx.insert(pool.begin().await.map_err(exec_err)?),
                };
                let (sql, values) = query(stmt);
                sqlx::query_with(sqlx::AssertSqlSafe(sql), values)
                    .execute(&mut **t)
                    .await
                    .map(ExecResult::from)
            }
        };
        result.map_err(exec_err)
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

/// Rows for a statement's parameter, `[[field, ...], ...]`, built without intermediate
/// values: JSON text for PostgreSQL, SQLite's binary JSON (JSONB) for SQLite.
///
/// SQLite's rows are JSONB because `jsonb_each`, which read them first, had to turn JSON
/// text into JSONB before it could step through it (a tenth of the instructions of its
/// threads under `sluice bench`); `sluice_rows`, which reads them now, decodes the same
/// format. JSONB also stores strings raw (type TEXTRAW), so they need no escaping on the
/// way in.
#[derive(Debug)]
pub struct JsonRows {
    buf: RowsBuf,
    rows: usize,
    fields: usize,
}

/// What [`JsonRows`] writes: PostgreSQL's JSON text or SQLite's JSONB.
#[derive(Debug)]
enum RowsBuf {
    Text(String),
    Jsonb(Jsonb),
}

/// JSONB under construction: the finished rows' elements and the current row's fields.
/// An element's header gives the size of its payload, so a row is encoded once it ends.
#[derive(Debug, Default)]
struct Jsonb {
    rows: Vec<u8>,
    row: Vec<u8>,
}

/// Appends a JSONB element header: the type in the low four bits, the payload's size in
/// the high four (up to 11) or in the 1, 2, 4 or 8 big-endian bytes that follow (12 to 15).
fn push_jsonb_header(buf: &mut Vec<u8>, kind: u8, size: usize) {
    if size <= 11 {
        // `size` fits in four bits here.
        buf.push(((size as u8) << 4) | kind);
    } else if let Ok(size) = u8::try_from(size) {
        buf.extend_from_slice(&[0xc0 | kind, size]);
    } else if let Ok(size) = u16::try_from(size) {
        buf.push(0xd0 | kind);
        buf.extend_from_slice(&size.to_be_bytes());
    } else if let Ok(size) = u32::try_from(size) {
        buf.push(0xe0 | kind);
        buf.extend_from_slice(&size.to_be_bytes());
    } else {
        buf.push(0xf0 | kind);
        buf.extend_from_slice(&(size as u64).to_be_bytes());
    }
}

impl Jsonb {
    fn end_row(&mut self) {
        push_jsonb_header(&mut self.rows, JSONB_ARRAY, self.row.len());
        self.rows.extend_from_slice(&self.row);
        self.row.clear();
    }

    fn str(&mut self, value: &str) {
        // A NUL becomes U+FFFD, as in JSON text (see `push_json_string`): both backends
        // store the same text.
        let value = match memchr::memchr(0, value.as_bytes()) {
            Some(_) => std::borrow::Cow::Owned(value.replace('\0', "\u{fffd}")),
            None => std::borrow::Cow::Borrowed(value),
        };
        push_jsonb_header(&mut self.row, JSONB_TEXTRAW, value.len());
        self.row.extend_from_slice(value.as_bytes());
    }

    fn int(&mut self, value: i64) {
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(value);
        push_jsonb_header(&mut self.row, JSONB_INT, digits.len());
        self.row.extend_from_slice(digits.as_bytes());
    }

    fn finish(mut self, rows: usize) -> Vec<u8> {
        if rows > 0 {
            self.end_row();
        }
        let mut out = Vec::with_capacity(self.rows.len() + 9);
        push_jsonb_header(&mut out, JSONB_ARRAY, self.rows.len());
        out.extend_from_slice(&self.rows);
        out
    }
}

impl JsonRows {
    /// Rows for a statement of `backend`.
    pub fn new(backend: DbBackend) -> Self {
        let buf = match backend {
            DbBackend::Postgres => RowsBuf::Text(String::from("[")),
            _ => RowsBuf::Jsonb(Jsonb::default()),
        };
        JsonRows {
            buf,
            rows: 0,
            fields: 0,
        }
    }

    /// Starts a row; the fields pushed next belong to it.
    pub fn row(&mut self) -> &mut Self {
        match &mut self.buf {
            RowsBuf::Text(text) => {
                if self.rows > 0 {
                    text.push_str("],");
                }
                text.push('[');
            }
            RowsBuf::Jsonb(jsonb) => {
                if self.rows > 0 {
                    jsonb.end_row();
                }
            }
        }
        self.rows += 1;
        self.fields = 0;
        self
    }

    /// Where the next field goes (after a comma, in JSON text).
    fn next_field(&mut self) -> &mut RowsBuf {
        if let RowsBuf::Text(text) = &mut self.buf
            && self.fields > 0
        {
            text.push(',');
        }
        self.fields += 1;
        &mut self.buf
    }

    /// A string field.
    pub fn str(&mut self, value: &str) -> &mut Self {
        match self.next_field() {
            RowsBuf::Text(text) => push_json_string(text, value),
            RowsBuf::Jsonb(jsonb) => jsonb.str(value),
        }
        self
    }

    /// A string field or `null`.
    pub fn opt_str(&mut self, value: Option<&str>) -> &mut Self {
        match value {
            Some(v) => self.str(v),
            None => self.null(),
        }
    }

    /// An integer field.
    pub fn int(&mut self, value: i64) -> &mut Self {
        match self.next_field() {
            RowsBuf::Text(text) => text.push_str(itoa::Buffer::new().format(value)),
            RowsBuf::Jsonb(jsonb) => jsonb.int(value),
        }
        self
    }

    /// An integer field or `null`.
    pub fn opt_int(&mut self, value: Option<i64>) -> &mut Self {
        match value {
            Some(v) => self.int(v),
            None => self.null(),
        }
    }

    /// A boolean field.
    pub fn bool(&mut self, value: bool) -> &mut Self {
        match self.next_field() {
            RowsBuf::Text(text) => text.push_str(if value { "true" } else { "false" }),
            RowsBuf::Jsonb(jsonb) => jsonb.row.push(if value { JSONB_TRUE } else { JSONB_FALSE }),
        }
        self
    }

    fn null(&mut self) -> &mut Self {
        match self.next_field() {
            RowsBuf::Text(text) => text.push_str("null"),
            RowsBuf::Jsonb(jsonb) => jsonb.row.push(JSONB_NULL),
        }
        self
    }

    /// The statement's parameter: JSON text, or a JSONB blob for SQLite.
    pub fn finish(self) -> Value {
        match self.buf {
            RowsBuf::Text(mut text) => {
                if self.rows > 0 {
                    text.push(']');
                }
                text.push(']');
                Value::String(Some(text))
            }
            RowsBuf::Jsonb(jsonb) => Value::Bytes(Some(jsonb.finish(self.rows))),
        }
    }
}

/// A JSON array of strings.
pub fn json_strings<'a>(values: impl IntoIterator<Item = &'a str>) -> String {
    let mut buf = String::from("[");
    for (i, value) in values.into_iter().enumerate() {
        if i > 0 {
            buf.push(',');
        }
        push_json_string(&mut buf, value);
    }
    buf.push(']');
    buf
}

/// A JSON array of integers.
pub fn json_ints(values: impl IntoIterator<Item = i64>) -> String {
    use std::fmt::Write as _;
    let mut buf = String::from("[");
    for (i, value) in values.into_iter().enumerate() {
        if i > 0 {
            buf.push(',');
        }
        let _ = write!(buf, "{value}");
    }
    buf.push(']');
    buf
}

/// Whether JSON text must escape `byte`: a quote, a backslash or a control character.
fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// Appends `value` as a JSON string: quotes, backslashes and control characters escaped,
/// everything else as is (JSON text is UTF-8). A NUL becomes U+FFFD, the replacement
/// character: PostgreSQL's text (and `\u0000` in its JSON functions) cannot hold it, and a
/// receiver's answer, stored in the delivery log, may contain one; as `\u0000` it failed
/// the whole statement. Both backends store the same text.
fn push_json_string(buf: &mut String, value: &str) {
    buf.reserve(value.len() + 2);
    buf.push('"');
    // Ids, names and URLs need no escape: checked in one pass without an early exit (which
    // the compiler vectorises) and copied whole.
    if !value.bytes().fold(false, |any, b| any | needs_escape(b)) {
        buf.push_str(value);
        buf.push('"');
        return;
    }
    let mut start = 0;
    for (i, byte) in value.bytes().enumerate() {
        if !needs_escape(byte) {
            continue;
        }
        buf.push_str(&value[start..i]);
        match byte {
            b'"' => buf.push_str("\\\""),
            b'\\' => buf.push_str("\\\\"),
            b'\n' => buf.push_str("\\n"),
            b'\r' => buf.push_str("\\r"),
            b'\t' => buf.push_str("\\t"),
            0 => buf.push('\u{fffd}'),
            _ => {
                use std::fmt::Write as _;
                let _ = write!(buf, "\\u{byte:04x}");
            }
        }
        start = i + 1;
    }
    buf.push_str(&value[start..]);
    buf.push('"');
}

/// `?` on SQLite (positional across the statements of a multi-statement query), `$n` on
/// PostgreSQL (each statement is sent alone).
fn param(backend: DbBackend, n: usize) -> String {
    match backend {
        DbBackend::Postgres => format!("${n}"),
        _ => "?".to_owned(),
    }
}

/// The rows of a JSON parameter as a relation `e`. On PostgreSQL its column `r` is one row
/// (an array) whose fields [`field`] takes out; on SQLite, `sluice_rows(?)` (the
/// `sluice-sqlite-rows` crate) reads the JSONB of [`JsonRows`] and gives each row's fields
/// as columns `c0`, `c1`, ... PostgreSQL parses the text once as `jsonb`, so finding a
/// field skips the fields before it instead of parsing them: rows of `json` made every
/// `->> i` lex the row's text again from its start (a 15-field attempt row was lexed about
/// eight times over), and JSON lexing was a fifth of the server's CPU in `sluice bench` on
/// PostgreSQL; with `jsonb` the server's CPU per event fell from 100-106 µs to 67-83 µs
/// (4 interleaved rounds of `--events 100000`).
fn rows_from(backend: DbBackend, n: usize) -> String {
    match backend {
        DbBackend::Postgres => format!("jsonb_array_elements(${n}::jsonb) AS e(r)"),
        _ => "sluice_rows(?) AS e".to_owned(),
    }
}

/// `column` is one of the elements of a JSON array parameter of scalars. On PostgreSQL the
/// elements become an array first (`= ANY (ARRAY(...))`), which the planner probes through
/// the column's index from a few thousand rows up (only a table of a page or two is read
/// whole): as `IN (SELECT ...)` it saw a set function of 100 rows and chose a hash join
/// over a full scan up to about 10,000 rows, and kept such a plan while the table grew. In
/// one `sluice bench --events 100000` on PostgreSQL the control plane's check for attempts
/// stored before read `attempts` whole 67 times (3.4 million rows), a cost that grows with
/// the log.
fn is_element(backend: DbBackend, column: &str, n: usize, pg_type: &str) -> String {
    match backend {
        DbBackend::Postgres => format!(
            "{column} = ANY (ARRAY(SELECT x::{pg_type} \
             FROM json_array_elements_text(${n}::json) AS t(x)))"
        ),
        _ => format!("{column} IN (SELECT value FROM json_each(?))"),
    }
}

/// Field `i` of a row, as SQL of type `pg_type` (SQLite needs no cast: strings come out as
/// text, numbers as integers, `true` and `false` as 1 and 0, `null` as NULL).
///
/// On SQLite this was `json_extract(e.r, '$[i]')` over `jsonb_each`: every field an SQL
/// function call that copied its row out of `jsonb_each` and parsed its path, 5.2% of the
/// planes' CPU with ten subscriptions (perf, `sluice bench --subscriptions 10`); read
/// through `sluice_rows` a row is decoded once and a field is a column, 1.0%. Bound
/// parameters were slower than JSON, even with the statement cached (about 5 µs a row
/// against 4, through sqlx).
fn field(backend: DbBackend, i: usize, pg_type: &str) -> String {
    match backend {
        DbBackend::Postgres => format!("(e.r ->> {i})::{pg_type}"),
        _ => format!("e.c{i}"),
    }
}

/// The data plane's hot statements.
pub mod data {
    use super::*;

    /// A new `dp_messages` row.
    pub struct MessageRow<'a> {
        pub id: &'a str,
        pub workspace_id: &'a str,
        pub event_type: &'a str,
        pub envelope: &'a [u8],
        pub idempotency_key: Option<&'a str>,
        pub traceparent: Option<&'a str>,
        pub tracestate: Option<&'a str>,
        pub create_ms: i64,
        /// Comma-separated.
        pub subscription_ids: &'a str,
    }

    /// Inserts messages. The envelopes travel as one blob (SQLite: cut out with `substr`)
    /// or one `bytea[]` (PostgreSQL), not inside the JSON, so they are neither escaped nor
    /// parsed.
    pub fn insert_messages(backend: DbBackend, rows: &[MessageRow<'_>]) -> Statement {
        let mut json = JsonRows::new(backend);
        let mut offset = 1i64;
        for row in rows {
            json.row()
                .str(row.id)
                .str(row.workspace_id)
                .str(row.event_type)
                .opt_str(row.idempotency_key)
                .opt_str(row.traceparent)
                .opt_str(row.tracestate)
                .int(row.create_ms)
                .str(row.subscription_ids)
                .int(offset)
                .int(i64::try_from(row.envelope.len()).unwrap_or(i64::MAX));
            offset = offset.saturating_add(i64::try_from(row.envelope.len()).unwrap_or(0));
        }
        let f = |i, t| field(backend, i, t);
        let columns = "id, workspace_id, event_type, envelope, idempotency_key, traceparent, \
                       tracestate, create_ms, subscription_ids";
        match backend {
            DbBackend::Postgres => {
                let sql = format!(
                    "INSERT INTO dp_messages ({columns}) \
                     SELECT {}, {}, {}, b.envelope, {}, {}, {}, {}, {} \
                     FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS e(r, n) \
                     JOIN unnest($2::bytea[]) WITH ORDINALITY AS b(envelope, n) USING (n)",
                    f(0, "text"),
                    f(1, "text"),
                    f(2, "text"),
                    f(3, "text"),
                    f(4, "text"),
                    f(5, "text"),
                    f(6, "bigint"),
                    f(7, "text"),
                );
                let envelopes: Vec<Value> = rows
                    .iter()
                    .map(|r| Value::Bytes(Some(r.envelope.to_vec())))
                    .collect();
                Statement::from_sql_and_values(
                    backend,
                    sql,
                    [
                        json.finish(),
                        Value::Array(
                            sea_orm::sea_query::ArrayType::Bytes,
                            Some(Box::new(envelopes)),
                        ),
                    ],
                )
            }
            _ => {
                let mut blob = Vec::with_capacity(rows.iter().map(|r| r.envelope.len()).sum());
                for row in rows {
                    blob.extend_from_slice(row.envelope);
                }
                let sql = format!(
                    "INSERT INTO dp_messages ({columns}) \
                     SELECT {}, {}, {}, substr(?, {}, {}), {}, {}, {}, {}, {} FROM {}",
                    f(0, ""),
                    f(1, ""),
                    f(2, ""),
                    f(8, ""),
                    f(9, ""),
                    f(3, ""),
                    f(4, ""),
                    f(5, ""),
                    f(6, ""),
                    f(7, ""),
                    rows_from(backend, 0),
                );
                // The blob comes first: its `?` precedes sluice_rows' in the SQL.
                Statement::from_sql_and_values(
                    backend,
                    sql,
                    [Value::Bytes(Some(blob)), json.finish()],
                )
            }
        }
    }

    /// Inserts fan-out rows: (message id, due, lease).
    pub fn insert_fanouts(backend: DbBackend, rows: &[(&str, i64, Option<i64>)]) -> Statement {
        let mut json = JsonRows::new(backend);
        for (id, due, lease) in rows {
            json.row().str(id).int(*due).opt_int(*lease);
        }
        let sql = format!(
            "INSERT INTO dp_fanout (message_id, due_ms, lease_until_ms) \
             SELECT {}, {}, {} FROM {}",
            field(backend, 0, "text"),
            field(backend, 1, "bigint"),
            field(backend, 2, "bigint"),
            rows_from(backend, 1),
        );
        Statement::from_sql_and_values(backend, sql, [json.finish()])
    }

    /// Deletes the fan-out rows of these messages.
    pub fn delete_fanouts<'a>(
        backend: DbBackend,
        message_ids: impl IntoIterator<Item = &'a str>,
    ) -> Statement {
        let sql = format!(
            "DELETE FROM dp_fanout WHERE {}",
            is_element(backend, "message_id", 1, "text")
        );
        Statement::from_sql_and_values(
            backend,
            sql,
            [Value::String(Some(json_strings(message_ids)))],
        )
    }

    /// Adds an outbox row; returns its `seq` as a row.
    pub fn insert_outbox(backend: DbBackend, body: Vec<u8>, create_ms: i64) -> Statement {
        let sql = format!(
            "INSERT INTO dp_outbox (body, create_ms) VALUES ({}, {}) RETURNING seq",
            param(backend, 1),
            param(backend, 2)
        );
        Statement::from_sql_and_values(
            backend,
            sql,
            [Value::Bytes(Some(body)), Value::BigInt(Some(create_ms))],
        )
    }

    /// Deletes outbox rows.
    pub fn delete_outbox(backend: DbBackend, seqs: &[i64]) -> Statement {
        let sql = format!(
            "DELETE FROM dp_outbox WHERE {}",
            is_element(backend, "seq", 1, "bigint")
        );
        Statement::from_sql_and_values(
            backend,
            sql,
            [Value::String(Some(json_ints(seqs.iter().copied())))],
        )
    }
}

/// The control plane's delivery-log statements.
pub mod control {
    use super::*;

    /// A `messages` row.
    pub struct MessageRow<'a> {
        pub id: &'a str,
        pub workspace_id: &'a str,
        pub event_type: &'a str,
        pub create_ms: i64,
        pub delivery_count: i64,
    }

    /// An `attempts` row.
    pub struct AttemptRow<'a> {
        pub id: &'a str,
        pub workspace_id: &'a str,
        pub message_id: &'a str,
        pub subscription_id: &'a str,
        pub event_type: &'a str,
        pub attempt_number: i64,
        pub attempt_ms: i64,
        pub success: bool,
        pub status_code: i64,
        pub error_kind: &'a str,
        pub error_message: &'a str,
        pub latency_us: i64,
        pub response_excerpt: &'a str,
        pub trigger: &'a str,
        pub url: &'a str,
    }

    /// A `deliveries` row.
    pub struct DeliveryRow<'a> {
        pub message_id: &'a str,
        pub subscription_id: &'a str,
        pub workspace_id: &'a str,
        pub event_type: &'a str,
        pub status: &'a str,
        pub attempt_count: i64,
        pub last_attempt_ms: Option<i64>,
        pub next_attempt_ms: Option<i64>,
        pub last_status_code: i64,
        pub last_error_kind: &'a str,
        pub create_ms: i64,
    }

    /// An `endpoint_health` row: what a batch of attempts adds.
    pub struct HealthRow<'a> {
        pub subscription_id: &'a str,
        pub workspace_id: &'a str,
        /// Failures after the batch's last success (all of them if it had none).
        pub consecutive_failures: i64,
        /// Set if and only if the batch had a success.
        pub last_success_ms: Option<i64>,
        pub last_failure_ms: Option<i64>,
    }

    fn insert(
        backend: DbBackend,
        table: &str,
        columns: &[(&str, &str)],
        json: Value,
        tail: &str,
    ) -> Statement {
        let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
        let fields: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, (_, pg_type))| field(backend, i, pg_type))
            .collect();
        // `WHERE true` keeps SQLite from reading ON CONFLICT as a join's ON.
        let sql = format!(
            "INSERT INTO {table} ({}) SELECT {} FROM {} WHERE true {tail}",
            names.join(", "),
            fields.join(", "),
            rows_from(backend, 1),
        );
        Statement::from_sql_and_values(backend, sql, [json])
    }

    /// Inserts messages, leaving those already stored.
    pub fn insert_messages(backend: DbBackend, rows: &[MessageRow<'_>]) -> Statement {
        let mut json = JsonRows::new(backend);
        for r in rows {
            json.row()
                .str(r.id)
                .str(r.workspace_id)
                .str(r.event_type)
                .int(r.create_ms)
                .int(r.delivery_count);
        }
        insert(
            backend,
            "messages",
            &[
                ("id", "text"),
                ("workspace_id", "text"),
                ("event_type", "text"),
                ("create_ms", "bigint"),
                ("delivery_count", "integer"),
            ],
            json.finish(),
            "ON CONFLICT (workspace_id, id) DO NOTHING",
        )
    }

    /// The ids among `ids` of attempts already stored (a batch sent again after a lost
    /// ack), as rows with column `id`. Asking first returns only the repeats, where
    /// `INSERT ... RETURNING` would return every new row, which on SQLite is a hand-off
    /// between threads per row.
    pub fn existing_attempts<'a>(
        backend: DbBackend,
        ids: impl IntoIterator<Item = &'a str>,
    ) -> Statement {
        let sql = format!(
            "SELECT id FROM attempts WHERE {}",
            is_element(backend, "id", 1, "text")
        );
        Statement::from_sql_and_values(backend, sql, [Value::String(Some(json_strings(ids)))])
    }

    /// Inserts attempts, leaving those already stored.
    pub fn insert_attempts(backend: DbBackend, rows: &[AttemptRow<'_>]) -> Statement {
        let mut json = JsonRows::new(backend);
        for r in rows {
            json.row()
                .str(r.id)
                .str(r.workspace_id)
                .str(r.message_id)
                .str(r.subscription_id)
                .str(r.event_type)
                .int(r.attempt_number)
                .int(r.attempt_ms)
                .bool(r.success)
                .int(r.status_code)
                .str(r.error_kind)
                .str(r.error_message)
                .int(r.latency_us)
                .str(r.response_excerpt)
                .str(r.trigger)
                .str(r.url);
        }
        insert(
            backend,
            "attempts",
            &[
                ("id", "text"),
                ("workspace_id", "text"),
                ("message_id", "text"),
                ("subscription_id", "text"),
                ("event_type", "text"),
                ("attempt_number", "integer"),
                ("attempt_ms", "bigint"),
                ("success", "boolean"),
                ("status_code", "integer"),
                ("error_kind", "text"),
                ("error_message", "text"),
                ("latency_us", "bigint"),
                ("response_excerpt", "text"),
                ("trigger", "text"),
                ("url", "text"),
            ],
            json.finish(),
            "ON CONFLICT (id) DO NOTHING",
        )
    }

    /// Like [`insert_attempts`], returning the id of each attempt it stored (rows with
    /// column `id`), none of those already there. For PostgreSQL, where control-plane
    /// replicas store side by side: an insert waits for another transaction's uncommitted
    /// row with the same id and skips it once that commits, so of two replicas storing the
    /// same batch at once (one of them a resend), exactly one gets each attempt back, where
    /// asking first ([`existing_attempts`]) cannot see the other's uncommitted rows.
    pub fn insert_attempts_returning_id(backend: DbBackend, rows: &[AttemptRow<'_>]) -> Statement {
        let mut statement = insert_attempts(backend, rows);
        statement.sql.push_str(" RETURNING id");
        statement
    }

    /// Inserts deliveries or updates them, but a stored row only takes a state at least as
    /// late as its own: outcomes of different replicas may arrive out of order, and a row
    /// without an attempt never overwrites one with.
    pub fn upsert_deliveries(backend: DbBackend, rows: &[DeliveryRow<'_>]) -> Statement {
        let mut json = JsonRows::new(backend);
        for r in rows {
            json.row()
                .str(r.message_id)
                .str(r.subscription_id)
                .str(r.workspace_id)
                .str(r.event_type)
                .str(r.status)
                .int(r.attempt_count)
                .opt_int(r.last_attempt_ms)
                .opt_int(r.next_attempt_ms)
                .int(r.last_status_code)
                .str(r.last_error_kind)
                .int(r.create_ms);
        }
        insert(
            backend,
            "deliveries",
            &[
                ("message_id", "text"),
                ("subscription_id", "text"),
                ("workspace_id", "text"),
                ("event_type", "text"),
                ("status", "text"),
                ("attempt_count", "integer"),
                ("last_attempt_ms", "bigint"),
                ("next_attempt_ms", "bigint"),
                ("last_status_code", "integer"),
                ("last_error_kind", "text"),
                ("create_ms", "bigint"),
            ],
            json.finish(),
            "ON CONFLICT (workspace_id, message_id, subscription_id) DO UPDATE SET \
               status = excluded.status, attempt_count = excluded.attempt_count, \
               last_attempt_ms = excluded.last_attempt_ms, \
               next_attempt_ms = excluded.next_attempt_ms, \
               last_status_code = excluded.last_status_code, \
               last_error_kind = excluded.last_error_kind \
             WHERE deliveries.last_attempt_ms IS NULL \
               OR deliveries.last_attempt_ms <= excluded.last_attempt_ms",
        )
    }

    /// Adds a batch's attempts to each endpoint's health: a batch with a success restarts
    /// the failure count, one without adds its failures to it.
    pub fn upsert_health(backend: DbBackend, rows: &[HealthRow<'_>]) -> Statement {
        let mut json = JsonRows::new(backend);
        for r in rows {
            json.row()
                .str(r.subscription_id)
                .str(r.workspace_id)
                .int(r.consecutive_failures)
                .opt_int(r.last_success_ms)
                .opt_int(r.last_failure_ms);
        }
        insert(
            backend,
            "endpoint_health",
            &[
                ("subscription_id", "text"),
                ("workspace_id", "text"),
                ("consecutive_failures", "bigint"),
                ("last_success_ms", "bigint"),
                ("last_failure_ms", "bigint"),
            ],
            json.finish(),
            "ON CONFLICT (subscription_id) DO UPDATE SET \
               consecutive_failures = CASE WHEN excluded.last_success_ms IS NULL \
                 THEN endpoint_health.consecutive_failures + excluded.consecutive_failures \
                 ELSE excluded.consecutive_failures END, \
               last_success_ms = COALESCE(excluded.last_success_ms, endpoint_health.last_success_ms), \
               last_failure_ms = COALESCE(excluded.last_failure_ms, endpoint_health.last_failure_ms)",
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

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

    #[test]
    fn json_rows_escape_what_json_needs() {
        let mut rows = JsonRows::new(DbBackend::Postgres);
        rows.row()
            .str("a\"b\\c\nd\u{1}é")
            .int(-5)
            .opt_int(None)
            .opt_str(Some(""))
            .bool(true);
        rows.row().str("x");
        let Value::String(Some(json)) = rows.finish() else {
            panic!("PostgreSQL's rows are JSON text");
        };
        assert_eq!(json, r#"[["a\"b\\c\nd\u0001é",-5,null,"",true],["x"]]"#);
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(parsed[0][0], "a\"b\\c\nd\u{1}é");
        assert_eq!(
            JsonRows::new(DbBackend::Postgres).finish(),
            Value::String(Some("[]".to_owned()))
        );
        assert_eq!(json_strings(["a", "b\""]), r#"["a","b\""]"#);
        // One character needing an escape, at either end, is enough to escape it.
        assert_eq!(
            json_strings(["\"", "x\t", "\\y", "https://h.example/p?q=1&r=é", "\u{1f}"]),
            r#"["\"","x\t","\\y","https://h.example/p?q=1&r=é","\u001f"]"#
        );
        assert_eq!(json_ints([1, -2]), "[1,-2]");
    }

    #[test]
    fn sqlite_rows_are_jsonb_with_raw_strings() {
        let mut rows = JsonRows::new(DbBackend::Sqlite);
        rows.row().str("a\"").int(5).opt_int(None).bool(true);
        rows.row().bool(false).opt_str(Some("x\0"));
        // [["a\"", 5, null, true], [false, "x\u{fffd}"]]: a header byte holds the type
        // (low four bits) and a size up to 11 (high four).
        let first = [0x2a, b'a', b'"', 0x13, b'5', 0x00, 0x01];
        let second = [0x02, 0x4a, b'x', 0xef, 0xbf, 0xbd];
        let mut expected = vec![0xcb, 2 + 7 + 6, 0x7b];
        expected.extend_from_slice(&first);
        expected.push(0x6b);
        expected.extend_from_slice(&second);
        assert_eq!(rows.finish(), Value::Bytes(Some(expected)));
        assert_eq!(
            JsonRows::new(DbBackend::Sqlite).finish(),
            Value::Bytes(Some(vec![0x0b]))
        );
    }

    #[test]
    fn jsonb_headers_take_the_shortest_size_form() {
        let header = |size| {
            let mut buf = Vec::new();
            push_jsonb_header(&mut buf, JSONB_TEXTRAW, size);
            buf
        };
        assert_eq!(header(0), [0x0a]);
        assert_eq!(header(11), [0xba]);
        assert_eq!(header(12), [0xca, 12]);
        assert_eq!(header(255), [0xca, 255]);
        assert_eq!(header(256), [0xda, 1, 0]);
        assert_eq!(header(65_536), [0xea, 0, 1, 0, 0]);
        assert_eq!(header(1 << 32), [0xfa, 0, 0, 0, 1, 0, 0, 0, 0]);
    }
}
