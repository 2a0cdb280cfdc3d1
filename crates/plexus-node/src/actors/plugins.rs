//! Plugin hosting: the PluginSupervisor and one PluginHost actor per plugin.
//!
//! A PluginHost subscribes to `plugin/{name}/request` on the bus; a pump task
//! takes requests from its priority mailbox (so urgent requests overtake a
//! backlog), bounded by the plugin's `maxConcurrency`, and hands each to the
//! actor, which runs the command through the plugin's handler. A host that
//! panics is restarted by the PluginSupervisor within the plugin's restart
//! intensity (OTP style); past it the plugin is marked failed and the failure
//! escalates to the NodeSupervisor.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use plexus_bus::{Envelope, MessageKind, PublishPolicy, StreamSender};
use plexus_catalog::{HandlerSpec, Plugin};
use plexus_handler::{
    CommandHandler, ExecOutput, ExecRequest, HandlerError, SimFaults, SimHandler,
};
use plexus_process::{PluginPublish, ProcessHandler, PublishSink};
use plexus_resilience::restart::{Decision, RestartIntensity};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use ractor_cluster::RactorMessage;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use crate::actors::breaker::{BreakerActor, BreakerArgs, BreakerMsg, CallResult, Refused};
use crate::actors::registry::RegistryMsg;
use crate::actors::supervisor::NodeSupervisorMsg;
use crate::ctx::{actor_name, NodeCtx};
use crate::net::wire::PluginStatus;
use crate::services::effects::EffectLog;
use plexus_exec::{HostFailure, HostPart, HostReply, Output, RawJson};

/// The request topic of a plugin.
pub fn request_topic(plugin: &str) -> String {
    format!("plugin/{plugin}/request")
}

/// The host's answer to one request, as it crosses the wire.
fn host_reply(node: &str, started: Instant, r: Result<ExecOutput, HandlerError>) -> HostReply {
    HostReply {
        node: node.to_string(),
        duration_ms: crate::net::links::since(started).as_secs_f64() * 1000.0,
        outcome: r
            .map(|o| Output {
                output: RawJson::from_output(o.output),
                model: o.model.map(|m| m.to_string()),
                cost_usd: o.cost_usd,
                work_minutes: o.work_minutes,
                llm: o.llm,
            })
            .map_err(HostFailure::Handler),
    }
}

/// A refusal or failure before the handler ran.
fn host_failure(node: &str, f: HostFailure) -> HostReply {
    HostReply {
        node: node.to_string(),
        duration_ms: 0.0,
        outcome: Err(f),
    }
}

/// Build the handler a plugin's manifest asks for.
/// With a model configured (or `kind = "llm"`), the plugin's agents and
/// commands go to the model beside it (see [`crate::services::agents`]).
pub fn make_handler(ctx: &Arc<NodeCtx>, plugin: &Arc<Plugin>) -> Arc<dyn CommandHandler> {
    let own: Option<Arc<dyn CommandHandler>> = match &plugin.manifest.handler {
        HandlerSpec::Sim(spec) => Some(Arc::new(SimHandler::new(plugin.clone(), spec.clone()))),
        HandlerSpec::Process(spec) => {
            let mut spec = (**spec).clone();
            spec.env.extend(plugin_credential(ctx, plugin));
            Some(Arc::new(ProcessHandler::new(
                plugin.clone(),
                spec,
                Some(publish_sink(ctx, plugin)),
            )))
        }
        HandlerSpec::Mcp(spec) => {
            let mut spec = spec.clone();
            let cred = plugin_credential(ctx, plugin);
            spec.env.extend(cred.clone());
            for s in &mut spec.servers {
                s.env.extend(cred.clone());
            }
            Some(Arc::new(plexus_mcp::McpHandler::start(plugin, &spec)))
        }
        HandlerSpec::Llm => None,
    };
    match (own, &ctx.llm) {
        (Some(own), None) if matches!(plugin.manifest.handler, HandlerSpec::Sim(_)) => own,
        (own, rt) => Arc::new(crate::services::agents::AgentsHandler::new(
            plugin.clone(),
            own,
            rt.as_deref(),
            Arc::new(crate::services::tools::ClusterHost::for_node(ctx)),
        )),
    }
}

/// The credential of a hosted plugin's own processes: `PLEXUS_API` (this
/// node's API) and `PLEXUS_TOKEN`, a fresh token that acts as
/// `plugin:NAME` on this node only, replaced at each start. With it a
/// process or MCP server reads and writes state, and calls other plugins,
/// as itself (and only as itself).
fn plugin_credential(ctx: &NodeCtx, plugin: &Plugin) -> [(String, String); 2] {
    use rand::RngCore;
    let mut bytes = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut bytes);
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    ctx.auth.register_local(
        &token,
        plexus_auth::Caller {
            principal: plexus_auth::Principal::Plugin(plugin.name.clone()),
            credential: hosted_credential(&plugin.name),
        },
    );
    [
        (
            "PLEXUS_API".into(),
            // `unix:PATH` on a node with sockets (reachable from a sandbox
            // without network), else the TCP address.
            ctx.config
                .plugin_api
                .clone()
                .unwrap_or_else(|| format!("http://{}", ctx.config.api_addr())),
        ),
        ("PLEXUS_TOKEN".into(), token),
    ]
}

