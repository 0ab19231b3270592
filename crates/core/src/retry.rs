//! The retry schedule (how long to wait before each attempt), jitter, and `Retry-After`.
//!
//! The schedule is a list of delays, one per attempt: the first entry is the wait before the
//! first send (normally zero), so the list's length is the number of attempts. It is written
//! as `0s,5s,5m,30m,2h,5h,10h,10h` in config so tests can shrink it to milliseconds.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use thiserror::Error;

/// The most entries a schedule may have.
pub const MAX_SCHEDULE_ENTRIES: usize = 50;

/// The delays before each attempt. Always has 1 to [`MAX_SCHEDULE_ENTRIES`] entries, each a
/// whole number of milliseconds, so [`Display`](fmt::Display) gives back a parseable form.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RetrySchedule {
    delays: Vec<Duration>,
}

/// Why a retry schedule was refused.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum RetryScheduleError {
    #[error("retry schedule is empty; give comma-separated delays such as `0s,5s,5m,30m,2h`")]
    Empty,
    #[error(
        "retry schedule has {count} entries; the limit is {max}",
        max = MAX_SCHEDULE_ENTRIES
    )]
    TooManyEntries { count: usize },
    #[error("retry schedule entry {position} is empty; remove the extra comma")]
    EmptyEntry { position: usize },
    #[error(
        "retry schedule entry {position} (`{entry}`) is not a delay; write a whole number and a unit (ms, s, m, h or d), such as `30s`"
    )]
    InvalidEntry { position: usize, entry: String },
    #[error("retry schedule entry {position} (`{entry}`) is too large")]
    Overflow { position: usize, entry: String },
    #[error("retry delays must be whole milliseconds; entry {position} is not")]
    SubMillisecond { position: usize },
}

impl Default for RetrySchedule {
    /// Immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h: about a day and a half in all,
    /// as the leading webhook services do.
    fn default() -> Self {
        const MINUTE: u64 = 60;
        const HOUR: u64 = 60 * MINUTE;
        let seconds = [
            0,
            5,
            5 * MINUTE,
            30 * MINUTE,
            2 * HOUR,
            5 * HOUR,
            10 * HOUR,
            10 * HOUR,
        ];
        RetrySchedule {
            delays: seconds.into_iter().map(Duration::from_secs).collect(),
        }
    }
}

impl RetrySchedule {
    /// Parses a comma-separated list of delays such as `0s,5s,5m,30m,2h,5h,10h,10h`.
    ///
    /// Each delay is a whole number and a unit: `ms`, `s`, `m`, `h` or `d`. Spaces around the
    /// commas are allowed.
    pub fn parse(s: &str) -> Result<Self, RetryScheduleError> {
        if s.trim().is_empty() {
            return Err(RetryScheduleError::Empty);
        }
        let count = s.split(',').count();
        if count > MAX_SCHEDULE_ENTRIES {
            return Err(RetryScheduleError::TooManyEntries { count });
        }
        let delays = s
            .split(',')
            .enumerate()
            .map(|(index, entry)| parse_delay(index + 1, entry.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RetrySchedule { delays })
    }

    /// A schedule from explicit delays, each a whole number of milliseconds.
    pub fn from_delays(delays: Vec<Duration>) -> Result<Self, RetryScheduleError> {
        if delays.is_empty() {
            return Err(RetryScheduleError::Empty);
        }
        if delays.len() > MAX_SCHEDULE_ENTRIES {
            return Err(RetryScheduleError::TooManyEntries {
                count: delays.len(),
            });
        }
        if let Some(index) = delays
            .iter()
            .position(|d| d.subsec_nanos() % 1_000_000 != 0)
        {
            return Err(RetryScheduleError::SubMillisecond {
                position: index + 1,
            });
        }
        Ok(RetrySchedule { delays })
    }

    /// The delays, one per attempt.
    pub fn delays(&self) -> &[Duration] {
        &self.delays
    }

    /// How many attempts a delivery gets in all, the first send included.
    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.delays.len()).unwrap_or(u32::MAX)
    }

    /// The wait before attempt `attempt_number` (1-based: attempt 1 is the first send), or
    /// `None` when the schedule has no such attempt and the delivery has failed for good.
    pub fn delay_before_attempt(&self, attempt_number: u32) -> Option<Duration> {
        let index = usize::try_from(attempt_number.checked_sub(1)?).ok()?;
        self.delays.get(index).copied()
    }
}

