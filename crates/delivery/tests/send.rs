//! End-to-end tests of the sender against real HTTP receivers bound to 127.0.0.1:0.
//!
//! Each test starts its own receiver, which reports what it got on a channel; the tests
//! await those reports (never sleep) and assert on both sides of the wire.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use sluice_core::egress::AllowList;
use sluice_core::signing::{SigningSecret, verify};
use sluice_delivery::{
    AttemptErrorKind, AttemptResult, CustomHeaders, DEFAULT_USER_AGENT, DeliveryRequest, Sender,
    SenderConfig, slack_message,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use url::Url;

/// What the receiver saw of one request.
#[derive(Debug)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// A real HTTP receiver on a free loopback port. Every request is reported on `requests`
/// and answered by `reply`.
struct Receiver {
    addr: SocketAddr,
    requests: mpsc::UnboundedReceiver<Received>,
}

impl Receiver {
    async fn start<F>(reply: F) -> Receiver
    where
        F: Fn() -> Response + Clone + Send + Sync + 'static,
    {
        let (tx, requests) = mpsc::unbounded_channel();
        let handler = move |uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            let reply = reply.clone();
            async move {
                let _ = tx.send(Received {
                    path: uri.path().to_owned(),
                    headers,
                    body,
                });
                reply()
            }
        };
        let app = Router::new().fallback(any(handler));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { addr, requests }
    }

    fn url(&self, path: &str) -> Url {
        Url::parse(&format!("http://{}{path}", self.addr)).expect("url")
    }

    async fn next(&mut self) -> Received {
        self.requests
            .recv()
            .await
            .expect("the receiver got a request")
    }

    /// Asserts no request arrived. Only meaningful once the send has returned: a request
    /// that was made would have been reported before its answer was sent back.
    fn assert_nothing_received(&mut self) {
        if let Ok(request) = self.requests.try_recv() {
            panic!("the receiver got a request: {request:?}");
        }
    }
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
            headers: &CustomHeaders::new(headers),
            traceparent: None,
            tracestate: None,
            resend_count: 0,
        })
        .await
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("header {name} missing"))
        .to_str()
        .expect("ascii header")
}

fn status(code: StatusCode, body: &'static str) -> impl Fn() -> Response + Clone {
    move || (code, body).into_response()
}

#[tokio::test]
async fn success_carries_standard_webhooks_headers_and_a_valid_signature() {
    let mut receiver = Receiver::start(status(StatusCode::OK, "thanks")).await;
    let sender = local_sender(|_| {});
    let secret = SigningSecret::generate();
    let url = receiver.url("/hooks/sluice?x=1");
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
            headers: &CustomHeaders::new(&custom),
            traceparent: Some(traceparent),
            tracestate: Some("vendor=1"),
            resend_count: 0,
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
    assert_eq!(header(h, "content-type"), "application/json");
    assert_eq!(header(h, "webhook-id"), "msg_test");
    assert_eq!(h.get_all("webhook-id").iter().count(), 1);
    assert_eq!(
        header(h, "webhook-timestamp"),
        result.webhook_timestamp.to_string()
    );
    assert_eq!(header(h, "user-agent"), DEFAULT_USER_AGENT);
    assert!(DEFAULT_USER_AGENT.starts_with("Sluice-Webhooks/"));
    assert_eq!(header(h, "traceparent"), traceparent);
    assert_eq!(header(h, "tracestate"), "vendor=1");
    assert_eq!(header(h, "x-tenant"), "acme");
    assert_eq!(header(h, "authorization"), "Bearer custom-token");
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
        header(h, "webhook-id"),
        header(h, "webhook-timestamp"),
        header(h, "webhook-signature"),
        &got.body,
        now,
        300,
    )
    .expect("the signature verifies");
    // A different secret must not verify: the check above is not vacuous.
    assert!(
        verify(
            &SigningSecret::generate(),
            header(h, "webhook-id"),
            header(h, "webhook-timestamp"),
            header(h, "webhook-signature"),
            &got.body,
            now,
            300,
        )
        .is_err()
    );
}

