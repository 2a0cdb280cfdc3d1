//! What container and Kubernetes deployments rely on, over real node
//! processes: the probes (`plexus health`, `/v1/ready`), secrets from files
//! (`--cookie-file`, `--api-token-file`), seeds found by DNS (`--seed-dns`)
//! and the drain on SIGTERM.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use plexus_tests::fixtures::sim_manifest;
use plexus_tests::{bin, member, plexus, wait_for, Cluster, Node, NodeSpec};
use serde_json::Value;

/// GET `path` without a token: (status, JSON body).
fn get(api: &str, path: &str) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut r = agent
        .get(format!("http://{api}{path}"))
        .call()
        .expect("HTTP GET");
    let body = r.body_mut().read_to_string().expect("body");
    (
        r.status().as_u16(),
        serde_json::from_str(&body).unwrap_or(Value::Null),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write a test file");
    p.display().to_string()
}

/// A `plexus node` started by hand (the harness always passes `--cookie`),
/// with its ready line's API address.
struct Raw {
    child: Child,
    api: String,
}

impl Drop for Raw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_raw(dir: &Path, name: &str, args: &[&str]) -> Raw {
    use std::io::{BufRead, BufReader};
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log");
    let mut child = Command::new(bin())
        .args([
            "node",
            "--name",
            name,
            "--listen",
            "127.0.0.1:0",
            "--api",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.join(name))
        .args(["--plugins", ""])
        .args(args)
        .env_remove("PLEXUS_COOKIE")
        .env_remove("PLEXUS_API_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn plexus node");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines.next().and_then(Result::ok);
    // Keep reading, so the node never writes into a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let line = first.unwrap_or_else(|| {
        panic!(
            "{name} printed no ready line; log:\n{}",
            std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
        )
    });
    let v: Value = serde_json::from_str(&line).expect("ready line is JSON");
    Raw {
        child,
        api: v["api_addr"].as_str().expect("api_addr").to_string(),
    }
}

