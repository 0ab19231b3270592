//! The data plane: ingest (`IngestService`), the durable queue, the dispatcher that signs
//! and POSTs every delivery, and the reporting of outcomes to the control plane.
//!
//! Start reading here, then follow one event:
//! 1. `api::ingest` authenticates and validates it, builds its envelope once, matches it
//!    against the local copy of the subscriptions and queues a `work::PublishJob`.
//! 2. `commit::writer` makes a whole batch of events (and attempt outcomes) durable in one
//!    transaction, answers the publishers and hands the new deliveries to the dispatcher
//!    in memory (`commit::publishes`).
//! 3. `deliver::dispatcher` puts each in its subscription's lane (`deliver::lanes`:
//!    concurrency, rate limit, circuit breaker); `deliver::attempt` sends it, concludes it
//!    (`deliver::decision`) and hands the outcome back to the writer (`commit::outcomes`);
//!    near retries wait on `deliver::timers`, later ones in the database, where
//!    `deliver::scanner` finds them, as it finds work left by a restart or a dead replica.
//! 4. `sync::reporter` streams the outbox of outcomes to the control plane;
//!    `sync::watcher` keeps the configuration copy current.
//!
//! What tasks share lives in `state`, what crosses between them in `work`, and the order
//! of shutdown in `shutdown`. Each task takes the handles it uses.
//!
//! Invariants: an event is acked only once durable; the database is the record, memory a
//! cache of near work; signing secrets are stored sealed (`state::sealed`); no secret,
//! signature or payload is ever logged.

mod api;
mod backoff;
mod commit;
mod config;
mod deliver;
mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod metrics;
mod notices;
mod retention;
mod shutdown;
mod state;
mod sync;
mod time;
mod work;

use std::sync::Arc;

use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DatabaseConnection, DbBackend, EntityTrait, QueryFilter};
use sluice_core::sealing::Reseal;
use sluice_delivery::Sender;
use sluice_proto::data::v1::dispatch_service_server::{DispatchService, DispatchServiceServer};
use sluice_proto::data::v1::ingest_service_server::{IngestService, IngestServiceServer};
use sluice_store::data::{delivery, fanout as fanout_row};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use crate::config::{ControlEndpoint, DEFAULT_MAX_HELD_DELIVERIES, DataConfig};
pub use crate::error::{DataError, Violation, decode_failure};
pub use crate::state::sealed::reseal_secrets;
pub use crate::sync::control_client::check_internal_token;

use crate::api::dispatch::DispatchApi;
use crate::api::ingest::IngestApi;
use crate::api::quota::PublishQuota;
use crate::commit::publishes::Publishes;
use crate::commit::writer::Writer;
use crate::deliver::attempt::Attempts;
use crate::deliver::decision::RetryPolicy;
use crate::deliver::dispatcher::Dispatcher;
use crate::deliver::lanes::{LaneLimits, Lanes};
use crate::deliver::manual::ManualDeliveries;
use crate::deliver::scanner::Scanner;
use crate::shutdown::Shutdown;
use crate::state::claims::Claims;
use crate::state::config_copy::{self, ConfigCopy};
use crate::state::fanouts::Fanouts;
use crate::state::heads::Heads;
use crate::state::outbox::Outbox;
use crate::state::streaks::{self, DisableAfter, Streaks};
use crate::sync::control_client::{ControlClient, bearer};
use crate::sync::reporter::Reporter;
use crate::sync::watcher::Watcher;
use crate::time::duration_ms;
use crate::work::OutcomeSender;

/// Publishes queued for the writer before `Publish` waits; bounds memory under overload.
const PUBLISH_QUEUE: usize = 16_384;
/// Outcomes queued for the writer before attempts wait.
const OUTCOME_QUEUE: usize = 16_384;
/// Retries queued for the timer task before attempts wait.
const RETRY_QUEUE: usize = 16_384;

/// A running data plane. Cheap to clone.
#[derive(Clone)]
pub struct DataPlane {
    ingest: IngestApi,
    dispatch: Arc<DispatchApi>,
    shutdown: Shutdown,
}

