//! The data plane: ingest (`IngestService`), the durable queue, the dispatcher that signs
//! and POSTs every delivery, and the reporting of outcomes to the control plane.
//!
//! How an event flows: ingest authenticates and validates it, builds its envelope once and
//! matches it against the local copy of the subscriptions; the group-commit writer
//! (`writer`) makes a whole batch of events durable in one transaction and hands the new
//! deliveries to the dispatcher (`dispatcher`) in memory. Each subscription has a lane
//! with its own concurrency, rate limit and circuit breaker. Outcomes are written in batches
//! (`outcomes`) to the delivery rows and to an outbox that the reporter (`reporter`)
//! streams to the control plane. Retries wait on timers or, further out, in the database,
//! where the scanner (`scheduler`) finds them; so does recovery after a restart.
//!
//! Invariants: an event is acked only once durable; the database is the record, memory a
//! cache of near work; no secret, signature or payload is ever logged.

mod backoff;
mod breaker;
mod config_copy;
mod control_client;
mod decision;
mod dispatch_service;
mod dispatcher;
mod error;
mod fanout;
mod ingest;
mod leader;
mod metrics;
mod outbox;
mod outcomes;
mod queue;
mod rate_limit;
mod reporter;
mod scheduler;
mod shared;
mod time;
mod watcher;
mod writer;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DatabaseConnection, DbBackend, EntityTrait, QueryFilter};
use sluice_core::retry::RetrySchedule;
use sluice_delivery::{Sender, SenderConfig};
use sluice_proto::data::v1::dispatch_service_server::{DispatchService, DispatchServiceServer};
use sluice_proto::data::v1::ingest_service_server::{IngestService, IngestServiceServer};
use sluice_store::data::{delivery, fanout as fanout_row};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::error::{DataError, Violation};

use crate::config_copy::ConfigCopy;
use crate::control_client::{ControlClient, bearer};
use crate::decision::RetryPolicy;
use crate::dispatch_service::DispatchApi;
use crate::dispatcher::Lanes;
use crate::ingest::IngestApi;
use crate::queue::Held;
use crate::shared::Shared;

/// Publishes queued for the writer before `Publish` waits; bounds memory under overload.
const PUBLISH_QUEUE: usize = 16_384;
/// Outcomes queued for the writer before attempts wait.
const OUTCOME_QUEUE: usize = 16_384;
/// Retries queued for the timer task before attempts wait.
const RETRY_QUEUE: usize = 16_384;
/// The least time the reporter gets to flush the outbox at shutdown, even when the
/// attempts used up the grace period.
const MIN_REPORT_FLUSH: Duration = Duration::from_secs(1);

/// What the data plane is told at start. Its `Debug` hides the internal token.
#[derive(Clone)]
pub struct DataConfig {
    /// Sent as `authorization: Bearer <token>` to the control plane, and required on
    /// DispatchService calls. Never logged.
    pub internal_token: String,
    /// The control plane's gRPC address, e.g. `http://127.0.0.1:50051`.
    pub control_endpoint: String,
    /// The wait before each attempt.
    pub retry: RetrySchedule,
    /// Each retry delay moves randomly within ± this fraction, so retries of deliveries
    /// that failed together spread out.
    pub retry_jitter: f64,
    /// The least `Retry-After` (on 429/503) taken as asked, so `Retry-After: 0` cannot make
    /// the data plane hammer an endpoint.
    pub retry_after_min: Duration,
    /// The most `Retry-After` honoured, so an endpoint cannot park a delivery for a year.
    pub retry_after_max: Duration,
    /// The largest accepted payload, in bytes.
    pub max_payload_bytes: usize,
    /// How the HTTP sender dials endpoints.
    pub sender: SenderConfig,
    /// The most attempts in flight to one subscription.
    pub endpoint_concurrency: usize,
    /// A subscription whose every attempt failed for this long is disabled.
    pub disable_after_failing_for: Duration,
    /// Alternatively, disable after this many failed attempts in a row (for tests).
    pub disable_after_failed_attempts: Option<u32>,
    /// Consecutive failures that open an endpoint's circuit breaker; 0 turns it off.
    pub circuit_breaker_failures: u32,
    /// How long an open breaker waits before one probe.
    pub circuit_breaker_cooldown: Duration,
    /// How long a replica owns a delivery it claimed (PostgreSQL with several replicas).
    pub lease: Duration,
    /// How long shutdown waits for in-flight attempts.
    pub shutdown_grace: Duration,
}

