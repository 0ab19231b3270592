//! Delivery policy through both planes (issue 22, `docs/delivery-policy.md`): a
//! subscription's retry schedule overrides its workspace's, which overrides the server's;
//! the attempts' timing follows the effective one, a workspace's change applies to its
//! subscriptions at their next attempt, and `GetSubscription` shows each value's source.
//! Payload shapes: `RAW` and `THIN` bodies, signed as sent (`v1` checked with the Standard
//! Webhooks reference library, `v1a` with Sluice's ed25519 verifier).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sluice_core::signing_ed25519::{PublicKey, verify_v1a};
use sluice_proto::control::v1 as pb;
use sluice_testkit::planes::{PlaneOptions, Planes, on_each_backend};
use sluice_testkit::receiver::{Received, Receiver, Reply};
use sluice_testkit::{ADMIN_KEY, Clients, WAIT};
use sluice_tests::control::{mask, update_subscription};
use sluice_tests::delivery::*;

fn ms(ms: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: ms / 1000,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

fn schedule(delays_ms: &[i64]) -> Vec<prost_types::Duration> {
    delays_ms.iter().map(|d| ms(*d)).collect()
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The gaps between the arrivals at `path`, in order.
fn gaps(received: &[Received], path: &str) -> Vec<Duration> {
    let at: Vec<_> = received
        .iter()
        .filter(|r| r.path == path)
        .map(|r| r.at)
        .collect();
    at.windows(2).map(|w| w[1] - w[0]).collect()
}

async fn set_workspace_policy(admin: &mut Clients, workspace_id: &str, policy: pb::RetryPolicy) {
    admin
        .workspaces
        .update_workspace(pb::UpdateWorkspaceRequest {
            workspace: Some(pb::Workspace {
                id: workspace_id.to_owned(),
                retry_policy: Some(policy),
                ..Default::default()
            }),
            update_mask: mask(&["retry_policy"]),
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_most_specific_retry_policy_times_the_attempts_and_get_shows_its_sources() {
    on_each_backend(PlaneOptions::default(), layered).await;
}

async fn layered(planes: &mut Planes) {
    let (workspace_id, key) = planes.workspace_with_key("Policy").await;
    let mut admin = planes.clients(Some(ADMIN_KEY)).await;
    let mut c = planes.clients(Some(&key)).await;
    let receiver = Receiver::start(vec![], Reply::status(500)).await;
    set_workspace_policy(
        &mut admin,
        &workspace_id,
        pb::RetryPolicy {
            schedule: schedule(&[700]),
            request_timeout: Some(ms(3_000)),
            ..Default::default()
        },
    )
    .await;
    // Inherits the workspace's schedule (one retry after 700 ms).
    let (inheriting, _) =
        subscribe(&mut c, webhook(&receiver.url("/ws"), &["conversation.*"])).await;
    // Its own schedule: retries after 200 ms and 400 ms.
    let (own, _) = subscribe(
        &mut c,
        pb::Subscription {
            retry_policy: Some(pb::RetryPolicy {
                schedule: schedule(&[200, 400]),
                ..Default::default()
            }),
            ..webhook(&receiver.url("/sub"), &["conversation.*"])
        },
    )
    .await;
    assert_eq!(
        own.retry_policy.as_ref().unwrap().schedule,
        schedule(&[200, 400])
    );

    // Each value shown with where it comes from.
    let got = c
        .subscriptions
        .get_subscription(pb::GetSubscriptionRequest {
            workspace_id: String::new(),
            id: own.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .subscription
        .unwrap();
    let e = got.effective_retry_policy.unwrap();
    use pb::PolicySource as S;
    assert_eq!(e.schedule, schedule(&[200, 400]));
    assert_eq!(e.schedule_source, S::Subscription as i32);
    assert_eq!(
        (e.max_attempts, e.limit_source),
        (3, S::ServerDefault as i32)
    );
    assert_eq!(e.request_timeout, Some(ms(3_000)));
    assert_eq!(e.request_timeout_source, S::Workspace as i32);
    assert_eq!(e.disable_after_source, S::ServerDefault as i32);
    let e = Log::new(&c)
        .subscription(&inheriting.id)
        .await
        .effective_retry_policy
        .unwrap();
    assert_eq!(e.schedule, schedule(&[700]));
    assert_eq!(e.schedule_source, S::Workspace as i32);
    assert_eq!(e.max_attempts, 2);

    planes.config_synced().await;
    let mut publisher = planes.publisher(&key).await;
    let first = publish(&mut publisher, event(CONVERSATION_CREATED, r#"{"n":1}"#)).await;
    let received = receiver.wait_for(5, WAIT).await;
    let log = Log::new(&c);
    for (sub, attempts) in [(&own, 3), (&inheriting, 2)] {
        let delivery = log
            .delivery_with_status(&first.message_id, &sub.id, pb::DeliveryStatus::Failed)
            .await;
        assert_eq!(delivery.attempt_count, attempts, "{}", sub.url);
    }
    let own_gaps = gaps(&received, "/sub");
    assert_eq!(own_gaps.len(), 2, "{own_gaps:?}");
    // Generous bounds, apart from the workspace's 700 ms and the server's 20 ms.
    assert!(
        own_gaps[0] >= Duration::from_millis(190) && own_gaps[0] < Duration::from_millis(650),
        "{own_gaps:?}"
    );
    assert!(
        own_gaps[1] >= Duration::from_millis(390) && own_gaps[1] > own_gaps[0],
        "{own_gaps:?}"
    );
    let ws_gaps = gaps(&received, "/ws");
    assert_eq!(ws_gaps.len(), 1);
    assert!(ws_gaps[0] >= Duration::from_millis(690), "{ws_gaps:?}");

    // The workspace's change applies to the subscription without its own at once; the
    // other keeps its own.
    set_workspace_policy(
        &mut admin,
        &workspace_id,
        pb::RetryPolicy {
            schedule: schedule(&[250, 250]),
            max_attempts: 2,
            ..Default::default()
        },
    )
    .await;
    planes.config_synced().await;
    let before = receiver.count();
    let second = publish(&mut publisher, event(CONVERSATION_CREATED, r#"{"n":2}"#)).await;
    let received = receiver.wait_for(before + 4, WAIT).await.split_off(before);
    let delivery = log
        .delivery_with_status(
            &second.message_id,
            &inheriting.id,
            pb::DeliveryStatus::Failed,
        )
        .await;
    assert_eq!(
        delivery.attempt_count, 2,
        "max_attempts 2 from the workspace"
    );
    let ws_gaps = gaps(&received, "/ws");
    assert!(
        ws_gaps.len() == 1
            && ws_gaps[0] >= Duration::from_millis(240)
            && ws_gaps[0] < Duration::from_millis(690),
        "{ws_gaps:?}"
    );
    // The subscription's own schedule, with the workspace's new limit of 2 attempts.
    let delivery = log
        .delivery_with_status(&second.message_id, &own.id, pb::DeliveryStatus::Failed)
        .await;
    assert_eq!(delivery.attempt_count, 2);
    let e = log
        .subscription(&own.id)
        .await
        .effective_retry_policy
        .unwrap();
    assert_eq!((e.max_attempts, e.limit_source), (2, S::Workspace as i32));
    assert_eq!(e.request_timeout_source, S::ServerDefault as i32);

    // Field by field: the subscription's own limit, its schedule kept.
    update_subscription(
        &mut c,
        pb::Subscription {
            id: own.id.clone(),
            retry_policy: Some(pb::RetryPolicy {
                max_age: Some(ms(60_000)),
                ..Default::default()
            }),
            ..Default::default()
        },
        &["retry_policy.max_age"],
    )
    .await
    .unwrap();
    let e = log
        .subscription(&own.id)
        .await
        .effective_retry_policy
        .unwrap();
    assert_eq!(e.schedule, schedule(&[200, 400]));
    assert_eq!(e.max_age, Some(ms(60_000)));
    assert_eq!(
        (e.max_attempts, e.limit_source),
        (0, S::Subscription as i32)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_data_plane_keeps_a_workspace_policy_across_a_restart_without_the_control_plane() {
    on_each_backend(PlaneOptions::default(), restart).await;
}

async fn restart(planes: &mut Planes) {
    let (workspace_id, key) = planes.workspace_with_key("Restart").await;
    let mut admin = planes.clients(Some(ADMIN_KEY)).await;
    let mut c = planes.clients(Some(&key)).await;
    let receiver = Receiver::start(vec![], Reply::status(500)).await;
    set_workspace_policy(
        &mut admin,
        &workspace_id,
        pb::RetryPolicy {
            schedule: schedule(&[400]),
            max_attempts: 2,
            ..Default::default()
        },
    )
    .await;
    let (sub, _) = subscribe(&mut c, webhook(&receiver.url("/r"), &["conversation.*"])).await;
    planes.config_synced().await;
    planes.stop_control().await;
    planes.restart_data().await;
    let mut publisher = planes.publisher(&key).await;
    let published = publish(&mut publisher, event(CONVERSATION_CREATED, "{}")).await;
    // The workspace's 400 ms, not the server's 20 ms: read from the data plane's own copy.
    let received = receiver.wait_for(2, WAIT).await;
    let gap = gaps(&received, "/r")[0];
    assert!(gap >= Duration::from_millis(390), "{gap:?}");
    planes.restart_control().await;
    let delivery = Log::new(&planes.clients(Some(&key)).await)
        .delivery_with_status(&published.message_id, &sub.id, pb::DeliveryStatus::Failed)
        .await;
    assert_eq!(delivery.attempt_count, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_disable_after_disables_a_failing_subscription() {
    on_each_backend(PlaneOptions::default(), disable).await;
}

async fn disable(planes: &mut Planes) {
    let (_, key) = planes.workspace_with_key("Disable").await;
    let mut c = planes.clients(Some(&key)).await;
    let receiver = Receiver::start(vec![], Reply::status(500)).await;
    // Every attempt failing for 1 s disables it (the server's default is 5 days).
    let (sub, _) = subscribe(
        &mut c,
        pb::Subscription {
            retry_policy: Some(pb::RetryPolicy {
                schedule: schedule(&[300]),
                max_attempts: 50,
                disable_after: Some(ms(1_000)),
                ..Default::default()
            }),
            ..webhook(&receiver.url("/failing"), &["conversation.*"])
        },
    )
    .await;
    planes.config_synced().await;
    let mut publisher = planes.publisher(&key).await;
    publish(&mut publisher, event(CONVERSATION_CREATED, "{}")).await;
    let log = Log::new(&c);
    let disabled = eventually("the subscription to be disabled", WAIT, async || {
        Some(log.subscription(&sub.id).await)
            .filter(|s| s.state == pb::SubscriptionState::Disabled as i32)
    })
    .await;
    assert_eq!(
        disabled.disabled_reason,
        pb::DisabledReason::PersistentFailure as i32
    );
    // Failing for a second at 300 ms apart: four or five attempts, far from 50.
    let arrived = receiver.count();
    assert!((4..=6).contains(&arrived), "{arrived} attempts");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_request_timeout_cuts_slow_attempts() {
    on_each_backend(PlaneOptions::default(), timeout).await;
}

async fn timeout(planes: &mut Planes) {
    let (_, key) = planes.workspace_with_key("Timeout").await;
    let mut c = planes.clients(Some(&key)).await;
    // Slower than the subscription's timeout, well within the server's 5 s.
    let receiver = Receiver::start(vec![], Reply::status(200).delay(Duration::from_secs(3))).await;
    let (sub, _) = subscribe(
        &mut c,
        pb::Subscription {
            retry_policy: Some(pb::RetryPolicy {
                request_timeout: Some(ms(1_000)),
                max_attempts: 1,
                ..Default::default()
            }),
            ..webhook(&receiver.url("/slow"), &["conversation.*"])
        },
    )
    .await;
    planes.config_synced().await;
    let mut publisher = planes.publisher(&key).await;
    let published = publish(&mut publisher, event(CONVERSATION_CREATED, "{}")).await;
    let log = Log::new(&c);
    log.delivery_with_status(&published.message_id, &sub.id, pb::DeliveryStatus::Failed)
        .await;
    let attempts = log.attempts_of(&published.message_id).await;
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0].error_kind, "timeout", "{attempts:?}");
    assert!(attempts[0].error_message.contains("1s"), "{attempts:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_and_thin_bodies_are_signed_as_sent() {
    on_each_backend(PlaneOptions::default(), shapes).await;
}

async fn shapes(planes: &mut Planes) {
    let (workspace_id, key) = planes.workspace_with_key("Shapes").await;
    let mut c = planes.clients(Some(&key)).await;
    let receiver = Receiver::ok().await;
    let mut subs = Vec::new();
    for (path, shape) in [
        ("/envelope", pb::PayloadShape::Unspecified),
        ("/raw", pb::PayloadShape::Raw),
        ("/thin", pb::PayloadShape::Thin),
    ] {
        let (sub, secret) = subscribe(
            &mut c,
            pb::Subscription {
                payload_shape: shape as i32,
                signature_scheme: pb::SignatureScheme::Both as i32,
                ..webhook(&receiver.url(path), &["conversation.*"])
            },
        )
        .await;
        subs.push((path, sub, secret));
    }
    // Slack keeps its own message whatever the shape says.
    subscribe(
        &mut c,
        pb::Subscription {
            destination_type: pb::DestinationType::Slack as i32,
            payload_shape: pb::PayloadShape::Raw as i32,
            ..webhook(&receiver.url("/services/T/B/X"), &["conversation.*"])
        },
    )
    .await;
    assert_eq!(subs[0].1.payload_shape, pb::PayloadShape::Envelope as i32);
    assert_eq!(subs[1].1.payload_shape, pb::PayloadShape::Raw as i32);
    planes.config_synced().await;
    let mut publisher = planes.publisher(&key).await;
    // Spacing and number forms a re-serialisation would change: RAW keeps them.
    let payload = r#"{ "conversation": {"id": "cnv_1"},  "amount": 1.50 }"#;
    let published = publish(&mut publisher, event(CONVERSATION_CREATED, payload)).await;
    let received = receiver.wait_for(4, WAIT).await;
    let slack = received
        .iter()
        .find(|r| r.path == "/services/T/B/X")
        .unwrap();
    let slack_body = slack.json();
    let keys: Vec<&String> = slack_body.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["text"], "{slack_body}");
    assert_eq!(slack.header("webhook-event-type"), "");
    for (path, sub, secret) in &subs {
        let r = received.iter().find(|r| r.path == *path).unwrap();
        standardwebhooks::Webhook::new(secret)
            .unwrap()
            .verify(&r.body, &r.headers)
            .unwrap_or_else(|e| panic!("{path}: the reference library refuses it: {e}"));
        let public = PublicKey::parse(&sub.public_key).unwrap();
        verify_v1a(
            &public,
            r.header("webhook-id"),
            r.header("webhook-timestamp"),
            r.header("webhook-signature"),
            &r.body,
            now_unix(),
            300,
        )
        .unwrap_or_else(|e| panic!("{path}: v1a does not verify: {e:?}"));
        assert_eq!(r.header("webhook-id"), published.message_id);
        let json = r.json();
        match *path {
            "/envelope" => {
                assert_eq!(json["payload"]["amount"], 1.5);
                assert_eq!(r.header("webhook-event-type"), "");
            }
            "/raw" => {
                assert_eq!(&r.body[..], payload.as_bytes());
                assert_eq!(r.header("webhook-event-type"), CONVERSATION_CREATED);
            }
            _ => {
                assert_eq!(json["id"], published.message_id.as_str());
                assert_eq!(json["event"], CONVERSATION_CREATED);
                assert_eq!(json["workspace_id"], workspace_id.as_str());
                assert!(json["timestamp"].as_str().unwrap().ends_with('Z'));
                assert_eq!(json.get("payload"), None, "{json}");
                assert_eq!(r.header("webhook-event-type"), CONVERSATION_CREATED);
            }
        }
    }

    // The shape changes by update; the test send follows it too.
    let (_, raw, secret) = &subs[1];
    update_subscription(
        &mut c,
        pb::Subscription {
            id: raw.id.clone(),
            payload_shape: pb::PayloadShape::Thin as i32,
            ..Default::default()
        },
        &["payload_shape"],
    )
    .await
    .unwrap();
    receiver.drain();
    let sent = c
        .subscriptions
        .send_test_event(pb::SendTestEventRequest {
            workspace_id: String::new(),
            id: raw.id.clone(),
            event_type: CONVERSATION_CREATED.into(),
            payload: sluice_proto::json::json_to_struct(r#"{"n":1}"#),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(sent.success, "{sent:?}");
    let r = receiver.next().await;
    assert_eq!(r.json().get("payload"), None);
    assert_eq!(r.json()["id"], sent.message_id.as_str());
    standardwebhooks::Webhook::new(secret)
        .unwrap()
        .verify(&r.body, &r.headers)
        .unwrap();
}
