//! The bundled tiny model (llama.cpp's server with SmolLM2-135M, installed
//! by `scripts/setup-llm.sh`) as a child of the test, on 127.0.0.1. The
//! tests fail, not skip, when it is not installed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The id the server answers to.
pub const MODEL: &str = "smollm2-135m-instruct";

/// A running model server; killed when dropped.
pub struct LlmServer {
    pub port: u16,
    child: Child,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

impl LlmServer {
    /// Start the server (clients must send `api_key` when given) with a
    /// context window of `ctx` tokens per slot, and wait for its ready line.
    pub fn start(api_key: Option<&str>, ctx: u32) -> LlmServer {
        let venv = std::env::var_os("PLEXUS_LLM_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| root().join(".venv-llm"));
        let python = venv.join("bin").join("python");
        assert!(
            python.exists(),
            "{} is missing: run scripts/setup-llm.sh (or set PLEXUS_LLM_VENV)",
            python.display()
        );
        let port = free_port();
        let mut cmd = Command::new(python);
        cmd.arg(root().join("scripts").join("llm-server.py"))
            .args(["--port", &port.to_string(), "--ctx", &ctx.to_string()])
            .args(["--parallel", "2", "--exit-on-stdin-close"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(k) = api_key {
            cmd.env("LLM_SERVER_API_KEY", k);
        }
        let mut child = cmd.spawn().expect("start the model server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if l.starts_with("llm-server ready") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(120)).is_err() {
            let _ = child.kill();
            panic!("the model server did not become ready within 120 s");
        }
        LlmServer { port, child }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A counter of the server's own Prometheus metrics (`llamacpp:NAME`).
    pub fn metric(&self, name: &str) -> f64 {
        let text = ureq::get(&format!("{}/metrics", self.base_url()))
            .call()
            .expect("GET /metrics")
            .into_body()
            .read_to_string()
            .expect("metrics text");
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("llamacpp:{name} ")))
            .unwrap_or_else(|| panic!("no metric {name} in {text}"))
            .trim()
            .parse()
            .expect("a number")
    }

    /// The flags that point a node at this server with `provider`.
    pub fn node_flags(&self, provider: &str) -> Vec<String> {
        vec![
            "--llm-provider".into(),
            provider.into(),
            "--llm-base-url".into(),
            self.base_url(),
            "--llm-model-map".into(),
            format!("haiku={MODEL},sonnet={MODEL},opus={MODEL}"),
        ]
    }
}

impl Drop for LlmServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
