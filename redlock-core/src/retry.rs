//! How often and how long `lock` retries after a failed attempt.

use std::time::Duration;

/// Retry policy for [`Redlock::lock`](crate::Redlock::lock).
///
/// After a failed attempt the client sleeps `delay + random(0..=jitter)`. The random part
/// de-synchronises competing clients, so that a split vote does not repeat forever (the Redlock
/// spec asks for a random delay).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
#[non_exhaustive]
pub struct Retry {
    /// Total number of attempts, the first included (at least 1).
    pub attempts: u32,
    /// Fixed part of the pause between attempts. Serde format: humantime (`"50ms"`).
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub delay: Duration,
    /// Upper bound of the random part of the pause. Serde format: humantime.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub jitter: Duration,
}

impl Retry {
    /// `attempts` attempts in all, sleeping between `delay` and `2 * delay` between them.
    pub fn jittered(attempts: u32, delay: Duration) -> Self {
        Retry {
            attempts,
            delay,
            jitter: delay,
        }
    }

    /// `attempts` attempts with a pause of `delay + random(0..=jitter)`.
    pub fn new(attempts: u32, delay: Duration, jitter: Duration) -> Self {
        Retry {
            attempts,
            delay,
            jitter,
        }
    }

    /// A single attempt, no retry.
    pub fn none() -> Self {
        Retry {
            attempts: 1,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
        }
    }

    /// The longest a `lock` call may spend waiting: every pause at its longest. Also bounds the
    /// wait for the in-process queue.
    pub(crate) fn budget(&self) -> Duration {
        self.delay
            .saturating_add(self.jitter)
            .saturating_mul(self.attempts)
    }

    /// The pause before the next attempt.
    pub(crate) fn pause(&self) -> Duration {
        let jitter_ms = u64::try_from(self.jitter.as_micros()).unwrap_or(u64::MAX);
        let extra = if jitter_ms == 0 {
            0
        } else {
            rand::random_range(0..=jitter_ms)
        };
        self.delay.saturating_add(Duration::from_micros(extra))
    }
}

impl Default for Retry {
    /// 10 attempts, pausing 50–150 ms between them.
    fn default() -> Self {
        Retry::new(10, Duration::from_millis(50), Duration::from_millis(100))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_stays_within_delay_and_jitter() {
        let retry = Retry::jittered(3, Duration::from_millis(10));
        let pauses: Vec<_> = (0..200).map(|_| retry.pause()).collect();
        assert!(pauses.iter().all(|p| *p >= Duration::from_millis(10)));
        assert!(pauses.iter().all(|p| *p <= Duration::from_millis(20)));
        assert!(
            pauses.iter().any(|p| *p != pauses[0]),
            "the pause is random"
        );
    }

    #[test]
    fn extreme_values_saturate_instead_of_panicking() {
        let retry = Retry::new(u32::MAX, Duration::MAX, Duration::MAX);
        assert_eq!(retry.budget(), Duration::MAX);
        assert!(retry.pause() >= Duration::MAX - Duration::from_secs(1));
    }

    #[test]
    fn none_has_one_attempt_and_no_pause() {
        assert_eq!(Retry::none().attempts, 1);
        assert_eq!(Retry::none().pause(), Duration::ZERO);
    }
}
