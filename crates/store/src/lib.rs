//! Storage for both planes: sea-orm entities, connecting (SQLite or PostgreSQL),
//! migrations, and small helpers shared by every query. It knows nothing of gRPC or HTTP.

mod checkpoint;
pub mod control;
pub mod data;
pub mod hot;
pub mod retention;

use std::time::Duration;

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr};
use sluice_migration::MigratorTrait;

pub use sea_orm;

/// Which plane a database belongs to; each has its own migrations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plane {
    /// The control plane's configuration and delivery log.
    Control,
    /// The data plane's configuration copy, queue and outbox.
    Data,
}

/// The page size of a new SQLite database (a database made before keeps its own: WAL mode
/// cannot change it). 16 KiB instead of SQLite's 4 KiB: a commit of the hot path writes a
/// frame (a 24-byte header and a page, two `pwrite`s) per page it changed, and a
/// checkpoint reads and writes each page again, so larger pages mean fewer system calls
/// for the same rows. Under `sluice bench` (`strace -c -f`) `pwrite`s per delivery went
/// from 2.8 to 1.3 and `pread`s from 0.9 to 0.2; interleaved runs gave 13-19% more
/// deliveries/s than 4 KiB, where 32 and 64 KiB were slower again (each commit rewrites
/// whole pages that are mostly unchanged).
pub const SQLITE_PAGE_SIZE: u32 = 16 * 1024;

/// How long any wait for the database may take by default: a connection from the pool, a
/// connect, a statement (PostgreSQL), a lock (SQLite's busy timeout).
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// How a plane uses its database.
#[derive(Clone, Copy, Debug)]
pub struct StoreOptions {
    /// The longest wait for the database: for a pooled connection, for a connect, for one
    /// statement (PostgreSQL's `statement_timeout`, so the server gives up and rolls back,
    /// and a caller told "not stored" is told the truth), for SQLite's write lock. A caller
    /// past it gets an error at once instead of waiting on a database that is down.
    pub timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            timeout: DEFAULT_STORE_TIMEOUT,
        }
    }
}

/// [`open_with`] and the default options.
pub async fn open(url: &str, plane: Plane) -> Result<DatabaseConnection, DbErr> {
    open_with(url, plane, &StoreOptions::default()).await
}

/// Opens a pool to `url` (`sqlite://path?mode=rwc` or `postgres://...`) and brings the
/// schema of `plane` up to date, safely when several replicas start at once.
///
/// SQLite runs in WAL mode with `synchronous=FULL`: a commit that returned is on disk, which
/// is what "acked means durable" needs; throughput comes from batching many events per
/// commit, not from weaker syncs.
///
/// SQLite gets one connection: it has one writer anyway, and several connections only
/// turn waiting in line into SQLite's busy-handler sleeps (1 to 100 ms each), which showed
/// as long publish-ack tails. Every query must therefore run on the transaction it is
/// inside, never on a second connection. A SQLite database belongs to one process (see
/// [`lock_sqlite_file`]); several replicas need PostgreSQL.
pub async fn open_with(
    url: &str,
    plane: Plane,
    store: &StoreOptions,
) -> Result<DatabaseConnection, DbErr> {
    let url = postgres_without_loopback_tls(url);
    let postgres = !url.starts_with("sqlite:");
    if postgres {
        migrate_postgres(&url, plane, store.timeout).await?;
    } else {
        lock_sqlite_file(&url)?;
    }
    let timeout = store.timeout;
    let mut options = ConnectOptions::new(url.clone());
    options
        .sqlx_logging(false)
        .connect_timeout(timeout)
        .acquire_timeout(timeout);
    if !postgres {
        options
            .max_connections(1)
            .min_connections(1)
            // A file on this machine: testing it before every use would only add a round
            // trip to SQLite's thread per query.
            .test_before_acquire(false)
            .map_sqlx_sqlite_opts(move |opts| {
                opts.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Full)
                    .busy_timeout(timeout)
                    .foreign_keys(false)
                    // Temporary storage in memory: above all the statement journal, which
                    // a multi-row insert inside a transaction keeps to undo itself alone
                    // and which past 64 KiB went to a file in /var/tmp that was created,
                    // written and unlinked several times a second under load (the delivery
                    // log's batches). Its size is bounded by the pages one statement touches.
                    .pragma("temp_store", "memory")
                    .page_size(SQLITE_PAGE_SIZE)
                    // Pages the retention purge frees go to the free list, and
                    // `PRAGMA incremental_vacuum` (after each purge) gives them back to
                    // the file system, so the file stops growing. Takes effect on a new
                    // file; an older one is converted once below.
                    .auto_vacuum(sea_orm::sqlx::sqlite::SqliteAutoVacuum::Incremental)
            });
    } else {
        let statement_timeout = timeout.as_millis().to_string();
        options
            .max_connections(16)
            .min_connections(1)
            // A connection that was used in the last half minute is not pinged first: the
            // ping is a round trip per transaction on the hot path.
            .test_before_acquire_if_idle_for(Duration::from_secs(30))
            // Every execution is planned for the tables as they are then. sqlx prepares
            // each statement once per connection, and after five runs PostgreSQL may keep
            // one generic plan for good: the writer's delete of finished fan-out rows,
            // planned while `dp_fanout` had a page, kept scanning the whole table, whose
            // dead rows grow until autovacuum comes by (docs/performance.md).
            .map_sqlx_postgres_opts(move |opts| {
                opts.options([
                    ("plan_cache_mode", "force_custom_plan"),
                    ("statement_timeout", statement_timeout.as_str()),
                ])
            });
    }
    let db = Database::connect(options).await?;
    if !postgres {
        incremental_auto_vacuum(&db).await?;
        migrate(&db, plane).await?;
        if let Some(path) = sqlite_path(&url) {
            checkpoint::spawn(path, timeout);
        }
    }
    Ok(db)
}

