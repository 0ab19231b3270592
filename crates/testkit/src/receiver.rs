//! The recording HTTP receiver: a real HTTP server on `127.0.0.1:0` that records every
//! request (method, path, headers, body, arrival time, peer) and answers each from a script
//! of [`Reply`]s (status, headers, body, delay, or no answer at all), then from a default.
//! Tests await arrivals ("until N requests came"), never poll.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version};
use axum::response::{IntoResponse, Response};
use sluice_core::signing::{SigningSecret, VerifyError, verify};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::WAIT;

/// How the receiver answers one request.
#[derive(Clone, Debug)]
pub struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Bytes,
    delay: Duration,
    never: bool,
    echo: bool,
    /// The share of requests answered `failure_status` instead, at random.
    failure_share: f64,
    failure_status: u16,
    /// Extra delay per request in flight beyond the first `.0` (see [`Reply::slower_above`]).
    load_delay: Option<(usize, Duration)>,
}

impl Reply {
    /// Answer `status` with no body.
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
            delay: Duration::ZERO,
            never: false,
            echo: false,
            failure_share: 0.0,
            failure_status: 500,
            load_delay: None,
        }
    }

    /// Answer 200 with the request's body (as an endpoint answering an ownership
    /// verification challenge by echoing it does).
    pub fn echo() -> Reply {
        Reply {
            echo: true,
            ..Reply::status(200)
        }
    }

    /// Answering `status` instead to a random `share` (0 to 1) of the requests it answers
    /// (as a default, of every request past the script): a flaky endpoint.
    pub fn failing_at_random(self, share: f64, status: u16) -> Reply {
        Reply {
            failure_share: share,
            failure_status: status,
            ..self
        }
    }

    /// Never answer (the connection stays open).
    pub fn hang() -> Reply {
        Reply {
            never: true,
            ..Reply::status(200)
        }
    }

    /// With this body.
    pub fn body(self, body: impl Into<Bytes>) -> Reply {
        Reply {
            body: body.into(),
            ..self
        }
    }

    /// With this header too.
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Answering only after `delay`.
    pub fn delay(self, delay: Duration) -> Reply {
        Reply { delay, ..self }
    }

    /// A receiver that slows down under load: with more than `knee` requests in flight
    /// (this one included, counted at its arrival), `per_request` more delay for each one
    /// beyond `knee`, on top of [`Reply::delay`].
    pub fn slower_above(self, knee: usize, per_request: Duration) -> Reply {
        Reply {
            load_delay: Some((knee, per_request)),
            ..self
        }
    }
}

/// The requests of each payload `key_field` (an event's ordering key, as the publisher
/// put it in the payload), in arrival order: the payload's `seq_field` and the status the
/// request was answered.
pub fn by_payload_key(
    received: &[Received],
    key_field: &str,
    seq_field: &str,
) -> std::collections::BTreeMap<String, Vec<(u64, u16)>> {
    let mut keys: std::collections::BTreeMap<String, Vec<(u64, u16)>> = Default::default();
    for request in received {
        let envelope = request.json();
        let payload = &envelope["payload"];
        let (Some(key), Some(seq)) = (payload[key_field].as_str(), payload[seq_field].as_u64())
        else {
            continue;
        };
        keys.entry(key.to_owned())
            .or_default()
            .push((seq, request.status));
    }
    keys
}

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    /// The request method.
    pub method: Method,
    /// The request path (without the query).
    pub path: String,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
    /// When it arrived.
    pub at: Instant,
    /// The sender's address: one per connection.
    pub peer: SocketAddr,
    /// The HTTP version it came over (HTTP/2 only by ALPN on the TLS receiver).
    pub version: Version,
    /// The status it is answered (if it is answered at all).
    pub status: u16,
    /// Requests in flight at the receiver when it arrived, itself included.
    pub in_flight: usize,
}

impl Received {
    /// A header as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The body as JSON (panics, showing the body, when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "the body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Verifies the Standard Webhooks signature with `secret` as a receiver would, with a
    /// five-minute timestamp tolerance.
    pub fn verify(&self, secret: &SigningSecret) -> Result<(), VerifyError> {
        verify(
            secret,
            self.header("webhook-id"),
            self.header("webhook-timestamp"),
            self.header("webhook-signature"),
            &self.body,
            crate::now_secs(),
            300,
        )
    }

