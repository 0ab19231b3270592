//! The lanes: one per subscription, each with its own queue of due deliveries, its
//! concurrency limit, rate limit and circuit breaker, so a slow or dead endpoint only ever
//! delays itself. This is the lanes' state; the dispatcher runs them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sluice_delivery::{AttemptErrorKind, AttemptResult};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::deliver::breaker::{Breaker, Gate};
use crate::deliver::limiter::{Aimd, Sample};
use crate::deliver::rate_limit::RateLimiter;
use crate::work::DeliveryTask;

/// What every lane is given.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LaneLimits {
    /// The most attempts in flight to one subscription.
    pub(crate) concurrency: usize,
    /// Whether the limit adapts between 1 and `concurrency` (`deliver::limiter`), or stays
    /// at `concurrency`.
    pub(crate) adaptive: bool,
    /// Consecutive failures that open the breaker; 0 turns it off.
    pub(crate) breaker_failures: u32,
    /// How long an open breaker waits before one probe.
    pub(crate) breaker_cooldown: Duration,
}

/// A change of an endpoint's breaker that is published as an operational event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BreakerChange {
    /// Consecutive failures opened it: `sluice.endpoint.unhealthy`.
    Opened,
    /// A success closed it again: `sluice.endpoint.recovered`.
    Closed,
}

/// Every lane, by subscription id.
pub(crate) struct Lanes {
    by_subscription: Mutex<foldhash::HashMap<String, Arc<Lane>>>,
    limits: LaneLimits,
}

impl Lanes {
    pub(crate) fn new(limits: LaneLimits) -> Lanes {
        Lanes {
            by_subscription: Mutex::default(),
            limits,
        }
    }

    /// The lane of a subscription, if it has one.
    pub(crate) fn get(&self, subscription_id: &str) -> Option<Arc<Lane>> {
        self.lock().get(subscription_id).cloned()
    }

    /// The lane of a subscription, and whether it was created now (then its task must be
    /// started).
    pub(crate) fn get_or_create(&self, subscription_id: &str) -> (Arc<Lane>, bool) {
        let mut lanes = self.lock();
        if let Some(lane) = lanes.get(subscription_id) {
            return (Arc::clone(lane), false);
        }
        let lane = Arc::new(Lane::new(subscription_id, self.limits));
        lanes.insert(subscription_id.to_owned(), Arc::clone(&lane));
        (lane, true)
    }

    /// Drops the queued deliveries of a subscription that was disabled, and wakes its lane.
    pub(crate) fn clear(&self, subscription_id: &str) {
        if let Some(lane) = self.get(subscription_id) {
            lane.queue().clear();
            lane.wake.notify_one();
        }
    }

    /// Counts an attempt made outside the lane (a manual one) in the endpoint's breaker: a
    /// success shows the endpoint is back.
    pub(crate) fn record_result(
        &self,
        subscription_id: &str,
        success: bool,
    ) -> Option<BreakerChange> {
        let lane = self.get(subscription_id)?;
        let change = lane.record_result(success);
        lane.wake.notify_one();
        change
    }

