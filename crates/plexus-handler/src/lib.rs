//! Command execution for plugin hosts.
//!
//! A [`CommandHandler`] runs one command of one plugin. The `sim` handler
//! ([`SimHandler`]) executes deterministically for tests, demos and the
//! simulation harness: its result text, model, cost and duration follow the
//! seed's cost model; latency and failure rate are configurable per plugin.
//! Real handlers (process, MCP) implement the same trait.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use plexus_catalog::{ModelTier, Plugin, SimSpec};
use rng::Rng64;
use serde::{Deserialize, Serialize};

/// One command to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub plugin: String,
    pub command: String,
    /// Input as JSON text.
    pub input: String,
    /// Set by callers that may retry a non-idempotent command.
    pub idempotency_key: Option<String>,
    pub trace_id: Option<String>,
    /// Model the router chose; the command's own model when absent.
    #[serde(default)]
    pub model: Option<ModelTier>,
    /// Who asks (`plugin:NAME`, `admin`, `operator`), as the node that took
    /// the request authenticated it. A plugin's handler sees it
    /// (`PLEXUS_CALLER` for a process, `caller` on a server's request line).
    #[serde(default)]
    pub caller: Option<String>,
}

/// What a successful command produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecOutput {
    /// Output as JSON text.
    pub output: String,
    pub model: Option<ModelTier>,
    /// Estimated work in minutes (the cost model's unit).
    pub work_minutes: f64,
    pub cost_usd: f64,
    /// The model call behind the output (the `llm` handler): the model id
    /// and the provider's token counts. `None` for other handlers.
    #[serde(default)]
    pub llm: Option<ModelUse>,
}

/// Tokens a model call used, as the provider counted them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    /// Prompt tokens, cached ones included.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Of `input_tokens`, read from the provider's prompt cache.
    #[serde(default)]
    pub cached_input_tokens: u64,
}

/// Which model ran and what it used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelUse {
    /// The model id (not the tier).
    pub model: String,
    pub usage: TokenUsage,
}

/// Why a command failed; the kind decides whether retrying makes sense.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum HandlerError {
    #[error("plugin {plugin} has no command {command:?}")]
    UnknownCommand { plugin: String, command: String },
    #[error("invalid input: {0}")]
    BadInput(String),
    #[error("command failed: {0}")]
    Failed(String),
    #[error("command timed out after {0} ms")]
    Timeout(u64),
    /// The command's process hit one of its resource limits and was stopped.
    #[error("{limit} limit exceeded: {detail}")]
    LimitExceeded { limit: Limit, detail: String },
    /// A language-model provider failed the call (agents and commands run
    /// by the `llm` handler). The failure kind decides retry and breaker.
    #[error("{message}")]
    Provider {
        failure: ProviderFailure,
        message: String,
        /// How long the provider asked us to wait (a 429's `retry-after`).
        retry_after_ms: Option<u64>,
    },
}

/// What kind of provider failure a [`HandlerError::Provider`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderFailure {
    /// 429: retry after the provider's delay; not the plugin's fault.
    RateLimited,
    /// 529 / overloaded: retry, or step down one model tier.
    Overloaded,
    /// Another 5xx.
    ServerError,
    /// The endpoint could not be reached.
    Unreachable,
    /// The provider answered something that is not the protocol (garbage,
    /// a truncated stream).
    BadResponse,
    /// The prompt does not fit the model's context window: the request's
    /// content, not retried.
    ContextTooLong,
    /// A missing or refused key: never retried; the message names the
    /// provider and the variable.
    Auth,
    /// The provider refused the request (unknown model, bad parameter).
    BadRequest,
    /// No model to run on: the node has no `[llm]` provider, or the
    /// plugin's `[llm]` table is wrong. Not retried, not the breaker's.
    NotConfigured,
}

