//! `/metrics` in the Prometheus text format, on `--metrics-listen`: the same instruments
//! the OTLP exporter sends, read on each scrape from the SDK through a manual reader and
//! named the Prometheus way (`sluice.deliveries` → `sluice_deliveries_total`,
//! `sluice.attempt.duration` in seconds → `sluice_attempt_duration_seconds_bucket` ...).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use opentelemetry::KeyValue;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, Metric, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{InstrumentKind, ManualReader, Pipeline, Temporality};

/// A manual reader the meter provider owns one handle of and the HTTP server another.
#[derive(Clone, Debug, Default)]
pub struct SharedReader(Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline);
    }

    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

/// Binds `addr` now (so a taken port fails start-up) and serves `/metrics` from `reader`
/// in the background for the life of the process. Returns the bound address.
pub fn serve(addr: SocketAddr, reader: SharedReader) -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("--metrics-listen {addr}: {e}"))?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(reader);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the metrics server stopped");
        }
    });
    Ok(bound)
}

async fn scrape(State(reader): State<SharedReader>) -> axum::response::Response {
    let mut metrics = ResourceMetrics::default();
    if let Err(e) = reader.collect(&mut metrics) {
        tracing::warn!(error = %e, "collecting metrics failed");
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "metrics are not available\n",
        )
            .into_response();
    }
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        render(&metrics),
    )
        .into_response()
}

/// The Prometheus text exposition of `metrics`.
pub fn render(metrics: &ResourceMetrics) -> String {
    let mut out = String::new();
    for scope in metrics.scope_metrics() {
        for metric in scope.metrics() {
            match metric.data() {
                AggregatedMetrics::F64(data) => render_data(&mut out, metric, data),
                AggregatedMetrics::U64(data) => render_data(&mut out, metric, data),
                AggregatedMetrics::I64(data) => render_data(&mut out, metric, data),
            }
        }
    }
    out
}

fn render_data<T: Copy + std::fmt::Display>(
    out: &mut String,
    metric: &Metric,
    data: &MetricData<T>,
) {
    let base = base_name(metric.name(), metric.unit());
    let help = metric
        .description()
        .replace('\\', r"\\")
        .replace('\n', r"\n");
    match data {
        MetricData::Sum(sum) => {
            let (name, kind) = if sum.is_monotonic() {
                (format!("{base}_total"), "counter")
            } else {
                (base, "gauge")
            };
            header(out, &name, &help, kind);
            for point in sum.data_points() {
                sample(out, &name, &labels(point.attributes(), None), point.value());
            }
        }
        MetricData::Gauge(gauge) => {
            header(out, &base, &help, "gauge");
            for point in gauge.data_points() {
                sample(out, &base, &labels(point.attributes(), None), point.value());
            }
        }
        MetricData::Histogram(histogram) => {
            header(out, &base, &help, "histogram");
            for point in histogram.data_points() {
                let mut cumulative = 0u64;
                let bounds: Vec<f64> = point.bounds().collect();
                for (i, count) in point.bucket_counts().enumerate() {
                    cumulative += count;
                    let le = bounds
                        .get(i)
                        .map_or_else(|| "+Inf".to_owned(), |b| format_float(*b));
                    let labels = labels(point.attributes(), Some(&le));
                    sample(out, &format!("{base}_bucket"), &labels, cumulative);
                }
                let labels = labels(point.attributes(), None);
                sample(out, &format!("{base}_sum"), &labels, point.sum());
                sample(out, &format!("{base}_count"), &labels, point.count());
            }
        }
        // Not used by Sluice's instruments; left out rather than approximated.
        MetricData::ExponentialHistogram(_) => {}
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "{name}{labels} {value}");
}

/// The Prometheus name of an OpenTelemetry instrument: characters outside
/// `[a-zA-Z0-9_:]` become `_`, and the unit is appended (`s` → `_seconds`).
pub fn base_name(name: &str, unit: &str) -> String {
    let mut base = sanitize(name);
    let unit = match unit {
        "s" => "seconds",
        "ms" => "milliseconds",
        "By" => "bytes",
        _ => "",
    };
    if !unit.is_empty() && !base.ends_with(unit) {
        base.push('_');
        base.push_str(unit);
    }
    base
}

fn sanitize(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

fn labels<'a>(attributes: impl Iterator<Item = &'a KeyValue>, le: Option<&str>) -> String {
    let mut pairs: Vec<String> = attributes
        .map(|kv| {
            format!(
                "{}=\"{}\"",
                sanitize(kv.key.as_str()),
                escape(&kv.value.to_string())
            )
        })
        .collect();
    pairs.sort();
    if let Some(le) = le {
        pairs.push(format!("le=\"{le}\""));
    }
    if pairs.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", pairs.join(","))
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

fn format_float(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::SdkMeterProvider;

    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges_under_prometheus_names() {
        let reader = SharedReader::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(reader.clone())
            .build();
        let meter = provider.meter("sluice.data");
        let deliveries = meter.u64_counter("sluice.deliveries").build();
        deliveries.add(2, &[KeyValue::new("outcome", "succeeded")]);
        deliveries.add(1, &[KeyValue::new("outcome", "fail\"ed")]);
        let duration = meter
            .f64_histogram("sluice.attempt.duration")
            .with_unit("s")
            .with_boundaries(vec![0.1, 1.0])
            .build();
        duration.record(0.05, &[]);
        duration.record(0.5, &[]);
        let _gauge = meter
            .i64_observable_gauge("sluice.queue.depth")
            .with_callback(|o| o.observe(7, &[]))
            .build();
        let mut metrics = ResourceMetrics::default();
        reader.collect(&mut metrics).unwrap();
        let text = render(&metrics);
        for line in [
            "# TYPE sluice_deliveries_total counter",
            "sluice_deliveries_total{outcome=\"succeeded\"} 2",
            "sluice_deliveries_total{outcome=\"fail\\\"ed\"} 1",
            "# TYPE sluice_attempt_duration_seconds histogram",
            "sluice_attempt_duration_seconds_bucket{le=\"0.1\"} 1",
            "sluice_attempt_duration_seconds_bucket{le=\"1\"} 2",
            "sluice_attempt_duration_seconds_bucket{le=\"+Inf\"} 2",
            "sluice_attempt_duration_seconds_count 2",
            "sluice_queue_depth 7",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
