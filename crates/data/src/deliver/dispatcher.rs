//! The dispatcher: takes due deliveries (from the writer, the timers and the scanner), puts
//! each in its subscription's lane, and runs the lanes.
//!
//! A lane is a small task that waits until its endpoint may take another attempt (breaker,
//! rate limit, concurrency permit), then spawns the attempt and goes on. No shared worker
//! ever waits on an endpoint.

use std::sync::Arc;

use tokio::time::{Instant, sleep_until};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::deliver::attempt::{Attempts, undeliverable_status};
use crate::deliver::breaker::Gate;
use crate::deliver::lanes::{Lane, Lanes};
use crate::shutdown::Shutdown;
use crate::work::DeliveryTask;

/// The most deliveries an endpoint awaiting verification keeps in memory.
const PARKED_LIMIT: usize = 1_000;

/// Hands due deliveries to their lanes and runs the lanes.
pub(crate) struct Dispatcher {
    lanes: Arc<Lanes>,
    attempts: Arc<Attempts>,
    shutdown: Shutdown,
    /// Every lane's task.
    lane_tasks: TaskTracker,
    /// Every in-flight attempt, so shutdown can wait for them.
    attempt_tasks: TaskTracker,
}

impl Dispatcher {
    pub(crate) fn new(lanes: Arc<Lanes>, attempts: Arc<Attempts>, shutdown: Shutdown) -> Self {
        Dispatcher {
            lanes,
            attempts,
            shutdown,
            lane_tasks: TaskTracker::new(),
            attempt_tasks: TaskTracker::new(),
        }
    }

    /// The lanes' tasks and the attempts' tasks, for shutdown to wait on.
    pub(crate) fn trackers(&self) -> (TaskTracker, TaskTracker) {
        (self.lane_tasks.clone(), self.attempt_tasks.clone())
    }

    /// Hands deliveries that are due now to their lanes. Never waits.
    pub(crate) fn enqueue(self: &Arc<Self>, tasks: impl IntoIterator<Item = DeliveryTask>) {
        if self.shutdown.is_requested() {
            // They are pending in the database; the next start (or another replica) sends them.
            return;
        }
        // Tasks are grouped by lane with a scan of the few lanes seen so far (a message has
        // a handful of subscriptions), so no key is copied per task.
        let mut by_lane: Vec<(Arc<Lane>, Vec<DeliveryTask>)> = Vec::new();
        for task in tasks {
            let subscription_id = task.key.subscription_id.as_str();
            match by_lane
                .iter_mut()
                .find(|(lane, _)| lane.subscription_id == subscription_id)
            {
                Some((_, queued)) => queued.push(task),
                None => by_lane.push((self.lane(subscription_id), vec![task])),
            }
        }
        for (lane, tasks) in by_lane {
            lane.push(tasks);
        }
    }

    /// The lane of a subscription, its task started on first use.
    fn lane(self: &Arc<Self>, subscription_id: &str) -> Arc<Lane> {
        let (lane, created) = self.lanes.get_or_create(subscription_id);
        if created {
            self.lane_tasks
                .spawn(Arc::clone(self).run_lane(Arc::clone(&lane)));
        }
        lane
    }