/// Makes a SQLite file made before retention existed (`auto_vacuum=NONE`) an incremental
/// auto-vacuum one. SQLite only changes that mode by rebuilding the file, so this runs
/// `VACUUM` once, at the first start after the upgrade: it rewrites the whole file (a
/// large database takes a while, and needs as much free disk again) and is never needed
/// again. A new file gets the mode from its first connection, before any table exists.
async fn incremental_auto_vacuum(db: &DatabaseConnection) -> Result<(), DbErr> {
    const INCREMENTAL: i64 = 2;
    let scalar = |sql: &str| sea_orm::Statement::from_string(DbBackend::Sqlite, sql.to_owned());
    let mode = db
        .query_one_raw(scalar("PRAGMA auto_vacuum"))
        .await?
        .and_then(|row| row.try_get_by_index::<i64>(0).ok())
        .unwrap_or(INCREMENTAL);
    if mode == INCREMENTAL {
        return Ok(());
    }
    let started = std::time::Instant::now();
    db.execute_unprepared("PRAGMA auto_vacuum = INCREMENTAL")
        .await?;
    db.execute_unprepared("VACUUM").await?;
    tracing::info!(
        millis = started.elapsed().as_millis() as u64,
        "converted the SQLite database to incremental auto-vacuum (once), so purged rows give their space back"
    );
    Ok(())
}

/// The advisory lock PostgreSQL replicas take around migrations (the control plane's
/// config writes use 7411001, the data plane's outbox reporter 7411002).
const MIGRATION_LOCK_KEY: i64 = 7_411_003;

/// Migrates a PostgreSQL database with a session advisory lock held around it, on one
/// connection of its own: replicas starting at the same moment (a deploy rolling out) take
/// turns, and each one after the first finds nothing left to do. The connection has no
/// statement timeout (a migration of a large table may take long); closing it releases the
/// lock, also when the process dies midway.
async fn migrate_postgres(url: &str, plane: Plane, connect_timeout: Duration) -> Result<(), DbErr> {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .sqlx_logging(false)
        .max_connections(1)
        .min_connections(1)
        .connect_timeout(connect_timeout);
    let db = Database::connect(options).await?;
    let migrated = async {
        db.execute_unprepared(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))
            .await?;
        migrate(&db, plane).await
    }
    .await;
    // Closing ends the session, and with it the lock, whatever happened above.
    let closed = db.close().await;
    migrated?;
    closed
}

/// Every process holding a SQLite database, by its lock file: a process that opens a
/// database again (a plane restarted in-process) already holds it.
static SQLITE_FILE_LOCKS: std::sync::Mutex<Vec<(std::path::PathBuf, std::fs::File)>> =
    std::sync::Mutex::new(Vec::new());

