//! The test harness of the data plane: a fresh database per test (SQLite in a temp dir, and
//! PostgreSQL when `SLUICE_TEST_DATABASE_URL` is set), a real HTTP receiver that records
//! what it got and answers as scripted, a small control-plane peer that serves a fixed
//! configuration and records the outcome batches it acks, and the real data plane behind a
//! real tonic server on 127.0.0.1:0.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use futures::{Stream, StreamExt as _};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use sluice_core::apikey::{generate_api_key, hash_api_key};
use sluice_core::retry::RetrySchedule;
use sluice_core::signing::SigningSecret;
use sluice_data::{DataConfig, DataPlane};
use sluice_delivery::SenderConfig;
use sluice_proto::control::v1::data_plane_service_server::{
    DataPlaneService, DataPlaneServiceServer,
};
use sluice_proto::control::v1::{
    AttemptOutcome, ConfigApiKey, ConfigSecret, ConfigSubscription, DestinationType, MessageRecord,
    ReportOutcomesRequest, ReportOutcomesResponse, SubscriptionDisabled, WatchConfigRequest,
    WatchConfigResponse,
};
use sluice_proto::data::v1::dispatch_service_client::DispatchServiceClient;
use sluice_proto::data::v1::ingest_service_client::IngestServiceClient;
use sluice_store::Plane as StorePlane;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::{BroadcastStream, ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status, Streaming};

/// The internal token every test uses between the planes.
pub const TOKEN: &str = "test-internal-token";
/// How long a test waits for anything before failing (a hang is a failure, not a pass).
pub const PATIENCE: Duration = Duration::from_secs(20);

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        chrono::Utc::now().timestamp_micros()
    )
}

/// A database backend a suite runs on.
#[derive(Clone, Debug)]
pub enum Backend {
    Sqlite,
    Postgres(String),
}

/// SQLite always; PostgreSQL too when `SLUICE_TEST_DATABASE_URL` names a server.
pub fn backends() -> Vec<Backend> {
    let mut backends = vec![Backend::Sqlite];
    match std::env::var("SLUICE_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => backends.push(Backend::Postgres(url)),
        // Straight to stderr: `eprintln!` is captured, and hidden for passing tests.
        _ => {
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPING the PostgreSQL run of this test: SLUICE_TEST_DATABASE_URL is not set"
            );
        }
    }
    backends
}

/// A fresh, migrated database for one test.
pub struct TestDb {
    pub url: String,
    backend: Backend,
    dir: Option<std::path::PathBuf>,
    postgres_name: Option<String>,
}

impl TestDb {
    pub async fn new(backend: &Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(unique("sluice-data-test"));
                std::fs::create_dir_all(&dir).unwrap();
                let url = sluice_store::sqlite_url(&dir, StorePlane::Data);
                TestDb {
                    url,
                    backend: backend.clone(),
                    dir: Some(dir),
                    postgres_name: None,
                }
            }
            Backend::Postgres(admin_url) => {
                let name = unique("sluice_data_test");
                let admin = Database::connect(admin_url.as_str()).await.unwrap();
                admin
                    .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
                    .await
                    .unwrap();
                admin.close().await.unwrap();
                let mut url = url::Url::parse(admin_url).unwrap();
                url.set_path(&format!("/{name}"));
                TestDb {
                    url: url.to_string(),
                    backend: backend.clone(),
                    dir: None,
                    postgres_name: Some(name),
                }
            }
        }
    }

    /// Opens (and migrates) the database, as the binary does.
    pub async fn connect(&self) -> DatabaseConnection {
        sluice_store::open(&self.url, StorePlane::Data)
            .await
            .unwrap()
    }

    pub async fn cleanup(self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let (Backend::Postgres(admin_url), Some(name)) = (&self.backend, &self.postgres_name)
            && let Ok(admin) = Database::connect(admin_url.as_str()).await
        {
            let _ = admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .await;
            let _ = admin.close().await;
        }
    }
}

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// Verifies the Standard Webhooks signature as a receiver would.
    pub fn verify(&self, secret: &SigningSecret) -> Result<(), sluice_core::signing::VerifyError> {
        sluice_core::signing::verify(
            secret,
            self.header("webhook-id"),
            self.header("webhook-timestamp"),
            self.header("webhook-signature"),
            &self.body,
            chrono::Utc::now().timestamp(),
            300,
        )
    }
}

