//! The anti-entropy protocol: cost of a round between equal replicas,
//! message size bounds, deltas versus whole states, durable gossip.

mod common;

use common::{converge, deliver, round, stores};
use plexus_state::{
    pack_deltas, Access, DurableConfig, DurableStore, GossipMsg, Kind, LocalOp, Store, StoreConfig,
    SyncItem, BUCKETS, MIN_MESSAGE_BYTES,
};

const NOW: u64 = 1_700_000_000_000;

#[test]
fn equal_replicas_exchange_one_digest() {
    let mut s = stores(2);
    for i in 0..500 {
        let c = s[0].incr("p", &format!("k{i}"), 1, NOW).expect("incr");
        deliver(&mut s[1], "n0", &c.deltas, NOW);
    }
    assert_eq!(round(&mut s, 0, 1, NOW, common::MAX), 1);
    let bytes = s[0].gossip_digest().encode(usize::MAX).expect("encode");
    assert!(
        bytes.len() <= BUCKETS * 9 + 16,
        "digest is {} bytes",
        bytes.len()
    );
    assert!(bytes.len() < MIN_MESSAGE_BYTES);
}

/// A fresh replica catches up on 2,000 keys of ~1 KiB through messages
/// that never exceed a 16 KiB limit.
#[test]
fn messages_stay_under_the_limit() {
    let mut s = stores(2);
    let blob = format!("\"{}\"", "x".repeat(1000));
    for i in 0..2000 {
        s[0].put("p", &format!("key-{i}"), blob.clone(), NOW)
            .expect("put");
    }
    let max = 16 * 1024;
    let mut msgs = 0;
    for _ in 0..3 {
        msgs += round(&mut s, 1, 0, NOW, max); // `round` checks every message against `max`
    }
    assert_eq!(s[0].digest(), s[1].digest());
    assert_eq!(s[1].len(), 2000);
    assert!(
        msgs > 2000 * 1000 / max,
        "split into many messages ({msgs})"
    );
}

/// Packing fresh deltas for eager push respects the limit and reports
/// items that cannot fit at all.
#[test]
fn pack_deltas_splits_and_reports_oversized() {
    let mut s = Store::new("n0", StoreConfig::default());
    let mut deltas = Vec::new();
    for i in 0..100 {
        deltas.extend(
            s.put(
                "p",
                &format!("k{i}"),
                format!("\"{}\"", "y".repeat(500)),
                NOW,
            )
            .expect("put")
            .deltas,
        );
    }
    deltas.extend(
        s.put("p", "huge", format!("\"{}\"", "z".repeat(20_000)), NOW)
            .expect("put")
            .deltas,
    );
    let packed = pack_deltas(deltas, 8 * 1024);
    assert_eq!(packed.oversized, vec!["huge".to_string()]);
    let mut n = 0;
    for m in &packed.messages {
        assert!(m.encode(8 * 1024).is_ok());
        if let GossipMsg::Items(items) = m {
            n += items.len();
        }
    }
    assert_eq!(
        n,
        200 + 1,
        "every other delta packed, in order (the oversized key's create fits)"
    );
}

/// A peer that missed a few changes gets exactly those deltas; one that
/// missed more than the log holds gets the whole entry.
#[test]
fn lagging_peer_gets_deltas_or_whole_state() {
    let cfg = StoreConfig {
        delta_log_per_key: 4,
        ..StoreConfig::default()
    };
    let mut s = [Store::new("n0", cfg.clone()), Store::new("n1", cfg)];
    let c = s[0]
        .create("p", "set", Kind::Set, Access::Public, None, NOW)
        .expect("create");
    deliver(&mut s[1], "n0", &c.deltas, NOW);
    for i in 0..3 {
        s[0].add("p", "set", format!("m{i}"), NOW).expect("add");
    }
    let summary = s[1].key_digest(&s[1].digest().differing(&s[0].digest()));
    let items = s[0].missing_for(&summary);
    assert_eq!(items.len(), 3);
    assert!(items.iter().all(|i| matches!(i, SyncItem::Delta(_))));
    for i in 3..10 {
        s[0].add("p", "set", format!("m{i}"), NOW).expect("add");
    }
    let items = s[0].missing_for(&summary);
    assert!(matches!(items.as_slice(), [SyncItem::State { .. }]));
    let out = s[1].handle_gossip("n0", GossipMsg::Items(items), NOW, 1 << 20);
    assert!(out.rejected.is_empty());
    assert_eq!(out.events.len(), 1);
    assert_eq!(s[0].digest(), s[1].digest());
}

/// Five replicas, each writing while partitioned from the others, heal
/// within a few gossip sweeps.
#[test]
fn partition_heals() {
    let mut s = stores(5);
    for (i, st) in s.iter_mut().enumerate() {
        for k in 0..50 {
            st.incr("p", &format!("c{k}"), i as u64 + 1, NOW)
                .expect("incr");
            st.apply_local("p", "set", LocalOp::Add(vec![format!("m{i}-{k}")]), NOW)
                .expect("add");
        }
    }
    let sweeps = converge(&mut s, NOW + 1, 4);
    assert!(sweeps <= 2, "{sweeps} sweeps");
    match s[3].get("p", "c7", NOW + 1).expect("read") {
        Some(plexus_state::View::Counter(n)) => assert_eq!(n, 1 + 2 + 3 + 4 + 5),
        other => panic!("{other:?}"),
    }
}

