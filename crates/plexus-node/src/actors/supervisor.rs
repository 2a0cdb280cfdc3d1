//! The NodeSupervisor: root of a node's actor tree.
//!
//! ```text
//! NodeSupervisor
//! ├── Registry          plugins cluster-wide
//! ├── Membership        SWIM, links, reconnects
//! ├── Gateway           the node's one cluster-visible actor
//! ├── PluginSupervisor
//! │   └── PluginHost[p] one per hosted plugin
//! ├── Router            routing engine fed by the live registry
//! ├── State             replicated state replica (gossip, consistency, leases)
//! └── Workflows         one RunActor per workflow run / saga
//! ```
//!
//! A failed child is restarted within a restart intensity; past it the
//! supervisor itself fails and the node stops (the process exits non-zero so
//! an outer supervisor — systemd, Docker, `plexus up` — sees it).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use plexus_resilience::restart::{Decision, RestartIntensity};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use ractor_cluster::RactorMessage;

use crate::actors::membership::{MembershipActor, MembershipArgs};
use crate::actors::plugins::PluginSupervisor;
use crate::actors::registry::Registry;
use crate::actors::router::RouterActor;
use crate::actors::state::StateActor;
use crate::actors::workflows::WorkflowSupervisor;
use crate::ctx::{actor_name, NodeCtx};
use crate::net::gateway::Gateway;

#[derive(RactorMessage)]
pub enum NodeSupervisorMsg {
    /// A child gave up on something it supervises.
    Escalate { what: String, reason: String },
    /// (Re)start a child by role.
    Start(Role),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Registry,
    Membership,
    Gateway,
    Plugins,
    Router,
    State,
    Workflows,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Registry => "registry",
            Role::Membership => "membership",
            Role::Gateway => "gateway",
            Role::Plugins => "plugins",
            Role::Router => "router",
            Role::State => "state",
            Role::Workflows => "workflows",
        }
    }
}

pub struct NodeSupervisorArgs {
    pub ctx: Arc<NodeCtx>,
    pub seed: u64,
}

pub struct NodeSupervisorState {
    args: NodeSupervisorArgs,
    children: HashMap<Role, ActorCell>,
    intensity: RestartIntensity,
    escalations: Vec<(Instant, String)>,
}

pub struct NodeSupervisor;

async fn spawn_child(
    myself: &ActorRef<NodeSupervisorMsg>,
    st: &NodeSupervisorState,
    role: Role,
) -> Result<ActorCell, ActorProcessingErr> {
    let ctx = st.args.ctx.clone();
    let name = Some(actor_name(ctx.name(), role.name()));
    let sup = myself.get_cell();
    let a = &ctx.actors;
    let cell = match role {
        Role::Registry => {
            let (r, _) = Actor::spawn_linked(name, Registry, ctx.clone(), sup).await?;
            a.registry.set(r.clone());
            r.get_cell()
        }
        Role::Membership => {
            let args = MembershipArgs {
                ctx: ctx.clone(),
                seed: st.args.seed,
            };
            let (r, _) = Actor::spawn_linked(name, MembershipActor, args, sup).await?;
            a.membership.set(r.clone());
            r.get_cell()
        }
        Role::Gateway => {
            let (r, _) = Actor::spawn_linked(name, Gateway, ctx.clone(), sup).await?;
            a.gateway.set(r.clone());
            r.get_cell()
        }
        Role::Plugins => {
            let (r, _) = Actor::spawn_linked(name, PluginSupervisor, ctx.clone(), sup).await?;
            a.plugins.set(r.clone());
            r.get_cell()
        }
        Role::Router => {
            let (r, _) = Actor::spawn_linked(name, RouterActor, ctx.clone(), sup).await?;
            a.router.set(r.clone());
            r.get_cell()
        }
        Role::State => {
            let (r, _) = Actor::spawn_linked(name, StateActor, ctx.clone(), sup).await?;
            a.state.set(r.clone());
            r.get_cell()
        }
        Role::Workflows => {
            let (r, _) = Actor::spawn_linked(name, WorkflowSupervisor, ctx.clone(), sup).await?;
            a.workflows.set(r.clone());
            r.get_cell()
        }
    };
    Ok(cell)
}

/// Clear the typed handle of a child that stopped.
fn forget(ctx: &NodeCtx, role: Role, cell: &ActorCell) {
    let a = &ctx.actors;
    match role {
        Role::Registry => a.registry.clear(cell),
        Role::Membership => a.membership.clear(cell),
        Role::Gateway => a.gateway.clear(cell),
        Role::Plugins => a.plugins.clear(cell),
        Role::Router => a.router.clear(cell),
        Role::State => a.state.clear(cell),
        Role::Workflows => a.workflows.clear(cell),
    }
}

impl Actor for NodeSupervisor {
    type Msg = NodeSupervisorMsg;
    type State = NodeSupervisorState;
    type Arguments = NodeSupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: NodeSupervisorArgs,
    ) -> Result<NodeSupervisorState, ActorProcessingErr> {
        args.ctx.actors.supervisor.set(myself.clone());
        let mut st = NodeSupervisorState {
            args,
            children: HashMap::new(),
            intensity: RestartIntensity::new(5, Duration::from_secs(30)),
            escalations: vec![],
        };
        for role in [
            Role::Registry,
            Role::Membership,
            Role::Gateway,
            Role::Plugins,
            Role::Router,
            Role::State,
            Role::Workflows,
        ] {
            let cell = spawn_child(&myself, &st, role).await?;
            st.children.insert(role, cell);
        }
        Ok(st)
    }

    async fn post_stop(
        &self,
        _me: ActorRef<Self::Msg>,
        st: &mut NodeSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        for c in st.children.values() {
            c.stop(Some("node stopping".into()));
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: NodeSupervisorMsg,
        st: &mut NodeSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NodeSupervisorMsg::Escalate { what, reason } => {
                tracing::error!(%what, %reason, "escalated to the node supervisor");
                st.escalations
                    .push((crate::net::links::now(), format!("{what}: {reason}")));
                if st.escalations.len() > 100 {
                    st.escalations.remove(0);
                }
            }
            NodeSupervisorMsg::Start(role) => {
                if !st.children.contains_key(&role) {
                    let cell = spawn_child(&myself, st, role).await?;
                    st.children.insert(role, cell);
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        st: &mut NodeSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match evt {
            SupervisionEvent::ActorFailed(c, e) => (c, e.to_string()),
            SupervisionEvent::ActorTerminated(c, _, r) => {
                (c, r.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        let role = st
            .children
            .iter()
            .find(|(_, c)| c.get_id() == cell.get_id())
            .map(|(r, _)| *r);
        let Some(role) = role else { return Ok(()) };
        st.children.remove(&role);
        forget(&st.args.ctx, role, &cell);
        match st.intensity.record(crate::net::links::now()) {
            Decision::Restart => {
                tracing::warn!(role = role.name(), reason = %why, "node service failed; restarting");
                myself.send_after(Duration::from_millis(50), move || {
                    NodeSupervisorMsg::Start(role)
                });
                Ok(())
            }
            Decision::GiveUp => Err(format!(
                "node service {} failed too often (last: {why})",
                role.name()
            )
            .into()),
        }
    }
}
