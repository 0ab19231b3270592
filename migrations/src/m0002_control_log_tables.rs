//! The delivery log's tables (`messages`, `deliveries`, `attempts`) keyed by their primary
//! key on SQLite (`WITHOUT ROWID`): every row written is one b-tree insert fewer, since the
//! key no longer needs an index of its own beside a rowid table. These tables take several
//! rows per delivered webhook, so that is a good part of the control plane's write cost.
//! PostgreSQL tables are heaps with a primary-key index either way: nothing changes there.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, Statement};

pub struct Migration;

/// The tables rebuilt.
const TABLES: [&str; 3] = ["messages", "deliveries", "attempts"];

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0002_control_log_tables"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        if m.get_database_backend() != DbBackend::Sqlite {
            return Ok(());
        }
        for table in TABLES {
            rebuild(m, table, true).await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        if m.get_database_backend() != DbBackend::Sqlite {
            return Ok(());
        }
        for table in TABLES {
            rebuild(m, table, false).await?;
        }
        Ok(())
    }
}

/// Recreates a SQLite table with the same columns, rows and indexes, as a rowid table or
/// not. SQLite cannot change that in place; the definitions are read back from
/// `sqlite_master`, so they stay exactly what the earlier migrations made.
pub(crate) async fn rebuild(
    m: &SchemaManager<'_>,
    table: &str,
    without_rowid: bool,
) -> Result<(), DbErr> {
    let create = m
        .get_connection()
        .query_one_raw(sqlite(format!(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = '{table}'"
        )))
        .await?
        .ok_or_else(|| DbErr::Migration(format!("table {table} not found")))?
        .try_get::<String>("", "sql")?;
    let body = create
        .trim_end()
        .trim_end_matches("WITHOUT ROWID")
        .trim_end();
    let quoted = format!("\"{table}\"");
    let Some(at) = body.find(&quoted) else {
        return Err(DbErr::Migration(format!(
            "unexpected definition of {table}: {create}"
        )));
    };
    let (head, tail) = (&body[..at], &body[at + quoted.len()..]);
    replace_table(m, table, |temporary| {
        let mut new = format!("{head}{temporary}{tail}");
        if without_rowid {
            new.push_str(" WITHOUT ROWID");
        }
        new
    })
    .await
}

/// Swaps a SQLite table for a new definition of it with the same columns in the same
/// order: `create` gets the temporary table's quoted name and returns its `CREATE TABLE`;
/// the rows are copied over, the old table dropped, the new one renamed and the old one's
/// indexes made again.
pub(crate) async fn replace_table(
    m: &SchemaManager<'_>,
    table: &str,
    create: impl FnOnce(&str) -> String,
) -> Result<(), DbErr> {
    let db = m.get_connection();
    let indexes: Vec<String> = db
        .query_all_raw(sqlite(format!(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = '{table}' \
             AND sql IS NOT NULL"
        )))
        .await?
        .into_iter()
        .map(|row| row.try_get::<String>("", "sql"))
        .collect::<Result<_, _>>()?;
    let quoted = format!("\"{table}\"");
    let temporary = format!("\"{table}_rebuild\"");
    db.execute_unprepared(&create(&temporary)).await?;
    db.execute_unprepared(&format!("INSERT INTO {temporary} SELECT * FROM {quoted}"))
        .await?;
    db.execute_unprepared(&format!("DROP TABLE {quoted}"))
        .await?;
    db.execute_unprepared(&format!("ALTER TABLE {temporary} RENAME TO {quoted}"))
        .await?;
    for index in indexes {
        db.execute_unprepared(&index).await?;
    }
    Ok(())
}

/// A statement of SQL text for SQLite.
pub(crate) fn sqlite(sql: String) -> Statement {
    Statement::from_string(DbBackend::Sqlite, sql)
}
