//! Both planes end to end when endpoints misbehave, and the operator's tools: 410 Gone disables a subscription, answers with NUL bytes, timeouts, redirects not followed, the egress guard, and SendTestEvent, RetryDelivery and ReplayFailedDeliveries through the control plane.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::Duration;

use sea_orm::EntityTrait;
use sluice_proto::control::v1 as pb;
use sluice_proto::data::v1 as dpb;
use sluice_proto::json::json_to_struct;
use sluice_testkit::planes::{PlaneOptions, Planes, on_each_backend};
use sluice_testkit::receiver::{Receiver, Reply, with_id};
use sluice_testkit::{WAIT, count_rows};
use sluice_tests::delivery::*;

/// One attempt per delivery, so failures are final at once.
fn single_attempt() -> PlaneOptions {
    PlaneOptions {
        retry_schedule: "0s".into(),
        ..PlaneOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn gone_disables_the_subscription_and_nothing_more_is_delivered_to_it() {
    on_each_backend(PlaneOptions::default(), gone).await;
}

async fn gone(planes: &mut Planes) {
    let (_, key) = planes.workspace_with_key("Gone").await;
    let mut c = planes.clients(Some(&key)).await;
    let log = Log::new(&c);
    let gone = Receiver::start(Vec::new(), Reply::status(410)).await;
    let healthy = Receiver::ok().await;
    let (gone_sub, _) = subscribe(&mut c, webhook(&gone.url("/gone"), &["conversation.*"])).await;
    let (healthy_sub, _) = subscribe(
        &mut c,
        webhook(&healthy.url("/healthy"), &["conversation.*"]),
    )
    .await;
    planes.config_synced().await;
    let mut publisher = planes.publisher(&key).await;

    let first = publish(&mut publisher, event(CONVERSATION_CREATED, r#"{"n":1}"#)).await;
    gone.wait_for(1, WAIT).await;
    healthy.wait_for(1, WAIT).await;

    let disabled = eventually(
        "the subscription to be DISABLED (ENDPOINT_GONE) in the control plane",
        WAIT,
        async || {
            let s = log.subscription(&gone_sub.id).await;
            (s.state == pb::SubscriptionState::Disabled as i32).then_some(s)
        },
    )
    .await;
    assert_eq!(
        disabled.disabled_reason,
        pb::DisabledReason::EndpointGone as i32,
        "{disabled:?}"
    );
    assert!(!disabled.disabled_message.is_empty(), "{disabled:?}");
    assert!(disabled.disable_time.is_some(), "{disabled:?}");

    let delivery = log
        .delivery_with_status(&first.message_id, &gone_sub.id, pb::DeliveryStatus::Failed)
        .await;
    assert_eq!(
        delivery.attempt_count, 1,
        "410 is not retried: {delivery:?}"
    );
    assert_eq!(delivery.last_status_code, 410, "{delivery:?}");
    let attempts = log.attempts_to(&gone_sub.id).await;
    assert_eq!(attempts.len(), 1, "{attempts:#?}");
    assert!(!attempts[0].success);
    assert_eq!(attempts[0].status_code, 410);
    // The data plane's own row of the delivery ended failed too.
    assert_eq!(
        count_rows(&planes.data_db, "dp_deliveries WHERE status = 'failed'").await,
        1
    );

    // The data plane follows the control plane's state; a later event goes to the healthy
    // subscription only.
    planes.config_synced().await;
    let second = publish(&mut publisher, event(CONVERSATION_CREATED, r#"{"n":2}"#)).await;
    assert_eq!(
        second.delivery_count, 1,
        "the disabled subscription matches nothing: {second:?}"
    );
    healthy.wait_for(2, WAIT).await;
    log.delivery_with_status(
        &second.message_id,
        &healthy_sub.id,
        pb::DeliveryStatus::Succeeded,
    )
    .await;
    let later = log.attempts_of(&second.message_id).await;
    assert!(
        later.iter().all(|a| a.subscription_id == healthy_sub.id),
        "nothing is attempted to a disabled subscription: {later:#?}"
    );
    assert_eq!(
        gone.received().len(),
        1,
        "a disabled subscription gets nothing: {:#?}",
        gone.received()
    );
    if let Some(d) = log.delivery(&second.message_id, &gone_sub.id).await {
        assert_ne!(d.status, pb::DeliveryStatus::Succeeded as i32, "{d:?}");
        assert_eq!(d.attempt_count, 0, "{d:?}");
    }
}

/// Waits until the log shows the delivery pending after one failed attempt.
async fn failed_once_pending(log: &Log, message_id: &str, subscription_id: &str) -> pb::Delivery {
    eventually(
        "the delivery pending after its first attempt",
        WAIT,
        async || {
            log.delivery(message_id, subscription_id)
                .await
                .filter(|d| d.status == pb::DeliveryStatus::Pending as i32 && d.attempt_count == 1)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn deliveries_pending_when_the_endpoint_is_gone_end_failed_in_the_log() {
    // The second attempt is an hour out: a delivery that failed once stays pending.
    let options = PlaneOptions {
        retry_schedule: "0s,1h".into(),
        ..PlaneOptions::default()
    };
    on_each_backend(options, pending_when_gone).await;
}

async fn pending_when_gone(planes: &mut Planes) {
    let (_, key) = planes.workspace_with_key("Gone later").await;
    let mut c = planes.clients(Some(&key)).await;
    let log = Log::new(&c);
    let receiver = Receiver::start(vec![Reply::status(500)], Reply::status(410)).await;
    let (sub, _) = subscribe(&mut c, webhook(&receiver.url("/gone-later"), &["*"])).await;
    planes.config_synced().await;
    let mut publisher = planes.publisher(&key).await;

    let waiting = publish(&mut publisher, event(CONVERSATION_CREATED, r#"{"n":1}"#)).await;
    receiver.wait_for(1, WAIT).await;
    let pending = failed_once_pending(&log, &waiting.message_id, &sub.id).await;
    assert!(pending.next_attempt_time.is_some(), "{pending:?}");

    let gone = publish(&mut publisher, event(CONVERSATION_CREATED, r#"{"n":2}"#)).await;
    receiver.wait_for(2, WAIT).await;
    log.delivery_with_status(&gone.message_id, &sub.id, pb::DeliveryStatus::Failed)
        .await;
    eventually(
        "the subscription DISABLED in the control plane",
        WAIT,
        async || {
            let s = log.subscription(&sub.id).await;
            (s.state == pb::SubscriptionState::Disabled as i32).then_some(())
        },
    )
    .await;

    // The data plane ended the waiting delivery: it will never be attempted again.
    let data_status = sluice_store::data::delivery::Entity::find_by_id((
        waiting.message_id.clone(),
        sub.id.clone(),
    ))
    .one(&planes.data_db)
    .await
    .unwrap()
    .map(|d| d.status);
    assert_eq!(
        data_status.as_deref(),
        Some("failed"),
        "the data plane fails the pending deliveries of a disabled subscription"
    );
    // The log must say so too (DeliveryStatus FAILED: "or the subscription was disabled").
    let logged = within(Duration::from_secs(5), async || {
        log.delivery(&waiting.message_id, &sub.id)
            .await
            .filter(|d| d.status != pb::DeliveryStatus::Pending as i32)
    })
    .await;
    let health = c
        .deliveries
        .get_endpoint_health(pb::GetEndpointHealthRequest {
            workspace_id: String::new(),
            subscription_id: sub.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        logged.is_some(),
        "BUG: a delivery that was pending when its subscription was disabled (410 Gone) is \
         FAILED in the data plane but stays PENDING in the control plane's log forever \
         (next_attempt_time {:?}; GetEndpointHealth pending_deliveries {}): the data plane \
         fails it without reporting (crates/data/src/outcomes.rs:210, fail_pending in \
         OutcomeEvent::Disabled) and the control plane does not fail the subscription's \
         pending deliveries when told it was disabled (crates/control/src/sync.rs:321, \
         store_outcomes, batch.disabled_subscriptions)",
        log.delivery(&waiting.message_id, &sub.id)
            .await
            .and_then(|d| d.next_attempt_time),
        health.pending_deliveries
    );
    let logged = logged.unwrap();
    assert_eq!(
        logged.status,
        pb::DeliveryStatus::Failed as i32,
        "{logged:?}"
    );
    assert_eq!(health.pending_deliveries, 0, "{health:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn deliveries_pending_when_a_user_disables_the_subscription_end_failed_in_the_log() {
    // The retry is due 3 s after the first failure: time enough to disable first.
    let options = PlaneOptions {
        retry_schedule: "0s,3s".into(),
        ..PlaneOptions::default()
    };
    on_each_backend(options, pending_when_user_disables).await;
}

async fn pending_when_user_disables(planes: &mut Planes) {
    let (_, key) = planes.workspace_with_key("Disabled later").await;
    let mut c = planes.clients(Some(&key)).await;
    let log = Log::new(&c);
    let receiver = Receiver::start(vec![Reply::status(500)], Reply::status(200)).await;
    let (sub, _) = subscribe(&mut c, webhook(&receiver.url("/paused"), &["*"])).await;
    planes.config_synced().await;
    let mut publisher = planes.publisher(&key).await;
    let waiting = publish(&mut publisher, event(CONVERSATION_CREATED, r#"{"n":1}"#)).await;
    receiver.wait_for(1, WAIT).await;
    failed_once_pending(&log, &waiting.message_id, &sub.id).await;

    c.subscriptions
        .disable_subscription(pb::DisableSubscriptionRequest {
            workspace_id: String::new(),
            id: sub.id.clone(),
            message: "maintenance".into(),
        })
        .await
        .unwrap();
    planes.config_synced().await;

    // When the retry comes due the data plane ends the delivery without an attempt.
    let data_status = eventually("the data plane to end the delivery", WAIT, async || {
        sluice_store::data::delivery::Entity::find_by_id((
            waiting.message_id.clone(),
            sub.id.clone(),
        ))
        .one(&planes.data_db)
        .await
        .unwrap()
        .map(|d| d.status)
        .filter(|s| s != "pending")
    })
    .await;
    assert_eq!(
        data_status, "failed",
        "the retry raced the disable (test timing, not a finding): the delivery is {data_status}"
    );
    assert_eq!(
        receiver.received().len(),
        1,
        "nothing is sent to a disabled subscription"
    );
    let logged = within(Duration::from_secs(5), async || {
        log.delivery(&waiting.message_id, &sub.id)
            .await
            .filter(|d| d.status != pb::DeliveryStatus::Pending as i32)
    })
    .await;
    assert!(
        logged.is_some(),
        "BUG: a delivery pending when a user disabled its subscription is FAILED in the data \
         plane but stays PENDING in the control plane's log forever: the data plane ends it \
         with OutcomeEvent::Finished (crates/data/src/dispatcher.rs:241 finish_undelivered), \
         which writes only its own row and reports nothing (crates/data/src/outcomes.rs:192)"
    );
    assert_eq!(logged.unwrap().status, pb::DeliveryStatus::Failed as i32);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_with_nul_bytes_is_logged_and_the_log_goes_on() {
    on_each_backend(single_attempt(), nul_answer).await;
}

/// PostgreSQL's text cannot hold a NUL: an excerpt with one failed the delivery log's whole
/// batch there, again every time the data plane sent it, so nothing after it was logged.
async fn nul_answer(planes: &mut Planes) {
    let (_, key) = planes.workspace_with_key("Nul").await;
    let mut c = planes.clients(Some(&key)).await;
    let log = Log::new(&c);
    let receiver = Receiver::start(
        vec![Reply::status(500).body(b"oops\0\0".as_slice())],
        Reply::status(200).body(b"fine\0".as_slice()),
    )
    .await;
    let (sub, _) = subscribe(&mut c, webhook(&receiver.url("/nul"), &["*"])).await;
    planes.config_synced().await;
    let mut publisher = planes.publisher(&key).await;
    let failed = publish(&mut publisher, event(CONVERSATION_CREATED, r#"{"n":1}"#)).await;
    receiver.wait_for(1, WAIT).await;
    let succeeded = publish(&mut publisher, event(CONVERSATION_CREATED, r#"{"n":2}"#)).await;

    log.delivery_with_status(&failed.message_id, &sub.id, pb::DeliveryStatus::Failed)
        .await;
    log.delivery_with_status(
        &succeeded.message_id,
        &sub.id,
        pb::DeliveryStatus::Succeeded,
    )
    .await;
    let failed_attempts = log.attempts_of(&failed.message_id).await;
    assert_eq!(failed_attempts.len(), 1, "{failed_attempts:#?}");
    assert_eq!(failed_attempts[0].status_code, 500);
    assert_eq!(failed_attempts[0].response_excerpt, "oops\u{fffd}\u{fffd}");
    let succeeded_attempts = log.attempts_of(&succeeded.message_id).await;
    assert_eq!(succeeded_attempts.len(), 1, "{succeeded_attempts:#?}");
    assert_eq!(succeeded_attempts[0].response_excerpt, "fine\u{fffd}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endpoint_that_never_answers_times_out() {
    let options = PlaneOptions {
        request_timeout: Duration::from_millis(300),
        ..single_attempt()
    };
    on_each_backend(options, timeout).await;
}

async fn timeout(planes: &mut Planes) {
    let (_, key) = planes.workspace_with_key("Timeout").await;
    let mut c = planes.clients(Some(&key)).await;
    let log = Log::new(&c);
    let receiver = Receiver::start(Vec::new(), Reply::hang()).await;
    let (sub, _) = subscribe(&mut c, webhook(&receiver.url("/slow"), &["*"])).await;
    planes.config_synced().await;
    let mut publisher = planes.publisher(&key).await;
    let published = publish(&mut publisher, event(CONVERSATION_CREATED, r#"{"n":1}"#)).await;

    receiver.wait_for(1, WAIT).await;
    let delivery = log
        .delivery_with_status(&published.message_id, &sub.id, pb::DeliveryStatus::Failed)
        .await;
    let attempts = log.attempts_of(&published.message_id).await;
    assert_eq!(attempts.len(), 1, "{attempts:#?}");
    let a = &attempts[0];
    assert!(!a.success, "{a:?}");
    assert_eq!(a.error_kind, "timeout", "{a:?}");
    assert_eq!(a.status_code, 0, "no response came: {a:?}");
    let latency = a.latency.unwrap_or_default();
    let latency = Duration::new(latency.seconds as u64, latency.nanos as u32);
    assert!(
        latency >= Duration::from_millis(250) && latency < Duration::from_secs(5),
        "the attempt lasted about the 300 ms timeout: {latency:?}"
    );
    assert_eq!(delivery.attempt_count, 1, "{delivery:?}");
    assert_eq!(delivery.last_error_kind, "timeout", "{delivery:?}");
    assert_eq!(receiver.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn redirects_are_not_followed() {
    on_each_backend(single_attempt(), redirect).await;
}

async fn redirect(planes: &mut Planes) {
    let (_, key) = planes.workspace_with_key("Redirect").await;
    let mut c = planes.clients(Some(&key)).await;
    let log = Log::new(&c);
    let target = Receiver::ok().await;
    let redirecting = Receiver::start(
        Vec::new(),
        Reply::status(302).header("location", &target.url("/landing")),
    )
    .await;
    let (sub, _) = subscribe(&mut c, webhook(&redirecting.url("/moved"), &["*"])).await;
    planes.config_synced().await;
    let mut publisher = planes.publisher(&key).await;
    let published = publish(&mut publisher, event(CONVERSATION_CREATED, r#"{"n":1}"#)).await;

    redirecting.wait_for(1, WAIT).await;
    let delivery = log
        .delivery_with_status(&published.message_id, &sub.id, pb::DeliveryStatus::Failed)
        .await;
    let attempts = log.attempts_of(&published.message_id).await;
    assert_eq!(attempts.len(), 1, "{attempts:#?}");
    let a = &attempts[0];
    assert!(!a.success, "a redirect is a failed attempt: {a:?}");
    assert_eq!(a.status_code, 302, "{a:?}");
    assert_eq!(a.error_kind, "redirect", "{a:?}");
    assert_eq!(delivery.last_status_code, 302, "{delivery:?}");
    assert!(
        target.received().is_empty(),
        "the redirect was followed: {:#?}",
        target.received()
    );
    assert_eq!(redirecting.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_egress_guard_refuses_loopback_destinations() {
    let options = PlaneOptions {
        allow_private: false,
        ..single_attempt()
    };
    on_each_backend(options, egress).await;
}

async fn egress(planes: &mut Planes) {
    let (_, key) = planes.workspace_with_key("Egress").await;
    let mut c = planes.clients(Some(&key)).await;
    let log = Log::new(&c);
    let receiver = Receiver::ok().await;
    let (sub, _) = subscribe(&mut c, webhook(&receiver.url("/internal"), &["*"])).await;
    // A name that resolves to loopback: the guard checks the address dialled, not the URL.
    let by_name = format!("http://localhost:{}/by-name", receiver.addr.port());
    let (named, _) = subscribe(&mut c, webhook(&by_name, &["*"])).await;
    planes.config_synced().await;
    let mut publisher = planes.publisher(&key).await;
    let published = publish(&mut publisher, event(CONVERSATION_CREATED, r#"{"n":1}"#)).await;
    assert_eq!(published.delivery_count, 2, "{published:?}");

    for s in [&sub, &named] {
        let delivery = log
            .delivery_with_status(&published.message_id, &s.id, pb::DeliveryStatus::Failed)
            .await;
        let attempts = log.attempts_to(&s.id).await;
        assert_eq!(attempts.len(), 1, "{}: {attempts:#?}", s.url);
        let a = &attempts[0];
        assert!(!a.success, "{a:?}");
        assert_eq!(a.error_kind, "egress_denied", "{}: {a:?}", s.url);
        assert_eq!(a.status_code, 0, "{a:?}");
        assert_eq!(delivery.last_error_kind, "egress_denied", "{delivery:?}");
    }
    assert!(
        receiver.received().is_empty(),
        "a loopback destination was dialled: {:#?}",
        receiver.received()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn test_sends_manual_retries_and_replays_go_through_the_control_plane() {
    on_each_backend(single_attempt(), operator_tools).await;
}

async fn operator_tools(planes: &mut Planes) {
    let (workspace_id, key) = planes.workspace_with_key("Operators").await;
    let mut c = planes.clients(Some(&key)).await;
    let log = Log::new(&c);

    // The data plane's DispatchService serves the control plane only: without the internal
    // token it refuses.
    let status = dpb::dispatch_service_client::DispatchServiceClient::new(
        sluice_testkit::connect(planes.data_addr).await,
    )
    .replay(dpb::ReplayRequest::default())
    .await
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    // SendTestEvent: the catalog's example, then an explicit payload.
    let example_text = r#"{"conversation":{"id":"cnv_example","contactId":"cnt_1","count":2}}"#;
    c.event_types
        .create_event_type(pb::CreateEventTypeRequest {
            workspace_id: String::new(),
            event_type: Some(pb::EventType {
                name: CONVERSATION_CREATED.into(),
                description: "A conversation started".into(),
                example: Some(json_to_struct(example_text).unwrap()),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let test_rx = Receiver::ok().await;
    let (test_sub, test_secret) =
        subscribe(&mut c, webhook(&test_rx.url("/test"), &["conversation.*"])).await;
    let send_test = |payload: Option<&str>| pb::SendTestEventRequest {
        workspace_id: String::new(),
        id: test_sub.id.clone(),
        event_type: CONVERSATION_CREATED.into(),
        payload: payload.map(|p| json_to_struct(p).unwrap()),
    };
    let sent = c
        .subscriptions
        .send_test_event(send_test(None))
        .await
        .unwrap()
        .into_inner();
    assert!(sent.success, "{sent:?}");
    assert_eq!(sent.status_code, 200, "{sent:?}");
    assert_eq!(sent.error_kind, "", "{sent:?}");
    assert!(sent.message_id.starts_with("msg_"), "{sent:?}");
    let received = test_rx.wait_for(1, WAIT).await;
    let r = &received[0];
    assert_eq!(r.header("webhook-id"), sent.message_id);
    assert!(
        r.verifies_with(&test_secret),
        "a test send is signed like any delivery"
    );
    let body = r.json();
    assert_eq!(body["event"], CONVERSATION_CREATED);
    assert_eq!(body["workspace_id"], workspace_id);
    assert_eq!(
        body["payload"],
        serde_json::from_str::<serde_json::Value>(example_text).unwrap(),
        "a test send carries the catalog's example"
    );

    let explicit_text = r#"{"custom":{"n":7,"note":"hi"}}"#;
    let sent_explicit = c
        .subscriptions
        .send_test_event(send_test(Some(explicit_text)))
        .await
        .unwrap()
        .into_inner();
    assert!(
        sent_explicit.success && sent_explicit.status_code == 200,
        "{sent_explicit:?}"
    );
    let received = test_rx.wait_for(2, WAIT).await;
    let r = with_id(&received, &sent_explicit.message_id);
    assert_eq!(r.len(), 1, "{received:#?}");
    assert_eq!(
        r[0].json()["payload"],
        serde_json::from_str::<serde_json::Value>(explicit_text).unwrap()
    );

    // No example and no payload: the caller is told which field to give.
    let status = c
        .subscriptions
        .send_test_event(pb::SendTestEventRequest {
            event_type: "ticket.created".into(),
            ..send_test(None)
        })
        .await
        .unwrap_err();
    sluice_testkit::assert_invalid(&status, "payload");
    assert_eq!(
        test_rx.received().len(),
        2,
        "a refused test send sends nothing"
    );

    // RetryDelivery: a delivery that failed for good (one attempt, 500), retried by hand.
    let retry_rx = Receiver::start(vec![Reply::status(500)], Reply::status(200)).await;
    let (retry_sub, _) = subscribe(
        &mut c,
        webhook(&retry_rx.url("/retry"), &["ticket.created"]),
    )
    .await;
    // ReplayFailedDeliveries: four failures, of which three after `since`.
    let replay_rx = Receiver::start(vec![Reply::status(500); 4], Reply::status(200)).await;
    let (replay_sub, _) = subscribe(
        &mut c,
        webhook(&replay_rx.url("/replay"), &["call.handled"]),
    )
    .await;
    planes.config_synced().await;
    let mut publisher = planes.publisher(&key).await;

    let failed = publish(&mut publisher, event("ticket.created", r#"{"ticket":1}"#)).await;
    retry_rx.wait_for(1, WAIT).await;
    let before = log
        .delivery_with_status(
            &failed.message_id,
            &retry_sub.id,
            pb::DeliveryStatus::Failed,
        )
        .await;
    assert_eq!(
        (before.attempt_count, before.last_status_code),
        (1, 500),
        "{before:?}"
    );
    let retried = c
        .deliveries
        .retry_delivery(pb::RetryDeliveryRequest {
            workspace_id: String::new(),
            message_id: failed.message_id.clone(),
            subscription_id: retry_sub.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .attempt
        .expect("RetryDelivery returns the attempt");
    assert!(retried.success, "{retried:?}");
    assert_eq!(retried.status_code, 200, "{retried:?}");
    assert_eq!(retried.attempt_number, 2, "{retried:?}");
    assert_eq!(
        retried.trigger,
        pb::AttemptTrigger::Manual as i32,
        "{retried:?}"
    );
    let received = retry_rx.wait_for(2, WAIT).await;
    assert_eq!(received.len(), 2);
    assert!(
        received
            .iter()
            .all(|r| r.header("webhook-id") == failed.message_id),
        "a manual retry keeps the webhook-id: {received:#?}"
    );
    let after = log
        .delivery_with_status(
            &failed.message_id,
            &retry_sub.id,
            pb::DeliveryStatus::Succeeded,
        )
        .await;
    assert_eq!(after.attempt_count, 2, "{after:?}");
    // A delivery that does not exist: NOT_FOUND, not a send.
    let status = c
        .deliveries
        .retry_delivery(pb::RetryDeliveryRequest {
            workspace_id: String::new(),
            message_id: sent.message_id.clone(),
            subscription_id: retry_sub.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    assert_eq!(retry_rx.received().len(), 2);

    let old = publish(&mut publisher, event("call.handled", r#"{"call":0}"#)).await;
    replay_rx.wait_for(1, WAIT).await;
    log.delivery_with_status(&old.message_id, &replay_sub.id, pb::DeliveryStatus::Failed)
        .await;
    let since = now_timestamp();
    let mut recent = Vec::new();
    for i in 1..=3 {
        let r = publish(
            &mut publisher,
            event("call.handled", &format!(r#"{{"call":{i}}}"#)),
        )
        .await;
        recent.push(r.message_id);
    }
    replay_rx.wait_for(4, WAIT).await;
    for id in &recent {
        log.delivery_with_status(id, &replay_sub.id, pb::DeliveryStatus::Failed)
            .await;
    }
    let replayed = c
        .deliveries
        .replay_failed_deliveries(pb::ReplayFailedDeliveriesRequest {
            workspace_id: String::new(),
            subscription_id: replay_sub.id.clone(),
            since_time: Some(since),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        replayed.queued_count, 3,
        "the failed deliveries since the time: {replayed:?}"
    );
    let received = replay_rx.wait_for(7, WAIT).await;
    for id in &recent {
        let d = log
            .delivery_with_status(id, &replay_sub.id, pb::DeliveryStatus::Succeeded)
            .await;
        assert_eq!(d.attempt_count, 2, "{d:?}");
        assert_eq!(
            with_id(&received, id).len(),
            2,
            "{id}: the failure and the replay"
        );
        let attempts = log.attempts_of(id).await;
        assert_eq!(attempts.len(), 2, "{attempts:#?}");
        assert_eq!(
            attempts[1].trigger,
            pb::AttemptTrigger::Replay as i32,
            "{attempts:#?}"
        );
        assert!(attempts[1].success, "{attempts:#?}");
    }
    let old_delivery = log.delivery(&old.message_id, &replay_sub.id).await.unwrap();
    assert_eq!(
        (old_delivery.status, old_delivery.attempt_count),
        (pb::DeliveryStatus::Failed as i32, 1),
        "a failure before `since` is not replayed: {old_delivery:?}"
    );
    let received = replay_rx.received();
    assert_eq!(received.len(), 7, "{received:#?}");
    let ids: HashSet<&str> = received.iter().map(|r| r.header("webhook-id")).collect();
    assert_eq!(ids.len(), 4);
    // The five published messages are stored; the test sends are not.
    assert_eq!(count_rows(&planes.data_db, "dp_messages").await, 5);
}
