//! The layered delivery policy: the server's defaults (flags), overridden by a workspace,
//! overridden by a subscription. Each value a level leaves unset is inherited from the level
//! above; [`resolve`] says what applies and where each value comes from.
//!
//! The retry delays here are the waits before each *retry* (attempt 2, 3, ...): the first
//! send always follows the server's schedule (its first entry, normally `0s`). The limit is
//! either a number of attempts in all or an age of the message; past the end of the delays
//! the last one repeats until the limit is reached. Without a limit, the delays' count is
//! the number of retries.
//!
//! Also here: the payload shapes a subscription may receive ([`PayloadShape`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::retry::RetrySchedule;

/// The most retry delays a policy may list.
pub const MAX_RETRY_DELAYS: usize = 50;
/// The shortest retry delay: a retry sooner than this would hammer the endpoint.
pub const MIN_RETRY_DELAY: Duration = Duration::from_millis(100);
/// The longest retry delay.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(7 * 24 * 3600);
/// The most attempts a policy may allow in all.
pub const MAX_ATTEMPTS: u32 = 100;
/// The shortest and longest `max_age`.
pub const MAX_AGE_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(30 * 24 * 3600));
/// The shortest and longest request timeout.
pub const REQUEST_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(120));
/// The shortest and longest `disable_after`.
pub const DISABLE_AFTER_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(90 * 24 * 3600));

/// When a delivery stops being retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// After this many attempts in all (the first send included).
    Attempts(u32),
    /// When the next retry would fall later than this after the message was accepted.
    AgeMs(u64),
}

/// What one level (a workspace or a subscription) sets; `None` inherits. Stored by the
/// control plane as JSON (milliseconds), so its serde form is part of the schema.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overrides {
    /// The waits before each retry, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_delays_ms: Option<Vec<u64>>,
    /// When to stop retrying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<Limit>,
    /// The total timeout of each attempt, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout_ms: Option<u64>,
    /// Disable the subscription when every attempt failed for this long, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_after_ms: Option<u64>,
}

impl Overrides {
    /// Whether this level sets nothing (inherits everything).
    pub fn is_empty(&self) -> bool {
        self == &Overrides::default()
    }

    /// `None` for a level that sets nothing, so the default path carries no policy at all.
    pub fn non_empty(self) -> Option<Overrides> {
        (!self.is_empty()).then_some(self)
    }

    /// The stored (JSON) form; `None` when empty.
    pub fn to_json(&self) -> Option<String> {
        if self.is_empty() {
            return None;
        }
        serde_json::to_string(self).ok()
    }

    /// Reads the stored form; anything unreadable counts as no overrides.
    pub fn from_json(json: Option<&str>) -> Option<Overrides> {
        json.and_then(|j| serde_json::from_str::<Overrides>(j).ok())
            .and_then(Overrides::non_empty)
    }
}

/// The server's defaults, from its flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Defaults {
    /// The waits before each retry: the `--retry-schedule` without its first entry.
    pub retry_delays_ms: Vec<u64>,
    /// `--request-timeout-ms`.
    pub request_timeout_ms: u64,
    /// `--disable-after-hours`, in milliseconds.
    pub disable_after_ms: u64,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults::new(
            &RetrySchedule::default(),
            Duration::from_secs(15),
            Duration::from_secs(5 * 24 * 3600),
        )
    }
}

