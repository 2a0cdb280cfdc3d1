//! Learning from outcomes: per-agent success (Beta-smoothed) and latency
//! (exponentially weighted), turned into a modest score multiplier.

use serde::{Deserialize, Serialize};

/// Prior pseudo-counts of the Beta distribution (a neutral 0.5 prior worth
/// `PRIOR_SUCCESS + PRIOR_FAILURE` observations).
pub const PRIOR_SUCCESS: f64 = 2.0;
pub const PRIOR_FAILURE: f64 = 2.0;
/// Weight of the latest latency in the moving average.
pub const LATENCY_ALPHA: f64 = 0.2;

/// What the router knows of one agent's (or command's) record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct OutcomeStats {
    pub successes: u64,
    pub failures: u64,
    /// Exponentially weighted latency, ms (None before the first outcome).
    pub latency_ms: Option<f64>,
}

impl OutcomeStats {
    pub fn record(&mut self, success: bool, latency_ms: f64) {
        if success {
            self.successes += 1;
        } else {
            self.failures += 1;
        }
        let l = latency_ms.max(0.0);
        self.latency_ms = Some(match self.latency_ms {
            None => l,
            Some(prev) => prev + LATENCY_ALPHA * (l - prev),
        });
    }

    /// Posterior mean success rate under a Beta(2, 2) prior.
    pub fn success_rate(&self) -> f64 {
        (self.successes as f64 + PRIOR_SUCCESS)
            / ((self.successes + self.failures) as f64 + PRIOR_SUCCESS + PRIOR_FAILURE)
    }

    /// Score multiplier: success moves it within ±`weight`/2, a latency far
    /// above `typical_ms` takes off up to `weight`/4 more. With no record it is 1.
    pub fn multiplier(&self, weight: f64, typical_ms: Option<f64>) -> f64 {
        let mut m = 1.0 + weight * (self.success_rate() - 0.5);
        if let (Some(l), Some(t)) = (self.latency_ms, typical_ms) {
            if t > 0.0 && l > t {
                let slow = ((l / t).log2()).clamp(0.0, 2.0) / 2.0;
                m -= weight * 0.25 * slow;
            }
        }
        m.max(0.05)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beta_smoothing_keeps_one_outcome_modest() {
        let mut s = OutcomeStats::default();
        assert_eq!(s.success_rate(), 0.5);
        assert_eq!(s.multiplier(0.4, None), 1.0);
        s.record(false, 10.0);
        assert!((s.success_rate() - 0.4).abs() < 1e-9);
        let m = s.multiplier(0.4, None);
        assert!(m < 1.0 && m > 0.9, "{m}");
        for _ in 0..100 {
            s.record(true, 10.0);
        }
        assert!(s.success_rate() > 0.95);
        assert!(s.multiplier(0.4, None) <= 1.2);
    }

    #[test]
    fn slow_agents_lose_a_little() {
        let mut fast = OutcomeStats::default();
        let mut slow = OutcomeStats::default();
        for _ in 0..10 {
            fast.record(true, 100.0);
            slow.record(true, 1000.0);
        }
        let t = Some(200.0);
        assert!(slow.multiplier(0.4, t) < fast.multiplier(0.4, t));
        assert!(slow.multiplier(0.4, t) > 0.9);
    }
}
