//! The `crdts` OR-set trap (rust-crdt issue 160): an `Orswot` removal does
//! not advance the set's clock, so anti-entropy that compares clocks (or
//! digests built from them) takes a replica that removed a member for one
//! that has nothing new, and the removal never spreads.
//!
//! The first test shows the trap on plain `crdts` with clock-driven gossip;
//! the others run the same scenario through the store, where every change
//! (removals included) gets its own dot in the entry's version, so the
//! replicas' digests differ until the removal has spread.

mod common;

use common::{converge, deliver, round, stores, MAX};
use crdts::{CmRDT, CvRDT, Orswot};
use plexus_state::{Access, GossipMsg, Kind, LocalOp, Store, StoreConfig, SyncItem, View};

const NOW: u64 = 1_700_000_000_000;

/// Naive anti-entropy: `from` sends its state only if its clock is not
/// dominated by the peer's (the peer "has everything").
fn naive_gossip(from: &Orswot<String, String>, to: &mut Orswot<String, String>) {
    let dominated = matches!(
        from.clock().partial_cmp(&to.clock()),
        Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
    );
    if !dominated {
        to.merge(from.clone());
    }
}

#[test]
fn naive_clock_based_gossip_loses_a_removal() {
    let mut a: Orswot<String, String> = Orswot::new();
    let add = a.add(
        "x".to_string(),
        a.read_ctx().derive_add_ctx("a".to_string()),
    );
    a.apply(add);
    let mut b = a.clone();

    // b removes x: b's clock does not move.
    let rm = b.rm(
        "x".to_string(),
        b.contains(&"x".to_string()).derive_rm_ctx(),
    );
    b.apply(rm);
    assert!(!b.read().val.contains("x"));
    assert_eq!(
        a.clock(),
        b.clock(),
        "the removal left no trace in the clock"
    );

    // a then adds y, so a's clock dominates b's.
    let add = a.add(
        "y".to_string(),
        a.read_ctx().derive_add_ctx("a".to_string()),
    );
    a.apply(add);

    for _ in 0..10 {
        naive_gossip(&a, &mut b);
        naive_gossip(&b, &mut a);
    }
    // b learned y and dropped nothing; a never hears of the removal.
    assert!(b.read().val.contains("y") && !b.read().val.contains("x"));
    assert!(
        a.read().val.contains("x"),
        "the trap: the removal is lost at a"
    );
    assert_ne!(
        a.read().val,
        b.read().val,
        "replicas stay different forever"
    );
}

fn set_view(s: &Store, key: &str) -> Vec<String> {
    match s.get("p", key, NOW).expect("read") {
        Some(View::Set(m)) => m.into_iter().collect(),
        other => panic!("not a set: {other:?}"),
    }
}

/// The same scenario through the store and its digest gossip.
#[test]
fn removal_spreads_through_digest_gossip() {
    let mut s = stores(2);
    let c = s[0].add("p", "k", "x", NOW).expect("add");
    deliver(&mut s[1], "n0", &c.deltas, NOW);

    // n1 removes x; the removal is never delivered as a delta.
    s[1].remove("p", "k", "x", NOW + 1).expect("remove");
    assert_ne!(
        s[0].digest(),
        s[1].digest(),
        "the removal shows in the digest"
    );
    assert!(s[0].state("k").expect("held").version < s[1].state("k").expect("held").version);

    // n0 adds y (not delivered either): the versions are now concurrent.
    s[0].add("p", "k", "y", NOW + 2).expect("add");

    // Gossip initiated by the side that looks "ahead" is enough.
    round(&mut s, 0, 1, NOW + 3, MAX);
    assert_eq!(set_view(&s[0], "k"), vec!["y"]);
    assert_eq!(set_view(&s[1], "k"), vec!["y"]);
    assert_eq!(s[0].digest(), s[1].digest());
}

/// Whole-state transfers (no delta log) carry the removal too.
#[test]
fn removal_spreads_as_whole_state() {
    let cfg = StoreConfig {
        delta_log_per_key: 0,
        ..StoreConfig::default()
    };
    let mut s = [Store::new("n0", cfg.clone()), Store::new("n1", cfg)];
    let c = s[0].add("p", "k", "x", NOW).expect("add");
    deliver(&mut s[1], "n0", &c.deltas, NOW);
    s[1].remove("p", "k", "x", NOW + 1).expect("remove");
    round(&mut s, 0, 1, NOW + 2, MAX);
    assert!(set_view(&s[0], "k").is_empty());
    assert_eq!(s[0].digest(), s[1].digest());
}

/// A removal delivered before the add it removes (reordered gossip) waits
/// for it, and a concurrent add it did not observe survives it.
#[test]
fn removal_before_its_add_and_add_wins() {
    let mut s = stores(3);
    s[0].create("p", "k", Kind::Set, Access::Public, None, NOW)
        .expect("create");
    let create = s[0].state("k").cloned().expect("held");
    s[1].merge_state("n0", "k", create.clone(), NOW)
        .expect("merge");
    s[2].merge_state("n0", "k", create, NOW).expect("merge");

    let add = s[0].add("p", "k", "x", NOW + 1).expect("add").deltas;
    deliver(&mut s[1], "n0", &add, NOW + 1);
    let rm = s[1].remove("p", "k", "x", NOW + 2).expect("rm").deltas;
    // Concurrent re-add of x at n2, unseen by the remover.
    let readd = s[2]
        .apply_local("p", "k", LocalOp::Add(vec!["x".into()]), NOW + 3)
        .expect("add")
        .deltas;

    // n0 receives the removal first: it applies (n0 has the add)...
    deliver(&mut s[0], "n1", &rm, NOW + 4);
    assert!(set_view(&s[0], "k").is_empty());
    // ...n2 receives the removal before the add it removes: buffered.
    deliver(&mut s[2], "n1", &rm, NOW + 4);
    assert_eq!(s[2].pending_len(), 1);
    deliver(&mut s[2], "n0", &add, NOW + 5);
    assert_eq!(s[2].pending_len(), 0);
    deliver(&mut s[0], "n2", &readd, NOW + 6);
    deliver(&mut s[1], "n2", &readd, NOW + 6);
    converge(&mut s, NOW + 7, 4);
    for st in &s {
        assert_eq!(set_view(st, "k"), vec!["x"], "the unobserved add wins");
    }
}

/// A removal item can come through the wire as a delta and is applied as
/// one (the anti-entropy path for a lagging peer).
#[test]
fn lagging_peer_gets_the_removal_as_a_delta() {
    let mut s = stores(2);
    let c = s[0].add("p", "k", "x", NOW).expect("add");
    deliver(&mut s[1], "n0", &c.deltas, NOW);
    s[0].remove("p", "k", "x", NOW + 1).expect("rm");
    let summary = s[1].key_digest(&s[1].digest().differing(&s[0].digest()));
    let items = s[0].missing_for(&summary);
    assert!(
        matches!(items.as_slice(), [SyncItem::Delta(d)] if d.op_name() == "or-remove"),
        "{items:?}"
    );
    let out = s[1].handle_gossip("n0", GossipMsg::Items(items), NOW + 2, MAX);
    assert!(out.rejected.is_empty());
    assert!(set_view(&s[1], "k").is_empty());
    assert_eq!(s[0].digest(), s[1].digest());
}
