//! The state every data-plane task shares: the database, the configuration copy, the HTTP
//! sender, the queues between tasks and the shutdown signals. One `Arc<Shared>` is cloned
//! into each task and service.

use std::sync::{Mutex, MutexGuard, PoisonError};

use sea_orm::DatabaseConnection;
use sluice_delivery::Sender;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::DataConfig;
use crate::config_copy::ConfigCopy;
use crate::control_client::ControlClient;
use crate::decision::{RetryPolicy, Streak};
use crate::dispatcher::Lanes;
use crate::fanout::Fanouts;
use crate::outbox::Outbox;
use crate::outcomes::OutcomeEvent;
use crate::queue::Held;
use crate::scheduler::ScheduledRetry;
use crate::time::duration_ms;
use crate::writer::PublishJob;

pub(crate) struct Shared {
    pub(crate) db: DatabaseConnection,
    /// Several replicas may share a PostgreSQL database, so leases matter there; SQLite
    /// is always one process.
    pub(crate) postgres: bool,
    pub(crate) config: DataConfig,
    pub(crate) policy: RetryPolicy,
    pub(crate) copy: ConfigCopy,
    pub(crate) sender: Sender,
    pub(crate) control: ControlClient,
    /// `Bearer <internal token>`, which DispatchService callers must present.
    pub(crate) internal_authorization: String,
    pub(crate) held: Held,
    pub(crate) lanes: Lanes,
    /// Each endpoint's current run of failures, for disabling persistently failing ones.
    pub(crate) streaks: Mutex<foldhash::HashMap<String, Streak>>,
    /// To the group-commit writer of publishes.
    pub(crate) publish_tx: mpsc::Sender<PublishJob>,
    /// To the batching writer of attempt outcomes.
    pub(crate) outcome_tx: mpsc::Sender<OutcomeEvent>,
    /// To the retry timers.
    pub(crate) retry_tx: mpsc::Sender<ScheduledRetry>,
    /// Committed outbox batches on their way to the reporter, and acked rows on their way
    /// to deletion.
    pub(crate) outbox: Outbox,
    /// Messages whose first attempts this process is making (see `fanout`).
    pub(crate) fanouts: Fanouts,
    /// Wakes the scanner ahead of its period (a replay queued work).
    pub(crate) scan_now: Notify,
    /// Cancelled by the binary: stop accepting work.
    pub(crate) shutdown: CancellationToken,
    /// Cancelled once every publish queued before shutdown is written and answered.
    pub(crate) publishes_drained: CancellationToken,
    /// Cancelled when the grace period ran out: abandon in-flight attempts (they stay
    /// pending in the database and are attempted again later).
    pub(crate) abort_attempts: CancellationToken,
    /// Cancelled once nothing produces outcomes any more: the writer drains and stops.
    pub(crate) outcomes_closing: CancellationToken,
    /// Cancelled when the reporter should send what is left and stop (the writer has
    /// stopped by then, so the reporter deletes acked rows itself).
    pub(crate) reporter_flush: CancellationToken,
    /// When the reporter must give up flushing.
    pub(crate) reporter_deadline: Mutex<Option<Instant>>,
    /// Cancelled when every task has finished.
    pub(crate) drained: CancellationToken,
    /// Every in-flight attempt, so shutdown can wait for them.
    pub(crate) attempts: TaskTracker,
    /// Every lane's task.
    pub(crate) lane_tasks: TaskTracker,
}

impl Shared {
    /// The lease length in milliseconds.
    pub(crate) fn lease_ms(&self) -> i64 {
        duration_ms(self.config.lease)
    }

    /// Hands an outcome to the writer. Fails only when the writer has stopped (at the very
    /// end of shutdown); the delivery then stays pending in the database.
    pub(crate) async fn record(&self, event: OutcomeEvent) {
        if self.outcome_tx.send(event).await.is_err() {
            tracing::warn!(
                "outcome writer stopped; the outcome is not recorded and the delivery stays pending"
            );
        }
    }

    pub(crate) fn streaks(&self) -> MutexGuard<'_, foldhash::HashMap<String, Streak>> {
        // The map is consistent after every statement, so a poisoned lock is still usable.
        self.streaks.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
