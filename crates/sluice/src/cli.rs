//! Flags and subcommands. Every flag has a `SLUICE_*` environment variable; flags win.
//! Configuration is validated before any port is bound.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;

use crate::policy_flags::PolicyArgs;
use crate::telemetry::TelemetryArgs;

/// Sluice: webhook delivery. Two gRPC planes, one binary.
#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "Sluice: webhook delivery. Two gRPC planes (control, data), one binary.",
    propagate_version = true
)]
pub struct Cli {
    /// Logging and OpenTelemetry export.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run both planes in one process on SQLite under --data-dir: nothing else to install.
    Dev(DevArgs),
    /// Run the control plane: workspaces, keys, event types, subscriptions, delivery log.
    Control(ControlArgs),
    /// Run the data plane: ingest, durable queue, signed delivery, retries.
    Data(DataArgs),
    /// Apply database migrations and exit.
    Migrate(MigrateArgs),
    /// Benchmark both planes end to end: publish over one stream, time every delivery.
    Bench(sluice_bench::BenchArgs),
    /// Run a local webhook receiver that prints (and verifies) what it gets.
    Listen(crate::listen::ListenArgs),
    /// Publish events: one (--event-type, --payload) or JSON lines from --file or stdin.
    Publish(crate::publish::PublishArgs),
    /// Master keys of the secrets at rest: make one, or re-seal the stored secrets.
    #[command(subcommand)]
    Keys(KeysCommand),
}

/// `sluice keys ...`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print a new random master key (base64 of 32 bytes) on stdout, its key id on stderr.
    Generate,
    /// Re-seal every stored secret under the current (first) master key, so the others
    /// can be dropped. Idempotent; safe while the planes run on PostgreSQL (SQLite: stop
    /// them first, one process per file).
    Rotate(RotateArgs),
}

/// The master keys that seal the stored secrets (signing secrets).
#[derive(Debug, Args, Clone)]
pub struct MasterKeyArgs {
    /// Master keys, base64 of 32 random bytes each, comma-separated, the current one first
    /// (the others still open what they sealed). Prefer the variable or a key file: a
    /// flag's value shows in the process list.
    #[arg(long, env = "SLUICE_MASTER_KEY", hide_env_values = true)]
    pub master_key: Option<String>,
    /// A file holding the master keys, in the same form.
    #[arg(long, env = "SLUICE_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
}

impl MasterKeyArgs {
    fn keyring(&self) -> anyhow::Result<Option<sluice_core::sealing::Keyring>> {
        crate::keys::keyring_from(self.master_key.as_deref(), self.master_key_file.as_deref())
    }
}

/// Flags of `sluice keys rotate`.
#[derive(Debug, Args, Clone)]
pub struct RotateArgs {
    /// Which plane's database to re-seal.
    #[arg(long, value_enum, default_value_t = PlaneArg::Both)]
    pub plane: PlaneArg,
    #[command(flatten)]
    pub keys: MasterKeyArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
}

impl Command {
    /// The OpenTelemetry service name when `OTEL_SERVICE_NAME` is unset.
    pub fn service_name(&self) -> &'static str {
        match self {
            Command::Control(_) => "sluice-control",
            Command::Data(_) => "sluice-data",
            _ => "sluice",
        }
    }
}

/// Where a plane keeps its data.
#[derive(Debug, Args, Clone)]
pub struct StorageArgs {
    /// Database URL (`postgres://user@host/db` or `sqlite://path?mode=rwc`). Default: a SQLite
    /// file under --data-dir.
    #[arg(long, env = "SLUICE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Directory for the SQLite files when no --database-url is given.
    #[arg(long, env = "SLUICE_DATA_DIR", default_value = ".sluice")]
    pub data_dir: PathBuf,
    /// The longest wait for the database, in milliseconds: for a connection, a statement, a
    /// lock, and (data plane) a publish's durable write. Past it a caller gets UNAVAILABLE
    /// at once ("not stored, publish again") instead of waiting on a database that is down.
    #[arg(long, env = "SLUICE_STORE_TIMEOUT_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub store_timeout_ms: u64,
}

impl StorageArgs {
    fn options(&self) -> sluice_store::StoreOptions {
        sluice_store::StoreOptions {
            timeout: Duration::from_millis(self.store_timeout_ms),
        }
    }

