//! The hot path's statements and sessions on real SQLite and PostgreSQL: what goes in
//! comes back byte for byte, a failed session leaves nothing behind and its connection
//! usable, a resent log batch changes nothing.

#![allow(clippy::unwrap_used)]

use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, EntityTrait};
use sluice_store::hot::{self, Session};
use sluice_store::{Plane, data, is_unique_violation};
use sluice_testkit::{TestDatabase, backends};

fn message<'a>(id: &'a str, envelope: &'a [u8], key: Option<&'a str>) -> hot::data::MessageRow<'a> {
    hot::data::MessageRow {
        id,
        workspace_id: "wrk_1",
        event_type: "conversation.created",
        envelope,
        idempotency_key: key,
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        tracestate: None,
        create_ms: 1_700_000_000_123,
        subscription_ids: "sub_a,sub_b",
    }
}

fn fanout(message_id: &str, due_ms: i64, lease_until_ms: Option<i64>) -> hot::data::FanoutRow<'_> {
    hot::data::FanoutRow {
        message_id,
        workspace_id: "wrk_1",
        due_ms,
        lease_until_ms,
    }
}

#[tokio::test]
async fn a_data_cycle_stores_exactly_what_it_was_given() {
    for kind in backends() {
        let fresh = TestDatabase::create(&kind).await;
        let db = fresh.open(Plane::Data).await;
        let backend = db.get_database_backend();
        let tricky = "quote \" backslash \\ newline \n tab \t nul-ish \u{1} é 🚀";
        let big: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let rows = [
            message("msg_1", br#"{"a":"b \" c"}"#, Some(tricky)),
            message("msg_2", b"", None),
            message("msg_3", &big, None),
        ];
        let session = Session::begin(&db).await.unwrap();
        let returned = session
            .commit(vec![
                hot::data::insert_messages(backend, &rows),
                hot::data::insert_fanouts(
                    backend,
                    &[
                        fanout("msg_1", 10, Some(20)),
                        fanout("msg_2", 11, None),
                        fanout("msg_3", 12, None),
                    ],
                ),
                hot::data::delete_fanouts(backend, ["msg_2", "msg_404"]),
                hot::data::insert_outbox(backend, vec![1, 2, 3], 99),
            ])
            .await
            .unwrap();
        let seq: i64 = returned[0].try_get("", "seq").unwrap();

        let stored = data::message::Entity::find().all(&db).await.unwrap();
        assert_eq!(stored.len(), 3);
        for (row, want) in stored.iter().zip(&rows) {
            assert_eq!(row.id, want.id);
            assert_eq!(row.envelope, want.envelope, "{} on {backend:?}", want.id);
            assert_eq!(row.idempotency_key.as_deref(), want.idempotency_key);
            assert_eq!(row.traceparent.as_deref(), want.traceparent);
            assert_eq!(row.tracestate, None);
            assert_eq!(row.create_ms, want.create_ms);
            assert_eq!(row.subscription_ids.as_deref(), Some("sub_a,sub_b"));
        }
        let fanouts = data::fanout::Entity::find().all(&db).await.unwrap();
        let fanouts: Vec<(String, String, i64, Option<i64>)> = fanouts
            .into_iter()
            .map(|f| (f.message_id, f.workspace_id, f.due_ms, f.lease_until_ms))
            .collect();
        assert_eq!(
            fanouts,
            [
                ("msg_1".to_owned(), "wrk_1".to_owned(), 10, Some(20)),
                ("msg_3".to_owned(), "wrk_1".to_owned(), 12, None)
            ]
        );
        let outbox = data::outbox::Entity::find().all(&db).await.unwrap();
        assert_eq!(outbox.len(), 1);
        assert_eq!(
            (outbox[0].seq, outbox[0].body.clone()),
            (seq, vec![1, 2, 3])
        );

        // Deleting acked rows, in the next cycle.
        let session = Session::begin(&db).await.unwrap();
        session
            .commit(vec![hot::data::delete_outbox(backend, &[seq, seq + 100])])
            .await
            .unwrap();
        assert!(
            data::outbox::Entity::find()
                .all(&db)
                .await
                .unwrap()
                .is_empty()
        );
        db.close().await.unwrap();
        fresh.drop_database().await;
    }
}

#[tokio::test]
async fn row_parameters_read_back_as_the_values_given() {
    // Strings of every header size form (up to 11 bytes in the header byte, then 1, 2 and 4
    // size bytes), characters JSON text escapes, a NUL, integers at both ends, booleans,
    // nulls.
    let long = |n: usize| "é".repeat(n / 2);
    let strings = [
        String::new(),
        "quote \" backslash \\ newline \n tab \t \u{1} nul \0 é 🚀".to_owned(),
        "x".repeat(11),
        "x".repeat(12),
        long(300),
        long(70_000),
    ];
    for kind in backends() {
        let fresh = TestDatabase::create(&kind).await;
        let db = fresh.open(Plane::Data).await;
        let backend = db.get_database_backend();
        let mut rows = hot::JsonRows::new(backend);
        let mut expected = Vec::new();
        for (i, text) in strings.iter().enumerate() {
            let number = [i64::MIN, -1, 0, 7, 1 << 40, i64::MAX][i];
            rows.row()
                .str(text)
                .int(number)
                .opt_int(None)
                .opt_str(None)
                .bool(i % 2 == 0)
                .opt_str(Some("last"));
            // A NUL is stored as U+FFFD on both backends (PostgreSQL's text cannot hold it).
            expected.push(serde_json::json!([
                text.replace('\0', "\u{fffd}"),
                number,
                null,
                null,
                i % 2 == 0,
                "last"
            ]));
        }
        let sql = match backend {
            DbBackend::Postgres => "SELECT ($1::jsonb)::text AS j",
            _ => "SELECT json(?) AS j",
        };
        let row = db
            .query_one_raw(sea_orm::Statement::from_sql_and_values(
                backend,
                sql,
                [rows.finish()],
            ))
            .await
            .unwrap()
            .unwrap();
        let text: String = row.try_get("", "j").unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed, serde_json::Value::Array(expected), "on {backend:?}");
        db.close().await.unwrap();
        fresh.drop_database().await;
    }
}

