//! `plexus up`: a local cluster of node processes, in the foreground.
//!
//! Each node is a child process of this one (`plexus node ...`), started with
//! `PR_SET_PDEATHSIG` so that none outlives us even on `kill -9`. Ctrl-C or
//! SIGTERM stops them gracefully (SIGTERM, then SIGKILL after a grace period).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use plexus_api::StatusBody;
use rand::Rng;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, SignalKind};

use crate::client::Client;
use crate::{defaults, CatalogArgs, CliResult, Failure, LlmArgs};

#[derive(Args)]
pub struct UpArgs {
    /// How many nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=32))]
    pub nodes: u16,
    #[command(flatten)]
    pub catalog: CatalogArgs,
    /// Cluster port of the first node; node i listens on BASE+i-1 and serves
    /// its API on that port + 100. 0 picks free ports.
    #[arg(long, default_value_t = 7101)]
    pub base_port: u16,
    /// Where nodes keep their data and logs.
    #[arg(long, default_value = ".plexus/up", value_name = "DIR")]
    pub dir: PathBuf,
    /// Print the nodes and return to the shell only when they stop, without
    /// the live status line.
    #[arg(long)]
    pub quiet: bool,
    /// `local`: start the bundled tiny model (SmolLM2-135M on llama.cpp's
    /// server, installed by scripts/setup-llm.sh) as a supervised child and
    /// run every node's agents on it. No key needed.
    #[arg(long = "llm", value_name = "local")]
    pub llm_mode: Option<String>,
    #[command(flatten)]
    pub llm: LlmArgs,
}

pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) child: Child,
    pub(crate) cluster: String,
    pub(crate) api: String,
    pub(crate) log: PathBuf,
}

/// How long `plexus up` waits for every plugin to serve somewhere.
const PLACED_WITHIN: Duration = Duration::from_secs(60);

/// The plugins of `want` that no node serves yet, as `api`'s status shows
/// them (all of them while the status cannot be read).
fn not_yet_serving(api: &str, want: &[String]) -> Vec<String> {
    let c = Client::new(api, Duration::from_secs(2));
    let rows = match c.get::<StatusBody>("/v1/status") {
        Ok(Ok(s)) => s.plugins,
        _ => return want.to_vec(),
    };
    want.iter()
        .filter(|w| {
            !rows
                .iter()
                .any(|r| &r.name == *w && r.status == "available")
        })
        .cloned()
        .collect()
}

/// Round-robin placement: plugin i goes to node i mod N. `plexus bench`
/// pins its plugins this way; `plexus up` leaves placement to the cluster.
pub fn placement(plugins: &[String], nodes: usize) -> Vec<Vec<String>> {
    let mut out = vec![vec![]; nodes];
    for (i, p) in plugins.iter().enumerate() {
        out[i % nodes].push(p.clone());
    }
    out
}

/// The first lines `plexus up` prints about the model: what agents run on,
/// or that they are simulated and how to turn a model on.
pub fn model_banner(llm: &LlmArgs, local: Option<&str>) -> String {
    match (&llm.llm_provider, local) {
        (_, Some(url)) => format!(
            "agents run on the bundled model {} at {url} (openai API, no key)",
            plexus_llm::local::MODEL
        ),
        (Some(p), None) => format!(
            "agents run on {p}{}{}",
            llm.llm_base_url
                .as_deref()
                .map(|u| format!(" at {u}"))
                .unwrap_or_default(),
            llm.llm_model_map
                .as_deref()
                .map(|m| format!(" (models {m})"))
                .unwrap_or_default()
        ),
        (None, None) => "agents are simulated: no language model is configured, so agents and commands answer with the `sim` handler's canned output.\n\
             to run them on a real model: `scripts/setup-llm.sh` then `plexus up --llm local` (the bundled tiny model, no key),\n\
             or `plexus up --llm-provider anthropic` with ANTHROPIC_API_KEY set (or openai with OPENAI_API_KEY; --llm-base-url for llama.cpp, Ollama, vLLM)."
            .to_string(),
    }
}