    /// Opens (and migrates) `plane`'s database.
    async fn open(
        &self,
        plane: sluice_store::Plane,
    ) -> anyhow::Result<sluice_store::sea_orm::DatabaseConnection> {
        let url = self.url(plane)?;
        sluice_store::open_with(&url, plane, &self.options())
            .await
            .with_context(|| format!("opening the {} database", plane_name(plane)))
    }

    fn url(&self, plane: sluice_store::Plane) -> anyhow::Result<String> {
        match &self.database_url {
            Some(url) => Ok(url.clone()),
            None => {
                std::fs::create_dir_all(&self.data_dir).with_context(|| {
                    format!(
                        "cannot create the data directory {}",
                        self.data_dir.display()
                    )
                })?;
                Ok(sluice_store::sqlite_url(&self.data_dir, plane))
            }
        }
    }
}

/// How long both planes keep what they store (`docs/retention.md`).
#[derive(Debug, Args, Clone)]
pub struct RetentionArgs {
    /// How long messages, payloads and the delivery log are kept (a workspace may set its
    /// own window), and config changes: `30s`, `15m`, `24h`, `30d`.
    #[arg(long, env = "SLUICE_RETENTION", default_value = "30d",
          value_parser = sluice_core::retention::parse_window)]
    pub retention: Duration,
    /// How long an idempotency key stops a repeat publish (a workspace may set its own).
    #[arg(long, env = "SLUICE_IDEMPOTENCY_RETENTION", default_value = "24h",
          value_parser = sluice_core::retention::parse_window)]
    pub idempotency_retention: Duration,
    /// How often the purge runs.
    #[arg(long, env = "SLUICE_RETENTION_INTERVAL", default_value = "1m",
          value_parser = sluice_core::retention::parse_window)]
    pub retention_interval: Duration,
}

impl RetentionArgs {
    /// The defaults these flags set.
    pub fn defaults(&self) -> sluice_core::retention::RetentionDefaults {
        sluice_core::retention::RetentionDefaults {
            retention: self.retention,
            idempotency: self.idempotency_retention,
            every: self.retention_interval,
        }
    }
}

/// Flags of `sluice control`.
#[derive(Debug, Args, Clone)]
pub struct ControlArgs {
    /// Address to serve gRPC on.
    #[arg(long, env = "SLUICE_CONTROL_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// The admin key, which manages workspaces and API keys (at least 16 characters).
    #[arg(long, env = "SLUICE_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// The token the planes authenticate each other with (at least 16 characters).
    #[arg(long, env = "SLUICE_INTERNAL_TOKEN", hide_env_values = true)]
    pub internal_token: Option<String>,
    /// Allow plain `http://` subscription URLs (development only).
    #[arg(long, env = "SLUICE_ALLOW_HTTP")]
    pub allow_http: bool,
    /// The data plane's address, for test sends, retries and replays.
    #[arg(
        long,
        env = "SLUICE_DATA_PLANE_ENDPOINT",
        default_value = "http://127.0.0.1:50052"
    )]
    pub data_plane_endpoint: String,
    #[command(flatten)]
    pub keys: MasterKeyArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub retention: RetentionArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// Flags of `sluice data`.
#[derive(Debug, Args, Clone)]
pub struct DataArgs {
    /// Address to serve gRPC on.
    #[arg(long, env = "SLUICE_DATA_LISTEN", default_value = "127.0.0.1:50052")]
    pub listen: SocketAddr,
    /// The token the planes authenticate each other with (at least 16 characters).
    #[arg(long, env = "SLUICE_INTERNAL_TOKEN", hide_env_values = true)]
    pub internal_token: Option<String>,
    /// The control plane's address, for the config watch and outcome reports. Several
    /// replicas: their addresses separated by commas (a name with several addresses counts
    /// as several); one is used at a time, the next when it fails.
    #[arg(
        long,
        env = "SLUICE_CONTROL_ENDPOINT",
        default_value = "http://127.0.0.1:50051"
    )]
    pub control_endpoint: String,
    #[command(flatten)]
    pub delivery: DeliveryArgs,
    #[command(flatten)]
    pub keys: MasterKeyArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub retention: RetentionArgs,
}

