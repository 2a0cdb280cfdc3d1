//! Multi-host tests: three `plexus node` containers on their own Docker
//! network (started by `tests/docker/cluster.sh`), driven from the host
//! through the `plexus` CLI, under `docker kill`, `docker network
//! disconnect` and `docker restart`.
//!
//! They need a Docker engine, so `cargo test` skips them (`#[ignore]`);
//! `.ci/run` runs them when `docker info` works:
//!
//! ```sh
//! cargo test -p plexus-tests --test docker -- --ignored --test-threads=1
//! ```
//!
//! Every run has its own id: containers `plexus-<id>-node{1,2,3}`, networks
//! `plexus-<id>` and `plexus-<id>-side`, image `plexus-test:<id>`, all
//! labelled `plexus.test=docker` and with the test process's pid. A guard
//! removes them when the test ends, also when it fails; what a killed test
//! process left behind is removed by the next run (`cluster.sh
//! prune-orphans`), or by hand with `tests/docker/cluster.sh prune`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plexus_tests::{member, plexus, wait_for, Output};
use serde_json::Value;

/// One cluster at a time: three containers per test are enough for two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/cluster.sh")
}

/// Run `docker ARGS`; panics with its stderr when it fails.
fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker {args:?}: {e}"));
    assert!(
        out.status.success(),
        "docker {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A 3-node cluster in containers; dropping it removes every container,
/// network and image tag of its run (and prints the node logs if the test
/// failed).
struct DockerCluster {
    env: HashMap<String, String>,
    /// Host directory holding the bind-mounted data dirs `node{1,2,3}/`.
    data: tempfile::TempDir,
    _lock: std::sync::MutexGuard<'static, ()>,
}

impl DockerCluster {
    /// Start the cluster; `plugins[i]` is what node i+1 hosts, `catalog` is
    /// mounted as every node's extra catalog.
    fn up(plugins: [&str; 3], catalog: Option<&Path>) -> DockerCluster {
        let lock = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        // What earlier test processes left behind when they were killed.
        let o = Command::new(script())
            .arg("prune-orphans")
            .output()
            .expect("run tests/docker/cluster.sh");
        assert!(
            o.status.success(),
            "cluster.sh prune-orphans failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let data = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new(script());
        cmd.arg("up")
            .env("PLEXUS_DOCKER_OWNER", std::process::id().to_string())
            .env("PLEXUS_BIN", plexus_tests::bin())
            .env("PLEXUS_DOCKER_DATA", data.path())
            .env("PLEXUS_NODE1_PLUGINS", plugins[0])
            .env("PLEXUS_NODE2_PLUGINS", plugins[1])
            .env("PLEXUS_NODE3_PLUGINS", plugins[2])
            .env("PLEXUS_LOG", "info,plexus_node=debug");
        if let Some(c) = catalog {
            cmd.env("PLEXUS_DOCKER_CATALOG", c);
        }
        let out = cmd.output().expect("run tests/docker/cluster.sh");
        // cluster.sh removes what it made when `up` fails.
        assert!(
            out.status.success(),
            "cluster.sh up failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let env: HashMap<String, String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert!(
            env.contains_key("RUN"),
            "cluster.sh printed no RUN: {env:?}"
        );
        DockerCluster {
            env,
            data,
            _lock: lock,
        }
    }

    fn get(&self, key: &str) -> &str {
        self.env
            .get(key)
            .unwrap_or_else(|| panic!("cluster.sh did not print {key}"))
    }

    /// The API address of node `n` (1-based) on the cluster network.
    fn api(&self, n: usize) -> String {
        self.get(&format!("NODE{n}_API")).to_string()
    }

    fn container(&self, n: usize) -> String {
        self.get(&format!("NODE{n}_CONTAINER")).to_string()
    }

    /// Node `n`'s data directory on the host.
    fn data_dir(&self, n: usize) -> PathBuf {
        self.data.path().join(format!("node{n}"))
    }

    fn status(&self, api: &str) -> Option<Value> {
        let o = plexus(&["status", "--connect", api, "--json"]);
        (o.code == 0).then(|| o.json())
    }

    /// Node `n`'s status of member `name` (`up`, `unreachable`, `down`).
    fn member_status(&self, n: usize, name: &str) -> Option<String> {
        let s = self.status(&self.api(n))?;
        member(&s, name)?["status"].as_str().map(str::to_string)
    }

    /// Wait until node `n` sees every member in `want` with that status.
    fn wait_view(&self, n: usize, want: &[(&str, &str)], timeout: Duration) {
        let what = format!("node{n} to see {want:?}");
        wait_for(timeout, &what, || {
            want.iter()
                .all(|(m, s)| self.member_status(n, m).as_deref() == Some(*s))
                .then_some(())
        });
    }

    /// Wait until every node sees all three members up.
    fn wait_all_up(&self, timeout: Duration) {
        let all = [("node1", "up"), ("node2", "up"), ("node3", "up")];
        for n in 1..=3 {
            self.wait_view(n, &all, timeout);
        }
    }

    fn logs(&self, n: usize) -> String {
        let out = Command::new("docker")
            .args(["logs", "--tail", "300", &self.container(n)])
            .output();
        match out {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("(docker logs failed: {e})"),
        }
    }
}

impl Drop for DockerCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for n in 1..=3 {
                eprintln!("--- log of node{n} (last 300 lines)\n{}", self.logs(n));
            }
        }
        let run = self.get("RUN").to_string();
        match Command::new(script()).args(["down", &run]).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "cluster.sh down {run} failed (remove leftovers with `tests/docker/cluster.sh prune`): {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("cannot run cluster.sh down {run}: {e}"),
        }
    }
}

