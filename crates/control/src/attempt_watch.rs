//! The live outcome stream behind `DeliveryService.WatchAttempts`: a watcher follows the
//! attempt log by its position (`log_txid`, `log_seq`, migration m0005) and sends each new
//! attempt of its workspace that passes its filters, with the cursor to resume after it.
//!
//! The watcher reads the database, not memory: it wakes when this process commits outcomes
//! (`ControlPlane::attempts_logged`) and polls every [`POLL_EVERY`] for those another
//! replica committed. It reads only up to the *horizon*, the position below which every
//! attempt is visible and final (on PostgreSQL the oldest running transaction, since
//! transactions commit out of sequence order; on SQLite, whose one writer numbers in commit
//! order, the highest number), so nothing is skipped. A reader is bounded by its channel: a
//! reader catching up is simply waited for, but one that leaves the channel full for
//! [`DEFAULT_PATIENCE`] (configurable) gets RESOURCE_EXHAUSTED with the cursor to resume from; memory never holds
//! more than the channel.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, Statement,
};
use sluice_proto::control::v1 as pb;
use sluice_store::control::attempt;
use tokio::sync::mpsc::{self, error::TrySendError};
use tonic::Status;

use crate::ControlPlane;
use crate::error::ApiError;

/// Messages a watcher may have waiting for its reader before it is told it fell behind
/// (`ControlConfig::attempt_watch_buffer`'s default).
pub const DEFAULT_BUFFER: usize = 1024;
/// Attempts read per query.
const PAGE: u64 = 500;
/// How often a watcher looks for attempts another replica committed.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// How long a full channel waits for its reader to take a message before the reader is
/// told it fell behind (`ControlConfig::attempt_watch_patience`'s default).
pub const DEFAULT_PATIENCE: Duration = Duration::from_secs(2);
/// How long the error of a reader that fell behind waits for room in its channel.
const BEHIND_ERROR_WAIT: Duration = Duration::from_secs(30);

/// A position in the attempt log; ordered as the log is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    txid: i64,
    seq: i64,
}

impl Position {
    /// The opaque cursor of this position.
    pub fn cursor(self) -> String {
        URL_SAFE_NO_PAD.encode(format!("attempts|{}|{}", self.txid, self.seq))
    }

    /// The position of a cursor this server issued.
    pub fn from_cursor(cursor: &str) -> Option<Position> {
        let text = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
        let mut parts = text.strip_prefix("attempts|")?.split('|');
        let txid = parts.next()?.parse().ok()?;
        let seq = parts.next()?.parse().ok()?;
        if parts.next().is_some() || txid < 0 || seq < 0 {
            return None;
        }
        Some(Position { txid, seq })
    }
}

/// What a watcher sends: its workspace's attempts that pass every filter given.
pub struct Filters {
    pub workspace_id: String,
    pub subscription_id: Option<String>,
    pub event_type: Option<String>,
    pub success: Option<bool>,
}

/// The responses' sending end.
pub type Responses = mpsc::Sender<Result<pb::WatchAttemptsResponse, Status>>;

/// The position below which every attempt is visible and final (see the module's comment).
pub async fn horizon(db: &DatabaseConnection) -> Result<Position, DbErr> {
    let backend = db.get_database_backend();
    if backend == DbBackend::Postgres {
        let oldest_running = db
            .query_one_raw(Statement::from_string(
                backend,
                "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS x",
            ))
            .await?
            .ok_or_else(|| DbErr::Custom("no snapshot".to_owned()))?
            .try_get::<i64>("", "x")?;
        Ok(Position {
            txid: oldest_running.saturating_sub(1),
            seq: i64::MAX,
        })
    } else {
        let highest = db
            .query_one_raw(Statement::from_string(
                backend,
                "SELECT COALESCE(MAX(log_seq), 0) AS x FROM attempts WHERE log_txid = 0",
            ))
            .await?
            .map(|row| row.try_get::<i64>("", "x"))
            .transpose()?
            .unwrap_or(0);
        Ok(Position {
            txid: 0,
            seq: highest,
        })
    }
}

/// Follows the log after `from` until the reader goes away, the server stops, or the
/// reader falls behind: its channel of `buffer` messages stays full for [`DEFAULT_PATIENCE`] (configurable). `to_proto` is the one conversion of a row.
pub async fn run(
    plane: ControlPlane,
    filters: Filters,
    from: Position,
    tx: Responses,
    to_proto: fn(attempt::Model) -> pb::Attempt,
) {
    let mut logged = plane.attempts_logged();
    let mut scanned = from;
    let mut sent = from;
    loop {
        match follow(&plane, &filters, &mut scanned, &mut sent, &tx, to_proto).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(err) => {
                let _ = tx.send(Err(ApiError::from(err).into())).await;
                return;
            }
        }
        tokio::select! {
            changed = logged.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(POLL_EVERY) => {}
            () = tx.closed() => return,
            () = plane.streams_cancelled() => return,
        }
    }
}

