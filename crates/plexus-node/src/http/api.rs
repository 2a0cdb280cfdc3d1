//! The client API every node serves (HTTP + JSON). The CLI uses it; so can
//! scripts. Errors are RFC 9457 problem documents.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use plexus_api::{
    breaker_open, ExecBody, ExecReply, HealthBody, LinkRow, MemberRow, StartWorkflowBody,
    StatusBody, WorkflowStarted,
};
use plexus_auth::Caller;
use plexus_bus::DeadLetter;
use plexus_exec::{RawJson, Target};
use plexus_membership::{MemberStatus, MemberView};
use ractor::ActorRef;
use serde::Deserialize;

use crate::actors::registry::plugin_rows;
use crate::ctx::NodeCtx;
use crate::http::problem::{self, Problem};
use crate::net::wire::NodeAnnounce;
use crate::services::exec::{self, CallSpec};

/// The API's routes.
pub fn router(ctx: Arc<NodeCtx>) -> Router {
    let limit = ctx.config.max_payload_bytes + 64 * 1024;
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/exec", post(exec))
        .route("/v1/route", post(route))
        .route("/v1/ask", post(ask))
        .route("/v1/workflows", post(start_workflow).get(list_workflows))
        .route("/v1/workflows/{id}", get(get_workflow))
        .route("/v1/dead-letters", get(dead_letters))
        .route("/v1/openapi.json", get(openapi))
        .merge(crate::http::state::routes())
        .merge(crate::http::tokens::routes())
        .merge(crate::http::dashboard::routes())
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "not-found", "no such endpoint") })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            admit_work,
        ))
        .layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            crate::http::auth::authenticate,
        ))
        // Outermost: even a refused request has a trace id to quote.
        .layer(axum::middleware::from_fn(crate::http::trace::layer))
        .with_state(ctx)
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

#[utoipa::path(
    get,
    path = "/v1/ready",
    tag = "health",
    description = "Readiness probe (no token needed): 200 once the node has joined the cluster (or is its first node) and its plugins run; 503 with the reason before that and while it drains.",
    responses(
        (status = 200, description = "The node takes work", body = plexus_api::ReadyBody),
        (status = 503, description = "Not ready: joining, starting plugins, or draining", body = plexus_api::ReadyBody),
    )
)]
async fn ready(State(ctx): State<Arc<NodeCtx>>) -> Response {
    let r = crate::services::lifecycle::check(&ctx);
    let body = plexus_api::ReadyBody {
        ready: r.is_ok(),
        node: ctx.name().to_string(),
        reason: r.as_ref().err().map(|e| e.to_string()),
        in_flight: ctx.lifecycle.in_flight() as u64,
    };
    let code = if r.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// Every request that may start work (anything but GET and HEAD) is counted
/// in flight, so a drain waits for it; while draining, such requests are
/// refused with 503 `draining` before they start.
async fn admit_work(
    State(ctx): State<Arc<NodeCtx>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use axum::http::Method;
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return next.run(req).await;
    }
    match ctx.lifecycle.admit() {
        Some(_in_flight) => next.run(req).await,
        None => {
            let mut r = Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "draining",
                format!(
                    "node {} is draining (shutting down) and takes no new work; send it to another node",
                    ctx.name()
                ),
            )
            .into_response();
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
            r
        }
    }
}

const ACTOR_TIMEOUT: Duration = Duration::from_secs(3);