/// How the data plane delivers.
#[derive(Debug, Args, Clone)]
pub struct DeliveryArgs {
    /// Allow delivering to plain `http://` URLs.
    #[arg(long, env = "SLUICE_ALLOW_HTTP")]
    pub allow_http: bool,
    /// Allow destinations on loopback, private, link-local, CGNAT and metadata addresses.
    #[arg(long, env = "SLUICE_ALLOW_PRIVATE_DESTINATIONS")]
    pub allow_private_destinations: bool,
    /// Addresses or CIDRs that are allowed even though private (comma-separated).
    #[arg(long, env = "SLUICE_EGRESS_ALLOW", value_delimiter = ',')]
    pub egress_allow: Vec<String>,
    /// A PEM file of certificate authorities trusted for endpoints besides the system's.
    #[arg(long, env = "SLUICE_EXTRA_CA_FILE")]
    pub extra_ca_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Largest payload accepted, in bytes.
    #[arg(long, env = "SLUICE_MAX_PAYLOAD_BYTES", default_value_t = 256 * 1024)]
    pub max_payload_bytes: usize,
    /// Connect timeout of an attempt, in milliseconds.
    #[arg(long, env = "SLUICE_CONNECT_TIMEOUT_MS", default_value_t = 5_000)]
    pub connect_timeout_ms: u64,
    /// Attempts in flight per endpoint at most.
    #[arg(long, env = "SLUICE_ENDPOINT_CONCURRENCY", default_value_t = 16)]
    pub endpoint_concurrency: usize,
    /// Adapt each endpoint's limit between 1 and --endpoint-concurrency to how it answers
    /// (AIMD: grows while answers are fast, shrinks on timeouts, 429, 503 and slow answers).
    #[arg(long, env = "SLUICE_ADAPTIVE_CONCURRENCY", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub adaptive_concurrency: bool,
    /// Or after this many consecutive failed attempts (0: only the period counts).
    #[arg(long, env = "SLUICE_DISABLE_AFTER_ATTEMPTS", default_value_t = 0)]
    pub disable_after_attempts: u32,
    /// Seconds a data-plane replica owns the deliveries it claimed (PostgreSQL); a crashed
    /// replica's work is taken over after this.
    #[arg(long, env = "SLUICE_DELIVERY_LEASE_SECS", default_value_t = 60)]
    pub delivery_lease_secs: u64,
    /// The most deliveries this replica holds in memory (claimed, waiting in a lane or on
    /// a timer, in flight); beyond it new work waits in the database for the scanner.
    #[arg(long, env = "SLUICE_MAX_HELD_DELIVERIES",
          default_value_t = sluice_data::DEFAULT_MAX_HELD_DELIVERIES,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_held_deliveries: usize,
    /// Events a second one workspace may publish through this data plane (0: no quota);
    /// beyond, publishes are refused with RESOURCE_EXHAUSTED and the time to wait.
    #[arg(long, env = "SLUICE_WORKSPACE_PUBLISH_RATE", default_value_t = 0)]
    pub workspace_publish_rate: u32,
    /// Events a workspace may publish at once within its quota (0: one second's worth).
    #[arg(long, env = "SLUICE_WORKSPACE_PUBLISH_BURST", default_value_t = 0)]
    pub workspace_publish_burst: u32,
    /// Seconds in-flight work gets to finish on shutdown.
    #[arg(long, env = "SLUICE_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,
}

impl DeliveryArgs {
    /// The data plane's configuration from these flags.
    pub fn data_config(
        &self,
        internal_token: String,
        control_endpoint: String,
    ) -> anyhow::Result<sluice_data::DataConfig> {
        let retry = self.policy.schedule()?;
        let allow_list = sluice_core::egress::AllowList::parse(&self.egress_allow)
            .map_err(|e| anyhow::anyhow!("--egress-allow: {e}"))?;
        if self.endpoint_concurrency == 0 {
            bail!("--endpoint-concurrency must be at least 1");
        }
        let extra_ca_pem = match &self.extra_ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                anyhow::anyhow!("--extra-ca-file: reading {}: {e}", path.display())
            })?),
            None => None,
        };
        let sender = sluice_delivery::SenderConfig {
            extra_ca_pem,
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            request_timeout: self.policy.request_timeout(),
            allow_http: self.allow_http,
            allow_private: self.allow_private_destinations,
            allow_list,
            ..Default::default()
        };
        let config = sluice_data::DataConfig {
            internal_token,
            control_endpoint,
            retry,
            max_payload_bytes: self.max_payload_bytes,
            sender,
            endpoint_concurrency: self.endpoint_concurrency,
            adaptive_concurrency: self.adaptive_concurrency,
            disable_after_failing_for: self.policy.disable_after(),
            disable_after_failed_attempts: (self.disable_after_attempts > 0)
                .then_some(self.disable_after_attempts),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            lease: Duration::from_secs(self.delivery_lease_secs.max(1)),
            max_held_deliveries: self.max_held_deliveries,
            workspace_publish_rate: self.workspace_publish_rate,
            workspace_publish_burst: self.workspace_publish_burst,
            ..Default::default()
        };
        config
            .control_endpoints()
            .map_err(|e| anyhow::anyhow!("--control-endpoint: {e}"))?;
        Ok(config)
    }
}

