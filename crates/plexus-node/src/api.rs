//! The client API every node serves (HTTP + JSON). The CLI uses it; so can
//! scripts. Errors are RFC 9457 problem documents.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use plexus_bus::{BusError, BusStats, DeadLetter};
use plexus_handler::ExecRequest;
use plexus_membership::{MemberStatus, MemberView};
use plexus_resilience::RetryPolicy;
use ractor::ActorRef;
use serde::{Deserialize, Serialize};

use crate::ctx::{local_actor, NodeCtx};
use crate::plugins::{exec_envelope, ExecReply};
use crate::registry::{plugin_rows, PluginRow};
use crate::wire::NodeAnnounce;

/// A problem document.
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
    /// A try of this request (the last, or an earlier one whose later tries
    /// were not delivered) reached the plugin's host and was answered after
    /// any try in doubt: the key had no successful run then. Set by
    /// `exec_command` on every failure it returns. Not sent to clients.
    #[serde(skip)]
    pub answered: bool,
}

impl Problem {
    pub fn new(status: StatusCode, kind: &str, detail: impl Into<String>) -> Problem {
        Problem {
            kind: format!("https://plexus.dev/problems/{kind}"),
            title: status.canonical_reason().unwrap_or("error").to_string(),
            status: status.as_u16(),
            detail: detail.into(),
            reply: None,
            in_doubt: false,
            answered: false,
        }
    }
}

impl Problem {
    /// Unavailable, failed or timed out (502–504): it may pass on another
    /// node, plugin or try, unlike a bad request.
    pub fn is_unavailable(&self) -> bool {
        matches!(self.status, 502..=504)
    }

    /// Whether this failure leaves the command's effect unknown: the request
    /// was delivered (or may have been) and no answer came back.
    fn leaves_doubt(&self) -> bool {
        self.kind.ends_with("/timeout") || self.kind.ends_with("/node-down")
    }

    /// Whether the plugin's host ran the request (past its breaker and its
    /// effect log) and answered: then the answer settles an earlier doubt.
    pub fn answered_by_handler(&self) -> bool {
        self.reply
            .as_ref()
            .and_then(|r| r.error.as_ref())
            .is_some_and(|e| !matches!(e.kind.as_str(), "breaker_open" | "crashed" | "timeout"))
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (status, Json(self)).into_response();
        r.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/problem+json"),
        );
        r
    }
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
    pub bus: BusStats,
    pub links: LinkRow,
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

/// `POST /v1/exec` body.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecBody {
    pub plugin: String,
    pub command: String,
    #[serde(default)]
    pub input: Option<serde_json::Value>,
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
    pub model: Option<plexus_catalog::ModelTier>,
}

/// The API's routes.
pub fn router(ctx: Arc<NodeCtx>) -> Router {
    let limit = ctx.config.max_payload_bytes + 64 * 1024;
    Router::new()
        .route("/v1/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/exec", post(exec))
        .route("/v1/route", post(route))
        .route("/v1/ask", post(ask))
        .route("/v1/workflows", post(start_workflow).get(list_workflows))
        .route("/v1/workflows/{id}", get(get_workflow))
        .route("/v1/dead-letters", get(dead_letters))
        .route("/v1/openapi.json", get(openapi))
        .merge(crate::state_api::routes())
        .merge(crate::dashboard::routes())
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "not-found", "no such endpoint") })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            crate::auth::require_token,
        ))
        // Outermost: even a refused request has a trace id to quote.
        .layer(axum::middleware::from_fn(crate::trace::layer))
        .with_state(ctx)
}

/// `GET /v1/health`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HealthBody {
    pub ok: bool,
    pub node: String,
}

#[utoipa::path(
    get,
    path = "/v1/health",
    tag = "health",
    description = "Liveness probe (no token needed).",
    responses(
        (status = 200, description = "The node is serving", body = HealthBody),
    )
)]
async fn health(State(ctx): State<Arc<NodeCtx>>) -> Json<HealthBody> {
    Json(HealthBody {
        ok: true,
        node: ctx.name().to_string(),
    })
}

const ACTOR_TIMEOUT: Duration = Duration::from_secs(3);