impl ProviderFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderFailure::RateLimited => "rate_limited",
            ProviderFailure::Overloaded => "overloaded",
            ProviderFailure::ServerError => "provider_error",
            ProviderFailure::Unreachable => "provider_unreachable",
            ProviderFailure::BadResponse => "bad_response",
            ProviderFailure::ContextTooLong => "context_too_long",
            ProviderFailure::Auth => "auth",
            ProviderFailure::BadRequest => "provider_refused",
            ProviderFailure::NotConfigured => "llm_not_configured",
        }
    }

    fn retryable(self) -> bool {
        matches!(
            self,
            ProviderFailure::RateLimited
                | ProviderFailure::Overloaded
                | ProviderFailure::ServerError
                | ProviderFailure::Unreachable
                | ProviderFailure::BadResponse
        )
    }

    fn is_plugin_fault(self) -> bool {
        matches!(
            self,
            ProviderFailure::Overloaded
                | ProviderFailure::ServerError
                | ProviderFailure::Unreachable
                | ProviderFailure::BadResponse
        )
    }
}

/// Which resource limit a process hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// CPU seconds (RLIMIT_CPU: SIGXCPU, or SIGKILL at the hard limit).
    Cpu,
    /// Address space (RLIMIT_AS: allocations fail).
    Memory,
    /// Size of a written file (RLIMIT_FSIZE: SIGXFSZ).
    FileSize,
    /// Number of processes (RLIMIT_NPROC: fork fails with EAGAIN).
    Processes,
    /// Bytes written to stdout (the handler's cap; the process group is killed).
    Output,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Cpu => "cpu",
            Limit::Memory => "memory",
            Limit::FileSize => "file_size",
            Limit::Processes => "processes",
            Limit::Output => "output",
        }
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl HandlerError {
    /// Whether the same call may succeed if tried again. A resource limit is
    /// not: the same input hits it again.
    pub fn retryable(&self) -> bool {
        match self {
            HandlerError::Provider { failure, .. } => failure.retryable(),
            _ => matches!(self, HandlerError::Failed(_) | HandlerError::Timeout(_)),
        }
    }

    /// How long to wait before a retry, when the callee said (a provider's
    /// `retry-after`).
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            HandlerError::Provider { retry_after_ms, .. } => *retry_after_ms,
            _ => None,
        }
    }

    /// Whether the failure is the plugin's (counts against its circuit
    /// breaker); bad input and unknown commands are the caller's.
    pub fn is_plugin_fault(&self) -> bool {
        match self {
            HandlerError::Provider { failure, .. } => failure.is_plugin_fault(),
            _ => matches!(
                self,
                HandlerError::Failed(_)
                    | HandlerError::Timeout(_)
                    | HandlerError::LimitExceeded { .. }
            ),
        }
    }

    /// The wire name of the error kind (`ExecReply.error.kind`).
    pub fn kind(&self) -> &'static str {
        match self {
            HandlerError::UnknownCommand { .. } => "unknown_command",
            HandlerError::BadInput(_) => "bad_input",
            HandlerError::Failed(_) => "failed",
            HandlerError::Timeout(_) => "timeout",
            HandlerError::LimitExceeded { .. } => "limit_exceeded",
            HandlerError::Provider { failure, .. } => failure.as_str(),
        }
    }
}

/// What a command produces while it runs, before its output: a model's text
/// as it is generated and its tool calls. Tool input and output are JSON
/// text, so every piece crosses the cluster's codec (bincode: no
/// internally tagged enums).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Progress {
    /// The next piece of the model's text.
    Text { text: String },
    /// The model called a tool.
    ToolCall {
        id: String,
        name: String,
        input: String,
    },
    /// A tool call ended: `status` is `ok`, `error`, `refused` or `not_run`.
    ToolResult {
        id: String,
        name: String,
        status: String,
        output: String,
    },
}

/// Where a streaming command sends its [`Progress`]; bounded, so a slow
/// reader slows the command. A failed send means the reader is gone: the
/// command should stop.
pub type ProgressSender = tokio::sync::mpsc::Sender<Progress>;

