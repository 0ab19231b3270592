//! How deliveries end and start over, as the log shows it: a deleted subscription's pending
//! deliveries end CANCELLED (not FAILED); a manual retry or a replay that fails goes back
//! on the retry schedule instead of ending there.

#![allow(clippy::unwrap_used)]

use sluice_proto::control::v1 as pb;
use sluice_testkit::WAIT;
use sluice_testkit::planes::{PlaneOptions, Planes, on_each_backend};
use sluice_testkit::receiver::{Receiver, Reply};
use sluice_tests::delivery::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_subscriptions_pending_deliveries_end_cancelled() {
    // A failed first attempt waits an hour for its retry: the delivery stays pending.
    let options = PlaneOptions {
        retry_schedule: "0s,1h".into(),
        ..PlaneOptions::default()
    };
    on_each_backend(options, cancelled_on_delete).await;
}

async fn cancelled_on_delete(planes: &mut Planes) {
    let (_, key) = planes.workspace_with_key("Cancel").await;
    let mut c = planes.clients(Some(&key)).await;
    let log = Log::new(&c);
    let failing = Receiver::start(Vec::new(), Reply::status(500)).await;
    let (sub, _) = subscribe(&mut c, webhook(&failing.url("/x"), &["*"])).await;
    planes.config_synced().await;
    let mut publisher = planes.publisher(&key).await;
    let published = publish(&mut publisher, event(CONVERSATION_CREATED, r#"{"n":1}"#)).await;
    failing.wait_for(1, WAIT).await;
    log.delivery_with_status(&published.message_id, &sub.id, pb::DeliveryStatus::Pending)
        .await;

    c.subscriptions
        .delete_subscription(pb::DeleteSubscriptionRequest {
            workspace_id: String::new(),
            id: sub.id.clone(),
        })
        .await
        .unwrap();
    let ended = log
        .delivery_with_status(
            &published.message_id,
            &sub.id,
            pb::DeliveryStatus::Cancelled,
        )
        .await;
    assert!(ended.next_attempt_time.is_none(), "{ended:?}");
    let listed = log
        .deliveries(pb::ListDeliveriesRequest {
            status: pb::DeliveryStatus::Cancelled as i32,
            ..Default::default()
        })
        .await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let failed = log
        .deliveries(pb::ListDeliveriesRequest {
            status: pb::DeliveryStatus::Failed as i32,
            ..Default::default()
        })
        .await;
    assert!(
        failed.is_empty(),
        "a deleted subscription's delivery is not a failure: {failed:?}"
    );
}

/// Two scheduled attempts, 200 ms apart: a delivery fails for good quickly.
fn short_schedule() -> PlaneOptions {
    PlaneOptions {
        retry_schedule: "0s,200ms".into(),
        ..PlaneOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_manual_retry_goes_back_on_the_retry_schedule() {
    on_each_backend(short_schedule(), manual_back_on_schedule).await;
}

async fn manual_back_on_schedule(planes: &mut Planes) {
    let (_, key) = planes.workspace_with_key("Manual").await;
    let mut c = planes.clients(Some(&key)).await;
    let log = Log::new(&c);
    // Two scheduled failures, a manual failure, then success.
    let receiver = Receiver::start(vec![Reply::status(500); 3], Reply::status(200)).await;
    let (sub, _) = subscribe(&mut c, webhook(&receiver.url("/manual"), &["*"])).await;
    planes.config_synced().await;
    let mut publisher = planes.publisher(&key).await;
    let published = publish(&mut publisher, event(CONVERSATION_CREATED, r#"{"n":1}"#)).await;
    receiver.wait_for(2, WAIT).await;
    let failed = log
        .delivery_with_status(&published.message_id, &sub.id, pb::DeliveryStatus::Failed)
        .await;
    assert_eq!(failed.attempt_count, 2, "{failed:?}");

    let manual = c
        .deliveries
        .retry_delivery(pb::RetryDeliveryRequest {
            workspace_id: String::new(),
            message_id: published.message_id.clone(),
            subscription_id: sub.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .attempt
        .unwrap();
    assert!(!manual.success, "{manual:?}");
    assert_eq!(manual.attempt_number, 3, "{manual:?}");
    // Back on the schedule: its second step (200 ms) brings a fourth attempt, which succeeds.
    succeeded_back_on_schedule(
        &receiver,
        &log,
        &published.message_id,
        &sub.id,
        pb::AttemptTrigger::Manual,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_replay_goes_back_on_the_retry_schedule() {
    on_each_backend(short_schedule(), replay_back_on_schedule).await;
}

async fn replay_back_on_schedule(planes: &mut Planes) {
    let (_, key) = planes.workspace_with_key("Replay").await;
    let mut c = planes.clients(Some(&key)).await;
    let log = Log::new(&c);
    // Two scheduled failures, the replay's failure, then success.
    let receiver = Receiver::start(vec![Reply::status(500); 3], Reply::status(200)).await;
    let (sub, _) = subscribe(&mut c, webhook(&receiver.url("/replay"), &["*"])).await;
    planes.config_synced().await;
    let since = now_timestamp();
    let mut publisher = planes.publisher(&key).await;
    let published = publish(&mut publisher, event(CONVERSATION_CREATED, r#"{"n":1}"#)).await;
    receiver.wait_for(2, WAIT).await;
    log.delivery_with_status(&published.message_id, &sub.id, pb::DeliveryStatus::Failed)
        .await;

    let replayed = c
        .deliveries
        .replay_failed_deliveries(pb::ReplayFailedDeliveriesRequest {
            workspace_id: String::new(),
            subscription_id: sub.id.clone(),
            since_time: Some(since),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replayed.queued_count, 1);
    succeeded_back_on_schedule(
        &receiver,
        &log,
        &published.message_id,
        &sub.id,
        pb::AttemptTrigger::Replay,
    )
    .await;
}

/// The fourth attempt (the schedule's, after two scheduled failures and the `manual` one)
/// reached the receiver and succeeded, and the log shows the attempts in that order.
async fn succeeded_back_on_schedule(
    receiver: &Receiver,
    log: &Log,
    message_id: &str,
    subscription_id: &str,
    manual: pb::AttemptTrigger,
) {
    receiver.wait_for(4, WAIT).await;
    let delivered = log
        .delivery_with_status(message_id, subscription_id, pb::DeliveryStatus::Succeeded)
        .await;
    assert_eq!(delivered.attempt_count, 4, "{delivered:?}");
    let attempts = log.attempts_of(message_id).await;
    let triggers: Vec<i32> = attempts.iter().map(|a| a.trigger).collect();
    assert_eq!(
        triggers,
        [
            pb::AttemptTrigger::Scheduled as i32,
            pb::AttemptTrigger::Scheduled as i32,
            manual as i32,
            pb::AttemptTrigger::Scheduled as i32,
        ],
        "{attempts:#?}"
    );
}