/// Ask the node-local actor `role` and wait up to `wait`. A missing actor is
/// a 503 "`what` is restarting", a silent one a 503 "`what` did not answer".
pub(crate) async fn call_local<M: ractor::Message, T: Send + 'static>(
    ctx: &NodeCtx,
    role: &str,
    what: &str,
    wait: Duration,
    build: impl FnOnce(ractor::RpcReplyPort<T>) -> M,
) -> Result<T, Problem> {
    let a: ActorRef<M> = local_actor(ctx.name(), role).ok_or_else(|| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "restarting",
            format!("{what} is restarting"),
        )
    })?;
    a.call(build, Some(wait))
        .await
        .ok()
        .and_then(|r| r.success_or(()).ok())
        .ok_or_else(|| {
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                format!("{what} did not answer"),
            )
        })
}

/// The membership view (the Membership actor's latest, from the directory
/// snapshot: no round trip to the actor).
pub async fn view(ctx: &NodeCtx) -> Result<Vec<MemberView>, Problem> {
    Ok(ctx.directory.load().view.clone())
}

/// The registry's announces (from the directory snapshot).
pub async fn announces(ctx: &NodeCtx) -> Result<Vec<NodeAnnounce>, Problem> {
    Ok(ctx.directory.load().announces.clone())
}

/// Build the status document (also used by `plexus up`'s live view).
pub async fn status_body(ctx: &NodeCtx) -> Result<StatusBody, Problem> {
    let view = view(ctx).await?;
    let ann = announces(ctx).await?;
    let id = ctx.identity.read().clone();
    let s = &ctx.stats;
    use std::sync::atomic::Ordering::Relaxed;
    Ok(StatusBody {
        node: id.name.clone(),
        generation: id.generation,
        cluster_addr: id.cluster_addr.clone(),
        api_addr: id.api_addr.clone(),
        uptime_secs: ctx.started.elapsed().as_secs_f64(),
        members: view
            .iter()
            .map(|m| MemberRow {
                name: m.identity.name.clone(),
                cluster_addr: m.identity.cluster_addr.clone(),
                api_addr: m.identity.api_addr.clone(),
                status: m.status,
                generation: m.identity.generation,
                local: m.local,
            })
            .collect(),
        plugins: plugin_rows(&ann, &view),
        bus: ctx.bus.stats(),
        links: LinkRow {
            linked: ctx.linked_nodes(),
            frames_in: s.frames_in.load(Relaxed),
            messages_in: s.messages_in.load(Relaxed),
            frames_out: s.frames_out.load(Relaxed),
            bad_frames: s.bad_frames.load(Relaxed),
            handshakes_failed: s.handshakes_failed.load(Relaxed),
            protocol_mismatches: s.protocol_mismatches.load(Relaxed),
        },
    })
}

#[utoipa::path(
    get,
    path = "/v1/status",
    tag = "status",
    description = "Members, plugins (with breaker states), bus and link counters as this node sees them.",
    responses(
        (status = 200, description = "The node's view of the cluster", body = StatusBody),
        (status = 503, description = "A node service is restarting or busy", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn status(State(ctx): State<Arc<NodeCtx>>) -> Result<Json<StatusBody>, Problem> {
    status_body(&ctx).await.map(Json)
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<usize>,
}

/// `POST /v1/workflows` with `detach`: the new run's id.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkflowStarted {
    pub id: String,
}

#[utoipa::path(
    get,
    path = "/v1/dead-letters",
    tag = "status",
    description = "The most recent undeliverable messages (newest last).",
    params(("limit" = Option<usize>, Query, description = "How many (default 50, at most 1000)")),
    responses(
        (status = 200, description = "Dead letters", body = Vec<DeadLetter>),
        (status = 400, description = "Malformed query", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn dead_letters(
    State(ctx): State<Arc<NodeCtx>>,
    q: Result<Query<Limit>, QueryRejection>,
) -> Result<Json<Vec<DeadLetter>>, Problem> {
    let Query(q) = q.map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            format!("malformed query: {}", e.body_text()),
        )
    })?;
    Ok(Json(ctx.bus.dead_letters(q.limit.unwrap_or(50).min(1000))))
}

