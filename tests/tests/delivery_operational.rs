//! Sluice's operational events end to end: a 410, a circuit breaker opening and closing, and
//! a user's disable and enable each publish a `sluice.*` event into the workspace, delivered
//! signed to the subscriptions that filter it (never to the one it is about) and listed in
//! the log; the four event types are in every catalog and cannot be changed.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sluice_proto::control::v1 as pb;
use sluice_testkit::assertions::assert_invalid;
use sluice_testkit::planes::{PlaneOptions, Planes, on_each_backend};
use sluice_testkit::receiver::{Received, Receiver, Reply};
use sluice_testkit::{WAIT, count_rows};
use sluice_tests::delivery::*;

const DISABLED: &str = "sluice.subscription.disabled";
const ENABLED: &str = "sluice.subscription.enabled";
const UNHEALTHY: &str = "sluice.endpoint.unhealthy";
const RECOVERED: &str = "sluice.endpoint.recovered";

/// One attempt per delivery, so every failure is final at once.
fn single_attempt() -> PlaneOptions {
    PlaneOptions {
        retry_schedule: "0s".into(),
        ..PlaneOptions::default()
    }
}

/// Checks one operational event as its receiver got it: signed with `secret`, of
/// `event_type`, about `subscription_id`; returns its payload.
fn operational(
    received: &Received,
    secret: &str,
    event_type: &str,
    subscription_id: &str,
) -> serde_json::Value {
    assert!(
        received.verifies_with(secret),
        "the operational event is signed like any delivery: {:?}",
        received.headers
    );
    let body = received.json();
    assert_eq!(body["event"], event_type, "{body}");
    assert_eq!(body["id"], received.header("webhook-id"), "{body}");
    let payload = body["payload"].clone();
    assert_eq!(payload["subscription_id"], subscription_id, "{body}");
    payload
}

#[tokio::test(flavor = "multi_thread")]
async fn a_410_publishes_a_signed_disabled_event_to_the_other_subscriptions() {
    on_each_backend(single_attempt(), gone_publishes_disabled).await;
}