/// The credential name of a hosted plugin's token (audit lines show it).
pub fn hosted_credential(plugin: &str) -> String {
    format!("hosted:{plugin}")
}

/// How a plugin's own process publishes: through the bus's source check,
/// as the plugin and on the topics its manifest declares.
fn publish_sink(ctx: &NodeCtx, plugin: &Plugin) -> PublishSink {
    let (policy, bad) = PublishPolicy::new(&plugin.name, &plugin.manifest.communication.topics);
    for (pattern, e) in bad {
        tracing::warn!(plugin = %plugin.name, %pattern, error = %e, "communication.topics entry is not a valid pattern; ignored");
    }
    let bus = ctx.bus.clone();
    Arc::new(move |_plugin: &str, p: PluginPublish| {
        let source = p.source.unwrap_or_else(|| policy.plugin().to_string());
        let env = Envelope::new(
            MessageKind::Event,
            p.topic,
            source,
            p.payload.to_string().into_bytes(),
        );
        if let Err(e) = bus.publish_as(&policy, env) {
            tracing::debug!(plugin = %policy.plugin(), error = %e, "plugin publish not delivered");
        }
    })
}

// ---------------------------------------------------------------- PluginHost

#[derive(RactorMessage)]
pub enum PluginHostMsg {
    /// Run one request; the reply says it was taken (not that it finished).
    Exec(
        Box<Envelope>,
        OwnedSemaphorePermit,
        BreakerPermit,
        RpcReplyPort<()>,
    ),
}

pub struct PluginHostArgs {
    pub ctx: Arc<NodeCtx>,
    pub plugin: Arc<Plugin>,
    pub handler: Arc<dyn CommandHandler>,
    pub effects: Option<Arc<EffectLog>>,
}

pub struct PluginHostState {
    ctx: Arc<NodeCtx>,
    plugin: Arc<Plugin>,
    handler: Arc<dyn CommandHandler>,
    effects: Option<Arc<EffectLog>>,
    pump: tokio::task::JoinHandle<()>,
    /// Waits for the handler's process to stop.
    watch: tokio::task::JoinHandle<()>,
}

pub struct PluginHost;