/// Flags of `sluice dev`.
#[derive(Debug, Args, Clone)]
pub struct DevArgs {
    /// Control plane address.
    #[arg(long, env = "SLUICE_CONTROL_LISTEN", default_value = "127.0.0.1:50051")]
    pub control_listen: SocketAddr,
    /// Data plane address.
    #[arg(long, env = "SLUICE_DATA_LISTEN", default_value = "127.0.0.1:50052")]
    pub data_listen: SocketAddr,
    /// The admin key; a fixed development key when unset.
    #[arg(long, env = "SLUICE_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// Directory for the SQLite files.
    #[arg(long, env = "SLUICE_DATA_DIR", default_value = ".sluice")]
    pub data_dir: PathBuf,
    /// Run both planes on this database instead of SQLite (`postgres://...`); their tables
    /// and migration histories are distinct, so they can share one database.
    #[arg(long, env = "SLUICE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// The longest wait for the database, in milliseconds (as for `sluice data`).
    #[arg(long, env = "SLUICE_STORE_TIMEOUT_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub store_timeout_ms: u64,
    /// How the data plane delivers (dev always allows plain http and private addresses).
    #[command(flatten)]
    pub delivery: DeliveryArgs,
    /// The master keys; when none is given, a development key kept in --data-dir.
    #[command(flatten)]
    pub keys: MasterKeyArgs,
    /// How long both planes keep what they store.
    #[command(flatten)]
    pub retention: RetentionArgs,
}

/// Flags of `sluice migrate`.
#[derive(Debug, Args, Clone)]
pub struct MigrateArgs {
    /// Which plane's schema to migrate.
    #[arg(long, value_enum, default_value_t = PlaneArg::Both)]
    pub plane: PlaneArg,
    #[command(flatten)]
    pub storage: StorageArgs,
}

/// A plane, for `migrate` and `keys rotate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PlaneArg {
    /// The control plane.
    Control,
    /// The data plane.
    Data,
    /// Both.
    Both,
}

/// How long a plane waits at start for the other to say whether it takes the internal
/// token: a plane that is down or slow must not hold the start up.
const TOKEN_CHECK: Duration = Duration::from_secs(3);

impl PlaneArg {
    fn planes(self) -> &'static [sluice_store::Plane] {
        use sluice_store::Plane;
        match self {
            PlaneArg::Control => &[Plane::Control],
            PlaneArg::Data => &[Plane::Data],
            PlaneArg::Both => &[Plane::Control, Plane::Data],
        }
    }
}

/// The development admin key `sluice dev` uses when none is given. Never for production.
pub const DEV_ADMIN_KEY: &str = "sk_dev_admin_key_change_me";

fn secret_flag(value: &Option<String>, flag: &str, env: &str) -> anyhow::Result<String> {
    match value {
        Some(v) if v.len() >= 16 => Ok(v.clone()),
        Some(_) => bail!("{flag} ({env}) must be at least 16 characters"),
        None => bail!("{flag} is required: set {env} or pass {flag}"),
    }
}

/// Runs the parsed command to completion.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Control(args) => run_control(args).await,
        Command::Data(args) => run_data(args).await,
        Command::Dev(args) => run_dev(args).await,
        Command::Migrate(args) => run_migrate(args).await,
        Command::Bench(args) => sluice_bench::run(args, crate::shutdown::on_signal).await,
        Command::Listen(args) => crate::listen::run(args).await,
        Command::Publish(args) => crate::publish::run(args).await,
        Command::Keys(command) => run_keys(command).await,
    }
}

