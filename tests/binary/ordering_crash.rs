//! Ordered delivery per key across a crash: the real `sluice` binary, 10 keys × 100 events
//! to a subscription with `ordered_delivery` and a receiver failing 20% of requests at
//! random, `kill -9` of the data plane a third of the way through, a restart, and the rest.
//! Per key the receiver must accept every event, in publish order: a request never comes for
//! an event before every earlier one of its key was accepted. At-least-once delivery allows
//! one repeat: the head accepted just before the kill, whose outcome was not yet committed,
//! goes again after the restart.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sluice_proto::control::v1 as pb;
use sluice_proto::data::v1 as dpb;
use sluice_testkit::process::Deployment;
use sluice_testkit::publish_when_configured;
use sluice_testkit::receiver::{Receiver, Reply, by_payload_key};
use sluice_testkit::{Backend, Intercepted, TestDatabase, backends};
use tokio::task::JoinSet;

const KEYS: usize = 10;
const PER_KEY: usize = 100;
const KILL_AFTER_ACKS: usize = KEYS * PER_KEY / 3;

type Ingest = dpb::ingest_service_client::IngestServiceClient<Intercepted>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_stays_in_order_across_kill_9_and_restart() {
    for backend in backends() {
        run(&backend).await;
    }
}

async fn run(backend: &Backend) {
    let control_db = TestDatabase::create(backend).await;
    let data_db = TestDatabase::create(backend).await;
    let receiver =
        Receiver::start(Vec::new(), Reply::status(200).failing_at_random(0.2, 500)).await;
    let mut deployment = Deployment::start(
        &sluice_testkit::sluice_bin!(),
        &control_db.url,
        &data_db.url,
        &[
            "--retry-schedule",
            "0s,20ms,20ms,20ms,20ms,20ms,20ms,20ms,20ms,20ms",
            "--delivery-lease-secs",
            "3",
        ],
        &[],
    )
    .await;
    let (_, key) = deployment.workspace_with_key("ordering-crash").await;
    deployment
        .clients(Some(&key))
        .await
        .subscriptions
        .create_subscription(pb::CreateSubscriptionRequest {
            subscription: Some(pb::Subscription {
                url: receiver.url("/hook"),
                filters: vec!["*".into()],
                ordered_delivery: true,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut ingest = deployment.publisher(&key).await;
    // Without an idempotency key: a publish before the data plane has the subscription
    // matches nothing, and its key would make every repeat a duplicate of that.
    publish_when_configured(&mut ingest, || dpb::PublishRequest {
        idempotency_key: String::new(),
        ..event("warmup", 0)
    })
    .await;
    assert!(receiver.wait_accepted(1, Duration::from_secs(30)).await);

    // Each key publishes in order; the data plane dies a third of the way through.
    let acks = Arc::new(AtomicUsize::new(0));
    let mut next = publish_keys(&ingest, vec![0; KEYS], &acks, KILL_AFTER_ACKS).await;
    deployment.data.as_mut().unwrap().kill9().await;
    deployment.data.take();
    println!(
        "{}: killed the data plane after {} acks",
        backend.label(),
        acks.load(Ordering::Relaxed)
    );

    // Restart and publish the rest. An event whose publish the kill cut off is published
    // again under the same idempotency key: stored once whichever way it went.
    deployment.restart_data().await;
    let ingest = deployment.publisher(&key).await;
    next = publish_keys(&ingest, next, &acks, usize::MAX).await;
    assert!(next.iter().all(|n| *n == PER_KEY), "{next:?}");

    let total = KEYS * PER_KEY + 1;
    assert!(
        receiver
            .wait_accepted(total, Duration::from_secs(180))
            .await,
        "{} of {total} accepted; logs:\n{}",
        receiver.accepted(),
        deployment.logs()
    );
    let complete = |got: &[sluice_testkit::receiver::Received]| {
        let by_key = by_payload_key(got, "key", "n");
        (0..KEYS).all(|k| {
            by_key.get(&format!("conv_{k}")).is_some_and(|requests| {
                let accepted: std::collections::HashSet<u64> = requests
                    .iter()
                    .filter(|(_, status)| *status == 200)
                    .map(|(n, _)| *n)
                    .collect();
                accepted.len() == PER_KEY
            })
        })
    };
    let got = receiver
        .wait_until(Duration::from_secs(60), complete)
        .await
        .unwrap_or_else(|_| panic!("events missing; logs:\n{}", deployment.logs()));
    let by_key = by_payload_key(&got, "key", "n");
    let mut repeats = 0;
    for k in 0..KEYS {
        let key = format!("conv_{k}");
        let requests = &by_key[&key];
        // Accepted so far: a request may go for the next event or repeat an earlier one
        // (a retry, or after the restart the head whose outcome the kill lost).
        let mut accepted_up_to: Option<u64> = None;
        for &(n, status) in requests {
            let next = accepted_up_to.map_or(0, |a| a + 1);
            assert!(
                n <= next,
                "{key}: event {n} went before event {next} was accepted: {requests:?}"
            );
            if status == 200 {
                if n < next {
                    repeats += 1;
                } else {
                    accepted_up_to = Some(n);
                }
            }
        }
        assert_eq!(
            accepted_up_to,
            Some(PER_KEY as u64 - 1),
            "{key}: {requests:?}"
        );
    }
    println!(
        "{}: {KEYS} keys x {PER_KEY} events in order across kill -9, {} requests, {repeats} \
         accepted twice",
        backend.label(),
        got.len()
    );
    drop(deployment);
    control_db.drop_database().await;
    data_db.drop_database().await;
}

/// Publishes each key's events from `next[k]` on, in order (each publish waits for the one
/// before), until `stop_after` publishes were acked in all or a publish fails (the data
/// plane was killed). Returns where each key stands: its first event not acked.
async fn publish_keys(
    ingest: &Ingest,
    next: Vec<usize>,
    acks: &Arc<AtomicUsize>,
    stop_after: usize,
) -> Vec<usize> {
    let mut tasks = JoinSet::new();
    for (k, from) in next.into_iter().enumerate() {
        let (mut ingest, acks) = (ingest.clone(), Arc::clone(acks));
        tasks.spawn(async move {
            let mut n = from;
            while n < PER_KEY && acks.load(Ordering::Relaxed) < stop_after {
                match ingest.publish(event(&format!("conv_{k}"), n)).await {
                    Ok(_) => {
                        acks.fetch_add(1, Ordering::Relaxed);
                        n += 1;
                    }
                    Err(status) if stop_after == usize::MAX => {
                        panic!("publish failed after the restart: {status:?}")
                    }
                    Err(_) => break,
                }
            }
            (k, n)
        });
    }
    let mut next = vec![0; KEYS];
    while let Some(done) = tasks.join_next().await {
        let (k, n) = done.unwrap();
        next[k] = n;
    }
    next
}

fn event(key: &str, n: usize) -> dpb::PublishRequest {
    dpb::PublishRequest {
        event_type: "conversation.created".into(),
        payload_json: format!(r#"{{"key":"{key}","n":{n}}}"#),
        idempotency_key: format!("{key}-{n}"),
        ordering_key: key.to_owned(),
        ..Default::default()
    }
}