#[derive(Clone)]
struct ReceiverState {
    /// Statuses to answer, in order; 200 once empty.
    script: Arc<Mutex<VecDeque<u16>>>,
    tx: mpsc::UnboundedSender<Received>,
}

/// A real HTTP receiver on 127.0.0.1:0.
pub struct Receiver {
    pub addr: SocketAddr,
    script: Arc<Mutex<VecDeque<u16>>>,
    rx: mpsc::UnboundedReceiver<Received>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let script = Arc::new(Mutex::new(VecDeque::new()));
        let state = ReceiverState {
            script: Arc::clone(&script),
            tx,
        };
        let app = axum::Router::new()
            .fallback(axum::routing::post(receive))
            .with_state(state);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, script, rx }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The next requests get these statuses, in order.
    pub fn respond(&self, statuses: &[u16]) {
        self.script.lock().unwrap().extend(statuses.iter().copied());
    }

    pub async fn next(&mut self) -> Received {
        tokio::time::timeout(PATIENCE, self.rx.recv())
            .await
            .expect("the receiver got nothing in time")
            .expect("receiver stopped")
    }

    /// Whatever arrived already, without waiting.
    pub fn drain(&mut self) -> Vec<Received> {
        let mut out = Vec::new();
        while let Ok(r) = self.rx.try_recv() {
            out.push(r);
        }
        out
    }
}

/// A local address nothing listens on (yet).
pub async fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// An endpoint that accepts connections and never answers: the slowest receiver there is.
/// Returns its URL; connections stay open until the test ends.
pub async fn black_hole() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    format!("http://{addr}/hook")
}

async fn receive(
    State(state): State<ReceiverState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let status = state.script.lock().unwrap().pop_front().unwrap_or(200);
    let _ = state.tx.send(Received {
        path: uri.path().to_owned(),
        headers,
        body,
    });
    StatusCode::from_u16(status).unwrap()
}

/// What the control-plane peer was told, flattened.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Report {
    Message(MessageRecord),
    Attempt(AttemptOutcome),
    Disabled(SubscriptionDisabled),
}

struct ControlState {
    /// Sent to every new watcher, in order (a reset snapshot followed by changes).
    pieces: Mutex<Vec<WatchConfigResponse>>,
    changes: broadcast::Sender<WatchConfigResponse>,
    reports: mpsc::UnboundedSender<ReportOutcomesRequest>,
    /// Batches still to take in without an ack, ending their stream, as when a connection
    /// breaks after the control plane stored a batch but before its ack arrived.
    lose_acks: AtomicUsize,
}

/// A control-plane peer: serves a configuration and records outcome batches.
pub struct FakeControl {
    pub addr: SocketAddr,
    state: Arc<ControlState>,
    reports: mpsc::UnboundedReceiver<ReportOutcomesRequest>,
    seen: VecDeque<Report>,
    /// Attempt and message ids already taken in, so a resent batch is ignored the way the
    /// real control plane ignores it, each with the `first_send` of the batch it first
    /// came in.
    ids: std::collections::HashMap<String, bool>,
    /// Ids that came again, each with the `first_send` of the batch that repeated it.
    repeats: Vec<(String, bool)>,
    shutdown: CancellationToken,
}

#[derive(Clone)]
struct ControlApi(Arc<ControlState>);

