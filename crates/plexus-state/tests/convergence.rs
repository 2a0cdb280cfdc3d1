//! Property tests: every value type's join is a lattice join, and replicas
//! that receive the same changes in any order, with duplicates, losses
//! repaired by anti-entropy, converge to equal digests and values.

mod common;

use common::{all_equal, converge, round, same_views, MAX};
use plexus_state::{Access, Delta, EntryState, Kind, LocalOp, Store, StoreConfig, Value};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const NOW: u64 = 1_700_000_000_000;
const KEYS: [(&str, Kind); 5] = [
    ("lww", Kind::Lww),
    ("g", Kind::GCounter),
    ("pn", Kind::PnCounter),
    ("set", Kind::Set),
    ("map", Kind::Map),
];

#[derive(Clone, Debug)]
enum OpSpec {
    Put(u8),
    Incr(u8),
    Decr(u8),
    Add(u8),
    Remove(u8),
    MapPut(u8, u8),
    MapIncr(u8, u8),
    MapDecr(u8, u8),
    MapAdd(u8, u8),
    MapRemove(u8, u8),
    MapRemoveField(u8),
    Recreate,
}

#[derive(Clone, Debug)]
enum Act {
    /// A local op at a replica.
    Op { replica: usize, op: OpSpec },
    /// Deliver everything `from` produced so far to `to`, shuffled.
    Deliver { from: usize, to: usize, seed: u64 },
    /// An anti-entropy round.
    Gossip { a: usize, b: usize },
}

fn op_strategy() -> impl Strategy<Value = OpSpec> {
    prop_oneof![
        (0u8..4).prop_map(OpSpec::Put),
        (1u8..5).prop_map(OpSpec::Incr),
        (1u8..5).prop_map(OpSpec::Decr),
        (0u8..4).prop_map(OpSpec::Add),
        (0u8..4).prop_map(OpSpec::Remove),
        (0u8..3, 0u8..4).prop_map(|(f, v)| OpSpec::MapPut(f, v)),
        (0u8..3, 1u8..4).prop_map(|(f, v)| OpSpec::MapIncr(f, v)),
        (0u8..3, 1u8..4).prop_map(|(f, v)| OpSpec::MapDecr(f, v)),
        (0u8..3, 0u8..4).prop_map(|(f, v)| OpSpec::MapAdd(f, v)),
        (0u8..3, 0u8..4).prop_map(|(f, v)| OpSpec::MapRemove(f, v)),
        (0u8..3).prop_map(OpSpec::MapRemoveField),
        Just(OpSpec::Recreate),
    ]
}

fn act_strategy(n: usize) -> impl Strategy<Value = Act> {
    prop_oneof![
        5 => (0..n, op_strategy()).prop_map(|(replica, op)| Act::Op { replica, op }),
        3 => (0..n, 0..n, any::<u64>()).prop_map(|(from, to, seed)| Act::Deliver { from, to, seed }),
        1 => (0..n, 0..n).prop_map(|(a, b)| Act::Gossip { a, b }),
    ]
}

