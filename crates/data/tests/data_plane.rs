//! The data plane on its own, with a stand-in control plane (`control_peer`): what only
//! shows from inside the outcome stream, or across restarts of the data plane, or with
//! several replicas. Real database, real HTTP receiver, real gRPC on both sides. Each test
//! runs on SQLite and, when `SLUICE_TEST_DATABASE_URL` is set, on PostgreSQL too. What a
//! publisher and an operator see through both real planes is tested in `tests/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod control_peer;

use std::time::Duration;

use control_peer::*;
use sluice_core::retry::RetrySchedule;
use sluice_proto::control::v1::{DeliveryStatus, DisabledReason, WatchConfigResponse};
use sluice_proto::data::v1::{PublishRequest, PublishResponse};
use sluice_store::Plane;
use sluice_testkit::data::DataHarness;
use sluice_testkit::receiver::{Receiver, Reply};
use sluice_testkit::{Backend, TestDatabase, WAIT, authed, backends, count_rows, free_addr};
use tonic::Code;

fn event(payload: &str) -> PublishRequest {
    PublishRequest {
        event_type: "conversation.created".to_owned(),
        payload_json: payload.to_owned(),
        ..Default::default()
    }
}

/// Publishes one `event(payload)` with `key` over a new connection; panics if refused.
async fn publish(plane: &DataHarness, payload: &str, key: &str) -> PublishResponse {
    plane
        .ingest()
        .await
        .publish(authed(event(payload), key))
        .await
        .unwrap()
        .into_inner()
}

impl OneHook {
    /// Publishes `payload`, waits for it at the receiver, and returns the attempt's id as
    /// the control plane got it.
    async fn delivered(&mut self, payload: &str) -> String {
        let response = publish(&self.plane, payload, &self.workspace.key).await;
        self.receiver.next().await;
        let outcome = self.control.next_attempt(&response.message_id).await;
        outcome.attempt.expect("an outcome carries its attempt").id
    }

