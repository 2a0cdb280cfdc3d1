//! The node's one exec service: `exec`, `ask`, workflow steps and the
//! simulation call [`run`]. It is plexus-exec's layers (retry, fallback,
//! cache/default) around [`ClusterExec`], the transport: one host decision
//! per try from the directory snapshot (up, available, breaker closed; this
//! node first), then a bus request to that host and its typed reply.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use plexus_bus::BusError;
use plexus_catalog::ModelTier;
use plexus_exec::host::{self, Choice, HostState, HostView};
use plexus_exec::{
    CacheDefault, Exec, ExecCall, ExecError, Failure, Fallback, HostFailure, HostPart, HostReply,
    Policies, RawJson, Retry, Served, ServedBy, Target,
};
use plexus_handler::ExecRequest;
use plexus_membership::MemberStatus;
use plexus_resilience::RetryPolicy;

use crate::actors::plugins::exec_envelope;
use crate::ctx::NodeCtx;

/// The layers around the transport, in the seed's order.
pub type Pipeline = CacheDefault<Fallback<Retry<ClusterExec>>>;

/// Build a node's pipeline (it holds the node weakly: no cycle).
pub fn pipeline(ctx: &Arc<NodeCtx>) -> Pipeline {
    let policies: Arc<dyn Policies> = Arc::new(NodePolicies {
        ctx: Arc::downgrade(ctx),
    });
    let transport = ClusterExec {
        ctx: Arc::downgrade(ctx),
        turn: AtomicUsize::new(0),
    };
    CacheDefault::new(
        Fallback::new(Retry::new(transport, policies.clone())),
        policies,
        ctx.name(),
        1024,
        Duration::from_secs(300),
    )
}

/// Run a call through the node's pipeline, and count it.
pub async fn run(ctx: &NodeCtx, call: &ExecCall) -> Result<Served, Failure> {
    let started = Instant::now();
    let r = ctx.exec().exec(call).await;
    let outcome = match &r {
        Ok(s) => s.served_by.class(),
        Err(f) => kind(&f.error),
    };
    // Only catalog plugins get a label: clients must not mint time series.
    if ctx.catalog.plugin(&call.target.plugin).is_some() {
        ctx.metrics
            .exec(&call.target.plugin, outcome, started.elapsed());
    }
    r
}

/// What a client asked for, checked: the call the pipeline runs.
pub struct CallSpec {
    pub target: Target,
    pub input: Option<RawJson>,
    pub timeout_ms: Option<u64>,
    pub priority: Option<u8>,
    pub idempotency_key: Option<String>,
    pub model: Option<ModelTier>,
    pub trace_id: Option<String>,
    pub fallbacks: Vec<Target>,
    /// See [`ExecCall::caller`].
    pub caller: Option<String>,
}

impl CallSpec {
    pub fn new(target: Target, input: Option<RawJson>) -> CallSpec {
        CallSpec {
            target,
            input,
            timeout_ms: None,
            priority: None,
            idempotency_key: None,
            model: None,
            trace_id: None,
            fallbacks: Vec::new(),
            caller: None,
        }
    }
}

/// Check a request against the node's limits and start its deadline.
pub fn call(ctx: &NodeCtx, spec: CallSpec) -> Result<ExecCall, ExecError> {
    let input = spec.input.unwrap_or_else(RawJson::empty_object);
    if input.len() > ctx.config.max_payload_bytes {
        return Err(ExecError::TooLarge {
            size: input.len(),
            limit: ctx.config.max_payload_bytes,
        });
    }
    let priority = spec.priority.unwrap_or(plexus_bus::DEFAULT_PRIORITY);
    if !(1..=10).contains(&priority) {
        return Err(ExecError::BadRequest(format!(
            "priority {priority} is outside 1..=10"
        )));
    }
    let budget = spec
        .timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(ctx.config.request_timeout);
    let target = Target::new(
        spec.target.plugin,
        spec.target.command.trim_start_matches('/'),
    );
    may_route(ctx, spec.caller.as_deref(), &target.plugin)?;
    Ok(ExecCall {
        target,
        input,
        idempotency_key: spec.idempotency_key,
        priority,
        model: spec.model,
        trace_id: spec.trace_id,
        caller: spec.caller,
        deadline: tokio::time::Instant::now() + budget,
        budget,
        fallbacks: spec.fallbacks,
    })
}