impl Actor for PluginHost {
    type Msg = PluginHostMsg;
    type State = PluginHostState;
    type Arguments = PluginHostArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        a: PluginHostArgs,
    ) -> Result<PluginHostState, ActorProcessingErr> {
        // A handler that keeps a process (a server) starts it with the host;
        // a failure here counts against the plugin's restart intensity.
        a.handler
            .start()
            .await
            .map_err(|e| format!("handler of {} did not start: {e}", a.plugin.name))?;
        let watch = {
            let stopped = a.handler.stopped();
            let me = myself.clone();
            let plugin = a.plugin.name.clone();
            tokio::spawn(async move {
                let reason = stopped.await;
                tracing::warn!(plugin = %plugin, %reason, "the plugin's process stopped; stopping its host so the supervisor restarts it");
                me.stop(Some(format!("process stopped: {reason}")));
            })
        };
        let sub = a
            .ctx
            .bus
            .subscribe(&request_topic(&a.plugin.name), &a.plugin.name)?;
        let permits = Arc::new(Semaphore::new(
            a.plugin.manifest.placement.max_concurrency as usize,
        ));
        let ctx = a.ctx.clone();
        let plugin_name = a.plugin.name.clone();
        let pump = tokio::spawn(async move {
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let Some(env) = sub.recv().await else { break };
                let trace_id = env.headers.trace_id.clone().unwrap_or_default();
                tracing::debug!(plugin = %plugin_name, %trace_id, from = %env.source_node, "request taken from the mailbox");
                // The plugin's circuit breaker decides before anything runs;
                // no permit, no call.
                let bp = match BreakerPermit::acquire(&ctx, &plugin_name).await {
                    Ok(bp) => bp,
                    Err(no) => {
                        tracing::debug!(plugin = %plugin_name, %trace_id, reason = %no.message(&plugin_name, ctx.name()), "no breaker permit");
                        let reply = host_failure(
                            ctx.name(),
                            HostFailure::BreakerOpen {
                                state: no.state(),
                                retry_after_ms: no.retry_after_ms(),
                            },
                        );
                        respond(&ctx, &env, reply);
                        continue;
                    }
                };
                let keep = env.clone();
                let crash_permit = bp.id;
                let taken = myself
                    .call(
                        |reply| PluginHostMsg::Exec(Box::new(env), permit, bp, reply),
                        None,
                    )
                    .await;
                if !matches!(taken, Ok(ractor::rpc::CallResult::Success(()))) {
                    BreakerPermit { id: crash_permit }.report(
                        &ctx,
                        &plugin_name,
                        CallResult::Failure,
                        Duration::ZERO,
                    );
                    // The host died with this request in hand: answer it, and
                    // stop pumping so the restarted host takes over the topic.
                    // Not retryable: the request itself may be what crashes the
                    // host, and retrying a poison request would crash-loop the
                    // plugin into `failed`.
                    let reply = host_failure(ctx.name(), HostFailure::Crashed);
                    respond(&ctx, &keep, reply);
                    break;
                }
            }
        });
        Ok(PluginHostState {
            ctx: a.ctx,
            plugin: a.plugin,
            handler: a.handler,
            effects: a.effects,
            pump,
            watch,
        })
    }

    async fn post_stop(
        &self,
        _me: ActorRef<Self::Msg>,
        st: &mut PluginHostState,
    ) -> Result<(), ActorProcessingErr> {
        st.pump.abort();
        st.watch.abort();
        Ok(())
    }

    async fn handle(
        &self,
        _me: ActorRef<Self::Msg>,
        msg: PluginHostMsg,
        st: &mut PluginHostState,
    ) -> Result<(), ActorProcessingErr> {
        let PluginHostMsg::Exec(env, permit, bp, taken) = msg;
        let started = crate::net::links::now();
        let req = match parse_request(&env) {
            Ok(r) => r,
            Err(e) => {
                let _ = taken.send(());
                bp.report(
                    &st.ctx,
                    &st.plugin.name,
                    CallResult::Ignored,
                    Duration::ZERO,
                );
                respond(
                    &st.ctx,
                    &env,
                    host_failure(st.ctx.name(), HostFailure::Malformed(e)),
                );
                return Ok(());
            }
        };
        // The host's own check of who may call its plugin: a peer's exec
        // path checked it too, as far as its catalog knew the plugins.
        if let Some(Err(d)) = req
            .caller
            .as_deref()
            .and_then(|c| c.strip_prefix("plugin:"))
            .map(|from| st.plugin.accepts_routing_from(from))
        {
            let _ = taken.send(());
            bp.report(
                &st.ctx,
                &st.plugin.name,
                CallResult::Ignored,
                Duration::ZERO,
            );
            tracing::warn!(target: "plexus::audit", denied = %d, "call refused by the host");
            respond(
                &st.ctx,
                &env,
                host_failure(st.ctx.name(), HostFailure::Forbidden(d.to_string())),
            );
            return Ok(());
        }
        let faults = SimFaults::from_input(&req.input);
        if faults.panic && sim_faults_allowed(&st.plugin) {
            // Deliberate crash (fault injection): exercises supervision.
            panic!(
                "plugin {} crashed on request (fault injection)",
                st.plugin.name
            );
        }
        let _ = taken.send(());
        let handler = st.handler.clone();
        let effects = st.effects.clone();
        let ctx = st.ctx.clone();
        let timeout = env
            .metadata
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(ctx.config.request_timeout);
        // The request's trace, from the envelope: the node that took the
        // client's request logs under the same trace_id.
        let span = tracing::info_span!(
            "exec",
            plugin = %req.plugin,
            command = %req.command,
            trace_id = %env.headers.trace_id.as_deref().unwrap_or(""),
            span_id = %env.headers.span_id.as_deref().unwrap_or(""),
            from = %env.source_node,
        );
        // A drain waits for this call (whoever sent it) before the node leaves.
        let busy = crate::services::lifecycle::Lifecycle::track_owned(&ctx);
        tokio::spawn(async move {
            let _permit = permit;
            let _busy = busy;
            // A streamed request: its progress and answer go on the stream.
            let out = ctx.bus.stream_for(&env);
            if let Some(o) = &out {
                let started_part = encode_part(HostPart::Started { node: ctx.name().to_string() });
                if o.send(started_part.unwrap_or_default()).await.is_err() {
                    tracing::debug!("the reader left before the command started");
                    bp.report(&ctx, &req.plugin, CallResult::Ignored, Duration::ZERO);
                    ctx.metrics.stream_end(&req.plugin, true);
                    return;
                }
            }
            // A request with an idempotency key runs at most once to success.
            let keyed = req.idempotency_key.clone().zip(effects);
            let _held = match &keyed {
                Some((k, log)) => Some(log.lock(k).await),
                None => None,
            };
            let recorded = keyed.as_ref().and_then(|(k, log)| log.get(k));
            let result = match recorded {
                Some(o) => {
                    tracing::debug!(key = ?req.idempotency_key, "duplicate request: answering from the effect log");
                    Ok(o)
                }
                None => {
                    if let Some(o) = &ctx.observer {
                        o.observe(
                            ctx.name(),
                            crate::services::observe::Observation::HandlerCall {
                                plugin: &req.plugin,
                                command: &req.command,
                                permit: bp.id,
                            },
                        );
                    }
                    let ran = match &out {
                        None => tokio::time::timeout(timeout, handler.execute(req.clone()))
                            .await
                            .map(Streamed::Ended),
                        Some(o) => tokio::time::timeout(timeout, run_streaming(handler.as_ref(), req.clone(), o)).await,
                    };
                    let r = match ran {
                        Ok(Streamed::Ended(r)) => r,
                        Ok(Streamed::Gone) => {
                            tracing::info!("the reader went away; the command was cancelled");
                            bp.report(&ctx, &req.plugin, CallResult::Ignored, crate::net::links::since(started));
                            ctx.metrics.stream_end(&req.plugin, true);
                            return;
                        }
                        Err(_) => Err(HandlerError::Timeout(timeout.as_millis() as u64)),
                    };
                    if let Ok(ExecOutput { llm: Some(m), cost_usd, .. }) = &r {
                        ctx.metrics.llm_run(&req.plugin, m, *cost_usd);
                    }
                    match (&r, &keyed) {
                        (Ok(o), Some((k, log))) => match log.record(k, &req.command, o) {
                            Ok(()) => r,
                            Err(e) => Err(HandlerError::Failed(format!(
                                "could not record the effect durably in {}: {e}",
                                log.path().display()
                            ))),
                        },
                        _ => r,
                    }
                }
            };
            let outcome = match &result {
                Ok(_) => CallResult::Success,
                Err(e) if e.is_plugin_fault() => CallResult::Failure,
                Err(_) => CallResult::Ignored,
            };
            bp.report(&ctx, &req.plugin, outcome, crate::net::links::since(started));
            let reply = host_reply(ctx.name(), started, result);
            tracing::debug!(ok = reply.outcome.is_ok(), duration_ms = reply.duration_ms, "plugin command done");
            match &out {
                None => respond(&ctx, &env, reply),
                Some(o) => {
                    let cancelled = match encode_part(HostPart::Reply(reply)) {
                        Some(p) => o.send(p).await.is_err(),
                        None => false,
                    };
                    ctx.metrics.stream_end(&req.plugin, cancelled);
                }
            }
        }.instrument(span));
        Ok(())
    }
}

