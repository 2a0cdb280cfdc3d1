use super::*;

const FAST: Duration = Duration::from_millis(10);
const SLOW: Duration = Duration::from_millis(2_000);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn cfg() -> BreakerConfig {
    BreakerConfig {
        failure_rate_threshold: 0.5,
        slow_call_rate_threshold: 0.8,
        slow_call_duration: ms(1_000),
        window: SlidingWindow::Count(10),
        minimum_calls: 4,
        wait_in_open: ms(5_000),
        permitted_calls_in_half_open: 3,
        max_wait_in_half_open: None,
    }
}

/// A breaker plus a clock, so tests read as scenarios.
struct Sim {
    b: CircuitBreaker,
    t0: Instant,
    now: Instant,
}

impl Sim {
    fn new(cfg: BreakerConfig) -> Self {
        let t0 = Instant::now();
        Sim {
            b: CircuitBreaker::new(cfg),
            t0,
            now: t0,
        }
    }
    fn advance(&mut self, d: Duration) {
        self.now += d;
    }
    fn ok(&mut self) -> Option<Transition> {
        let p = self.b.try_acquire(self.now).expect("permit");
        self.b.on_success(p, self.now, FAST)
    }
    fn fail(&mut self) -> Option<Transition> {
        let p = self.b.try_acquire(self.now).expect("permit");
        self.b.on_failure(p, self.now, FAST)
    }
    fn slow_ok(&mut self) -> Option<Transition> {
        let p = self.b.try_acquire(self.now).expect("permit");
        self.b.on_success(p, self.now, SLOW)
    }
    fn open_it(&mut self) -> Transition {
        self.fail();
        self.fail();
        self.ok();
        self.fail().expect("3 of 4 failed")
    }
}

#[test]
fn stays_closed_below_minimum_calls() {
    let mut s = Sim::new(cfg());
    assert_eq!(s.fail(), None);
    assert_eq!(s.fail(), None);
    assert_eq!(s.fail(), None, "3 calls < minimum 4: no decision yet");
    assert_eq!(s.b.state(), BreakerState::Closed);
    let t = s.fail().expect("4th call decides");
    assert_eq!(t.from, BreakerState::Closed);
    assert_eq!(t.to, BreakerState::Open);
    assert_eq!(
        t.reason,
        TransitionReason::FailureRate {
            rate: 1.0,
            threshold: 0.5
        }
    );
}

#[test]
fn opens_at_threshold_not_below() {
    let mut s = Sim::new(cfg());
    for _ in 0..6 {
        assert_eq!(s.ok(), None);
    }
    for _ in 0..4 {
        assert_eq!(s.fail(), None, "at most 4 of 10 failed");
    }
    // Window slides: the oldest success leaves, 5 of 10 failed.
    let t = s.fail().expect("5/10 = 0.5 ≥ threshold");
    assert_eq!(t.to, BreakerState::Open);
}

#[test]
fn open_rejects_with_retry_after_then_half_opens() {
    let mut s = Sim::new(cfg());
    s.open_it();
    s.advance(ms(2_000));
    let r = s.b.try_acquire(s.now).unwrap_err();
    assert_eq!(r.state, BreakerState::Open);
    assert_eq!(r.retry_after, Some(ms(3_000)));
    assert_eq!(s.b.state_at(s.now), BreakerState::Open);
    assert!(!s.b.is_call_permitted(s.now));

    s.advance(ms(3_000));
    assert_eq!(s.b.state(), BreakerState::Open, "lazy until asked");
    assert_eq!(s.b.state_at(s.now), BreakerState::HalfOpen);
    assert!(s.b.is_call_permitted(s.now));
    let p = s.b.try_acquire(s.now).expect("trial call");
    let t = p
        .transition()
        .expect("Open → HalfOpen reported with the permit");
    assert_eq!((t.from, t.to), (BreakerState::Open, BreakerState::HalfOpen));
    assert_eq!(t.reason, TransitionReason::WaitElapsed);
    s.b.release(p);
}

