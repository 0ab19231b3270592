//! `sluice bench`: a throughput and latency benchmark of both planes, end to end. The
//! `sluice` binary parses the flags (`BenchArgs`) and calls `run`; of Sluice this crate
//! uses only the protos, `sluice-core` and `sluice-client` (the publisher client users
//! use), and only the binary depends on it.
//!
//! By default it starts `sluice dev` (the running executable, so `run` is only meant to be
//! called from the `sluice` binary) as a child process on fresh ports
//! and a fresh data directory, so the planes' CPU time and peak memory can be read from
//! `/proc` apart from the bench's own publisher and receiver. It starts its own loopback
//! webhook receiver, sets up a workspace, an API key and `--subscriptions` subscriptions
//! (filter `*`) through the control plane, checks with one warm-up event that the data plane
//! has that configuration, then publishes `--events` events through `sluice-client` over one
//! `IngestService.PublishStream` with `--concurrency` events in flight, and waits for every
//! delivery. It reports publish and delivery rates, the ack-to-arrival latency, duplicates,
//! and the planes' CPU per delivery and peak RSS.
//!
//! CPU time is utime + stime of `/proc/<pid>/stat` (every thread), in clock ticks of
//! `sysconf(_SC_CLK_TCK)` (100 per second on Linux), taken just before the first publish
//! and once the last delivery arrived: outcome reporting to the control plane that is still
//! under way then is not counted. Peak RSS is `VmHWM` of `/proc/<pid>/status`, over the
//! process's whole life (start-up and warm-up included).

mod args;
mod baseline;
mod child;
mod fairness;
mod publisher;
mod receiver;
mod report;

use std::io::IsTerminal as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sluice_proto::control::v1::subscription_service_client::SubscriptionServiceClient;
use sluice_proto::control::v1::workspace_service_client::WorkspaceServiceClient;
use sluice_proto::control::v1::{
    CreateApiKeyRequest, CreateSubscriptionRequest, CreateWorkspaceRequest, DeleteWorkspaceRequest,
    PublishQuota, Subscription, Workspace,
};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub use self::args::{BenchArgs, Workload};
use self::child::{ChildPlanes, ProcSample};
use self::publisher::{PublishPlan, PublishProgress};
use self::receiver::RunningReceiver;
use self::report::{Report, percentiles};

/// POSTs of each baseline that --with-http-baseline takes.
const BASELINE_POSTS: u64 = 50_000;

/// `http://` in front of a bare `host:port`.
fn endpoint_url(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}

/// The backend to report: never the URL's credentials, path or query.
fn backend_label(database_url: Option<&str>, started_by_bench: bool) -> String {
    match database_url {
        None if started_by_bench => "sqlite".to_owned(),
        None => "unknown".to_owned(),
        Some(u) if u.starts_with("sqlite:") => "sqlite".to_owned(),
        Some(u) => match url::Url::parse(u) {
            Ok(parsed) => {
                let host = parsed.host_str().unwrap_or("localhost");
                match parsed.port() {
                    Some(port) => format!("postgres ({host}:{port})"),
                    None => format!("postgres ({host})"),
                }
            }
            Err(_) => "postgres".to_owned(),
        },
    }
}

