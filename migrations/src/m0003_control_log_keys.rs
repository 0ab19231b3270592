//! The delivery log's `messages` and `deliveries` are keyed with their workspace first:
//! `(workspace_id, id)` and `(workspace_id, message_id, subscription_id)`. Every read of
//! them names the workspace (the API is per workspace), so the indexes that served those
//! reads beside the old keys, `(workspace_id, id)` and `(workspace_id, message_id)`, are the
//! keys now and go: one b-tree insert fewer per message and per delivery written, on both
//! backends. Ids are unique on their own, so no two stored rows clash under the wider key.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, Statement};

use crate::m0001_control_initial::index;
use crate::m0002_control_log_tables::{replace_table, sqlite};

pub struct Migration;

/// One table's key change.
struct Rekey {
    table: &'static str,
    old_key: &'static [&'static str],
    new_key: &'static [&'static str],
    /// The index that the new key makes redundant.
    index: &'static [&'static str],
}

const REKEYS: [Rekey; 2] = [
    Rekey {
        table: "messages",
        old_key: &["id"],
        new_key: &["workspace_id", "id"],
        index: &["workspace_id", "id"],
    },
    Rekey {
        table: "deliveries",
        old_key: &["message_id", "subscription_id"],
        new_key: &["workspace_id", "message_id", "subscription_id"],
        index: &["workspace_id", "message_id"],
    },
];

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0003_control_log_keys"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for r in &REKEYS {
            m.drop_index(
                Index::drop()
                    .name(format!("idx_{}_{}", r.table, r.index.join("_")))
                    .to_owned(),
            )
            .await?;
            rekey(m, r.table, r.new_key).await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for r in &REKEYS {
            rekey(m, r.table, r.old_key).await?;
            index(m, r.table, r.index).await?;
        }
        Ok(())
    }
}

/// Gives `table` the primary key `key`, keeping its columns, rows and other indexes (and,
/// on SQLite, keeping it a `WITHOUT ROWID` table, which m0002 made it).
async fn rekey(m: &SchemaManager<'_>, table: &str, key: &[&str]) -> Result<(), DbErr> {
    let db = m.get_connection();
    let key = key
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ");
    if m.get_database_backend() == DbBackend::Sqlite {
        // SQLite cannot change a key in place: the table is made again from its columns.
        let mut columns = Vec::new();
        for c in db
            .query_all_raw(sqlite(format!("PRAGMA table_info(\"{table}\")")))
            .await?
        {
            let name: String = c.try_get("", "name")?;
            let kind: String = c.try_get("", "type")?;
            let mut column = format!("\"{name}\" {kind}");
            if c.try_get::<i64>("", "notnull")? != 0 {
                column.push_str(" NOT NULL");
            }
            if let Some(default) = c.try_get::<Option<String>>("", "dflt_value")? {
                column.push_str(&format!(" DEFAULT {default}"));
            }
            columns.push(column);
        }
        if columns.is_empty() {
            return Err(DbErr::Migration(format!("table {table} not found")));
        }
        let columns = columns.join(", ");
        return replace_table(m, table, |temporary| {
            format!("CREATE TABLE {temporary} ({columns}, PRIMARY KEY ({key})) WITHOUT ROWID")
        })
        .await;
    }
    let constraint = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            format!(
                "SELECT conname FROM pg_constraint \
                 WHERE conrelid = '\"{table}\"'::regclass AND contype = 'p'"
            ),
        ))
        .await?
        .ok_or_else(|| DbErr::Migration(format!("table {table} has no primary key")))?
        .try_get::<String>("", "conname")?;
    db.execute_unprepared(&format!(
        "ALTER TABLE \"{table}\" DROP CONSTRAINT \"{constraint}\", ADD PRIMARY KEY ({key})"
    ))
    .await?;
    Ok(())
}
