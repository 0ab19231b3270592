//! One webhook attempt: build the signed request, send it, and describe the outcome.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use sluice_core::outcome::AttemptErrorKind;
use sluice_core::retry::parse_retry_after;
use sluice_core::signing::{SigningSecret, signature_header};
use sluice_core::signing_ed25519::{AsymmetricKey, push_signature_v1a};
use tracing::Instrument;
use url::Url;

use crate::config::SenderConfig;
use crate::credentials::{EndpointCredentials, TokenFetch};
use crate::egress::{EgressDenied, EgressPolicy, GuardedResolver};
use crate::excerpt::{read_capped, to_excerpt};

/// Standard Webhooks header names (standardwebhooks.com).
const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");
/// W3C trace context, so the receiver can continue the delivery's trace.
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// The event type of a `RAW` or `THIN` body, which does not carry it in the envelope
/// (`sluice_core::policy::EVENT_TYPE_HEADER`).
const WEBHOOK_EVENT_TYPE: HeaderName = HeaderName::from_static("webhook-event-type");

/// The most headers a response may have (hyper's default).
pub const MAX_RESPONSE_HEADERS: usize = 100;
/// The most bytes of a response head (status line and headers) read over HTTP/1: hyper's
/// buffer limit, which reqwest does not expose.
pub const MAX_RESPONSE_HEAD_BYTES: usize = 8192 + 4096 * 100;

/// Headers the sender owns. A custom header with one of these names is dropped: it would
/// break the signature, the body framing or the trace, and subscription validation should
/// have refused it already.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "host",
    "user-agent",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "traceparent",
    "tracestate",
];

/// A subscription's custom headers, parsed and checked once (not on every attempt).
/// Names Sluice sets itself are dropped, with a warning; a name or value that is not a
/// valid header fails each attempt with the reason, which never quotes the value (custom
/// headers often carry credentials).
#[derive(Clone, Debug)]
pub struct CustomHeaders {
    parsed: Result<Vec<(HeaderName, HeaderValue)>, String>,
}

impl Default for CustomHeaders {
    fn default() -> Self {
        CustomHeaders {
            parsed: Ok(Vec::new()),
        }
    }
}

impl CustomHeaders {
    /// Parses `(name, value)` pairs, in order.
    pub fn new(pairs: &[(String, String)]) -> CustomHeaders {
        let mut headers = Vec::with_capacity(pairs.len());
        for (name, value) in pairs {
            let Ok(header_name) = HeaderName::from_bytes(name.as_bytes()) else {
                return CustomHeaders {
                    parsed: Err(format!(
                        "custom header name {name:?} is not a valid header name"
                    )),
                };
            };
            if RESERVED_HEADERS.contains(&header_name.as_str()) {
                tracing::warn!(header = %header_name, "custom header would override a header Sluice sets; dropped");
                continue;
            }
            let Ok(mut header_value) = HeaderValue::from_str(value) else {
                return CustomHeaders {
                    parsed: Err(format!("custom header {header_name} has an invalid value")),
                };
            };
            header_value.set_sensitive(true);
            headers.push((header_name, header_value));
        }
        CustomHeaders {
            parsed: Ok(headers),
        }
    }

    /// The names sent, in order (none when the headers are unusable).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.parsed.iter().flatten().map(|(name, _)| name.as_str())
    }
}

