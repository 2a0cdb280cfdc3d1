//! A Resilience4j-style circuit breaker, driven by an explicit clock.
//!
//! ```text
//!            failure or slow-call rate ≥ threshold
//!            (after minimum_calls in the window)
//!   Closed ───────────────────────────────────────▶ Open
//!     ▲                                              │ wait_in_open elapsed
//!     │ all trial calls in, rates below thresholds   ▼ (checked lazily)
//!     └──────────────────────────────────────── HalfOpen ──▶ Open
//!                                       trial rate ≥ threshold, or
//!                                       max_wait_in_half_open elapsed
//! ```
//!
//! `force_open` moves to `ForcedOpen` (rejects everything until `reset`).
//!
//! Every call is bracketed: [`CircuitBreaker::try_acquire`] hands out a
//! [`Permit`], and the permit is given back with [`CircuitBreaker::on_success`],
//! [`CircuitBreaker::on_failure`] or [`CircuitBreaker::release`] (call not
//! made). A permit carries the breaker's generation, so a result that comes
//! back after the breaker has changed state (a slow call started while Closed
//! that ends during HalfOpen) is ignored instead of being counted as a trial
//! call.
//!
//! Whenever the state changes, the method that changed it returns the
//! [`Transition`], so the owning actor can publish it.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use plexus_resilience::breaker::{BreakerConfig, BreakerState, CircuitBreaker, SlidingWindow};
//!
//! let cfg = BreakerConfig {
//!     window: SlidingWindow::Count(4),
//!     minimum_calls: 4,
//!     failure_rate_threshold: 0.5,
//!     ..BreakerConfig::default()
//! };
//! let mut b = CircuitBreaker::new(cfg);
//! let t0 = Instant::now();
//! let ms = Duration::from_millis;
//! for _ in 0..2 {
//!     let p = b.try_acquire(t0).unwrap();
//!     assert!(b.on_success(p, t0, ms(5)).is_none());
//! }
//! let p = b.try_acquire(t0).unwrap();
//! assert!(b.on_failure(p, t0, ms(5)).is_none());
//! let p = b.try_acquire(t0).unwrap();
//! let t = b.on_failure(p, t0, ms(5)).expect("2 of 4 failed: opens");
//! assert_eq!((t.from, t.to), (BreakerState::Closed, BreakerState::Open));
//! assert!(b.try_acquire(t0).is_err());
//! ```

mod window;

use std::time::{Duration, Instant};

use plexus_catalog::CircuitBreakerSpec;
use serde::{Deserialize, Serialize};

use window::{Counts, Outcome, Window};

/// Which calls the rates are computed over while Closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SlidingWindow {
    /// The last N calls (N ≥ 1).
    Count(u32),
    /// The calls that finished within the last duration (kept in 64 buckets,
    /// so a call leaves between 63/64 and 64/64 of the duration after it ended).
    Time(Duration),
}

/// Breaker settings. Out-of-range values are clamped by
/// [`CircuitBreaker::new`] (see [`BreakerConfig::sanitized`]).
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Failure rate (0–1) in the window at or above which the breaker opens.
    /// The breaker never opens on a window without failures, so 0 means
    /// "any failure opens".
    pub failure_rate_threshold: f64,
    /// Slow-call rate (0–1) at or above which the breaker opens. Failed slow
    /// calls count as slow too.
    pub slow_call_rate_threshold: f64,
    /// A call that took strictly longer than this is slow.
    pub slow_call_duration: Duration,
    pub window: SlidingWindow,
    /// No decision before this many calls are in the window. For a
    /// count-based window it is capped at the window size.
    pub minimum_calls: u32,
    /// How long Open lasts before a trial call is let through.
    pub wait_in_open: Duration,
    /// Trial calls allowed in one HalfOpen episode (all may run at once).
    pub permitted_calls_in_half_open: u32,
    /// If the trial calls have not all reported after this long in HalfOpen
    /// (lost replies), go back to Open. `None` waits forever.
    pub max_wait_in_half_open: Option<Duration>,
}

