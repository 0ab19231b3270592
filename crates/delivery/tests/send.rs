//! End-to-end tests of the sender against real receivers bound to 127.0.0.1:0: the test
//! kit's recording HTTP receiver, and its raw TCP peer for answers no HTTP server gives.
//!
//! The tests await what the receivers got (never sleep) and assert on both sides of the
//! wire.

use std::time::Duration;

use bytes::Bytes;
use sluice_core::egress::AllowList;
use sluice_core::signing::{SigningSecret, verify};
use sluice_core::signing_ed25519::{AsymmetricKey, verify_v1a};
use sluice_delivery::{
    AttemptErrorKind, AttemptResult, CustomHeaders, DEFAULT_USER_AGENT, DeliveryRequest,
    MAX_RESPONSE_HEAD_BYTES, MAX_RESPONSE_HEADERS, Sender, SenderConfig, slack_message,
};
use sluice_testkit::raw::{AfterAnswer, RawPeer};
use sluice_testkit::receiver::{Receiver, Reply};
use sluice_testkit::{WAIT, free_addr};
use url::Url;

/// `text` as a URL.
fn url(text: &str) -> Url {
    Url::parse(text).expect("url")
}

/// A receiver answering every request with `reply`.
async fn answering(reply: Reply) -> Receiver {
    Receiver::start(Vec::new(), reply).await
}

fn loopback_allow_list() -> AllowList {
    AllowList::parse(&["127.0.0.1/32".to_owned()]).expect("allow list")
}

/// A sender that may reach the test receivers: plain http, and 127.0.0.1 allow-listed
/// (the default policy refuses loopback).
fn local_sender(adjust: impl FnOnce(&mut SenderConfig)) -> Sender {
    let mut config = SenderConfig {
        allow_http: true,
        allow_list: loopback_allow_list(),
        ..SenderConfig::default()
    };
    adjust(&mut config);
    Sender::new(config).expect("sender")
}

const BODY: &str = r#"{"id":"msg_test","event":"conversation.created","payload":{"a":1}}"#;

async fn send_to(
    sender: &Sender,
    url: &Url,
    secrets: &[&SigningSecret],
    headers: &[(String, String)],
) -> AttemptResult {
    sender
        .send(&DeliveryRequest {
            url,
            msg_id: "msg_test",
            body: Bytes::from_static(BODY.as_bytes()),
            secrets,
            asymmetric_keys: &[],
            headers: &CustomHeaders::new(headers),
            traceparent: None,
            tracestate: None,
            resend_count: 0,
            credentials: None,
        })
        .await
}

#[tokio::test]
async fn success_carries_standard_webhooks_headers_and_a_valid_signature() {
    let receiver = answering(Reply::status(200).body("thanks")).await;
    let sender = local_sender(|_| {});
    let secret = SigningSecret::generate();
    let url = url(&receiver.url("/hooks/sluice?x=1"));
    let custom = vec![
        ("X-Tenant".to_owned(), "acme".to_owned()),
        ("Authorization".to_owned(), "Bearer custom-token".to_owned()),
        // Reserved names are never overridden by custom headers.
        ("webhook-id".to_owned(), "forged".to_owned()),
        ("Host".to_owned(), "forged.example".to_owned()),
        ("Content-Length".to_owned(), "1".to_owned()),
    ];
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let result = sender
        .send(&DeliveryRequest {
            url: &url,
            msg_id: "msg_test",
            body: Bytes::from_static(BODY.as_bytes()),
            secrets: &[&secret],
            asymmetric_keys: &[],
            headers: &CustomHeaders::new(&custom),
            traceparent: Some(traceparent),
            tracestate: Some("vendor=1"),
            resend_count: 0,
            credentials: None,
        })
        .await;

    assert!(result.is_success(), "{result:?}");
    assert_eq!(result.status_code, Some(200));
    assert_eq!(result.error_kind, None);
    assert_eq!(result.error_message, None);
    assert_eq!(result.response_excerpt, "thanks");
    assert_eq!(result.retry_after, None);
    assert!(!result.is_gone());

    let got = receiver.next().await;
    assert_eq!(got.path, "/hooks/sluice");
    assert_eq!(got.body, BODY.as_bytes());
    let h = &got.headers;
    assert_eq!(got.header("content-type"), "application/json");
    assert_eq!(got.header("webhook-id"), "msg_test");
    assert_eq!(h.get_all("webhook-id").iter().count(), 1);
    assert_eq!(
        got.header("webhook-timestamp"),
        result.webhook_timestamp.to_string()
    );
    assert_eq!(got.header("user-agent"), DEFAULT_USER_AGENT);
    assert!(DEFAULT_USER_AGENT.starts_with("Sluice-Webhooks/"));
    assert_eq!(got.header("traceparent"), traceparent);
    assert_eq!(got.header("tracestate"), "vendor=1");
    assert_eq!(got.header("x-tenant"), "acme");
    assert_eq!(got.header("authorization"), "Bearer custom-token");
    // reqwest's default, once.
    assert_eq!(h.get_all("accept").iter().collect::<Vec<_>>(), ["*/*"]);
    // Set by the sender before hyper would (host:port, as hyper writes it), each once.
    let host = format!("127.0.0.1:{}", receiver.addr.port());
    assert_eq!(
        h.get_all("host").iter().collect::<Vec<_>>(),
        [host.as_str()]
    );
    let length = BODY.len().to_string();
    assert_eq!(
        h.get_all("content-length").iter().collect::<Vec<_>>(),
        [length.as_str()]
    );

    let now = chrono::Utc::now().timestamp();
    verify(
        &secret,
        got.header("webhook-id"),
        got.header("webhook-timestamp"),
        got.header("webhook-signature"),
        &got.body,
        now,
        300,
    )
    .expect("the signature verifies");
    // A different secret must not verify: the check above is not vacuous.
    assert!(
        verify(
            &SigningSecret::generate(),
            got.header("webhook-id"),
            got.header("webhook-timestamp"),
            got.header("webhook-signature"),
            &got.body,
            now,
            300,
        )
        .is_err()
    );
}