/// Check that `plugin` and `command` exist and that a host can take it.
pub async fn resolve(ctx: &NodeCtx, plugin: &str, command: &str) -> Result<(), Problem> {
    let dir = ctx.directory.load();
    let hosts: Vec<&NodeAnnounce> = dir.hosts_of(plugin).collect();
    if hosts.is_empty() {
        let mut known: Vec<String> = dir
            .announces
            .iter()
            .flat_map(|a| a.plugins.iter().map(|p| p.name.clone()))
            .collect();
        known.sort();
        known.dedup();
        if ctx.catalog.plugin(plugin).is_some() {
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not-hosted",
                format!("plugin {plugin:?} is in the catalog but no node hosts it"),
            ));
        }
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "unknown-plugin",
            format!(
                "unknown plugin {plugin:?}; the cluster hosts: {}",
                known.join(", ")
            ),
        ));
    }
    let cmd = command.trim_start_matches('/');
    let has_cmd = hosts.iter().any(|a| {
        a.plugins
            .iter()
            .filter(|p| p.name == plugin)
            .any(|p| match cmd.strip_prefix("agent:") {
                Some(agent) => p.agents.iter().any(|x| x == agent),
                None => {
                    let cmd = cmd.strip_prefix("command:").unwrap_or(cmd);
                    p.commands.iter().any(|c| c == cmd) || p.aliases.iter().any(|(al, _)| al == cmd)
                }
            })
    });
    if !has_cmd {
        let cmds: Vec<String> = hosts[0]
            .plugins
            .iter()
            .filter(|p| p.name == plugin)
            .flat_map(|p| p.commands.clone())
            .collect();
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "unknown-command",
            format!(
                "plugin {plugin:?} has no command {command:?}; its commands: {}",
                cmds.join(", ")
            ),
        ));
    }
    let rows: Vec<&PluginRow> = dir.plugin_rows(plugin).collect();
    if rows
        .iter()
        .any(|r| r.status == "available" && !breaker_open(&r.breaker))
    {
        return Ok(());
    }
    if rows.iter().any(|r| r.status == "available") {
        let on: Vec<&str> = rows.iter().map(|r| r.node.as_str()).collect();
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "breaker-open",
            format!(
                "circuit breaker of plugin {plugin:?} is open (on {})",
                on.join(", ")
            ),
        ));
    }
    let why: Vec<String> = rows
        .iter()
        .map(|r| match r.node_status {
            MemberStatus::Up => format!("on {} it is {}", r.node, r.status),
            s => format!("its node {} is {s}", r.node),
        })
        .collect();
    Err(Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "plugin-unavailable",
        format!("plugin {plugin:?} is unavailable: {}", why.join("; ")),
    ))
}

/// Whether a breaker state refuses calls.
pub fn breaker_open(state: &str) -> bool {
    state == "open" || state == "forced-open"
}

/// Run a command wherever its plugin is hosted, with the plugin's retry
/// policy, then its cached result (TTL) if every try failed.
pub async fn exec_command(ctx: &NodeCtx, body: ExecBody) -> Result<ExecReply, Problem> {
    let started = Instant::now();
    let plugin = body.plugin.clone();
    let r = exec_with_policy(ctx, body).await;
    let outcome = match &r {
        Ok(rep) => rep
            .served_by
            .as_deref()
            .map(|s| s.split(' ').next().unwrap_or(s).to_string())
            .unwrap_or_else(|| "primary".into()),
        Err(p) => p.kind.rsplit('/').next().unwrap_or("error").to_string(),
    };
    // Only catalog plugins get a label: clients must not mint time series.
    if ctx.catalog.plugin(&plugin).is_some() {
        ctx.metrics.exec(&plugin, &outcome, started.elapsed());
    }
    r
}

