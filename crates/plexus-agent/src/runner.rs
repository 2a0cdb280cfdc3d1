//! The I/O around the agent loop: streams model turns from the provider,
//! runs tools (sandbox, ToolHost), emits [`RunEvent`]s as they happen, and
//! stops promptly when the consumer goes away or the deadline passes.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use plexus_catalog::ModelTier;
use plexus_handler::{HandlerError, ProviderFailure};
use plexus_llm::{
    CancellationToken, Message, Provider, ProviderError, StreamEvent, ToolChoice, Usage,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::agent_loop::{AgentLoop, FinishReason, Next, ToolAnswer, ToolRecord, ToolRun};
use crate::host::{parse_agent, parse_slash, AgentCall, ToolHost};
use crate::policy::ToolKind;
use crate::prompt::RunInput;
use crate::tools::ToolSandbox;
use crate::workspace::Workspace;

/// What a run executes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Agent(String),
    Command(String),
}

impl Target {
    /// As the exec path names it: `agent:NAME`, else a command (`NAME`,
    /// `/NAME`, `command:NAME`).
    pub fn parse(what: &str) -> Target {
        match what.strip_prefix("agent:") {
            Some(a) => Target::Agent(a.to_string()),
            None => Target::Command(
                what.strip_prefix("command:")
                    .unwrap_or(what)
                    .trim_start_matches('/')
                    .to_string(),
            ),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Agent(a) => write!(f, "agent:{a}"),
            Target::Command(c) => write!(f, "/{c}"),
        }
    }
}

/// One run, as the node asks for it.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub target: Target,
    pub input: RunInput,
    /// The routing decision's tier; else the agent's or command's own, else sonnet.
    pub tier: Option<ModelTier>,
    /// The whole run must end by then.
    pub deadline: Option<Duration>,
    pub trace_id: Option<String>,
    /// Messages before the request (worked examples), usually none.
    pub history: Vec<Message>,
    pub temperature: Option<f32>,
    /// Tool choice of the first turn.
    pub tool_choice: ToolChoice,
    /// Whether an overloaded provider may be retried one tier down.
    pub step_down: bool,
}

impl RunRequest {
    pub fn new(target: Target, input: RunInput) -> RunRequest {
        RunRequest {
            target,
            input,
            tier: None,
            deadline: None,
            trace_id: None,
            history: vec![],
            temperature: None,
            tool_choice: ToolChoice::Auto,
            step_down: true,
        }
    }
}

/// A tier change after an overload, announced rather than hidden.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepDown {
    pub from_model: String,
    pub to_model: String,
    pub to_tier: ModelTier,
    pub reason: String,
}

/// The final answer of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReply {
    pub plugin: String,
    pub target: String,
    /// The text of the last turn that had any.
    pub text: String,
    /// The model id used last.
    pub model: String,
    pub tier: Option<ModelTier>,
    pub usage: Usage,
    pub cost_usd: f64,
    /// False when the model has no price in the table (cost_usd is then 0).
    pub priced: bool,
    pub turns: u32,
    pub finish: FinishReason,
    pub tool_calls: Vec<ToolRecord>,
    pub step_downs: Vec<StepDown>,
    /// The kept workspace's path (`[llm.workspace] keep`).
    pub workspace: Option<String>,
    /// The workspace's files (`[llm.workspace] returnFiles`): path, text.
    pub files: Vec<(String, String)>,
}

/// What a run streams, in order: `Start`, then text and tool events as they
/// happen, then exactly one `Done` or `Failed`. JSON in tool events is
/// text, so every event crosses the cluster's codec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunEvent {
    Start {
        plugin: String,
        target: String,
        model: String,
        tier: Option<ModelTier>,
    },
    /// A piece of the model's text.
    Text(String),
    /// The model called a tool (`input` is JSON text).
    ToolCall {
        id: String,
        name: String,
        input: String,
    },
    /// A tool call ended: ran (ok or not), or was refused.
    ToolResult {
        id: String,
        name: String,
        status: crate::ToolStatus,
        output: String,
    },
    StepDown(StepDown),
    Done(RunReply),
    Failed(HandlerError),
}

/// Everything a run needs besides its request.
pub(crate) struct RunContext {
    pub plugin: String,
    pub provider: Arc<dyn Provider>,
    pub host: Arc<dyn ToolHost>,
    pub sandbox: ToolSandbox,
    pub models: std::collections::BTreeMap<ModelTier, String>,
}

/// The consumer's end of a run. Dropping it cancels the run: the model
/// call's connection is closed and tool processes are killed.
pub struct RunStream {
    rx: mpsc::Receiver<RunEvent>,
    _cancel: cancel_guard::DropGuard,
}

/// Cancels the run's token when the stream is dropped.
mod cancel_guard {
    pub struct DropGuard(pub plexus_llm::CancellationToken);
    impl Drop for DropGuard {
        fn drop(&mut self) {
            self.0.cancel();
        }
    }
}

impl futures::Stream for RunStream {
    type Item = RunEvent;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<RunEvent>> {
        self.rx.poll_recv(cx)
    }
}

