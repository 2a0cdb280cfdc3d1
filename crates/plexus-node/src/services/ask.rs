//! Routing in the cluster: `route` decides with the live registry, `ask`
//! decides and runs the decision through the exec pipeline with the
//! decision's fallbacks, then the primary's declared ones, all under the
//! ask's one deadline.

use std::collections::BTreeMap;
use std::time::Duration;

use plexus_api::{AskBody, AskReply, Attempt, RouteBody};
use plexus_exec::{ExecCall, ExecError, RawJson, Target};
use plexus_router::{RouteRequest, RoutingDecision};

use crate::actors::router::RouterMsg;
use crate::ctx::NodeCtx;
use crate::services::exec::{self, CallSpec};

/// Why an ask or a route did not get as far as running anything.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("{0}")]
    BadRequest(String),
    /// The router is restarting or did not answer.
    #[error("{0}")]
    RouterBusy(String),
    /// The decision's target failed in a way no fallback can mend (bad input).
    #[error("{0}")]
    Exec(ExecError),
}

/// Which catalog plugins can take work right now, from the registry and
/// membership view.
pub fn availability(ctx: &NodeCtx) -> Vec<(String, bool)> {
    let dir = ctx.directory.load();
    let mut up: BTreeMap<String, bool> = ctx
        .catalog
        .plugins
        .iter()
        .map(|p| (p.name.clone(), false))
        .collect();
    for r in &dir.rows {
        // An open breaker takes the plugin out of routing until it half-opens.
        if r.status == "available" && !plexus_api::breaker_open(&r.breaker) {
            up.insert(r.name.clone(), true);
        }
    }
    up.into_iter().collect()
}