async fn exec_with_policy(ctx: &NodeCtx, body: ExecBody) -> Result<ExecReply, Problem> {
    let handling = ctx
        .catalog
        .plugin(&body.plugin)
        .map(|p| (p, &p.manifest.error_handling));
    let policy = handling.map_or_else(RetryPolicy::none, |(_, h)| {
        RetryPolicy::from_spec(&h.retry_policy)
    });
    let idempotent = ctx.command_idempotent(&body.plugin, &body.command);
    let key = format!(
        "{}\u{0}{}\u{0}{}",
        body.plugin,
        body.command,
        body.input
            .as_ref()
            .map(|v| v.to_string())
            .unwrap_or_default()
    );
    let mut retries = 0u32;
    // Set by a try that may have run; cleared by a later answer, which
    // (same idempotency key) tells what happened.
    let mut doubt = false;
    // Set by a try the plugin's host answered; cleared by a later doubt.
    let mut answered = false;
    // One deadline for the whole request, retries and backoff included: a
    // client's timeout_ms is how long it waits, not how long each try may take.
    let budget = body
        .timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(ctx.config.request_timeout);
    let deadline = tokio::time::Instant::now() + budget;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match exec_once(ctx, &body, left, budget).await {
            Ok(mut r) => {
                r.retries = retries;
                r.served_by = Some(if retries == 0 {
                    "primary".into()
                } else {
                    format!("retry {retries}")
                });
                if idempotent {
                    ctx.cache.lock().insert(key, r.clone(), crate::links::now());
                }
                return Ok(r);
            }
            Err(mut p) => {
                if p.leaves_doubt() {
                    doubt = true;
                    answered = false;
                } else if p.answered_by_handler() {
                    doubt = false;
                    answered = true;
                }
                p.in_doubt = doubt;
                p.answered = answered;
                let retryable = p
                    .reply
                    .as_ref()
                    .and_then(|r| r.error.as_ref())
                    .is_some_and(|e| e.retryable)
                    || p.kind.ends_with("/timeout");
                if RetryPolicy::should_retry(idempotent, body.idempotency_key.is_some(), retryable)
                {
                    // Its own statement: the thread-local RNG must not live across the sleep.
                    let delay = policy.delay_for(retries + 1, &mut *ctx.rng.lock());
                    // A retry needs time for its backoff and its own try.
                    let room = |d: Duration| tokio::time::Instant::now() + d < deadline;
                    if let Some(d) = delay.filter(|d| room(*d)) {
                        retries += 1;
                        tracing::debug!(plugin = %body.plugin, retries, delay_ms = d.as_millis() as u64, error = %p.detail, "retrying");
                        tokio::time::sleep(d).await;
                        continue;
                    }
                }
                // Degrade to the last good answer, if still fresh.
                let unavailable = p.is_unavailable();
                if unavailable && idempotent {
                    if let Some(c) = ctx.cache.lock().get(&key, crate::links::now()).cloned() {
                        let mut c = c;
                        c.served_by = Some("cache".into());
                        c.retries = retries;
                        return Ok(c);
                    }
                }
                // Not when the command may have run: a stand-in answer would hide that.
                if unavailable && !doubt {
                    if let Some(d) = handling.and_then(|(_, h)| h.default_result.as_ref()) {
                        return Ok(ExecReply {
                            ok: true,
                            plugin: body.plugin.clone(),
                            command: body.command.clone(),
                            node: ctx.name().to_string(),
                            output: serde_json::to_value(d).ok(),
                            error: None,
                            duration_ms: 0.0,
                            model: None,
                            cost_usd: None,
                            work_minutes: None,
                            served_by: Some("default".into()),
                            retries,
                        });
                    }
                }
                if retries > 0 {
                    p.detail = format!("{} (after {retries} retries)", p.detail);
                }
                return Err(p);
            }
        }
    }
}