/// Pass a handler's reports (discovered tools, server states) to the
/// registry, and raise an alert on `system/alerts` when a server is given
/// up, and another when a later try brings it back.
async fn forward_reports(
    ctx: Arc<NodeCtx>,
    plugin: String,
    mut rx: tokio::sync::watch::Receiver<plexus_handler::HandlerReport>,
) {
    let mut failed = std::collections::BTreeSet::new();
    loop {
        let r = rx.borrow_and_update().clone();
        for s in &r.servers {
            let status = if s.state == "failed" {
                failed.insert(s.name.clone()).then_some("failed")
            } else if s.state == "running" && failed.remove(&s.name) {
                Some("recovered")
            } else {
                None
            };
            if let Some(status) = status {
                let alert = serde_json::json!({
                    "node": ctx.name(), "plugin": plugin, "server": s.name,
                    "status": status, "reason": s.last_error,
                });
                let _ = ctx.bus.publish(Envelope::new(
                    MessageKind::Event,
                    "system/alerts",
                    ctx.name().to_string(),
                    alert.to_string().into_bytes(),
                ));
            }
        }
        ctx.handler_reports
            .write()
            .insert(plugin.clone(), r.clone());
        ctx.actors.registry.cast(RegistryMsg::LocalReport {
            plugin: plugin.clone(),
            report: r,
        });
        if rx.changed().await.is_err() {
            break;
        }
    }
}

/// A call permitted by the plugin's breaker, to be reported exactly once.
/// Only [`BreakerPermit::acquire`] makes one, and a plugin host runs
/// nothing without one.
pub struct BreakerPermit {
    id: u64,
}

/// Why a request got no breaker permit.
enum NoPermit {
    /// The breaker refused (open, forced open, half-open and full).
    Refused(Refused),
    /// The breaker actor is restarting or did not answer in time. The call
    /// is refused too: running it unguarded would let a failing plugin be
    /// hammered exactly while its breaker cannot count.
    Unavailable(&'static str),
}

impl NoPermit {
    fn message(&self, plugin: &str, node: &str) -> String {
        match self {
            NoPermit::Refused(r) => {
                let after = r
                    .retry_after
                    .map(|d| format!("; retry after {} ms", d.as_millis()))
                    .unwrap_or_default();
                format!(
                    "circuit breaker of {plugin} on {node} is {}{after}",
                    crate::actors::breaker::state_name(r.state)
                )
            }
            NoPermit::Unavailable(why) => format!(
                "circuit breaker of {plugin} on {node} {why}; the request was refused without running"
            ),
        }
    }