/// The sender could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum SenderBuildError {
    /// `user_agent` contains characters not allowed in a header value.
    #[error("the configured user-agent is not a valid HTTP header value")]
    InvalidUserAgent,
    /// The extra certificate authorities are not a PEM bundle of certificates.
    #[error("the extra CA file is not a PEM bundle of certificates")]
    ExtraCa(#[source] reqwest::Error),
    /// The extra CA file holds no certificate at all.
    #[error("the extra CA file holds no certificate")]
    ExtraCaEmpty,
    /// reqwest refused the client configuration (for example, no TLS backend).
    #[error("building the HTTP client failed")]
    Client(#[source] reqwest::Error),
}

/// Sends webhook attempts. Cheap to clone: clones share one connection pool, which is the
/// point of keeping a single sender per process.
#[derive(Clone)]
pub struct Sender {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    policy: EgressPolicy,
    user_agent: HeaderValue,
    config: SenderConfig,
}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// One attempt to deliver. The caller builds the body once per message; `Bytes` makes
/// handing it to every attempt and retry a reference-count increment, not a copy.
#[derive(Clone, Debug)]
pub struct DeliveryRequest<'a> {
    /// The subscription's endpoint.
    pub url: &'a Url,
    /// The message id: sent as `webhook-id`, the same on every attempt, for the receiver's
    /// idempotency.
    pub msg_id: &'a str,
    /// The envelope JSON (or Slack message), sent as is and signed byte for byte.
    pub body: Bytes,
    /// Signing secrets; empty sends the request unsigned (Slack incoming webhooks), several
    /// sign it once per secret during a rotation.
    pub secrets: &'a [&'a SigningSecret],
    /// ed25519 keys, each adding a `v1a` signature after the `v1` ones (both during a
    /// rotation); empty for a subscription that signs symmetrically only.
    pub asymmetric_keys: &'a [&'a AsymmetricKey],
    /// The subscription's custom headers, parsed once per subscription.
    pub headers: &'a CustomHeaders,
    /// W3C `traceparent` of the attempt's span, when tracing is on.
    pub traceparent: Option<&'a str>,
    /// W3C `tracestate` to go with it.
    pub tracestate: Option<&'a str>,
    /// How many attempts of this delivery came before this one (0 for the first), for
    /// the `http.request.resend_count` span attribute.
    pub resend_count: u32,
    /// Credentials the sender handles itself (an OAuth2 token, a TLS client certificate);
    /// `None` for most endpoints, which then cost nothing more.
    pub credentials: Option<&'a EndpointCredentials>,
}

/// Choices of one attempt beyond its request, each off by default: a subscription's retry
/// policy or payload shape sets them, so the default path costs nothing more.
#[derive(Clone, Copy, Debug, Default)]
pub struct SendOptions<'a> {
    /// The total timeout of this attempt instead of the sender's `request_timeout`.
    pub timeout: Option<Duration>,
    /// Sent as `webhook-event-type` (bodies without the envelope).
    pub event_type: Option<&'a str>,
}

/// What one attempt did, for the retry decision and the attempt log.
#[derive(Clone, Debug)]
pub struct AttemptResult {
    /// The response status, when a response arrived (even if its body then failed).
    pub status_code: Option<u16>,
    /// `None` on success; `HttpStatus` for a non-2xx answer, `Redirect` for 3xx, otherwise
    /// what went wrong before or while reading the answer.
    pub error_kind: Option<AttemptErrorKind>,
    /// Human readable, for operators and customers. Never contains the URL (Slack webhook
    /// URLs carry their token in the path), signatures or header values.
    pub error_message: Option<String>,
    /// From just before sending to the end of the capped body read.
    pub latency: Duration,
    /// The first `response_excerpt_bytes` of the response body, lossy UTF-8.
    pub response_excerpt: String,
    /// The receiver's `Retry-After`, parsed on 429 and 503 only and not clamped: the retry
    /// policy decides how much of it to honour.
    pub retry_after: Option<Duration>,
    /// The `webhook-timestamp` sent (unix seconds), which the signature covers.
    pub webhook_timestamp: i64,
}

impl AttemptResult {
    /// A 2xx answer read without error: the message is delivered.
    pub fn is_success(&self) -> bool {
        self.error_kind.is_none()
            && self
                .status_code
                .is_some_and(|code| (200..300).contains(&code))
    }

    /// `410 Gone`: the receiver asks to stop sending to this endpoint.
    pub fn is_gone(&self) -> bool {
        self.status_code == Some(StatusCode::GONE.as_u16())
    }

    fn failed(webhook_timestamp: i64, kind: AttemptErrorKind, message: String) -> AttemptResult {
        AttemptResult {
            status_code: None,
            error_kind: Some(kind),
            error_message: Some(message),
            latency: Duration::ZERO,
            response_excerpt: String::new(),
            retry_after: None,
            webhook_timestamp,
        }
    }
}

impl Sender {
    /// Builds the HTTP client once; every attempt then shares its connection pool.
    pub fn new(config: SenderConfig) -> Result<Sender, SenderBuildError> {
        let user_agent = HeaderValue::from_str(&config.user_agent)
            .map_err(|_| SenderBuildError::InvalidUserAgent)?;
        let policy = EgressPolicy {
            allow_http: config.allow_http,
            allow_private: config.allow_private,
            allow_list: config.allow_list.clone(),
        };
        let client = client_builder(&config, &policy, &user_agent)?
            .build()
            .map_err(SenderBuildError::Client)?;
        Ok(Sender {
            inner: Arc::new(Inner {
                client,
                policy,
                user_agent,
                config,
            }),
        })
    }

