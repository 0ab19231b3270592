//! Running the data plane: its configuration from flags, and serving it with health and
//! reflection until shutdown, then waiting for in-flight work to drain.

use std::time::Duration;

use anyhow::bail;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cli::DeliveryArgs;

/// The data plane's configuration from flags.
pub fn data_config(
    args: &DeliveryArgs,
    internal_token: String,
    control_endpoint: String,
) -> anyhow::Result<sluice_data::DataConfig> {
    let retry = sluice_core::retry::RetrySchedule::parse(&args.retry_schedule)
        .map_err(|e| anyhow::anyhow!("--retry-schedule: {e}"))?;
    let allow_list = sluice_core::egress::AllowList::parse(&args.egress_allow)
        .map_err(|e| anyhow::anyhow!("--egress-allow: {e}"))?;
    if args.endpoint_concurrency == 0 {
        bail!("--endpoint-concurrency must be at least 1");
    }
    let sender = sluice_delivery::SenderConfig {
        connect_timeout: Duration::from_millis(args.connect_timeout_ms),
        request_timeout: Duration::from_millis(args.request_timeout_ms),
        allow_http: args.allow_http,
        allow_private: args.allow_private_destinations,
        allow_list,
        ..Default::default()
    };
    Ok(sluice_data::DataConfig {
        internal_token,
        control_endpoint,
        retry,
        max_payload_bytes: args.max_payload_bytes,
        sender,
        endpoint_concurrency: args.endpoint_concurrency,
        disable_after_failing_for: Duration::from_secs(args.disable_after_hours * 3600),
        disable_after_failed_attempts: (args.disable_after_attempts > 0)
            .then_some(args.disable_after_attempts),
        shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
        lease: Duration::from_secs(args.delivery_lease_secs.max(1)),
        ..Default::default()
    })
}

/// Serves the data plane on `listener` until `shutdown` fires, then drains.
pub async fn run_data(
    listener: TcpListener,
    db: sluice_store::sea_orm::DatabaseConnection,
    config: sluice_data::DataConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let plane = sluice_data::DataPlane::start(db, config, shutdown.clone()).await?;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    health_reporter
        .set_service_status(
            "sluice.data.v1.IngestService",
            tonic_health::ServingStatus::Serving,
        )
        .await;
    let (reflection_v1, reflection_v1alpha) = crate::server::reflection(&[
        "sluice.data.v1.IngestService",
        "sluice.data.v1.DispatchService",
    ])?;
    crate::server::builder()
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(plane.ingest_service())
        .add_service(plane.dispatch_service())
        .serve_with_incoming_shutdown(
            crate::server::incoming(listener),
            shutdown.cancelled_owned(),
        )
        .await?;
    plane.drained().await;
    Ok(())
}
