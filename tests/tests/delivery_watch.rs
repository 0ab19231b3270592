//! `DeliveryService.WatchAttempts` end to end: attempts arrive live while events are
//! published, filtered by subscription, event type and success; a cursor resumes exactly
//! after its attempt; bad input is refused naming the field; a reader that falls behind is
//! told so, with the cursor to resume from, instead of being buffered without bound.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sluice_proto::control::v1 as pb;
use sluice_testkit::WAIT;
use sluice_testkit::assertions::assert_invalid;
use sluice_testkit::clients::Bearer;
use sluice_testkit::planes::{PlaneOptions, Planes, on_each_backend};
use sluice_testkit::receiver::{Receiver, Reply};
use sluice_tests::delivery::*;
use tonic::Streaming;

type Watch = Streaming<pb::WatchAttemptsResponse>;

/// One attempt per delivery, so each event makes exactly one attempt per subscription.
fn single_attempt() -> PlaneOptions {
    PlaneOptions {
        retry_schedule: "0s".into(),
        ..PlaneOptions::default()
    }
}

async fn watch(c: &sluice_testkit::Clients, request: pb::WatchAttemptsRequest) -> Watch {
    c.deliveries
        .clone()
        .watch_attempts(request)
        .await
        .unwrap()
        .into_inner()
}

/// The next `n` messages of a watch, each within the test deadline.
async fn next(stream: &mut Watch, n: usize) -> Vec<pb::WatchAttemptsResponse> {
    let mut got = Vec::new();
    while got.len() < n {
        let message = tokio::time::timeout(WAIT, stream.message())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} attempts arrived: {got:#?}", got.len()))
            .unwrap()
            .unwrap();
        got.push(message);
    }
    got
}

/// Nothing more arrives for a while (used only after the awaited messages, to show that
/// no extra one follows; a late extra one would fail the next `next` instead).
async fn quiet(stream: &mut Watch) {
    if let Ok(extra) = tokio::time::timeout(Duration::from_millis(300), stream.message()).await {
        panic!("an unexpected message: {extra:?}");
    }
}

