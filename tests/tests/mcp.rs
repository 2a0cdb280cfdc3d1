//! MCP servers as plugins across real node processes: the example `time`
//! and `git` plugins of `cluster-config/examples/` run the real PyPI servers
//! (installed by `scripts/setup-mcp.sh` into `.venv-mcp/`; without it these
//! tests say SKIPPED and check nothing; `.ci/run` installs it).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use plexus_tests::{plexus, wait_for, Cluster, Node, NodeSpec};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn examples() -> PathBuf {
    repo().join("cluster-config/examples")
}

/// Where `scripts/setup-mcp.sh` put the servers.
fn venv_dir() -> PathBuf {
    std::env::var("PLEXUS_MCP_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join(".venv-mcp"))
}

fn venv_ready() -> bool {
    ready(&venv_dir())
}

fn ready(dir: &Path) -> bool {
    let ok = dir.join("bin/mcp-server-time").is_file() && dir.join("bin/mcp-server-git").is_file();
    if !ok {
        eprintln!(
            "SKIPPED: no MCP servers in {} (run scripts/setup-mcp.sh)",
            dir.display()
        );
    }
    ok
}

/// Whether the tests (and so the nodes they start) run as root.
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let uids = s.lines().find(|l| l.starts_with("Uid:"))?.to_string();
            uids.split_whitespace().nth(2).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

/// Where a sandboxed server can be started from: as root the sandbox runs
/// it as nobody, who may not enter the checkout (a 0700 `mktemp -d`, or
/// /root), so `scripts/setup-mcp.sh` also installs the servers where
/// everyone can reach them.
fn sandbox_venv_dir() -> PathBuf {
    match std::env::var("PLEXUS_MCP_SANDBOX_VENV") {
        Ok(d) => PathBuf::from(d),
        Err(_) if is_root() => PathBuf::from("/opt/plexus/venv-mcp"),
        Err(_) => venv_dir(),
    }
}

fn spec(name: &str, plugins: &[&str], catalogs: Vec<PathBuf>) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        plugins: plugins.iter().map(|s| s.to_string()).collect(),
        catalogs,
        extra: vec![],
    }
}

/// The status row of `plugin` as `node` sees it.
fn row(node: &Node, plugin: &str) -> Option<Value> {
    node.status()?["plugins"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == plugin)
        .cloned()
}

/// Wait until `node` sees `plugin`'s first MCP server in `state` and `ok`.
fn wait_server(node: &Node, plugin: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    wait_for(Duration::from_secs(90), what, || {
        let r = row(node, plugin)?;
        ok(&r["servers"][0]).then_some(r)
    })
}