#[test]
fn half_open_success_closes_after_all_trials() {
    let mut s = Sim::new(cfg());
    s.open_it();
    s.advance(ms(5_000));
    let p1 = s.b.try_acquire(s.now).unwrap();
    let p2 = s.b.try_acquire(s.now).unwrap();
    let p3 = s.b.try_acquire(s.now).unwrap();
    let r = s.b.try_acquire(s.now).unwrap_err();
    assert_eq!(r.state, BreakerState::HalfOpen, "only 3 trial permits");
    assert_eq!(s.b.snapshot(s.now).trial_permits_left, Some(0));

    assert_eq!(s.b.on_success(p1, s.now, FAST), None);
    assert_eq!(s.b.on_success(p2, s.now, FAST), None);
    let t = s.b.on_success(p3, s.now, FAST).expect("closes");
    assert_eq!(
        (t.from, t.to),
        (BreakerState::HalfOpen, BreakerState::Closed)
    );
    assert_eq!(t.reason, TransitionReason::TrialsSucceeded);
    // The window starts empty: it takes minimum_calls again to open.
    assert_eq!(s.b.snapshot(s.now).calls, 0);
    assert_eq!(s.fail(), None);
    assert_eq!(s.fail(), None);
    assert_eq!(s.fail(), None);
    assert!(s.fail().is_some());
}

#[test]
fn half_open_failure_reopens() {
    let mut s = Sim::new(cfg());
    s.open_it();
    s.advance(ms(5_000));
    let p1 = s.b.try_acquire(s.now).unwrap();
    let p2 = s.b.try_acquire(s.now).unwrap();
    let p3 = s.b.try_acquire(s.now).unwrap();
    assert_eq!(s.b.on_success(p1, s.now, FAST), None);
    assert_eq!(s.b.on_failure(p2, s.now, FAST), None, "1/3 < 0.5");
    let t = s.b.on_failure(p3, s.now, FAST).expect("2/3 ≥ 0.5");
    assert_eq!((t.from, t.to), (BreakerState::HalfOpen, BreakerState::Open));
    assert!(matches!(t.reason, TransitionReason::FailureRate { .. }));
    // A full new wait before the next trial.
    s.advance(ms(4_999));
    assert!(s.b.try_acquire(s.now).is_err());
    s.advance(ms(1));
    assert!(s.b.try_acquire(s.now).is_ok());
    assert_eq!(s.b.snapshot(s.now).transitions.opened, 2);
    assert_eq!(s.b.snapshot(s.now).transitions.half_opened, 2);
}

#[test]
fn half_open_opens_early_once_outcome_is_certain() {
    let mut s = Sim::new(BreakerConfig {
        permitted_calls_in_half_open: 4,
        ..cfg()
    });
    s.open_it();
    s.advance(ms(5_000));
    let p1 = s.b.try_acquire(s.now).unwrap();
    let p2 = s.b.try_acquire(s.now).unwrap();
    let p3 = s.b.try_acquire(s.now).unwrap();
    assert_eq!(s.b.on_failure(p1, s.now, FAST), None);
    let t =
        s.b.on_failure(p2, s.now, FAST)
            .expect("2 of 4 trials failed already");
    assert_eq!(t.to, BreakerState::Open);
    // The late third trial belongs to the old generation and is ignored.
    assert_eq!(s.b.on_success(p3, s.now, FAST), None);
    assert_eq!(s.b.state(), BreakerState::Open);
}

#[test]
fn stale_permit_from_closed_does_not_count_as_trial() {
    let mut s = Sim::new(cfg());
    let long_call = s.b.try_acquire(s.now).unwrap();
    s.open_it();
    s.advance(ms(5_000));
    let trial = s.b.try_acquire(s.now).unwrap();
    // The call started while Closed ends now, failed: ignored.
    assert_eq!(s.b.on_failure(long_call, s.now, ms(6_000)), None);
    assert_eq!(s.b.state(), BreakerState::HalfOpen);
    assert_eq!(s.b.snapshot(s.now).calls, 0);
    assert_eq!(s.b.on_success(trial, s.now, FAST), None);
}

#[test]
fn release_frees_trial_slot() {
    let mut s = Sim::new(BreakerConfig {
        permitted_calls_in_half_open: 1,
        ..cfg()
    });
    s.open_it();
    s.advance(ms(5_000));
    let p = s.b.try_acquire(s.now).unwrap();
    assert!(s.b.try_acquire(s.now).is_err());
    s.b.release(p);
    let p = s.b.try_acquire(s.now).expect("slot freed");
    assert!(s.b.on_success(p, s.now, FAST).is_some());
    assert_eq!(s.b.state(), BreakerState::Closed);
}

