//! The Registry actor: which node hosts which plugin, cluster-wide.
//!
//! Each node announces its own plugins (with their status) to every member
//! that comes up, whenever something changes, and periodically. The registry
//! keeps the newest announce per node, so the plugins of a node that went
//! down are still listed (as unavailable) and come back with it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use plexus_handler::{DiscoveredCommand, HandlerReport};
use plexus_membership::{MemberStatus, MemberView, NodeIdentity};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;

use crate::actors::router::RouterMsg;
use crate::ctx::NodeCtx;
use crate::net::wire::{HostedPlugin, NodeAnnounce, PluginStatus, Wire};
use plexus_bus::BusFrame;

#[derive(RactorMessage)]
pub enum RegistryMsg {
    /// A peer's announce.
    Announce(NodeAnnounce),
    MemberUp(NodeIdentity),
    MemberDown(NodeIdentity),
    /// A local plugin host changed state.
    LocalStatus {
        plugin: String,
        status: PluginStatus,
        restarts: u32,
    },
    /// A local plugin's circuit breaker changed state.
    LocalBreaker {
        plugin: String,
        state: String,
    },
    /// A local plugin's handler found commands or changed its servers (MCP).
    LocalReport {
        plugin: String,
        report: HandlerReport,
    },
    /// Our identity changed (rejoin): tell everyone again.
    Reannounce,
    Tick,
    Snapshot(RpcReplyPort<Vec<NodeAnnounce>>),
}

pub struct RegistryState {
    ctx: Arc<NodeCtx>,
    seq: u64,
    local: Vec<HostedPlugin>,
    nodes: BTreeMap<String, NodeAnnounce>,
    up: BTreeMap<String, NodeIdentity>,
    /// Nodes declared down whose announce since is older than that: their
    /// bus forgot their interest, so until they announce again their
    /// plugins are not shown available (a thawed node is `up` again a
    /// moment before its interest arrives).
    stale: BTreeSet<String>,
}

pub struct Registry;

impl Actor for Registry {
    type Msg = RegistryMsg;
    type State = RegistryState;
    type Arguments = Arc<NodeCtx>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        ctx: Arc<NodeCtx>,
    ) -> Result<RegistryState, ActorProcessingErr> {
        tracing::debug!("registry starting");
        let reports = ctx.handler_reports.read().clone();
        let mut local: Vec<HostedPlugin> = ctx
            .hosted
            .iter()
            .map(|p| HostedPlugin {
                name: p.name.clone(),
                version: p.version.clone(),
                status: PluginStatus::Restarting,
                handler: crate::services::agents::kind_of(p, ctx.llm.is_some()).into(),
                agents: p.agents.iter().map(|a| a.name.clone()).collect(),
                commands: p.commands.iter().map(|c| c.name.clone()).collect(),
                aliases: p
                    .commands
                    .iter()
                    .filter_map(|c| c.alias.clone().map(|a| (a, c.name.clone())))
                    .collect(),
                restarts: 0,
                breaker: "closed".into(),
                tools: vec![],
                servers: vec![],
            })
            .collect();
        for p in &mut local {
            if let Some(r) = reports.get(&p.name) {
                apply_report(p, &ctx, r);
            }
        }
        myself.send_interval(Duration::from_secs(10), || RegistryMsg::Tick);
        let st = RegistryState {
            ctx,
            seq: 0,
            local,
            nodes: BTreeMap::new(),
            up: BTreeMap::new(),
            stale: BTreeSet::new(),
        };
        st.ctx.directory.set_announces(all_announces(&st));
        Ok(st)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: RegistryMsg,
        st: &mut RegistryState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RegistryMsg::Announce(a) => {
                let newer = st.nodes.get(&a.identity.name).is_none_or(|old| {
                    (a.identity.generation, a.seq) > (old.identity.generation, old.seq)
                });
                tracing::debug!(from = %a.identity.name, generation = a.identity.generation, seq = a.seq, plugins = a.plugins.len(), newer, "announce");
                if newer {
                    // Fresh from a node that was down: its interest came
                    // before it on the same link, so its bus is reachable.
                    st.stale.remove(&a.identity.name);
                    st.nodes.insert(a.identity.name.clone(), a);
                    sync_discovered(st);
                }
            }
            RegistryMsg::MemberUp(id) => {
                st.up.insert(id.name.clone(), id.clone());
                let a = own_announce(st);
                send_announce(st, &id.name, &a);
            }
            RegistryMsg::MemberDown(id) => {
                st.up.remove(&id.name);
                st.stale.insert(id.name.clone());
            }
            RegistryMsg::LocalStatus {
                plugin,
                status,
                restarts,
            } => {
                if let Some(p) = st.local.iter_mut().find(|p| p.name == plugin) {
                    p.status = status;
                    p.restarts = restarts;
                }
                broadcast(st);
            }
            RegistryMsg::LocalBreaker { plugin, state } => {
                if let Some(p) = st.local.iter_mut().find(|p| p.name == plugin) {
                    p.breaker = state;
                }
                broadcast(st);
            }
            RegistryMsg::LocalReport { plugin, report } => {
                let ctx = st.ctx.clone();
                let Some(p) = st.local.iter_mut().find(|p| p.name == plugin) else {
                    return Ok(());
                };
                if apply_report(p, &ctx, &report) {
                    sync_discovered(st);
                    broadcast(st);
                }
            }
            RegistryMsg::Reannounce | RegistryMsg::Tick => broadcast(st),
            RegistryMsg::Snapshot(reply) => {
                let _ = reply.send(all_announces(st));
                return Ok(());
            }
        }
        st.ctx.directory.set_announces(all_announces(st));
        Ok(())
    }
}

