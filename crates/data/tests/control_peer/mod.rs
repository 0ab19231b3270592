//! The data plane's suite's stand-in for the control plane: a real gRPC peer serving a
//! fixed configuration and recording the outcome batches it acks (and, on request, losing
//! acks), plus the configuration fixtures the suite builds from. Everything else the suite
//! stands on is the test kit's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use sluice_core::apikey::{generate_api_key, hash_api_key};
use sluice_core::retry::RetrySchedule;
use sluice_core::signing::SigningSecret;
use sluice_data::DataConfig;
use sluice_delivery::SenderConfig;
use sluice_proto::control::v1::data_plane_service_server::{
    DataPlaneService, DataPlaneServiceServer,
};
use sluice_proto::control::v1::{
    AttemptOutcome, ConfigApiKey, ConfigSecret, ConfigSubscription, DestinationType, MessageRecord,
    ReportOutcomesRequest, ReportOutcomesResponse, SubscriptionDisabled, WatchConfigRequest,
    WatchConfigResponse,
};
use sluice_store::Plane;
use sluice_testkit::data::DataHarness;
use sluice_testkit::receiver::{Receiver, Reply};
use sluice_testkit::{Backend, INTERNAL_TOKEN, TestDatabase, WAIT};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::{BroadcastStream, ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::{Request, Response, Status, Streaming};

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
    let expected = format!("Bearer {INTERNAL_TOKEN}");
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
        let deadline = tokio::time::Instant::now() + WAIT;
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
        let deadline = tokio::time::Instant::now() + WAIT;
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
        ..Default::default()
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
        internal_token: INTERNAL_TOKEN.to_owned(),
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
        keyring: Some(sluice_testkit::keyring()),
        ..DataConfig::default()
    }
}

/// The most common set-up: workspace `wrk_1` with one subscription `sub_1` at `/hook` of a
/// fresh receiver that first answers `replies` (then 200), the fake control plane serving
/// them, and a data plane on `db` running `config` as `tweak` changes it, with the
/// subscription in effect.
pub struct OneHook {
    pub db: TestDatabase,
    pub receiver: Receiver,
    pub workspace: Workspace,
    pub secret: SigningSecret,
    pub control: FakeControl,
    /// What the plane was started with, to start it again.
    pub config: DataConfig,
    pub plane: DataHarness,
}

impl OneHook {
    pub async fn start(
        backend: &Backend,
        replies: &[u16],
        tweak: impl FnOnce(&mut DataConfig),
    ) -> OneHook {
        let db = TestDatabase::create(backend).await;
        let replies = replies
            .iter()
            .map(|status| Reply::status(*status))
            .collect();
        let receiver = Receiver::start(replies, Reply::status(200)).await;
        let workspace = Workspace::new("wrk_1");
        let (sub, secret) = subscription("sub_1", &workspace.id, &receiver.url("/hook"));
        let control =
            FakeControl::start(snapshot(vec![sub], vec![workspace.key_config.clone()])).await;
        let mut config = config(&control);
        tweak(&mut config);
        let plane = DataHarness::start(db.open(Plane::Data).await, config.clone()).await;
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
