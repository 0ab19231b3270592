//! Both planes together over fresh databases, on `127.0.0.1:0`, wired to each other the way
//! `sluice control` and `sluice data` are in production, plus a recording HTTP receiver.
//! The control plane can be stopped and restarted on the same address and database, to
//! test that the data plane keeps delivering without it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use sea_orm::DatabaseConnection;
use sluice_proto::data::v1 as dpb;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{ADMIN_KEY, Backend, Clients, INTERNAL_TOKEN, Intercepted, TestDatabase};

/// Knobs of a test deployment.
#[derive(Clone, Debug)]
pub struct PlaneOptions {
    /// The retry schedule (short in tests).
    pub retry_schedule: String,
    /// Total timeout of one attempt.
    pub request_timeout: Duration,
    /// Deliver to loopback receivers (the egress guard refuses them otherwise).
    pub allow_private: bool,
    /// Disable a subscription after this many failed attempts in a row.
    pub disable_after_failed_attempts: Option<u32>,
}

impl Default for PlaneOptions {
    fn default() -> Self {
        PlaneOptions {
            retry_schedule: "0s,20ms,20ms,20ms,20ms".into(),
            request_timeout: Duration::from_secs(5),
            allow_private: true,
            disable_after_failed_attempts: None,
        }
    }
}

/// A running control plane and data plane.
pub struct Planes {
    /// The control plane's address.
    pub control_addr: SocketAddr,
    /// The data plane's address.
    pub data_addr: SocketAddr,
    /// The control plane's database, for assertions.
    pub control_db: DatabaseConnection,
    /// The data plane's database, for assertions.
    pub data_db: DatabaseConnection,
    control_database: Option<TestDatabase>,
    data_database: Option<TestDatabase>,
    control: Option<(CancellationToken, JoinHandle<anyhow::Result<()>>)>,
    data: Option<(CancellationToken, JoinHandle<anyhow::Result<()>>)>,
    /// The data plane, for waiting on its config revision.
    pub data_plane: sluice_data::DataPlane,
}

async fn listener() -> (tokio::net::TcpListener, SocketAddr) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

fn control_plane_config(data_addr: SocketAddr) -> sluice_control::ControlConfig {
    sluice_control::ControlConfig {
        admin_key: ADMIN_KEY.into(),
        internal_token: INTERNAL_TOKEN.into(),
        allow_http: true,
        data_plane_endpoint: Some(format!("http://{data_addr}")),
    }
}

impl Planes {
    /// Starts both planes on `backend` (each with its own fresh database).
    pub async fn start(backend: &Backend, options: PlaneOptions) -> Planes {
        let control_database = TestDatabase::create(backend).await;
        let data_database = TestDatabase::create(backend).await;
        let control_db = sluice_store::open(&control_database.url, sluice_store::Plane::Control)
            .await
            .unwrap();
        let data_db = sluice_store::open(&data_database.url, sluice_store::Plane::Data)
            .await
            .unwrap();
        let (control_listener, control_addr) = listener().await;
        let (data_listener, data_addr) = listener().await;

        let control_plane =
            sluice_control::ControlPlane::new(control_db.clone(), control_plane_config(data_addr))
                .await
                .unwrap();
        let control_shutdown = CancellationToken::new();
        let control_server = tokio::spawn(sluice::server::serve_control(
            control_listener,
            control_plane,
            control_shutdown.clone(),
        ));

        let config = sluice_data::DataConfig {
            internal_token: INTERNAL_TOKEN.into(),
            control_endpoint: format!("http://{control_addr}"),
            retry: sluice_core::retry::RetrySchedule::parse(&options.retry_schedule).unwrap(),
            retry_jitter: 0.0,
            sender: sluice_delivery::SenderConfig {
                allow_http: true,
                allow_private: options.allow_private,
                request_timeout: options.request_timeout,
                connect_timeout: Duration::from_secs(2),
                ..Default::default()
            },
            disable_after_failed_attempts: options.disable_after_failed_attempts,
            shutdown_grace: Duration::from_secs(2),
            ..Default::default()
        };
        let data_shutdown = CancellationToken::new();
        let data_plane =
            sluice_data::DataPlane::start(data_db.clone(), config, data_shutdown.clone())
                .await
                .unwrap();
        let server_plane = data_plane.clone();
        let server_shutdown = data_shutdown.clone();
        let data_server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(server_plane.ingest_service())
                .add_service(server_plane.dispatch_service())
                .serve_with_incoming_shutdown(
                    sluice::server::incoming(data_listener),
                    server_shutdown.cancelled_owned(),
                )
                .await?;
            server_plane.drained().await;
            Ok(())
        });
        Planes {
            control_addr,
            data_addr,
            control_db,
            data_db,
            control_database: Some(control_database),
            data_database: Some(data_database),
            control: Some((control_shutdown, control_server)),
            data: Some((data_shutdown, data_server)),
            data_plane,
        }
    }

    /// Control-plane clients with `key`.
    pub async fn clients(&self, key: Option<&str>) -> Clients {
        Clients::new(crate::connect(self.control_addr).await, key)
    }

    /// An ingest client publishing with `key`.
    pub async fn publisher(
        &self,
        key: &str,
    ) -> dpb::ingest_service_client::IngestServiceClient<Intercepted> {
        crate::ingest_client(self.data_addr, key).await
    }

    /// Creates a workspace and a key for it; returns (workspace id, key).
    pub async fn workspace_with_key(&self, name: &str) -> (String, String) {
        crate::create_workspace_with_key(self.clients(Some(ADMIN_KEY)).await, name).await
    }

    /// Waits until the data plane has applied the control plane's latest config revision.
    pub async fn config_synced(&self) {
        let latest = crate::count_rows(&self.control_db, "config_changes").await as u64;
        let mut revision = self.data_plane.config_revision();
        tokio::time::timeout(Duration::from_secs(10), revision.wait_for(|r| *r >= latest))
            .await
            .expect("the data plane did not catch up with the control plane's config in 10 s")
            .unwrap();
    }

    /// Stops the control plane (its database stays).
    pub async fn stop_control(&mut self) {
        if let Some((shutdown, server)) = self.control.take() {
            shutdown.cancel();
            let _ = server.await;
        }
    }

    /// Starts the control plane again on the same address and database.
    pub async fn restart_control(&mut self) {
        assert!(self.control.is_none(), "stop_control first");
        let listener = tokio::net::TcpListener::bind(self.control_addr)
            .await
            .unwrap();
        let plane = sluice_control::ControlPlane::new(
            self.control_db.clone(),
            control_plane_config(self.data_addr),
        )
        .await
        .unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(sluice::server::serve_control(
            listener,
            plane,
            shutdown.clone(),
        ));
        self.control = Some((shutdown, server));
    }

    /// Stops both planes and removes their databases.
    pub async fn stop(mut self) {
        if let Some((shutdown, server)) = self.data.take() {
            shutdown.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
        }
        self.stop_control().await;
        let _ = self.control_db.clone().close().await;
        let _ = self.data_db.clone().close().await;
        if let Some(d) = self.control_database.take() {
            d.drop_database().await;
        }
        if let Some(d) = self.data_database.take() {
            d.drop_database().await;
        }
    }
}

