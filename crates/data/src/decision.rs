//! What happens after an attempt: the pure rules for retrying, giving up, and disabling an
//! endpoint that keeps failing. The dispatcher applies them; tests check them as tables.

use std::time::Duration;

use sluice_core::retry::{RetrySchedule, clamp_retry_after, with_jitter};

/// How retries are spaced, from the data plane's configuration.
#[derive(Clone, Debug)]
pub(crate) struct RetryPolicy {
    pub(crate) schedule: RetrySchedule,
    pub(crate) jitter: f64,
    pub(crate) retry_after_min: Duration,
    pub(crate) retry_after_max: Duration,
}

/// What an attempt's result means for its delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// 2xx: delivered.
    Succeeded,
    /// Failed; try again after this long.
    RetryIn(Duration),
    /// Failed and no attempt is left (or none is wanted).
    Failed,
    /// 410 Gone: the receiver asks to stop; the subscription is disabled.
    Gone,
}

/// The step after attempt `attempt_number` (1-based) of a scheduled delivery.
///
/// `Retry-After` (parsed on 429 and 503 only) is kept within policy bounds and wins when it
/// asks for a longer wait than the schedule; it never adds attempts beyond the schedule.
pub(crate) fn after_attempt(
    policy: &RetryPolicy,
    attempt_number: u32,
    success: bool,
    gone: bool,
    retry_after: Option<Duration>,
) -> Next {
    if success {
        return Next::Succeeded;
    }
    if gone {
        return Next::Gone;
    }
    let Some(scheduled) = policy
        .schedule
        .delay_before_attempt(attempt_number.saturating_add(1))
    else {
        return Next::Failed;
    };
    let mut delay = with_jitter(scheduled, policy.jitter);
    if let Some(asked) = retry_after {
        delay = delay.max(clamp_retry_after(
            asked,
            policy.retry_after_min,
            policy.retry_after_max,
        ));
    }
    Next::RetryIn(delay)
}

/// An endpoint's current run of failed attempts, kept per subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Streak {
    /// When the first failure of the run happened, unix milliseconds.
    pub(crate) since_ms: i64,
    /// How many attempts in a row failed.
    pub(crate) failures: u32,
}

impl Streak {
    /// The `dp_state` value: `since_ms,failures`.
    pub(crate) fn encode(&self) -> String {
        format!("{},{}", self.since_ms, self.failures)
    }

    pub(crate) fn decode(value: &str) -> Option<Streak> {
        let (since, failures) = value.split_once(',')?;
        Some(Streak {
            since_ms: since.parse().ok()?,
            failures: failures.parse().ok()?,
        })
    }

    /// The streak after one more attempt: a success ends it, a failure extends or starts it.
    pub(crate) fn after(current: Option<Streak>, success: bool, now_ms: i64) -> Option<Streak> {
        if success {
            return None;
        }
        Some(match current {
            Some(streak) => Streak {
                since_ms: streak.since_ms,
                failures: streak.failures.saturating_add(1),
            },
            None => Streak {
                since_ms: now_ms,
                failures: 1,
            },
        })
    }

    /// Whether an endpoint failing like this should be disabled: every attempt failed for
    /// `failing_for`, or (when configured) `max_failures` attempts in a row failed.
    pub(crate) fn warrants_disable(
        &self,
        now_ms: i64,
        failing_for: Duration,
        max_failures: Option<u32>,
    ) -> bool {
        if max_failures.is_some_and(|max| self.failures >= max) {
            return true;
        }
        let failing_for_ms = i64::try_from(failing_for.as_millis()).unwrap_or(i64::MAX);
        now_ms.saturating_sub(self.since_ms) >= failing_for_ms
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn policy(schedule: &str) -> RetryPolicy {
        RetryPolicy {
            schedule: RetrySchedule::parse(schedule).unwrap(),
            jitter: 0.0,
            retry_after_min: Duration::from_secs(1),
            retry_after_max: Duration::from_secs(3600),
        }
    }

    #[test]
    fn follows_the_schedule() {
        let policy = policy("0s,5s,5m");
        let secs = Duration::from_secs;
        let cases = [
            // (attempt, success, gone, retry-after, expected)
            (1, true, false, None, Next::Succeeded),
            (1, false, false, None, Next::RetryIn(secs(5))),
            (2, false, false, None, Next::RetryIn(secs(300))),
            (3, false, false, None, Next::Failed),
            (1, false, true, None, Next::Gone),
            // Retry-After longer than the schedule wins…
            (1, false, false, Some(secs(60)), Next::RetryIn(secs(60))),
            // …shorter does not shorten it…
            (2, false, false, Some(secs(2)), Next::RetryIn(secs(300))),
            // …it is capped…
            (
                1,
                false,
                false,
                Some(secs(86_400)),
                Next::RetryIn(secs(3600)),
            ),
            // …and it adds no attempts.
            (3, false, false, Some(secs(60)), Next::Failed),
        ];
        for (attempt, success, gone, retry_after, want) in cases {
            assert_eq!(
                after_attempt(&policy, attempt, success, gone, retry_after),
                want,
                "attempt {attempt} success {success} gone {gone} retry-after {retry_after:?}"
            );
        }
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let mut policy = policy("0s,10s");
        policy.jitter = 0.2;
        for _ in 0..1000 {
            let Next::RetryIn(d) = after_attempt(&policy, 1, false, false, None) else {
                panic!("expected a retry");
            };
            assert!(
                d >= Duration::from_secs(8) && d <= Duration::from_secs(12),
                "{d:?}"
            );
        }
    }

    #[test]
    fn streaks() {
        let day = Duration::from_secs(86_400);
        let s = Streak::after(None, false, 1_000).unwrap();
        assert_eq!(
            s,
            Streak {
                since_ms: 1_000,
                failures: 1
            }
        );
        let s = Streak::after(Some(s), false, 5_000).unwrap();
        assert_eq!(
            s,
            Streak {
                since_ms: 1_000,
                failures: 2
            }
        );
        assert_eq!(Streak::after(Some(s), true, 6_000), None);

        assert!(!s.warrants_disable(1_000 + 86_399_999, day, None));
        assert!(s.warrants_disable(1_000 + 86_400_000, day, None));
        assert!(s.warrants_disable(2_000, day, Some(2)));
        assert!(!s.warrants_disable(2_000, day, Some(3)));

        assert_eq!(Streak::decode(&s.encode()), Some(s));
        assert_eq!(Streak::decode("x,1"), None);
        assert_eq!(Streak::decode("1"), None);
    }
}
