//! Both planes together over fresh databases, on `127.0.0.1:0`, wired to each other the way
//! `sluice control` and `sluice data` are in production. The control plane can be stopped
//! and restarted on the same address and database, to test that the data plane keeps
//! delivering without it; the data plane can be stopped (drained) to look at what it left
//! in its tables.

use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use sea_orm::DatabaseConnection;
use sluice_core::sealing::Keyring;
use sluice_proto::data::v1 as dpb;
use sluice_store::Plane;
use tokio::net::TcpListener;

use crate::control::{ControlServer, control_config};
use crate::data::DataHarness;
use crate::{Backend, Clients, INTERNAL_TOKEN, Intercepted, TestDatabase, backends};

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
    /// The longest wait for either plane's database (`--store-timeout-ms`).
    pub store_timeout: Duration,
    /// The master keys both planes seal their stored secrets with.
    pub keyring: Keyring,
    /// Consecutive failures that open an endpoint's circuit breaker (0: never).
    pub circuit_breaker_failures: u32,
    /// How long an open breaker waits before its probe.
    pub circuit_breaker_cooldown: Duration,
    /// Messages a `WatchAttempts` stream may hold for a slow reader.
    pub attempt_watch_buffer: usize,
    /// How long a full `WatchAttempts` channel waits for its reader.
    pub attempt_watch_patience: Duration,
    /// Both planes' retention defaults and purge interval (`--retention` and friends).
    pub retention: sluice_core::retention::RetentionDefaults,
    /// Certificate authorities the sender trusts besides the system's (`--extra-ca-file`),
    /// e.g. a [`crate::tls::TestCa`]'s.
    pub extra_ca_pem: Option<Vec<u8>>,
    /// The most attempts in flight to one endpoint (`--endpoint-concurrency`).
    pub endpoint_concurrency: usize,
    /// Whether that limit adapts (`--adaptive-concurrency`).
    pub adaptive_concurrency: bool,
    /// Deliveries the data plane holds in memory at most (`--max-held-deliveries`).
    pub max_held_deliveries: usize,
    /// Events a second per workspace (`--workspace-publish-rate`, 0: no quota) and its
    /// burst (`--workspace-publish-burst`).
    pub workspace_publish_rate: u32,
    pub workspace_publish_burst: u32,
}

