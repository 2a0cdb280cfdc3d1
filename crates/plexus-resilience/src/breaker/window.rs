//! Sliding windows the breaker computes its rates over.
//!
//! Both windows keep running totals, so recording a call and reading the
//! rates are O(1) (amortised for the time-based window).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Number of buckets a time-based window is divided into. A call leaves the
/// window between `duration - duration / TIME_BUCKETS` and `duration` after
/// it was recorded.
pub(crate) const TIME_BUCKETS: usize = 64;

/// What one finished call contributed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub failed: bool,
    pub slow: bool,
}

/// Aggregated outcomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub calls: u64,
    pub failures: u64,
    pub slow: u64,
}

impl Counts {
    pub fn add(&mut self, o: Outcome) {
        self.calls += 1;
        self.failures += u64::from(o.failed);
        self.slow += u64::from(o.slow);
    }

    fn add_counts(&mut self, other: &Counts) {
        self.calls += other.calls;
        self.failures += other.failures;
        self.slow += other.slow;
    }

    fn sub_counts(&mut self, other: &Counts) {
        self.calls -= other.calls;
        self.failures -= other.failures;
        self.slow -= other.slow;
    }

    pub fn failure_rate(&self) -> f64 {
        ratio(self.failures, self.calls)
    }

    pub fn slow_rate(&self) -> f64 {
        ratio(self.slow, self.calls)
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// The window of a Closed breaker.
#[derive(Debug, Clone)]
pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    pub fn count(size: usize) -> Self {
        Window::Count(CountWindow {
            size: size.max(1),
            ring: VecDeque::with_capacity(size.max(1)),
            totals: Counts::default(),
        })
    }

    pub fn time(duration: Duration) -> Self {
        let width = (duration / TIME_BUCKETS as u32).max(Duration::from_nanos(1));
        Window::Time(TimeWindow {
            width_nanos: width.as_nanos(),
            buckets: vec![Bucket::default(); TIME_BUCKETS],
            epoch: None,
            current: 0,
            totals: Counts::default(),
        })
    }

    /// Records one call finished at `now`; returns the totals afterwards.
    pub fn record(&mut self, now: Instant, o: Outcome) -> Counts {
        match self {
            Window::Count(w) => w.record(o),
            Window::Time(w) => w.record(now, o),
        }
    }

    /// Totals as of `now`, without mutating (calls that expired by `now` are
    /// left out).
    pub fn counts_at(&self, now: Instant) -> Counts {
        match self {
            Window::Count(w) => w.totals,
            Window::Time(w) => w.counts_at(now),
        }
    }

    pub fn clear(&mut self) {
        match self {
            Window::Count(w) => {
                w.ring.clear();
                w.totals = Counts::default();
            }
            Window::Time(w) => {
                w.buckets.iter_mut().for_each(|b| *b = Bucket::default());
                w.epoch = None;
                w.current = 0;
                w.totals = Counts::default();
            }
        }
    }
}

/// The last `size` calls.
#[derive(Debug, Clone)]
pub(crate) struct CountWindow {
    size: usize,
    ring: VecDeque<Outcome>,
    totals: Counts,
}

impl CountWindow {
    fn record(&mut self, o: Outcome) -> Counts {
        if self.ring.len() == self.size {
            if let Some(old) = self.ring.pop_front() {
                let mut c = Counts::default();
                c.add(old);
                self.totals.sub_counts(&c);
            }
        }
        self.ring.push_back(o);
        self.totals.add(o);
        self.totals
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Absolute bucket number (time since epoch / width) this slot holds.
    index: u64,
    counts: Counts,
}

/// Calls finished within the last `duration`, in [`TIME_BUCKETS`] buckets.
/// Bucket boundaries are aligned to the first call seen (`epoch`).
#[derive(Debug, Clone)]
pub(crate) struct TimeWindow {
    width_nanos: u128,
    buckets: Vec<Bucket>,
    epoch: Option<Instant>,
    /// Newest bucket number the totals are up to date with.
    current: u64,
    totals: Counts,
}

impl TimeWindow {
    fn bucket_of(&self, now: Instant) -> u64 {
        match self.epoch {
            None => 0,
            Some(epoch) => {
                let n = now.saturating_duration_since(epoch).as_nanos() / self.width_nanos;
                u64::try_from(n).unwrap_or(u64::MAX)
            }
        }
    }