    /// Whether the signature verifies with `secret`, given in its `whsec_` form.
    pub fn verifies_with(&self, secret: &str) -> bool {
        self.verify(&SigningSecret::parse(secret).unwrap()).is_ok()
    }
}

/// The requests of `received` with this `webhook-id`.
pub fn with_id<'a>(received: &'a [Received], message_id: &str) -> Vec<&'a Received> {
    received
        .iter()
        .filter(|r| r.header("webhook-id") == message_id)
        .collect()
}

struct ReceiverState {
    script: Mutex<VecDeque<Reply>>,
    default: Reply,
    received: Mutex<Vec<Received>>,
    arrived: Notify,
    /// Whether requests are answered now; while closed they wait (see [`Receiver::hold`]).
    open: watch::Sender<bool>,
    /// Replies to requests whose body contains a text, before the script (see
    /// [`Receiver::answer_containing`]).
    rules: Mutex<Vec<(Vec<u8>, Reply)>>,
    /// Requests being answered now.
    in_flight: AtomicUsize,
}

/// Counts a request in flight until it is answered (or its connection dropped).
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A real HTTP receiver on `127.0.0.1:0` that records every request and answers from a
/// script (then the default).
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `http`, or `https` for [`Receiver::start_tls`].
    scheme: &'static str,
    state: Arc<ReceiverState>,
    /// How many requests [`Receiver::next`] and [`Receiver::drain`] have handed out.
    taken: Mutex<usize>,
    server: JoinHandle<()>,
}

