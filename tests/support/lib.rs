//! Test harness: start real `plexus node` processes on loopback, drive them
//! through the `plexus` CLI, kill, freeze and restart them.
//!
//! The binary is the workspace's `target/<profile>/plexus`; `.ci/run` builds
//! it before the tests run (`cargo build --workspace`), and `PLEXUS_BIN`
//! overrides the path.

pub mod fixtures;
pub mod llm;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// Path of the `plexus` binary under test.
pub fn bin() -> PathBuf {
    if let Ok(p) = std::env::var("PLEXUS_BIN") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let p = target.join(profile).join("plexus");
    assert!(
        p.exists(),
        "{} does not exist: build it first (cargo build --workspace) or set PLEXUS_BIN",
        p.display()
    );
    p
}

/// Path of the shared catalog of real Claude Code plugins.
pub fn shared_catalog() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/catalog/claude-plugins")
}

/// The result of one CLI run.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

/// Run the CLI to completion.
pub fn plexus(args: &[&str]) -> Output {
    let out = Command::new(bin())
        .args(args)
        .env("PLEXUS_LOG", "warn")
        .output()
        .expect("run plexus");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Poll `f` until it returns `Some`, or panic after `timeout` with `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How a test node is started.
#[derive(Clone, Debug, Default)]
pub struct NodeSpec {
    pub name: String,
    pub plugins: Vec<String>,
    pub catalogs: Vec<PathBuf>,
    pub extra: Vec<String>,
}

/// One running node process.
pub struct Node {
    pub spec: NodeSpec,
    pub child: Option<Child>,
    pub cluster: String,
    pub api: String,
    pub generation: u64,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    seeds: Vec<String>,
}

impl Node {
    /// Start a node and wait for its ready line. `listen`/`api` may use port 0.
    pub fn start(spec: NodeSpec, dir: &Path, listen: &str, api: &str, seeds: &[String]) -> Node {
        // With port 0 another process can take the port between the node's
        // probe and its bind; try again with fresh ports.
        if listen.ends_with(":0") {
            for _ in 0..3 {
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    Node::start_once(spec.clone(), dir, listen, api, seeds)
                })) {
                    Ok(n) => return n,
                    Err(e) => {
                        let log = std::fs::read_to_string(dir.join(format!("{}.log", spec.name)))
                            .unwrap_or_default();
                        if !log.contains("Address already in use") {
                            std::panic::resume_unwind(e);
                        }
                        let _ = std::fs::remove_file(dir.join(format!("{}.log", spec.name)));
                    }
                }
            }
        }
        Node::start_once(spec, dir, listen, api, seeds)
    }

    fn start_once(spec: NodeSpec, dir: &Path, listen: &str, api: &str, seeds: &[String]) -> Node {
        let data_dir = dir.join(&spec.name);
        let log = dir.join(format!("{}.log", spec.name));
        let mut n = Node {
            spec,
            child: None,
            cluster: listen.to_string(),
            api: api.to_string(),
            generation: 0,
            data_dir,
            log,
            seeds: seeds.to_vec(),
        };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut cmd = Command::new(bin());
        cmd.arg("node")
            .args([
                "--name",
                &self.spec.name,
                "--listen",
                &self.cluster,
                "--api",
                &self.api,
            ])
            .arg("--plugins")
            .arg(self.spec.plugins.join(","))
            .arg("--data-dir")
            .arg(&self.data_dir)
            // One cookie per test directory: clusters of parallel tests must
            // never join each other when one reuses a port another freed.
            .args(["--cookie", &cookie_for(dir_of(&self.data_dir))])
            .env("PLEXUS_LOG", "info,plexus_node=debug,plexus_bus=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(logf));
        for s in &self.seeds {
            cmd.args(["--seed", s]);
        }
        for c in &self.spec.catalogs {
            cmd.arg("--catalog").arg(c);
        }
        cmd.args(&self.spec.extra);
        let mut child = cmd.spawn().expect("spawn plexus node");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut sent = false;
            while let Some(Ok(l)) = lines.next() {
                if !sent {
                    if let Ok(v) = serde_json::from_str::<Value>(&l) {
                        if v["event"] == "ready" {
                            let _ = tx.send(v);
                            sent = true;
                        }
                    }
                }
            }
        });
        let ready = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(v) => v,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "{} did not become ready; log:\n{}",
                    self.spec.name,
                    self.log_text()
                );
            }
        };
        self.cluster = ready["cluster_addr"]
            .as_str()
            .expect("cluster_addr")
            .to_string();
        self.api = ready["api_addr"].as_str().expect("api_addr").to_string();
        self.generation = ready["generation"].as_u64().expect("generation");
        self.child = Some(child);
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freeze (SIGSTOP) or thaw (SIGCONT) the process.
    pub fn freeze(&self) {
        kill(self.pid(), Signal::SIGSTOP).expect("SIGSTOP");
    }
    pub fn thaw(&self) {
        kill(self.pid(), Signal::SIGCONT).expect("SIGCONT");
    }

    /// Start again with the same name, addresses and data directory.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// `plexus status --json` against this node.
    pub fn status(&self) -> Option<Value> {
        let o = plexus(&["status", "--connect", &self.api, "--json"]);
        (o.code == 0).then(|| o.json())
    }

    /// `plexus exec` against this node.
    pub fn exec(&self, plugin: &str, command: &str, input: Option<&str>) -> Output {
        self.exec_with(plugin, command, input, &["--timeout-ms", "5000"])
    }

    /// `plexus exec --json` through this node with `extra` options (timeout,
    /// idempotency key, priority).
    pub fn exec_with(
        &self,
        plugin: &str,
        command: &str,
        input: Option<&str>,
        extra: &[&str],
    ) -> Output {
        let mut args = vec![
            "exec",
            "--connect",
            &self.api,
            "--plugin",
            plugin,
            "--command",
            command,
            "--json",
        ];
        if let Some(i) = input {
            args.extend(["--input", i]);
        }
        args.extend_from_slice(extra);
        plexus(&args)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A frozen process must be thawed to die cleanly.
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGCONT);
        }
        self.kill9();
    }
}

/// A cluster of node processes in a temporary directory.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
}

impl Cluster {
    /// Start nodes in order; each seeds from those started before it.
    pub fn start(specs: Vec<NodeSpec>) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut nodes: Vec<Node> = vec![];
        for s in specs {
            let seeds: Vec<String> = nodes.iter().map(|n| n.cluster.clone()).collect();
            nodes.push(Node::start(
                s,
                dir.path(),
                "127.0.0.1:0",
                "127.0.0.1:0",
                &seeds,
            ));
        }
        let c = Cluster { dir, nodes };
        c.wait_converged();
        c
    }

    /// Start one more node in this cluster's directory (so with its
    /// cookie), seeded from the first node. It is neither waited for nor
    /// added to `nodes`: the caller decides whether it should join.
    pub fn start_seeded(&self, spec: NodeSpec) -> Node {
        Node::start(
            spec,
            self.dir.path(),
            "127.0.0.1:0",
            "127.0.0.1:0",
            &[self.nodes[0].cluster.clone()],
        )
    }

    /// Wait until every node sees every member up and knows every hosted
    /// plugin. Node 0 seeing all members is not enough: a test that then
    /// freezes a node must not depend on whether that node's announce
    /// reached the others before it froze.
    pub fn wait_converged(&self) {
        let n = self.nodes.len();
        for i in 0..n {
            self.wait_members(i, Duration::from_secs(20), |ms| {
                ms.len() == n && ms.iter().all(|m| m["status"] == "up")
            });
            for p in self.nodes.iter().flat_map(|node| &node.spec.plugins) {
                wait_for(
                    Duration::from_secs(20),
                    &format!("node {i} to know plugin {p}, started"),
                    // A plugin is placed a moment after its node is up and
                    // is `restarting` until its host runs.
                    || {
                        self.plugin_status(i, p)
                            .filter(|s| s != "restarting")
                            .map(|_| ())
                    },
                );
            }
        }
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.spec.name == name)
            .expect("node")
    }

    pub fn node_mut(&mut self, name: &str) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.spec.name == name)
            .expect("node")
    }

    /// Wait until node `i`'s member list satisfies `ok`.
    pub fn wait_members(
        &self,
        i: usize,
        timeout: Duration,
        ok: impl Fn(&[Value]) -> bool,
    ) -> Value {
        let node = &self.nodes[i];
        let mut last = None;
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for(timeout, "the member list", || {
                let s = node.status()?;
                let ms = s["members"].as_array().cloned().unwrap_or_default();
                last = Some(s.clone());
                ok(&ms).then_some(s)
            })
        }));
        match r {
            Ok(v) => v,
            Err(_) => {
                let logs: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| format!("--- {}\n{}", n.spec.name, tail(&n.log_text(), 40)))
                    .collect();
                panic!(
                    "member list never matched; last status: {last:#?}\n{}",
                    logs.join("\n")
                );
            }
        }
    }

    /// The status of `plugin` in node `i`'s view.
    pub fn plugin_status(&self, i: usize, plugin: &str) -> Option<String> {
        let s = self.nodes[i].status()?;
        s["plugins"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == plugin)
            .and_then(|p| p["status"].as_str().map(str::to_string))
    }
}

impl Drop for Cluster {
    /// A failing test shows what the nodes logged (the directory goes away).
    fn drop(&mut self) {
        if std::thread::panicking() {
            for n in &self.nodes {
                eprintln!(
                    "--- log of {} (last 400 lines)\n{}",
                    n.spec.name,
                    tail(&n.log_text(), 400)
                );
            }
        }
    }
}

fn dir_of(data_dir: &Path) -> &Path {
    data_dir.parent().unwrap_or(data_dir)
}

fn cookie_for(dir: &Path) -> String {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("plexus");
    format!("test-{name}-{}", std::process::id())
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Find a member by name in a status answer.
pub fn member<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["members"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)
}