#[test]
fn the_probes_need_no_token_and_readiness_waits_for_a_peer_the_seeds_name() {
    let dir = tempfile::tempdir().unwrap();
    let token = write(dir.path(), "token", "t0ken-t0ken-t0ken\n");
    // Seeded from a port nobody listens on: live, but never joined.
    let lonely = Node::start(
        NodeSpec {
            name: "lonely".into(),
            extra: vec!["--api-token-file".into(), token.clone()],
            ..Default::default()
        },
        dir.path(),
        "127.0.0.1:0",
        "127.0.0.1:0",
        &["127.0.0.1:1".into()],
    );
    let o = plexus(&["health", "--connect", &lonely.api]);
    assert_eq!(o.code, 0, "liveness needs no token: {o:?}");
    assert_eq!(o.stdout.trim(), "lonely: live");
    let o = plexus(&["health", "--connect", &lonely.api, "--ready"]);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(
        o.stderr.contains("joining") && o.stderr.contains("127.0.0.1:1"),
        "the reason names the seeds: {o:?}"
    );
    let (code, body) = get(&lonely.api, "/v1/ready");
    assert_eq!(code, 503);
    assert_eq!(body["ready"], false);
    // The token from the file (newline trimmed) is the one the API wants.
    assert_eq!(plexus(&["status", "--connect", &lonely.api]).code, 1);
    let o = plexus(&[
        "--api-token-file",
        &token,
        "status",
        "--connect",
        &lonely.api,
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    let o = plexus(&[
        "--api-token",
        "t0ken-t0ken-t0ken",
        "status",
        "--connect",
        &lonely.api,
    ]);
    assert_eq!(o.code, 0, "{o:?}");

    // A first node (no seed names another) is ready once its plugins run.
    let first = Node::start(
        NodeSpec {
            name: "first".into(),
            plugins: vec!["exec-automator".into()],
            ..Default::default()
        },
        dir.path(),
        "127.0.0.1:0",
        "127.0.0.1:0",
        &[],
    );
    wait_for(Duration::from_secs(20), "first to be ready", || {
        (plexus(&["health", "--connect", &first.api, "--ready"]).code == 0).then_some(())
    });
    // A node seeded from it becomes ready by joining it.
    let second = Node::start(
        NodeSpec {
            name: "second".into(),
            ..Default::default()
        },
        dir.path(),
        "127.0.0.1:0",
        "127.0.0.1:0",
        std::slice::from_ref(&first.cluster),
    );
    wait_for(Duration::from_secs(20), "second to be ready", || {
        let (code, body) = get(&second.api, "/v1/ready");
        (code == 200 && body["ready"] == true).then_some(())
    });
    assert_eq!(
        plexus(&["health", "--connect", "127.0.0.1:1"]).code,
        1,
        "nothing listening: not live"
    );
}

#[test]
fn secrets_come_from_files_and_a_bad_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = |args: &[&str]| {
        let mut all = vec!["node", "--name", "n", "--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let o = Command::new(bin())
            .args(&all)
            .env_remove("PLEXUS_COOKIE")
            .env_remove("PLEXUS_API_TOKEN")
            .output()
            .expect("run plexus");
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let missing = d.join("no-such-cookie").display().to_string();
    let (code, err) = run(&["--cookie-file", &missing]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--cookie-file") && err.contains(&missing),
        "{err}"
    );
    let empty = write(d, "empty", "\n");
    let (code, err) = run(&["--cookie-file", &empty]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&empty) && err.contains("empty"), "{err}");
    let cookie = write(d, "cookie", "c00kie\n");
    let (code, err) = run(&["--cookie-file", &cookie, "--cookie", "other"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("both"), "{err}");
    let (code, err) = run(&["--api-token-file", &missing, "--cookie", "x"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--api-token-file") && err.contains(&missing),
        "{err}"
    );

    // The cookie read from the file (newline trimmed) is the cluster's:
    // a node given the same cookie on the command line joins it.
    let a = start_raw(d, "a", &["--cookie-file", &cookie]);
    let a_cluster = {
        let s = plexus(&["status", "--connect", &a.api, "--json"]).json();
        s["cluster_addr"].as_str().unwrap().to_string()
    };
    let b = start_raw(d, "b", &["--cookie", "c00kie", "--seed", &a_cluster]);
    wait_for(Duration::from_secs(20), "b to join a", || {
        let s = plexus(&["status", "--connect", &b.api, "--json"]);
        (s.code == 0 && member(&s.json(), "a").is_some_and(|m| m["status"] == "up")).then_some(())
    });
    // A wrong cookie file keeps a node out.
    let wrong = write(d, "wrong", "c00kie-not\n");
    let c = start_raw(d, "c", &["--cookie-file", &wrong, "--seed", &a_cluster]);
    let (code, body) = get(&c.api, "/v1/ready");
    assert_eq!(code, 503, "{body}");
    let s = plexus(&["status", "--connect", &a.api, "--json"]).json();
    assert!(
        member(&s, "c").is_none(),
        "c joined with a wrong cookie: {s}"
    );
}

#[test]
fn seed_dns_resolves_the_name_and_joins() {
    let dir = tempfile::tempdir().unwrap();
    let first = Node::start(
        NodeSpec {
            name: "first".into(),
            ..Default::default()
        },
        dir.path(),
        "127.0.0.1:0",
        "127.0.0.1:0",
        &[],
    );
    let port = first.cluster.rsplit_once(':').unwrap().1.to_string();
    // `localhost` resolves to 127.0.0.1 (and ::1, where nobody listens):
    // each address is dialled and the one that answers joins.
    let joiner = Node::start(
        NodeSpec {
            name: "joiner".into(),
            extra: vec!["--seed-dns".into(), format!("localhost:{port}")],
            ..Default::default()
        },
        dir.path(),
        "127.0.0.1:0",
        "127.0.0.1:0",
        &[],
    );
    wait_for(Duration::from_secs(20), "joiner to be ready", || {
        let (code, _) = get(&joiner.api, "/v1/ready");
        (code == 200).then_some(())
    });
    let s = first.status().expect("status");
    assert_eq!(
        member(&s, "joiner").map(|m| m["status"].clone()),
        Some("up".into())
    );
    // A name that does not resolve is not an error: the node waits alone.
    let o = plexus(&[
        "node",
        "--name",
        "x",
        "--listen",
        "127.0.0.1:0",
        "--seed-dns",
        "plexus:http",
        "--check",
    ]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(
        o.stderr.contains("node.seed_dns") && o.stderr.contains("plexus:http"),
        "{o:?}"
    );
}

#[test]
fn sigterm_drains_the_work_in_flight_then_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let cat = dir.path().join("catalog");
    std::fs::create_dir_all(&cat).unwrap();
    std::fs::write(cat.join("slow.toml"), sim_manifest("slow", true, &["work"])).unwrap();
    let mut c = Cluster::start(vec![
        NodeSpec {
            name: "keeper".into(),
            catalogs: vec![cat.clone()],
            plugins: vec![],
            ..Default::default()
        },
        NodeSpec {
            name: "leaver".into(),
            catalogs: vec![cat.clone()],
            plugins: vec!["slow".into()],
            extra: vec!["--drain-grace".into(), "60s".into()],
        },
    ]);
    let slow = r#"{"$sim":{"delay_ms":4000}}"#;
    // Two requests in flight on the leaver: one taken by its own API, one
    // taken by the keeper's API and run on the leaver.
    let mut running = vec![];
    for via in ["leaver", "keeper"] {
        let api = c.node(via).api.clone();
        running.push(std::thread::spawn(move || {
            plexus(&[
                "exec",
                "--connect",
                &api,
                "--plugin",
                "slow",
                "--command",
                "work",
                "--input",
                slow,
                "--timeout-ms",
                "30000",
                "--json",
            ])
        }));
    }
    let leaver_api = c.node("leaver").api.clone();
    wait_for(
        Duration::from_secs(20),
        "both requests in flight on the leaver",
        || {
            let (_, b) = get(&leaver_api, "/v1/ready");
            // Its own API request and two plugin calls.
            (b["in_flight"].as_u64() >= Some(3)).then_some(())
        },
    );
    kill(c.node("leaver").pid(), Signal::SIGTERM).expect("SIGTERM");
    let (code, body) = wait_for(
        Duration::from_secs(10),
        "the leaver to report draining",
        || {
            let (code, b) = get(&leaver_api, "/v1/ready");
            (code == 503).then_some((code, b))
        },
    );
    assert_eq!(code, 503);
    assert!(
        body["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("draining"),
        "{body}"
    );
    // New work is refused while the old work finishes.
    let o = c.node("leaver").exec("slow", "work", None);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(o.stderr.contains("draining"), "{o:?}");
    assert_eq!(
        plexus(&["health", "--connect", &leaver_api]).code,
        0,
        "still live while draining"
    );
    for r in running {
        let o = r.join().unwrap();
        assert_eq!(o.code, 0, "an accepted request must be answered: {o:?}");
        assert_eq!(o.json()["node"], "leaver", "{o:?}");
    }
    // Then it leaves and exits 0.
    let leaver = c.node_mut("leaver");
    let child = leaver.child.as_mut().unwrap();
    let status = wait_for(Duration::from_secs(20), "the leaver to exit", || {
        child.try_wait().unwrap()
    });
    assert_eq!(status.code(), Some(0), "{}", leaver.log_text());
    leaver.child = None;
    let s = c.node("keeper").status().unwrap();
    let m = member(&s, "leaver")
        .expect("keeper knows the leaver")
        .clone();
    assert_ne!(m["status"], "up", "{s}");
}

/// Every `plexus_*` name in `text` (histogram series reduced to their
/// family: `_bucket`, `_count`, `_sum`).
fn series_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("plexus_") {
        let start = i + at;
        let word_start =
            start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        let mut end = start;
        while end < b.len()
            && (b[end].is_ascii_lowercase() || b[end].is_ascii_digit() || b[end] == b'_')
        {
            end += 1;
        }
        if word_start {
            let name = &text[start..end];
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            out.insert(family.to_string());
        }
        i = end;
    }
    out
}

#[test]
fn the_dashboard_and_the_alerts_use_series_a_node_exports() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dashboard = std::fs::read_to_string(root.join("deploy/grafana/plexus.json")).unwrap();
    let rules = std::fs::read_to_string(root.join("deploy/prometheus/plexus-rules.yml")).unwrap();
    let json: Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert!(json["panels"].as_array().is_some_and(|p| p.len() > 10));
    let used: std::collections::BTreeSet<String> = series_names(&dashboard)
        .into_iter()
        .chain(series_names(&rules))
        .collect();
    for must in [
        "plexus_members",
        "plexus_plugin_breaker_open",
        "plexus_workflow_runs",
        "plexus_state_buckets_differing",
    ] {
        assert!(used.contains(must), "{must} is not used: {used:?}");
    }
    let c = Cluster::start(vec![
        NodeSpec {
            name: "m1".into(),
            plugins: vec!["exec-automator".into()],
            ..Default::default()
        },
        NodeSpec {
            name: "m2".into(),
            ..Default::default()
        },
    ]);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let text = agent
        .get(format!("http://{}/metrics", c.nodes[0].api))
        .call()
        .expect("GET /metrics")
        .body_mut()
        .read_to_string()
        .unwrap();
    let missing: Vec<&String> = used
        .iter()
        .filter(|n| !text.contains(&format!("# TYPE {n} ")))
        .collect();
    assert!(missing.is_empty(), "not exported by a node: {missing:?}");
    // Anti-entropy compares the two replicas: the convergence gauge has a row.
    wait_for(
        Duration::from_secs(20),
        "a digest comparison with m2",
        || {
            let t = agent
                .get(format!("http://{}/metrics", c.nodes[0].api))
                .call()
                .ok()?
                .body_mut()
                .read_to_string()
                .ok()?;
            t.contains("plexus_state_buckets_differing{peer=\"m2\"} 0")
                .then_some(())
        },
    );
}
