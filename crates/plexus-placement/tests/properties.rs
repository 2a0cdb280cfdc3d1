//! Properties of the placement rule, over random clusters.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use plexus_placement::{assign, Assignment, Candidate, Labels, PluginSpec, Running, Tracker};
use proptest::prelude::*;

const LABELS: [(&str, &str); 3] = [("zone", "a"), ("zone", "b"), ("gpu", "yes")];

fn node_name(i: usize) -> String {
    format!("node{i}")
}

fn plugin_name(i: usize) -> String {
    format!("plugin-{i}")
}

/// A random cluster: up to 7 nodes (each with some labels, offering some of
/// the plugins, settled or not) and up to 8 plugins (1–3 replicas, maybe a
/// required label).
fn cluster() -> impl Strategy<Value = (Vec<Candidate>, Vec<PluginSpec>)> {
    let plugins = prop::collection::vec((1u32..4, prop::option::of(0usize..3)), 1..9);
    (1usize..8, plugins)
        .prop_flat_map(|(n, plugins)| {
            let np = plugins.len();
            let nodes = prop::collection::vec(
                (
                    prop::collection::btree_set(0usize..3, 0..3),
                    prop::collection::btree_set(0usize..np, 0..=np),
                    prop::bool::weighted(0.8),
                ),
                n,
            );
            (nodes, Just(plugins))
        })
        .prop_map(|(nodes, plugins)| {
            let cands = nodes
                .into_iter()
                .enumerate()
                .map(|(i, (labels, offers, settled))| Candidate {
                    name: node_name(i),
                    labels: labels
                        .into_iter()
                        .map(|l| (LABELS[l].0.to_string(), LABELS[l].1.to_string()))
                        .collect(),
                    offers: offers.into_iter().map(plugin_name).collect(),
                    settled,
                })
                .collect();
            let specs = plugins
                .into_iter()
                .enumerate()
                .map(|(i, (replicas, label))| PluginSpec {
                    name: plugin_name(i),
                    replicas,
                    requires: label
                        .map(|l| Labels::from([(LABELS[l].0.to_string(), LABELS[l].1.to_string())]))
                        .unwrap_or_default(),
                })
                .collect();
            (cands, specs)
        })
}

fn running_of(a: &Assignment) -> Running {
    a.plugins
        .iter()
        .map(|(p, placed)| (p.clone(), placed.nodes.iter().cloned().collect()))
        .collect()
}

fn set(a: &Assignment, p: &str) -> BTreeSet<String> {
    a.nodes(p).iter().cloned().collect()
}