impl Default for BreakerConfig {
    /// The manifest defaults ([`CircuitBreakerSpec::default`]).
    fn default() -> Self {
        BreakerConfig::from_spec(&CircuitBreakerSpec::default())
    }
}

impl BreakerConfig {
    /// Settings from a plugin manifest. The manifest's window is count-based
    /// (`monitoring_window` calls); `max_wait_in_half_open` is set to the
    /// larger of `timeout_ms` and `slow_call_duration_ms`, so a HalfOpen
    /// episode whose trial replies are lost does not block the plugin forever.
    pub fn from_spec(spec: &CircuitBreakerSpec) -> Self {
        BreakerConfig {
            failure_rate_threshold: spec.failure_rate_threshold,
            slow_call_rate_threshold: spec.slow_call_rate_threshold,
            slow_call_duration: Duration::from_millis(spec.slow_call_duration_ms),
            window: SlidingWindow::Count(spec.monitoring_window),
            minimum_calls: spec.minimum_calls,
            wait_in_open: Duration::from_millis(spec.timeout_ms),
            permitted_calls_in_half_open: spec.half_open_retries,
            max_wait_in_half_open: Some(Duration::from_millis(
                spec.timeout_ms.max(spec.slow_call_duration_ms),
            )),
        }
        .sanitized()
    }

    /// The same settings with every value brought into range: thresholds
    /// clamped to 0–1 (NaN becomes 1), window size, minimum calls and
    /// permitted trial calls at least 1, a time window at least 1 ms, and
    /// `minimum_calls` at most a count window's size.
    pub fn sanitized(mut self) -> Self {
        fn unit(x: f64) -> f64 {
            if x.is_nan() {
                1.0
            } else {
                x.clamp(0.0, 1.0)
            }
        }
        self.failure_rate_threshold = unit(self.failure_rate_threshold);
        self.slow_call_rate_threshold = unit(self.slow_call_rate_threshold);
        self.window = match self.window {
            SlidingWindow::Count(n) => SlidingWindow::Count(n.max(1)),
            SlidingWindow::Time(d) => SlidingWindow::Time(d.max(Duration::from_millis(1))),
        };
        self.minimum_calls = self.minimum_calls.max(1);
        if let SlidingWindow::Count(n) = self.window {
            self.minimum_calls = self.minimum_calls.min(n);
        }
        self.permitted_calls_in_half_open = self.permitted_calls_in_half_open.max(1);
        self
    }
}

/// The breaker's externally visible state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
    /// Opened by [`CircuitBreaker::force_open`]; stays until
    /// [`CircuitBreaker::reset`].
    ForcedOpen,
}

impl BreakerState {
    /// Whether calls can never get through in this state (Open or ForcedOpen).
    pub fn is_open(self) -> bool {
        matches!(self, BreakerState::Open | BreakerState::ForcedOpen)
    }
}

/// Why the state changed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TransitionReason {
    /// The failure rate over the window (Closed) or over the trial calls
    /// (HalfOpen) reached the threshold.
    FailureRate {
        rate: f64,
        threshold: f64,
    },
    /// The slow-call rate reached its threshold.
    SlowCallRate {
        rate: f64,
        threshold: f64,
    },
    /// Open lasted `wait_in_open`.
    WaitElapsed,
    /// Every trial call reported and the rates stayed below the thresholds.
    TrialsSucceeded,
    /// The trial calls did not all report within `max_wait_in_half_open`.
    HalfOpenTimedOut,
    Forced,
    Reset,
}

/// A state change, returned by the method that caused it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
    pub reason: TransitionReason,
    pub at: Instant,
}

/// Leave to make one call. Give it back with `on_success`, `on_failure` or
/// `release`; a permit that is dropped instead holds a HalfOpen trial slot
/// until `max_wait_in_half_open`.
#[must_use = "report the call's outcome with on_success/on_failure, or release the permit"]
#[derive(Debug)]
pub struct Permit {
    generation: u64,
    transition: Option<Transition>,
}

