//! Endpoint credentials the sender handles itself, against real servers on 127.0.0.1:
//! OAuth2 client credentials with a token endpoint (the test kit's recording receiver,
//! scripted with token answers): one token for many deliveries, fetched again after it
//! expires and once after a 401; token failures described without secrets. mTLS with the
//! test kit's TLS receiver requiring client certificates: accepted with the right one,
//! refused (and said so) without one or with a wrong one; the endpoint's CA trusted for
//! that endpoint only.

use base64::Engine as _;
use bytes::Bytes;
use sluice_core::egress::AllowList;
use sluice_delivery::{
    AttemptErrorKind, AttemptResult, CustomHeaders, DeliveryRequest, EndpointCredentials,
    MutualTlsClient, MutualTlsSettings, OAuth2Client, OAuth2Settings, Sender, SenderConfig,
};
use sluice_testkit::receiver::{Receiver, Reply};
use sluice_testkit::tls::{TestCa, Validity};
use url::Url;

const BODY: &str = r#"{"id":"msg_cred","event":"x.y","payload":{}}"#;
const SECRET: &str = "s3cr3t/with:odd&chars";
const NAMES: &[&str] = &["localhost", "127.0.0.1"];

fn sender(allow_http: bool, extra_ca: Option<&str>) -> Sender {
    Sender::new(SenderConfig {
        allow_http,
        allow_list: AllowList::parse(&["127.0.0.1/32".to_owned()]).expect("allow list"),
        extra_ca_pem: extra_ca.map(|pem| pem.as_bytes().to_vec()),
        ..SenderConfig::default()
    })
    .expect("sender")
}

async fn send(
    sender: &Sender,
    url: &str,
    credentials: Option<&EndpointCredentials>,
) -> AttemptResult {
    sender
        .send(&DeliveryRequest {
            url: &Url::parse(url).expect("url"),
            msg_id: "msg_cred",
            body: Bytes::from_static(BODY.as_bytes()),
            secrets: &[],
            asymmetric_keys: &[],
            headers: &CustomHeaders::default(),
            traceparent: None,
            tracestate: None,
            resend_count: 0,
            credentials,
        })
        .await
}

fn token(access_token: &str, expires_in: u64) -> Reply {
    Reply::status(200)
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"access_token":"{access_token}","token_type":"Bearer","expires_in":{expires_in}}}"#
        ))
}

fn oauth2(token_url: &str) -> EndpointCredentials {
    EndpointCredentials::OAuth2(
        OAuth2Client::new(&OAuth2Settings {
            token_url: token_url.to_owned(),
            client_id: "client-1".to_owned(),
            client_secret: SECRET.to_owned(),
            scope: "hooks.write hooks.read".to_owned(),
            audience: String::new(),
            client_secret_post: false,
        })
        .expect("oauth2 client"),
    )
}

fn bearers(receiver: &Receiver) -> Vec<String> {
    receiver
        .received()
        .iter()
        .map(|r| r.header("authorization").to_owned())
        .collect()
}

