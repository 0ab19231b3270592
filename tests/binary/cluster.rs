//! Cluster mode under faults, with the real binary: 2 `sluice control` and 3 `sluice data`
//! processes on one fresh PostgreSQL database, started at the same moment, a publisher
//! spreading a steady load over the data planes (an idempotency key per event; on
//! UNAVAILABLE, a timeout or a broken connection the same event published again through
//! the next plane) and the kit's recording receiver. Every scenario asserts that every
//! acked event arrives (at least once, by `webhook-id`) and counts the duplicates:
//!
//! - all replicas started together on a fresh database serve the load, no duplicate;
//! - a data plane killed (`kill -9`) under load and never restarted: its work arrives
//!   through the others within the lease + 5 s;
//! - a rolling restart (SIGTERM, start, next) of every replica under load: no duplicate;
//! - the database cut away under load: every connection of every plane dropped and new ones
//!   refused for a while, by a TCP forwarder between the planes and PostgreSQL
//!   (`sluice_testkit::proxy`). That is a real network fault, the one a PostgreSQL restart
//!   or a failover makes (sockets die, reconnecting fails, then works), without restarting
//!   the machine's server under the other tests; nothing acked is lost and every plane
//!   serves again by itself;
//! - a control plane killed, then the other: the streams of three data planes move, a
//!   change reaches them through the survivor, and the delivery log holds every attempt
//!   once (attempts logged = receiver hits, delivery by delivery). `control_replicas.rs`
//!   does the same with one in-process data plane on either backend; this is the
//!   PostgreSQL cluster's case (several reporters, one elected);
//! - a backlog beyond the in-memory cap (`--max-held-deliveries 50`) behind an endpoint
//!   that hangs longer than the lease, drained when it answers again: no duplicate, on
//!   SQLite (one data plane) and PostgreSQL (three).
//!
//! Without `SLUICE_TEST_DATABASE_URL` the PostgreSQL scenarios print SKIPPING and pass.
//! The scenarios run one at a time (they time takeovers, and two clusters at once on a
//! small CI machine would time each other). `SLUICE_CLUSTER_LONG=N` multiplies the load of
//! each scenario by N (e.g. `SLUICE_CLUSTER_LONG=10 cargo test -p sluice --test cluster
//! -- --nocapture`).

#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use sluice_store::sea_orm::Database;
use sluice_testkit::cluster::{Acked, Cluster, ClusterOptions, Load, LoadReport, wait_ready};
use sluice_testkit::process::Deployment;
use sluice_testkit::proxy::TcpProxy;
use sluice_testkit::receiver::{Received, Receiver};
use sluice_testkit::{Backend, Clients, TestDatabase, WAIT, backends, count_rows};

/// Events a second the publisher offers in the steady-load scenarios.
const RATE: u32 = 150;
/// How long the test waits for every acked event to arrive once the load stopped.
const ARRIVAL: Duration = Duration::from_secs(60);

/// One scenario at a time in this process.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The load multiplier of `SLUICE_CLUSTER_LONG` (1 without it).
fn scale() -> usize {
    std::env::var("SLUICE_CLUSTER_LONG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// The PostgreSQL server, or `None` after the SKIPPING line.
fn postgres() -> Option<Backend> {
    backends()
        .into_iter()
        .find(|b| matches!(b, Backend::Postgres(_)))
}

/// The cluster of every scenario: 2 control planes and 3 data planes on `database_url`,
/// with `data_flags`, and short retries, waits and grace unless they say otherwise.
async fn cluster(database_url: &str, data_flags: &[&str]) -> Cluster {
    let mut flags = data_flags.to_vec();
    for (flag, value) in [
        ("--retry-schedule", "0s,200ms,500ms,1s,2s,5s"),
        ("--store-timeout-ms", "1500"),
        ("--shutdown-grace-secs", "5"),
    ] {
        if !flags.contains(&flag) {
            flags.extend([flag, value]);
        }
    }
    Cluster::start(
        &sluice_testkit::sluice_bin!(),
        ClusterOptions {
            database_url,
            controls: 2,
            datas: 3,
            data_flags: &flags,
            control_flags: &[],
        },
    )
    .await
}

/// A workspace, its key and a subscription to everything at `receiver`'s `/one`, known to
/// every data plane; returns (key, subscription id, the warm-up events).
async fn prepare(cluster: &Cluster, receiver: &Receiver) -> (String, String, Vec<Acked>) {
    let (_, key) = cluster.workspace_with_key("cluster").await;
    let subscription = cluster.subscribe(&key, receiver.url("/one")).await;
    let warmup = cluster.wait_ready(&key, 1).await;
    (key, subscription, warmup)
}

/// What arrived of the acked events.
struct Tally {
    acked: usize,
    hits: usize,
    duplicates: usize,
}

/// The acked events no request of `got` carries.
fn missing<'a>(acked: &'a [Acked], got: &[Received]) -> Vec<&'a Acked> {
    let ids: HashSet<&str> = got.iter().map(|r| r.header("webhook-id")).collect();
    acked
        .iter()
        .filter(|a| !ids.contains(a.message_id.as_str()))
        .collect()
}

