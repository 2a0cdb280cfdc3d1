//! What the runtime needs from the node: other agents (`Task`), MCP tools,
//! and commands of this or other plugins. The node implements [`ToolHost`]
//! over the cluster (routing, the exec path with its breakers, the MCP
//! handler); tests use an in-memory one.

use futures::future::BoxFuture;
use plexus_handler::HandlerError;
use serde_json::Value;

/// A `Task` call: run another agent and get its final text.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentCall {
    /// The plugin that asks.
    pub from_plugin: String,
    /// `plugin` of `plugin:agent` in `subagent_type`; `None` means the
    /// asking plugin's own agent (or, failing that, any plugin's).
    pub plugin: Option<String>,
    pub agent: String,
    pub prompt: String,
    pub description: String,
    /// Nesting depth of the new run (1 for a Task of a top-level run). The
    /// node passes it on as the input's `$depth`.
    pub depth: u32,
    /// What is left of the caller's budget, if it has one.
    pub budget_usd: Option<f64>,
    pub trace_id: Option<String>,
}

/// The cluster side of the tools that are not processes.
pub trait ToolHost: Send + Sync + 'static {
    /// Run another agent, anywhere in the cluster, through the same runtime.
    fn run_agent(&self, call: AgentCall) -> BoxFuture<'static, Result<String, HandlerError>>;
    /// Call `tool` of the plugin's MCP server `server` (the node's MCP handler).
    fn call_mcp(
        &self,
        plugin: &str,
        server: &str,
        tool: &str,
        input: Value,
    ) -> BoxFuture<'static, Result<String, HandlerError>>;
    /// Call `command` of `plugin` through the normal exec path (breakers,
    /// retries), on whichever node hosts it.
    fn call_command(
        &self,
        from_plugin: &str,
        plugin: &str,
        command: &str,
        input: Value,
    ) -> BoxFuture<'static, Result<String, HandlerError>>;
}

/// A host with no cluster behind it: every such tool fails with a message.
pub struct NoHost;

impl ToolHost for NoHost {
    fn run_agent(&self, call: AgentCall) -> BoxFuture<'static, Result<String, HandlerError>> {
        Box::pin(async move {
            Err(HandlerError::Failed(format!(
                "Task {}: no cluster is connected to run other agents",
                call.agent
            )))
        })
    }

    fn call_mcp(
        &self,
        _: &str,
        server: &str,
        tool: &str,
        _: Value,
    ) -> BoxFuture<'static, Result<String, HandlerError>> {
        let m = format!("mcp__{server}__{tool}: no MCP handler is connected");
        Box::pin(async move { Err(HandlerError::Failed(m)) })
    }

    fn call_command(
        &self,
        _: &str,
        plugin: &str,
        command: &str,
        _: Value,
    ) -> BoxFuture<'static, Result<String, HandlerError>> {
        let m = format!("/{plugin}:{command}: no cluster is connected to run commands");
        Box::pin(async move { Err(HandlerError::Failed(m)) })
    }
}

/// `/plugin:command args` or `/command args` (the asking plugin's).
pub fn parse_slash(text: &str, own_plugin: &str) -> Result<(String, String, String), String> {
    let t = text.trim();
    let t = t
        .strip_prefix('/')
        .ok_or_else(|| format!("{t:?} is not a slash command (/plugin:command args)"))?;
    let (head, args) = match t.split_once(char::is_whitespace) {
        Some((h, a)) => (h, a.trim()),
        None => (t, ""),
    };
    let (plugin, command) = match head.split_once(':') {
        Some((p, c)) if !p.is_empty() && !c.is_empty() => (p, c),
        Some(_) => return Err(format!("{head:?} is not plugin:command")),
        None => (own_plugin, head),
    };
    if command.is_empty() {
        return Err("the slash command has no name".into());
    }
    Ok((plugin.to_string(), command.to_string(), args.to_string()))
}

/// `plugin:agent` or `agent`.
pub fn parse_agent(subagent_type: &str) -> (Option<String>, String) {
    match subagent_type.trim().split_once(':') {
        Some((p, a)) if !p.is_empty() && !a.is_empty() => (Some(p.to_string()), a.to_string()),
        _ => (None, subagent_type.trim().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slash_commands_and_agent_names_parse() {
        assert_eq!(
            parse_slash("/jira:status PLAT-1 now", "x").unwrap(),
            ("jira".into(), "status".into(), "PLAT-1 now".into())
        );
        assert_eq!(
            parse_slash("/status", "jira").unwrap(),
            ("jira".into(), "status".into(), "".into())
        );
        assert!(parse_slash("status", "x").is_err());
        assert!(parse_slash("/:x", "x").is_err());
        assert_eq!(
            parse_agent("jira:epic-writer"),
            (Some("jira".into()), "epic-writer".into())
        );
        assert_eq!(parse_agent("epic-writer"), (None, "epic-writer".into()));
    }
}