/// Runs commands of one plugin.
pub trait CommandHandler: Send + Sync + 'static {
    /// Handler kind for status output (`sim`, `process`, `mcp`).
    fn kind(&self) -> &'static str;
    /// Run one command.
    fn execute(&self, req: ExecRequest) -> BoxFuture<'static, Result<ExecOutput, HandlerError>>;
    /// Run one command and send what it produces on the way into
    /// `progress` (a model's text as it arrives). Handlers with nothing to
    /// say before their output run [`CommandHandler::execute`]. Dropping the
    /// future cancels the command.
    fn execute_streaming(
        &self,
        req: ExecRequest,
        progress: ProgressSender,
    ) -> BoxFuture<'static, Result<ExecOutput, HandlerError>> {
        let _ = progress;
        self.execute(req)
    }
    /// Start what the handler keeps running (a server process), if it is
    /// not running. Each new plugin host calls it; an error fails the start,
    /// which counts against the plugin's restart intensity.
    fn start(&self) -> BoxFuture<'static, Result<(), HandlerError>> {
        Box::pin(async { Ok(()) })
    }
    /// Resolves, with the reason, when what the handler keeps running has
    /// stopped: the plugin host then stops and its supervisor restarts it
    /// (and calls `start` again) within the restart intensity. Never
    /// resolves for handlers that keep nothing running.
    fn stopped(&self) -> BoxFuture<'static, String> {
        Box::pin(futures::future::pending())
    }
    /// What the handler learns while it runs (an MCP server's tools, its
    /// processes), for the cluster registry. `None` for handlers whose
    /// commands are all in the catalog.
    fn report(&self) -> Option<tokio::sync::watch::Receiver<HandlerReport>> {
        None
    }
}

/// What a handler found at run time, announced with its plugin.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HandlerReport {
    /// Commands found at run time (an MCP server's tools), in addition to
    /// the catalog's. The last known list stays while a server restarts.
    pub commands: Vec<DiscoveredCommand>,
    /// The servers or processes the handler keeps running.
    pub servers: Vec<ServerStatus>,
}

/// A command a handler discovered (an MCP tool).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiscoveredCommand {
    pub name: String,
    pub description: String,
    /// JSON Schema of the input, as JSON text (the wire codec cannot carry
    /// arbitrary JSON values).
    pub input_schema: String,
    /// Safe to retry: the tool says it is read-only or idempotent.
    pub idempotent: bool,
    /// Which server offers it.
    pub server: String,
}

impl DiscoveredCommand {
    /// The catalog form, for the router's index: the input schema's property
    /// names and descriptions become searchable text.
    pub fn to_command(&self) -> plexus_catalog::Command {
        plexus_catalog::Command {
            name: self.name.clone(),
            description: self.description.clone(),
            argument_hint: Some(schema_text(&self.input_schema)).filter(|s| !s.is_empty()),
            keywords: self
                .name
                .split(['_', '-', '.'])
                .filter(|w| !w.is_empty())
                .map(str::to_string)
                .collect(),
            idempotent: self.idempotent,
            ..Default::default()
        }
    }
}

/// The property names and descriptions of a JSON Schema object, as text.
pub fn schema_text(schema: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(schema) else {
        return String::new();
    };
    let mut out = vec![];
    if let Some(props) = v.get("properties").and_then(|p| p.as_object()) {
        for (k, p) in props {
            out.push(k.replace('_', " "));
            if let Some(d) = p.get("description").and_then(|d| d.as_str()) {
                out.push(d.to_string());
            }
        }
    }
    out.join("; ")
}

/// One long-running server or process of a handler.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServerStatus {
    pub name: String,
    /// `stdio` or `http`.
    pub transport: String,
    /// starting | running | restarting | failed
    pub state: String,
    /// The process id of a stdio server while it runs.
    pub pid: Option<u32>,
    /// Restarts since the handler started.
    pub restarts: u32,
    /// Tools the server offers (0 until listed).
    pub tools: u32,
    /// Why it last stopped or failed to start.
    pub last_error: Option<String>,
    /// What confines a sandboxed stdio server, e.g. `network=netns
    /// landlock=full user_namespace uid=65534`; `None` when it runs
    /// unconfined. (Always serialized: announces carry this in bincode,
    /// which cannot skip fields.)
    #[serde(default)]
    pub sandbox: Option<String>,
}

/// Fault directives a test or the simulation can put in an input under `$sim`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SimFaults {
    /// Crash the plugin host actor (exercises supervision).
    #[serde(default)]
    pub panic: bool,
    /// Fail this call.
    #[serde(default)]
    pub fail: bool,
    /// Extra latency for this call.
    #[serde(default)]
    pub delay_ms: u64,
}

