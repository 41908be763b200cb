//! The one retry pause every loop uses: exponential from a first delay, doubling up to a
//! maximum, reset after a success; optionally spread by jitter so that many processes that lost
//! the same peer at the same moment do not all come back at the same moment.

use std::hash::BuildHasher as _;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Exponential backoff: `first`, `2 × first`, … up to `max`, then `max` until [`Backoff::reset`].
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
    jitter: bool,
}

impl Backoff {
    /// Where a backoff starts unless told otherwise.
    pub const FIRST: Duration = Duration::from_millis(100);

    /// From [`Backoff::FIRST`] up to `max` (at least `FIRST`).
    pub fn new(max: Duration) -> Self {
        Self::starting_at(Self::FIRST, max)
    }

    /// From `first` up to `max` (at least `first`).
    pub fn starting_at(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max: max.max(first),
            next: first,
            jitter: false,
        }
    }

    /// Each pause is drawn at random between half of it and all of it ("equal jitter"): the
    /// pauses still grow, but peers that failed together spread out.
    #[must_use]
    pub fn with_jitter(mut self) -> Self {
        self.jitter = true;
        self
    }

    /// The longest pause.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The pause to take now; the next one doubles (up to the maximum).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        if self.jitter {
            delay.mul_f64(0.5 + random_fraction() / 2.0)
        } else {
            delay
        }
    }

    /// Back to the first pause (after a success).
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// Sleeps for [`Backoff::next_delay`]; false when `cancel` fired first (the caller stops).
    pub async fn sleep(&mut self, cancel: &CancellationToken) -> bool {
        let delay = self.next_delay();
        self.sleep_for(delay, cancel).await
    }

    /// Sleeps for `delay` (a value [`Backoff::next_delay`] gave, already logged); false when
    /// `cancel` fired first.
    pub async fn sleep_for(&self, delay: Duration, cancel: &CancellationToken) -> bool {
        tokio::select! {
            () = cancel.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

/// A number in [0, 1) that differs from call to call. Only for spreading retries: std's
/// `RandomState` is seeded per thread and stepped on every construction, which is all the
/// randomness jitter needs, without a dependency for it.
fn random_fraction() -> f64 {
    let bits = std::collections::hash_map::RandomState::new().hash_one(std::time::Instant::now());
    // 53 random bits make every value of the fraction exact in an f64
    (bits >> 11) as f64 / (1_u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_maximum_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(500));
        let delays: Vec<_> = (0..5).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn a_maximum_below_the_first_pause_is_the_first_pause() {
        let mut backoff = Backoff::starting_at(Duration::from_millis(500), Duration::ZERO);
        assert_eq!(backoff.next_delay(), Duration::from_millis(500));
        assert_eq!(backoff.next_delay(), Duration::from_millis(500));
    }

    #[test]
    fn jitter_stays_between_half_and_all_of_the_pause() {
        let mut backoff = Backoff::new(Duration::from_secs(1)).with_jitter();
        let mut seen = std::collections::HashSet::new();
        for expected in [100, 200, 400, 800, 1000, 1000, 1000, 1000] {
            let delay = backoff.next_delay().as_micros();
            let expected = expected * 1000;
            assert!(
                delay >= expected / 2 && delay <= expected,
                "{delay} outside [{}, {expected}]",
                expected / 2
            );
            seen.insert(delay);
        }
        assert!(seen.len() > 4, "jitter does not vary: {seen:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_stops_when_cancelled() {
        let mut backoff = Backoff::new(Duration::from_secs(60));
        let cancel = CancellationToken::new();
        assert!(backoff.sleep(&cancel).await);
        cancel.cancel();
        assert!(!backoff.sleep(&cancel).await);
    }
}
