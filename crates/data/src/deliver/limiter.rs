//! Adaptive concurrency of one endpoint: an AIMD limiter (additive increase, multiplicative
//! decrease, as TCP's congestion control) of the attempts a lane keeps in flight, between 1
//! and the configured maximum (`--endpoint-concurrency`). See `docs/concurrency.md`.
//!
//! - It starts at 1 and, in slow start, grows by one per fast answer (doubling each round
//!   trip) until the first sign of overload; then by one per round trip (`1 / limit` per
//!   answer). It grows only while the lane uses at least half of it, so an idle endpoint's
//!   limit shows what was tried, not the maximum.
//! - Overload shrinks it to `DECREASE` of itself: a timeout, a 429 or 503 answer, or an
//!   answer much slower than the endpoint's baseline (`latency > SLOWER_THAN × baseline +
//!   LATENCY_SLACK`). One decrease per "window": answers to attempts sent before the last
//!   decrease do not shrink it again, so 16 timeouts of one burst count once.
//! - The baseline is the fastest recent answer: it falls at once to a faster one and
//!   creeps up slowly (`BASELINE_RISE` of the gap per answer), so an endpoint that is
//!   slower for good is learnt again within a few hundred answers. An answer judged slow
//!   moves it only when it was alone in flight (its slowness is then the endpoint's, not
//!   the load's): otherwise the slow answers of an overloaded endpoint lifted the baseline
//!   until the limit settled well above the knee (the adaptive-concurrency test ended in
//!   that state about one run in three). An endpoint slower for good is now learnt again
//!   once the limit is down to 1.
//!
//! Pure state and arithmetic, no clock and no I/O: the lane calls it under the lock it takes
//! for its breaker anyway, once per attempt. Hand-written (about sixty lines) rather than a
//! crate: the crates that exist (`congestion-limiter`, tower's fixed `ConcurrencyLimit`)
//! either own the permits with their own async semaphore and lock, or are not adaptive.

use std::time::Duration;

/// The share of the limit kept on overload.
const DECREASE: f64 = 0.8;
/// An answer this many times slower than the baseline (plus the slack) is overload.
const SLOWER_THAN: f64 = 2.0;
/// Latency below this above the baseline is never overload: jitter of a fast endpoint (or of
/// a busy machine) is not a reason to slow down.
const LATENCY_SLACK: Duration = Duration::from_millis(10);
/// How much of the gap to a slower answer the baseline rises per answer.
const BASELINE_RISE: f64 = 1.0 / 128.0;

/// What one attempt tells the limiter.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sample {
    /// From sending to the end of the answer.
    pub(crate) latency: Duration,
    /// A timeout, 429 or 503.
    pub(crate) overloaded: bool,
    /// Whether an answer came (a connection refused says nothing about load).
    pub(crate) answered: bool,
    /// Attempts in flight when it ended, itself included.
    pub(crate) in_flight: usize,
    /// The limiter's window when the attempt was sent ([`Aimd::window`]).
    pub(crate) window: u64,
}

/// The AIMD state of one endpoint.
#[derive(Debug)]
pub(crate) struct Aimd {
    max: f64,
    limit: f64,
    slow_start: bool,
    /// Seconds; 0 until the first answer.
    baseline: f64,
    /// Bumped at each decrease.
    window: u64,
}

impl Aimd {
    pub(crate) fn new(max: usize) -> Aimd {
        Aimd {
            max: max.max(1) as f64,
            limit: 1.0,
            slow_start: true,
            baseline: 0.0,
            window: 0,
        }
    }

    /// The attempts allowed in flight now.
    pub(crate) fn limit(&self) -> usize {
        // In 1..=max by construction; the cast truncates.
        self.limit as usize
    }

    /// The current window, to hand back in the [`Sample`] of an attempt sent now.
    pub(crate) fn window(&self) -> u64 {
        self.window
    }

