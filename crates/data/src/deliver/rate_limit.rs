//! A per-endpoint rate limit (GCRA, the "virtual scheduling" form of a token bucket): at
//! most `rate` attempts a second on average, with a burst of up to one second's worth.
//! Pure state; each dispatcher lane owns one and asks it before every attempt.

use std::time::Duration;

use tokio::time::Instant;

/// The limiter's memory: when the next attempt would be due if attempts were evenly spaced.
#[derive(Debug, Default)]
pub(crate) struct RateLimiter {
    /// GCRA's "theoretical arrival time"; `None` until the first attempt.
    theoretical_arrival: Option<Instant>,
}

impl RateLimiter {
    /// `None` when an attempt may start now (and counts it), otherwise when to ask again.
    /// A rate of zero means no limit.
    pub(crate) fn acquire(&mut self, rate_per_second: u32, now: Instant) -> Option<Instant> {
        if rate_per_second == 0 {
            self.theoretical_arrival = None;
            return None;
        }
        let interval = Duration::from_secs(1) / rate_per_second;
        // A full second of burst, so a limit of 10/s lets 10 go at once after a quiet spell.
        let burst = Duration::from_secs(1).saturating_sub(interval);
        let tat = self.theoretical_arrival.map_or(now, |tat| tat.max(now));
        let allowed_from = tat.checked_sub(burst).unwrap_or(now);
        if allowed_from > now {
            return Some(allowed_from);
        }
        self.theoretical_arrival = Some(tat + interval);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_means_unlimited() {
        let now = Instant::now();
        let mut limiter = RateLimiter::default();
        for _ in 0..10_000 {
            assert_eq!(limiter.acquire(0, now), None);
        }
    }

    #[test]
    fn allows_a_burst_of_one_second_then_spaces_attempts() {
        let now = Instant::now();
        let mut limiter = RateLimiter::default();
        for i in 0..5 {
            assert_eq!(limiter.acquire(5, now), None, "attempt {i}");
        }
        let wait = limiter.acquire(5, now).map(|t| t - now);
        assert_eq!(wait, Some(Duration::from_millis(200)));
        // After the wait, exactly one more goes.
        let later = now + Duration::from_millis(200);
        assert_eq!(limiter.acquire(5, later), None);
        assert!(limiter.acquire(5, later).is_some());
    }

    #[test]
    fn averages_the_rate_over_time() {
        let start = Instant::now();
        let mut limiter = RateLimiter::default();
        let mut now = start;
        let mut sent = 0;
        while now < start + Duration::from_secs(10) {
            match limiter.acquire(3, now) {
                None => sent += 1,
                Some(next) => now = next,
            }
        }
        // 3 a second for 10 seconds, plus the initial burst.
        assert!((30..=33).contains(&sent), "{sent}");
    }
}
