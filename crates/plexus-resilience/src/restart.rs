//! OTP-style restart intensity: a supervisor restarts a failed child at
//! most `max_restarts` times within any `period`; one more and it gives up
//! (and escalates).
//!
//! ```
//! use std::time::{Duration, Instant};
//! use plexus_resilience::restart::{Decision, RestartIntensity};
//!
//! let t0 = Instant::now();
//! let mut r = RestartIntensity::new(2, Duration::from_secs(5));
//! assert_eq!(r.record(t0), Decision::Restart);
//! assert_eq!(r.record(t0 + Duration::from_secs(1)), Decision::Restart);
//! assert_eq!(r.record(t0 + Duration::from_secs(2)), Decision::GiveUp);
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Decision {
    Restart,
    /// More than `max_restarts` within `period`: stop restarting.
    GiveUp,
}

#[derive(Debug, Clone)]
pub struct RestartIntensity {
    max_restarts: u32,
    period: Duration,
    /// Recent restart times, oldest first; at most `max_restarts + 1` kept.
    recent: VecDeque<Instant>,
}

impl RestartIntensity {
    pub fn new(max_restarts: u32, period: Duration) -> Self {
        RestartIntensity {
            max_restarts,
            period,
            recent: VecDeque::with_capacity(max_restarts as usize + 1),
        }
    }

    pub fn max_restarts(&self) -> u32 {
        self.max_restarts
    }

    pub fn period(&self) -> Duration {
        self.period
    }

    /// Records a failure at `now` and decides. Restarts count while less
    /// than `period` old, so with `max_restarts = 3, period = 5 s` the
    /// restarts at 0, 1, 2 s and a failure at 5 s still restart (the one at
    /// 0 s has aged out), but a failure at 4.9 s gives up.
    pub fn record(&mut self, now: Instant) -> Decision {
        self.expire(now);
        self.recent.push_back(now);
        while self.recent.len() > self.max_restarts as usize + 1 {
            self.recent.pop_front();
        }
        if self.recent.len() > self.max_restarts as usize {
            Decision::GiveUp
        } else {
            Decision::Restart
        }
    }

    /// Failures recorded less than `period` before `now`.
    pub fn restarts_in_period(&self, now: Instant) -> usize {
        self.recent
            .iter()
            .filter(|&&t| now.saturating_duration_since(t) < self.period)
            .count()
    }

    /// Forgets every recorded restart (after the supervisor itself restarted).
    pub fn reset(&mut self) {
        self.recent.clear();
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&t) = self.recent.front() {
            if now.saturating_duration_since(t) >= self.period {
                self.recent.pop_front();
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn gives_up_on_the_restart_past_the_limit() {
        let t = Instant::now();
        let mut r = RestartIntensity::new(3, ms(5_000));
        assert_eq!(r.record(t), Decision::Restart);
        assert_eq!(r.record(t + ms(1_000)), Decision::Restart);
        assert_eq!(r.record(t + ms(2_000)), Decision::Restart);
        assert_eq!(r.restarts_in_period(t + ms(2_000)), 3);
        assert_eq!(r.record(t + ms(4_900)), Decision::GiveUp);
    }

    #[test]
    fn old_restarts_age_out() {
        let t = Instant::now();
        let mut r = RestartIntensity::new(3, ms(5_000));
        r.record(t);
        r.record(t + ms(1_000));
        r.record(t + ms(2_000));
        assert_eq!(r.record(t + ms(5_000)), Decision::Restart, "t+0 aged out");
        assert_eq!(r.restarts_in_period(t + ms(5_000)), 3);
        assert_eq!(r.record(t + ms(5_500)), Decision::GiveUp);
    }

    #[test]
    fn steady_slow_failures_restart_forever() {
        let t = Instant::now();
        let mut r = RestartIntensity::new(1, ms(1_000));
        for i in 0..1_000 {
            assert_eq!(r.record(t + ms(i * 1_000)), Decision::Restart);
        }
        assert!(r.recent.len() <= 2);
    }

    #[test]
    fn zero_restarts_always_gives_up() {
        let mut r = RestartIntensity::new(0, ms(1_000));
        assert_eq!(r.record(Instant::now()), Decision::GiveUp);
    }

    #[test]
    fn reset_forgets() {
        let t = Instant::now();
        let mut r = RestartIntensity::new(1, ms(1_000));
        r.record(t);
        assert_eq!(r.record(t), Decision::GiveUp);
        r.reset();
        assert_eq!(r.record(t), Decision::Restart);
    }
}
