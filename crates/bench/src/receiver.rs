//! The bench's own webhook receiver: hyper on a loopback port, HTTP/1.1 keep-alive and h2c
//! (prior knowledge) both, answering at once (or after a delay) with 200, or 500 for a
//! chosen fraction. It notes when each `webhook-id` arrives on each subscription's path.
//!
//! It shares the machine with the planes it measures, so it is kept lean: hyper's
//! connection handling and nothing else (no router, no extractors copying the headers).
//! Arrivals go into a map sharded by message id, each shard behind its own mutex, so
//! concurrent deliveries rarely wait for each other; the counters the progress bar and the
//! completion check read are atomics, and the run's end is signalled, not polled for.

use std::convert::Infallible;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use foldhash::fast::RandomState;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Shards of the arrival map; a power of two.
const SHARDS: usize = 64;

/// What one subscription got of one message.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PairRecord {
    /// The subscription's index (its `/hook/<i>` path).
    pub(crate) sub: u32,
    /// The first attempt's arrival, whatever it was answered.
    pub(crate) first: Instant,
    /// The first arrival answered 200.
    pub(crate) first_ok: Option<Instant>,
    /// Arrivals after one was answered 200: duplicates.
    pub(crate) after_ok: u32,
}

type Shard = foldhash::HashMap<Box<str>, Vec<PairRecord>>;

/// The receiver's shared state.
pub(crate) struct Receiver {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    /// Distinct (message, subscription) pairs seen: the completion counter.
    distinct: AtomicU64,
    /// Every request that reached a hook.
    requests: AtomicU64,
    /// Requests answered 500 on purpose.
    failed: AtomicU64,
    /// Requests without a `webhook-id` header.
    missing_id: AtomicU64,
    /// Failure injection is on (off during the warm-up).
    inject: AtomicBool,
    /// `distinct` the bench waits for; `reached` is notified when it gets there.
    target: AtomicU64,
    reached: Notify,
    delay: Duration,
    failure_rate: f64,
}

/// The receiver's counters at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counters {
    pub(crate) distinct: u64,
    pub(crate) requests: u64,
    pub(crate) failed: u64,
    pub(crate) missing_id: u64,
}

impl Receiver {
    fn new(delay: Duration, failure_rate: f64) -> Receiver {
        Receiver {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::default(),
            distinct: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            missing_id: AtomicU64::new(0),
            inject: AtomicBool::new(false),
            target: AtomicU64::new(u64::MAX),
            reached: Notify::new(),
            delay,
            failure_rate,
        }
    }

    fn shard(&self, id: &str) -> MutexGuard<'_, Shard> {
        let index = (self.hasher.hash_one(id) as usize) & (SHARDS - 1);
        self.shards[index]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Turns the `--receiver-failure-rate` injection on (after the warm-up).
    pub(crate) fn start_injecting(&self) {
        self.inject.store(true, Ordering::Release);
    }

    /// Waits until `distinct` pairs have arrived, or until `timeout` passes; true when they
    /// have. Only the bench's one waiting task calls it.
    pub(crate) async fn wait_for_distinct(&self, distinct: u64, timeout: Duration) -> bool {
        self.target.store(distinct, Ordering::SeqCst);
        // Either this load sees the arrival that reaches `distinct`, or that arrival's load
        // of `target` sees this store (both SeqCst) and notifies; `notify_one` keeps the
        // permit for the `notified` below, so no wake-up is lost.
        if self.distinct.load(Ordering::SeqCst) >= distinct {
            return true;
        }
        let _ = tokio::time::timeout(timeout, self.reached.notified()).await;
        self.distinct.load(Ordering::Acquire) >= distinct
    }

    /// The counters now.
    pub(crate) fn counters(&self) -> Counters {
        Counters {
            distinct: self.distinct.load(Ordering::Acquire),
            requests: self.requests.load(Ordering::Acquire),
            failed: self.failed.load(Ordering::Acquire),
            missing_id: self.missing_id.load(Ordering::Acquire),
        }
    }

    /// How many subscriptions `id` has reached so far.
    pub(crate) fn subscriptions_reached(&self, id: &str) -> usize {
        self.shard(id).get(id).map_or(0, Vec::len)
    }