impl std::fmt::Debug for DataConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataConfig")
            .field("internal_token", &"<redacted>")
            .field("control_endpoint", &self.control_endpoint)
            .field("retry", &self.retry)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("sender", &self.sender)
            .field("endpoint_concurrency", &self.endpoint_concurrency)
            .field("lease", &self.lease)
            .field("shutdown_grace", &self.shutdown_grace)
            .finish_non_exhaustive()
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            internal_token: String::new(),
            control_endpoint: "http://127.0.0.1:50051".to_owned(),
            retry: RetrySchedule::default(),
            retry_jitter: 0.2,
            retry_after_min: Duration::from_secs(1),
            retry_after_max: Duration::from_secs(3600),
            max_payload_bytes: 256 * 1024,
            sender: SenderConfig::default(),
            endpoint_concurrency: 16,
            disable_after_failing_for: Duration::from_secs(5 * 24 * 3600),
            disable_after_failed_attempts: None,
            circuit_breaker_failures: 10,
            circuit_breaker_cooldown: Duration::from_secs(30),
            lease: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl DataConfig {
    fn validate(&self) -> Result<(), DataError> {
        let fail = |m: &str| Err(DataError::Config(m.to_owned()));
        if self.internal_token.is_empty() {
            return fail("internal_token is required");
        }
        if !(0.0..=1.0).contains(&self.retry_jitter) {
            return fail("retry_jitter must be between 0 and 1");
        }
        if self.retry_after_min > self.retry_after_max {
            return fail("retry_after_min must not exceed retry_after_max");
        }
        if self.max_payload_bytes == 0 {
            return fail("max_payload_bytes must be positive");
        }
        if self.endpoint_concurrency == 0 {
            return fail("endpoint_concurrency must be positive");
        }
        if self.lease < Duration::from_secs(1) {
            return fail("lease must be at least one second");
        }
        if self.disable_after_failed_attempts == Some(0) {
            return fail("disable_after_failed_attempts must be positive when set");
        }
        Ok(())
    }
}

/// A running data plane. Cheap to clone.
#[derive(Clone)]
pub struct DataPlane {
    shared: Arc<Shared>,
}

impl DataPlane {
    /// Opens nothing itself: takes an open, migrated connection. Loads the persisted
    /// configuration copy and the due deliveries, then starts the config watcher, the
    /// writers, the dispatcher's timers and scanner, and the outcome reporter.
    pub async fn start(
        db: DatabaseConnection,
        config: DataConfig,
        shutdown: CancellationToken,
    ) -> Result<DataPlane, DataError> {
        config.validate()?;
        let sender = Sender::new(config.sender.clone())
            .map_err(|e| DataError::Config(format!("sender: {e}")))?;
        let control = ControlClient::new(&config.control_endpoint, &config.internal_token)?;
        let internal_authorization = bearer(&config.internal_token)?
            .to_str()
            .map_err(|_| DataError::Config("internal_token must be printable ASCII".to_owned()))?
            .to_owned();
        let postgres = db.get_database_backend() == DbBackend::Postgres;
        let snapshot = config_copy::load(&db).await?;
        let streaks = outcomes::load_streaks(&db).await?;
        if !postgres {
            // SQLite has one process: any lease is left over from before a restart.
            delivery::Entity::update_many()
                .col_expr(
                    delivery::Column::LeaseUntilMs,
                    Expr::value(Option::<i64>::None),
                )
                .filter(delivery::Column::LeaseUntilMs.is_not_null())
                .exec(&db)
                .await?;
            fanout_row::Entity::update_many()
                .col_expr(
                    fanout_row::Column::LeaseUntilMs,
                    Expr::value(Option::<i64>::None),
                )
                .filter(fanout_row::Column::LeaseUntilMs.is_not_null())
                .exec(&db)
                .await?;
        }
        tracing::info!(
            revision = snapshot.revision,
            "data plane starting from the stored configuration copy"
        );

        let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (outcome_tx, outcome_rx) = mpsc::channel(OUTCOME_QUEUE);
        let (retry_tx, retry_rx) = mpsc::channel(RETRY_QUEUE);
        let policy = RetryPolicy {
            schedule: config.retry.clone(),
            jitter: config.retry_jitter,
            retry_after_min: config.retry_after_min,
            retry_after_max: config.retry_after_max,
        };
        let shared = Arc::new(Shared {
            db,
            postgres,
            policy,
            copy: ConfigCopy::new(snapshot),
            sender,
            control,
            internal_authorization,
            held: Held::default(),
            lanes: Lanes::default(),
            streaks: Mutex::new(streaks),
            publish_tx,
            outcome_tx,
            retry_tx,
            outbox: outbox::Outbox::default(),
            fanouts: fanout::Fanouts::default(),
            scan_now: Notify::new(),
            shutdown,
            publishes_drained: CancellationToken::new(),
            abort_attempts: CancellationToken::new(),
            outcomes_closing: CancellationToken::new(),
            reporter_flush: CancellationToken::new(),
            reporter_deadline: Mutex::new(None),
            drained: CancellationToken::new(),
            attempts: TaskTracker::new(),
            lane_tasks: TaskTracker::new(),
            config,
        });

        // The outbox-depth gauge starts from what a previous run left unacked.
        if let Ok(rows) = sea_orm::PaginatorTrait::count(
            <sluice_store::data::outbox::Entity as sea_orm::EntityTrait>::find(),
            &shared.db,
        )
        .await
        {
            metrics::metrics()
                .outbox_depth
                .store(rows as i64, std::sync::atomic::Ordering::Relaxed);
        }
        let writer = tokio::spawn(writer::run(Arc::clone(&shared), publish_rx, outcome_rx));
        let timers = tokio::spawn(scheduler::run_timers(Arc::clone(&shared), retry_rx));
        // The first load of pending deliveries happens before start returns; if it fails
        // the scanner tries again within a second, so it does not stop the start.
        if let Err(err) = scheduler::claim_all_due(&shared).await {
            tracing::error!(error = %err, "loading pending deliveries failed; the scanner retries");
        }
        let scanner = tokio::spawn(scheduler::run_scanner(Arc::clone(&shared)));
        let watcher = tokio::spawn(watcher::run(Arc::clone(&shared)));
        let reporter = tokio::spawn(reporter::run(Arc::clone(&shared)));
        tokio::spawn(coordinate_shutdown(
            Arc::clone(&shared),
            Tasks {
                writer,
                timers,
                scanner,
                watcher,
                reporter,
            },
        ));
        Ok(DataPlane { shared })
    }

