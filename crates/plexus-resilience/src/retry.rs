//! Retry backoff: linear, exponential or Fibonacci delays, capped, with
//! optional jitter drawn from an injected RNG.
//!
//! Retries are numbered from 1: `delay_for(1, rng)` is the wait before the
//! first retry (the second call), and `delay_for(n, rng)` is `None` once
//! `n > max_retries`.
//!
//! ```
//! use std::time::Duration;
//! use plexus_resilience::retry::{Backoff, RetryPolicy};
//!
//! let p = RetryPolicy {
//!     max_retries: 4,
//!     backoff: Backoff::Exponential,
//!     initial_delay: Duration::from_millis(100),
//!     max_delay: Duration::from_millis(500),
//!     jitter: 0.0,
//! };
//! let ms: Vec<u128> = p.delays().map(|d| d.as_millis()).collect();
//! assert_eq!(ms, [100, 200, 400, 500]);
//! ```

use std::time::Duration;

pub use plexus_catalog::Backoff;
use plexus_catalog::RetryPolicySpec;
use rand::Rng;

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first call (0 = call once).
    pub max_retries: u32,
    pub backoff: Backoff,
    pub initial_delay: Duration,
    /// Cap on every delay (applied before jitter, so jittered delays stay
    /// under it too).
    pub max_delay: Duration,
    /// Fraction of each delay randomised, 0–1: the delay is drawn uniformly
    /// from `[d·(1−jitter), d]`, so 1 is "full jitter" over `[0, d]`.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    /// The manifest defaults ([`RetryPolicySpec::default`]).
    fn default() -> Self {
        RetryPolicy::from_spec(&RetryPolicySpec::default())
    }
}

impl RetryPolicy {
    /// Settings from a plugin manifest. A jitter outside 0–1 is clamped
    /// when used (NaN counts as 0).
    pub fn from_spec(spec: &RetryPolicySpec) -> Self {
        RetryPolicy {
            max_retries: spec.max_retries,
            backoff: spec.backoff,
            initial_delay: Duration::from_millis(spec.initial_delay_ms),
            max_delay: Duration::from_millis(spec.max_delay_ms),
            jitter: spec.jitter,
        }
    }

    /// A policy that never retries.
    pub fn none() -> Self {
        RetryPolicy {
            max_retries: 0,
            ..RetryPolicy::default()
        }
    }

    /// The wait before retry number `retry` (1-based), jittered with `rng`;
    /// `None` when `retry` is 0 or past `max_retries`.
    pub fn delay_for<R: Rng + ?Sized>(&self, retry: u32, rng: &mut R) -> Option<Duration> {
        let base = self.base_delay(retry)?;
        let jitter = self.jitter_fraction();
        if jitter == 0.0 || base.is_zero() {
            return Some(base);
        }
        let cut = jitter * rng.gen::<f64>();
        Some(base.mul_f64(1.0 - cut))
    }

    /// The wait before retry number `retry` without jitter; `None` when
    /// `retry` is 0 or past `max_retries`.
    pub fn base_delay(&self, retry: u32) -> Option<Duration> {
        if retry == 0 || retry > self.max_retries {
            return None;
        }
        let factor: u64 = match self.backoff {
            Backoff::Linear => u64::from(retry),
            Backoff::Exponential => 1u64.checked_shl(retry - 1).unwrap_or(u64::MAX),
            Backoff::Fibonacci => fibonacci(retry),
        };
        let nanos = self
            .initial_delay
            .as_nanos()
            .saturating_mul(u128::from(factor));
        if nanos >= self.max_delay.as_nanos() {
            return Some(self.max_delay);
        }
        // Below max_delay, so it fits a Duration.
        const NANOS_PER_SEC: u128 = 1_000_000_000;
        Some(Duration::new(
            (nanos / NANOS_PER_SEC) as u64,
            (nanos % NANOS_PER_SEC) as u32,
        ))
    }

    /// All delays without jitter, retry 1 to `max_retries`.
    pub fn delays(&self) -> Delays<'_> {
        Delays {
            policy: self,
            next: 1,
        }
    }

    /// Whether a failed call may be retried at all: the error must be
    /// retryable, and a command that is not idempotent is retried only if it
    /// carries an idempotency key (so the plugin can drop the duplicate).
    pub fn should_retry(
        idempotent: bool,
        has_idempotency_key: bool,
        error_is_retryable: bool,
    ) -> bool {
        error_is_retryable && (idempotent || has_idempotency_key)
    }

    fn jitter_fraction(&self) -> f64 {
        if self.jitter.is_nan() {
            0.0
        } else {
            self.jitter.clamp(0.0, 1.0)
        }
    }
}

/// 1, 1, 2, 3, 5, 8, … (saturating).
fn fibonacci(n: u32) -> u64 {
    let (mut a, mut b) = (1u64, 1u64);
    for _ in 1..n {
        let next = a.saturating_add(b);
        a = b;
        b = next;
    }
    a
}