impl Default for PlaneOptions {
    fn default() -> Self {
        PlaneOptions {
            retry_schedule: "0s,20ms,20ms,20ms,20ms".into(),
            request_timeout: Duration::from_secs(5),
            allow_private: true,
            disable_after_failed_attempts: None,
            store_timeout: sluice_store::DEFAULT_STORE_TIMEOUT,
            keyring: crate::keyring(),
            circuit_breaker_failures: 10,
            circuit_breaker_cooldown: Duration::from_secs(30),
            attempt_watch_buffer: sluice_control::attempt_watch::DEFAULT_BUFFER,
            attempt_watch_patience: sluice_control::attempt_watch::DEFAULT_PATIENCE,
            retention: Default::default(),
            extra_ca_pem: None,
            endpoint_concurrency: 16,
            adaptive_concurrency: true,
            max_held_deliveries: sluice_data::DEFAULT_MAX_HELD_DELIVERIES,
            workspace_publish_rate: 0,
            workspace_publish_burst: 0,
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
    control_database: TestDatabase,
    data_database: TestDatabase,
    control: Option<ControlServer>,
    data: Option<DataHarness>,
    /// The data plane's configuration, to start it again.
    data_config: sluice_data::DataConfig,
    /// The control plane's `attempt_watch_buffer` and `_patience`, to start it again.
    attempt_watch: (usize, Duration),
    /// The control plane's retention defaults, to start it again.
    retention: sluice_core::retention::RetentionDefaults,
}

impl Planes {
    /// Starts both planes on `backend` (each with its own fresh database).
    pub async fn start(backend: &Backend, options: PlaneOptions) -> Planes {
        let control_database = TestDatabase::create(backend).await;
        let data_database = TestDatabase::create(backend).await;
        let store = sluice_store::StoreOptions {
            timeout: options.store_timeout,
        };
        let control_db = control_database.open_with(Plane::Control, &store).await;
        let data_db = data_database.open_with(Plane::Data, &store).await;
        let control_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let control_addr = control_listener.local_addr().unwrap();
        let data_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let data_addr = data_listener.local_addr().unwrap();
        let mut config = control_config(
            true,
            Some(format!("http://{data_addr}")),
            options.keyring.clone(),
        );
        config.attempt_watch_buffer = options.attempt_watch_buffer;
        config.attempt_watch_patience = options.attempt_watch_patience;
        config.retention = options.retention;
        let data_config = sluice_data::DataConfig {
            internal_token: INTERNAL_TOKEN.into(),
            control_endpoint: format!("http://{control_addr}"),
            retry: sluice_core::retry::RetrySchedule::parse(&options.retry_schedule).unwrap(),
            retry_jitter: 0.0,
            sender: sluice_delivery::SenderConfig {
                allow_http: true,
                allow_private: options.allow_private,
                request_timeout: options.request_timeout,
                connect_timeout: Duration::from_secs(2),
                extra_ca_pem: options.extra_ca_pem.clone(),
                ..Default::default()
            },
            disable_after_failed_attempts: options.disable_after_failed_attempts,
            endpoint_concurrency: options.endpoint_concurrency,
            adaptive_concurrency: options.adaptive_concurrency,
            max_held_deliveries: options.max_held_deliveries,
            workspace_publish_rate: options.workspace_publish_rate,
            workspace_publish_burst: options.workspace_publish_burst,
            circuit_breaker_failures: options.circuit_breaker_failures,
            circuit_breaker_cooldown: options.circuit_breaker_cooldown,
            shutdown_grace: Duration::from_secs(2),
            store_timeout: options.store_timeout,
            keyring: Some(options.keyring),
            retention: options.retention,
            ..Default::default()
        };
        // The control plane shows the data plane's flags as the server's level of the policy.
        config.policy_defaults = policy_defaults(&data_config);
        let control = ControlServer::start(control_listener, control_db.clone(), config).await;
        let config = data_config;
        let data = DataHarness::serve(data_listener, data_db.clone(), config.clone()).await;
        Planes {
            control_addr,
            data_addr,
            control_db,
            data_db,
            control_database,
            data_database,
            control: Some(control),
            data: Some(data),
            data_config: config,
            attempt_watch: (options.attempt_watch_buffer, options.attempt_watch_patience),
            retention: options.retention,
        }
    }

    /// The control plane's database (its URL; for SQLite, the file's directory is its own).
    pub fn control_database(&self) -> &TestDatabase {
        &self.control_database
    }

    /// The data plane's database.
    pub fn data_database(&self) -> &TestDatabase {
        &self.data_database
    }

    /// The master keys the planes run with.
    pub fn keyring(&self) -> &Keyring {
        self.data_config
            .keyring
            .as_ref()
            .expect("the planes always run with a keyring")
    }

    /// Control-plane clients with `key`.
    pub async fn clients(&self, key: Option<&str>) -> Clients {
        Clients::connect(self.control_addr, key).await
    }

    /// An ingest client publishing with `key`.
    pub async fn publisher(
        &self,
        key: &str,
    ) -> dpb::ingest_service_client::IngestServiceClient<Intercepted> {
        crate::clients::ingest_client(self.data_addr, key).await
    }

    /// Creates a workspace and a key for it; returns (workspace id, key).
    pub async fn workspace_with_key(&self, name: &str) -> (String, String) {
        Clients::workspace_with_key(self.control_addr, name).await
    }

    /// Waits until the data plane has applied the control plane's latest config revision.
    pub async fn config_synced(&self) {
        // The highest revision, not the row count: retention compacts old changes away.
        let latest = crate::database::max_revision(&self.control_db).await as u64;
        self.data
            .as_ref()
            .expect("the data plane is stopped")
            .wait_for_revision(latest)
            .await;
    }

    /// Another data-plane replica on the same database and with the same configuration, on
    /// its own address (PostgreSQL only: a SQLite file belongs to one process). The caller
    /// stops it.
    pub async fn data_replica(&self) -> DataHarness {
        let store = sluice_store::StoreOptions {
            timeout: self.data_config.store_timeout,
        };
        let db = self.data_database.open_with(Plane::Data, &store).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        DataHarness::serve(listener, db, self.data_config.clone()).await
    }

    /// The control plane's latest config revision.
    pub async fn latest_revision(&self) -> u64 {
        crate::database::max_revision(&self.control_db).await as u64
    }

    /// Stops the data plane and waits until it drained (its database stays).
    pub async fn stop_data(&mut self) {
        if let Some(data) = self.data.take() {
            data.stop().await;
        }
    }

    /// Stops the data plane and starts it again on the same address and database: it starts
    /// from the configuration copy it persisted (the control plane may be down).
    pub async fn restart_data(&mut self) {
        self.stop_data().await;
        let listener = TcpListener::bind(self.data_addr).await.unwrap();
        self.data = Some(
            DataHarness::serve(listener, self.data_db.clone(), self.data_config.clone()).await,
        );
    }

    /// Stops the control plane (its database stays).
    pub async fn stop_control(&mut self) {
        if let Some(control) = self.control.take() {
            control.stop().await;
        }
    }

    /// Starts the control plane again on the same address and database.
    pub async fn restart_control(&mut self) {
        assert!(self.control.is_none(), "stop_control first");
        let listener = TcpListener::bind(self.control_addr).await.unwrap();
        let mut config = control_config(
            true,
            Some(format!("http://{}", self.data_addr)),
            self.keyring().clone(),
        );
        config.attempt_watch_buffer = self.attempt_watch.0;
        config.attempt_watch_patience = self.attempt_watch.1;
        config.retention = self.retention;
        config.policy_defaults = policy_defaults(&self.data_config);
        self.control = Some(ControlServer::start(listener, self.control_db.clone(), config).await);
    }

    /// Stops both planes and starts them again, on the same addresses and databases, with
    /// `keyring` (after `sluice keys rotate`, say).
    pub async fn restart_with_keyring(&mut self, keyring: Keyring) {
        self.stop_data().await;
        self.stop_control().await;
        self.data_config.keyring = Some(keyring);
        self.restart_control().await;
        let listener = TcpListener::bind(self.data_addr).await.unwrap();
        self.data = Some(
            DataHarness::serve(listener, self.data_db.clone(), self.data_config.clone()).await,
        );
    }

    /// Stops both planes and removes their databases.
    pub async fn stop(mut self) {
        self.stop_data().await;
        self.stop_control().await;
        let _ = self.control_db.clone().close().await;
        let _ = self.data_db.clone().close().await;
        self.control_database.drop_database().await;
        self.data_database.drop_database().await;
    }
}

/// Runs `scenario` on each of [`backends`]: starts both planes over fresh databases with
/// `options`, runs it, and stops them (dropping the databases) whether it passed or not.
/// Every backend runs even after a failure, so a report says which backends fail; then the
/// first failure is raised again.
pub async fn on_each_backend(options: PlaneOptions, scenario: impl AsyncFn(&mut Planes)) {
    let mut failed = Vec::new();
    for backend in backends() {
        eprintln!("--- {}", backend.label());
        let mut planes = Planes::start(&backend, options.clone()).await;
        let outcome = CatchUnwind(Box::pin(scenario(&mut planes))).await;
        planes.stop().await;
        if let Err(panic) = outcome {
            failed.push((backend.label(), panic));
        }
    }
    let names: Vec<&str> = failed.iter().map(|(l, _)| *l).collect();
    if let Some((_, panic)) = failed.into_iter().next() {
        eprintln!("FAILED on {}", names.join(" and "));
        std::panic::resume_unwind(panic);
    }
}

/// A future that turns a panic while polling `F` into an `Err`, so a failed scenario still
/// lets its test stop the planes (and drop their databases) before failing.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = std::thread::Result<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

/// The server's level of the retry policy that a data plane with `config` applies.
fn policy_defaults(config: &sluice_data::DataConfig) -> sluice_core::policy::Defaults {
    sluice_core::policy::Defaults::new(
        &config.retry,
        config.sender.request_timeout,
        config.disable_after_failing_for,
    )
}