    /// The configuration this sender was built with.
    pub fn config(&self) -> &SenderConfig {
        &self.inner.config
    }

    /// A builder with the shared client's settings, for an endpoint's own client.
    fn client_builder(&self) -> Result<reqwest::ClientBuilder, ()> {
        client_builder(
            &self.inner.config,
            &self.inner.policy,
            &self.inner.user_agent,
        )
        .map_err(|_| ())
    }

    /// The egress checks that need no DNS (scheme, IP-literal hosts), for validating an
    /// endpoint before any attempt. Names are checked again on every send, at resolution.
    pub fn check_url(&self, url: &Url) -> Result<(), EgressDenied> {
        self.inner.policy.check_url(url)
    }

    /// Makes one attempt. Never fails as a Rust error: every failure is described in the
    /// result, which is what the attempt log and the retry decision need.
    pub async fn send(&self, request: &DeliveryRequest<'_>) -> AttemptResult {
        self.send_with(request, SendOptions::default()).await
    }

    /// [`Sender::send`] with per-attempt options.
    pub async fn send_with(
        &self,
        request: &DeliveryRequest<'_>,
        options: SendOptions<'_>,
    ) -> AttemptResult {
        let url = request.url;
        // The HTTP client span, with the OpenTelemetry semantic-convention attributes.
        // `url.full` is redacted (see `redacted_url`): no credentials, query values or
        // Slack path tokens reach the tracing backend. Numbers are recorded as `i64`:
        // tracing-opentelemetry turns `i64` into an int attribute but formats unsigned
        // integers as strings, and the conventions define these as ints.
        let span = tracing::info_span!(
            "webhook.attempt",
            otel.name = "POST",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            http.request.method = "POST",
            url.full = %redacted_url(url),
            url.scheme = url.scheme(),
            server.address = url.host_str().unwrap_or_default(),
            server.port = url.port_or_known_default().map(sluice_telemetry::int_attr),
            http.request.resend_count = sluice_telemetry::int_attr(request.resend_count),
            webhook.id = request.msg_id,
            http.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        let result = self
            .attempt(request, options)
            .instrument(span.clone())
            .await;
        if let Some(code) = result.status_code {
            span.record(
                "http.response.status_code",
                sluice_telemetry::int_attr(code),
            );
        }
        if let Some(kind) = result.error_kind {
            span.record("error.type", kind.as_str());
            span.record("otel.status_code", "ERROR");
        }
        result
    }

    async fn attempt(
        &self,
        request: &DeliveryRequest<'_>,
        options: SendOptions<'_>,
    ) -> AttemptResult {
        let webhook_timestamp = Utc::now().timestamp();
        if let Err(denied) = self.inner.policy.check_url(request.url) {
            tracing::debug!(error = %denied, "destination refused before sending");
            return AttemptResult::failed(
                webhook_timestamp,
                AttemptErrorKind::EgressDenied,
                denied.to_string(),
            );
        }
        let headers = match self.headers(request, webhook_timestamp) {
            Ok(mut headers) => {
                if let Some(value) = options
                    .event_type
                    .and_then(|name| HeaderValue::from_str(name).ok())
                {
                    headers.insert(WEBHOOK_EVENT_TYPE, value);
                }
                headers
            }
            Err(message) => {
                return AttemptResult::failed(webhook_timestamp, AttemptErrorKind::Other, message);
            }
        };

        // A per-request timeout replaces the client's total one (connect to body read).
        let timeout = options.timeout.unwrap_or(self.inner.config.request_timeout);
        let started = Instant::now();
        let sent = match request.credentials {
            None => {
                // The request takes the header map as built (a builder would copy it into a
                // map of its own, growing it header by header).
                let mut http_request =
                    reqwest::Request::new(reqwest::Method::POST, request.url.clone());
                *http_request.headers_mut() = headers;
                *http_request.body_mut() = Some(request.body.clone().into());
                *http_request.timeout_mut() = options.timeout;
                self.inner.client.execute(http_request).await
            }
            Some(credentials) => match self
                .send_with_credentials(credentials, request, headers, options.timeout)
                .await
            {
                Ok(sent) => sent,
                Err(message) => {
                    let mut result =
                        AttemptResult::failed(webhook_timestamp, AttemptErrorKind::Other, message);
                    result.latency = started.elapsed();
                    return result;
                }
            },
        };
        let mut response = match sent {
            Ok(response) => response,
            Err(err) => {
                let (kind, message) = self.describe_send_error(err, timeout);
                let mut result = AttemptResult::failed(webhook_timestamp, kind, message);
                result.latency = started.elapsed();
                return result;
            }
        };

        let status = response.status();
        let retry_after = retry_after(&status, response.headers());
        let redirect_origin = redirect_origin(request.url, response.headers());
        let cap = self.inner.config.response_excerpt_bytes;
        let (body, body_error) = read_capped(&mut response, cap).await;
        let latency = started.elapsed();

        let (error_kind, error_message) = match body_error {
            // The answer did not fully arrive: the attempt failed however it started, and
            // the message keeps the status for context.
            Some(err) => {
                let (kind, message) = self.describe_body_error(err, timeout);
                (Some(kind), Some(format!("{message} (after HTTP {status})")))
            }
            None if status.is_success() => (None, None),
            None if status.is_redirection() => (
                Some(AttemptErrorKind::Redirect),
                Some(redirect_message(status, redirect_origin.as_deref())),
            ),
            None => (
                Some(AttemptErrorKind::HttpStatus),
                Some(format!("HTTP {status}")),
            ),
        };
        AttemptResult {
            status_code: Some(status.as_u16()),
            error_kind,
            error_message,
            latency,
            response_excerpt: to_excerpt(&body, cap),
            retry_after,
            webhook_timestamp,
        }
    }

    /// Sends with the endpoint's own credentials: its client (mTLS), or an OAuth2 token,
    /// fetched again once and the request sent again once when the endpoint answers 401
    /// to a token that was cached. `Err` is a credential failure, already described.
    async fn send_with_credentials(
        &self,
        credentials: &EndpointCredentials,
        request: &DeliveryRequest<'_>,
        mut headers: HeaderMap,
        timeout: Option<Duration>,
    ) -> Result<Result<reqwest::Response, reqwest::Error>, String> {
        let build = |headers: HeaderMap| {
            let mut http_request =
                reqwest::Request::new(reqwest::Method::POST, request.url.clone());
            *http_request.headers_mut() = headers;
            *http_request.body_mut() = Some(request.body.clone().into());
            *http_request.timeout_mut() = timeout;
            http_request
        };
        let oauth2 = match credentials {
            EndpointCredentials::MutualTls(tls) => {
                let client = tls.client(|| self.client_builder())?;
                return Ok(client.execute(build(headers)).await);
            }
            EndpointCredentials::OAuth2(oauth2) => oauth2,
        };
        let check_url = |url: &Url| self.inner.policy.check_url(url).map_err(|d| d.to_string());
        let total = timeout.unwrap_or(self.inner.config.request_timeout);
        let describe = |err: reqwest::Error| self.describe_send_error(err, total).1;
        let fetch = TokenFetch {
            client: &self.inner.client,
            check_url: &check_url,
            describe: &describe,
        };
        let (token, fresh) = oauth2.authorization(&fetch, None).await?;
        headers.insert(header::AUTHORIZATION, token.clone());
        let retry_headers = (!fresh).then(|| headers.clone());
        let sent = self.inner.client.execute(build(headers)).await;
        let (Ok(response), Some(mut headers)) = (&sent, retry_headers) else {
            return Ok(sent);
        };
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(sent);
        }
        // The cached token was refused (revoked, or expired early): one new token, one
        // more request. A 401 to a token fetched just now is the endpoint's answer.
        tracing::debug!("the endpoint refused the cached OAuth2 token; fetching a new one");
        drop(sent);
        let (token, _) = oauth2.authorization(&fetch, Some(&token)).await?;
        headers.insert(header::AUTHORIZATION, token);
        Ok(self.inner.client.execute(build(headers)).await)
    }