    /// The breaker's state as the refusal names it.
    fn state(&self) -> String {
        match self {
            NoPermit::Refused(r) => crate::actors::breaker::state_name(r.state).into(),
            NoPermit::Unavailable(why) => format!("unavailable ({why})"),
        }
    }

    /// When to try this host again: an open breaker says; one that was
    /// only unavailable restarts within ~50 ms.
    fn retry_after_ms(&self) -> Option<u64> {
        match self {
            NoPermit::Refused(r) => r.retry_after.map(|d| d.as_millis() as u64),
            NoPermit::Unavailable(_) => Some(50),
        }
    }
}

impl BreakerPermit {
    /// Ask the plugin's breaker for a permit.
    async fn acquire(ctx: &NodeCtx, plugin: &str) -> Result<BreakerPermit, NoPermit> {
        let Some(b) = breaker_of(ctx, plugin) else {
            return Err(NoPermit::Unavailable("is restarting"));
        };
        match b
            .call(BreakerMsg::Acquire, Some(Duration::from_secs(1)))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(Ok(id))) => Ok(BreakerPermit { id }),
            Ok(ractor::rpc::CallResult::Success(Err(r))) => Err(NoPermit::Refused(r)),
            Ok(ractor::rpc::CallResult::Timeout) => {
                Err(NoPermit::Unavailable("did not answer within 1 s"))
            }
            _ => Err(NoPermit::Unavailable("stopped before it answered")),
        }
    }

    fn report(self, ctx: &NodeCtx, plugin: &str, result: CallResult, duration: Duration) {
        if let Some(b) = breaker_of(ctx, plugin) {
            let _ = b.cast(BreakerMsg::Report {
                permit: self.id,
                result,
                duration,
            });
        }
    }
}

fn breaker_of(ctx: &NodeCtx, plugin: &str) -> Option<ActorRef<BreakerMsg>> {
    ctx.actors.breaker(plugin)
}

fn sim_faults_allowed(p: &Plugin) -> bool {
    match &p.manifest.handler {
        HandlerSpec::Sim(s) => s.allow_fault_injection,
        _ => false,
    }
}

fn parse_request(env: &Envelope) -> Result<ExecRequest, String> {
    plexus_codec::decode(&env.payload).map_err(|e| format!("malformed exec request: {e}"))
}

fn respond(ctx: &NodeCtx, req: &Envelope, reply: HostReply) {
    if req.metadata.stream_window.is_some() {
        // A streamed request's answer is its stream's one and last part:
        // nothing was sent on it yet, so it has room.
        if let Some(out) = ctx.bus.stream_for(req) {
            if let Some(p) = encode_part(HostPart::Reply(reply)) {
                let _ = out.try_send(p);
            }
        }
        return;
    }
    let payload = match plexus_codec::encode(&reply) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "could not encode a reply");
            return;
        }
    };
    let resp = req.reply(ctx.name(), payload);
    if let Err(e) = ctx.bus.respond(req, resp) {
        tracing::warn!(error = %e, "could not send a response");
    }
}

fn encode_part(part: HostPart) -> Option<Vec<u8>> {
    plexus_codec::encode(&part)
        .map_err(|e| tracing::error!(error = %e, "could not encode a stream part"))
        .ok()
}

/// Progress buffered between a handler and its stream.
const PROGRESS_BUFFER: usize = 16;

/// How a streamed command ended.
enum Streamed {
    Ended(Result<ExecOutput, HandlerError>),
    /// The reader went away; the command was dropped (cancelled).
    Gone,
}

/// Run a command with its progress sent on `out` as it comes, in order.
/// A slow reader slows the command (the parts wait for credit); a reader
/// that leaves drops it, which cancels it (a model call's connection
/// closes).
async fn run_streaming(
    handler: &dyn CommandHandler,
    req: ExecRequest,
    out: &StreamSender,
) -> Streamed {
    let (tx, mut rx) = tokio::sync::mpsc::channel(PROGRESS_BUFFER);
    let work = handler.execute_streaming(req, tx);
    tokio::pin!(work);
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            p = rx.recv(), if open => match p {
                Some(p) => {
                    let Some(part) = encode_part(HostPart::Progress(p)) else { continue };
                    if out.send(part).await.is_err() {
                        return Streamed::Gone;
                    }
                }
                None => open = false,
            },
            r = &mut work => {
                // What it sent before it ended goes first.
                while let Ok(p) = rx.try_recv() {
                    let Some(part) = encode_part(HostPart::Progress(p)) else { continue };
                    if out.send(part).await.is_err() {
                        return Streamed::Gone;
                    }
                }
                return Streamed::Ended(r);
            }
        }
    }
}

