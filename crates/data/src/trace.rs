//! W3C trace context between spans, stored messages and gRPC metadata. When OpenTelemetry
//! export is off, spans carry no context and the publisher's own context passes through.

use opentelemetry::trace::TraceContextExt;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// `span`'s W3C context as (traceparent, tracestate), when OpenTelemetry tracks it.
pub(crate) fn headers_of(span: &tracing::Span) -> Option<(String, Option<String>)> {
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

/// Makes `span` a child of a stored W3C context (no-op when there is none).
pub(crate) fn set_parent(
    span: &tracing::Span,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) {
    let Some(traceparent) = traceparent else {
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
pub(crate) fn inject_current(metadata: &mut MetadataMap) {
    if let Some((parent, state)) = headers_of(&tracing::Span::current()) {
        for (name, value) in [("traceparent", Some(parent)), ("tracestate", state)] {
            if let (Some(value), Ok(key)) = (value, MetadataKey::from_bytes(name.as_bytes()))
                && let Ok(value) = MetadataValue::try_from(value.as_str())
            {
                metadata.insert(key, value);
            }
        }
    }
}
