//! Token buckets per caller: a request takes one token; an empty bucket
//! answers how long until the next one (HTTP 429 with `Retry-After`).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Requests per second, and how many may come at once.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    pub per_sec: f64,
    pub burst: f64,
}

impl Rate {
    /// `n` per second, with a burst of `n` (at least 1).
    pub fn per_second(n: f64) -> Rate {
        Rate {
            per_sec: n,
            burst: n.max(1.0),
        }
    }

    /// `N/s` or `N/m` (per minute), as config files write it.
    pub fn parse(s: &str) -> Result<Rate, String> {
        let bad = || format!("{s:?}: write a rate as N/s or N/m, N > 0");
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let n: f64 = n.trim().parse().map_err(|_| bad())?;
        if !(n.is_finite() && n > 0.0) {
            return Err(bad());
        }
        match unit.trim() {
            "s" => Ok(Rate::per_second(n)),
            "m" => Ok(Rate {
                per_sec: n / 60.0,
                burst: n.clamp(1.0, 60.0),
            }),
            _ => Err(bad()),
        }
    }
}

/// One caller's bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    tokens: f64,
    at_ms: u64,
}

impl Bucket {
    /// A full bucket.
    pub fn full(rate: Rate, now_ms: u64) -> Bucket {
        Bucket {
            tokens: rate.burst,
            at_ms: now_ms,
        }
    }

    /// Take one token, or say in how many ms one will be there.
    pub fn take(&mut self, rate: Rate, now_ms: u64) -> Result<(), u64> {
        let elapsed = now_ms.saturating_sub(self.at_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * rate.per_sec).min(rate.burst);
        self.at_ms = self.at_ms.max(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / rate.per_sec * 1000.0;
            Err(wait.ceil().max(1.0) as u64)
        }
    }
}

/// The buckets of every caller that has a rate.
#[derive(Debug, Default)]
pub struct Quotas {
    buckets: HashMap<String, Bucket>,
}

/// More callers than this and the full buckets are forgotten (a full bucket
/// is what a new one would be anyway).
const MAX_BUCKETS: usize = 10_000;

impl Quotas {
    /// One request of `caller` at `now_ms`: `Err(retry_after_ms)` past its rate.
    pub fn take(&mut self, caller: &str, rate: Rate, now_ms: u64) -> Result<(), u64> {
        if self.buckets.len() >= MAX_BUCKETS && !self.buckets.contains_key(caller) {
            self.buckets.retain(|_, b| {
                let mut probe = b.clone();
                // Still below full: keep it.
                probe.take(rate, now_ms).is_ok() && probe.tokens + 1.0 < rate.burst
            });
        }
        self.buckets
            .entry(caller.to_string())
            .or_insert_with(|| Bucket::full(rate, now_ms))
            .take(rate, now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let r = Rate::per_second(2.0);
        let mut q = Quotas::default();
        assert!(q.take("a", r, 0).is_ok());
        assert!(q.take("a", r, 0).is_ok());
        assert_eq!(q.take("a", r, 0), Err(500), "empty: one token in 0.5 s");
        assert!(q.take("b", r, 0).is_ok(), "callers have their own buckets");
        assert!(q.take("a", r, 500).is_ok());
        assert!(q.take("a", r, 500).is_err());
        // A long pause refills only up to the burst.
        for _ in 0..2 {
            assert!(q.take("a", r, 60_000).is_ok());
        }
        assert!(q.take("a", r, 60_000).is_err());
    }

    #[test]
    fn rates_parse() {
        assert_eq!(Rate::parse("5/s").unwrap(), Rate::per_second(5.0));
        let m = Rate::parse("120/m").unwrap();
        assert!((m.per_sec - 2.0).abs() < 1e-9);
        for bad in ["", "5", "0/s", "-1/s", "5/h", "x/s"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }
}