#[tokio::test]
async fn a_failed_session_stores_nothing_and_its_connection_goes_on() {
    for kind in backends() {
        let fresh = TestDatabase::create(&kind).await;
        let db = fresh.open(Plane::Data).await;
        let backend = db.get_database_backend();
        let first = [message("msg_1", b"{}", Some("order-1"))];
        let session = Session::begin(&db).await.unwrap();
        session
            .commit(vec![hot::data::insert_messages(backend, &first)])
            .await
            .unwrap();

        // A sea-orm write through the session, then a statement that breaks the
        // idempotency key's uniqueness: the commit fails, as a unique violation, and the
        // earlier write of the session is gone too.
        let session = Session::begin(&db).await.unwrap();
        data::fanout::Entity::insert(data::fanout::ActiveModel {
            message_id: sea_orm::Set("msg_9".to_owned()),
            workspace_id: sea_orm::Set("wrk_1".to_owned()),
            due_ms: sea_orm::Set(1),
            lease_until_ms: sea_orm::Set(None),
        })
        .exec_without_returning(&session)
        .await
        .unwrap();
        let again = [message("msg_2", b"{}", Some("order-1"))];
        let err = session
            .commit(vec![hot::data::insert_messages(backend, &again)])
            .await
            .unwrap_err();
        assert!(is_unique_violation(&err), "{err:?} on {backend:?}");
        assert_eq!(
            data::message::Entity::find().all(&db).await.unwrap().len(),
            1
        );
        assert!(
            data::fanout::Entity::find()
                .all(&db)
                .await
                .unwrap()
                .is_empty()
        );

        // An explicit rollback, then the (single, on SQLite) connection works as before.
        let session = Session::begin(&db).await.unwrap();
        session
            .run(vec![hot::data::insert_fanouts(
                backend,
                &[fanout("msg_8", 1, None)],
            )])
            .await
            .unwrap();
        session.rollback().await;
        let session = Session::begin(&db).await.unwrap();
        session
            .commit(vec![hot::data::insert_fanouts(
                backend,
                &[fanout("msg_7", 1, None)],
            )])
            .await
            .unwrap();
        let left: Vec<String> = data::fanout::Entity::find()
            .all(&db)
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.message_id)
            .collect();
        assert_eq!(left, ["msg_7"]);
        db.close().await.unwrap();
        fresh.drop_database().await;
    }
}