impl Defaults {
    /// The defaults of a server with this schedule, request timeout and disable period.
    pub fn new(
        schedule: &RetrySchedule,
        request_timeout: Duration,
        disable_after: Duration,
    ) -> Self {
        Defaults {
            retry_delays_ms: schedule.delays().iter().skip(1).map(|d| ms(*d)).collect(),
            request_timeout_ms: ms(request_timeout),
            disable_after_ms: ms(disable_after),
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Where an effective value comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The server's flags.
    ServerDefault,
    /// The subscription's workspace.
    Workspace,
    /// The subscription itself.
    Subscription,
}

/// The policy that applies to one subscription, borrowed from its levels: free to build.
#[derive(Clone, Copy, Debug)]
pub struct Effective<'a> {
    pub retry_delays_ms: (&'a [u64], Source),
    /// `None`: the delays' count bounds the retries.
    pub limit: (Option<Limit>, Source),
    pub request_timeout_ms: (u64, Source),
    pub disable_after_ms: (u64, Source),
}

/// The policy of a subscription with overrides `subscription` in a workspace with overrides
/// `workspace`, on a server with `defaults`: the most specific level that sets a value wins.
/// The limit (attempts or age) is one value: a subscription's `max_age` replaces a
/// workspace's `max_attempts`.
pub fn resolve<'a>(
    defaults: &'a Defaults,
    workspace: Option<&'a Overrides>,
    subscription: Option<&'a Overrides>,
) -> Effective<'a> {
    fn pick<'a, T>(
        default: T,
        workspace: Option<&'a Overrides>,
        subscription: Option<&'a Overrides>,
        get: impl Fn(&'a Overrides) -> Option<T>,
    ) -> (T, Source) {
        if let Some(v) = subscription.and_then(&get) {
            return (v, Source::Subscription);
        }
        if let Some(v) = workspace.and_then(&get) {
            return (v, Source::Workspace);
        }
        (default, Source::ServerDefault)
    }
    Effective {
        retry_delays_ms: pick(
            &defaults.retry_delays_ms[..],
            workspace,
            subscription,
            |o| o.retry_delays_ms.as_deref(),
        ),
        limit: pick(None, workspace, subscription, |o| o.limit.map(Some)),
        request_timeout_ms: pick(defaults.request_timeout_ms, workspace, subscription, |o| {
            o.request_timeout_ms
        }),
        disable_after_ms: pick(defaults.disable_after_ms, workspace, subscription, |o| {
            o.disable_after_ms
        }),
    }
}

impl Effective<'_> {
    /// The wait before the next attempt after `attempts_made` attempts of the current run
    /// (at least 1), for a message `age` old at the time of the failure; `None` when the
    /// delivery has failed for good.
    pub fn next_delay(&self, attempts_made: u32, age: Duration) -> Option<Duration> {
        let delays = self.retry_delays_ms.0;
        let index = usize::try_from(attempts_made.checked_sub(1)?).ok()?;
        let delay_ms = match self.limit.0 {
            None => *delays.get(index)?,
            Some(Limit::Attempts(max)) => {
                if attempts_made >= max {
                    return None;
                }
                *delays.get(index).or(delays.last())?
            }
            Some(Limit::AgeMs(max)) => {
                let delay = *delays.get(index).or(delays.last())?;
                if ms(age).saturating_add(delay) > max {
                    return None;
                }
                delay
            }
        };
        Some(Duration::from_millis(delay_ms))
    }

    /// The attempts a delivery gets in all when the limit is a count (or none): the
    /// first send and the retries. `None` when the limit is an age.
    pub fn max_attempts(&self) -> Option<u32> {
        match self.limit.0 {
            Some(Limit::Attempts(max)) => Some(max),
            Some(Limit::AgeMs(_)) => None,
            None => Some(
                u32::try_from(self.retry_delays_ms.0.len())
                    .unwrap_or(u32::MAX)
                    .saturating_add(1),
            ),
        }
    }

    /// The request timeout when it differs from the server's (`None` leaves the sender's).
    pub fn request_timeout_override(&self) -> Option<Duration> {
        (self.request_timeout_ms.1 != Source::ServerDefault)
            .then(|| Duration::from_millis(self.request_timeout_ms.0))
    }

    /// How long every attempt must have failed before the subscription is disabled.
    pub fn disable_after(&self) -> Duration {
        Duration::from_millis(self.disable_after_ms.0)
    }
}

/// Why a policy value is refused: the field below `retry_policy` and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyViolation {
    /// `schedule[3]`, `max_attempts`, ...
    pub field: String,
    pub message: String,
}

fn violation(field: impl Into<String>, message: impl Into<String>) -> PolicyViolation {
    PolicyViolation {
        field: field.into(),
        message: message.into(),
    }
}

fn check_range(
    field: &str,
    value: Duration,
    (min, max): (Duration, Duration),
    out: &mut Vec<PolicyViolation>,
) -> Option<u64> {
    if value < min || value > max {
        out.push(violation(
            field,
            format!("must be from {} to {}", human(min), human(max)),
        ));
        return None;
    }
    if !value.subsec_nanos().is_multiple_of(1_000_000) {
        out.push(violation(field, "must be whole milliseconds"));
        return None;
    }
    Some(ms(value))
}

/// A duration for messages: `100ms`, `7d`, as the schedule flag writes them.
pub fn human(d: Duration) -> String {
    RetrySchedule::from_delays(vec![d])
        .map(|s| s.to_string())
        .unwrap_or_else(|_| format!("{d:?}"))
}

