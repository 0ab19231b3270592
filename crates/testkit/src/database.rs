//! Fresh databases, one per test: a SQLite file in a temporary directory of its own, and a
//! PostgreSQL database created on the server named by `SLUICE_TEST_DATABASE_URL` (dropped
//! after the test). Without that variable the PostgreSQL runs are skipped with a visible
//! `SKIPPING` line.

use std::path::PathBuf;

use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use sluice_store::Plane;

/// The environment variable naming a PostgreSQL server for tests (any database on it; each
/// test creates and drops its own).
const POSTGRES_ENV: &str = "SLUICE_TEST_DATABASE_URL";

/// A database backend to run a suite on.
#[derive(Clone, Debug)]
pub enum Backend {
    /// A SQLite file in a fresh temporary directory.
    Sqlite,
    /// A fresh database on the PostgreSQL server at this URL.
    Postgres(String),
}

impl Backend {
    /// A short name for messages (never the URL, which may carry a password).
    pub fn label(&self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres(_) => "PostgreSQL",
        }
    }
}

/// The backends available here: SQLite always, PostgreSQL when `SLUICE_TEST_DATABASE_URL`
/// is set. Says so, visibly, when PostgreSQL is skipped.
pub fn backends() -> Vec<Backend> {
    let mut all = vec![Backend::Sqlite];
    match std::env::var(POSTGRES_ENV) {
        Ok(url) if !url.is_empty() => all.push(Backend::Postgres(url)),
        // Written to stderr directly, not with `eprintln!`, which the test runner captures
        // and hides for passing tests: a skip must be seen.
        _ => {
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPING the PostgreSQL run of this test: no server given (set {POSTGRES_ENV})"
            );
        }
    }
    all
}

/// A database made for one test, removed by [`TestDatabase::drop_database`].
pub struct TestDatabase {
    /// The URL to open.
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Dir(PathBuf),
    Postgres { server_url: String, name: String },
}

/// A name no other test of any run uses: a time-sortable id, lowercase.
fn unique_name() -> String {
    sluice_core::ids::new_id(sluice_core::ids::IdKind::Message)
        .replace("msg_", "sluice_t_")
        .to_lowercase()
}

impl TestDatabase {
    /// A fresh, empty database on `backend`.
    pub async fn create(backend: &Backend) -> TestDatabase {
        match backend {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(unique_name());
                std::fs::create_dir_all(&dir).unwrap();
                TestDatabase {
                    url: format!("sqlite://{}?mode=rwc", dir.join("test.db").display()),
                    cleanup: Cleanup::Dir(dir),
                }
            }
            Backend::Postgres(server_url) => {
                let name = unique_name();
                let admin = Database::connect(server_url.as_str()).await.unwrap();
                admin
                    .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
                    .await
                    .unwrap();
                admin.close().await.unwrap();
                // The server URL's query (`sslmode` and the like) is kept.
                let mut url = url::Url::parse(server_url).unwrap();
                url.set_path(&format!("/{name}"));
                TestDatabase {
                    url: url.to_string(),
                    cleanup: Cleanup::Postgres {
                        server_url: server_url.clone(),
                        name,
                    },
                }
            }
        }
    }

    /// Opens (and migrates) the database for `plane`, as the binary does.
    pub async fn open(&self, plane: Plane) -> DatabaseConnection {
        sluice_store::open(&self.url, plane).await.unwrap()
    }

    /// [`TestDatabase::open`] with the store's options (its timeout).
    pub async fn open_with(
        &self,
        plane: Plane,
        options: &sluice_store::StoreOptions,
    ) -> DatabaseConnection {
        sluice_store::open_with(&self.url, plane, options)
            .await
            .unwrap()
    }

    /// Removes the database.
    pub async fn drop_database(self) {
        match self.cleanup {
            Cleanup::Dir(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Postgres { server_url, name } => {
                if let Ok(admin) = Database::connect(server_url.as_str()).await {
                    let _ = admin
                        .execute_unprepared(&format!(
                            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                        ))
                        .await;
                    let _ = admin.close().await;
                }
            }
        }
    }
}

/// The control plane's latest config revision (0 before any change).
pub async fn max_revision(db: &DatabaseConnection) -> i64 {
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT COALESCE(MAX(revision), 0) AS n FROM config_changes".to_owned(),
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get::<i64>("", "n").unwrap()
}

/// Counts the rows of `table` (which may carry a `WHERE` clause).
pub async fn count_rows(db: &DatabaseConnection, table: &str) -> i64 {
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            format!("SELECT COUNT(*) AS n FROM {table}"),
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get::<i64>("", "n").unwrap()
}