impl fmt::Display for RetrySchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, delay) in self.delays.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write_delay(f, *delay)?;
        }
        Ok(())
    }
}

/// `d` moved uniformly at random within ±`fraction` of itself, so retries of many deliveries
/// that failed together do not all land at the same instant.
///
/// `fraction` is clamped to `0.0..=1.0` (NaN counts as zero), so the result is never negative;
/// zero stays zero.
pub fn with_jitter(d: Duration, fraction: f64) -> Duration {
    if d.is_zero() || fraction.is_nan() || fraction <= 0.0 {
        return d;
    }
    let fraction = fraction.min(1.0);
    jitter_by(d, rand::random_range(-fraction..=fraction))
}

/// `d` scaled by `1 + offset`; falls back to `d` itself if that is not representable.
fn jitter_by(d: Duration, offset: f64) -> Duration {
    Duration::try_from_secs_f64(d.as_secs_f64() * (1.0 + offset)).unwrap_or(d)
}

/// Reads a `Retry-After` value (RFC 9110, section 10.2.3): either a number of seconds or an
/// HTTP date. A date in the past means "now" (zero). Returns `None` for anything else.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        // A number too large for u64 is still a clear "much later"; let clamping cap it.
        return Some(Duration::from_secs(
            value.parse::<u64>().unwrap_or(u64::MAX),
        ));
    }
    let when = parse_http_date(value)?;
    Some((when - now).to_std().unwrap_or(Duration::ZERO))
}

/// Keeps a server-requested delay within policy: at least `min` (so a `Retry-After: 0`
/// cannot make us hammer an endpoint) and at most `max` (so a server cannot park a delivery
/// for a year). If `min` exceeds `max`, `max` wins.
pub fn clamp_retry_after(d: Duration, min: Duration, max: Duration) -> Duration {
    d.max(min).min(max)
}

/// The three HTTP-date forms that RFC 9110 says a recipient must accept.
fn parse_http_date(value: &str) -> Option<DateTime<Utc>> {
    // IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT`, is a form of RFC 2822 date.
    if let Ok(date) = DateTime::parse_from_rfc2822(value) {
        return Some(date.with_timezone(&Utc));
    }
    // Obsolete RFC 850 form, `Sunday, 06-Nov-94 08:49:37 GMT`, and asctime form,
    // `Sun Nov  6 08:49:37 1994`. Both are in UTC.
    ["%A, %d-%b-%y %H:%M:%S GMT", "%a %b %e %H:%M:%S %Y"]
        .into_iter()
        .find_map(|format| NaiveDateTime::parse_from_str(value, format).ok())
        .map(|naive| naive.and_utc())
}

