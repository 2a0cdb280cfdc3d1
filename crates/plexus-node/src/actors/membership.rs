//! The Membership actor: a thin shell around the sans-IO SWIM protocol
//! (`plexus-membership`). It turns packets and timers into protocol calls,
//! carries out the protocol's output, keeps links to every member up (the
//! reconnect loop ractor_cluster lacks), and tells the registry and bus when
//! nodes come and go.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::net::links::now;

use plexus_bus::{BusFrame, Envelope, MessageKind};
use plexus_membership::{
    MemberEvent, MemberStatus, MemberView, Membership, NodeIdentity, Output, Timer,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;

use crate::actors::registry::RegistryMsg;
use crate::ctx::NodeCtx;
use crate::net::wire::Wire;

#[derive(RactorMessage)]
pub enum MembershipMsg {
    /// A SWIM packet from a peer.
    Packet(Vec<u8>),
    /// A protocol timer fired.
    Timer(Timer<NodeIdentity>),
    /// A peer introduced itself.
    Hello(NodeIdentity),
    /// A cluster link to `peer` is ready / gone.
    LinkUp(String),
    LinkDown(String),
    /// Reconnect loop.
    Tick,
    View(RpcReplyPort<Vec<MemberView>>),
    /// Leave gracefully (shutdown).
    Leave(RpcReplyPort<()>),
}

pub struct MembershipArgs {
    pub ctx: Arc<NodeCtx>,
    pub seed: u64,
}

pub struct MembershipState {
    ctx: Arc<NodeCtx>,
    proto: Membership,
    links: BTreeSet<String>,
    last_dial: HashMap<String, Instant>,
    /// When `--seed-dns` was last looked up.
    last_dns: Option<Instant>,
    tick: Option<ractor::concurrency::JoinHandle<()>>,
}

pub struct MembershipActor;

const TICK: Duration = Duration::from_millis(500);

impl Actor for MembershipActor {
    type Msg = MembershipMsg;
    type State = MembershipState;
    type Arguments = MembershipArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: MembershipArgs,
    ) -> Result<MembershipState, ActorProcessingErr> {
        let me = args.ctx.identity.read().clone();
        let proto = Membership::new(me, &args.ctx.config.membership, args.seed);
        // Learn about links coming and going.
        args.ctx.links.watch(
            args.ctx.name(),
            Arc::new(crate::net::gateway::NodeInbox(Arc::downgrade(&args.ctx))),
        );
        let tick = Some(myself.send_interval(TICK, || MembershipMsg::Tick));
        let mut st = MembershipState {
            ctx: args.ctx,
            proto,
            links: BTreeSet::new(),
            last_dial: HashMap::new(),
            last_dns: None,
            tick,
        };
        // Links that were up before a restart of this actor.
        for n in st.ctx.linked_nodes() {
            st.links.insert(n);
        }
        dial_seeds(&mut st);
        st.ctx.directory.set_view(st.proto.view());
        Ok(st)
    }

    async fn post_stop(
        &self,
        _me: ActorRef<Self::Msg>,
        st: &mut MembershipState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = st.tick.take() {
            t.abort();
        }
        st.ctx.links.unwatch(st.ctx.name());
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: MembershipMsg,
        st: &mut MembershipState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MembershipMsg::Packet(p) => match st.proto.handle_data(&p) {
                Ok(out) => apply(&myself, st, out),
                Err(e) => tracing::warn!(error = %e, "malformed membership packet"),
            },
            MembershipMsg::Timer(t) => match st.proto.handle_timer(t) {
                Ok(out) => apply(&myself, st, out),
                Err(e) => tracing::debug!(error = %e, "membership timer"),
            },
            MembershipMsg::Hello(id) => {
                if id.name != st.ctx.name() {
                    match st.proto.announce(id) {
                        Ok(out) => apply(&myself, st, out),
                        Err(e) => tracing::debug!(error = %e, "announce"),
                    }
                }
            }
            MembershipMsg::LinkUp(peer) => {
                tracing::info!(%peer, "cluster link up");
                st.links.insert(peer.clone());
                say_hello(st, &peer);
            }
            MembershipMsg::LinkDown(peer) => {
                tracing::info!(%peer, "cluster link down");
                st.links.remove(&peer);
            }
            MembershipMsg::Tick => tick(st),
            MembershipMsg::View(reply) => {
                let _ = reply.send(st.proto.view());
            }
            MembershipMsg::Leave(reply) => {
                let out = st.proto.leave();
                for (to, data) in out.send {
                    let _ = st.ctx.send(&to.name, Wire::Foca(data));
                }
                let _ = reply.send(());
            }
        }
        // Publish the view for request paths (a no-op when unchanged).
        st.ctx.directory.set_view(st.proto.view());
        Ok(())
    }
}

fn say_hello(st: &MembershipState, peer: &str) {
    let me = st.proto.identity().clone();
    if let Err(e) = st.ctx.send(peer, Wire::Hello(me)) {
        tracing::debug!(%peer, error = %e, "hello not sent yet");
    }
}