/// Which key and local op an op spec means (counter specs alternate
/// between the G- and PN-counter).
fn local(op: &OpSpec) -> (&'static str, LocalOp) {
    let m = |x: u8| format!("m{x}");
    let f = |x: u8| format!("f{x}");
    match op {
        OpSpec::Put(v) => ("lww", LocalOp::Put(format!("\"v{v}\""))),
        OpSpec::Incr(b) if b % 2 == 0 => ("g", LocalOp::Incr(u64::from(*b))),
        OpSpec::Incr(b) => ("pn", LocalOp::Incr(u64::from(*b))),
        OpSpec::Decr(b) => ("pn", LocalOp::Decr(u64::from(*b))),
        OpSpec::Add(x) => ("set", LocalOp::Add(vec![m(*x)])),
        OpSpec::Remove(x) => ("set", LocalOp::Remove(vec![m(*x)])),
        OpSpec::MapPut(fi, v) => (
            "map",
            LocalOp::MapPut {
                field: format!("r{fi}"),
                value: format!("{v}"),
            },
        ),
        OpSpec::MapIncr(fi, b) => (
            "map",
            LocalOp::MapIncr {
                field: format!("c{fi}"),
                by: u64::from(*b),
            },
        ),
        OpSpec::MapDecr(fi, b) => (
            "map",
            LocalOp::MapDecr {
                field: format!("c{fi}"),
                by: u64::from(*b),
            },
        ),
        OpSpec::MapAdd(fi, x) => (
            "map",
            LocalOp::MapAdd {
                field: f(*fi),
                members: vec![m(*x)],
            },
        ),
        OpSpec::MapRemove(fi, x) => (
            "map",
            LocalOp::MapRemove {
                field: f(*fi),
                members: vec![m(*x)],
            },
        ),
        OpSpec::MapRemoveField(fi) => ("map", LocalOp::MapRemoveField(f(*fi))),
        OpSpec::Recreate => ("tmp", LocalOp::Delete),
    }
}

struct World {
    stores: Vec<Store>,
    outboxes: Vec<Vec<Delta>>,
    all: Vec<Delta>,
    time: u64,
}

impl World {
    fn new(n: usize, log: usize) -> Self {
        let cfg = StoreConfig {
            delta_log_per_key: log,
            delta_log_capacity: log * 3,
            ..StoreConfig::default()
        };
        let mut stores: Vec<Store> = (0..n)
            .map(|i| Store::new(format!("n{i}"), cfg.clone()))
            .collect();
        let mut all = Vec::new();
        for (key, kind) in KEYS.iter().copied().chain([("tmp", Kind::Set)]) {
            let c = stores[0]
                .create("p", key, kind, Access::Public, None, NOW)
                .expect("create");
            all.extend(c.deltas);
        }
        for s in stores.iter_mut().skip(1) {
            for d in &all {
                s.apply_remote(d.clone(), NOW).expect("setup delta");
            }
        }
        let mut outboxes = vec![Vec::new(); n];
        outboxes[0] = all.clone();
        World {
            stores,
            outboxes,
            all,
            time: NOW,
        }
    }

    fn run(&mut self, acts: &[Act]) {
        for act in acts {
            self.time += 1;
            match act {
                Act::Op { replica, op } => {
                    let (key, lop) = local(op);
                    let s = &mut self.stores[*replica];
                    let res = if matches!(op, OpSpec::Recreate) {
                        // Delete and create again: a new generation.
                        let mut ds = Vec::new();
                        if let Ok(c) = s.apply_local("p", key, lop, self.time) {
                            ds.extend(c.deltas);
                        }
                        if let Ok(c) =
                            s.create("p", key, Kind::Set, Access::Public, None, self.time)
                        {
                            ds.extend(c.deltas);
                        }
                        if let Ok(c) = s.add("p", key, format!("t{}", self.time % 3), self.time) {
                            ds.extend(c.deltas);
                        }
                        Ok(ds)
                    } else {
                        s.apply_local("p", key, lop, self.time).map(|c| c.deltas)
                    };
                    if let Ok(ds) = res {
                        self.outboxes[*replica].extend(ds.iter().cloned());
                        self.all.extend(ds);
                    }
                }
                Act::Deliver { from, to, seed } => {
                    if from == to {
                        continue;
                    }
                    let mut ds = self.outboxes[*from].clone();
                    ds.shuffle(&mut StdRng::seed_from_u64(*seed));
                    let from_name = self.stores[*from].node().clone();
                    common::deliver(&mut self.stores[*to], &from_name, &ds, self.time);
                }
                Act::Gossip { a, b } => {
                    if a != b {
                        round(&mut self.stores, *a, *b, self.time, MAX);
                    }
                }
            }
        }
    }
}

fn states(w: &World, key: &str) -> Vec<EntryState> {
    w.stores
        .iter()
        .filter_map(|s| s.state(key).cloned())
        .collect()
}

