//! W3C trace context (`traceparent`, `tracestate`) between `tracing` spans and the places
//! it travels: stored with a message, in HTTP headers to receivers, in gRPC metadata between
//! the planes. One place, so every crate propagates the same way. When OpenTelemetry export
//! is off, spans carry no context: the functions then return `None` or do nothing, and
//! callers pass the publisher's own context through.

use opentelemetry::Context;
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TraceContextExt;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// `span`'s W3C context as (traceparent, tracestate), when OpenTelemetry tracks it.
pub fn span_headers(span: &tracing::Span) -> Option<(String, Option<String>)> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = std::collections::HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut carrier));
    let parent = carrier.remove("traceparent")?;
    Some((
        parent,
        carrier.remove("tracestate").filter(|s| !s.is_empty()),
    ))
}

/// Makes `span` a child of a stored W3C context; does nothing when there is none or it is
/// not valid.
pub fn set_parent(span: &tracing::Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    let Some(traceparent) = traceparent.filter(|t| !t.is_empty()) else {
        return;
    };
    let mut carrier = std::collections::HashMap::new();
    carrier.insert("traceparent".to_owned(), traceparent.to_owned());
    if let Some(state) = tracestate {
        carrier.insert("tracestate".to_owned(), state.to_owned());
    }
    let context = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
    if context.span().span_context().is_valid() {
        let _ = span.set_parent(context);
    }
}

/// Adds the current span's W3C context to outgoing gRPC metadata.
pub fn inject_current(metadata: &mut MetadataMap) {
    if let Some((parent, state)) = span_headers(&tracing::Span::current()) {
        for (name, value) in [("traceparent", Some(parent)), ("tracestate", state)] {
            if let (Some(value), Ok(key)) = (value, MetadataKey::from_bytes(name.as_bytes()))
                && let Ok(value) = MetadataValue::try_from(value.as_str())
            {
                metadata.insert(key, value);
            }
        }
    }
}

/// The caller's W3C context from HTTP/2 headers (gRPC metadata).
pub fn context_from_headers(headers: &http::HeaderMap) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// A count or code as a span field that OpenTelemetry exports as an int attribute:
/// tracing-opentelemetry maps `i64` to an int but formats unsigned integers (and `usize`)
/// as strings, while the semantic conventions define `http.response.status_code`,
/// `server.port`, `http.request.resend_count` and the like as ints.
pub fn int_attr<T: TryInto<i64>>(value: T) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}
