//! The bench's own webhook receiver: axum (hyper) on a loopback port, HTTP/1.1 keep-alive
//! and h2c (prior knowledge) both, answering at once (or after a delay) with 200, or 500 for
//! a chosen fraction. It notes when each `webhook-id` arrives on each subscription's path.
//!
//! Arrivals go into a map sharded by message id, each shard behind its own mutex, so
//! concurrent deliveries rarely wait for each other; the counters the progress bar and the
//! completion check read are atomics.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::serve::ListenerExt as _;
use tokio::net::TcpListener;
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

type Shard = HashMap<Box<str>, Vec<PairRecord>>;

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
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            distinct: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            missing_id: AtomicU64::new(0),
            inject: AtomicBool::new(false),
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
                self.distinct.fetch_add(1, Ordering::AcqRel);
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
    let app = Router::new()
        .route("/hook/{sub}", post(hook))
        .with_state(state.clone());
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "bench receiver stopped");
        }
    });
    Ok(RunningReceiver { state, addr, task })
}

async fn hook(
    State(state): State<Arc<Receiver>>,
    Path(sub): Path<u32>,
    headers: HeaderMap,
    // Read the body so that the connection stays reusable.
    _body: Bytes,
) -> StatusCode {
    let at = Instant::now();
    state.requests.fetch_add(1, Ordering::AcqRel);
    let fail = state.failure_rate > 0.0
        && state.inject.load(Ordering::Acquire)
        && rand::random::<f64>() < state.failure_rate;
    match headers.get("webhook-id").and_then(|v| v.to_str().ok()) {
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
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    }
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