    /// The request headers: `host` and `content-length` (see below), then in the order of
    /// DESIGN.md content type, Standard Webhooks, user agent, trace context, the
    /// subscription's own, and `accept`.
    fn headers(&self, request: &DeliveryRequest<'_>, timestamp: i64) -> Result<HeaderMap, String> {
        let custom = match &request.headers.parsed {
            Ok(custom) => custom,
            Err(message) => return Err(message.clone()),
        };
        // Room for every header without regrowing: the ten below and the custom ones.
        let mut headers = HeaderMap::with_capacity(10 + custom.len());
        // `host` and `content-length`, as hyper would add them to an HTTP/1.1 request
        // (`host[:port]`, the port only when not the scheme's default). Set here, they are
        // in the map before reqwest clones it for hyper; the clone has no spare room, so
        // hyper inserting them would grow (reallocate and copy) every request's map. Over
        // HTTP/2, `host` equals `:authority`, which RFC 9113 (8.3.1) allows.
        if let Some(host) = host_header(request.url) {
            headers.insert(header::HOST, host);
        }
        headers.insert(
            header::CONTENT_LENGTH,
            HeaderValue::from(request.body.len()),
        );
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let msg_id = HeaderValue::from_str(request.msg_id)
            .map_err(|_| "the message id is not a valid header value".to_owned())?;
        headers.insert(WEBHOOK_ID, msg_id);
        headers.insert(WEBHOOK_TIMESTAMP, HeaderValue::from(timestamp));
        if !request.secrets.is_empty() || !request.asymmetric_keys.is_empty() {
            let mut signatures =
                signature_header(request.secrets, request.msg_id, timestamp, &request.body);
            for key in request.asymmetric_keys {
                if !signatures.is_empty() {
                    signatures.push(' ');
                }
                push_signature_v1a(
                    &mut signatures,
                    key,
                    request.msg_id,
                    timestamp,
                    &request.body,
                );
            }
            // The header takes the string's buffer; nothing is copied.
            let mut value = HeaderValue::from_maybe_shared(Bytes::from(signatures))
                .map_err(|_| "the signature is not a valid header value".to_owned())?;
            // Keeps the signature out of any debug output of the request.
            value.set_sensitive(true);
            headers.insert(WEBHOOK_SIGNATURE, value);
        }
        headers.insert(header::USER_AGENT, self.inner.user_agent.clone());
        // The receiver continues the trace under this attempt's span when OpenTelemetry is
        // on; otherwise the stored context passes through. A malformed one is dropped rather
        // than failing a delivery over it.
        let own = sluice_telemetry::span_headers(&tracing::Span::current());
        let (traceparent, tracestate) = match &own {
            Some((parent, state)) => (Some(parent.as_str()), state.as_deref()),
            None => (request.traceparent, request.tracestate),
        };
        for (name, value) in [(TRACEPARENT, traceparent), (TRACESTATE, tracestate)] {
            if let Some(value) = value {
                match HeaderValue::from_str(value) {
                    Ok(value) => {
                        headers.insert(name, value);
                    }
                    Err(_) => tracing::debug!(header = %name, "malformed trace context dropped"),
                }
            }
        }
        for (name, value) in custom {
            headers.append(name.clone(), value.clone());
        }
        // reqwest's default, unless the subscription set its own (reqwest would add it to
        // the map otherwise, after it was sized).
        headers
            .entry(header::ACCEPT)
            .or_insert(HeaderValue::from_static("*/*"));
        Ok(headers)
    }