/// A plugin caller's call needs the plugins' `[routing]` permissions
/// (`canRouteTo` of the caller, `acceptsRoutingFrom` of the target, as far
/// as this node's catalog knows them; the host checks its own again).
fn may_route(ctx: &NodeCtx, caller: Option<&str>, to: &str) -> Result<(), ExecError> {
    let Some(from) = caller.and_then(|c| c.strip_prefix("plugin:")) else {
        return Ok(());
    };
    let Some(target) = ctx.catalog.plugin(to) else {
        return Ok(());
    };
    let checked = match ctx.catalog.plugin(from) {
        Some(p) => p.may_route_to(target),
        None => target.accepts_routing_from(from),
    };
    checked.map_err(|d| {
        tracing::warn!(target: "plexus::audit", caller = %from, plugin = %to, denied = %d, "call refused");
        ExecError::Forbidden {
            plugin: to.to_string(),
            why: d.to_string(),
        }
    })
}

/// The name of an error's kind: the problem type's last segment and the
/// `outcome` label of `plexus_exec_requests_total`.
pub fn kind(e: &ExecError) -> &'static str {
    use plexus_handler::HandlerError as H;
    match e {
        ExecError::BadRequest(_) => "bad-request",
        ExecError::TooLarge { .. } => "too-large",
        ExecError::UnknownPlugin { .. } => "unknown-plugin",
        ExecError::UnknownCommand { .. } => "unknown-command",
        ExecError::NotHosted { .. } => "not-hosted",
        ExecError::Unavailable { .. } => "plugin-unavailable",
        ExecError::BreakerOpen { .. } => "breaker-open",
        ExecError::NodeDown { .. } => "node-down",
        ExecError::Timeout { .. } => "timeout",
        ExecError::Crashed { .. } => "plugin-failed",
        ExecError::Plugin { error, .. } => match error {
            H::UnknownCommand { .. } => "unknown-command",
            H::BadInput(_) => "bad-input",
            H::Timeout(_) => "timeout",
            _ => "plugin-failed",
        },
        ExecError::BadReply { .. } => "bad-reply",
        ExecError::Busy(_) => "busy",
        ExecError::Forbidden { .. } => "forbidden",
    }
}

/// The plugin facts the layers need, from the catalog and the tools the
/// handlers discovered.
struct NodePolicies {
    ctx: Weak<NodeCtx>,
}

impl Policies for NodePolicies {
    fn idempotent(&self, plugin: &str, command: &str) -> bool {
        self.ctx
            .upgrade()
            .is_some_and(|c| c.command_idempotent(plugin, command))
    }

    fn retry_delay(&self, plugin: &str, retry: u32) -> Option<Duration> {
        let ctx = self.ctx.upgrade()?;
        let policy = ctx
            .catalog
            .plugin(plugin)
            .map_or_else(RetryPolicy::none, |p| {
                RetryPolicy::from_spec(&p.manifest.error_handling.retry_policy)
            });
        let mut rng = ctx.rng.lock();
        policy.delay_for(retry, &mut *rng)
    }

    fn default_result(&self, plugin: &str) -> Option<RawJson> {
        let ctx = self.ctx.upgrade()?;
        let d = ctx
            .catalog
            .plugin(plugin)?
            .manifest
            .error_handling
            .default_result
            .as_ref()?;
        serde_json::to_value(d)
            .ok()
            .map(|v| RawJson::from_value(&v))
    }
}

/// The transport: one try of a call on one host.
pub struct ClusterExec {
    ctx: Weak<NodeCtx>,
    /// Spreads tries over the usable remote hosts.
    turn: AtomicUsize,
}

impl Exec for ClusterExec {
    fn exec<'a>(&'a self, call: &'a ExecCall) -> BoxFuture<'a, Result<Served, Failure>> {
        Box::pin(async move {
            let ctx = self
                .ctx
                .upgrade()
                .ok_or_else(|| ExecError::Busy("the node is stopping".into()))?;
            self.try_once(&ctx, call).await.map_err(Failure::from)
        })
    }
}