    /// Moves the window to `now`, dropping expired buckets from the totals.
    /// A `now` earlier than the newest bucket is treated as the newest bucket.
    fn advance(&mut self, now: Instant) {
        if self.epoch.is_none() {
            self.epoch = Some(now);
        }
        let idx = self.bucket_of(now);
        if idx <= self.current {
            return;
        }
        let n = self.buckets.len() as u64;
        if idx - self.current >= n {
            self.buckets.iter_mut().for_each(|b| *b = Bucket::default());
            self.totals = Counts::default();
        } else {
            for b in self.current + 1..=idx {
                let slot = &mut self.buckets[(b % n) as usize];
                self.totals.sub_counts(&slot.counts);
                *slot = Bucket {
                    index: b,
                    counts: Counts::default(),
                };
            }
        }
        // Slots never written keep index 0 and empty counts, which is harmless.
        let slot = &mut self.buckets[(idx % n) as usize];
        slot.index = idx;
        self.current = idx;
    }

    fn record(&mut self, now: Instant, o: Outcome) -> Counts {
        self.advance(now);
        let n = self.buckets.len() as u64;
        let slot = &mut self.buckets[(self.current % n) as usize];
        slot.index = self.current;
        slot.counts.add(o);
        self.totals.add(o);
        self.totals
    }

    fn counts_at(&self, now: Instant) -> Counts {
        let idx = self.bucket_of(now);
        if idx <= self.current {
            return self.totals;
        }
        let n = self.buckets.len() as u64;
        let oldest_live = idx.saturating_sub(n - 1);
        let mut c = Counts::default();
        for b in &self.buckets {
            if b.index >= oldest_live && b.index <= self.current {
                c.add_counts(&b.counts);
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: Outcome = Outcome {
        failed: false,
        slow: false,
    };
    const FAIL: Outcome = Outcome {
        failed: true,
        slow: false,
    };

    #[test]
    fn count_window_keeps_last_n() {
        let t = Instant::now();
        let mut w = Window::count(3);
        w.record(t, FAIL);
        w.record(t, FAIL);
        w.record(t, OK);
        assert_eq!(w.counts_at(t).failures, 2);
        let c = w.record(t, OK);
        assert_eq!(c.calls, 3);
        assert_eq!(c.failures, 1);
        let c = w.record(t, OK);
        assert_eq!(c.failures, 0);
    }

    #[test]
    fn time_window_expires_calls() {
        let t = Instant::now();
        let d = Duration::from_secs(10);
        let mut w = Window::time(d);
        w.record(t, FAIL);
        w.record(t + Duration::from_secs(5), OK);
        assert_eq!(w.counts_at(t + Duration::from_secs(9)).calls, 2);
        // The first call has left the window by t + 10 s; the second has not.
        let at = t + d;
        assert_eq!(w.counts_at(at).calls, 1);
        assert_eq!(w.counts_at(at).failures, 0);
        let c = w.record(at, OK);
        assert_eq!((c.calls, c.failures), (2, 0));
        // Long silence empties everything.
        assert_eq!(w.counts_at(t + Duration::from_secs(100)).calls, 0);
        let c = w.record(t + Duration::from_secs(100), FAIL);
        assert_eq!((c.calls, c.failures), (1, 1));
    }

    #[test]
    fn time_window_counts_at_matches_advance() {
        let t = Instant::now();
        let mut w = Window::time(Duration::from_millis(640));
        for i in 0..200u64 {
            let now = t + Duration::from_millis(i * 7);
            let before = w.counts_at(now);
            let after = w.record(now, if i % 3 == 0 { FAIL } else { OK });
            assert_eq!(after.calls, before.calls + 1, "at step {i}");
        }
    }
}