fn attempt(message: &pb::WatchAttemptsResponse) -> &pb::Attempt {
    message.attempt.as_ref().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn attempts_arrive_live_filtered_and_resumable() {
    on_each_backend(single_attempt(), live).await;
}

async fn live(planes: &mut Planes) {
    let (_, key) = planes.workspace_with_key("Watch").await;
    let mut c = planes.clients(Some(&key)).await;
    let ok = Receiver::ok().await;
    let failing = Receiver::start(Vec::new(), Reply::status(500)).await;
    let (ok_sub, _) = subscribe(&mut c, webhook(&ok.url("/ok"), &["*"])).await;
    let (failing_sub, _) = subscribe(
        &mut c,
        webhook(&failing.url("/failing"), &["conversation.*"]),
    )
    .await;
    planes.config_synced().await;
    // Another workspace's attempts never show.
    let (_, other_key) = planes.workspace_with_key("Other").await;
    let mut other = planes.clients(Some(&other_key)).await;
    let other_receiver = Receiver::ok().await;
    subscribe(&mut other, webhook(&other_receiver.url("/other"), &["*"])).await;
    planes.config_synced().await;

    // Opened before anything is published: "from now".
    let mut all = watch(&c, pb::WatchAttemptsRequest::default()).await;
    let mut to_ok = watch(
        &c,
        pb::WatchAttemptsRequest {
            subscription_id: ok_sub.id.clone(),
            ..Default::default()
        },
    )
    .await;
    let mut failed = watch(
        &c,
        pb::WatchAttemptsRequest {
            success: Some(false),
            ..Default::default()
        },
    )
    .await;
    let mut calls = watch(
        &c,
        pb::WatchAttemptsRequest {
            event_type: "CALL_HANDLED".into(),
            ..Default::default()
        },
    )
    .await;

    let mut publisher = planes.publisher(&key).await;
    let mut other_publisher = planes.publisher(&other_key).await;
    publish(&mut other_publisher, event(CONVERSATION_CREATED, "{}")).await;
    let first = publish(&mut publisher, event(CONVERSATION_CREATED, r#"{"n":1}"#)).await;
    // Live: the attempts of the first event arrive before the second is published.
    let got = next(&mut all, 2).await;
    assert!(
        got.iter()
            .all(|m| attempt(m).message_id == first.message_id),
        "{got:#?}"
    );
    let call = publish(&mut publisher, event("call.handled", r#"{"n":2}"#)).await;
    let got = next(&mut all, 1).await;
    assert_eq!(attempt(&got[0]).message_id, call.message_id);
    let third = publish(&mut publisher, event(CONVERSATION_CREATED, r#"{"n":3}"#)).await;
    let got = next(&mut all, 2).await;
    assert!(
        got.iter()
            .all(|m| attempt(m).message_id == third.message_id)
    );
    quiet(&mut all).await;

    // Filters.
    let ok_got = next(&mut to_ok, 3).await;
    assert!(
        ok_got
            .iter()
            .all(|m| attempt(m).subscription_id == ok_sub.id && attempt(m).success),
        "{ok_got:#?}"
    );
    quiet(&mut to_ok).await;
    let got = next(&mut failed, 2).await;
    assert!(
        got.iter()
            .all(|m| attempt(m).subscription_id == failing_sub.id && !attempt(m).success),
        "{got:#?}"
    );
    quiet(&mut failed).await;
    let got = next(&mut calls, 1).await;
    assert_eq!(attempt(&got[0]).event_type, "call.handled");
    assert_eq!(attempt(&got[0]).message_id, call.message_id);
    quiet(&mut calls).await;

    // A watch from now sees nothing of the past.
    let mut from_now = to_ok_again(&c, &ok_sub.id, "").await;
    quiet(&mut from_now).await;
    // Resume: exactly what followed the first attempt's cursor, nothing before, nothing
    // twice; then live again.
    let mut resumed = to_ok_again(&c, &ok_sub.id, &ok_got[0].cursor).await;
    let got = next(&mut resumed, 2).await;
    assert_eq!(
        got.iter()
            .map(|m| attempt(m).message_id.clone())
            .collect::<Vec<_>>(),
        [call.message_id.clone(), third.message_id.clone()],
        "after the first attempt come exactly the second and the third"
    );
    quiet(&mut resumed).await;
    let fourth = publish(&mut publisher, event(CONVERSATION_CREATED, r#"{"n":4}"#)).await;
    let got = next(&mut resumed, 1).await;
    assert_eq!(attempt(&got[0]).message_id, fourth.message_id);
    // The last cursor resumes after the last attempt.
    let mut after_last = to_ok_again(&c, &ok_sub.id, &got[0].cursor).await;
    quiet(&mut after_last).await;
}

/// A watch of one subscription's attempts, from `cursor` (empty: from now).
async fn to_ok_again(c: &sluice_testkit::Clients, subscription_id: &str, cursor: &str) -> Watch {
    watch(
        c,
        pb::WatchAttemptsRequest {
            subscription_id: subscription_id.to_owned(),
            cursor: cursor.to_owned(),
            ..Default::default()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_naming_the_field() {
    on_each_backend(PlaneOptions::default(), bad_input).await;
}

async fn bad_input(planes: &mut Planes) {
    let (_, key) = planes.workspace_with_key("Bad").await;
    let c = planes.clients(Some(&key)).await;
    let cases = [
        (
            pb::WatchAttemptsRequest {
                cursor: "not-a-cursor".into(),
                ..Default::default()
            },
            "cursor",
        ),
        (
            pb::WatchAttemptsRequest {
                subscription_id: "nope".into(),
                ..Default::default()
            },
            "subscription_id",
        ),
        (
            pb::WatchAttemptsRequest {
                event_type: "no dots!".into(),
                ..Default::default()
            },
            "event_type",
        ),
    ];
    for (request, field) in cases {
        let err = c
            .deliveries
            .clone()
            .watch_attempts(request)
            .await
            .unwrap_err();
        assert_invalid(&err, field);
    }
    // Another workspace's subscription is not found; no key at all is not let in.
    let (_, other_key) = planes.workspace_with_key("Other").await;
    let mut other = planes.clients(Some(&other_key)).await;
    let (theirs, _) = subscribe(&mut other, webhook("http://127.0.0.1:9/x", &["*"])).await;
    let err = c
        .deliveries
        .clone()
        .watch_attempts(pb::WatchAttemptsRequest {
            subscription_id: theirs.id,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let anonymous = planes.clients(None).await;
    let err = anonymous
        .deliveries
        .clone()
        .watch_attempts(pb::WatchAttemptsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reader_that_falls_behind_is_told_where_to_resume() {
    let options = PlaneOptions {
        attempt_watch_buffer: 4,
        // Far less than publishing the events below takes, during which nothing is read.
        attempt_watch_patience: Duration::from_millis(100),
        ..single_attempt()
    };
    on_each_backend(options, slow_reader).await;
}

async fn slow_reader(planes: &mut Planes) {
    const EVENTS: usize = 300;
    let (_, key) = planes.workspace_with_key("Slow").await;
    let mut c = planes.clients(Some(&key)).await;
    let receiver = Receiver::ok().await;
    subscribe(&mut c, webhook(&receiver.url("/slow"), &["*"])).await;
    planes.config_synced().await;
    // A client with a small HTTP/2 window, so the transport holds little for it and the
    // server's channel fills as soon as the reader stops reading.
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", planes.control_addr))
            .unwrap()
            .initial_stream_window_size(Some(1024))
            .initial_connection_window_size(Some(1024))
            .connect()
            .await
            .unwrap();
    let mut slow = pb::delivery_service_client::DeliveryServiceClient::with_interceptor(
        channel,
        Bearer::key(&key),
    );
    let mut stream = slow
        .watch_attempts(pb::WatchAttemptsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut publisher = planes.publisher(&key).await;
    let log = Log::new(&c);
    for n in 0..EVENTS {
        publish(
            &mut publisher,
            event(CONVERSATION_CREATED, &format!(r#"{{"n":{n}}}"#)),
        )
        .await;
    }
    receiver.wait_for(EVENTS, WAIT).await;
    eventually("every attempt logged", WAIT, async || {
        (log.attempts(pb::ListAttemptsRequest::default()).await.len() == EVENTS).then_some(())
    })
    .await;
    // Now read: some attempts, then the error naming the cursor to resume from.
    let mut received = Vec::new();
    let status = loop {
        let message = tokio::time::timeout(WAIT, stream.message()).await;
        let message = message.unwrap_or_else(|_| {
            panic!(
                "neither an attempt nor an error came after {} attempts",
                received.len()
            )
        });
        match message {
            Ok(Some(message)) => received.push(message),
            Ok(None) => panic!("the stream ended without an error after {}", received.len()),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        received.len() < EVENTS,
        "the reader fell behind yet got all {EVENTS}"
    );
    let cursor = status.message().rsplit(' ').next().unwrap().to_owned();
    assert_eq!(
        Some(&cursor),
        received.last().map(|m| &m.cursor),
        "the error names the last cursor delivered: {status:?}"
    );
    // Resuming from it (reading this time) brings exactly the rest.
    let mut rest = watch(
        &c,
        pb::WatchAttemptsRequest {
            cursor,
            ..Default::default()
        },
    )
    .await;
    let remaining = next(&mut rest, EVENTS - received.len()).await;
    let mut ids: Vec<String> = received
        .iter()
        .chain(&remaining)
        .map(|m| attempt(m).id.clone())
        .collect();
    quiet(&mut rest).await;
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), EVENTS, "every attempt exactly once");
}