impl ClusterExec {
    async fn try_once(&self, ctx: &NodeCtx, call: &ExecCall) -> Result<Served, ExecError> {
        let t = &call.target;
        let hosts = hosts(ctx, t)?;
        let mut refused: Vec<String> = Vec::new();
        let mut retry_after_ms = None;
        loop {
            let turn = self.turn.fetch_add(1, Ordering::Relaxed);
            let node = match host::choose(&hosts, ctx.name(), &refused, turn) {
                Choice::Host(n) => n,
                Choice::BreakerOpen(nodes) => {
                    return Err(ExecError::BreakerOpen {
                        plugin: t.plugin.clone(),
                        nodes,
                        retry_after_ms,
                    })
                }
                Choice::Unavailable(why) => {
                    return Err(ExecError::Unavailable {
                        plugin: t.plugin.clone(),
                        why: why.join("; "),
                    })
                }
            };
            let reply = self.send(ctx, call, &node).await?;
            match settle(t, reply) {
                Settled::Served(s) => return Ok(s),
                // Its breaker opened after the directory last heard:
                // another host may take this try.
                Settled::Refused { node, after } => {
                    retry_after_ms = after;
                    refused.push(node);
                }
                Settled::Failed(e) => return Err(e),
            }
        }
    }

    async fn send(
        &self,
        ctx: &NodeCtx,
        call: &ExecCall,
        node: &str,
    ) -> Result<HostReply, ExecError> {
        let t = &call.target;
        let req = ExecRequest {
            plugin: t.plugin.clone(),
            command: t.command.clone(),
            input: call.input.as_str().to_string(),
            idempotency_key: call.idempotency_key.clone(),
            trace_id: call.trace_id.clone(),
            model: call.model,
            caller: call.caller.clone(),
        };
        let env = exec_envelope(&format!("api@{}", ctx.name()), req, call.priority)
            .map_err(|e| ExecError::BadRequest(format!("cannot encode the request: {e}")))?;
        let resp = ctx
            .bus
            .request_to(env, call.left(), node)
            .await
            .map_err(|e| bus_error(call, node, e))?;
        let reply =
            plexus_codec::decode::<HostReply>(&resp.payload).map_err(|e| ExecError::BadReply {
                node: resp.source_node.to_string(),
                message: e.to_string(),
            })?;
        tracing::debug!(plugin = %t.plugin, node = %reply.node, ok = reply.outcome.is_ok(), "exec done");
        Ok(reply)
    }
}

/// A bus failure of a try on `node`, as the call's error.
fn bus_error(call: &ExecCall, node: &str, e: BusError) -> ExecError {
    let t = &call.target;
    match e {
        BusError::NoRoute { .. } => ExecError::Unavailable {
            plugin: t.plugin.clone(),
            why: format!("no reachable node serves it right now ({node} has no route)"),
        },
        BusError::Timeout { .. } => ExecError::Timeout {
            plugin: t.plugin.clone(),
            budget_ms: call.budget.as_millis() as u64,
        },
        BusError::PeerDown { node, .. } => ExecError::NodeDown {
            plugin: t.plugin.clone(),
            node,
        },
        other => ExecError::BadRequest(other.to_string()),
    }
}

/// What a host's reply means for the try.
enum Settled {
    Served(Served),
    /// The host's breaker refused: another host may take the try.
    Refused {
        node: String,
        after: Option<u64>,
    },
    Failed(ExecError),
}

fn settle(t: &Target, reply: HostReply) -> Settled {
    let node = reply.node;
    match reply.outcome {
        Ok(output) => Settled::Served(Served {
            target: t.clone(),
            node,
            duration_ms: reply.duration_ms,
            output,
            served_by: ServedBy::Primary,
            retries: 0,
            attempts: Vec::new(),
        }),
        Err(HostFailure::BreakerOpen { retry_after_ms, .. }) => Settled::Refused {
            node,
            after: retry_after_ms,
        },
        Err(HostFailure::Crashed) => Settled::Failed(ExecError::Crashed {
            plugin: t.plugin.clone(),
            node,
        }),
        Err(HostFailure::Handler(error)) => Settled::Failed(ExecError::Plugin {
            plugin: t.plugin.clone(),
            node,
            error,
            duration_ms: reply.duration_ms,
        }),
        Err(HostFailure::Malformed(message)) => {
            Settled::Failed(ExecError::BadReply { node, message })
        }
        Err(HostFailure::Forbidden(why)) => Settled::Failed(ExecError::Forbidden {
            plugin: t.plugin.clone(),
            why,
        }),
    }
}

// ------------------------------------------------------------- streaming

/// Parts in flight between a streamed request's host and this node: the
/// host runs at most this far ahead of the reader.
pub const STREAM_WINDOW: u32 = 32;

