//! The end-to-end harness: fresh databases (SQLite files, and PostgreSQL databases when
//! `SLUICE_TEST_DATABASE_URL` is set), the real control plane served on `127.0.0.1:0`, and
//! authenticated gRPC clients. Suites live in `tests/tests/`.

#![allow(clippy::unwrap_used)]

pub mod otlp;
pub mod planes;
pub mod process;

use std::net::SocketAddr;
use std::path::PathBuf;

use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use sluice_proto::control::v1 as pb;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// The environment variable naming a PostgreSQL server for tests (any database on it; each
/// test creates and drops its own).
pub const POSTGRES_ENV: &str = "SLUICE_TEST_DATABASE_URL";

/// A database backend to run a suite on.
#[derive(Clone, Debug)]
pub enum Backend {
    /// A SQLite file in a fresh temporary directory.
    Sqlite,
    /// A fresh database on the PostgreSQL server at this URL.
    Postgres(String),
}

/// The backends available here: SQLite always, PostgreSQL when `SLUICE_TEST_DATABASE_URL`
/// is set. Says so, visibly, when PostgreSQL is skipped.
pub fn backends() -> Vec<Backend> {
    let mut all = vec![Backend::Sqlite];
    match std::env::var(POSTGRES_ENV) {
        Ok(url) if !url.is_empty() => all.push(Backend::Postgres(url)),
        // Written to stderr directly, not with `eprintln!`, which the test runner captures
        // and hides for passing tests: a skip must be seen.
        _ => {
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPING the PostgreSQL run of this test: {POSTGRES_ENV} is not set"
            );
        }
    }
    all
}

/// A database made for one test, removed by `drop_database`.
pub struct TestDatabase {
    /// The URL to open.
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Dir(PathBuf),
    Postgres { server_url: String, name: String },
}

fn unique_name() -> String {
    sluice_core::ids::new_id(sluice_core::ids::IdKind::Message).replace("msg_", "sluice_t_")
}

impl TestDatabase {
    /// A fresh, empty database on `backend`.
    pub async fn create(backend: &Backend) -> TestDatabase {
        match backend {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(unique_name());
                std::fs::create_dir_all(&dir).unwrap();
                TestDatabase {
                    url: format!("sqlite://{}?mode=rwc", dir.join("test.db").display()),
                    cleanup: Cleanup::Dir(dir),
                }
            }
            Backend::Postgres(server_url) => {
                let name = unique_name();
                let admin = Database::connect(server_url.as_str()).await.unwrap();
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .unwrap();
                admin.close().await.unwrap();
                let mut url = url::Url::parse(server_url).unwrap();
                url.set_path(&format!("/{name}"));
                TestDatabase {
                    url: url.to_string(),
                    cleanup: Cleanup::Postgres {
                        server_url: server_url.clone(),
                        name,
                    },
                }
            }
        }
    }

    /// Removes the database.
    pub async fn drop_database(self) {
        match self.cleanup {
            Cleanup::Dir(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Postgres { server_url, name } => {
                if let Ok(admin) = Database::connect(server_url.as_str()).await {
                    let _ = admin
                        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                    let _ = admin.close().await;
                }
            }
        }
    }
}

/// The admin key every harness uses.
pub const ADMIN_KEY: &str = "sk_test_admin_key_0123456789";
/// The internal token every harness uses.
pub const INTERNAL_TOKEN: &str = "it_test_internal_token_0123456789";

/// A running control plane on `127.0.0.1:0` over a fresh database.
pub struct ControlHarness {
    /// Where it listens.
    pub addr: SocketAddr,
    /// A connection to its database, for asserting what was (not) stored.
    pub db: DatabaseConnection,
    database: TestDatabase,
    shutdown: CancellationToken,
    server: JoinHandle<anyhow::Result<()>>,
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
        let db = sluice_store::open(&database.url, sluice_store::Plane::Control)
            .await
            .unwrap();
        let plane = sluice_control::ControlPlane::new(
            db.clone(),
            sluice_control::ControlConfig {
                admin_key: ADMIN_KEY.into(),
                internal_token: INTERNAL_TOKEN.into(),
                allow_http,
                data_plane_endpoint: data_plane,
            },
        )
        .await
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(sluice::server::serve_control(
            listener,
            plane,
            shutdown.clone(),
        ));
        ControlHarness {
            addr,
            db,
            database,
            shutdown,
            server,
        }
    }

    /// A channel to the server.
    pub async fn channel(&self) -> Channel {
        connect(self.addr).await
    }

    /// Clients of every public service, authenticated with `key` (none when `None`).
    pub async fn clients(&self, key: Option<&str>) -> Clients {
        Clients::new(self.channel().await, key)
    }

    /// Creates a workspace and a key for it; returns (workspace id, key).
    pub async fn workspace_with_key(&self, name: &str) -> (String, String) {
        create_workspace_with_key(self.clients(Some(ADMIN_KEY)).await, name).await
    }

    /// Stops the server and removes its database.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.server.await;
        let _ = self.db.close().await;
        self.database.drop_database().await;
    }
}