/// The checked form of one level's policy as given (each duration `None` when unset, each
/// negative duration as `Err(())`), with every violation named by its field.
pub struct Given {
    pub schedule: Vec<Result<Duration, ()>>,
    pub max_attempts: u32,
    pub max_age: Option<Result<Duration, ()>>,
    pub request_timeout: Option<Result<Duration, ()>>,
    pub disable_after: Option<Result<Duration, ()>>,
}

/// Checks one level's policy; the overrides, or every violation found.
pub fn check(given: &Given) -> Result<Overrides, Vec<PolicyViolation>> {
    let mut out = Vec::new();
    let mut o = Overrides::default();
    if given.schedule.len() > MAX_RETRY_DELAYS {
        out.push(violation(
            "schedule",
            format!(
                "at most {MAX_RETRY_DELAYS} retry delays; got {}",
                given.schedule.len()
            ),
        ));
    } else if !given.schedule.is_empty() {
        let mut delays = Vec::with_capacity(given.schedule.len());
        for (i, entry) in given.schedule.iter().enumerate() {
            let field = format!("schedule[{i}]");
            match entry {
                Err(()) => out.push(violation(field, "must not be negative")),
                Ok(d) => {
                    if let Some(ms) =
                        check_range(&field, *d, (MIN_RETRY_DELAY, MAX_RETRY_DELAY), &mut out)
                    {
                        delays.push(ms);
                    }
                }
            }
        }
        o.retry_delays_ms = Some(delays);
    }
    if given.max_attempts > MAX_ATTEMPTS {
        out.push(violation(
            "max_attempts",
            format!(
                "must be from 1 to {MAX_ATTEMPTS} (0 inherits); got {}",
                given.max_attempts
            ),
        ));
    } else if given.max_attempts > 0 {
        o.limit = Some(Limit::Attempts(given.max_attempts));
    }
    let mut duration = |field: &str, value: &Option<Result<Duration, ()>>, range| match value {
        None => None,
        Some(Err(())) => {
            out.push(violation(field, "must not be negative"));
            None
        }
        Some(Ok(d)) => check_range(field, *d, range, &mut out),
    };
    let max_age = duration("max_age", &given.max_age, MAX_AGE_RANGE);
    o.request_timeout_ms = duration(
        "request_timeout",
        &given.request_timeout,
        REQUEST_TIMEOUT_RANGE,
    );
    o.disable_after_ms = duration("disable_after", &given.disable_after, DISABLE_AFTER_RANGE);
    if let Some(age) = max_age {
        if given.max_attempts > 0 {
            out.push(violation(
                "max_age",
                "set either max_attempts or max_age, not both",
            ));
        } else {
            o.limit = Some(Limit::AgeMs(age));
        }
    }
    if out.is_empty() { Ok(o) } else { Err(out) }
}

/// The body a subscription's deliveries carry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PayloadShape {
    /// The JSON envelope built at ingest (id, event, version, timestamp, workspace, payload).
    #[default]
    Envelope,
    /// The publisher's payload alone, byte for byte; the event type in [`EVENT_TYPE_HEADER`].
    Raw,
    /// The envelope without its payload, for receivers that fetch the data themselves.
    Thin,
}

/// The header that names the event type of a `RAW` or `THIN` delivery.
pub const EVENT_TYPE_HEADER: &str = "webhook-event-type";