#[tokio::test]
async fn a_custom_accept_header_replaces_the_default() {
    let receiver = answering(Reply::status(200)).await;
    let sender = local_sender(|_| {});
    let custom = [("Accept".to_owned(), "application/json".to_owned())];
    let result = send_to(&sender, &url(&receiver.url("/")), &[], &custom).await;
    assert!(result.is_success(), "{result:?}");
    let got = receiver.next().await;
    assert_eq!(
        got.headers.get_all("accept").iter().collect::<Vec<_>>(),
        ["application/json"]
    );
}

#[tokio::test]
async fn two_secrets_give_two_signatures_that_both_verify() {
    let receiver = answering(Reply::status(204)).await;
    let sender = local_sender(|_| {});
    let old = SigningSecret::generate();
    let new = SigningSecret::generate();
    let result = send_to(&sender, &url(&receiver.url("/")), &[&old, &new], &[]).await;
    assert!(result.is_success(), "{result:?}");

    let got = receiver.next().await;
    let signatures = got.header("webhook-signature");
    let parts: Vec<&str> = signatures.split(' ').collect();
    assert_eq!(parts.len(), 2, "{signatures}");
    assert!(parts.iter().all(|part| part.starts_with("v1,")));
    let now = chrono::Utc::now().timestamp();
    for (secret, only_its_signature) in [(&old, parts[0]), (&new, parts[1])] {
        for signature in [signatures, only_its_signature] {
            verify(
                secret,
                "msg_test",
                got.header("webhook-timestamp"),
                signature,
                &got.body,
                now,
                300,
            )
            .expect("verifies");
        }
    }
}

/// A receiver's `v1a` check written from the Standard Webhooks spec alone: strip `whpk_`,
/// base64-decode the 32-byte public key; for each space-separated entry starting `v1a,`,
/// base64-decode the 64-byte signature and check ed25519 over `{id}.{timestamp}.{body}`.
fn spec_verify_v1a(whpk: &str, id: &str, timestamp: &str, header: &str, body: &[u8]) -> bool {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use ed25519_dalek::Verifier as _;
    let Some(encoded) = whpk.strip_prefix("whpk_") else {
        return false;
    };
    let Ok(bytes) = STANDARD.decode(encoded) else {
        return false;
    };
    let Ok(bytes) = <[u8; 32]>::try_from(bytes.as_slice()) else {
        return false;
    };
    let Ok(public) = ed25519_dalek::VerifyingKey::from_bytes(&bytes) else {
        return false;
    };
    let mut content = format!("{id}.{timestamp}.").into_bytes();
    content.extend_from_slice(body);
    header.split(' ').any(|entry| {
        entry
            .strip_prefix("v1a,")
            .and_then(|sig| STANDARD.decode(sig).ok())
            .and_then(|sig| ed25519_dalek::Signature::from_slice(&sig).ok())
            .is_some_and(|sig| public.verify(&content, &sig).is_ok())
    })
}

