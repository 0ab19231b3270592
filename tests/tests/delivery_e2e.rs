//! Both planes end to end on the happy paths: what a receiver gets (envelope, Standard Webhooks headers, signature, custom headers), the delivery log, retries, idempotency, secret rotation, Slack, and delivery while the control plane is down.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use sluice_core::signing::{SigningSecret, verify};
use sluice_proto::control::v1 as pb;
use sluice_proto::data::v1 as dpb;
use sluice_proto::json::json_to_struct;
use sluice_testkit::planes::{PlaneOptions, Planes, on_each_backend};
use sluice_testkit::receiver::{Received, Receiver, Reply, with_id};
use sluice_testkit::{WAIT, count_rows, now_secs};
use sluice_tests::delivery::*;
use sluice_tests::headers;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// Unix seconds of an envelope timestamp written `2024-01-15T10:30:00.000Z` (millisecond
/// precision and a `Z`, as DESIGN.md shows it); `None` when it is not in that form.
fn envelope_timestamp_secs(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let shape_ok = b.len() == 24
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z';
    if !shape_ok {
        return None;
    }
    let num = |range: std::ops::Range<usize>| text.get(range)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    num(20..23)?;
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Checks one request against DESIGN.md's "What a receiver gets".
fn assert_webhook(
    r: &Received,
    message_id: &str,
    workspace_id: &str,
    secret: &str,
    custom: (&str, &str),
    payload: &serde_json::Value,
) {
    let context = format!("request {} to {}", message_id, r.path);
    assert_eq!(r.method, "POST", "{context}: method");
    assert!(
        r.header("content-type").starts_with("application/json"),
        "{context}: content-type {:?}",
        r.header("content-type")
    );
    assert_eq!(r.header("webhook-id"), message_id, "{context}: webhook-id");
    let timestamp: i64 = r.header("webhook-timestamp").parse().unwrap_or_else(|_| {
        panic!(
            "{context}: webhook-timestamp {:?}",
            r.header("webhook-timestamp")
        )
    });
    assert!(
        (timestamp - now_secs()).abs() <= 5,
        "{context}: webhook-timestamp {timestamp} is not within 5 s of now ({})",
        now_secs()
    );
    let signature = r.header("webhook-signature");
    assert_eq!(
        signature
            .split(' ')
            .filter(|s| s.starts_with("v1,"))
            .count(),
        1,
        "{context}: one v1 signature outside a rotation, got {signature:?}"
    );
    assert!(
        r.verifies_with(secret),
        "{context}: webhook-signature {signature:?} does not verify with the subscription's secret"
    );
    assert!(
        r.header("user-agent")
            .to_ascii_lowercase()
            .contains("sluice"),
        "{context}: user-agent {:?} does not name Sluice",
        r.header("user-agent")
    );
    assert_eq!(
        r.header(custom.0),
        custom.1,
        "{context}: custom header {}",
        custom.0
    );

    let body = r.json();
    let object = body
        .as_object()
        .unwrap_or_else(|| panic!("{context}: body {body}"));
    let keys: BTreeSet<&str> = object.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "id",
            "event",
            "version",
            "timestamp",
            "workspace_id",
            "payload"
        ]),
        "{context}: envelope keys"
    );
    assert_eq!(body["id"], message_id, "{context}: envelope id");
    assert_eq!(
        body["event"], CONVERSATION_CREATED,
        "{context}: envelope event"
    );
    assert_eq!(body["version"], 1, "{context}: envelope version");
    assert_eq!(
        body["workspace_id"], workspace_id,
        "{context}: envelope workspace_id"
    );
    let stamp = body["timestamp"].as_str().unwrap_or_default();
    let secs = envelope_timestamp_secs(stamp).unwrap_or_else(|| {
        panic!("{context}: envelope timestamp {stamp:?} is not like 2024-01-15T10:30:00.000Z")
    });
    assert!(
        (secs - now_secs()).abs() <= 5,
        "{context}: envelope timestamp {stamp} is not within 5 s of now"
    );
    // Value equality also tells integers from floats: 3 != 3.0.
    assert_eq!(&body["payload"], payload, "{context}: payload");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_published_event_reaches_every_matching_subscription_signed_and_is_logged() {
    on_each_backend(PlaneOptions::default(), published_event_is_delivered).await;
}

