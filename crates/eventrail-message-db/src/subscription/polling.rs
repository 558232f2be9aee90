use std::fmt;
use std::time::Duration;

use crate::InvalidArgument;

/// Decides how long a subscription waits before its next read, from what the last read returned.
///
/// Strategies provided: [`ConstantPolling`], [`ExponentialBackoff`], [`DynamicPolling`]; wrap a
/// closure with [`polling_fn`] for your own.
pub trait PollingStrategy: Send + Sync + fmt::Debug + 'static {
    /// The wait before the next read, after a read that returned `fetched` messages of at most
    /// `batch_size`. A full batch means more may be waiting.
    fn next_delay(&mut self, fetched: usize, batch_size: usize) -> Duration;
}

/// Waits the same interval after every read that was not full; reads again at once after a full
/// batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConstantPolling {
    interval: Duration,
}

impl ConstantPolling {
    /// Polls every `interval`.
    #[must_use]
    pub const fn new(interval: Duration) -> Self {
        Self { interval }
    }
}

impl PollingStrategy for ConstantPolling {
    fn next_delay(&mut self, fetched: usize, batch_size: usize) -> Duration {
        if fetched >= batch_size {
            Duration::ZERO
        } else {
            self.interval
        }
    }
}

/// Reads again at once after a full batch, waits `min` after a partial one, and after each empty
/// read multiplies the wait by `factor`, up to `max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExponentialBackoff {
    min: Duration,
    max: Duration,
    factor: f64,
    current: Duration,
}

impl ExponentialBackoff {
    /// A backoff from `min` to `max` by `factor`.
    ///
    /// # Errors
    /// [`InvalidArgument::Setting`] when `min > max`, `min` is zero, or `factor` is not a finite
    /// number of at least 1.
    pub fn new(min: Duration, max: Duration, factor: f64) -> Result<Self, InvalidArgument> {
        let refuse = |reason| InvalidArgument::Setting {
            what: "exponential backoff",
            reason,
        };
        if min.is_zero() {
            return Err(refuse("min must be positive"));
        }
        if min > max {
            return Err(refuse("min must not exceed max"));
        }
        if !factor.is_finite() || factor < 1.0 {
            return Err(refuse("factor must be a finite number >= 1"));
        }
        Ok(Self {
            min,
            max,
            factor,
            current: min,
        })
    }
}

impl PollingStrategy for ExponentialBackoff {
    fn next_delay(&mut self, fetched: usize, batch_size: usize) -> Duration {
        if fetched >= batch_size {
            self.current = self.min;
            return Duration::ZERO;
        }
        if fetched > 0 {
            self.current = self.min;
            return self.min;
        }
        let delay = self.current;
        self.current = self.current.mul_f64(self.factor).min(self.max);
        delay
    }
}

/// Adapts the wait so that reads come back about `target` full (a share of the batch size): the
/// wait grows when batches come back emptier than the target and shrinks when fuller, between
/// `min` and `max`. Suits steady streams: it spends few queries while keeping latency near the
/// interval at which a `target` share of a batch accumulates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DynamicPolling {
    min: Duration,
    max: Duration,
    target: f64,
    current: Duration,
}

impl DynamicPolling {
    /// Aims at batches `target` full (`0 < target <= 1`), waiting between `min` and `max`.
    ///
    /// # Errors
    /// [`InvalidArgument::Setting`] when `min > max`, `min` is zero, or `target` is outside
    /// `(0, 1]`.
    pub fn new(min: Duration, max: Duration, target: f64) -> Result<Self, InvalidArgument> {
        let refuse = |reason| InvalidArgument::Setting {
            what: "dynamic polling",
            reason,
        };
        if min.is_zero() {
            return Err(refuse("min must be positive"));
        }
        if min > max {
            return Err(refuse("min must not exceed max"));
        }
        if !(target > 0.0 && target <= 1.0) {
            return Err(refuse("target utilisation must be in (0, 1]"));
        }
        Ok(Self {
            min,
            max,
            target,
            current: min,
        })
    }
}

