//! How long Sluice keeps what it stored: the retention windows (the delivery log, payloads
//! and `config_changes`; idempotency keys on a window of their own), their defaults, the
//! bounds a workspace's own window must keep, and the text form of a window in flags
//! (`30s`, `15m`, `24h`, `30d`).

use std::time::Duration;

/// The default window of the delivery log and the payloads: 30 days.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// The default window of idempotency keys: 24 hours.
pub const DEFAULT_IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// The shortest window a workspace may set: one second (tests shrink windows to seconds).
pub const MIN_WINDOW: Duration = Duration::from_secs(1);
/// The longest window a workspace may set: ten years.
pub const MAX_WINDOW: Duration = Duration::from_secs(3650 * 24 * 3600);

/// A plane's retention defaults, for workspaces that set no window of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionDefaults {
    /// Messages, payloads, deliveries, attempts, and `config_changes`.
    pub retention: Duration,
    /// Idempotency keys.
    pub idempotency: Duration,
    /// How often the purge runs.
    pub every: Duration,
}

impl Default for RetentionDefaults {
    fn default() -> Self {
        RetentionDefaults {
            retention: DEFAULT_RETENTION,
            idempotency: DEFAULT_IDEMPOTENCY_RETENTION,
            every: Duration::from_secs(60),
        }
    }
}

/// The windows in effect for one workspace: its own where it set one, else the defaults.
/// Idempotency keys never outlive the message that carries them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Windows {
    pub retention: Duration,
    pub idempotency: Duration,
}

impl RetentionDefaults {
    /// The windows of a workspace that set `retention` and `idempotency` (or not).
    pub fn windows(&self, retention: Option<Duration>, idempotency: Option<Duration>) -> Windows {
        let retention = retention.unwrap_or(self.retention);
        Windows {
            retention,
            idempotency: idempotency.unwrap_or(self.idempotency).min(retention),
        }
    }
}

/// The oldest time still kept under `window` at `now_ms` (unix milliseconds): what was
/// created before it is purged.
pub fn cutoff_ms(now_ms: i64, window: Duration) -> i64 {
    now_ms.saturating_sub(i64::try_from(window.as_millis()).unwrap_or(i64::MAX))
}

/// Checks a workspace's window: whole seconds from [`MIN_WINDOW`] to [`MAX_WINDOW`].
pub fn check_window(window: Duration) -> Result<(), String> {
    if window.subsec_nanos() != 0 {
        return Err("must be a whole number of seconds".to_owned());
    }
    if window < MIN_WINDOW {
        return Err(format!("must be at least {}", format_window(MIN_WINDOW)));
    }
    if window > MAX_WINDOW {
        return Err(format!("must be at most {}", format_window(MAX_WINDOW)));
    }
    Ok(())
}

/// Parses a window as flags write it: a whole number and a unit, `s`, `m`, `h` or `d`
/// (`30s`, `15m`, `24h`, `30d`), within [`MIN_WINDOW`] and [`MAX_WINDOW`].
pub fn parse_window(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit; write it like 30s, 15m, 24h or 30d"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a whole number, like 30d"))?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    let window = Duration::from_secs(number.saturating_mul(unit_secs));
    check_window(window).map_err(|why| format!("{text:?} {why}"))?;
    Ok(window)
}

/// A window as [`parse_window`] reads it, in its largest whole unit.
pub fn format_window(window: Duration) -> String {
    let secs = window.as_secs();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs >= size && secs.is_multiple_of(size) {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_from_flags() {
        let secs = Duration::from_secs;
        let cases: &[(&str, Result<Duration, &str>)] = &[
            ("30s", Ok(secs(30))),
            ("15m", Ok(secs(900))),
            ("24h", Ok(secs(86_400))),
            ("30d", Ok(secs(30 * 86_400))),
            (" 2s ", Ok(secs(2))),
            ("0s", Err("at least 1s")),
            ("3651d", Err("at most 3650d")),
            ("30", Err("no unit")),
            ("d", Err("whole number")),
            ("30w", Err("unit must be")),
            ("-5s", Err("whole number")),
            ("", Err("no unit")),
        ];
        for (text, want) in cases {
            match (parse_window(text), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, *want, "{text}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{text}: {got}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
        for window in [secs(1), secs(90), secs(3600), secs(86_400 * 30)] {
            assert_eq!(parse_window(&format_window(window)), Ok(window));
        }
    }

    #[test]
    fn a_workspace_window_overrides_the_default_and_keys_never_outlive_messages() {
        let defaults = RetentionDefaults::default();
        let secs = Duration::from_secs;
        assert_eq!(
            defaults.windows(None, None),
            Windows {
                retention: DEFAULT_RETENTION,
                idempotency: DEFAULT_IDEMPOTENCY_RETENTION
            }
        );
        assert_eq!(
            defaults.windows(Some(secs(3600)), None),
            Windows {
                retention: secs(3600),
                idempotency: secs(3600)
            }
        );
        assert_eq!(defaults.windows(None, Some(secs(60))).idempotency, secs(60));
        assert_eq!(cutoff_ms(10_000, secs(3)), 7_000);
        assert!(check_window(Duration::from_millis(1500)).is_err());
    }
}
