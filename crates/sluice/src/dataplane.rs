//! Running the data plane: serving it with health and reflection until shutdown, then
//! waiting for in-flight work to drain.

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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
