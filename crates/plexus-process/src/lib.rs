//! The process handler: a plugin's commands run as real executables.
//!
//! Each command declared under `[handler.commands.NAME]` in the plugin's
//! manifest starts a fresh process: argv from templates over the input JSON
//! (no shell), a scrubbed environment (only declared variables), a working
//! directory, a timeout that kills the whole process group, a cap on stdout,
//! rlimits (CPU, address space, file size, processes, open files), a new
//! user + network namespace where the kernel allows it, and a landlock
//! filesystem allow-list (see [`sandbox`]). The input JSON is also written
//! to stdin; stdout must be JSON and becomes the result; stderr is logged.
//!
//! A plugin may also keep one server process (`[handler.server]`), reached
//! with line-delimited JSON (see [`server`]); it runs in the same sandbox and
//! is restarted by the node's plugin supervisor when it exits.

pub mod reach;
pub mod run;
pub mod sandbox;
pub mod server;
pub mod template;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use plexus_catalog::{Plugin, ProcessSpec};
use plexus_handler::{CommandHandler, ExecOutput, ExecRequest, HandlerError};
use serde_json::Value;

pub use sandbox::{support, Report, Support};
pub use server::{PluginPublish, PublishSink, Server};

/// `PATH` of a process whose manifest does not set one.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Runs a plugin's commands as sandboxed processes.
pub struct ProcessHandler {
    plugin: Arc<Plugin>,
    spec: Arc<ProcessSpec>,
    base: PathBuf,
    workdir: PathBuf,
    env: Vec<(String, String)>,
    read: Vec<PathBuf>,
    write: Vec<PathBuf>,
    server: Option<Arc<Server>>,
}

impl ProcessHandler {
    /// A handler for `plugin`; relative paths are taken from the directory
    /// of its manifest file (the current directory for built-in manifests).
    /// `sink` receives what the server asks to publish.
    pub fn new(
        plugin: Arc<Plugin>,
        spec: ProcessSpec,
        sink: Option<PublishSink>,
    ) -> ProcessHandler {
        let base = plugin
            .manifest_file
            .as_ref()
            .filter(|f| !f.starts_with("<embedded>"))
            .and_then(|f| f.parent().map(Path::to_path_buf))
            .map(absolute)
            .unwrap_or_else(|| absolute(PathBuf::from(".")));
        let resolve = |p: &str| -> PathBuf {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let workdir = spec
            .workdir
            .as_deref()
            .map(resolve)
            .unwrap_or_else(|| base.clone());
        let mut env: Vec<(String, String)> = vec![];
        if !spec.env.contains_key("PATH") {
            env.push(("PATH".into(), DEFAULT_PATH.into()));
        }
        for (k, v) in &spec.env {
            env.push((k.clone(), v.clone()));
        }
        for k in &spec.inherit_env {
            if let Ok(v) = std::env::var(k) {
                env.retain(|(n, _)| n != k);
                env.push((k.clone(), v));
            }
        }
        let mut read: Vec<PathBuf> = vec![base.clone(), workdir.clone()];
        read.extend(spec.sandbox.read_paths.iter().map(|p| resolve(p)));
        let write: Vec<PathBuf> = spec
            .sandbox
            .write_paths
            .iter()
            .map(|p| resolve(p))
            .collect();
        let spec = Arc::new(spec);
        let mut h = ProcessHandler {
            plugin,
            spec,
            base,
            workdir,
            env,
            read,
            write,
            server: None,
        };
        if let Some(s) = h.spec.server.clone() {
            let program = h.program_path(&s.program);
            let mut read = h.read.clone();
            if let Some(d) = program.parent() {
                read.push(d.to_path_buf());
            }
            let inv = run::Invocation {
                plugin: h.plugin.name.clone(),
                command: "server".into(),
                program,
                args: s.args.clone(),
                env: h.env.clone(),
                workdir: h.workdir.clone(),
                stdin: None,
                timeout: Duration::from_millis(h.spec.timeout_ms),
                limits: h.spec.limits.clone(),
            };
            let (limits, sandbox, write) = (
                h.spec.limits.clone(),
                h.spec.sandbox.clone(),
                h.write.clone(),
            );
            h.server = Some(Server::new(
                inv,
                Box::new(move || sandbox::Plan::new(&limits, &sandbox, &read, &write)),
                sink,
            ));
        }
        let r = h.sandbox_report();
        tracing::info!(plugin = %h.plugin.name, network = r.network, landlock = r.landlock, user_namespace = r.user_namespace, "process handler ready");
        h
    }

    /// What the sandbox of this plugin's processes enforces on this kernel.
    pub fn sandbox_report(&self) -> Report {
        sandbox::Plan::new(&self.spec.limits, &self.spec.sandbox, &[], &[]).report
    }

    /// The plugin's server, if it declares one.
    pub fn server(&self) -> Option<&Arc<Server>> {
        self.server.as_ref()
    }

    fn program_path(&self, program: &str) -> PathBuf {
        if program.contains('/') {
            let p = Path::new(program);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                self.base.join(p)
            }
        } else {
            PathBuf::from(program)
        }
    }
}

