//! The Router actor: a node's routing engine (`plexus-router`) fed by the live
//! registry. Before each decision the caller passes which plugins are
//! available right now; after each execution it reports the outcome, so
//! later decisions shift towards agents that succeed quickly.

use std::collections::BTreeMap;
use std::sync::Arc;

use plexus_catalog::Catalog;
use plexus_handler::DiscoveredCommand;
use plexus_router::{CachedEmbedder, Embedder, RouteRequest, Router, RoutingDecision};
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
    /// Commands discovered at run time changed (MCP tools, per plugin):
    /// index the catalog with them.
    Reindex(BTreeMap<String, Vec<DiscoveredCommand>>),
    /// The embedding model finished loading (its cache already holds the
    /// catalog's documents), or why it could not be loaded.
    Embedder(Result<Arc<dyn Embedder>, String>),
}

/// The catalog with each plugin's discovered commands added (a discovered
/// command replaces a catalog command of the same name). Plugins this node's
/// catalog does not know are left out: the router indexes catalog plugins.
pub fn with_discovered(
    catalog: &Catalog,
    discovered: &BTreeMap<String, Vec<DiscoveredCommand>>,
) -> Catalog {
    let mut c = catalog.clone();
    for p in &mut c.plugins {
        let Some(found) = discovered.get(&p.name) else {
            continue;
        };
        for d in found {
            let cmd = d.to_command();
            match p.commands.iter_mut().find(|c| c.name == d.name) {
                Some(existing) => *existing = cmd,
                None => p.commands.push(cmd),
            }
        }
    }
    c
}

pub struct RouterActor;

pub struct RouterState {
    ctx: Arc<NodeCtx>,
    router: Router,
}

impl Actor for RouterActor {
    type Msg = RouterMsg;
    type State = RouterState;
    type Arguments = Arc<NodeCtx>;

    async fn pre_start(
        &self,
        me: ActorRef<Self::Msg>,
        ctx: Arc<NodeCtx>,
    ) -> Result<RouterState, ActorProcessingErr> {
        let catalog = with_discovered(&ctx.catalog, &ctx.discovered.read());
        let mut router = Router::new(&catalog);
        tracing::info!(documents = router.doc_count(), "router index built");
        // The model loads and embeds the catalog off the actor (seconds);
        // until then the router decides on BM25F alone and says so.
        let dir = ctx
            .config
            .embed_dir
            .clone()
            .unwrap_or_else(plexus_embed::default_dir);
        router.set_semantic_off_reason(format!(
            "loading the embedding model from {}",
            dir.display()
        ));
        *ctx.router_signals.write() = signals(&router);
        let config = *router.config();
        tokio::task::spawn_blocking(move || {
            let loaded = plexus_embed::MiniLm::load(&dir)
                .map_err(|e| e.to_string())
                .map(|m| -> Arc<dyn Embedder> { Arc::new(CachedEmbedder::new(Arc::new(m))) })
                .and_then(|e| {
                    // Fill the cache with the documents' vectors here.
                    let warm = Router::with_embedder(&catalog, config, Some(e.clone()));
                    warm.semantic_status().map_err(str::to_string)?;
                    Ok(e)
                });
            let _ = me.cast(RouterMsg::Embedder(loaded));
        });
        Ok(RouterState { ctx, router })
    }

    async fn handle(
        &self,
        _me: ActorRef<Self::Msg>,
        msg: RouterMsg,
        st: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        let router = &mut st.router;
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
            RouterMsg::Embedder(loaded) => {
                match loaded {
                    Ok(e) => router.set_embedder(Some(e)),
                    Err(why) => router.set_semantic_off_reason(why),
                }
                let s = signals(router);
                tracing::info!(signals = %s, "router signals");
                *st.ctx.router_signals.write() = s;
            }
            RouterMsg::Reindex(discovered) => {
                router.reindex(&with_discovered(&st.ctx.catalog, &discovered));
                tracing::info!(
                    documents = router.doc_count(),
                    plugins = discovered.len(),
                    "router index rebuilt with discovered commands"
                );
            }
        }
        Ok(())
    }
}

/// What `status` shows of the router's signals.
fn signals(router: &Router) -> String {
    match router.semantic_status() {
        Ok(model) => format!("bm25f+{model}"),
        Err(why) => format!("bm25f alone: {why}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_catalog::Sources;

    #[test]
    fn discovered_commands_join_their_catalog_plugin() {
        let c = Catalog::load(&Sources {
            embedded: vec![(
                "t.toml".into(),
                "[plugin]\nname = \"time\"\n[[commands]]\nname = \"get_current_time\"\ndescription = \"old\"\n".into(),
            )],
            dirs: vec![],
        });
        let d = |name: &str, desc: &str| {
            DiscoveredCommand {
            name: name.into(),
            description: desc.into(),
            input_schema: r#"{"type":"object","properties":{"timezone":{"type":"string","description":"IANA timezone name"}}}"#.into(),
            idempotent: true,
            server: "time".into(),
        }
        };
        let found = BTreeMap::from([
            (
                "time".to_string(),
                vec![
                    d("get_current_time", "Get current time"),
                    d("convert_time", "Convert time"),
                ],
            ),
            ("elsewhere".to_string(), vec![d("x", "y")]),
        ]);
        let c = with_discovered(&c, &found);
        assert_eq!(c.plugins.len(), 1);
        let p = &c.plugins[0];
        let names: Vec<&str> = p.commands.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, vec!["get_current_time", "convert_time"]);
        assert_eq!(p.commands[0].description, "Get current time");
        assert!(p.commands[0]
            .argument_hint
            .as_deref()
            .is_some_and(|h| h.contains("IANA timezone")));
    }
}