impl DataPlane {
    /// Opens nothing itself: takes an open, migrated connection. Loads the persisted
    /// configuration copy and the due deliveries, then starts the config watcher, the
    /// writer, the dispatcher's timers and scanner, and the outcome reporter.
    pub async fn start(
        db: DatabaseConnection,
        config: DataConfig,
        shutdown: CancellationToken,
    ) -> Result<DataPlane, DataError> {
        config.validate()?;
        let sender = Sender::new(config.sender.clone())
            .map_err(|e| DataError::Config(format!("sender: {e}")))?;
        let control = ControlClient::new(&config)?;
        let internal_authorization = bearer(&config.internal_token)?
            .to_str()
            .map_err(|_| DataError::Config("internal_token must be printable ASCII".to_owned()))?
            .to_owned();
        let postgres = db.get_database_backend() == DbBackend::Postgres;
        let keyring = config.keyring.clone().ok_or_else(|| {
            DataError::Config("keyring is required: it seals the stored signing secrets".to_owned())
        })?;
        // Seals what an older version stored in clear, and proves the keyring opens every
        // stored secret before anything is signed.
        let sealed = reseal_secrets(&db, &keyring, Reseal::ClearText).await?;
        if sealed.resealed > 0 {
            tracing::info!(
                subscriptions = sealed.resealed,
                key_id = keyring.current_id(),
                "sealed the stored signing secrets that were in clear"
            );
        }
        let snapshot = config_copy::load(&db, &keyring).await?;
        let streaks = streaks::load(&db).await?;
        if !postgres {
            release_leftover_leases(&db).await?;
        }
        tracing::info!(
            revision = snapshot.revision,
            "data plane starting from the stored configuration copy"
        );

        let shutdown = Shutdown::new(shutdown);
        let lease_ms = config.lease_ms();
        let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (outcome_tx, outcome_rx) = mpsc::channel(OUTCOME_QUEUE);
        let (retry_tx, retry_rx) = mpsc::channel(RETRY_QUEUE);
        let outcomes = OutcomeSender::new(outcome_tx);
        let policy = RetryPolicy {
            defaults: sluice_core::policy::Defaults::new(
                &config.retry,
                config.sender.request_timeout,
                config.disable_after_failing_for,
            ),
            schedule: config.retry.clone(),
            jitter: config.retry_jitter,
            retry_after_min: config.retry_after_min,
            retry_after_max: config.retry_after_max,
        };
        let first_delay_ms = policy
            .schedule
            .delay_before_attempt(1)
            .map_or(0, duration_ms);

        let copy = Arc::new(ConfigCopy::new(snapshot));
        let claims = Arc::new(Claims::new(config.max_held_deliveries));
        let fanouts = Arc::new(Fanouts::default());
        let heads = Arc::new(Heads::default());
        let outbox = Arc::new(Outbox::default());
        let lanes = Arc::new(Lanes::new(LaneLimits {
            concurrency: config.endpoint_concurrency,
            adaptive: config.adaptive_concurrency,
            breaker_failures: config.circuit_breaker_failures,
            breaker_cooldown: config.circuit_breaker_cooldown,
        }));
        let attempts = Arc::new(Attempts {
            sender,
            copy: Arc::clone(&copy),
            claims: Arc::clone(&claims),
            lanes: Arc::clone(&lanes),
            streaks: Arc::new(Streaks::new(
                streaks,
                DisableAfter {
                    failing_for: config.disable_after_failing_for,
                    failed_attempts: config.disable_after_failed_attempts,
                },
            )),
            outcomes: outcomes.clone(),
            retries: retry_tx.clone(),
            policy,
            lease_ms,
            shutdown: shutdown.clone(),
            keyring: keyring.clone(),
        });
        let dispatcher = Arc::new(Dispatcher::new(
            lanes,
            Arc::clone(&attempts),
            shutdown.clone(),
        ));
        let scanner = Arc::new(Scanner {
            db: db.clone(),
            claims: Arc::clone(&claims),
            fanouts: Arc::clone(&fanouts),
            dispatcher: Arc::clone(&dispatcher),
            retries: retry_tx.clone(),
            outcomes,
            lease_ms,
            shutdown: shutdown.clone(),
            heads: Arc::clone(&heads),
            round_robin: Default::default(),
        });
        let writer = Writer {
            db: db.clone(),
            store_timeout: config.store_timeout,
            publishes: Publishes {
                db: db.clone(),
                claims,
                fanouts: Arc::clone(&fanouts),
                dispatcher: Arc::clone(&dispatcher),
                retries: retry_tx,
                lease_ms,
                first_delay_ms,
                shutdown: shutdown.clone(),
                heads,
            },
            fanouts: Arc::clone(&fanouts),
            outbox: Arc::clone(&outbox),
            shutdown: shutdown.clone(),
        };
        let reporter = Reporter {
            db: db.clone(),
            postgres,
            outbox,
            control: control.clone(),
            shutdown: shutdown.clone(),
            flush_floor: tokio::sync::OnceCell::new(),
        };
        let retention = retention::Retention {
            db: db.clone(),
            copy: Arc::clone(&copy),
            defaults: config.retention,
            shutdown: shutdown.clone(),
        };
        let watcher = Watcher {
            db: db.clone(),
            copy: Arc::clone(&copy),
            control,
            shutdown: shutdown.clone(),
            keyring,
            publishes: publish_tx.clone(),
            store_timeout: config.store_timeout,
        };

        // The outbox-depth gauge starts from what a previous run left unacked.
        if let Ok(rows) = sea_orm::PaginatorTrait::count(
            <sluice_store::data::outbox::Entity as EntityTrait>::find(),
            &db,
        )
        .await
        {
            metrics::metrics()
                .outbox_depth
                .store(rows as i64, std::sync::atomic::Ordering::Relaxed);
        }
        let writer = tokio::spawn(writer.run(publish_rx, outcome_rx));
        let timers = tokio::spawn(deliver::timers::run(
            Arc::clone(&dispatcher),
            retry_rx,
            shutdown.clone(),
        ));
        // The first load of pending deliveries happens before start returns; if it fails
        // the scanner tries again within a second, so it does not stop the start.
        if let Err(err) = scanner.claim_all_due().await {
            tracing::error!(error = %err, "loading pending deliveries failed; the scanner retries");
        }
        let scanner_task = tokio::spawn(Arc::clone(&scanner).run());
        let watcher = tokio::spawn(watcher.run());
        let reporter = tokio::spawn(reporter.run());
        // Off the hot path; it stops at shutdown's first phase (a batch cut short rolls
        // back), so the shutdown sequence need not wait for it.
        tokio::spawn(retention.run());
        let (lane_tasks, attempt_tasks) = dispatcher.trackers();
        let lease_holder = Arc::clone(&scanner);
        tokio::spawn(shutdown::run(
            shutdown.clone(),
            config.shutdown_grace,
            shutdown::Tasks {
                writer,
                timers,
                scanner: scanner_task,
                watcher,
                reporter,
                lanes: lane_tasks,
                attempts: attempt_tasks,
            },
            async move {
                if postgres && let Err(err) = lease_holder.release_all().await {
                    tracing::warn!(error = %err, "releasing delivery leases failed; other replicas take them when they expire");
                }
            },
        ));

        let ingest = IngestApi {
            copy,
            publishes: publish_tx,
            max_payload_bytes: config.max_payload_bytes,
            store_timeout: config.store_timeout,
            quota: Arc::new(PublishQuota::new(
                config.workspace_publish_rate,
                config.workspace_publish_burst,
            )),
            shutdown: shutdown.clone(),
        };
        let dispatch = Arc::new(DispatchApi {
            internal_authorization,
            manual: ManualDeliveries {
                db,
                fanouts,
                attempts,
                scanner,
                lease_ms,
                retention: config.retention,
            },
            max_payload_bytes: config.max_payload_bytes,
        });
        Ok(DataPlane {
            ingest,
            dispatch,
            shutdown,
        })
    }