/// Spreads streamed requests over the usable remote hosts.
static STREAM_TURN: AtomicUsize = AtomicUsize::new(0);

/// What a streamed call yields, in order: `Started`, progress, then one
/// `Done` (or an error).
#[derive(Debug)]
pub enum Step {
    /// A host took the request and runs it.
    Started { node: String },
    /// What the command produced on the way (a model's text).
    Progress(plexus_handler::Progress),
    /// The answer, as a plain exec gets it.
    Done(Box<Served>),
}

/// A streamed call in progress. Dropping it cancels the call on its host.
pub struct ExecStream {
    target: Target,
    node: String,
    rx: plexus_bus::StreamReceiver,
    first: Option<HostPart>,
    deadline: tokio::time::Instant,
    budget: Duration,
    started: Instant,
    done: bool,
}

/// Start a streamed call: one try on one host (the first usable one in the
/// same order as a plain exec; a host whose breaker refuses passes it on).
/// No retry, fallback or cache: what was streamed cannot be taken back.
pub async fn stream(ctx: &NodeCtx, call: &ExecCall) -> Result<ExecStream, ExecError> {
    let t = &call.target;
    let hosts = hosts(ctx, t)?;
    let mut refused: Vec<String> = Vec::new();
    let mut retry_after_ms = None;
    loop {
        let turn = STREAM_TURN.fetch_add(1, Ordering::Relaxed);
        let node = match host::choose(&hosts, ctx.name(), &refused, turn) {
            Choice::Host(n) => n,
            Choice::BreakerOpen(nodes) => {
                return Err(ExecError::BreakerOpen {
                    plugin: t.plugin.clone(),
                    nodes,
                    retry_after_ms,
                })
            }
            Choice::Unavailable(why) => {
                return Err(ExecError::Unavailable {
                    plugin: t.plugin.clone(),
                    why: why.join("; "),
                })
            }
        };
        let req = ExecRequest {
            plugin: t.plugin.clone(),
            command: t.command.clone(),
            input: call.input.as_str().to_string(),
            idempotency_key: call.idempotency_key.clone(),
            trace_id: call.trace_id.clone(),
            model: call.model,
            caller: call.caller.clone(),
        };
        let env = exec_envelope(&format!("api@{}", ctx.name()), req, call.priority)
            .map_err(|e| ExecError::BadRequest(format!("cannot encode the request: {e}")))?;
        let rx = ctx
            .bus
            .request_stream(env, call.left(), &node, STREAM_WINDOW)
            .map_err(|e| bus_error(call, &node, e))?;
        let mut s = ExecStream {
            target: t.clone(),
            node,
            rx,
            first: None,
            deadline: call.deadline,
            budget: call.budget,
            started: Instant::now(),
            done: false,
        };
        match s.part().await? {
            HostPart::Reply(r) if matches!(r.outcome, Err(HostFailure::BreakerOpen { .. })) => {
                if let Settled::Refused { node, after } = settle(t, r) {
                    retry_after_ms = after;
                    refused.push(node);
                }
            }
            p => {
                s.first = Some(p);
                return Ok(s);
            }
        }
    }
}

impl ExecStream {
    /// What runs.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The next step; after `Done` or an error, `Ok(None)`.
    pub async fn next(&mut self, ctx: &NodeCtx) -> Result<Option<Step>, ExecError> {
        if self.done {
            return Ok(None);
        }
        let part = match self.first.take() {
            Some(p) => p,
            None => match self.part().await {
                Ok(p) => p,
                Err(e) => return Err(self.end(ctx, e)),
            },
        };
        Ok(Some(match part {
            HostPart::Started { node } => Step::Started { node },
            HostPart::Progress(p) => Step::Progress(p),
            HostPart::Reply(r) => {
                let e = match settle(&self.target, r) {
                    Settled::Served(s) => {
                        self.done = true;
                        count(ctx, &self.target, s.served_by.class(), self.started);
                        return Ok(Some(Step::Done(Box::new(s))));
                    }
                    Settled::Refused { node, after } => ExecError::BreakerOpen {
                        plugin: self.target.plugin.clone(),
                        nodes: vec![node],
                        retry_after_ms: after,
                    },
                    Settled::Failed(e) => e,
                };
                return Err(self.end(ctx, e));
            }
        }))
    }