proptest! {
    /// Every node computes the same assignment from the same view: the
    /// order a node happens to hold members and plugins in does not matter.
    #[test]
    fn same_view_same_assignment((cands, specs) in cluster(), rot in 0usize..7, rev in any::<bool>()) {
        let a = assign(&cands, &specs, &Running::new());
        let mut c2 = cands.clone();
        c2.rotate_left(rot % cands.len());
        let mut s2 = specs.clone();
        if rev {
            c2.reverse();
            s2.reverse();
        }
        prop_assert_eq!(&a, &assign(&c2, &s2, &Running::new()));
        // And with the placement as running state, it is a fixed point.
        prop_assert_eq!(&a, &assign(&c2, &s2, &running_of(&a)));
    }

    /// A plugin is placed iff an eligible node is up, on min(replicas,
    /// eligible) distinct eligible nodes, and settled ones are preferred.
    #[test]
    fn placed_iff_an_eligible_node_is_up((cands, specs) in cluster()) {
        let a = assign(&cands, &specs, &Running::new());
        for s in &specs {
            let eligible: Vec<&Candidate> = cands.iter().filter(|c| c.eligible(s)).collect();
            let placed = &a.plugins[&s.name];
            let want = (s.replicas as usize).min(eligible.len());
            prop_assert_eq!(placed.nodes.len(), want, "{:?}", placed);
            prop_assert_eq!(placed.short.is_some(), eligible.len() < s.replicas as usize);
            let distinct: BTreeSet<&String> = placed.nodes.iter().collect();
            prop_assert_eq!(distinct.len(), placed.nodes.len());
            for n in &placed.nodes {
                prop_assert!(eligible.iter().any(|c| &c.name == n), "{} not eligible for {}", n, s.name);
            }
            let settled = eligible.iter().filter(|c| c.settled).count();
            let chosen_settled = placed.nodes.iter()
                .filter(|n| eligible.iter().any(|c| &c.name == *n && c.settled))
                .count();
            prop_assert_eq!(chosen_settled, settled.min(want), "settled nodes first");
        }
    }

    /// A node joining (new, settled) takes only plugins it ranks into, one
    /// slot each; a node leaving moves only its own plugins, one slot each.
    #[test]
    fn minimal_movement_on_join_and_leave((cands, specs) in cluster(), pick in any::<prop::sample::Index>()) {
        let cands: Vec<Candidate> = cands.into_iter().map(|mut c| { c.settled = true; c }).collect();
        // Leave.
        let before = assign(&cands, &specs, &Running::new());
        let gone = &cands[pick.index(cands.len())].name;
        let rest: Vec<Candidate> = cands.iter().filter(|c| &c.name != gone).cloned().collect();
        let after = assign(&rest, &specs, &running_of(&before));
        for s in &specs {
            let (b, a) = (set(&before, &s.name), set(&after, &s.name));
            if !b.contains(gone) {
                prop_assert_eq!(&b, &a, "{} moved though {} did not host it", s.name, gone);
            } else {
                let kept: BTreeSet<String> = b.iter().filter(|n| *n != gone).cloned().collect();
                prop_assert!(kept.is_subset(&a), "{}: survivors lost it", s.name);
                prop_assert!(a.len() <= kept.len() + 1);
            }
        }
        // Join: the one that left comes back as a new node.
        let back = assign(&cands, &specs, &running_of(&after));
        for s in &specs {
            let (a, j) = (set(&after, &s.name), set(&back, &s.name));
            let added: Vec<&String> = j.difference(&a).collect();
            let removed: Vec<&String> = a.difference(&j).collect();
            prop_assert!(added.iter().all(|n| *n == gone), "{}: {:?} joined it, not {}", s.name, added, gone);
            prop_assert!(removed.len() <= 1);
        }
    }

    /// A node down and up every 10 s for a minute, with a 30 s settle:
    /// each plugin moves at most twice (here: once away, never back).
    #[test]
    fn flapping_moves_each_plugin_at_most_twice(
        (cands, specs) in cluster(),
        pick in any::<prop::sample::Index>(),
        phase in 0u64..10,
    ) {
        let t0 = Instant::now();
        let mut tracker = Tracker::new(Duration::from_secs(30));
        let flapper = cands[pick.index(cands.len())].name.clone();
        let all: Vec<(String, u64)> = cands.iter().map(|c| (c.name.clone(), 1)).collect();
        let mut running = Running::new();
        let mut moves: BTreeMap<String, u32> = BTreeMap::new();
        let mut last: Option<Assignment> = None;
        for s in 0..=60u64 {
            let now = t0 + Duration::from_secs(s);
            let flapper_up = s < phase || ((s - phase) / 10) % 2 == 1;
            let up: Vec<(&str, u64)> = all
                .iter()
                .filter(|(n, _)| *n != flapper || flapper_up)
                .map(|(n, g)| (n.as_str(), *g))
                .collect();
            tracker.observe(up.iter().copied(), now);
            let view: Vec<Candidate> = cands
                .iter()
                .filter(|c| up.iter().any(|(n, _)| *n == c.name))
                .map(|c| Candidate { settled: tracker.settled(&c.name, now), ..c.clone() })
                .collect();
            let a = assign(&view, &specs, &running);
            if let Some(prev) = &last {
                for sp in &specs {
                    if set(prev, &sp.name) != set(&a, &sp.name) {
                        *moves.entry(sp.name.clone()).or_default() += 1;
                    }
                }
            }
            running = running_of(&a);
            last = Some(a);
        }
        // Plugins the other nodes can carry alone: the flapper is never
        // needed for them. (One it is needed for follows it up and down by
        // `placed_iff_an_eligible_node_is_up`: better there than nowhere.)
        for sp in &specs {
            let others = cands
                .iter()
                .filter(|c| c.name != flapper && c.eligible(sp))
                .count();
            if others < sp.replicas as usize {
                continue;
            }
            let m = moves.get(&sp.name).copied().unwrap_or(0);
            prop_assert!(m <= 2, "{} moved {} times while {} flapped", sp.name, m, flapper);
        }
    }
}

/// Liveness of the hysteresis: a returning node that stays up gets its
/// plugins back once settled (so the bound above is not met by never
/// moving anything back).
#[test]
fn a_returning_node_that_stays_up_regains_its_plugins_after_settling() {
    let t0 = Instant::now();
    let settle = Duration::from_secs(30);
    let mut tracker = Tracker::new(settle);
    let names = ["n0", "n1", "n2"];
    let specs: Vec<PluginSpec> = (0..12)
        .map(|i| PluginSpec {
            name: plugin_name(i),
            replicas: 1,
            requires: Labels::new(),
        })
        .collect();
    let view = |tracker: &Tracker, up: &[&str], now: Instant| -> Vec<Candidate> {
        up.iter()
            .map(|n| Candidate {
                name: n.to_string(),
                labels: Labels::new(),
                offers: specs.iter().map(|s| s.name.clone()).collect(),
                settled: tracker.settled(n, now),
            })
            .collect()
    };
    tracker.observe(names.iter().map(|n| (*n, 1)), t0);
    let first = assign(&view(&tracker, &names, t0), &specs, &Running::new());
    let n0_had = first.for_node("n0");
    assert!(!n0_had.is_empty(), "12 plugins over 3 nodes: n0 gets some");
    // n0 goes down: its plugins move at once.
    let t1 = t0 + Duration::from_secs(1);
    tracker.observe([("n1", 1), ("n2", 1)], t1);
    let down = assign(
        &view(&tracker, &["n1", "n2"], t1),
        &specs,
        &running_of(&first),
    );
    assert!(down.for_node("n0").is_empty());
    assert!(down.plugins.values().all(|p| p.nodes.len() == 1));
    // Back up: not before the settle period ...
    let t2 = t0 + Duration::from_secs(2);
    tracker.observe(names.iter().map(|n| (*n, 1)), t2);
    let early = assign(
        &view(&tracker, &names, t2 + settle / 2),
        &specs,
        &running_of(&down),
    );
    assert_eq!(early, down);
    // ... and after it, exactly what it had.
    let late = assign(
        &view(&tracker, &names, t2 + settle),
        &specs,
        &running_of(&early),
    );
    assert_eq!(late.for_node("n0"), n0_had);
    assert_eq!(late, first);
}