/// Whether `database_url` names a PostgreSQL server on this machine (a loopback address or
/// a Unix socket), whose processes the bench can then read the CPU time of.
fn is_local_postgres(database_url: Option<&str>) -> bool {
    let Some(url) = database_url.filter(|u| !u.starts_with("sqlite:")) else {
        return false;
    };
    let Ok(parsed) = url::Url::parse(url) else {
        return false;
    };
    // `postgres:` is not a scheme the URL standard knows, so its host comes back as text
    // (an IPv6 address in brackets), never as a parsed address.
    match parsed.host_str() {
        None | Some("") => true,
        Some(host) => {
            host.eq_ignore_ascii_case("localhost")
                || host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
    }
}

/// The planes under test.
enum Planes {
    /// `sluice dev` started by the bench.
    Child(ChildPlanes),
    /// Planes started by someone else.
    External {
        control: String,
        data: String,
        admin_key: String,
        pids: Vec<u32>,
    },
}

impl Planes {
    fn control_url(&self) -> String {
        match self {
            Planes::Child(c) => format!("http://{}", c.control),
            Planes::External { control, .. } => endpoint_url(control),
        }
    }

    /// Every data plane's URL (one unless the bench started several).
    fn data_urls(&self) -> Vec<String> {
        match self {
            Planes::Child(c) => c.data.iter().map(|a| format!("http://{a}")).collect(),
            Planes::External { data, .. } => vec![endpoint_url(data)],
        }
    }

    fn admin_key(&self) -> &str {
        match self {
            Planes::Child(c) => &c.admin_key,
            Planes::External { admin_key, .. } => admin_key,
        }
    }

    fn pids(&self) -> Vec<u32> {
        match self {
            Planes::Child(c) => c.pids(),
            Planes::External { pids, .. } => pids.clone(),
        }
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        match self {
            Planes::Child(c) => c.check_alive(),
            Planes::External { .. } => Ok(()),
        }
    }

    /// CPU seconds summed over the planes' processes, and their peak RSS summed.
    fn sample(&self) -> Option<ProcSample> {
        let pids = self.pids();
        if pids.is_empty() {
            return None;
        }
        let mut total = ProcSample::default();
        for pid in pids {
            let s = child::sample(pid)?;
            total.cpu_seconds += s.cpu_seconds;
            total.peak_rss_bytes += s.peak_rss_bytes;
        }
        Some(total)
    }
}

/// Runs the bench: prints the report, and fails when it timed out or the stream broke.
///
/// `on_signal` is called once the planes are up and returns a token that Ctrl-C or SIGTERM
/// cancels (the binary's own handler): from then on a signal stops the run and still stops
/// the planes the bench started. Before that a signal keeps its default action.
pub async fn run(
    args: BenchArgs,
    on_signal: impl FnOnce() -> CancellationToken,
) -> anyhow::Result<()> {
    args.validate()?;
    if args.http_baseline {
        let measured = baseline::run(&args).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&measured)?);
        } else {
            print!("{}", report::baseline_table(&measured));
        }
        return Ok(());
    }
    let say = |msg: &str| {
        if !args.json {
            eprintln!("{msg}");
        }
    };

    let receiver = receiver::start(
        Duration::from_millis(args.receiver_delay_ms),
        args.receiver_failure_rate,
    )
    .await?;

    let mut planes = match (&args.control, &args.data, &args.admin_key) {
        (Some(control), Some(data), Some(admin_key)) => Planes::External {
            control: control.clone(),
            data: data.clone(),
            admin_key: admin_key.clone(),
            pids: args.pid.clone(),
        },
        (Some(_), _, _) => bail!("--control needs --data and --admin-key"),
        (None, _, _) => {
            if args.database_url.is_some() {
                let exe = std::env::current_exe().context("cannot find the sluice binary")?;
                if !child::dev_supports_database_url(&exe) {
                    bail!(
                        "`sluice dev` has no --database-url option yet, so the planes the bench \
                         starts can only run on SQLite. To benchmark PostgreSQL, run `sluice \
                         control` and `sluice data` on it and point the bench at them with \
                         --control, --data, --admin-key (and --pid for CPU and memory)"
                    );
                }
            }
            let mut child = match (args.data_replicas, args.database_url.as_deref()) {
                (Some(replicas), Some(url)) => {
                    say(&format!(
                        "sluice bench: starting sluice control and {replicas} sluice data as child processes..."
                    ));
                    ChildPlanes::spawn_cluster(url, replicas, args.keep_data_dir)?
                }
                _ => {
                    say("sluice bench: starting sluice dev as a child process...");
                    ChildPlanes::spawn(args.database_url.as_deref(), args.keep_data_dir)?
                }
            };
            child
                .wait_healthy(Duration::from_secs(args.setup_timeout))
                .await?;
            Planes::Child(child)
        }
    };

    // Ctrl-C or SIGTERM stops the run, and still stops the child below.
    let interrupted = on_signal();
    if args.workload == Workload::Fairness {
        let result = tokio::select! {
            r = measure_fairness(&args, &receiver, &mut planes) => r,
            () = interrupted.cancelled() => Err(anyhow::anyhow!("interrupted")),
        };
        let keep = result.as_ref().map_or(true, |r| r.timed_out);
        stop_planes(&args, &mut planes, keep).await;
        let report = result?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report.table());
        }
        if report.timed_out {
            bail!("timed out after {}s", args.timeout);
        }
        return Ok(());
    }
    let result = tokio::select! {
        r = measure(&args, &receiver, &mut planes) => r,
        () = interrupted.cancelled() => Err(anyhow::anyhow!("interrupted")),
    };

    let keep = match &result {
        Err(_) => true,
        Ok(r) => r.timed_out || r.stream_error.is_some(),
    };
    stop_planes(&args, &mut planes, keep).await;

    finish(&args, result?)
}