#[test]
fn slow_calls_open_the_breaker() {
    let mut s = Sim::new(cfg());
    // 5 calls: 4 slow successes (0.8 ≥ 0.8) – only decided at minimum 4.
    assert_eq!(s.slow_ok(), None);
    assert_eq!(s.slow_ok(), None);
    assert_eq!(s.ok(), None);
    assert_eq!(s.slow_ok(), None, "3/4 slow < 0.8");
    let t = s.slow_ok().expect("4/5 slow ≥ 0.8");
    assert_eq!(t.to, BreakerState::Open);
    assert_eq!(
        t.reason,
        TransitionReason::SlowCallRate {
            rate: 0.8,
            threshold: 0.8
        }
    );
    let snap = s.b.snapshot(s.now);
    assert_eq!((snap.calls, snap.slow_calls, snap.failed_calls), (5, 4, 0));
}

#[test]
fn slow_is_strictly_longer_than_threshold() {
    let mut s = Sim::new(BreakerConfig {
        slow_call_rate_threshold: 0.1,
        minimum_calls: 1,
        ..cfg()
    });
    let p = s.b.try_acquire(s.now).unwrap();
    assert_eq!(
        s.b.on_success(p, s.now, ms(1_000)),
        None,
        "exactly at: not slow"
    );
    let p = s.b.try_acquire(s.now).unwrap();
    assert!(s.b.on_success(p, s.now, ms(1_001)).is_some());
}

#[test]
fn half_open_slow_trials_reopen() {
    let mut s = Sim::new(cfg());
    s.open_it();
    s.advance(ms(5_000));
    let ps: Vec<_> = (0..3).map(|_| s.b.try_acquire(s.now).unwrap()).collect();
    let mut last = None;
    for p in ps {
        last = s.b.on_success(p, s.now, SLOW);
    }
    let t = last.expect("3/3 slow ≥ 0.8");
    assert_eq!(t.to, BreakerState::Open);
    assert!(matches!(t.reason, TransitionReason::SlowCallRate { .. }));
}

#[test]
fn time_window_forgets_old_failures() {
    let mut s = Sim::new(BreakerConfig {
        window: SlidingWindow::Time(ms(10_000)),
        minimum_calls: 4,
        ..cfg()
    });
    // Three failures, then quiet for longer than the window.
    s.fail();
    s.fail();
    s.fail();
    s.advance(ms(10_001));
    assert_eq!(s.b.snapshot(s.now).calls, 0);
    // Three successes and one failure: 1/4 < 0.5, the old failures are gone.
    s.ok();
    s.ok();
    s.ok();
    assert_eq!(s.fail(), None);
    assert_eq!(s.b.state(), BreakerState::Closed);
    // Failures within the window do count.
    s.advance(ms(1_000));
    assert_eq!(s.fail(), None, "2/5");
    let t = s.fail().expect("3/6 ≥ 0.5");
    assert_eq!(t.to, BreakerState::Open);
}

#[test]
fn time_window_minimum_calls_counts_only_recent() {
    let mut s = Sim::new(BreakerConfig {
        window: SlidingWindow::Time(ms(1_000)),
        minimum_calls: 3,
        ..cfg()
    });
    // One failure every 600 ms: never 3 calls within a second.
    for _ in 0..10 {
        assert_eq!(s.fail(), None);
        s.advance(ms(600));
    }
    assert_eq!(s.b.state(), BreakerState::Closed);
}

#[test]
fn half_open_times_out_back_to_open() {
    let mut s = Sim::new(BreakerConfig {
        max_wait_in_half_open: Some(ms(1_000)),
        ..cfg()
    });
    s.open_it();
    s.advance(ms(5_000));
    let lost: Vec<_> = (0..3).map(|_| s.b.try_acquire(s.now).unwrap()).collect();
    s.advance(ms(400));
    let r = s.b.try_acquire(s.now).unwrap_err();
    assert_eq!(r.retry_after, Some(ms(600)));
    s.advance(ms(600));
    assert_eq!(s.b.state_at(s.now), BreakerState::Open);
    let t = s.b.poll(s.now).expect("timed out");
    assert_eq!(t.reason, TransitionReason::HalfOpenTimedOut);
    assert_eq!(t.to, BreakerState::Open);
    // Replies that finally arrive are stale.
    for p in lost {
        assert_eq!(s.b.on_success(p, s.now, FAST), None);
    }
    assert_eq!(s.b.state(), BreakerState::Open);
}

