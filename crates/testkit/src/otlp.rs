//! A real OTLP/gRPC trace and metrics collector on `127.0.0.1:0`, built from the published
//! OpenTelemetry protos, that keeps every span and metric it is sent.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
pub use opentelemetry_proto::tonic::common::v1::any_value::Value;
pub use opentelemetry_proto::tonic::metrics::v1 as metrics_proto;
pub use opentelemetry_proto::tonic::metrics::v1::Metric;
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::sync::Notify;

/// A span as received, with its service name.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    /// `service.name` of the resource that sent it.
    pub service: String,
    /// The span.
    pub span: Span,
}

impl ReceivedSpan {
    /// The trace id as 32 hex characters.
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    /// An attribute's value as text (ints and bools formatted).
    pub fn attr(&self, key: &str) -> Option<String> {
        self.span
            .attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.as_ref())
            .and_then(|v| {
                v.value.as_ref().map(|v| match v {
                    Value::StringValue(s) => s.clone(),
                    Value::IntValue(i) => i.to_string(),
                    Value::BoolValue(b) => b.to_string(),
                    Value::DoubleValue(d) => d.to_string(),
                    other => format!("{other:?}"),
                })
            })
    }

    /// An attribute's value exactly as received, type included.
    pub fn value(&self, key: &str) -> Option<Value> {
        self.span
            .attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.as_ref())
            .and_then(|v| v.value.clone())
    }

    /// An attribute that must be an int (panics, naming the type received, otherwise):
    /// the semantic conventions define status codes, ports and counts as ints.
    pub fn int(&self, key: &str) -> Option<i64> {
        match self.value(key) {
            None => None,
            Some(Value::IntValue(i)) => Some(i),
            Some(other) => panic!("{key} of span {} is not an int: {other:?}", self.span.name),
        }
    }

    /// An attribute that must be a string (panics, naming the type received, otherwise).
    pub fn string(&self, key: &str) -> Option<String> {
        match self.value(key) {
            None => None,
            Some(Value::StringValue(s)) => Some(s),
            Some(other) => panic!(
                "{key} of span {} is not a string: {other:?}",
                self.span.name
            ),
        }
    }

    /// Every attribute as `key=value` text, for scanning for leaks.
    pub fn all_attributes_text(&self) -> String {
        self.span
            .attributes
            .iter()
            .map(|a| format!("{}={:?}", a.key, a.value))
            .chain(self.span.events.iter().flat_map(|e| {
                e.attributes
                    .iter()
                    .map(|a| format!("{}={:?}", a.key, a.value))
            }))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Lowercase hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Default)]
struct Store {
    spans: Mutex<Vec<ReceivedSpan>>,
    metrics: Mutex<Vec<Metric>>,
    arrived: Notify,
}

struct Collector(Arc<Store>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| a.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push(ReceivedSpan {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
        drop(spans);
        self.0.arrived.notify_waiters();
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut metrics = self.0.metrics.lock().unwrap();
        for rm in request.into_inner().resource_metrics {
            for sm in rm.scope_metrics {
                metrics.extend(sm.metrics);
            }
        }
        drop(metrics);
        self.0.arrived.notify_waiters();
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

/// The running collector.
pub struct OtlpCollector {
    /// Where it listens (give `http://{addr}` as `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub addr: SocketAddr,
    store: Arc<Store>,
    server: tokio::task::JoinHandle<()>,
}

impl OtlpCollector {
    /// Starts a collector on `127.0.0.1:0`.
    pub async fn start() -> OtlpCollector {
        let store = Arc::new(Store::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(Collector(store.clone()));
        let metrics = MetricsServiceServer::new(Collector(store.clone()));
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .add_service(metrics)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        OtlpCollector {
            addr,
            store,
            server,
        }
    }

    /// Every metric export so far (each periodic export repeats the cumulative metrics).
    pub fn metrics(&self) -> Vec<Metric> {
        self.store.metrics.lock().unwrap().clone()
    }

    /// Waits until `done(metrics)` holds (panics after `timeout` with the names received).
    pub async fn wait_for_metrics(
        &self,
        timeout: Duration,
        done: impl Fn(&[Metric]) -> bool,
    ) -> Vec<Metric> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.store.arrived.notified();
            let metrics = self.metrics();
            if done(&metrics) {
                return metrics;
            }
            let names: std::collections::BTreeSet<&str> =
                metrics.iter().map(|m| m.name.as_str()).collect();
            assert!(
                tokio::time::Instant::now() < deadline,
                "metrics never arrived as expected; got {names:?}"
            );
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    /// Every span so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.store.spans.lock().unwrap().clone()
    }

    /// Waits until `done(spans)` holds (panics after `timeout` with what arrived).
    pub async fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.store.arrived.notified();
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            let names: Vec<String> = spans
                .iter()
                .map(|s| format!("{}:{}", s.service, s.span.name))
                .collect();
            assert!(
                tokio::time::Instant::now() < deadline,
                "spans never arrived as expected; got {names:?}"
            );
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }
}

impl Drop for OtlpCollector {
    fn drop(&mut self) {
        self.server.abort();
    }
}