async fn run_keys(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Generate => {
            let key = sluice_core::sealing::generate_master_key();
            let keyring = sluice_core::sealing::Keyring::parse(&key)?;
            println!("{key}");
            eprintln!("key id {}", keyring.current_id());
        }
        KeysCommand::Rotate(args) => {
            let keyring = crate::keys::required(args.keys.keyring()?)?;
            for plane in args.plane.planes() {
                let db = args.storage.open(*plane).await?;
                let done = crate::keys::rotate(&db, *plane, &keyring)
                    .await
                    .with_context(|| {
                        format!("re-sealing the {} plane's secrets", plane_name(*plane))
                    })?;
                println!(
                    "{} plane: {} subscriptions checked, {} re-sealed under key id {}",
                    plane_name(*plane),
                    done.checked,
                    done.resealed,
                    keyring.current_id()
                );
            }
        }
    }
    Ok(())
}

async fn run_migrate(args: MigrateArgs) -> anyhow::Result<()> {
    for plane in args.plane.planes() {
        args.storage.open(*plane).await?;
        let url = args.storage.url(*plane)?;
        tracing::info!(?plane, backend = backend_name(&url), "migrations applied");
    }
    Ok(())
}

fn plane_name(plane: sluice_store::Plane) -> &'static str {
    match plane {
        sluice_store::Plane::Control => "control",
        sluice_store::Plane::Data => "data",
    }
}

fn backend_name(url: &str) -> &'static str {
    if url.starts_with("sqlite:") {
        "sqlite"
    } else {
        "postgres"
    }
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for the {what}"))
}

async fn run_control(args: ControlArgs) -> anyhow::Result<()> {
    let config = sluice_control::ControlConfig {
        admin_key: secret_flag(&args.admin_key, "--admin-key", "SLUICE_ADMIN_KEY")?,
        internal_token: secret_flag(
            &args.internal_token,
            "--internal-token",
            "SLUICE_INTERNAL_TOKEN",
        )?,
        allow_http: args.allow_http,
        data_plane_endpoint: Some(args.data_plane_endpoint.clone()),
        keyring: crate::keys::required(args.keys.keyring()?)?,
        attempt_watch_buffer: sluice_control::attempt_watch::DEFAULT_BUFFER,
        attempt_watch_patience: sluice_control::attempt_watch::DEFAULT_PATIENCE,
        retention: args.retention.defaults(),
        policy_defaults: args.policy.defaults()?,
    };
    let url = args.storage.url(sluice_store::Plane::Control)?;
    let listener = bind(args.listen, "control plane").await?;
    let shutdown = crate::shutdown::on_signal();
    let db = args.storage.open(sluice_store::Plane::Control).await?;
    let plane = sluice_control::ControlPlane::new(db, config).await?;
    if let Err(status) = plane.check_internal_token(TOKEN_CHECK).await {
        bail!(
            "--internal-token (SLUICE_INTERNAL_TOKEN): the data plane at {} \
             (--data-plane-endpoint) refused it ({:?}: {}); every plane needs the same one",
            args.data_plane_endpoint,
            status.code(),
            status.message()
        );
    }
    tracing::info!(listen = %args.listen, backend = backend_name(&url), "control plane serving");
    crate::server::serve_control(listener, plane, shutdown).await?;
    tracing::info!("control plane stopped");
    Ok(())
}

async fn run_data(args: DataArgs) -> anyhow::Result<()> {
    let token = secret_flag(
        &args.internal_token,
        "--internal-token",
        "SLUICE_INTERNAL_TOKEN",
    )?;
    let mut config = args
        .delivery
        .data_config(token, args.control_endpoint.clone())?;
    config.store_timeout = args.storage.options().timeout;
    config.keyring = Some(crate::keys::required(args.keys.keyring()?)?);
    config.retention = args.retention.defaults();
    sluice_data::check_internal_token(&config, TOKEN_CHECK)
        .await
        .map_err(|e| anyhow::anyhow!("--internal-token (SLUICE_INTERNAL_TOKEN): {e}"))?;
    let url = args.storage.url(sluice_store::Plane::Data)?;
    let listener = bind(args.listen, "data plane").await?;
    let shutdown = crate::shutdown::on_signal();
    let db = args.storage.open(sluice_store::Plane::Data).await?;
    tracing::info!(listen = %args.listen, backend = backend_name(&url), "data plane serving");
    crate::dataplane::run_data(listener, db, config, shutdown).await?;
    tracing::info!("data plane stopped");
    Ok(())
}

