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
use sluice_testkit::receiver::{Receiver, Reply};
use sluice_testkit::{TestDatabase, backends, free_addr};

const EVENTS: usize = 2000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_killed_and_rerun_delivers_each_event_once() {
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
    loop {
        let request = dpb::PublishRequest {
            event_type: "order.probe".into(),
            payload_json: "{}".into(),
            ..Default::default()
        };
        match ingest.publish(request).await {
            Ok(r) if r.get_ref().delivery_count == 1 => break,
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::Unauthenticated => {}
            Err(s) => panic!("publish failed: {s:?}"),
        }
        // No event to await from outside the process: the config arrives by its watch stream.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    receiver.wait_for(1, Duration::from_secs(20)).await;

    let dir =
        std::env::temp_dir().join(sluice_core::ids::new_id(sluice_core::ids::IdKind::Delivery));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("events.jsonl");
    let lines: String = (0..EVENTS)
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
        .wait_for(1 + EVENTS / 4, Duration::from_secs(60))
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
    assert!(stdout.starts_with(&format!("{EVENTS} acks (")), "{stdout}");
    assert!(
        !stdout.contains(" 0 duplicates"),
        "the rerun found nothing done: {stdout}"
    );

    let posts = receiver
        .wait_for(1 + EVENTS, Duration::from_secs(120))
        .await;
    let ids: HashSet<&str> = posts.iter().map(|p| p.header("webhook-id")).collect();
    assert_eq!(posts.len(), 1 + EVENTS, "a duplicate delivery");
    assert_eq!(ids.len(), 1 + EVENTS);

    drop(deployment);
    let _ = std::fs::remove_dir_all(&dir);
    control_db.drop_database().await;
    data_db.drop_database().await;
}
