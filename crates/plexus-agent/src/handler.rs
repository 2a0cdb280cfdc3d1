//! The `llm` handler: a plugin's agents and commands run on a language
//! model. [`LlmHandler::stream`] yields [`RunEvent`]s as they happen (for
//! the node to carry across the cluster); [`CommandHandler::execute`]
//! waits for the reply.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::StreamExt;
use plexus_catalog::{HandlerSpec, LlmSpec, ModelTier, Plugin};
use plexus_handler::{
    CommandHandler, ExecOutput, ExecRequest, HandlerError, Progress, ProgressSender,
};
use plexus_llm::{ConfigError, HttpProvider, LlmConfig, PriceTable, Provider, ProviderConfig};

use crate::agent_loop::{AgentLoop, LoopConfig};
use crate::host::ToolHost;
use crate::policy::ToolPolicy;
use crate::prompt::{self, RunInput};
use crate::runner::{Driver, RunContext, RunEvent, RunReply, RunRequest, RunStream, Stop, Target};
use crate::tools::ToolSandbox;
use crate::workspace::Workspaces;

/// Model turns of a run when neither the request nor the manifest says.
pub const DEFAULT_MAX_TURNS: u32 = 16;
/// Output tokens per turn when neither the request nor the manifest says.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;
/// `Task` nesting when the manifest does not say.
pub const DEFAULT_TASK_DEPTH: u32 = 2;
/// Events buffered between a run and its consumer.
const EVENT_BUFFER: usize = 64;

/// Runs one plugin's agents and commands.
#[derive(Clone)]
pub struct LlmHandler {
    inner: Arc<Inner>,
}

struct Inner {
    plugin: Arc<Plugin>,
    spec: LlmSpec,
    ctx: RunContext,
    prices: Arc<PriceTable>,
    workspaces: Workspaces,
    mcp_servers: Vec<String>,
}

impl LlmHandler {
    /// A handler for `plugin` on the node's `[llm]` configuration, with the
    /// plugin's `[llm]` table over it.
    pub fn new(
        plugin: Arc<Plugin>,
        node: &LlmConfig,
        prices: Arc<PriceTable>,
        host: Arc<dyn ToolHost>,
        workspaces: Workspaces,
    ) -> Result<LlmHandler, ConfigError> {
        let cfg = node.resolve(plugin.manifest.llm.as_ref())?;
        let provider = Arc::new(HttpProvider::new(cfg.clone())?);
        Ok(LlmHandler::with_provider(
            plugin, provider, &cfg, prices, host, workspaces,
        ))
    }

    /// A handler on a given provider (tests script one).
    pub fn with_provider(
        plugin: Arc<Plugin>,
        provider: Arc<dyn Provider>,
        cfg: &ProviderConfig,
        prices: Arc<PriceTable>,
        host: Arc<dyn ToolHost>,
        workspaces: Workspaces,
    ) -> LlmHandler {
        let spec = plugin.manifest.llm.clone().unwrap_or_default();
        let base = plugin
            .manifest_file
            .as_ref()
            .filter(|f| !f.starts_with("<embedded>"))
            .and_then(|f| f.parent().map(|p| p.to_path_buf()))
            .unwrap_or_else(|| std::path::PathBuf::from("."));
        let resolve = |p: &String| {
            let p = std::path::Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let sandbox = ToolSandbox {
            plugin: plugin.name.clone(),
            spec: spec.sandbox.clone(),
            limits: spec.limits.clone(),
            timeout: Duration::from_millis(spec.tool_timeout_ms.unwrap_or(120_000)),
            read: spec.sandbox.read_paths.iter().map(resolve).collect(),
            write: spec.sandbox.write_paths.iter().map(resolve).collect(),
        };
        let mut mcp_servers: Vec<String> =
            plugin.mcp_servers.iter().map(|s| s.name.clone()).collect();
        if let HandlerSpec::Mcp(m) = &plugin.manifest.handler {
            mcp_servers.extend(m.entries(&plugin.name).into_iter().map(|e| e.name));
        }
        LlmHandler {
            inner: Arc::new(Inner {
                ctx: RunContext {
                    plugin: plugin.name.clone(),
                    provider,
                    host,
                    sandbox,
                    models: cfg.models.clone(),
                },
                plugin,
                spec,
                prices,
                workspaces,
                mcp_servers,
            }),
        }
    }

    /// Start a run; its events stream as they happen. Dropping the stream
    /// cancels the run (the model call's connection closes at once).
    pub fn stream(&self, req: RunRequest) -> RunStream {
        let inner = self.inner.clone();
        RunStream::spawn(EVENT_BUFFER, move |tx| {
            Box::pin(async move {
                let deadline = req.deadline;
                let work = run(&inner, req, &tx);
                let result = match deadline {
                    Some(d) => match tokio::time::timeout(d, work).await {
                        Ok(r) => r,
                        Err(_) => Err(Stop::Failed(HandlerError::Timeout(d.as_millis() as u64))),
                    },
                    None => work.await,
                };
                let last = match result {
                    Ok(reply) => RunEvent::Done(reply),
                    Err(Stop::Failed(e)) => RunEvent::Failed(e),
                    Err(Stop::Gone) => return,
                };
                let _ = tx.send(last).await;
            })
        })
    }

    /// Run to the end.
    pub async fn run(&self, req: RunRequest) -> Result<RunReply, HandlerError> {
        self.stream(req).reply().await
    }

    /// The plugin.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.inner.plugin
    }

