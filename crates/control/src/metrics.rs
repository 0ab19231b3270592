//! The control plane's metrics, exported over OTLP when telemetry is on (the global meter
//! is a no-op otherwise): rows the retention purge deleted, outcome batches set aside.

use std::sync::OnceLock;

use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;

/// The instruments, made once from the global meter provider.
pub(crate) struct Metrics {
    /// Rows deleted by the retention purge, by table.
    pub(crate) purged: Counter<u64>,
    /// Outcome batches the control plane could not store and set aside.
    pub(crate) quarantined: Counter<u64>,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process's instruments.
pub(crate) fn metrics() -> &'static Metrics {
    METRICS.get_or_init(|| {
        let meter = opentelemetry::global::meter("sluice.control");
        Metrics {
            purged: meter
                .u64_counter("sluice.retention.purged")
                .with_description("Rows deleted by the retention purge, by table")
                .build(),
            quarantined: meter
                .u64_counter("sluice.outcomes.quarantined")
                .with_description("Outcome batches that could not be stored, set aside")
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