impl Permit {
    /// The transition `try_acquire` made before granting (Open → HalfOpen).
    pub fn transition(&self) -> Option<Transition> {
        self.transition
    }
}

/// The call may not be made now.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("circuit breaker {state:?}: call not permitted")]
pub struct Rejected {
    pub state: BreakerState,
    /// When a call may next be permitted: exact when Open; when HalfOpen, the
    /// time left before the episode times out (if `max_wait_in_half_open`);
    /// `None` when ForcedOpen or unknown.
    pub retry_after: Option<Duration>,
    /// The transition `try_acquire` made before rejecting (HalfOpen → Open on
    /// timeout).
    pub transition: Option<Transition>,
}

/// How many times each kind of transition happened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransitionCounts {
    /// Closed/HalfOpen → Open.
    pub opened: u64,
    /// Open → HalfOpen.
    pub half_opened: u64,
    /// → Closed (trials succeeded or reset).
    pub closed: u64,
    /// → ForcedOpen.
    pub forced_open: u64,
}

/// A serializable picture of the breaker, for status endpoints and events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BreakerSnapshot {
    /// State as of `now` (Open whose wait has elapsed shows as HalfOpen).
    pub state: BreakerState,
    /// Rates and counts over the calls that decide the current state: the
    /// window when Closed, the trial calls when HalfOpen, the calls that
    /// opened the breaker when Open.
    pub failure_rate: f64,
    pub slow_call_rate: f64,
    pub calls: u64,
    pub failed_calls: u64,
    pub slow_calls: u64,
    /// How long ago the breaker last opened (`Instant`s do not serialize).
    pub opened_ms_ago: Option<u64>,
    /// When Open: how long until a trial call is let through.
    pub retry_after_ms: Option<u64>,
    /// When HalfOpen: trial permits not yet handed out.
    pub trial_permits_left: Option<u32>,
    pub rejected_calls: u64,
    pub transitions: TransitionCounts,
}

#[derive(Debug, Clone)]
enum Inner {
    Closed,
    Open {
        until: Instant,
        /// What opened it, for the snapshot.
        counts: Counts,
    },
    HalfOpen {
        since: Instant,
        issued: u32,
        results: Counts,
    },
    ForcedOpen,
}

/// The breaker. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    inner: Inner,
    window: Window,
    /// Bumped on every transition; permits from another generation are stale.
    generation: u64,
    opened_at: Option<Instant>,
    rejected: u64,
    transitions: TransitionCounts,
}

impl CircuitBreaker {
    pub fn new(config: BreakerConfig) -> Self {
        let config = config.sanitized();
        let window = match config.window {
            SlidingWindow::Count(n) => Window::count(n as usize),
            SlidingWindow::Time(d) => Window::time(d),
        };
        CircuitBreaker {
            config,
            inner: Inner::Closed,
            window,
            generation: 0,
            opened_at: None,
            rejected: 0,
            transitions: TransitionCounts::default(),
        }
    }