#[tokio::test]
async fn symmetric_and_asymmetric_keys_each_add_a_signature_that_verifies() {
    let receiver = answering(Reply::status(200)).await;
    let sender = local_sender(|_| {});
    let secret = SigningSecret::generate();
    let current = AsymmetricKey::generate();
    let previous = AsymmetricKey::generate();
    let url = url(&receiver.url("/hook"));
    for (secrets, keys, want) in [
        (
            vec![&secret],
            vec![&current, &previous],
            ["v1,", "v1a,", "v1a,"].as_slice(),
        ),
        (vec![], vec![&current], ["v1a,"].as_slice()),
    ] {
        let result = sender
            .send(&DeliveryRequest {
                url: &url,
                msg_id: "msg_test",
                body: Bytes::from_static(BODY.as_bytes()),
                secrets: &secrets,
                asymmetric_keys: &keys,
                headers: &CustomHeaders::default(),
                traceparent: None,
                tracestate: None,
                resend_count: 0,
                credentials: None,
            })
            .await;
        assert!(result.is_success(), "{result:?}");
        let got = receiver.next().await;
        let header = got.header("webhook-signature");
        let entries: Vec<&str> = header.split(' ').collect();
        assert_eq!(entries.len(), want.len(), "{header}");
        for (entry, prefix) in entries.iter().zip(want) {
            assert!(entry.starts_with(prefix), "{header}");
        }
        let timestamp = got.header("webhook-timestamp");
        for key in &keys {
            let whpk = key.public_key().to_whpk();
            assert!(
                spec_verify_v1a(&whpk, "msg_test", timestamp, header, &got.body),
                "{header}"
            );
            assert_eq!(
                verify_v1a(
                    &key.public_key(),
                    "msg_test",
                    timestamp,
                    header,
                    &got.body,
                    now(),
                    300
                ),
                Ok(())
            );
        }
        let stranger = AsymmetricKey::generate().public_key().to_whpk();
        assert!(!spec_verify_v1a(
            &stranger, "msg_test", timestamp, header, &got.body
        ));
        let tampered = [got.body.as_ref(), b" "].concat();
        assert!(!spec_verify_v1a(
            &current.public_key().to_whpk(),
            "msg_test",
            timestamp,
            header,
            &tampered
        ));
        assert_eq!(got.verify(&secret).is_ok(), !secrets.is_empty());
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

#[tokio::test]
async fn unsigned_slack_message() {
    let receiver = answering(Reply::status(200).body("ok")).await;
    let sender = local_sender(|_| {});
    let body = slack_message(
        "conversation.created",
        "msg_test",
        "wrk_1",
        &serde_json::json!({"conversation": {"id": "cnv_abc123"}}),
    );
    let url = url(&receiver.url("/services/T000/B000/XXXX"));
    let result = sender
        .send(&DeliveryRequest {
            url: &url,
            msg_id: "msg_test",
            body: Bytes::from(body),
            secrets: &[],
            asymmetric_keys: &[],
            headers: &CustomHeaders::default(),
            traceparent: None,
            tracestate: None,
            resend_count: 0,
            credentials: None,
        })
        .await;
    assert!(result.is_success(), "{result:?}");
    let got = receiver.next().await;
    assert!(got.headers.get("webhook-signature").is_none());
    let json: serde_json::Value = serde_json::from_slice(&got.body).expect("json");
    let text = json["text"].as_str().expect("text");
    assert!(text.contains("*conversation.created*"), "{text}");
    assert!(text.contains("• conversation.id: cnv_abc123"), "{text}");
}

#[tokio::test]
async fn server_error_is_an_http_status_failure_with_excerpt() {
    let receiver = answering(Reply::status(500).body("database on fire")).await;
    let sender = local_sender(|_| {});
    let result = send_to(&sender, &url(&receiver.url("/")), &[], &[]).await;
    assert!(!result.is_success());
    assert_eq!(result.status_code, Some(500));
    assert_eq!(result.error_kind, Some(AttemptErrorKind::HttpStatus));
    assert_eq!(result.response_excerpt, "database on fire");
    let message = result.error_message.expect("message");
    assert!(message.contains("500"), "{message}");
    receiver.next().await;
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let receiver = answering(Reply::status(200).body("followed")).await;
    let target = receiver.url("/target");
    receiver.script([Reply::status(302).header("location", &target).body("moved")]);

    let sender = local_sender(|_| {});
    let result = send_to(&sender, &url(&receiver.url("/hook")), &[], &[]).await;
    assert!(!result.is_success());
    assert_eq!(result.status_code, Some(302));
    assert_eq!(result.error_kind, Some(AttemptErrorKind::Redirect));
    let message = result.error_message.expect("message");
    assert!(message.contains(&receiver.url("")), "{message}");
    // Only the origin: a path may carry a token.
    assert!(!message.contains("/target"), "{message}");
    let paths: Vec<String> = receiver.received().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/hook"], "the redirect was followed");
}

#[tokio::test]
async fn retry_after_is_read_on_429_and_503_only() {
    let cases = [
        (429, Some(Duration::from_secs(7))),
        (503, Some(Duration::from_secs(7))),
        (500, None),
    ];
    let sender = local_sender(|_| {});
    for (code, expected) in cases {
        let receiver = answering(
            Reply::status(code)
                .header("retry-after", "7")
                .body("slow down"),
        )
        .await;
        let result = send_to(&sender, &url(&receiver.url("/")), &[], &[]).await;
        assert_eq!(result.status_code, Some(code));
        assert_eq!(result.error_kind, Some(AttemptErrorKind::HttpStatus));
        assert_eq!(result.retry_after, expected, "{code}");
    }
}

#[tokio::test]
async fn gone_is_reported() {
    let receiver = answering(Reply::status(410).body("unsubscribed")).await;
    let sender = local_sender(|_| {});
    let result = send_to(&sender, &url(&receiver.url("/")), &[], &[]).await;
    assert!(result.is_gone());
    assert!(!result.is_success());
    assert_eq!(result.error_kind, Some(AttemptErrorKind::HttpStatus));
}

#[tokio::test]
async fn a_receiver_that_never_answers_times_out() {
    // Reads the request head, then says nothing while holding the connection open.
    let mut peer = RawPeer::start(b"", AfterAnswer::Hold).await;
    let sender = local_sender(|config| config.request_timeout = Duration::from_millis(300));
    let result = send_to(&sender, &url(&peer.url("http", "/")), &[], &[]).await;
    assert_eq!(
        result.error_kind,
        Some(AttemptErrorKind::Timeout),
        "{result:?}"
    );
    assert_eq!(result.status_code, None);
    assert!(!result.is_success());
    let head = peer.next_read().await;
    assert!(head.starts_with(b"POST / HTTP/1.1"));
}

#[tokio::test]
async fn a_closed_port_is_a_connect_failure() {
    // Bound then released, so the port is (almost certainly) closed.
    let addr = free_addr();
    let sender = local_sender(|_| {});
    let result = send_to(&sender, &url(&format!("http://{addr}/")), &[], &[]).await;
    assert_eq!(
        result.error_kind,
        Some(AttemptErrorKind::Connect),
        "{result:?}"
    );
    assert_eq!(result.status_code, None);
    let message = result.error_message.expect("message");
    assert!(!message.contains(&addr.port().to_string()), "{message}");
}

#[tokio::test]
async fn a_huge_body_is_cut_at_the_excerpt_size() {
    let receiver = answering(Reply::status(200).body(vec![b'a'; 1024 * 1024])).await;
    let sender = local_sender(|_| {});
    let result = send_to(&sender, &url(&receiver.url("/")), &[], &[]).await;
    assert!(result.is_success(), "{result:?}");
    assert_eq!(result.response_excerpt.len(), 4096);
    assert!(result.response_excerpt.bytes().all(|b| b == b'a'));
}

#[tokio::test]
async fn loopback_is_refused_by_default_and_nothing_is_sent() {
    let receiver = answering(Reply::status(200).body("ok")).await;
    let sender = local_sender(|config| config.allow_list = AllowList::default());
    let port = receiver.addr.port();
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
    ] {
        let url = Url::parse(&url).expect("url");
        let result = send_to(&sender, &url, &[], &[]).await;
        assert_eq!(
            result.error_kind,
            Some(AttemptErrorKind::EgressDenied),
            "{url}: {result:?}"
        );
        assert_eq!(result.status_code, None);
        let message = result.error_message.expect("message");
        assert!(message.contains("loopback"), "{message}");
        assert!(message.contains("egress policy"), "{message}");
        assert!(receiver.received().is_empty(), "{:?}", receiver.received());
    }
    let literal = Url::parse(&format!("http://127.0.0.1:{port}/")).expect("url");
    let message = send_to(&sender, &literal, &[], &[])
        .await
        .error_message
        .expect("message");
    assert!(message.contains("(127.0.0.1)"), "{message}");
}

#[tokio::test]
async fn an_allow_list_entry_lets_loopback_through() {
    let receiver = answering(Reply::status(200).body("ok")).await;
    let sender = local_sender(|config| config.allow_list = loopback_allow_list());
    let port = receiver.addr.port();
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
    ] {
        let url = Url::parse(&url).expect("url");
        let result = send_to(&sender, &url, &[], &[]).await;
        assert!(result.is_success(), "{url}: {result:?}");
        receiver.next().await;
    }
}