    fn lock(&self) -> MutexGuard<'_, foldhash::HashMap<String, Arc<Lane>>> {
        // Inserting is the only mutation; a poisoned map is still a valid map.
        self.by_subscription
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// One subscription's queue and limits.
pub(crate) struct Lane {
    pub(crate) subscription_id: String,
    /// Deliveries due now, oldest first.
    queue: Mutex<VecDeque<DeliveryTask>>,
    /// Wakes the lane: new work, an attempt finished, a probe ended.
    pub(crate) wake: Notify,
    /// Attempts in flight to this endpoint. Only the lane's task adds to it (so a check
    /// then an add cannot overshoot); each attempt's [`LanePermit`] takes its one off.
    in_flight: AtomicUsize,
    /// The attempts allowed in flight now: fixed, or the limiter's latest figure.
    limit: Arc<AtomicUsize>,
    /// The limiter's window ([`Aimd::window`]) as the lane's task reads it for a permit.
    window: AtomicU64,
    gate: Mutex<LaneGate>,
}

/// The checks before each attempt, and the limiter after it, behind one lock.
struct LaneGate {
    breaker: Breaker,
    rate: RateLimiter,
    /// `None`: the limit is fixed.
    limiter: Option<Aimd>,
}

/// One attempt's place in its lane's concurrency, given back on drop.
pub(crate) struct LanePermit {
    lane: Arc<Lane>,
    /// The limiter's window when it was taken.
    window: u64,
}

impl Drop for LanePermit {
    fn drop(&mut self) {
        self.lane.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Lane {
    fn new(subscription_id: &str, limits: LaneLimits) -> Lane {
        let max = limits.concurrency.max(1);
        let limiter = limits.adaptive.then(|| Aimd::new(max));
        let limit = Arc::new(AtomicUsize::new(limiter.as_ref().map_or(max, Aimd::limit)));
        crate::metrics::register_concurrency_limit(subscription_id, Arc::clone(&limit));
        Lane {
            subscription_id: subscription_id.to_owned(),
            queue: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            in_flight: AtomicUsize::new(0),
            limit,
            window: AtomicU64::new(0),
            gate: Mutex::new(LaneGate {
                breaker: Breaker::new(limits.breaker_failures, limits.breaker_cooldown),
                rate: RateLimiter::default(),
                limiter,
            }),
        }
    }

    /// The attempts allowed in flight now.
    pub(crate) fn concurrency_limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// The queue of due deliveries.
    pub(crate) fn queue(&self) -> MutexGuard<'_, VecDeque<DeliveryTask>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues deliveries and wakes the lane.
    pub(crate) fn push(&self, tasks: Vec<DeliveryTask>) {
        self.queue().extend(tasks);
        self.wake.notify_one();
    }

    /// What the circuit breaker allows now.
    pub(crate) fn breaker_gate(&self, now: Instant) -> Gate {
        self.gate().breaker.gate(now)
    }

    /// Marks the breaker's probe under way.
    pub(crate) fn start_probe(&self) {
        self.gate().breaker.start_probe();
    }

    /// The probe was not sent after all (the delivery was withdrawn).
    pub(crate) fn cancel_probe(&self) {
        self.gate().breaker.cancel_probe();
    }

    /// Takes a rate token for an attempt now, or says until when to wait.
    pub(crate) fn acquire_rate(&self, per_second: u32, now: Instant) -> Option<Instant> {
        self.gate().rate.acquire(per_second, now)
    }

    /// A concurrency permit, held for the attempt's duration, if one is free now; else the
    /// lane waits for `wake` (an attempt that ends notifies it). Only the lane's own task
    /// calls this.
    pub(crate) fn try_permit(self: &Arc<Self>) -> Option<LanePermit> {
        if self.in_flight.load(Ordering::Acquire) >= self.limit.load(Ordering::Relaxed) {
            return None;
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Some(LanePermit {
            lane: Arc::clone(self),
            window: self.window.load(Ordering::Relaxed),
        })
    }

    /// Counts a lane's attempt in the breaker and in the limiter (one lock for both), and
    /// says what [`Lane::record_result`] says.
    pub(crate) fn record_attempt(
        &self,
        result: &AttemptResult,
        permit: &LanePermit,
    ) -> Option<BreakerChange> {
        let success = result.is_success();
        let mut gate = self.gate();
        if let Some(limiter) = gate.limiter.as_mut() {
            let timeout = result.error_kind == Some(AttemptErrorKind::Timeout);
            let limit = limiter.record(Sample {
                latency: result.latency,
                overloaded: timeout || matches!(result.status_code, Some(429 | 503)),
                answered: result.status_code.is_some() || timeout,
                in_flight: self.in_flight.load(Ordering::Relaxed),
                window: permit.window,
            });
            self.limit.store(limit, Ordering::Relaxed);
            self.window.store(limiter.window(), Ordering::Relaxed);
        }
        self.record_in(gate, success)
    }

    /// Counts an attempt's result in the breaker, and says when the endpoint went down
    /// (the breaker opened from closed) or came back (it closed again).
    pub(crate) fn record_result(&self, success: bool) -> Option<BreakerChange> {
        self.record_in(self.gate(), success)
    }

    fn record_in(
        &self,
        mut gate: MutexGuard<'_, LaneGate>,
        success: bool,
    ) -> Option<BreakerChange> {
        let before = gate.breaker.state_name();
        gate.breaker.record(success, Instant::now());
        let after = gate.breaker.state_name();
        drop(gate);
        if before != after {
            crate::metrics::metrics()
                .breaker_changes
                .add(1, &[opentelemetry::KeyValue::new("state", after)]);
            tracing::info!(subscription_id = %self.subscription_id, from = before, to = after, "circuit breaker changed state");
        }
        match (before, after) {
            ("closed", "open") => Some(BreakerChange::Opened),
            ("open" | "half_open", "closed") => Some(BreakerChange::Closed),
            _ => None,
        }
    }

    fn gate(&self) -> MutexGuard<'_, LaneGate> {
        self.gate.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
