//! Telemetry in one place: `tracing` logs (plain or JSON, `RUST_LOG`-style filter) and, when
//! an OTLP endpoint is configured, traces and metrics exported over OTLP/gRPC through
//! `tracing-opentelemetry`. Configured by the standard `OTEL_*` variables
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`/`_ARG`,
//! `OTEL_RESOURCE_ATTRIBUTES`) or the matching flags. Export is off when nothing is set.

use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{FilterExt, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The log filter when `RUST_LOG` is unset.
pub const DEFAULT_FILTER: &str =
    "info,sqlx=warn,sea_orm_migration=warn,h2=warn,hyper=warn,tower=warn,opentelemetry=warn";

/// Which spans are exported: Sluice's own, at INFO.
const SPAN_FILTER: &str = "info,h2=off,hyper=off,hyper_util=off,tower=off,sqlx=off,sea_orm=off,sea_orm_migration=off,reqwest=off,tonic=off,opentelemetry=off";

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Plain,
    /// One JSON object per line.
    Json,
}

/// Telemetry flags shared by every subcommand.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TelemetryArgs {
    /// Log line format.
    #[arg(long, global = true, env = "SLUICE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
    /// OTLP/gRPC collector for traces and metrics (`http://127.0.0.1:4317`); off when unset.
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// The service name traces carry (default: `sluice`).
    #[arg(long, global = true, env = "OTEL_SERVICE_NAME")]
    pub service_name: Option<String>,
    /// Sampler: `always_on`, `always_off`, `traceidratio`, `parentbased_always_on` (default),
    /// `parentbased_traceidratio`, ...
    #[arg(long, global = true, env = "OTEL_TRACES_SAMPLER")]
    pub traces_sampler: Option<String>,
    /// The sampler's argument (a ratio for the `traceidratio` samplers).
    #[arg(long, global = true, env = "OTEL_TRACES_SAMPLER_ARG")]
    pub traces_sampler_arg: Option<String>,
    /// Serve the metrics in the Prometheus text format at `http://ADDR/metrics`; off when
    /// unset.
    #[arg(long, global = true, env = "SLUICE_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

static METRICS_ADDR: std::sync::OnceLock<std::net::SocketAddr> = std::sync::OnceLock::new();

/// Where Prometheus `/metrics` is served in this process, if `--metrics-listen` asked (for
/// `sluice dev`'s banner).
pub fn metrics_addr() -> Option<std::net::SocketAddr> {
    METRICS_ADDR.get().copied()
}

/// The exporters to flush at exit.
#[derive(Default)]
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
    /// Where `/metrics` is served, when `--metrics-listen` asked for it.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl Telemetry {
    /// Flushes and stops the exporters. Call before the process exits.
    pub fn shutdown(self) {
        if let Some(p) = self.tracer_provider
            && let Err(e) = p.shutdown()
        {
            eprintln!("sluice: flushing traces failed: {e}");
        }
        if let Some(p) = self.meter_provider
            && let Err(e) = p.shutdown()
        {
            eprintln!("sluice: flushing metrics failed: {e}");
        }
    }
}