    /// Counts one attempt's answer; returns the new limit.
    pub(crate) fn record(&mut self, sample: Sample) -> usize {
        let seconds = sample.latency.as_secs_f64();
        let slow = sample.answered
            && self.baseline > 0.0
            && seconds > self.baseline * SLOWER_THAN + LATENCY_SLACK.as_secs_f64();
        // An answer judged slow raises the baseline only when it was alone in flight: with
        // others beside it, its slowness may be ours, and letting it raise the baseline
        // would let the limit settle above the endpoint's knee under steady overload.
        if sample.answered && !sample.overloaded && (!slow || sample.in_flight <= 1) {
            if self.baseline == 0.0 || seconds < self.baseline {
                self.baseline = seconds;
            } else {
                self.baseline += (seconds - self.baseline) * BASELINE_RISE;
            }
        }
        if sample.overloaded || slow {
            // Once per window: the answers of attempts sent before the last decrease are
            // the same congestion.
            if sample.window == self.window {
                self.limit = (self.limit * DECREASE).max(1.0);
                self.slow_start = false;
                self.window = self.window.wrapping_add(1);
            }
        } else if sample.answered && (sample.in_flight as f64) * 2.0 >= self.limit {
            let step = if self.slow_start {
                1.0
            } else {
                1.0 / self.limit
            };
            self.limit = (self.limit + step).min(self.max);
        }
        self.limit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ms: u64, in_flight: usize, window: u64) -> Sample {
        Sample {
            latency: Duration::from_millis(ms),
            overloaded: false,
            answered: true,
            in_flight,
            window,
        }
    }

    #[test]
    fn grows_to_the_maximum_while_answers_stay_fast() {
        let mut aimd = Aimd::new(16);
        assert_eq!(aimd.limit(), 1);
        for _ in 0..100 {
            let in_flight = aimd.limit();
            aimd.record(sample(2, in_flight, aimd.window()));
        }
        assert_eq!(aimd.limit(), 16);
    }

    #[test]
    fn does_not_grow_while_unused() {
        let mut aimd = Aimd::new(16);
        for _ in 0..10 {
            aimd.record(sample(2, 1, 0));
        }
        // It grows while one in flight uses half of it: up to 3, no further.
        assert_eq!(aimd.limit(), 3);
    }

    #[test]
    fn overload_shrinks_once_per_window_and_never_below_one() {
        let mut aimd = Aimd::new(16);
        for _ in 0..100 {
            let in_flight = aimd.limit();
            aimd.record(sample(2, in_flight, aimd.window()));
        }
        let window = aimd.window();
        let overloaded = Sample {
            overloaded: true,
            ..sample(2, 16, window)
        };
        // Sixteen timeouts of attempts sent in one window: one decrease.
        for _ in 0..16 {
            aimd.record(overloaded);
        }
        assert_eq!(aimd.limit(), 12);
        for _ in 0..100 {
            let w = aimd.window();
            aimd.record(Sample {
                window: w,
                ..overloaded
            });
        }
        assert_eq!(aimd.limit(), 1);
    }

    #[test]
    fn much_slower_answers_shrink_it_and_jitter_does_not() {
        let mut aimd = Aimd::new(16);
        for _ in 0..100 {
            let in_flight = aimd.limit();
            aimd.record(sample(1, in_flight, aimd.window()));
        }
        // 1 ms baseline: 8 ms is within the slack.
        aimd.record(sample(8, 16, aimd.window()));
        assert_eq!(aimd.limit(), 16);
        aimd.record(sample(50, 16, aimd.window()));
        assert_eq!(aimd.limit(), 12);
    }

    #[test]
    fn an_endpoint_slower_for_good_is_learnt_again() {
        let mut aimd = Aimd::new(16);
        for _ in 0..100 {
            let in_flight = aimd.limit();
            aimd.record(sample(10, in_flight, aimd.window()));
        }
        assert_eq!(aimd.limit(), 16);
        // From now on 100 ms whatever the load: down to 1, then back up once the baseline
        // has risen there.
        let mut lowest = 16;
        for _ in 0..1_000 {
            let in_flight = aimd.limit();
            lowest = lowest.min(aimd.record(sample(100, in_flight, aimd.window())));
        }
        assert_eq!(lowest, 1);
        assert_eq!(aimd.limit(), 16);
    }

    #[test]
    fn settles_where_an_endpoint_slows_down() {
        // An endpoint that answers in 20 ms up to 4 at a time and 100 ms more per request
        // beyond: the limit oscillates around 4.
        let mut aimd = Aimd::new(16);
        let mut seen = Vec::new();
        for _ in 0..2_000 {
            let in_flight = aimd.limit();
            let ms = 20 + 100 * (in_flight.saturating_sub(4) as u64);
            aimd.record(sample(ms, in_flight, aimd.window()));
            seen.push(aimd.limit());
        }
        let settled = &seen[500..];
        assert!(settled.iter().all(|l| (3..=6).contains(l)), "{settled:?}");
    }
}
