//! Routing in the cluster: `POST /v1/route` decides with the live registry,
//! `POST /v1/ask` decides and executes, trying the decision's fallbacks in
//! order when the primary is unavailable, fails or times out.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use plexus_router::{RouteRequest, RoutingDecision};
use serde::{Deserialize, Serialize};

use crate::api::{call_local, ExecBody, Problem};
use crate::ctx::{local_actor, NodeCtx};
use crate::plugins::ExecReply;
use crate::router_actor::RouterMsg;

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
    pub input: Option<serde_json::Value>,
    #[serde(default)]
    pub budget_usd: Option<f64>,
    #[serde(default)]
    pub max_duration_min: Option<f64>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// One try of an ask.
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
    /// `primary`, `fallback:PLUGIN`, or null when nothing ran.
    pub served_by: Option<String>,
    pub attempts: Vec<Attempt>,
    pub result: Option<ExecReply>,
}

/// Which catalog plugins can take work right now, from the registry and
/// membership view.
pub async fn availability(ctx: &NodeCtx) -> Result<Vec<(String, bool)>, Problem> {
    let dir = ctx.directory.load();
    let mut up: BTreeMap<String, bool> = ctx
        .catalog
        .plugins
        .iter()
        .map(|p| (p.name.clone(), false))
        .collect();
    for r in &dir.rows {
        // An open breaker takes the plugin out of routing until it half-opens.
        if r.status == "available" && !crate::api::breaker_open(&r.breaker) {
            up.insert(r.name.clone(), true);
        }
    }
    Ok(up.into_iter().collect())
}

fn request_of(
    text: &str,
    budget: Option<f64>,
    max_min: Option<f64>,
) -> Result<RouteRequest, Problem> {
    if text.trim().is_empty() {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "request text is empty",
        ));
    }
    for (name, v) in [("budget_usd", budget), ("max_duration_min", max_min)] {
        if v.is_some_and(|v| !v.is_finite() || v <= 0.0) {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "bad-request",
                format!("{name} must be a positive number"),
            ));
        }
    }
    let mut r = RouteRequest::new(text);
    if let Some(b) = budget {
        r = r.with_budget(b);
    }
    if let Some(m) = max_min {
        r = r.with_max_duration(m);
    }
    Ok(r)
}

/// Decide with the live availability of every plugin.
pub async fn route(ctx: &NodeCtx, body: &RouteBody) -> Result<RoutingDecision, Problem> {
    let req = request_of(&body.request, body.budget_usd, body.max_duration_min)?;
    decide(ctx, req).await
}

async fn decide(ctx: &NodeCtx, req: RouteRequest) -> Result<RoutingDecision, Problem> {
    let available = availability(ctx).await?;
    let d = call_local(
        ctx,
        "router",
        "the router",
        Duration::from_secs(5),
        |reply| RouterMsg::Route {
            req,
            available,
            reply,
        },
    )
    .await?;
    ctx.metrics.route(d.primary_plugin.is_none(), d.confidence);
    ctx.metrics.record_decision(&d);
    Ok(d)
}

/// The decision as the API shows it.
pub fn decision_json(d: &RoutingDecision) -> serde_json::Value {
    let mut v = d.to_batch_json();
    if let Some(o) = v.as_object_mut() {
        o.insert("explanation".into(), serde_json::json!(d.explanation));
        o.insert("candidates".into(), serde_json::json!(d.candidates));
        o.insert("plan".into(), serde_json::json!(d.plan));
    }
    v
}

/// Route, then run on the primary, then on each fallback in order.
pub async fn ask(ctx: &NodeCtx, body: AskBody) -> Result<AskReply, Problem> {
    let req = request_of(&body.request, body.budget_usd, body.max_duration_min)?;
    let d = decide(ctx, req).await?;
    let mut reply = AskReply {
        decision: decision_json(&d),
        served_by: None,
        attempts: vec![],
        result: None,
    };
    let Some(primary) = d.primary_plugin.clone() else {
        return Ok(reply);
    };
    let mut order: Vec<(String, Option<String>, String)> =
        vec![(primary, d.agent.clone(), "primary".into())];
    // The router's fallbacks, then the primary's declared ones (manifest
    // `errorHandling.fallback`), each once.
    let declared: Vec<String> = ctx
        .catalog
        .plugin(&order[0].0)
        .map(|p| p.manifest.error_handling.fallback.clone())
        .unwrap_or_default();
    for f in d.fallbacks.iter().chain(declared.iter()) {
        if order.iter().any(|(p, _, _)| p == f) {
            continue;
        }
        let target = d
            .candidates
            .iter()
            .find(|c| &c.plugin == f)
            .and_then(|c| c.agent.clone());
        order.push((f.clone(), target, format!("fallback:{f}")));
    }
    let router = local_actor::<RouterMsg>(ctx.name(), "router");
    for (plugin, target, path) in order {
        let Some(target) = target else {
            reply.attempts.push(Attempt {
                plugin,
                target: String::new(),
                ok: false,
                node: None,
                error: Some("no agent or command of this plugin matched".into()),
                duration_ms: 0.0,
            });
            continue;
        };
        let started = Instant::now();
        let r = crate::api::exec_command(
            ctx,
            ExecBody {
                plugin: plugin.clone(),
                command: target.clone(),
                input: body.input.clone(),
                timeout_ms: body.timeout_ms,
                priority: None,
                idempotency_key: None,
                model: Some(d.model),
            },
        )
        .await;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let ran = match &r {
            Ok(_) => true,
            Err(p) => p.reply.is_some() || p.status == 504,
        };
        if let (Some(router), true) = (&router, ran) {
            let _ = router.cast(RouterMsg::Outcome {
                plugin: plugin.clone(),
                agent: target.clone(),
                success: r.is_ok(),
                latency_ms: ms as u64,
            });
        }
        match r {
            Ok(res) => {
                reply.attempts.push(Attempt {
                    plugin,
                    target,
                    ok: true,
                    node: Some(res.node.clone()),
                    error: None,
                    duration_ms: ms,
                });
                reply.served_by = Some(path);
                reply.result = Some(res);
                return Ok(reply);
            }
            Err(p) => {
                let retry_elsewhere = p.is_unavailable();
                reply.attempts.push(Attempt {
                    plugin,
                    target,
                    ok: false,
                    node: p.reply.as_ref().map(|r| r.node.clone()),
                    error: Some(p.detail.clone()),
                    duration_ms: ms,
                });
                if !retry_elsewhere {
                    // Bad input fails the same way everywhere.
                    return Err(Problem { reply: None, ..p });
                }
            }
        }
    }
    Ok(reply)
}