/// Waits until every acked event arrived at least once (panics with the logs after
/// `within`); returns what arrived and the tally.
async fn all_arrive(
    receiver: &Receiver,
    acked: &[Acked],
    within: Duration,
    logs: impl Fn() -> String,
) -> (Vec<Received>, Tally) {
    let deadline = Instant::now() + within;
    let mut need = acked.len();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let arrived = receiver.wait_count(need, left).await;
        let got = receiver.received();
        let lost = missing(acked, &got);
        if lost.is_empty() {
            // A delivery is a message to one subscription (one receiver path here).
            let unique: HashSet<(&str, &str)> = got
                .iter()
                .map(|r| (r.header("webhook-id"), r.path.as_str()))
                .collect();
            let tally = Tally {
                acked: acked.len(),
                hits: got.len(),
                duplicates: got.len() - unique.len(),
            };
            return (got, tally);
        }
        assert!(
            arrived,
            "{} of {} acked events never arrived within {within:?} (e.g. {:?}); logs:\n{}",
            lost.len(),
            acked.len(),
            lost.iter().take(5).collect::<Vec<_>>(),
            logs()
        );
        // Each missing event needs one more request at least.
        need = got.len() + lost.len();
    }
}

/// Every acked event of the load and of the warm-up; fails on abandoned events.
fn all_acked(report: LoadReport, warmup: Vec<Acked>) -> Vec<Acked> {
    assert!(
        report.abandoned.is_empty(),
        "{} events were never acked: {:?}; errors: {:?}",
        report.abandoned.len(),
        report.abandoned.iter().take(5).collect::<Vec<_>>(),
        report.errors
    );
    let mut acked = warmup;
    acked.extend(report.acked);
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_started_together_on_a_fresh_database_serve_a_steady_load() {
    let Some(backend) = postgres() else { return };
    let _one = ONE_AT_A_TIME.lock().await;
    let database = TestDatabase::create(&backend).await;
    let receiver = Receiver::ok().await;
    let started = Instant::now();
    // Nothing migrated the database: five processes race for it.
    let cluster = cluster(&database.url, &["--delivery-lease-secs", "3"]).await;
    let serving = started.elapsed();
    let (key, _, warmup) = prepare(&cluster, &receiver).await;
    let load = Load::start(&cluster.data_addrs(), &key, RATE);
    load.wait_acked(1000 * scale(), ARRIVAL).await;
    let report = load.stop().await;
    let failovers = report.failovers;
    let acked = all_acked(report, warmup);
    let (_, tally) = all_arrive(&receiver, &acked, ARRIVAL, || cluster.logs()).await;
    println!(
        "started together: all 5 serving {serving:?} after the start; {} acked, {} hits, {} duplicates, {failovers} failovers",
        tally.acked, tally.hits, tally.duplicates
    );
    assert_eq!(tally.duplicates, 0, "duplicates without any fault");
    assert_eq!(failovers, 0, "failovers without any fault");
    // Racing for a fresh database is no error: no process logged one.
    let errors = cluster.log_lines("ERROR");
    assert!(errors.is_empty(), "errors logged: {errors:#?}");
    drop(cluster);
    database.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_plane_killed_under_load_has_its_work_taken_over_within_the_lease() {
    let Some(backend) = postgres() else { return };
    let _one = ONE_AT_A_TIME.lock().await;
    const LEASE: Duration = Duration::from_secs(3);
    let database = TestDatabase::create(&backend).await;
    let receiver = Receiver::ok().await;
    // First attempts wait 2 s in memory, so a plane always holds work when it dies.
    let mut cluster = cluster(
        &database.url,
        &[
            "--delivery-lease-secs",
            "3",
            "--retry-schedule",
            "2s,200ms,500ms,1s,2s,5s",
        ],
    )
    .await;
    let (key, _, warmup) = prepare(&cluster, &receiver).await;
    let load = Load::start(&cluster.data_addrs(), &key, RATE);
    load.wait_acked(600, ARRIVAL).await;

    const VICTIM: usize = 1;
    cluster.datas[VICTIM].kill9().await;
    let killed = Instant::now();
    let arrived_before: HashSet<String> = receiver
        .received()
        .iter()
        .map(|r| r.header("webhook-id").to_owned())
        .collect();
    // What it had acked and not delivered: its work, now only in the database.
    let orphans: Vec<Acked> = load
        .acked()
        .into_iter()
        .chain(warmup.iter().cloned())
        .filter(|a| a.plane == VICTIM && !arrived_before.contains(&a.message_id))
        .collect();
    assert!(
        !orphans.is_empty(),
        "the killed plane held nothing: the scenario proves nothing"
    );
    let (got, _) = all_arrive(&receiver, &orphans, LEASE + Duration::from_secs(5), || {
        cluster.logs()
    })
    .await;
    let first_arrival: HashMap<&str, Instant> = got.iter().fold(HashMap::new(), |mut m, r| {
        m.entry(r.header("webhook-id")).or_insert(r.at);
        m
    });
    let takeover = orphans
        .iter()
        .map(|a| first_arrival[a.message_id.as_str()].saturating_duration_since(killed))
        .max()
        .unwrap();

    load.wait_more(300 * scale(), ARRIVAL).await;
    let report = load.stop().await;
    let failovers = report.failovers;
    let acked = all_acked(report, warmup);
    let (_, tally) = all_arrive(&receiver, &acked, ARRIVAL, || cluster.logs()).await;
    println!(
        "kill -9 of a data plane: {} of its events undelivered at the kill, all delivered by the others {takeover:?} after it (lease {LEASE:?}); {} acked, {} hits, {} duplicates, {failovers} failovers",
        orphans.len(),
        tally.acked,
        tally.hits,
        tally.duplicates
    );
    // A duplicate is an attempt the dead plane made whose outcome it never committed: at
    // most what it had in flight (16 per endpoint) or just answered.
    assert!(
        tally.duplicates <= 16,
        "{} duplicates after one kill -9",
        tally.duplicates
    );
    drop(cluster);
    database.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_replica_under_load_loses_and_repeats_nothing() {
    let Some(backend) = postgres() else { return };
    let _one = ONE_AT_A_TIME.lock().await;
    let database = TestDatabase::create(&backend).await;
    let receiver = Receiver::ok().await;
    let mut cluster = cluster(&database.url, &["--delivery-lease-secs", "3"]).await;
    let (key, _, warmup) = prepare(&cluster, &receiver).await;
    let load = Load::start(&cluster.data_addrs(), &key, RATE);
    load.wait_acked(150, ARRIVAL).await;

    let mut restarts = Vec::new();
    for (name, index) in [
        ("control 0", 0),
        ("control 1", 1),
        ("data 0", 0),
        ("data 1", 1),
        ("data 2", 2),
    ] {
        let began = Instant::now();
        let replica = if name.starts_with("control") {
            &mut cluster.controls[index]
        } else {
            &mut cluster.datas[index]
        };
        let clean = replica.terminate().await;
        let stopped = began.elapsed();
        replica.restart().await;
        assert!(
            clean,
            "{name} did not exit cleanly; logs:\n{}",
            cluster.logs()
        );
        // Under load, with a receiver that answers at once, nothing should hold a stop
        // for the whole grace (5 s).
        assert!(
            stopped < Duration::from_secs(4),
            "{name} took {stopped:?} to stop; logs:\n{}",
            cluster.logs()
        );
        restarts.push(format!(
            "{name}: stop {stopped:?}, back {:?}",
            began.elapsed()
        ));
        // The load flows through the whole cluster again before the next one goes.
        load.wait_more(150 * scale(), ARRIVAL).await;
    }
    let report = load.stop().await;
    let failovers = report.failovers;
    let acked = all_acked(report, warmup);
    let (got, tally) = all_arrive(&receiver, &acked, ARRIVAL, || cluster.logs()).await;
    println!(
        "rolling restart ({}): {} acked, {} hits, {} duplicates, {failovers} failovers",
        restarts.join("; "),
        tally.acked,
        tally.hits,
        tally.duplicates
    );
    assert_eq!(
        tally.duplicates,
        0,
        "duplicates after a rolling restart: {:?}; logs:\n{}",
        repeated(&got).iter().take(5).collect::<Vec<_>>(),
        cluster.logs()
    );
    drop(cluster);
    database.drop_database().await;
}

/// The `webhook-id`s that arrived more than once at one path, with their arrival count.
fn repeated(got: &[Received]) -> Vec<(String, usize)> {
    let mut per_id: HashMap<(&str, &str), usize> = HashMap::new();
    for r in got {
        *per_id
            .entry((r.header("webhook-id"), r.path.as_str()))
            .or_default() += 1;
    }
    per_id
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|((id, _), n)| (id.to_owned(), n))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_cut_away_under_load_loses_nothing_acked_and_every_plane_comes_back() {
    let Some(backend) = postgres() else { return };
    let _one = ONE_AT_A_TIME.lock().await;
    const CUT: Duration = Duration::from_secs(4);
    let database = TestDatabase::create(&backend).await;
    // Every plane reaches PostgreSQL through the proxy.
    let (proxy, url) = TcpProxy::in_front_of(&database.url).await;
    let receiver = Receiver::ok().await;
    // The lease outlasts the cut, as the default (60 s) outlasts a database restart: the
    // planes keep their work through it.
    let cluster = cluster(&url, &["--delivery-lease-secs", "10"]).await;
    let (key, subscription, warmup) = prepare(&cluster, &receiver).await;
    let load = Load::start(&cluster.data_addrs(), &key, RATE);
    load.wait_acked(300, ARRIVAL).await;

    proxy.cut();
    // The fault lasts this long; nothing is being waited for.
    tokio::time::sleep(CUT).await;
    proxy.restore();
    let restored = Instant::now();

    // Every plane acks events of its own again (not only through failovers).
    let deadline = restored + ARRIVAL;
    let back = loop {
        let acked = load.acked();
        let back: Vec<Option<Duration>> = (0..3)
            .map(|plane| {
                acked
                    .iter()
                    .filter(|a| a.plane == plane && a.at > restored)
                    .map(|a| a.at - restored)
                    .min()
            })
            .collect();
        if back.iter().all(Option::is_some) {
            break back;
        }
        assert!(
            Instant::now() < deadline,
            "data planes that never acked again after the database came back: {back:?}; logs:\n{}",
            cluster.logs()
        );
        load.wait_more(30, ARRIVAL).await;
    };
    load.wait_more(300 * scale(), ARRIVAL).await;
    let report = load.stop().await;
    let failovers = report.failovers;
    let errors = report.errors.clone();
    let acked = all_acked(report, warmup);
    let (got, tally) = all_arrive(&receiver, &acked, ARRIVAL, || cluster.logs()).await;
    // The control planes came back too: the log catches up with every attempt.
    let clients = cluster.clients(&key).await;
    let logged = log_matches_hits(&clients, &got, &HashMap::from([("/one", subscription)]))
        .await
        .unwrap_or_else(|why| panic!("{why}; logs:\n{}", cluster.logs()));
    println!(
        "database cut for {CUT:?}: planes acking again {back:?} after it; {} acked, {} hits, {} duplicates, {logged} attempts logged, {failovers} failovers (e.g. {:?})",
        tally.acked,
        tally.hits,
        tally.duplicates,
        errors.iter().take(3).collect::<Vec<_>>()
    );
    drop(cluster);
    drop(proxy);
    database.drop_database().await;
}

/// Every attempt of the delivery log, all pages.
async fn attempts(clients: &Clients) -> Vec<sluice_proto::control::v1::Attempt> {
    sluice_testkit::all_attempts(&clients.deliveries, Default::default()).await
}

/// Polls the delivery log until it holds exactly one attempt per receiver hit, delivery by
/// delivery (`by_path`: the subscription of each receiver path); returns the number of
/// attempts, or what differs after [`WAIT`].
async fn log_matches_hits(
    clients: &Clients,
    hits: &[Received],
    by_path: &HashMap<&str, String>,
) -> Result<usize, String> {
    let mut hit_count: HashMap<(String, String), usize> = HashMap::new();
    for hit in hits {
        let subscription = by_path[hit.path.as_str()].clone();
        *hit_count
            .entry((hit.header("webhook-id").to_owned(), subscription))
            .or_default() += 1;
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let logged = attempts(clients).await;
        let mut log_count: HashMap<(String, String), usize> = HashMap::new();
        for attempt in &logged {
            *log_count
                .entry((attempt.message_id.clone(), attempt.subscription_id.clone()))
                .or_default() += 1;
        }
        if log_count == hit_count {
            return Ok(logged.len());
        }
        if Instant::now() > deadline {
            let differ: Vec<_> = hit_count
                .iter()
                .filter(|(k, n)| log_count.get(*k) != Some(*n))
                .map(|(k, n)| (k.clone(), *n, log_count.get(k).copied().unwrap_or(0)))
                .chain(
                    log_count
                        .iter()
                        .filter(|(k, _)| !hit_count.contains_key(*k))
                        .map(|(k, n)| (k.clone(), 0, *n)),
                )
                .take(10)
                .collect();
            return Err(format!(
                "{} hits, {} attempts logged; (delivery, hits, logged) that differ: {differ:?}",
                hits.len(),
                logged.len()
            ));
        }
        // The delivery log offers nothing to await: polled.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_planes_killed_one_after_the_other_leave_the_log_exact() {
    let Some(backend) = postgres() else { return };
    let _one = ONE_AT_A_TIME.lock().await;
    let database = TestDatabase::create(&backend).await;
    let receiver = Receiver::ok().await;
    let mut cluster = cluster(&database.url, &["--delivery-lease-secs", "3"]).await;
    let (key, one, warmup) = prepare(&cluster, &receiver).await;
    let load = Load::start(&cluster.data_addrs(), &key, RATE);
    load.wait_acked(200, ARRIVAL).await;

    // Whichever replica a stream was on, one of the two kills moves it.
    cluster.controls[0].kill9().await;
    load.wait_more(200 * scale(), ARRIVAL).await;
    cluster.controls[0].restart().await;
    load.wait_more(100, ARRIVAL).await;
    cluster.controls[1].kill9().await;
    // A change through the survivor reaches every data plane: their watches moved.
    let two = cluster.subscribe(&key, receiver.url("/two")).await;
    let moved = Instant::now();
    receiver
        .wait_until(WAIT, |got| got.iter().any(|r| r.path == "/two"))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no event reached the new subscription; logs:\n{}",
                cluster.logs()
            )
        });
    wait_ready(&cluster.data_addrs(), &key, 2).await;
    let watch_moved = moved.elapsed();
    load.wait_more(200 * scale(), ARRIVAL).await;
    let report = load.stop().await;
    let failovers = report.failovers;
    let acked = all_acked(report, warmup);
    let (_, tally) = all_arrive(&receiver, &acked, ARRIVAL, || cluster.logs()).await;
    // Every delivery of /two too, before comparing with the log.
    let expected_hits = receiver.count();
    let hits = receiver.received();
    let logged = log_matches_hits(
        &cluster.clients(&key).await,
        &hits,
        &HashMap::from([("/one", one), ("/two", two)]),
    )
    .await
    .unwrap_or_else(|why| panic!("{why}; logs:\n{}", cluster.logs()));
    println!(
        "control planes killed in turn: the change through the survivor reached every data plane within {watch_moved:?}; {} acked, {expected_hits} hits, {logged} attempts logged, {} duplicates, {failovers} failovers",
        tally.acked, tally.duplicates
    );
    assert_eq!(tally.duplicates, 0, "the data planes repeated deliveries");
    drop(cluster);
    database.drop_database().await;
}

/// Data-plane flags of the backlog scenario: memory holds 50 deliveries, an attempt waits
/// a minute for its answer, leases last 2 s (the endpoint hangs longer).
const BACKLOG_FLAGS: &[&str] = &[
    "--max-held-deliveries",
    "50",
    "--request-timeout-ms",
    "60000",
    "--delivery-lease-secs",
    "2",
];
const BACKLOG_CAP: i64 = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_beyond_the_memory_cap_drains_without_duplicates() {
    for backend in backends() {
        let _one = ONE_AT_A_TIME.lock().await;
        let receiver = Receiver::ok().await;
        match &backend {
            Backend::Sqlite => {
                let control_db = TestDatabase::create(&backend).await;
                let data_db = TestDatabase::create(&backend).await;
                let deployment = Deployment::start(
                    &sluice_testkit::sluice_bin!(),
                    &control_db.url,
                    &data_db.url,
                    BACKLOG_FLAGS,
                    &[],
                )
                .await;
                let (_, key) = deployment.workspace_with_key("backlog").await;
                let clients = deployment.clients(Some(&key)).await;
                subscribe(clients, receiver.url("/one")).await;
                let planes = [deployment.data.as_ref().unwrap().addr];
                backlog(&backend, &planes, &data_db.url, &key, &receiver, || {
                    deployment.logs()
                })
                .await;
                drop(deployment);
                control_db.drop_database().await;
                data_db.drop_database().await;
            }
            Backend::Postgres(_) => {
                let database = TestDatabase::create(&backend).await;
                let cluster = cluster(&database.url, BACKLOG_FLAGS).await;
                let (_, key) = cluster.workspace_with_key("backlog").await;
                cluster.subscribe(&key, receiver.url("/one")).await;
                backlog(
                    &backend,
                    &cluster.data_addrs(),
                    &database.url,
                    &key,
                    &receiver,
                    || cluster.logs(),
                )
                .await;
                drop(cluster);
                database.drop_database().await;
            }
        }
    }
}

async fn subscribe(mut clients: Clients, url: String) {
    clients
        .subscriptions
        .create_subscription(sluice_proto::control::v1::CreateSubscriptionRequest {
            subscription: Some(sluice_proto::control::v1::Subscription {
                url,
                filters: vec!["*".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// The backlog scenario on data planes `planes` (their database at `data_url`): the
/// endpoint hangs while 2,000 events are acked and longer than a lease, then answers.
async fn backlog(
    backend: &Backend,
    planes: &[std::net::SocketAddr],
    data_url: &str,
    key: &str,
    receiver: &Receiver,
    logs: impl Fn() -> String,
) {
    const EVENTS: usize = 2_000;
    let warmup = wait_ready(planes, key, 1).await;
    receiver.hold();
    let load = Load::start(planes, key, 500);
    load.wait_acked(EVENTS * scale(), ARRIVAL).await;
    let report = load.stop().await;
    let acked = all_acked(report, warmup);
    // The endpoint stays silent past the 2 s lease: held work must keep its claims.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let db = Database::connect(data_url).await.unwrap();
    let now = sluice_testkit::now_secs() * 1000;
    let leased = count_rows(&db, &format!("dp_fanout WHERE lease_until_ms > {now}")).await;
    let waiting = count_rows(&db, "dp_fanout").await;
    let in_flight = receiver.count();
    let cap = BACKLOG_CAP * planes.len() as i64;
    assert!(
        leased <= cap,
        "{leased} deliveries held in memory by {} planes capped at {BACKLOG_CAP}",
        planes.len()
    );
    receiver.release();
    let released = Instant::now();
    let (got, tally) = all_arrive(receiver, &acked, ARRIVAL, logs).await;
    let drained = released.elapsed();
    println!(
        "{} backlog, {} data plane(s) holding {BACKLOG_CAP} at most: {waiting} events waiting ({leased} held, {in_flight} requests hanging at the endpoint), drained in {drained:?}; {} acked, {} hits, {} duplicates",
        backend.label(),
        planes.len(),
        tally.acked,
        tally.hits,
        tally.duplicates
    );
    assert_eq!(
        tally.duplicates,
        0,
        "duplicates to an endpoint that answered 200: {:?}",
        repeated(&got).iter().take(5).collect::<Vec<_>>()
    );
    let _ = db.close().await;
}
