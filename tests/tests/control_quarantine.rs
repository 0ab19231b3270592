//! An outcome batch the control plane cannot store is tried a bounded number of times, then
//! set aside in `quarantined_outcomes` and acked, so the batches after it are stored and the
//! delivery log never stalls behind it.

#![allow(clippy::unwrap_used)]

use std::time::{SystemTime, UNIX_EPOCH};

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use sluice_core::ids::{IdKind, new_id};
use sluice_proto::control::v1 as pb;
use sluice_testkit::{Bearer, ControlHarness, INTERNAL_TOKEN, backends, count_rows};
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

/// A batch with one message and its successful first attempt.
fn batch(batch_id: u64, workspace_id: &str, subscription_id: &str) -> pb::ReportOutcomesRequest {
    let message = pb::MessageRecord {
        id: new_id(IdKind::Message),
        workspace_id: workspace_id.to_owned(),
        event_type: "conversation.created".into(),
        create_time: Some(now()),
        subscription_ids: vec![subscription_id.to_owned()],
        ordering_key: String::new(),
    };
    let attempt = pb::AttemptOutcome {
        attempt: Some(pb::Attempt {
            id: new_id(IdKind::Attempt),
            message_id: message.id.clone(),
            subscription_id: subscription_id.to_owned(),
            workspace_id: workspace_id.to_owned(),
            event_type: message.event_type.clone(),
            attempt_number: 1,
            attempt_time: Some(now()),
            success: true,
            status_code: 200,
            trigger: pb::AttemptTrigger::Scheduled as i32,
            url: "http://127.0.0.1:9/x".into(),
            ..Default::default()
        }),
        delivery_status: pb::DeliveryStatus::Succeeded as i32,
        ..Default::default()
    };
    pb::ReportOutcomesRequest {
        batch_id,
        messages: vec![message],
        attempts: vec![attempt],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_that_cannot_be_stored_is_set_aside_and_the_log_goes_on() {
    for backend in backends() {
        eprintln!("--- {}", backend.label());
        let h = ControlHarness::start(&backend, true, None).await;
        let (workspace_id, key) = h.workspace_with_key("Quarantine").await;
        let mut clients = h.clients(Some(&key)).await;
        let (sub, _) = create_subscription(
            &mut clients,
            &workspace_id,
            new_subscription("http://127.0.0.1:9/x", &["*"]),
        )
        .await;
        let mut client = pb::data_plane_service_client::DataPlaneServiceClient::with_interceptor(
            h.channel().await,
            Bearer(Some(format!("Bearer {INTERNAL_TOKEN}").parse().unwrap())),
        );
        let (requests, rx) = mpsc::channel(8);
        let mut acks = client
            .report_outcomes(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();

        // Malformed (an attempt whose message id is not one): no retry mends it.
        let mut malformed = batch(1, &workspace_id, &sub.id);
        malformed.attempts[0].attempt.as_mut().unwrap().message_id = "not-a-message".into();
        // One the database refuses: PostgreSQL stores no NUL in text (SQLite does, so there
        // it is stored like any other). The log's own statements replace NULs; the disable
        // of a subscription, rare, goes through the entities as it is.
        let (other, _) = create_subscription(
            &mut clients,
            &workspace_id,
            new_subscription("http://127.0.0.1:9/y", &["*"]),
        )
        .await;
        let mut refused = batch(2, &workspace_id, &sub.id);
        refused
            .disabled_subscriptions
            .push(pb::SubscriptionDisabled {
                subscription_id: other.id.clone(),
                workspace_id: workspace_id.clone(),
                reason: pb::DisabledReason::EndpointGone as i32,
                message: "gone\0away".into(),
                disable_time: Some(now()),
            });
        let good = batch(3, &workspace_id, &sub.id);
        // Sent back to back, so they may share one transaction: the good one is still
        // stored, and every batch is acked.
        for b in [malformed.clone(), refused.clone(), good.clone()] {
            requests.send(b).await.unwrap();
        }
        let mut acked = Vec::new();
        for _ in 0..3 {
            let ack = tokio::time::timeout(sluice_testkit::WAIT, acks.message())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            acked.push(ack.batch_id);
        }
        acked.sort_unstable();
        assert_eq!(acked, [1, 2, 3], "every batch is acked");

        let log = Log::new(&clients);
        let logged: Vec<String> = log
            .attempts_to(&sub.id)
            .await
            .into_iter()
            .map(|a| a.id)
            .collect();
        let id_of =
            |b: &pb::ReportOutcomesRequest| b.attempts[0].attempt.as_ref().unwrap().id.clone();
        assert!(
            logged.contains(&id_of(&good)),
            "the good batch is stored: {logged:?}"
        );
        assert!(!logged.contains(&id_of(&malformed)), "{logged:?}");

        let postgres = backend.label() == "PostgreSQL";
        let expected_aside = if postgres { 2 } else { 1 };
        assert_eq!(
            count_rows(&h.db, "quarantined_outcomes").await,
            expected_aside
        );
        assert_eq!(
            count_rows(
                &h.db,
                "quarantined_outcomes WHERE batch_id = 1 AND tries = 1"
            )
            .await,
            1,
            "a malformed batch is set aside at once"
        );
        if postgres {
            assert_eq!(
                count_rows(
                    &h.db,
                    "quarantined_outcomes WHERE batch_id = 2 AND tries = 3"
                )
                .await,
                1,
                "a batch the database refuses is tried three times, then set aside"
            );
            assert!(!logged.contains(&id_of(&refused)), "{logged:?}");
        } else {
            assert!(logged.contains(&id_of(&refused)), "{logged:?}");
        }
        // What was set aside is the batch as sent, with the error.
        let row = sluice_store::control::quarantined_outcome::Entity::find()
            .filter(sluice_store::control::quarantined_outcome::Column::BatchId.eq(1))
            .one(&h.db)
            .await
            .unwrap()
            .unwrap();
        let stored =
            <pb::ReportOutcomesRequest as prost::Message>::decode(row.body.as_slice()).unwrap();
        assert_eq!(stored, malformed);
        assert!(
            row.error.contains("attempts.attempt.message_id"),
            "{}",
            row.error
        );

        // The stream goes on: a later batch is stored too.
        let later = batch(4, &workspace_id, &sub.id);
        requests.send(later.clone()).await.unwrap();
        let ack = acks.message().await.unwrap().unwrap();
        assert_eq!(ack.batch_id, 4);
        let logged: Vec<String> = log
            .attempts_to(&sub.id)
            .await
            .into_iter()
            .map(|a| a.id)
            .collect();
        assert!(logged.contains(&id_of(&later)), "{logged:?}");
        drop(requests);
        h.stop().await;
    }
}