    fn end(&mut self, ctx: &NodeCtx, e: ExecError) -> ExecError {
        self.done = true;
        count(ctx, &self.target, kind(&e), self.started);
        e
    }

    /// The next part from the host, within the call's deadline.
    async fn part(&mut self) -> Result<HostPart, ExecError> {
        let t = &self.target;
        let bytes = match tokio::time::timeout_at(self.deadline, self.rx.recv()).await {
            Ok(Some(b)) => b,
            Ok(None) => {
                // The stream ended without an answer: its node went down
                // while it ran (the bus ends a down peer's streams).
                return Err(if self.rx.remote().is_some() {
                    ExecError::NodeDown {
                        plugin: t.plugin.clone(),
                        node: self.node.clone(),
                    }
                } else {
                    ExecError::BadReply {
                        node: self.node.clone(),
                        message: "the stream ended without an answer".into(),
                    }
                });
            }
            Err(_) => {
                return Err(ExecError::Timeout {
                    plugin: t.plugin.clone(),
                    budget_ms: self.budget.as_millis() as u64,
                })
            }
        };
        plexus_codec::decode::<HostPart>(&bytes).map_err(|e| ExecError::BadReply {
            node: self.node.clone(),
            message: e.to_string(),
        })
    }
}

/// Count a finished streamed call as `run` counts a plain one.
fn count(ctx: &NodeCtx, t: &Target, outcome: &str, started: Instant) {
    if ctx.catalog.plugin(&t.plugin).is_some() {
        ctx.metrics.exec(&t.plugin, outcome, started.elapsed());
    }
}

/// The hosts of `target.plugin` as the directory sees them, after checking
/// that the plugin and its command exist.
fn hosts(ctx: &NodeCtx, target: &Target) -> Result<Vec<HostView>, ExecError> {
    let dir = ctx.directory.load();
    let plugin = target.plugin.as_str();
    let announces: Vec<_> = dir.hosts_of(plugin).collect();
    if announces.is_empty() {
        if ctx.catalog.plugin(plugin).is_some() {
            return Err(ExecError::NotHosted {
                plugin: plugin.into(),
            });
        }
        let mut hosted: Vec<String> = dir
            .announces
            .iter()
            .flat_map(|a| a.plugins.iter().map(|p| p.name.clone()))
            .collect();
        hosted.sort();
        hosted.dedup();
        return Err(ExecError::UnknownPlugin {
            plugin: plugin.into(),
            hosted,
        });
    }
    let cmd = target.command.as_str();
    let has_cmd = announces.iter().any(|a| {
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
        let known = announces[0]
            .plugins
            .iter()
            .filter(|p| p.name == plugin)
            .flat_map(|p| p.commands.clone())
            .collect();
        return Err(ExecError::UnknownCommand {
            plugin: plugin.into(),
            command: target.command.clone(),
            known,
        });
    }
    Ok(dir
        .plugin_rows(plugin)
        .map(|r| HostView {
            node: r.node.clone(),
            state: match (r.status.as_str(), plexus_api::breaker_open(&r.breaker)) {
                ("available", false) => HostState::Usable,
                ("available", true) => HostState::BreakerOpen,
                _ => HostState::Unavailable(match r.node_status {
                    MemberStatus::Up => format!("on {} it is {}", r.node, r.status),
                    s => format!("its node {} is {s}", r.node),
                }),
            },
        })
        .collect())
}

/// The API's answer for a served call.
pub fn reply_of(s: Served) -> plexus_api::ExecReply {
    let out = s.output;
    plexus_api::ExecReply {
        ok: true,
        plugin: s.target.plugin,
        command: s.target.command,
        node: s.node,
        output: Some(raw(out.output)),
        error: None,
        duration_ms: s.duration_ms,
        model: out.llm.as_ref().map(|l| l.model.clone()).or(out.model),
        usage: out.llm.map(|l| l.usage),
        cost_usd: Some(out.cost_usd),
        work_minutes: Some(out.work_minutes),
        served_by: Some(s.served_by.to_string()),
        retries: s.retries,
    }
}

/// The output's text as a raw JSON value for the response body.
fn raw(text: plexus_exec::RawJson) -> Box<serde_json::value::RawValue> {
    serde_json::value::RawValue::from_string(text.into_string())
        .unwrap_or_else(|e| plexus_api::raw(&serde_json::Value::String(e.to_string())))
}