/// Installs logging and, if configured, OTLP export. Must run inside the tokio runtime (the
/// OTLP exporter's channel is built there). `default_filter` applies when `RUST_LOG` is unset.
pub fn init(
    args: &TelemetryArgs,
    default_filter: &str,
    default_service: &str,
) -> anyhow::Result<Telemetry> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    opentelemetry::global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]));

    let mut telemetry = Telemetry::default();
    // One meter provider for both metric outlets: OTLP (pushed) and Prometheus (scraped).
    let mut meters = SdkMeterProvider::builder();
    let mut otlp_metrics = false;
    let otel_layer = match args.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) {
        None => None,
        Some(endpoint) => {
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name(
                    args.service_name
                        .clone()
                        .unwrap_or_else(|| default_service.to_owned()),
                )
                .build();
            let spans = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()?;
            let mut tracer_provider = SdkTracerProvider::builder().with_batch_exporter(spans);
            if let Some(sampler) = sampler(args)? {
                tracer_provider = tracer_provider.with_sampler(sampler);
            }
            let tracer_provider = tracer_provider.with_resource(resource.clone()).build();
            let metrics = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()?;
            meters = meters
                .with_periodic_exporter(metrics)
                .with_resource(resource);
            otlp_metrics = true;
            let tracer = tracer_provider.tracer("sluice");
            opentelemetry::global::set_tracer_provider(tracer_provider.clone());
            telemetry.tracer_provider = Some(tracer_provider);
            // Spans go to the exporter at INFO whatever RUST_LOG says, without the
            // libraries' own request spans.
            let spans_filter = EnvFilter::new(SPAN_FILTER);
            Some(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(spans_filter),
            )
        }
    };
    let prometheus = match args.metrics_listen {
        Some(addr) => {
            let reader = crate::prometheus::SharedReader::default();
            meters = meters.with_reader(reader.clone());
            Some((addr, reader))
        }
        None => None,
    };
    if otlp_metrics || prometheus.is_some() {
        let meter_provider = meters.build();
        opentelemetry::global::set_meter_provider(meter_provider.clone());
        telemetry.meter_provider = Some(meter_provider);
    }
    if let Some((addr, reader)) = prometheus {
        let bound = crate::prometheus::serve(addr, reader)?;
        telemetry.metrics_addr = Some(bound);
        let _ = METRICS_ADDR.set(bound);
    }
    // Log lines are events only: the fmt layer would otherwise format the fields of every
    // span (four per delivered event) just in case a log line inside it wants them. With
    // export off no layer wants spans, so none is created at all (an absent `Option` layer
    // would still say it wants everything).
    let result = match otel_layer {
        Some(otel) => with_logs(
            tracing_subscriber::registry().with(otel),
            args.log_format,
            filter,
        ),
        None => with_logs(tracing_subscriber::registry(), args.log_format, filter),
    };
    if let Err(e) = result {
        eprintln!("sluice: logging was already set up: {e}");
    }
    if let Some(endpoint) = &args.otlp_endpoint {
        tracing::info!(%endpoint, "exporting traces and metrics over OTLP");
    }
    if let Some(addr) = telemetry.metrics_addr {
        tracing::info!(url = %format!("http://{addr}/metrics"), "serving Prometheus metrics");
    }
    Ok(telemetry)
}

/// Installs `subscriber` with the log layer on top, which sees the events `filter` lets
/// through and no span.
fn with_logs<S>(
    subscriber: S,
    format: LogFormat,
    filter: EnvFilter,
) -> Result<(), tracing_subscriber::util::TryInitError>
where
    S: tracing::Subscriber
        + for<'a> tracing_subscriber::registry::LookupSpan<'a>
        + Send
        + Sync
        + 'static,
{
    let log_filter = filter.and(filter_fn(|metadata| metadata.is_event()));
    // Colour only for a person at a terminal: a file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    match format {
        LogFormat::Plain => subscriber
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(ansi)
                    .with_filter(log_filter),
            )
            .try_init(),
        LogFormat::Json => subscriber
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr)
                    .with_ansi(false)
                    .with_filter(log_filter),
            )
            .try_init(),
    }
}

/// The sampler the flags name; `None` leaves the SDK's choice (which reads `OTEL_TRACES_SAMPLER`).
fn sampler(args: &TelemetryArgs) -> anyhow::Result<Option<opentelemetry_sdk::trace::Sampler>> {
    use opentelemetry_sdk::trace::Sampler;
    let ratio = || -> anyhow::Result<f64> {
        let arg = args.traces_sampler_arg.as_deref().unwrap_or("1.0");
        let r: f64 = arg
            .parse()
            .map_err(|_| anyhow::anyhow!("OTEL_TRACES_SAMPLER_ARG {arg:?} is not a number"))?;
        anyhow::ensure!(
            (0.0..=1.0).contains(&r),
            "OTEL_TRACES_SAMPLER_ARG must be between 0 and 1"
        );
        Ok(r)
    };
    Ok(Some(match args.traces_sampler.as_deref() {
        None | Some("") => return Ok(None),
        Some("always_on") => Sampler::AlwaysOn,
        Some("always_off") => Sampler::AlwaysOff,
        Some("traceidratio") => Sampler::TraceIdRatioBased(ratio()?),
        Some("parentbased_always_on") => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        Some("parentbased_always_off") => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        Some("parentbased_traceidratio") => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio()?)))
        }
        Some(other) => anyhow::bail!("unknown OTEL_TRACES_SAMPLER {other:?}"),
    }))
}

/// The server span of a gRPC request, child of the caller's W3C trace context. Health
/// checks and reflection get no span (`Span::none()`), so they never reach the exporter.
pub fn grpc_server_span(request: &http::Request<()>) -> tracing::Span {
    let path = request.uri().path();
    if path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.") {
        return tracing::Span::none();
    }
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    let span = tracing::info_span!(
        "grpc.server",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let _ = span.set_parent(sluice_telemetry::context_from_headers(request.headers()));
    span
}