#[tokio::test]
async fn a_custom_accept_header_replaces_the_default() {
    let mut receiver = Receiver::start(status(StatusCode::OK, "")).await;
    let sender = local_sender(|_| {});
    let custom = [("Accept".to_owned(), "application/json".to_owned())];
    let result = send_to(&sender, &receiver.url("/"), &[], &custom).await;
    assert!(result.is_success(), "{result:?}");
    let got = receiver.next().await;
    assert_eq!(
        got.headers.get_all("accept").iter().collect::<Vec<_>>(),
        ["application/json"]
    );
}

#[tokio::test]
async fn two_secrets_give_two_signatures_that_both_verify() {
    let mut receiver = Receiver::start(status(StatusCode::NO_CONTENT, "")).await;
    let sender = local_sender(|_| {});
    let old = SigningSecret::generate();
    let new = SigningSecret::generate();
    let result = send_to(&sender, &receiver.url("/"), &[&old, &new], &[]).await;
    assert!(result.is_success(), "{result:?}");

    let got = receiver.next().await;
    let signatures = header(&got.headers, "webhook-signature");
    let parts: Vec<&str> = signatures.split(' ').collect();
    assert_eq!(parts.len(), 2, "{signatures}");
    assert!(parts.iter().all(|part| part.starts_with("v1,")));
    let now = chrono::Utc::now().timestamp();
    for (secret, only_its_signature) in [(&old, parts[0]), (&new, parts[1])] {
        for signature in [signatures, only_its_signature] {
            verify(
                secret,
                "msg_test",
                header(&got.headers, "webhook-timestamp"),
                signature,
                &got.body,
                now,
                300,
            )
            .expect("verifies");
        }
    }
}

#[tokio::test]
async fn unsigned_slack_message() {
    let mut receiver = Receiver::start(status(StatusCode::OK, "ok")).await;
    let sender = local_sender(|_| {});
    let body = slack_message(
        "conversation.created",
        "msg_test",
        "wrk_1",
        &serde_json::json!({"conversation": {"id": "cnv_abc123"}}),
    );
    let url = receiver.url("/services/T000/B000/XXXX");
    let result = sender
        .send(&DeliveryRequest {
            url: &url,
            msg_id: "msg_test",
            body: Bytes::from(body),
            secrets: &[],
            headers: &CustomHeaders::default(),
            traceparent: None,
            tracestate: None,
            resend_count: 0,
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
    let mut receiver = Receiver::start(status(
        StatusCode::INTERNAL_SERVER_ERROR,
        "database on fire",
    ))
    .await;
    let sender = local_sender(|_| {});
    let result = send_to(&sender, &receiver.url("/"), &[], &[]).await;
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
    let (tx, mut requests) = mpsc::unbounded_channel();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let target = format!("http://{addr}/target");
    let app = Router::new().fallback(any(move |uri: axum::http::Uri| {
        let tx = tx.clone();
        let target = target.clone();
        async move {
            let _ = tx.send(uri.path().to_owned());
            if uri.path() == "/target" {
                (StatusCode::OK, "followed").into_response()
            } else {
                (StatusCode::FOUND, [(header::LOCATION, target)], "moved").into_response()
            }
        }
    }));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let sender = local_sender(|_| {});
    let url = Url::parse(&format!("http://{addr}/hook")).expect("url");
    let result = send_to(&sender, &url, &[], &[]).await;
    assert!(!result.is_success());
    assert_eq!(result.status_code, Some(302));
    assert_eq!(result.error_kind, Some(AttemptErrorKind::Redirect));
    let message = result.error_message.expect("message");
    assert!(message.contains(&format!("http://{addr}")), "{message}");
    // Only the origin: a path may carry a token.
    assert!(!message.contains("/target"), "{message}");
    assert_eq!(requests.recv().await.as_deref(), Some("/hook"));
    assert!(requests.try_recv().is_err(), "the redirect was followed");
}

#[tokio::test]
async fn retry_after_is_read_on_429_and_503_only() {
    let cases = [
        (StatusCode::TOO_MANY_REQUESTS, Some(Duration::from_secs(7))),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some(Duration::from_secs(7)),
        ),
        (StatusCode::INTERNAL_SERVER_ERROR, None),
    ];
    let sender = local_sender(|_| {});
    for (code, expected) in cases {
        let receiver = Receiver::start(move || {
            (code, [(header::RETRY_AFTER, "7")], "slow down").into_response()
        })
        .await;
        let result = send_to(&sender, &receiver.url("/"), &[], &[]).await;
        assert_eq!(result.status_code, Some(code.as_u16()));
        assert_eq!(result.error_kind, Some(AttemptErrorKind::HttpStatus));
        assert_eq!(result.retry_after, expected, "{code}");
    }
}

#[tokio::test]
async fn gone_is_reported() {
    let receiver = Receiver::start(status(StatusCode::GONE, "unsubscribed")).await;
    let sender = local_sender(|_| {});
    let result = send_to(&sender, &receiver.url("/"), &[], &[]).await;
    assert!(result.is_gone());
    assert!(!result.is_success());
    assert_eq!(result.error_kind, Some(AttemptErrorKind::HttpStatus));
}

#[tokio::test]
async fn a_receiver_that_never_answers_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (got_request_tx, got_request) = oneshot::channel();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        // Read the request head, then say nothing while holding the connection open.
        let mut buffer = vec![0u8; 4096];
        let read = socket.read(&mut buffer).await.expect("read");
        let _ = got_request_tx.send(buffer[..read].to_vec());
        std::future::pending::<()>().await;
        drop(socket);
    });

    let sender = local_sender(|config| config.request_timeout = Duration::from_millis(300));
    let url = Url::parse(&format!("http://{addr}/")).expect("url");
    let result = send_to(&sender, &url, &[], &[]).await;
    assert_eq!(
        result.error_kind,
        Some(AttemptErrorKind::Timeout),
        "{result:?}"
    );
    assert_eq!(result.status_code, None);
    assert!(!result.is_success());
    let head = got_request.await.expect("the receiver got the request");
    assert!(head.starts_with(b"POST / HTTP/1.1"));
}

