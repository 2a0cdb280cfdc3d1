//! The Registry actor: which node hosts which plugin, cluster-wide.
//!
//! Each node announces its own plugins (with their status) to every member
//! that comes up, whenever something changes, and periodically. The registry
//! keeps the newest announce per node, so the plugins of a node that went
//! down are still listed (as unavailable) and come back with it.
//!
//! It also decides what this node runs. An announce carries the plugins a
//! node may host and its labels; from those and the members up, the
//! registry computes the cluster placement (`plexus_placement`, the same
//! answer on every node) after every change and every second, and tells
//! the PluginSupervisor which plugins to run here. A plugin that moves away
//! keeps running here until its new node announces it running.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plexus_handler::{DiscoveredCommand, HandlerReport};
use plexus_membership::{MemberStatus, MemberView, NodeIdentity};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;

use crate::actors::plugins::PluginSupervisorMsg;
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
    /// The PluginSupervisor (re)started: tell it what to run.
    Resend,
    Tick,
    /// Compute the placement again (settle periods end with time).
    Place,
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
    /// Since when each node has been up, for placement's hysteresis.
    tracker: plexus_placement::Tracker,
    /// What this node runs: what it last told the PluginSupervisor.
    running_here: BTreeSet<String>,
    started: Instant,
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
        // Reachable before anything can answer it: hosts report their
        // status through this slot as soon as an `Assign` reaches them.
        ctx.actors.registry.set(myself.clone());
        myself.send_interval(Duration::from_secs(10), || RegistryMsg::Tick);
        myself.send_interval(Duration::from_secs(1), || RegistryMsg::Place);
        // A restarted registry starts from the directory its predecessor
        // and the Membership actor published (empty at the node's start).
        let dir = ctx.directory.load();
        let me = ctx.name().to_string();
        let nodes: BTreeMap<String, NodeAnnounce> = dir
            .announces
            .iter()
            .filter(|a| a.identity.name != me)
            .map(|a| (a.identity.name.clone(), a.clone()))
            .collect();
        let up: BTreeMap<String, NodeIdentity> = dir
            .view
            .iter()
            .filter(|m| m.status == MemberStatus::Up && m.identity.name != me)
            .map(|m| (m.identity.name.clone(), m.identity.clone()))
            .collect();
        let mut st = RegistryState {
            tracker: plexus_placement::Tracker::new(ctx.config.placement_settle),
            ctx,
            seq: 0,
            local: vec![],
            nodes,
            up,
            stale: BTreeSet::new(),
            running_here: BTreeSet::new(),
            started: crate::net::links::now(),
        };
        // A restarted registry takes over what the PluginSupervisor runs.
        let running: BTreeSet<String> = st.ctx.placement_running.read().clone();
        set_running(&mut st, running);
        place(&mut st);
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
            RegistryMsg::Place => {
                // Anti-entropy for a lost cast (to or from a PluginSupervisor
                // that was restarting): asking again is idempotent, hosts
                // that run report their status, so an entry is never stuck
                // at `restarting`.
                if st
                    .local
                    .iter()
                    .any(|h| h.status == PluginStatus::Restarting)
                {
                    st.ctx
                        .actors
                        .plugins
                        .cast(PluginSupervisorMsg::Assign(st.running_here.clone()));
                }
            }
            RegistryMsg::Resend => {
                st.ctx
                    .actors
                    .plugins
                    .cast(PluginSupervisorMsg::Assign(st.running_here.clone()));
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
        place(st);
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
        labels: st.ctx.config.labels.clone(),
        offers: offers(&st.ctx),
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
        .offered
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
        labels: st.ctx.config.labels.clone(),
        offers: offers(&st.ctx),
    }
}

/// The plugins this node may host, with their `[placement]`.
fn offers(ctx: &NodeCtx) -> Vec<plexus_placement::PluginSpec> {
    ctx.offered
        .iter()
        .map(|p| plexus_placement::PluginSpec {
            name: p.name.clone(),
            replicas: p.manifest.placement.replicas.max(1),
            requires: p.manifest.placement.labels.clone(),
        })
        .collect()
}

/// A plugin this node starts running, as its announce lists it.
fn hosted_entry(ctx: &NodeCtx, p: &plexus_catalog::Plugin) -> HostedPlugin {
    let mut h = HostedPlugin {
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
    };
    if let Some(r) = ctx.handler_reports.read().get(&p.name) {
        apply_report(&mut h, ctx, r);
    }
    h
}

