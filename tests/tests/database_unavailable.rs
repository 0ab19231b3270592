//! When the database does not answer, callers hear so within the store timeout
//! (`--store-timeout-ms`), with UNAVAILABLE, and nothing half-done is left: a publish is
//! "not stored, publish again" (and is then stored once), a control-plane write changes
//! nothing. The database is made unresponsive by holding what the planes need: SQLite's one
//! pooled connection, or on PostgreSQL a lock their statements wait on.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use sea_orm::DbBackend;
use sea_orm::sqlx::{self, Executor as _};
use sluice_proto::control::v1 as pb;
use sluice_testkit::count_rows;
use sluice_testkit::planes::{PlaneOptions, Planes, on_each_backend};
use sluice_tests::delivery::*;
use tonic::Code;

/// Short, so the suite stays quick.
const STORE_TIMEOUT: Duration = Duration::from_millis(500);

/// How long an answer may take at most: the store timeout bounds the wait for a connection
/// and each statement, a publish's write is abandoned by twice it, plus slack for a busy
/// machine. Minutes (the pool's old defaults) would fail this by far.
const ANSWER_BOUND: Duration = Duration::from_secs(4);

fn options() -> PlaneOptions {
    PlaneOptions {
        store_timeout: STORE_TIMEOUT,
        ..PlaneOptions::default()
    }
}

/// Holds a plane's database so its statements cannot run: the one SQLite connection, or a
/// PostgreSQL transaction holding `lock_sql`'s lock. Dropping it lets go.
enum Hold {
    Sqlite(sqlx::pool::PoolConnection<sqlx::Sqlite>),
    Postgres(sqlx::pool::PoolConnection<sqlx::Postgres>),
}

async fn hold(db: &sea_orm::DatabaseConnection, lock_sql: &'static str) -> Hold {
    match db.get_database_backend() {
        DbBackend::Sqlite => Hold::Sqlite(db.get_sqlite_connection_pool().acquire().await.unwrap()),
        _ => {
            let mut conn = db.get_postgres_connection_pool().acquire().await.unwrap();
            conn.execute("BEGIN").await.unwrap();
            conn.execute(lock_sql).await.unwrap();
            Hold::Postgres(conn)
        }
    }
}

async fn release(hold: Hold) {
    match hold {
        Hold::Sqlite(conn) => drop(conn),
        Hold::Postgres(mut conn) => {
            conn.execute("ROLLBACK").await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publish_the_database_cannot_take_is_refused_in_time_and_stored_once_when_sent_again() {
    on_each_backend(options(), publish_while_held).await;
}

async fn publish_while_held(planes: &mut Planes) {
    let (_, key) = planes.workspace_with_key("Tideflow").await;
    planes.config_synced().await;
    let mut publisher = planes.publisher(&key).await;
    let request = || dpb_event("k-held");

    let held = hold(
        &planes.data_db,
        "LOCK TABLE dp_messages IN ACCESS EXCLUSIVE MODE",
    )
    .await;
    let started = Instant::now();
    let refused = publisher.publish(request()).await.unwrap_err();
    let waited = started.elapsed();
    release(held).await;
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("publish it again"),
        "{}",
        refused.message()
    );
    assert!(waited < ANSWER_BOUND, "the publisher waited {waited:?}");
    assert_eq!(
        count_rows(
            &planes.data_db,
            "dp_messages WHERE idempotency_key = 'k-held'"
        )
        .await,
        0,
        "refused as not stored, so nothing may be stored"
    );

    // Sent again once the database answers: stored, once.
    let stored = publisher.publish(request()).await.unwrap().into_inner();
    assert!(!stored.duplicate);
    let repeat = publisher.publish(request()).await.unwrap().into_inner();
    assert!(repeat.duplicate);
    assert_eq!(repeat.message_id, stored.message_id);
}

fn dpb_event(idempotency_key: &str) -> sluice_proto::data::v1::PublishRequest {
    sluice_proto::data::v1::PublishRequest {
        idempotency_key: idempotency_key.to_owned(),
        ..event(CONVERSATION_CREATED, r#"{"conversation":{"id":"cnv_1"}}"#)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_control_plane_write_the_database_cannot_take_is_refused_in_time_and_changes_nothing() {
    on_each_backend(options(), control_write_while_held).await;
}

async fn control_write_while_held(planes: &mut Planes) {
    let (_, key) = planes.workspace_with_key("Tideflow").await;
    let mut clients = planes.clients(Some(&key)).await;
    let request = || pb::CreateSubscriptionRequest {
        subscription: Some(webhook("https://hooks.example.com/in", &["*"])),
        ..Default::default()
    };
    let before = count_rows(&planes.control_db, "subscriptions").await;

    // Config writes take the control plane's write lock first (advisory lock 7411001).
    let held = hold(&planes.control_db, "SELECT pg_advisory_xact_lock(7411001)").await;
    let started = Instant::now();
    let refused = clients
        .subscriptions
        .create_subscription(request())
        .await
        .unwrap_err();
    let waited = started.elapsed();
    release(held).await;
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(waited < ANSWER_BOUND, "the caller waited {waited:?}");
    assert_eq!(
        count_rows(&planes.control_db, "subscriptions").await,
        before
    );

    clients
        .subscriptions
        .create_subscription(request())
        .await
        .unwrap();
    assert_eq!(
        count_rows(&planes.control_db, "subscriptions").await,
        before + 1
    );
}