const MILLIS_PER_UNIT: [(&str, u64); 5] = [
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

fn parse_delay(position: usize, entry: &str) -> Result<Duration, RetryScheduleError> {
    if entry.is_empty() {
        return Err(RetryScheduleError::EmptyEntry { position });
    }
    let invalid = || RetryScheduleError::InvalidEntry {
        position,
        entry: entry.chars().take(32).collect(),
    };
    let digits_end = entry
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (number, unit) = entry.split_at(digits_end);
    if number.is_empty() {
        return Err(invalid());
    }
    let unit_millis = MILLIS_PER_UNIT
        .iter()
        .find(|(name, _)| *name == unit)
        .map(|(_, millis)| *millis)
        .ok_or_else(invalid)?;
    let overflow = || RetryScheduleError::Overflow {
        position,
        entry: entry.to_owned(),
    };
    let number: u64 = number.parse().map_err(|_| overflow())?;
    let millis = number.checked_mul(unit_millis).ok_or_else(overflow)?;
    Ok(Duration::from_millis(millis))
}

/// Writes a delay in the largest unit that divides it exactly.
fn write_delay(f: &mut fmt::Formatter<'_>, delay: Duration) -> fmt::Result {
    let millis = delay.as_millis();
    if millis == 0 {
        return f.write_str("0s");
    }
    for (unit, unit_millis) in MILLIS_PER_UNIT.iter().rev() {
        let unit_millis = u128::from(*unit_millis);
        if millis.is_multiple_of(unit_millis) {
            return write!(f, "{}{unit}", millis / unit_millis);
        }
    }
    // Unreachable, since the unit of 1 ms divides everything.
    write!(f, "{millis}ms")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use chrono::TimeZone;

    const S: fn(u64) -> Duration = Duration::from_secs;
    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn default_schedule() {
        let schedule = RetrySchedule::default();
        assert_eq!(schedule.to_string(), "0s,5s,5m,30m,2h,5h,10h,10h");
        assert_eq!(schedule.max_attempts(), 8);
        assert_eq!(
            RetrySchedule::parse("0s,5s,5m,30m,2h,5h,10h,10h").unwrap(),
            schedule
        );
        let cases = [
            (0, None),
            (1, Some(S(0))),
            (2, Some(S(5))),
            (3, Some(S(300))),
            (4, Some(S(1800))),
            (5, Some(S(7200))),
            (6, Some(S(18_000))),
            (7, Some(S(36_000))),
            (8, Some(S(36_000))),
            (9, None),
            (u32::MAX, None),
        ];
        for (attempt, want) in cases {
            assert_eq!(
                schedule.delay_before_attempt(attempt),
                want,
                "attempt {attempt}"
            );
        }
    }

    #[test]
    fn parses_schedules() {
        let cases: &[(&str, &[Duration], &str)] = &[
            ("0s", &[S(0)], "0s"),
            (
                "0ms,100ms,250ms",
                &[MS(0), MS(100), MS(250)],
                "0s,100ms,250ms",
            ),
            (
                " 1s , 2m ,3h,4d ",
                &[S(1), S(120), S(10_800), S(345_600)],
                "1s,2m,3h,4d",
            ),
            (
                "1000ms,60s,60m,24h",
                &[S(1), S(60), S(3600), S(86_400)],
                "1s,1m,1h,1d",
            ),
            ("90s,1500ms", &[S(90), MS(1500)], "90s,1500ms"),
            ("007s", &[S(7)], "7s"),
        ];
        for (input, delays, display) in cases {
            let schedule = RetrySchedule::parse(input).unwrap();
            assert_eq!(schedule.delays(), *delays, "input {input:?}");
            assert_eq!(schedule.to_string(), *display, "input {input:?}");
            assert_eq!(RetrySchedule::parse(display).unwrap(), schedule);
        }
        let fifty = vec!["1s"; 50].join(",");
        assert_eq!(RetrySchedule::parse(&fifty).unwrap().max_attempts(), 50);
    }

    #[test]
    fn rejects_bad_schedules() {
        use RetryScheduleError as E;
        let invalid = |position: usize, entry: &str| E::InvalidEntry {
            position,
            entry: entry.to_owned(),
        };
        let fifty_one = vec!["1s"; 51].join(",");
        let cases = vec![
            ("", E::Empty),
            ("  ", E::Empty),
            (fifty_one.as_str(), E::TooManyEntries { count: 51 }),
            ("1s,,2s", E::EmptyEntry { position: 2 }),
            ("1s,", E::EmptyEntry { position: 2 }),
            (",1s", E::EmptyEntry { position: 1 }),
            ("5", invalid(1, "5")),
            ("s", invalid(1, "s")),
            ("1s,5x", invalid(2, "5x")),
            ("1S", invalid(1, "1S")),
            ("1 s", invalid(1, "1 s")),
            ("-1s", invalid(1, "-1s")),
            ("+1s", invalid(1, "+1s")),
            ("1.5s", invalid(1, "1.5s")),
            ("1sec", invalid(1, "1sec")),
            ("1h30m", invalid(1, "1h30m")),
            ("5s;10s", invalid(1, "5s;10s")),
            (
                "99999999999999999999s",
                E::Overflow {
                    position: 1,
                    entry: "99999999999999999999s".into(),
                },
            ),
            (
                "18446744073709551615d",
                E::Overflow {
                    position: 1,
                    entry: "18446744073709551615d".into(),
                },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(RetrySchedule::parse(input), Err(want), "input {input:?}");
        }
    }

    #[test]
    fn from_delays() {
        assert_eq!(
            RetrySchedule::from_delays(vec![MS(0), MS(10)])
                .unwrap()
                .to_string(),
            "0s,10ms"
        );
        assert_eq!(
            RetrySchedule::from_delays(vec![]),
            Err(RetryScheduleError::Empty)
        );
        assert_eq!(
            RetrySchedule::from_delays(vec![S(1); 51]),
            Err(RetryScheduleError::TooManyEntries { count: 51 })
        );
        assert_eq!(
            RetrySchedule::from_delays(vec![S(1), Duration::from_micros(1500)]),
            Err(RetryScheduleError::SubMillisecond { position: 2 })
        );
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            RetrySchedule::parse("1s,5x").unwrap_err().to_string(),
            "retry schedule entry 2 (`5x`) is not a delay; write a whole number and a unit (ms, s, m, h or d), such as `30s`"
        );
        assert_eq!(
            RetryScheduleError::TooManyEntries { count: 60 }.to_string(),
            "retry schedule has 60 entries; the limit is 50"
        );
    }

    #[test]
    fn jitter_stays_in_bounds() {
        let base = S(100);
        for fraction in [0.1_f64, 0.5, 1.0, 3.0] {
            let bound = fraction.min(1.0);
            for _ in 0..1_000 {
                let d = with_jitter(base, fraction);
                assert!(d >= base.mul_f64(1.0 - bound), "{d:?} for {fraction}");
                assert!(d <= base.mul_f64(1.0 + bound), "{d:?} for {fraction}");
            }
        }
        // Jitter actually varies.
        let samples: std::collections::HashSet<Duration> =
            (0..100).map(|_| with_jitter(base, 0.2)).collect();
        assert!(samples.len() > 10);
    }

    #[test]
    fn jitter_edge_cases() {
        let cases = [
            (S(0), 0.5, S(0)),
            (S(10), 0.0, S(10)),
            (S(10), -0.5, S(10)),
            (S(10), f64::NAN, S(10)),
            (Duration::MAX, 0.0, Duration::MAX),
        ];
        for (d, fraction, want) in cases {
            assert_eq!(with_jitter(d, fraction), want, "{d:?} {fraction}");
        }
        // Infinite fraction is clamped, and the maximum duration cannot overflow into a panic.
        assert!(with_jitter(S(10), f64::INFINITY) <= S(20));
        let _ = with_jitter(Duration::MAX, 1.0);

        let cases = [
            (S(10), -1.0, S(0)),
            (S(10), -0.5, S(5)),
            (S(10), 0.5, S(15)),
            (S(10), 1.0, S(20)),
            (Duration::MAX, 1.0, Duration::MAX),
        ];
        for (d, offset, want) in cases {
            assert_eq!(jitter_by(d, offset), want, "{d:?} {offset}");
        }
    }

    #[test]
    fn retry_after() {
        let now = Utc.with_ymd_and_hms(2015, 10, 21, 7, 28, 0).unwrap();
        let cases = [
            ("120", Some(S(120))),
            ("0", Some(S(0))),
            (" 30 ", Some(S(30))),
            ("99999999999999999999999", Some(S(u64::MAX))),
            ("Wed, 21 Oct 2015 07:28:00 GMT", Some(S(0))),
            ("Wed, 21 Oct 2015 07:30:30 GMT", Some(S(150))),
            ("Wed, 21 Oct 2015 08:28:00 GMT", Some(S(3600))),
            // In the past: retry now.
            ("Tue, 20 Oct 2015 07:28:00 GMT", Some(S(0))),
            // Obsolete forms a recipient must still accept.
            ("Wednesday, 21-Oct-15 07:29:00 GMT", Some(S(60))),
            ("Wed Oct 21 07:29:00 2015", Some(S(60))),
            ("Thu Oct  1 07:29:00 2015", Some(S(0))),
            // A weekday that contradicts the date is not a valid date.
            ("Wed Oct  1 07:29:00 2015", None),
            ("", None),
            ("soon", None),
            ("-5", None),
            ("1.5", None),
            ("12s", None),
            ("2015-10-21T07:30:00Z", None),
        ];
        for (value, want) in cases {
            assert_eq!(parse_retry_after(value, now), want, "value {value:?}");
        }
    }

    #[test]
    fn clamping() {
        let cases = [
            (S(0), S(1), S(60), S(1)),
            (S(30), S(1), S(60), S(30)),
            (S(3600), S(1), S(60), S(60)),
            (S(30), S(60), S(1), S(1)),
            (Duration::MAX, S(0), S(60), S(60)),
        ];
        for (d, min, max, want) in cases {
            assert_eq!(
                clamp_retry_after(d, min, max),
                want,
                "{d:?} {min:?} {max:?}"
            );
        }
    }
}
