//! A cluster of the real binary, as production runs it: several `sluice control` and `sluice
//! data` processes on one database, all started at the same moment, each of them killable
//! (`kill -9`), stoppable (SIGTERM) and restartable on its own address; and [`Load`], a
//! publisher that spreads a steady load over the data planes as a careful client does: an
//! idempotency key per event, and on UNAVAILABLE, a timeout or a broken connection the same
//! event (same key) published again through the next data plane.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_proto::control::v1 as pb;
use sluice_proto::data::v1 as dpb;
use sluice_proto::data::v1::ingest_service_client::IngestServiceClient;
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::process::SluiceProcess;
use crate::{ADMIN_KEY, Bearer, Clients, INTERNAL_TOKEN, Intercepted, MASTER_KEY, free_addr};

/// One process of the cluster: its address and flags stay, so it can be started again
/// where it was.
pub struct Replica {
    /// What it serves on.
    pub addr: SocketAddr,
    /// The running process (None while stopped).
    pub process: Option<SluiceProcess>,
    bin: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
}

impl Replica {
    /// `kill -9`: no chance to finish anything or give anything back.
    pub async fn kill9(&mut self) {
        let mut process = self.process.take().expect("the replica is running");
        process.kill9().await;
    }

    /// SIGTERM, waiting for the exit; returns whether it exited cleanly.
    pub async fn terminate(&mut self) -> bool {
        let mut process = self.process.take().expect("the replica is running");
        process.terminate().await
    }

    /// Starts it again (same flags, database and address), waiting until it serves.
    pub async fn restart(&mut self) {
        assert!(self.process.is_none(), "the replica is still running");
        self.process = Some(self.spawn().await);
    }

    /// Whether it is running (as far as the test knows: it was not stopped).
    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    async fn spawn(&self) -> SluiceProcess {
        SluiceProcess::start(
            &self.bin,
            &self.args,
            &self.env,
            self.addr,
            self.log.clone(),
        )
        .await
    }

    /// The last `lines` lines of its log.
    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// What a [`Cluster`] is made of.
pub struct ClusterOptions<'a> {
    /// The database every process uses (both planes share it, as in production).
    pub database_url: &'a str,
    /// How many `sluice control` processes.
    pub controls: usize,
    /// How many `sluice data` processes.
    pub datas: usize,
    /// Extra flags of every `sluice data` (leases, retry schedule, ...).
    pub data_flags: &'a [&'a str],
    /// Extra flags of every `sluice control`.
    pub control_flags: &'a [&'a str],
}

/// Control planes and data planes as processes on one database. Every data plane is given
/// every control plane (`--control-endpoint a,b,...`, in the same order); each control
/// plane is given the first data plane for test sends.
/// Its logs are removed with it, unless `SLUICE_KEEP_LOGS` is set.
pub struct Cluster {
    /// The control planes.
    pub controls: Vec<Replica>,
    /// The data planes.
    pub datas: Vec<Replica>,
    dir: PathBuf,
}