const DEFAULT_PLACEMENT: [&str; 3] = [
    "jira-orchestrator,exec-automator",
    "frontend-powerhouse,lobbi-platform-manager",
    "home-assistant-architect,ahling-command-center",
];

fn exec(api: &str, plugin: &str, command: &str, input: &str, timeout_ms: u64) -> Output {
    plexus(&[
        "exec",
        "--connect",
        api,
        "--plugin",
        plugin,
        "--command",
        command,
        "--input",
        input,
        "--timeout-ms",
        &timeout_ms.to_string(),
        "--json",
    ])
}

#[test]
#[ignore = "needs Docker; run by .ci/run (cargo test -p plexus-tests --test docker -- --ignored)"]
fn exec_crosses_containers_and_nodes_advertise_their_own_addresses() {
    let c = DockerCluster::up(DEFAULT_PLACEMENT, None);
    // Each node advertises its container address, never 0.0.0.0.
    for n in 1..=3 {
        let s = c.status(&c.api(n)).expect("status");
        for m in 1..=3 {
            let row = member(&s, &format!("node{m}")).expect("member row");
            assert_eq!(
                row["cluster_addr"],
                c.get(&format!("NODE{m}_CLUSTER")),
                "{s:#}"
            );
            assert_eq!(row["api_addr"], c.api(m).as_str(), "{s:#}");
        }
    }
    // From every node, one plugin of every node.
    let targets = [
        ("jira-orchestrator", "work", "node1"),
        ("frontend-powerhouse", "create-theme", "node2"),
        ("home-assistant-architect", "ha-automation", "node3"),
    ];
    for n in 1..=3 {
        for (plugin, command, host) in targets {
            let o = exec(&c.api(n), plugin, command, r#"{"probe":true}"#, 10_000);
            assert_eq!(o.code, 0, "exec {plugin} via node{n}: {o:?}");
            let r = o.json();
            assert_eq!(r["node"], host, "exec {plugin} via node{n}: {r:#}");
            assert_eq!(r["ok"], true, "{r:#}");
        }
    }
}

/// A test catalog: `ledger` (saga steps and compensations), `shipper` (a
/// slow step, only on node3) and `depot` (on node2 and node3).
const TEST_PLUGINS: &[(&str, &str)] = &[
    (
        "ledger.toml",
        r#"
[plugin]
name = "ledger"
[handler]
kind = "sim"
latencyMs = 5
allowFaultInjection = true
[errorHandling.retryPolicy]
maxRetries = 0
[errorHandling.circuitBreaker]
minimumCalls = 100
monitoringWindow = 100
[[commands]]
name = "reserve"
[[commands]]
name = "release"
[[commands]]
name = "charge"
[[commands]]
name = "refund"
"#,
    ),
    (
        "shipper.toml",
        r#"
[plugin]
name = "shipper"
[handler]
kind = "sim"
latencyMs = 5
allowFaultInjection = true
[errorHandling.retryPolicy]
maxRetries = 0
[errorHandling.circuitBreaker]
minimumCalls = 100
monitoringWindow = 100
[[commands]]
name = "ship"
[[commands]]
name = "unship"
"#,
    ),
    (
        "depot.toml",
        r#"
[plugin]
name = "depot"
[handler]
kind = "sim"
latencyMs = 5
[errorHandling.retryPolicy]
maxRetries = 0
[errorHandling.circuitBreaker]
minimumCalls = 100
monitoringWindow = 100
[[commands]]
name = "count"
"#,
    ),
];

/// A saga of three steps: `ledger` reserve and charge, `shipper` ship;
/// `charge` and `ship` take the given `$sim` directives (delays).
fn order_saga(charge_sim: &str, ship_sim: &str) -> String {
    format!(
        r#"
[workflow]
name = "order"
kind = "saga"

[retry]
initial_delay_ms = 10
max_delay_ms = 50

[[steps]]
id = "reserve"
plugin = "ledger"
command = "reserve"
input = {{ item = "{{{{input.item}}}}" }}
compensate = {{ command = "release", input = {{ item = "{{{{result.input.item}}}}" }} }}

[[steps]]
id = "charge"
plugin = "ledger"
command = "charge"
input = {{ amount = 42, "$sim" = {charge_sim} }}
compensate = {{ command = "refund", input = {{ amount = "{{{{result.input.amount}}}}" }} }}

[[steps]]
id = "ship"
plugin = "shipper"
command = "ship"
input = {{ item = "{{{{input.item}}}}", "$sim" = {ship_sim} }}
max_attempts = 1
timeout_ms = 90000
compensate = {{ command = "unship", input = {{ item = "{{{{input.item}}}}" }} }}
"#
    )
}

/// The commands in a plugin's effect log (`data_dir/effects/P.jsonl`), in order.
fn effects(dir: &Path, plugin: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join("effects").join(format!("{plugin}.jsonl")))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["command"].as_str().map(str::to_string))
        .collect()
}