/// Where `scripts/llm-server.py` is: the working directory's checkout, else
/// the checkout the binary was built in.
fn checkout_root() -> Option<PathBuf> {
    let has = |d: &std::path::Path| d.join("scripts").join("llm-server.py").exists();
    let cwd = std::env::current_dir().ok();
    let exe = std::env::current_exe().ok();
    cwd.iter()
        .chain(exe.iter())
        .flat_map(|p| p.ancestors().map(|a| a.to_path_buf()).collect::<Vec<_>>())
        .find(|d| has(d))
}

pub fn run(a: UpArgs) -> CliResult {
    match a.llm_mode.as_deref() {
        None => {}
        Some("local") if a.llm.any() => {
            return Err(Failure::usage(anyhow!(
                "--llm local runs the bundled model: leave out --llm-provider, --llm-base-url and --llm-model-map"
            )))
        }
        Some("local") => {}
        Some(other) => {
            return Err(Failure::usage(anyhow!(
                "--llm {other:?}: the only mode is `local` (the bundled model); for a provider use --llm-provider openai|anthropic"
            )))
        }
    }
    // Check the flags here, once, rather than in every node.
    a.llm.apply(None)?;
    let cat = defaults::load(&a.catalog);
    for d in cat.errors() {
        eprintln!("{d}");
    }
    if cat.plugins.is_empty() {
        return Err(Failure::usage(anyhow!(
            "the catalog is empty: nothing to host"
        )));
    }
    std::fs::create_dir_all(&a.dir)
        .with_context(|| format!("cannot create {}", a.dir.display()))?;
    let exe = std::env::current_exe().context("cannot find the plexus binary")?;
    let cookie: String = {
        let mut r = rand::thread_rng();
        (0..32)
            .map(|_| format!("{:x}", r.gen_range(0..16u8)))
            .collect()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut nodes: Vec<Node> = vec![];
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut model = match a.llm_mode.as_deref() {
            Some(_) => {
                let root = checkout_root().ok_or_else(|| {
                    Failure::usage(anyhow!(
                        "--llm local: cannot find scripts/llm-server.py; run plexus up from the Plexus checkout"
                    ))
                })?;
                let mut o = plexus_llm::local::LocalOptions::for_checkout(&root);
                o.parallel = a.nodes.min(4) as u32;
                let server = tokio::select! {
                    r = plexus_llm::local::LocalServer::start(&o) => r.map_err(Failure::usage)?,
                    _ = term.recv() => return Err(anyhow!("interrupted").into()),
                    _ = int.recv() => return Err(anyhow!("interrupted").into()),
                };
                o.port = server.port;
                Some((server, o, 0u32))
            }
            None => None,
        };
        let node_llm = match &model {
            Some((s, _, _)) => LlmArgs {
                llm_provider: Some("openai".into()),
                llm_base_url: Some(s.base_url()),
                llm_model_map: Some(format!(
                    "haiku={m},sonnet={m},opus={m}",
                    m = plexus_llm::local::MODEL
                )),
            },
            None => a.llm.clone(),
        };
        println!(
            "{}",
            model_banner(&a.llm, model.as_ref().map(|(s, _, _)| s.base_url()).as_deref())
        );
        for i in 0..a.nodes as usize {
            let name = format!("node{}", i + 1);
            let (listen, api) = if a.base_port == 0 {
                ("127.0.0.1:0".to_string(), "127.0.0.1:0".to_string())
            } else {
                let p = a.base_port as usize + i;
                if p + 100 > u16::MAX as usize {
                    return Err(Failure::usage(anyhow!("--base-port {} leaves no room for {} nodes", a.base_port, a.nodes)));
                }
                (format!("127.0.0.1:{p}"), format!("127.0.0.1:{}", p + 100))
            };
            let log = a.dir.join(format!("{name}.log"));
            let started = tokio::select! {
                r = start_node(&exe, &name, &listen, &api, &nodes, None, &a, &node_llm, &cookie, &log) => r,
                _ = term.recv() => Err(anyhow!("interrupted")),
                _ = int.recv() => Err(anyhow!("interrupted")),
            };
            match started {
                Ok(n) => nodes.push(n),
                Err(e) => {
                    stop_all(&mut nodes).await;
                    return Err(e.into());
                }
            }
        }
        // The placement starts plugins a moment after the nodes are up: wait
        // until each serves somewhere, so the first request after the table
        // does not meet a plugin that is still starting.
        let want: Vec<String> = cat.plugins.iter().map(|p| p.name.clone()).collect();
        let deadline = tokio::time::Instant::now() + PLACED_WITHIN;
        loop {
            let api = nodes[0].api.clone();
            let want = want.clone();
            let missing = tokio::task::spawn_blocking(move || not_yet_serving(&api, &want))
                .await
                .unwrap_or_default();
            if missing.is_empty() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                println!("warning: after {} s these plugins serve nowhere yet: {}; `plexus status` shows why", PLACED_WITHIN.as_secs(), missing.join(", "));
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = term.recv() => { stop_all(&mut nodes).await; return Err(anyhow!("interrupted").into()); }
                _ = int.recv() => { stop_all(&mut nodes).await; return Err(anyhow!("interrupted").into()); }
            }
        }
        println!("Plexus cluster up: {} nodes (cookie in each node's environment; logs in {})", nodes.len(), a.dir.display());
        println!("{:<8} {:<18} API", "NODE", "CLUSTER");
        for n in &nodes {
            println!("{:<8} {:<18} {}", n.name, n.cluster, n.api);
        }
        println!("plugins are placed by the cluster (replicas, labels); `plexus status` shows where");
        println!("\ntry:  plexus status --connect {}\n      plexus exec --connect {} --plugin {} --command {}",
            nodes[0].api, nodes[0].api, cat.plugins[0].name,
            cat.plugins[0].commands.first().map(|c| c.name.as_str()).unwrap_or("COMMAND"));
        println!("Ctrl-C stops every node.\n");

        let mut tick = tokio::time::interval(Duration::from_secs(2));
        let mut last = String::new();
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = tick.tick() => {
                    if let Some((server, o, restarts)) = model.as_mut() {
                        if let Some(st) = server.exited() {
                            if *restarts >= 5 {
                                println!("the bundled model server exited ({st}) after {restarts} restarts; agents will fail until plexus up is restarted");
                                model = None;
                            } else {
                                *restarts += 1;
                                println!("the bundled model server exited ({st}); restarting it on port {}", o.port);
                                match plexus_llm::local::LocalServer::start(o).await {
                                    Ok(s) => *server = s,
                                    Err(e) => println!("could not restart the bundled model: {e}"),
                                }
                            }
                        }
                    }
                    for n in nodes.iter_mut() {
                        if let Ok(Some(st)) = n.child.try_wait() {
                            println!("{} exited ({st}); see {}", n.name, n.log.display());
                        }
                    }
                    nodes.retain_mut(|n| !matches!(n.child.try_wait(), Ok(Some(_))));
                    if nodes.is_empty() {
                        return Err(anyhow!("every node has exited").into());
                    }
                    if !a.quiet {
                        let api = nodes[0].api.clone();
                        let line = tokio::task::spawn_blocking(move || summary(&api)).await.unwrap_or_else(|e| e.to_string());
                        if line != last {
                            println!("[status] {line}");
                            last = line;
                        }
                    }
                }
            }
        }
        println!("stopping {} nodes...", nodes.len());
        stop_all(&mut nodes).await;
        println!("all nodes stopped");
        Ok(())
    })
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn start_node(
    exe: &std::path::Path,
    name: &str,
    listen: &str,
    api: &str,
    earlier: &[Node],
    plugins: Option<&[String]>,
    a: &UpArgs,
    llm: &LlmArgs,
    cookie: &str,
    log: &std::path::Path,
) -> anyhow::Result<Node> {
    let logf =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("node")
        .args(["--name", name, "--listen", listen, "--api", api])
        .arg("--data-dir")
        .arg(a.dir.join(name))
        .env("PLEXUS_COOKIE", cookie)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(logf))
        .kill_on_drop(true);
    match plugins {
        // Pinned: these run here.
        Some(plugins) => {
            cmd.arg("--plugins").arg(plugins.join(","));
        }
        // The cluster's placement rule decides.
        None => {
            cmd.args(["--placement", "cluster"]);
        }
    }
    for n in earlier {
        cmd.args(["--seed", &n.cluster]);
    }
    for d in &a.catalog.catalog {
        cmd.arg("--catalog").arg(d);
    }
    if a.catalog.no_default_plugins {
        cmd.arg("--no-default-plugins");
    }
    cmd.args(llm.to_args());
    // `plexus --api-token T up`: the local cluster requires the token too.
    if let Some(t) = crate::client::token() {
        cmd.env("PLEXUS_API_TOKEN", t);
    }
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no stdout from {name}"))?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(l) = lines.next_line().await? {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&l) {
                if v["event"] == "ready" {
                    return Ok::<_, std::io::Error>(Some(v));
                }
            }
        }
        Ok(None)
    })
    .await;
    let v = match ready {
        Ok(Ok(Some(v))) => v,
        Ok(Ok(None)) | Ok(Err(_)) => {
            let _ = child.wait().await;
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = tail
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            bail!(
                "{name} did not start; last lines of {}:\n{}",
                log.display(),
                tail.join("\n")
            );
        }
        Err(_) => {
            let _ = child.kill().await;
            bail!(
                "{name} did not become ready within 30 s; see {}",
                log.display()
            );
        }
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Node {
        name: name.to_string(),
        child,
        cluster: v["cluster_addr"].as_str().unwrap_or_default().to_string(),
        api: v["api_addr"].as_str().unwrap_or_default().to_string(),
        log: log.to_path_buf(),
    })
}