impl Cluster {
    /// Starts every process at the same moment (as a deployment rolling out on a fresh
    /// database does) and waits until each serves gRPC health.
    pub async fn start(bin: &Path, options: ClusterOptions<'_>) -> Cluster {
        let dir =
            std::env::temp_dir().join(sluice_core::ids::new_id(sluice_core::ids::IdKind::Delivery));
        std::fs::create_dir_all(&dir).unwrap();
        let env = vec![
            ("SLUICE_ADMIN_KEY".to_owned(), ADMIN_KEY.to_owned()),
            (
                "SLUICE_INTERNAL_TOKEN".to_owned(),
                INTERNAL_TOKEN.to_owned(),
            ),
            ("SLUICE_MASTER_KEY".to_owned(), MASTER_KEY.to_owned()),
            (
                "RUST_LOG".to_owned(),
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            ),
        ];
        let control_addrs: Vec<SocketAddr> = (0..options.controls).map(|_| free_addr()).collect();
        let data_addrs: Vec<SocketAddr> = (0..options.datas).map(|_| free_addr()).collect();
        let control_list = control_addrs
            .iter()
            .map(|a| format!("http://{a}"))
            .collect::<Vec<_>>()
            .join(",");
        let replica = |addr: SocketAddr, args: Vec<String>, log: String| Replica {
            addr,
            process: None,
            bin: bin.to_owned(),
            args,
            env: env.clone(),
            log: dir.join(log),
        };
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let controls: Vec<Replica> = control_addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                let mut args = strings(&[
                    "control",
                    "--listen",
                    &addr.to_string(),
                    "--database-url",
                    options.database_url,
                    "--allow-http",
                    "--data-plane-endpoint",
                    &format!("http://{}", data_addrs[0]),
                ]);
                args.extend(strings(options.control_flags));
                replica(*addr, args, format!("control-{i}.log"))
            })
            .collect();
        let datas: Vec<Replica> = data_addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                let mut args = strings(&[
                    "data",
                    "--listen",
                    &addr.to_string(),
                    "--database-url",
                    options.database_url,
                    "--control-endpoint",
                    &control_list,
                    "--allow-http",
                    "--allow-private-destinations",
                ]);
                args.extend(strings(options.data_flags));
                replica(*addr, args, format!("data-{i}.log"))
            })
            .collect();
        let mut cluster = Cluster {
            controls,
            datas,
            dir,
        };
        // Every process spawned before any is awaited: they race for the fresh database.
        let mut starting = JoinSet::new();
        for (i, r) in cluster.controls.iter().chain(&cluster.datas).enumerate() {
            let (bin, args, env, addr, log) = (
                r.bin.clone(),
                r.args.clone(),
                r.env.clone(),
                r.addr,
                r.log.clone(),
            );
            starting.spawn(
                async move { (i, SluiceProcess::start(&bin, &args, &env, addr, log).await) },
            );
        }
        while let Some(started) = starting.join_next().await {
            let (i, process) = started.unwrap();
            let n = cluster.controls.len();
            if i < n {
                cluster.controls[i].process = Some(process);
            } else {
                cluster.datas[i - n].process = Some(process);
            }
        }
        cluster
    }

    /// The data planes' addresses (running or not).
    pub fn data_addrs(&self) -> Vec<SocketAddr> {
        self.datas.iter().map(|r| r.addr).collect()
    }

    /// The address of a running control plane.
    pub fn live_control(&self) -> SocketAddr {
        self.controls
            .iter()
            .find(|r| r.is_running())
            .expect("a control plane is running")
            .addr
    }

    /// Creates a workspace and a key for it; returns (workspace id, key).
    pub async fn workspace_with_key(&self, name: &str) -> (String, String) {
        Clients::workspace_with_key(self.live_control(), name).await
    }

    /// Control-plane clients (of a running replica) with `key`.
    pub async fn clients(&self, key: &str) -> Clients {
        Clients::connect(self.live_control(), Some(key)).await
    }

    /// Subscribes the workspace of `key` to every event, delivered to `url`; returns the
    /// subscription id.
    pub async fn subscribe(&self, key: &str, url: String) -> String {
        self.clients(key)
            .await
            .subscriptions
            .create_subscription(pb::CreateSubscriptionRequest {
                subscription: Some(pb::Subscription {
                    url,
                    filters: vec!["*".into()],
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .subscription
            .unwrap()
            .id
    }

    /// Waits until every running data plane knows `key` and matches its events to
    /// `subscriptions` subscriptions (see [`wait_ready`]).
    pub async fn wait_ready(&self, key: &str, subscriptions: u32) -> Vec<Acked> {
        let planes: Vec<SocketAddr> = self
            .datas
            .iter()
            .filter(|r| r.is_running())
            .map(|r| r.addr)
            .collect();
        wait_ready(&planes, key, subscriptions).await
    }

    /// The tail of every process's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (name, replicas) in [("control", &self.controls), ("data", &self.datas)] {
            for (i, r) in replicas.iter().enumerate() {
                out.push_str(&format!("--- {name}-{i}.log (last 60 lines)\n"));
                out.push_str(&r.log_tail(60));
                out.push('\n');
            }
        }
        out
    }
}

/// Waits until every data plane of `planes` knows `key` and matches its events to
/// `subscriptions` subscriptions: publishes one event through each until it does. Returns
/// the acked warm-up events (their `plane` an index in `planes`), which are delivered like
/// any other.
pub async fn wait_ready(planes: &[SocketAddr], key: &str, subscriptions: u32) -> Vec<Acked> {
    let mut acked = Vec::new();
    for (plane, addr) in planes.iter().enumerate() {
        let mut ingest = ingest_client(*addr, key);
        let deadline = Instant::now() + crate::WAIT;
        let mut n = 0;
        loop {
            n += 1;
            let key = format!("warmup-{plane}-{n}");
            match ingest.publish(event(&key)).await {
                Ok(r) if r.get_ref().delivery_count == subscriptions => {
                    acked.push(Acked {
                        message_id: r.into_inner().message_id,
                        key,
                        plane,
                        at: Instant::now(),
                        failovers: 0,
                    });
                    break;
                }
                // Matched fewer subscriptions: the configuration has not arrived yet.
                Ok(_) => {}
                Err(status) if status.code() == tonic::Code::Unauthenticated => {}
                Err(status) => panic!("warm-up publish to data plane {plane}: {status:?}"),
            }
            assert!(
                Instant::now() < deadline,
                "data plane {plane} did not learn the key and subscriptions within {:?}",
                crate::WAIT
            );
            // The configuration reaches a data plane through its watch stream, which
            // offers nothing to await from outside the process.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    acked
}

impl Cluster {
    /// The lines of every process's log that contain `needle`, for reports.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.controls
            .iter()
            .chain(&self.datas)
            .flat_map(|r| {
                std::fs::read_to_string(&r.log)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains(needle))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The processes are killed as they drop (`kill_on_drop`).
        self.controls.clear();
        self.datas.clear();
        if std::env::var_os("SLUICE_KEEP_LOGS").is_some() {
            eprintln!("the cluster's logs are kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// An ingest client of the data plane at `addr` publishing with `key`, connecting lazily
/// (and again after a broken connection), so a plane that is down only fails the calls.
pub fn ingest_client(addr: SocketAddr, key: &str) -> IngestServiceClient<Intercepted> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy();
    IngestServiceClient::with_interceptor(channel, Bearer::key(key))
}

fn event(key: &str) -> dpb::PublishRequest {
    dpb::PublishRequest {
        event_type: "conversation.created".into(),
        payload_json: format!(r#"{{"key":"{key}"}}"#),
        idempotency_key: key.to_owned(),
        ..Default::default()
    }
}

/// One event a data plane acked.
#[derive(Clone, Debug)]
pub struct Acked {
    /// The message id, the `webhook-id` the receiver sees.
    pub message_id: String,
    /// Its idempotency key.
    pub key: String,
    /// The data plane (index in [`Cluster::datas`]) that acked it.
    pub plane: usize,
    /// When the ack arrived.
    pub at: Instant,
    /// How many times it was published again after a failure before the ack.
    pub failovers: u32,
}

/// What a [`Load`] did.
#[derive(Debug)]
pub struct LoadReport {
    /// Every acked event.
    pub acked: Vec<Acked>,
    /// Events given up on (no data plane acked them within [`GIVE_UP`]), by key.
    pub abandoned: Vec<String>,
    /// A sample of the errors that caused failovers (code and message), at most 20.
    pub errors: Vec<String>,
    /// How many publishes failed and were sent again.
    pub failovers: usize,
}

/// How long one publish call may take before the publisher gives up on it and publishes
/// the same event (same key) through the next data plane.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the publisher keeps trying one event before it counts it abandoned.
pub const GIVE_UP: Duration = Duration::from_secs(60);
/// Events in flight at most.
const IN_FLIGHT: usize = 256;

/// A steady load of events over several data planes, event `n` first through plane `n %
/// planes`; see the module's documentation for what it does on failure.
pub struct Load {
    stop: CancellationToken,
    shared: Arc<LoadShared>,
    task: JoinHandle<()>,
}

struct LoadShared {
    acked: Mutex<Vec<Acked>>,
    abandoned: Mutex<Vec<String>>,
    errors: Mutex<Vec<String>>,
    failovers: Mutex<usize>,
    /// The number of acked events, to await.
    count: watch::Sender<usize>,
}

impl Load {
    /// Starts publishing `per_second` events a second through `planes` with `key`.
    pub fn start(planes: &[SocketAddr], key: &str, per_second: u32) -> Load {
        let clients: Arc<Vec<IngestServiceClient<Intercepted>>> =
            Arc::new(planes.iter().map(|a| ingest_client(*a, key)).collect());
        let stop = CancellationToken::new();
        let shared = Arc::new(LoadShared {
            acked: Mutex::new(Vec::new()),
            abandoned: Mutex::new(Vec::new()),
            errors: Mutex::new(Vec::new()),
            failovers: Mutex::new(0),
            count: watch::Sender::new(0),
        });
        let task = tokio::spawn({
            let stop = stop.clone();
            let shared = Arc::clone(&shared);
            async move {
                let limit = Arc::new(Semaphore::new(IN_FLIGHT));
                let mut events = JoinSet::new();
                let mut pace =
                    tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(per_second)));
                pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut n: usize = 0;
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        _ = pace.tick() => {}
                    }
                    let permit = Arc::clone(&limit).acquire_owned().await.unwrap();
                    let (clients, shared) = (Arc::clone(&clients), Arc::clone(&shared));
                    events.spawn(async move {
                        publish_one(&clients, &shared, n).await;
                        drop(permit);
                    });
                    n += 1;
                    // Finished ones are collected as they go.
                    while events.try_join_next().is_some() {}
                }
                // Every event started is seen through (acked or abandoned).
                while events.join_next().await.is_some() {}
            }
        });
        Load { stop, shared, task }
    }

    /// How many events were acked so far.
    pub fn acked_count(&self) -> usize {
        *self.shared.count.borrow()
    }

    /// The events acked so far.
    pub fn acked(&self) -> Vec<Acked> {
        self.shared.acked.lock().unwrap().clone()
    }

    /// Waits until `n` events in all were acked (panics after `timeout`).
    pub async fn wait_acked(&self, n: usize, timeout: Duration) {
        let mut count = self.shared.count.subscribe();
        tokio::time::timeout(timeout, count.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} events acked within {timeout:?}, not {n}; errors: {:?}",
                    self.acked_count(),
                    self.shared.errors.lock().unwrap()
                )
            })
            .unwrap();
    }

    /// Waits until `n` more events were acked than now, and returns when the last of them
    /// was (panics after `timeout`).
    pub async fn wait_more(&self, n: usize, timeout: Duration) {
        self.wait_acked(self.acked_count() + n, timeout).await;
    }

    /// Stops starting events, sees every started one through, and reports.
    pub async fn stop(self) -> LoadReport {
        self.stop.cancel();
        self.task.await.unwrap();
        let take = |m: &Mutex<Vec<String>>| std::mem::take(&mut *m.lock().unwrap());
        LoadReport {
            acked: std::mem::take(&mut *self.shared.acked.lock().unwrap()),
            abandoned: take(&self.shared.abandoned),
            errors: take(&self.shared.errors),
            failovers: *self.shared.failovers.lock().unwrap(),
        }
    }
}

