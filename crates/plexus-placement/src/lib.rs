//! Which node hosts which plugin, with no coordinator.
//!
//! Every node computes the same [`Assignment`] from the same inputs: the up
//! nodes with their labels and the plugins each can host ([`Candidate`]),
//! the cluster's plugins with their `[placement]` ([`PluginSpec`]), and where
//! each plugin runs now ([`Running`]). The rule is rendezvous hashing: each
//! (plugin, node) pair gets a score, and a plugin goes to the `replicas`
//! best-scoring eligible nodes. A node joining or leaving moves only the
//! plugins whose best nodes it enters or leaves.
//!
//! **Hysteresis.** A node that comes back (seen down before, or restarted)
//! is not *settled* until it has stayed up for [`Tracker`]'s settle period.
//! An unsettled node takes a plugin only when no settled node and no node
//! already running it is eligible, so a node that flaps loses its plugins
//! once and does not pull them back each time it reappears. Failover is not
//! delayed: a node that is down is simply not a candidate.
//!
//! Plain data in, plain data out: no clock, no I/O. The node's registry
//! feeds it the membership view and the announces and starts or stops
//! plugin hosts by what [`to_run`] answers.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Node labels (`[node] labels`), or the labels a plugin requires.
pub type Labels = BTreeMap<String, String>;

/// Where each plugin runs now: plugin → nodes (from the announces).
pub type Running = BTreeMap<String, BTreeSet<String>>;

/// A plugin the cluster should run, as its manifest's `[placement]` says.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PluginSpec {
    pub name: String,
    /// How many nodes run it at once (at least 1).
    pub replicas: u32,
    /// Labels a node must carry, each with this value, to host it.
    pub requires: Labels,
}

/// An up node, as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub labels: Labels,
    /// Plugins this node can host: it has their files, and its `--plugins`
    /// (if any) names them.
    pub offers: BTreeSet<String>,
    /// Up long enough to take plugins over (see [`Tracker`]).
    pub settled: bool,
}

impl Candidate {
    /// Whether this node may host `p` at all.
    pub fn eligible(&self, p: &PluginSpec) -> bool {
        self.offers.contains(&p.name)
            && p.requires
                .iter()
                .all(|(k, v)| self.labels.get(k).is_some_and(|have| have == v))
    }
}

/// Why a plugin has fewer nodes than it wants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Shortfall {
    /// No up node has the plugin (its files, or its `--plugins` allows it).
    NotOffered,
    /// Up nodes offer it, but none carries the labels it requires.
    Labels { requires: Labels },
    /// Fewer eligible up nodes than replicas.
    FewerNodes { eligible: usize },
}

impl fmt::Display for Shortfall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shortfall::NotOffered => write!(f, "no up node offers it (its files or --plugins)"),
            Shortfall::Labels { requires } => {
                let l: Vec<String> = requires.iter().map(|(k, v)| format!("{k}={v}")).collect();
                write!(
                    f,
                    "no up node has the labels it requires ({})",
                    l.join(", ")
                )
            }
            Shortfall::FewerNodes { eligible } => {
                write!(f, "only {eligible} eligible node(s) are up")
            }
        }
    }
}

/// One plugin's placement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    /// The nodes that should run it, best first.
    pub nodes: Vec<String>,
    pub wanted: u32,
    /// Set when `nodes` has fewer than `wanted`.
    pub short: Option<Shortfall>,
}

/// The whole cluster's placement.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub plugins: BTreeMap<String, Placed>,
}

