//! Cost of the breaker on the hot path: one `try_acquire` + `on_success`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use plexus_resilience::breaker::{BreakerConfig, CircuitBreaker, SlidingWindow};

fn acquire_and_succeed(c: &mut Criterion) {
    let mut group = c.benchmark_group("breaker");
    let windows = [
        ("count_window", SlidingWindow::Count(100)),
        ("time_window", SlidingWindow::Time(Duration::from_secs(10))),
    ];
    for (name, window) in windows {
        let mut b = CircuitBreaker::new(BreakerConfig {
            window,
            ..BreakerConfig::default()
        });
        let t0 = Instant::now();
        let mut tick = 0u64;
        group.bench_function(name, |bench| {
            bench.iter(|| {
                tick += 1;
                let now = t0 + Duration::from_micros(tick);
                let permit = b.try_acquire(black_box(now)).expect("closed");
                black_box(b.on_success(permit, now, Duration::from_millis(3)))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, acquire_and_succeed);
criterion_main!(benches);