/// Publishes event `n` until a data plane acks it, moving to the next plane after each
/// failure, or gives up after [`GIVE_UP`].
async fn publish_one(clients: &[IngestServiceClient<Intercepted>], shared: &LoadShared, n: usize) {
    let key = format!("load-{n}");
    let started = Instant::now();
    let mut plane = n % clients.len();
    let mut failovers = 0u32;
    loop {
        let mut client = clients[plane].clone();
        let error = match tokio::time::timeout(CALL_TIMEOUT, client.publish(event(&key))).await {
            Ok(Ok(response)) => {
                shared.acked.lock().unwrap().push(Acked {
                    message_id: response.into_inner().message_id,
                    key,
                    plane,
                    at: Instant::now(),
                    failovers,
                });
                shared.count.send_modify(|c| *c += 1);
                return;
            }
            Ok(Err(status)) => {
                use tonic::Code::*;
                if matches!(
                    status.code(),
                    InvalidArgument | Unauthenticated | PermissionDenied | NotFound
                ) {
                    // A refusal publishing again cannot change: the test failed.
                    shared.errors.lock().unwrap().push(format!(
                        "refused: {:?} {}",
                        status.code(),
                        status.message()
                    ));
                    shared.abandoned.lock().unwrap().push(key);
                    return;
                }
                format!("{:?} {}", status.code(), status.message())
            }
            Err(_) => format!("no answer within {CALL_TIMEOUT:?}"),
        };
        failovers += 1;
        *shared.failovers.lock().unwrap() += 1;
        {
            let mut errors = shared.errors.lock().unwrap();
            if errors.len() < 20 {
                errors.push(format!("data plane {plane}: {error}"));
            }
        }
        if started.elapsed() > GIVE_UP {
            shared.abandoned.lock().unwrap().push(key);
            return;
        }
        plane = (plane + 1) % clients.len();
        if (failovers as usize).is_multiple_of(clients.len()) {
            // Every plane failed in a row (the database is away, say): a client backs off
            // before the next round rather than spinning.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