/// Make `running` what this node runs: announce entries for new plugins,
/// none for dropped ones, and the PluginSupervisor told.
fn set_running(st: &mut RegistryState, running: BTreeSet<String>) {
    let ctx = st.ctx.clone();
    st.local.retain(|h| running.contains(&h.name));
    for name in &running {
        if st.local.iter().all(|h| &h.name != name) {
            if let Some(p) = ctx.offered(name) {
                st.local.push(hosted_entry(&ctx, p));
            }
        }
    }
    st.local.sort_by(|a, b| a.name.cmp(&b.name));
    *ctx.placement_running.write() = running.clone();
    st.running_here = running.clone();
    ctx.actors
        .plugins
        .cast(PluginSupervisorMsg::Assign(running));
}

/// How long a node with seeds waits for a first peer's announce before it
/// places plugins alone (all on itself, to hand them over later).
const ALONE_AFTER: Duration = Duration::from_secs(3);

/// Compute the placement from the members up and their announces; start
/// or stop plugins here to match it.
fn place(st: &mut RegistryState) {
    let now = crate::net::links::now();
    let me = st.ctx.identity.read().clone();
    // A joining node first hears who runs what, so it does not start
    // everything only to hand it over a moment later.
    let pinned = st.ctx.config.placement == crate::config::PlacementMode::Pinned;
    if !pinned
        && !st.ctx.config.seeds.is_empty()
        && st.nodes.is_empty()
        && now.saturating_duration_since(st.started) < ALONE_AFTER
    {
        return;
    }
    let mut up: Vec<(&str, u64)> = st
        .up
        .values()
        .filter(|id| id.name != me.name)
        .map(|id| (id.name.as_str(), id.generation))
        .collect();
    up.push((me.name.as_str(), me.generation));
    st.tracker.observe(up.iter().copied(), now);
    let all = all_announces(st);
    let mut candidates = vec![];
    let mut specs = vec![];
    let mut running = plexus_placement::Running::new();
    let mut serving = plexus_placement::Running::new();
    for a in &all {
        let name = &a.identity.name;
        let is_up = *name == me.name || (st.up.contains_key(name) && !st.stale.contains(name));
        if !is_up {
            continue;
        }
        specs.extend(a.offers.iter().cloned());
        candidates.push(plexus_placement::Candidate {
            name: name.clone(),
            labels: a.labels.clone(),
            offers: a.offers.iter().map(|o| o.name.clone()).collect(),
            settled: st.tracker.settled(name, now),
        });
        for p in &a.plugins {
            if p.status != PluginStatus::Failed {
                running
                    .entry(p.name.clone())
                    .or_default()
                    .insert(name.clone());
            }
            if p.status == PluginStatus::Running {
                serving
                    .entry(p.name.clone())
                    .or_default()
                    .insert(name.clone());
            }
        }
    }
    if pinned {
        // Every node that may host a plugin runs it: as many replicas as
        // there are such nodes up.
        for spec in &mut specs {
            let offering = candidates
                .iter()
                .filter(|c| c.offers.contains(&spec.name))
                .count();
            spec.replicas = u32::try_from(offering).unwrap_or(u32::MAX).max(1);
        }
    }
    let assignment = plexus_placement::assign(&candidates, &specs, &running);
    let run = plexus_placement::to_run(&assignment, &me.name, &st.running_here, &serving);
    if *st.ctx.placement.read() != assignment {
        tracing::debug!(mine = ?assignment.for_node(&me.name), "placement changed");
        *st.ctx.placement.write() = assignment;
    }
    if run != st.running_here {
        let added: Vec<&String> = run.difference(&st.running_here).collect();
        let removed: Vec<&String> = st.running_here.difference(&run).collect();
        tracing::info!(?added, ?removed, "placement: plugins move");
        st.ctx.metrics.placement_moves(added.len() + removed.len());
        set_running(st, run);
        broadcast(st);
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
                labels: Default::default(),
                offers: vec![],
                plugins: vec![time_b, git_b, hosted("sim", PluginStatus::Running)],
            },
            // A stale announce of ourselves is ignored: our own list is current.
            NodeAnnounce {
                identity: id("a"),
                seq: 1,
                labels: Default::default(),
                offers: vec![],
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
                labels: Default::default(),
                offers: vec![],
                plugins: vec![hosted("p", PluginStatus::Running)],
            },
            NodeAnnounce {
                identity: id("b"),
                seq: 1,
                labels: Default::default(),
                offers: vec![],
                plugins: vec![
                    hosted("q", PluginStatus::Running),
                    hosted("r", PluginStatus::Failed),
                ],
            },
            NodeAnnounce {
                identity: id("c"),
                seq: 1,
                labels: Default::default(),
                offers: vec![],
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