    /// A lane's loop: wait for work, for the breaker, for the rate limit and for a
    /// concurrency permit, then spawn the attempt and go round again.
    async fn run_lane(self: Arc<Self>, lane: Arc<Lane>) {
        let shutdown = &self.shutdown;
        loop {
            if shutdown.is_requested() {
                return;
            }
            self.drop_withdrawn(&lane);
            if lane.queue().is_empty() {
                tokio::select! {
                    () = lane.wake.notified() => continue,
                    () = shutdown.requested() => return,
                }
            }

            // Deliveries of a deleted or disabled subscription end without an attempt, and
            // without waiting for the breaker or the rate limit.
            let snapshot = self.attempts.copy.current();
            let subscription = snapshot.subscription(&lane.subscription_id).cloned();
            let rate = match &subscription {
                Some(sub) if sub.enabled && sub.awaiting_verification => {
                    if !self.park(&lane).await {
                        return;
                    }
                    continue;
                }
                Some(sub) if sub.enabled => sub.rate_limit_per_second,
                _ => {
                    let tasks: Vec<DeliveryTask> = lane.queue().drain(..).collect();
                    let status = undeliverable_status(subscription.as_deref());
                    for task in tasks {
                        self.attempts.end_undelivered(&task, status).await;
                    }
                    continue;
                }
            };

            let now = Instant::now();
            let probe = match lane.breaker_gate(now) {
                Gate::Pass => false,
                Gate::Probe => true,
                Gate::WaitUntil(until) => {
                    tokio::select! {
                        () = sleep_until(until) => {}
                        () = shutdown.requested() => return,
                    }
                    continue;
                }
                Gate::WaitForProbe => {
                    tokio::select! {
                        () = lane.wake.notified() => {}
                        () = shutdown.requested() => return,
                    }
                    continue;
                }
            };

            if let Some(until) = lane.acquire_rate(rate, now) {
                tokio::select! {
                    () = sleep_until(until) => {}
                    () = shutdown.requested() => return,
                }
                continue;
            }

            let permit = loop {
                if let Some(permit) = lane.try_permit() {
                    break permit;
                }
                tokio::select! {
                    () = lane.wake.notified() => {}
                    () = shutdown.requested() => return,
                }
            };
            let Some(task) = lane.queue().pop_front() else {
                continue;
            };
            if probe {
                lane.start_probe();
            }
            let span = tracing::info_span!(
                "delivery.attempt",
                subscription_id = %task.key.subscription_id,
                message_id = %task.key.message_id,
                attempt_number = task.attempt_count + 1,
            );
            let attempts = Arc::clone(&self.attempts);
            let attempt_lane = Arc::clone(&lane);
            self.attempt_tasks.spawn(
                async move {
                    let attempted = attempts.run_from_lane(&attempt_lane, &permit, task).await;
                    if probe && !attempted {
                        attempt_lane.cancel_probe();
                    }
                    drop(permit);
                    attempt_lane.wake.notify_one();
                }
                .instrument(span),
            );
        }
    }

    /// Holds the lane of an endpoint that has not proved ownership yet (verification): its
    /// deliveries stay pending, unattempted. Up to [`PARKED_LIMIT`] wait in the lane (their
    /// leases renewed, ready the moment the endpoint is verified); the rest are let go,
    /// pending in the database, and taken up again when their leases run out. Returns when
    /// the configuration changes or work arrives; false on shutdown.
    async fn park(&self, lane: &Lane) -> bool {
        let copy = &self.attempts.copy;
        // Subscribed before looking, so a change in between still wakes the lane.
        let mut revision = copy.subscribe_revision();
        let awaiting = copy
            .current()
            .subscription(&lane.subscription_id)
            .is_some_and(|s| s.awaiting_verification);
        if !awaiting {
            return true;
        }
        let excess = {
            let mut queue = lane.queue();
            let keep = queue.len().min(PARKED_LIMIT);
            queue.split_off(keep)
        };
        for task in excess {
            self.attempts.claims.release(&task.key, task.generation);
        }
        tokio::select! {
            _ = revision.changed() => true,
            () = lane.wake.notified() => true,
            () = self.shutdown.requested() => false,
        }
    }

    /// Drops queued copies whose claim was withdrawn from the front of the queue, so they
    /// take no permit or rate token. Only the front is checked, keeping each turn of the
    /// lane cheap however long its backlog; stale copies further back go when they reach it.
    fn drop_withdrawn(&self, lane: &Lane) {
        let claims = &self.attempts.claims;
        let mut queue = lane.queue();
        while let Some(task) = queue.front() {
            if claims.is_current(&task.key, task.generation) {
                break;
            }
            queue.pop_front();
        }
    }
}