/// An interceptor adding `authorization: Bearer <key>`.
#[derive(Clone)]
pub struct Bearer(pub Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// A plain-text gRPC channel to `addr`, connected.
pub async fn connect(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// An ingest client of the data plane at `addr`, publishing with `key`.
pub async fn ingest_client(
    addr: SocketAddr,
    key: &str,
) -> sluice_proto::data::v1::ingest_service_client::IngestServiceClient<Intercepted> {
    sluice_proto::data::v1::ingest_service_client::IngestServiceClient::with_interceptor(
        connect(addr).await,
        Bearer(Some(format!("Bearer {key}").parse().unwrap())),
    )
}

/// A channel with the bearer interceptor.
pub type Intercepted = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

/// Clients of the control plane's public services.
pub struct Clients {
    /// WorkspaceService.
    pub workspaces: pb::workspace_service_client::WorkspaceServiceClient<Intercepted>,
    /// EventTypeService.
    pub event_types: pb::event_type_service_client::EventTypeServiceClient<Intercepted>,
    /// SubscriptionService.
    pub subscriptions: pb::subscription_service_client::SubscriptionServiceClient<Intercepted>,
    /// DeliveryService.
    pub deliveries: pb::delivery_service_client::DeliveryServiceClient<Intercepted>,
}

impl Clients {
    /// Clients over `channel` sending `key`.
    pub fn new(channel: Channel, key: Option<&str>) -> Clients {
        let bearer = Bearer(key.map(|k| format!("Bearer {k}").parse().unwrap()));
        Clients {
            workspaces: pb::workspace_service_client::WorkspaceServiceClient::with_interceptor(
                channel.clone(),
                bearer.clone(),
            ),
            event_types: pb::event_type_service_client::EventTypeServiceClient::with_interceptor(
                channel.clone(),
                bearer.clone(),
            ),
            subscriptions:
                pb::subscription_service_client::SubscriptionServiceClient::with_interceptor(
                    channel.clone(),
                    bearer.clone(),
                ),
            deliveries: pb::delivery_service_client::DeliveryServiceClient::with_interceptor(
                channel, bearer,
            ),
        }
    }
}

/// The field violations of an INVALID_ARGUMENT status, as (field, description).
pub fn field_violations(status: &tonic::Status) -> Vec<(String, String)> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|b| {
            b.field_violations
                .into_iter()
                .map(|v| (v.field, v.description))
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts `status` is INVALID_ARGUMENT naming `field` among its violations.
pub fn assert_invalid(status: &tonic::Status, field: &str) {
    assert_eq!(
        status.code(),
        tonic::Code::InvalidArgument,
        "expected INVALID_ARGUMENT, got {status:?}"
    );
    let violations = field_violations(status);
    assert!(
        violations.iter().any(|(f, _)| f == field),
        "expected a violation of {field:?}, got {violations:?}"
    );
}

/// Counts the rows of `table`.
pub async fn count_rows(db: &DatabaseConnection, table: &str) -> i64 {
    use sea_orm::{FromQueryResult, Statement};
    #[derive(FromQueryResult)]
    struct Count {
        n: i64,
    }
    let backend = db.get_database_backend();
    Count::find_by_statement(Statement::from_string(
        backend,
        format!("SELECT COUNT(*) AS n FROM {table}"),
    ))
    .one(db)
    .await
    .unwrap()
    .map(|c| c.n)
    .unwrap_or(0)
}

/// Creates a workspace and a key for it with admin clients; returns (workspace id, key).
pub async fn create_workspace_with_key(mut admin: Clients, name: &str) -> (String, String) {
    let ws = admin
        .workspaces
        .create_workspace(pb::CreateWorkspaceRequest {
            workspace: Some(pb::Workspace {
                display_name: name.into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .workspace
        .unwrap();
    let key = admin
        .workspaces
        .create_api_key(pb::CreateApiKeyRequest {
            workspace_id: ws.id.clone(),
            display_name: "tests".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .key;
    (ws.id, key)
}