#[tokio::test]
async fn a_closed_port_is_a_connect_failure() {
    // Bind then drop, so the port is (almost certainly) closed.
    let addr = {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("addr")
    };
    let sender = local_sender(|_| {});
    let url = Url::parse(&format!("http://{addr}/")).expect("url");
    let result = send_to(&sender, &url, &[], &[]).await;
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
    let receiver =
        Receiver::start(|| (StatusCode::OK, vec![b'a'; 1024 * 1024]).into_response()).await;
    let sender = local_sender(|_| {});
    let result = send_to(&sender, &receiver.url("/"), &[], &[]).await;
    assert!(result.is_success(), "{result:?}");
    assert_eq!(result.response_excerpt.len(), 4096);
    assert!(result.response_excerpt.bytes().all(|b| b == b'a'));
}

#[tokio::test]
async fn loopback_is_refused_by_default_and_nothing_is_sent() {
    let mut receiver = Receiver::start(status(StatusCode::OK, "ok")).await;
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
        receiver.assert_nothing_received();
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
    let mut receiver = Receiver::start(status(StatusCode::OK, "ok")).await;
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
    let mut receiver = Receiver::start(status(StatusCode::OK, "ok")).await;
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
    let mut receiver = Receiver::start(status(StatusCode::OK, "ok")).await;
    let sender = local_sender(|config| config.allow_http = false);
    let result = send_to(&sender, &receiver.url("/"), &[], &[]).await;
    assert_eq!(result.error_kind, Some(AttemptErrorKind::EgressDenied));
    let message = result.error_message.expect("message");
    assert!(message.contains("https"), "{message}");
    receiver.assert_nothing_received();
    assert!(sender.check_url(&receiver.url("/")).is_err());
}

#[tokio::test]
async fn a_receiver_that_does_not_speak_tls_is_a_tls_failure() {
    // Answers the TLS ClientHello with plain HTTP, as a misconfigured endpoint would.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (hello_tx, hello) = oneshot::channel();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut buffer = vec![0u8; 4096];
        let read = socket.read(&mut buffer).await.expect("read");
        let _ = hello_tx.send(buffer[..read].to_vec());
        let _ = socket
            .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            .await;
        let _ = socket.shutdown().await;
    });

    let sender = local_sender(|config| config.allow_http = false);
    let url = Url::parse(&format!("https://{addr}/")).expect("url");
    let result = send_to(&sender, &url, &[], &[]).await;
    assert_eq!(result.error_kind, Some(AttemptErrorKind::Tls), "{result:?}");
    let hello = hello.await.expect("the receiver got a connection");
    // 0x16: a TLS handshake record, i.e. the ClientHello.
    assert_eq!(hello.first(), Some(&0x16));
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