/// Ask one of the node's actors (its typed handle) and wait up to `wait`. A
/// missing actor is a 503 "`what` is restarting", a silent one a 503
/// "`what` did not answer".
pub(crate) async fn call_actor<M: ractor::Message, T: Send + 'static>(
    slot: &crate::ctx::Slot<M>,
    what: &str,
    wait: Duration,
    build: impl FnOnce(ractor::RpcReplyPort<T>) -> M,
) -> Result<T, Problem> {
    let a: ActorRef<M> = slot.get().ok_or_else(|| {
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
        placement: placement_rows(ctx, &ann, &view),
        placement_moves: ctx.metrics.placement_moves_total(),
        plugins: plugin_rows(&ann, &view),
        bus: ctx.bus.stats(),
        router_signals: ctx.router_signals.read().clone(),
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

/// The placement this node computed, joined with where plugins run.
fn placement_rows(
    ctx: &NodeCtx,
    ann: &[crate::net::wire::NodeAnnounce],
    view: &[plexus_membership::MemberView],
) -> Vec<plexus_api::PlacementRow> {
    let placement = ctx.placement.read().clone();
    placement
        .plugins
        .into_iter()
        .map(|(plugin, placed)| {
            let running = ann
                .iter()
                .filter(|a| {
                    view.iter().any(|m| {
                        m.identity.name == a.identity.name
                            && m.status == plexus_membership::MemberStatus::Up
                    })
                })
                .filter(|a| {
                    a.plugins.iter().any(|p| {
                        p.name == plugin && p.status == crate::net::wire::PluginStatus::Running
                    })
                })
                .map(|a| a.identity.name.clone())
                .collect();
            plexus_api::PlacementRow {
                plugin,
                replicas: placed.wanted,
                assigned: placed.nodes,
                running,
                short: placed.short.map(|s| s.to_string()),
            }
        })
        .collect()
}

#[utoipa::path(
    get,
    path = "/v1/status",
    tag = "status",
    description = "Members, plugins (with breaker states), bus and link counters as this node sees them.",
    responses(
        (status = 200, description = "The node's view of the cluster", body = StatusBody),
        (status = 503, description = "A node service is restarting or busy", body = plexus_api::Problem, content_type = "application/problem+json"),
    )
)]
async fn status(State(ctx): State<Arc<NodeCtx>>) -> Result<Json<StatusBody>, Problem> {
    status_body(&ctx).await.map(Json)
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<usize>,
}

#[utoipa::path(
    get,
    path = "/v1/dead-letters",
    tag = "status",
    description = "The most recent undeliverable messages (newest last).",
    params(("limit" = Option<usize>, Query, description = "How many (default 50, at most 1000)")),
    responses(
        (status = 200, description = "Dead letters", body = Vec<DeadLetter>),
        (status = 400, description = "Malformed query", body = plexus_api::Problem, content_type = "application/problem+json"),
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

#[utoipa::path(
    post,
    path = "/v1/exec",
    tag = "exec",
    description = "Run one plugin command wherever the plugin is hosted (breaker, retry policy, cache and default result apply). With `Accept: text/event-stream` the answer streams as Server-Sent Events from the host, in order: `start` ({plugin, command, node}), `text` ({text}: each piece of a model's text as it is generated), `tool_call` ({id, name, input}), `tool_result` ({id, name, status, output}), then one `done` (the ExecReply: output, usage, model, cost_usd) or one `error` (a problem document). A streamed call runs once on one host: no retry, fallback or cache. A client that disconnects cancels the command on its host (a model call stops generating).",
    request_body = ExecBody,
    responses(
        (status = 200, description = "The command ran (or a degraded path served it: see served_by); or, with Accept: text/event-stream, its events", content(
            (ExecReply = "application/json"),
            (String = "text/event-stream"),
        )),
        (status = 400, description = "Malformed request or bad input", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The calling plugin may not call this one (the plugins' [routing] canRouteTo / acceptsRoutingFrom)", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown plugin or command", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Payload too large", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 502, description = "The plugin failed (reply holds its answer)", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "No host can take it (unavailable, breaker open)", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 504, description = "No answer in time", body = plexus_api::Problem, content_type = "application/problem+json"),
    )
)]
async fn exec(
    State(ctx): State<Arc<NodeCtx>>,
    headers: HeaderMap,
    caller: Option<Extension<Caller>>,
    body: Result<Json<ExecBody>, JsonRejection>,
) -> Result<Response, Problem> {
    let Json(b) = body.map_err(|e| body_problem(&ctx, e))?;
    let spec = CallSpec {
        caller: crate::http::auth::caller_name(caller.as_ref()),
        idempotency_key: b.idempotency_key,
        timeout_ms: b.timeout_ms,
        priority: b.priority,
        model: b.model,
        // The API request's trace, so the plugin's node logs under it too.
        trace_id: crate::http::trace::current().map(|t| t.trace_id),
        ..CallSpec::new(
            Target::new(b.plugin, b.command),
            b.input.map(|r| RawJson::checked(r.get().to_string())),
        )
    };
    let call = exec::call(&ctx, spec).map_err(|e| problem::of_error(&e))?;
    if crate::http::sse::wanted(&headers) {
        return Ok(crate::http::sse::respond(ctx, call, None).await);
    }
    match exec::run(&ctx, &call).await {
        Ok(s) => Ok(Json(exec::reply_of(s)).into_response()),
        Err(f) => Err(problem::of_failure(
            &f,
            &call.target.plugin,
            &call.target.command,
        )),
    }
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
    request_body = plexus_api::RouteBody,
    responses(
        (status = 200, description = "The routing decision", body = Object),
        (status = 400, description = "Malformed request", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The router is restarting or busy", body = plexus_api::Problem, content_type = "application/problem+json"),
    )
)]
async fn route(
    State(ctx): State<Arc<NodeCtx>>,
    body: Result<Json<plexus_api::RouteBody>, JsonRejection>,
) -> Result<Json<serde_json::Value>, Problem> {
    let Json(body) = body.map_err(|e| body_problem(&ctx, e))?;
    let d = crate::services::ask::route(&ctx, &body)
        .await
        .map_err(ask_problem)?;
    Ok(Json(crate::services::ask::decision_json(&d)))
}

#[utoipa::path(
    post,
    path = "/v1/ask",
    tag = "route",
    description = "Route a free-text request and run it on the chosen plugin, then on each fallback in order. With `Accept: text/event-stream` the chosen agent's answer streams as Server-Sent Events as for `/v1/exec` (the primary only, no fallbacks): `start` carries the `decision`, `done` the AskReply with its `result`.",
    request_body = plexus_api::AskBody,
    responses(
        (status = 200, description = "What ran and which path served it; or, with Accept: text/event-stream, its events", content(
            (plexus_api::AskReply = "application/json"),
            (String = "text/event-stream"),
        )),
        (status = 400, description = "Malformed request or bad input", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The router is restarting or busy", body = plexus_api::Problem, content_type = "application/problem+json"),
    )
)]
async fn ask(
    State(ctx): State<Arc<NodeCtx>>,
    headers: HeaderMap,
    caller: Option<Extension<Caller>>,
    body: Result<Json<plexus_api::AskBody>, JsonRejection>,
) -> Result<Response, Problem> {
    let Json(body) = body.map_err(|e| body_problem(&ctx, e))?;
    let caller = crate::http::auth::caller_name(caller.as_ref());
    if crate::http::sse::wanted(&headers) {
        // A stream runs the decision's primary only: what was streamed
        // cannot be taken back for a fallback.
        let p = crate::services::ask::plan(&ctx, body)
            .await
            .map_err(ask_problem)?;
        return Ok(match p.call {
            Some(mut call) => {
                call.caller = caller;
                crate::http::sse::respond(ctx, call, Some(p.reply)).await
            }
            None => crate::http::sse::done_only(p.reply),
        });
    }
    crate::services::ask::ask(&ctx, body, caller)
        .await
        .map(|r| Json(r).into_response())
        .map_err(ask_problem)
}

fn ask_problem(e: crate::services::ask::AskError) -> Problem {
    use crate::services::ask::AskError;
    match e {
        AskError::BadRequest(m) => Problem::new(StatusCode::BAD_REQUEST, "bad-request", m),
        AskError::RouterBusy(m) => Problem::new(StatusCode::SERVICE_UNAVAILABLE, "busy", m),
        AskError::Exec(e) => problem::of_error(&e),
    }
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
        (status = 400, description = "Malformed request or workflow file", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The workflow service is restarting", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 504, description = "Still running after wait_ms", body = plexus_api::Problem, content_type = "application/problem+json"),
    )
)]
async fn start_workflow(
    State(ctx): State<Arc<NodeCtx>>,
    body: Result<Json<StartWorkflowBody>, JsonRejection>,
) -> Result<Response, Problem> {
    use crate::actors::workflows::WorkflowsMsg;
    let Json(body) = body.map_err(|e| body_problem(&ctx, e))?;
    let wf = plexus_workflow::Workflow::parse(&body.workflow).map_err(|e| {
        let e = match &body.file {
            Some(f) => e.in_file(f.clone()),
            None => e,
        };
        Problem::new(StatusCode::BAD_REQUEST, "bad-workflow", e.to_string())
    })?;
    let input = body.input.unwrap_or(serde_json::json!({}));
    let id = call_actor(&ctx.actors.workflows, WORKFLOWS, ACTOR_TIMEOUT, |reply| {
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
        .unwrap_or(crate::actors::workflows::MAX_WAIT)
        .min(crate::actors::workflows::MAX_WAIT);
    let ended = match ctx.actors.workflows.get() {
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
        (status = 503, description = "The workflow service is restarting", body = plexus_api::Problem, content_type = "application/problem+json"),
    )
)]
async fn list_workflows(
    State(ctx): State<Arc<NodeCtx>>,
) -> Result<Json<Vec<plexus_workflow::RunReport>>, Problem> {
    workflow_reports(&ctx).await.map(Json)
}

/// Every workflow run and saga of this node.
pub async fn workflow_reports(ctx: &NodeCtx) -> Result<Vec<plexus_workflow::RunReport>, Problem> {
    call_actor(
        &ctx.actors.workflows,
        WORKFLOWS,
        ACTOR_TIMEOUT,
        crate::actors::workflows::WorkflowsMsg::List,
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
        (status = 404, description = "No such run on this node", body = plexus_api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The workflow service is restarting", body = plexus_api::Problem, content_type = "application/problem+json"),
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
    let mut r = crate::http::openapi::spec_json().into_response();
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
    use crate::services::metrics::Scrape;
    use std::sync::atomic::Ordering::Relaxed;
    let o = Scrape::default();
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
        if kind == "gauge" {
            o.gauge(name, help, v as i64);
        } else {
            o.counter(name, help, v);
        }
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
        let family = o.counter_vec(name, help, &["class"]);
        for c in &classes {
            family.with_label_values(&[c.class.as_str()]).inc_by(pick(c));
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
        let family = o.gauge_vec(
            "plexus_workflow_runs",
            "Workflow runs and sagas this node knows, by kind and outcome (running, completed, failed, compensated, stuck).",
            &["kind", "status"],
        );
        for ((kind, status), n) in by {
            family.with_label_values(&[&kind, &status]).set(n as i64);
        }
    }
    if let (Ok(view), Ok(ann)) = (view(&ctx).await, announces(&ctx).await) {
        let members = o.gauge_vec(
            "plexus_members",
            "Cluster members by status, as this node sees them.",
            &["status"],
        );
        for st in [
            MemberStatus::Up,
            MemberStatus::Unreachable,
            MemberStatus::Down,
        ] {
            let n = view.iter().filter(|m| m.status == st).count();
            members.with_label_values(&[&st.to_string()]).set(n as i64);
        }
        let rows = plugin_rows(&ann, &view);
        let available = o.gauge_vec(
            "plexus_plugin_available",
            "1 when the plugin serves on that node.",
            &["plugin", "node"],
        );
        let open = o.gauge_vec(
            "plexus_plugin_breaker_open",
            "1 when the plugin's circuit breaker refuses calls (open or forced open).",
            &["plugin", "node", "state"],
        );
        let restarts = o.gauge_vec(
            "plexus_plugin_restarts",
            "Restarts of the plugin's host actor.",
            &["plugin", "node"],
        );
        for r in &rows {
            available
                .with_label_values(&[&r.name, &r.node])
                .set(i64::from(r.status == "available"));
            open.with_label_values(&[&r.name, &r.node, &r.breaker])
                .set(i64::from(breaker_open(&r.breaker)));
            restarts
                .with_label_values(&[&r.name, &r.node])
                .set(i64::from(r.restarts));
        }
    }
    for (name, help, v) in [
        (
            "plexus_node_ready",
            "1 when /v1/ready answers 200 (joined, plugins running, not draining).",
            i64::from(crate::services::lifecycle::check(&ctx).is_ok()),
        ),
        (
            "plexus_node_draining",
            "1 while the node drains after SIGTERM (no new work, finishing what is in flight).",
            i64::from(ctx.lifecycle.is_draining()),
        ),
        (
            "plexus_node_in_flight",
            "Work in flight on this node: API requests that start work and plugin calls it runs.",
            i64::try_from(ctx.lifecycle.in_flight()).unwrap_or(i64::MAX),
        ),
    ] {
        o.gauge(name, help, v);
    }
    let mut r = ctx.metrics.render(&o).into_response();
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}