async fn gone_publishes_disabled(planes: &mut Planes) {
    let (_, key) = planes.workspace_with_key("Notices").await;
    let mut c = planes.clients(Some(&key)).await;
    let log = Log::new(&c);
    let gone = Receiver::start(Vec::new(), Reply::status(410)).await;
    let watcher = Receiver::ok().await;
    // The gone subscription filters everything, so only the rule "never to the subscription
    // it is about" keeps the event from it. Its URL carries a credential in the query.
    let (gone_sub, _) = subscribe(&mut c, webhook(&gone.url("/gone?token=s3cret"), &["*"])).await;
    let (watcher_sub, watcher_secret) =
        subscribe(&mut c, webhook(&watcher.url("/ops"), &["sluice.*"])).await;
    planes.config_synced().await;
    let mut publisher = planes.publisher(&key).await;

    publish(&mut publisher, event(CONVERSATION_CREATED, r#"{"n":1}"#)).await;
    let got = watcher.wait_for(1, WAIT).await;
    let payload = operational(&got[0], &watcher_secret, DISABLED, &gone_sub.id);
    assert_eq!(payload["reason"], "endpoint_gone", "{payload}");
    assert!(
        payload["message"].as_str().unwrap().contains("410"),
        "{payload}"
    );
    assert_eq!(payload["last_error"]["status_code"], 410, "{payload}");
    let url = payload["endpoint_url"].as_str().unwrap();
    assert!(
        url.ends_with("/gone") && !url.contains("s3cret"),
        "the URL without its credentials: {url}"
    );

    // The log lists it like any message, with its one delivery succeeded.
    let message_id = got[0].header("webhook-id").to_owned();
    log.delivery_with_status(&message_id, &watcher_sub.id, pb::DeliveryStatus::Succeeded)
        .await;
    let listed = log
        .messages(pb::ListMessagesRequest {
            event_type: DISABLED.into(),
            ..Default::default()
        })
        .await;
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0].id, message_id);
    assert_eq!(listed[0].delivery_count, 1, "{listed:#?}");

    // The subscription it is about got only the event that was answered 410.
    assert_eq!(gone.received().len(), 1, "{:#?}", gone.received());
    assert!(
        gone.received()
            .iter()
            .all(|r| r.json()["event"] == CONVERSATION_CREATED)
    );
    // Exactly one disabled event, durable in the data plane's store.
    assert_eq!(
        count_rows(
            &planes.data_db,
            &format!("dp_messages WHERE event_type = '{DISABLED}'")
        )
        .await,
        1
    );
    assert_eq!(watcher.received().len(), 1, "{:#?}", watcher.received());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_breaker_opening_and_closing_publishes_unhealthy_and_recovered() {
    let options = PlaneOptions {
        circuit_breaker_failures: 2,
        circuit_breaker_cooldown: Duration::from_millis(300),
        ..single_attempt()
    };
    on_each_backend(options, breaker).await;
}

async fn breaker(planes: &mut Planes) {
    let (_, key) = planes.workspace_with_key("Breaker").await;
    let mut c = planes.clients(Some(&key)).await;
    let flaky = Receiver::start(
        vec![Reply::status(500), Reply::status(500)],
        Reply::status(200),
    )
    .await;
    let watcher = Receiver::ok().await;
    let (flaky_sub, _) = subscribe(&mut c, webhook(&flaky.url("/flaky"), &["*"])).await;
    let (_, watcher_secret) = subscribe(
        &mut c,
        webhook(&watcher.url("/ops"), &["sluice.endpoint.*"]),
    )
    .await;
    planes.config_synced().await;
    let mut publisher = planes.publisher(&key).await;

    // Two failures in a row open the breaker.
    for n in 0..2 {
        publish(
            &mut publisher,
            event(CONVERSATION_CREATED, &format!(r#"{{"n":{n}}}"#)),
        )
        .await;
    }
    let got = watcher.wait_for(1, WAIT).await;
    let payload = operational(&got[0], &watcher_secret, UNHEALTHY, &flaky_sub.id);
    assert_eq!(payload["reason"], "consecutive_failures", "{payload}");
    assert_eq!(payload["last_error"]["status_code"], 500, "{payload}");

    // After the cooldown the next delivery is the probe; its success closes the breaker.
    publish(&mut publisher, event(CONVERSATION_CREATED, r#"{"n":2}"#)).await;
    let got = watcher.wait_for(2, WAIT).await;
    let payload = operational(&got[1], &watcher_secret, RECOVERED, &flaky_sub.id);
    assert_eq!(payload["reason"], "attempt_succeeded", "{payload}");
    assert!(payload["last_error"].is_null(), "{payload}");
    assert_eq!(
        flaky.received().len(),
        3,
        "the endpoint got the events only"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_users_disable_and_enable_publish_disabled_and_enabled() {
    on_each_backend(PlaneOptions::default(), user_changes).await;
}

async fn user_changes(planes: &mut Planes) {
    let (_, key) = planes.workspace_with_key("User").await;
    let mut c = planes.clients(Some(&key)).await;
    let log = Log::new(&c);
    let paused = Receiver::ok().await;
    let watcher = Receiver::ok().await;
    let (paused_sub, _) = subscribe(&mut c, webhook(&paused.url("/paused"), &["*"])).await;
    let (_, watcher_secret) =
        subscribe(&mut c, webhook(&watcher.url("/ops"), &[DISABLED, ENABLED])).await;
    planes.config_synced().await;

    c.subscriptions
        .disable_subscription(pb::DisableSubscriptionRequest {
            workspace_id: String::new(),
            id: paused_sub.id.clone(),
            message: "maintenance".into(),
        })
        .await
        .unwrap();
    let got = watcher.wait_for(1, WAIT).await;
    let payload = operational(&got[0], &watcher_secret, DISABLED, &paused_sub.id);
    assert_eq!(payload["reason"], "user", "{payload}");
    assert_eq!(payload["message"], "maintenance", "{payload}");

    c.subscriptions
        .enable_subscription(pb::EnableSubscriptionRequest {
            workspace_id: String::new(),
            id: paused_sub.id.clone(),
        })
        .await
        .unwrap();
    let got = watcher.wait_for(2, WAIT).await;
    let payload = operational(&got[1], &watcher_secret, ENABLED, &paused_sub.id);
    assert_eq!(payload["reason"], "user", "{payload}");

    // The enabled subscription filters `*`, so it would match the enabled event but is the
    // one it is about; it got nothing.
    planes.config_synced().await;
    assert!(paused.received().is_empty(), "{:#?}", paused.received());
    let enabled_id = got[1].header("webhook-id").to_owned();
    eventually("the log to list the enabled event", WAIT, async || {
        log.messages(pb::ListMessagesRequest {
            event_type: ENABLED.into(),
            ..Default::default()
        })
        .await
        .into_iter()
        .find(|m| m.id == enabled_id)
    })
    .await;
    assert_eq!(watcher.received().len(), 2, "{:#?}", watcher.received());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_catalog_lists_the_operational_types_and_they_cannot_be_changed() {
    on_each_backend(PlaneOptions::default(), catalog).await;
}

async fn catalog(planes: &mut Planes) {
    let (_, key) = planes.workspace_with_key("Catalog").await;
    let mut c = planes.clients(Some(&key)).await;
    c.event_types
        .create_event_type(pb::CreateEventTypeRequest {
            workspace_id: String::new(),
            event_type: Some(pb::EventType {
                name: "call.handled".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    // Page by page, one at a time, so the merge with the workspace's own rows is paged too.
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .event_types
            .list_event_types(pb::ListEventTypesRequest {
                page_size: 1,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        names.extend(page.event_types.into_iter().map(|t| t.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(
        names,
        ["call.handled", RECOVERED, UNHEALTHY, DISABLED, ENABLED],
        "every catalog lists the operational event types"
    );
    let got = c
        .event_types
        .get_event_type(pb::GetEventTypeRequest {
            workspace_id: String::new(),
            name: DISABLED.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .event_type
        .unwrap();
    assert!(!got.description.is_empty(), "{got:?}");

    let created = c
        .event_types
        .create_event_type(pb::CreateEventTypeRequest {
            workspace_id: String::new(),
            event_type: Some(pb::EventType {
                name: "sluice.my.own".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_invalid(&created, "event_type.name");
    let updated = c
        .event_types
        .update_event_type(pb::UpdateEventTypeRequest {
            workspace_id: String::new(),
            event_type: Some(pb::EventType {
                name: DISABLED.into(),
                description: "mine".into(),
                ..Default::default()
            }),
            update_mask: sluice_tests::control::mask(&["description"]),
        })
        .await
        .unwrap_err();
    assert_eq!(
        updated.code(),
        tonic::Code::FailedPrecondition,
        "{updated:?}"
    );
    let archived = c
        .event_types
        .archive_event_type(pb::ArchiveEventTypeRequest {
            workspace_id: String::new(),
            name: ENABLED.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        archived.code(),
        tonic::Code::FailedPrecondition,
        "{archived:?}"
    );

    // Publishers cannot forge them either (once the data plane knows the key).
    planes.config_synced().await;
    let mut publisher = planes.publisher(&key).await;
    let forged = publisher
        .publish(event(DISABLED, r#"{"subscription_id":"sub_x"}"#))
        .await
        .unwrap_err();
    assert_invalid(&forged, "event_type");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_users_disable_is_published_once_by_two_data_plane_replicas() {
    on_each_backend(PlaneOptions::default(), replicas).await;
}

async fn replicas(planes: &mut Planes) {
    if planes.data_db.get_database_backend() == sea_orm::DbBackend::Sqlite {
        eprintln!("SKIPPING the SQLite run: a SQLite file belongs to one data plane");
        return;
    }
    let replica = planes.data_replica().await;
    let (_, key) = planes.workspace_with_key("Replicas").await;
    let mut c = planes.clients(Some(&key)).await;
    let watcher = Receiver::ok().await;
    let paused = Receiver::ok().await;
    let (paused_sub, _) = subscribe(&mut c, webhook(&paused.url("/paused"), &["*"])).await;
    let (watcher_sub, watcher_secret) =
        subscribe(&mut c, webhook(&watcher.url("/ops"), &["sluice.*"])).await;
    planes.config_synced().await;
    replica
        .wait_for_revision(planes.latest_revision().await)
        .await;

    c.subscriptions
        .disable_subscription(pb::DisableSubscriptionRequest {
            workspace_id: String::new(),
            id: paused_sub.id.clone(),
            message: String::new(),
        })
        .await
        .unwrap();
    // Each replica publishes the event before it records the revision as applied: once
    // both did, both published, and one message was stored.
    planes.config_synced().await;
    replica
        .wait_for_revision(planes.latest_revision().await)
        .await;
    let got = watcher.wait_for(1, WAIT).await;
    let payload = operational(&got[0], &watcher_secret, DISABLED, &paused_sub.id);
    assert_eq!(payload["message"], "disabled by a user", "{payload}");
    assert_eq!(
        count_rows(
            &planes.data_db,
            &format!("dp_messages WHERE event_type = '{DISABLED}'")
        )
        .await,
        1,
        "two replicas saw the disable; one event is stored"
    );
    // Its one delivery is final, and nothing else came.
    Log::new(&c)
        .delivery_with_status(
            got[0].header("webhook-id"),
            &watcher_sub.id,
            pb::DeliveryStatus::Succeeded,
        )
        .await;
    assert_eq!(watcher.received().len(), 1, "{:#?}", watcher.received());
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn persistent_failure_publishes_disabled_with_its_reason() {
    let options = PlaneOptions {
        disable_after_failed_attempts: Some(2),
        ..single_attempt()
    };
    on_each_backend(options, persistent_failure).await;
}

async fn persistent_failure(planes: &mut Planes) {
    let (_, key) = planes.workspace_with_key("Failing").await;
    let mut c = planes.clients(Some(&key)).await;
    let failing = Receiver::start(Vec::new(), Reply::status(503)).await;
    let watcher = Receiver::ok().await;
    let (failing_sub, _) = subscribe(
        &mut c,
        webhook(&failing.url("/failing"), &[CONVERSATION_CREATED]),
    )
    .await;
    let (_, watcher_secret) = subscribe(&mut c, webhook(&watcher.url("/ops"), &[DISABLED])).await;
    planes.config_synced().await;
    let mut publisher = planes.publisher(&key).await;
    for n in 0..2 {
        publish(
            &mut publisher,
            event(CONVERSATION_CREATED, &format!(r#"{{"n":{n}}}"#)),
        )
        .await;
    }
    let got = watcher.wait_for(1, WAIT).await;
    let payload = operational(&got[0], &watcher_secret, DISABLED, &failing_sub.id);
    assert_eq!(payload["reason"], "persistent_failure", "{payload}");
    assert_eq!(payload["last_error"]["status_code"], 503, "{payload}");
    assert_eq!(failing.received().len(), 2, "{:#?}", failing.received());
}