fn attempt<'a>(id: &'a str, ms: i64, success: bool) -> hot::control::AttemptRow<'a> {
    hot::control::AttemptRow {
        id,
        workspace_id: "wrk_1",
        message_id: "msg_1",
        subscription_id: "sub_a",
        event_type: "a.b",
        attempt_number: 1,
        attempt_ms: ms,
        success,
        status_code: if success { 200 } else { 500 },
        error_kind: if success { "" } else { "http_status" },
        error_message: "HTTP 500 \"oops\"",
        latency_us: 1234,
        response_excerpt: "{\"ok\":false}\n",
        trigger: "scheduled",
        url: "https://example.com/hook?x=1",
    }
}

/// A receiver's answer may hold NUL bytes, which no PostgreSQL text column (nor its JSON
/// functions) accepts: stored as they were, they failed the whole batch of the delivery
/// log, every time the batch was sent again.
#[tokio::test]
async fn a_nul_from_a_receiver_is_stored_as_a_replacement_character() {
    for kind in backends() {
        let fresh = TestDatabase::create(&kind).await;
        let db = fresh.open(Plane::Control).await;
        let backend = db.get_database_backend();
        let mut row = attempt("att_nul", 5, false);
        row.response_excerpt = "binary\0body\0";
        row.error_message = "HTTP 500 \0";
        let session = Session::begin(&db).await.unwrap();
        session
            .commit(vec![hot::control::insert_attempts(backend, &[row])])
            .await
            .unwrap_or_else(|e| panic!("on {backend:?}: {e}"));
        let stored = sluice_store::control::attempt::Entity::find()
            .all(&db)
            .await
            .unwrap();
        assert_eq!(stored.len(), 1, "on {backend:?}");
        assert_eq!(stored[0].response_excerpt, "binary\u{fffd}body\u{fffd}");
        assert_eq!(stored[0].error_message, "HTTP 500 \u{fffd}");
        db.close().await.unwrap();
        fresh.drop_database().await;
    }
}

/// The log's record of `msg_1`.
fn log_message() -> hot::control::MessageRow<'static> {
    hot::control::MessageRow {
        id: "msg_1",
        workspace_id: "wrk_1",
        event_type: "a.b",
        create_ms: 1,
        delivery_count: 1,
        ordering_key: None,
    }
}

fn delivery<'a>(status: &'a str, last: Option<i64>) -> hot::control::DeliveryRow<'a> {
    hot::control::DeliveryRow {
        message_id: "msg_1",
        subscription_id: "sub_a",
        workspace_id: "wrk_1",
        event_type: "a.b",
        status,
        attempt_count: i64::from(last.is_some()),
        last_attempt_ms: last,
        next_attempt_ms: None,
        last_status_code: 0,
        last_error_kind: "",
        create_ms: 1,
    }
}

/// What a batch adds to `sub_a`'s health.
fn health(
    consecutive_failures: i64,
    last_success_ms: Option<i64>,
    last_failure_ms: Option<i64>,
) -> hot::control::HealthRow<'static> {
    hot::control::HealthRow {
        subscription_id: "sub_a",
        workspace_id: "wrk_1",
        consecutive_failures,
        last_success_ms,
        last_failure_ms,
        concurrency_limit: None,
    }
}

async fn one_i64(db: &DatabaseConnection, sql: &str) -> i64 {
    db.query_one_raw(sea_orm::Statement::from_string(
        db.get_database_backend(),
        sql.to_owned(),
    ))
    .await
    .unwrap()
    .unwrap()
    .try_get_by_index::<i64>(0)
    .unwrap()
}

