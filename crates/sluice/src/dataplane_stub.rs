//! Temporary stand-in while the data plane crate is being written.

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cli::DeliveryArgs;

/// Placeholder configuration.
pub struct Unused;

/// Placeholder.
pub fn data_config(_: &DeliveryArgs, _: String, _: String) -> anyhow::Result<Unused> {
    Ok(Unused)
}

/// Placeholder: waits for shutdown.
pub async fn run_data(
    _listener: TcpListener,
    _db: sluice_store::sea_orm::DatabaseConnection,
    _config: Unused,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    shutdown.cancelled().await;
    Ok(())
}
