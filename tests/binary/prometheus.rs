//! `--metrics-listen`: the data plane serves `/metrics` in the Prometheus text format, and a
//! scrape during a run shows deliveries by outcome under the conventional names.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sluice_proto::control::v1 as pb;
use sluice_proto::data::v1 as dpb;
use sluice_testkit::process::Deployment;
use sluice_testkit::publish_when_configured;
use sluice_testkit::receiver::{Receiver, Reply};
use sluice_testkit::{TestDatabase, backends, free_addr};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// GET `/metrics` over a plain HTTP/1.1 connection; (status line, body).
async fn scrape(addr: std::net::SocketAddr) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: sluice\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// The value of the sample `line_start` (name and labels) in `text`.
fn value(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_shows_deliveries_by_outcome() {
    let backend = backends().remove(0);
    let control_db = TestDatabase::create(&backend).await;
    let data_db = TestDatabase::create(&backend).await;
    // The first attempt fails, so both outcomes appear.
    let receiver = Receiver::start(vec![Reply::status(500)], Reply::status(200)).await;
    let metrics_addr = free_addr();
    let deployment = Deployment::start(
        &sluice_testkit::sluice_bin!(),
        &control_db.url,
        &data_db.url,
        &[
            "--retry-schedule",
            "0s,100ms",
            "--metrics-listen",
            &metrics_addr.to_string(),
        ],
        &[],
    )
    .await;

    let (_, key) = deployment.workspace_with_key("prom").await;
    let mut clients = deployment.clients(Some(&key)).await;
    let subscription = clients
        .subscriptions
        .create_subscription(pb::CreateSubscriptionRequest {
            subscription: Some(pb::Subscription {
                url: receiver.url("/hook"),
                filters: vec!["conversation.*".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .subscription
        .unwrap();
    let mut ingest = deployment.publisher(&key).await;
    publish_when_configured(&mut ingest, || dpb::PublishRequest {
        event_type: "conversation.created".into(),
        payload_json: "{}".into(),
        ..Default::default()
    })
    .await;
    receiver.wait_for(2, Duration::from_secs(20)).await;

    // The counters are recorded just after each attempt's answer: scrape until they show.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let text = loop {
        let (status, text) = scrape(metrics_addr).await;
        assert!(status.contains(" 200 "), "{status}");
        if value(&text, "sluice_deliveries_total{outcome=\"succeeded\"}") == Some(1.0)
            && value(
                &text,
                "sluice_deliveries_total{outcome=\"retry_scheduled\"}",
            ) == Some(1.0)
        {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "deliveries never showed in\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        text.contains("# TYPE sluice_deliveries_total counter"),
        "{text}"
    );
    assert!(
        value(&text, "sluice_events_published_total").unwrap() >= 1.0,
        "{text}"
    );
    assert!(
        text.contains("# TYPE sluice_attempt_duration_seconds histogram"),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "sluice_attempt_duration_seconds_count{outcome=\"succeeded\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert!(value(&text, "sluice_queue_depth").is_some(), "{text}");
    // Adaptive (the default): after one failure and one success, somewhere in 1..=16.
    let limit = value(
        &text,
        &format!(
            "sluice_endpoint_concurrency_limit{{subscription_id=\"{}\"}}",
            subscription.id
        ),
    );
    assert!(
        limit.is_some_and(|l| (1.0..=16.0).contains(&l)),
        "{limit:?} in\n{text}"
    );

    drop(deployment);
    control_db.drop_database().await;
    data_db.drop_database().await;
}