/// Sends what was logged after `scanned` up to the horizon; false when the watch is over.
async fn follow(
    plane: &ControlPlane,
    filters: &Filters,
    scanned: &mut Position,
    sent: &mut Position,
    tx: &Responses,
    to_proto: fn(attempt::Model) -> pb::Attempt,
) -> Result<bool, DbErr> {
    let db = plane.db();
    let upto = horizon(db).await?;
    while upto > *scanned {
        let rows = page(db, filters, *scanned, upto).await?;
        let full = rows.len() as u64 == PAGE;
        for row in rows {
            let position = Position {
                txid: row.log_txid.unwrap_or(0),
                seq: row.log_seq.unwrap_or(0),
            };
            let response = pb::WatchAttemptsResponse {
                attempt: Some(to_proto(row)),
                cursor: position.cursor(),
            };
            let queued = match tx.try_send(Ok(response)) {
                Ok(()) => true,
                Err(TrySendError::Closed(_)) => return Ok(false),
                // The reader is behind by a full channel: it has a moment to catch up.
                Err(TrySendError::Full(response)) => {
                    match tokio::time::timeout(plane.attempt_watch_patience(), tx.send(response))
                        .await
                    {
                        Ok(Ok(())) => true,
                        Ok(Err(_)) => return Ok(false),
                        Err(_) => false,
                    }
                }
            };
            if !queued {
                let buffer = plane.attempt_watch_buffer();
                tracing::info!(
                    workspace_id = %filters.workspace_id,
                    buffer,
                    "an attempt watcher fell behind; ending its stream"
                );
                let status = Status::resource_exhausted(format!(
                    "the reader fell behind: {buffer} attempts waited for it for {} ms; resume \
                     from cursor {}",
                    plane.attempt_watch_patience().as_millis(),
                    sent.cursor()
                ));
                let _ = tokio::time::timeout(BEHIND_ERROR_WAIT, tx.send(Err(status))).await;
                return Ok(false);
            }
            *scanned = position;
            *sent = position;
        }
        if !full {
            *scanned = upto;
        }
    }
    Ok(true)
}

/// The next attempts after `after`, up to `upto`, that pass the filters, in log order.
async fn page(
    db: &DatabaseConnection,
    filters: &Filters,
    after: Position,
    upto: Position,
) -> Result<Vec<attempt::Model>, DbErr> {
    let mut query = attempt::Entity::find()
        // (log_txid, log_seq) > after and <= upto, spelled so that both backends use the
        // position index on its first column.
        .filter(attempt::Column::LogTxid.gte(after.txid))
        .filter(
            Condition::any()
                .add(attempt::Column::LogTxid.gt(after.txid))
                .add(attempt::Column::LogSeq.gt(after.seq)),
        )
        .filter(attempt::Column::LogTxid.lte(upto.txid))
        .filter(
            Condition::any()
                .add(attempt::Column::LogTxid.lt(upto.txid))
                .add(attempt::Column::LogSeq.lte(upto.seq)),
        )
        .filter(attempt::Column::WorkspaceId.eq(filters.workspace_id.clone()))
        .order_by_asc(attempt::Column::LogTxid)
        .order_by_asc(attempt::Column::LogSeq)
        .limit(PAGE);
    if let Some(s) = &filters.subscription_id {
        query = query.filter(attempt::Column::SubscriptionId.eq(s.clone()));
    }
    if let Some(e) = &filters.event_type {
        query = query.filter(attempt::Column::EventType.eq(e.clone()));
    }
    if let Some(success) = filters.success {
        query = query.filter(attempt::Column::Success.eq(success));
    }
    query.all(db).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_others_are_refused() {
        let p = Position { txid: 7, seq: 42 };
        assert_eq!(Position::from_cursor(&p.cursor()), Some(p));
        for bad in [
            "",
            "!!",
            "YXR0ZW1wdHN8MXwy3",
            &URL_SAFE_NO_PAD.encode("messages|1|2"),
            &URL_SAFE_NO_PAD.encode("attempts|1"),
            &URL_SAFE_NO_PAD.encode("attempts|1|2|3"),
            &URL_SAFE_NO_PAD.encode("attempts|-1|2"),
            &URL_SAFE_NO_PAD.encode("attempts|x|2"),
        ] {
            assert_eq!(Position::from_cursor(bad), None, "{bad}");
        }
        assert!(Position { txid: 1, seq: 0 } > Position { txid: 0, seq: 9 });
    }
}
