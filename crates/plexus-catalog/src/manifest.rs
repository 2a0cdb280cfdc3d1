//! Plexus's own plugin manifest (TOML): the cluster-side fields that Claude
//! Code's `plugin.json` does not have. Keys follow the seed's names
//! (`errorHandling.circuitBreaker`, `routing.contextPatterns`...).
//!
//! Unknown keys are errors, so a typo names its line instead of silently
//! falling back to a default.

use serde::{Deserialize, Serialize};

use crate::model::ModelTier;

/// A parsed Plexus manifest. Every section is optional; defaults are sane.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Manifest {
    pub plugin: PluginSection,
    #[serde(default)]
    pub capabilities: Capabilities,
    #[serde(default)]
    pub routing: Routing,
    #[serde(default)]
    pub communication: Communication,
    #[serde(default)]
    pub state: StateSharing,
    #[serde(default)]
    pub orchestration: Orchestration,
    #[serde(default)]
    pub error_handling: ErrorHandling,
    #[serde(default)]
    pub handler: HandlerSpec,
    #[serde(default)]
    pub placement: Placement,
    /// Commands declared by the manifest itself (used when no Claude Code
    /// directory is present, and for commands only Plexus knows).
    #[serde(default)]
    pub commands: Vec<ManifestCommand>,
    /// Agents declared by the manifest itself.
    #[serde(default)]
    pub agents: Vec<ManifestAgent>,
    /// How agents and commands run on a language model (`[llm]`), over the
    /// node's `[llm]` table.
    #[serde(default)]
    pub llm: Option<crate::llm::LlmSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PluginSection {
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Directory name of the matching Claude Code plugin in a catalog dir
    /// (defaults to the plugin name).
    #[serde(default)]
    pub claude_plugin: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Capabilities {
    #[serde(default)]
    pub domains: Vec<String>,
    #[serde(default)]
    pub contexts: Vec<String>,
    #[serde(default)]
    pub patterns: Vec<String>,
    #[serde(default)]
    pub integrations: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Routing {
    /// 1 (lowest) to 10 (highest); scales the plugin's routing score.
    #[serde(default = "default_priority")]
    pub priority: u8,
    #[serde(default)]
    pub keywords: Vec<String>,
    #[serde(default)]
    pub context_patterns: Vec<String>,
    #[serde(default)]
    pub accepts_routing_from: Vec<String>,
    #[serde(default)]
    pub can_route_to: Vec<String>,
}

fn default_priority() -> u8 {
    5
}

impl Default for Routing {
    fn default() -> Self {
        Routing {
            priority: default_priority(),
            keywords: vec![],
            context_patterns: vec![],
            accepts_routing_from: vec![],
            can_route_to: vec![],
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Communication {
    /// Topics the plugin may publish on (besides its own `plugin/{name}/**`).
    #[serde(default)]
    pub topics: Vec<String>,
    /// Topic patterns the plugin subscribes to.
    #[serde(default)]
    pub subscriptions: Vec<String>,
    #[serde(default)]
    pub rpc_methods: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StateSharing {
    #[serde(default)]
    pub exports: Vec<String>,
    #[serde(default)]
    pub imports: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Orchestration {
    #[serde(default)]
    pub patterns: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ErrorHandling {
    #[serde(default)]
    pub circuit_breaker: CircuitBreakerSpec,
    #[serde(default)]
    pub retry_policy: RetryPolicySpec,
    /// Fallback plugins, tried in order.
    #[serde(default)]
    pub fallback: Vec<String>,
    /// The answer of last resort, when every try failed and nothing is
    /// cached (served as `default`). Any TOML value; sent as JSON.
    #[serde(default)]
    pub default_result: Option<toml::Value>,
}

/// Breaker settings (Resilience4j-style), all optional in the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreakerSpec {
    /// Failure rate (0–1) over the window that opens the breaker.
    #[serde(default = "cb_threshold")]
    pub failure_rate_threshold: f64,
    /// Slow-call rate (0–1) over the window that opens the breaker.
    #[serde(default = "cb_slow_rate")]
    pub slow_call_rate_threshold: f64,
    /// A call slower than this counts as slow.
    #[serde(default = "cb_slow_ms")]
    pub slow_call_duration_ms: u64,
    /// Number of most recent calls the rates are computed over.
    #[serde(default = "cb_window")]
    pub monitoring_window: u32,
    /// No decision before this many calls in the window.
    #[serde(default = "cb_min_calls")]
    pub minimum_calls: u32,
    /// How long the breaker stays Open before trying HalfOpen.
    #[serde(default = "cb_timeout")]
    pub timeout_ms: u64,
    /// Calls let through in HalfOpen.
    #[serde(default = "cb_half_open")]
    pub half_open_retries: u32,
}

fn cb_threshold() -> f64 {
    0.5
}
fn cb_slow_rate() -> f64 {
    1.0
}
fn cb_slow_ms() -> u64 {
    60_000
}
fn cb_window() -> u32 {
    20
}
fn cb_min_calls() -> u32 {
    5
}
fn cb_timeout() -> u64 {
    30_000
}
fn cb_half_open() -> u32 {
    3
}

impl Default for CircuitBreakerSpec {
    fn default() -> Self {
        CircuitBreakerSpec {
            failure_rate_threshold: cb_threshold(),
            slow_call_rate_threshold: cb_slow_rate(),
            slow_call_duration_ms: cb_slow_ms(),
            monitoring_window: cb_window(),
            minimum_calls: cb_min_calls(),
            timeout_ms: cb_timeout(),
            half_open_retries: cb_half_open(),
        }
    }
}

/// Backoff shapes named by the seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backoff {
    Linear,
    Exponential,
    Fibonacci,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicySpec {
    #[serde(default = "rp_max")]
    pub max_retries: u32,
    #[serde(default = "rp_backoff")]
    pub backoff: Backoff,
    #[serde(default = "rp_initial")]
    pub initial_delay_ms: u64,
    #[serde(default = "rp_max_delay")]
    pub max_delay_ms: u64,
    /// Fraction of each delay randomised (0 = none, 1 = full jitter).
    #[serde(default = "rp_jitter")]
    pub jitter: f64,
}

fn rp_max() -> u32 {
    3
}
fn rp_backoff() -> Backoff {
    Backoff::Exponential
}
fn rp_initial() -> u64 {
    100
}
fn rp_max_delay() -> u64 {
    5_000
}
fn rp_jitter() -> f64 {
    0.2
}

impl Default for RetryPolicySpec {
    fn default() -> Self {
        RetryPolicySpec {
            max_retries: rp_max(),
            backoff: rp_backoff(),
            initial_delay_ms: rp_initial(),
            max_delay_ms: rp_max_delay(),
            jitter: rp_jitter(),
        }
    }
}

/// How a plugin's commands are executed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum HandlerSpec {
    /// Deterministic simulated execution (tests, simulation, demos).
    Sim(SimSpec),
    /// Real executables in a sandbox (see `crate::process`).
    Process(Box<crate::process::ProcessSpec>),
    /// The plugin is one or more MCP servers; their tools are its commands.
    Mcp(Box<McpSpec>),
    /// Agents and commands run on a language model (the node's `[llm]`,
    /// with the manifest's `[llm]` table over it).
    Llm,
}

/// An MCP handler: the servers inline here, else the Claude Code plugin's
/// `.mcp.json`. Strings may use `${VAR}`, `${VAR:-default}` and
/// `${CLAUDE_PLUGIN_ROOT}`, as in `.mcp.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct McpSpec {
    /// One inline stdio server (named after the plugin): the executable, found
    /// on `PATH`, or a path relative to the manifest's directory.
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment of a stdio server, on top of the node's.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Working directory of a stdio server (relative to the manifest's directory).
    #[serde(default)]
    pub cwd: Option<String>,
    /// One inline streamable HTTP server, instead of `command`.
    #[serde(default)]
    pub url: Option<String>,
    /// Further servers (`[[handler.servers]]`), each with a name.
    #[serde(default)]
    pub servers: Vec<McpServerEntry>,
    /// How long a server may take to start and list its tools.
    #[serde(default = "mcp_start_timeout")]
    pub start_timeout_ms: u64,
    /// A server marked `failed` (restarted too often) is tried again after
    /// this long, then after twice as long each time, up to 10 minutes
    /// (default 30,000 ms; 0 leaves it failed until the node restarts).
    #[serde(default = "mcp_failed_retry")]
    pub retry_failed_after_ms: u64,
    /// Run the stdio servers in the process plugins' sandbox
    /// (`[handler.sandbox]`; paths may use `${VAR}`). Off unless the table
    /// is there: MCP servers are written to run as the user, with the
    /// user's environment and files.
    #[serde(default)]
    pub sandbox: Option<crate::process::SandboxSpec>,
    /// Resource limits of sandboxed stdio servers (`[handler.limits]`,
    /// as for process plugins; `outputKb` does not apply).
    #[serde(default)]
    pub limits: Option<crate::process::ProcessLimits>,
}

/// One named MCP server of a manifest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct McpServerEntry {
    pub name: String,
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
}

fn mcp_failed_retry() -> u64 {
    30_000
}

fn mcp_start_timeout() -> u64 {
    // Generous: a Python server on a busy machine can take seconds to start.
    60_000
}

impl McpSpec {
    /// The servers declared here, the inline one first.
    pub fn entries(&self, plugin: &str) -> Vec<McpServerEntry> {
        let mut out = vec![];
        if self.command.is_some() || self.url.is_some() {
            out.push(McpServerEntry {
                name: plugin.to_string(),
                command: self.command.clone(),
                args: self.args.clone(),
                env: self.env.clone(),
                cwd: self.cwd.clone(),
                url: self.url.clone(),
            });
        }
        out.extend(self.servers.iter().cloned());
        out
    }

    fn validate(&self, plugin: &str) -> Result<(), String> {
        if self.command.is_none()
            && self.url.is_none()
            && (!self.args.is_empty() || !self.env.is_empty() || self.cwd.is_some())
        {
            return Err("handler: args, env and cwd need a command".into());
        }
        if self.start_timeout_ms == 0 {
            return Err("handler.startTimeoutMs must be > 0".into());
        }
        if self.limits.is_some() && self.sandbox.is_none() {
            return Err(
                "handler.limits applies to sandboxed servers: add [handler.sandbox]".into(),
            );
        }
        if let Some(sb) = &self.sandbox {
            for (field, paths) in [
                ("readPaths", &sb.read_paths),
                ("writePaths", &sb.write_paths),
            ] {
                if paths.iter().any(|p| p.trim().is_empty()) {
                    return Err(format!("handler.sandbox.{field} holds an empty path"));
                }
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for e in self.entries(plugin) {
            let at = if e.name == plugin && (self.command.is_some() || self.url.is_some()) {
                "handler".to_string()
            } else {
                format!("handler.servers entry {:?}", e.name)
            };
            if e.name.trim().is_empty() {
                return Err("a [[handler.servers]] entry has an empty name".into());
            }
            if !names.insert(e.name.clone()) {
                return Err(format!("{at}: MCP server name {:?} is used twice", e.name));
            }
            match (&e.command, &e.url) {
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "{at}: give either command (stdio) or url (HTTP), not both"
                    ))
                }
                (None, None) => {
                    return Err(format!("{at}: needs a command (stdio) or a url (HTTP)"))
                }
                (Some(c), None) if c.trim().is_empty() => {
                    return Err(format!("{at}: command is empty"))
                }
                (None, Some(u)) if !(u.starts_with("http://") || u.starts_with("https://")) => {
                    return Err(format!(
                        "{at}: url {u:?} must start with http:// or https://"
                    ))
                }
                (None, Some(_)) if !e.args.is_empty() || !e.env.is_empty() || e.cwd.is_some() => {
                    return Err(format!("{at}: args, env and cwd only apply to a command"))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl HandlerSpec {
    /// The handler's kind as the manifest names it (`sim`, `process`, `mcp`).
    pub fn kind(&self) -> &'static str {
        self.kind_name()
    }

    /// The `kind` as written in the manifest (shown in status).
    pub fn kind_name(&self) -> &'static str {
        match self {
            HandlerSpec::Sim(_) => "sim",
            HandlerSpec::Process(_) => "process",
            HandlerSpec::Mcp(_) => "mcp",
            HandlerSpec::Llm => "llm",
        }
    }
}

impl Default for HandlerSpec {
    fn default() -> Self {
        HandlerSpec::Sim(SimSpec::default())
    }
}

/// Parameters of the simulated handler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SimSpec {
    /// Wall-clock latency of one call.
    #[serde(default = "sim_latency")]
    pub latency_ms: u64,
    /// Uniform jitter added to the latency.
    #[serde(default)]
    pub jitter_ms: u64,
    /// Probability (0–1) that a call fails.
    #[serde(default)]
    pub failure_rate: f64,
    /// Seed of the handler's random source (failures, jitter).
    #[serde(default)]
    pub seed: u64,
    /// Whether inputs may carry `$sim` fault directives (panic, fail, delay).
    /// Off by default: any client could otherwise crash the plugin.
    #[serde(default = "sim_faults")]
    pub allow_fault_injection: bool,
    /// A file the handler appends one line to for each call that takes
    /// effect (succeeds): the simulation's exactly-once witness, kept apart
    /// from the node's effect log that does the deduplication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness: Option<std::path::PathBuf>,
}

fn sim_latency() -> u64 {
    5
}
fn sim_faults() -> bool {
    false
}

impl Default for SimSpec {
    fn default() -> Self {
        SimSpec {
            latency_ms: sim_latency(),
            jitter_ms: 0,
            failure_rate: 0.0,
            seed: 0,
            allow_fault_injection: sim_faults(),
            witness: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Placement {
    /// Nodes this plugin prefers to run on (by node name); empty = anywhere.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Restarts allowed within `restartWindowSecs` before the plugin is marked failed.
    #[serde(default = "max_restarts")]
    pub max_restarts: u32,
    #[serde(default = "restart_window")]
    pub restart_window_secs: u64,
    /// Commands run at once by one host.
    #[serde(default = "max_concurrency")]
    pub max_concurrency: u32,
    /// Nodes that run the plugin at once (cluster placement; default 1).
    #[serde(default = "replicas")]
    pub replicas: u32,
    /// Node labels (`[node] labels`) a node must carry, each with this
    /// value, to host the plugin: `labels = { gpu = "yes" }`.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

fn replicas() -> u32 {
    1
}

fn max_restarts() -> u32 {
    3
}
fn restart_window() -> u64 {
    10
}
fn max_concurrency() -> u32 {
    64
}

/// A command declared in the manifest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ManifestCommand {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub model: Option<ModelTier>,
    #[serde(default)]
    pub keywords: Vec<String>,
    /// Defaults to true; a non-idempotent command is retried only with an idempotency key.
    #[serde(default)]
    pub idempotent: Option<bool>,
}

/// An agent declared in the manifest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ManifestAgent {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub model: Option<ModelTier>,
    #[serde(default)]
    pub keywords: Vec<String>,
}

/// Why a manifest was refused, with where.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestProblem {
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl Manifest {
    /// Parse and validate a manifest's text.
    pub fn parse(text: &str) -> Result<Manifest, ManifestProblem> {
        let m: Manifest = toml::from_str(text).map_err(|e| {
            let (line, column) = match e.span() {
                Some(span) => {
                    let (l, c) = line_col(text, span.start);
                    (Some(l), Some(c))
                }
                None => (None, None),
            };
            ManifestProblem {
                line,
                column,
                message: e.message().to_string(),
            }
        })?;
        m.validate().map_err(|message| ManifestProblem {
            line: None,
            column: None,
            message,
        })?;
        Ok(m)
    }

    /// Checks that types alone cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if !valid_name(&self.plugin.name) {
            return Err(format!(
                "plugin.name {:?} must be 1-64 characters of a-z, 0-9, '-' or '_'",
                self.plugin.name
            ));
        }
        if !(1..=10).contains(&self.routing.priority) {
            return Err(format!(
                "routing.priority is {}, must be 1..=10",
                self.routing.priority
            ));
        }
        let cb = &self.error_handling.circuit_breaker;
        for (field, v) in [
            ("failureRateThreshold", cb.failure_rate_threshold),
            ("slowCallRateThreshold", cb.slow_call_rate_threshold),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!(
                    "errorHandling.circuitBreaker.{field} is {v}, must be within 0..=1"
                ));
            }
        }
        if cb.monitoring_window == 0 || cb.half_open_retries == 0 {
            return Err(
                "errorHandling.circuitBreaker.monitoringWindow and halfOpenRetries must be > 0"
                    .into(),
            );
        }
        let rp = &self.error_handling.retry_policy;
        if !(0.0..=1.0).contains(&rp.jitter) {
            return Err(format!(
                "errorHandling.retryPolicy.jitter is {}, must be within 0..=1",
                rp.jitter
            ));
        }
        match &self.handler {
            HandlerSpec::Sim(sim) => {
                if !(0.0..=1.0).contains(&sim.failure_rate) {
                    return Err(format!(
                        "handler.failureRate is {}, must be within 0..=1",
                        sim.failure_rate
                    ));
                }
            }
            HandlerSpec::Process(p) => p.validate()?,
            HandlerSpec::Mcp(mcp) => mcp.validate(&self.plugin.name)?,
            HandlerSpec::Llm => {}
        }
        if let Some(llm) = &self.llm {
            llm.validate()?;
        }
        if self.placement.max_concurrency == 0 {
            return Err("placement.maxConcurrency must be > 0".into());
        }
        if self.placement.replicas == 0 {
            return Err("placement.replicas must be at least 1".into());
        }
        for (k, v) in &self.placement.labels {
            if k.trim().is_empty() || v.trim().is_empty() {
                return Err(format!(
                    "placement.labels: label {k:?} = {v:?} needs a non-empty name and value"
                ));
            }
        }
        for c in &self.commands {
            if c.name.trim().is_empty() {
                return Err("a [[commands]] entry has an empty name".into());
            }
        }
        Ok(())
    }

    /// A default manifest for a plugin that ships none.
    pub fn default_for(name: &str) -> Manifest {
        Manifest {
            plugin: PluginSection {
                name: name.to_string(),
                ..Default::default()
            },
            placement: Placement::default(),
            ..Default::default()
        }
    }
}

impl Default for Placement {
    fn default() -> Self {
        Placement {
            nodes: vec![],
            max_restarts: max_restarts(),
            restart_window_secs: restart_window(),
            max_concurrency: max_concurrency(),
            replicas: replicas(),
            labels: Default::default(),
        }
    }
}

/// Plugin and node names: short, lowercase, safe in topics and file names.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(offset, |p| offset - p - 1) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_manifest_gets_defaults() {
        let m = Manifest::parse("[plugin]\nname = \"demo\"\n").unwrap();
        assert_eq!(m.routing.priority, 5);
        assert_eq!(m.error_handling.retry_policy.max_retries, 3);
        assert_eq!(m.error_handling.retry_policy.backoff, Backoff::Exponential);
        assert_eq!(m.placement.max_restarts, 3);
        assert!(matches!(m.handler, HandlerSpec::Sim(_)));
    }

    #[test]
    fn full_manifest_parses() {
        let text = r#"
[plugin]
name = "demo"
version = "1.2.3"

[routing]
priority = 8
keywords = ["a", "b"]
contextPatterns = ["x.*"]

[errorHandling]
fallback = ["other"]

[errorHandling.circuitBreaker]
failureRateThreshold = 0.3
timeoutMs = 1000

[errorHandling.retryPolicy]
backoff = "fibonacci"
maxRetries = 5

[handler]
kind = "sim"
latencyMs = 1
failureRate = 0.25

[[commands]]
name = "go"
description = "Go somewhere"
idempotent = false
"#;
        let m = Manifest::parse(text).unwrap();
        assert_eq!(m.routing.priority, 8);
        assert_eq!(m.error_handling.circuit_breaker.timeout_ms, 1000);
        assert_eq!(m.error_handling.retry_policy.backoff, Backoff::Fibonacci);
        assert_eq!(m.error_handling.fallback, vec!["other".to_string()]);
        assert_eq!(m.commands[0].idempotent, Some(false));
    }

    #[test]
    fn unknown_key_names_its_line() {
        let err =
            Manifest::parse("[plugin]\nname = \"demo\"\n\n[routing]\npriorty = 3\n").unwrap_err();
        assert_eq!(err.line, Some(5), "{err:?}");
        assert!(err.message.contains("priorty"), "{err:?}");
    }

    #[test]
    fn wrong_type_names_its_line() {
        let err = Manifest::parse("[plugin]\nname = \"demo\"\n[routing]\npriority = \"high\"\n")
            .unwrap_err();
        assert_eq!(err.line, Some(4));
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let err =
            Manifest::parse("[plugin]\nname = \"demo\"\n[routing]\npriority = 11\n").unwrap_err();
        assert!(err.message.contains("routing.priority"));
        let err = Manifest::parse(
            "[plugin]\nname = \"demo\"\n[handler]\nkind = \"sim\"\nfailureRate = 2.0\n",
        )
        .unwrap_err();
        assert!(err.message.contains("failureRate"));
        let err = Manifest::parse("[plugin]\nname = \"Bad Name\"\n").unwrap_err();
        assert!(err.message.contains("plugin.name"));
    }

    #[test]
    fn process_handler_parses_and_is_checked() {
        let m = Manifest::parse(
            "[plugin]\nname = \"sys\"\n[handler]\nkind = \"process\"\n\
             [handler.limits]\ncpuSecs = 2\n[handler.commands.wc]\nprogram = \"bin/wc\"\nargs = [\"{path}\"]\n",
        )
        .unwrap();
        let HandlerSpec::Process(p) = &m.handler else {
            panic!("{:?}", m.handler)
        };
        assert_eq!(p.limits.cpu_secs, 2);
        assert_eq!(p.commands["wc"].args, vec!["{path}".to_string()]);
        let err = Manifest::parse(
            "[plugin]\nname = \"sys\"\n[handler]\nkind = \"process\"\n[handler.commands.wc]\nprogram = \"x\"\nargs = [\"{a\"]\n",
        )
        .unwrap_err();
        assert!(
            err.message.contains("handler.commands.wc.args[0]"),
            "{err:?}"
        );
        let err = Manifest::parse(
            "[plugin]\nname = \"sys\"\n[handler]\nkind = \"process\"\n[handler.sandbox]\nnetwrk = true\n",
        )
        .unwrap_err();
        assert!(err.message.contains("netwrk"), "{err:?}");
        // The handler is an internally tagged enum: serde buffers it, so the
        // line is the `[handler]` table's.
        assert_eq!(err.line, Some(3), "{err:?}");
    }

    #[test]
    fn llm_handler_parses() {
        let m =
            Manifest::parse("[plugin]\nname = \"writer\"\n[handler]\nkind = \"llm\"\n").unwrap();
        assert_eq!(m.handler, HandlerSpec::Llm);
        assert_eq!(m.handler.kind_name(), "llm");
        let err =
            Manifest::parse("[plugin]\nname = \"writer\"\n[handler]\nkind = \"lm\"\n").unwrap_err();
        assert!(err.message.contains("lm"), "{err:?}");
    }

    #[test]
    fn mcp_handler_parses_inline_and_named_servers() {
        let m = Manifest::parse(
            "[plugin]\nname = \"time\"\n[handler]\nkind = \"mcp\"\ncommand = \"mcp-server-time\"\nargs = [\"--local-timezone\", \"UTC\"]\nenv = { TZ = \"UTC\" }\n[[handler.servers]]\nname = \"remote\"\nurl = \"http://127.0.0.1:9/mcp\"\n",
        )
        .unwrap();
        let HandlerSpec::Mcp(spec) = &m.handler else {
            panic!("{:?}", m.handler)
        };
        let e = spec.entries("time");
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].name, "time");
        assert_eq!(e[0].command.as_deref(), Some("mcp-server-time"));
        assert_eq!(e[0].env.get("TZ").map(String::as_str), Some("UTC"));
        assert_eq!(e[1].url.as_deref(), Some("http://127.0.0.1:9/mcp"));
        assert_eq!(spec.start_timeout_ms, 60_000);
        // No server inline: the Claude Code plugin's .mcp.json supplies them.
        let m = Manifest::parse("[plugin]\nname = \"p\"\n[handler]\nkind = \"mcp\"\n").unwrap();
        assert!(matches!(&m.handler, HandlerSpec::Mcp(s) if s.entries("p").is_empty()));
    }

    #[test]
    fn an_mcp_sandbox_is_opt_in_and_limits_need_it() {
        let base = "[plugin]\nname = \"p\"\n[handler]\nkind = \"mcp\"\ncommand = \"srv\"\n";
        let m = Manifest::parse(base).unwrap();
        assert!(matches!(&m.handler, HandlerSpec::Mcp(s) if s.sandbox.is_none()));
        let m = Manifest::parse(&format!(
            "{base}[handler.sandbox]\nreadPaths = [\"${{VENV}}\"]\n[handler.limits]\nmemoryMb = 2048\n"
        ))
        .unwrap();
        let HandlerSpec::Mcp(s) = &m.handler else {
            panic!("not mcp")
        };
        let sb = s.sandbox.as_ref().unwrap();
        assert!(!sb.network && sb.landlock);
        assert_eq!(sb.read_paths, vec!["${VENV}"]);
        assert_eq!(s.limits.as_ref().unwrap().memory_mb, 2048);
        let e = Manifest::parse(&format!("{base}[handler.limits]\ncpuSecs = 5\n")).unwrap_err();
        assert!(e.message.contains("[handler.sandbox]"), "{e:?}");
        let e = Manifest::parse(&format!("{base}[handler.sandbox]\nwritePaths = [\" \"]\n"))
            .unwrap_err();
        assert!(e.message.contains("handler.sandbox.writePaths"), "{e:?}");
    }

    #[test]
    fn bad_mcp_handlers_are_refused_with_the_field() {
        for (text, needle) in [
            ("command = \"a\"\nurl = \"http://x/mcp\"\n", "not both"),
            ("url = \"ftp://x\"\n", "http://"),
            ("args = [\"x\"]\n", "need a command"),
            ("command = \"a\"\nstartTimeoutMs = 0\n", "startTimeoutMs"),
            (
                "[[handler.servers]]\nname = \"s\"\n",
                "\"s\": needs a command",
            ),
            ("commnd = \"a\"\n", "commnd"),
        ] {
            let err = Manifest::parse(&format!(
                "[plugin]\nname = \"p\"\n[handler]\nkind = \"mcp\"\n{text}"
            ))
            .unwrap_err();
            assert!(err.message.contains(needle), "{text}: {err:?}");
        }
    }

    #[test]
    fn unknown_handler_kind_is_refused() {
        let err = Manifest::parse("[plugin]\nname = \"demo\"\n[handler]\nkind = \"teleport\"\n")
            .unwrap_err();
        assert!(err.message.contains("teleport"), "{err:?}");
    }
}
