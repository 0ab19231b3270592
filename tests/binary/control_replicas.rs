//! Several control-plane replicas, with the real `sluice control` binary: two of them on one
//! PostgreSQL database and a data plane given both (`--control-endpoint a,b`), on SQLite and
//! on PostgreSQL. The replica it streams to is killed (`kill -9`) while events flow: the
//! config watch and the outcome stream move to the other, a change made through the survivor
//! reaches the data plane, and the delivery log holds every attempt exactly once (the
//! receiver's hits, one for one). And a bad cluster configuration (an entry of the endpoint
//! list that is no URL, planes with different internal tokens) fails the start with a
//! message naming the flag, while a control plane that is down or silent does not hold a
//! data plane's start up.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sluice_proto::control::v1 as pb;
use sluice_proto::data::v1 as dpb;
use sluice_store::Plane;
use sluice_store::sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use sluice_testkit::data::DataHarness;
use sluice_testkit::process::SluiceProcess;
use sluice_testkit::receiver::Receiver;
use sluice_testkit::{
    ADMIN_KEY, Backend, Clients, ControlHarness, INTERNAL_TOKEN, MASTER_KEY, TestDatabase, WAIT,
    backends, free_addr,
};

/// Received events before the replica in use is killed.
const KILL_AFTER_HITS: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_streams_move_to_the_surviving_control_plane_and_the_log_stays_exact() {
    let all = backends();
    // Two control planes share one database: only PostgreSQL can be shared (`backends`
    // printed the SKIPPING line when there is no server).
    let Some(postgres) = all.iter().find(|b| matches!(b, Backend::Postgres(_))) else {
        return;
    };
    for data_backend in &all {
        eprintln!("--- data plane on {}", data_backend.label());
        failover(postgres, data_backend).await;
    }
}

/// A control plane as a process on `addr`, over `database_url`, for the data plane at
/// `data_addr`.
async fn control_process(
    addr: SocketAddr,
    database_url: &str,
    data_addr: SocketAddr,
    log: PathBuf,
) -> SluiceProcess {
    let args: Vec<String> = [
        "control",
        "--listen",
        &addr.to_string(),
        "--database-url",
        database_url,
        "--allow-http",
        "--data-plane-endpoint",
        &format!("http://{data_addr}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    SluiceProcess::start(
        &sluice_testkit::sluice_bin!(),
        &args,
        &env(INTERNAL_TOKEN),
        addr,
        log,
    )
    .await
}

/// The environment of every process here: the kit's keys, and `token` as the internal one.
fn env(token: &str) -> Vec<(String, String)> {
    vec![
        ("SLUICE_ADMIN_KEY".into(), ADMIN_KEY.into()),
        ("SLUICE_INTERNAL_TOKEN".into(), token.into()),
        ("SLUICE_MASTER_KEY".into(), MASTER_KEY.into()),
        (
            "RUST_LOG".into(),
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        ),
    ]
}

/// The latest configuration revision in the control plane's database.
async fn latest_revision(db: &DatabaseConnection) -> u64 {
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT COALESCE(MAX(revision), 0) AS r FROM config_changes",
        ))
        .await
        .unwrap()
        .unwrap();
    u64::try_from(row.try_get::<i64>("", "r").unwrap()).unwrap()
}

/// Every attempt of the delivery log, all pages.
async fn attempts(clients: &Clients) -> Vec<pb::Attempt> {
    sluice_testkit::all_attempts(&clients.deliveries, Default::default()).await
}

