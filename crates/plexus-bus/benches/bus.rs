//! Topic matching and in-node publish→deliver.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use plexus_bus::{Bus, BusConfig, Envelope, MessageKind, TopicTrie};

fn trie(c: &mut Criterion) {
    let mut t = TopicTrie::new();
    let plugins = ["jira", "exec", "ha", "fp", "acc", "lobbi"];
    let mut id = 0u32;
    for p in plugins {
        for leaf in ["request", "response", "events", "status"] {
            t.insert(&format!("plugin/{p}/{leaf}"), id);
            id += 1;
        }
    }
    for pat in [
        "plugin/*/events",
        "plugin/**",
        "system/*",
        "**/status",
        "routing/decision",
    ] {
        t.insert(pat, id);
        id += 1;
    }
    let mut g = c.benchmark_group("topic");
    g.throughput(Throughput::Elements(1));
    g.bench_function("match_29_patterns", |b| {
        let mut n = 0usize;
        b.iter(|| {
            t.for_each_match("plugin/jira/events", |_| n += 1);
        })
    });
    g.bench_function("reference_match", |b| {
        b.iter(|| plexus_bus::matches("plugin/*/events", "plugin/jira/events"))
    });
    g.finish();
}

fn publish_deliver(c: &mut Criterion) {
    let bus = Bus::new(BusConfig::new("bench"));
    let sub = bus.subscribe("plugin/*/events", "bench").unwrap();
    let _noise: Vec<_> = (0..50)
        .map(|i| bus.subscribe(&format!("other/{i}/**"), "noise").unwrap())
        .collect();
    let mut g = c.benchmark_group("bus");
    g.throughput(Throughput::Elements(1));
    g.bench_function("publish_deliver_small", |b| {
        b.iter_batched(
            || {
                Envelope::new(
                    MessageKind::Event,
                    "plugin/jira/events",
                    "bench",
                    b"{\"n\":1}".to_vec(),
                )
            },
            |e| {
                bus.publish(e).unwrap();
                sub.try_recv().unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// Publisher on this thread, subscriber task on a runtime worker (as in
/// `plexus bench`'s `bus.inproc.max`): a batch of 10,000 events built with
/// `Envelope::new` and published, timed until the subscriber has all.
fn publish_deliver_across_threads(c: &mut Criterion) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    const BATCH: u64 = 10_000;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // Room for a whole batch: nothing is dead-lettered, so every event arrives.
    let mut cfg = BusConfig::new("bench");
    cfg.mailbox_capacity = 4 * BATCH as usize;
    let bus = Bus::new(cfg);
    let _noise: Vec<_> = (0..50)
        .map(|i| bus.subscribe(&format!("other/{i}/**"), "noise").unwrap())
        .collect();
    let sub = bus.subscribe("plugin/*/events", "bench").unwrap();
    let got = Arc::new(AtomicU64::new(0));
    let seen = got.clone();
    rt.spawn(async move {
        while let Some(e) = sub.recv().await {
            std::hint::black_box(&e);
            seen.fetch_add(1, Ordering::Release);
        }
    });
    let mut g = c.benchmark_group("bus");
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function("publish_deliver_cross_thread_10k", |b| {
        b.iter(|| {
            let start = got.load(Ordering::Acquire);
            for i in 0..BATCH {
                let e = Envelope::new(
                    MessageKind::Event,
                    "plugin/bench/events",
                    "bench",
                    i.to_le_bytes().to_vec(),
                );
                bus.publish(e).unwrap();
            }
            while got.load(Ordering::Acquire) < start + BATCH {
                std::hint::spin_loop();
            }
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    trie,
    publish_deliver,
    publish_deliver_across_threads
);
criterion_main!(benches);