/// One try, waiting at most `timeout` (what is left of the request's
/// `budget`, which error messages name).
async fn exec_once(
    ctx: &NodeCtx,
    body: &ExecBody,
    timeout: Duration,
    budget: Duration,
) -> Result<ExecReply, Problem> {
    resolve(ctx, &body.plugin, &body.command).await?;
    let input = match &body.input {
        Some(v) => v.to_string(),
        None => "{}".into(),
    };
    if input.len() > ctx.config.max_payload_bytes {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            format!(
                "input of {} bytes exceeds the limit of {} bytes",
                input.len(),
                ctx.config.max_payload_bytes
            ),
        ));
    }
    let priority = body.priority.unwrap_or(plexus_bus::DEFAULT_PRIORITY);
    if !(1..=10).contains(&priority) {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-priority",
            format!("priority {priority} is outside 1..=10"),
        ));
    }
    let req = ExecRequest {
        plugin: body.plugin.clone(),
        command: body.command.trim_start_matches('/').to_string(),
        input,
        idempotency_key: body.idempotency_key.clone(),
        // The API request's trace, so the plugin's node logs under it too.
        trace_id: crate::trace::current().map(|t| t.trace_id),
        model: body.model,
    };
    let env = exec_envelope(&format!("api@{}", ctx.name()), req, priority);
    let started = Instant::now();
    let resp = ctx.bus.request(env, timeout).await.map_err(|e| match e {
        BusError::NoRoute { .. } => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "plugin-unavailable",
            format!(
                "plugin {:?} is unavailable: no reachable node serves it right now",
                body.plugin
            ),
        ),
        BusError::Timeout { .. } => Problem::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!(
                "no answer from plugin {:?} within the request's {} ms",
                body.plugin,
                budget.as_millis()
            ),
        ),
        BusError::PeerDown { node, .. } => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "node-down",
            format!(
                "plugin {:?}: its node {node} went down before answering (the command may or may not have run there)",
                body.plugin
            ),
        ),
        other => Problem::new(StatusCode::BAD_REQUEST, "bad-request", other.to_string()),
    })?;
    let mut reply: ExecReply = serde_json::from_slice(&resp.payload).map_err(|e| {
        Problem::new(
            StatusCode::BAD_GATEWAY,
            "bad-reply",
            format!("malformed reply from {}: {e}", resp.source_node),
        )
    })?;
    tracing::debug!(plugin = %reply.plugin, node = %reply.node, total_ms = started.elapsed().as_millis() as u64, "exec done");
    if reply.ok {
        return Ok(reply);
    }
    let err = reply.error.clone();
    let (status, kind) = match err.as_ref().map(|e| e.kind.as_str()) {
        Some("unknown_command") => (StatusCode::NOT_FOUND, "unknown-command"),
        Some("bad_input") => (StatusCode::BAD_REQUEST, "bad-input"),
        Some("timeout") => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        Some("breaker_open") => (StatusCode::SERVICE_UNAVAILABLE, "breaker-open"),
        _ => (StatusCode::BAD_GATEWAY, "plugin-failed"),
    };
    let detail = err
        .map(|e| e.message)
        .unwrap_or_else(|| "plugin failed".into());
    let mut p = Problem::new(status, kind, detail);
    reply.output = None;
    p.reply = Some(Box::new(reply));
    Err(p)
}

#[utoipa::path(
    post,
    path = "/v1/exec",
    tag = "exec",
    description = "Run one plugin command wherever the plugin is hosted (breaker, retry policy, cache and default result apply).",
    request_body = ExecBody,
    responses(
        (status = 200, description = "The command ran (or a degraded path served it: see served_by)", body = ExecReply),
        (status = 400, description = "Malformed request or bad input", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown plugin or command", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Payload too large", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The plugin failed (reply holds its answer)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No host can take it (unavailable, breaker open)", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "No answer in time", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn exec(
    State(ctx): State<Arc<NodeCtx>>,
    body: Result<Json<ExecBody>, JsonRejection>,
) -> Result<Json<ExecReply>, Problem> {
    let Json(body) = body.map_err(|e| body_problem(&ctx, e))?;
    exec_command(&ctx, body).await.map(Json)
}

/// The problem document for a request body that did not parse or was too large.
pub(crate) fn body_problem(ctx: &NodeCtx, e: JsonRejection) -> Problem {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE
        || e.body_text().contains("length limit exceeded")
    {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            format!(
                "request body too large: the limit is {} bytes (limits.max_payload_bytes)",
                ctx.config.max_payload_bytes
            ),
        )
    } else {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            format!("malformed request: {}", e.body_text()),
        )
    }
}