fn check_token<T>(request: &Request<T>) -> Result<(), Status> {
    let expected = format!("Bearer {TOKEN}");
    match request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
    {
        Some(value) if value == expected => Ok(()),
        _ => Err(Status::unauthenticated("bad internal token")),
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl DataPlaneService for ControlApi {
    type WatchConfigStream = BoxStream<WatchConfigResponse>;

    async fn watch_config(
        &self,
        request: Request<WatchConfigRequest>,
    ) -> Result<Response<Self::WatchConfigStream>, Status> {
        check_token(&request)?;
        // Subscribe before copying the pieces so no change falls between the two.
        let changes = BroadcastStream::new(self.0.changes.subscribe())
            .filter_map(|c| async move { c.ok().map(Ok) });
        let pieces: Vec<Result<WatchConfigResponse, Status>> = self
            .0
            .pieces
            .lock()
            .unwrap()
            .iter()
            .cloned()
            .map(Ok)
            .collect();
        Ok(Response::new(Box::pin(
            tokio_stream::iter(pieces).chain(changes),
        )))
    }

    type ReportOutcomesStream = BoxStream<ReportOutcomesResponse>;

    async fn report_outcomes(
        &self,
        request: Request<Streaming<ReportOutcomesRequest>>,
    ) -> Result<Response<Self::ReportOutcomesStream>, Status> {
        check_token(&request)?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let state = Arc::clone(&self.0);
        tokio::spawn(async move {
            while let Ok(Some(batch)) = inbound.message().await {
                let batch_id = batch.batch_id;
                let _ = state.reports.send(batch);
                let lost = state
                    .lose_acks
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if lost {
                    return;
                }
                if tx
                    .send(Ok(ReportOutcomesResponse { batch_id }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

impl FakeControl {
    /// Serves `snapshot` (pieces of a reset snapshot, the last with a revision).
    pub async fn start(snapshot: Vec<WatchConfigResponse>) -> FakeControl {
        FakeControl::start_on("127.0.0.1:0".parse().unwrap(), snapshot).await
    }

    /// Serves on a given address, to come up where a data plane already looks for it.
    pub async fn start_on(addr: SocketAddr, snapshot: Vec<WatchConfigResponse>) -> FakeControl {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let state = Arc::new(ControlState {
            pieces: Mutex::new(snapshot),
            changes: broadcast::channel(64).0,
            reports: reports_tx,
            lose_acks: AtomicUsize::new(0),
        });
        let shutdown = CancellationToken::new();
        let server = Server::builder()
            .add_service(DataPlaneServiceServer::new(ControlApi(Arc::clone(&state))))
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(listener),
                shutdown.clone().cancelled_owned(),
            );
        tokio::spawn(server);
        FakeControl {
            addr,
            state,
            reports,
            seen: VecDeque::new(),
            ids: std::collections::HashMap::new(),
            repeats: Vec::new(),
            shutdown,
        }
    }

    /// The next `n` batches are taken in (stored) but never acked: each ends its stream.
    pub fn lose_next_acks(&self, n: usize) {
        self.state.lose_acks.store(n, Ordering::SeqCst);
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends a change to live watchers and to later ones.
    pub fn push_change(&self, piece: WatchConfigResponse) {
        self.state.pieces.lock().unwrap().push(piece.clone());
        let _ = self.state.changes.send(piece);
    }

    /// The next report (in arrival order) that `pick` accepts; others stay queued.
    pub async fn next_report<T>(&mut self, mut pick: impl FnMut(&Report) -> Option<T>) -> T {
        if let Some(i) = self.seen.iter().position(|r| pick(r).is_some()) {
            let report = self.seen.remove(i).unwrap();
            return pick(&report).unwrap();
        }
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(value) = self.take_in_batch(deadline, &mut pick).await {
                return value;
            }
        }
    }

    /// Takes in the next batch: the first report `pick` accepts is returned, the others
    /// are queued, and ids taken in before are noted as repeats.
    async fn take_in_batch<T>(
        &mut self,
        deadline: tokio::time::Instant,
        pick: &mut impl FnMut(&Report) -> Option<T>,
    ) -> Option<T> {
        let batch = tokio::time::timeout_at(deadline, self.reports.recv())
            .await
            .expect("the control plane got no matching report in time")
            .expect("control plane stopped");
        let mut found = None;
        // A batch the data plane says it never sent before must not repeat an attempt:
        // the real control plane stores its attempts without looking for repeats. (A
        // message record may come again in a new batch, after a restart recovers its
        // fan-out: storing it is idempotent and counts nothing.)
        let first_send = batch.first_send;
        let reports = batch
            .messages
            .into_iter()
            .map(Report::Message)
            .chain(batch.attempts.into_iter().map(Report::Attempt))
            .chain(
                batch
                    .disabled_subscriptions
                    .into_iter()
                    .map(Report::Disabled),
            );
        for report in reports {
            let id = match &report {
                Report::Message(m) => format!("message {}", m.id),
                Report::Attempt(a) => format!(
                    "attempt {}",
                    a.attempt
                        .as_ref()
                        .map(|a| a.id.as_str())
                        .unwrap_or_default()
                ),
                Report::Disabled(d) => {
                    format!("disabled {} {:?}", d.subscription_id, d.disable_time)
                }
            };
            if self.ids.contains_key(&id) {
                assert!(
                    !(first_send && matches!(report, Report::Attempt(_))),
                    "a batch marked first_send repeated {id}"
                );
                self.repeats.push((id, first_send));
                continue;
            }
            self.ids.insert(id, first_send);
            if found.is_none()
                && let Some(value) = pick(&report)
            {
                found = Some(value);
                continue;
            }
            self.seen.push_back(report);
        }
        found
    }

    /// The next attempt outcome for `message_id`.
    pub async fn next_attempt(&mut self, message_id: &str) -> AttemptOutcome {
        self.next_report(|r| match r {
            Report::Attempt(a)
                if a.attempt
                    .as_ref()
                    .is_some_and(|a| a.message_id == message_id) =>
            {
                Some(a.clone())
            }
            _ => None,
        })
        .await
    }

    /// The `first_send` of the batch attempt `attempt_id` first came in (`None` if it has
    /// not come yet).
    pub fn first_send_of_attempt(&self, attempt_id: &str) -> Option<bool> {
        self.ids.get(&format!("attempt {attempt_id}")).copied()
    }

    /// Waits until attempt `attempt_id`, already taken in, comes again in another batch;
    /// returns that batch's `first_send`. Reports arriving meanwhile stay queued.
    pub async fn repeat_of_attempt(&mut self, attempt_id: &str) -> bool {
        let id = format!("attempt {attempt_id}");
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some((_, first_send)) = self.repeats.iter().find(|(r, _)| *r == id) {
                return *first_send;
            }
            self.take_in_batch(deadline, &mut |_| None::<()>).await;
        }
    }

    pub async fn next_message(&mut self, message_id: &str) -> MessageRecord {
        self.next_report(|r| match r {
            Report::Message(m) if m.id == message_id => Some(m.clone()),
            _ => None,
        })
        .await
    }

    pub async fn next_disabled(&mut self) -> SubscriptionDisabled {
        self.next_report(|r| match r {
            Report::Disabled(d) => Some(d.clone()),
            _ => None,
        })
        .await
    }

    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}

/// A workspace with one API key, as the control plane would hand it out.
pub struct Workspace {
    pub id: String,
    pub key: String,
    pub key_config: ConfigApiKey,
}

impl Workspace {
    pub fn new(id: &str) -> Workspace {
        let key = generate_api_key();
        Workspace {
            id: id.to_owned(),
            key_config: ConfigApiKey {
                id: format!("key_{id}"),
                workspace_id: id.to_owned(),
                key_hash: hash_api_key(&key),
            },
            key,
        }
    }
}

/// A webhook subscription to `url` for every event, and its secret.
pub fn subscription(
    id: &str,
    workspace_id: &str,
    url: &str,
) -> (ConfigSubscription, SigningSecret) {
    let secret = SigningSecret::generate();
    let config = ConfigSubscription {
        id: id.to_owned(),
        workspace_id: workspace_id.to_owned(),
        url: url.to_owned(),
        destination_type: DestinationType::Webhook as i32,
        filters: vec!["*".to_owned()],
        headers: [("x-custom".to_owned(), "yes".to_owned())].into(),
        rate_limit_per_second: 0,
        enabled: true,
        secrets: vec![ConfigSecret {
            secret: secret.to_whsec(),
            expire_time: None,
        }],
    };
    (config, secret)
}

/// A one-piece snapshot at revision 1.
pub fn snapshot(
    subscriptions: Vec<ConfigSubscription>,
    keys: Vec<ConfigApiKey>,
) -> Vec<WatchConfigResponse> {
    vec![WatchConfigResponse {
        reset: true,
        revision: 1,
        upserted_subscriptions: subscriptions,
        upserted_api_keys: keys,
        ..Default::default()
    }]
}

/// A data-plane configuration for tests: fast retries, plain HTTP to loopback allowed.
pub fn config(control: &FakeControl) -> DataConfig {
    DataConfig {
        internal_token: TOKEN.to_owned(),
        control_endpoint: control.endpoint(),
        retry: RetrySchedule::parse("0s,50ms,50ms").unwrap(),
        retry_jitter: 0.0,
        retry_after_min: Duration::from_millis(10),
        retry_after_max: Duration::from_secs(1),
        sender: SenderConfig {
            allow_http: true,
            allow_private: true,
            request_timeout: Duration::from_secs(5),
            ..SenderConfig::default()
        },
        shutdown_grace: Duration::from_secs(5),
        ..DataConfig::default()
    }
}

/// The most common set-up: workspace `wrk_1` with one subscription `sub_1` at `/hook` of a
/// fresh receiver that first answers `replies` (then 200), the fake control plane serving
/// them, and a data plane on `db` running `config` as `tweak` changes it, with the
/// subscription in effect.
pub struct OneHook {
    pub db: TestDb,
    pub receiver: Receiver,
    pub workspace: Workspace,
    pub secret: SigningSecret,
    pub control: FakeControl,
    /// What the plane was started with, to start it again.
    pub config: DataConfig,
    pub plane: RunningPlane,
}

impl OneHook {
    pub async fn start(
        backend: &Backend,
        replies: &[u16],
        tweak: impl FnOnce(&mut DataConfig),
    ) -> OneHook {
        let db = TestDb::new(backend).await;
        let receiver = Receiver::start().await;
        receiver.respond(replies);
        let workspace = Workspace::new("wrk_1");
        let (sub, secret) = subscription("sub_1", &workspace.id, &receiver.url("/hook"));
        let control =
            FakeControl::start(snapshot(vec![sub], vec![workspace.key_config.clone()])).await;
        let mut config = config(&control);
        tweak(&mut config);
        let plane = RunningPlane::start(db.connect().await, config.clone()).await;
        plane.wait_for_revision(1).await;
        OneHook {
            db,
            receiver,
            workspace,
            secret,
            control,
            config,
            plane,
        }
    }
}

/// The data plane behind a real tonic server on 127.0.0.1:0.
pub struct RunningPlane {
    pub plane: DataPlane,
    pub addr: SocketAddr,
    /// The data plane's own shutdown signal.
    pub shutdown: CancellationToken,
    /// The gRPC server's, separate so a test can watch the data plane refuse work.
    server_shutdown: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

impl RunningPlane {
    pub async fn start(db: DatabaseConnection, config: DataConfig) -> RunningPlane {
        let shutdown = CancellationToken::new();
        let plane = DataPlane::start(db, config, shutdown.clone())
            .await
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server_shutdown = CancellationToken::new();
        let server = Server::builder()
            .add_service(plane.ingest_service())
            .add_service(plane.dispatch_service())
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(listener),
                server_shutdown.clone().cancelled_owned(),
            );
        let server = tokio::spawn(async move {
            let _ = server.await;
        });
        RunningPlane {
            plane,
            addr,
            shutdown,
            server_shutdown,
            server,
        }
    }

    /// Waits until the configuration at `revision` (or later) is in effect.
    pub async fn wait_for_revision(&self, revision: u64) {
        let mut watch = self.plane.config_revision();
        tokio::time::timeout(PATIENCE, watch.wait_for(|r| *r >= revision))
            .await
            .expect("configuration not applied in time")
            .unwrap();
    }

    pub async fn ingest(&self) -> IngestServiceClient<Channel> {
        IngestServiceClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    pub async fn dispatch(&self) -> DispatchServiceClient<Channel> {
        DispatchServiceClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    /// Cancels shutdown and waits until the data plane drained.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.plane.drained())
            .await
            .expect("the data plane did not drain in time");
        self.server_shutdown.cancel();
        let _ = self.server.await;
    }
}

/// `message` with `authorization: Bearer <key>`.
pub fn authed<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

/// Counts the rows of a table.
pub async fn count(db: &DatabaseConnection, table: &str) -> i64 {
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            format!("SELECT COUNT(*) AS n FROM {table}"),
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get::<i64>("", "n").unwrap()
}