#[tokio::test]
async fn log_statements_ignore_repeats_and_keep_the_latest_state() {
    for kind in backends() {
        let fresh = TestDatabase::create(&kind).await;
        let db = fresh.open(Plane::Control).await;
        let backend = db.get_database_backend();
        let ids = |rows: Vec<sea_orm::QueryResult>| -> Vec<String> {
            let mut ids: Vec<String> = rows
                .into_iter()
                .map(|r| r.try_get("", "id").unwrap())
                .collect();
            ids.sort();
            ids
        };
        let session = Session::begin(&db).await.unwrap();
        let first = session
            .run(vec![
                hot::control::insert_messages(backend, &[log_message()]),
                hot::control::existing_attempts(backend, ["att_1", "att_2"]),
                hot::control::insert_attempts(
                    backend,
                    &[attempt("att_1", 10, false), attempt("att_2", 20, true)],
                ),
            ])
            .await
            .unwrap();
        assert!(ids(first).is_empty(), "nothing was stored before");
        session
            .commit(vec![
                hot::control::upsert_deliveries(backend, &[delivery("succeeded", Some(20))]),
                hot::control::upsert_health(backend, &[health(2, None, Some(20))]),
            ])
            .await
            .unwrap();

        // The same batch again: no attempt is new, and a state older than the stored one
        // (or one without an attempt) changes nothing.
        let session = Session::begin(&db).await.unwrap();
        let again = session
            .run(vec![
                hot::control::existing_attempts(backend, ["att_1", "att_3"]),
                hot::control::insert_attempts(
                    backend,
                    &[attempt("att_1", 10, false), attempt("att_3", 30, false)],
                ),
            ])
            .await
            .unwrap();
        assert_eq!(ids(again), ["att_1"], "only the repeat was stored before");
        session
            .commit(vec![
                hot::control::upsert_deliveries(backend, &[delivery("failed", Some(15))]),
                hot::control::upsert_deliveries(backend, &[delivery("pending", None)]),
                hot::control::upsert_health(backend, &[health(1, None, Some(30))]),
            ])
            .await
            .unwrap();
        let status = db
            .query_one_raw(sea_orm::Statement::from_string(
                backend,
                "SELECT status FROM deliveries".to_owned(),
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get_by_index::<String>(0)
            .unwrap();
        assert_eq!(status, "succeeded");
        assert_eq!(one_i64(&db, "SELECT COUNT(*) FROM attempts").await, 3);
        assert_eq!(one_i64(&db, "SELECT COUNT(*) FROM messages").await, 1);
        let message = db
            .query_one_raw(sea_orm::Statement::from_string(
                backend,
                "SELECT error_message, response_excerpt, url FROM attempts WHERE id = 'att_1'"
                    .to_owned(),
            ))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            message.try_get::<String>("", "error_message").unwrap(),
            "HTTP 500 \"oops\""
        );
        assert_eq!(
            message.try_get::<String>("", "response_excerpt").unwrap(),
            "{\"ok\":false}\n"
        );
        // Failures add up until a success restarts the count.
        assert_eq!(
            one_i64(&db, "SELECT consecutive_failures FROM endpoint_health").await,
            3
        );
        let session = Session::begin(&db).await.unwrap();
        session
            .commit(vec![hot::control::upsert_health(
                backend,
                &[health(0, Some(40), None)],
            )])
            .await
            .unwrap();
        assert_eq!(
            one_i64(&db, "SELECT consecutive_failures FROM endpoint_health").await,
            0
        );
        assert_eq!(
            one_i64(&db, "SELECT last_failure_ms FROM endpoint_health").await,
            30
        );
        assert!(matches!(backend, DbBackend::Sqlite | DbBackend::Postgres));
        db.close().await.unwrap();
        fresh.drop_database().await;
    }
}

/// The delivery log's indexes, by name: what the keys migration drops and brings back.
async fn log_indexes(db: &DatabaseConnection) -> Vec<String> {
    let sql = match db.get_database_backend() {
        DbBackend::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL \
             AND tbl_name IN ('messages', 'deliveries') ORDER BY name"
        }
        _ => {
            "SELECT indexname AS name FROM pg_indexes WHERE tablename IN ('messages', 'deliveries') \
             AND indexname LIKE 'idx_%' ORDER BY indexname"
        }
    };
    db.query_all_raw(sea_orm::Statement::from_string(
        db.get_database_backend(),
        sql.to_owned(),
    ))
    .await
    .unwrap()
    .into_iter()
    .map(|r| r.try_get::<String>("", "name").unwrap())
    .collect()
}