    /// Calls `f` with every message id and what each subscription got of it.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&str, &[PairRecord])) {
        for shard in &self.shards {
            let shard = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (id, pairs) in shard.iter() {
                f(id, pairs);
            }
        }
    }

    fn record(&self, id: &str, sub: u32, at: Instant, ok: bool) {
        let mut shard = self.shard(id);
        let pairs = match shard.get_mut(id) {
            Some(pairs) => pairs,
            None => shard.entry(Box::from(id)).or_default(),
        };
        match pairs.iter_mut().find(|p| p.sub == sub) {
            Some(pair) => {
                if pair.first_ok.is_some() {
                    pair.after_ok += 1;
                } else if ok {
                    pair.first_ok = Some(at);
                }
            }
            None => {
                pairs.push(PairRecord {
                    sub,
                    first: at,
                    first_ok: ok.then_some(at),
                    after_ok: 0,
                });
                let distinct = self.distinct.fetch_add(1, Ordering::SeqCst) + 1;
                if distinct == self.target.load(Ordering::SeqCst) {
                    self.reached.notify_one();
                }
            }
        }
    }
}

/// A running receiver; dropping it stops the server.
pub(crate) struct RunningReceiver {
    pub(crate) state: Arc<Receiver>,
    pub(crate) addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for RunningReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the receiver on `127.0.0.1:0`.
pub(crate) async fn start(delay: Duration, failure_rate: f64) -> anyhow::Result<RunningReceiver> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot bind the bench receiver on 127.0.0.1")?;
    let addr = listener.local_addr()?;
    let state = Arc::new(Receiver::new(delay, failure_rate));
    let task = tokio::spawn(serve(listener, Arc::clone(&state)));
    Ok(RunningReceiver { state, addr, task })
}

/// Accepts connections until the task is aborted, one task per connection.
async fn serve(listener: TcpListener, state: Arc<Receiver>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of descriptors, most likely: let connections close, then go on.
                tracing::warn!(error = %e, "bench receiver cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let state = Arc::clone(&state);
        let connection = builder
            .serve_connection(
                TokioIo::new(tcp),
                hyper::service::service_fn(move |request| {
                    let state = Arc::clone(&state);
                    async move { Ok::<_, Infallible>(hook(&state, request).await) }
                }),
            )
            .into_owned();
        tokio::spawn(async move {
            // A sender that hangs up mid-request is no concern of the bench's.
            let _ = connection.await;
        });
    }
}

/// `POST /hook/<subscription index>`.
async fn hook(state: &Receiver, request: Request<Incoming>) -> Response<Empty<Bytes>> {
    let sub = request
        .uri()
        .path()
        .strip_prefix("/hook/")
        .and_then(|index| index.parse::<u32>().ok());
    let Some(sub) = sub else {
        return answer(StatusCode::NOT_FOUND);
    };
    if request.method() != Method::POST {
        return answer(StatusCode::METHOD_NOT_ALLOWED);
    }
    state.requests.fetch_add(1, Ordering::AcqRel);
    let fail = state.failure_rate > 0.0
        && state.inject.load(Ordering::Acquire)
        && rand::random::<f64>() < state.failure_rate;
    let (parts, body) = request.into_parts();
    // Read the body to its end (the request has arrived then), so that the connection
    // stays reusable.
    if body.collect().await.is_err() {
        return answer(StatusCode::BAD_REQUEST);
    }
    let at = Instant::now();
    match parts
        .headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
    {
        Some(id) => state.record(id, sub, at, !fail),
        None => {
            state.missing_id.fetch_add(1, Ordering::AcqRel);
        }
    }
    if !state.delay.is_zero() {
        tokio::time::sleep(state.delay).await;
    }
    if fail {
        state.failed.fetch_add(1, Ordering::AcqRel);
        answer(StatusCode::INTERNAL_SERVER_ERROR)
    } else {
        answer(StatusCode::OK)
    }
}

fn answer(status: StatusCode) -> Response<Empty<Bytes>> {
    let mut response = Response::new(Empty::new());
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_duplicates_and_failures_are_told_apart() {
        let r = Receiver::new(Duration::ZERO, 0.0);
        let t = Instant::now();
        r.record("msg_a", 0, t, false);
        r.record("msg_a", 0, t, true);
        r.record("msg_a", 0, t, true);
        r.record("msg_a", 1, t, true);
        r.record("msg_b", 0, t, true);
        assert_eq!(r.counters().distinct, 3);
        assert_eq!(r.subscriptions_reached("msg_a"), 2);
        let mut seen = Vec::new();
        r.for_each(|id, pairs| {
            for p in pairs {
                seen.push((id.to_owned(), p.sub, p.first_ok.is_some(), p.after_ok));
            }
        });
        seen.sort();
        assert_eq!(
            seen,
            vec![
                ("msg_a".to_owned(), 0, true, 1),
                ("msg_a".to_owned(), 1, true, 0),
                ("msg_b".to_owned(), 0, true, 0),
            ]
        );
    }
}