/// Every node's newest announce, this node's own current one included.
fn all_announces(st: &RegistryState) -> Vec<NodeAnnounce> {
    let mut all: Vec<NodeAnnounce> = st
        .nodes
        .values()
        .filter(|a| a.identity.name != st.ctx.name())
        .map(|a| {
            let mut a = a.clone();
            if st.stale.contains(&a.identity.name) {
                for p in &mut a.plugins {
                    p.status = PluginStatus::Restarting;
                }
            }
            a
        })
        .collect();
    all.push(NodeAnnounce {
        identity: st.ctx.identity.read().clone(),
        seq: st.seq,
        plugins: st.local.clone(),
    });
    all.sort_by(|a, b| a.identity.name.cmp(&b.identity.name));
    all
}

/// Put a handler's report into its plugin's announce: the discovered tools
/// join the command names. Returns whether anything changed.
fn apply_report(p: &mut HostedPlugin, ctx: &NodeCtx, r: &HandlerReport) -> bool {
    if p.tools == r.commands && p.servers == r.servers {
        return false;
    }
    p.tools = r.commands.clone();
    p.servers = r.servers.clone();
    let mut commands: Vec<String> = ctx
        .hosted
        .iter()
        .find(|h| h.name == p.name)
        .map(|h| h.commands.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default();
    for t in &r.commands {
        if !commands.contains(&t.name) {
            commands.push(t.name.clone());
        }
    }
    p.commands = commands;
    true
}

/// Discovered commands per plugin across every announce (ours last, so it
/// wins). When they changed, the node's router indexes them again.
fn sync_discovered(st: &RegistryState) {
    let all = discovered_of(st.nodes.values(), &st.ctx.identity.read().name, &st.local);
    if *st.ctx.discovered.read() == all {
        return;
    }
    *st.ctx.discovered.write() = all.clone();
    if let Some(r) = st.ctx.actors.router.get() {
        let _ = r.cast(RouterMsg::Reindex(all));
    }
}

/// Join the discovered commands of peers' announces and our own plugins.
pub fn discovered_of<'a>(
    peers: impl Iterator<Item = &'a NodeAnnounce>,
    me: &str,
    local: &[HostedPlugin],
) -> BTreeMap<String, Vec<DiscoveredCommand>> {
    let mut all = BTreeMap::new();
    for a in peers.filter(|a| a.identity.name != me) {
        for p in a.plugins.iter().filter(|p| !p.tools.is_empty()) {
            all.insert(p.name.clone(), p.tools.clone());
        }
    }
    for p in local.iter().filter(|p| !p.tools.is_empty()) {
        all.insert(p.name.clone(), p.tools.clone());
    }
    all
}

fn own_announce(st: &mut RegistryState) -> NodeAnnounce {
    st.seq += 1;
    NodeAnnounce {
        identity: st.ctx.identity.read().clone(),
        seq: st.seq,
        plugins: st.local.clone(),
    }
}

/// Send our announce, and our bus interest with it, to every member that is
/// up. The interest rides along because a peer forgets it when it declares
/// us down, and a node that rejoins (thawed after being declared down) sees
/// no `Up` of its peers that would make it resend; repeating it with every
/// announce (and at once on `Reannounce`) heals that and any lost frame.
fn broadcast(st: &mut RegistryState) {
    let a = own_announce(st);
    let peers: Vec<String> = st.up.keys().cloned().collect();
    for p in peers {
        send_announce(st, &p, &a);
    }
}

/// Our bus interest, then our announce, to `peer`: once the peer shows our
/// plugins as available, its bus can already reach them.
fn send_announce(st: &RegistryState, peer: &str, a: &NodeAnnounce) {
    let interest = st.ctx.bus.local_interest();
    let _ = st
        .ctx
        .send(peer, Wire::Bus(Box::new(BusFrame::Interest(interest))));
    let _ = st.ctx.send(peer, Wire::Announce(a.clone()));
}