/// Creates a subscription to everything, delivered to `url`; returns its id.
async fn subscribe(clients: &mut Clients, url: String) -> String {
    clients
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

async fn failover(postgres: &Backend, data_backend: &Backend) {
    let control_database = TestDatabase::create(postgres).await;
    let data_database = TestDatabase::create(data_backend).await;
    // Migrated here, once, before two processes open it.
    let control_db = control_database.open(Plane::Control).await;
    let data_db = data_database.open(Plane::Data).await;
    let receiver = Receiver::ok().await;
    let dir =
        std::env::temp_dir().join(sluice_core::ids::new_id(sluice_core::ids::IdKind::Delivery));
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b, data_addr) = (free_addr(), free_addr(), free_addr());

    // Replica A first, then the data plane given A and B: B is not up yet, so both streams
    // start on A, the replica killed below.
    let mut replica_a =
        control_process(a, &control_database.url, data_addr, dir.join("a.log")).await;
    let listener = tokio::net::TcpListener::bind(data_addr).await.unwrap();
    let data = DataHarness::serve(
        listener,
        data_db,
        sluice_data::DataConfig {
            internal_token: INTERNAL_TOKEN.into(),
            control_endpoint: format!("http://{a}, http://{b}"),
            retry: sluice_core::retry::RetrySchedule::parse("0s,20ms,20ms").unwrap(),
            retry_jitter: 0.0,
            sender: sluice_delivery::SenderConfig {
                allow_http: true,
                allow_private: true,
                ..Default::default()
            },
            shutdown_grace: Duration::from_secs(2),
            keyring: Some(sluice_testkit::keyring()),
            ..Default::default()
        },
    )
    .await;
    let logs = || {
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        format!("--- a.log\n{}\n--- b.log\n{}", read("a.log"), read("b.log"))
    };

    let (_, key) = Clients::workspace_with_key(a, "replicas").await;
    let mut through_a = Clients::connect(a, Some(&key)).await;
    let one = subscribe(&mut through_a, receiver.url("/one")).await;
    data.wait_for_revision(latest_revision(&control_db).await)
        .await;
    let replica_b = control_process(b, &control_database.url, data_addr, dir.join("b.log")).await;

    // Events flow from here until the survivor's change is seen at the receiver.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn({
        let stop = Arc::clone(&stop);
        let mut ingest = data.ingest().await;
        let key = key.clone();
        async move {
            // (message id, deliveries it made) of every acked event.
            let mut acked: Vec<(String, u32)> = Vec::new();
            let mut pace = tokio::time::interval(Duration::from_millis(2));
            while !stop.load(Ordering::Relaxed) {
                pace.tick().await;
                let response = ingest
                    .publish(sluice_testkit::authed(
                        dpb::PublishRequest {
                            event_type: "conversation.created".into(),
                            payload_json: format!(r#"{{"n":{}}}"#, acked.len()),
                            ..Default::default()
                        },
                        &key,
                    ))
                    .await
                    .unwrap()
                    .into_inner();
                acked.push((response.message_id, response.delivery_count));
            }
            acked
        }
    });

    // A stores outcomes (the reporter streams to it), then dies mid-flow.
    receiver.wait_for(KILL_AFTER_HITS, WAIT).await;
    let started = Instant::now();
    while attempts(&through_a).await.is_empty() {
        assert!(
            started.elapsed() < WAIT,
            "no outcome reached replica A; logs:\n{}",
            logs()
        );
        // The delivery log offers nothing to await: polled.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    replica_a.kill9().await;
    drop(through_a);

    // A change through the survivor reaches the data plane: the watch moved to B.
    let mut through_b = Clients::connect(b, Some(&key)).await;
    let two = subscribe(&mut through_b, receiver.url("/two")).await;
    let revision = latest_revision(&control_db).await;
    tokio::time::timeout(WAIT, async {
        data.plane
            .config_revision()
            .wait_for(|r| *r >= revision)
            .await
            .unwrap();
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the change made through B (revision {revision}) never reached the data plane; logs:\n{}",
            logs()
        )
    });
    receiver
        .wait_until(WAIT, |got| got.iter().any(|r| r.path == "/two"))
        .await
        .unwrap_or_else(|_| panic!("no event reached the new subscription; logs:\n{}", logs()));
    stop.store(true, Ordering::Relaxed);
    let acked = publisher.await.unwrap();
    let deliveries: usize = acked.iter().map(|(_, n)| *n as usize).sum();
    let hits = receiver
        .wait_until(WAIT, |got| got.len() >= deliveries)
        .await
        .unwrap_or_else(|got| {
            panic!(
                "{deliveries} deliveries acked, {} received; logs:\n{}",
                got.len(),
                logs()
            )
        });

    // The delivery log, through the survivor: every attempt once, no more, no fewer.
    let by_path = HashMap::from([("/one", one), ("/two", two)]);
    let mut hit_count: HashMap<(String, String), usize> = HashMap::new();
    for hit in &hits {
        let subscription = by_path[hit.path.as_str()].clone();
        *hit_count
            .entry((hit.header("webhook-id").to_owned(), subscription))
            .or_default() += 1;
    }
    let started = Instant::now();
    let logged = loop {
        let logged = attempts(&through_b).await;
        if logged.len() >= hits.len() || started.elapsed() > WAIT {
            break logged;
        }
        // The delivery log offers nothing to await: polled.
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut log_count: HashMap<(String, String), usize> = HashMap::new();
    for attempt in &logged {
        *log_count
            .entry((attempt.message_id.clone(), attempt.subscription_id.clone()))
            .or_default() += 1;
    }
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
    assert!(
        differ.is_empty() && logged.len() == hits.len(),
        "{} hits, {} attempts logged; (delivery, hits, logged) that differ: {differ:?}; logs:\n{}",
        hits.len(),
        logged.len(),
        logs()
    );
    println!(
        "data plane on {}: {} events, {} hits, {} attempts logged, killed A after {KILL_AFTER_HITS} hits",
        data_backend.label(),
        acked.len(),
        hits.len(),
        logged.len()
    );

    data.stop().await;
    drop(replica_b);
    let _ = control_db.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    control_database.drop_database().await;
    data_database.drop_database().await;
}

