//! The data plane's IngestService end to end: bad input and bad keys are refused with the right status and store nothing, and PublishStream acks every event once while an invalid one in the middle does not stop the stream.

#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sluice_proto::control::v1 as pb;
use sluice_proto::data::v1 as dpb;
use sluice_proto::json::json_to_struct;
use sluice_testkit::planes::{PlaneOptions, Planes, on_each_backend};
use sluice_testkit::receiver::Receiver;
use sluice_testkit::{ADMIN_KEY, WAIT, count_rows, field_violations};
use sluice_tests::delivery::*;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// What the data plane's queue holds: (messages, deliveries). A message's deliveries are
/// the subscriptions it matched, stored with it; a delivery gets a row of its own only
/// when its first attempt fails, so rows are not counted here.
async fn stored(planes: &mut Planes) -> (i64, i64) {
    use sea_orm::{FromQueryResult, Statement};
    #[derive(FromQueryResult)]
    struct Count {
        n: i64,
    }
    let db = &planes.data_db;
    let deliveries = Count::find_by_statement(Statement::from_string(
        db.get_database_backend(),
        "SELECT COALESCE(SUM(LENGTH(subscription_ids) - LENGTH(REPLACE(subscription_ids, ',', '')) + 1), 0) AS n \
         FROM dp_messages WHERE subscription_ids <> ''",
    ))
    .one(db)
    .await
    .unwrap()
    .map_or(0, |c| c.n);
    (count_rows(db, "dp_messages").await, deliveries)
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_publishes_are_refused_and_store_nothing() {
    on_each_backend(PlaneOptions::default(), bad_publishes).await;
}

async fn bad_publishes(planes: &mut Planes) {
    let (workspace_id, key) = planes.workspace_with_key("Ingest").await;
    let (other_workspace, _) = planes.workspace_with_key("Other").await;
    let mut c = planes.clients(Some(&key)).await;
    let receiver = Receiver::ok().await;
    subscribe(&mut c, webhook(&receiver.url("/in"), &["*"])).await;
    planes.config_synced().await;
    let mut publisher = planes.publisher(&key).await;
    let valid = || event(CONVERSATION_CREATED, r#"{"conversation":{"id":"cnv_1"}}"#);
    let before = stored(planes).await;

    let too_big = format!(r#"{{"blob":"{}"}}"#, "x".repeat(256 * 1024));
    let too_big_struct = json_to_struct(&too_big).unwrap();
    // (what, request, the fields that may name it)
    let cases: Vec<(&str, dpb::PublishRequest, &[&str])> = vec![
        (
            "a bad event name",
            dpb::PublishRequest {
                event_type: "not a valid name!".into(),
                ..valid()
            },
            &["event_type"],
        ),
        (
            "an empty event name",
            dpb::PublishRequest {
                event_type: String::new(),
                ..valid()
            },
            &["event_type"],
        ),
        (
            "payload_json that is not JSON",
            dpb::PublishRequest {
                payload_json: r#"{"conversation": "#.into(),
                ..valid()
            },
            &["payload_json"],
        ),
        (
            "payload_json that is an array",
            dpb::PublishRequest {
                payload_json: "[1, 2, 3]".into(),
                ..valid()
            },
            &["payload_json"],
        ),
        (
            "both payload and payload_json",
            dpb::PublishRequest {
                payload: json_to_struct(r#"{"a":1}"#),
                ..valid()
            },
            &["payload", "payload_json"],
        ),
        (
            "neither payload nor payload_json",
            dpb::PublishRequest {
                payload_json: String::new(),
                ..valid()
            },
            &["payload", "payload_json"],
        ),
        (
            "payload_json over 256 KiB",
            dpb::PublishRequest {
                payload_json: too_big.clone(),
                ..valid()
            },
            &["payload_json"],
        ),
        (
            "a Struct payload over 256 KiB",
            dpb::PublishRequest {
                payload_json: String::new(),
                payload: Some(too_big_struct),
                ..valid()
            },
            &["payload"],
        ),
        (
            "an occurred_time far in the past",
            dpb::PublishRequest {
                occurred_time: Some(prost_types::Timestamp {
                    seconds: 5,
                    nanos: 0,
                }),
                ..valid()
            },
            &["occurred_time"],
        ),
        (
            "an idempotency key over 256 bytes",
            dpb::PublishRequest {
                idempotency_key: "k".repeat(257),
                ..valid()
            },
            &["idempotency_key"],
        ),
        (
            "an ordering key over 256 bytes",
            dpb::PublishRequest {
                ordering_key: "k".repeat(257),
                ..valid()
            },
            &["ordering_key"],
        ),
        (
            "an ordering key with a control character",
            dpb::PublishRequest {
                ordering_key: "conv\u{7}1".into(),
                ..valid()
            },
            &["ordering_key"],
        ),
    ];
    for (what, request, fields) in cases {
        let status = publisher
            .publish(request)
            .await
            .expect_err(&format!("{what} was accepted"));
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{what}: expected INVALID_ARGUMENT, got {status:?}"
        );
        let violations = field_violations(&status);
        assert!(
            violations.iter().any(|(f, _)| fields.contains(&f.as_str())),
            "{what}: expected a violation of one of {fields:?}, got {violations:?} ({status:?})"
        );
        assert_eq!(stored(planes).await, before, "{what}: something was stored");
    }
    // A stream answers each bad event with its field and goes on to the next.
    let requests = vec![
        dpb::PublishStreamRequest {
            sequence: 7,
            event: Some(event(CONVERSATION_CREATED, "[]")),
        },
        dpb::PublishStreamRequest {
            sequence: 8,
            event: None,
        },
    ];
    let mut acks = publisher
        .publish_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut errors = Vec::new();
    while let Some(ack) = acks.message().await.unwrap() {
        let Some(error) = ack.error else {
            panic!("sequence {} was accepted", ack.sequence)
        };
        errors.push((ack.sequence, error.code, error.field));
    }
    errors.sort();
    assert_eq!(
        errors,
        [
            (7, Code::InvalidArgument as i32, "payload_json".into()),
            (8, Code::InvalidArgument as i32, "event".into())
        ]
    );
    assert_eq!(
        stored(planes).await,
        before,
        "a bad stream stored something"
    );
    // Nor did anything refused leave a row for the control plane.
    assert_eq!(count_rows(&planes.data_db, "dp_outbox").await, 0);

    // The limits themselves are fine: a 256 KiB payload, a 256-byte key, an UPPER_SNAKE
    // event name (stored dotted).
    let exactly = format!(r#"{{"blob":"{}"}}"#, "x".repeat(256 * 1024 - 11));
    assert_eq!(exactly.len(), 256 * 1024);
    let at_limit = publish(
        &mut publisher,
        dpb::PublishRequest {
            event_type: "CONVERSATION_CREATED".into(),
            payload_json: exactly.clone(),
            idempotency_key: "k".repeat(256),
            ..Default::default()
        },
    )
    .await;
    let received = receiver.wait_for(1, WAIT).await;
    let body = received[0].json();
    assert_eq!(received[0].header("webhook-id"), at_limit.message_id);
    assert_eq!(
        body["event"], CONVERSATION_CREATED,
        "UPPER_SNAKE is stored dotted"
    );
    assert_eq!(
        body["payload"]["blob"].as_str().map(str::len),
        Some(256 * 1024 - 11)
    );
    let before = stored(planes).await;

    // Another workspace's id with this workspace's key.
    let status = publisher
        .publish(dpb::PublishRequest {
            workspace_id: other_workspace.clone(),
            ..valid()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(
        stored(planes).await,
        before,
        "a foreign workspace_id stored something"
    );

    // Keys: none, unknown, revoked.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", planes.data_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut anonymous = dpb::ingest_service_client::IngestServiceClient::new(channel);
    let status = anonymous.publish(valid()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "no key: {status:?}");
    let mut stranger = planes
        .publisher("sk_test_not_a_key_of_anyone_0123456789")
        .await;
    let status = stranger.publish(valid()).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::Unauthenticated,
        "unknown key: {status:?}"
    );
    let mut admin_publisher = planes.publisher(ADMIN_KEY).await;
    let status = admin_publisher.publish(valid()).await.unwrap_err();
    assert!(
        matches!(
            status.code(),
            Code::Unauthenticated | Code::PermissionDenied
        ),
        "the admin key names no workspace to publish for: {status:?}"
    );
    assert_eq!(
        stored(planes).await,
        before,
        "an unauthenticated publish stored something"
    );

    let mut admin = planes.clients(Some(ADMIN_KEY)).await;
    let second = admin
        .workspaces
        .create_api_key(pb::CreateApiKeyRequest {
            workspace_id: workspace_id.clone(),
            display_name: "to revoke".into(),
        })
        .await
        .unwrap()
        .into_inner();
    planes.config_synced().await;
    let mut soon_revoked = planes.publisher(&second.key).await;
    let accepted = publish(&mut soon_revoked, valid()).await;
    assert_eq!(accepted.delivery_count, 1, "{accepted:?}");
    let after_valid = stored(planes).await;
    assert_eq!(
        after_valid,
        (before.0 + 1, before.1 + 1),
        "a valid publish is stored"
    );
    admin
        .workspaces
        .revoke_api_key(pb::RevokeApiKeyRequest {
            id: second.api_key.unwrap().id,
        })
        .await
        .unwrap();
    planes.config_synced().await;
    let status = soon_revoked.publish(valid()).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::Unauthenticated,
        "revoked key: {status:?}"
    );
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(dpb::PublishStreamRequest {
        sequence: 1,
        event: Some(valid()),
    })
    .await
    .unwrap();
    drop(tx);
    match soon_revoked.publish_stream(ReceiverStream::new(rx)).await {
        Err(status) => assert_eq!(status.code(), Code::Unauthenticated, "{status:?}"),
        Ok(response) => {
            let mut stream = response.into_inner();
            match stream.message().await {
                Ok(Some(ack)) => assert_eq!(
                    ack.error.as_ref().map(|e| e.code),
                    Some(Code::Unauthenticated as i32),
                    "a revoked key's stream event: {ack:?}"
                ),
                Ok(None) => panic!("the stream of a revoked key ended without an answer"),
                Err(status) => assert_eq!(status.code(), Code::Unauthenticated, "{status:?}"),
            }
        }
    }
    assert_eq!(
        stored(planes).await,
        after_valid,
        "a revoked key's publish stored something"
    );
    // The first key still works.
    publish(&mut publisher, valid()).await;
    receiver.wait_for(3, WAIT).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publish_stream_acks_every_event_once_and_survives_an_invalid_one() {
    on_each_backend(PlaneOptions::default(), stream).await;
}

async fn stream(planes: &mut Planes) {
    const EVENTS: u64 = 200;
    const IN_FLIGHT: u64 = 32;
    const BAD: u64 = 100;
    let (_, key) = planes.workspace_with_key("Stream").await;
    let mut c = planes.clients(Some(&key)).await;
    let log = Log::new(&c);
    let receiver = Receiver::ok().await;
    let (sub, _) = subscribe(
        &mut c,
        webhook(&receiver.url("/stream"), &["conversation.*"]),
    )
    .await;
    planes.config_synced().await;
    let mut publisher = planes.publisher(&key).await;

    let request = |sequence: u64| dpb::PublishStreamRequest {
        sequence,
        event: Some(if sequence == BAD {
            event("Not A Valid Name!", &format!(r#"{{"i":{sequence}}}"#))
        } else {
            event(CONVERSATION_CREATED, &format!(r#"{{"i":{sequence}}}"#))
        }),
    };
    // Sequences 1..=200; at most 32 sent and not yet acked at any time.
    let (tx, rx) = tokio::sync::mpsc::channel(IN_FLIGHT as usize);
    let mut next = 1;
    while next <= IN_FLIGHT {
        tx.send(request(next)).await.unwrap();
        next += 1;
    }
    let mut responses = publisher
        .publish_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut acks: HashMap<u64, dpb::PublishStreamResponse> = HashMap::new();
    let mut repeated = Vec::new();
    while (acks.len() as u64) < EVENTS {
        let ack = tokio::time::timeout(WAIT, responses.message())
            .await
            .unwrap_or_else(|_| panic!("no ack within {WAIT:?}; {} acked so far", acks.len()))
            .unwrap()
            .unwrap_or_else(|| panic!("the stream ended after {} acks", acks.len()));
        let sequence = ack.sequence;
        if let Some(previous) = acks.insert(sequence, ack) {
            repeated.push(previous);
        }
        if next <= EVENTS {
            tx.send(request(next)).await.unwrap();
            next += 1;
        }
    }
    drop(tx);
    let end = tokio::time::timeout(WAIT, responses.message())
        .await
        .expect("the stream did not end after the requests did");
    assert!(
        matches!(end, Ok(None)),
        "nothing after the last ack, then a clean end: {end:?}"
    );
    assert!(repeated.is_empty(), "sequences acked twice: {repeated:?}");
    let sequences: HashSet<u64> = acks.keys().copied().collect();
    assert_eq!(sequences, (1..=EVENTS).collect(), "one ack per sequence");

    let bad = &acks[&BAD];
    assert!(bad.result.is_none(), "{bad:?}");
    let error = bad.error.as_ref().expect("the invalid event gets an error");
    assert_eq!(error.code, Code::InvalidArgument as i32, "{error:?}");
    assert_eq!(error.field, "event_type", "{error:?}");
    assert!(!error.message.is_empty(), "{error:?}");

    let mut published = HashSet::new();
    for (sequence, ack) in &acks {
        if *sequence == BAD {
            continue;
        }
        assert!(ack.error.is_none(), "sequence {sequence}: {ack:?}");
        let result = ack
            .result
            .as_ref()
            .unwrap_or_else(|| panic!("sequence {sequence}: {ack:?}"));
        assert!(!result.duplicate && result.delivery_count == 1, "{ack:?}");
        published.insert(result.message_id.clone());
    }
    let valid = (EVENTS - 1) as usize;
    assert_eq!(published.len(), valid, "unique message ids");

    let received = receiver.wait_for(valid, Duration::from_secs(60)).await;
    let ids: HashSet<String> = received
        .iter()
        .map(|r| r.header("webhook-id").to_owned())
        .collect();
    assert_eq!(ids, published, "the receiver got exactly the valid events");
    let attempts = eventually(
        "the 199 attempts in the log",
        Duration::from_secs(60),
        async || {
            let a = log.attempts_to(&sub.id).await;
            (a.len() >= valid).then_some(a)
        },
    )
    .await;
    assert_eq!(attempts.len(), valid);
    let received = receiver.received();
    assert_eq!(received.len(), valid, "no duplicate POSTs");
    let payloads: HashSet<i64> = received
        .iter()
        .map(|r| r.json()["payload"]["i"].as_i64().unwrap())
        .collect();
    assert!(!payloads.contains(&(BAD as i64)) && payloads.len() == valid);
    assert_eq!(
        count_rows(&planes.data_db, "dp_messages").await,
        valid as i64
    );
}

/// `sluice-client` as `sluice bench` uses it: the stream split into a sending task and an
/// answering one, sends dropped while they wait for room (cancel-safe: no sequence number
/// is lost, nothing is queued twice), and automatic idempotency keys turned off (events go
/// without one). Every event is acked once and delivered once.
#[tokio::test(flavor = "multi_thread")]
async fn the_client_split_in_two_tasks_acks_every_event_once() {
    on_each_backend(PlaneOptions::default(), client_split).await;
}

async fn client_split(planes: &mut Planes) {
    const EVENTS: u64 = 40;
    let (_, key) = planes.workspace_with_key("Client").await;
    let mut c = planes.clients(Some(&key)).await;
    let receiver = Receiver::ok().await;
    subscribe(&mut c, webhook(&receiver.url("/in"), &["*"])).await;
    planes.config_synced().await;
    let mut config = sluice_client::Config::new(vec![format!("http://{}", planes.data_addr)], &key);
    config.max_in_flight = 2;
    config.automatic_idempotency_keys = false;
    let publisher = sluice_client::Publisher::new(config).unwrap();
    let (mut sender, mut acks) = publisher.stream().split();
    let sending = tokio::spawn(async move {
        let mut sequences = Vec::new();
        let mut dropped = 0;
        for i in 0..EVENTS {
            let event = || {
                sluice_client::Event::new(
                    CONVERSATION_CREATED,
                    format!(r#"{{"conversation":{{"id":"cnv_{i}"}}}}"#),
                )
            };
            // Given no time at all, a send that has to wait for room is dropped.
            match tokio::time::timeout(Duration::ZERO, sender.send(event())).await {
                Ok(sequence) => sequences.push(sequence.unwrap()),
                Err(_) => {
                    dropped += 1;
                    sequences.push(sender.send(event()).await.unwrap());
                }
            }
        }
        // Dropping the sender closes the stream.
        (sequences, dropped)
    });
    let mut answered = Vec::new();
    while let Some(ack) = tokio::time::timeout(WAIT, acks.next_ack())
        .await
        .expect("every event is answered")
    {
        let ack = ack.unwrap();
        assert_eq!(ack.idempotency_key, "", "no key was made up");
        let result = ack.result.expect("accepted");
        assert!(!result.duplicate);
        answered.push(ack.sequence);
    }
    let (sequences, dropped) = sending.await.unwrap();
    let all: Vec<u64> = (1..=EVENTS).collect();
    assert_eq!(sequences, all, "{dropped} sends were dropped");
    answered.sort_unstable();
    assert_eq!(answered, all);
    let got = receiver.wait_for(EVENTS as usize, WAIT).await;
    let ids: HashSet<&str> = got
        .iter()
        .filter_map(|r| r.headers.get("webhook-id")?.to_str().ok())
        .collect();
    assert_eq!(ids.len(), EVENTS as usize, "each event delivered once");
}

/// The publish quota per workspace (`--workspace-publish-rate`): a workspace past its burst
/// is refused with RESOURCE_EXHAUSTED, the time to wait (`RetryInfo`) and what ran out
/// (`QuotaFailure`), on unary publishes and per event on a stream; nothing of a refused
/// event is stored; another workspace is not affected; once the wait is over the
/// workspace publishes again.
#[tokio::test(flavor = "multi_thread")]
async fn a_workspace_over_its_publish_quota_is_told_when_to_retry() {
    on_each_backend(
        PlaneOptions {
            workspace_publish_rate: 1,
            workspace_publish_burst: 5,
            ..PlaneOptions::default()
        },
        publish_quota,
    )
    .await;
}

async fn publish_quota(planes: &mut Planes) {
    use tonic_types::StatusExt;
    let (busy_workspace, busy_key) = planes.workspace_with_key("Busy").await;
    let (_, quiet_key) = planes.workspace_with_key("Quiet").await;
    for key in [&busy_key, &quiet_key] {
        let mut c = planes.clients(Some(key)).await;
        let receiver = Receiver::ok().await;
        subscribe(&mut c, webhook(&receiver.url("/q"), &["*"])).await;
    }
    planes.config_synced().await;
    let mut busy = planes.publisher(&busy_key).await;
    let one = || event(CONVERSATION_CREATED, r#"{"conversation":{"id":"cnv_1"}}"#);

    // The burst of 5 passes (6 if the publishes took over a second: one more refilled).
    let mut accepted = 0;
    let refused = loop {
        match busy.publish(one()).await {
            Ok(_) => accepted += 1,
            Err(status) => break status,
        }
        assert!(accepted <= 6, "{accepted} publishes passed a burst of 5");
    };
    assert!((5..=6).contains(&accepted), "{accepted} passed");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains(&busy_workspace)
            && refused.message().contains("publish quota of 1 events/s"),
        "{}",
        refused.message()
    );
    let details = refused.get_error_details();
    let retry_delay = details
        .retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RESOURCE_EXHAUSTED carries RetryInfo");
    assert!(
        retry_delay > Duration::ZERO && retry_delay <= Duration::from_secs(1),
        "{retry_delay:?}"
    );
    let quota = details.quota_failure().expect("and QuotaFailure");
    assert_eq!(quota.violations[0].subject, "workspace");
    assert_eq!(
        count_rows(&planes.data_db, "dp_messages").await,
        accepted,
        "a refused event is not stored"
    );

    // On a stream, each event over the quota gets its own error and the stream goes on
    // (at most one of them may pass if a second went by).
    let requests: Vec<dpb::PublishStreamRequest> = (0..3)
        .map(|sequence| dpb::PublishStreamRequest {
            sequence,
            event: Some(one()),
        })
        .collect();
    let mut acks = busy
        .publish_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut stream_refused = 0;
    let mut answers = 0;
    while let Some(ack) = acks.message().await.unwrap() {
        answers += 1;
        if let Some(error) = ack.error {
            assert_eq!(error.code, Code::ResourceExhausted as i32, "{error:?}");
            stream_refused += 1;
        }
    }
    assert_eq!(answers, 3);
    assert!(stream_refused >= 2, "{stream_refused} of 3 refused");

    // Another workspace has a quota of its own.
    let mut quiet = planes.publisher(&quiet_key).await;
    for _ in 0..5 {
        quiet.publish(one()).await.unwrap();
    }

    // After the wait the busy workspace publishes again (the quota refills with time: there
    // is nothing else to wait for).
    tokio::time::sleep(Duration::from_secs(1)).await;
    busy.publish(one()).await.unwrap();
}

/// A workspace's own publish quota, set through the control plane (`Workspace.publish_quota`),
/// applies instead of the server's once the data plane has the configuration, and after the
/// data plane restarts without the control plane; `unlimited` exempts a workspace; clearing
/// it brings the server's back.
#[tokio::test(flavor = "multi_thread")]
async fn a_workspaces_own_publish_quota_replaces_the_servers() {
    on_each_backend(
        PlaneOptions {
            workspace_publish_rate: 1,
            workspace_publish_burst: 2,
            ..PlaneOptions::default()
        },
        own_publish_quota,
    )
    .await;
}

async fn set_publish_quota(
    planes: &Planes,
    workspace_id: &str,
    quota: Option<pb::PublishQuota>,
) -> Option<pb::PublishQuota> {
    let mut admin = planes.clients(Some(ADMIN_KEY)).await;
    let workspace = pb::Workspace {
        id: workspace_id.to_owned(),
        publish_quota: quota,
        ..Default::default()
    };
    sluice_tests::control::update_workspace(&mut admin, workspace, &["publish_quota"])
        .await
        .unwrap()
        .publish_quota
}

/// Publishes one event at a time until one is refused (at most `most`); how many passed,
/// and the refusal's message.
async fn publish_until_refused(planes: &Planes, key: &str, most: usize) -> (usize, Option<String>) {
    let mut publisher = planes.publisher(key).await;
    for accepted in 0..most {
        let event = event(CONVERSATION_CREATED, r#"{"conversation":{"id":"cnv_1"}}"#);
        if let Err(status) = publisher.publish(event).await {
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            return (accepted, Some(status.message().to_owned()));
        }
    }
    (most, None)
}

async fn own_publish_quota(planes: &mut Planes) {
    let (big, big_key) = planes.workspace_with_key("Big").await;
    let (free, free_key) = planes.workspace_with_key("Free").await;
    let (_, plain_key) = planes.workspace_with_key("Plain").await;
    for key in [&big_key, &free_key, &plain_key] {
        let mut c = planes.clients(Some(key)).await;
        let receiver = Receiver::ok().await;
        subscribe(&mut c, webhook(&receiver.url("/q"), &["*"])).await;
    }
    let own = pb::PublishQuota {
        events_per_second: 1,
        burst: 6,
        unlimited: false,
    };
    assert_eq!(
        set_publish_quota(planes, &big, Some(own)).await,
        Some(own),
        "UpdateWorkspace answers with the quota"
    );
    let unlimited = pb::PublishQuota {
        unlimited: true,
        ..Default::default()
    };
    set_publish_quota(planes, &free, Some(unlimited)).await;
    planes.config_synced().await;

    // Its own burst of 6 (7 if the publishes took over a second), not the server's 2.
    let (accepted, refused) = publish_until_refused(planes, &big_key, 10).await;
    assert!(
        (6..=7).contains(&accepted),
        "{accepted} passed a burst of 6"
    );
    let refused = refused.expect("refused past its own quota");
    assert!(
        refused.contains("bursts of 6; the workspace's own"),
        "{refused}"
    );
    // Unlimited, where the server's quota would stop it at 2.
    assert_eq!(
        publish_until_refused(planes, &free_key, 20).await,
        (20, None)
    );
    // Without one of its own, the server's.
    let (accepted, refused) = publish_until_refused(planes, &plain_key, 10).await;
    assert!(
        (2..=3).contains(&accepted),
        "{accepted} passed a burst of 2"
    );
    assert!(refused.unwrap().contains("the server's"));

    // The data plane keeps the workspaces' quotas in its configuration copy: restarted
    // while the control plane is down, it applies them still.
    planes.stop_control().await;
    planes.restart_data().await;
    assert_eq!(
        publish_until_refused(planes, &free_key, 20).await,
        (20, None)
    );
    let (accepted, refused) = publish_until_refused(planes, &big_key, 10).await;
    assert!(
        (6..=7).contains(&accepted),
        "{accepted} passed a burst of 6"
    );
    assert!(refused.unwrap().contains("the workspace's own"));
    planes.restart_control().await;

    // Cleared: the server's quota again.
    assert_eq!(set_publish_quota(planes, &free, None).await, None);
    planes.config_synced().await;
    let (accepted, refused) = publish_until_refused(planes, &free_key, 10).await;
    assert!(
        (2..=3).contains(&accepted),
        "{accepted} passed a burst of 2"
    );
    assert!(refused.unwrap().contains("the server's"));
}

/// `sluice-client` against a publish quota: what the data plane refuses for the quota is
/// sent again after the delay it gave, with the same key, so every event is accepted once
/// (5 a second, bursts of 5: 15 events take about two seconds), on a stream and unary.
#[tokio::test(flavor = "multi_thread")]
async fn the_client_waits_out_the_publish_quota() {
    on_each_backend(
        PlaneOptions {
            workspace_publish_rate: 5,
            workspace_publish_burst: 5,
            ..PlaneOptions::default()
        },
        client_and_quota,
    )
    .await;
}

async fn client_and_quota(planes: &mut Planes) {
    const EVENTS: usize = 15;
    let (_, key) = planes.workspace_with_key("Quota").await;
    let mut c = planes.clients(Some(&key)).await;
    let receiver = Receiver::ok().await;
    subscribe(&mut c, webhook(&receiver.url("/in"), &["*"])).await;
    planes.config_synced().await;
    let config = sluice_client::Config::new(vec![format!("http://{}", planes.data_addr)], &key);
    let publisher = sluice_client::Publisher::new(config).unwrap();
    let event = |i: usize| {
        sluice_client::Event::new(
            CONVERSATION_CREATED,
            format!(r#"{{"conversation":{{"id":"cnv_{i}"}}}}"#),
        )
    };
    let (mut sender, mut acks) = publisher.stream().split();
    for i in 0..EVENTS {
        sender.send(event(i)).await.unwrap();
    }
    sender.close();
    let mut accepted = 0;
    while let Some(ack) = tokio::time::timeout(WAIT, acks.next_ack())
        .await
        .expect("every event is answered")
    {
        let ack = ack.unwrap();
        let result = ack.result.expect("accepted once the quota allowed it");
        assert!(!result.duplicate, "refused events were not stored");
        accepted += 1;
    }
    assert_eq!(accepted, EVENTS);
    for i in EVENTS..EVENTS + 3 {
        publisher.publish(&event(i)).await.expect("unary waits too");
    }
    let got = receiver.wait_for(EVENTS + 3, WAIT).await;
    let ids: HashSet<&str> = got
        .iter()
        .filter_map(|r| r.headers.get("webhook-id")?.to_str().ok())
        .collect();
    assert_eq!(ids.len(), EVENTS + 3, "each event delivered once");
}