impl Receiver {
    /// A receiver answering `script` in order, then `default`.
    pub async fn start(script: Vec<Reply>, default: Reply) -> Receiver {
        let state = Arc::new(ReceiverState {
            script: Mutex::new(script.into()),
            default,
            received: Mutex::new(Vec::new()),
            arrived: Notify::new(),
            open: watch::Sender::new(true),
            rules: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
        });
        let app = Router::new().fallback(receive).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await;
        });
        Receiver {
            addr,
            scheme: "http",
            state,
            taken: Mutex::new(0),
            server,
        }
    }

    /// An HTTPS receiver with the TLS settings `tls` (see [`crate::tls`]), speaking HTTP/1.1
    /// or HTTP/2 as ALPN decides, otherwise like [`Receiver::start`]. A connection whose
    /// handshake fails is dropped.
    pub async fn start_tls(
        script: Vec<Reply>,
        default: Reply,
        tls: Arc<rustls::ServerConfig>,
    ) -> Receiver {
        let state = Arc::new(ReceiverState {
            script: Mutex::new(script.into()),
            default,
            received: Mutex::new(Vec::new()),
            arrived: Notify::new(),
            open: watch::Sender::new(true),
            rules: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
        });
        let app = Router::new().fallback(receive).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let server = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((socket, peer)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let app = app.clone().layer(axum::Extension(ConnectInfo(peer)));
                connections.spawn(async move {
                    let Ok(stream) = acceptor.accept(socket).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                });
            }
        });
        Receiver {
            addr,
            scheme: "https",
            state,
            taken: Mutex::new(0),
            server,
        }
    }

    /// A receiver that always answers 200.
    pub async fn ok() -> Receiver {
        Receiver::start(Vec::new(), Reply::status(200)).await
    }

    /// The URL of `path` on this receiver (by its address, `127.0.0.1`).
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    /// The URL of `path` on this receiver by the name `localhost`.
    pub fn url_by_name(&self, path: &str) -> String {
        format!("{}://localhost:{}{path}", self.scheme, self.addr.port())
    }

    /// The next requests get `replies`, in order, after what is scripted already.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().unwrap().extend(replies);
    }

    /// Requests whose body contains `needle` get `reply` from now on, whatever the script
    /// says (the script is not consumed for them): one event of many keeps failing.
    pub fn answer_containing(&self, needle: &str, reply: Reply) {
        self.state
            .rules
            .lock()
            .unwrap()
            .push((needle.as_bytes().to_vec(), reply));
    }

    /// How many requests were answered 2xx (or are about to be).
    pub fn accepted(&self) -> usize {
        self.state
            .received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .count()
    }

    /// Waits until at least `n` requests were answered 2xx, without copying them; returns
    /// whether they were within `timeout`.
    pub async fn wait_accepted(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrived = self.state.arrived.notified();
            if self.accepted() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return self.accepted() >= n;
            }
        }
    }

    /// Requests arriving from now on are recorded but not answered until
    /// [`Receiver::release`]: a test can hold many in flight at once.
    pub fn hold(&self) {
        self.state.open.send_replace(false);
    }

    /// Answers the held requests, and the next ones at once.
    pub fn release(&self) {
        self.state.open.send_replace(true);
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Waits until `done` holds for the requests received so far, and returns them; gives
    /// them as the error after `timeout` instead.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Result<Vec<Received>, Vec<Received>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before looking, so an arrival between the look and the wait
            // still wakes it.
            let arrived = self.state.arrived.notified();
            let got = self.received();
            if done(&got) {
                return Ok(got);
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                let got = self.received();
                return if done(&got) { Ok(got) } else { Err(got) };
            }
        }
    }

    /// How many requests arrived so far.
    pub fn count(&self) -> usize {
        self.state.received.lock().unwrap().len()
    }

    /// Waits until at least `n` requests arrived, without copying them (for runs of
    /// thousands); returns whether they did within `timeout`.
    pub async fn wait_count(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrived = self.state.arrived.notified();
            if self.count() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return self.count() >= n;
            }
        }
    }

    /// Waits until at least `n` requests arrived and returns all of them (panics after
    /// `timeout`).
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        self.wait_until(timeout, |got| got.len() >= n)
            .await
            .unwrap_or_else(|got| {
                panic!(
                    "expected {n} requests, got {} within {timeout:?}: {got:?}",
                    got.len()
                )
            })
    }

    /// The first request not handed out yet by `next` or `drain`, waiting for it (panics
    /// after [`WAIT`]).
    pub async fn next(&self) -> Received {
        let index = *self.taken.lock().unwrap();
        let got = self
            .wait_until(WAIT, |got| got.len() > index)
            .await
            .unwrap_or_else(|_| {
                panic!("the receiver got no request {} within {WAIT:?}", index + 1)
            });
        *self.taken.lock().unwrap() = index + 1;
        got[index].clone()
    }

    /// The requests not handed out yet by `next` or `drain`, without waiting.
    pub fn drain(&self) -> Vec<Received> {
        let got = self.received();
        let mut taken = self.taken.lock().unwrap();
        let rest = got[(*taken).min(got.len())..].to_vec();
        *taken = got.len();
        rest
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    version: Version,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ruled = state
        .rules
        .lock()
        .unwrap()
        .iter()
        .find(|(needle, _)| body.windows(needle.len()).any(|w| w == needle.as_slice()))
        .map(|(_, reply)| reply.clone());
    let reply = ruled.unwrap_or_else(|| {
        state
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| state.default.clone())
    });
    let status = if reply.failure_share > 0.0 && rand::random_bool(reply.failure_share.min(1.0)) {
        reply.failure_status
    } else {
        reply.status
    };
    let mut open = state.open.subscribe();
    let reply = if reply.echo {
        reply.body(body.clone())
    } else {
        reply
    };
    let in_flight = state.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
    let _counted = InFlight(&state.in_flight);
    state.received.lock().unwrap().push(Received {
        method,
        path: uri.path().to_owned(),
        headers,
        body,
        at: Instant::now(),
        peer,
        version,
        status,
        in_flight,
    });
    state.arrived.notify_waiters();
    let _ = open.wait_for(|open| *open).await;
    if reply.never {
        std::future::pending::<()>().await;
    }
    let extra = reply
        .load_delay
        .map_or(Duration::ZERO, |(knee, per_request)| {
            per_request * u32::try_from(in_flight.saturating_sub(knee)).unwrap_or(u32::MAX)
        });
    let delay = reply.delay + extra;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let status = StatusCode::from_u16(status).unwrap();
    let mut response = if reply.body.is_empty() {
        status.into_response()
    } else {
        (status, reply.body).into_response()
    };
    for (name, value) in &reply.headers {
        response.headers_mut().append(
            HeaderName::try_from(name.as_str()).unwrap(),
            HeaderValue::try_from(value.as_str()).unwrap(),
        );
    }
    response
}