fn request_of(
    text: &str,
    budget: Option<f64>,
    max_min: Option<f64>,
) -> Result<RouteRequest, AskError> {
    if text.trim().is_empty() {
        return Err(AskError::BadRequest("request text is empty".into()));
    }
    for (name, v) in [("budget_usd", budget), ("max_duration_min", max_min)] {
        if v.is_some_and(|v| !v.is_finite() || v <= 0.0) {
            return Err(AskError::BadRequest(format!(
                "{name} must be a positive number"
            )));
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
pub async fn route(ctx: &NodeCtx, body: &RouteBody) -> Result<RoutingDecision, AskError> {
    let req = request_of(&body.request, body.budget_usd, body.max_duration_min)?;
    decide(ctx, req).await
}

async fn decide(ctx: &NodeCtx, req: RouteRequest) -> Result<RoutingDecision, AskError> {
    let available = availability(ctx);
    let router = ctx
        .actors
        .router
        .get()
        .ok_or_else(|| AskError::RouterBusy("the router is restarting".into()))?;
    let d = router
        .call(
            |reply| RouterMsg::Route {
                req,
                available,
                reply,
            },
            Some(Duration::from_secs(5)),
        )
        .await
        .ok()
        .and_then(|r| r.success_or(()).ok())
        .ok_or_else(|| AskError::RouterBusy("the router did not answer".into()))?;
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

/// An ask decided: the reply so far (the decision, and the plugins that
/// cannot be tried) and the call to run, if any.
pub struct Planned {
    pub reply: AskReply,
    /// The primary's agent with the fallbacks behind it; `None` when the
    /// router abstained or matched no agent.
    pub call: Option<ExecCall>,
    untried: Vec<String>,
}

/// Route, then run the primary with the fallbacks behind it, for `caller`
/// ([`ExecCall::caller`]).
pub async fn ask(
    ctx: &NodeCtx,
    body: AskBody,
    caller: Option<String>,
) -> Result<AskReply, AskError> {
    let Planned {
        mut reply,
        call,
        untried,
    } = plan(ctx, body).await?;
    let Some(mut call) = call else {
        return Ok(reply);
    };
    call.caller = caller;
    let r = exec::run(ctx, &call).await;
    let attempts = match &r {
        Ok(s) => &s.attempts,
        Err(f) => &f.attempts,
    };
    if let Some(router) = ctx.actors.router.get() {
        for a in attempts.iter().filter(|a| a.reached_plugin()) {
            let _ = router.cast(RouterMsg::Outcome {
                plugin: a.target.plugin.clone(),
                agent: a.target.command.clone(),
                success: a.error.is_none(),
                latency_ms: a.duration.as_millis() as u64,
            });
        }
    }
    reply.attempts = attempts
        .iter()
        .map(|a| Attempt {
            plugin: a.target.plugin.clone(),
            target: a.target.command.clone(),
            ok: a.error.is_none(),
            node: a.node.clone(),
            error: a.error.as_ref().map(|e| e.to_string()),
            duration_ms: a.duration.as_secs_f64() * 1000.0,
        })
        .collect();
    reply.attempts.extend(untried.into_iter().map(no_match));
    match r {
        Ok(s) => {
            reply.served_by = Some(s.served_by.to_string());
            reply.result = Some(exec::reply_of(s));
            Ok(reply)
        }
        // Bad input fails the same way everywhere.
        Err(f) if !f.error.may_pass_elsewhere() => Err(AskError::Exec(f.error)),
        Err(_) => Ok(reply),
    }
}

/// Decide an ask: the decision and the call that runs it (the primary's
/// agent, the fallbacks behind it, under the ask's one deadline).
pub async fn plan(ctx: &NodeCtx, body: AskBody) -> Result<Planned, AskError> {
    let req = request_of(&body.request, body.budget_usd, body.max_duration_min)?;
    let d = decide(ctx, req).await?;
    let mut reply = AskReply {
        decision: decision_json(&d),
        served_by: None,
        attempts: vec![],
        result: None,
    };
    let Some(primary) = d.primary_plugin.clone() else {
        return Ok(Planned {
            reply,
            call: None,
            untried: vec![],
        });
    };
    // The router's fallbacks, then the primary's declared ones (manifest
    // `errorHandling.fallback`), each once; a plugin none of whose agents
    // or commands matched cannot be tried.
    let declared: Vec<String> = ctx
        .catalog
        .plugin(&primary)
        .map(|p| p.manifest.error_handling.fallback.clone())
        .unwrap_or_default();
    let mut seen = vec![primary.clone()];
    let mut fallbacks = vec![];
    let mut untried = vec![];
    for f in d.fallbacks.iter().chain(declared.iter()) {
        if seen.contains(f) {
            continue;
        }
        seen.push(f.clone());
        let target = d
            .candidates
            .iter()
            .find(|c| &c.plugin == f)
            .and_then(|c| c.agent.clone());
        match target {
            Some(t) => fallbacks.push(Target::new(f.clone(), t)),
            None => untried.push(f.clone()),
        }
    }
    let Some(agent) = d.agent.clone() else {
        untried.insert(0, primary);
        reply.attempts = untried.into_iter().map(no_match).collect();
        return Ok(Planned {
            reply,
            call: None,
            untried: vec![],
        });
    };
    let input = agent_input(body.input.as_deref(), &body.request, body.budget_usd);
    let spec = CallSpec {
        timeout_ms: body.timeout_ms,
        model: Some(d.model),
        fallbacks,
        ..CallSpec::new(Target::new(primary, agent), input)
    };
    let call = exec::call(ctx, spec).map_err(AskError::Exec)?;
    Ok(Planned {
        reply,
        call: Some(call),
        untried,
    })
}

/// The input an ask hands to the chosen agent: the client's input with the
/// original request text (`$request`) and the budget (`$budget_usd`) for the
/// model runtime, unless the input sets them. An input that is not an
/// object (or absent) is passed as it is; absent becomes an object.
pub fn agent_input(
    input: Option<&serde_json::value::RawValue>,
    request: &str,
    budget_usd: Option<f64>,
) -> Option<RawJson> {
    let mut obj = match input {
        None => serde_json::Map::new(),
        Some(r) => match serde_json::from_str::<serde_json::Value>(r.get()) {
            Ok(serde_json::Value::Object(o)) => o,
            _ => return Some(RawJson::checked(r.get().to_string())),
        },
    };
    obj.entry("$request")
        .or_insert_with(|| serde_json::Value::String(request.to_string()));
    if let Some(b) = budget_usd {
        obj.entry("$budget_usd")
            .or_insert_with(|| serde_json::json!(b));
    }
    Some(RawJson::from_value(&serde_json::Value::Object(obj)))
}

fn no_match(plugin: String) -> Attempt {
    Attempt {
        plugin,
        target: String::new(),
        ok: false,
        node: None,
        error: Some("no agent or command of this plugin matched".into()),
        duration_ms: 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::agent_input;

    fn raw(s: &str) -> Box<serde_json::value::RawValue> {
        serde_json::value::RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn the_request_text_and_budget_reach_the_agent() {
        let v = |r: Option<plexus_exec::RawJson>| -> serde_json::Value {
            serde_json::from_str(r.unwrap().as_str()).unwrap()
        };
        assert_eq!(
            v(agent_input(None, "make an epic", Some(0.5))),
            serde_json::json!({"$request": "make an epic", "$budget_usd": 0.5})
        );
        assert_eq!(
            v(agent_input(
                Some(&raw(r#"{"key":"SSO"}"#)),
                "make an epic",
                None
            )),
            serde_json::json!({"key": "SSO", "$request": "make an epic"})
        );
        // The client's own keys win.
        assert_eq!(
            v(agent_input(
                Some(&raw(r#"{"$request":"mine"}"#)),
                "text",
                None
            )),
            serde_json::json!({"$request": "mine"})
        );
        assert_eq!(
            v(agent_input(Some(&raw("[1,2]")), "text", None)),
            serde_json::json!([1, 2])
        );
    }
}
