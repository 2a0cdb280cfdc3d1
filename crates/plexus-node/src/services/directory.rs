//! The node's directory: a shared, read-mostly snapshot of who hosts what
//! (the Registry actor's announces) joined with the membership view (the
//! Membership actor's), with lookup indexes.
//!
//! Request paths (exec, route, status, discovery) read it without a message
//! to either actor: the two actors publish a new snapshot whenever their
//! part changes, and readers load the current one (an `ArcSwap`, so a read
//! is a couple of atomic operations and never waits for a writer). Before
//! this, every exec asked both actors and waited for two round trips.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use plexus_membership::{MemberStatus, MemberView};

use crate::actors::registry::{plugin_rows, PluginRow};
use crate::net::wire::NodeAnnounce;

/// One place an agent or plugin is hosted, with its live state.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub plugin: String,
    pub node: String,
    /// available | unavailable | restarting | failed (see [`PluginRow`]).
    pub status: String,
    pub node_status: MemberStatus,
    /// closed | open | half-open | forced-open
    pub breaker: String,
}

impl Placement {
    /// Available and not behind an open breaker: a call can go there now.
    pub fn usable(&self) -> bool {
        self.status == "available" && !plexus_api::breaker_open(&self.breaker)
    }
}

/// An immutable snapshot; build a new one to change anything.
#[derive(Debug, Default)]
pub struct Directory {
    /// Every node's newest announce (this node's included), sorted by node.
    pub announces: Vec<NodeAnnounce>,
    /// The membership view.
    pub view: Vec<MemberView>,
    /// `plugin_rows(announces, view)`, computed once per snapshot.
    pub rows: Vec<PluginRow>,
    by_plugin: HashMap<String, Vec<usize>>,
    /// Agent id `plugin::agent` → indexes into `rows` of that plugin.
    by_agent: HashMap<String, Vec<usize>>,
    agent_count: usize,
}

impl Directory {
    /// Build the snapshot and its indexes.
    pub fn new(announces: Vec<NodeAnnounce>, view: Vec<MemberView>) -> Directory {
        let rows = plugin_rows(&announces, &view);
        let mut by_plugin: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, r) in rows.iter().enumerate() {
            by_plugin.entry(r.name.clone()).or_default().push(i);
        }
        let mut by_agent: HashMap<String, Vec<usize>> = HashMap::new();
        for a in &announces {
            for p in &a.plugins {
                let Some(rows_of) = by_plugin.get(&p.name) else {
                    continue;
                };
                let Some(&row) = rows_of.iter().find(|&&i| rows[i].node == a.identity.name) else {
                    continue;
                };
                for agent in &p.agents {
                    by_agent
                        .entry(format!("{}::{agent}", p.name))
                        .or_default()
                        .push(row);
                }
            }
        }
        let agent_count = by_agent.len();
        Directory {
            announces,
            view,
            rows,
            by_plugin,
            by_agent,
            agent_count,
        }
    }

    fn placements(&self, idx: Option<&Vec<usize>>) -> Vec<Placement> {
        idx.map(|v| {
            v.iter()
                .map(|&i| {
                    let r = &self.rows[i];
                    Placement {
                        plugin: r.name.clone(),
                        node: r.node.clone(),
                        status: r.status.clone(),
                        node_status: r.node_status,
                        breaker: r.breaker.clone(),
                    }
                })
                .collect()
        })
        .unwrap_or_default()
    }

    /// Where `plugin` is hosted (empty if nowhere).
    pub fn plugin(&self, plugin: &str) -> Vec<Placement> {
        self.placements(self.by_plugin.get(plugin))
    }

    /// The rows of `plugin`, without copying.
    pub fn plugin_rows(&self, plugin: &str) -> impl Iterator<Item = &PluginRow> {
        self.by_plugin
            .get(plugin)
            .into_iter()
            .flatten()
            .map(|&i| &self.rows[i])
    }

    /// Discovery: where the agent `plugin::agent` runs and whether it can
    /// take work now.
    pub fn agent(&self, id: &str) -> Vec<Placement> {
        self.placements(self.by_agent.get(id))
    }

    /// Distinct agent ids announced in the cluster.
    pub fn agent_count(&self) -> usize {
        self.agent_count
    }

    /// At least one peer of `me` is up, and every peer up has announced what
    /// it hosts: a restarted node's view of who hosts what has settled.
    pub fn peers_announced(&self, me: &str) -> bool {
        let mut up = self
            .view
            .iter()
            .filter(|m| m.status == MemberStatus::Up && m.identity.name != me)
            .peekable();
        up.peek().is_some()
            && up.all(|m| {
                self.announces
                    .iter()
                    .any(|a| a.identity.name == m.identity.name)
            })
    }

    /// The announces of `plugin`'s hosts.
    pub fn hosts_of<'a>(&'a self, plugin: &'a str) -> impl Iterator<Item = &'a NodeAnnounce> {
        self.announces
            .iter()
            .filter(move |a| a.plugins.iter().any(|p| p.name == plugin))
    }
}