fn exec_json(node: &Node, plugin: &str, command: &str, input: &str) -> Value {
    let o = plexus(&[
        "exec",
        "--connect",
        &node.api,
        "--plugin",
        plugin,
        "--command",
        command,
        "--input",
        input,
        "--json",
        "--timeout-ms",
        "30000",
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    o.json()
}

#[test]
fn real_mcp_tools_run_across_the_cluster_and_a_killed_server_comes_back() {
    if !venv_ready() {
        return;
    }
    let cat = vec![examples()];
    let c = Cluster::start(vec![
        spec("node1", &["exec-automator"], cat.clone()),
        spec("node2", &["time"], cat.clone()),
        spec("node3", &["git"], cat),
    ]);
    let (n1, n2, n3) = (c.node("node1"), c.node("node2"), c.node("node3"));

    // The tools are listed on the node that hosts the server, and every
    // node's registry shows them (the announce carries them).
    let r = wait_server(n1, "time", "time's server running, seen from node1", |s| {
        s["state"] == "running"
    });
    assert_eq!(r["node"], "node2");
    assert_eq!(r["handler"], "mcp");
    let tools: Vec<&str> = r["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    assert!(
        tools.contains(&"get_current_time") && tools.contains(&"convert_time"),
        "{r}"
    );
    assert_eq!(r["commands"], 2);
    let pid = r["servers"][0]["pid"]
        .as_u64()
        .expect("a stdio server has a pid") as i32;
    assert_eq!(r["servers"][0]["transport"], "stdio");

    // A real tool call from another node.
    let out = exec_json(n1, "time", "get_current_time", r#"{"timezone":"UTC"}"#);
    assert_eq!(out["node"], "node2", "{out}");
    assert_eq!(out["output"]["timezone"], "UTC", "{out}");
    let year = out["output"]["datetime"].as_str().unwrap()[..4]
        .parse::<u64>()
        .unwrap();
    let now_year = 1970
        + SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 31_556_952;
    assert!(year.abs_diff(now_year) <= 1, "{out}");

    // The router of a third node indexes the discovered tools.
    wait_for(
        Duration::from_secs(30),
        "node3 to route a time question to the time tool",
        || {
            let o = plexus(&[
                "route",
                "--connect",
                &n3.api,
                "--json",
                "what is the current time in the Asia/Tokyo timezone",
            ]);
            let v: Value = serde_json::from_str(&o.stdout).ok()?;
            (v["primary_plugin"] == "time").then_some(v)
        },
    );

    // Kill the server process: the handler restarts it and the tools work again.
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let r = wait_server(n1, "time", "a restarted time server", |s| {
        s["state"] == "running" && s["pid"].as_u64().is_some_and(|p| p as i32 != pid)
    });
    assert!(r["servers"][0]["restarts"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(r["status"], "available");
    let out = exec_json(
        n3,
        "time",
        "convert_time",
        r#"{"source_timezone":"UTC","time":"12:00","target_timezone":"Asia/Tokyo"}"#,
    );
    assert!(
        out["output"]["target"]["datetime"]
            .as_str()
            .unwrap()
            .contains("T21:00:00"),
        "{out}"
    );

    // The git server on node3, driven from node2, on a real repository.
    let repo_dir = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        let o = std::process::Command::new("git")
            .args(args)
            .current_dir(repo_dir.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "git {args:?}: {o:?}");
    };
    git(&["init", "-q", "-b", "main"]);
    std::fs::write(repo_dir.path().join("plan.md"), "# plan\n").unwrap();
    wait_server(n2, "git", "git's server running", |s| {
        s["state"] == "running"
    });
    let input = serde_json::json!({"repo_path": repo_dir.path()}).to_string();
    let out = exec_json(n2, "git", "git_status", &input);
    assert_eq!(out["node"], "node3");
    let text = out["output"].as_str().unwrap_or_default();
    assert!(
        text.contains("plan.md") && text.contains("Untracked"),
        "{out}"
    );

    // Arguments the server refuses are the caller's fault, not the plugin's.
    let o = plexus(&[
        "exec",
        "--connect",
        &n1.api,
        "--plugin",
        "git",
        "--command",
        "git_status",
        "--input",
        "[1, 2]",
        "--json",
    ]);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(o.stdout.contains("JSON object"), "{o:?}");
}

#[test]
fn a_server_whose_command_does_not_exist_fails_clearly_and_opens_the_breaker() {
    let dir = tempfile::tempdir().unwrap();
    let cat = dir.path().join("catalog");
    std::fs::create_dir_all(&cat).unwrap();
    std::fs::write(
        cat.join("ghost.toml"),
        r#"
[plugin]
name = "ghost"

[handler]
kind = "mcp"
command = "/nonexistent/bin/mcp-server-ghost"

[errorHandling.circuitBreaker]
failureRateThreshold = 0.5
monitoringWindow = 4
minimumCalls = 3
timeoutMs = 60000
halfOpenRetries = 1

[errorHandling.retryPolicy]
maxRetries = 0

[placement]
maxRestarts = 2
restartWindowSecs = 60

# Declared, so a call reaches the handler although no tool was ever listed.
[[commands]]
name = "get_current_time"
"#,
    )
    .unwrap();
    let c = Cluster::start(vec![
        spec("node1", &["exec-automator"], vec![cat.clone()]),
        spec("node2", &["ghost"], vec![cat]),
    ]);
    let n1 = c.node("node1");
    let r = wait_server(n1, "ghost", "the ghost server to be given up", |s| {
        s["state"] == "failed"
    });
    let why = r["servers"][0]["last_error"].as_str().unwrap().to_string();
    assert!(why.contains("/nonexistent/bin/mcp-server-ghost"), "{why}");
    assert!(why.contains("No such file"), "{why}");
    assert!(why.contains("restarted 2 times"), "{why}");

    // Each call fails at once with the reason and counts against the breaker.
    for i in 0..3 {
        let o = n1.exec("ghost", "get_current_time", Some(r#"{"timezone":"UTC"}"#));
        assert_eq!(o.code, 1, "call {i}: {o:?}");
        assert!(
            o.stdout.contains("mcp-server-ghost") && o.stdout.contains("failed"),
            "call {i}: {o:?}"
        );
    }
    let r = wait_for(
        Duration::from_secs(30),
        "the ghost's breaker to open",
        || {
            let r = row(n1, "ghost")?;
            (r["breaker"] == "open").then_some(r)
        },
    );
    assert_eq!(r["node"], "node2");
    let o = n1.exec("ghost", "get_current_time", Some(r#"{"timezone":"UTC"}"#));
    assert_eq!(o.code, 1);
    assert!(o.stdout.contains("breaker"), "{o:?}");
}

/// `[handler.sandbox]` runs a real MCP server confined like a process
/// plugin: its tools still work; it has only the declared environment, its
/// own network namespace and, when the node is root, uid nobody (each where
/// the kernel allows, as the status row's `sandbox` says).
#[test]
fn a_sandboxed_mcp_server_runs_confined_and_its_tools_still_work() {
    let venv = sandbox_venv_dir();
    if !ready(&venv) {
        return;
    }
    let venv = venv.canonicalize().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("jailed-time.toml"),
        format!(
            r#"[plugin]
name = "jailed-time"
version = "1.0.0"
description = "mcp-server-time in the process sandbox"

[handler]
kind = "mcp"
command = "{venv}/bin/mcp-server-time"
args = ["--local-timezone", "UTC"]
env = {{ JAILED = "yes" }}

[handler.sandbox]
readPaths = ["{venv}"]

[handler.limits]
cpuSecs = 120
"#,
            venv = venv.display()
        ),
    )
    .unwrap();
    let c = Cluster::start(vec![spec(
        "node1",
        &["jailed-time"],
        vec![tmp.path().to_path_buf()],
    )]);
    let n1 = c.node("node1");
    let r = wait_server(n1, "jailed-time", "the sandboxed server running", |s| {
        s["state"] == "running"
    });
    let server = &r["servers"][0];
    let sandbox = server["sandbox"]
        .as_str()
        .unwrap_or_else(|| panic!("the status row says how it is confined: {r}"));
    let out = exec_json(
        n1,
        "jailed-time",
        "get_current_time",
        r#"{"timezone":"UTC"}"#,
    );
    assert_eq!(out["output"]["timezone"], "UTC", "{out}");

    // What the kernel says about the server process.
    let pid = server["pid"].as_u64().expect("a stdio server has a pid");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let mut keys: Vec<String> = environ
        .split(|b| *b == 0)
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            String::from_utf8_lossy(kv)
                .split('=')
                .next()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    keys.sort();
    // The declared environment, and the plugin's own API credential.
    assert_eq!(
        keys,
        vec!["JAILED", "PATH", "PLEXUS_API", "PLEXUS_TOKEN"],
        "only the declared environment"
    );
    let net = |p: String| std::fs::read_link(format!("/proc/{p}/ns/net")).unwrap();
    if sandbox.contains("network=netns") {
        assert_ne!(
            net(pid.to_string()),
            net(n1.pid().to_string()),
            "{sandbox}: its own network namespace"
        );
    }
    if let Some(uid) = sandbox
        .split_whitespace()
        .find_map(|w| w.strip_prefix("uid="))
    {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert_eq!(line.split_whitespace().nth(1), Some(uid), "{line}");
    }
    eprintln!("sandboxed MCP server: {sandbox}");
}

/// A sandboxed server that uid nobody cannot reach (here: behind a 0700
/// directory, as a checkout in a `mktemp -d` or under /root is) is marked
/// failed at once, with the directory that blocks it and the fix, instead
/// of being restarted on "Permission denied" until it is given up.
#[test]
fn a_sandboxed_server_its_uid_cannot_reach_fails_at_once_naming_the_blocking_directory() {
    if !is_root() {
        eprintln!(
            "SKIPPED: the node does not run as root, so its sandbox keeps the node's own uid"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let closed = tmp.path().canonicalize().unwrap();
    // As `mktemp -d` makes it.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let server = closed.join("bin/server");
    std::fs::create_dir_all(server.parent().unwrap()).unwrap();
    std::fs::write(&server, "#!/bin/sh\nexec sleep 60\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        for p in [server.parent().unwrap(), server.as_path()] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    std::fs::write(
        closed.join("locked-out.toml"),
        format!(
            "[plugin]\nname = \"locked-out\"\nversion = \"1.0.0\"\ndescription = \"an MCP server nobody cannot reach\"\n\n[handler]\nkind = \"mcp\"\ncommand = \"{}\"\n\n[handler.sandbox]\n",
            server.display()
        ),
    )
    .unwrap();
    let c = Cluster::start(vec![spec("node1", &["locked-out"], vec![closed.clone()])]);
    let r = wait_server(
        c.node("node1"),
        "locked-out",
        "the server marked failed",
        |s| s["state"] == "failed",
    );
    let s = &r["servers"][0];
    let why = s["last_error"].as_str().unwrap_or_default();
    assert!(
        why.contains(&format!(
            "uid 65534 cannot search {} (drwx------",
            closed.display()
        )) && why.contains(&format!("chmod o+x {}", closed.display())),
        "{r}"
    );
    assert_eq!(s["restarts"], 0, "failed at once, not after restarts: {r}");
}
