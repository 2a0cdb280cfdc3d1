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

criterion_group!(benches, trie, publish_deliver);
criterion_main!(benches);