#[tokio::test]
async fn allow_private_lets_loopback_through() {
    let receiver = answering(Reply::status(200).body("ok")).await;
    let sender = local_sender(|config| {
        config.allow_list = AllowList::default();
        config.allow_private = true;
    });
    let url = Url::parse(&format!("http://localhost:{}/", receiver.addr.port())).expect("url");
    let result = send_to(&sender, &url, &[], &[]).await;
    assert!(result.is_success(), "{result:?}");
    receiver.next().await;
}

#[tokio::test]
async fn https_is_required_unless_http_is_allowed() {
    let receiver = answering(Reply::status(200).body("ok")).await;
    let sender = local_sender(|config| config.allow_http = false);
    let result = send_to(&sender, &url(&receiver.url("/")), &[], &[]).await;
    assert_eq!(result.error_kind, Some(AttemptErrorKind::EgressDenied));
    let message = result.error_message.expect("message");
    assert!(message.contains("https"), "{message}");
    assert!(receiver.received().is_empty(), "{:?}", receiver.received());
    assert!(sender.check_url(&url(&receiver.url("/"))).is_err());
}

#[tokio::test]
async fn a_receiver_that_does_not_speak_tls_is_a_tls_failure() {
    // Answers the TLS ClientHello with plain HTTP, as a misconfigured endpoint would.
    let mut peer = RawPeer::start(
        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n",
        AfterAnswer::Close,
    )
    .await;
    let sender = local_sender(|config| config.allow_http = false);
    let result = send_to(&sender, &url(&peer.url("https", "/")), &[], &[]).await;
    assert_eq!(result.error_kind, Some(AttemptErrorKind::Tls), "{result:?}");
    let message = result.error_message.clone().expect("message");
    assert!(message.contains("plain HTTP on an https URL"), "{message}");
    let hello = peer.next_read().await;
    // 0x16: a TLS handshake record, i.e. the ClientHello.
    assert_eq!(hello.first(), Some(&0x16));
}

