//! OpenTelemetry end to end: the real binary exports to a real OTLP collector (the trace
//! service from the published OpenTelemetry protos). One event published with a known
//! `traceparent` must show up as one trace: the publisher's call, ingest, the durable write,
//! each delivery attempt and its HTTP client span, with the receiver continuing the same
//! trace, and no secret or signature anywhere in the attributes.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sluice_proto::control::v1 as pb;
use sluice_proto::data::v1 as dpb;
use sluice_testkit::otlp::{OtlpCollector, ReceivedSpan, Value};
use sluice_testkit::process::Deployment;
use sluice_testkit::publish_when_configured;
use sluice_testkit::receiver::{Receiver, Reply};
use sluice_testkit::{ADMIN_KEY, TestDatabase, backends};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_from_publisher_to_receiver() {
    // Tracing is the same on both backends; SQLite is enough here.
    let backend = backends().remove(0);
    let collector = OtlpCollector::start().await;
    let control_db = TestDatabase::create(&backend).await;
    let data_db = TestDatabase::create(&backend).await;
    // The first attempt fails, so the trace holds a retry.
    let receiver = Receiver::start(vec![Reply::status(500)], Reply::status(200)).await;
    let endpoint = format!("http://{}", collector.addr);
    let deployment = Deployment::start(
        &sluice_testkit::sluice_bin!(),
        &control_db.url,
        &data_db.url,
        &["--retry-schedule", "0s,100ms"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
        ],
    )
    .await;

    let (_, key) = deployment.workspace_with_key("otel").await;
    let mut clients = deployment.clients(Some(&key)).await;
    let created = clients
        .subscriptions
        .create_subscription(pb::CreateSubscriptionRequest {
            subscription: Some(pb::Subscription {
                url: receiver.url("/hook?token=very-secret-query"),
                filters: vec!["conversation.*".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let secret = created.secret;

    let mut ingest = deployment.publisher(&key).await;
    // Wait until the data plane has the key and the subscription (from the watch stream).
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let message_id = publish_when_configured(&mut ingest, || {
        let mut request = tonic::Request::new(dpb::PublishRequest {
            event_type: "conversation.created".into(),
            payload_json: r#"{"conversation":{"id":"cnv_1"}}"#.into(),
            ..Default::default()
        });
        request.metadata_mut().insert(
            "traceparent",
            format!("00-{trace_id}-00f067aa0ba902b7-01")
                .parse()
                .unwrap(),
        );
        request
    })
    .await
    .message_id;

    // A refused call: its server span carries the gRPC status.
    let bad_trace_id = "0af7651916cd43dd8448eb211c80319c";
    let mut bad = tonic::Request::new(dpb::PublishRequest {
        event_type: "not an event".into(),
        payload_json: "{}".into(),
        ..Default::default()
    });
    bad.metadata_mut().insert(
        "traceparent",
        format!("00-{bad_trace_id}-b7ad6b7169203331-01")
            .parse()
            .unwrap(),
    );
    let refused = ingest.publish(bad).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    // The receiver continues the trace, on both attempts.
    let posts = receiver.wait_for(2, Duration::from_secs(20)).await;
    let posts: Vec<_> = posts
        .iter()
        .filter(|p| p.header("webhook-id") == message_id)
        .collect();
    assert_eq!(posts.len(), 2, "expected the failed attempt and the retry");
    for post in &posts {
        let traceparent = post.header("traceparent");
        assert_eq!(
            traceparent.split('-').nth(1),
            Some(trace_id),
            "receiver got traceparent {traceparent:?}"
        );
    }
    let signatures: Vec<String> = posts
        .iter()
        .map(|p| p.header("webhook-signature").to_owned())
        .collect();

    let in_trace = |spans: &[ReceivedSpan]| -> Vec<ReceivedSpan> {
        spans
            .iter()
            .filter(|s| s.trace_id() == trace_id)
            .cloned()
            .collect()
    };
    let named =
        |spans: &[ReceivedSpan], name: &str| spans.iter().filter(|s| s.span.name == name).count();
    let spans = collector
        .wait_until(Duration::from_secs(30), |all| {
            let t = in_trace(all);
            named(&t, "sluice.data.v1.IngestService/Publish") >= 1
                && named(&t, "sluice.ingest") >= 1
                && named(&t, "sluice.durable_write") >= 1
                && named(&t, "sluice.deliver") >= 2
                && named(&t, "POST") >= 2
                && all.iter().any(|s| s.trace_id() == bad_trace_id)
        })
        .await;
    let trace = in_trace(&spans);

    // `publish_when_configured` may have been refused (UNAUTHENTICATED) in this same trace
    // before the data plane had the key: the call that counts is the accepted one, the
    // parent of the message's `sluice.ingest` span.
    let ingest = trace
        .iter()
        .find(|s| s.span.name == "sluice.ingest")
        .unwrap();
    let server = trace
        .iter()
        .find(|s| {
            s.span.name == "sluice.data.v1.IngestService/Publish"
                && s.span.span_id == ingest.span.parent_span_id
        })
        .unwrap();
    assert_eq!(server.service, "sluice-data");
    // Types as the semantic conventions define them: the collector keeps them as sent.
    assert_eq!(server.string("rpc.system").as_deref(), Some("grpc"));
    assert_eq!(
        server.string("rpc.service").as_deref(),
        Some("sluice.data.v1.IngestService")
    );
    assert_eq!(server.string("rpc.method").as_deref(), Some("Publish"));
    assert_eq!(server.int("rpc.grpc.status_code"), Some(0));
    let refused_span = spans.iter().find(|s| s.trace_id() == bad_trace_id).unwrap();
    assert_eq!(
        refused_span.int("rpc.grpc.status_code"),
        Some(3),
        "{refused_span:?}"
    );

    let mut attempts: Vec<&ReceivedSpan> = trace.iter().filter(|s| s.span.name == "POST").collect();
    attempts.sort_by_key(|s| s.int("http.request.resend_count"));
    assert_eq!(attempts[0].int("http.request.resend_count"), Some(0));
    assert_eq!(attempts[1].int("http.request.resend_count"), Some(1));
    assert_eq!(attempts[0].int("http.response.status_code"), Some(500));
    assert_eq!(
        attempts[0].string("error.type").as_deref(),
        Some("http_status")
    );
    assert_eq!(attempts[1].int("http.response.status_code"), Some(200));
    assert_eq!(attempts[1].value("error.type"), None);
    for a in &attempts {
        assert_eq!(a.string("http.request.method").as_deref(), Some("POST"));
        assert_eq!(a.string("server.address").as_deref(), Some("127.0.0.1"));
        assert_eq!(a.int("server.port"), Some(i64::from(receiver.addr.port())));
        let url = a.string("url.full").unwrap();
        assert!(
            url.contains("token=REDACTED") && !url.contains("very-secret-query"),
            "url.full {url}"
        );
    }
    for d in trace.iter().filter(|s| s.span.name == "sluice.deliver") {
        assert!(d.int("sluice.attempt_number").is_some(), "{d:?}");
    }
    // Each HTTP span hangs under a delivery span of the same trace.
    let deliver_ids: Vec<&Vec<u8>> = trace
        .iter()
        .filter(|s| s.span.name == "sluice.deliver")
        .map(|s| &s.span.span_id)
        .collect();
    for a in &attempts {
        assert!(
            deliver_ids.contains(&&a.span.parent_span_id),
            "HTTP span not under a delivery span"
        );
    }

    // Nothing secret in any attribute of any span either plane exported.
    let secret_key = secret.trim_start_matches("whsec_");
    for span in &spans {
        let text = span.all_attributes_text();
        for needle in [secret_key, key.as_str(), ADMIN_KEY, "very-secret-query"]
            .into_iter()
            .chain(
                signatures
                    .iter()
                    .flat_map(|s| s.split(' '))
                    .map(|s| s.trim_start_matches("v1,")),
            )
        {
            assert!(
                !text.contains(needle),
                "span {} leaks a secret: {text}",
                span.span.name
            );
        }
        assert!(
            !span.span.name.starts_with("grpc.health"),
            "health checks must not be traced"
        );
    }
    // The metrics over OTLP: deliveries by outcome (a monotonic sum of ints), attempt
    // latency (a histogram in seconds).
    use sluice_testkit::otlp::metrics_proto::metric::Data;
    use sluice_testkit::otlp::metrics_proto::number_data_point::Value as Number;
    let deliveries = |metrics: &[sluice_testkit::otlp::Metric], outcome: &str| -> i64 {
        metrics
            .iter()
            .filter(|m| m.name == "sluice.deliveries")
            .filter_map(|m| match &m.data {
                Some(Data::Sum(sum)) if sum.is_monotonic => Some(sum),
                _ => None,
            })
            .flat_map(|sum| sum.data_points.iter())
            .filter(|p| {
                p.attributes.iter().any(|a| {
                    a.key == "outcome"
                        && a.value.as_ref().and_then(|v| v.value.as_ref())
                            == Some(&Value::StringValue(outcome.to_owned()))
                })
            })
            .filter_map(|p| match p.value {
                Some(Number::AsInt(n)) => Some(n),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    };
    let metrics = collector
        .wait_for_metrics(Duration::from_secs(30), |m| {
            deliveries(m, "succeeded") >= 1 && deliveries(m, "retry_scheduled") >= 1
        })
        .await;
    let duration = metrics
        .iter()
        .find(|m| m.name == "sluice.attempt.duration")
        .unwrap();
    assert_eq!(duration.unit, "s");
    assert!(
        matches!(duration.data, Some(Data::Histogram(_))),
        "{duration:?}"
    );

    drop(deployment);
    control_db.drop_database().await;
    data_db.drop_database().await;
}