    /// The request an exec carries: `agent:NAME` or a command, the input
    /// with its `$`-keys, the router's tier.
    pub fn request_for(&self, req: &ExecRequest) -> Result<RunRequest, HandlerError> {
        let target = Target::parse(&req.command);
        let p = &self.inner.plugin;
        let known = match &target {
            Target::Agent(a) => p.agent(a).is_some(),
            Target::Command(c) => p.command(c).is_some(),
        };
        if !known {
            return Err(HandlerError::UnknownCommand {
                plugin: p.name.clone(),
                command: req.command.clone(),
            });
        }
        let input = RunInput::parse(&req.input).map_err(HandlerError::BadInput)?;
        let mut r = RunRequest::new(target, input);
        r.tier = req.model;
        r.trace_id = req.trace_id.clone();
        Ok(r)
    }
}

async fn run(
    inner: &Inner,
    req: RunRequest,
    tx: &tokio::sync::mpsc::Sender<RunEvent>,
) -> Result<RunReply, Stop> {
    let plugin = &inner.plugin;
    let input = &req.input;
    let (system, user, tools, own_tier) = match &req.target {
        Target::Agent(name) => {
            let a = plugin
                .agent(name)
                .ok_or_else(|| unknown(plugin, &req.target))?;
            (
                prompt::agent_system(plugin, a),
                prompt::agent_user(input),
                a.tools.clone(),
                a.model,
            )
        }
        Target::Command(name) => {
            let c = plugin
                .command(name)
                .ok_or_else(|| unknown(plugin, &req.target))?;
            (
                prompt::command_system(plugin, c),
                prompt::command_user(c, input),
                c.tools.clone(),
                c.model,
            )
        }
    };
    let tier = req.tier.or(own_tier).unwrap_or(ModelTier::Sonnet);
    let forced = input.model.clone();
    let model = forced.clone().unwrap_or_else(|| {
        inner
            .ctx
            .models
            .get(&tier)
            .cloned()
            .unwrap_or_else(|| "unknown".into())
    });
    let spec = &inner.spec;
    let max_depth = spec.max_task_depth.unwrap_or(DEFAULT_TASK_DEPTH);
    let policy = ToolPolicy::new(
        &plugin.name,
        &req.target.to_string(),
        &tools,
        inner.mcp_servers.iter().cloned(),
        spec.sandbox.network,
        input.depth < max_depth,
        max_depth,
    );
    let ws = inner
        .workspaces
        .create(spec.workspace.keep)
        .map_err(|e| Stop::Failed(HandlerError::Failed(e)))?;
    if spec.workspace.seed {
        ws.seed(&input.files, spec.workspace.max_kb * 1024)
            .map_err(|e| Stop::Failed(HandlerError::BadInput(e)))?;
    } else if !input.files.is_empty() {
        return Err(Stop::Failed(HandlerError::BadInput(format!(
            "files: plugin {} does not take files ([llm.workspace] seed = false)",
            plugin.name
        ))));
    }
    let uses_files = policy.offered().iter().any(|t| {
        matches!(
            t.name.as_str(),
            "Read" | "Write" | "Edit" | "Glob" | "Grep" | "Bash"
        )
    });
    let system = if uses_files {
        format!(
            "{system}\n\nYour working directory is {}; relative paths resolve there.",
            ws.dir().display()
        )
    } else {
        system
    };
    let cfg = LoopConfig {
        model: model.clone(),
        system,
        history: req.history.clone(),
        user,
        max_turns: input
            .max_turns
            .or(spec.max_turns)
            .unwrap_or(DEFAULT_MAX_TURNS),
        max_tokens: input
            .max_tokens
            .or(spec.max_tokens)
            .unwrap_or(DEFAULT_MAX_TOKENS),
        budget_usd: input.budget_usd,
        temperature: req.temperature,
        first_tool_choice: req.tool_choice.clone(),
    };
    let mut lp = AgentLoop::new(cfg, policy, inner.prices.clone());
    tx.send(RunEvent::Start {
        plugin: plugin.name.clone(),
        target: req.target.to_string(),
        model: model.clone(),
        tier: Some(tier),
    })
    .await
    .map_err(|_| Stop::Gone)?;
    let mut d = Driver {
        ctx: &inner.ctx,
        ws: &ws,
        tx,
        tier: Some(tier),
        forced_model: forced.is_some(),
        step_down: req.step_down,
        depth: input.depth,
        budget_usd: input.budget_usd,
        trace_id: req.trace_id.clone(),
        step_downs: vec![],
    };
    let o = d.run(&mut lp).await?;
    let files = if spec.workspace.return_files {
        collect_files(&inner.ctx.sandbox, &ws, spec.workspace.max_kb * 1024).await
    } else {
        vec![]
    };
    Ok(RunReply {
        plugin: plugin.name.clone(),
        target: req.target.to_string(),
        text: o.text,
        model: o.model,
        tier: d.tier,
        usage: o.usage,
        cost_usd: o.cost_usd,
        priced: o.priced,
        turns: o.turns,
        finish: o.finish,
        tool_calls: o.tool_calls,
        step_downs: d.step_downs,
        workspace: ws.kept().then(|| ws.dir().display().to_string()),
        files,
    })
}