impl SimFaults {
    /// Read `$sim` from a JSON input, if present and allowed.
    pub fn from_input(input: &str) -> SimFaults {
        serde_json::from_str::<serde_json::Value>(input)
            .ok()
            .and_then(|v| v.get("$sim").cloned())
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default()
    }
}

/// The deterministic simulated handler.
pub struct SimHandler {
    plugin: Arc<Plugin>,
    spec: SimSpec,
    rng: std::sync::Mutex<Rng64>,
}

impl SimHandler {
    pub fn new(plugin: Arc<Plugin>, spec: SimSpec) -> SimHandler {
        let seed = spec.seed ^ fnv(plugin.name.as_bytes());
        SimHandler {
            plugin,
            spec,
            rng: std::sync::Mutex::new(Rng64::new(seed)),
        }
    }

    /// Change latency and failure rate at run time (fault injection).
    pub fn set_behaviour(&mut self, latency_ms: u64, failure_rate: f64) {
        self.spec.latency_ms = latency_ms;
        self.spec.failure_rate = failure_rate.clamp(0.0, 1.0);
    }

    fn draw(&self) -> (f64, u64) {
        let mut r = match self.rng.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let fail_roll = r.next_f64();
        let jitter = if self.spec.jitter_ms > 0 {
            r.next_u64() % (self.spec.jitter_ms + 1)
        } else {
            0
        };
        (fail_roll, jitter)
    }
}

/// Minutes of work a command is estimated to take, from its model tier.
pub fn work_minutes(model: ModelTier, input_len: usize) -> f64 {
    let base = match model {
        ModelTier::Haiku => 2.0,
        ModelTier::Sonnet => 6.0,
        ModelTier::Opus => 15.0,
    };
    base + (input_len as f64 / 2000.0).min(10.0)
}

impl CommandHandler for SimHandler {
    fn kind(&self) -> &'static str {
        "sim"
    }

    fn execute(&self, req: ExecRequest) -> BoxFuture<'static, Result<ExecOutput, HandlerError>> {
        let plugin = self.plugin.clone();
        let spec = self.spec.clone();
        let (fail_roll, jitter) = self.draw();
        Box::pin(async move {
            let Some(target) = Target::find(&plugin, &req.command) else {
                return Err(HandlerError::UnknownCommand {
                    plugin: plugin.name.clone(),
                    command: req.command.clone(),
                });
            };
            let input: serde_json::Value = if req.input.trim().is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::from_str(&req.input)
                    .map_err(|e| HandlerError::BadInput(format!("input is not JSON: {e}")))?
            };
            let faults = if spec.allow_fault_injection {
                SimFaults::from_input(&req.input)
            } else {
                SimFaults::default()
            };
            let latency = spec.latency_ms + jitter + faults.delay_ms;
            if latency > 0 {
                tokio::time::sleep(Duration::from_millis(latency)).await;
            }
            if faults.fail || fail_roll < spec.failure_rate {
                return Err(HandlerError::Failed(format!(
                    "simulated failure of {}/{}",
                    plugin.name, target.name
                )));
            }
            if let Some(w) = &spec.witness {
                witness(w, &req, &target.name)?;
            }
            let model = req.model.or(target.model).unwrap_or(ModelTier::Sonnet);
            let minutes = work_minutes(model, req.input.len());
            let output = serde_json::json!({
                "plugin": plugin.name,
                "command": target.name,
                "summary": format!("{}: {}", target.name, first_sentence(target.description)),
                "input": input,
                "model": model,
                "digest": format!("{:016x}", fnv(format!("{}/{}/{}", plugin.name, target.name, req.input).as_bytes())),
            });
            Ok(ExecOutput {
                output: output.to_string(),
                model: Some(model),
                work_minutes: minutes,
                cost_usd: minutes * model.cost_per_minute(),
                llm: None,
            })
        })
    }
}