async fn run_dev(args: DevArgs) -> anyhow::Result<()> {
    let admin_key = args
        .admin_key
        .clone()
        .unwrap_or_else(|| DEV_ADMIN_KEY.to_owned());
    let internal_token = sluice_core::apikey::generate_api_key();
    let (keyring, dev_key) = crate::keys::dev_keyring(args.keys.keyring()?, &args.data_dir)?;
    let key_line = match &dev_key {
        crate::keys::DevKey::Given => "given".to_owned(),
        crate::keys::DevKey::Created(path) => {
            tracing::info!(path = %path.display(), key_id = keyring.current_id(), "created a development master key; keep it, the stored secrets need it");
            format!("{} (created now; keep it)", path.display())
        }
        crate::keys::DevKey::Kept(path) => {
            tracing::info!(path = %path.display(), key_id = keyring.current_id(), "using the development master key");
            path.display().to_string()
        }
    };
    let key_line = format!("{key_line}, key id {}", keyring.current_id());
    let storage = StorageArgs {
        database_url: args.database_url.clone(),
        data_dir: args.data_dir.clone(),
        store_timeout_ms: args.store_timeout_ms,
    };
    // Development: local receivers on http://127.0.0.1 must work.
    let delivery = DeliveryArgs {
        allow_http: true,
        allow_private_destinations: true,
        ..args.delivery.clone()
    };
    let mut data_config = delivery.data_config(
        internal_token.clone(),
        format!("http://{}", args.control_listen),
    )?;
    data_config.store_timeout = storage.options().timeout;
    data_config.keyring = Some(keyring.clone());
    data_config.retention = args.retention.defaults();
    let control_config = sluice_control::ControlConfig {
        admin_key: admin_key.clone(),
        internal_token,
        allow_http: true,
        data_plane_endpoint: Some(format!("http://{}", args.data_listen)),
        keyring,
        attempt_watch_buffer: sluice_control::attempt_watch::DEFAULT_BUFFER,
        attempt_watch_patience: sluice_control::attempt_watch::DEFAULT_PATIENCE,
        retention: args.retention.defaults(),
        policy_defaults: delivery.policy.defaults()?,
    };
    let control_listener = bind(args.control_listen, "control plane").await?;
    let data_listener = bind(args.data_listen, "data plane").await?;
    let shutdown = crate::shutdown::on_signal();
    let control_db = storage.open(sluice_store::Plane::Control).await?;
    let data_db = storage.open(sluice_store::Plane::Data).await?;
    let plane = sluice_control::ControlPlane::new(control_db, control_config).await?;
    print_banner(&args, &admin_key, &key_line);
    // The control plane stops after the data plane has drained, so the outcomes of the
    // last attempts still reach the delivery log instead of waiting in the outbox for the
    // next start.
    let control_shutdown = tokio_util::sync::CancellationToken::new();
    let control = tokio::spawn(crate::server::serve_control(
        control_listener,
        plane,
        control_shutdown.clone(),
    ));
    let data =
        crate::dataplane::run_data(data_listener, data_db, data_config, shutdown.clone()).await;
    shutdown.cancel();
    control_shutdown.cancel();
    control.await.context("control plane task")??;
    data?;
    tracing::info!("sluice dev stopped");
    Ok(())
}

/// The host part of a database URL, for messages: never the credentials.
fn url_host(url: &str) -> String {
    url.rsplit_once('@')
        .map_or(url, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn print_banner(args: &DevArgs, admin_key: &str, master_key: &str) {
    let c = args.control_listen;
    println!(
        "\nSluice dev is running ({storage}).\n\
         \n  control plane  {c}   (workspaces, keys, event types, subscriptions, delivery log)\
         \n  data plane     {d}   (publish events)\
         \n  admin key      {admin_key}\
         \n  master key     {master_key}\
         \n\nDevelopment mode: plain http and loopback/private destinations are ALLOWED.\
         \n\nTry:\n  grpcurl -plaintext {c} list\
         \n  grpcurl -plaintext -H 'authorization: Bearer {admin_key}' \\\
         \n    -d '{{\"workspace\": {{\"display_name\": \"Tideflow\"}}}}' {c} sluice.control.v1.WorkspaceService/CreateWorkspace\n",
        storage = match &args.database_url {
            Some(url) => format!("PostgreSQL at {}", url_host(url)),
            None => format!("SQLite under {}", args.data_dir.display()),
        },
        d = args.data_listen,
    );
    if let Some(addr) = crate::telemetry::metrics_addr() {
        println!("  metrics        http://{addr}/metrics   (Prometheus)\n");
    }
}