    pub fn from_spec(spec: &CircuitBreakerSpec) -> Self {
        CircuitBreaker::new(BreakerConfig::from_spec(spec))
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The stored state. An Open breaker whose wait has elapsed still reports
    /// Open until something (`try_acquire`, `poll`) moves it; use
    /// [`state_at`](Self::state_at) for the effective state.
    pub fn state(&self) -> BreakerState {
        match self.inner {
            Inner::Closed => BreakerState::Closed,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
            Inner::ForcedOpen => BreakerState::ForcedOpen,
        }
    }

    /// The state a call at `now` would see, without changing anything.
    pub fn state_at(&self, now: Instant) -> BreakerState {
        match self.inner {
            Inner::Open { until, .. } if now >= until => BreakerState::HalfOpen,
            Inner::HalfOpen { since, .. } if self.half_open_expired(since, now) => {
                BreakerState::Open
            }
            _ => self.state(),
        }
    }

    /// Whether `try_acquire(now)` would grant a permit, without changing
    /// anything.
    pub fn is_call_permitted(&self, now: Instant) -> bool {
        match self.inner {
            Inner::Closed => true,
            Inner::Open { until, .. } => now >= until,
            Inner::HalfOpen { since, issued, .. } => {
                !self.half_open_expired(since, now)
                    && issued < self.config.permitted_calls_in_half_open
            }
            Inner::ForcedOpen => false,
        }
    }

    /// Applies the time-driven transitions due at `now`: Open → HalfOpen
    /// once `wait_in_open` has elapsed, HalfOpen → Open once
    /// `max_wait_in_half_open` has. `try_acquire` calls this itself; an actor
    /// may also call it from a timer to publish the change promptly.
    pub fn poll(&mut self, now: Instant) -> Option<Transition> {
        match self.inner {
            Inner::Open { until, .. } if now >= until => Some(self.enter_half_open(now)),
            Inner::HalfOpen { since, results, .. } if self.half_open_expired(since, now) => {
                Some(self.enter_open(now, results, TransitionReason::HalfOpenTimedOut))
            }
            _ => None,
        }
    }

    /// Asks to make one call at `now`.
    pub fn try_acquire(&mut self, now: Instant) -> Result<Permit, Rejected> {
        let transition = self.poll(now);
        let permitted = self.config.permitted_calls_in_half_open;
        let retry_after = match &mut self.inner {
            Inner::Closed => None,
            Inner::HalfOpen { issued, .. } if *issued < permitted => {
                *issued += 1;
                None
            }
            Inner::HalfOpen { since, .. } => Some(
                self.config
                    .max_wait_in_half_open
                    .map(|w| (*since + w).saturating_duration_since(now)),
            ),
            Inner::Open { until, .. } => Some(Some(until.saturating_duration_since(now))),
            Inner::ForcedOpen => Some(None),
        };
        match retry_after {
            None => Ok(Permit {
                generation: self.generation,
                transition,
            }),
            Some(retry_after) => {
                self.rejected += 1;
                Err(Rejected {
                    state: self.state(),
                    retry_after,
                    transition,
                })
            }
        }
    }

    /// Reports that the permitted call succeeded after `duration`.
    pub fn on_success(
        &mut self,
        permit: Permit,
        now: Instant,
        duration: Duration,
    ) -> Option<Transition> {
        self.on_result(permit, now, duration, false)
    }

    /// Reports that the permitted call failed after `duration` (timeouts are
    /// failures too: pass the time waited).
    pub fn on_failure(
        &mut self,
        permit: Permit,
        now: Instant,
        duration: Duration,
    ) -> Option<Transition> {
        self.on_result(permit, now, duration, true)
    }

    /// Gives back a permit whose call was never made, freeing its HalfOpen
    /// trial slot.
    pub fn release(&mut self, permit: Permit) {
        if permit.generation != self.generation {
            return;
        }
        if let Inner::HalfOpen { issued, .. } = &mut self.inner {
            *issued = issued.saturating_sub(1);
        }
    }

    /// Opens the breaker until [`reset`](Self::reset).
    pub fn force_open(&mut self, now: Instant) -> Option<Transition> {
        if matches!(self.inner, Inner::ForcedOpen) {
            return None;
        }
        self.opened_at = Some(now);
        self.transitions.forced_open += 1;
        Some(self.transition(now, Inner::ForcedOpen, TransitionReason::Forced))
    }

    /// Back to Closed with an empty window. Returns `None` (but still empties
    /// the window) if already Closed.
    pub fn reset(&mut self, now: Instant) -> Option<Transition> {
        self.window.clear();
        if matches!(self.inner, Inner::Closed) {
            return None;
        }
        self.transitions.closed += 1;
        Some(self.transition(now, Inner::Closed, TransitionReason::Reset))
    }

    pub fn snapshot(&self, now: Instant) -> BreakerSnapshot {
        let counts = match self.inner {
            Inner::Closed => self.window.counts_at(now),
            Inner::Open { counts, .. } => counts,
            Inner::HalfOpen { results, .. } => results,
            Inner::ForcedOpen => Counts::default(),
        };
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        BreakerSnapshot {
            state: self.state_at(now),
            failure_rate: counts.failure_rate(),
            slow_call_rate: counts.slow_rate(),
            calls: counts.calls,
            failed_calls: counts.failures,
            slow_calls: counts.slow,
            opened_ms_ago: self
                .opened_at
                .filter(|_| self.state() != BreakerState::Closed)
                .map(|at| ms(now.saturating_duration_since(at))),
            retry_after_ms: match self.inner {
                Inner::Open { until, .. } => Some(ms(until.saturating_duration_since(now))),
                _ => None,
            },
            trial_permits_left: match self.inner {
                Inner::HalfOpen { issued, .. } => Some(
                    self.config
                        .permitted_calls_in_half_open
                        .saturating_sub(issued),
                ),
                _ => None,
            },
            rejected_calls: self.rejected,
            transitions: self.transitions,
        }
    }

    fn half_open_expired(&self, since: Instant, now: Instant) -> bool {
        self.config
            .max_wait_in_half_open
            .is_some_and(|w| now >= since + w)
    }

    fn on_result(
        &mut self,
        permit: Permit,
        now: Instant,
        duration: Duration,
        failed: bool,
    ) -> Option<Transition> {
        if permit.generation != self.generation {
            // Started under another state: it says nothing about this one.
            return None;
        }
        let outcome = Outcome {
            failed,
            slow: duration > self.config.slow_call_duration,
        };
        match &mut self.inner {
            Inner::Closed => {
                let counts = self.window.record(now, outcome);
                if counts.calls < u64::from(self.config.minimum_calls) {
                    return None;
                }
                let reason = self.trip_reason(counts, counts.calls)?;
                Some(self.enter_open(now, counts, reason))
            }
            Inner::HalfOpen { results, .. } => {
                results.add(outcome);
                let results = *results;
                let permitted = u64::from(self.config.permitted_calls_in_half_open);
                // Rates are over all permitted trial calls, so enough failures
                // open the breaker before the remaining trials report.
                if let Some(reason) = self.trip_reason(results, permitted) {
                    Some(self.enter_open(now, results, reason))
                } else if results.calls >= permitted {
                    self.window.clear();
                    self.transitions.closed += 1;
                    Some(self.transition(now, Inner::Closed, TransitionReason::TrialsSucceeded))
                } else {
                    None
                }
            }
            // Same generation cannot be Open: every transition bumps it.
            Inner::Open { .. } | Inner::ForcedOpen => None,
        }
    }

    fn trip_reason(&self, counts: Counts, over: u64) -> Option<TransitionReason> {
        let over = over.max(1) as f64;
        let failure_rate = counts.failures as f64 / over;
        let slow_rate = counts.slow as f64 / over;
        if counts.failures > 0 && failure_rate >= self.config.failure_rate_threshold {
            Some(TransitionReason::FailureRate {
                rate: failure_rate,
                threshold: self.config.failure_rate_threshold,
            })
        } else if counts.slow > 0 && slow_rate >= self.config.slow_call_rate_threshold {
            Some(TransitionReason::SlowCallRate {
                rate: slow_rate,
                threshold: self.config.slow_call_rate_threshold,
            })
        } else {
            None
        }
    }

    fn enter_open(&mut self, now: Instant, counts: Counts, reason: TransitionReason) -> Transition {
        self.opened_at = Some(now);
        self.transitions.opened += 1;
        let until = now + self.config.wait_in_open;
        self.transition(now, Inner::Open { until, counts }, reason)
    }

    fn enter_half_open(&mut self, now: Instant) -> Transition {
        self.transitions.half_opened += 1;
        let inner = Inner::HalfOpen {
            since: now,
            issued: 0,
            results: Counts::default(),
        };
        self.transition(now, inner, TransitionReason::WaitElapsed)
    }

    fn transition(&mut self, now: Instant, to: Inner, reason: TransitionReason) -> Transition {
        let from = self.state();
        self.inner = to;
        self.generation += 1;
        Transition {
            from,
            to: self.state(),
            reason,
            at: now,
        }
    }
}

#[cfg(test)]
mod tests;
