//! Reconnect delays: exponential backoff with full jitter (AWS architecture blog, "Exponential
//! Backoff And Jitter"), so a fleet of gateways that lost the cloud at the same moment does not
//! come back at the same moment.
//!
//! Owns only the arithmetic; the caller supplies the random numbers and does the sleeping.

use std::time::Duration;

/// The delay schedule of one bridge.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    /// Failed attempts since the last success.
    failures: u32,
}

impl Backoff {
    /// A schedule whose ceiling starts at `min` and doubles per failure up to `max`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            failures: 0,
        }
    }

    /// The ceiling for the next wait: `min * 2^failures`, at most `max`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(31)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// Records a failed attempt and returns how long to wait before the next one: uniform in
    /// `[0, ceiling]` drawn from `unit` (a number in `[0, 1)`), never below 10 ms so a broken
    /// link cannot spin.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.5
        };
        ceiling.mul_f64(unit).max(Duration::from_millis(10))
    }

    /// A connection got through: the next failure starts again from `min`.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failed attempts since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_doubles_up_to_the_maximum_and_resets_after_a_success() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(120));
        let ceilings: Vec<u64> = (0..10)
            .map(|_| {
                let c = b.ceiling().as_secs();
                b.next_delay(0.5);
                c
            })
            .collect();
        assert_eq!(ceilings, vec![1, 2, 4, 8, 16, 32, 64, 120, 120, 120]);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_secs(1));
    }

    #[test]
    fn the_delay_is_spread_over_the_whole_range_below_the_ceiling() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(120));
        for _ in 0..7 {
            b.next_delay(0.0);
        }
        // Ceiling is 120 s now: full jitter maps [0, 1) onto [0, 120 s].
        let mut probe = b.clone();
        assert_eq!(probe.next_delay(0.0), Duration::from_millis(10));
        let mut probe = b.clone();
        assert_eq!(probe.next_delay(0.25), Duration::from_secs(30));
        let mut probe = b.clone();
        assert_eq!(
            probe.next_delay(0.999_999),
            Duration::from_secs(120).mul_f64(0.999_999)
        );
    }

    #[test]
    fn many_failures_never_overflow() {
        let mut b = Backoff::new(Duration::from_secs(3600), Duration::from_secs(86_400));
        for _ in 0..1000 {
            assert!(b.next_delay(1.0) <= Duration::from_secs(86_400));
        }
        assert_eq!(b.next_delay(f64::NAN), Duration::from_secs(43_200));
    }
}
