//! The control plane's retention purge: a background task that, every
//! `RetentionDefaults::every`, deletes the delivery log (`attempts`, `deliveries`,
//! `messages`) of messages older than their workspace's window, and compacts
//! `config_changes` older than the default window (a watcher that resumes from before the
//! oldest revision kept gets a fresh snapshot: `sync.rs`). Off the hot path: batches of
//! [`BATCH`] rows, each its own short statement, with a pause between, so the outcome
//! intake is never held up for long. Every replica may run it (the statements skip rows
//! another replica is deleting). On SQLite the freed pages go back to the file system.

use std::collections::HashMap;
use std::time::Duration;

use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter};
use sluice_core::ids::{IdKind, lowest_id_at};
use sluice_core::retention::{RetentionDefaults, cutoff_ms};
use sluice_store::control::workspace;
use sluice_store::now_ms;
use sluice_store::retention::{self as purge, LogTable};
use tokio_util::sync::CancellationToken;

use crate::metrics;

/// Rows per statement.
pub const BATCH: u64 = 500;
/// The pause between two statements of a pass, so writers of the hot path get their turn.
const PAUSE: Duration = Duration::from_millis(10);
/// Free pages given back to the file system after each statement (SQLite): 16 MiB of 16 KiB
/// pages, more than a batch frees.
const VACUUM_PAGES: u32 = 1024;

/// What one pass deleted, by table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Purged {
    pub attempts: u64,
    pub deliveries: u64,
    pub messages: u64,
    pub config_changes: u64,
}

impl Purged {
    fn total(&self) -> u64 {
        self.attempts + self.deliveries + self.messages + self.config_changes
    }
}

/// Runs passes until `stop` is cancelled.
pub(crate) async fn run(
    db: DatabaseConnection,
    defaults: RetentionDefaults,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(defaults.every) => {}
            () = stop.cancelled() => return,
        }
        let started = std::time::Instant::now();
        let pass = tokio::select! {
            pass = purge_pass(&db, &defaults) => pass,
            () = stop.cancelled() => return,
        };
        match pass {
            Ok(purged) if purged.total() > 0 => tracing::info!(
                attempts = purged.attempts,
                deliveries = purged.deliveries,
                messages = purged.messages,
                config_changes = purged.config_changes,
                millis = started.elapsed().as_millis() as u64,
                "retention purge pass"
            ),
            Ok(_) => tracing::debug!("retention purge pass: nothing to purge"),
            Err(err) => {
                tracing::warn!(error = %err, "retention purge pass failed; the next pass tries again");
            }
        }
    }
}

/// One pass over every workspace's log and over `config_changes`.
pub async fn purge_pass(
    db: &DatabaseConnection,
    defaults: &RetentionDefaults,
) -> Result<Purged, DbErr> {
    let own: HashMap<String, i64> = workspace::Entity::find()
        .filter(workspace::Column::RetentionMs.is_not_null())
        .all(db)
        .await?
        .into_iter()
        .filter_map(|w| w.retention_ms.map(|ms| (w.id, ms)))
        .collect();
    let now = now_ms();
    let mut purged = Purged::default();
    for table in LogTable::ALL {
        for workspace_id in purge::log_workspaces(db, table).await? {
            let window = own
                .get(&workspace_id)
                .map(|ms| Duration::from_millis(u64::try_from(*ms).unwrap_or(0)))
                .unwrap_or(defaults.retention);
            let before = lowest_id_at(
                IdKind::Message,
                u64::try_from(cutoff_ms(now, window)).unwrap_or(0),
            );
            loop {
                let rows = purge::purge_log(db, table, &workspace_id, &before, BATCH).await?;
                metrics::purged(table.name(), rows);
                match table {
                    LogTable::Attempts => purged.attempts += rows,
                    LogTable::Deliveries => purged.deliveries += rows,
                    LogTable::Messages => purged.messages += rows,
                }
                if rows > 0 {
                    purge::give_space_back(db, VACUUM_PAGES).await?;
                }
                if rows < BATCH {
                    break;
                }
                tokio::time::sleep(PAUSE).await;
            }
        }
    }
    let before_ms = cutoff_ms(now, defaults.retention);
    loop {
        let rows = purge::compact_config_changes(db, before_ms, BATCH).await?;
        metrics::purged("config_changes", rows);
        purged.config_changes += rows;
        if rows < BATCH {
            break;
        }
        tokio::time::sleep(PAUSE).await;
    }
    Ok(purged)
}

/// The windows of one workspace: its own, else the defaults.
pub(crate) fn windows(
    defaults: &RetentionDefaults,
    row: &workspace::Model,
) -> sluice_core::retention::Windows {
    let as_duration =
        |ms: Option<i64>| ms.map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0)));
    defaults.windows(
        as_duration(row.retention_ms),
        as_duration(row.idempotency_retention_ms),
    )
}
