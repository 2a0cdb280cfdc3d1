//! The Router actor: a node's routing engine (`plexus-router`) fed by the live
//! registry. Before each decision the caller passes which plugins are
//! available right now; after each execution it reports the outcome, so
//! later decisions shift towards agents that succeed quickly.

use std::sync::Arc;

use plexus_router::{RouteRequest, Router, RoutingDecision};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;

use crate::ctx::NodeCtx;

#[derive(RactorMessage)]
pub enum RouterMsg {
    /// Decide, given `available`: (plugin, usable now).
    Route {
        req: RouteRequest,
        available: Vec<(String, bool)>,
        reply: RpcReplyPort<RoutingDecision>,
    },
    /// How a call that a decision led to went.
    Outcome {
        plugin: String,
        agent: String,
        success: bool,
        latency_ms: u64,
    },
}

pub struct RouterActor;

impl Actor for RouterActor {
    type Msg = RouterMsg;
    type State = Router;
    type Arguments = Arc<NodeCtx>;

    async fn pre_start(
        &self,
        _me: ActorRef<Self::Msg>,
        ctx: Arc<NodeCtx>,
    ) -> Result<Router, ActorProcessingErr> {
        let r = Router::new(&ctx.catalog);
        tracing::info!(documents = r.doc_count(), "router index built");
        Ok(r)
    }

    async fn handle(
        &self,
        _me: ActorRef<Self::Msg>,
        msg: RouterMsg,
        router: &mut Router,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RouterMsg::Route {
                req,
                available,
                reply,
            } => {
                for (p, up) in available {
                    router.set_available(&p, up);
                }
                let _ = reply.send(router.route(&req));
            }
            RouterMsg::Outcome {
                plugin,
                agent,
                success,
                latency_ms,
            } => {
                router.record_outcome(&plugin, &agent, success, latency_ms);
            }
        }
        Ok(())
    }
}
