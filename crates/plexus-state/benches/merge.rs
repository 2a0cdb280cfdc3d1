//! Criterion benches of the state core: merging two replicas of 1,000 keys,
//! a full anti-entropy round, digest computation, delta batch encoding, and
//! the join of two 10,000-field maps.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use plexus_state::{
    pack_deltas, Access, Delta, Kind, LocalOp, Store, StoreConfig, SyncItem, Value,
};

const NOW: u64 = 1_700_000_000_000;

/// Two replicas holding the same 1,000 keys (registers, counters, sets,
/// maps), each with its own concurrent changes on every key.
fn replicas(keys: usize) -> (Store, Store, Vec<Delta>) {
    let cfg = StoreConfig::default();
    let mut a = Store::new("node-a", cfg.clone());
    let mut b = Store::new("node-b", cfg);
    let mut fresh = Vec::new();
    for i in 0..keys {
        let key = format!("ctx/plugin-{}/key-{i}", i % 6);
        let kind = [Kind::Lww, Kind::PnCounter, Kind::Set, Kind::Map][i % 4];
        let c = a
            .create("jira-orchestrator", &key, kind, Access::Public, None, NOW)
            .expect("create");
        for d in c.deltas {
            b.apply_remote(d, NOW).expect("delta");
        }
        for (s, tag) in [(&mut a, "a"), (&mut b, "b")] {
            let op = match kind {
                Kind::Lww => LocalOp::Put(format!("{{\"by\":\"{tag}\",\"i\":{i}}}")),
                Kind::PnCounter => LocalOp::Incr(i as u64 + 1),
                Kind::Set => LocalOp::Add(vec![format!("{tag}-{i}"), format!("shared-{}", i % 10)]),
                _ => LocalOp::MapPut {
                    field: format!("f-{tag}"),
                    value: format!("{i}"),
                },
            };
            let c = s
                .apply_local("jira-orchestrator", &key, op, NOW + 1)
                .expect("op");
            if tag == "a" {
                fresh.extend(c.deltas);
            }
        }
    }
    (a, b, fresh)
}

fn whole_states(s: &Store) -> Vec<SyncItem> {
    s.states()
        .map(|(k, st)| SyncItem::State {
            key: k.clone(),
            state: st.clone(),
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let (a, b, fresh) = replicas(1_000);

    c.bench_function("merge two replicas, 1000 keys (whole states)", |bench| {
        let items = whole_states(&a);
        bench.iter_batched(
            || (b.clone(), items.clone()),
            |(mut b, items)| {
                let (events, rejected) = b.apply_items("node-a", items, NOW + 2);
                assert!(rejected.is_empty());
                (b, events) // dropped outside the measurement
            },
            BatchSize::LargeInput,
        )
    });

    c.bench_function("merge two replicas, 1000 keys (deltas)", |bench| {
        let items: Vec<SyncItem> = fresh.iter().cloned().map(SyncItem::Delta).collect();
        bench.iter_batched(
            || (b.clone(), items.clone()),
            |(mut b, items)| {
                let events = b.apply_items("node-a", items, NOW + 2).0;
                (b, events)
            },
            BatchSize::LargeInput,
        )
    });

    c.bench_function(
        "anti-entropy round, 1000 keys all differing (encode+decode)",
        |bench| {
            bench.iter_batched(
                || (a.clone(), b.clone()),
                |(mut a, mut b)| {
                    let max = 1 << 20;
                    let mut queue = vec![(true, a.gossip_digest())];
                    let mut bytes = 0;
                    while let Some((to_b, msg)) = queue.pop() {
                        let wire = msg.encode(max).expect("encode");
                        bytes += wire.len();
                        let msg = plexus_state::GossipMsg::decode(&wire, max).expect("decode");
                        let (to, from) = if to_b {
                            (&mut b, "node-a")
                        } else {
                            (&mut a, "node-b")
                        };
                        let out = to.handle_gossip(from, msg, NOW + 2, max);
                        queue.extend(out.replies.into_iter().map(|m| (!to_b, m)));
                    }
                    assert_eq!(a.digest(), b.digest());
                    (a, b, bytes)
                },
                BatchSize::LargeInput,
            )
        },
    );

    c.bench_function("digest, 1000 keys", |bench| bench.iter(|| a.digest()));
    let (big, _, _) = replicas(10_000);
    c.bench_function("digest, 10000 keys", |bench| bench.iter(|| big.digest()));
    c.bench_function("digest exchange, 1000 keys, one key differs", |bench| {
        let mut b2 = a.clone();
        b2.incr("jira-orchestrator", "ctx/plugin-1/key-1", 1, NOW + 3)
            .expect("incr");
        bench.iter(|| {
            let diff = b2.digest().differing(&a.digest());
            let kd = a.key_digest(&diff);
            b2.missing_for(&kd).len()
        })
    });

    c.bench_function(
        "delta batch encode, 1000 deltas, 64 KiB messages",
        |bench| {
            bench.iter_batched(
                || fresh.clone(),
                |ds| {
                    let packed = pack_deltas(ds, 64 * 1024);
                    packed
                        .messages
                        .iter()
                        .map(|m| m.encode(64 * 1024).expect("encode").len())
                        .sum::<usize>()
                },
                BatchSize::LargeInput,
            )
        },
    );

    // Two replicas of one map entry with 10,000 fields, 100 of them
    // changed concurrently on each side.
    let mut m = Store::new("node-a", StoreConfig::default());
    m.create("p", "map", Kind::Map, Access::Public, None, NOW)
        .expect("create");
    for i in 0..10_000 {
        m.apply_local(
            "p",
            "map",
            LocalOp::MapIncr {
                field: format!("f{i}"),
                by: 1,
            },
            NOW,
        )
        .expect("map");
    }
    let mut ma = m.clone();
    let mut mb = Store::new("node-b", StoreConfig::default());
    mb.merge_state("node-a", "map", m.state("map").cloned().expect("held"), NOW)
        .expect("merge");
    for i in 0..100 {
        ma.apply_local(
            "p",
            "map",
            LocalOp::MapIncr {
                field: format!("f{i}"),
                by: 1,
            },
            NOW,
        )
        .expect("map");
        mb.apply_local(
            "p",
            "map",
            LocalOp::MapPut {
                field: format!("g{i}"),
                value: "1".into(),
            },
            NOW,
        )
        .expect("map");
    }
    let va: Value = ma
        .state("map")
        .and_then(|s| s.value().cloned())
        .expect("value");
    let vb: Value = mb
        .state("map")
        .and_then(|s| s.value().cloned())
        .expect("value");
    let (Value::Map(fa), Value::Map(fb)) = (va.clone(), vb.clone()) else {
        unreachable!("map values")
    };
    c.bench_function(
        "join two 10000-field maps (in place, from a borrowed replica)",
        |bench| {
            bench.iter_batched(
                || fa.clone(),
                |mut x| {
                    x.join_from(&fb);
                    x
                },
                BatchSize::LargeInput,
            )
        },
    );
    c.bench_function(
        "join two 10000-field maps (consuming: includes freeing the received map)",
        |bench| {
            bench.iter_batched(
                || (va.clone(), vb.clone()),
                |(mut x, y)| {
                    x.join(y);
                    x
                },
                BatchSize::LargeInput,
            )
        },
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