    /// Maps a failure before any response arrived to a kind and a message. Messages are
    /// built from the innermost cause, never from reqwest's own Display, which names the URL.
    fn describe_send_error(
        &self,
        err: reqwest::Error,
        timeout: Duration,
    ) -> (AttemptErrorKind, String) {
        let err = err.without_url();
        let chain = error_chain(&err);
        if let Some(denied) = chain.iter().find_map(|e| e.downcast_ref::<EgressDenied>()) {
            return (AttemptErrorKind::EgressDenied, denied.to_string());
        }
        let cause = innermost_cause(&chain);
        let config = &self.inner.config;
        if err.is_timeout() {
            let message = if err.is_connect() {
                format!(
                    "timed out while connecting (connect timeout {:?}, total timeout {:?})",
                    config.connect_timeout, timeout
                )
            } else {
                format!("no response within the total timeout of {timeout:?}")
            };
            return (AttemptErrorKind::Timeout, message);
        }
        if err.is_dns() {
            return (
                AttemptErrorKind::Dns,
                format!("resolving the destination's host failed: {cause}"),
            );
        }
        if let Some(tls) = chain.iter().find_map(|e| e.downcast_ref::<rustls::Error>()) {
            return (AttemptErrorKind::Tls, describe_tls(tls));
        }
        // Over HTTP/2, h2 keeps only the text of a TLS alert that arrives after the
        // handshake (TLS 1.3 servers check a client certificate then).
        if let Some(message) = describe_alert_text(&cause) {
            return (AttemptErrorKind::Tls, message);
        }
        if let Some(message) = describe_http1_parse(&cause) {
            return (AttemptErrorKind::Other, message);
        }
        if err.is_connect() {
            return (
                AttemptErrorKind::Connect,
                format!("connecting to the destination failed: {cause}"),
            );
        }
        if err.is_body() {
            return (
                AttemptErrorKind::Body,
                format!("sending the request body failed: {cause}"),
            );
        }
        (AttemptErrorKind::Other, format!("request failed: {cause}"))
    }

