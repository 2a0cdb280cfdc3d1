//! Agents on a language model, in the node: which handler serves a
//! plugin's agents and commands, given the node's `[llm]` table.
//!
//! - `[handler] kind = "llm"`: everything runs on the model.
//! - `kind = "sim"` with a provider configured: the agents and commands run
//!   on the model instead of the simulation (without one they stay
//!   simulated).
//! - `kind = "process"` or `"mcp"` with a provider configured: the plugin's
//!   own handler keeps serving its commands and tools; its agents, and its
//!   Claude Code commands that the handler does not define, run on the model.
//!
//! The choice is [`serves`], a pure function; [`AgentsHandler`] is the
//! thin `CommandHandler` that applies it.

use std::sync::Arc;

use futures::future::BoxFuture;
use plexus_agent::{LlmHandler, ToolHost, Workspaces};
use plexus_catalog::{HandlerSpec, Plugin};
use plexus_handler::{
    CommandHandler, ExecOutput, ExecRequest, HandlerError, HandlerReport, ProgressSender,
    ProviderFailure,
};
use plexus_llm::{LlmConfig, PriceTable};

/// Input keys the runtime reads (`$request`, `$budget_usd`, ...): the model
/// runtime's, stripped before a process or MCP handler sees the input.
const RUNTIME_KEYS: [&str; 6] = [
    "$request",
    "$budget_usd",
    "$model",
    "$max_tokens",
    "$max_turns",
    "$depth",
];

/// The node's model runtime: its `[llm]` table, prices and run workspaces.
pub struct LlmRuntime {
    pub config: LlmConfig,
    pub prices: Arc<PriceTable>,
    pub workspaces: Workspaces,
}

impl LlmRuntime {
    /// Check the configuration and make the workspace root. The error
    /// names what is wrong (a field, the price file, the directory).
    pub fn new(config: LlmConfig) -> Result<LlmRuntime, String> {
        config.validate().map_err(|e| e.to_string())?;
        let prices = match &config.prices_file {
            Some(p) => PriceTable::with_file(p).map_err(|e| e.to_string())?,
            None => PriceTable::default(),
        };
        let workspaces = Workspaces::new(Workspaces::default_root())?;
        Ok(LlmRuntime {
            config,
            prices: Arc::new(prices),
            workspaces,
        })
    }
}

/// Who serves one request of a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// The plugin's own handler (`sim`, `process`, `mcp`).
    Own,
    /// The language model.
    Model,
}

/// Which handler serves `command` (`agent:NAME`, `NAME`, `/NAME`,
/// `command:NAME`) of `plugin`, when the node has a model (`model`).
pub fn serves(plugin: &Plugin, command: &str, model: bool) -> Server {
    match &plugin.manifest.handler {
        HandlerSpec::Llm => Server::Model,
        HandlerSpec::Sim(_) if model => Server::Model,
        HandlerSpec::Sim(_) => Server::Own,
        _ if !model => Server::Own,
        HandlerSpec::Process(p) => match plexus_agent::Target::parse(command) {
            plexus_agent::Target::Agent(a) if plugin.agent(&a).is_some() => Server::Model,
            plexus_agent::Target::Command(c)
                if !p.commands.contains_key(&c)
                    && plugin
                        .command(&c)
                        .is_some_and(|c| !c.body.trim().is_empty()) =>
            {
                Server::Model
            }
            _ => Server::Own,
        },
        HandlerSpec::Mcp(_) => match plexus_agent::Target::parse(command) {
            plexus_agent::Target::Agent(a) if plugin.agent(&a).is_some() => Server::Model,
            plexus_agent::Target::Command(c)
                if plugin
                    .command(&c)
                    .is_some_and(|c| !c.body.trim().is_empty()) =>
            {
                Server::Model
            }
            _ => Server::Own,
        },
    }
}

/// The handler kind status shows: `llm` when the model serves the plugin's
/// agents and commands instead of the simulation.
pub fn kind_of(plugin: &Plugin, model: bool) -> &'static str {
    match &plugin.manifest.handler {
        HandlerSpec::Sim(_) if model => "llm",
        h => h.kind_name(),
    }
}

/// Remove the runtime's `$` keys from a JSON object input, for a handler
/// that does not read them (an MCP tool's schema may refuse them).
pub fn strip_runtime_keys(input: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(input) {
        Ok(serde_json::Value::Object(mut o)) if RUNTIME_KEYS.iter().any(|k| o.contains_key(*k)) => {
            for k in RUNTIME_KEYS {
                o.remove(k);
            }
            serde_json::Value::Object(o).to_string()
        }
        _ => input.to_string(),
    }
}

/// A plugin's handler with the model beside it.
pub struct AgentsHandler {
    plugin: Arc<Plugin>,
    own: Option<Arc<dyn CommandHandler>>,
    /// The model handler, or why there is none (no `[llm]` on the node, a
    /// bad `[llm]` table in the manifest).
    model: Result<LlmHandler, String>,
    has_model: bool,
}

impl AgentsHandler {
    /// `own` is the plugin's own handler (`None` for `kind = "llm"`);
    /// `runtime` the node's model, if configured; `host` what the agents'
    /// `Task`, slash commands and MCP tools reach.
    pub fn new(
        plugin: Arc<Plugin>,
        own: Option<Arc<dyn CommandHandler>>,
        runtime: Option<&LlmRuntime>,
        host: Arc<dyn ToolHost>,
    ) -> AgentsHandler {
        let model = match runtime {
            None => Err(format!(
                "plugin {} runs its agents on a language model, but this node has none configured: start the node with --llm-provider openai|anthropic (and --llm-base-url), an [llm] table, or `plexus up --llm local`",
                plugin.name
            )),
            Some(rt) => LlmHandler::new(
                plugin.clone(),
                &rt.config,
                rt.prices.clone(),
                host,
                rt.workspaces.clone(),
            )
            .map_err(|e| format!("plugin {}: {e}", plugin.name)),
        };
        if let Err(e) = &model {
            if runtime.is_some() {
                tracing::error!(plugin = %plugin.name, error = %e, "the plugin's [llm] table is wrong; its agents will be refused");
            }
        }
        AgentsHandler {
            plugin,
            own,
            model,
            has_model: runtime.is_some(),
        }
    }
}