impl RunStream {
    /// Run `drive` on a task whose events come out of the stream; `cap`
    /// bounds what is buffered (a slow consumer slows the model call).
    pub(crate) fn spawn<F>(cap: usize, drive: F) -> RunStream
    where
        F: FnOnce(mpsc::Sender<RunEvent>) -> futures::future::BoxFuture<'static, ()>
            + Send
            + 'static,
    {
        let (tx, rx) = mpsc::channel(cap);
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        let closed = tx.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = drive(tx) => {}
                _ = c.cancelled() => tracing::debug!("agent run cancelled"),
                _ = closed.closed() => tracing::debug!("agent run's consumer went away"),
            }
        });
        RunStream {
            rx,
            _cancel: cancel_guard::DropGuard(cancel),
        }
    }

    /// Wait for the end and return the reply (text events are dropped).
    pub async fn reply(mut self) -> Result<RunReply, HandlerError> {
        while let Some(ev) = self.next().await {
            match ev {
                RunEvent::Done(r) => return Ok(r),
                RunEvent::Failed(e) => return Err(e),
                _ => {}
            }
        }
        Err(HandlerError::Failed("the run ended without a reply".into()))
    }
}

/// Map a provider failure for the breaker and the retry policy.
pub fn handler_error(e: &ProviderError) -> HandlerError {
    let failure = match e {
        ProviderError::Timeout { after, .. } => {
            return HandlerError::Timeout(after.as_millis() as u64)
        }
        ProviderError::RateLimited { .. } => ProviderFailure::RateLimited,
        ProviderError::Overloaded { .. } => ProviderFailure::Overloaded,
        ProviderError::Server { .. } => ProviderFailure::ServerError,
        ProviderError::Unreachable { .. } => ProviderFailure::Unreachable,
        ProviderError::ContextTooLong { .. } => ProviderFailure::ContextTooLong,
        ProviderError::Auth { .. } => ProviderFailure::Auth,
        ProviderError::BadRequest { .. } => ProviderFailure::BadRequest,
        ProviderError::BadResponse { .. } => ProviderFailure::BadResponse,
    };
    HandlerError::Provider {
        failure,
        message: e.to_string(),
        retry_after_ms: e.retry_after().map(|d| d.as_millis() as u64),
    }
}

/// The tier one step below, for an overload.
pub fn step_down_tier(t: ModelTier) -> Option<ModelTier> {
    match t {
        ModelTier::Opus => Some(ModelTier::Sonnet),
        ModelTier::Sonnet => Some(ModelTier::Haiku),
        ModelTier::Haiku => None,
    }
}

/// Per-run state the driver keeps besides the loop.
pub(crate) struct Driver<'a> {
    pub ctx: &'a RunContext,
    pub ws: &'a Workspace,
    pub tx: &'a mpsc::Sender<RunEvent>,
    pub tier: Option<ModelTier>,
    /// A forced model id (`$model`) is never stepped down.
    pub forced_model: bool,
    pub step_down: bool,
    pub depth: u32,
    pub budget_usd: Option<f64>,
    pub trace_id: Option<String>,
    pub step_downs: Vec<StepDown>,
}

/// Why the driver stopped early.
pub(crate) enum Stop {
    /// The consumer is gone.
    Gone,
    Failed(HandlerError),
}