#[tokio::test]
async fn an_http2_only_endpoint_without_tls_is_named_as_h2c() {
    // What an h2c-only server writes first on any connection: its SETTINGS frame (empty),
    // then GOAWAY (PROTOCOL_ERROR) once it sees an HTTP/1.1 request instead of the preface.
    const SETTINGS_THEN_GOAWAY: &[u8] = &[
        0, 0, 0, 4, 0, 0, 0, 0, 0, // SETTINGS, no parameters
        0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        1, // GOAWAY, last stream 0, PROTOCOL_ERROR
    ];
    let mut peer = RawPeer::start(SETTINGS_THEN_GOAWAY, AfterAnswer::Close).await;
    let sender = local_sender(|_| {});
    let result = send_to(&sender, &url(&peer.url("http", "/hook")), &[], &[]).await;
    let message = result.error_message.clone().expect("message");
    assert_eq!(
        result.error_kind,
        Some(AttemptErrorKind::Other),
        "{result:?}"
    );
    assert!(
        message.contains("HTTP/2 without TLS (h2c)") && message.contains("serve HTTP/1.1 or HTTPS"),
        "{message}"
    );
    assert!(peer.next_read().await.starts_with(b"POST /hook HTTP/1.1"));
}

#[tokio::test]
async fn a_response_head_over_the_limit_names_the_limit() {
    // One header more than the sender reads.
    let mut answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n".to_vec();
    for i in 0..MAX_RESPONSE_HEADERS {
        answer.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
    }
    answer.extend_from_slice(b"\r\n");
    let answer: &'static [u8] = answer.leak();
    let peer = RawPeer::start(answer, AfterAnswer::Close).await;
    let sender = local_sender(|_| {});
    let result = send_to(&sender, &url(&peer.url("http", "/")), &[], &[]).await;
    let message = result.error_message.clone().expect("message");
    assert_eq!(result.status_code, None, "{result:?}");
    assert!(
        message.contains(&format!("{MAX_RESPONSE_HEADERS} headers"))
            && message.contains(&format!("{} KiB", MAX_RESPONSE_HEAD_BYTES / 1024)),
        "{message}"
    );

    // A head of one header fewer is read.
    let mut fits = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n".to_vec();
    for i in 0..MAX_RESPONSE_HEADERS - 1 {
        fits.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
    }
    fits.extend_from_slice(b"\r\n");
    let peer = RawPeer::start(fits.leak(), AfterAnswer::Close).await;
    let result = send_to(&sender, &url(&peer.url("http", "/")), &[], &[]).await;
    assert!(result.is_success(), "{result:?}");
}