    /// Maps a failure while reading the response body (after the status arrived).
    fn describe_body_error(
        &self,
        err: reqwest::Error,
        timeout: Duration,
    ) -> (AttemptErrorKind, String) {
        let err = err.without_url();
        if err.is_timeout() {
            return (
                AttemptErrorKind::Timeout,
                format!("the response body did not arrive within the total timeout of {timeout:?}"),
            );
        }
        let chain = error_chain(&err);
        let cause = innermost_cause(&chain);
        (
            AttemptErrorKind::Body,
            format!("reading the response body failed: {cause}"),
        )
    }
}

/// The settings every client of the sender shares: the shared one, and those of endpoints
/// with a TLS client certificate (`credentials.rs`).
fn client_builder(
    config: &SenderConfig,
    policy: &EgressPolicy,
    user_agent: &HeaderValue,
) -> Result<reqwest::ClientBuilder, SenderBuildError> {
    let mut builder = reqwest::Client::builder();
    if let Some(pem) = &config.extra_ca_pem {
        let certificates =
            reqwest::Certificate::from_pem_bundle(pem).map_err(SenderBuildError::ExtraCa)?;
        if certificates.is_empty() {
            return Err(SenderBuildError::ExtraCaEmpty);
        }
        // Added to the system's roots, not instead of them.
        builder = builder.tls_certs_merge(certificates);
    }
    Ok(builder
        // A redirect would dial a destination the egress guard never saw in the URL
        // check, and receivers must answer the URL they registered.
        .redirect(reqwest::redirect::Policy::none())
        // An HTTP(S)_PROXY from the environment would connect on our behalf, out of
        // reach of the resolver that enforces the egress policy.
        .no_proxy()
        .dns_resolver(GuardedResolver {
            policy: policy.clone(),
        })
        // Second line of defence behind the URL check in `send`.
        .https_only(!config.allow_http)
        .connect_timeout(config.connect_timeout)
        // Total: connect, request, response head and the body reads in `read_capped`.
        .timeout(config.request_timeout)
        .pool_max_idle_per_host(config.max_idle_per_host)
        // Sluice's own schedule retries failed attempts, each a POST the log records.
        // reqwest's transparent retry of refused HTTP/2 streams would also clone every
        // request (headers and all) in case it is needed.
        .retry(reqwest::retry::never().max_retries_per_request(0))
        .user_agent(user_agent.clone())
        // hyper's default, set here so the error message can name it.
        .http1_max_headers(MAX_RESPONSE_HEADERS)
        // The same head limit over HTTP/2 (hyper's default is 16 KiB there), so both
        // versions read the same answers and the error can name one limit.
        .http2_max_header_list_size(MAX_RESPONSE_HEAD_BYTES as u32))
    // HTTP/2 is negotiated by ALPN on TLS; plain http stays HTTP/1.1 (no prior
    // knowledge), which every receiver understands.
}

/// A TLS failure named as a person would look for it, with what to change.
fn describe_tls(tls: &rustls::Error) -> String {
    use rustls::CertificateError as Cert;
    let certificate = match tls {
        rustls::Error::InvalidCertificate(certificate) => certificate,
        rustls::Error::AlertReceived(alert) if refuses_client_certificate(*alert) => {
            return client_certificate_refused(&format!("{alert:?}"));
        }
        rustls::Error::InvalidMessage(_) => {
            return format!(
                "TLS with the destination failed: it did not answer with TLS ({tls}); is it serving plain HTTP on an https URL?"
            );
        }
        other => return format!("TLS with the destination failed: {other}"),
    };
    match certificate {
        Cert::Expired | Cert::ExpiredContext { .. } => format!(
            "TLS with the destination failed: its certificate has expired ({certificate}); the endpoint must renew it"
        ),
        Cert::NotValidYet | Cert::NotValidYetContext { .. } => format!(
            "TLS with the destination failed: its certificate is not valid yet ({certificate}); check the endpoint's certificate dates and clock"
        ),
        Cert::NotValidForName | Cert::NotValidForNameContext { .. } => format!(
            "TLS with the destination failed: its certificate does not name the URL's host (wrong name: {certificate}); serve a certificate for that host or use a URL with a name the certificate covers"
        ),
        Cert::UnknownIssuer => "TLS with the destination failed: its certificate is signed by an unknown certificate authority (self-signed or a private CA); use a certificate from a public CA, or trust the CA with --extra-ca-file".to_owned(),
        Cert::Revoked => "TLS with the destination failed: its certificate has been revoked; the endpoint must replace it".to_owned(),
        other => format!("TLS with the destination failed: invalid certificate ({other})"),
    }
}

