//! The flags of `sluice bench` and their checks, apart from the run so that every part of
//! the bench can read them without importing the crate root.

use anyhow::bail;
use clap::{Args, ValueEnum};

/// What `sluice bench` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// One workspace publishes --events: throughput, latency, CPU.
    Default,
    /// Workspace A publishes --events flat out (or at --rate) while workspace B publishes
    /// --small-events at --small-rate: B's publish->arrival latency, alone and with A.
    Fairness,
}

/// Flags of `sluice bench`.
#[derive(Debug, Args, Clone)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Workload::Default)]
    pub workload: Workload,
    /// With --workload fairness: the events the small workspace (B) publishes.
    #[arg(long, default_value_t = 500)]
    pub small_events: u64,
    /// With --workload fairness: the small workspace's publish rate, events per second.
    #[arg(long, default_value_t = 100.0)]
    pub small_rate: f64,
    /// With --workload fairness: give the big workspace (A) a publish quota of its own, this
    /// many events per second (bursts of one second's worth), set through the control plane
    /// as an operator would for a noisy tenant; B keeps the server's (none unless
    /// SLUICE_WORKSPACE_PUBLISH_RATE is set). A publishes through sluice-client, which
    /// waits out what the quota refuses.
    #[arg(long)]
    pub big_publish_quota: Option<u32>,
    /// Events to publish (with --workload fairness: the big workspace's, A).
    #[arg(long, default_value_t = 20_000)]
    pub events: u64,
    /// Subscriptions (filter `*`, each at its own path of the bench's receiver); every event
    /// is delivered to each.
    #[arg(long, default_value_t = 1)]
    pub subscriptions: u32,
    /// Publish requests in flight on the stream at most (closed loop: the next request goes
    /// when an ack returns).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Give every event an idempotency key, as sluice-client does by default. Off (the
    /// default workload, as every figure before it), events go without one, so the data
    /// plane does not look earlier keys up.
    #[arg(long)]
    pub idempotency_keys: bool,
    /// Size of each event's payload in bytes: a JSON object, the same bytes every time.
    #[arg(long, default_value_t = 1024)]
    pub payload_bytes: usize,
    /// Publish at this many events per second (open loop), still at most --concurrency in
    /// flight. Unset: closed loop, as fast as acks return. With --workload fairness: the
    /// big workspace's (A's) pace.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds to wait for every ack and delivery before giving up (the report is still
    /// printed, marked as timed out, and the command fails).
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Seconds allowed for starting the planes, setting up and the warm-up event.
    #[arg(long, default_value_t = 60)]
    pub setup_timeout: u64,
    /// The receiver waits this many milliseconds before answering each delivery.
    #[arg(long, default_value_t = 0)]
    pub receiver_delay_ms: u64,
    /// Fraction (0 to 1) of deliveries the receiver answers with 500, at random. A delivery
    /// answered 500 counts as attempted ("failed by design"), not as delivered; the bench
    /// does not wait for its retries. At high rates the data plane's circuit breaker holds
    /// deliveries back, and the bench times out.
    #[arg(long, default_value_t = 0.0)]
    pub receiver_failure_rate: f64,
    /// Print the results as one JSON object on stdout (no progress bar, no table).
    #[arg(long)]
    pub json: bool,
    /// PostgreSQL URL for the planes the bench starts (passed to the child as
    /// SLUICE_DATABASE_URL); an empty database, one per run (each run seals its secrets with
    /// a new master key). Default: SQLite in a fresh temporary directory. Only its host is
    /// ever printed.
    #[arg(long, conflicts_with = "control")]
    pub database_url: Option<String>,
    /// Start a cluster instead of `sluice dev`: one `sluice control` and this many `sluice
    /// data` processes on --database-url (PostgreSQL), the events spread evenly over the
    /// data planes (one stream each, --concurrency and --rate shared among them). CPU is
    /// summed over every plane process.
    #[arg(long, requires = "database_url", conflicts_with = "control")]
    pub data_replicas: Option<u32>,
    /// Benchmark a running control plane at this address (`host:port` or `http://...`)
    /// instead of starting `sluice dev`. Needs --data and --admin-key.
    #[arg(long, requires_all = ["data", "admin_key"])]
    pub control: Option<String>,
    /// The running data plane's address, with --control.
    #[arg(long, requires = "control")]
    pub data: Option<String>,
    /// The running control plane's admin key, with --control. (The planes the bench starts
    /// get a random one.)
    #[arg(long, env = "SLUICE_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// With --control: process id(s) of the running planes, to report their CPU time and
    /// peak RSS (summed over the processes). Repeat for separate control and data processes.
    #[arg(long, requires = "control")]
    pub pid: Vec<u32>,
    /// Keep the temporary data directory of the planes the bench starts (it is always kept
    /// when the bench fails, for its log).
    #[arg(long)]
    pub keep_data_dir: bool,
    /// Measure only the machine's loopback HTTP ceiling: reqwest POSTs --events bodies of
    /// --payload-bytes to the bench's receiver, --concurrency at a time, with no plane
    /// started. Run it beside a bench of the planes to see how fast the machine's loopback
    /// HTTP was (it does not measure the disk, which the planes also wait on).
    #[arg(long, conflicts_with_all = ["control", "database_url", "rate", "subscriptions", "receiver_delay_ms", "receiver_failure_rate"])]
    pub http_baseline: bool,
    /// Also measure the loopback HTTP ceiling (as --http-baseline, with --events POSTs but
    /// at most 50,000) just before and just after the run, and give the planes' CPU per
    /// delivery as a multiple of the CPU of one loopback POST: a figure that moves less with
    /// the VM's speed than the absolute ones (the baseline is noisy too; the planes may still
    /// be finishing their delivery log during the second one).
    #[arg(long, conflicts_with = "http_baseline")]
    pub with_http_baseline: bool,
}

impl BenchArgs {
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        if self.events == 0 {
            bail!("--events must be at least 1");
        }
        if self.subscriptions == 0 {
            bail!("--subscriptions must be at least 1");
        }
        if self.concurrency == 0 {
            bail!("--concurrency must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.receiver_failure_rate) {
            bail!("--receiver-failure-rate must be between 0 and 1");
        }
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            bail!("--rate must be a positive number of events per second");
        }
        if let Some(replicas) = self.data_replicas {
            if replicas == 0 {
                bail!("--data-replicas must be at least 1");
            }
            if self
                .database_url
                .as_deref()
                .is_none_or(|u| u.starts_with("sqlite:"))
            {
                bail!(
                    "--data-replicas needs a PostgreSQL --database-url: a SQLite file has one process"
                );
            }
        }
        if self.workload == Workload::Fairness {
            if self.small_events == 0 {
                bail!("--small-events must be at least 1");
            }
            if !(self.small_rate.is_finite() && self.small_rate > 0.0) {
                bail!("--small-rate must be a positive number of events per second");
            }
            if self.control.is_some() || self.http_baseline || self.with_http_baseline {
                bail!("--workload fairness starts its own planes, without an HTTP baseline");
            }
            if self
                .big_publish_quota
                .is_some_and(|q| !(1..=1_000_000).contains(&q))
            {
                bail!("--big-publish-quota must be 1 to 1,000,000 events per second");
            }
        } else if self.big_publish_quota.is_some() {
            bail!("--big-publish-quota goes with --workload fairness");
        }
        if self.timeout == 0 || self.setup_timeout == 0 {
            bail!("--timeout and --setup-timeout must be at least 1 second");
        }
        Ok(())
    }
}
