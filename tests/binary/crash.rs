//! Crash test: the real `sluice` binary, `kill -9` in the middle of a 2,000-event publish
//! burst, then a restart. Every event the data plane acked must reach the receiver at least
//! once (counted by unique `webhook-id`); duplicates are allowed by at-least-once delivery
//! and printed.

#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sluice_proto::control::v1 as pb;
use sluice_proto::data::v1 as dpb;
use sluice_testkit::process::Deployment;
use sluice_testkit::publish_when_configured;
use sluice_testkit::receiver::{Received, Receiver};
use sluice_testkit::{Backend, TestDatabase, backends};
use tokio_stream::StreamExt;

const EVENTS: u64 = 2_000;
const IN_FLIGHT: u64 = 64;
const KILL_AFTER_ACKS: usize = 700;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acked_event_is_delivered_after_kill_9() {
    for backend in backends() {
        run(&backend).await;
    }
}

async fn run(backend: &Backend) {
    let control_db = TestDatabase::create(backend).await;
    let data_db = TestDatabase::create(backend).await;
    let receiver = Receiver::ok().await;
    let mut deployment = Deployment::start(
        &sluice_testkit::sluice_bin!(),
        &control_db.url,
        &data_db.url,
        &[
            "--retry-schedule",
            "0s,200ms,500ms,1s,2s,5s",
            "--delivery-lease-secs",
            "3",
        ],
        &[],
    )
    .await;

    // A workspace, a key and a subscription to everything, through the control plane.
    let (_, key) = deployment.workspace_with_key("crash").await;
    deployment
        .clients(Some(&key))
        .await
        .subscriptions
        .create_subscription(pb::CreateSubscriptionRequest {
            subscription: Some(pb::Subscription {
                url: receiver.url("/hook"),
                filters: vec!["*".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();

    // Warm-up: once one event arrives, the data plane has the subscription.
    let mut ingest = deployment.publisher(&key).await;
    let warmup = publish_when_configured(&mut ingest, || event(0))
        .await
        .message_id;
    receiver.wait_for(1, Duration::from_secs(10)).await;

    // The burst: 64 in flight on one stream; kill -9 the data plane mid-way.
    let (tx, rx) = tokio::sync::mpsc::channel::<dpb::PublishStreamRequest>(IN_FLIGHT as usize);
    let mut responses = ingest
        .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut acked: Vec<String> = vec![warmup];
    let mut next = 1u64;
    let mut in_flight = 0u64;
    while next <= EVENTS && in_flight < IN_FLIGHT {
        tx.send(dpb::PublishStreamRequest {
            sequence: next,
            event: Some(event(next)),
        })
        .await
        .unwrap();
        next += 1;
        in_flight += 1;
    }
    let mut killed = false;
    while let Some(response) = responses.next().await {
        let Ok(response) = response else { break };
        in_flight -= 1;
        match response.result {
            Some(result) => acked.push(result.message_id),
            None => panic!("event {} refused: {:?}", response.sequence, response.error),
        }
        if acked.len() >= KILL_AFTER_ACKS && !killed {
            deployment.data.as_mut().unwrap().kill9().await;
            killed = true;
            break;
        }
        if next <= EVENTS {
            tx.send(dpb::PublishStreamRequest {
                sequence: next,
                event: Some(event(next)),
            })
            .await
            .unwrap();
            next += 1;
            in_flight += 1;
        }
    }
    drop(tx);
    assert!(
        killed,
        "the burst ended before the kill ({} acks)",
        acked.len()
    );
    deployment.data.take();
    println!(
        "killed the data plane after {} acks ({in_flight} requests in flight)",
        acked.len()
    );

    // Restart; publish the rest so the burst reaches 2,000 events in all.
    deployment.restart_data().await;
    let mut ingest = deployment.publisher(&key).await;
    let mut sequence = next;
    while (acked.len() as u64) < EVENTS + 1 {
        let r = ingest.publish(event(sequence)).await.unwrap().into_inner();
        acked.push(r.message_id);
        sequence += 1;
    }

    // Every acked event arrives at least once.
    let wanted: HashSet<&String> = acked.iter().collect();
    let missing = |got: &[Received]| {
        let ids: HashSet<&str> = got.iter().map(|r| r.header("webhook-id")).collect();
        wanted
            .iter()
            .filter(|id| !ids.contains(id.as_str()))
            .count()
    };
    let got = receiver
        .wait_until(Duration::from_secs(120), |got| missing(got) == 0)
        .await
        .unwrap_or_else(|got| {
            panic!(
                "{} acked events never arrived; logs:\n{}",
                missing(&got),
                deployment.logs()
            )
        });
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for r in &got {
        *per_id.entry(r.header("webhook-id").to_owned()).or_default() += 1;
    }
    let duplicates: usize = per_id.values().filter(|n| **n > 1).map(|n| n - 1).sum();
    println!(
        "{}: {} acked events, {} POSTs received, {} unique webhook-ids, {duplicates} duplicates",
        backend.label(),
        acked.len(),
        got.len(),
        per_id.len()
    );
    drop(deployment);
    control_db.drop_database().await;
    data_db.drop_database().await;
}

fn event(n: u64) -> dpb::PublishRequest {
    dpb::PublishRequest {
        event_type: "conversation.created".into(),
        payload_json: format!(r#"{{"conversation":{{"id":"cnv_{n}"}},"n":{n}}}"#),
        ..Default::default()
    }
}