fn apply(myself: &ActorRef<MembershipMsg>, st: &mut MembershipState, out: Output) {
    for (to, data) in out.send {
        // A lost packet is what SWIM expects from a dead link.
        let _ = st.ctx.send(&to.name, Wire::Foca(data));
    }
    for (after, timer) in out.timers {
        myself.send_after(after, move || MembershipMsg::Timer(timer));
    }
    for ev in out.events {
        match ev {
            MemberEvent::Up(id) => {
                st.ctx.metrics.member_event("up");
                tracing::info!(peer = %id.name, generation = id.generation, "member up");
                // Tell the newcomer what we subscribe to and what we host.
                let interest = st.ctx.bus.local_interest();
                let _ = st
                    .ctx
                    .send(&id.name, Wire::Bus(Box::new(BusFrame::Interest(interest))));
                publish_health(&st.ctx, &id, MemberStatus::Up);
                st.ctx.actors.registry.cast(RegistryMsg::MemberUp(id));
                st.ctx
                    .actors
                    .workflows
                    .cast(crate::actors::workflows::WorkflowsMsg::PeerUp);
            }
            MemberEvent::Down(id) => {
                st.ctx.metrics.member_event("down");
                let failed = st.ctx.bus.peer_down(&id.name);
                st.ctx.links.drop_link(st.ctx.name(), &id.name);
                tracing::warn!(peer = %id.name, generation = id.generation, failed_requests = failed, "member down");
                publish_health(&st.ctx, &id, MemberStatus::Down);
                st.ctx.actors.registry.cast(RegistryMsg::MemberDown(id));
            }
            MemberEvent::Rejoined(id) => {
                st.ctx.metrics.member_event("rejoined");
                tracing::warn!(
                    generation = id.generation,
                    "declared down by peers; rejoined with a new generation"
                );
                *st.ctx.identity.write() = id;
                st.ctx.actors.registry.cast(RegistryMsg::Reannounce);
            }
        }
    }
}

fn publish_health(ctx: &NodeCtx, id: &NodeIdentity, status: MemberStatus) {
    let payload =
        serde_json::json!({"node": id.name, "generation": id.generation, "status": status});
    let env = Envelope::new(
        MessageKind::Event,
        "system/health",
        ctx.name(),
        payload.to_string().into_bytes(),
    );
    let _ = ctx.bus.publish(env);
}

fn dial(st: &mut MembershipState, addr: &str, every: Duration) {
    let now = now();
    if st
        .last_dial
        .get(addr)
        .is_some_and(|t| now.duration_since(*t) < every)
    {
        return;
    }
    st.last_dial.insert(addr.to_string(), now);
    st.ctx.links.dial(st.ctx.name(), addr);
}

fn dial_seeds(st: &mut MembershipState) {
    let own = st.ctx.config.cluster_addr();
    let seeds: Vec<String> = st
        .ctx
        .config
        .seeds
        .iter()
        .filter(|s| **s != own)
        .cloned()
        .collect();
    for s in seeds {
        dial(st, &s, Duration::from_secs(2));
    }
    if st.ctx.config.seed_dns.is_empty()
        || st
            .last_dns
            .is_some_and(|t| now().duration_since(t) < Duration::from_secs(2))
    {
        return;
    }
    st.last_dns = Some(now());
    // DNS lookups block: resolve in a task, then dial every address found.
    let ctx = st.ctx.clone();
    tokio::spawn(async move {
        let others = resolve_seeds(&ctx).await;
        ctx.lifecycle.set_dns_others(others.len());
        for a in others {
            ctx.links.dial(ctx.name(), &a.to_string());
        }
    });
}

/// Every address the `--seed-dns` names resolve to, except this node's own
/// (its advertised cluster address, resolved too, and its listen address).
async fn resolve_seeds(ctx: &NodeCtx) -> Vec<std::net::SocketAddr> {
    let mut own: BTreeSet<std::net::SocketAddr> =
        tokio::net::lookup_host(ctx.config.cluster_addr())
            .await
            .map(|a| a.collect())
            .unwrap_or_default();
    own.insert(ctx.config.listen);
    let mut found = BTreeSet::new();
    for name in &ctx.config.seed_dns {
        match tokio::net::lookup_host(name.as_str()).await {
            Ok(addrs) => found.extend(addrs.filter(|a| !own.contains(a))),
            Err(e) => tracing::debug!(seed = %name, error = %e, "DNS seed did not resolve (yet)"),
        }
    }
    tracing::debug!(seeds = ?ctx.config.seed_dns, found = ?found, "DNS seeds looked up");
    found.into_iter().collect()
}

/// The reconnect loop: keep a link to every member, and to the seeds while alone.
fn tick(st: &mut MembershipState) {
    let view = st.proto.view();
    let known_up: Vec<&MemberView> = view.iter().filter(|m| !m.local).collect();
    if st.links.is_empty() || known_up.iter().all(|m| m.status == MemberStatus::Down) {
        dial_seeds(st);
    }
    let me = st.ctx.name().to_string();
    for m in &view {
        if m.local || m.identity.name == me || st.links.contains(&m.identity.name) {
            continue;
        }
        let every = match m.status {
            MemberStatus::Up | MemberStatus::Unreachable => Duration::from_secs(1),
            MemberStatus::Down => Duration::from_secs(2),
        };
        let addr = m.identity.cluster_addr.clone();
        dial(st, &addr, every);
    }
    // A linked peer that membership does not know yet: introduce ourselves again.
    let links: Vec<String> = st.links.iter().cloned().collect();
    for peer in links {
        let known = view
            .iter()
            .any(|m| m.identity.name == peer && m.status != MemberStatus::Down);
        if !known {
            say_hello(st, &peer);
        }
    }
}
