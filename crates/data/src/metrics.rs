//! Delivery metrics, exported over OTLP when telemetry is on (the global meter is a no-op
//! otherwise): events published, deliveries by outcome, attempt latency, retries scheduled,
//! queue and outbox depth, circuit-breaker state changes, each endpoint's concurrency limit.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, ObservableGauge};

/// The instruments, made once from the global meter provider.
pub(crate) struct Metrics {
    /// Events accepted and made durable.
    pub(crate) published: Counter<u64>,
    /// Publishes refused by the workspace publish quota.
    pub(crate) publish_refused: Counter<u64>,
    /// Attempts by outcome (`succeeded`, `retry_scheduled`, `failed`).
    pub(crate) attempts: Counter<u64>,
    /// Attempt latency in seconds.
    pub(crate) attempt_duration: Histogram<f64>,
    /// Retries scheduled.
    pub(crate) retries: Counter<u64>,
    /// Circuit-breaker state changes, by the state entered.
    pub(crate) breaker_changes: Counter<u64>,
    /// Rows the retention purge deleted (`dp_messages`, `dp_deliveries`) or cleared
    /// (`idempotency_keys`), by table.
    pub(crate) purged: Counter<u64>,
    /// Deliveries held in memory waiting for an attempt (set by the dispatcher).
    pub(crate) queue_depth: AtomicI64,
    /// Outbox rows not yet acked by the control plane.
    pub(crate) outbox_depth: AtomicI64,
    _gauges: Vec<ObservableGauge<i64>>,
    _limit_gauge: ObservableGauge<u64>,
}

/// Each lane's concurrency limit by subscription id, as its lane keeps it (registered once
/// when the lane is made, read only when the gauge is collected).
static CONCURRENCY_LIMITS: Mutex<BTreeMap<String, Arc<AtomicUsize>>> = Mutex::new(BTreeMap::new());

/// Shows a lane's concurrency limit as `sluice.endpoint.concurrency_limit`.
pub(crate) fn register_concurrency_limit(subscription_id: &str, limit: Arc<AtomicUsize>) {
    let mut limits = CONCURRENCY_LIMITS
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    // A second data plane in one process (tests) with the same subscription: the newest.
    limits.insert(subscription_id.to_owned(), limit);
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process's instruments.
pub(crate) fn metrics() -> &'static Metrics {
    METRICS.get_or_init(|| {
        let meter = opentelemetry::global::meter("sluice.data");
        let gauge = |name: &'static str, description: &'static str, read: fn(&Metrics) -> i64| {
            meter
                .i64_observable_gauge(name)
                .with_description(description)
                .with_callback(move |observer| {
                    if let Some(m) = METRICS.get() {
                        observer.observe(read(m), &[]);
                    }
                })
                .build()
        };
        let gauges = vec![
            gauge(
                "sluice.queue.depth",
                "Deliveries waiting for an attempt in memory",
                |m| m.queue_depth.load(Ordering::Relaxed),
            ),
            gauge(
                "sluice.outbox.depth",
                "Outcome batches not yet acked by the control plane",
                |m| m.outbox_depth.load(Ordering::Relaxed),
            ),
        ];
        Metrics {
            published: meter
                .u64_counter("sluice.events.published")
                .with_description("Events made durable")
                .build(),
            publish_refused: meter
                .u64_counter("sluice.events.refused")
                .with_description("Publishes refused because the workspace was over its quota")
                .build(),
            attempts: meter
                .u64_counter("sluice.deliveries")
                .with_description("Delivery attempts by outcome")
                .build(),
            attempt_duration: meter
                .f64_histogram("sluice.attempt.duration")
                .with_unit("s")
                .with_description("Latency of delivery attempts")
                .build(),
            retries: meter
                .u64_counter("sluice.retries.scheduled")
                .with_description("Retries scheduled")
                .build(),
            breaker_changes: meter
                .u64_counter("sluice.circuit_breaker.changes")
                .with_description("Circuit breaker state changes, by the state entered")
                .build(),
            purged: meter
                .u64_counter("sluice.retention.purged")
                .with_description("Rows deleted (or keys cleared) by the retention purge, by table")
                .build(),
            queue_depth: AtomicI64::new(0),
            outbox_depth: AtomicI64::new(0),
            _gauges: gauges,
            _limit_gauge: meter
                .u64_observable_gauge("sluice.endpoint.concurrency_limit")
                .with_description(
                    "Attempts allowed in flight to each subscription's endpoint now \
                     (adaptive, or --endpoint-concurrency)",
                )
                .with_callback(|observer| {
                    let limits = CONCURRENCY_LIMITS
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    for (subscription_id, limit) in limits.iter() {
                        observer.observe(
                            limit.load(Ordering::Relaxed) as u64,
                            &[KeyValue::new("subscription_id", subscription_id.clone())],
                        );
                    }
                })
                .build(),
        }
    })
}

/// Counts rows the purge deleted from `table`.
pub(crate) fn purged(table: &'static str, rows: u64) {
    if rows > 0 {
        metrics().purged.add(rows, &[KeyValue::new("table", table)]);
    }
}

/// Records an attempt's outcome.
pub(crate) fn attempt(outcome: &'static str, seconds: f64) {
    let m = metrics();
    m.attempts.add(1, &[KeyValue::new("outcome", outcome)]);
    m.attempt_duration
        .record(seconds, &[KeyValue::new("outcome", outcome)]);
}
