//! Graceful shutdown of the real binary: SIGTERM while deliveries are in flight to a slow
//! endpoint. The data plane must exit cleanly within its grace period, and after a restart
//! every event it acked must still reach the receiver.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use sluice_proto::control::v1 as pb;
use sluice_proto::data::v1 as dpb;
use sluice_testkit::process::Deployment;
use sluice_testkit::receiver::{Received, Receiver, Reply};
use sluice_testkit::{TestDatabase, backends};

const EVENTS: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_or_keeps_in_flight_work() {
    for backend in backends() {
        let control_db = TestDatabase::create(&backend).await;
        let data_db = TestDatabase::create(&backend).await;
        // Slow enough that a burst is still in flight when SIGTERM arrives.
        let receiver = Receiver::start(
            Vec::new(),
            Reply::status(200).delay(Duration::from_millis(300)),
        )
        .await;
        let mut deployment = Deployment::start(
            &sluice_testkit::sluice_bin!(),
            &control_db.url,
            &data_db.url,
            &[
                "--shutdown-grace-secs",
                "1",
                "--retry-schedule",
                "0s,200ms,1s",
                "--delivery-lease-secs",
                "2",
            ],
            &[],
        )
        .await;
        let (_, key) = deployment.workspace_with_key("shutdown").await;
        deployment
            .clients(Some(&key))
            .await
            .subscriptions
            .create_subscription(pb::CreateSubscriptionRequest {
                subscription: Some(pb::Subscription {
                    url: receiver.url("/slow"),
                    filters: vec!["*".into()],
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut ingest = deployment.publisher(&key).await;
        let mut acked = Vec::new();
        while acked.len() < EVENTS {
            let request = dpb::PublishRequest {
                event_type: "call.handled".into(),
                payload_json: format!(r#"{{"n":{}}}"#, acked.len()),
                ..Default::default()
            };
            match ingest.publish(request).await {
                Ok(r) if r.get_ref().delivery_count == 1 => acked.push(r.into_inner().message_id),
                Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await, // config not there yet
                Err(s) if s.code() == tonic::Code::Unauthenticated => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(s) => panic!("publish failed: {s:?}"),
            }
        }
        // Deliveries are in flight now (16 at a time, 300 ms each).
        receiver.wait_for(1, Duration::from_secs(10)).await;
        let started = Instant::now();
        let clean = deployment.data.as_mut().unwrap().terminate().await;
        let took = started.elapsed();
        assert!(
            clean,
            "the data plane did not exit cleanly on SIGTERM; logs:\n{}",
            deployment.logs()
        );
        println!(
            "{}: SIGTERM to exit took {took:?}, {} POSTs received by then",
            backend.label(),
            receiver.received().len()
        );
        deployment.data.take();

        deployment.restart_data().await;
        let wanted: HashSet<&String> = acked.iter().collect();
        let missing = |got: &[Received]| {
            let ids: HashSet<&str> = got.iter().map(|r| r.header("webhook-id")).collect();
            wanted
                .iter()
                .filter(|id| !ids.contains(id.as_str()))
                .count()
        };
        if let Err(got) = receiver
            .wait_until(Duration::from_secs(60), |got| missing(got) == 0)
            .await
        {
            panic!(
                "{} acked events never arrived; logs:\n{}",
                missing(&got),
                deployment.logs()
            );
        }
        drop(deployment);
        control_db.drop_database().await;
        data_db.drop_database().await;
    }
}
