//! The per-endpoint circuit breaker: after N consecutive failed attempts it stops sending to
//! the endpoint for a cooldown, then lets one probe through; the probe's outcome closes it
//! again or starts another cooldown. This is pure state; the dispatcher's lanes drive it.

use std::time::Duration;

use tokio::time::Instant;

/// What a lane may do next, according to its breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Send as usual.
    Pass,
    /// Send exactly one attempt as the probe, then wait for its outcome.
    Probe,
    /// The endpoint is considered down until then.
    WaitUntil(Instant),
    /// A probe is in flight; wait for its outcome.
    WaitForProbe,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Closed { consecutive_failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// A circuit breaker. A threshold of zero turns it off.
#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: State,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            threshold,
            cooldown,
            state: State::Closed {
                consecutive_failures: 0,
            },
        }
    }

    /// Whether an attempt may start now. Moves an expired open breaker to half-open.
    pub(crate) fn gate(&mut self, now: Instant) -> Gate {
        match self.state {
            State::Closed { .. } => Gate::Pass,
            State::Open { until } if until > now => Gate::WaitUntil(until),
            State::Open { .. } | State::HalfOpen { probing: false } => {
                self.state = State::HalfOpen { probing: false };
                Gate::Probe
            }
            State::HalfOpen { probing: true } => Gate::WaitForProbe,
        }
    }

    /// The lane started the probe that [`Breaker::gate`] allowed.
    pub(crate) fn start_probe(&mut self) {
        if let State::HalfOpen { .. } = self.state {
            self.state = State::HalfOpen { probing: true };
        }
    }

    /// The probe ended without reaching the endpoint (its delivery was dropped), so the next
    /// delivery may probe instead.
    pub(crate) fn cancel_probe(&mut self) {
        if let State::HalfOpen { probing: true } = self.state {
            self.state = State::HalfOpen { probing: false };
        }
    }

    /// Records an attempt's outcome. Attempts that were in flight when the breaker opened
    /// still count: a late success closes it, since the endpoint evidently answers.
    /// The state's name, for metrics and logs: `closed`, `open` or `half_open`.
    pub(crate) fn state_name(&self) -> &'static str {
        match self.state {
            State::Closed { .. } => "closed",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half_open",
        }
    }

    pub(crate) fn record(&mut self, success: bool, now: Instant) {
        if success {
            self.state = State::Closed {
                consecutive_failures: 0,
            };
            return;
        }
        if self.threshold == 0 {
            return;
        }
        self.state = match self.state {
            State::Closed {
                consecutive_failures,
            } => {
                let failures = consecutive_failures.saturating_add(1);
                if failures >= self.threshold {
                    State::Open {
                        until: now + self.cooldown,
                    }
                } else {
                    State::Closed {
                        consecutive_failures: failures,
                    }
                }
            }
            State::HalfOpen { .. } => State::Open {
                until: now + self.cooldown,
            },
            // Already open: a straggler's failure does not extend the cooldown.
            open @ State::Open { .. } => open,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOLDOWN: Duration = Duration::from_secs(30);

    #[test]
    fn opens_after_threshold_and_probes_after_cooldown() {
        let t0 = Instant::now();
        let mut breaker = Breaker::new(3, COOLDOWN);
        for _ in 0..2 {
            breaker.record(false, t0);
            assert_eq!(breaker.gate(t0), Gate::Pass);
        }
        breaker.record(false, t0);
        assert_eq!(breaker.gate(t0), Gate::WaitUntil(t0 + COOLDOWN));
        let later = t0 + COOLDOWN;
        assert_eq!(breaker.gate(later), Gate::Probe);
        breaker.start_probe();
        assert_eq!(breaker.gate(later), Gate::WaitForProbe);
        // The probe fails: another full cooldown.
        breaker.record(false, later);
        assert_eq!(breaker.gate(later), Gate::WaitUntil(later + COOLDOWN));
        let later = later + COOLDOWN;
        assert_eq!(breaker.gate(later), Gate::Probe);
        breaker.start_probe();
        breaker.record(true, later);
        assert_eq!(breaker.gate(later), Gate::Pass);
    }

    #[test]
    fn a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut breaker = Breaker::new(2, COOLDOWN);
        breaker.record(false, t0);
        breaker.record(true, t0);
        breaker.record(false, t0);
        assert_eq!(breaker.gate(t0), Gate::Pass);
        breaker.record(false, t0);
        assert!(matches!(breaker.gate(t0), Gate::WaitUntil(_)));
    }

    #[test]
    fn a_cancelled_probe_lets_the_next_delivery_probe() {
        let t0 = Instant::now();
        let mut breaker = Breaker::new(1, COOLDOWN);
        breaker.record(false, t0);
        let later = t0 + COOLDOWN;
        assert_eq!(breaker.gate(later), Gate::Probe);
        breaker.start_probe();
        breaker.cancel_probe();
        assert_eq!(breaker.gate(later), Gate::Probe);
    }

    #[test]
    fn threshold_zero_never_opens() {
        let t0 = Instant::now();
        let mut breaker = Breaker::new(0, COOLDOWN);
        for _ in 0..100 {
            breaker.record(false, t0);
        }
        assert_eq!(breaker.gate(t0), Gate::Pass);
    }
}
