//! The purge's statements, for both planes: each deletes (or clears) at most `limit` rows
//! chosen by primary-key or index range, so a pass is many short transactions and never
//! holds a lock for long. On PostgreSQL the rows are chosen `FOR UPDATE SKIP LOCKED`:
//! replicas purging at the same time take different rows instead of waiting on each other,
//! so every replica may run the purge. Times are bounds on ids (ids sort by creation time,
//! `sluice_core::ids::lowest_id_at`), which the keys already order.

use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement, Value};

/// Which workspaces a data-plane statement covers.
#[derive(Clone, Debug)]
pub enum Scope<'a> {
    /// This workspace only.
    Only(&'a str),
    /// Every workspace but these (those with windows of their own).
    AllBut(&'a [String]),
}

/// The control plane's delivery-log tables the purge empties, each by message id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogTable {
    Attempts,
    Deliveries,
    Messages,
}

impl LogTable {
    /// Every log table, in the order a pass purges them (children before parents, so a
    /// pass cut short never leaves an attempt without its message).
    pub const ALL: [LogTable; 3] = [LogTable::Attempts, LogTable::Deliveries, LogTable::Messages];

    /// The table's name.
    pub fn name(self) -> &'static str {
        match self {
            LogTable::Attempts => "attempts",
            LogTable::Deliveries => "deliveries",
            LogTable::Messages => "messages",
        }
    }

    /// The key the purge deletes by, and the message-id column it ranges over.
    fn key_and_message(self) -> (&'static str, &'static str) {
        match self {
            LogTable::Attempts => ("id", "message_id"),
            LogTable::Deliveries => ("message_id, subscription_id", "message_id"),
            LogTable::Messages => ("id", "id"),
        }
    }
}

struct Sql {
    backend: DbBackend,
    text: String,
    values: Vec<Value>,
}

impl Sql {
    fn new(backend: DbBackend) -> Sql {
        Sql {
            backend,
            text: String::new(),
            values: Vec::new(),
        }
    }

    /// Appends a placeholder bound to `value`.
    fn bind(&mut self, value: impl Into<Value>) -> String {
        self.values.push(value.into());
        match self.backend {
            DbBackend::Postgres => format!("${}", self.values.len()),
            _ => "?".to_owned(),
        }
    }

    fn statement(self) -> Statement {
        Statement::from_sql_and_values(self.backend, self.text, self.values)
    }

    fn skip_locked(&self) -> &'static str {
        crate::skip_locked(self.backend)
    }

    fn scope(&mut self, column: &str, scope: &Scope<'_>) -> String {
        match scope {
            Scope::Only(workspace) => format!("{column} = {}", self.bind(*workspace)),
            Scope::AllBut([]) => "1 = 1".to_owned(),
            Scope::AllBut(others) => {
                let list: Vec<String> = others.iter().map(|w| self.bind(w.as_str())).collect();
                format!("{column} NOT IN ({})", list.join(", "))
            }
        }
    }
}

async fn affected<C: ConnectionTrait>(db: &C, sql: Sql) -> Result<u64, DbErr> {
    Ok(db.execute_raw(sql.statement()).await?.rows_affected())
}

/// The workspaces that have rows in a control-plane log table, read by skipping along the
/// key (one index probe per workspace, not a scan of the table), so workspaces deleted
/// since are purged too.
pub async fn log_workspaces<C: ConnectionTrait>(
    db: &C,
    table: LogTable,
) -> Result<Vec<String>, DbErr> {
    let t = table.name();
    let sql = format!(
        "WITH RECURSIVE w(id) AS ( \
           SELECT MIN(workspace_id) FROM {t} \
           UNION ALL \
           SELECT (SELECT MIN(workspace_id) FROM {t} WHERE workspace_id > w.id) FROM w \
           WHERE w.id IS NOT NULL) \
         SELECT id FROM w WHERE id IS NOT NULL"
    );
    let rows = db
        .query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| r.try_get_by_index::<String>(0).ok())
        .collect())
}

/// Deletes up to `limit` rows of `table` of `workspace_id` whose message id is below
/// `before_message_id`; returns how many.
pub async fn purge_log<C: ConnectionTrait>(
    db: &C,
    table: LogTable,
    workspace_id: &str,
    before_message_id: &str,
    limit: u64,
) -> Result<u64, DbErr> {
    let (key, message) = table.key_and_message();
    let t = table.name();
    let mut sql = Sql::new(db.get_database_backend());
    let (w1, w2, cut, lim) = (
        sql.bind(workspace_id),
        sql.bind(workspace_id),
        sql.bind(before_message_id),
        sql.bind(i64::try_from(limit).unwrap_or(i64::MAX)),
    );
    let lock = sql.skip_locked();
    sql.text = format!(
        "DELETE FROM {t} WHERE workspace_id = {w1} AND ({key}) IN ( \
           SELECT {key} FROM {t} WHERE workspace_id = {w2} AND {message} < {cut} \
           LIMIT {lim}{lock})"
    );
    affected(db, sql).await
}