/// Stops the planes the bench started; their data directory is kept when `keep` (a
/// failed run) or --keep-data-dir.
async fn stop_planes(args: &BenchArgs, planes: &mut Planes, mut keep: bool) {
    let say = |msg: &str| {
        if !args.json {
            eprintln!("{msg}");
        }
    };
    if let Planes::Child(child) = planes {
        if !child.stop().await {
            say("sluice bench: sluice dev did not stop cleanly on SIGTERM");
            keep = true;
        }
        if keep || args.keep_data_dir {
            say(&format!(
                "sluice bench: the planes' data directory and log are kept in {}",
                child.data_dir.display()
            ));
        }
        child.cleanup(keep);
    }
}

/// `--workload fairness`: two workspaces set up and warmed, then [`fairness::run`].
async fn measure_fairness(
    args: &BenchArgs,
    receiver: &RunningReceiver,
    planes: &mut Planes,
) -> anyhow::Result<fairness::FairnessReport> {
    let setup_deadline = Instant::now() + Duration::from_secs(args.setup_timeout);
    let control = child::connect(&planes.control_url()).await?;
    let data = planes.data_urls();
    // A's own quota is set as its workspace is made: the data plane has it before the key
    // and the subscriptions, which the warm-up waits for.
    let (_, big_key) = set_up(
        args,
        receiver,
        &control,
        planes.admin_key(),
        args.big_publish_quota,
    )
    .await?;
    let (_, small_key) = set_up(args, receiver, &control, planes.admin_key(), None).await?;
    let payload = publisher::payload(args.payload_bytes);
    for plane in &data {
        for key in [&big_key, &small_key] {
            warm_up(args, receiver, planes, plane, key, setup_deadline, &payload).await?;
        }
    }
    fairness::run(
        args,
        receiver,
        planes,
        &data,
        &fairness::Tenant { api_key: big_key },
        &fairness::Tenant { api_key: small_key },
        payload,
    )
    .await
}

/// Prints the default workload's report; fails when it timed out or the stream broke.
fn finish(args: &BenchArgs, report: Report) -> anyhow::Result<()> {
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    if report.timed_out {
        bail!(
            "timed out after {}s: {} of {} expected deliveries arrived",
            args.timeout,
            report.attempted,
            report.expected_deliveries
        );
    }
    if let Some(e) = report.stream_error {
        bail!("publishing failed: {e}");
    }
    Ok(())
}

/// Everything between planes that are up and planes to stop.
async fn measure(
    args: &BenchArgs,
    receiver: &RunningReceiver,
    planes: &mut Planes,
) -> anyhow::Result<Report> {
    let setup_deadline = Instant::now() + Duration::from_secs(args.setup_timeout);
    let control = child::connect(&planes.control_url()).await?;
    // Each data plane is reached here once, so an address that does not answer fails now;
    // the events go through sluice-client's own connections.
    let data = planes.data_urls();
    for url in &data {
        child::connect(url).await?;
    }

    let (workspace_id, api_key) =
        set_up(args, receiver, &control, planes.admin_key(), None).await?;
    let posts = args.events.min(BASELINE_POSTS);
    let before = if args.with_http_baseline {
        Some(baseline::run_posts(args, posts).await?)
    } else {
        None
    };
    let mut outcome =
        warm_up_and_publish(args, receiver, planes, &data, &api_key, setup_deadline).await;
    if let (Some(before), Ok(report)) = (before, &mut outcome) {
        let after = baseline::run_posts(args, posts).await?;
        report.add_http_baseline(&before, &after);
    }
    if matches!(planes, Planes::External { .. }) {
        // Leave a running system as it was found (best effort).
        let mut workspaces = WorkspaceServiceClient::new(control.clone());
        let _ = workspaces
            .delete_workspace(bearer(
                DeleteWorkspaceRequest { id: workspace_id },
                planes.admin_key(),
            )?)
            .await;
    }
    outcome
}

fn bearer<T>(message: T, key: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {key}")
            .parse()
            .map_err(|_| anyhow::anyhow!("the key is not valid gRPC metadata"))?,
    );
    Ok(request)
}

