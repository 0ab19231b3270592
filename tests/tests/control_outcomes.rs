//! The control plane's outcome intake (`DataPlaneService.ReportOutcomes`) as the data plane
//! drives it: a batch sent for the first time is stored whole in one go, and a batch sent
//! again after a lost ack (never marked `first_send`) counts nothing twice: not its
//! attempts, not the endpoint's failures.

#![allow(clippy::unwrap_used)]

use std::time::{SystemTime, UNIX_EPOCH};

use sluice_core::ids::{IdKind, new_id};
use sluice_proto::control::v1 as pb;
use sluice_testkit::{Bearer, ControlHarness, INTERNAL_TOKEN, backends};
use sluice_tests::control::*;
use sluice_tests::delivery::Log;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn now() -> prost_types::Timestamp {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    prost_types::Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap(),
        nanos: 0,
    }
}

/// One stream to the outcome intake, as the data plane opens it.
struct Reporter {
    requests: mpsc::Sender<pb::ReportOutcomesRequest>,
    acks: tonic::Streaming<pb::ReportOutcomesResponse>,
}

impl Reporter {
    async fn open(h: &ControlHarness) -> Reporter {
        let mut client = pb::data_plane_service_client::DataPlaneServiceClient::with_interceptor(
            h.channel().await,
            Bearer(Some(format!("Bearer {INTERNAL_TOKEN}").parse().unwrap())),
        );
        let (requests, rx) = mpsc::channel(4);
        let acks = client
            .report_outcomes(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Reporter { requests, acks }
    }

    /// Sends `batch` and waits for its ack: once acked, it is stored.
    async fn report(&mut self, batch: pb::ReportOutcomesRequest) {
        let id = batch.batch_id;
        self.requests.send(batch).await.unwrap();
        let ack = self.acks.message().await.unwrap().unwrap();
        assert_eq!(ack.batch_id, id);
    }
}

/// A failed first attempt of `message` to `subscription`, with a retry scheduled.
fn failed_attempt(
    message: &pb::MessageRecord,
    subscription_id: &str,
    number: u32,
) -> pb::AttemptOutcome {
    pb::AttemptOutcome {
        attempt: Some(pb::Attempt {
            id: new_id(IdKind::Attempt),
            message_id: message.id.clone(),
            subscription_id: subscription_id.to_owned(),
            workspace_id: message.workspace_id.clone(),
            event_type: message.event_type.clone(),
            attempt_number: number,
            attempt_time: Some(now()),
            success: false,
            status_code: 500,
            error_kind: "http_status".into(),
            error_message: "HTTP 500 Internal Server Error".into(),
            latency: Some(prost_types::Duration {
                seconds: 0,
                nanos: 2_000_000,
            }),
            response_excerpt: "boom".into(),
            trigger: pb::AttemptTrigger::Scheduled as i32,
            url: "http://127.0.0.1:9/x".into(),
        }),
        delivery_status: pb::DeliveryStatus::Pending as i32,
        next_attempt_time: Some(now()),
        retry_delay: None,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_first_send_is_stored_whole_and_a_resent_batch_counts_nothing_twice() {
    for backend in backends() {
        let h = ControlHarness::start(&backend, true, None).await;
        let (workspace_id, key) = h.workspace_with_key("Tideflow").await;
        let mut clients = h.clients(Some(&key)).await;
        let (sub, _) = create_subscription(
            &mut clients,
            &workspace_id,
            new_subscription("http://127.0.0.1:9/x", &["*"]),
        )
        .await;
        let message = pb::MessageRecord {
            id: new_id(IdKind::Message),
            workspace_id: workspace_id.clone(),
            event_type: "conversation.created".into(),
            create_time: Some(now()),
            subscription_ids: vec![sub.id.clone()],
            ordering_key: String::new(),
        };
        let first = pb::ReportOutcomesRequest {
            batch_id: 1,
            messages: vec![message.clone()],
            attempts: vec![failed_attempt(&message, &sub.id, 1)],
            first_send: true,
            ..Default::default()
        };
        let mut reporter = Reporter::open(&h).await;
        reporter.report(first.clone()).await;

        let log = Log::new(&clients);

        // The first send: message, attempt, delivery and health, all in one commit.
        let got = log.health(&sub.id).await;
        assert_eq!(got.consecutive_failures, 1, "{got:?}");
        assert_eq!(
            (got.attempts_24h, got.pending_deliveries),
            (1, 1),
            "{got:?}"
        );
        let logged = log.attempts_to(&sub.id).await;
        assert_eq!(logged.len(), 1, "{logged:?}");
        assert_eq!(logged[0].id, first.attempts[0].attempt.as_ref().unwrap().id);
        assert_eq!(
            (logged[0].status_code, logged[0].response_excerpt.as_str()),
            (500, "boom")
        );
        let messages = log.messages(pb::ListMessagesRequest::default()).await;
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert_eq!(messages[0].id, message.id);

        // The same batch again, as after a lost ack (a reconnect reads it back from the
        // outbox, so it is not a first send): nothing counts twice.
        let mut reporter = Reporter::open(&h).await;
        reporter
            .report(pb::ReportOutcomesRequest {
                batch_id: 2,
                first_send: false,
                ..first.clone()
            })
            .await;
        let got = log.health(&sub.id).await;
        assert_eq!(
            got.consecutive_failures, 1,
            "the repeat counted again: {got:?}"
        );
        assert_eq!(log.attempts_to(&sub.id).await.len(), 1);

        // A new failure still counts.
        reporter
            .report(pb::ReportOutcomesRequest {
                batch_id: 3,
                attempts: vec![failed_attempt(&message, &sub.id, 2)],
                first_send: true,
                ..Default::default()
            })
            .await;
        let got = log.health(&sub.id).await;
        assert_eq!(got.consecutive_failures, 2, "{got:?}");
        assert_eq!(
            (got.attempts_24h, got.pending_deliveries),
            (2, 1),
            "{got:?}"
        );
        let deliveries = log.deliveries(pb::ListDeliveriesRequest::default()).await;
        assert_eq!(deliveries.len(), 1, "{deliveries:?}");
        assert_eq!(deliveries[0].attempt_count, 2, "{deliveries:?}");

        drop(reporter);
        h.stop().await;
    }
}

/// Two control-plane replicas over one database storing the same resent batch at the same
/// moment (the data plane moved to the second after its stream to the first broke, while
/// the first was still storing): each attempt counts once in the endpoint's health. Asking
/// which attempts are stored cannot see the other transaction's uncommitted rows, so on
/// PostgreSQL only what an insert itself stored counts. Two streams to one process race
/// exactly as two processes do: each batch is its own transaction.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_stored_by_two_replicas_at_once_counts_once() {
    const ROUNDS: u32 = 20;
    const FAILURES: u32 = 5;
    for backend in backends() {
        let h = ControlHarness::start(&backend, true, None).await;
        let (workspace_id, key) = h.workspace_with_key("Tideflow").await;
        let mut clients = h.clients(Some(&key)).await;
        let (sub, _) = create_subscription(
            &mut clients,
            &workspace_id,
            new_subscription("http://127.0.0.1:9/x", &["*"]),
        )
        .await;
        let mut first = Reporter::open(&h).await;
        let mut second = Reporter::open(&h).await;
        for round in 0..ROUNDS {
            let message = pb::MessageRecord {
                id: new_id(IdKind::Message),
                workspace_id: workspace_id.clone(),
                event_type: "conversation.created".into(),
                create_time: Some(now()),
                subscription_ids: vec![sub.id.clone()],
                ordering_key: String::new(),
            };
            // The message first, as when its retries come in later batches: a batch that
            // carried it would have its second store wait on the first's uncommitted
            // message row, hiding the race.
            first
                .report(pb::ReportOutcomesRequest {
                    batch_id: u64::from(round) * 2 + 1,
                    messages: vec![message.clone()],
                    first_send: true,
                    ..Default::default()
                })
                .await;
            let batch = pb::ReportOutcomesRequest {
                batch_id: u64::from(round) * 2 + 2,
                attempts: (1..=FAILURES)
                    .map(|n| failed_attempt(&message, &sub.id, n))
                    .collect(),
                first_send: false,
                ..Default::default()
            };
            tokio::join!(first.report(batch.clone()), second.report(batch));
        }
        let log = Log::new(&clients);
        let got = log.health(&sub.id).await;
        assert_eq!(
            got.consecutive_failures,
            u64::from(ROUNDS * FAILURES),
            "{}: attempts stored by both replicas counted twice: {got:?}",
            backend.label()
        );
        assert_eq!(
            log.attempts_to(&sub.id).await.len(),
            (ROUNDS * FAILURES) as usize
        );
        drop((first, second));
        h.stop().await;
    }
}