#[utoipa::path(
    post,
    path = "/v1/route",
    tag = "route",
    description = "Decide which plugin and agent should handle a free-text request, with the live availability of every plugin. The answer is the decision: primary plugin, agent, model, confidence, fallbacks, explanation, candidates and plan.",
    request_body = crate::ask::RouteBody,
    responses(
        (status = 200, description = "The routing decision", body = Object),
        (status = 400, description = "Malformed request", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The router is restarting or busy", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn route(
    State(ctx): State<Arc<NodeCtx>>,
    body: Result<Json<crate::ask::RouteBody>, JsonRejection>,
) -> Result<Json<serde_json::Value>, Problem> {
    let Json(body) = body.map_err(|e| body_problem(&ctx, e))?;
    let d = crate::ask::route(&ctx, &body).await?;
    Ok(Json(crate::ask::decision_json(&d)))
}

#[utoipa::path(
    post,
    path = "/v1/ask",
    tag = "route",
    description = "Route a free-text request and run it on the chosen plugin, then on each fallback in order.",
    request_body = crate::ask::AskBody,
    responses(
        (status = 200, description = "What ran and which path served it", body = crate::ask::AskReply),
        (status = 400, description = "Malformed request or bad input", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The router is restarting or busy", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn ask(
    State(ctx): State<Arc<NodeCtx>>,
    body: Result<Json<crate::ask::AskBody>, JsonRejection>,
) -> Result<Json<crate::ask::AskReply>, Problem> {
    let Json(body) = body.map_err(|e| body_problem(&ctx, e))?;
    crate::ask::ask(&ctx, body).await.map(Json)
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

#[utoipa::path(
    post,
    path = "/v1/workflows",
    tag = "workflows",
    description = "Start a workflow run (sequential, parallel or saga). Waits for it to end unless `detach` is set.",
    request_body = StartWorkflowBody,
    responses(
        (status = 200, description = "The run ended: its report", body = plexus_workflow::RunReport),
        (status = 202, description = "Started (detach): its id", body = WorkflowStarted),
        (status = 400, description = "Malformed request or workflow file", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The workflow service is restarting", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "Still running after wait_ms", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn start_workflow(
    State(ctx): State<Arc<NodeCtx>>,
    body: Result<Json<StartWorkflowBody>, JsonRejection>,
) -> Result<Response, Problem> {
    use crate::workflows::WorkflowsMsg;
    let Json(body) = body.map_err(|e| body_problem(&ctx, e))?;
    let wf = plexus_workflow::Workflow::parse(&body.workflow).map_err(|e| {
        let e = match &body.file {
            Some(f) => e.in_file(f.clone()),
            None => e,
        };
        Problem::new(StatusCode::BAD_REQUEST, "bad-workflow", e.to_string())
    })?;
    let input = body.input.unwrap_or(serde_json::json!({}));
    let id = call_local(&ctx, "workflows", WORKFLOWS, ACTOR_TIMEOUT, |reply| {
        WorkflowsMsg::Start {
            workflow: Box::new(wf),
            input,
            reply,
        }
    })
    .await?;
    if body.detach {
        return Ok((StatusCode::ACCEPTED, Json(WorkflowStarted { id })).into_response());
    }
    let wait = body
        .wait_ms
        .map(Duration::from_millis)
        .unwrap_or(crate::workflows::MAX_WAIT)
        .min(crate::workflows::MAX_WAIT);
    let ended = match local_actor::<WorkflowsMsg>(ctx.name(), "workflows") {
        Some(sup) => sup
            .call(
                |reply| WorkflowsMsg::Wait {
                    id: id.clone(),
                    reply,
                },
                Some(wait),
            )
            .await
            .ok()
            .and_then(|r| r.success_or(()).ok())
            .flatten(),
        None => None,
    };
    match ended {
        Some(r) => Ok(Json(r).into_response()),
        None => Err(Problem::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!(
                "workflow {id} is still running after {} ms; see GET /v1/workflows/{id}",
                wait.as_millis()
            ),
        )),
    }
}

#[utoipa::path(
    get,
    path = "/v1/workflows",
    tag = "workflows",
    description = "Every workflow run and saga of this node with its step states.",
    responses(
        (status = 200, description = "Run reports", body = Vec<plexus_workflow::RunReport>),
        (status = 503, description = "The workflow service is restarting", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_workflows(
    State(ctx): State<Arc<NodeCtx>>,
) -> Result<Json<Vec<plexus_workflow::RunReport>>, Problem> {
    workflow_reports(&ctx).await.map(Json)
}

/// Every workflow run and saga of this node.
pub async fn workflow_reports(ctx: &NodeCtx) -> Result<Vec<plexus_workflow::RunReport>, Problem> {
    call_local(
        ctx,
        "workflows",
        WORKFLOWS,
        ACTOR_TIMEOUT,
        crate::workflows::WorkflowsMsg::List,
    )
    .await
}

/// How errors name the workflow service.
const WORKFLOWS: &str = "the workflow service";

#[utoipa::path(
    get,
    path = "/v1/workflows/{id}",
    tag = "workflows",
    description = "One workflow run or saga with its step states.",
    params(("id" = String, Path, description = "The run id")),
    responses(
        (status = 200, description = "The run's report", body = plexus_workflow::RunReport),
        (status = 404, description = "No such run on this node", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The workflow service is restarting", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_workflow(
    State(ctx): State<Arc<NodeCtx>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<plexus_workflow::RunReport>, Problem> {
    let Json(all) = list_workflows(State(ctx)).await?;
    all.into_iter()
        .find(|r| r.id == id)
        .map(Json)
        .ok_or_else(|| {
            Problem::new(
                StatusCode::NOT_FOUND,
                "unknown-workflow",
                format!("no workflow run {id:?} on this node"),
            )
        })
}

/// `GET /v1/openapi.json`: this API's OpenAPI document.
async fn openapi() -> Response {
    let mut r = crate::openapi::spec_json().into_response();
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    r
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "metrics",
    description = "Prometheus metrics (text format 0.0.4).",
    responses(
        (status = 200, description = "Prometheus text", body = String, content_type = "text/plain"),
    )
)]
async fn metrics(State(ctx): State<Arc<NodeCtx>>) -> Response {
    use crate::metrics::{esc, header};
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let mut o = String::new();
    let b = ctx.bus.stats();
    for (name, kind, help, v) in [
        (
            "plexus_bus_published_total",
            "counter",
            "Messages published on this node's bus.",
            b.published,
        ),
        (
            "plexus_bus_delivered_total",
            "counter",
            "Messages delivered to local subscribers.",
            b.delivered,
        ),
        (
            "plexus_bus_forwarded_total",
            "counter",
            "Messages forwarded to other nodes.",
            b.forwarded,
        ),
        (
            "plexus_bus_dead_letters_total",
            "counter",
            "Messages dead-lettered (undeliverable or expired).",
            b.dead_lettered,
        ),
        (
            "plexus_bus_rejected_total",
            "counter",
            "Publishes refused by the bus's source check (audited as dead letters).",
            b.rejected,
        ),
        (
            "plexus_bus_subscriptions",
            "gauge",
            "Live subscriptions.",
            b.subscriptions as u64,
        ),
        (
            "plexus_bus_pending_requests",
            "gauge",
            "Requests waiting for a response.",
            b.pending_requests as u64,
        ),
        (
            "plexus_link_frames_in_total",
            "counter",
            "Cluster frames received.",
            ctx.stats.frames_in.load(Relaxed),
        ),
        (
            "plexus_link_messages_in_total",
            "counter",
            "Cluster messages the received frames came in (a frame alone or a batch).",
            ctx.stats.messages_in.load(Relaxed),
        ),
        (
            "plexus_link_frames_out_total",
            "counter",
            "Cluster frames sent.",
            ctx.stats.frames_out.load(Relaxed),
        ),
        (
            "plexus_link_bytes_in_total",
            "counter",
            "Cluster bytes received.",
            ctx.stats.bytes_in.load(Relaxed),
        ),
        (
            "plexus_link_bytes_out_total",
            "counter",
            "Cluster bytes sent.",
            ctx.stats.bytes_out.load(Relaxed),
        ),
        (
            "plexus_link_bad_frames_total",
            "counter",
            "Frames from peers that did not decode (dropped).",
            ctx.stats.bad_frames.load(Relaxed),
        ),
        (
            "plexus_link_handshakes_failed_total",
            "counter",
            "Incoming cluster connections dropped before a session (TLS handshake failed, timed out or refused).",
            ctx.stats.handshakes_failed.load(Relaxed),
        ),
        (
            "plexus_link_protocol_mismatches_total",
            "counter",
            "Frames refused because the peer runs another wire protocol (another Plexus release).",
            ctx.stats.protocol_mismatches.load(Relaxed),
        ),
        (
            "plexus_link_send_failures_total",
            "counter",
            "Frames that could not be sent.",
            ctx.stats.send_failures.load(Relaxed),
        ),
    ] {
        header(&mut o, name, kind, help);
        let _ = writeln!(o, "{name} {v}");
    }
    let classes = ctx.bus.class_stats();
    for (name, help, pick) in [
        (
            "plexus_bus_class_published_total",
            "Messages published per topic class (first topic segment: plugin, system, state, workflow, other).",
            (|c: &plexus_bus::TopicClassStats| c.published) as fn(&plexus_bus::TopicClassStats) -> u64,
        ),
        (
            "plexus_bus_class_delivered_total",
            "Messages delivered to local subscribers per topic class.",
            |c| c.delivered,
        ),
        (
            "plexus_bus_class_dead_letters_total",
            "Messages dead-lettered per topic class.",
            |c| c.dead_lettered,
        ),
    ] {
        header(&mut o, name, "counter", help);
        for c in &classes {
            let _ = writeln!(o, "{name}{{class=\"{}\"}} {}", c.class, pick(c));
        }
    }
    if let Ok(runs) = workflow_reports(&ctx).await {
        use std::collections::BTreeMap;
        let mut by: BTreeMap<(String, String), u64> = BTreeMap::new();
        for r in &runs {
            *by.entry((
                serde_json::to_value(r.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                serde_json::to_value(r.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
            ))
            .or_default() += 1;
        }
        header(
            &mut o,
            "plexus_workflow_runs",
            "gauge",
            "Workflow runs and sagas this node knows, by kind and outcome (running, completed, failed, compensated, stuck).",
        );
        for ((kind, status), n) in by {
            let _ = writeln!(
                o,
                "plexus_workflow_runs{{kind=\"{kind}\",status=\"{status}\"}} {n}"
            );
        }
    }
    if let (Ok(view), Ok(ann)) = (view(&ctx).await, announces(&ctx).await) {
        header(
            &mut o,
            "plexus_members",
            "gauge",
            "Cluster members by status, as this node sees them.",
        );
        for st in [
            MemberStatus::Up,
            MemberStatus::Unreachable,
            MemberStatus::Down,
        ] {
            let n = view.iter().filter(|m| m.status == st).count();
            let _ = writeln!(o, "plexus_members{{status=\"{st}\"}} {n}");
        }
        let rows = plugin_rows(&ann, &view);
        header(
            &mut o,
            "plexus_plugin_available",
            "gauge",
            "1 when the plugin serves on that node.",
        );
        for r in &rows {
            let _ = writeln!(
                o,
                "plexus_plugin_available{{plugin=\"{}\",node=\"{}\"}} {}",
                esc(&r.name),
                esc(&r.node),
                u8::from(r.status == "available")
            );
        }
        header(
            &mut o,
            "plexus_plugin_breaker_open",
            "gauge",
            "1 when the plugin's circuit breaker refuses calls (open or forced open).",
        );
        for r in &rows {
            let _ = writeln!(
                o,
                "plexus_plugin_breaker_open{{plugin=\"{}\",node=\"{}\",state=\"{}\"}} {}",
                esc(&r.name),
                esc(&r.node),
                esc(&r.breaker),
                u8::from(breaker_open(&r.breaker))
            );
        }
        header(
            &mut o,
            "plexus_plugin_restarts",
            "gauge",
            "Restarts of the plugin's host actor.",
        );
        for r in &rows {
            let _ = writeln!(
                o,
                "plexus_plugin_restarts{{plugin=\"{}\",node=\"{}\"}} {}",
                esc(&r.name),
                esc(&r.node),
                r.restarts
            );
        }
    }
    ctx.metrics.render(&mut o);
    let mut r = o.into_response();
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}