/// Runs `sluice <args>` with `env`, expecting it to exit on its own within `WAIT`; returns
/// whether it succeeded and its stderr.
async fn run_to_exit(args: &[&str], env: &[(String, String)]) -> (bool, String) {
    let mut command = tokio::process::Command::new(sluice_testkit::sluice_bin!());
    command.args(args).kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    let output = tokio::time::timeout(WAIT, command.output())
        .await
        .unwrap_or_else(|_| panic!("sluice {args:?} did not exit within {WAIT:?}"))
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_entry_of_the_control_endpoint_list_fails_the_start_naming_the_flag() {
    let dir =
        std::env::temp_dir().join(sluice_core::ids::new_id(sluice_core::ids::IdKind::Delivery));
    let listen = free_addr().to_string();
    for (list, names) in [
        (
            "http://127.0.0.1:50051,nonsense",
            r#"--control-endpoint: entry 2 "nonsense" is not an http://host:port URL"#,
        ),
        (
            "http://127.0.0.1:50051, http://control:50051/v1",
            r#"--control-endpoint: entry 2 "http://control:50051/v1" is not an http://host:port URL: it has a path"#,
        ),
        (
            "ftp://127.0.0.1:21",
            r#"--control-endpoint: entry 1 "ftp://127.0.0.1:21" is not"#,
        ),
    ] {
        let (ok, stderr) = run_to_exit(
            &[
                "data",
                "--listen",
                &listen,
                "--data-dir",
                dir.to_str().unwrap(),
                "--control-endpoint",
                list,
            ],
            &env(INTERNAL_TOKEN),
        )
        .await;
        assert!(!ok, "started with --control-endpoint {list}: {stderr}");
        assert!(stderr.contains(names), "{list}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planes_with_different_internal_tokens_fail_at_start_naming_the_flag() {
    let other_token = "it_another_internal_token_9876543210";
    let dir =
        std::env::temp_dir().join(sluice_core::ids::new_id(sluice_core::ids::IdKind::Delivery));

    // A data plane whose control plane refuses its token; a dead replica listed first does
    // not hide the one that answers.
    let control = ControlHarness::start(&Backend::Sqlite, true, None).await;
    let (ok, stderr) = run_to_exit(
        &[
            "data",
            "--listen",
            &free_addr().to_string(),
            "--data-dir",
            dir.to_str().unwrap(),
            "--control-endpoint",
            &format!("http://{},http://{}", free_addr(), control.addr),
        ],
        &env(other_token),
    )
    .await;
    assert!(!ok, "the data plane started with another token: {stderr}");
    for named in [
        "--internal-token",
        "SLUICE_INTERNAL_TOKEN",
        &control.addr.to_string(),
    ] {
        assert!(stderr.contains(named), "{named} not in: {stderr}");
    }
    assert!(
        !stderr.contains(other_token),
        "the token was printed: {stderr}"
    );
    control.stop().await;

    // A control plane whose data plane refuses its token.
    let data_database = TestDatabase::create(&Backend::Sqlite).await;
    let data = DataHarness::start(
        data_database.open(Plane::Data).await,
        sluice_data::DataConfig {
            internal_token: INTERNAL_TOKEN.into(),
            control_endpoint: format!("http://{}", free_addr()),
            keyring: Some(sluice_testkit::keyring()),
            ..Default::default()
        },
    )
    .await;
    let (ok, stderr) = run_to_exit(
        &[
            "control",
            "--listen",
            &free_addr().to_string(),
            "--data-dir",
            dir.to_str().unwrap(),
            "--data-plane-endpoint",
            &format!("http://{}", data.addr),
        ],
        &env(other_token),
    )
    .await;
    assert!(
        !ok,
        "the control plane started with another token: {stderr}"
    );
    for named in [
        "--internal-token",
        "SLUICE_INTERNAL_TOKEN",
        "--data-plane-endpoint",
    ] {
        assert!(stderr.contains(named), "{named} not in: {stderr}");
    }
    assert!(
        !stderr.contains(other_token),
        "the token was printed: {stderr}"
    );
    data.stop().await;
    data_database.drop_database().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_that_is_down_or_silent_does_not_hold_the_data_plane_up() {
    let dir =
        std::env::temp_dir().join(sluice_core::ids::new_id(sluice_core::ids::IdKind::Delivery));
    std::fs::create_dir_all(&dir).unwrap();
    // Nothing listens on the first; the second accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free_addr();
    let args: Vec<String> = [
        "data",
        "--listen",
        &addr.to_string(),
        "--data-dir",
        dir.to_str().unwrap(),
        "--control-endpoint",
        &format!(
            "http://{},http://{}",
            free_addr(),
            silent.local_addr().unwrap()
        ),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let started = Instant::now();
    let mut data = SluiceProcess::start(
        &sluice_testkit::sluice_bin!(),
        &args,
        &env(INTERNAL_TOKEN),
        addr,
        dir.join("data.log"),
    )
    .await;
    let took = started.elapsed();
    println!("the data plane was serving {took:?} after its start");
    assert!(
        took < Duration::from_secs(15),
        "the start waited {took:?} for control planes that cannot answer"
    );
    assert!(
        data.terminate().await,
        "the data plane did not stop cleanly"
    );
    drop(silent);
    let _ = std::fs::remove_dir_all(&dir);
}