#[tokio::test]
async fn an_unknown_name_is_a_dns_failure() {
    // `.invalid` never resolves (RFC 6761), so resolvers answer at once.
    let sender = local_sender(|_| {});
    let url = Url::parse("https://sluice-test.invalid/hook").expect("url");
    let result = send_to(&sender, &url, &[], &[]).await;
    assert_eq!(result.error_kind, Some(AttemptErrorKind::Dns), "{result:?}");
    let message = result.error_message.expect("message");
    assert!(!message.contains("/hook"), "{message}");
}

#[tokio::test]
async fn a_body_that_stalls_times_out_and_keeps_the_status() {
    let mut peer = RawPeer::start(
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc",
        AfterAnswer::Hold,
    )
    .await;
    let sender = local_sender(|config| config.request_timeout = Duration::from_millis(300));
    let result = send_to(&sender, &url(&peer.url("http", "/")), &[], &[]).await;
    assert!(!result.is_success(), "{result:?}");
    assert_eq!(result.status_code, Some(200));
    assert_eq!(result.error_kind, Some(AttemptErrorKind::Timeout));
    assert_eq!(result.response_excerpt, "abc");
    peer.next_read().await;
}

#[tokio::test]
async fn a_truncated_body_is_a_body_failure() {
    let mut peer = RawPeer::start(
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\nconnection: close\r\n\r\nabc",
        AfterAnswer::Close,
    )
    .await;
    let sender = local_sender(|_| {});
    let result = send_to(&sender, &url(&peer.url("http", "/")), &[], &[]).await;
    assert!(!result.is_success(), "{result:?}");
    assert_eq!(result.status_code, Some(200));
    assert_eq!(
        result.error_kind,
        Some(AttemptErrorKind::Body),
        "{result:?}"
    );
    assert_eq!(result.response_excerpt, "abc");
    peer.next_read().await;
}

/// More attempts in flight to one host than any fixed idle cap (here 100 at once, twice)
/// reuse their connections: the second round opens (next to) none. With reqwest's pool
/// capped at 64 idle connections per host, 36 of the first round's were closed as they came
/// back and the second round had to open them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_attempts_in_flight_to_one_host_keep_their_connections() {
    use std::collections::HashSet;

    const IN_FLIGHT: usize = 100;
    let receiver = Receiver::ok().await;
    let url = url(&receiver.url("/hook"));
    let sender = local_sender(|_| {});

    // The receiver holds every request until all of its round are in, so a round holds
    // IN_FLIGHT connections at once. Returns how many connections were opened so far.
    let round = async |number: usize| {
        receiver.hold();
        let mut attempts = tokio::task::JoinSet::new();
        for _ in 0..IN_FLIGHT {
            let (sender, url) = (sender.clone(), url.clone());
            attempts.spawn(async move { send_to(&sender, &url, &[], &[]).await });
        }
        receiver.wait_for(number * IN_FLIGHT, WAIT).await;
        receiver.release();
        while let Some(result) = attempts.join_next().await {
            let result = result.expect("attempt task");
            assert_eq!(result.status_code, Some(200), "{result:?}");
        }
        let peers: HashSet<_> = receiver.received().iter().map(|r| r.peer).collect();
        peers.len()
    };
    let first = round(1).await;
    assert_eq!(first, IN_FLIGHT, "one connection per attempt in flight");
    let opened_again = round(2).await - first;
    // A connection can come back to the pool a moment after its attempt returned, so a
    // few new ones are possible; a cap below 100 would force at least 100 - cap.
    assert!(
        opened_again < 10,
        "the second round opened {opened_again} new connections"
    );
}