fn run_report(api: &str, id: &str) -> Option<Value> {
    let o = plexus(&["workflows", "--connect", api, "--json"]);
    if o.code != 0 {
        return None;
    }
    o.json().as_array()?.iter().find(|r| r["id"] == id).cloned()
}

#[test]
#[ignore = "needs Docker; run by .ci/run (cargo test -p plexus-tests --test docker -- --ignored)"]
fn docker_kill_marks_the_node_down_its_plugins_fail_fast_or_move_and_the_saga_compensates() {
    let tmp = tempfile::tempdir().unwrap();
    let cat = tmp.path().join("catalog");
    std::fs::create_dir_all(&cat).unwrap();
    for (f, text) in TEST_PLUGINS {
        std::fs::write(cat.join(f), text).unwrap();
    }
    let c = DockerCluster::up(
        ["jira-orchestrator", "ledger,depot", "shipper,depot"],
        Some(&cat),
    );
    let (api1, api2) = (c.api(1), c.api(2));

    // A workload through node1 on `depot`, hosted on node2 and node3.
    let stop = Arc::new(AtomicBool::new(false));
    let workload = {
        let (stop, api) = (stop.clone(), api1.clone());
        std::thread::spawn(move || {
            let mut results = vec![];
            while !stop.load(Ordering::Relaxed) {
                let o = exec(&api, "depot", "count", "{}", 5_000);
                let node =
                    (o.code == 0).then(|| o.json()["node"].as_str().unwrap_or("").to_string());
                results.push((Instant::now(), node, o.stderr));
            }
            results
        })
    };

    // The saga runs on node1; its third step (60 s) runs on node3.
    let f = tmp.path().join("order.toml");
    std::fs::write(&f, order_saga("{}", "{ delay_ms = 60000 }")).unwrap();
    let o = plexus(&[
        "run",
        "--connect",
        &api1,
        f.to_str().unwrap(),
        "--input",
        r#"{"item":"lamp"}"#,
        "--detach",
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    let id = o.stdout.trim().to_string();
    wait_for(
        Duration::from_secs(30),
        "the ship step to be running",
        || (run_report(&api1, &id)?["steps"][2]["status"] == "running").then_some(()),
    );

    docker(&["kill", &c.container(3)]);
    let killed = Instant::now();

    // The others mark node3 down.
    c.wait_view(1, &[("node3", "down")], Duration::from_secs(30));
    c.wait_view(2, &[("node3", "down")], Duration::from_secs(30));
    let down_after = killed.elapsed();

    // The saga does not wait out its 60 s step: the step fails and the
    // completed steps are compensated in reverse order, each once.
    let report = wait_for(Duration::from_secs(30), "the saga to end", || {
        let r = run_report(&api1, &id)?;
        (r["status"] != "running" && r["status"] != "compensating").then_some(r)
    });
    assert_eq!(report["status"], "compensated", "{report:#}");
    let steps: Vec<&str> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        steps,
        ["compensated", "compensated", "failed"],
        "{report:#}"
    );
    // The step failed because its node went down, not by waiting out its
    // request timeout (30 s).
    let step_error = report["steps"][2]["error"].as_str().unwrap_or("");
    assert!(
        step_error.contains("node3 went down"),
        "ship step error: {report:#}"
    );
    assert!(
        killed.elapsed() < Duration::from_secs(25),
        "the saga took {:?} after the kill: it waited for the dead step",
        killed.elapsed()
    );
    assert_eq!(
        effects(&c.data_dir(2), "ledger"),
        ["reserve", "charge", "refund", "release"]
    );

    // A plugin only node3 hosted fails fast, naming the node.
    let t = Instant::now();
    let o = exec(&api1, "shipper", "ship", "{}", 30_000);
    let took = t.elapsed();
    assert_eq!(o.code, 1, "{o:?}");
    assert!(
        o.stderr.contains("shipper") && o.stderr.contains("node3") && o.stderr.contains("down"),
        "unclear error: {}",
        o.stderr
    );
    assert!(
        took < Duration::from_secs(10),
        "exec of a plugin on a down node took {took:?} (its timeout is 30 s)"
    );
    // Also through node2.
    let o = exec(&api2, "shipper", "ship", "{}", 30_000);
    assert_eq!(o.code, 1, "{o:?}");

    // A plugin also hosted on node2 moves there: once node3 is down, every
    // call succeeds on node2.
    wait_for(
        Duration::from_secs(30),
        "10 depot calls in a row on node2",
        || {
            (0..10)
                .map(|_| exec(&api1, "depot", "count", "{}", 5_000))
                .all(|o| o.code == 0 && o.json()["node"] == "node2")
                .then_some(())
        },
    );
    stop.store(true, Ordering::Relaxed);
    let results = workload.join().expect("workload thread");
    let before: Vec<_> = results.iter().filter(|(t, _, _)| *t < killed).collect();
    assert!(
        before.iter().any(|(_, n, _)| n.as_deref() == Some("node3")),
        "the workload never reached node3 before the kill: {before:?}"
    );
    // Calls that failed around the kill say why.
    for (_, node, err) in &results {
        if node.is_none() {
            assert!(err.starts_with("error:"), "unclear failure: {err}");
        }
    }
    eprintln!(
        "node3 marked down {down_after:?} after docker kill; {} depot calls, {} failed; ship step: {}",
        results.len(),
        results.iter().filter(|(_, n, _)| n.is_none()).count(),
        report["steps"][2]["error"]
    );

    // node3 comes back from its data dir with a higher generation and
    // serves its plugin again.
    let generation = |n: usize| {
        c.status(&c.api(n))
            .and_then(|s| member(&s, "node3")?["generation"].as_u64())
    };
    let before = generation(1).expect("node1 knows node3's generation");
    docker(&["start", &c.container(3)]);
    c.wait_all_up(Duration::from_secs(60));
    wait_for(
        Duration::from_secs(30),
        "node1 to see node3's new generation",
        || (generation(1)? > before).then_some(()),
    );
    wait_for(Duration::from_secs(30), "shipper to answer again", || {
        let o = exec(&api1, "shipper", "ship", "{}", 5_000);
        (o.code == 0 && o.json()["node"] == "node3").then_some(())
    });
}

#[test]
#[ignore = "needs Docker; run by .ci/run (cargo test -p plexus-tests --test docker -- --ignored)"]
fn a_saga_whose_node_is_killed_resumes_after_docker_start_and_completes_each_effect_once() {
    let tmp = tempfile::tempdir().unwrap();
    let cat = tmp.path().join("catalog");
    std::fs::create_dir_all(&cat).unwrap();
    for (f, text) in TEST_PLUGINS {
        std::fs::write(cat.join(f), text).unwrap();
    }
    let c = DockerCluster::up(["jira-orchestrator", "ledger", "shipper"], Some(&cat));
    let api1 = c.api(1);
    // The saga runs on node1; its second step takes 3 s on node2.
    let f = tmp.path().join("order.toml");
    std::fs::write(&f, order_saga("{ delay_ms = 3000 }", "{}")).unwrap();
    let o = plexus(&[
        "run",
        "--connect",
        &api1,
        f.to_str().unwrap(),
        "--input",
        r#"{"item":"desk"}"#,
        "--detach",
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    let id = o.stdout.trim().to_string();
    wait_for(
        Duration::from_secs(30),
        "the charge step to be running",
        || (run_report(&api1, &id)?["steps"][1]["status"] == "running").then_some(()),
    );
    // Kill the saga's own node mid-step, then start the same container: the
    // journal on its data dir survives and the saga resumes.
    docker(&["kill", &c.container(1)]);
    c.wait_view(2, &[("node1", "down")], Duration::from_secs(30));
    docker(&["start", &c.container(1)]);
    let report = wait_for(
        Duration::from_secs(60),
        "the saga to end after the restart",
        || {
            let r = run_report(&api1, &id)?;
            (r["status"] == "completed" || r["status"] == "compensated").then_some(r)
        },
    );
    assert_eq!(report["status"], "completed", "{report:#}");
    // Each effect once, although `charge` was sent again after the restart.
    assert_eq!(effects(&c.data_dir(2), "ledger"), ["reserve", "charge"]);
    assert_eq!(effects(&c.data_dir(3), "shipper"), ["ship"]);
}

/// `plexus state put` of a JSON value; true when acknowledged.
fn put(api: &str, key: &str, value: &str) -> bool {
    put_output(api, key, value, "local").code == 0
}

fn put_output(api: &str, key: &str, value: &str, consistency: &str) -> Output {
    plexus(&[
        "state",
        "put",
        "--connect",
        api,
        "--as",
        "exec-automator",
        key,
        value,
        "--consistency",
        consistency,
        "--timeout-ms",
        "3000",
    ])
}

fn incr(api: &str, key: &str) -> bool {
    let o = plexus(&[
        "state",
        "incr",
        "--connect",
        api,
        "--as",
        "exec-automator",
        key,
        "--timeout-ms",
        "3000",
    ]);
    o.code == 0
}

/// The value of `key` in node `api`'s local replica.
fn get(api: &str, key: &str) -> Option<Value> {
    let o = plexus(&[
        "state",
        "get",
        "--connect",
        api,
        "--as",
        "exec-automator",
        key,
        "--json",
    ]);
    (o.code == 0).then(|| o.json()["value"].clone())
}

/// Every replica holds every acknowledged write with its value, and the
/// counter `hits` counts at least every acknowledged increment (an increment
/// whose answer was lost may have applied too, so at most `tried`).
fn wait_converged(
    c: &DockerCluster,
    acked: &BTreeMap<String, String>,
    hits_acked: u64,
    hits_tried: u64,
) {
    for n in 1..=3 {
        let api = c.api(n);
        let mut missing = vec![];
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for(
                Duration::from_secs(60),
                &format!("node{n} to hold every acknowledged write"),
                || {
                    missing = acked
                        .iter()
                        .filter(|(k, v)| get(&api, k).map(|g| g.to_string()) != Some(v.to_string()))
                        .map(|(k, _)| k.clone())
                        .collect();
                    let hits = get(&api, "hits").and_then(|v| v.as_u64()).unwrap_or(0);
                    (missing.is_empty() && hits >= hits_acked).then_some(())
                },
            )
        }));
        if result.is_err() {
            panic!(
                "node{n} lacks {} acknowledged writes: {:?}; hits {:?} (acked {hits_acked})",
                missing.len(),
                missing,
                get(&api, "hits")
            );
        }
        let hits = get(&api, "hits").and_then(|v| v.as_u64()).unwrap_or(0);
        assert!(
            hits <= hits_tried,
            "node{n}: hits {hits} > {hits_tried} increments tried"
        );
    }
}