fn joined(mut a: EntryState, b: &EntryState) -> EntryState {
    a.join(b.clone());
    a
}

fn vjoined(mut a: Value, b: &Value) -> Value {
    a.join(b.clone());
    a
}

proptest! {
    /// Join of entry states and of every value type is commutative,
    /// associative and idempotent (on states reached by real histories).
    #[test]
    fn join_is_a_lattice(acts in prop::collection::vec(act_strategy(3), 0..40)) {
        let mut w = World::new(3, 16);
        w.run(&acts);
        for (key, _) in KEYS.iter().copied().chain([("tmp", Kind::Set)]) {
            let st = states(&w, key);
            prop_assert_eq!(st.len(), 3);
            let (a, b, c) = (&st[0], &st[1], &st[2]);
            // Entry states.
            prop_assert_eq!(joined(a.clone(), b), joined(b.clone(), a), "commutative {}", key);
            prop_assert_eq!(joined(joined(a.clone(), b), c), joined(a.clone(), &joined(b.clone(), c)), "associative {}", key);
            prop_assert_eq!(joined(a.clone(), a), a.clone(), "idempotent {}", key);
            // Values of the same generation.
            if let (Some(va), Some(vb), Some(vc)) = (a.value(), b.value(), c.value()) {
                if a.gen == b.gen && b.gen == c.gen {
                    prop_assert_eq!(vjoined(va.clone(), vb).view(), vjoined(vb.clone(), va).view(), "value commutative {}", key);
                    prop_assert_eq!(vjoined(va.clone(), vb), vjoined(vb.clone(), va), "value commutative {}", key);
                    prop_assert_eq!(
                        vjoined(vjoined(va.clone(), vb), vc),
                        vjoined(va.clone(), &vjoined(vb.clone(), vc)),
                        "value associative {}", key
                    );
                    prop_assert_eq!(vjoined(va.clone(), va), va.clone(), "value idempotent {}", key);
                }
            }
        }
    }

    /// Fresh replicas that receive every delta in two different random
    /// orders, with duplicates, end equal to each other and to a replica
    /// that got them in order.
    #[test]
    fn any_delivery_order_converges(acts in prop::collection::vec(act_strategy(3), 0..40), seed in any::<u64>()) {
        let mut w = World::new(3, 16);
        w.run(&acts);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut reference = Store::new("ref", StoreConfig::default());
        for d in &w.all {
            reference.apply_remote(d.clone(), w.time).expect("in-order delta");
        }
        prop_assert_eq!(reference.pending_len(), 0);
        for name in ["r1", "r2"] {
            let mut r = Store::new(name, StoreConfig::default());
            let mut ds = w.all.clone();
            let extra: Vec<Delta> = ds.iter().filter(|_| rng.gen_bool(0.3)).cloned().collect();
            ds.extend(extra);
            ds.shuffle(&mut rng);
            for d in ds {
                r.apply_remote(d, w.time).expect("delta");
            }
            prop_assert_eq!(r.pending_len(), 0, "everything delivered");
            prop_assert_eq!(r.digest(), reference.digest());
            prop_assert!(same_views(&r, &reference));
        }
    }

    /// Random partial delivery and gossip (concurrent add/remove under any
    /// order, removals included), then anti-entropy: every replica ends
    /// equal, and equal to a replica that received every delta. A short
    /// delta log forces whole-state transfers too.
    #[test]
    fn gossip_converges(acts in prop::collection::vec(act_strategy(4), 0..60), log in 0usize..6) {
        let mut w = World::new(4, log);
        w.run(&acts);
        let t = w.time + 1;
        converge(&mut w.stores, t, 6);
        let mut reference = Store::new("ref", StoreConfig::default());
        for d in &w.all {
            reference.apply_remote(d.clone(), t).expect("delta");
        }
        prop_assert!(all_equal(&w.stores));
        prop_assert_eq!(w.stores[0].digest(), reference.digest());
        prop_assert!(same_views(&w.stores[0], &reference));
    }
}
