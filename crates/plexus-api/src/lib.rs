//! The node API's request and response types. The node serves them, the
//! CLI's client commands and scripts send and read them; neither side needs
//! the other's internals. Inputs and outputs of plugin commands travel as
//! raw JSON (`Box<RawValue>`): the node never parses them on the way.

pub mod state;

use plexus_bus::BusStats;
use plexus_catalog::ModelTier;
use plexus_handler::ServerStatus;
use plexus_membership::MemberStatus;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Raw JSON from a value (for clients that built a `serde_json::Value`).
pub fn raw(v: &serde_json::Value) -> Box<RawValue> {
    // A Value always serialises.
    serde_json::value::to_raw_value(v).unwrap_or_else(|_| raw_null())
}

fn raw_null() -> Box<RawValue> {
    RawValue::from_string("null".into()).unwrap_or_default()
}

/// A problem document (RFC 9457).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<Box<ExecReply>>,
    /// The command may have run although no answer said so (a timeout, or
    /// its node went down after the request left, on this or an earlier
    /// try). Re-send with the same idempotency key to learn the outcome.
    #[serde(
        rename = "inDoubt",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub in_doubt: bool,
}

impl Problem {
    /// The problem `https://plexus.dev/problems/{kind}`.
    pub fn new(status: u16, title: &str, kind: &str, detail: impl Into<String>) -> Problem {
        Problem {
            kind: format!("https://plexus.dev/problems/{kind}"),
            title: title.to_string(),
            status,
            detail: detail.into(),
            reply: None,
            in_doubt: false,
        }
    }

    /// The last segment of the type URL (`timeout`, `breaker-open`, ...).
    pub fn slug(&self) -> &str {
        self.kind.rsplit('/').next().unwrap_or(&self.kind)
    }
}

/// `GET /v1/health`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HealthBody {
    pub ok: bool,
    pub node: String,
}

/// `GET /v1/ready`: 200 when the node takes work, 503 with the reason when
/// not (joining, resolving its DNS seeds, starting plugins, draining).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReadyBody {
    pub ready: bool,
    pub node: String,
    /// Why not, when `ready` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Work in flight on this node (API requests and plugin calls).
    pub in_flight: u64,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatusBody {
    pub node: String,
    pub generation: u64,
    pub cluster_addr: String,
    pub api_addr: String,
    pub uptime_secs: f64,
    pub members: Vec<MemberRow>,
    pub plugins: Vec<PluginRow>,
    /// The cluster placement as this node computes it: per plugin, the
    /// nodes assigned against the nodes running it.
    #[serde(default)]
    pub placement: Vec<PlacementRow>,
    /// Plugins this node started or stopped because the placement moved them.
    #[serde(default)]
    pub placement_moves: u64,
    /// Which signals this node's router decides with:
    /// `bm25f+all-MiniLM-L6-v2`, or `bm25f alone: ` and why (no model files,
    /// still loading).
    #[serde(default)]
    pub router_signals: String,
    pub bus: BusStats,
    pub links: LinkRow,
}

/// One plugin's placement: where the rule puts it and where it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlacementRow {
    pub plugin: String,
    /// `[placement] replicas`.
    pub replicas: u32,
    /// The nodes the placement assigns it to, best first.
    pub assigned: Vec<String>,
    /// The up nodes whose announce lists it running.
    pub running: Vec<String>,
    /// Why it has fewer nodes than replicas (no eligible node up, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub short: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemberRow {
    pub name: String,
    pub cluster_addr: String,
    pub api_addr: String,
    pub status: MemberStatus,
    pub generation: u64,
    pub local: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LinkRow {
    pub linked: Vec<String>,
    pub frames_in: u64,
    /// Cluster messages the frames came in (frames queued for a peer while
    /// its link was busy travel together as one).
    pub messages_in: u64,
    pub frames_out: u64,
    pub bad_frames: u64,
    /// Incoming connections dropped before a session: TLS handshakes that
    /// failed, timed out or were refused (too many in progress).
    pub handshakes_failed: u64,
    /// Frames refused because the peer runs another wire protocol (another
    /// Plexus release).
    pub protocol_mismatches: u64,
}

/// A plugin as the cluster sees it, joined with its node's membership status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PluginRow {
    pub name: String,
    pub version: String,
    pub node: String,
    /// available | unavailable | restarting | failed
    pub status: String,
    pub node_status: MemberStatus,
    pub handler: String,
    pub agents: usize,
    pub commands: usize,
    pub restarts: u32,
    /// closed | open | half-open | forced-open
    pub breaker: String,
    /// Commands discovered at run time (MCP tools).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
    /// The handler's servers (MCP): state, pid, restarts, last error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<ServerStatus>,
}

/// Whether a breaker state refuses calls.
pub fn breaker_open(state: &str) -> bool {
    state == "open" || state == "forced-open"
}

