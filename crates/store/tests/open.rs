//! Opening a database as replicas do: many at the same moment on a fresh database, against
//! a schema newer than the binary, and a second process on a SQLite file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use sea_orm::ConnectionTrait;
use sluice_store::{Plane, StoreOptions};
use sluice_testkit::database::{Backend, TestDatabase, backends};

#[tokio::test]
async fn replicas_of_both_planes_starting_at_once_on_a_fresh_database_all_open_it() {
    for backend in backends() {
        // SQLite is one process's database: its concurrent start is one process opening
        // both planes at once, which the same call covers.
        let database = TestDatabase::create(&backend).await;
        let mut starts = Vec::new();
        let replicas = if matches!(backend, Backend::Postgres(_)) {
            6
        } else {
            2
        };
        for replica in 0..replicas {
            let url = database.url.clone();
            let plane = if replica % 2 == 0 {
                Plane::Data
            } else {
                Plane::Control
            };
            starts.push(tokio::spawn(async move {
                sluice_store::open_with(&url, plane, &StoreOptions::default()).await
            }));
        }
        for start in starts {
            let opened = start.await.unwrap();
            assert!(
                opened.is_ok(),
                "{}: a replica failed to start: {:?}",
                backend.label(),
                opened.err()
            );
        }
        database.drop_database().await;
    }
}

#[tokio::test]
async fn a_schema_newer_than_the_binary_is_refused_and_says_so() {
    for backend in backends() {
        let database = TestDatabase::create(&backend).await;
        let db = database.open(Plane::Data).await;
        db.execute_unprepared(
            "INSERT INTO sluice_data_migrations (version, applied_at) \
             VALUES ('m9999_from_the_future', 0)",
        )
        .await
        .unwrap();
        db.close().await.unwrap();
        let refused = sluice_store::open(&database.url, Plane::Data)
            .await
            .expect_err("a newer schema must be refused");
        let message = refused.to_string();
        assert!(
            message.contains("newer than this binary") && message.contains("m9999_from_the_future"),
            "{}: {message}",
            backend.label()
        );
        // The other plane's schema is its own, and still opens.
        sluice_store::open(&database.url, Plane::Control)
            .await
            .unwrap();
        database.drop_database().await;
    }
}

#[tokio::test]
async fn a_sqlite_database_is_locked_against_other_processes_and_reopens_in_its_own() {
    let database = TestDatabase::create(&Backend::Sqlite).await;
    let db = database.open(Plane::Data).await;
    let path = database
        .url
        .trim_start_matches("sqlite://")
        .split('?')
        .next()
        .unwrap()
        .to_owned();
    // Another process would open the lock file afresh: a new open file description, whose
    // lock conflicts with this process's even here.
    let other = std::fs::File::open(format!("{path}.lock")).unwrap();
    assert!(
        matches!(other.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
        "the lock file must be held while the database is open"
    );
    // This process opening it again (a plane restarted in-process) is fine.
    db.close().await.unwrap();
    let again = database.open(Plane::Data).await;
    again.close().await.unwrap();
    database.drop_database().await;
}