fn unknown(plugin: &Plugin, t: &Target) -> Stop {
    Stop::Failed(HandlerError::UnknownCommand {
        plugin: plugin.name.clone(),
        command: t.to_string(),
    })
}

/// The workspace's files, listed and read in the sandbox (a symlink a tool
/// left cannot make the node read something the sandbox could not).
async fn collect_files(
    sandbox: &ToolSandbox,
    ws: &crate::workspace::Workspace,
    max: u64,
) -> Vec<(String, String)> {
    use crate::policy::Builtin;
    let list = sandbox
        .call(ws, Builtin::Glob, &serde_json::json!({"pattern": "**/*"}))
        .await
        .unwrap_or_default();
    let mut out = vec![];
    let mut total = 0u64;
    for path in list.lines().filter(|l| l.starts_with('/')) {
        let Ok(text) = sandbox.call(ws, Builtin::Bash, &serde_json::json!({"command": format!("cat -- '{}'", path.replace('\'', "'\\''"))})).await else {
            continue;
        };
        total += text.len() as u64;
        if total > max {
            break;
        }
        let rel = std::path::Path::new(path)
            .strip_prefix(ws.dir())
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| path.to_string());
        out.push((rel, text));
    }
    out
}

impl CommandHandler for LlmHandler {
    fn kind(&self) -> &'static str {
        "llm"
    }

    /// Run an agent (`agent:NAME`) or a command; the output is the
    /// [`RunReply`] as JSON (text, model, usage, cost, tool calls).
    fn execute(&self, req: ExecRequest) -> BoxFuture<'static, Result<ExecOutput, HandlerError>> {
        let this = self.clone();
        Box::pin(async move {
            let started = Instant::now();
            let run = this.request_for(&req)?;
            let reply = this.run(run).await?;
            output_of(&reply, started)
        })
    }

    /// As `execute`, with the model's text and tool calls sent into
    /// `progress` as they happen. A reader that goes away ends the run
    /// (dropping the run's stream closes the model call).
    fn execute_streaming(
        &self,
        req: ExecRequest,
        progress: ProgressSender,
    ) -> BoxFuture<'static, Result<ExecOutput, HandlerError>> {
        let this = self.clone();
        Box::pin(async move {
            let started = Instant::now();
            let run = this.request_for(&req)?;
            let mut events = this.stream(run);
            while let Some(ev) = events.next().await {
                let p = match ev {
                    RunEvent::Text(text) => Progress::Text { text },
                    RunEvent::ToolCall { id, name, input } => {
                        Progress::ToolCall { id, name, input }
                    }
                    RunEvent::ToolResult {
                        id,
                        name,
                        status,
                        output,
                    } => Progress::ToolResult {
                        id,
                        name,
                        status: status_name(&status).into(),
                        output,
                    },
                    RunEvent::Done(reply) => return output_of(&reply, started),
                    RunEvent::Failed(e) => return Err(e),
                    RunEvent::Start { .. } | RunEvent::StepDown(_) => continue,
                };
                if progress.send(p).await.is_err() {
                    return Err(HandlerError::Failed(
                        "the reader went away; the run was cancelled".into(),
                    ));
                }
            }
            Err(HandlerError::Failed("the run ended without a reply".into()))
        })
    }
}

fn status_name(s: &crate::ToolStatus) -> &'static str {
    use crate::ToolStatus as S;
    match s {
        S::Ok => "ok",
        S::Error => "error",
        S::Refused => "refused",
        S::NotRun => "not_run",
    }
}

/// The exec output of a finished run: the reply as JSON, with the model
/// and its token counts for the node's metrics.
fn output_of(reply: &RunReply, started: Instant) -> Result<ExecOutput, HandlerError> {
    let output = serde_json::to_string(reply)
        .map_err(|e| HandlerError::Failed(format!("cannot encode the reply: {e}")))?;
    Ok(ExecOutput {
        output,
        model: reply.tier,
        work_minutes: started.elapsed().as_secs_f64() / 60.0,
        cost_usd: reply.cost_usd,
        llm: Some(plexus_handler::ModelUse {
            model: reply.model.clone(),
            usage: plexus_handler::TokenUsage {
                input_tokens: reply.usage.input_tokens,
                output_tokens: reply.usage.output_tokens,
                cached_input_tokens: reply.usage.cached_input_tokens,
            },
        }),
    })
}