/// A raw receiver that reads the request head, writes `answer` and then either holds the
/// connection open (`hang`) or closes it.
async fn raw_receiver(answer: &'static [u8], hang: bool) -> (Url, oneshot::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (answered_tx, answered) = oneshot::channel();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut buffer = vec![0u8; 4096];
        let _ = socket.read(&mut buffer).await.expect("read");
        socket.write_all(answer).await.expect("write");
        let _ = answered_tx.send(());
        if hang {
            std::future::pending::<()>().await;
        }
        drop(socket);
    });
    let url = Url::parse(&format!("http://{addr}/")).expect("url");
    (url, answered)
}

#[tokio::test]
async fn a_body_that_stalls_times_out_and_keeps_the_status() {
    let (url, answered) =
        raw_receiver(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc", true).await;
    let sender = local_sender(|config| config.request_timeout = Duration::from_millis(300));
    let result = send_to(&sender, &url, &[], &[]).await;
    assert!(!result.is_success(), "{result:?}");
    assert_eq!(result.status_code, Some(200));
    assert_eq!(result.error_kind, Some(AttemptErrorKind::Timeout));
    assert_eq!(result.response_excerpt, "abc");
    answered.await.expect("the receiver answered");
}

#[tokio::test]
async fn a_truncated_body_is_a_body_failure() {
    let (url, answered) = raw_receiver(
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\nconnection: close\r\n\r\nabc",
        false,
    )
    .await;
    let sender = local_sender(|_| {});
    let result = send_to(&sender, &url, &[], &[]).await;
    assert!(!result.is_success(), "{result:?}");
    assert_eq!(result.status_code, Some(200));
    assert_eq!(
        result.error_kind,
        Some(AttemptErrorKind::Body),
        "{result:?}"
    );
    assert_eq!(result.response_excerpt, "abc");
    answered.await.expect("the receiver answered");
}

/// More attempts in flight to one host than any fixed idle cap (here 100 at once, twice)
/// reuse their connections: the second round opens (next to) none. With reqwest's pool
/// capped at 64 idle connections per host, 36 of the first round's were closed as they came
/// back and the second round had to open them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_attempts_in_flight_to_one_host_keep_their_connections() {
    use axum::extract::ConnectInfo;
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};
    use tokio::sync::Barrier;

    const IN_FLIGHT: usize = 100;
    // Every request waits at the barrier until all of its round are in the receiver, so a
    // round holds IN_FLIGHT connections at once.
    let barrier = Arc::new(Barrier::new(IN_FLIGHT));
    let peers: Arc<Mutex<HashSet<SocketAddr>>> = Arc::default();
    let app = Router::new().fallback(any({
        let (barrier, peers) = (Arc::clone(&barrier), Arc::clone(&peers));
        move |ConnectInfo(peer): ConnectInfo<SocketAddr>| {
            let (barrier, peers) = (Arc::clone(&barrier), Arc::clone(&peers));
            async move {
                peers.lock().expect("peers").insert(peer);
                barrier.wait().await;
                StatusCode::OK
            }
        }
    }));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    let url = Url::parse(&format!("http://{addr}/hook")).expect("url");
    let sender = local_sender(|_| {});

    let round = || async {
        let mut attempts = tokio::task::JoinSet::new();
        for _ in 0..IN_FLIGHT {
            let (sender, url) = (sender.clone(), url.clone());
            attempts.spawn(async move { send_to(&sender, &url, &[], &[]).await });
        }
        while let Some(result) = attempts.join_next().await {
            let result = result.expect("attempt task");
            assert_eq!(result.status_code, Some(200), "{result:?}");
        }
        peers.lock().expect("peers").len()
    };
    let first = round().await;
    assert_eq!(first, IN_FLIGHT, "one connection per attempt in flight");
    let opened_again = round().await - first;
    // A connection can come back to the pool a moment after its attempt returned, so a
    // few new ones are possible; a cap below 100 would force at least 100 - cap.
    assert!(
        opened_again < 10,
        "the second round opened {opened_again} new connections"
    );
}
