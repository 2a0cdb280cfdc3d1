//! A plugin's long-running server process.
//!
//! Protocol: line-delimited JSON over the server's stdin and stdout.
//!
//! - request (node → server): `{"id": 7, "command": "get", "input": {...}}`
//! - response (server → node): `{"id": 7, "output": ...}` or `{"id": 7, "error": "why"}`;
//!   `"badInput": true` next to `error` makes it the caller's fault (bad input)
//! - publish (server → node, any time): `{"publish": {"topic": "...", "payload": ..., "source": "..."}}`;
//!   the node publishes it on the bus as the plugin, after checking the
//!   topic and the source (a source other than the plugin is refused).
//!
//! Stderr is logged. When the process exits (or breaks the protocol), every
//! pending request fails at once and [`Server::stopped`] resolves: the plugin
//! host then stops, and its supervisor restarts it within the plugin's
//! restart intensity, which starts a new server.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use plexus_handler::{HandlerError, Limit};
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{oneshot, watch};

use crate::run::{classify, log_stderr, Ended, Invocation};
use crate::sandbox::{kill_group, Plan};

/// What a server asks the node to publish.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PluginPublish {
    pub topic: String,
    #[serde(default)]
    pub payload: Value,
    /// Who the server claims to be; absent means the plugin itself.
    #[serde(default)]
    pub source: Option<String>,
}

/// Where a plugin's publish requests go (the node checks and publishes them).
pub type PublishSink = Arc<dyn Fn(&str, PluginPublish) + Send + Sync>;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, HandlerError>>>>>;

struct Running {
    generation: u64,
    stdin: Arc<tokio::sync::Mutex<tokio::process::ChildStdin>>,
    pending: Pending,
    pgid: u32,
}

/// The server of one plugin, started and restarted on demand.
pub struct Server {
    plugin: String,
    inv: Invocation,
    make_plan: Box<dyn Fn() -> Plan + Send + Sync>,
    sink: Option<PublishSink>,
    running: Mutex<Option<Running>>,
    next_id: AtomicU64,
    generation: AtomicU64,
    /// (generation that stopped, why).
    stopped_tx: watch::Sender<(u64, String)>,
}

impl Server {
    pub fn new(
        inv: Invocation,
        make_plan: Box<dyn Fn() -> Plan + Send + Sync>,
        sink: Option<PublishSink>,
    ) -> Arc<Server> {
        let (stopped_tx, _) = watch::channel((0, String::new()));
        Arc::new(Server {
            plugin: inv.plugin.clone(),
            inv,
            make_plan,
            sink,
            running: Mutex::new(None),
            next_id: AtomicU64::new(1),
            generation: AtomicU64::new(0),
            stopped_tx,
        })
    }

    /// The OS process id of the running server (its process group id).
    pub fn pid(&self) -> Option<u32> {
        self.running.lock().as_ref().map(|r| r.pgid)
    }