fn status_error(what: &str, status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{what}: {:?}: {}", status.code(), status.message())
}

/// Creates the workspace, its API key and the subscriptions. Returns the workspace id and
/// the API key.
async fn set_up(
    args: &BenchArgs,
    receiver: &RunningReceiver,
    control: &Channel,
    admin_key: &str,
    publish_quota: Option<u32>,
) -> anyhow::Result<(String, String)> {
    let mut workspaces = WorkspaceServiceClient::new(control.clone());
    let workspace = workspaces
        .create_workspace(bearer(
            CreateWorkspaceRequest {
                workspace: Some(Workspace {
                    display_name: format!("sluice bench {}", chrono::Utc::now().to_rfc3339()),
                    publish_quota: publish_quota.map(|events_per_second| PublishQuota {
                        events_per_second,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
            admin_key,
        )?)
        .await
        .map_err(|s| status_error("creating the bench workspace", s))?
        .into_inner()
        .workspace
        .context("CreateWorkspace answered without a workspace")?;
    let key = workspaces
        .create_api_key(bearer(
            CreateApiKeyRequest {
                workspace_id: workspace.id.clone(),
                display_name: "sluice bench".to_owned(),
            },
            admin_key,
        )?)
        .await
        .map_err(|s| status_error("creating the bench API key", s))?
        .into_inner()
        .key;
    let mut subscriptions = SubscriptionServiceClient::new(control.clone());
    for i in 0..args.subscriptions {
        subscriptions
            .create_subscription(bearer(
                CreateSubscriptionRequest {
                    workspace_id: String::new(),
                    subscription: Some(Subscription {
                        description: format!("sluice bench receiver {i}"),
                        url: format!("http://{}/hook/{i}", receiver.addr),
                        filters: vec!["*".to_owned()],
                        ..Default::default()
                    }),
                    secret: String::new(),
                },
                &key,
            )?)
            .await
            .map_err(|s| {
                status_error(
                    &format!(
                        "creating subscription {i} (plain http to 127.0.0.1 must be allowed: \
                         `sluice dev` allows it, `sluice control` needs --allow-http)"
                    ),
                    s,
                )
            })?;
    }
    Ok((workspace.id, key))
}

/// One warm-up event until the data plane knows the key and every subscription and has
/// delivered it; then the measured run.
async fn warm_up_and_publish(
    args: &BenchArgs,
    receiver: &RunningReceiver,
    planes: &mut Planes,
    data: &[String],
    api_key: &str,
    setup_deadline: Instant,
) -> anyhow::Result<Report> {
    let payload = publisher::payload(args.payload_bytes);
    for plane in data {
        warm_up(
            args,
            receiver,
            planes,
            plane,
            api_key,
            setup_deadline,
            &payload,
        )
        .await?;
    }
    measured_run(args, receiver, planes, data, api_key, payload).await
}

/// One warm-up event through `data` until that data plane knows the key and every
/// subscription and has delivered it.
async fn warm_up(
    args: &BenchArgs,
    receiver: &RunningReceiver,
    planes: &mut Planes,
    data: &str,
    api_key: &str,
    setup_deadline: Instant,
    payload: &str,
) -> anyhow::Result<()> {
    let wanted = args.subscriptions as usize;
    // One try per endpoint round: the loop below retries, checking the planes in between.
    let ingest = publisher::publisher(data, api_key, 1, true, Duration::from_millis(500))?;
    let mut last: String;
    let warm_id = loop {
        planes.check_alive()?;
        match publisher::publish_one(&ingest, "bench.warmup", payload).await? {
            Ok((id, count)) if count as usize >= wanted => break id,
            Ok((_, count)) => {
                last = format!("it matched {count} of {wanted} subscriptions");
            }
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unauthenticated
                        | tonic::Code::Unavailable
                        | tonic::Code::PermissionDenied
                ) =>
            {
                last = format!("{:?}: {}", status.code(), status.message());
            }
            Err(status) => {
                return Err(status_error(
                    "the data plane refused the warm-up event",
                    status,
                ));
            }
        }
        if Instant::now() >= setup_deadline {
            bail!(
                "the data plane did not get the bench's API key and subscriptions within \
                 {}s (the config watch from the control plane): {last}",
                args.setup_timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    loop {
        let reached = receiver.state.subscriptions_reached(&warm_id);
        if reached >= wanted {
            break;
        }
        planes.check_alive()?;
        if Instant::now() >= setup_deadline {
            bail!(
                "the warm-up event {warm_id} reached {reached} of {wanted} subscriptions within \
                 {}s: the data plane accepted it but did not deliver it to the bench's receiver \
                 on {} (plain http to loopback must be allowed: `sluice dev` allows it, \
                 `sluice data` needs --allow-http --allow-private-destinations)",
                args.setup_timeout,
                receiver.addr
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// The measured run, once every data plane is warm.
async fn measured_run(
    args: &BenchArgs,
    receiver: &RunningReceiver,
    planes: &mut Planes,
    data: &[String],
    api_key: &str,
    payload: String,
) -> anyhow::Result<Report> {
    // The measured run.
    receiver.state.start_injecting();
    let baseline = receiver.state.counters();
    let cpu_before = planes.sample();
    let bench_cpu_before = child::sample(std::process::id());
    let machine_before = child::machine_ticks();
    let local_postgres = is_local_postgres(args.database_url.as_deref());
    let database_before = local_postgres.then(child::postgres_cpu_seconds).flatten();
    let total = args.events * u64::from(args.subscriptions);
    let progress = Arc::new(PublishProgress::default());
    let bar = if args.json || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr()).with_style(
            ProgressStyle::with_template(
                "{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} delivered  {msg}",
            )?
            .progress_chars("=> "),
        )
    };
    let ticker = {
        let bar = bar.clone();
        let state = receiver.state.clone();
        let progress = progress.clone();
        let events = args.events;
        tokio::spawn(async move {
            loop {
                let delivered = state.counters().distinct - baseline.distinct;
                bar.set_position(delivered);
                let errors = progress.errors.load(Ordering::Relaxed);
                bar.set_message(format!(
                    "{}/{events} acked{}",
                    progress.answered.load(Ordering::Relaxed),
                    if errors > 0 {
                        format!(", {errors} refused")
                    } else {
                        String::new()
                    }
                ));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
    let publish = publisher::publish_spread(
        data,
        PublishPlan {
            events: args.events,
            concurrency: args.concurrency,
            rate: args.rate,
            payload_json: payload,
            api_key: api_key.to_owned(),
            idempotency_keys: args.idempotency_keys,
        },
        progress,
        deadline,
    )
    .await?;

    // Wait for every delivery the data plane promised.
    let expected = publish.expected_deliveries;
    let mut timed_out = false;
    // The receiver signals the last arrival; the wait wakes every 100 ms besides only to
    // see that the planes are still alive and the deadline not passed.
    let mut awaited = baseline.distinct + expected;
    let deliveries = loop {
        let arrived = receiver
            .state
            .wait_for_distinct(awaited, Duration::from_millis(100))
            .await;
        if arrived {
            let d = report::deliveries(&receiver.state, &publish, args.subscriptions);
            if d.attempted >= expected {
                break d;
            }
            // Some arrivals were of events the publisher saw no ack for: wait for more.
            awaited = receiver.state.counters().distinct + 1;
        }
        if tokio::time::Instant::now() >= deadline {
            timed_out = true;
            break report::deliveries(&receiver.state, &publish, args.subscriptions);
        }
        if let Err(e) = planes.check_alive() {
            ticker.abort();
            bar.abandon();
            return Err(e);
        }
    };
    let cpu_after = planes.sample();
    let bench_cpu_after = child::sample(std::process::id());
    let machine_after = child::machine_ticks();
    let database_after = local_postgres.then(child::postgres_cpu_seconds).flatten();
    ticker.abort();
    bar.finish_and_clear();

    let counters = receiver.state.counters();
    let mut publish_latencies: Vec<u64> = publish
        .sent_at
        .iter()
        .zip(&publish.acked_at)
        .filter_map(|(sent, acked)| {
            let d = (*acked)?.saturating_duration_since((*sent)?);
            u64::try_from(d.as_micros()).ok()
        })
        .collect();
    let mut latencies = deliveries.latencies_us;
    let mut end_to_end = deliveries.end_to_end_us;
    let publish_seconds = publish
        .finished
        .saturating_duration_since(publish.started)
        .as_secs_f64();
    let delivery_seconds = deliveries.last_delivery.map(|last| {
        last.saturating_duration_since(publish.started)
            .as_secs_f64()
    });
    let planes_cpu_seconds = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) => Some(a.cpu_seconds - b.cpu_seconds),
        _ => None,
    };
    let database_cpu_seconds = database_before
        .zip(database_after)
        .map(|(b, a)| (a - b).max(0.0));
    Ok(Report {
        events: args.events,
        subscriptions: args.subscriptions,
        payload_bytes: args.payload_bytes.max(10),
        concurrency: args.concurrency,
        idempotency_keys: args.idempotency_keys,
        rate: args.rate,
        receiver_delay_ms: args.receiver_delay_ms,
        receiver_failure_rate: args.receiver_failure_rate,
        backend: backend_label(
            args.database_url.as_deref(),
            matches!(planes, Planes::Child(_)),
        ),
        data_replicas: data.len(),
        accepted: publish.accepted,
        publish_errors: publish.errors,
        first_publish_error: publish.first_error.clone(),
        stream_error: publish.stream_error.clone(),
        expected_deliveries: expected,
        deliveries: deliveries.delivered,
        attempted: deliveries.attempted,
        failed_by_design: deliveries.failed_by_design,
        receiver_requests: counters.requests - baseline.requests,
        receiver_500s: counters.failed - baseline.failed,
        duplicates: deliveries.duplicates,
        missing_webhook_id: counters.missing_id - baseline.missing_id,
        timed_out,
        publish_seconds,
        publish_acks_per_second: if publish_seconds > 0.0 {
            args.events as f64 / publish_seconds
        } else {
            0.0
        },
        delivery_seconds,
        deliveries_per_second: delivery_seconds
            .filter(|s| *s > 0.0)
            .map(|s| deliveries.delivered as f64 / s),
        publish_ack_latency_ms: percentiles(&mut publish_latencies),
        ack_to_arrival_latency_ms: percentiles(&mut latencies),
        publish_to_arrival_latency_ms: percentiles(&mut end_to_end),
        arrivals_before_ack: deliveries.before_ack,
        planes_cpu_seconds,
        planes_cpu_seconds_per_1000_deliveries: planes_cpu_seconds
            .filter(|_| deliveries.delivered > 0)
            .map(|cpu| cpu * 1000.0 / deliveries.delivered as f64),
        bench_cpu_seconds: match (bench_cpu_before, bench_cpu_after) {
            (Some(b), Some(a)) => Some(a.cpu_seconds - b.cpu_seconds),
            _ => None,
        },
        planes_peak_rss_mib: cpu_after.map(|s| s.peak_rss_bytes as f64 / (1024.0 * 1024.0)),
        database_cpu_seconds_per_1000_deliveries: database_cpu_seconds
            .filter(|_| deliveries.delivered > 0)
            .map(|cpu| cpu * 1000.0 / deliveries.delivered as f64),
        machine_steal_percent: machine_before
            .zip(machine_after)
            .and_then(|(b, a)| child::steal_percent(b, a)),
        http_baseline_posts_per_second: None,
        http_baseline_cpu_us_per_post: None,
        planes_cpu_per_delivery_in_posts: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_postgres_server_on_this_machine_is_local() {
        for local in [
            "postgres://postgres@127.0.0.1:5432/bench",
            "postgresql://u:p@localhost/sluice",
            "postgres://[::1]/sluice",
            "postgres:///sluice?host=/var/run/postgresql",
        ] {
            assert!(is_local_postgres(Some(local)), "{local}");
        }
        for remote in [
            "postgres://db.internal:5432/sluice",
            "postgres://10.0.0.7/sluice",
            "sqlite://sluice.db",
            "not a url",
        ] {
            assert!(!is_local_postgres(Some(remote)), "{remote}");
        }
        assert!(!is_local_postgres(None));
    }

    #[test]
    fn backend_never_shows_credentials() {
        assert_eq!(backend_label(None, true), "sqlite");
        assert_eq!(backend_label(None, false), "unknown");
        assert_eq!(
            backend_label(
                Some("postgres://bench:s3cret@db.internal:5433/sluice?sslmode=require"),
                true
            ),
            "postgres (db.internal:5433)"
        );
        assert_eq!(
            backend_label(Some("postgresql://u:p@localhost/sluice"), true),
            "postgres (localhost)"
        );
        assert_eq!(backend_label(Some("not a url with p@ss"), true), "postgres");
    }

    #[test]
    fn bare_addresses_get_a_scheme() {
        assert_eq!(endpoint_url("127.0.0.1:50051"), "http://127.0.0.1:50051");
        assert_eq!(endpoint_url("http://h:1"), "http://h:1");
    }
}