fn client_certificate_refused(alert: &str) -> String {
    format!(
        "TLS with the destination failed: it requires a client certificate or refused the one presented (alert: {alert}); set the subscription's `auth.mutual_tls` with a certificate the endpoint's CA issued"
    )
}

/// rustls' text of a received alert (`received fatal alert: CertificateRequired`), when it
/// refuses the client's certificate.
fn describe_alert_text(cause: &str) -> Option<String> {
    let alert = cause.strip_prefix("received fatal alert: ")?;
    let refused = [
        rustls::AlertDescription::CertificateRequired,
        rustls::AlertDescription::BadCertificate,
        rustls::AlertDescription::UnknownCA,
        rustls::AlertDescription::CertificateUnknown,
        rustls::AlertDescription::UnsupportedCertificate,
        rustls::AlertDescription::CertificateExpired,
        rustls::AlertDescription::CertificateRevoked,
        rustls::AlertDescription::AccessDenied,
        // A certificate whose issuer has the trusted CA's name but not its key.
        rustls::AlertDescription::DecryptError,
    ]
    .iter()
    .any(|known| format!("{known:?}") == alert);
    refused.then(|| client_certificate_refused(alert))
}

/// Alerts a server sends when the client's certificate is missing or not accepted.
fn refuses_client_certificate(alert: rustls::AlertDescription) -> bool {
    use rustls::AlertDescription as A;
    matches!(
        alert,
        A::CertificateRequired
            | A::BadCertificate
            | A::UnknownCA
            | A::CertificateUnknown
            | A::UnsupportedCertificate
            | A::CertificateExpired
            | A::CertificateRevoked
            | A::AccessDenied
            | A::DecryptError
    )
}

/// The HTTP/1 parse failures hyper describes in its own terms ("invalid HTTP version
/// parsed", "message head is too large"), and h2's reset of a malformed answer, said as
/// what the endpoint did and what to change.
/// Matched on hyper's messages, which its error kinds do not expose; the sender's tests pin
/// them.
fn describe_http1_parse(cause: &str) -> Option<String> {
    if cause.starts_with("invalid HTTP version parsed") {
        return Some(
            "the endpoint did not answer in HTTP/1.x, as one that answers in HTTP/2 without TLS (h2c) does; Sluice does not speak h2c: serve HTTP/1.1 or HTTPS".to_owned(),
        );
    }
    // h2's text for a stream it reset itself with PROTOCOL_ERROR: over the head limit
    // (`http2_max_header_list_size`) or a header HTTP/2 forbids in the answer.
    if cause.starts_with("stream error detected: unspecific protocol error detected") {
        return Some(format!(
            "the endpoint's HTTP/2 answer was refused as malformed (stream reset with PROTOCOL_ERROR): its response head is over the limit of {} KiB, or carries a header HTTP/2 forbids (`connection`, `transfer-encoding`, ...); answer with fewer, smaller, HTTP/2-valid headers",
            MAX_RESPONSE_HEAD_BYTES / 1024
        ));
    }
    if cause.starts_with("message head is too large") {
        return Some(format!(
            "the endpoint's response head (status line and headers) is over the limit of {MAX_RESPONSE_HEADERS} headers or {} KiB; answer with fewer or smaller headers",
            MAX_RESPONSE_HEAD_BYTES / 1024
        ));
    }
    None
}

/// The `host` header of a request to `url`: its host, and its port unless it is the
/// scheme's default (the URL parser drops a default port, so `port()` is only ever another
/// one). `None` for a URL without a host, which the send then refuses as hyper would.
fn host_header(url: &Url) -> Option<HeaderValue> {
    let host = url.host_str()?;
    let value = match url.port() {
        Some(port) => HeaderValue::from_maybe_shared(Bytes::from(format!("{host}:{port}"))),
        None => HeaderValue::from_str(host),
    };
    value.ok()
}

/// `Retry-After` is only meaningful on 429 and 503 (RFC 9110 §10.2.3 and RFC 6585 §4);
/// elsewhere it is ignored so a stray header cannot postpone retries.
fn retry_after(status: &StatusCode, headers: &HeaderMap) -> Option<Duration> {
    if *status != StatusCode::TOO_MANY_REQUESTS && *status != StatusCode::SERVICE_UNAVAILABLE {
        return None;
    }
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, Utc::now())
}

