//! Every back-off of the framework, as pure functions of the attempt number (randomness, where
//! a formula has any, is passed in so the functions stay deterministic and testable).
//!
//! * [`doubling`]: `base * 2^attempt`, capped: the dispatchers' abandon back-off, the storage
//!   layer's retries, the client's status polling and visibility-update retries;
//! * [`dtf_abandon`]: DurableTask.AzureStorage's message back-off, `min(2^deliveries, 600)` s;
//! * [`scaled`]: `first * coefficient^attempt`, capped, for user retry policies;
//! * [`poll`]: DTF's randomized poll back-off (`BackoffPollingHelper`).

use std::time::Duration;

/// `base * 2^attempt`, at most `max` (saturating: never overflows).
pub fn doubling(base: Duration, attempt: u32, max: Duration) -> Duration {
    base.saturating_mul(1u32 << attempt.min(30)).min(max)
}

/// DTF's back-off for a message delivered `deliveries` times: `min(2^deliveries, 600)` seconds.
pub fn dtf_abandon(deliveries: u64) -> Duration {
    let attempt = u32::try_from(deliveries.min(10)).unwrap_or(10);
    doubling(Duration::from_secs(1), attempt, Duration::from_secs(600))
}

/// `first * coefficient^attempt`, at most `max` (a coefficient below 1 shrinks; a result that
/// is not finite is `max`).
pub fn scaled(first: Duration, coefficient: f64, attempt: u32, max: Duration) -> Duration {
    let exp = i32::try_from(attempt).unwrap_or(i32::MAX);
    let secs = first.as_secs_f64() * coefficient.powi(exp);
    if !secs.is_finite() || secs >= max.as_secs_f64() {
        max
    } else {
        Duration::from_secs_f64(secs.max(0.0))
    }
}

/// DTF's randomized poll back-off after `misses` empty polls: 50 ms, then
/// `50 + jitter * 2^(misses-1) * 50` ms, at most `max`; `unit` in `[0, 1)` picks the jitter
/// factor in `[0.8, 1.2)`.
pub fn poll(misses: u32, max: Duration, unit: f64) -> Duration {
    if misses == 0 {
        return Duration::from_millis(50).min(max);
    }
    let factor = unit.clamp(0.0, 1.0).mul_add(0.4, 0.8);
    let exp = 2f64.powi(i32::try_from(misses.min(20)).unwrap_or(20) - 1);
    Duration::from_secs_f64((50.0 + factor * exp * 50.0) / 1000.0).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubling_doubles_caps_and_never_overflows() {
        let b = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        let got: Vec<u128> = (0..8).map(|a| doubling(b, a, max).as_millis()).collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(doubling(b, u32::MAX, max), max);
        assert_eq!(doubling(Duration::MAX, 3, Duration::MAX), Duration::MAX);
    }

    #[test]
    fn dtf_abandon_is_min_2_pow_n_600() {
        let got: Vec<u64> =
            [0, 1, 5, 9, 10, 31, u64::MAX].iter().map(|d| dtf_abandon(*d).as_secs()).collect();
        assert_eq!(got, vec![1, 2, 32, 512, 600, 600, 600]);
    }

    #[test]
    fn scaled_follows_the_coefficient_and_caps() {
        let first = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        assert_eq!(scaled(first, 2.0, 0, max), first);
        assert_eq!(scaled(first, 1.5, 2, max), Duration::from_secs_f64(2.25));
        assert_eq!(scaled(first, 2.0, 10, max), max);
        assert_eq!(scaled(first, f64::INFINITY, 1, max), max);
        assert_eq!(scaled(first, 0.5, 1, max), Duration::from_millis(500));
    }

    #[test]
    fn poll_grows_with_jitter_and_caps() {
        let max = Duration::from_secs(10);
        assert_eq!(poll(0, max, 0.5), Duration::from_millis(50));
        assert_eq!(poll(1, max, 0.0), Duration::from_millis(90));
        assert_eq!(poll(1, max, 1.0), Duration::from_millis(110));
        assert_eq!(poll(3, max, 0.5), Duration::from_millis(250));
        assert_eq!(poll(30, max, 0.5), max);
        assert!(poll(4, max, 0.0) < poll(4, max, 0.99));
    }
}