/// Gossip between durable stores is persisted: both survive a restart equal.
#[test]
fn durable_gossip_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pa, pb) = (dir.path().join("a.redb"), dir.path().join("b.redb"));
    let max = 64 * 1024;
    {
        let mut a = DurableStore::open(&pa, "a", DurableConfig::default()).expect("open");
        let mut b = DurableStore::open(&pb, "b", DurableConfig::default()).expect("open");
        a.apply_local("p", "x", LocalOp::Incr(2), NOW)
            .expect("incr");
        b.apply_local("p", "x", LocalOp::Incr(3), NOW)
            .expect("incr");
        b.apply_local("p", "y", LocalOp::Put("1".into()), NOW)
            .expect("put");
        let mut queue = vec![("a", a.store().expect("store").gossip_digest())];
        while let Some((from, msg)) = queue.pop() {
            let (to, to_name) = if from == "a" {
                (&mut b, "b")
            } else {
                (&mut a, "a")
            };
            let out = to.handle_gossip(from, msg, NOW, max).expect("gossip");
            queue.extend(out.replies.into_iter().map(|m| (to_name, m)));
        }
        assert_eq!(
            a.store().expect("store").digest(),
            b.store().expect("store").digest()
        );
    }
    let a = DurableStore::open(&pa, "a", DurableConfig::default()).expect("open");
    let b = DurableStore::open(&pb, "b", DurableConfig::default()).expect("open");
    assert_eq!(
        a.store().expect("store").digest(),
        b.store().expect("store").digest()
    );
    assert_eq!(
        a.store().expect("store").get("p", "x", NOW).expect("read"),
        Some(plexus_state::View::Counter(5))
    );
}

/// A faulty peer listing buckets many times, or out of range, gets one
/// summary per real bucket.
#[test]
fn repeated_buckets_do_not_amplify() {
    let mut s = stores(1);
    for i in 0..100 {
        s[0].incr("p", &format!("k{i}"), 1, NOW).expect("incr");
    }
    let summary = plexus_state::KeyDigest {
        buckets: [vec![7u16; 10_000], vec![60_000u16; 10]].concat(),
        keys: Vec::new(),
    };
    let out = s[0].handle_gossip(
        "evil",
        GossipMsg::Summaries {
            summary,
            reply: true,
        },
        NOW,
        1 << 20,
    );
    for m in &out.replies {
        if let GossipMsg::Summaries { summary, .. } = m {
            assert_eq!(summary.buckets, vec![7]);
        }
    }
}

/// Event topics are always valid concrete bus topics.
#[test]
fn event_topics_are_valid() {
    fn valid(t: &str) -> bool {
        t.len() <= 256
            && !t
                .chars()
                .any(|c| c.is_control() || c.is_whitespace() || c == '*')
            && !t.split('/').any(str::is_empty)
    }
    for key in [
        "a",
        "ctx/jira/1",
        "a//b",
        "/lead",
        "trail/",
        "sp ace",
        "star*",
        "100%",
        "tab\tx",
        &"k".repeat(400),
    ] {
        let t = plexus_state::topic_for(key);
        assert!(t.starts_with(plexus_state::TOPIC_PREFIX), "{t}");
        assert!(valid(&t), "{key:?} -> {t:?}");
    }
    assert_eq!(
        plexus_state::topic_for("ctx/jira/1"),
        "state/changes/ctx/jira/1"
    );
    assert_eq!(plexus_state::topic_for("a//b"), "state/changes/a%2F%2Fb");
    assert_eq!(plexus_state::topic_for("star*"), "state/changes/star%2A");
}

/// The delta logs of all keys together stay within their capacity; keys
/// whose deltas were forgotten are sent whole.
#[test]
fn delta_log_capacity_is_global() {
    let cfg = StoreConfig {
        delta_log_capacity: 2,
        ..StoreConfig::default()
    };
    let mut s = [Store::new("n0", cfg.clone()), Store::new("n1", cfg)];
    for i in 0..5 {
        let c = s[0]
            .create(
                "p",
                &format!("k{i}"),
                Kind::PnCounter,
                Access::Public,
                None,
                NOW,
            )
            .expect("create");
        deliver(&mut s[1], "n0", &c.deltas, NOW);
    }
    for i in 0..5 {
        s[0].incr("p", &format!("k{i}"), 1, NOW).expect("incr");
    }
    let summary = s[1].key_digest(&(0..BUCKETS as u16).collect::<Vec<_>>());
    let items = s[0].missing_for(&summary);
    let deltas = items
        .iter()
        .filter(|i| matches!(i, SyncItem::Delta(_)))
        .count();
    assert_eq!((deltas, items.len()), (2, 5));
    let out = s[1].handle_gossip("n0", GossipMsg::Items(items), NOW, 1 << 20);
    assert!(out.rejected.is_empty());
    assert_eq!(s[0].digest(), s[1].digest());
}
