//! Test helpers: a few in-memory replicas and a gossip driver.
#![allow(dead_code)]

use plexus_state::{Delta, GossipMsg, Store, StoreConfig, SyncItem};

/// Byte limit used by the gossip driver.
pub const MAX: usize = 64 * 1024;

pub fn store(node: &str) -> Store {
    Store::new(node, StoreConfig::default())
}

pub fn stores(n: usize) -> Vec<Store> {
    (0..n).map(|i| store(&format!("n{i}"))).collect()
}

/// Deliver `deltas` to `to` (as a gossip Items message, through the codec).
pub fn deliver(to: &mut Store, from: &str, deltas: &[Delta], now: u64) {
    let items: Vec<SyncItem> = deltas.iter().cloned().map(SyncItem::Delta).collect();
    let msg = GossipMsg::Items(items);
    let bytes = msg.encode(usize::MAX).expect("encode");
    let msg = GossipMsg::decode(&bytes, usize::MAX).expect("decode");
    let out = to.handle_gossip(from, msg, now, MAX);
    assert!(out.replies.is_empty());
}

/// One full anti-entropy round initiated by `a` with `b`: every message goes
/// through the codec and is checked against the byte limit `max`. Returns
/// the number of messages exchanged.
pub fn round(stores: &mut [Store], a: usize, b: usize, now: u64, max: usize) -> usize {
    let mut queue: Vec<(usize, usize, GossipMsg)> = vec![(a, b, stores[a].gossip_digest())];
    let mut count = 0;
    while let Some((from, to, msg)) = queue.pop() {
        count += 1;
        let bytes = msg.encode(max).expect("message over the byte limit");
        let msg = GossipMsg::decode(&bytes, max).expect("decode");
        let from_name = stores[from].node().clone();
        let out = stores[to].handle_gossip(&from_name, msg, now, max);
        assert!(
            out.rejected.is_empty(),
            "honest items rejected: {:?}",
            out.rejected
        );
        assert!(out.oversized.is_empty());
        for r in out.replies.into_iter().rev() {
            queue.insert(0, (to, from, r));
        }
    }
    count
}

/// Run rounds between every ordered pair until all digests are equal (or
/// panic after `max_rounds` sweeps). Returns the sweeps needed.
pub fn converge(stores: &mut [Store], now: u64, max_rounds: usize) -> usize {
    for sweep in 0..max_rounds {
        if all_equal(stores) {
            return sweep;
        }
        let n = stores.len();
        for a in 0..n {
            for b in 0..n {
                if a != b {
                    round(stores, a, b, now, MAX);
                }
            }
        }
    }
    assert!(all_equal(stores), "replicas did not converge");
    max_rounds
}

pub fn all_equal(stores: &[Store]) -> bool {
    let d0 = stores[0].digest();
    stores.iter().all(|s| s.digest() == d0) && stores.iter().all(|s| same_views(&stores[0], s))
}

/// Same raw views (generation, version, body kind, visible value) for every key.
pub fn same_views(a: &Store, b: &Store) -> bool {
    let va: Vec<_> = a
        .states()
        .map(|(k, s)| {
            (
                k.clone(),
                s.gen,
                s.version.clone(),
                s.is_tombstone(),
                s.view(),
                s.owner().cloned(),
            )
        })
        .collect();
    let vb: Vec<_> = b
        .states()
        .map(|(k, s)| {
            (
                k.clone(),
                s.gen,
                s.version.clone(),
                s.is_tombstone(),
                s.view(),
                s.owner().cloned(),
            )
        })
        .collect();
    va == vb
}