async fn published_event_is_delivered(planes: &mut Planes) {
    let (workspace_id, key) = planes.workspace_with_key("Tideflow").await;
    let mut c = planes.clients(Some(&key)).await;
    let log = Log::new(&c);
    let receiver = Receiver::ok().await;
    let bystander = Receiver::ok().await;
    let (exact, exact_secret) = subscribe(
        &mut c,
        pb::Subscription {
            headers: headers(&[("x-tenant", "acme")]),
            ..webhook(&receiver.url("/hooks/exact"), &[CONVERSATION_CREATED])
        },
    )
    .await;
    let (family, family_secret) = subscribe(
        &mut c,
        pb::Subscription {
            headers: headers(&[("x-tenant", "globex")]),
            ..webhook(&receiver.url("/hooks/family"), &["conversation.*"])
        },
    )
    .await;
    let (other, _) = subscribe(&mut c, webhook(&bystander.url("/other"), &["message.*"])).await;
    planes.config_synced().await;
    let mut publisher = planes.publisher(&key).await;

    // 1. The payload as a Struct (what grpcurl users send): numbers arrive as doubles and
    //    must reach the receiver as integers where they are integral.
    let struct_text = r#"{"conversation":{"id":"cnv_abc123","contactId":"cnt_def456","messageCount":3,"priority":-2,"score":1.5,"tags":["vip","new"],"open":true,"assignee":null}}"#;
    let from_struct = publish(
        &mut publisher,
        dpb::PublishRequest {
            event_type: CONVERSATION_CREATED.into(),
            payload: Some(json_to_struct(struct_text).unwrap()),
            ..Default::default()
        },
    )
    .await;
    // 2. The payload as JSON text, with odd spacing and key order, kept byte for byte; and a
    //    W3C traceparent in the metadata, carried to the receiver.
    let raw = r#"{ "zeta": 1, "alpha": {"big": 12345678901, "f": 0.25}, "list": [1, 2, 3] }"#;
    let mut request = tonic::Request::new(event(CONVERSATION_CREATED, raw));
    request
        .metadata_mut()
        .insert("traceparent", TRACEPARENT.parse().unwrap());
    let from_json = publisher.publish(request).await.unwrap().into_inner();

    for response in [&from_struct, &from_json] {
        assert!(response.message_id.starts_with("msg_"), "{response:?}");
        assert!(!response.duplicate, "{response:?}");
        assert_eq!(
            response.delivery_count, 2,
            "two subscriptions match: {response:?}"
        );
    }
    assert_ne!(from_struct.message_id, from_json.message_id);

    let received = receiver.wait_for(4, WAIT).await;
    let struct_payload: serde_json::Value = serde_json::from_str(struct_text).unwrap();
    let json_payload: serde_json::Value = serde_json::from_str(raw).unwrap();
    for (response, payload) in [(&from_struct, &struct_payload), (&from_json, &json_payload)] {
        let requests = with_id(&received, &response.message_id);
        let paths: BTreeSet<&str> = requests.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(
            (requests.len(), paths),
            (2, BTreeSet::from(["/hooks/exact", "/hooks/family"])),
            "one POST per matching subscription for {}",
            response.message_id
        );
        for r in requests {
            let (secret, custom) = if r.path == "/hooks/exact" {
                (&exact_secret, ("x-tenant", "acme"))
            } else {
                (&family_secret, ("x-tenant", "globex"))
            };
            assert_webhook(
                r,
                &response.message_id,
                &workspace_id,
                secret,
                custom,
                payload,
            );
        }
    }
    for r in with_id(&received, &from_struct.message_id) {
        let body = r.json();
        let count = &body["payload"]["conversation"]["messageCount"];
        assert!(
            count.is_i64() || count.is_u64(),
            "a Struct's integral number must stay an integer, got {count}"
        );
    }
    for r in with_id(&received, &from_json.message_id) {
        let text = String::from_utf8_lossy(&r.body);
        assert!(
            text.contains(raw),
            "payload_json must be delivered byte for byte: {text}"
        );
        let traceparent = r.header("traceparent");
        assert_eq!(
            traceparent.split('-').nth(1),
            Some(TRACE_ID),
            "the receiver continues the publisher's trace: traceparent {traceparent:?}"
        );
        // In-process no tracer is installed, so no span of the planes comes between: the
        // publisher's context goes out as it came.
        assert_eq!(traceparent, TRACEPARENT);
    }

    // The log: one attempt per matching subscription, successful, with status and latency.
    for response in [&from_struct, &from_json] {
        let attempts = eventually(
            &format!("the 2 attempts of {} in the log", response.message_id),
            WAIT,
            async || {
                let a = log.attempts_of(&response.message_id).await;
                (a.len() >= 2).then_some(a)
            },
        )
        .await;
        assert_eq!(attempts.len(), 2, "{attempts:#?}");
        let subs: BTreeSet<&str> = attempts
            .iter()
            .map(|a| a.subscription_id.as_str())
            .collect();
        assert_eq!(
            subs,
            BTreeSet::from([exact.id.as_str(), family.id.as_str()])
        );
        for a in &attempts {
            assert!(a.id.starts_with("att_"), "{a:?}");
            assert_eq!(a.message_id, response.message_id);
            assert_eq!(a.workspace_id, workspace_id);
            assert_eq!(a.event_type, CONVERSATION_CREATED);
            assert_eq!(a.attempt_number, 1, "{a:?}");
            assert!(a.success, "{a:?}");
            assert_eq!(a.status_code, 200, "{a:?}");
            assert_eq!(a.error_kind, "", "{a:?}");
            assert_eq!(a.trigger, pb::AttemptTrigger::Scheduled as i32, "{a:?}");
            let latency = a.latency.unwrap_or_default();
            assert!(
                latency.seconds > 0 || latency.nanos > 0,
                "an attempt has a latency: {a:?}"
            );
            let url = if a.subscription_id == exact.id {
                &exact.url
            } else {
                &family.url
            };
            assert_eq!(&a.url, url, "{a:?}");
            assert!(a.attempt_time.is_some(), "{a:?}");
        }
    }
    // The non-matching subscription got nothing, and nothing is logged for it.
    assert!(
        bystander.received().is_empty(),
        "a `message.*` subscription got a conversation event: {:?}",
        bystander.received()
    );
    assert!(log.attempts_to(&other.id).await.is_empty());

    let messages = eventually("both messages in ListMessages", WAIT, async || {
        let m = log.messages(pb::ListMessagesRequest::default()).await;
        (m.len() >= 2).then_some(m)
    })
    .await;
    assert_eq!(messages.len(), 2, "{messages:#?}");
    for response in [&from_struct, &from_json] {
        let m = messages
            .iter()
            .find(|m| m.id == response.message_id)
            .unwrap_or_else(|| panic!("{} is not listed: {messages:#?}", response.message_id));
        assert_eq!(m.workspace_id, workspace_id);
        assert_eq!(m.event_type, CONVERSATION_CREATED);
        assert_eq!(m.delivery_count, 2, "{m:?}");
        assert!(m.create_time.is_some());
        for sub in [&exact, &family] {
            let d = log
                .delivery_with_status(&response.message_id, &sub.id, pb::DeliveryStatus::Succeeded)
                .await;
            assert_eq!(d.attempt_count, 1, "{d:?}");
            assert_eq!(d.last_status_code, 200, "{d:?}");
            assert_eq!(d.last_error_kind, "", "{d:?}");
            assert_eq!(d.event_type, CONVERSATION_CREATED);
            assert!(d.last_attempt_time.is_some(), "{d:?}");
            assert!(d.next_attempt_time.is_none(), "not pending: {d:?}");
        }
    }
    assert_eq!(receiver.received().len(), 4, "no extra POSTs");

    // What the data plane keeps once it drained: the messages, nothing else. A first attempt
    // that succeeds needs no delivery row, its message's fan-out row went with it, and every
    // outbox row was acked and deleted.
    planes.stop_data().await;
    for (table, rows) in [
        ("dp_messages", 2),
        ("dp_deliveries", 0),
        ("dp_fanout", 0),
        ("dp_outbox", 0),
    ] {
        assert_eq!(count_rows(&planes.data_db, table).await, rows, "{table}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_attempts_are_retried_with_the_same_webhook_id() {
    on_each_backend(PlaneOptions::default(), retries).await;
}

async fn retries(planes: &mut Planes) {
    let (_, key) = planes.workspace_with_key("Retries").await;
    let mut c = planes.clients(Some(&key)).await;
    let log = Log::new(&c);
    let receiver = Receiver::start(
        vec![Reply::status(500), Reply::status(500)],
        Reply::status(200),
    )
    .await;
    let (sub, secret) = subscribe(&mut c, webhook(&receiver.url("/flaky"), &["*"])).await;
    planes.config_synced().await;
    let mut publisher = planes.publisher(&key).await;
    let published = publish(&mut publisher, event(CONVERSATION_CREATED, r#"{"n":1}"#)).await;

    let received = receiver.wait_for(3, WAIT).await;
    let delivery = log
        .delivery_with_status(
            &published.message_id,
            &sub.id,
            pb::DeliveryStatus::Succeeded,
        )
        .await;
    let attempts = eventually("3 attempts in the log", WAIT, async || {
        let a = log.attempts_of(&published.message_id).await;
        (a.len() >= 3).then_some(a)
    })
    .await;

    // The delivery is over, so nothing more can arrive.
    let received_after = receiver.received();
    assert_eq!(
        received_after.len(),
        3,
        "exactly three POSTs: {received_after:#?}"
    );
    for r in &received {
        assert_eq!(
            r.header("webhook-id"),
            published.message_id,
            "same webhook-id on every attempt"
        );
        assert!(r.verifies_with(&secret), "every attempt is signed");
    }
    let numbers: Vec<u32> = attempts.iter().map(|a| a.attempt_number).collect();
    assert_eq!(numbers, vec![1, 2, 3], "{attempts:#?}");
    for a in &attempts[..2] {
        assert!(!a.success, "{a:?}");
        assert_eq!(a.status_code, 500, "{a:?}");
        assert_eq!(a.error_kind, "http_status", "{a:?}");
    }
    assert!(attempts[2].success, "{:?}", attempts[2]);
    assert_eq!(attempts[2].status_code, 200);
    assert_eq!(attempts[2].error_kind, "");
    assert_eq!(delivery.attempt_count, 3, "{delivery:?}");
    assert_eq!(delivery.last_status_code, 200, "{delivery:?}");

    // Endpoint health counts the three attempts; the success ends the failure streak.
    let health = c
        .deliveries
        .get_endpoint_health(pb::GetEndpointHealthRequest {
            workspace_id: String::new(),
            subscription_id: sub.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.attempts_24h, 3, "{health:?}");
    assert_eq!(health.successes_24h, 1, "{health:?}");
    assert_eq!(health.consecutive_failures, 0, "{health:?}");
    assert!(
        health.last_success_time.is_some() && health.last_failure_time.is_some(),
        "{health:?}"
    );
    assert_eq!(health.pending_deliveries, 0, "{health:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_on_503_is_honoured() {
    on_each_backend(PlaneOptions::default(), retry_after).await;
}

async fn retry_after(planes: &mut Planes) {
    let (_, key) = planes.workspace_with_key("Busy").await;
    let mut c = planes.clients(Some(&key)).await;
    let log = Log::new(&c);
    // The schedule says 20 ms; the endpoint asks for 1 s.
    let receiver = Receiver::start(
        vec![Reply::status(503).header("retry-after", "1")],
        Reply::status(200),
    )
    .await;
    let (sub, _) = subscribe(&mut c, webhook(&receiver.url("/busy"), &["*"])).await;
    planes.config_synced().await;
    let mut publisher = planes.publisher(&key).await;
    let published = publish(&mut publisher, event(CONVERSATION_CREATED, r#"{"n":1}"#)).await;

    let received = receiver.wait_for(2, WAIT).await;
    let delivery = log
        .delivery_with_status(
            &published.message_id,
            &sub.id,
            pb::DeliveryStatus::Succeeded,
        )
        .await;
    let gap = received[1].at.duration_since(received[0].at);
    assert!(
        gap >= Duration::from_millis(950),
        "Retry-After: 1 on a 503 must delay the retry by a second, it came after {gap:?}"
    );
    assert_eq!(delivery.attempt_count, 2, "{delivery:?}");
    let attempts = log.attempts_of(&published.message_id).await;
    assert_eq!(attempts[0].status_code, 503, "{attempts:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn delivery_goes_on_while_the_control_plane_is_down_and_the_log_catches_up() {
    on_each_backend(PlaneOptions::default(), control_plane_down).await;
}

async fn control_plane_down(planes: &mut Planes) {
    const EVENTS: usize = 20;
    let (_, key) = planes.workspace_with_key("Outage").await;
    let mut c = planes.clients(Some(&key)).await;
    let receiver = Receiver::ok().await;
    let (sub, _) = subscribe(
        &mut c,
        webhook(&receiver.url("/outage"), &["conversation.*"]),
    )
    .await;
    planes.config_synced().await;
    drop(c);

    planes.stop_control().await;
    let mut publisher = planes.publisher(&key).await;
    let mut published = Vec::new();
    for i in 0..EVENTS {
        let r = publish(
            &mut publisher,
            event(CONVERSATION_CREATED, &format!(r#"{{"i":{i}}}"#)),
        )
        .await;
        assert_eq!(r.delivery_count, 1, "{r:?}");
        published.push(r.message_id);
    }
    let want: HashSet<String> = published.iter().cloned().collect();
    assert_eq!(want.len(), EVENTS, "message ids are unique");

    let received = receiver.wait_for(EVENTS, WAIT).await;
    let got: HashSet<String> = received
        .iter()
        .map(|r| r.header("webhook-id").to_owned())
        .collect();
    assert_eq!(
        got, want,
        "every event reached the receiver with the control plane down"
    );

    planes.restart_control().await;
    let c = planes.clients(Some(&key)).await;
    let log = Log::new(&c);
    // The data plane reconnects with a backoff of at most 5 s; give it room.
    let attempts = eventually(
        "all 20 attempts in the log after the restart",
        Duration::from_secs(45),
        async || {
            let a = log.attempts_to(&sub.id).await;
            (a.len() >= EVENTS).then_some(a)
        },
    )
    .await;
    assert_eq!(
        attempts.len(),
        EVENTS,
        "no attempt duplicated: {attempts:#?}"
    );
    let logged: HashSet<String> = attempts.iter().map(|a| a.message_id.clone()).collect();
    assert_eq!(logged, want, "no attempt missing");
    assert!(
        attempts.iter().all(|a| a.success && a.attempt_number == 1),
        "{attempts:#?}"
    );
    let ids: HashSet<&str> = attempts.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids.len(), EVENTS);

    let messages = eventually("all 20 messages listed", WAIT, async || {
        let m = log.messages(pb::ListMessagesRequest::default()).await;
        (m.len() >= EVENTS).then_some(m)
    })
    .await;
    let listed: HashSet<String> = messages.iter().map(|m| m.id.clone()).collect();
    assert_eq!((messages.len(), listed), (EVENTS, want.clone()));
    let deliveries = log
        .deliveries(pb::ListDeliveriesRequest {
            subscription_id: sub.id.clone(),
            ..Default::default()
        })
        .await;
    assert_eq!(deliveries.len(), EVENTS, "{deliveries:#?}");
    assert!(
        deliveries
            .iter()
            .all(|d| d.status == pb::DeliveryStatus::Succeeded as i32 && d.attempt_count == 1),
        "{deliveries:#?}"
    );
    assert_eq!(receiver.received().len(), EVENTS, "no duplicate POSTs");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_repeat_returns_the_first_message_and_delivers_nothing_new() {
    on_each_backend(PlaneOptions::default(), idempotency).await;
}

async fn idempotency(planes: &mut Planes) {
    let receiver = Receiver::ok().await;
    let (_, key_a) = planes.workspace_with_key("A").await;
    let (_, key_b) = planes.workspace_with_key("B").await;
    let mut a = planes.clients(Some(&key_a)).await;
    let mut b = planes.clients(Some(&key_b)).await;
    let log_a = Log::new(&a);
    let (sub_a, _) = subscribe(&mut a, webhook(&receiver.url("/a"), &["*"])).await;
    let (sub_b, _) = subscribe(&mut b, webhook(&receiver.url("/b"), &["*"])).await;
    planes.config_synced().await;
    let mut pub_a = planes.publisher(&key_a).await;
    let mut pub_b = planes.publisher(&key_b).await;

    let keyed = |payload: &str| dpb::PublishRequest {
        idempotency_key: "order-42".into(),
        ..event(CONVERSATION_CREATED, payload)
    };
    let first = publish(&mut pub_a, keyed(r#"{"try":1}"#)).await;
    let repeat = publish(&mut pub_a, keyed(r#"{"try":2}"#)).await;
    let other_workspace = publish(&mut pub_b, keyed(r#"{"try":1}"#)).await;
    // A fence: once its attempt is logged, workspace A's work before it is done.
    let fence = publish(&mut pub_a, event(CONVERSATION_CREATED, r#"{"fence":true}"#)).await;

    assert!(!first.duplicate, "{first:?}");
    assert_eq!(
        repeat.message_id, first.message_id,
        "a repeat returns the first message id"
    );
    assert!(repeat.duplicate, "a repeat says duplicate: {repeat:?}");
    assert!(
        !other_workspace.duplicate,
        "another workspace may use the same key: {other_workspace:?}"
    );
    assert_ne!(other_workspace.message_id, first.message_id);

    let received = receiver.wait_for(3, WAIT).await;
    eventually("the fence's attempt in the log", WAIT, async || {
        let done = log_a.attempts_of(&fence.message_id).await;
        let first_done = log_a.attempts_of(&first.message_id).await;
        (!done.is_empty() && !first_done.is_empty()).then_some(())
    })
    .await;
    let received_now = receiver.received();
    let first_posts = with_id(&received_now, &first.message_id);
    assert_eq!(
        first_posts.len(),
        1,
        "one POST for the keyed event: {received_now:#?}"
    );
    assert_eq!(first_posts[0].path, "/a");
    assert_eq!(
        first_posts[0].json()["payload"]["try"],
        1,
        "the first payload is the one delivered"
    );
    let b_posts = with_id(&received, &other_workspace.message_id);
    assert_eq!(b_posts.len(), 1);
    assert_eq!(b_posts[0].path, "/b");
    assert_eq!(received_now.len(), 3, "{received_now:#?}");
    assert_eq!(
        log_a.attempts_to(&sub_a.id).await.len(),
        2,
        "first and fence only"
    );
    assert_eq!(
        count_rows(&planes.data_db, "dp_messages").await,
        3,
        "the repeat stored no message"
    );
    // Every first attempt succeeded, so the queue holds no delivery rows and no fan-out
    // rows; none were made for the repeat either.
    assert_eq!(
        count_rows(&planes.data_db, "dp_deliveries").await
            + count_rows(&planes.data_db, "dp_fanout").await,
        0,
        "the repeat stored no delivery"
    );
    assert!(
        log_a.attempts_to(&sub_b.id).await.is_empty(),
        "workspace A sees none of B's log"
    );

    // Repeats racing each other (likely in one group commit) still make one message.
    let racing: Vec<_> = (0..8)
        .map(|i| {
            let mut p = pub_a.clone();
            let request = dpb::PublishRequest {
                idempotency_key: "order-43".into(),
                ..event(CONVERSATION_CREATED, &format!(r#"{{"racer":{i}}}"#))
            };
            tokio::spawn(async move { p.publish(request).await.map(|r| r.into_inner()) })
        })
        .collect();
    let mut answers = Vec::new();
    for task in racing {
        answers.push(task.await.unwrap().unwrap());
    }
    let ids: HashSet<&str> = answers.iter().map(|a| a.message_id.as_str()).collect();
    assert_eq!(
        ids.len(),
        1,
        "racing repeats of one key get one message id: {answers:#?}"
    );
    assert_eq!(
        answers.iter().filter(|a| !a.duplicate).count(),
        1,
        "exactly one of the racing publishes is the original: {answers:#?}"
    );
    let raced = answers[0].message_id.clone();

    // Repeats within one stream (one commit) are caught too.
    let requests: Vec<dpb::PublishStreamRequest> = (0..3)
        .map(|sequence| dpb::PublishStreamRequest {
            sequence,
            event: Some(dpb::PublishRequest {
                idempotency_key: "order-44".into(),
                ..event(CONVERSATION_CREATED, r#"{"streamed":true}"#)
            }),
        })
        .collect();
    let mut acks = pub_a
        .publish_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut results = Vec::new();
    while let Some(ack) = acks.message().await.unwrap() {
        results.push(ack.result.expect("a repeat is accepted"));
    }
    assert_eq!(results.len(), 3, "{results:#?}");
    assert_eq!(
        results.iter().filter(|r| !r.duplicate).count(),
        1,
        "exactly one of the stream's repeats is the original: {results:#?}"
    );
    assert!(
        results
            .iter()
            .all(|r| r.message_id == results[0].message_id),
        "a stream's repeats of one key get one message id: {results:#?}"
    );
    let streamed = results[0].message_id.clone();
    let fence = publish(&mut pub_a, event(CONVERSATION_CREATED, r#"{"fence":2}"#)).await;
    receiver.wait_for(6, WAIT).await;
    eventually("the second fence's attempt in the log", WAIT, async || {
        let done = log_a.attempts_of(&fence.message_id).await;
        let raced_done = log_a.attempts_of(&raced).await;
        let streamed_done = log_a.attempts_of(&streamed).await;
        (!done.is_empty() && !raced_done.is_empty() && !streamed_done.is_empty()).then_some(())
    })
    .await;
    let received_now = receiver.received();
    assert_eq!(with_id(&received_now, &raced).len(), 1, "{received_now:#?}");
    assert_eq!(
        with_id(&received_now, &streamed).len(),
        1,
        "{received_now:#?}"
    );
    assert_eq!(received_now.len(), 6, "{received_now:#?}");
    assert_eq!(count_rows(&planes.data_db, "dp_messages").await, 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn during_a_secret_rotation_both_secrets_sign() {
    on_each_backend(PlaneOptions::default(), rotation).await;
}

/// Which of `secrets` verify each `v1` signature of the header on its own.
fn signers(r: &Received, secrets: &[&str]) -> Vec<Vec<usize>> {
    r.header("webhook-signature")
        .split(' ')
        .map(|one| {
            secrets
                .iter()
                .enumerate()
                .filter(|(_, s)| {
                    verify(
                        &SigningSecret::parse(s).unwrap(),
                        r.header("webhook-id"),
                        r.header("webhook-timestamp"),
                        one,
                        &r.body,
                        now_secs(),
                        300,
                    )
                    .is_ok()
                })
                .map(|(i, _)| i)
                .collect()
        })
        .collect()
}

async fn rotation(planes: &mut Planes) {
    let (_, key) = planes.workspace_with_key("Rotation").await;
    let mut c = planes.clients(Some(&key)).await;
    let receiver = Receiver::ok().await;
    let (sub, old) = subscribe(&mut c, webhook(&receiver.url("/rotate"), &["*"])).await;
    planes.config_synced().await;
    let mut publisher = planes.publisher(&key).await;

    let before = publish(&mut publisher, event(CONVERSATION_CREATED, r#"{"n":1}"#)).await;
    receiver.wait_for(1, WAIT).await;

    let rotated = c
        .subscriptions
        .rotate_subscription_secret(pb::RotateSubscriptionSecretRequest {
            workspace_id: String::new(),
            id: sub.id.clone(),
            secret: String::new(),
            grace_period: None,
        })
        .await
        .unwrap()
        .into_inner();
    let new = rotated.secret;
    assert_ne!(new, old);
    let expire = rotated.previous_secret_expire_time.unwrap();
    let grace = expire.seconds - now_secs();
    assert!(
        (86_400 - 60..=86_400 + 60).contains(&grace),
        "the default grace is 24 hours, got {grace} s"
    );
    planes.config_synced().await;

    let after = publish(&mut publisher, event(CONVERSATION_CREATED, r#"{"n":2}"#)).await;
    let received = receiver.wait_for(2, WAIT).await;
    let first = with_id(&received, &before.message_id)[0];
    let second = with_id(&received, &after.message_id)[0];

    assert_eq!(
        signers(first, &[&old, &new]),
        vec![vec![0]],
        "before the rotation: one signature, by the old secret ({:?})",
        first.header("webhook-signature")
    );
    let by = signers(second, &[&old, &new]);
    assert_eq!(
        second
            .header("webhook-signature")
            .split(' ')
            .filter(|s| s.starts_with("v1,"))
            .count(),
        2,
        "two v1 signatures during the grace period: {:?}",
        second.header("webhook-signature")
    );
    let mut sorted = by.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        vec![vec![0], vec![1]],
        "one signature by the new secret and one by the old, got {by:?}"
    );
    assert!(second.verifies_with(&new) && second.verifies_with(&old));

    // A rotation without grace: only the newest secret signs from then on.
    let newest = c
        .subscriptions
        .rotate_subscription_secret(pb::RotateSubscriptionSecretRequest {
            workspace_id: String::new(),
            id: sub.id.clone(),
            secret: String::new(),
            grace_period: Some(prost_types::Duration {
                seconds: 0,
                nanos: 0,
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    planes.config_synced().await;
    let last = publish(&mut publisher, event(CONVERSATION_CREATED, r#"{"n":3}"#)).await;
    let received = receiver.wait_for(3, WAIT).await;
    let third = with_id(&received, &last.message_id)[0];
    assert_eq!(
        signers(third, &[&old, &new, &newest]),
        vec![vec![2]],
        "after a rotation without grace only the newest secret signs: {:?}",
        third.header("webhook-signature")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slack_destination_gets_an_unsigned_text_message() {
    on_each_backend(PlaneOptions::default(), slack).await;
}

async fn slack(planes: &mut Planes) {
    let (_, key) = planes.workspace_with_key("Slack").await;
    let mut c = planes.clients(Some(&key)).await;
    let log = Log::new(&c);
    let receiver = Receiver::ok().await;
    let (sub, _) = subscribe(
        &mut c,
        pb::Subscription {
            destination_type: pb::DestinationType::Slack as i32,
            ..webhook(
                &receiver.url("/services/T000/B000/XXXX"),
                &["conversation.*"],
            )
        },
    )
    .await;
    assert_eq!(sub.destination_type, pb::DestinationType::Slack as i32);
    planes.config_synced().await;
    let mut publisher = planes.publisher(&key).await;
    let published = publish(
        &mut publisher,
        event(
            CONVERSATION_CREATED,
            r#"{"conversation":{"id":"cnv_abc123"}}"#,
        ),
    )
    .await;

    let received = receiver.wait_for(1, WAIT).await;
    let attempts = eventually("the Slack attempt in the log", WAIT, async || {
        let a = log.attempts_of(&published.message_id).await;
        (!a.is_empty()).then_some(a)
    })
    .await;
    let r = &received[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/services/T000/B000/XXXX");
    assert!(
        r.header("content-type").starts_with("application/json"),
        "{:?}",
        r.headers
    );
    assert!(
        r.headers.get("webhook-signature").is_none(),
        "Slack messages are not signed: {:?}",
        r.headers
    );
    let body = r.json();
    let object = body.as_object().unwrap_or_else(|| panic!("body {body}"));
    assert_eq!(
        object.keys().collect::<Vec<_>>(),
        vec!["text"],
        "a Slack body is {{\"text\": ...}}: {body}"
    );
    let text = body["text"].as_str().unwrap_or_default();
    assert!(
        text.contains(CONVERSATION_CREATED),
        "the text names the event: {text:?}"
    );
    assert!(
        text.contains("cnv_abc123"),
        "the text shows the payload: {text:?}"
    );
    assert!(attempts[0].success, "{:?}", attempts[0]);
}