impl PollingStrategy for DynamicPolling {
    #[expect(clippy::cast_precision_loss, reason = "batch sizes are far below 2^52")]
    fn next_delay(&mut self, fetched: usize, batch_size: usize) -> Duration {
        if fetched >= batch_size {
            // Behind: catch up at once, and poll more often afterwards.
            self.current = (self.current / 2).max(self.min);
            return Duration::ZERO;
        }
        let utilisation = fetched as f64 / batch_size.max(1) as f64;
        // Messages arrive at a roughly steady rate, so the batch fill is proportional to the
        // wait: scale the wait by target / utilisation (doubling at most per step, and doubling
        // when nothing came).
        let scale = if utilisation == 0.0 {
            2.0
        } else {
            (self.target / utilisation).clamp(0.5, 2.0)
        };
        self.current = self.current.mul_f64(scale).clamp(self.min, self.max);
        self.current
    }
}

/// A strategy from a closure `(fetched, batch_size) -> wait`; see [`polling_fn`].
pub struct PollingFn<F>(F);

impl<F> fmt::Debug for PollingFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PollingFn")
    }
}

impl<F> PollingStrategy for PollingFn<F>
where
    F: FnMut(usize, usize) -> Duration + Send + Sync + 'static,
{
    fn next_delay(&mut self, fetched: usize, batch_size: usize) -> Duration {
        (self.0)(fetched, batch_size)
    }
}

/// A user-supplied strategy: `f(fetched, batch_size)` returns the wait before the next read.
pub fn polling_fn<F>(f: F) -> PollingFn<F>
where
    F: FnMut(usize, usize) -> Duration + Send + Sync + 'static,
{
    PollingFn(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn constant() {
        let mut p = ConstantPolling::new(10 * MS);
        assert_eq!(p.next_delay(0, 10), 10 * MS);
        assert_eq!(p.next_delay(3, 10), 10 * MS);
        assert_eq!(p.next_delay(10, 10), Duration::ZERO);
    }

    #[test]
    fn exponential_grows_to_max_and_resets() {
        let mut p = ExponentialBackoff::new(10 * MS, 50 * MS, 2.0).unwrap();
        let waits: Vec<_> = (0..5).map(|_| p.next_delay(0, 10)).collect();
        assert_eq!(waits, [10 * MS, 20 * MS, 40 * MS, 50 * MS, 50 * MS]);
        assert_eq!(p.next_delay(2, 10), 10 * MS);
        assert_eq!(p.next_delay(0, 10), 10 * MS);
        assert_eq!(p.next_delay(10, 10), Duration::ZERO);
        assert!(ExponentialBackoff::new(50 * MS, 10 * MS, 2.0).is_err());
        assert!(ExponentialBackoff::new(MS, MS, 0.5).is_err());
        assert!(ExponentialBackoff::new(MS, MS, f64::NAN).is_err());
        assert!(ExponentialBackoff::new(Duration::ZERO, MS, 2.0).is_err());
    }

    #[test]
    fn dynamic_moves_toward_target() {
        let mut p = DynamicPolling::new(10 * MS, 1000 * MS, 0.5).unwrap();
        let a = p.next_delay(0, 100);
        let b = p.next_delay(10, 100); // 10 % full: wait longer
        assert!(b > a, "{a:?} {b:?}");
        let c = p.next_delay(90, 100); // 90 % full: wait shorter
        assert!(c < b, "{b:?} {c:?}");
        for _ in 0..50 {
            assert!(p.next_delay(0, 100) <= 1000 * MS);
        }
        assert_eq!(p.next_delay(100, 100), Duration::ZERO);
        assert!(DynamicPolling::new(MS, 2 * MS, 0.0).is_err());
        assert!(DynamicPolling::new(MS, 2 * MS, 1.5).is_err());
    }

    #[test]
    fn closure() {
        let mut p = polling_fn(|fetched, _| Duration::from_millis(fetched as u64));
        assert_eq!(p.next_delay(7, 10), 7 * MS);
    }
}
