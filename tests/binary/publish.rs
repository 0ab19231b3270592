//! `sluice publish` through `sluice-client`: JSON lines from a file over PublishStream,
//! with failover past a dead endpoint; killed halfway and run again with the same input,
//! every event is acked and the receiver gets each exactly once.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use sluice_proto::control::v1 as pb;
use sluice_proto::data::v1 as dpb;
use sluice_testkit::process::Deployment;
use sluice_testkit::publish_when_configured;
use sluice_testkit::receiver::{Receiver, Reply};
use sluice_testkit::{TestDatabase, backends, free_addr};

/// Events per test: 2,000, or `SLUICE_PUBLISH_TEST_EVENTS` (10,000 for the check).
fn events() -> usize {
    std::env::var("SLUICE_PUBLISH_TEST_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// Creates a subscription to `receiver` for `order.*` and waits until the data plane has
/// the key and the subscription (one probe event is delivered).
async fn subscribed(deployment: &Deployment, key: &str, receiver: &Receiver) {
    let mut clients = deployment.clients(Some(key)).await;
    clients
        .subscriptions
        .create_subscription(pb::CreateSubscriptionRequest {
            subscription: Some(pb::Subscription {
                url: receiver.url("/hook"),
                filters: vec!["order.*".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut ingest = deployment.publisher(key).await;
    publish_when_configured(&mut ingest, || dpb::PublishRequest {
        event_type: "order.probe".into(),
        payload_json: "{}".into(),
        ..Default::default()
    })
    .await;
    receiver.wait_for(1, Duration::from_secs(20)).await;
}

/// The client library itself: the data plane is killed (-9) in the middle of a stream and
/// started again; the stream reconnects, resends what was unanswered with the same keys,
/// every event is acked and each is delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_survives_a_data_plane_crash_without_duplicates() {
    let events = events();
    let backend = backends().remove(0);
    let control_db = TestDatabase::create(&backend).await;
    let data_db = TestDatabase::create(&backend).await;
    let receiver = Receiver::start(vec![], Reply::status(200)).await;
    let mut deployment = Deployment::start(
        &sluice_testkit::sluice_bin!(),
        &control_db.url,
        &data_db.url,
        &[],
        &[],
    )
    .await;
    let (_, key) = deployment.workspace_with_key("client").await;
    subscribed(&deployment, &key, &receiver).await;

    let mut config =
        sluice_client::Config::new(vec![format!("http://{}", deployment.data_addr())], &key);
    config.max_in_flight = 64;
    let publisher = sluice_client::Publisher::new(config).unwrap();
    let mut stream = publisher.stream();
    let sender = tokio::spawn(async move {
        let mut acks = Vec::new();
        for i in 0..events {
            stream
                .send(sluice_client::Event::new(
                    "order.created",
                    format!("{{\"n\":{i}}}"),
                ))
                .await
                .unwrap();
            while let Some(ack) = stream.try_next_ack() {
                acks.push(ack.unwrap());
            }
        }
        stream.close();
        while let Some(ack) = stream.next_ack().await {
            acks.push(ack.unwrap());
        }
        acks
    });

    receiver
        .wait_for(1 + events / 4, Duration::from_secs(60))
        .await;
    let mut data = deployment.data.take().unwrap();
    data.kill9().await;
    deployment.restart_data().await;

    let acks = tokio::time::timeout(Duration::from_secs(120), sender)
        .await
        .expect("the stream never finished")
        .unwrap();
    assert_eq!(acks.len(), events);
    let sequences: HashSet<u64> = acks.iter().map(|a| a.sequence).collect();
    assert_eq!(sequences.len(), events, "an event acked twice");
    for ack in &acks {
        assert!(ack.result.is_ok(), "{ack:?}");
    }
    // Every event became exactly one message: as many distinct webhook-ids as events. (An
    // attempt in flight when the data plane was killed is made again after the restart,
    // with the same webhook-id, as at-least-once delivery promises; receivers deduplicate
    // on it. What must never happen is a resend becoming a second message.)
    let all = receiver
        .wait_until(Duration::from_secs(120), |got| {
            got.iter()
                .map(|p| p.header("webhook-id"))
                .collect::<HashSet<_>>()
                .len()
                > events
        })
        .await
        .unwrap();
    let ids: HashSet<&str> = all.iter().map(|p| p.header("webhook-id")).collect();
    assert_eq!(ids.len(), 1 + events);
    let mut per_n = std::collections::HashMap::<i64, HashSet<&str>>::new();
    for post in &all {
        let body: serde_json::Value = serde_json::from_slice(&post.body).unwrap();
        if let Some(n) = body["payload"]["n"].as_i64() {
            per_n
                .entry(n)
                .or_default()
                .insert(post.header("webhook-id"));
        }
    }
    assert_eq!(per_n.len(), events);
    assert!(
        per_n.values().all(|ids| ids.len() == 1),
        "an event published twice as two messages"
    );

    drop(deployment);
    control_db.drop_database().await;
    data_db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_killed_and_rerun_delivers_each_event_once() {
    let events = events();
    let backend = backends().remove(0);
    let control_db = TestDatabase::create(&backend).await;
    let data_db = TestDatabase::create(&backend).await;
    let receiver = Receiver::start(vec![], Reply::status(200)).await;
    let bin = sluice_testkit::sluice_bin!();
    let deployment = Deployment::start(&bin, &control_db.url, &data_db.url, &[], &[]).await;
    let (_, key) = deployment.workspace_with_key("publish").await;
    let mut clients = deployment.clients(Some(&key)).await;
    clients
        .subscriptions
        .create_subscription(pb::CreateSubscriptionRequest {
            subscription: Some(pb::Subscription {
                url: receiver.url("/hook"),
                filters: vec!["order.*".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    // Until the data plane has the key and the subscription (from its watch stream), with
    // an event type the subscription does not match.
    let mut ingest = deployment.publisher(&key).await;
    publish_when_configured(&mut ingest, || dpb::PublishRequest {
        event_type: "order.probe".into(),
        payload_json: "{}".into(),
        ..Default::default()
    })
    .await;
    receiver.wait_for(1, Duration::from_secs(20)).await;

    let dir =
        std::env::temp_dir().join(sluice_core::ids::new_id(sluice_core::ids::IdKind::Delivery));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("events.jsonl");
    let lines: String = (0..events)
        .map(|i| format!("{{\"event_type\":\"order.created\",\"payload\":{{\"n\":{i}}}}}\n"))
        .collect();
    std::fs::write(&file, lines).unwrap();
    // A closed port first: the client fails over to the data plane.
    let endpoints = format!("http://{},http://{}", free_addr(), deployment.data_addr());
    let publish = || {
        let mut command = tokio::process::Command::new(&bin);
        command
            .args(["publish", "--endpoint", &endpoints, "--file"])
            .arg(&file)
            .env("SLUICE_API_KEY", &key)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    };

    // Killed once a quarter of the events arrived.
    let mut first = publish().spawn().unwrap();
    receiver
        .wait_for(1 + events / 4, Duration::from_secs(60))
        .await;
    first.kill().await.unwrap();

    // Run again with the same input: all acked, the ones already accepted as duplicates.
    let output = publish().output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("sluice publish, run again: {stdout}");
    assert!(stdout.starts_with(&format!("{events} acks (")), "{stdout}");
    assert!(
        !stdout.contains(" 0 duplicates"),
        "the rerun found nothing done: {stdout}"
    );

    let posts = receiver
        .wait_for(1 + events, Duration::from_secs(120))
        .await;
    let ids: HashSet<&str> = posts.iter().map(|p| p.header("webhook-id")).collect();
    assert_eq!(posts.len(), 1 + events, "a duplicate delivery");
    assert_eq!(ids.len(), 1 + events);

    drop(deployment);
    let _ = std::fs::remove_dir_all(&dir);
    control_db.drop_database().await;
    data_db.drop_database().await;
}