impl CommandHandler for AgentsHandler {
    fn kind(&self) -> &'static str {
        kind_of(&self.plugin, self.has_model)
    }

    fn execute(&self, req: ExecRequest) -> BoxFuture<'static, Result<ExecOutput, HandlerError>> {
        self.dispatch(req, None)
    }

    fn execute_streaming(
        &self,
        req: ExecRequest,
        progress: ProgressSender,
    ) -> BoxFuture<'static, Result<ExecOutput, HandlerError>> {
        self.dispatch(req, Some(progress))
    }

    fn start(&self) -> BoxFuture<'static, Result<(), HandlerError>> {
        match &self.own {
            Some(o) => o.start(),
            None => Box::pin(async { Ok(()) }),
        }
    }

    fn stopped(&self) -> BoxFuture<'static, String> {
        match &self.own {
            Some(o) => o.stopped(),
            None => Box::pin(futures::future::pending()),
        }
    }

    fn report(&self) -> Option<tokio::sync::watch::Receiver<HandlerReport>> {
        self.own.as_ref().and_then(|o| o.report())
    }
}

impl AgentsHandler {
    /// Send the request to the model or the own handler ([`serves`]),
    /// streaming when `progress` is given.
    fn dispatch(
        &self,
        mut req: ExecRequest,
        progress: Option<ProgressSender>,
    ) -> BoxFuture<'static, Result<ExecOutput, HandlerError>> {
        let run = |h: &dyn CommandHandler, req: ExecRequest| match progress {
            Some(p) => h.execute_streaming(req, p),
            None => h.execute(req),
        };
        match (
            serves(&self.plugin, &req.command, self.has_model),
            &self.own,
        ) {
            (Server::Own, Some(own)) => {
                if !matches!(self.plugin.manifest.handler, HandlerSpec::Sim(_)) {
                    req.input = strip_runtime_keys(&req.input);
                }
                run(own.as_ref(), req)
            }
            _ => match &self.model {
                Ok(m) => run(m, req),
                Err(e) => {
                    let e = HandlerError::Provider {
                        failure: ProviderFailure::NotConfigured,
                        message: e.clone(),
                        retry_after_ms: None,
                    };
                    Box::pin(async move { Err(e) })
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(handler: &str) -> Plugin {
        let text = format!(
            "[plugin]\nname = \"p\"\n[handler]\n{handler}\n\
             [[agents]]\nname = \"writer\"\ndescription = \"writes\"\n\
             [[commands]]\nname = \"wc\"\ndescription = \"counts\"\n"
        );
        let c = plexus_catalog::Catalog::load(&plexus_catalog::Sources {
            embedded: vec![("p.toml".into(), text)],
            dirs: vec![],
        });
        assert!(c.errors().next().is_none(), "{:?}", c.diagnostics);
        c.plugins[0].clone()
    }

    #[test]
    fn who_serves_what() {
        let sim = plugin("kind = \"sim\"");
        assert_eq!(serves(&sim, "agent:writer", false), Server::Own);
        assert_eq!(serves(&sim, "agent:writer", true), Server::Model);
        assert_eq!(serves(&sim, "wc", true), Server::Model);
        assert_eq!(kind_of(&sim, true), "llm");
        assert_eq!(kind_of(&sim, false), "sim");
        let llm = plugin("kind = \"llm\"");
        assert_eq!(serves(&llm, "agent:writer", false), Server::Model);
        let process = plugin(
            "kind = \"process\"\n[handler.commands.wc]\nprogram = \"/usr/bin/wc\"\nargs = []",
        );
        assert_eq!(serves(&process, "wc", true), Server::Own);
        assert_eq!(serves(&process, "agent:writer", true), Server::Model);
        assert_eq!(serves(&process, "agent:nobody", true), Server::Own);
        assert_eq!(serves(&process, "agent:writer", false), Server::Own);
        assert_eq!(kind_of(&process, true), "process");
    }

    #[test]
    fn runtime_keys_are_stripped_for_other_handlers() {
        assert_eq!(
            strip_runtime_keys(r#"{"$request":"hi","$budget_usd":1,"path":"a"}"#),
            r#"{"path":"a"}"#
        );
        assert_eq!(strip_runtime_keys(r#"{"path":"a"}"#), r#"{"path":"a"}"#);
        assert_eq!(strip_runtime_keys("\"text\""), "\"text\"");
    }

    #[tokio::test]
    async fn an_agent_without_a_model_is_refused_with_how_to_configure_one() {
        let h = AgentsHandler::new(
            Arc::new(plugin("kind = \"llm\"")),
            None,
            None,
            Arc::new(plexus_agent::NoHost),
        );
        let e = h
            .execute(ExecRequest {
                caller: None,
                plugin: "p".into(),
                command: "agent:writer".into(),
                input: "{}".into(),
                idempotency_key: None,
                trace_id: None,
                model: None,
            })
            .await
            .unwrap_err();
        assert_eq!(e.kind(), "llm_not_configured");
        assert!(!e.retryable() && !e.is_plugin_fault());
        assert!(e.to_string().contains("--llm-provider"), "{e}");
    }
}