/// What a receiver does with a request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Answer with this status.
    Status(u16),
    /// Answer 429/503-style with a `Retry-After` of this many seconds.
    RetryAfter(u16, u64),
    /// Redirect to this location with a 302.
    Redirect(String),
    /// Never answer.
    Hang,
    /// Answer this status after this many milliseconds.
    Delayed(u16, u64),
    /// Answer this status with this body.
    Body(u16, &'static [u8]),
}

/// One request a receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    /// The request method.
    pub method: axum::http::Method,
    /// The request path.
    pub path: String,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
    /// When it arrived.
    pub at: Instant,
}

impl Received {
    /// A header as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

struct ReceiverState {
    script: Mutex<std::collections::VecDeque<Reply>>,
    default: Reply,
    received: Mutex<Vec<Received>>,
    arrived: Notify,
}

/// A real HTTP receiver on `127.0.0.1:0` that records every request and answers from a
/// script (then the default).
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<ReceiverState>,
    server: JoinHandle<()>,
}

impl Receiver {
    /// A receiver answering `script` in order, then `default`.
    pub async fn start(script: Vec<Reply>, default: Reply) -> Receiver {
        let state = Arc::new(ReceiverState {
            script: Mutex::new(script.into()),
            default,
            received: Mutex::new(Vec::new()),
            arrived: Notify::new(),
        });
        let app = Router::new().fallback(receive).with_state(state.clone());
        let (listener, addr) = listener().await;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            addr,
            state,
            server,
        }
    }

    /// A receiver that always answers 200.
    pub async fn ok() -> Receiver {
        Receiver::start(Vec::new(), Reply::Status(200)).await
    }

    /// The URL of `path` on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived (panics after `timeout`).
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.state.arrived.notified();
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "expected {n} requests, got {} within {timeout:?}: {got:?}",
                got.len()
            );
            let _ = tokio::time::timeout(left, notified).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let reply = state
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| state.default.clone());
    state.received.lock().unwrap().push(Received {
        method,
        path: uri.path().to_owned(),
        headers,
        body,
        at: Instant::now(),
    });
    state.arrived.notify_waiters();
    match reply {
        Reply::Status(code) => StatusCode::from_u16(code).unwrap().into_response(),
        Reply::RetryAfter(code, secs) => (
            StatusCode::from_u16(code).unwrap(),
            [("retry-after", secs.to_string())],
        )
            .into_response(),
        Reply::Redirect(location) => (StatusCode::FOUND, [("location", location)]).into_response(),
        Reply::Delayed(code, ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            StatusCode::from_u16(code).unwrap().into_response()
        }
        Reply::Body(code, body) => (StatusCode::from_u16(code).unwrap(), body).into_response(),
        Reply::Hang => {
            std::future::pending::<()>().await;
            StatusCode::OK.into_response()
        }
    }
}
