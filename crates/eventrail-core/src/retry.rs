//! How often, and how far apart, a failing unit of work is tried before it is given up: one
//! policy for a consumer's event (parked after its last attempt) and an outbox message (dead
//! after its last attempt).

use std::time::Duration;

/// Attempts of one unit of work (an event a consumer handles, a message the relay publishes)
/// before it is given up, and the exponential backoff between them.
///
/// The default, 5 attempts from 100 ms up to 10 s apart, is the worker's; the outbox's options
/// start from 10 attempts, 200 ms to 60 s, jittered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Failed attempts before the unit is given up (a consumer parks at the event, a message is
    /// dead and its partition key parked).
    pub max_attempts: u32,
    /// Wait after the first failure; doubled after each further failure.
    pub initial_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::new(5, Duration::from_millis(100), Duration::from_secs(10))
    }
}

impl RetryPolicy {
    /// `max_attempts` attempts, waiting `initial_backoff` after the first failure, doubling up
    /// to `max_backoff`.
    #[must_use]
    pub const fn new(max_attempts: u32, initial_backoff: Duration, max_backoff: Duration) -> Self {
        Self {
            max_attempts,
            initial_backoff,
            max_backoff,
        }
    }

    /// The wait after the `failures`-th failure (1 for the first), without jitter.
    #[must_use]
    pub fn backoff(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let r = RetryPolicy::new(5, Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(r.backoff(1), Duration::from_millis(100));
        assert_eq!(r.backoff(2), Duration::from_millis(200));
        assert_eq!(r.backoff(5), Duration::from_secs(1));
        assert_eq!(r.backoff(u32::MAX), Duration::from_secs(1));
    }
}
