//! The publish quota per workspace (`--workspace-publish-rate`, off by default): a
//! workspace may publish this many events a second through this replica, in bursts of up to
//! `--workspace-publish-burst`; past it a publish is refused with RESOURCE_EXHAUSTED and the
//! time to wait (`google.rpc.RetryInfo`), and nothing of it is stored. It keeps one
//! workspace from taking the whole machine: what a workspace within its quota waits for is
//! then bounded by what the others may send (docs/concurrency.md).
//!
//! A workspace may have a quota of its own, set through the control plane
//! (`Workspace.publish_quota`): other figures, or none at all (`unlimited`). It applies
//! instead of the flags' from the moment the configuration reaches this replica; a workspace
//! whose quota changes starts the new one with a full burst.
//!
//! GCRA by `governor`, one state per workspace and quota; states that have refilled are
//! dropped now and then, so memory follows the workspaces publishing, not all that ever did.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::error::DataError;
use crate::state::policy::OwnQuota;

/// Checks between two sweeps of the states that have refilled.
const SWEEP_EVERY: u64 = 4096;
/// A workspace's refusals are logged once in this at most.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// The flags' quota for every workspace (or none), and the quotas workspaces set.
pub(crate) struct PublishQuota {
    /// The flags' quota, for the workspaces without one of their own.
    default: Option<Limiter>,
    /// The workspaces' own quotas: one limiter per distinct quota, keyed by workspace, so
    /// workspaces with the same figures share it and memory follows the quotas in use.
    own: RwLock<HashMap<(NonZeroU32, NonZeroU32), Arc<Limiter>>>,
    checks: AtomicU64,
    /// When each workspace's refusal was last logged.
    logged: Mutex<HashMap<String, Instant>>,
}

/// One quota, a state per workspace.
struct Limiter {
    keyed: DefaultKeyedRateLimiter<String>,
    /// Events a second and burst, for the error text.
    per_second: NonZeroU32,
    burst: NonZeroU32,
}

impl Limiter {
    fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Limiter {
        Limiter {
            keyed: DefaultKeyedRateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            per_second,
            burst,
        }
    }

    fn check(&self, workspace_id: &str, whose: &str) -> Result<(), DataError> {
        match self.keyed.check_key(&workspace_id.to_owned()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.keyed.clock().now());
                // At least a millisecond, so the advice is never "retry in 0 ms".
                let retry_after = wait.max(Duration::from_millis(1));
                crate::metrics::metrics().publish_refused.add(1, &[]);
                Err(DataError::QuotaExceeded {
                    message: format!(
                        "workspace {workspace_id} is over its publish quota of {} events/s \
                         (bursts of {}; {whose}); retry in {} ms",
                        self.per_second,
                        self.burst,
                        retry_after.as_millis()
                    ),
                    retry_after,
                })
            }
        }
    }
}

