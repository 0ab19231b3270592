//! The sender against the test kit's HTTPS receiver, with certificates made in the test:
//! HTTPS delivery, HTTP/2 by ALPN, a private CA trusted only when configured, and each
//! certificate failure named so a person can act on it.

use bytes::Bytes;
use sluice_core::egress::AllowList;
use sluice_delivery::{
    AttemptErrorKind, AttemptResult, CustomHeaders, DeliveryRequest, Sender, SenderConfig,
};
use sluice_testkit::receiver::{Receiver, Reply};
use sluice_testkit::tls::{TestCa, Validity, self_signed};
use url::Url;

const BODY: &str = r#"{"id":"msg_tls","event":"x.y","payload":{}}"#;
const NAMES: &[&str] = &["localhost", "127.0.0.1"];

/// An HTTPS-only sender allowed to reach 127.0.0.1, trusting `extra_ca` besides the
/// system's authorities.
fn sender(extra_ca: Option<&str>) -> Sender {
    Sender::new(SenderConfig {
        allow_http: false,
        allow_list: AllowList::parse(&["127.0.0.1/32".to_owned()]).expect("allow list"),
        extra_ca_pem: extra_ca.map(|pem| pem.as_bytes().to_vec()),
        ..SenderConfig::default()
    })
    .expect("sender")
}

async fn send(sender: &Sender, url: &str) -> AttemptResult {
    sender
        .send(&DeliveryRequest {
            url: &Url::parse(url).expect("url"),
            msg_id: "msg_tls",
            body: Bytes::from_static(BODY.as_bytes()),
            secrets: &[],
            asymmetric_keys: &[],
            headers: &CustomHeaders::default(),
            traceparent: None,
            tracestate: None,
            resend_count: 0,
            credentials: None,
        })
        .await
}

fn message(result: &AttemptResult) -> String {
    result.error_message.clone().unwrap_or_default()
}

#[tokio::test]
async fn https_to_a_trusted_ca_is_delivered_over_http1_or_http2_as_alpn_decides() {
    let ca = TestCa::new();
    let identity = ca.issue(NAMES, Validity::Current);
    let sender = sender(Some(&ca.cert_pem));
    for (alpn, want) in [
        (
            &[b"h2".as_slice(), b"http/1.1".as_slice()][..],
            axum::http::Version::HTTP_2,
        ),
        (&[b"http/1.1".as_slice()][..], axum::http::Version::HTTP_11),
        (&[][..], axum::http::Version::HTTP_11),
    ] {
        let receiver =
            Receiver::start_tls(Vec::new(), Reply::status(200), identity.server_config(alpn)).await;
        for url in [receiver.url("/hook"), receiver.url_by_name("/hook")] {
            let result = send(&sender, &url).await;
            assert!(result.is_success(), "{alpn:?} {url}: {result:?}");
            let got = receiver.next().await;
            assert_eq!(got.version, want, "{alpn:?} {url}");
            assert_eq!(got.body, BODY.as_bytes());
            assert_eq!(got.header("webhook-id"), "msg_tls");
        }
    }
}

#[tokio::test]
async fn a_self_signed_endpoint_is_refused_unless_its_certificate_is_trusted() {
    let identity = self_signed(NAMES);
    let receiver = Receiver::start_tls(
        Vec::new(),
        Reply::status(200),
        identity.server_config(&[b"http/1.1"]),
    )
    .await;

    let result = send(&sender(None), &receiver.url("/hook")).await;
    assert_eq!(result.error_kind, Some(AttemptErrorKind::Tls), "{result:?}");
    assert!(
        message(&result).contains("unknown certificate authority"),
        "{result:?}"
    );
    assert!(message(&result).contains("--extra-ca-file"), "{result:?}");
    // Another CA does not help either.
    let other = TestCa::new();
    let result = send(&sender(Some(&other.cert_pem)), &receiver.url("/hook")).await;
    assert_eq!(result.error_kind, Some(AttemptErrorKind::Tls), "{result:?}");
    assert!(receiver.received().is_empty());

    let result = send(&sender(Some(&identity.cert_pem)), &receiver.url("/hook")).await;
    assert!(result.is_success(), "{result:?}");
    assert_eq!(receiver.next().await.body, BODY.as_bytes());
}

#[tokio::test]
async fn an_expired_certificate_is_named_as_expired() {
    let ca = TestCa::new();
    let identity = ca.issue(NAMES, Validity::Expired);
    let receiver =
        Receiver::start_tls(Vec::new(), Reply::status(200), identity.server_config(&[])).await;
    let result = send(&sender(Some(&ca.cert_pem)), &receiver.url("/hook")).await;
    assert_eq!(result.error_kind, Some(AttemptErrorKind::Tls), "{result:?}");
    assert!(
        message(&result).contains("certificate has expired"),
        "{result:?}"
    );
    assert!(receiver.received().is_empty());
}

#[tokio::test]
async fn a_certificate_for_another_name_is_named_as_the_wrong_name() {
    let ca = TestCa::new();
    let identity = ca.issue(&["receiver.example"], Validity::Current);
    let receiver =
        Receiver::start_tls(Vec::new(), Reply::status(200), identity.server_config(&[])).await;
    let result = send(&sender(Some(&ca.cert_pem)), &receiver.url("/hook")).await;
    assert_eq!(result.error_kind, Some(AttemptErrorKind::Tls), "{result:?}");
    assert!(message(&result).contains("wrong name"), "{result:?}");
    assert!(receiver.received().is_empty());
}

#[test]
fn an_extra_ca_file_without_certificates_is_refused_at_start() {
    let refused = Sender::new(SenderConfig {
        extra_ca_pem: Some(b"not a certificate".to_vec()),
        ..SenderConfig::default()
    });
    assert!(refused.is_err());
}

#[tokio::test]
async fn an_http2_response_head_over_the_limit_names_the_limit() {
    let ca = TestCa::new();
    let identity = ca.issue(NAMES, Validity::Current);
    let sender = sender(Some(&ca.cert_pem));
    let big = "v".repeat(sluice_delivery::MAX_RESPONSE_HEAD_BYTES + 1024);
    let receiver = Receiver::start_tls(
        vec![Reply::status(200).header("x-big", &big)],
        Reply::status(200),
        identity.server_config(&[b"h2"]),
    )
    .await;
    let result = send(&sender, &receiver.url("/hook")).await;
    assert_eq!(result.status_code, None, "{result:?}");
    let message = message(&result);
    assert!(
        message.contains(&format!(
            "{} KiB",
            sluice_delivery::MAX_RESPONSE_HEAD_BYTES / 1024
        )) && message.contains("HTTP/2"),
        "{message}"
    );
    // A head within the limit is read.
    let result = send(&sender, &receiver.url("/hook")).await;
    assert!(result.is_success(), "{result:?}");
}
