//! SQLite's WAL checkpoints, mostly off the commit path.
//!
//! In WAL mode every commit appends the pages it changed to the `-wal` file, and a
//! checkpoint copies them back into the database file. Left to itself, SQLite checkpoints
//! inside the commit that takes the WAL past `wal_autocheckpoint` (1000) pages: that
//! commit copies every page the WAL holds and syncs the database file before it returns,
//! and on a plane's one connection every publisher and every outcome waits behind it.
//! Usually that was about 10 ms; a few times a minute, on a disk whose syncs sometimes
//! stall, it was 90 ms to over a second.
//!
//! Here a task of its own, on a connection of its own, copies the WAL back every
//! [`INTERVAL`] with `PASSIVE` checkpoints, which neither wait for the writer nor block
//! it. SQLite's own checkpoint still runs in the commit that crosses the threshold (it is
//! what lets the WAL start again from its beginning, which needs every page copied with
//! no commit in between), but by then this task has copied nearly everything, so it only
//! copies the last few milliseconds' pages.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteSynchronous};
use sea_orm::sqlx::{self, ConnectOptions};

/// How often the WAL is copied back into the database file.
const INTERVAL: Duration = Duration::from_millis(200);

/// Starts the checkpointer of the SQLite database at `path` on the current runtime; it ends
/// with the runtime, or once the file is gone. A failure to connect is logged and leaves
/// checkpoints to the commits, as SQLite does by default.
pub(crate) fn spawn(path: PathBuf, busy_timeout: Duration) {
    tokio::spawn(async move {
        let mut connection = match connect(&path, busy_timeout).await {
            Ok(c) => c,
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "cannot open the WAL checkpointer's connection; commits checkpoint the WAL themselves");
                return;
            }
        };
        let mut interval = tokio::time::interval(INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut warned = false;
        loop {
            interval.tick().await;
            match sqlx::raw_sql("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&mut connection)
                .await
            {
                Ok(_) => warned = false,
                Err(_) if !path.exists() => return,
                Err(err) if !warned => {
                    warned = true;
                    tracing::warn!(path = %path.display(), error = %err, "checkpointing the WAL failed; trying again");
                }
                Err(_) => {}
            }
        }
    });
}

async fn connect(path: &Path, busy_timeout: Duration) -> Result<SqliteConnection, sqlx::Error> {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(false)
        .busy_timeout(busy_timeout)
        // A checkpoint syncs the WAL before copying it and the database file after.
        .synchronous(SqliteSynchronous::Full)
        .connect()
        .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use sea_orm::{ConnectionTrait, DbBackend, Statement};

    use super::*;
    use crate::hot::Session;
    use crate::{Plane, open, sqlite_url};

    /// Commits far fewer pages than SQLite's own threshold through the hot path's session,
    /// then commits nothing: the rows reach the database file all the same (without this
    /// task they would wait in the WAL for the commit that crosses 1000 pages).
    #[tokio::test]
    async fn the_wal_is_copied_back_without_waiting_for_a_commit() {
        let dir = std::env::temp_dir().join(format!("sluice-store-wal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = open(&sqlite_url(&dir, Plane::Data), Plane::Data)
            .await
            .unwrap();
        db.execute_unprepared("CREATE TABLE wal_test (b BLOB)")
            .await
            .unwrap();
        let file = dir.join("data.db");
        let before = std::fs::metadata(&file).unwrap().len();
        let page = u64::from(crate::SQLITE_PAGE_SIZE);
        // One row of half a page per commit: about 4 WAL frames each, 400 in all.
        let commits = 100;
        for _ in 0..commits {
            let session = Session::begin(&db).await.unwrap();
            session
                .commit_independent(vec![Statement::from_string(
                    DbBackend::Sqlite,
                    format!("INSERT INTO wal_test (b) VALUES (zeroblob({}))", page / 2),
                )])
                .await
                .unwrap();
        }
        let wanted = before + commits * page / 2;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut size = std::fs::metadata(&file).unwrap().len();
        while size < wanted {
            assert!(
                std::time::Instant::now() < deadline,
                "the database file stayed at {size} bytes ({before} before {commits} commits)"
            );
            // The file's size is all there is to watch.
            tokio::time::sleep(Duration::from_millis(10)).await;
            size = std::fs::metadata(&file).unwrap().len();
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