impl PublishQuota {
    /// `rate` events a second per workspace (0: no quota), bursts of `burst` (0: one
    /// second's worth), for the workspaces without a quota of their own.
    pub(crate) fn new(rate: u32, burst: u32) -> PublishQuota {
        let default = NonZeroU32::new(rate).map(|per_second| {
            Limiter::new(per_second, NonZeroU32::new(burst).unwrap_or(per_second))
        });
        PublishQuota {
            default,
            own: RwLock::new(HashMap::new()),
            checks: AtomicU64::new(0),
            logged: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one publish of `workspace_id`, under its own quota (`own`, from the
    /// configuration) or else the flags'; RESOURCE_EXHAUSTED with the time to wait when the
    /// workspace is over it.
    pub(crate) fn check(&self, workspace_id: &str, own: Option<OwnQuota>) -> Result<(), DataError> {
        let checked = self.check_quota(workspace_id, own);
        if let Err(DataError::QuotaExceeded { message, .. }) = &checked
            && self.first_refusal_in_a_while(workspace_id, Instant::now())
        {
            // For the operator, who otherwise sees only a count: which workspace is held
            // back, once a minute at most per workspace however often it is refused.
            tracing::info!(
                workspace_id,
                "{message} (logged once a minute per workspace)"
            );
        }
        checked
    }

    /// Whether a refusal of `workspace_id` at `now` is its first in [`LOG_EVERY`], which
    /// it then counts as.
    fn first_refusal_in_a_while(&self, workspace_id: &str, now: Instant) -> bool {
        let mut logged = self.logged.lock().unwrap_or_else(PoisonError::into_inner);
        match logged.get_mut(workspace_id) {
            Some(at) if now.saturating_duration_since(*at) < LOG_EVERY => false,
            Some(at) => {
                *at = now;
                true
            }
            None => {
                logged.insert(workspace_id.to_owned(), now);
                true
            }
        }
    }

    fn check_quota(&self, workspace_id: &str, own: Option<OwnQuota>) -> Result<(), DataError> {
        match own {
            Some(OwnQuota::Unlimited) => Ok(()),
            Some(OwnQuota::Limit { per_second, burst }) => {
                self.sweep_now_and_then();
                self.own_limiter(per_second, burst)
                    .check(workspace_id, "the workspace's own")
            }
            None => match &self.default {
                Some(limiter) => {
                    self.sweep_now_and_then();
                    limiter.check(workspace_id, "the server's")
                }
                None => Ok(()),
            },
        }
    }

    fn own_limiter(&self, per_second: NonZeroU32, burst: NonZeroU32) -> Arc<Limiter> {
        let key = (per_second, burst);
        if let Some(limiter) = self
            .own
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Arc::clone(limiter);
        }
        let mut own = self.own.write().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            own.entry(key)
                .or_insert_with(|| Arc::new(Limiter::new(per_second, burst))),
        )
    }

    /// Drops the states that have refilled (a workspace back at a full burst is the same as
    /// one never seen), and the own quotas left with none.
    fn sweep_now_and_then(&self) {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY != SWEEP_EVERY - 1 {
            return;
        }
        if let Some(limiter) = &self.default {
            limiter.keyed.retain_recent();
        }
        let mut own = self.own.write().unwrap_or_else(PoisonError::into_inner);
        own.retain(|_, limiter| {
            limiter.keyed.retain_recent();
            !limiter.keyed.is_empty()
        });
        drop(own);
        let now = Instant::now();
        self.logged
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, at| now.saturating_duration_since(*at) < LOG_EVERY);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn no_rate_means_no_quota() {
        let quota = PublishQuota::new(0, 0);
        for _ in 0..10_000 {
            quota.check("wrk_a", None).unwrap();
        }
    }

    #[test]
    fn a_burst_passes_then_the_workspace_waits_and_others_do_not() {
        // One a second, bursts of 3: the fourth at once is refused, for most of a second.
        let quota = PublishQuota::new(1, 3);
        for _ in 0..3 {
            quota.check("wrk_a", None).unwrap();
        }
        let Err(DataError::QuotaExceeded {
            message,
            retry_after,
        }) = quota.check("wrk_a", None)
        else {
            panic!("the fourth publish of the burst passed");
        };
        assert!(
            retry_after > Duration::from_millis(500) && retry_after <= Duration::from_secs(1),
            "{retry_after:?}"
        );
        assert!(
            message.contains("wrk_a") && message.contains("1 events/s"),
            "{message}"
        );
        // Another workspace has its own quota.
        quota.check("wrk_b", None).unwrap();
    }

    #[test]
    fn a_workspaces_own_quota_replaces_the_servers() {
        let n = |v| NonZeroU32::new(v).unwrap();
        let quota = PublishQuota::new(1, 1);
        // Unlimited: the server's quota of 1 does not apply.
        for _ in 0..100 {
            quota.check("wrk_free", Some(OwnQuota::Unlimited)).unwrap();
        }
        // Its own figures, larger than the server's.
        let own = Some(OwnQuota::Limit {
            per_second: n(1),
            burst: n(4),
        });
        for _ in 0..4 {
            quota.check("wrk_own", own).unwrap();
        }
        let Err(DataError::QuotaExceeded { message, .. }) = quota.check("wrk_own", own) else {
            panic!("the fifth publish of a burst of 4 passed");
        };
        assert!(
            message.contains("bursts of 4; the workspace's own"),
            "{message}"
        );
        // Another workspace with the same figures has a state of its own.
        quota.check("wrk_same", own).unwrap();
        // Without one of its own, the server's.
        quota.check("wrk_plain", None).unwrap();
        let Err(DataError::QuotaExceeded { message, .. }) = quota.check("wrk_plain", None) else {
            panic!("the second publish of a burst of 1 passed");
        };
        assert!(message.contains("the server's"), "{message}");
        // An own quota with no server quota at all.
        let unbounded = PublishQuota::new(0, 0);
        let tight = Some(OwnQuota::Limit {
            per_second: n(1),
            burst: n(1),
        });
        unbounded.check("wrk_a", tight).unwrap();
        assert!(unbounded.check("wrk_a", tight).is_err());
        unbounded.check("wrk_b", None).unwrap();
        unbounded.check("wrk_b", None).unwrap();
    }

    #[test]
    fn a_workspaces_refusals_are_logged_once_a_minute() {
        let quota = PublishQuota::new(1, 1);
        let start = Instant::now();
        assert!(quota.first_refusal_in_a_while("wrk_a", start));
        assert!(!quota.first_refusal_in_a_while("wrk_a", start + Duration::from_secs(59)));
        assert!(quota.first_refusal_in_a_while("wrk_b", start + Duration::from_secs(1)));
        assert!(quota.first_refusal_in_a_while("wrk_a", start + Duration::from_secs(60)));
        assert!(!quota.first_refusal_in_a_while("wrk_a", start + Duration::from_secs(61)));
    }
}
