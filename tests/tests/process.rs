//! Process plugins across real nodes: a real command runs on the node that
//! hosts it, each resource limit stops its process and comes back typed,
//! failures feed the retry policy and the breaker, a plugin sees only the
//! variables it was given, and a server process that exits is restarted by
//! the plugin supervisor until its restart intensity is spent.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use plexus_tests::{plexus, wait_for, Cluster, NodeSpec};
use serde_json::Value;

/// The repository's example plugins (`sys`, `kv`), copied to a fresh
/// directory: plugin processes run as nobody when the tests run as root,
/// and the checkout may sit under a directory nobody cannot enter.
fn examples(tmp: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster-config/examples");
    let dst = tmp.join("examples");
    std::fs::create_dir_all(dst.join("bin")).unwrap();
    for f in ["sys.toml", "kv.toml", "bin/sys.py", "bin/kv_server.py"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    open_to_nobody(&[tmp, &dst, &dst.join("bin")]);
    dst
}

/// Let plugin processes (nobody, when the tests run as root) enter `dirs`,
/// whatever the umask.
fn open_to_nobody(dirs: &[&Path]) {
    for d in dirs {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

fn spec(name: &str, plugins: &[&str], catalogs: Vec<PathBuf>) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        plugins: plugins.iter().map(|s| s.to_string()).collect(),
        catalogs,
        ..Default::default()
    }
}

fn exec_json(api: &str, plugin: &str, command: &str, input: &str) -> Value {
    let o = plexus(&[
        "exec",
        "--connect",
        api,
        "--plugin",
        plugin,
        "--command",
        command,
        "--input",
        input,
        "--json",
        "--timeout-ms",
        "20000",
    ]);
    serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {o:?}"))
}

fn script(dir: &Path, name: &str, body: &str) {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A catalog with the `hog` plugin: one command per limit.
fn hog_catalog(root: &Path) -> PathBuf {
    let dir = root.join("hog-catalog");
    let out = root.join("hog-out");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    open_to_nobody(&[root, &dir]);
    // Processes run as nobody when the node is root.
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).unwrap();
    let py = "#!/usr/bin/env python3\n";
    script(&dir, "spin.py", &format!("{py}while True:\n    pass\n"));
    script(
        &dir,
        "eat.py",
        &format!("{py}x = bytearray(512 * 1024 * 1024)\nprint('{{}}')\n"),
    );
    script(
        &dir,
        "flood.py",
        &format!("{py}import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n"),
    );
    script(
        &dir,
        "big.sh",
        "#!/bin/sh\nset -e\nhead -c 8388608 /dev/zero > \"$1/big.bin\"\necho '{}'\n",
    );
    script(
        &dir,
        "forks.py",
        &format!("{py}import os, time\nfor i in range(50):\n    if os.fork() == 0:\n        time.sleep(30)\n        os._exit(0)\nprint('{{}}')\n"),
    );
    script(&dir, "hang.sh", "#!/bin/sh\nsleep 600\n");
    let manifest = format!(
        r#"[plugin]
name = "hog"
[handler]
kind = "process"
timeoutMs = 20000
[handler.limits]
cpuSecs = 1
memoryMb = 128
fileSizeMb = 1
processes = 6
outputKb = 64
[handler.sandbox]
writePaths = ["{out}"]
[handler.commands.cpu]
program = "./spin.py"
[handler.commands.memory]
program = "./eat.py"
[handler.commands.output]
program = "./flood.py"
[handler.commands.file-size]
program = "./big.sh"
args = ["{{dir}}"]
[handler.commands.processes]
program = "./forks.py"
[handler.commands.hang]
program = "./hang.sh"
timeoutMs = 300
[errorHandling.circuitBreaker]
minimumCalls = 100
[errorHandling.retryPolicy]
maxRetries = 2
initialDelayMs = 10
maxDelayMs = 20
[[commands]]
name = "cpu"
[[commands]]
name = "memory"
[[commands]]
name = "output"
[[commands]]
name = "file-size"
[[commands]]
name = "processes"
[[commands]]
name = "hang"
"#,
        out = out.display()
    );
    std::fs::write(dir.join("hog.toml"), manifest).unwrap();
    dir
}

#[test]
fn a_real_command_runs_on_the_node_that_hosts_it() {
    let tmp = tempfile::tempdir().unwrap();
    let ex = examples(tmp.path());
    let c = Cluster::start(vec![
        spec("node1", &["jira-orchestrator"], vec![ex.clone()]),
        spec("node2", &["sys"], vec![ex]),
    ]);
    let api = &c.nodes[0].api;
    wait_for(
        Duration::from_secs(20),
        "sys to be available on node1's view",
        || (c.plugin_status(0, "sys").as_deref() == Some("available")).then_some(()),
    );
    let r = exec_json(
        api,
        "sys",
        "checksum",
        r#"{"algorithm": "sha256", "text": "hello"}"#,
    );
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["node"], "node2", "{r}");
    assert_eq!(
        r["output"]["hex"],
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    );
    let r = exec_json(api, "sys", "wc", r#"{"text": "one two\nthree\n"}"#);
    assert_eq!(
        r["output"],
        serde_json::json!({"lines": 2, "words": 3, "bytes": 14}),
        "{r}"
    );
    // The template names a field the input lacks: bad input, naming it.
    let r = exec_json(api, "sys", "checksum", r#"{"text": "hello"}"#);
    assert_eq!(r["ok"], false);
    assert!(r["type"].as_str().unwrap().ends_with("/bad-input"), "{r}");
    assert!(
        r["detail"].as_str().unwrap().contains("\"algorithm\""),
        "{r}"
    );
    // The script's own refusal (exit 65, EX_DATAERR): bad input with its stderr.
    let r = exec_json(
        api,
        "sys",
        "checksum",
        r#"{"algorithm": "rot13", "text": "x"}"#,
    );
    assert_eq!(r["reply"]["error"]["kind"], "bad_input", "{r}");
    let m = r["detail"].as_str().unwrap();
    assert!(m.contains("unknown algorithm 'rot13'"), "{m}");
    // Refusals are not the plugin's fault: its breaker stays closed.
    let r = exec_json(api, "sys", "wc", r#"{"text": "still fine"}"#);
    assert_eq!(r["ok"], true, "{r}");
}

#[test]
fn a_plugin_sees_only_the_variables_it_was_given() {
    // The node inherits this test's environment (CARGO_*, PLEXUS_LOG, HOME...).
    assert!(std::env::var("CARGO_MANIFEST_DIR").is_ok());
    let tmp = tempfile::tempdir().unwrap();
    let c = Cluster::start(vec![spec("node1", &["sys"], vec![examples(tmp.path())])]);
    let r = exec_json(&c.nodes[0].api, "sys", "env-probe", "{}");
    assert_eq!(r["ok"], true, "{r}");
    let out = &r["output"];
    // Its manifest's variables, and its own API credential (issue 22).
    assert_eq!(
        out["env"],
        serde_json::json!(["LC_ALL", "PATH", "PLEXUS_API", "PLEXUS_TOKEN"]),
        "{r}"
    );
    // Nor through the node's /proc entry, nor over the network.
    assert!(
        out["parent_environ"]
            .as_str()
            .unwrap()
            .starts_with("denied"),
        "{r}"
    );
    assert!(
        out["network"].as_str().unwrap().starts_with("unreachable"),
        "{r}"
    );
    assert!(
        out["etc_passwd"].as_str().unwrap().starts_with("denied"),
        "{r}"
    );
    let euid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
    if euid == 0 {
        assert_eq!(out["uid"], 65534, "{r}");
    }
}

#[test]
fn each_limit_stops_the_process_and_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let cat = hog_catalog(tmp.path());
    let c = Cluster::start(vec![
        spec("node1", &["jira-orchestrator"], vec![cat.clone()]),
        spec("node2", &["hog"], vec![cat]),
    ]);
    let api = &c.nodes[0].api;
    wait_for(Duration::from_secs(20), "hog to be available", || {
        (c.plugin_status(0, "hog").as_deref() == Some("available")).then_some(())
    });
    let dir_input = format!("{{\"dir\": \"{}\"}}", tmp.path().join("hog-out").display());
    for (command, input, limit) in [
        ("cpu", "{}", "cpu"),
        ("memory", "{}", "memory"),
        ("output", "{}", "output"),
        ("file-size", dir_input.as_str(), "file_size"),
        ("processes", "{}", "processes"),
    ] {
        let r = exec_json(api, "hog", command, input);
        assert_eq!(r["ok"], false, "{command}: {r}");
        let e = &r["reply"]["error"];
        assert_eq!(e["kind"], "limit_exceeded", "{command}: {r}");
        assert_eq!(e["limit"], limit, "{command}: {r}");
        assert_eq!(e["retryable"], false, "{command}: {r}");
        // Deterministic: never retried.
        assert_eq!(r["reply"]["retries"], 0, "{command}: {r}");
        assert_eq!(r["reply"]["node"], "node2", "{command}: {r}");
    }
    let big = std::fs::metadata(tmp.path().join("hog-out/big.bin"))
        .unwrap()
        .len();
    assert!(big <= 1024 * 1024, "file grew to {big} bytes");
    // A timeout is retryable: the retry policy runs it maxRetries more times.
    let r = exec_json(api, "hog", "hang", "{}");
    assert!(r["type"].as_str().unwrap().ends_with("/timeout"), "{r}");
    assert_eq!(r["reply"]["error"]["kind"], "timeout", "{r}");
    assert!(
        r["detail"].as_str().unwrap().contains("after 2 retries"),
        "{r}"
    );
}

#[test]
fn limit_failures_open_the_plugins_breaker() {
    let tmp = tempfile::tempdir().unwrap();
    let cat = hog_catalog(tmp.path());
    let m = std::fs::read_to_string(cat.join("hog.toml"))
        .unwrap()
        .replace("minimumCalls = 100", "minimumCalls = 3\ntimeoutMs = 60000");
    std::fs::write(cat.join("hog.toml"), m).unwrap();
    let c = Cluster::start(vec![spec("node1", &["hog"], vec![cat])]);
    let api = &c.nodes[0].api;
    for _ in 0..3 {
        let r = exec_json(api, "hog", "output", "{}");
        assert_eq!(r["reply"]["error"]["limit"], "output", "{r}");
    }
    let r = exec_json(api, "hog", "output", "{}");
    assert!(
        r["type"].as_str().unwrap().ends_with("/breaker-open"),
        "{r}"
    );
}

#[test]
fn a_server_process_that_exits_is_restarted_then_the_plugin_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Cluster::start(vec![spec("node1", &["kv"], vec![examples(tmp.path())])]);
    let api = &c.nodes[0].api;
    let r = exec_json(api, "kv", "put", r#"{"key": "a", "value": 1}"#);
    assert_eq!(r["output"]["stored"], true, "{r}");
    let pid1 = exec_json(api, "kv", "list", "{}")["output"]["pid"].clone();
    assert!(pid1.is_u64());

    // kv.toml allows 3 restarts in 30 s.
    for round in 1..=3 {
        let r = exec_json(api, "kv", "stop", "{}");
        assert_eq!(r["ok"], false, "{r}");
        // While the server restarts, `list` (idempotent) may be answered
        // from the cache; wait for the server itself.
        let r = wait_for(Duration::from_secs(20), "the restarted server", || {
            let r = exec_json(api, "kv", "list", "{}");
            (r["served_by"] == "primary").then_some(r)
        });
        assert_ne!(r["output"]["pid"], pid1, "round {round}: {r}");
        // A new process: the old store is gone.
        assert_eq!(r["output"]["keys"], serde_json::json!([]), "{r}");
        let s = c.nodes[0].status().unwrap();
        let row = s["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "kv")
            .cloned()
            .unwrap();
        assert_eq!(row["restarts"], round, "{row}");
        assert_eq!(row["handler"], "process", "{row}");
    }
    let _ = exec_json(api, "kv", "stop", "{}");
    wait_for(Duration::from_secs(20), "kv to be marked failed", || {
        (c.plugin_status(0, "kv").as_deref() == Some("failed")).then_some(())
    });
    let r = exec_json(api, "kv", "put", r#"{"key": "b", "value": 2}"#);
    assert_eq!(r["ok"], false, "{r}");
}

#[test]
fn a_process_plugin_cannot_reach_the_nodes_api_or_state_files() {
    // The HTTP API takes the acting plugin from the request (`as`) without
    // authenticating it, and the state file holds every plugin's entries:
    // a process plugin must reach neither, or it could bypass the ACL.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sneaky-catalog");
    std::fs::create_dir_all(&dir).unwrap();
    open_to_nobody(&[tmp.path(), &dir]);
    script(
        &dir,
        "sneak.py",
        r#"#!/usr/bin/env python3
import json, socket, sys
inp = json.load(sys.stdin)
host, port = inp["api"].rsplit(":", 1)
r = {}
try:
    s = socket.create_connection((host, int(port)), timeout=2)
    body = json.dumps({"value": "pwned"})
    s.sendall(("PUT /v1/state/kv/owned-by-other?as=other HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)).encode())
    r["api"] = s.recv(200).decode(errors="replace")
except OSError as e:
    r["api"] = "unreachable: " + str(e)
try:
    open(inp["state_file"], "rb").read(16)
    r["state_file"] = "readable"
except OSError as e:
    r["state_file"] = "denied: " + str(e)
print(json.dumps(r))
"#,
    );
    std::fs::write(
        dir.join("sneaky.toml"),
        "[plugin]\nname = \"sneaky\"\n[handler]\nkind = \"process\"\n[handler.commands.sneak]\nprogram = \"./sneak.py\"\n[[commands]]\nname = \"sneak\"\n",
    )
    .unwrap();
    let c = Cluster::start(vec![spec("node1", &["sneaky"], vec![dir])]);
    let n = &c.nodes[0];
    let state_file = n.data_dir.join("state.redb");
    assert!(state_file.exists(), "{}", state_file.display());
    let input = serde_json::json!({"api": n.api, "state_file": state_file}).to_string();
    let r = exec_json(&n.api, "sneaky", "sneak", &input);
    assert_eq!(r["ok"], true, "{r}");
    assert!(
        r["output"]["api"]
            .as_str()
            .unwrap()
            .starts_with("unreachable"),
        "{r}"
    );
    assert!(
        r["output"]["state_file"]
            .as_str()
            .unwrap()
            .starts_with("denied"),
        "{r}"
    );
}
