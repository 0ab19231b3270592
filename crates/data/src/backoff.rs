//! Jittered exponential backoff for reconnecting to the control plane, so a restarted
//! control plane is not hit by every data plane at the same instant.

use std::time::Duration;

/// The first wait after a failure.
const INITIAL: Duration = Duration::from_millis(100);
/// The longest wait: the control plane's return is noticed within this.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Backoff state: doubles on every failure up to [`MAX_BACKOFF`], reset on success.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff { next: INITIAL }
    }

    /// The wait before the next try: uniformly random in `[next/2, next]` ("equal jitter"),
    /// so it never collapses to zero yet spreads replicas out.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        let half = ceiling / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    /// A connection worked: the next failure starts from the shortest wait again.
    pub(crate) fn reset(&mut self) {
        self.next = INITIAL;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_resets() {
        let mut backoff = Backoff::new();
        let first = backoff.next_delay();
        assert!(first >= INITIAL / 2 && first <= INITIAL, "{first:?}");
        for _ in 0..20 {
            let delay = backoff.next_delay();
            assert!(delay <= MAX_BACKOFF, "{delay:?}");
        }
        let capped = backoff.next_delay();
        assert!(capped >= MAX_BACKOFF / 2, "{capped:?}");
        backoff.reset();
        assert!(backoff.next_delay() <= INITIAL);
    }
}