impl PayloadShape {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            PayloadShape::Envelope => "envelope",
            PayloadShape::Raw => "raw",
            PayloadShape::Thin => "thin",
        }
    }

    /// From the stored name; anything else is the envelope.
    pub fn from_name(name: &str) -> PayloadShape {
        match name {
            "raw" => PayloadShape::Raw,
            "thin" => PayloadShape::Thin,
            _ => PayloadShape::Envelope,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn defaults() -> Defaults {
        Defaults::new(
            &RetrySchedule::parse("0s,1s,2s").unwrap(),
            Duration::from_secs(15),
            Duration::from_secs(3600),
        )
    }

    #[test]
    fn the_most_specific_level_wins_value_by_value() {
        let defaults = defaults();
        let workspace = Overrides {
            retry_delays_ms: Some(vec![500]),
            request_timeout_ms: Some(2_000),
            ..Default::default()
        };
        let subscription = Overrides {
            retry_delays_ms: Some(vec![200, 400]),
            limit: Some(Limit::Attempts(5)),
            ..Default::default()
        };
        let e = resolve(&defaults, None, None);
        assert_eq!(
            e.retry_delays_ms,
            (&[1_000, 2_000][..], Source::ServerDefault)
        );
        assert_eq!(e.max_attempts(), Some(3));
        assert_eq!(e.request_timeout_override(), None);
        let e = resolve(&defaults, Some(&workspace), None);
        assert_eq!(e.retry_delays_ms, (&[500][..], Source::Workspace));
        assert_eq!(e.request_timeout_override(), Some(MS(2_000)));
        assert_eq!(e.disable_after_ms, (3_600_000, Source::ServerDefault));
        let e = resolve(&defaults, Some(&workspace), Some(&subscription));
        assert_eq!(e.retry_delays_ms, (&[200, 400][..], Source::Subscription));
        assert_eq!(e.limit, (Some(Limit::Attempts(5)), Source::Subscription));
        assert_eq!(e.request_timeout_ms, (2_000, Source::Workspace));
    }

    #[test]
    fn limits_cut_or_extend_the_delays() {
        let defaults = defaults();
        let age = Duration::ZERO;
        let cases: &[(Option<Limit>, &[Option<u64>])] = &[
            (None, &[Some(200), Some(400), None]),
            (
                Some(Limit::Attempts(5)),
                &[Some(200), Some(400), Some(400), Some(400), None],
            ),
            (Some(Limit::Attempts(2)), &[Some(200), None]),
        ];
        for (limit, want) in cases {
            let o = Overrides {
                retry_delays_ms: Some(vec![200, 400]),
                limit: *limit,
                ..Default::default()
            };
            let e = resolve(&defaults, None, Some(&o));
            let got: Vec<Option<u64>> = (1..=want.len() as u32)
                .map(|n| e.next_delay(n, age).map(|d| d.as_millis() as u64))
                .collect();
            assert_eq!(&got, want, "{limit:?}");
        }
        let o = Overrides {
            retry_delays_ms: Some(vec![200, 400]),
            limit: Some(Limit::AgeMs(1_000)),
            ..Default::default()
        };
        let e = resolve(&defaults, None, Some(&o));
        assert_eq!(e.next_delay(7, MS(600)), Some(MS(400)));
        assert_eq!(e.next_delay(7, MS(601)), None);
        assert_eq!(e.max_attempts(), None);
        assert_eq!(e.next_delay(0, age), None);
    }

    fn given() -> Given {
        Given {
            schedule: vec![],
            max_attempts: 0,
            max_age: None,
            request_timeout: None,
            disable_after: None,
        }
    }

    #[test]
    fn bad_values_are_named() {
        let fields = |g: Given| -> Vec<String> {
            check(&g)
                .unwrap_err()
                .into_iter()
                .map(|v| v.field)
                .collect()
        };
        let mut g = given();
        g.schedule = vec![Ok(MS(200)), Err(()), Ok(MS(0)), Ok(MAX_RETRY_DELAY + MS(1))];
        assert_eq!(fields(g), ["schedule[1]", "schedule[2]", "schedule[3]"]);
        let mut g = given();
        g.schedule = vec![Ok(MS(200)); 51];
        assert_eq!(fields(g), ["schedule"]);
        let mut g = given();
        g.max_attempts = 3;
        g.max_age = Some(Ok(Duration::from_secs(60)));
        g.request_timeout = Some(Ok(MS(500)));
        g.disable_after = Some(Err(()));
        assert_eq!(fields(g), ["request_timeout", "disable_after", "max_age"]);
        let mut g = given();
        g.max_attempts = 101;
        g.schedule = vec![Ok(Duration::from_micros(200_500))];
        assert_eq!(fields(g), ["schedule[0]", "max_attempts"]);

        let mut g = given();
        g.schedule = vec![Ok(MS(200)), Ok(MS(400))];
        g.max_age = Some(Ok(Duration::from_secs(60)));
        let o = check(&g).unwrap();
        assert_eq!(o.retry_delays_ms, Some(vec![200, 400]));
        assert_eq!(o.limit, Some(Limit::AgeMs(60_000)));
        assert!(check(&given()).unwrap().is_empty());
    }

    #[test]
    fn stored_form_round_trips() {
        let o = Overrides {
            retry_delays_ms: Some(vec![200]),
            limit: Some(Limit::Attempts(4)),
            request_timeout_ms: None,
            disable_after_ms: Some(60_000),
        };
        let json = o.to_json().unwrap();
        assert_eq!(Overrides::from_json(Some(&json)), Some(o));
        assert_eq!(Overrides::default().to_json(), None);
        assert_eq!(Overrides::from_json(Some("nonsense")), None);
        assert_eq!(Overrides::from_json(Some("{}")), None);
    }
}