impl Driver<'_> {
    async fn emit(&self, ev: RunEvent) -> Result<(), Stop> {
        self.tx.send(ev).await.map_err(|_| Stop::Gone)
    }

    /// Drive the loop to its end.
    pub async fn run(&mut self, lp: &mut AgentLoop) -> Result<crate::agent_loop::Outcome, Stop> {
        let mut next = lp.start();
        loop {
            next = match next {
                Next::Finish(o) => return Ok(o),
                Next::CallModel(req) => self.model_turn(lp, req).await?,
                Next::RunTools(runs) => {
                    let mut answers = vec![];
                    for run in runs {
                        let output = self.run_tool(lp, &run).await;
                        let (status, text) = match &output {
                            Ok(o) => (crate::ToolStatus::Ok, o.clone()),
                            Err(e) => (crate::ToolStatus::Error, e.clone()),
                        };
                        tracing::info!(
                            target: "plexus_agent::tool",
                            plugin = %self.ctx.plugin,
                            trace_id = self.trace_id.as_deref().unwrap_or(""),
                            tool = %run.call.name,
                            call = %run.call.id,
                            status = ?status,
                            "tool call"
                        );
                        self.emit(RunEvent::ToolResult {
                            id: run.call.id.clone(),
                            name: run.call.name.clone(),
                            status,
                            output: plexus_llm::error::cut(&text, crate::agent_loop::MAX_RECORDED),
                        })
                        .await?;
                        answers.push(ToolAnswer {
                            call_id: run.call.id.clone(),
                            output,
                        });
                    }
                    lp.tool_results(answers)
                }
            };
        }
    }

    /// Stream one model turn into the loop; on an overload before any
    /// output, step down one tier (announced) and try the turn again.
    async fn model_turn(
        &mut self,
        lp: &mut AgentLoop,
        mut req: plexus_llm::ChatRequest,
    ) -> Result<Next, Stop> {
        loop {
            let mut stream = self.ctx.provider.stream(req.clone());
            let mut emitted = false;
            let mut failed = None;
            while let Some(ev) = stream.next().await {
                match ev {
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                    Ok(ev) => {
                        lp.on_event(&ev);
                        match &ev {
                            StreamEvent::TextDelta(t) => {
                                emitted = true;
                                self.emit(RunEvent::Text(t.clone())).await?;
                            }
                            StreamEvent::ToolCallDone { call, .. } => {
                                emitted = true;
                                self.emit(RunEvent::ToolCall {
                                    id: call.id.clone(),
                                    name: call.name.clone(),
                                    input: call.arguments.clone(),
                                })
                                .await?;
                            }
                            _ => {}
                        }
                    }
                }
            }
            let Some(e) = failed else {
                let next = lp.turn_ended();
                // Refused calls are answered at once: announce them.
                self.emit_refusals(lp, &next).await?;
                return Ok(next);
            };
            if let (ProviderError::Overloaded { .. }, false, false, true, Some(tier)) =
                (&e, emitted, self.forced_model, self.step_down, self.tier)
            {
                if let Some(lower) = step_down_tier(tier) {
                    let to = self.ctx.models.get(&lower).cloned().unwrap_or_default();
                    if !to.is_empty() && to != lp.model() {
                        let sd = StepDown {
                            from_model: lp.model().to_string(),
                            to_model: to.clone(),
                            to_tier: lower,
                            reason: e.to_string(),
                        };
                        tracing::warn!(plugin = %self.ctx.plugin, from = %sd.from_model, to = %sd.to_model, "provider overloaded; stepping down one model tier");
                        self.step_downs.push(sd.clone());
                        self.emit(RunEvent::StepDown(sd)).await?;
                        self.tier = Some(lower);
                        lp.set_model(to);
                        match lp.retry_turn() {
                            Next::CallModel(r) => {
                                req = r;
                                continue;
                            }
                            other => return Ok(other),
                        }
                    }
                }
            }
            return Err(Stop::Failed(handler_error(&e)));
        }
    }

    async fn emit_refusals(&self, lp: &AgentLoop, _next: &Next) -> Result<(), Stop> {
        let o = lp.outcome(FinishReason::Completed);
        for r in o.tool_calls.iter().filter(|r| {
            r.turn == o.turns
                && r.status != crate::ToolStatus::Ok
                && r.status != crate::ToolStatus::Error
        }) {
            tracing::info!(
                target: "plexus_agent::tool",
                plugin = %self.ctx.plugin,
                trace_id = self.trace_id.as_deref().unwrap_or(""),
                tool = %r.name,
                call = %r.id,
                status = ?r.status,
                why = %r.detail,
                "tool call not run"
            );
            self.emit(RunEvent::ToolResult {
                id: r.id.clone(),
                name: r.name.clone(),
                status: r.status.clone(),
                output: r.detail.clone(),
            })
            .await?;
        }
        Ok(())
    }

    async fn run_tool(&self, lp: &AgentLoop, run: &ToolRun) -> Result<String, String> {
        let input = &run.input;
        let plugin = self.ctx.plugin.clone();
        let as_text = |r: Result<String, HandlerError>| r.map_err(|e| e.to_string());
        match &run.kind {
            ToolKind::Builtin(b) => self.ctx.sandbox.call(self.ws, *b, input).await,
            ToolKind::WebFetch => self.ctx.sandbox.web_fetch(self.ws, input).await,
            ToolKind::TodoWrite => {
                let n = input
                    .get("todos")
                    .and_then(Value::as_array)
                    .map(|a| a.len())
                    .unwrap_or(0);
                Ok(format!("Recorded {n} to-do items."))
            }
            ToolKind::Mcp { server, tool } => as_text(
                self.ctx
                    .host
                    .call_mcp(&plugin, server, tool, input.clone())
                    .await,
            ),
            ToolKind::SlashCommand => {
                let text = input
                    .get("command")
                    .and_then(Value::as_str)
                    .ok_or("the input needs command (a string)")?;
                let (p, c, args) = parse_slash(text, &plugin)?;
                as_text(
                    self.ctx
                        .host
                        .call_command(&plugin, &p, &c, serde_json::json!({ "arguments": args }))
                        .await,
                )
            }
            ToolKind::Task => {
                let sub = input
                    .get("subagent_type")
                    .and_then(Value::as_str)
                    .ok_or("the input needs subagent_type (an agent name)")?;
                let prompt = input
                    .get("prompt")
                    .and_then(Value::as_str)
                    .ok_or("the input needs prompt (a string)")?;
                let (p, a) = parse_agent(sub);
                let spent = lp.outcome(FinishReason::Completed).cost_usd;
                let call = AgentCall {
                    from_plugin: plugin,
                    plugin: p,
                    agent: a,
                    prompt: prompt.to_string(),
                    description: input
                        .get("description")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    depth: self.depth + 1,
                    budget_usd: self.budget_usd.map(|b| (b - spent).max(0.0)),
                    trace_id: self.trace_id.clone(),
                };
                as_text(self.ctx.host.run_agent(call).await)
            }
        }
    }
}