/// Takes, for the life of this process, an exclusive lock on a file beside the SQLite
/// database of `url` (`<file>.lock`), so a second process on the same database fails at
/// start with a message that says why, instead of taking the leases and the migrations
/// from under the first (a SQLite database is one process's: its leases are cleared at
/// start). The lock goes with the process, also when it is killed. In-memory databases
/// need none.
pub fn lock_sqlite_file(url: &str) -> Result<(), DbErr> {
    let Some(path) = sqlite_path(url) else {
        return Ok(());
    };
    let lock_path = std::path::PathBuf::from(format!("{}.lock", path.display()));
    let mut held = SQLITE_FILE_LOCKS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let canonical =
        |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    if lock_path.exists() && held.iter().any(|(p, _)| *p == canonical(&lock_path)) {
        return Ok(());
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| {
            DbErr::Custom(format!(
                "cannot create the lock file {}: {e}",
                lock_path.display()
            ))
        })?;
    match file.try_lock() {
        Ok(()) => {
            held.push((canonical(&lock_path), file));
            Ok(())
        }
        Err(std::fs::TryLockError::WouldBlock) => Err(DbErr::Custom(format!(
            "another process is using the SQLite database {} (it holds {}); a SQLite \
             database serves one process: stop the other one, or use PostgreSQL to run \
             several replicas",
            path.display(),
            lock_path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(DbErr::Custom(format!(
            "cannot lock {}: {e}",
            lock_path.display()
        ))),
    }
}

/// The file of a SQLite URL (`sqlite://path?mode=rwc`, `sqlite:path`); `None` for an
/// in-memory database.
fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && !path.starts_with(":memory:") && !url.contains("mode=memory"))
        .then(|| std::path::PathBuf::from(path))
}

/// A PostgreSQL URL to a loopback address with no `sslmode` gets `sslmode=disable`.
///
/// TLS to a server on the same machine protects nothing (the traffic never leaves it), and
/// with sqlx 0.9.0 it is very slow: sqlx no longer sets `TCP_NODELAY` (transact-rs/sqlx
/// #4335, fixed upstream but not released), and its TLS writes come in several small
/// records, so every round trip waits out the peer's delayed ACK (40 ms). `sslmode=prefer`
/// (the default) negotiates TLS whenever the server offers it. An explicit `sslmode` is
/// always kept, and so is everything else of the URL.
pub fn postgres_without_loopback_tls(url: &str) -> String {
    let Ok(parsed) = url::Url::parse(url) else {
        return url.to_owned();
    };
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return url.to_owned();
    }
    let loopback = match parsed.host() {
        // `postgres:` is not a special scheme to the URL parser: an IP comes back as a name.
        Some(url::Host::Domain(name)) => {
            name.eq_ignore_ascii_case("localhost")
                || name
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    let chosen = parsed
        .query_pairs()
        .any(|(k, _)| k == "sslmode" || k == "host");
    if !loopback || chosen {
        return url.to_owned();
    }
    let mut rewritten = parsed;
    rewritten
        .query_pairs_mut()
        .append_pair("sslmode", "disable");
    rewritten.to_string()
}

/// Applies the pending migrations of `plane`, after refusing a schema newer than this
/// binary knows (a newer Sluice migrated it: running this one against it could corrupt it).
pub async fn migrate(db: &DatabaseConnection, plane: Plane) -> Result<(), DbErr> {
    let (table, known) = match plane {
        Plane::Control => (
            sluice_migration::ControlMigrator::migration_table_name(),
            sluice_migration::ControlMigrator::migrations(),
        ),
        Plane::Data => (
            sluice_migration::DataMigrator::migration_table_name(),
            sluice_migration::DataMigrator::migrations(),
        ),
    };
    let known: Vec<String> = known.iter().map(|m| m.name().to_owned()).collect();
    let applied = applied_migrations(db, &table.to_string()).await;
    if let Some(unknown) = applied.iter().find(|v| !known.contains(v)) {
        return Err(DbErr::Custom(format!(
            "the {plane:?} database's schema is newer than this binary: it has migration \
             {unknown:?}, which this version of Sluice does not know (it knows {} migrations, \
             up to {:?}). Run the Sluice version that migrated it, or a newer one.",
            known.len(),
            known.last().map(String::as_str).unwrap_or_default()
        )));
    }
    match plane {
        Plane::Control => sluice_migration::ControlMigrator::up(db, None).await,
        Plane::Data => sluice_migration::DataMigrator::up(db, None).await,
    }
}

/// The migrations recorded in `table`; none when the table does not exist yet.
async fn applied_migrations(db: &DatabaseConnection, table: &str) -> Vec<String> {
    let backend = db.get_database_backend();
    let statement =
        sea_orm::Statement::from_string(backend, format!("SELECT version FROM {table}"));
    match db.query_all_raw(statement).await {
        Ok(rows) => rows
            .iter()
            .filter_map(|row| row.try_get::<String>("", "version").ok())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The SQLite URL of a plane's file under `data_dir`, created when missing.
pub fn sqlite_url(data_dir: &std::path::Path, plane: Plane) -> String {
    let file = match plane {
        Plane::Control => "control.db",
        Plane::Data => "data.db",
    };
    format!("sqlite://{}?mode=rwc", data_dir.join(file).display())
}

/// A numbered statement parameter: `$n` on PostgreSQL, `?n` on SQLite.
pub fn placeholder(backend: DbBackend, n: usize) -> String {
    match backend {
        DbBackend::Postgres => format!("${n}"),
        _ => format!("?{n}"),
    }
}

/// The row lock of a claim's inner `SELECT`: on PostgreSQL ` FOR UPDATE SKIP LOCKED`, so
/// replicas claiming at once take different rows instead of waiting on each other; nothing
/// on SQLite, which has one writer.
pub fn skip_locked(backend: DbBackend) -> &'static str {
    if backend == DbBackend::Postgres {
        " FOR UPDATE SKIP LOCKED"
    } else {
        ""
    }
}

/// Now, in unix milliseconds: how every time is stored.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Whether an error is a unique-constraint violation (a duplicate insert).
pub fn is_unique_violation(err: &DbErr) -> bool {
    matches!(
        err.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}

/// Whether an error says the database could not be reached or did not answer in time (no
/// connection to be had, a connection that broke, a statement cancelled at the store
/// timeout, a lock not granted in time, the server shutting down), rather than that a
/// statement was wrong. Callers answer these with UNAVAILABLE: try again later.
pub fn is_unavailable(err: &DbErr) -> bool {
    use sea_orm::{RuntimeErr, sqlx};
    let sqlx_error = match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => return true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => e,
        _ => return false,
    };
    match sqlx_error.as_ref() {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            if db
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some()
            {
                // PostgreSQL: connection exceptions (08), operator intervention (57: a
                // statement cancelled at `statement_timeout`, the server shutting down),
                // lock not available (55P03). Told apart from SQLite's numeric codes first:
                // many SQLSTATEs are digits too (22021, a NUL in text, is 5 in its low byte).
                code.starts_with("08") || code.starts_with("57") || code == "55P03"
            } else {
                // SQLite: BUSY and LOCKED, with their extended codes.
                code.parse::<u32>().is_ok_and(|n| matches!(n & 0xff, 5 | 6))
            }
        }
        _ => false,
    }
}

/// Whether an error came before anything reached the database: no connection could be had
/// from the pool. Nothing was sent, so nothing was committed.
pub fn never_reached_the_database(err: &DbErr) -> bool {
    use sea_orm::{RuntimeErr, sqlx};
    match err {
        DbErr::ConnectionAcquire(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            matches!(
                e.as_ref(),
                sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
            )
        }
        _ => false,
    }
}

/// Takes the control plane's write lock; call first in every control-plane transaction that
/// reads and then writes.
///
/// On PostgreSQL it serialises config writers across replicas (an advisory lock), so
/// revisions in `config_changes` become visible in order and a watcher never skips a lower
/// revision committed after a higher one. On SQLite it makes the transaction a writer at
/// once: a transaction that reads first and then tries to write fails with "database is
/// locked" when another writer got in between, while one that starts by writing waits its
/// turn (busy timeout). A no-op UPDATE takes the write lock without changing a row.
pub async fn lock_config_writes<C: ConnectionTrait>(tx: &C) -> Result<(), DbErr> {
    match tx.get_database_backend() {
        DbBackend::Postgres => {
            tx.execute_unprepared("SELECT pg_advisory_xact_lock(7411001)")
                .await?;
        }
        DbBackend::Sqlite => {
            tx.execute_unprepared("UPDATE config_changes SET kind = kind WHERE revision < 0")
                .await?;
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn loopback_postgres_goes_without_tls_unless_asked() {
        let cases = [
            (
                "postgres://u@127.0.0.1:5432/db",
                "postgres://u@127.0.0.1:5432/db?sslmode=disable",
            ),
            (
                "postgresql://u:p@localhost/db?application_name=x",
                "postgresql://u:p@localhost/db?application_name=x&sslmode=disable",
            ),
            (
                "postgres://u@[::1]/db",
                "postgres://u@[::1]/db?sslmode=disable",
            ),
            // Chosen explicitly, remote, a socket, or not PostgreSQL: unchanged.
            (
                "postgres://u@127.0.0.1/db?sslmode=require",
                "postgres://u@127.0.0.1/db?sslmode=require",
            ),
            (
                "postgres://u@db.example.com/db",
                "postgres://u@db.example.com/db",
            ),
            (
                "postgres://u@localhost/db?host=/var/run/postgresql",
                "postgres://u@localhost/db?host=/var/run/postgresql",
            ),
            ("sqlite://x.db?mode=rwc", "sqlite://x.db?mode=rwc"),
        ];
        for (given, want) in cases {
            assert_eq!(postgres_without_loopback_tls(given), want, "{given}");
        }
    }

    #[tokio::test]
    async fn migrations_run_on_sqlite_both_planes_in_one_file() {
        let dir = std::env::temp_dir().join(format!("sluice-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = sqlite_url(&dir, Plane::Control);
        let db = open(&url, Plane::Control).await.unwrap();
        migrate(&db, Plane::Data).await.unwrap();
        // Running again is a no-op.
        migrate(&db, Plane::Control).await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_new_sqlite_database_gets_large_pages_and_temporary_storage_in_memory() {
        let dir = std::env::temp_dir().join(format!("sluice-store-pages-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = open(&sqlite_url(&dir, Plane::Data), Plane::Data)
            .await
            .unwrap();
        assert_eq!(
            scalar(&db, "PRAGMA page_size").await,
            i64::from(SQLITE_PAGE_SIZE)
        );
        assert_eq!(scalar(&db, "PRAGMA temp_store").await, 2, "2 is MEMORY");
        assert_eq!(
            scalar(&db, "PRAGMA auto_vacuum").await,
            2,
            "2 is INCREMENTAL"
        );
        db.close().await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn an_older_sqlite_file_becomes_incremental_auto_vacuum_once_at_open() {
        let dir = std::env::temp_dir().join(format!("sluice-store-vacuum-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = sqlite_url(&dir, Plane::Data);
        // A file made the way an older Sluice made it: no auto-vacuum, a table with a row.
        let old = Database::connect(url.as_str()).await.unwrap();
        old.execute_unprepared("CREATE TABLE kept (n INTEGER); INSERT INTO kept VALUES (7)")
            .await
            .unwrap();
        assert_eq!(scalar(&old, "PRAGMA auto_vacuum").await, 0, "0 is NONE");
        old.close().await.unwrap();

        let db = open(&url, Plane::Data).await.unwrap();
        assert_eq!(
            scalar(&db, "PRAGMA auto_vacuum").await,
            2,
            "2 is INCREMENTAL"
        );
        assert_eq!(scalar(&db, "SELECT n FROM kept").await, 7, "the rows stay");
        db.close().await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    async fn table_sql(db: &DatabaseConnection, table: &str) -> String {
        db.query_one_raw(sea_orm::Statement::from_string(
            DbBackend::Sqlite,
            format!("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = '{table}'"),
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get::<String>("", "sql")
        .unwrap()
    }

    /// The one integer `sql` answers.
    async fn scalar(db: &DatabaseConnection, sql: &str) -> i64 {
        db.query_one_raw(sea_orm::Statement::from_string(
            DbBackend::Sqlite,
            sql.to_owned(),
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index::<i64>(0)
        .unwrap()
    }

    async fn rows(db: &DatabaseConnection, table: &str) -> i64 {
        scalar(db, &format!("SELECT COUNT(*) FROM {table}")).await
    }

    /// m0011: a fan-out row written before it gets its message's workspace, and the
    /// scanner's partial index holds it only while nobody holds it.
    #[tokio::test]
    async fn fanouts_get_their_messages_workspace() {
        use sluice_migration::DataMigrator;
        let dir = std::env::temp_dir().join(format!("sluice-store-m11-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = sqlite_url(&dir, Plane::Data);
        let db = Database::connect(url.as_str()).await.unwrap();
        // The migrations before m0011.
        let before = DataMigrator::migrations()
            .iter()
            .position(|m| m.name() == "m0011_data_fanout_workspace")
            .unwrap();
        DataMigrator::up(&db, Some(u32::try_from(before).unwrap()))
            .await
            .unwrap();
        for sql in [
            "INSERT INTO dp_messages (id, workspace_id, event_type, envelope, create_ms) \
             VALUES ('msg_1', 'wrk_1', 'a.b', x'7b7d', 1)",
            "INSERT INTO dp_fanout VALUES ('msg_1', 1, NULL)",
            "INSERT INTO dp_fanout VALUES ('msg_lost', 1, 5)",
        ] {
            db.execute_unprepared(sql).await.unwrap();
        }
        DataMigrator::up(&db, None).await.unwrap();
        let workspaces = scalar(
            &db,
            "SELECT COUNT(*) FROM dp_fanout WHERE \
             (message_id = 'msg_1' AND workspace_id = 'wrk_1') \
             OR (message_id = 'msg_lost' AND workspace_id = '')",
        )
        .await;
        assert_eq!(workspaces, 2);
        let unleased = scalar(
            &db,
            "SELECT COUNT(*) FROM dp_fanout INDEXED BY idx_dp_fanout_unleased \
             WHERE lease_until_ms IS NULL AND workspace_id = 'wrk_1'",
        )
        .await;
        assert_eq!(unleased, 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn later_migrations_keep_the_rows_and_go_down_again() {
        use sluice_migration::{ControlMigrator, DataMigrator};
        let dir = std::env::temp_dir().join(format!("sluice-store-m2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = sqlite_url(&dir, Plane::Control);
        let db = Database::connect(url.as_str()).await.unwrap();
        ControlMigrator::up(&db, Some(1)).await.unwrap();
        DataMigrator::up(&db, Some(1)).await.unwrap();
        for sql in [
            "INSERT INTO messages VALUES ('msg_1', 'wrk_1', 'a.b', 1, 1)",
            "INSERT INTO deliveries VALUES ('msg_1', 'sub_1', 'wrk_1', 'a.b', 'pending', 0, NULL, 1, 0, '', 1)",
            "INSERT INTO attempts VALUES ('att_1', 'wrk_1', 'msg_1', 'sub_1', 'a.b', 1, 1, 1, 200, '', '', 5, '', 'scheduled', 'https://x')",
            "INSERT INTO dp_messages VALUES ('msg_1', 'wrk_1', 'a.b', x'7b7d', NULL, NULL, NULL, 1)",
        ] {
            db.execute_unprepared(sql).await.unwrap();
        }
        ControlMigrator::up(&db, None).await.unwrap();
        DataMigrator::up(&db, None).await.unwrap();
        for table in ["messages", "deliveries", "attempts"] {
            assert!(
                table_sql(&db, table).await.ends_with("WITHOUT ROWID"),
                "{table}"
            );
            assert_eq!(rows(&db, table).await, 1, "{table}");
        }
        assert_eq!(rows(&db, "dp_messages").await, 1);
        assert_eq!(rows(&db, "dp_fanout").await, 0);

        // Back to the first schema: every later migration goes down (m0005, the log's
        // positions; m0004, retention; m0003, the log's keys; then m0002).
        let later = |n: usize| Some(u32::try_from(n).unwrap() - 1);
        ControlMigrator::down(&db, later(ControlMigrator::migrations().len()))
            .await
            .unwrap();
        DataMigrator::down(&db, later(DataMigrator::migrations().len()))
            .await
            .unwrap();
        for table in ["messages", "deliveries", "attempts"] {
            assert!(
                !table_sql(&db, table).await.contains("WITHOUT ROWID"),
                "{table}"
            );
            assert_eq!(rows(&db, table).await, 1, "{table}");
        }
        assert!(
            !table_sql(&db, "dp_messages")
                .await
                .contains("subscription_ids")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