impl Assignment {
    /// The plugins assigned to `node`.
    pub fn for_node(&self, node: &str) -> BTreeSet<String> {
        self.plugins
            .iter()
            .filter(|(_, p)| p.nodes.iter().any(|n| n == node))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The nodes of `plugin` (empty if unknown or not placed).
    pub fn nodes(&self, plugin: &str) -> &[String] {
        self.plugins
            .get(plugin)
            .map(|p| p.nodes.as_slice())
            .unwrap_or(&[])
    }
}

/// The rendezvous score of `plugin` on `node`: FNV-1a over both names,
/// then a 64-bit finaliser (FNV alone clusters on similar names). Fixed,
/// so every node and every release scores alike.
pub fn score(plugin: &str, node: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in plugin.bytes().chain([0xff]).chain(node.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finaliser
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Compute the placement. The order of `candidates` and `plugins` does not
/// matter; duplicate plugin names are merged by [`merge_specs`].
///
/// For each plugin, the eligible candidates are ranked by [`score`]. The
/// *ready* ones (settled, or already running the plugin) are taken best
/// first up to `replicas`; only if too few are ready do unsettled ones fill
/// the rest, so a plugin is placed whenever any eligible node is up.
pub fn assign(candidates: &[Candidate], plugins: &[PluginSpec], running: &Running) -> Assignment {
    let empty = BTreeSet::new();
    let mut out = Assignment::default();
    for p in merge_specs(plugins.iter().cloned()) {
        let wanted = p.replicas.max(1);
        let mut ranked: Vec<&Candidate> = candidates.iter().filter(|c| c.eligible(&p)).collect();
        ranked.sort_by(|a, b| {
            score(&p.name, &b.name)
                .cmp(&score(&p.name, &a.name))
                .then_with(|| a.name.cmp(&b.name))
        });
        ranked.dedup_by(|a, b| a.name == b.name);
        let runs = running.get(&p.name).unwrap_or(&empty);
        let ready = |c: &&&Candidate| c.settled || runs.contains(&c.name);
        let mut nodes: Vec<String> = ranked
            .iter()
            .filter(ready)
            .take(wanted as usize)
            .map(|c| c.name.clone())
            .collect();
        for c in &ranked {
            if nodes.len() >= wanted as usize {
                break;
            }
            if !nodes.contains(&c.name) {
                nodes.push(c.name.clone());
            }
        }
        // Best first, whichever way a node got in.
        nodes.sort_by_key(|n| std::cmp::Reverse(score(&p.name, n)));
        let short = (nodes.len() < wanted as usize).then(|| {
            if !ranked.is_empty() {
                Shortfall::FewerNodes {
                    eligible: ranked.len(),
                }
            } else if candidates.iter().any(|c| c.offers.contains(&p.name)) {
                Shortfall::Labels {
                    requires: p.requires.clone(),
                }
            } else {
                Shortfall::NotOffered
            }
        });
        out.plugins.insert(
            p.name.clone(),
            Placed {
                nodes,
                wanted,
                short,
            },
        );
    }
    out
}

/// One spec per plugin name. Nodes may announce different specs for one
/// plugin (different manifest versions); the greatest by `Ord` wins, so
/// every node picks the same one whatever order it heard them in.
pub fn merge_specs(specs: impl IntoIterator<Item = PluginSpec>) -> Vec<PluginSpec> {
    let mut by_name: BTreeMap<String, PluginSpec> = BTreeMap::new();
    for s in specs {
        match by_name.get(&s.name) {
            Some(old) if *old >= s => {}
            _ => {
                by_name.insert(s.name.clone(), s);
            }
        }
    }
    by_name.into_values().collect()
}

/// What `me` should run now: what the assignment gives it, plus what it
/// runs already and was moved away, until one of the plugin's new nodes
/// runs it (a handover, so a move leaves no gap). A plugin no up node may
/// host any more is stopped.
pub fn to_run(
    assignment: &Assignment,
    me: &str,
    running_here: &BTreeSet<String>,
    running: &Running,
) -> BTreeSet<String> {
    let mut out = assignment.for_node(me);
    for p in running_here {
        if out.contains(p) {
            continue;
        }
        let targets = assignment.nodes(p);
        let taken_over = targets.iter().any(|n| {
            running
                .get(p)
                .is_some_and(|r| r.contains(n.as_str()) && n != me)
        });
        if !targets.is_empty() && !taken_over {
            out.insert(p.clone());
        }
    }
    out
}

/// How long a returning node must stay up before it takes plugins over.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(30);

/// Tracks, per node, since when it has been up without a break, to say
/// whether it is settled. A node seen for the first time at generation 1
/// is new, not returning, and settled at once; a node seen down before,
/// seen with a new generation, or first seen at a later generation (it
/// ran before: a restart) is settled after `settle` of uninterrupted up.
#[derive(Debug, Clone)]
pub struct Tracker {
    settle: Duration,
    nodes: BTreeMap<String, Seen>,
}

#[derive(Debug, Clone)]
struct Seen {
    generation: u64,
    up: bool,
    up_since: Instant,
    returning: bool,
}

impl Tracker {
    pub fn new(settle: Duration) -> Tracker {
        Tracker {
            settle,
            nodes: BTreeMap::new(),
        }
    }

    /// Feed the current set of up nodes `(name, generation)`; every other
    /// node tracked is down from now.
    pub fn observe<'a>(&mut self, up: impl IntoIterator<Item = (&'a str, u64)>, now: Instant) {
        let up: BTreeMap<&str, u64> = up.into_iter().collect();
        for (name, seen) in self.nodes.iter_mut() {
            if !up.contains_key(name.as_str()) {
                seen.up = false;
            }
        }
        for (name, generation) in up {
            match self.nodes.get_mut(name) {
                None => {
                    self.nodes.insert(
                        name.to_string(),
                        Seen {
                            generation,
                            up: true,
                            up_since: now,
                            returning: generation > 1,
                        },
                    );
                }
                Some(s) if !s.up || s.generation != generation => {
                    *s = Seen {
                        generation,
                        up: true,
                        up_since: now,
                        returning: true,
                    };
                }
                Some(_) => {}
            }
        }
    }

    /// Whether `node` is up and may take plugins over.
    pub fn settled(&self, node: &str, now: Instant) -> bool {
        self.nodes.get(node).is_some_and(|s| {
            s.up && (!s.returning || now.saturating_duration_since(s.up_since) >= self.settle)
        })
    }

    /// The next moment a node that is up now becomes settled: when to
    /// compute the placement again.
    pub fn next_settle(&self, now: Instant) -> Option<Instant> {
        self.nodes
            .values()
            .filter(|s| s.up && s.returning)
            .map(|s| s.up_since + self.settle)
            .filter(|t| *t > now)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(name: &str, settled: bool) -> Candidate {
        Candidate {
            name: name.into(),
            labels: Labels::new(),
            offers: ["p", "q"].iter().map(|s| s.to_string()).collect(),
            settled,
        }
    }

    fn spec(name: &str, replicas: u32) -> PluginSpec {
        PluginSpec {
            name: name.into(),
            replicas,
            requires: Labels::new(),
        }
    }

    #[test]
    fn the_best_scoring_eligible_nodes_win() {
        let cs = [cand("a", true), cand("b", true), cand("c", true)];
        let a = assign(&cs, &[spec("p", 2)], &Running::new());
        let mut best: Vec<&str> = vec!["a", "b", "c"];
        best.sort_by_key(|n| std::cmp::Reverse(score("p", n)));
        assert_eq!(a.nodes("p"), &best[..2]);
        assert!(a.plugins["p"].short.is_none());
    }

    #[test]
    fn an_unsettled_node_does_not_take_a_plugin_from_its_running_host() {
        let mut best: Vec<&str> = vec!["a", "b"];
        best.sort_by_key(|n| std::cmp::Reverse(score("p", n)));
        let (top, other) = (best[0], best[1]);
        let running: Running = [("p".to_string(), [other.to_string()].into())].into();
        let cs = [cand(top, false), cand(other, true)];
        assert_eq!(assign(&cs, &[spec("p", 1)], &running).nodes("p"), [other]);
        // Settled, it takes it.
        let cs = [cand(top, true), cand(other, true)];
        assert_eq!(assign(&cs, &[spec("p", 1)], &running).nodes("p"), [top]);
        // With nobody else up, an unsettled node is better than nothing.
        let cs = [cand(top, false)];
        assert_eq!(
            assign(&cs, &[spec("p", 1)], &Running::new()).nodes("p"),
            [top]
        );
    }

    #[test]
    fn shortfalls_say_why() {
        let mut gpu = spec("p", 1);
        gpu.requires.insert("gpu".into(), "yes".into());
        let a = assign(
            &[cand("a", true)],
            &[gpu, spec("q", 3), spec("r", 1)],
            &Running::new(),
        );
        assert_eq!(
            a.plugins["p"].short.as_ref().unwrap().to_string(),
            "no up node has the labels it requires (gpu=yes)"
        );
        assert_eq!(
            a.plugins["q"].short,
            Some(Shortfall::FewerNodes { eligible: 1 })
        );
        assert_eq!(a.plugins["q"].nodes, ["a"]);
        assert_eq!(a.plugins["r"].short, Some(Shortfall::NotOffered));
        assert!(a.plugins["r"].nodes.is_empty());
    }

    #[test]
    fn a_moved_plugin_keeps_running_until_its_new_node_runs_it() {
        let a = assign(&[cand("b", true)], &[spec("p", 1)], &Running::new());
        let here: BTreeSet<String> = ["p".to_string()].into();
        let mut running: Running = [("p".to_string(), here_of("a"))].into();
        assert!(to_run(&a, "a", &here, &running).contains("p"));
        running.get_mut("p").unwrap().insert("b".into());
        assert!(to_run(&a, "a", &here, &running).is_empty());
        // Not placed anywhere: stop it.
        let none = assign(&[], &[spec("p", 1)], &Running::new());
        assert!(to_run(&none, "a", &here, &running).is_empty());
    }

    fn here_of(n: &str) -> BTreeSet<String> {
        [n.to_string()].into()
    }

    #[test]
    fn a_returning_node_settles_after_the_settle_period() {
        let t0 = Instant::now();
        let s = Duration::from_secs(30);
        let mut t = Tracker::new(s);
        t.observe([("a", 1), ("b", 1)], t0);
        assert!(
            t.settled("a", t0) && t.settled("b", t0),
            "new nodes settle at once"
        );
        t.observe([("a", 1)], t0 + Duration::from_secs(1));
        assert!(!t.settled("b", t0 + Duration::from_secs(1)), "down");
        let back = t0 + Duration::from_secs(2);
        t.observe([("a", 1), ("b", 1)], back);
        assert!(!t.settled("b", back + s - Duration::from_millis(1)));
        assert_eq!(t.next_settle(back), Some(back + s));
        assert!(t.settled("b", back + s));
        // A restart seen without a down in between (new generation) counts too,
        // and so does a first sight of a node that ran before.
        t.observe([("a", 2), ("b", 1), ("c", 3)], back + s);
        assert!(!t.settled("a", back + s) && !t.settled("c", back + s));
        assert!(t.settled("b", back + s));
    }
}