#[tokio::test]
async fn the_log_keys_migration_keeps_the_rows_and_goes_down_again() {
    use sluice_migration::{ControlMigrator, MigratorTrait};
    for kind in backends() {
        let fresh = TestDatabase::create(&kind).await;
        let db = Database::connect(fresh.url.as_str()).await.unwrap();
        let backend = db.get_database_backend();
        ControlMigrator::up(&db, Some(2)).await.unwrap();
        for sql in [
            "INSERT INTO messages VALUES ('msg_1', 'wrk_1', 'a.b', 1, 1)",
            "INSERT INTO deliveries VALUES ('msg_1', 'sub_a', 'wrk_1', 'a.b', 'pending', 0, NULL, 1, 0, '', 1)",
        ] {
            db.execute_unprepared(sql).await.unwrap();
        }
        let before = log_indexes(&db).await;
        assert_eq!(
            before,
            [
                "idx_deliveries_workspace_id_message_id",
                "idx_deliveries_workspace_id_subscription_id_status",
                "idx_messages_workspace_id_id"
            ]
        );

        // m0003 alone (the later ones have tests of their own).
        ControlMigrator::up(&db, Some(1)).await.unwrap();
        assert_eq!(
            log_indexes(&db).await,
            ["idx_deliveries_workspace_id_subscription_id_status"],
            "the keys replace the other two"
        );
        // The hot path's upserts name the new keys: the same message and a later state of
        // the delivery land on the rows already there.
        let session = Session::begin(&db).await.unwrap();
        session
            .commit(vec![
                hot::control::insert_messages(backend, &[log_message()]),
                hot::control::upsert_deliveries(backend, &[delivery("succeeded", Some(20))]),
            ])
            .await
            .unwrap();
        assert_eq!(one_i64(&db, "SELECT COUNT(*) FROM messages").await, 1);
        assert_eq!(one_i64(&db, "SELECT COUNT(*) FROM deliveries").await, 1);
        assert_eq!(
            one_i64(&db, "SELECT CAST(attempt_count AS BIGINT) FROM deliveries").await,
            1,
            "the upsert updated the stored row"
        );
        // A duplicate key is refused, so the keys are real.
        let duplicate = db
            .execute_unprepared("INSERT INTO messages VALUES ('msg_1', 'wrk_1', 'a.b', 2, 1)")
            .await
            .unwrap_err();
        assert!(is_unique_violation(&duplicate), "{duplicate}");

        ControlMigrator::down(&db, Some(1)).await.unwrap();
        assert_eq!(log_indexes(&db).await, before);
        assert_eq!(one_i64(&db, "SELECT COUNT(*) FROM messages").await, 1);
        assert_eq!(one_i64(&db, "SELECT COUNT(*) FROM deliveries").await, 1);
        db.close().await.unwrap();
        fresh.drop_database().await;
    }
}