    /// Start the server unless it is running.
    pub fn start(self: &Arc<Self>) -> Result<(), HandlerError> {
        let mut guard = self.running.lock();
        if guard.is_some() {
            return Ok(());
        }
        let plan = (self.make_plan)();
        let report = plan.report.clone();
        let mut cmd = crate::run::command(&self.inv, plan);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| {
            HandlerError::Failed(format!(
                "could not start the server {} of plugin {}: {e}",
                self.inv.program.display(),
                self.plugin
            ))
        })?;
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let pgid = child.id().unwrap_or(0);
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            kill_group(pgid);
            return Err(HandlerError::Failed("server pipes missing".into()));
        };
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        tracing::info!(plugin = %self.plugin, pid = pgid, generation, network = report.network, landlock = report.landlock, "server process started");
        let cap = (self.inv.limits.output_kb as usize).saturating_mul(1024);
        let err_task = tokio::spawn(log_stderr(
            child.stderr.take(),
            self.plugin.clone(),
            "server".into(),
            cap,
        ));
        // Reader: responses and publish requests; a protocol breach ends the server.
        let reader = {
            let pending = pending.clone();
            let sink = self.sink.clone();
            let plugin = self.plugin.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(stdout);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    let n = match (&mut r)
                        .take(cap as u64 + 1)
                        .read_until(b'\n', &mut buf)
                        .await
                    {
                        Ok(n) => n,
                        Err(e) => return Some(format!("reading its stdout failed: {e}")),
                    };
                    if n == 0 {
                        return None;
                    }
                    if buf.len() > cap {
                        return Some(format!(
                            "{} limit exceeded: a line over {} KiB on stdout",
                            Limit::Output,
                            cap / 1024
                        ));
                    }
                    if buf.iter().all(|b| b.is_ascii_whitespace()) {
                        continue;
                    }
                    match serde_json::from_slice::<Line>(&buf) {
                        Ok(Line::Publish { publish }) => match &sink {
                            Some(s) => s(&plugin, publish),
                            None => {
                                tracing::warn!(plugin = %plugin, "server asked to publish but this handler has no bus")
                            }
                        },
                        Ok(Line::Reply {
                            id,
                            output,
                            error,
                            bad_input,
                        }) => {
                            let tx = pending.lock().remove(&id);
                            let r = match error {
                                Some(e) if bad_input => Err(HandlerError::BadInput(error_text(&e))),
                                Some(e) => Err(HandlerError::Failed(error_text(&e))),
                                None => Ok(output.unwrap_or(Value::Null)),
                            };
                            match tx {
                                Some(tx) => {
                                    let _ = tx.send(r);
                                }
                                None => {
                                    tracing::debug!(plugin = %plugin, id, "reply to an unknown or timed-out request")
                                }
                            }
                        }
                        Err(e) => {
                            let text = String::from_utf8_lossy(&buf);
                            tracing::warn!(plugin = %plugin, error = %e, line = %text.trim_end(), "server wrote a line that is not protocol JSON; ignored");
                        }
                    }
                }
            })
        };
        // Monitor: waits for the end, fails what is pending, tells the host.
        {
            // Weak: a dropped handler must drop (and kill) its server.
            let me = Arc::downgrade(self);
            let plugin = self.plugin.clone();
            let pending = pending.clone();
            let limits = self.inv.limits.clone();
            tokio::spawn(async move {
                let mut child = child;
                let breach = tokio::select! {
                    st = child.wait() => Err(st),
                    r = reader => Ok(r.ok().flatten()),
                };
                let (status, breach) = match breach {
                    Err(st) => (st.ok(), None),
                    Ok(b) => {
                        // Stdout closed or broke the protocol: end the server.
                        kill_group(pgid);
                        (child.wait().await.ok(), b)
                    }
                };
                kill_group(pgid);
                let tail = match tokio::time::timeout(Duration::from_secs(2), err_task).await {
                    Ok(Ok(t)) => t,
                    _ => String::new(),
                };
                let reason = match breach {
                    Some(b) => b,
                    None => {
                        use std::os::unix::process::ExitStatusExt;
                        let ended = match status {
                            Some(s) => match (s.code(), s.signal()) {
                                (Some(c), _) => Ended::Exited(c),
                                (None, Some(sig)) => Ended::Signalled(sig),
                                _ => Ended::Exited(-1),
                            },
                            None => Ended::Exited(-1),
                        };
                        match classify(&ended, &tail, &limits) {
                            Ok(()) => "exited with code 0".to_string(),
                            Err(e) => e.to_string(),
                        }
                    }
                };
                tracing::warn!(plugin = %plugin, pid = pgid, generation, %reason, "server process stopped");
                let me = me.upgrade();
                if let Some(me) = &me {
                    let mut g = me.running.lock();
                    if g.as_ref().is_some_and(|r| r.generation == generation) {
                        *g = None;
                    }
                }
                let waiting: Vec<_> = pending.lock().drain().collect();
                for (_, tx) in waiting {
                    let _ = tx.send(Err(HandlerError::Failed(format!(
                        "the server of {plugin} stopped while handling the request: {reason}"
                    ))));
                }
                if let Some(me) = me {
                    me.stopped_tx.send_replace((generation, reason));
                }
            });
        }
        *guard = Some(Running {
            generation,
            stdin: Arc::new(tokio::sync::Mutex::new(stdin)),
            pending,
            pgid,
        });
        Ok(())
    }

    /// Resolves with the reason once the server running now has stopped
    /// (at once if none is running).
    pub fn stopped(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let current = self.running.lock().as_ref().map(|r| r.generation);
        let mut rx = self.stopped_tx.subscribe();
        async move {
            let Some(g) = current else {
                return "the server is not running".to_string();
            };
            loop {
                {
                    let v = rx.borrow_and_update();
                    if v.0 >= g {
                        return v.1.clone();
                    }
                }
                if rx.changed().await.is_err() {
                    return "the server's handler was dropped".to_string();
                }
            }
        }
    }

    /// Send one request and wait for its reply.
    pub async fn call(
        &self,
        command: &str,
        input: Value,
        caller: Option<&str>,
        timeout: Duration,
    ) -> Result<Value, HandlerError> {
        let (stdin, pending) = {
            let g = self.running.lock();
            match g.as_ref() {
                Some(r) => (r.stdin.clone(), r.pending.clone()),
                None => {
                    let why = self.stopped_tx.borrow().1.clone();
                    return Err(HandlerError::Failed(format!(
                        "the server of {} is not running ({}); it is being restarted",
                        self.plugin,
                        if why.is_empty() {
                            "not started"
                        } else {
                            why.as_str()
                        }
                    )));
                }
            }
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        pending.lock().insert(id, tx);
        let mut req = serde_json::json!({"id": id, "command": command, "input": input});
        if let Some(c) = caller {
            req["caller"] = c.into();
        }
        let mut line = serde_json::to_vec(&req)
            .map_err(|e| HandlerError::Failed(format!("encoding the request: {e}")))?;
        line.push(b'\n');
        let written = {
            let mut w = stdin.lock().await;
            match tokio::time::timeout(timeout, async {
                w.write_all(&line).await?;
                w.flush().await
            })
            .await
            {
                Ok(r) => r.map_err(|e| format!("writing to the server failed: {e}")),
                Err(_) => Err("the server does not read its stdin".to_string()),
            }
        };
        if let Err(e) = written {
            pending.lock().remove(&id);
            return Err(HandlerError::Failed(format!("{}: {e}", self.plugin)));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(HandlerError::Failed(format!(
                "the server of {} dropped the request",
                self.plugin
            ))),
            Err(_) => {
                pending.lock().remove(&id);
                Err(HandlerError::Timeout(timeout.as_millis() as u64))
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(r) = self.running.lock().take() {
            kill_group(r.pgid);
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Line {
    Publish {
        publish: PluginPublish,
    },
    Reply {
        id: u64,
        #[serde(default)]
        output: Option<Value>,
        #[serde(default)]
        error: Option<Value>,
        /// The request itself was wrong (not retried, not counted by the breaker).
        #[serde(default, rename = "badInput")]
        bad_input: bool,
    },
}

fn error_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