/// Deletes up to `limit` of the oldest `config_changes` rows made before `before_ms`,
/// always keeping the latest revision (it is the number watchers resume from). Returns
/// how many.
pub async fn compact_config_changes<C: ConnectionTrait>(
    db: &C,
    before_ms: i64,
    limit: u64,
) -> Result<u64, DbErr> {
    let mut sql = Sql::new(db.get_database_backend());
    let (before, lim) = (
        sql.bind(before_ms),
        sql.bind(i64::try_from(limit).unwrap_or(i64::MAX)),
    );
    let lock = sql.skip_locked();
    sql.text = format!(
        "DELETE FROM config_changes WHERE revision IN ( \
           SELECT revision FROM config_changes WHERE create_ms < {before} \
             AND revision < (SELECT MAX(revision) FROM config_changes) \
           ORDER BY revision LIMIT {lim}{lock})"
    );
    affected(db, sql).await
}

/// The lowest revision still in `config_changes` (0 when it is empty): a watcher that
/// resumes from below the one before it missed compacted changes.
pub async fn oldest_config_revision<C: ConnectionTrait>(db: &C) -> Result<i64, DbErr> {
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT MIN(revision) FROM config_changes".to_owned(),
        ))
        .await?;
    Ok(row
        .and_then(|r| r.try_get_by_index::<Option<i64>>(0).ok().flatten())
        .unwrap_or(0))
}

/// Deletes up to `limit` of the data plane's messages in `scope` with an id below
/// `before_message_id` whose deliveries are all final (no fan-out row, no delivery row
/// still pending), with their delivery rows; returns the messages deleted. Call inside a
/// transaction, so a message and its deliveries go together.
pub async fn purge_data_messages<C: ConnectionTrait>(
    db: &C,
    scope: &Scope<'_>,
    before_message_id: &str,
    limit: u64,
) -> Result<Vec<String>, DbErr> {
    let backend = db.get_database_backend();
    let mut sql = Sql::new(backend);
    let cut = sql.bind(before_message_id);
    let scoped = sql.scope("m.workspace_id", scope);
    let pending = sql.bind("pending");
    let lim = sql.bind(i64::try_from(limit).unwrap_or(i64::MAX));
    let lock = if backend == DbBackend::Postgres {
        " FOR UPDATE OF m SKIP LOCKED"
    } else {
        ""
    };
    sql.text = format!(
        "DELETE FROM dp_messages WHERE id IN ( \
           SELECT m.id FROM dp_messages m \
           WHERE m.id < {cut} AND {scoped} \
             AND NOT EXISTS (SELECT 1 FROM dp_fanout f WHERE f.message_id = m.id) \
             AND NOT EXISTS (SELECT 1 FROM dp_deliveries d \
                             WHERE d.message_id = m.id AND d.status = {pending}) \
           ORDER BY m.id LIMIT {lim}{lock}) \
         RETURNING id"
    );
    let ids: Vec<String> = db
        .query_all_raw(sql.statement())
        .await?
        .iter()
        .filter_map(|r| r.try_get::<String>("", "id").ok())
        .collect();
    if ids.is_empty() {
        return Ok(ids);
    }
    let mut sql = Sql::new(backend);
    let list: Vec<String> = ids.iter().map(|id| sql.bind(id.as_str())).collect();
    sql.text = format!(
        "DELETE FROM dp_deliveries WHERE message_id IN ({})",
        list.join(", ")
    );
    affected(db, sql).await?;
    Ok(ids)
}

/// Clears the idempotency key of up to `limit` messages in `scope` with an id below
/// `before_message_id` (a repeat publish with that key is then a new message); returns
/// how many.
pub async fn expire_idempotency_keys<C: ConnectionTrait>(
    db: &C,
    scope: &Scope<'_>,
    before_message_id: &str,
    limit: u64,
) -> Result<u64, DbErr> {
    let mut sql = Sql::new(db.get_database_backend());
    let cut = sql.bind(before_message_id);
    let scoped = sql.scope("workspace_id", scope);
    let lim = sql.bind(i64::try_from(limit).unwrap_or(i64::MAX));
    let lock = sql.skip_locked();
    // `idempotency_key IS NOT NULL` in the subquery lets both backends read the partial
    // index of keyed message ids (m0004).
    sql.text = format!(
        "UPDATE dp_messages SET idempotency_key = NULL WHERE id IN ( \
           SELECT id FROM dp_messages \
           WHERE idempotency_key IS NOT NULL AND id < {cut} AND {scoped} \
           ORDER BY id LIMIT {lim}{lock})"
    );
    affected(db, sql).await
}

/// On SQLite, gives up to `pages` free pages back to the file system (the file shrinks at
/// the next checkpoint); nothing on PostgreSQL, whose autovacuum reuses the space.
pub async fn give_space_back<C: ConnectionTrait>(db: &C, pages: u32) -> Result<(), DbErr> {
    if db.get_database_backend() == DbBackend::Sqlite {
        db.execute_unprepared(&format!("PRAGMA incremental_vacuum({pages})"))
            .await?;
    }
    Ok(())
}