/// The shared cell: actors publish, request paths load.
pub struct DirectoryCell {
    current: ArcSwap<Directory>,
    /// Serialises writers so one's announces and the other's view never
    /// overwrite each other.
    write: Mutex<()>,
    /// Bumped after each change, for whoever waits for one.
    changed: tokio::sync::watch::Sender<u64>,
}

impl Default for DirectoryCell {
    fn default() -> Self {
        DirectoryCell {
            current: ArcSwap::default(),
            write: Mutex::new(()),
            changed: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl DirectoryCell {
    /// Wakes on every change after this call (`changed().await`).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn store(&self, d: Directory) {
        self.current.store(Arc::new(d));
        self.changed.send_modify(|v| *v += 1);
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<Directory> {
        self.current.load_full()
    }

    /// The Registry's part changed.
    pub fn set_announces(&self, announces: Vec<NodeAnnounce>) {
        let _w = self.write.lock();
        let view = self.current.load().view.clone();
        self.store(Directory::new(announces, view));
    }

    /// The Membership's part changed (a no-op when it did not).
    pub fn set_view(&self, view: Vec<MemberView>) {
        let _w = self.write.lock();
        let cur = self.current.load();
        if cur.view == view {
            return;
        }
        let announces = cur.announces.clone();
        self.store(Directory::new(announces, view));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::wire::{HostedPlugin, PluginStatus};
    use plexus_membership::NodeIdentity;

    fn id(n: &str) -> NodeIdentity {
        NodeIdentity {
            name: n.into(),
            cluster_addr: String::new(),
            api_addr: String::new(),
            generation: 1,
        }
    }

    fn ann(node: &str, plugin: &str, agents: &[&str]) -> NodeAnnounce {
        NodeAnnounce {
            identity: id(node),
            seq: 1,
            labels: Default::default(),
            offers: vec![],
            plugins: vec![HostedPlugin {
                name: plugin.into(),
                version: "1".into(),
                status: PluginStatus::Running,
                handler: "sim".into(),
                agents: agents.iter().map(|a| a.to_string()).collect(),
                commands: vec![],
                aliases: vec![],
                restarts: 0,
                breaker: "closed".into(),
                tools: vec![],
                servers: vec![],
            }],
        }
    }

    fn member(n: &str, status: MemberStatus) -> MemberView {
        MemberView {
            identity: id(n),
            status,
            local: false,
        }
    }

    #[test]
    fn peers_announced_waits_for_every_peer_that_is_up() {
        let cell = DirectoryCell::default();
        cell.set_announces(vec![ann("me", "p", &[])]);
        cell.set_view(vec![member("me", MemberStatus::Up)]);
        assert!(!cell.load().peers_announced("me"), "no peer yet");
        cell.set_view(vec![
            member("me", MemberStatus::Up),
            member("b", MemberStatus::Up),
            member("c", MemberStatus::Up),
            member("d", MemberStatus::Down),
        ]);
        cell.set_announces(vec![ann("me", "p", &[]), ann("b", "q", &[])]);
        assert!(!cell.load().peers_announced("me"), "c is up, not announced");
        cell.set_announces(vec![
            ann("me", "p", &[]),
            ann("b", "q", &[]),
            ann("c", "r", &[]),
        ]);
        assert!(
            cell.load().peers_announced("me"),
            "d is down: not waited for"
        );
    }

    #[test]
    fn agents_are_found_with_their_node_and_live_status() {
        let cell = DirectoryCell::default();
        cell.set_announces(vec![ann("a", "p", &["x", "y"]), ann("b", "q", &["x"])]);
        // Before the view knows the nodes, nothing is available.
        assert_eq!(cell.load().agent("p::x")[0].status, "unavailable");
        cell.set_view(vec![
            member("a", MemberStatus::Up),
            member("b", MemberStatus::Down),
        ]);
        let d = cell.load();
        assert_eq!(d.agent_count(), 3);
        let px = d.agent("p::x");
        assert_eq!(px.len(), 1);
        assert_eq!((px[0].node.as_str(), px[0].usable()), ("a", true));
        let qx = d.agent("q::x");
        assert_eq!((qx[0].node.as_str(), qx[0].usable()), ("b", false));
        assert!(d.agent("p::nope").is_empty());
        assert_eq!(d.plugin("q").len(), 1);
        // A later announce replaces the registry part but keeps the view.
        cell.set_announces(vec![ann("a", "p", &["x"])]);
        let d = cell.load();
        assert!(d.agent("p::y").is_empty());
        assert!(d.agent("p::x")[0].usable());
    }
}