pub use plexus_api::PluginRow;

/// Join announces with the membership view.
pub fn plugin_rows(announces: &[NodeAnnounce], view: &[MemberView]) -> Vec<PluginRow> {
    let mut rows = vec![];
    for a in announces {
        let node_status = view
            .iter()
            .find(|m| m.identity.name == a.identity.name)
            .map(|m| m.status)
            .unwrap_or(MemberStatus::Down);
        for p in &a.plugins {
            let status = match (node_status, p.status) {
                (MemberStatus::Up, PluginStatus::Running) => "available",
                (MemberStatus::Up, PluginStatus::Restarting) => "restarting",
                (MemberStatus::Up, PluginStatus::Failed) => "failed",
                _ => "unavailable",
            };
            rows.push(PluginRow {
                name: p.name.clone(),
                version: p.version.clone(),
                node: a.identity.name.clone(),
                status: status.into(),
                node_status,
                handler: p.handler.clone(),
                agents: p.agents.len(),
                commands: p.commands.len(),
                restarts: p.restarts,
                breaker: p.breaker.clone(),
                tools: p.tools.iter().map(|t| t.name.clone()).collect(),
                servers: p.servers.clone(),
            });
        }
    }
    rows.sort_by(|a, b| a.name.cmp(&b.name).then(a.node.cmp(&b.node)));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: &str) -> NodeIdentity {
        NodeIdentity {
            name: n.into(),
            cluster_addr: String::new(),
            api_addr: String::new(),
            generation: 1,
        }
    }

    fn hosted(name: &str, status: PluginStatus) -> HostedPlugin {
        HostedPlugin {
            name: name.into(),
            version: "1".into(),
            status,
            handler: "sim".into(),
            agents: vec![],
            commands: vec!["c".into()],
            aliases: vec![],
            restarts: 0,
            breaker: "closed".into(),
            tools: vec![],
            servers: vec![],
        }
    }

    #[test]
    fn discovered_tools_of_every_announce_are_joined_ours_last() {
        let tool = |name: &str, desc: &str| DiscoveredCommand {
            name: name.into(),
            description: desc.into(),
            ..Default::default()
        };
        let mut time_b = hosted("time", PluginStatus::Running);
        time_b.tools = vec![tool("get_current_time", "from b")];
        let mut git_b = hosted("git", PluginStatus::Running);
        git_b.tools = vec![tool("git_status", "from b")];
        let peers = [
            NodeAnnounce {
                identity: id("b"),
                seq: 1,
                plugins: vec![time_b, git_b, hosted("sim", PluginStatus::Running)],
            },
            // A stale announce of ourselves is ignored: our own list is current.
            NodeAnnounce {
                identity: id("a"),
                seq: 1,
                plugins: vec![hosted("time", PluginStatus::Running)],
            },
        ];
        let mut mine = hosted("time", PluginStatus::Running);
        mine.tools = vec![
            tool("get_current_time", "from a"),
            tool("convert_time", "a"),
        ];
        let all = discovered_of(peers.iter(), "a", &[mine]);
        assert_eq!(all.len(), 2, "{all:?}");
        assert_eq!(all["time"].len(), 2);
        assert_eq!(all["time"][0].description, "from a");
        assert_eq!(all["git"][0].name, "git_status");
    }

    #[test]
    fn plugins_of_unreachable_or_down_nodes_are_unavailable() {
        let ann = vec![
            NodeAnnounce {
                identity: id("a"),
                seq: 1,
                plugins: vec![hosted("p", PluginStatus::Running)],
            },
            NodeAnnounce {
                identity: id("b"),
                seq: 1,
                plugins: vec![
                    hosted("q", PluginStatus::Running),
                    hosted("r", PluginStatus::Failed),
                ],
            },
            NodeAnnounce {
                identity: id("c"),
                seq: 1,
                plugins: vec![hosted("s", PluginStatus::Running)],
            },
        ];
        let view = vec![
            MemberView {
                identity: id("a"),
                status: MemberStatus::Up,
                local: true,
            },
            MemberView {
                identity: id("b"),
                status: MemberStatus::Up,
                local: false,
            },
            MemberView {
                identity: id("c"),
                status: MemberStatus::Unreachable,
                local: false,
            },
        ];
        let rows = plugin_rows(&ann, &view);
        let st: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| (r.name.as_str(), r.status.as_str()))
            .collect();
        assert_eq!(
            st,
            vec![
                ("p", "available"),
                ("q", "available"),
                ("r", "failed"),
                ("s", "unavailable")
            ]
        );
    }
}