/// Build the bus envelope of an exec request (encoded by plexus-codec: the
/// input stays the JSON text it came as). A request without a trace id
/// takes the envelope's, so the reply and every log line can be joined.
pub fn exec_envelope(
    source: &str,
    mut req: ExecRequest,
    priority: u8,
) -> Result<Envelope, plexus_codec::CodecError> {
    let mut env = Envelope::new(
        MessageKind::Request,
        request_topic(&req.plugin),
        source,
        Vec::new(),
    )
    .to(req.plugin.clone())
    .with_priority(priority)
    .with_trace(req.trace_id.clone());
    if req.trace_id.is_none() {
        req.trace_id = env.headers.trace_id.as_deref().map(str::to_string);
    }
    env.payload = plexus_codec::encode(&req)?;
    Ok(env)
}

// ---------------------------------------------------------- PluginSupervisor

#[derive(RactorMessage)]
pub enum PluginSupervisorMsg {
    /// Run exactly these plugins here (the placement's answer): start the
    /// new ones, stop the others.
    Assign(std::collections::BTreeSet<String>),
    /// Start (or restart) the host of a plugin.
    Start(String),
    /// Start (or restart) the circuit breaker of a plugin.
    StartBreaker(String),
}

struct Hosted {
    plugin: Arc<Plugin>,
    handler: Arc<dyn CommandHandler>,
    effects: Option<Arc<EffectLog>>,
    intensity: RestartIntensity,
    actor: Option<ActorCell>,
    status: PluginStatus,
    restarts: u32,
}

pub struct PluginSupervisorState {
    ctx: Arc<NodeCtx>,
    hosts: HashMap<String, Hosted>,
    breakers: HashMap<String, ActorCell>,
}

pub struct PluginSupervisor;

impl Actor for PluginSupervisor {
    type Msg = PluginSupervisorMsg;
    type State = PluginSupervisorState;
    type Arguments = Arc<NodeCtx>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        ctx: Arc<NodeCtx>,
    ) -> Result<PluginSupervisorState, ActorProcessingErr> {
        // Reachable before asking: the Registry answers `Resend` with an
        // `Assign` sent through this slot, possibly before the node
        // supervisor's own `set` after the spawn returns.
        ctx.actors.plugins.set(myself);
        // What to run is the placement's answer, which the Registry keeps.
        ctx.actors.registry.cast(RegistryMsg::Resend);
        let hosts = HashMap::new();
        Ok(PluginSupervisorState {
            ctx,
            hosts,
            breakers: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: PluginSupervisorMsg,
        st: &mut PluginSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let name = match msg {
            PluginSupervisorMsg::Assign(names) => {
                assign(&myself, st, names)?;
                return Ok(());
            }
            PluginSupervisorMsg::Start(name) => name,
            PluginSupervisorMsg::StartBreaker(name) => {
                let Some(h) = st.hosts.get(&name) else {
                    return Ok(());
                };
                if st.breakers.contains_key(&name) {
                    return Ok(());
                }
                let args = BreakerArgs {
                    ctx: st.ctx.clone(),
                    plugin: h.plugin.clone(),
                };
                let actor_id = actor_name(st.ctx.name(), &format!("breaker:{name}"));
                match Actor::spawn_linked(Some(actor_id), BreakerActor, args, myself.get_cell())
                    .await
                {
                    Ok((b, _)) => {
                        st.ctx
                            .actors
                            .breakers
                            .write()
                            .insert(name.clone(), b.clone());
                        st.breakers.insert(name, b.get_cell());
                    }
                    Err(e) => {
                        tracing::error!(plugin = %name, error = %e, "breaker failed to start; retrying");
                        myself.send_after(Duration::from_millis(200), move || {
                            PluginSupervisorMsg::StartBreaker(name)
                        });
                    }
                }
                return Ok(());
            }
        };
        let node = st.ctx.name().to_string();
        let Some(h) = st.hosts.get_mut(&name) else {
            return Ok(());
        };
        if h.actor.is_some() || h.status == PluginStatus::Failed {
            return Ok(());
        }
        let args = PluginHostArgs {
            ctx: st.ctx.clone(),
            plugin: h.plugin.clone(),
            handler: h.handler.clone(),
            effects: h.effects.clone(),
        };
        match Actor::spawn_linked(
            Some(actor_name(&node, &format!("plugin:{name}"))),
            PluginHost,
            args,
            myself.get_cell(),
        )
        .await
        {
            Ok((actor, _)) => {
                h.actor = Some(actor.get_cell());
                h.status = PluginStatus::Running;
                tracing::info!(plugin = %name, "plugin host started");
            }
            Err(e) => {
                tracing::error!(plugin = %name, error = %e, "plugin host failed to start");
                on_failure(&myself, st, &name, format!("start failed: {e}"));
                return Ok(());
            }
        }
        report(&st.ctx, h);
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        st: &mut PluginSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell, format!("panicked: {err}")),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, format!("stopped: {}", reason.unwrap_or_default()))
            }
            _ => return Ok(()),
        };
        let breaker = st
            .breakers
            .iter()
            .find(|(_, c)| c.get_id() == cell.get_id())
            .map(|(n, _)| n.clone());
        if let Some(name) = breaker {
            // A breaker that dies restarts Closed: its window was only advice.
            tracing::warn!(plugin = %name, %reason, "circuit breaker actor failed; restarting");
            st.breakers.remove(&name);
            st.ctx.actors.breakers.write().remove(&name);
            myself.send_after(Duration::from_millis(50), move || {
                PluginSupervisorMsg::StartBreaker(name)
            });
            return Ok(());
        }
        let name = st
            .hosts
            .iter()
            .find(|(_, h)| {
                h.actor
                    .as_ref()
                    .is_some_and(|a| a.get_id() == cell.get_id())
            })
            .map(|(n, _)| n.clone());
        if let Some(name) = name {
            if let Some(h) = st.hosts.get_mut(&name) {
                h.actor = None;
            }
            on_failure(&myself, st, &name, reason);
        }
        Ok(())
    }
}