    /// `IngestService`, for publishers.
    pub fn ingest_service(&self) -> IngestServiceServer<impl IngestService> {
        // Room for the largest payload accepted, even as a Struct (whose encoding is larger
        // than the JSON), plus the rest of the request; tonic's default is 4 MiB.
        let max_message = self
            .ingest
            .max_payload_bytes
            .saturating_mul(4)
            .saturating_add(64 * 1024)
            .max(4 * 1024 * 1024);
        IngestServiceServer::new(self.ingest.clone()).max_decoding_message_size(max_message)
    }

    /// `DispatchService`, for the control plane (internal token required).
    pub fn dispatch_service(&self) -> DispatchServiceServer<impl DispatchService> {
        DispatchServiceServer::from_arc(Arc::clone(&self.dispatch))
    }

    /// The configuration revision in effect (0 until the first snapshot from the control
    /// plane, unless a persisted copy was loaded), to wait for readiness or for a change.
    pub fn config_revision(&self) -> tokio::sync::watch::Receiver<u64> {
        self.ingest.copy.subscribe_revision()
    }

    /// Waits until the background tasks finished after `shutdown` was cancelled: in-flight
    /// attempts finished (or were abandoned, left pending, after `shutdown_grace`), outcomes
    /// written, and the outbox flushed if the control plane is reachable.
    pub async fn drained(self) {
        self.shutdown.drained().await;
    }
}

/// SQLite has one process: any lease is left over from before a restart.
async fn release_leftover_leases(db: &DatabaseConnection) -> Result<(), DataError> {
    delivery::Entity::update_many()
        .col_expr(
            delivery::Column::LeaseUntilMs,
            Expr::value(Option::<i64>::None),
        )
        .filter(delivery::Column::LeaseUntilMs.is_not_null())
        .exec(db)
        .await?;
    fanout_row::Entity::update_many()
        .col_expr(
            fanout_row::Column::LeaseUntilMs,
            Expr::value(Option::<i64>::None),
        )
        .filter(fanout_row::Column::LeaseUntilMs.is_not_null())
        .exec(db)
        .await?;
    Ok(())
}
