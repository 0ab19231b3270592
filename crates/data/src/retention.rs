//! The data plane's retention purge: a background task that, every
//! `RetentionDefaults::every`, deletes the messages (payloads included) older than their
//! workspace's window whose deliveries are all final, with their delivery rows, and clears
//! the idempotency keys older than their own window. The windows come from the
//! configuration copy (a workspace's own, from the watch) or the data plane's defaults.
//! Off the hot path: batches of [`BATCH`] rows, each a short transaction, with a pause
//! between, so the writer's commits get their turn. Every replica may run it on PostgreSQL
//! (the statements skip rows another replica is deleting). On SQLite the freed pages go
//! back to the file system (`PRAGMA incremental_vacuum`).

use std::sync::Arc;
use std::time::Duration;

use sea_orm::{DatabaseConnection, DbErr, TransactionTrait};
use sluice_core::ids::{IdKind, lowest_id_at};
use sluice_core::retention::{RetentionDefaults, Windows, cutoff_ms};
use sluice_store::now_ms;
use sluice_store::retention::{self as purge, Scope};

use crate::shutdown::Shutdown;
use crate::state::config_copy::{ConfigCopy, ConfigSnapshot, duration_proto_ms};

/// Rows per statement.
const BATCH: u64 = 500;
/// The pause between two statements of a pass.
const PAUSE: Duration = Duration::from_millis(10);
/// Free pages given back after each statement (SQLite): more than a batch frees.
const VACUUM_PAGES: u32 = 1024;

/// The purge task and what it reads.
pub(crate) struct Retention {
    pub(crate) db: DatabaseConnection,
    pub(crate) copy: Arc<ConfigCopy>,
    pub(crate) defaults: RetentionDefaults,
    pub(crate) shutdown: Shutdown,
}

/// What one pass purged.
#[derive(Debug, Default)]
struct Purged {
    messages: u64,
    idempotency_keys: u64,
}

impl Retention {
    /// Runs passes until shutdown.
    pub(crate) async fn run(self) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.defaults.every) => {}
                () = self.shutdown.requested() => return,
            }
            let started = std::time::Instant::now();
            let pass = tokio::select! {
                pass = self.pass() => pass,
                () = self.shutdown.requested() => return,
            };
            match pass {
                Ok(p) if p.messages + p.idempotency_keys > 0 => tracing::info!(
                    messages = p.messages,
                    idempotency_keys = p.idempotency_keys,
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

    /// One pass: the workspaces on the defaults together, then each with its own windows.
    async fn pass(&self) -> Result<Purged, DbErr> {
        let snapshot = self.copy.current();
        let own: Vec<(String, Windows)> = snapshot
            .workspaces()
            .map(|w| (w.id.clone(), windows(&self.defaults, &snapshot, &w.id)))
            .collect();
        let own_ids: Vec<String> = own.iter().map(|(id, _)| id.clone()).collect();
        let mut purged = Purged::default();
        let defaults = self.defaults.windows(None, None);
        self.purge(&Scope::AllBut(&own_ids), defaults, &mut purged)
            .await?;
        for (id, windows) in &own {
            self.purge(&Scope::Only(id), *windows, &mut purged).await?;
        }
        Ok(purged)
    }

    async fn purge(
        &self,
        scope: &Scope<'_>,
        windows: Windows,
        purged: &mut Purged,
    ) -> Result<(), DbErr> {
        let now = now_ms();
        let before = |window| {
            lowest_id_at(
                IdKind::Message,
                u64::try_from(cutoff_ms(now, window)).unwrap_or(0),
            )
        };
        let messages_before = before(windows.retention);
        loop {
            let tx = self.db.begin().await?;
            let ids = purge::purge_data_messages(&tx, scope, &messages_before, BATCH).await?;
            tx.commit().await?;
            let rows = ids.len() as u64;
            crate::metrics::purged("dp_messages", rows);
            purged.messages += rows;
            if rows > 0 {
                purge::give_space_back(&self.db, VACUUM_PAGES).await?;
            }
            if rows < BATCH {
                break;
            }
            tokio::time::sleep(PAUSE).await;
        }
        let keys_before = before(windows.idempotency);
        loop {
            let rows = purge::expire_idempotency_keys(&self.db, scope, &keys_before, BATCH).await?;
            crate::metrics::purged("idempotency_keys", rows);
            purged.idempotency_keys += rows;
            if rows < BATCH {
                break;
            }
            tokio::time::sleep(PAUSE).await;
        }
        Ok(())
    }
}

/// The windows in effect for `workspace_id`: its own from the configuration copy, else
/// the defaults.
pub(crate) fn windows(
    defaults: &RetentionDefaults,
    snapshot: &ConfigSnapshot,
    workspace_id: &str,
) -> Windows {
    let own = snapshot.workspace(workspace_id);
    let as_duration = |d: Option<&prost_types::Duration>| {
        d.map(|d| Duration::from_millis(u64::try_from(duration_proto_ms(d)).unwrap_or(0)))
    };
    defaults.windows(
        as_duration(own.and_then(|w| w.retention.as_ref())),
        as_duration(own.and_then(|w| w.idempotency_retention.as_ref())),
    )
}