/// Start the plugins of `names` not running here, stop the ones running
/// here that it leaves out. A stopped host takes no new request; those it
/// holds finish and are answered (their tasks own the handler).
fn assign(
    myself: &ActorRef<PluginSupervisorMsg>,
    st: &mut PluginSupervisorState,
    names: std::collections::BTreeSet<String>,
) -> Result<(), ActorProcessingErr> {
    let ctx = st.ctx.clone();
    let mut gone: Vec<String> = st
        .hosts
        .keys()
        .filter(|n| !names.contains(*n))
        .cloned()
        .collect();
    gone.sort();
    for name in gone {
        // Forget it first, so its stop is not taken for a crash.
        if let Some(h) = st.hosts.remove(&name) {
            if let Some(a) = h.actor {
                a.stop(Some("placed elsewhere".into()));
            }
        }
        if let Some(b) = st.breakers.remove(&name) {
            b.stop(Some("placed elsewhere".into()));
        }
        ctx.actors.breakers.write().remove(&name);
        ctx.handler_reports.write().remove(&name);
        ctx.auth.forget_local(&hosted_credential(&name));
        tracing::info!(plugin = %name, "plugin stopped here: placed elsewhere");
    }
    for name in names {
        if let Some(h) = st.hosts.get(&name) {
            report(&ctx, h);
            continue;
        }
        let Some(p) = ctx.offered(&name).cloned() else {
            tracing::warn!(plugin = %name, "placed here but not in this node's catalog; not started");
            continue;
        };
        let pl = &p.manifest.placement;
        let handler = make_handler(&ctx, &p);
        if let Some(rx) = handler.report() {
            // Ends by itself when the handler is dropped (its sender goes).
            tokio::spawn(forward_reports(ctx.clone(), p.name.clone(), rx));
        }
        let effects = match EffectLog::open(&ctx.config.data_dir.join("effects"), &p.name) {
            Ok(l) => Some(Arc::new(l)),
            Err(e) => {
                tracing::error!(plugin = %p.name, error = %e, "no effect log: duplicate requests will run again");
                None
            }
        };
        st.hosts.insert(
            p.name.clone(),
            Hosted {
                intensity: RestartIntensity::new(
                    pl.max_restarts,
                    Duration::from_secs(pl.restart_window_secs),
                ),
                plugin: p.clone(),
                handler,
                effects,
                actor: None,
                status: PluginStatus::Restarting,
                restarts: 0,
            },
        );
        myself.cast(PluginSupervisorMsg::StartBreaker(p.name.clone()))?;
        myself.cast(PluginSupervisorMsg::Start(p.name.clone()))?;
    }
    Ok(())
}

fn report(ctx: &NodeCtx, h: &Hosted) {
    ctx.actors.registry.cast(RegistryMsg::LocalStatus {
        plugin: h.plugin.name.clone(),
        status: h.status,
        restarts: h.restarts,
    });
}

