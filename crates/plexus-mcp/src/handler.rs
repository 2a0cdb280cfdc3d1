//! The MCP command handler: one supervised connection per server.
//!
//! Each server has a supervisor task: connect (spawn the child process or open
//! the HTTP session), initialise, list the tools, publish them, then wait for
//! the connection to end. A server that exits or whose connection breaks is
//! restarted within the plugin's restart intensity (`placement.maxRestarts`
//! in `restartWindowSecs`); past it the server is marked `failed`. Calls to a
//! server that is not up fail at once with the reason, as `Failed`, so they
//! count against the plugin's circuit breaker.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use parking_lot::{Mutex, RwLock};
use plexus_catalog::{McpSpec, Plugin};
use plexus_handler::{
    CommandHandler, DiscoveredCommand, ExecOutput, ExecRequest, HandlerError, HandlerReport,
    ServerStatus,
};
use plexus_resilience::restart::{Decision, RestartIntensity};
use process_wrap::tokio::{CommandWrap, KillOnDrop, ProcessGroup, ProcessSession};
use rmcp::model::CallToolRequestParams;
use rmcp::service::RunningService;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{Peer, RoleClient, ServiceExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{watch, Notify};

use crate::config::{self, ServerConfig, Transport};
use crate::output;

/// Supervision settings of a plugin's servers.
#[derive(Debug, Clone)]
pub struct McpOptions {
    /// Time to spawn or reach a server, initialise and list its tools.
    pub start_timeout: Duration,
    /// Restarts allowed within `restart_window` before a server is `failed`.
    pub max_restarts: u32,
    pub restart_window: Duration,
    /// Pause before a restart, so a crash loop does not spin.
    pub restart_delay: Duration,
    /// When a `failed` server is tried again (doubling each time, up to
    /// [`MAX_FAILED_RETRY`]); `None` leaves it failed.
    pub failed_retry: Option<Duration>,
}

/// Longest wait between tries of a `failed` server.
pub const MAX_FAILED_RETRY: Duration = Duration::from_secs(600);

impl McpOptions {
    /// The options a plugin's manifest gives.
    pub fn for_plugin(plugin: &Plugin, spec: &McpSpec) -> McpOptions {
        let pl = &plugin.manifest.placement;
        McpOptions {
            start_timeout: Duration::from_millis(spec.start_timeout_ms),
            max_restarts: pl.max_restarts,
            restart_window: Duration::from_secs(pl.restart_window_secs),
            restart_delay: Duration::from_millis(100),
            failed_retry: (spec.retry_failed_after_ms > 0)
                .then(|| Duration::from_millis(spec.retry_failed_after_ms)),
        }
    }
}

/// Runs a plugin's commands as tool calls on its MCP servers.
pub struct McpHandler {
    shared: Arc<Shared>,
    report: watch::Receiver<HandlerReport>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

struct Shared {
    plugin: String,
    /// Set when the servers could not even be configured.
    broken: Option<String>,
    slots: Vec<Slot>,
    /// Command name → (slot, tool name).
    commands: RwLock<HashMap<String, (usize, String)>>,
    report: watch::Sender<HandlerReport>,
}

struct Slot {
    config: ServerConfig,
    live: RwLock<Live>,
    /// Woken by a call that found the connection broken (HTTP servers give no
    /// other sign of going away).
    broken: Notify,
    /// The server's last stderr lines, for error messages.
    stderr: Arc<Mutex<VecDeque<String>>>,
}

struct Live {
    peer: Option<Peer<RoleClient>>,
    status: ServerStatus,
    /// Last known tools: kept while the server restarts, so calls to them
    /// reach the handler and fail fast instead of looking unknown.
    tools: Vec<rmcp::model::Tool>,
}

impl McpHandler {
    /// Configure `plugin`'s servers and start supervising them (needs a tokio
    /// runtime). A configuration error does not panic or stop the node: the
    /// handler answers every call with it, and the report shows it.
    pub fn start(plugin: &Plugin, spec: &McpSpec) -> McpHandler {
        let options = McpOptions::for_plugin(plugin, spec);
        let env = |k: &str| std::env::var(k).ok();
        match config::servers(plugin, spec, &env) {
            Ok(servers) => McpHandler::with_servers(&plugin.name, servers, options),
            Err(e) => {
                tracing::error!(plugin = %plugin.name, error = %e, "MCP handler not configured");
                McpHandler::broken(&plugin.name, e.to_string())
            }
        }
    }

    /// Supervise the given servers.
    pub fn with_servers(
        plugin: &str,
        servers: Vec<ServerConfig>,
        options: McpOptions,
    ) -> McpHandler {
        let slots: Vec<Slot> = servers
            .into_iter()
            .map(|config| Slot {
                live: RwLock::new(Live {
                    peer: None,
                    status: ServerStatus {
                        name: config.name.clone(),
                        transport: config.transport.kind().into(),
                        state: "starting".into(),
                        ..Default::default()
                    },
                    tools: vec![],
                }),
                config,
                broken: Notify::new(),
                stderr: Arc::new(Mutex::new(VecDeque::new())),
            })
            .collect();
        let (tx, rx) = watch::channel(HandlerReport::default());
        let shared = Arc::new(Shared {
            plugin: plugin.to_string(),
            broken: None,
            slots,
            commands: RwLock::new(HashMap::new()),
            report: tx,
        });
        shared.publish();
        let tasks = (0..shared.slots.len())
            .map(|i| tokio::spawn(supervise(shared.clone(), i, options.clone())))
            .collect();
        McpHandler {
            shared,
            report: rx,
            tasks,
        }
    }

    fn broken(plugin: &str, reason: String) -> McpHandler {
        let (tx, rx) = watch::channel(HandlerReport {
            commands: vec![],
            servers: vec![ServerStatus {
                name: plugin.to_string(),
                transport: "none".into(),
                state: "failed".into(),
                last_error: Some(reason.clone()),
                ..Default::default()
            }],
        });
        McpHandler {
            shared: Arc::new(Shared {
                plugin: plugin.to_string(),
                broken: Some(reason),
                slots: vec![],
                commands: RwLock::new(HashMap::new()),
                report: tx,
            }),
            report: rx,
            tasks: vec![],
        }
    }

    /// The current report (tools and server states).
    pub fn snapshot(&self) -> HandlerReport {
        self.report.borrow().clone()
    }
}

impl Drop for McpHandler {
    fn drop(&mut self) {
        // Ending a supervisor drops its connection, which kills the server's
        // process group.
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl CommandHandler for McpHandler {
    fn kind(&self) -> &'static str {
        "mcp"
    }

    fn execute(&self, req: ExecRequest) -> BoxFuture<'static, Result<ExecOutput, HandlerError>> {
        let shared = self.shared.clone();
        Box::pin(async move { shared.call(req).await })
    }

    fn report(&self) -> Option<watch::Receiver<HandlerReport>> {
        Some(self.report.clone())
    }
}

impl Shared {
    async fn call(&self, req: ExecRequest) -> Result<ExecOutput, HandlerError> {
        if let Some(b) = &self.broken {
            return Err(HandlerError::Failed(format!(
                "plugin {} cannot run: {b}",
                self.plugin
            )));
        }
        let name = req.command.trim_start_matches('/');
        let name = name.strip_prefix("command:").unwrap_or(name);
        let arguments = parse_arguments(&req.input)?;
        let target = self.commands.read().get(name).cloned();
        let Some((i, tool)) = target else {
            let down: Vec<String> = self
                .slots
                .iter()
                .filter_map(|s| {
                    let l = s.live.read();
                    l.peer.is_none().then(|| match &l.status.last_error {
                        Some(e) => format!("{} is {}: {e}", s.config.describe(), l.status.state),
                        None => format!("{} is {}", s.config.describe(), l.status.state),
                    })
                })
                .collect();
            if down.is_empty() || name.starts_with("agent:") {
                return Err(HandlerError::UnknownCommand {
                    plugin: self.plugin.clone(),
                    command: req.command.clone(),
                });
            }
            return Err(HandlerError::Failed(format!(
                "plugin {} cannot tell whether it has a tool {name:?}: {}",
                self.plugin,
                down.join("; ")
            )));
        };
        let slot = &self.slots[i];
        let peer = {
            let l = slot.live.read();
            match &l.peer {
                Some(p) => p.clone(),
                None => {
                    return Err(HandlerError::Failed(format!(
                        "{} of plugin {} is {}: {}",
                        slot.config.describe(),
                        self.plugin,
                        l.status.state,
                        l.status
                            .last_error
                            .as_deref()
                            .unwrap_or("not connected yet")
                    )))
                }
            }
        };
        let mut params = CallToolRequestParams::new(tool.clone());
        if let Some(a) = arguments {
            params = params.with_arguments(a);
        }
        match peer.call_tool(params).await {
            Ok(r) => match output::tool_output(&r) {
                Ok(v) => Ok(ExecOutput {
                    output: v.to_string(),
                    model: None,
                    work_minutes: 0.0,
                    cost_usd: 0.0,
                    llm: None,
                }),
                Err(msg) => Err(HandlerError::Failed(format!(
                    "tool {tool} of {} reported an error: {msg}",
                    slot.config.describe()
                ))),
            },
            Err(e) => {
                if output::is_connection_lost(&e) {
                    slot.broken.notify_one();
                }
                Err(output::call_error(
                    &self.plugin,
                    &slot.config.describe(),
                    &tool,
                    &e,
                ))
            }
        }
    }

    fn set_status(&self, i: usize, f: impl FnOnce(&mut Live)) {
        f(&mut self.slots[i].live.write());
        self.publish();
    }

    /// Rebuild the command table and the report from every slot.
    fn publish(&self) {
        let mut used = BTreeSet::new();
        let mut table = HashMap::new();
        let mut commands: Vec<DiscoveredCommand> = vec![];
        let mut servers = vec![];
        for (i, s) in self.slots.iter().enumerate() {
            let l = s.live.read();
            for t in &l.tools {
                // A name two servers share is reached as `{server}__{tool}`.
                let mut name = t.name.to_string();
                if used.contains(&name) {
                    name = format!("{}__{}", s.config.name, t.name);
                }
                used.insert(name.clone());
                table.insert(name.clone(), (i, t.name.to_string()));
                commands.push(output::discovered(&s.config.name, &name, t));
            }
            let mut st = l.status.clone();
            st.tools = l.tools.len() as u32;
            servers.push(st);
        }
        *self.commands.write() = table;
        self.report
            .send_replace(HandlerReport { commands, servers });
    }

    fn last_stderr(&self, i: usize) -> Option<String> {
        self.slots[i].stderr.lock().back().cloned()
    }
}

/// A tool call's arguments: a JSON object, or nothing.
fn parse_arguments(input: &str) -> Result<Option<rmcp::model::JsonObject>, HandlerError> {
    if input.trim().is_empty() {
        return Ok(None);
    }
    match serde_json::from_str::<serde_json::Value>(input) {
        Ok(serde_json::Value::Object(m)) => Ok(Some(m)),
        Ok(serde_json::Value::Null) => Ok(None),
        Ok(other) => Err(HandlerError::BadInput(format!(
            "the input of an MCP tool must be a JSON object of its arguments, not {}",
            kind_of(&other)
        ))),
        Err(e) => Err(HandlerError::BadInput(format!("input is not JSON: {e}"))),
    }
}

fn kind_of(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// A live connection: the running client service and the child's pid.
struct Connection {
    running: RunningService<RoleClient, ()>,
    pid: Option<u32>,
    tools: Vec<rmcp::model::Tool>,
}

/// Keep server `i` running.
async fn supervise(shared: Arc<Shared>, i: usize, options: McpOptions) {
    let mut intensity = RestartIntensity::new(options.max_restarts, options.restart_window);
    let mut restarts = 0u32;
    let mut retry_wait = options.failed_retry;
    let plugin = shared.plugin.clone();
    let describe = shared.slots[i].config.describe();
    loop {
        // A sandboxed server its uid cannot start fails at once, naming the
        // path that blocks it; it is looked at again later (fixed by then?),
        // as a server given up is.
        if let Err(why) = preflight(&shared.slots[i].config) {
            tracing::error!(%plugin, server = %describe, reason = %why, "MCP server cannot start in its sandbox; marked failed");
            let next = match retry_wait {
                Some(w) => format!("; next try in {} s", w.as_secs_f64().ceil()),
                None => String::new(),
            };
            shared.set_status(i, |l| {
                l.peer = None;
                l.status.state = "failed".into();
                l.status.pid = None;
                l.status.last_error = Some(format!("{why}{next}"));
            });
            let Some(wait) = retry_wait else { return };
            tokio::time::sleep(wait).await;
            retry_wait = Some((wait * 2).min(MAX_FAILED_RETRY));
            continue;
        }
        let started = tokio::time::timeout(options.start_timeout, connect(&shared, i)).await;
        let why = match started {
            Ok(Ok(conn)) => {
                let peer = conn.running.peer().clone();
                tracing::info!(%plugin, server = %describe, pid = ?conn.pid, tools = conn.tools.len(), "MCP server up");
                shared.set_status(i, |l| {
                    l.peer = Some(peer);
                    l.tools = conn.tools;
                    l.status.state = "running".into();
                    l.status.pid = conn.pid;
                    l.status.last_error = None;
                });
                let slot = &shared.slots[i];
                let running = conn.running;
                tokio::select! {
                    r = running.waiting() => match r {
                        Ok(reason) => format!("the connection closed ({reason:?}): the server exited or hung up"),
                        Err(e) => format!("the connection task failed: {e}"),
                    },
                    _ = slot.broken.notified() => "a call found the connection broken".to_string(),
                }
            }
            Ok(Err(e)) => e,
            Err(_) => format!(
                "did not start and list its tools within {} ms",
                options.start_timeout.as_millis()
            ),
        };
        let why = match shared.last_stderr(i) {
            Some(line) => format!("{why}; last stderr line: {line}"),
            None => why,
        };
        match intensity.record(Instant::now()) {
            Decision::Restart => {
                restarts += 1;
                tracing::warn!(%plugin, server = %describe, reason = %why, restarts, "MCP server down; restarting");
                shared.set_status(i, |l| {
                    l.peer = None;
                    l.status.state = "restarting".into();
                    l.status.pid = None;
                    l.status.restarts = restarts;
                    l.status.last_error = Some(why);
                });
                tokio::time::sleep(options.restart_delay).await;
            }
            Decision::GiveUp => {
                tracing::error!(%plugin, server = %describe, reason = %why, restarts, retry_in_ms = retry_wait.map(|w| w.as_millis() as u64), "MCP server restarted too often; marked failed");
                let next = match retry_wait {
                    Some(w) => format!("; next try in {} s", w.as_secs_f64().ceil()),
                    None => String::new(),
                };
                let why = format!(
                    "restarted {restarts} times within {} s, giving up; last error: {why}{next}",
                    options.restart_window.as_secs()
                );
                shared.set_status(i, |l| {
                    l.peer = None;
                    l.status.state = "failed".into();
                    l.status.pid = None;
                    l.status.last_error = Some(why);
                });
                // Like a crash-looping pod: tried again later, less and
                // less often, so a server whose cause was fixed (a package
                // installed, a service back) comes back without a node
                // restart.
                let Some(wait) = retry_wait else { return };
                tokio::time::sleep(wait).await;
                retry_wait = Some((wait * 2).min(MAX_FAILED_RETRY));
                intensity = RestartIntensity::new(options.max_restarts, options.restart_window);
                tracing::info!(%plugin, server = %describe, "trying a failed MCP server again");
            }
        }
    }
}

/// Whether the sandbox's uid can start a sandboxed stdio server: its
/// program, interpreters, venv and working directory (`plexus_process::reach`).
fn preflight(cfg: &ServerConfig) -> Result<(), String> {
    let (Some(sb), Transport::Stdio { program, env, .. }) = (&cfg.sandbox, &cfg.transport) else {
        return Ok(());
    };
    let landlock = (sb.spec.landlock && plexus_process::support().landlock != "none").then(|| {
        plexus_process::sandbox::SYSTEM_READ
            .iter()
            .map(std::path::PathBuf::from)
            .chain(sb.read.iter().cloned())
            .collect()
    });
    let check = plexus_process::reach::Check {
        identity: plexus_process::reach::Identity::sandboxed(),
        path_env: env
            .get("PATH")
            .cloned()
            .unwrap_or_else(|| plexus_process::DEFAULT_PATH.into()),
        workdir: sb.workdir.clone(),
        landlock,
    };
    check
        .program(program)
        .map_err(|e| format!("{} cannot start in its sandbox: {e}", cfg.describe()))
}

/// Spawn or reach server `i`, initialise, list its tools.
async fn connect(shared: &Shared, i: usize) -> Result<Connection, String> {
    let slot = &shared.slots[i];
    let cfg = &slot.config;
    let (running, pid) = match &cfg.transport {
        Transport::Stdio {
            program,
            args,
            env,
            cwd,
        } => {
            let mut cmd = tokio::process::Command::new(program);
            cmd.args(args);
            let wrap = match &cfg.sandbox {
                None => {
                    cmd.envs(env);
                    if let Some(d) = cwd {
                        cmd.current_dir(d);
                    }
                    let mut wrap = CommandWrap::from(cmd);
                    // Its own process group, killed as a whole: a server that
                    // starts helpers (npx, a shell) leaves nothing behind.
                    wrap.wrap(ProcessGroup::leader()).wrap(KillOnDrop);
                    wrap
                }
                Some(sb) => {
                    // As a process plugin: only the declared environment.
                    cmd.env_clear();
                    if !env.contains_key("PATH") {
                        cmd.env("PATH", plexus_process::DEFAULT_PATH);
                    }
                    cmd.envs(env).current_dir(&sb.workdir);
                    let plan = plexus_process::sandbox::Plan::new(
                        &sb.limits, &sb.spec, &sb.read, &sb.write,
                    );
                    let r = &plan.report;
                    tracing::info!(plugin = %shared.plugin, server = %cfg.name, network = r.network, landlock = r.landlock, user_namespace = r.user_namespace, uid = ?r.uid, "MCP server sandboxed");
                    let summary = r.to_string();
                    shared.set_status(i, |l| l.status.sandbox = Some(summary));
                    plan.apply_without_session(&mut cmd);
                    let mut wrap = CommandWrap::from(cmd);
                    // The session (and group) is made after the sandbox's
                    // steps, and killed as a whole.
                    wrap.wrap(ProcessSession).wrap(KillOnDrop);
                    wrap
                }
            };
            let (transport, stderr) = TokioChildProcess::builder(wrap)
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("cannot start {program}: {e}"))?;
            let pid = transport.id();
            if let Some(err) = stderr {
                slot.stderr.lock().clear();
                tokio::spawn(log_stderr(
                    BufReader::new(err).lines(),
                    shared.plugin.clone(),
                    cfg.name.clone(),
                    slot.stderr.clone(),
                ));
            }
            let running = ()
                .serve(transport)
                .await
                .map_err(|e| format!("MCP handshake with {program} failed: {e}"))?;
            (running, pid)
        }
        Transport::Http { url } => {
            let transport = StreamableHttpClientTransport::from_uri(url.as_str());
            let running =
                ().serve(transport)
                    .await
                    .map_err(|e| format!("cannot reach {url}: {e}"))?;
            (running, None)
        }
    };
    let tools = running
        .list_all_tools()
        .await
        .map_err(|e| format!("listing its tools failed: {e}"))?;
    Ok(Connection {
        running,
        pid,
        tools,
    })
}

/// Log a server's stderr, keeping its last lines for error messages.
async fn log_stderr(
    mut lines: tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
    plugin: String,
    server: String,
    ring: Arc<Mutex<VecDeque<String>>>,
) {
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(%plugin, %server, "stderr: {line}");
        let mut r = ring.lock();
        if r.len() == 5 {
            r.pop_front();
        }
        r.push_back(line);
    }
}
