//! The real data plane in-process: `DataPlane` over a database, its IngestService and
//! DispatchService served on `127.0.0.1:0`. The plane and its server stop separately, so a
//! test can watch a stopping plane refuse work.

use std::net::SocketAddr;

use sea_orm::DatabaseConnection;
use sluice_data::{DataConfig, DataPlane};
use sluice_proto::data::v1::ingest_service_client::IngestServiceClient;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Server};

use crate::WAIT;

/// The data plane behind a real tonic server on `127.0.0.1:0`.
pub struct DataHarness {
    /// The plane itself.
    pub plane: DataPlane,
    /// Where its gRPC server listens.
    pub addr: SocketAddr,
    /// The data plane's own shutdown signal.
    pub shutdown: CancellationToken,
    /// The gRPC server's, separate so a test can watch the data plane refuse work.
    server_shutdown: CancellationToken,
    server: JoinHandle<()>,
}

impl DataHarness {
    /// Starts the data plane over `db` with `config`, and serves it on `127.0.0.1:0`.
    pub async fn start(db: DatabaseConnection, config: DataConfig) -> DataHarness {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        DataHarness::serve(listener, db, config).await
    }

    /// Starts the data plane over `db` with `config`, and serves it on `listener`.
    pub async fn serve(
        listener: TcpListener,
        db: DatabaseConnection,
        config: DataConfig,
    ) -> DataHarness {
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let plane = DataPlane::start(db, config, shutdown.clone())
            .await
            .unwrap();
        let server_shutdown = CancellationToken::new();
        let serving = Server::builder()
            .add_service(plane.ingest_service())
            .add_service(plane.dispatch_service())
            .serve_with_incoming_shutdown(
                sluice::server::incoming(listener),
                server_shutdown.clone().cancelled_owned(),
            );
        let server = tokio::spawn(async move {
            let _ = serving.await;
        });
        DataHarness {
            plane,
            addr,
            shutdown,
            server_shutdown,
            server,
        }
    }

    /// Waits until the configuration at `revision` (or later) is in effect (panics after
    /// [`WAIT`]).
    pub async fn wait_for_revision(&self, revision: u64) {
        let mut watch = self.plane.config_revision();
        tokio::time::timeout(WAIT, watch.wait_for(|r| *r >= revision))
            .await
            .unwrap_or_else(|_| {
                panic!("the data plane did not apply config revision {revision} within {WAIT:?}")
            })
            .unwrap();
    }

    /// An ingest client without a key (see [`crate::authed`]).
    pub async fn ingest(&self) -> IngestServiceClient<Channel> {
        IngestServiceClient::new(crate::connect(self.addr).await)
    }

    /// Stops the data plane, waits until it drained (panics after [`WAIT`]), then stops
    /// its server.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.plane.drained())
            .await
            .expect("the data plane did not drain in time");
        self.server_shutdown.cancel();
        let _ = self.server.await;
    }
}