/// Take the call's effect: one line `{"plugin", "command", "key"}` appended
/// to the witness file (one `write`, so lines of concurrent calls do not
/// mix). A line that cannot be written is an effect that did not happen.
fn witness(path: &std::path::Path, req: &ExecRequest, command: &str) -> Result<(), HandlerError> {
    use std::io::Write;
    let mut line = serde_json::json!({
        "plugin": req.plugin,
        "command": command,
        "key": req.idempotency_key,
    })
    .to_string();
    line.push('\n');
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .map_err(|e| {
            HandlerError::Failed(format!(
                "could not write the witness {}: {e}",
                path.display()
            ))
        })
}

/// What a request names: a command (`NAME`, `/NAME`, alias or `command:NAME`)
/// or an agent (`agent:NAME`), as the router's decisions spell them.
struct Target<'a> {
    name: String,
    description: &'a str,
    model: Option<ModelTier>,
}

impl<'a> Target<'a> {
    fn find(plugin: &'a plexus_catalog::Plugin, what: &str) -> Option<Target<'a>> {
        if let Some(a) = what.strip_prefix("agent:") {
            let a = plugin.agent(a)?;
            return Some(Target {
                name: format!("agent:{}", a.name),
                description: &a.description,
                model: a.model,
            });
        }
        let c = plugin.command(what.strip_prefix("command:").unwrap_or(what))?;
        Some(Target {
            name: c.name.clone(),
            description: &c.description,
            model: c.model,
        })
    }
}

fn first_sentence(s: &str) -> String {
    let s = s.trim();
    let end = s.find(". ").map(|i| i + 1).unwrap_or(s.len()).min(160);
    let mut end = end;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// FNV-1a, for stable seeds and digests.
pub fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

mod rng {
    /// A tiny deterministic generator (SplitMix64): the same seed gives the
    /// same sequence on every platform, which the simulation relies on.
    pub struct Rng64(u64);

    impl Rng64 {
        pub fn new(seed: u64) -> Self {
            Rng64(seed)
        }
        pub fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
            z ^ (z >> 31)
        }
        pub fn next_f64(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_catalog::{Catalog, Sources};

    fn plugin() -> Arc<Plugin> {
        let c = Catalog::load(&Sources {
            embedded: vec![(
                "p.toml".into(),
                "[plugin]\nname = \"p\"\n[[commands]]\nname = \"go\"\ndescription = \"Go now. Then more.\"\nmodel = \"haiku\"\n".into(),
            )],
            dirs: vec![],
        });
        Arc::new(c.plugins[0].clone())
    }

    fn req(cmd: &str, input: &str) -> ExecRequest {
        ExecRequest {
            caller: None,
            plugin: "p".into(),
            command: cmd.into(),
            input: input.into(),
            idempotency_key: None,
            trace_id: None,
            model: None,
        }
    }

    fn spec(latency_ms: u64, failure_rate: f64) -> SimSpec {
        SimSpec {
            latency_ms,
            failure_rate,
            allow_fault_injection: true,
            ..SimSpec::default()
        }
    }

    #[tokio::test]
    async fn fault_directives_are_ignored_unless_the_manifest_allows_them() {
        let strict = SimSpec {
            latency_ms: 0,
            ..SimSpec::default()
        };
        let h = SimHandler::new(plugin(), strict);
        assert!(h
            .execute(req("go", "{\"$sim\":{\"fail\":true}}"))
            .await
            .is_ok());
        let h = SimHandler::new(plugin(), spec(0, 0.0));
        assert!(h
            .execute(req("go", "{\"$sim\":{\"fail\":true}}"))
            .await
            .is_err());
    }

    #[tokio::test]
    async fn agents_run_by_name_with_the_routers_model() {
        let mut p = (*plugin()).clone();
        p.agents.push(plexus_catalog::Agent {
            name: "helper".into(),
            description: "Helps. A lot.".into(),
            ..Default::default()
        });
        let h = SimHandler::new(Arc::new(p), spec(0, 0.0));
        let mut r = req("agent:helper", "{}");
        r.model = Some(ModelTier::Haiku);
        let out = h.execute(r).await.unwrap();
        assert_eq!(out.model, Some(ModelTier::Haiku));
        assert!(out.output.contains("agent:helper"));
        assert!(h.execute(req("agent:nobody", "{}")).await.is_err());
    }

    #[tokio::test]
    async fn deterministic_output_and_cost_model() {
        let h = SimHandler::new(plugin(), spec(0, 0.0));
        let a = h.execute(req("go", "{\"x\":1}")).await.unwrap();
        let b = h.execute(req("go", "{\"x\":1}")).await.unwrap();
        assert_eq!(a, b);
        assert_eq!(a.model, Some(ModelTier::Haiku));
        assert!((a.cost_usd - a.work_minutes * 0.001).abs() < 1e-12);
        let v: serde_json::Value = serde_json::from_str(&a.output).unwrap();
        assert_eq!(v["summary"], "go: Go now.");
    }

    #[tokio::test]
    async fn errors_are_typed() {
        let h = SimHandler::new(plugin(), spec(0, 0.0));
        assert!(matches!(
            h.execute(req("nope", "{}")).await,
            Err(HandlerError::UnknownCommand { .. })
        ));
        assert!(matches!(
            h.execute(req("go", "{not json")).await,
            Err(HandlerError::BadInput(_))
        ));
        let e = h
            .execute(req("go", "{\"$sim\":{\"fail\":true}}"))
            .await
            .unwrap_err();
        assert!(e.retryable());
    }

    #[test]
    fn provider_failures_decide_retry_and_breaker_by_kind() {
        let e = |failure| HandlerError::Provider {
            failure,
            message: "m".into(),
            retry_after_ms: Some(1500),
        };
        let table = [
            (ProviderFailure::RateLimited, "rate_limited", true, false),
            (ProviderFailure::Overloaded, "overloaded", true, true),
            (ProviderFailure::ServerError, "provider_error", true, true),
            (
                ProviderFailure::Unreachable,
                "provider_unreachable",
                true,
                true,
            ),
            (ProviderFailure::BadResponse, "bad_response", true, true),
            (
                ProviderFailure::ContextTooLong,
                "context_too_long",
                false,
                false,
            ),
            (ProviderFailure::Auth, "auth", false, false),
            (
                ProviderFailure::BadRequest,
                "provider_refused",
                false,
                false,
            ),
        ];
        for (f, kind, retry, fault) in table {
            let e = e(f);
            assert_eq!(
                (e.kind(), e.retryable(), e.is_plugin_fault()),
                (kind, retry, fault)
            );
        }
        assert_eq!(e(ProviderFailure::RateLimited).retry_after_ms(), Some(1500));
        assert_eq!(HandlerError::Failed("x".into()).retry_after_ms(), None);
    }

    #[tokio::test]
    async fn the_witness_gets_one_line_per_call_that_took_effect() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.jsonl");
        let h = SimHandler::new(
            plugin(),
            SimSpec {
                witness: Some(file.clone()),
                ..spec(0, 0.0)
            },
        );
        let mut keyed = req("go", "{}");
        keyed.idempotency_key = Some("k1".into());
        h.execute(keyed).await.unwrap();
        h.execute(req("go", "{\"$sim\":{\"fail\":true}}"))
            .await
            .unwrap_err();
        h.execute(req("go", "{}")).await.unwrap();
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&file)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0]["key"], "k1");
        assert_eq!(lines[0]["command"], "go");
        assert_eq!(lines[1]["key"], serde_json::Value::Null);

        let h = SimHandler::new(
            plugin(),
            SimSpec {
                witness: Some(dir.path().join("missing/dir/p.jsonl")),
                ..spec(0, 0.0)
            },
        );
        let e = h.execute(req("go", "{}")).await.unwrap_err();
        assert!(e.to_string().contains("missing/dir/p.jsonl"), "{e}");
    }

    #[tokio::test]
    async fn failure_rate_is_honoured_and_seeded() {
        let h = SimHandler::new(plugin(), spec(0, 0.5));
        let mut fails = 0;
        for _ in 0..400 {
            if h.execute(req("go", "{}")).await.is_err() {
                fails += 1;
            }
        }
        assert!((150..250).contains(&fails), "{fails}");
        let always = SimHandler::new(plugin(), spec(0, 1.0));
        assert!(always.execute(req("go", "{}")).await.is_err());
    }
}