/// Iterator over [`RetryPolicy::base_delay`] for every retry.
#[derive(Debug, Clone)]
pub struct Delays<'a> {
    policy: &'a RetryPolicy,
    next: u32,
}

impl Iterator for Delays<'_> {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let d = self.policy.base_delay(self.next)?;
        self.next += 1;
        Some(d)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.policy.max_retries + 1).saturating_sub(self.next) as usize;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Delays<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn policy(backoff: Backoff, max_retries: u32, max_ms: u64) -> RetryPolicy {
        RetryPolicy {
            max_retries,
            backoff,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(max_ms),
            jitter: 0.0,
        }
    }

    fn millis(p: &RetryPolicy) -> Vec<u128> {
        p.delays().map(|d| d.as_millis()).collect()
    }

    #[test]
    fn linear_sequence() {
        let p = policy(Backoff::Linear, 5, 10_000);
        assert_eq!(millis(&p), [100, 200, 300, 400, 500]);
    }

    #[test]
    fn exponential_sequence() {
        let p = policy(Backoff::Exponential, 6, 10_000);
        assert_eq!(millis(&p), [100, 200, 400, 800, 1_600, 3_200]);
    }

    #[test]
    fn fibonacci_sequence() {
        let p = policy(Backoff::Fibonacci, 8, 10_000);
        assert_eq!(millis(&p), [100, 100, 200, 300, 500, 800, 1_300, 2_100]);
    }

    #[test]
    fn max_delay_caps_every_shape() {
        for b in [Backoff::Linear, Backoff::Exponential, Backoff::Fibonacci] {
            let p = policy(b, 200, 450);
            let d = millis(&p);
            assert_eq!(d.len(), 200);
            assert!(d.iter().all(|&x| x <= 450), "{b:?}");
            assert_eq!(
                *d.last().unwrap(),
                450,
                "{b:?}: huge factors saturate to the cap"
            );
        }
    }

    #[test]
    fn exhausted_and_zero() {
        let p = policy(Backoff::Exponential, 3, 10_000);
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(p.delay_for(0, &mut rng), None);
        assert!(p.delay_for(3, &mut rng).is_some());
        assert_eq!(p.delay_for(4, &mut rng), None);
        assert_eq!(RetryPolicy::none().delays().count(), 0);
        assert_eq!(p.delays().len(), 3);
    }

    #[test]
    fn jitter_stays_in_bounds() {
        let mut rng = StdRng::seed_from_u64(42);
        for jitter in [0.2, 0.5, 1.0] {
            let p = RetryPolicy {
                jitter,
                ..policy(Backoff::Exponential, 5, 1_000)
            };
            for retry in 1..=5 {
                let base = p.base_delay(retry).unwrap();
                let lo = base.mul_f64(1.0 - jitter);
                let mut seen_below_base = false;
                for _ in 0..200 {
                    let d = p.delay_for(retry, &mut rng).unwrap();
                    assert!(d >= lo && d <= base, "{d:?} not in [{lo:?}, {base:?}]");
                    seen_below_base |= d < base;
                }
                assert!(seen_below_base, "jitter {jitter} never moved the delay");
            }
        }
    }

    #[test]
    fn jitter_is_reproducible_with_seed() {
        let p = RetryPolicy {
            jitter: 0.5,
            ..policy(Backoff::Linear, 3, 1_000)
        };
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (1..=3)
                .map(|n| p.delay_for(n, &mut rng).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
    }

    #[test]
    fn out_of_range_jitter_is_clamped() {
        let mut rng = StdRng::seed_from_u64(3);
        let p = RetryPolicy {
            jitter: f64::NAN,
            ..policy(Backoff::Linear, 2, 1_000)
        };
        assert_eq!(p.delay_for(2, &mut rng), Some(Duration::from_millis(200)));
        let p = RetryPolicy {
            jitter: 7.0,
            ..policy(Backoff::Linear, 2, 1_000)
        };
        assert!(p.delay_for(2, &mut rng).unwrap() <= Duration::from_millis(200));
    }

    #[test]
    fn from_spec_defaults() {
        let p = RetryPolicy::default();
        assert_eq!(p.max_retries, 3);
        assert_eq!(p.backoff, Backoff::Exponential);
        assert_eq!(millis(&p), [100, 200, 400]);
        assert_eq!(p.max_delay, Duration::from_millis(5_000));
        assert_eq!(p.jitter, 0.2);
    }

    #[test]
    fn retry_rule() {
        // (idempotent, key, retryable) -> retry?
        let cases = [
            ((true, false, true), true),
            ((true, true, true), true),
            ((false, true, true), true),
            ((false, false, true), false),
            ((true, true, false), false),
            ((false, true, false), false),
        ];
        for ((i, k, r), want) in cases {
            assert_eq!(RetryPolicy::should_retry(i, k, r), want, "{i} {k} {r}");
        }
    }
}