fn on_failure(
    myself: &ActorRef<PluginSupervisorMsg>,
    st: &mut PluginSupervisorState,
    name: &str,
    reason: String,
) {
    let node = st.ctx.name().to_string();
    let Some(h) = st.hosts.get_mut(name) else {
        return;
    };
    match h.intensity.record(crate::net::links::now()) {
        Decision::Restart => {
            h.restarts += 1;
            h.status = PluginStatus::Restarting;
            tracing::warn!(plugin = %name, %reason, restarts = h.restarts, "plugin host failed; restarting");
            report(&st.ctx, h);
            // A short pause keeps a crash loop from spinning the CPU.
            let n = name.to_string();
            myself.send_after(Duration::from_millis(50), move || {
                PluginSupervisorMsg::Start(n)
            });
        }
        Decision::GiveUp => {
            h.status = PluginStatus::Failed;
            tracing::error!(plugin = %name, %reason, "plugin restarted too often; marked failed");
            report(&st.ctx, h);
            let alert = serde_json::json!({"node": node, "plugin": name, "status": "failed", "reason": reason});
            let _ = st.ctx.bus.publish(Envelope::new(
                MessageKind::Event,
                "system/alerts",
                node.clone(),
                alert.to_string().into_bytes(),
            ));
            st.ctx.actors.supervisor.cast(NodeSupervisorMsg::Escalate {
                what: format!("plugin {name}"),
                reason,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;

    use futures::future::BoxFuture;
    use plexus_bus::{Bus, BusConfig, Envelope, MessageKind, StreamReceiver};
    use plexus_handler::{
        CommandHandler, ExecOutput, ExecRequest, HandlerError, Progress, ProgressSender,
    };

    use super::{run_streaming, HostPart, Streamed};

    /// Sends `pieces` text pieces (all of them when `None`, forever), then
    /// answers; counts what it sent and notes when it is dropped.
    struct Talker {
        pieces: Option<usize>,
        sent: std::sync::Arc<AtomicUsize>,
        dropped: std::sync::Arc<AtomicBool>,
    }

    struct SetOnDrop(std::sync::Arc<AtomicBool>);
    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    impl CommandHandler for Talker {
        fn kind(&self) -> &'static str {
            "test"
        }
        fn execute(&self, _: ExecRequest) -> BoxFuture<'static, Result<ExecOutput, HandlerError>> {
            Box::pin(async { Err(HandlerError::Failed("streaming only".into())) })
        }
        fn execute_streaming(
            &self,
            _: ExecRequest,
            progress: ProgressSender,
        ) -> BoxFuture<'static, Result<ExecOutput, HandlerError>> {
            let (n, sent) = (self.pieces, self.sent.clone());
            let guard = SetOnDrop(self.dropped.clone());
            Box::pin(async move {
                let _guard = guard;
                let mut i = 0;
                while n.is_none_or(|n| i < n) {
                    let text = format!("t{i}");
                    if progress.send(Progress::Text { text }).await.is_err() {
                        break;
                    }
                    sent.fetch_add(1, Ordering::SeqCst);
                    i += 1;
                }
                Ok(ExecOutput {
                    output: "{}".into(),
                    model: None,
                    work_minutes: 0.0,
                    cost_usd: 0.0,
                    llm: None,
                })
            })
        }
    }

    fn talker(pieces: Option<usize>) -> Talker {
        Talker {
            pieces,
            sent: Default::default(),
            dropped: Default::default(),
        }
    }

    fn req() -> ExecRequest {
        ExecRequest {
            caller: None,
            plugin: "p".into(),
            command: "agent:a".into(),
            input: "{}".into(),
            idempotency_key: None,
            trace_id: None,
            model: None,
        }
    }

    /// A stream on one bus: the reader, and the host's sender.
    async fn stream(window: u32) -> (StreamReceiver, plexus_bus::StreamSender, Bus) {
        let bus = Bus::new(BusConfig::new("n1"));
        let sub = bus.subscribe("plugin/p/request", "p").unwrap();
        let env = Envelope::new(MessageKind::Request, "plugin/p/request", "t", vec![]);
        let rx = bus
            .request_stream(env, Duration::from_secs(5), "n1", window)
            .unwrap();
        let out = bus.stream_for(&sub.recv().await.unwrap()).unwrap();
        (rx, out, bus)
    }

    fn text(part: &[u8]) -> String {
        match plexus_codec::decode::<HostPart>(part).unwrap() {
            HostPart::Progress(Progress::Text { text }) => text,
            other => panic!("not text: {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_streamed_command_sends_its_progress_in_order_through_a_small_window() {
        let (mut rx, out, _bus) = stream(2).await;
        let h = talker(Some(20));
        let reader = async {
            let mut got = vec![];
            while got.len() < 20 {
                got.push(text(&rx.recv().await.unwrap()));
            }
            got
        };
        let (ran, got) = tokio::join!(run_streaming(&h, req(), &out), reader);
        assert!(matches!(ran, Streamed::Ended(Ok(_))));
        let want: Vec<String> = (0..20).map(|i| format!("t{i}")).collect();
        assert_eq!(got, want);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_leaves_stops_the_command() {
        let (mut rx, out, _bus) = stream(4).await;
        let h = talker(None);
        let reader = async move {
            for _ in 0..3 {
                rx.recv().await.unwrap();
            }
            // rx dropped here: the client went away.
        };
        let (ran, ()) = tokio::join!(run_streaming(&h, req(), &out), reader);
        assert!(matches!(ran, Streamed::Gone));
        assert!(h.dropped.load(Ordering::SeqCst), "the command was dropped");
        // It got no further than the window and the buffers allow.
        let sent = h.sent.load(Ordering::SeqCst);
        assert!(sent < 3 + 4 + super::PROGRESS_BUFFER + 2, "{sent} sent");
    }
}