fn summary(api: &str) -> String {
    let c = Client::new(api, Duration::from_secs(2));
    match c.get::<StatusBody>("/v1/status") {
        Ok(Ok(s)) => {
            let members: Vec<String> = s
                .members
                .iter()
                .map(|m| format!("{} {}", m.name, m.status))
                .collect();
            let avail = s.plugins.iter().filter(|p| p.status == "available").count();
            let other: Vec<String> = s
                .plugins
                .iter()
                .filter(|p| p.status != "available" || p.breaker != "closed")
                .map(|p| {
                    if p.status == "available" {
                        format!("{} breaker {}", p.name, p.breaker)
                    } else {
                        format!("{} {}", p.name, p.status)
                    }
                })
                .collect();
            let mut line = format!(
                "members: {} | plugins: {avail}/{} available",
                members.join(", "),
                s.plugins.len()
            );
            if !other.is_empty() {
                line.push_str(&format!(" ({})", other.join(", ")));
            }
            line
        }
        Ok(Err(p)) => format!("{api}: {}", p.detail),
        Err(e) => format!("{api}: {:#}", e.error),
    }
}

pub(crate) async fn stop_all(nodes: &mut [Node]) {
    for n in nodes.iter() {
        if let Some(pid) = n.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
    for n in nodes.iter_mut() {
        match tokio::time::timeout(Duration::from_secs(5), n.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("{} did not stop within 5 s; killing it", n.name);
                let _ = n.child.kill().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::placement;

    #[test]
    fn placement_is_round_robin_and_total() {
        let ps: Vec<String> = (0..7).map(|i| format!("p{i}")).collect();
        let plan = placement(&ps, 3);
        assert_eq!(plan[0], vec!["p0", "p3", "p6"]);
        assert_eq!(plan[1], vec!["p1", "p4"]);
        assert_eq!(plan[2], vec!["p2", "p5"]);
        let plan = placement(&ps[..2], 3);
        assert!(plan[2].is_empty());
    }
}
