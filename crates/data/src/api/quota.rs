//! The publish quota per workspace (`--workspace-publish-rate`, off by default): a
//! workspace may publish this many events a second through this replica, in bursts of up to
//! `--workspace-publish-burst`; past it a publish is refused with RESOURCE_EXHAUSTED and the
//! time to wait (`google.rpc.RetryInfo`), and nothing of it is stored. It keeps one
//! workspace from taking the whole machine: what a workspace within its quota waits for is
//! then bounded by what the others may send (docs/concurrency.md).
//!
//! GCRA by `governor`, one state per workspace; states that have refilled are dropped now
//! and then, so memory follows the workspaces publishing, not all that ever did.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::error::DataError;

/// Checks between two sweeps of the states that have refilled.
const SWEEP_EVERY: u64 = 4096;

/// The quota of every workspace, or none.
pub(crate) struct PublishQuota {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    /// Events a second and burst, for the error text.
    rate: u32,
    burst: u32,
    checks: AtomicU64,
}

impl PublishQuota {
    /// `rate` events a second per workspace (0: no quota), bursts of `burst` (0: one
    /// second's worth).
    pub(crate) fn new(rate: u32, burst: u32) -> PublishQuota {
        let burst = if burst == 0 { rate } else { burst };
        let limiter =
            NonZeroU32::new(rate)
                .zip(NonZeroU32::new(burst))
                .map(|(per_second, burst)| {
                    DefaultKeyedRateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst))
                });
        PublishQuota {
            limiter,
            rate,
            burst,
            checks: AtomicU64::new(0),
        }
    }

    /// Counts one publish of `workspace_id`; RESOURCE_EXHAUSTED with the time to wait when
    /// the workspace is over its quota.
    pub(crate) fn check(&self, workspace_id: &str) -> Result<(), DataError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            limiter.retain_recent();
        }
        match limiter.check_key(&workspace_id.to_owned()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(limiter.clock().now());
                // At least a millisecond, so the advice is never "retry in 0 ms".
                let retry_after = wait.max(Duration::from_millis(1));
                crate::metrics::metrics().publish_refused.add(1, &[]);
                Err(DataError::QuotaExceeded {
                    message: format!(
                        "workspace {workspace_id} is over its publish quota of {} events/s \
                         (bursts of {}); retry in {} ms",
                        self.rate,
                        self.burst,
                        retry_after.as_millis()
                    ),
                    retry_after,
                })
            }
        }
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
            quota.check("wrk_a").unwrap();
        }
    }

    #[test]
    fn a_burst_passes_then_the_workspace_waits_and_others_do_not() {
        // One a second, bursts of 3: the fourth at once is refused, for most of a second.
        let quota = PublishQuota::new(1, 3);
        for _ in 0..3 {
            quota.check("wrk_a").unwrap();
        }
        let Err(DataError::QuotaExceeded {
            message,
            retry_after,
        }) = quota.check("wrk_a")
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
        quota.check("wrk_b").unwrap();
    }
}