/// `POST /v1/exec` body.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecBody {
    pub plugin: String,
    pub command: String,
    /// The command's input (any JSON; default `{}`).
    #[serde(default)]
    #[schema(value_type = Option<serde_json::Value>)]
    pub input: Option<Box<RawValue>>,
    /// How long the whole request may take, retries and backoff included
    /// (default: the node's request timeout).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub priority: Option<u8>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Run with this model instead of the command's own (the router's choice).
    #[serde(default)]
    pub model: Option<ModelTier>,
}

/// What ran and what it produced (`POST /v1/exec`, and in problems).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExecReply {
    pub ok: bool,
    pub plugin: String,
    pub command: String,
    pub node: String,
    #[schema(value_type = Option<serde_json::Value>)]
    pub output: Option<Box<RawValue>>,
    pub error: Option<ExecErrorBody>,
    pub duration_ms: f64,
    /// The model id an `llm` run used, else the model tier.
    pub model: Option<String>,
    /// An `llm` run's tokens, as the provider counted them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub usage: Option<plexus_handler::TokenUsage>,
    pub cost_usd: Option<f64>,
    pub work_minutes: Option<f64>,
    /// Which path served it: `primary`, `retry N`, `fallback:PLUGIN`,
    /// `cache` or `default`.
    #[serde(default)]
    pub served_by: Option<String>,
    /// Retries before this answer.
    #[serde(default)]
    pub retries: u32,
}

impl ExecReply {
    /// The output as a JSON value (clients that want to look inside).
    pub fn output_value(&self) -> Option<serde_json::Value> {
        self.output
            .as_ref()
            .and_then(|r| serde_json::from_str(r.get()).ok())
    }
}

/// A failed execution as the plugin's host reported it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExecErrorBody {
    /// unknown_command | bad_input | failed | timeout | limit_exceeded | crashed | breaker_open | a provider failure
    pub kind: String,
    pub message: String,
    pub retryable: bool,
    /// For `limit_exceeded`: cpu | memory | file_size | processes | output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
}

/// `POST /v1/route` body.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteBody {
    pub request: String,
    #[serde(default)]
    pub budget_usd: Option<f64>,
    #[serde(default)]
    pub max_duration_min: Option<f64>,
}

/// `POST /v1/ask` body.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AskBody {
    pub request: String,
    #[serde(default)]
    #[schema(value_type = Option<serde_json::Value>)]
    pub input: Option<Box<RawValue>>,
    #[serde(default)]
    pub budget_usd: Option<f64>,
    #[serde(default)]
    pub max_duration_min: Option<f64>,
    /// How long the whole ask may take, every fallback included.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// One plugin tried by an ask.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Attempt {
    pub plugin: String,
    /// `agent:NAME` or `command:NAME`.
    pub target: String,
    pub ok: bool,
    pub node: Option<String>,
    pub error: Option<String>,
    pub duration_ms: f64,
}

/// `POST /v1/ask` answer.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AskReply {
    /// The decision (the batch-line fields plus the explanation).
    pub decision: serde_json::Value,
    /// `primary`, `retry N`, `fallback:PLUGIN`, `cache`, `default`, or null
    /// when nothing served.
    pub served_by: Option<String>,
    pub attempts: Vec<Attempt>,
    pub result: Option<ExecReply>,
}

/// `POST /v1/workflows` body.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartWorkflowBody {
    /// The workflow file's text (TOML).
    pub workflow: String,
    /// Its file name, for error messages.
    #[serde(default)]
    pub file: Option<String>,
    #[serde(default)]
    pub input: Option<serde_json::Value>,
    /// Wait for the run to end (default) or answer with its id at once.
    #[serde(default)]
    pub detach: bool,
    #[serde(default)]
    pub wait_ms: Option<u64>,
}

/// `POST /v1/workflows` with `detach`: the new run's id.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkflowStarted {
    pub id: String,
}

/// `POST /v1/tokens`: issue a signed token (admin only).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// `admin`, `operator`, `reader` or `plugin:NAME`.
    pub role: String,
    /// Lifetime in ms (default 24 h; at most 366 days).
    #[serde(default)]
    pub ttl_ms: Option<u64>,
    /// The caller's rate, `N/s` or `N/m` (default: the node's `[api] rate`).
    #[serde(default)]
    pub rate: Option<String>,
}

/// An issued token. The token is shown once; the node keeps no copy.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenIssued {
    pub token: String,
    /// What `plexus token revoke` names.
    pub id: String,
    pub role: String,
    pub expires_ms: u64,
}

/// `POST /v1/tokens/revoke`: revoke an issued token, cluster-wide.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    pub id: String,
}

/// The revocation, written to the replicated state.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Revoked {
    pub id: String,
    /// Ids revoked so far, cluster-wide.
    pub revoked: usize,
}