    /// Stops the plane and the control plane and drops the database.
    async fn stop(self) {
        self.plane.stop().await;
        self.control.stop();
        self.db.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_failure_disables_the_subscription() {
    for backend in backends() {
        let OneHook {
            db,
            receiver,
            workspace,
            mut control,
            plane,
            ..
        } = OneHook::start(&backend, &[500; 10], |config| {
            config.retry = RetrySchedule::parse("0s,10ms,10ms,10ms,10ms,10ms").unwrap();
            config.disable_after_failed_attempts = Some(3);
        })
        .await;

        let response = publish(&plane, "{}", &workspace.key).await;
        let disabled = control.next_disabled().await;
        assert_eq!(disabled.reason, DisabledReason::PersistentFailure as i32);
        for _ in 0..3 {
            control.next_attempt(&response.message_id).await;
            receiver.next().await;
        }
        plane.stop().await;
        // Exactly three attempts were sent: no retry follows the disable.
        assert!(receiver.drain().is_empty());
        let conn = db.open(Plane::Data).await;
        assert_eq!(
            count_rows(&conn, "dp_deliveries WHERE status = 'failed'").await,
            1
        );
        control.stop();
        db.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_endpoint_does_not_delay_others() {
    for backend in backends() {
        let db = TestDatabase::create(&backend).await;
        let receiver = Receiver::ok().await;
        // Takes every request and never answers: the slowest endpoint there is.
        let hole = Receiver::start(Vec::new(), Reply::hang()).await;
        let workspace = Workspace::new("wrk_1");
        let (slow, _) = subscription("sub_slow", &workspace.id, &hole.url("/hook"));
        let (fast, secret) = subscription("sub_fast", &workspace.id, &receiver.url("/hook"));
        let control = FakeControl::start(snapshot(
            vec![slow, fast],
            vec![workspace.key_config.clone()],
        ))
        .await;
        let mut config = config(&control);
        config.endpoint_concurrency = 1;
        config.shutdown_grace = Duration::from_millis(200);
        let plane = DataHarness::start(db.open(Plane::Data).await, config).await;
        plane.wait_for_revision(1).await;
        let mut ingest = plane.ingest().await;

        let mut ids = Vec::new();
        for n in 0..5 {
            let response = ingest
                .publish(authed(event(&format!(r#"{{"n":{n}}}"#)), &workspace.key))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(response.delivery_count, 2);
            ids.push(response.message_id);
        }
        // Every event reaches the fast endpoint while the slow one holds its only slot.
        let mut got: Vec<String> = Vec::new();
        for _ in 0..5 {
            let request = receiver.next().await;
            request.verify(&secret).unwrap();
            got.push(request.header("webhook-id").to_owned());
        }
        got.sort();
        ids.sort();
        assert_eq!(got, ids);

        // Shutdown's grace ends with the slow attempt in flight: it is abandoned, and the
        // first attempts to the slow endpoint stay pending for the next start: each message
        // keeps its fan-out row. The fast endpoint's succeeded and needed no rows.
        plane.stop().await;
        let conn = db.open(Plane::Data).await;
        assert_eq!(count_rows(&conn, "dp_fanout").await, 5);
        assert_eq!(count_rows(&conn, "dp_deliveries").await, 0);
        control.stop();
        db.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_changes_and_restart_without_the_control_plane() {
    for backend in backends() {
        let db = TestDatabase::create(&backend).await;
        let receiver = Receiver::ok().await;
        let workspace = Workspace::new("wrk_1");
        let control = FakeControl::start(snapshot(vec![], vec![])).await;
        let plane = DataHarness::start(db.open(Plane::Data).await, config(&control)).await;
        plane.wait_for_revision(1).await;
        let mut ingest = plane.ingest().await;
        let status = ingest
            .publish(authed(event("{}"), &workspace.key))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);

        // A key and a subscription arrive as a change.
        let (mut sub, secret) = subscription("sub_1", &workspace.id, &receiver.url("/hook"));
        sub.filters = vec!["conversation.*".into()];
        control.push_change(WatchConfigResponse {
            revision: 2,
            upserted_subscriptions: vec![sub],
            upserted_api_keys: vec![workspace.key_config.clone()],
            ..Default::default()
        });
        plane.wait_for_revision(2).await;
        let response = ingest
            .publish(authed(event("{}"), &workspace.key))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.delivery_count, 1);
        receiver.next().await.verify(&secret).unwrap();
        let other_event = PublishRequest {
            event_type: "call.handled".into(),
            ..event("{}")
        };
        let response = ingest
            .publish(authed(other_event, &workspace.key))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.delivery_count, 0, "the filter holds");
        plane.stop().await;

        // The control plane goes away; the persisted copy still authenticates and delivers.
        control.stop();
        let mut config = config(&control);
        config.control_endpoint = "http://127.0.0.1:9".to_owned();
        let plane = DataHarness::start(db.open(Plane::Data).await, config).await;
        plane.wait_for_revision(2).await;
        let response = publish(&plane, "{}", &workspace.key).await;
        assert_eq!(response.delivery_count, 1);
        let got = receiver.next().await;
        assert_eq!(got.header("webhook-id"), response.message_id);
        got.verify(&secret).unwrap();
        plane.stop().await;
        let conn = db.open(Plane::Data).await;
        // Unacked outcomes wait in the outbox for the control plane.
        assert!(count_rows(&conn, "dp_outbox").await > 0);
        db.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_wait_for_the_control_plane() {
    for backend in backends() {
        let db = TestDatabase::create(&backend).await;
        let receiver = Receiver::ok().await;
        let workspace = Workspace::new("wrk_1");
        let (sub, _) = subscription("sub_1", &workspace.id, &receiver.url("/hook"));
        let first_control = FakeControl::start(snapshot(
            vec![sub.clone()],
            vec![workspace.key_config.clone()],
        ))
        .await;
        let plane = DataHarness::start(db.open(Plane::Data).await, config(&first_control)).await;
        plane.wait_for_revision(1).await;
        plane.stop().await;
        first_control.stop();

        // Start with the control plane down: events are taken and delivered all the same.
        let control_addr = free_addr();
        let mut config = config(&first_control);
        config.control_endpoint = format!("http://{control_addr}");
        let plane = DataHarness::start(db.open(Plane::Data).await, config).await;
        let response = publish(&plane, "{}", &workspace.key).await;
        receiver.next().await;

        // The control plane comes up: the outbox drains to it and the config watch resumes.
        let (other, _) = subscription("sub_2", &workspace.id, &receiver.url("/other"));
        let mut pieces = snapshot(vec![sub], vec![workspace.key_config.clone()]);
        pieces.push(WatchConfigResponse {
            revision: 2,
            upserted_subscriptions: vec![other],
            ..Default::default()
        });
        let mut control = FakeControl::start_on(control_addr, pieces).await;
        let message = control.next_message(&response.message_id).await;
        assert_eq!(message.subscription_ids, ["sub_1"]);
        let outcome = control.next_attempt(&response.message_id).await;
        assert_eq!(outcome.delivery_status, DeliveryStatus::Succeeded as i32);
        plane.wait_for_revision(2).await;
        let response = publish(&plane, "{}", &workspace.key).await;
        assert_eq!(response.delivery_count, 2);
        plane.stop().await;
        control.stop();
        db.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_retries_survive_a_restart() {
    for backend in backends() {
        let OneHook {
            db,
            receiver,
            workspace,
            secret,
            mut control,
            config,
            plane,
        } = OneHook::start(&backend, &[503], |config| {
            // The retry is far enough out to wait in the database, not in memory.
            config.retry = RetrySchedule::parse("0s,2m").unwrap();
        })
        .await;
        let response = publish(&plane, "{}", &workspace.key).await;
        receiver.next().await;
        let outcome = control.next_attempt(&response.message_id).await;
        assert_eq!(outcome.delivery_status, DeliveryStatus::Pending as i32);
        assert!(outcome.next_attempt_time.is_some());
        plane.stop().await;

        // Make the stored retry due now, then start again: it is found and sent.
        let conn = db.open(Plane::Data).await;
        sea_orm::ConnectionTrait::execute_unprepared(
            &conn,
            "UPDATE dp_deliveries SET next_attempt_ms = 0",
        )
        .await
        .unwrap();
        let plane = DataHarness::start(conn, config).await;
        let got = receiver.next().await;
        assert_eq!(got.header("webhook-id"), response.message_id);
        got.verify(&secret).unwrap();
        let outcome = control.next_attempt(&response.message_id).await;
        let attempt = outcome.attempt.unwrap();
        assert_eq!(attempt.attempt_number, 2);
        assert!(attempt.success);
        plane.stop().await;
        control.stop();
        db.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_attempts_survive_a_restart_and_messages_are_reported_without_them() {
    for backend in backends() {
        let db = TestDatabase::create(&backend).await;
        let receiver = Receiver::ok().await;
        let workspace = Workspace::new("wrk_1");
        let (a, secret_a) = subscription("sub_a", &workspace.id, &receiver.url("/a"));
        let (b, secret_b) = subscription("sub_b", &workspace.id, &receiver.url("/b"));
        let mut control =
            FakeControl::start(snapshot(vec![a, b], vec![workspace.key_config.clone()])).await;
        let mut config = config(&control);
        // First attempts wait two minutes: they are on timers when the plane stops.
        config.retry = RetrySchedule::parse("2m,5s").unwrap();
        let plane = DataHarness::start(db.open(Plane::Data).await, config.clone()).await;
        plane.wait_for_revision(1).await;
        let mut ingest = plane.ingest().await;
        let mut ids = Vec::new();
        for n in 0..3 {
            let response = ingest
                .publish(authed(event(&format!(r#"{{"n":{n}}}"#)), &workspace.key))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(response.delivery_count, 2);
            ids.push(response.message_id);
        }
        // No attempt has concluded, yet the control plane hears of every message (after
        // the report delay) with both subscriptions.
        for id in &ids {
            let record = control.next_message(id).await;
            assert_eq!(record.subscription_ids, ["sub_a", "sub_b"]);
        }
        plane.stop().await;
        assert!(receiver.drain().is_empty());

        // Each message kept one fan-out row for its two first attempts; made due now, they
        // are found at the next start and made, once each.
        let conn = db.open(Plane::Data).await;
        assert_eq!(count_rows(&conn, "dp_fanout").await, 3);
        assert_eq!(count_rows(&conn, "dp_deliveries").await, 0);
        sea_orm::ConnectionTrait::execute_unprepared(&conn, "UPDATE dp_fanout SET due_ms = 0")
            .await
            .unwrap();
        let plane = DataHarness::start(conn, config).await;
        let mut got = Vec::new();
        for _ in 0..6 {
            let request = receiver.next().await;
            let secret = if request.path == "/a" {
                &secret_a
            } else {
                &secret_b
            };
            request.verify(secret).unwrap();
            got.push((
                request.path.clone(),
                request.header("webhook-id").to_owned(),
            ));
        }
        got.sort();
        let mut want: Vec<(String, String)> = ids
            .iter()
            .flat_map(|id| [("/a".to_owned(), id.clone()), ("/b".to_owned(), id.clone())])
            .collect();
        want.sort();
        assert_eq!(got, want);
        for id in &ids {
            for _ in 0..2 {
                let attempt = control.next_attempt(id).await.attempt.unwrap();
                assert_eq!(attempt.attempt_number, 1);
                assert!(attempt.success);
            }
        }
        plane.stop().await;
        let conn = db.open(Plane::Data).await;
        assert_eq!(count_rows(&conn, "dp_fanout").await, 0);
        assert_eq!(count_rows(&conn, "dp_deliveries").await, 0);
        assert!(receiver.drain().is_empty(), "nothing delivered twice");
        control.stop();
        db.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_postgres_never_send_a_delivery_twice() {
    for backend in backends() {
        if matches!(backend, Backend::Sqlite) {
            // SQLite is one process by design; leases only matter with several replicas.
            continue;
        }
        const EVENTS: usize = 40;
        let db = TestDatabase::create(&backend).await;
        let receiver = Receiver::start(vec![Reply::status(500); EVENTS], Reply::status(200)).await;
        let workspace = Workspace::new("wrk_1");
        let (sub, _) = subscription("sub_1", &workspace.id, &receiver.url("/hook"));
        let mut control =
            FakeControl::start(snapshot(vec![sub], vec![workspace.key_config.clone()])).await;
        let mut config = config(&control);
        config.retry = RetrySchedule::parse("0s,2m").unwrap();
        // Forty failures in a row would open the breaker; this test is about leases.
        config.circuit_breaker_failures = 0;
        let first = DataHarness::start(db.open(Plane::Data).await, config.clone()).await;
        let second = DataHarness::start(db.open(Plane::Data).await, config).await;
        first.wait_for_revision(1).await;
        second.wait_for_revision(1).await;

        let mut ids = Vec::new();
        let mut ingest = first.ingest().await;
        for _ in 0..EVENTS {
            let response = ingest
                .publish(authed(event("{}"), &workspace.key))
                .await
                .unwrap()
                .into_inner();
            ids.push(response.message_id);
        }
        for id in &ids {
            let outcome = control.next_attempt(id).await;
            assert_eq!(outcome.delivery_status, DeliveryStatus::Pending as i32);
        }
        assert_eq!(receiver.drain().len(), EVENTS);

        // Every retry comes due at once; both replicas' scanners race for them.
        let conn = db.open(Plane::Data).await;
        sea_orm::ConnectionTrait::execute_unprepared(
            &conn,
            "UPDATE dp_deliveries SET next_attempt_ms = 0",
        )
        .await
        .unwrap();
        for id in &ids {
            let outcome = control.next_attempt(id).await;
            assert_eq!(outcome.delivery_status, DeliveryStatus::Succeeded as i32);
        }
        first.stop().await;
        second.stop().await;
        let retries = receiver.drain();
        assert_eq!(retries.len(), EVENTS, "each retry sent exactly once");
        let mut seen: Vec<String> = retries
            .iter()
            .map(|r| r.header("webhook-id").to_owned())
            .collect();
        seen.sort();
        ids.sort();
        assert_eq!(seen, ids);
        control.stop();
        db.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_refuses_new_publishes() {
    for backend in backends() {
        let db = TestDatabase::create(&backend).await;
        let workspace = Workspace::new("wrk_1");
        let control =
            FakeControl::start(snapshot(vec![], vec![workspace.key_config.clone()])).await;
        let plane = DataHarness::start(db.open(Plane::Data).await, config(&control)).await;
        plane.wait_for_revision(1).await;
        let mut ingest = plane.ingest().await;
        ingest
            .publish(authed(event("{}"), &workspace.key))
            .await
            .unwrap();

        // Only the data plane is told to stop; the gRPC server still answers.
        plane.shutdown.cancel();
        let status = ingest
            .publish(authed(event("{}"), &workspace.key))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        tokio::time::timeout(WAIT, plane.plane.clone().drained())
            .await
            .unwrap();
        plane.stop().await;
        let conn = db.open(Plane::Data).await;
        assert_eq!(count_rows(&conn, "dp_messages").await, 1);
        control.stop();
        db.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_batch_is_a_first_send_on_sqlite_only() {
    for backend in backends() {
        let postgres = matches!(backend, Backend::Postgres(_));
        let mut hook = OneHook::start(&backend, &[], |_| {}).await;
        // The first event's outcome arriving shows the outcome stream is up: rows
        // committed before a stream begins may have been sent on an earlier one, so only
        // later rows can be first sends.
        hook.delivered("{}").await;
        // SQLite has one replica: a batch straight from the writer's commit was never sent
        // and says so. On PostgreSQL another replica may send the same rows, read from the
        // table, so no batch may say it. The reporter also reads the table once a second,
        // and a row it reads there before the writer's feed hands it over goes as a
        // possible repeat: so three events, of which on SQLite at least one must come
        // straight from the feed.
        let mut first_sends = Vec::new();
        for _ in 0..3 {
            let attempt_id = hook.delivered("{}").await;
            first_sends.push(hook.control.first_send_of_attempt(&attempt_id));
        }
        assert!(
            first_sends.iter().all(Option::is_some),
            "every attempt taken in: {first_sends:?}"
        );
        assert_eq!(
            first_sends.contains(&Some(true)),
            !postgres,
            "postgres: {postgres}, first_send of three batches: {first_sends:?}"
        );
        hook.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_ack_is_lost_is_sent_again_and_not_as_a_first_send() {
    for backend in backends() {
        let mut hook = OneHook::start(&backend, &[], |_| {}).await;
        // Stored by the control plane, but its ack never arrives: the stream ends.
        hook.control.lose_next_acks(1);
        let attempt_id = hook.delivered("{}").await;
        // After the reconnect the row is read back from the outbox and sent again; the
        // control plane must check it for repeats, so it may not say first_send.
        let first_send = hook.control.repeat_of_attempt(&attempt_id).await;
        assert!(!first_send);
        hook.stop().await;
    }
}