#[test]
#[ignore = "needs Docker; run by .ci/run (cargo test -p plexus-tests --test docker -- --ignored)"]
fn a_partitioned_node_converges_after_reconnect_and_no_acknowledged_write_is_lost() {
    let c = DockerCluster::up(DEFAULT_PLACEMENT, None);
    let (api1, api2, api3) = (c.api(1), c.api(2), c.api(3));
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    let (mut hits_acked, mut hits_tried) = (0u64, 0u64);
    let write = |api: &str, key: String, value: String, acked: &mut BTreeMap<_, _>| {
        assert!(put(api, &key, &value), "put {key} on {api} failed");
        acked.insert(key, value);
    };
    for i in 0..5 {
        write(&api1, format!("before/{i}"), format!("{i}"), &mut acked);
    }
    // Majority writes through node1 and node2 all along: before, during and
    // after the partition. A majority is two of three: node3's absence does
    // not stop them.
    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let (stop, apis) = (stop.clone(), [api1.clone(), api2.clone()]);
        std::thread::spawn(move || {
            let mut w = Writes::default();
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let (key, value) = (format!("bg/{i:04}"), format!("{i}"));
                w.tried += 1;
                let o = put_output(&apis[i % 2], &key, &value, "majority");
                if o.code == 0 {
                    w.acked.insert(key, value);
                } else {
                    *w.errors.entry(o.stderr).or_default() += 1;
                }
                i += 1;
            }
            w
        })
    };

    // Partition: node3 leaves the cluster network. The host still reaches it
    // through a second network the other nodes are not on.
    let side = c.get("SIDE_NETWORK").to_string();
    let side_prefix = c.get("SIDE_SUBNET").trim_end_matches(".0/24").to_string();
    let side_ip = format!("{side_prefix}.13");
    docker(&[
        "network",
        "connect",
        "--ip",
        &side_ip,
        &side,
        &c.container(3),
    ]);
    docker(&["network", "disconnect", c.get("NETWORK"), &c.container(3)]);
    let api3_side = format!("{side_ip}:7201");
    c.wait_view(1, &[("node3", "down")], Duration::from_secs(30));
    c.wait_view(2, &[("node3", "down")], Duration::from_secs(30));
    wait_for(
        Duration::from_secs(30),
        "node3 to see node1 and node2 down",
        || {
            let s = c.status(&api3_side)?;
            ["node1", "node2"]
                .iter()
                .all(|m| {
                    member(&s, m)
                        .map(|r| r["status"] == "down")
                        .unwrap_or(false)
                })
                .then_some(())
        },
    );

    // Writes on both sides, including the same key and a shared counter.
    for i in 0..10 {
        let api = if i % 2 == 0 { &api1 } else { &api2 };
        write(api, format!("major/{i}"), format!("{i}"), &mut acked);
        write(&api3_side, format!("minor/{i}"), format!("{i}"), &mut acked);
        for a in [api.as_str(), api3_side.as_str()] {
            hits_tried += 1;
            if incr(a, "hits") {
                hits_acked += 1;
            }
        }
    }
    assert!(put(&api1, "both", r#""majority side""#));
    assert!(put(&api3_side, "both", r#""minority side""#));
    // The minority side cannot reach a majority: the write is refused in time.
    let o = plexus(&[
        "state",
        "put",
        "--connect",
        &api3_side,
        "--as",
        "exec-automator",
        "quorum",
        "1",
        "--consistency",
        "majority",
        "--timeout-ms",
        "1500",
    ]);
    assert_eq!(o.code, 1, "a majority write on the minority side: {o:?}");
    assert!(o.stderr.contains("504"), "{}", o.stderr);

    // Heal: node3 rejoins the cluster network at its old address.
    docker(&[
        "network",
        "connect",
        "--ip",
        c.get("NODE3_IP"),
        c.get("NETWORK"),
        &c.container(3),
    ]);
    docker(&["network", "disconnect", &side, &c.container(3)]);
    let healed = Instant::now();
    c.wait_all_up(Duration::from_secs(60));
    stop.store(true, Ordering::Relaxed);
    let bg = background.join().expect("background writer");
    assert!(
        bg.acked.len() >= 10,
        "only {} of {} majority writes were acknowledged: {:#?}",
        bg.acked.len(),
        bg.tried,
        bg.errors
    );
    let bg_acked = bg.acked.len();
    acked.extend(bg.acked);
    wait_converged(&c, &acked, hits_acked, hits_tried);
    // The concurrently written key has one value everywhere.
    wait_for(
        Duration::from_secs(30),
        "`both` to agree on all nodes",
        || {
            let v: Vec<Option<Value>> = (1..=3).map(|n| get(&c.api(n), "both")).collect();
            (v[0].is_some() && v.iter().all(|x| *x == v[0])).then_some(())
        },
    );
    let hits: Vec<Option<Value>> = (1..=3).map(|n| get(&c.api(n), "hits")).collect();
    assert!(
        hits.iter().all(|h| *h == hits[0]),
        "counters differ: {hits:?}"
    );
    eprintln!(
        "converged {:?} after reconnect: {} keys ({bg_acked} of {} majority writes during the run acknowledged), hits {:?} ({hits_acked} acknowledged)",
        healed.elapsed(),
        acked.len(),
        bg.tried,
        hits[0]
    );
    assert!(get(&api3, "minor/0").is_some());
}

/// What one writer did.
#[derive(Default)]
struct Writes {
    acked: BTreeMap<String, String>,
    tried: u64,
    hits_acked: u64,
    hits_tried: u64,
    /// How the unacknowledged puts failed, with how often.
    errors: BTreeMap<String, u64>,
}

#[test]
#[ignore = "needs Docker; run by .ci/run (cargo test -p plexus-tests --test docker -- --ignored)"]
fn a_rolling_restart_of_all_three_loses_no_acknowledged_write() {
    let c = DockerCluster::up(DEFAULT_PLACEMENT, None);
    let apis: Vec<String> = (1..=3).map(|n| c.api(n)).collect();
    let generations: Vec<u64> = (1..=3)
        .map(|n| {
            c.status(&c.api(n)).expect("status")["generation"]
                .as_u64()
                .expect("generation")
        })
        .collect();

    // One writer per node for the whole restart, each on its own keys;
    // writes answered with exit 0 are acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = apis
        .iter()
        .enumerate()
        .map(|(n, api)| {
            let (stop, api) = (stop.clone(), api.clone());
            std::thread::spawn(move || {
                let mut w = Writes::default();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let (key, value) = (format!("roll/node{}/{i:04}", n + 1), format!("{i}"));
                    w.tried += 1;
                    let o = put_output(&api, &key, &value, "local");
                    if o.code == 0 {
                        w.acked.insert(key, value);
                    } else {
                        *w.errors.entry(o.stderr).or_default() += 1;
                    }
                    w.hits_tried += 1;
                    if incr(&api, "hits") {
                        w.hits_acked += 1;
                    }
                    i += 1;
                }
                w
            })
        })
        .collect();

    for n in 1..=3 {
        let name = format!("node{n}");
        docker(&["restart", "--time", "10", &c.container(n)]);
        // Rejoined: a higher generation, seen by the other two, and its own
        // view has everyone up.
        for m in 1..=3 {
            wait_for(
                Duration::from_secs(60),
                &format!("node{m} to see {name} back with a new generation"),
                || {
                    let s = c.status(&c.api(m))?;
                    let row = member(&s, &name)?;
                    (row["status"] == "up" && row["generation"].as_u64()? > generations[n - 1])
                        .then_some(())
                },
            );
        }
        c.wait_all_up(Duration::from_secs(60));
    }
    stop.store(true, Ordering::Relaxed);
    let mut all = Writes::default();
    for (n, w) in writers.into_iter().enumerate() {
        let w = w.join().expect("writer thread");
        assert!(
            w.acked.len() >= 5,
            "node{}: only {} of {} writes were acknowledged during the restart",
            n + 1,
            w.acked.len(),
            w.tried
        );
        eprintln!("node{} unacknowledged puts: {:#?}", n + 1, w.errors);
        for e in w.errors.keys() {
            assert!(e.starts_with("error: "), "unclear failure: {e}");
        }
        all.acked.extend(w.acked);
        all.tried += w.tried;
        all.hits_acked += w.hits_acked;
        all.hits_tried += w.hits_tried;
    }
    let Writes {
        acked,
        tried,
        hits_acked,
        hits_tried,
        ..
    } = all;
    wait_converged(&c, &acked, hits_acked, hits_tried);
    eprintln!(
        "rolling restart: {} of {tried} writes acknowledged, all on every node; hits acknowledged {hits_acked} of {hits_tried}",
        acked.len()
    );
}

/// No Docker needed: a node listening on 0.0.0.0 (as in a container) tells
/// clients and peers its advertised host, in its ready line and its status.
#[test]
fn a_node_on_0_0_0_0_reports_its_advertised_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let spec = plexus_tests::NodeSpec {
        name: "solo".into(),
        plugins: vec!["exec-automator".into()],
        catalogs: vec![],
        extra: vec!["--advertise".into(), "127.0.0.1".into()],
    };
    let n = plexus_tests::Node::start(spec, dir.path(), "0.0.0.0:0", "0.0.0.0:0", &[]);
    assert!(
        n.api.starts_with("127.0.0.1:"),
        "ready line api_addr {}",
        n.api
    );
    assert!(
        n.cluster.starts_with("127.0.0.1:"),
        "ready line cluster_addr {}",
        n.cluster
    );
    let s = n.status().expect("status");
    assert_eq!(s["api_addr"], n.api.as_str(), "{s:#}");
    assert_eq!(
        member(&s, "solo").expect("self")["api_addr"],
        n.api.as_str()
    );
}
