//! What follows an attempt: the pure rules for retrying and giving up, for scheduled
//! attempts, replays and manual attempts. `attempt` applies them; tests check them as
//! tables. (When a failing endpoint is disabled is `state::streaks`' rule.)

use std::time::Duration;

use sluice_core::policy::{Defaults, Effective};
use sluice_core::retry::{RetrySchedule, clamp_retry_after, with_jitter};

/// How retries are spaced, from the data plane's configuration.
#[derive(Clone, Debug)]
pub(crate) struct RetryPolicy {
    pub(crate) schedule: RetrySchedule,
    /// The server's level of the layered policy (the schedule's retries, the request
    /// timeout, the disable period); a workspace's or subscription's policy overrides it.
    pub(crate) defaults: Defaults,
    pub(crate) jitter: f64,
    pub(crate) retry_after_min: Duration,
    pub(crate) retry_after_max: Duration,
}

/// Which rule decides what follows an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rule {
    /// The retry schedule: scheduled attempts.
    Schedule,
    /// A replay: one more attempt now; a failure starts a new run of the retry schedule.
    OneMore,
    /// A manual attempt (a redelivery): a failure leaves a delivery that was still pending on
    /// its own schedule (due at `pending_due_ms`), and starts a new run of the schedule for
    /// one that had ended.
    Manual { pending_due_ms: Option<i64> },
}

/// What an attempt's result means for its delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NextStep {
    /// 2xx: delivered.
    Succeeded,
    /// Failed; try again after this long.
    RetryIn(Duration),
    /// Failed; the delivery stays pending, due when its schedule already said.
    KeepSchedule,
    /// Failed and no attempt is left (or none is wanted).
    Failed,
    /// 410 Gone: the receiver asks to stop; the subscription is disabled.
    Gone,
}

/// The step after attempt `attempt_number` (1-based) of the current run of a delivery's
/// retry schedule, under `rule`, with the subscription's effective policy `plan` (its
/// retry delays and limit), for a message `age` old.
///
/// `Retry-After` (parsed on 429 and 503 only) is kept within policy bounds and wins when it
/// asks for a longer wait than the schedule; it never adds attempts beyond the schedule.
#[allow(clippy::too_many_arguments)]
pub(crate) fn next_step(
    policy: &RetryPolicy,
    plan: &Effective<'_>,
    age: Duration,
    rule: Rule,
    attempt_number: u32,
    success: bool,
    gone: bool,
    retry_after: Option<Duration>,
) -> NextStep {
    if success {
        return NextStep::Succeeded;
    }
    if gone {
        return NextStep::Gone;
    }
    if let Rule::Manual {
        pending_due_ms: Some(_),
    } = rule
    {
        return NextStep::KeepSchedule;
    }
    let Some(scheduled) = plan.next_delay(attempt_number, age) else {
        return NextStep::Failed;
    };
    let mut delay = with_jitter(scheduled, policy.jitter);
    if let Some(asked) = retry_after {
        delay = delay.max(clamp_retry_after(
            asked,
            policy.retry_after_min,
            policy.retry_after_max,
        ));
    }
    NextStep::RetryIn(delay)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn policy(schedule: &str) -> RetryPolicy {
        let schedule = RetrySchedule::parse(schedule).unwrap();
        RetryPolicy {
            defaults: Defaults::new(&schedule, Duration::from_secs(15), Duration::from_secs(60)),
            schedule,
            jitter: 0.0,
            retry_after_min: Duration::from_secs(1),
            retry_after_max: Duration::from_secs(3600),
        }
    }

    fn plan(policy: &RetryPolicy) -> Effective<'_> {
        sluice_core::policy::resolve(&policy.defaults, None, None)
    }

    #[test]
    fn follows_the_schedule() {
        let policy = policy("0s,5s,5m");
        let secs = Duration::from_secs;
        let cases = [
            // (attempt, success, gone, retry-after, expected)
            (1, true, false, None, NextStep::Succeeded),
            (1, false, false, None, NextStep::RetryIn(secs(5))),
            (2, false, false, None, NextStep::RetryIn(secs(300))),
            (3, false, false, None, NextStep::Failed),
            (1, false, true, None, NextStep::Gone),
            // Retry-After longer than the schedule wins…
            (1, false, false, Some(secs(60)), NextStep::RetryIn(secs(60))),
            // …shorter does not shorten it…
            (2, false, false, Some(secs(2)), NextStep::RetryIn(secs(300))),
            // …it is capped…
            (
                1,
                false,
                false,
                Some(secs(86_400)),
                NextStep::RetryIn(secs(3600)),
            ),
            // …and it adds no attempts.
            (3, false, false, Some(secs(60)), NextStep::Failed),
        ];
        for (attempt, success, gone, retry_after, want) in cases {
            assert_eq!(
                next_step(
                    &policy,
                    &plan(&policy),
                    Duration::ZERO,
                    Rule::Schedule,
                    attempt,
                    success,
                    gone,
                    retry_after
                ),
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
            let NextStep::RetryIn(d) = next_step(
                &policy,
                &plan(&policy),
                Duration::ZERO,
                Rule::Schedule,
                1,
                false,
                false,
                None,
            ) else {
                panic!("expected a retry");
            };
            assert!(
                d >= Duration::from_secs(8) && d <= Duration::from_secs(12),
                "{d:?}"
            );
        }
    }

    #[test]
    fn failed_replays_and_manual_attempts_go_back_on_the_schedule() {
        let policy = policy("0s,5s,5m");
        let cases = [
            // (rule, success, gone, expected)
            (Rule::OneMore, true, false, NextStep::Succeeded),
            (
                Rule::OneMore,
                false,
                false,
                NextStep::RetryIn(Duration::from_secs(9)),
            ),
            (Rule::OneMore, false, true, NextStep::Gone),
            (
                Rule::Manual {
                    pending_due_ms: Some(5),
                },
                true,
                false,
                NextStep::Succeeded,
            ),
            (
                Rule::Manual {
                    pending_due_ms: Some(5),
                },
                false,
                false,
                NextStep::KeepSchedule,
            ),
            (
                Rule::Manual {
                    pending_due_ms: Some(5),
                },
                false,
                true,
                NextStep::Gone,
            ),
            (
                Rule::Manual {
                    pending_due_ms: None,
                },
                false,
                false,
                NextStep::RetryIn(Duration::from_secs(9)),
            ),
        ];
        for (rule, success, gone, want) in cases {
            assert_eq!(
                next_step(
                    &policy,
                    &plan(&policy),
                    Duration::ZERO,
                    rule,
                    1,
                    success,
                    gone,
                    Some(Duration::from_secs(9))
                ),
                want,
                "{rule:?} success {success} gone {gone}"
            );
        }
    }
}