    /// `IngestService`, for publishers.
    pub fn ingest_service(&self) -> IngestServiceServer<impl IngestService> {
        // Room for the largest payload accepted, even as a Struct (whose encoding is larger
        // than the JSON), plus the rest of the request; tonic's default is 4 MiB.
        let max_message = self
            .shared
            .config
            .max_payload_bytes
            .saturating_mul(4)
            .saturating_add(64 * 1024)
            .max(4 * 1024 * 1024);
        IngestServiceServer::new(IngestApi {
            shared: Arc::clone(&self.shared),
        })
        .max_decoding_message_size(max_message)
    }

    /// `DispatchService`, for the control plane (internal token required).
    pub fn dispatch_service(&self) -> DispatchServiceServer<impl DispatchService> {
        DispatchServiceServer::new(DispatchApi {
            shared: Arc::clone(&self.shared),
        })
    }

    /// The configuration revision in effect (0 until the first snapshot from the control
    /// plane, unless a persisted copy was loaded), to wait for readiness or for a change.
    pub fn config_revision(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.copy.subscribe_revision()
    }

    /// Waits until the background tasks finished after `shutdown` was cancelled: in-flight
    /// attempts finished (or were abandoned, left pending, after `shutdown_grace`), outcomes
    /// written, and the outbox flushed if the control plane is reachable.
    pub async fn drained(self) {
        self.shared.drained.cancelled().await;
    }
}

struct Tasks {
    writer: tokio::task::JoinHandle<()>,
    timers: tokio::task::JoinHandle<()>,
    scanner: tokio::task::JoinHandle<()>,
    watcher: tokio::task::JoinHandle<()>,
    reporter: tokio::task::JoinHandle<()>,
}

/// Shutdown in order: stop taking work, let in-flight attempts finish within the grace
/// period, write their outcomes, give leases back, flush the outbox, stop.
async fn coordinate_shutdown(shared: Arc<Shared>, tasks: Tasks) {
    shared.shutdown.cancelled().await;
    let deadline = Instant::now() + shared.config.shutdown_grace;
    tracing::info!("data plane shutting down");

    // Publishes already queued are written and answered; new ones get UNAVAILABLE.
    shared.publishes_drained.cancelled().await;
    for task in [tasks.timers, tasks.scanner, tasks.watcher] {
        let _ = task.await;
    }
    shared.lane_tasks.close();
    shared.lane_tasks.wait().await;

    shared.attempts.close();
    let in_flight = shared.attempts.len();
    if tokio::time::timeout_at(deadline, shared.attempts.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            in_flight = shared.attempts.len(),
            "shutdown grace ended with attempts in flight; they stay pending and are retried after the restart"
        );
        shared.abort_attempts.cancel();
        shared.attempts.wait().await;
    } else if in_flight > 0 {
        tracing::info!(in_flight, "in-flight attempts finished");
    }

    shared.outcomes_closing.cancel();
    let _ = tasks.writer.await;
    if shared.postgres
        && let Err(err) = scheduler::release_all(&shared).await
    {
        tracing::warn!(error = %err, "releasing delivery leases failed; other replicas take them when they expire");
    }

    *shared
        .reporter_deadline
        .lock()
        .unwrap_or_else(PoisonError::into_inner) =
        Some(deadline.max(Instant::now() + MIN_REPORT_FLUSH));
    shared.reporter_flush.cancel();
    let _ = tasks.reporter.await;
    tracing::info!("data plane stopped");
    shared.drained.cancel();
}
