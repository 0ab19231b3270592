//! Shutdown, in one place: the phases the data plane goes through after the binary asks it
//! to stop (SIGTERM), the signal of each, and the sequence that drives them.
//!
//! 1. `requested` (the binary's token): ingest refuses new events, lanes and the scanner
//!    stop taking work; publishes already queued are still written and answered
//!    (`publishes_drained` once they are).
//! 2. In-flight attempts get until the grace period's end; past it `abort_attempts` cancels
//!    them, and their deliveries stay pending in the database for the next start.
//! 3. `outcomes_closing`: nothing produces outcomes any more; the writer writes what is
//!    left (with a last report of every message) and stops.
//! 4. Leases are given back (PostgreSQL), so other replicas take the work at once.
//! 5. `reporter_flush`: the reporter sends what the outbox holds until its deadline.
//! 6. `drained`: everything has stopped.
//!
//! Each task takes a clone of [`Shutdown`] and waits on the phase that concerns it; only
//! [`run`] moves from one phase to the next (the writer marks `publishes_drained`).

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The least time the reporter gets to flush the outbox at shutdown, even when the
/// attempts used up the grace period.
const MIN_REPORT_FLUSH: Duration = Duration::from_secs(1);

/// The phases of shutdown, shared by every task. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Shutdown {
    /// Cancelled by the binary: stop accepting work.
    requested: CancellationToken,
    /// Cancelled once every publish queued before shutdown is written and answered.
    publishes_drained: CancellationToken,
    /// Cancelled when the grace period ran out: abandon in-flight attempts.
    abort_attempts: CancellationToken,
    /// Cancelled once nothing produces outcomes any more: the writer drains and stops.
    outcomes_closing: CancellationToken,
    /// Cancelled when the reporter should send what is left and stop.
    reporter_flush: CancellationToken,
    /// When the reporter must give up flushing; set before `reporter_flush`.
    reporter_deadline: Arc<Mutex<Option<Instant>>>,
    /// Cancelled when every task has finished.
    drained: CancellationToken,
}

impl Shutdown {
    /// The phases of a data plane that stops when `requested` is cancelled.
    pub(crate) fn new(requested: CancellationToken) -> Shutdown {
        Shutdown {
            requested,
            publishes_drained: CancellationToken::new(),
            abort_attempts: CancellationToken::new(),
            outcomes_closing: CancellationToken::new(),
            reporter_flush: CancellationToken::new(),
            reporter_deadline: Arc::new(Mutex::new(None)),
            drained: CancellationToken::new(),
        }
    }

    /// Whether shutdown has begun: take no new work.
    pub(crate) fn is_requested(&self) -> bool {
        self.requested.is_cancelled()
    }

    /// Resolves when shutdown begins.
    pub(crate) async fn requested(&self) {
        self.requested.cancelled().await;
    }

    /// The writer calls this once the publish queue is closed and empty; dropping the
    /// returned guard marks it too, so shutdown never waits on a writer that ended.
    pub(crate) fn publishes_drained_guard(&self) -> tokio_util::sync::DropGuard {
        self.publishes_drained.clone().drop_guard()
    }

    /// Marks every queued publish written and answered.
    pub(crate) fn mark_publishes_drained(&self) {
        self.publishes_drained.cancel();
    }

    /// Resolves when the grace period ran out and in-flight attempts must be abandoned.
    pub(crate) async fn attempts_aborted(&self) {
        self.abort_attempts.cancelled().await;
    }

    /// Resolves when nothing produces outcomes any more.
    pub(crate) async fn outcomes_closing(&self) {
        self.outcomes_closing.cancelled().await;
    }

    /// Whether the reporter is flushing for shutdown.
    pub(crate) fn is_flushing_reports(&self) -> bool {
        self.reporter_flush.is_cancelled()
    }

    /// Resolves when the reporter should flush and stop.
    pub(crate) async fn reports_flushing(&self) {
        self.reporter_flush.cancelled().await;
    }

    /// When the shutdown flush of reports must stop; `None` while running normally.
    pub(crate) fn report_flush_deadline(&self) -> Option<Instant> {
        if !self.reporter_flush.is_cancelled() {
            return None;
        }
        *self
            .reporter_deadline
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Resolves when every task has stopped.
    pub(crate) async fn drained(&self) {
        self.drained.cancelled().await;
    }
}

/// The long-lived tasks shutdown waits for, in the order it stops them.
pub(crate) struct Tasks {
    pub(crate) writer: JoinHandle<()>,
    pub(crate) timers: JoinHandle<()>,
    pub(crate) scanner: JoinHandle<()>,
    pub(crate) watcher: JoinHandle<()>,
    pub(crate) reporter: JoinHandle<()>,
    /// Every lane's task.
    pub(crate) lanes: TaskTracker,
    /// Every in-flight attempt.
    pub(crate) attempts: TaskTracker,
}

/// Drives shutdown once it is requested: stop taking work, let in-flight attempts finish
/// within `grace`, write their outcomes, give leases back (`release_leases`), flush the
/// outbox, stop.
pub(crate) async fn run(
    shutdown: Shutdown,
    grace: Duration,
    tasks: Tasks,
    release_leases: impl Future<Output = ()>,
) {
    shutdown.requested().await;
    let deadline = Instant::now() + grace;
    tracing::info!("data plane shutting down");

    // Publishes already queued are written and answered; new ones get UNAVAILABLE.
    shutdown.publishes_drained.cancelled().await;
    for task in [tasks.timers, tasks.scanner, tasks.watcher] {
        let _ = task.await;
    }
    tasks.lanes.close();
    tasks.lanes.wait().await;

    tasks.attempts.close();
    let in_flight = tasks.attempts.len();
    if tokio::time::timeout_at(deadline, tasks.attempts.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            in_flight = tasks.attempts.len(),
            "shutdown grace ended with attempts in flight; they stay pending and are retried after the restart"
        );
        shutdown.abort_attempts.cancel();
        tasks.attempts.wait().await;
    } else if in_flight > 0 {
        tracing::info!(in_flight, "in-flight attempts finished");
    }

    shutdown.outcomes_closing.cancel();
    let _ = tasks.writer.await;
    release_leases.await;

    *shutdown
        .reporter_deadline
        .lock()
        .unwrap_or_else(PoisonError::into_inner) =
        Some(deadline.max(Instant::now() + MIN_REPORT_FLUSH));
    shutdown.reporter_flush.cancel();
    let _ = tasks.reporter.await;
    tracing::info!("data plane stopped");
    shutdown.drained.cancel();
}