/// The plan of `statement` as text, one line per row (PostgreSQL's `EXPLAIN`, SQLite's
/// `EXPLAIN QUERY PLAN`).
async fn plan_of(db: &DatabaseConnection, statement: sea_orm::Statement) -> String {
    let backend = db.get_database_backend();
    let explain = match backend {
        DbBackend::Postgres => "EXPLAIN",
        _ => "EXPLAIN QUERY PLAN",
    };
    let statement = sea_orm::Statement {
        sql: format!("{explain} {}", statement.sql),
        ..statement
    };
    db.query_all_raw(statement)
        .await
        .unwrap()
        .into_iter()
        .map(|row| match backend {
            DbBackend::Postgres => row.try_get::<String>("", "QUERY PLAN").unwrap(),
            _ => row.try_get::<String>("", "detail").unwrap(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The control plane asks which attempts of every resent batch (every batch, on
/// PostgreSQL) it stored before. That must probe the primary key, never read the log
/// whole: as `id IN (SELECT ... json_array_elements_text(...))` PostgreSQL planned a full
/// scan with a hash join for a table of 10,000 rows (and kept such a plan cached while the
/// table grew; a 100,000-event bench read 3.3 million rows that way).
#[tokio::test]
async fn asking_for_stored_attempts_probes_the_key_at_any_size() {
    for kind in backends() {
        let fresh = TestDatabase::create(&kind).await;
        let db = fresh.open(Plane::Control).await;
        let backend = db.get_database_backend();
        let stored: Vec<String> = (0..10_000).map(|i| format!("att_{i:026}")).collect();
        let rows: Vec<hot::control::AttemptRow> =
            stored.iter().map(|id| attempt(id, 1, true)).collect();
        let session = Session::begin(&db).await.unwrap();
        session
            .commit(vec![hot::control::insert_attempts(backend, &rows)])
            .await
            .unwrap();
        db.execute_unprepared("ANALYZE attempts").await.unwrap();

        let ask =
            hot::control::existing_attempts(backend, ["att_00000000000000000000000007", "att_new"]);
        let plan = plan_of(&db, ask.clone()).await;
        assert!(
            !plan.contains("Seq Scan on attempts") && !plan.contains("SCAN attempts"),
            "{backend:?} reads the whole log:\n{plan}"
        );
        let found: Vec<String> = db
            .query_all_raw(ask)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.try_get("", "id").unwrap())
            .collect();
        assert_eq!(found, ["att_00000000000000000000000007"]);
        db.close().await.unwrap();
        fresh.drop_database().await;
    }
}

/// PostgreSQL plans every execution for the tables as they are (see `sluice_store::open`):
/// a generic plan kept from when `dp_fanout` was one page scanned it whole on most cycles.
#[tokio::test]
async fn postgres_connections_plan_each_execution() {
    for kind in backends() {
        let fresh = TestDatabase::create(&kind).await;
        let db = fresh.open(Plane::Data).await;
        if db.get_database_backend() == DbBackend::Postgres {
            let mode: String = db
                .query_one_raw(sea_orm::Statement::from_string(
                    DbBackend::Postgres,
                    "SHOW plan_cache_mode",
                ))
                .await
                .unwrap()
                .unwrap()
                .try_get_by_index(0)
                .unwrap();
            assert_eq!(mode, "force_custom_plan");
        }
        db.close().await.unwrap();
        fresh.drop_database().await;
    }
}

#[tokio::test]
async fn logged_attempts_get_increasing_positions_and_repeats_keep_theirs() {
    for kind in backends() {
        let fresh = TestDatabase::create(&kind).await;
        let db = fresh.open(Plane::Control).await;
        let backend = db.get_database_backend();
        for batch in [
            vec![attempt("att_1", 1, true), attempt("att_2", 2, false)],
            // A resend of att_2 with a new one: att_2 keeps its position.
            vec![attempt("att_2", 2, false), attempt("att_3", 3, true)],
        ] {
            let session = Session::begin(&db).await.unwrap();
            session
                .commit(vec![hot::control::insert_attempts(backend, &batch)])
                .await
                .unwrap_or_else(|e| panic!("on {backend:?}: {e}"));
        }
        let mut stored = sluice_store::control::attempt::Entity::find()
            .all(&db)
            .await
            .unwrap();
        stored.sort_by(|a, b| a.id.cmp(&b.id));
        let positions: Vec<(i64, i64)> = stored
            .iter()
            .map(|a| (a.log_txid.unwrap(), a.log_seq.unwrap()))
            .collect();
        assert_eq!(positions.len(), 3, "on {backend:?}");
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "on {backend:?}: positions follow the order of the commits: {positions:?}"
        );
        // The first batch's two attempts share its transaction (PostgreSQL) and have
        // their own numbers.
        assert_eq!(positions[0].0, positions[1].0, "on {backend:?}");
        assert_ne!(positions[0].1, positions[1].1, "on {backend:?}");
        db.close().await.unwrap();
        fresh.drop_database().await;
    }
}