fn absolute(p: PathBuf) -> PathBuf {
    std::fs::canonicalize(&p).unwrap_or(p)
}

fn parse_input(input: &str) -> Result<Value, HandlerError> {
    if input.trim().is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    serde_json::from_str(input)
        .map_err(|e| HandlerError::BadInput(format!("input is not JSON: {e}")))
}

impl CommandHandler for ProcessHandler {
    fn kind(&self) -> &'static str {
        "process"
    }

    fn execute(&self, req: ExecRequest) -> BoxFuture<'static, Result<ExecOutput, HandlerError>> {
        let name = req
            .command
            .strip_prefix("command:")
            .unwrap_or(&req.command)
            .trim_start_matches('/')
            .to_string();
        let started = Instant::now();
        let timeout_default = Duration::from_millis(self.spec.timeout_ms);
        let Some(c) = self.spec.commands.get(&name).cloned() else {
            let Some(server) = self.server.clone() else {
                let e = HandlerError::UnknownCommand {
                    plugin: self.plugin.name.clone(),
                    command: req.command.clone(),
                };
                return Box::pin(async move { Err(e) });
            };
            return Box::pin(async move {
                let input = parse_input(&req.input)?;
                let out = server
                    .call(&name, input, req.caller.as_deref(), timeout_default)
                    .await?;
                Ok(output(out, started))
            });
        };
        let program = self.program_path(&c.program);
        let mut read = self.read.clone();
        if let Some(d) = program.parent() {
            read.push(d.to_path_buf());
        }
        let spec = self.spec.clone();
        let mut env = self.env.clone();
        // Who asked, as the node authenticated them; never from the input.
        env.retain(|(k, _)| k != "PLEXUS_CALLER");
        if let Some(c) = &req.caller {
            env.push(("PLEXUS_CALLER".into(), c.clone()));
        }
        let workdir = self.workdir.clone();
        let write = self.write.clone();
        let plugin = self.plugin.name.clone();
        Box::pin(async move {
            let input = parse_input(&req.input)?;
            let args = template::render_args(&c.args, &input)?;
            let inv = run::Invocation {
                plugin: plugin.clone(),
                command: name.clone(),
                program,
                args,
                env,
                workdir,
                stdin: c.stdin.then(|| req.input.clone().into_bytes()),
                timeout: c
                    .timeout_ms
                    .map(Duration::from_millis)
                    .unwrap_or(timeout_default),
                limits: spec.limits.clone(),
            };
            let plan = sandbox::Plan::new(&spec.limits, &spec.sandbox, &read, &write);
            let done = run::run(&inv, plan).await?;
            run::classify(&done.ended, &done.stderr_tail, &spec.limits)?;
            let text = String::from_utf8_lossy(&done.stdout);
            let value = if text.trim().is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).map_err(|e| {
                    HandlerError::Failed(format!(
                        "{plugin}/{name} exited 0 but its stdout is not JSON ({e}): {:?}",
                        text.chars().take(200).collect::<String>()
                    ))
                })?
            };
            tracing::debug!(plugin = %plugin, command = %name, ms = done.elapsed.as_millis() as u64, "process finished");
            Ok(output(value, started))
        })
    }

    fn start(&self) -> BoxFuture<'static, Result<(), HandlerError>> {
        let r = match &self.server {
            Some(s) => s.start(),
            None => Ok(()),
        };
        Box::pin(async move { r })
    }

    fn stopped(&self) -> BoxFuture<'static, String> {
        match &self.server {
            Some(s) => Box::pin(s.stopped()),
            None => Box::pin(futures::future::pending()),
        }
    }
}

fn output(v: Value, started: Instant) -> ExecOutput {
    ExecOutput {
        output: v.to_string(),
        model: None,
        work_minutes: started.elapsed().as_secs_f64() / 60.0,
        cost_usd: 0.0,
        llm: None,
    }
}

#[cfg(test)]
mod tests;