#[tokio::test]
async fn an_oauth2_token_is_fetched_once_for_many_deliveries() {
    let _shared = ALONE.read().await;
    let tokens = Receiver::start(Vec::new(), token("tok-a", 3600)).await;
    let endpoint = Receiver::ok().await;
    let sender = sender(true, None);
    let credentials = oauth2(&tokens.url("/oauth/token"));
    for _ in 0..5 {
        let result = send(&sender, &endpoint.url("/hook"), Some(&credentials)).await;
        assert!(result.is_success(), "{result:?}");
    }
    assert_eq!(bearers(&endpoint), vec!["Bearer tok-a"; 5]);
    let fetched = tokens.received();
    assert_eq!(fetched.len(), 1, "one token for five deliveries");
    let request = &fetched[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/oauth/token");
    assert_eq!(
        request.header("content-type"),
        "application/x-www-form-urlencoded"
    );
    assert_eq!(
        std::str::from_utf8(&request.body).expect("utf-8"),
        "grant_type=client_credentials&scope=hooks.write+hooks.read"
    );
    // client_secret_basic: id and secret form-encoded, then Basic (RFC 6749 2.3.1).
    let want =
        base64::engine::general_purpose::STANDARD.encode("client-1:s3cr3t%2Fwith%3Aodd%26chars");
    assert_eq!(request.header("authorization"), format!("Basic {want}"));
}

#[tokio::test]
async fn an_expired_token_is_fetched_again_and_a_401_refreshes_once() {
    let _shared = ALONE.read().await;
    // The first token expires at once; the second lasts.
    let tokens = Receiver::start(vec![token("tok-0", 0)], token("tok-1", 3600)).await;
    let endpoint = Receiver::ok().await;
    let sender = sender(true, None);
    let credentials = oauth2(&tokens.url("/token"));
    for _ in 0..3 {
        let result = send(&sender, &endpoint.url("/hook"), Some(&credentials)).await;
        assert!(result.is_success(), "{result:?}");
    }
    assert_eq!(
        bearers(&endpoint),
        ["Bearer tok-0", "Bearer tok-1", "Bearer tok-1"]
    );
    assert_eq!(tokens.count(), 2);

    // The endpoint refuses the cached token: one new token, the attempt sent once more.
    tokens.script([token("tok-2", 3600)]);
    endpoint.script([Reply::status(401)]);
    let result = send(&sender, &endpoint.url("/hook"), Some(&credentials)).await;
    assert!(result.is_success(), "{result:?}");
    assert_eq!(bearers(&endpoint)[3..], ["Bearer tok-1", "Bearer tok-2"]);
    assert_eq!(tokens.count(), 3);

    // A 401 to a token fetched just now is the endpoint's answer: no loop.
    let fresh = oauth2(&tokens.url("/token"));
    endpoint.script([Reply::status(401), Reply::status(401)]);
    let result = send(&sender, &endpoint.url("/hook"), Some(&fresh)).await;
    assert_eq!(result.status_code, Some(401));
    assert_eq!(result.error_kind, Some(AttemptErrorKind::HttpStatus));
    assert_eq!(endpoint.count(), 6);
    assert_eq!(tokens.count(), 4);
}

#[tokio::test]
async fn token_failures_are_recorded_on_the_attempt_without_secrets() {
    let _shared = ALONE.read().await;
    let tokens = Receiver::start(
        Vec::new(),
        Reply::status(401)
            .body(r#"{"error":"invalid_client","error_description":"unknown client"}"#),
    )
    .await;
    let endpoint = Receiver::ok().await;
    let sender = sender(true, None);
    let result = send(
        &sender,
        &endpoint.url("/hook"),
        Some(&oauth2(&tokens.url("/token"))),
    )
    .await;
    assert_eq!(result.error_kind, Some(AttemptErrorKind::Other));
    let message = result.error_message.unwrap_or_default();
    assert!(
        message.contains("OAuth2 token")
            && message.contains("HTTP 401")
            && message.contains("invalid_client: unknown client")
            && message.contains("client secret"),
        "{message}"
    );
    assert!(
        !message.contains("s3cr3t") && !message.contains("/token"),
        "{message}"
    );
    assert_eq!(endpoint.count(), 0, "nothing sent without a token");

    // No token in the answer.
    let empty = Receiver::start(Vec::new(), Reply::status(200).body("{}")).await;
    let result = send(
        &sender,
        &endpoint.url("/hook"),
        Some(&oauth2(&empty.url("/token"))),
    )
    .await;
    let message = result.error_message.unwrap_or_default();
    assert!(message.contains("no `access_token`"), "{message}");

    // The token URL goes through the egress guard: loopback is refused by default.
    let guarded = Sender::new(SenderConfig {
        allow_http: true,
        ..SenderConfig::default()
    })
    .expect("sender");
    let result = send(
        &guarded,
        &endpoint.url_by_name("/hook"),
        Some(&oauth2(&tokens.url("/token"))),
    )
    .await;
    assert_eq!(result.error_kind, Some(AttemptErrorKind::Other));
    let message = result.error_message.unwrap_or_default();
    assert!(message.contains("token URL is refused"), "{message}");
    assert_eq!(tokens.count(), 1, "the refused token URL was never dialled");
    assert_eq!(endpoint.count(), 0);
}

fn mutual_tls(client: &sluice_testkit::tls::ClientIdentity, ca: &str) -> EndpointCredentials {
    EndpointCredentials::MutualTls(
        MutualTlsClient::new(&MutualTlsSettings {
            certificate_pem: client.cert_pem.clone(),
            private_key_pem: client.key_pem.clone(),
            ca_certificates_pem: ca.to_owned(),
        })
        .expect("mtls client"),
    )
}

#[tokio::test]
async fn mtls_is_accepted_with_the_right_certificate_and_refused_without_it() {
    let _shared = ALONE.read().await;
    let server_ca = TestCa::new();
    let client_ca = TestCa::new();
    let identity = server_ca.issue(NAMES, Validity::Current);
    let receiver = Receiver::start_tls(
        Vec::new(),
        Reply::status(200),
        identity.server_config_requiring_client_certs(&[b"h2", b"http/1.1"], &client_ca),
    )
    .await;
    let url = receiver.url_by_name("/hook");
    let plain = sender(false, None);

    // The right certificate, and the endpoint's CA trusted for this endpoint only.
    let right = mutual_tls(&client_ca.issue_client("sluice"), &server_ca.cert_pem);
    for _ in 0..2 {
        let result = send(&plain, &url, Some(&right)).await;
        assert!(result.is_success(), "{result:?}");
    }
    assert_eq!(receiver.count(), 2);

    // The same sender without the credentials does not trust the endpoint's CA.
    let result = send(&plain, &url, None).await;
    assert_eq!(result.error_kind, Some(AttemptErrorKind::Tls), "{result:?}");
    let message = result.error_message.unwrap_or_default();
    assert!(
        message.contains("unknown certificate authority"),
        "{message}"
    );

    // The CA trusted for every endpoint, but no client certificate.
    let trusting = sender(false, Some(&server_ca.cert_pem));
    let result = send(&trusting, &url, None).await;
    assert_eq!(result.error_kind, Some(AttemptErrorKind::Tls), "{result:?}");
    let message = result.error_message.unwrap_or_default();
    assert!(message.contains("client certificate"), "{message}");

    // A certificate another CA issued.
    let wrong = mutual_tls(&TestCa::new().issue_client("sluice"), &server_ca.cert_pem);
    let result = send(&plain, &url, Some(&wrong)).await;
    assert_eq!(result.error_kind, Some(AttemptErrorKind::Tls), "{result:?}");
    let message = result.error_message.unwrap_or_default();
    assert!(message.contains("client certificate"), "{message}");
    assert_eq!(receiver.count(), 2, "refused handshakes deliver nothing");
}

#[test]
fn mtls_settings_that_do_not_parse_or_match_name_their_field() {
    let ca = TestCa::new();
    let client = ca.issue_client("sluice");
    let other = ca.issue_client("other");
    let settings = |cert: &str, key: &str, cas: &str| MutualTlsSettings {
        certificate_pem: cert.to_owned(),
        private_key_pem: key.to_owned(),
        ca_certificates_pem: cas.to_owned(),
    };
    assert_eq!(
        settings(&client.cert_pem, &client.key_pem, &ca.cert_pem).validate(),
        Ok(())
    );
    let cases = [
        (settings("", &client.key_pem, ""), "certificate_pem"),
        (settings("not pem", &client.key_pem, ""), "certificate_pem"),
        (settings(&client.cert_pem, "", ""), "private_key_pem"),
        (settings(&client.cert_pem, "nope", ""), "private_key_pem"),
        // Both parse, but the key is another certificate's.
        (
            settings(&client.cert_pem, &other.key_pem, ""),
            "private_key_pem",
        ),
        (
            settings(&client.cert_pem, &client.key_pem, "garbage"),
            "ca_certificates_pem",
        ),
    ];
    for (input, field) in cases {
        let err = input.validate().expect_err(field);
        assert_eq!(err.field(), field, "{err}");
        assert!(!err.to_string().contains("BEGIN"), "{err}");
    }
}

/// The log capture below runs alone: another test sending at the same moment, on a thread
/// without a subscriber, can leave a callsite's cached interest at "never" while the capture
/// is on (the sender's span then goes missing from it). The other sending tests share it.
static ALONE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Every log line and span (with its fields) written while it is the default subscriber.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_credential_reaches_logs_or_spans() {
    // Alone: see ALONE.
    let _alone = ALONE.write().await;
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::FULL)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    // Callsites reached before this thread's default existed cached the answer of the
    // dispatchers then: every callsite is asked again now.
    tracing::callsite::rebuild_interest_cache();

    // OAuth2: a token, a 401 and a new token, then a token endpoint that refuses.
    let tokens = Receiver::start(
        vec![token("tok-secret-1", 3600)],
        token("tok-secret-2", 3600),
    )
    .await;
    let endpoint = Receiver::start(
        vec![Reply::status(200), Reply::status(401)],
        Reply::status(200),
    )
    .await;
    let sender = sender(true, None);
    let credentials = oauth2(&tokens.url("/token"));
    for _ in 0..2 {
        let result = send(&sender, &endpoint.url("/hook"), Some(&credentials)).await;
        assert!(result.is_success(), "{result:?}");
    }
    assert_eq!(bearers(&endpoint)[2], "Bearer tok-secret-2");
    let refusing = Receiver::start(Vec::new(), Reply::status(401)).await;
    let result = send(
        &sender,
        &endpoint.url("/hook"),
        Some(&oauth2(&refusing.url("/t"))),
    )
    .await;
    assert!(!result.is_success());
    let client_basic =
        base64::engine::general_purpose::STANDARD.encode("client-1:s3cr3t%2Fwith%3Aodd%26chars");

    // mTLS.
    let server_ca = TestCa::new();
    let client_ca = TestCa::new();
    let client = client_ca.issue_client("sluice");
    let tls = Receiver::start_tls(
        Vec::new(),
        Reply::status(200),
        server_ca
            .issue(NAMES, Validity::Current)
            .server_config_requiring_client_certs(&[b"h2", b"http/1.1"], &client_ca),
    )
    .await;
    let mtls = mutual_tls(&client, &server_ca.cert_pem);
    let result = send(&sender, &tls.url_by_name("/hook"), Some(&mtls)).await;
    assert!(result.is_success(), "{result:?}");
    let key_body: String = client
        .key_pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    let debug = format!("{credentials:?} {mtls:?}");

    let logged = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8");
    assert!(
        logged.contains("webhook.attempt"),
        "the capture works: {logged}"
    );
    for secret in [
        SECRET,
        "tok-secret-1",
        "tok-secret-2",
        client_basic.as_str(),
        &key_body[..40],
    ] {
        assert!(!logged.contains(secret), "{secret} logged");
        assert!(!debug.contains(secret), "{secret} in Debug: {debug}");
    }
}

#[tokio::test]
async fn client_secret_post_sends_the_id_and_secret_in_the_form() {
    let _shared = ALONE.read().await;
    let tokens = Receiver::start(Vec::new(), token("tok-p", 3600)).await;
    let endpoint = Receiver::ok().await;
    let credentials = EndpointCredentials::OAuth2(
        OAuth2Client::new(&OAuth2Settings {
            token_url: tokens.url("/token"),
            client_id: "client-1".to_owned(),
            client_secret: SECRET.to_owned(),
            scope: String::new(),
            audience: "https://api.example.com".to_owned(),
            client_secret_post: true,
        })
        .expect("oauth2 client"),
    );
    let result = send(
        &sender(true, None),
        &endpoint.url("/hook"),
        Some(&credentials),
    )
    .await;
    assert!(result.is_success(), "{result:?}");
    assert_eq!(bearers(&endpoint), ["Bearer tok-p"]);
    let request = tokens.next().await;
    assert_eq!(request.header("authorization"), "");
    assert_eq!(
        std::str::from_utf8(&request.body).expect("utf-8"),
        "grant_type=client_credentials&audience=https%3A%2F%2Fapi.example.com\
         &client_id=client-1&client_secret=s3cr3t%2Fwith%3Aodd%26chars"
    );
}
