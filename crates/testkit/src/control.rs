//! The real control plane in-process: its services served on `127.0.0.1:0` by the binary's
//! own `serve_control`, over a fresh database.

use std::net::SocketAddr;

use sea_orm::DatabaseConnection;
use sluice_core::sealing::Keyring;
use sluice_store::Plane;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::{ADMIN_KEY, Backend, Clients, INTERNAL_TOKEN, TestDatabase};

/// The control plane's configuration in tests. `allow_http` lets subscriptions use
/// `http://` URLs (a local receiver); `data_plane` is the data plane's DispatchService;
/// `keyring` seals the stored secrets.
pub(crate) fn control_config(
    allow_http: bool,
    data_plane: Option<String>,
    keyring: Keyring,
) -> sluice_control::ControlConfig {
    sluice_control::ControlConfig {
        admin_key: ADMIN_KEY.into(),
        internal_token: INTERNAL_TOKEN.into(),
        allow_http,
        data_plane_endpoint: data_plane,
        keyring,
        attempt_watch_buffer: sluice_control::attempt_watch::DEFAULT_BUFFER,
        attempt_watch_patience: sluice_control::attempt_watch::DEFAULT_PATIENCE,
        retention: Default::default(),
        policy_defaults: Default::default(),
    }
}

/// A control-plane server running on a listener until stopped.
pub(crate) struct ControlServer {
    shutdown: CancellationToken,
    server: JoinHandle<()>,
}

impl ControlServer {
    /// Serves the control plane over `db` with `config` on `listener`.
    pub(crate) async fn start(
        listener: TcpListener,
        db: DatabaseConnection,
        config: sluice_control::ControlConfig,
    ) -> ControlServer {
        let plane = sluice_control::ControlPlane::new(db, config).await.unwrap();
        let shutdown = CancellationToken::new();
        let serving = sluice::server::serve_control(listener, plane, shutdown.clone());
        let server = tokio::spawn(async move {
            let _ = serving.await;
        });
        ControlServer { shutdown, server }
    }

    /// Stops serving and waits until the server is done.
    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.server.await;
    }
}

/// A running control plane on `127.0.0.1:0` over a fresh database.
pub struct ControlHarness {
    /// Where it listens.
    pub addr: SocketAddr,
    /// A connection to its database, for asserting what was (not) stored.
    pub db: DatabaseConnection,
    database: TestDatabase,
    server: ControlServer,
}

impl ControlHarness {
    /// Starts the control plane on `backend`. `allow_http` lets subscriptions use
    /// `http://` URLs (a local receiver); `data_plane` is its DispatchService address.
    pub async fn start(
        backend: &Backend,
        allow_http: bool,
        data_plane: Option<String>,
    ) -> ControlHarness {
        let database = TestDatabase::create(backend).await;
        let db = database.open(Plane::Control).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = ControlServer::start(
            listener,
            db.clone(),
            control_config(allow_http, data_plane, crate::keyring()),
        )
        .await;
        ControlHarness {
            addr,
            db,
            database,
            server,
        }
    }

    /// A channel to the server.
    pub async fn channel(&self) -> Channel {
        crate::connect(self.addr).await
    }

    /// Clients of every public service, authenticated with `key` (none when `None`).
    pub async fn clients(&self, key: Option<&str>) -> Clients {
        Clients::connect(self.addr, key).await
    }

    /// Creates a workspace and a key for it; returns (workspace id, key).
    pub async fn workspace_with_key(&self, name: &str) -> (String, String) {
        Clients::workspace_with_key(self.addr, name).await
    }

    /// Stops the server and removes its database.
    pub async fn stop(self) {
        self.server.stop().await;
        let _ = self.db.close().await;
        self.database.drop_database().await;
    }
}
