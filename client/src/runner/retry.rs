//! Retry policy: exponential backoff with full jitter.

use std::time::Duration;

/// How transient sink failures are retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Delay before the first retry (default 100 ms).
    pub initial: Duration,
    /// Upper bound of a delay (default 30 s).
    pub max: Duration,
    /// After this many failed attempts of a batch the runner dead-letters its events instead
    /// of retrying again (`None`, the default: retry until it works or the runner is stopped).
    pub dead_letter_after: Option<u32>,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            dead_letter_after: None,
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `attempt` (1 = first retry): a uniformly random duration
    /// between half and all of `min(max, initial * 2^(attempt-1))` ("equal jitter", so
    /// several consumers failing together do not retry in lockstep).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let cap = exp.min(self.max);
        let half = cap / 2;
        half + half.mul_f64(jitter())
    }
}

/// A number in [0, 1) from the clock and a counter: good enough to spread retries, not
/// meant for anything else.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_within_jitter_bounds_and_cap() {
        let policy = RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            dead_letter_after: None,
        };
        for (attempt, full) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (30, 1000),
        ] {
            let full = Duration::from_millis(full);
            for _ in 0..50 {
                let d = policy.delay(attempt);
                assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
            }
        }
        let distinct: std::collections::HashSet<_> = (0..20).map(|_| policy.delay(3)).collect();
        assert!(distinct.len() > 1, "jitter varies the delay");
    }
}
