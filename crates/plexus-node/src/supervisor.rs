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

use crate::ctx::{actor_name, NodeCtx};
use crate::gateway::Gateway;
use crate::membership_actor::{MembershipActor, MembershipArgs};
use crate::plugins::PluginSupervisor;
use crate::registry::Registry;
use crate::router_actor::RouterActor;
use crate::state_actor::StateActor;
use crate::workflows::WorkflowSupervisor;

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
    let cell = match role {
        Role::Registry => Actor::spawn_linked(name, Registry, ctx, sup)
            .await?
            .0
            .get_cell(),
        Role::Membership => {
            let args = MembershipArgs {
                ctx,
                seed: st.args.seed,
            };
            Actor::spawn_linked(name, MembershipActor, args, sup)
                .await?
                .0
                .get_cell()
        }
        Role::Gateway => Actor::spawn_linked(name, Gateway, ctx, sup)
            .await?
            .0
            .get_cell(),
        Role::Plugins => Actor::spawn_linked(name, PluginSupervisor, ctx, sup)
            .await?
            .0
            .get_cell(),
        Role::Router => Actor::spawn_linked(name, RouterActor, ctx, sup)
            .await?
            .0
            .get_cell(),
        Role::State => Actor::spawn_linked(name, StateActor, ctx, sup)
            .await?
            .0
            .get_cell(),
        Role::Workflows => Actor::spawn_linked(name, WorkflowSupervisor, ctx, sup)
            .await?
            .0
            .get_cell(),
    };
    Ok(cell)
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
                    .push((crate::links::now(), format!("{what}: {reason}")));
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
        match st.intensity.record(crate::links::now()) {
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