/// Where a redirect points, reduced to its origin (scheme, host, port). Enough to see the
/// usual causes (http → https, another host), while a path or query, which may carry a token
/// as Slack webhook URLs do, stays out of the attempt log.
fn redirect_origin(base: &Url, headers: &HeaderMap) -> Option<String> {
    let location = headers.get(header::LOCATION)?.to_str().ok()?;
    let target = base.join(location).ok()?;
    let origin = target.origin();
    origin.is_tuple().then(|| origin.ascii_serialization())
}

fn redirect_message(status: StatusCode, origin: Option<&str>) -> String {
    match origin {
        Some(origin) => format!(
            "HTTP {status}: redirects are not followed (Location points to {origin}); register the final URL instead"
        ),
        None => format!("HTTP {status}: redirects are not followed"),
    }
}

/// The error and its causes, outermost first. `io::Error::source` skips the error it wraps
/// (its Display already shows it), so wrapped errors are unwrapped explicitly: that is where
/// rustls errors and our own egress refusal sit.
fn error_chain<'a>(err: &'a (dyn StdError + 'static)) -> Vec<&'a (dyn StdError + 'static)> {
    // Bounded, in case a source chain ever loops.
    const MAX_DEPTH: usize = 32;
    let mut chain = Vec::new();
    let mut next = Some(err);
    while let Some(current) = next {
        if chain.len() == MAX_DEPTH {
            break;
        }
        chain.push(current);
        next = match current
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(wrapped) => Some(wrapped as &(dyn StdError + 'static)),
            None => current.source(),
        };
    }
    chain
}

/// The most specific cause's message ("Connection refused (os error 111)"), skipping any
/// reqwest error, whose Display may name the URL.
fn innermost_cause(chain: &[&(dyn StdError + 'static)]) -> String {
    chain
        .iter()
        .rev()
        .find(|e| !e.is::<reqwest::Error>())
        .map_or_else(|| "unknown error".to_owned(), |e| e.to_string())
}

/// `url` as it may appear in telemetry: no user or password, every query value replaced,
/// and the path of Slack incoming webhooks (which is their credential) hidden.
pub fn redacted_url(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    if shown.query().is_some() {
        let names: Vec<String> = shown.query_pairs().map(|(k, _)| k.into_owned()).collect();
        let mut pairs = shown.query_pairs_mut();
        pairs.clear();
        for name in names {
            pairs.append_pair(&name, "REDACTED");
        }
    }
    if shown.host_str() == Some("hooks.slack.com") {
        shown.set_path("/REDACTED");
    }
    shown.set_fragment(None);
    shown.to_string()
}

#[cfg(test)]
mod redaction_tests {
    use super::redacted_url;

    #[test]
    fn credentials_query_values_and_slack_paths_are_hidden() {
        let cases = [
            (
                "https://user:pw@example.com/hook?token=abc&x=1",
                "https://example.com/hook?token=REDACTED&x=REDACTED",
            ),
            ("https://example.com/hook", "https://example.com/hook"),
            (
                "https://hooks.slack.com/services/T0/B0/secret",
                "https://hooks.slack.com/REDACTED",
            ),
        ];
        for (input, want) in cases {
            let url = url::Url::parse(input).expect("valid url");
            assert_eq!(redacted_url(&url), want, "{input}");
        }
    }
}

#[cfg(test)]
mod host_header_tests {
    use super::host_header;

    #[test]
    fn the_port_is_named_only_when_it_is_not_the_default() {
        let cases = [
            ("https://example.com/hook", Some("example.com")),
            ("https://example.com:443/hook", Some("example.com")),
            ("http://example.com:80/", Some("example.com")),
            ("https://example.com:8443/hook", Some("example.com:8443")),
            ("http://127.0.0.1:9000/hook", Some("127.0.0.1:9000")),
            ("http://[::1]:8080/", Some("[::1]:8080")),
            ("https://user:pw@example.com/hook", Some("example.com")),
            ("https://BÜCHER.example/", Some("xn--bcher-kva.example")),
        ];
        for (input, want) in cases {
            let url = url::Url::parse(input).expect("valid url");
            let got = host_header(&url);
            assert_eq!(
                got.as_ref().map(|v| v.to_str().expect("ascii")),
                want,
                "{input}"
            );
        }
    }
}