#[test]
fn force_open_and_reset() {
    let mut s = Sim::new(cfg());
    let in_flight = s.b.try_acquire(s.now).unwrap();
    let t = s.b.force_open(s.now).unwrap();
    assert_eq!(t.to, BreakerState::ForcedOpen);
    assert_eq!(s.b.force_open(s.now), None);
    s.advance(ms(1_000_000));
    let r = s.b.try_acquire(s.now).unwrap_err();
    assert_eq!((r.state, r.retry_after), (BreakerState::ForcedOpen, None));
    assert_eq!(s.b.on_failure(in_flight, s.now, FAST), None);
    let t = s.b.reset(s.now).unwrap();
    assert_eq!(
        (t.from, t.to),
        (BreakerState::ForcedOpen, BreakerState::Closed)
    );
    assert_eq!(s.b.reset(s.now), None);
    assert!(s.ok().is_none());
    let snap = s.b.snapshot(s.now);
    assert_eq!(snap.transitions.forced_open, 1);
    assert_eq!(snap.transitions.closed, 1);
    assert_eq!(snap.rejected_calls, 1);
}

#[test]
fn reset_clears_window() {
    let mut s = Sim::new(cfg());
    s.fail();
    s.fail();
    s.fail();
    assert_eq!(s.b.reset(s.now), None);
    assert_eq!(s.fail(), None, "window was emptied: 1 call < minimum");
}

#[test]
fn snapshot_serializes() {
    let mut s = Sim::new(cfg());
    s.open_it();
    s.advance(ms(1_500));
    let snap = s.b.snapshot(s.now);
    assert_eq!(snap.state, BreakerState::Open);
    assert_eq!(snap.failure_rate, 0.75);
    assert_eq!(snap.opened_ms_ago, Some(1_500));
    assert_eq!(snap.retry_after_ms, Some(3_500));
    let json = serde_json::to_value(&snap).unwrap();
    assert_eq!(json["state"], "open");
    assert_eq!(json["calls"], 4);
    assert_eq!(json["transitions"]["opened"], 1);
    let back: BreakerSnapshot = serde_json::from_value(json).unwrap();
    assert_eq!(back, snap);
    assert_eq!(s.t0 + ms(1_500), s.now);
}

#[test]
fn from_spec_maps_and_sanitizes() {
    let spec = CircuitBreakerSpec {
        failure_rate_threshold: 1.7,
        slow_call_rate_threshold: f64::NAN,
        slow_call_duration_ms: 250,
        monitoring_window: 5,
        minimum_calls: 9,
        timeout_ms: 30_000,
        half_open_retries: 0,
    };
    let c = BreakerConfig::from_spec(&spec);
    assert_eq!(c.failure_rate_threshold, 1.0);
    assert_eq!(c.slow_call_rate_threshold, 1.0);
    assert_eq!(c.slow_call_duration, ms(250));
    assert_eq!(c.window, SlidingWindow::Count(5));
    assert_eq!(c.minimum_calls, 5, "capped at the window size");
    assert_eq!(c.wait_in_open, ms(30_000));
    assert_eq!(c.permitted_calls_in_half_open, 1);
    assert_eq!(c.max_wait_in_half_open, Some(ms(30_000)));

    let d = BreakerConfig::default();
    assert_eq!(d.window, SlidingWindow::Count(20));
    assert_eq!(d.minimum_calls, 5);
    assert_eq!(d.permitted_calls_in_half_open, 3);
}

#[test]
fn zero_threshold_means_any_failure() {
    let mut s = Sim::new(BreakerConfig {
        failure_rate_threshold: 0.0,
        minimum_calls: 2,
        ..cfg()
    });
    assert_eq!(s.ok(), None);
    assert_eq!(s.ok(), None, "no failures: never opens");
    assert!(s.fail().is_some());
}
