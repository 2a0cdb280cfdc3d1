//! The loaded shape of a plugin: what the router indexes and the node hosts.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;

use crate::manifest::Manifest;

/// A model tier of the seed's cost model.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ModelTier {
    Haiku,
    Sonnet,
    Opus,
}

impl ModelTier {
    /// Cost in US dollars per minute of work (the seed's cost model).
    pub fn cost_per_minute(self) -> f64 {
        match self {
            ModelTier::Haiku => 0.001,
            ModelTier::Sonnet => 0.005,
            ModelTier::Opus => 0.01,
        }
    }

    /// Parse a model name as plugin authors write it (`opus`, `claude-3-opus`, `Sonnet 4`...).
    pub fn parse_loose(s: &str) -> Option<ModelTier> {
        let l = s.to_ascii_lowercase();
        if l.contains("opus") {
            Some(ModelTier::Opus)
        } else if l.contains("sonnet") {
            Some(ModelTier::Sonnet)
        } else if l.contains("haiku") {
            Some(ModelTier::Haiku)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ModelTier::Haiku => "haiku",
            ModelTier::Sonnet => "sonnet",
            ModelTier::Opus => "opus",
        }
    }
}

impl fmt::Display for ModelTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One agent of a plugin.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    pub name: String,
    pub description: String,
    pub model: Option<ModelTier>,
    pub tools: Vec<String>,
    pub triggers: Vec<String>,
    pub keywords: Vec<String>,
    pub examples: Vec<String>,
    pub capabilities: Vec<String>,
    pub when_to_use: Option<String>,
    pub category: Option<String>,
    /// Markdown body after the frontmatter (possibly truncated by the publisher).
    pub body: String,
    /// Where it was loaded from, when it came from a file.
    pub file: Option<PathBuf>,
}

/// One command of a plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// The name it is invoked by (the file stem for Claude Code commands).
    pub name: String,
    /// The frontmatter `name` when it differs (e.g. `jira:batch`), accepted as an alias.
    pub alias: Option<String>,
    pub description: String,
    pub argument_hint: Option<String>,
    pub model: Option<ModelTier>,
    pub tools: Vec<String>,
    pub triggers: Vec<String>,
    pub keywords: Vec<String>,
    pub examples: Vec<String>,
    pub when_to_use: Option<String>,
    /// Whether running it twice has the effect of running it once (retry safety).
    pub idempotent: bool,
    pub body: String,
    pub file: Option<PathBuf>,
}

impl Default for Command {
    fn default() -> Self {
        Command {
            name: String::new(),
            alias: None,
            description: String::new(),
            argument_hint: None,
            model: None,
            tools: vec![],
            triggers: vec![],
            keywords: vec![],
            examples: vec![],
            when_to_use: None,
            idempotent: true,
            body: String::new(),
            file: None,
        }
    }
}

/// An MCP server a plugin declares in `.mcp.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McpServer {
    pub name: String,
    pub command: Option<String>,
    pub args: Vec<String>,
    pub url: Option<String>,
    pub env: Vec<(String, String)>,
    pub description: Option<String>,
}

/// A fully loaded plugin: Claude Code definitions merged with the Plexus manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plugin {
    pub name: String,
    pub version: String,
    pub description: String,
    pub keywords: Vec<String>,
    pub agents: Vec<Agent>,
    pub commands: Vec<Command>,
    pub mcp_servers: Vec<McpServer>,
    /// Cluster-side fields (routing, topics, error handling, handler, placement).
    pub manifest: Manifest,
    /// The Claude Code plugin directory it was read from, if any.
    pub claude_dir: Option<PathBuf>,
    /// The Plexus manifest file it was read from, if any (`<embedded>` for built-in ones).
    pub manifest_file: Option<PathBuf>,
}

impl Plugin {
    /// Find a command by its name or alias (`batch`, `/batch` and `jira:batch` all work).
    pub fn command(&self, name: &str) -> Option<&Command> {
        let name = name.trim_start_matches('/');
        self.commands
            .iter()
            .find(|c| c.name == name || c.alias.as_deref() == Some(name))
    }

    /// Find an agent by name.
    pub fn agent(&self, name: &str) -> Option<&Agent> {
        self.agents.iter().find(|a| a.name == name)
    }

    /// May this plugin call `to` (a command or agent of it, an agent's tool
    /// call included)? It needs `to` in its `canRouteTo` when it declares
    /// one, and itself in `to`'s `acceptsRoutingFrom` when `to` declares
    /// one. A plugin may always call itself.
    pub fn may_route_to(&self, to: &Plugin) -> Result<(), RoutingDenied> {
        if self.name == to.name {
            return Ok(());
        }
        let out = &self.manifest.routing.can_route_to;
        if !out.is_empty() && !out.contains(&to.name) {
            return Err(RoutingDenied::NotInCanRouteTo {
                from: self.name.clone(),
                to: to.name.clone(),
                allowed: out.clone(),
            });
        }
        to.accepts_routing_from(&self.name)
    }

    /// The receiving half of [`Plugin::may_route_to`], for a host that
    /// knows only its own manifest.
    pub fn accepts_routing_from(&self, from: &str) -> Result<(), RoutingDenied> {
        let inbound = &self.manifest.routing.accepts_routing_from;
        if from == self.name || inbound.is_empty() || inbound.iter().any(|p| p == from) {
            return Ok(());
        }
        Err(RoutingDenied::NotInAcceptsRoutingFrom {
            from: from.to_string(),
            to: self.name.clone(),
            allowed: inbound.clone(),
        })
    }
}

/// Why one plugin may not call another (`[routing]` of their manifests).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingDenied {
    #[error("plugin {from} may not call {to}: {to} is not in {from}'s canRouteTo ({})", allowed.join(", "))]
    NotInCanRouteTo {
        from: String,
        to: String,
        allowed: Vec<String>,
    },
    #[error("plugin {from} may not call {to}: {from} is not in {to}'s acceptsRoutingFrom ({})", allowed.join(", "))]
    NotInAcceptsRoutingFrom {
        from: String,
        to: String,
        allowed: Vec<String>,
    },
}
