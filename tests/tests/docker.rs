//! Multi-host tests: three `plexus node` containers on their own Docker
//! network (started by `tests/docker/cluster.sh`), driven from the host
//! through the `plexus` CLI, under `docker kill`, `docker network
//! disconnect` and `docker restart`, one-way partitions and lossy links
//! (iptables rules in a container's network namespace, removed by a guard)
//! and clock skew between nodes (`PLEXUS_CLOCK_SKEW_MS`). The fault menu and
//! what each test checks: tests/docker/README.md.
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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plexus_tests::fixtures::{
    effect_log, effects, order_saga, run_report, step_statuses, write_saga_catalog,
};
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
        DockerCluster::up_skewed(plugins, catalog, [0; 3])
    }

    /// [`DockerCluster::up`] with node i+1's wall clock offset by
    /// `skew_ms[i]` (`PLEXUS_CLOCK_SKEW_MS` in its container).
    fn up_skewed(plugins: [&str; 3], catalog: Option<&Path>, skew_ms: [i64; 3]) -> DockerCluster {
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
        // The nodes' API listens on the containers' addresses, so it has a
        // token; every CLI call of this (one-test-at-a-time) process sends it.
        std::env::set_var("PLEXUS_API_TOKEN", api_token());
        let mut cmd = Command::new(script());
        cmd.arg("up")
            .env("PLEXUS_DOCKER_OWNER", std::process::id().to_string())
            .env("PLEXUS_BIN", plexus_tests::bin())
            .env("PLEXUS_DOCKER_DATA", data.path())
            .env("PLEXUS_NODE1_PLUGINS", plugins[0])
            .env("PLEXUS_NODE2_PLUGINS", plugins[1])
            .env("PLEXUS_NODE3_PLUGINS", plugins[2])
            .env("PLEXUS_LOG", "info,plexus_node=debug");
        for (i, ms) in skew_ms.iter().enumerate() {
            let var = format!("PLEXUS_NODE{}_CLOCK_SKEW_MS", i + 1);
            if *ms == 0 {
                cmd.env_remove(var);
            } else {
                cmd.env(var, ms.to_string());
            }
        }
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

/// This test process's API token for its Docker clusters.
fn api_token() -> &'static str {
    static T: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    T.get_or_init(|| format!("docker-test-{:016x}", rand_u64()))
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish()
}

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

#[test]
#[ignore = "needs Docker; run by .ci/run (cargo test -p plexus-tests --test docker -- --ignored)"]
fn docker_kill_marks_the_node_down_its_plugins_fail_fast_or_move_and_the_saga_settles_once() {
    let tmp = tempfile::tempdir().unwrap();
    let cat = write_saga_catalog(tmp.path());
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

    // The saga runs on node1; its third step (20 s) runs on node3.
    let f = tmp.path().join("order.toml");
    std::fs::write(&f, order_saga("{}", "{ delay_ms = 20000 }")).unwrap();
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

    // The saga does not wait out its 20 s step, and does not compensate
    // around it either: node3 may have shipped before it died, so the step
    // is in doubt and the saga is stuck on it (nothing undone) until node3
    // answers.
    let report = wait_for(Duration::from_secs(30), "the saga to be stuck", || {
        let r = run_report(&api1, &id)?;
        (r["status"] != "running" && r["status"] != "compensating").then_some(r)
    });
    assert_eq!(report["status"], "stuck", "{report:#}");
    assert_eq!(
        step_statuses(&report),
        ["ok", "ok", "running"],
        "{report:#}"
    );
    let step_error = report["steps"][2]["error"].as_str().unwrap_or("");
    assert!(
        step_error.contains("in doubt") && step_error.contains("node3"),
        "ship step error: {report:#}"
    );
    assert!(
        killed.elapsed() < Duration::from_secs(25),
        "the saga took {:?} after the kill: it waited for the dead step",
        killed.elapsed()
    );
    assert_eq!(effects(&c.data_dir(2), "ledger"), ["reserve", "charge"]);

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

    // node1 re-drives the stuck saga once node3 is up: the ship step is
    // re-sent with its key, runs once, and the saga completes.
    let report = wait_for(Duration::from_secs(90), "the stuck saga to settle", || {
        let r = run_report(&api1, &id)?;
        (r["status"] != "stuck" && r["status"] != "running").then_some(r)
    });
    assert_eq!(report["status"], "completed", "{report:#}");
    let key = format!("{id}:2");
    let shipped: Vec<_> = effect_log(&c.data_dir(3), "shipper")
        .into_iter()
        .filter(|(_, k)| *k == key)
        .collect();
    assert_eq!(shipped, [("ship".to_string(), key)], "ship ran once");
    assert_eq!(effects(&c.data_dir(2), "ledger"), ["reserve", "charge"]);
}

#[test]
#[ignore = "needs Docker; run by .ci/run (cargo test -p plexus-tests --test docker -- --ignored)"]
fn a_saga_whose_node_is_killed_resumes_after_docker_start_and_completes_each_effect_once() {
    let tmp = tempfile::tempdir().unwrap();
    let cat = write_saga_catalog(tmp.path());
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
    state_put(
        api,
        key,
        value,
        &["--consistency", consistency, "--timeout-ms", "3000"],
    )
}

/// `plexus state put KEY VALUE` via `api` as `exec-automator`, with `extra`
/// options (consistency, timeout, TTL).
fn state_put(api: &str, key: &str, value: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "state",
        "put",
        "--connect",
        api,
        "--as",
        "exec-automator",
        key,
        value,
    ];
    args.extend_from_slice(extra);
    plexus(&args)
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
    get_json(api, key).map(|v| v["value"].clone())
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
    let o = state_put(
        &api3_side,
        "quorum",
        "1",
        &["--consistency", "majority", "--timeout-ms", "1500"],
    );
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
        // Open on purpose: this test is about addresses, not access.
        extra: vec![
            "--advertise".into(),
            "127.0.0.1".into(),
            "--insecure-open-api".into(),
        ],
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

// ---------------------------------------------------------------------------
// Faults Docker has no built-in for: one-way partitions and lossy links, as
// iptables rules inside a container's network namespace. The host enters it
// by the container's pid (`nsenter -t PID -n iptables ...`), so the scratch
// image needs no tools. (The kernel has no `sch_netem`: `tc qdisc ... netem`
// fails with "Specified qdisc kind is unknown", so delay and jitter cannot be
// injected here; `plexus simulate` covers them.)

/// Every rule a test adds carries this comment, so a check can list them.
const RULE_COMMENT: &str = "plexus-test-fault";

/// One iptables rule added inside a container's network namespace.
struct Rule {
    container: String,
    /// The container's pid when the rule was added: a restarted container
    /// has a new namespace (and the old rule went with the old one).
    pid: String,
    chain: String,
    spec: Vec<String>,
}

/// iptables rules in containers' network namespaces. [`NetFaults::heal`]
/// removes them; so does dropping it, also when the test panics (removing
/// the containers removes their namespaces too, but a guard that heals
/// first keeps a failed test's cleanup independent of that).
#[derive(Default)]
struct NetFaults {
    rules: Vec<Rule>,
}

/// The pid of a running container's init process (its namespaces' owner).
fn container_pid(container: &str) -> String {
    let pid = docker(&["inspect", "-f", "{{.State.Pid}}", container])
        .trim()
        .to_string();
    assert!(
        pid.parse::<u32>().is_ok_and(|p| p > 0),
        "container {container} has no running process (pid {pid:?})"
    );
    pid
}

/// `iptables ARGS` inside the network namespace of process `pid`.
fn ns_iptables(pid: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("nsenter")
        .args(["-t", pid, "-n", "iptables", "-w"])
        .args(args)
        .output()
        .map_err(|e| format!("cannot run nsenter: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "nsenter -t {pid} -n iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetFaults {
    /// Insert `-I chain spec -m comment ... ` in `container`'s namespace.
    fn add(&mut self, container: &str, chain: &str, spec: &[&str]) {
        let pid = container_pid(container);
        let mut spec: Vec<String> = spec.iter().map(|s| s.to_string()).collect();
        // The comment before the target: `-j DROP` stays last.
        let target = spec.split_off(spec.len() - 2);
        spec.extend(["-m", "comment", "--comment", RULE_COMMENT].map(String::from));
        spec.extend(target);
        let mut args = vec!["-I", chain];
        args.extend(spec.iter().map(String::as_str));
        if let Err(e) = ns_iptables(&pid, &args) {
            panic!("adding a fault rule in {container}: {e}");
        }
        self.rules.push(Rule {
            container: container.to_string(),
            pid,
            chain: chain.to_string(),
            spec,
        });
    }

    /// Node `container` drops every packet from `from_ip`: it no longer
    /// hears that node, which still hears it (a one-way partition).
    fn deafen(&mut self, container: &str, from_ip: &str) {
        self.add(container, "INPUT", &["-s", from_ip, "-j", "DROP"]);
    }

    /// Node `container` drops each packet from `from_ip` with probability
    /// `p` (a lossy inbound link).
    fn lossy(&mut self, container: &str, from_ip: &str, p: f64) {
        let p = format!("{p}");
        self.add(
            container,
            "INPUT",
            &[
                "-s",
                from_ip,
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &p,
                "-j",
                "DROP",
            ],
        );
    }

    /// Packets the rules in `container` dropped so far.
    fn dropped(&self, container: &str) -> u64 {
        let mut total = 0;
        for r in self.rules.iter().filter(|r| r.container == container) {
            let out = ns_iptables(&r.pid, &["-L", &r.chain, "-v", "-n", "-x"])
                .unwrap_or_else(|e| panic!("{e}"));
            total += out
                .lines()
                .filter(|l| l.contains(RULE_COMMENT))
                .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
                .sum::<u64>();
        }
        total
    }

    /// Remove every rule (newest first). Errors are returned, not raised: a
    /// rule whose container has a new pid went with its old namespace.
    fn remove_all(&mut self) -> Vec<String> {
        let mut errors = vec![];
        while let Some(r) = self.rules.pop() {
            let now = Command::new("docker")
                .args(["inspect", "-f", "{{.State.Pid}}", &r.container])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            if now != r.pid {
                continue;
            }
            let mut args = vec!["-D", r.chain.as_str()];
            args.extend(r.spec.iter().map(String::as_str));
            if let Err(e) = ns_iptables(&r.pid, &args) {
                errors.push(e);
            }
        }
        errors
    }

    /// Remove every rule and check that no fault rule is left in any of
    /// `containers`.
    fn heal(&mut self, containers: &[String]) {
        let errors = self.remove_all();
        assert!(errors.is_empty(), "removing fault rules: {errors:#?}");
        for c in containers {
            let left = ns_iptables(&container_pid(c), &["-S"]).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                !left.contains(RULE_COMMENT),
                "fault rules left in {c}:\n{left}"
            );
        }
    }
}

impl Drop for NetFaults {
    fn drop(&mut self) {
        for e in self.remove_all() {
            eprintln!("could not remove a fault rule: {e}");
        }
    }
}

/// Wall-clock ms on the host (the containers share its clock).
fn host_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// How long past its own timeout a CLI call may take to answer: process
/// start and HTTP on two busy cores. A request that hangs shows up as the
/// CLI's own deadline (timeout + 5 s for exec, + 10 s for state).
const ANSWER_SLACK: Duration = Duration::from_millis(4000);

/// One request of a workload: what, how long it took, and how it ended.
struct Call {
    what: String,
    at: Instant,
    took: Duration,
    timeout: Duration,
    /// `None` when it succeeded, else the CLI's stderr.
    error: Option<String>,
}

/// Check that every call ended within its timeout (plus [`ANSWER_SLACK`])
/// and that every failure says what went wrong.
fn check_calls(calls: &[Call]) {
    for c in calls {
        assert!(
            c.took <= c.timeout + ANSWER_SLACK,
            "{} took {:?} (timeout {:?}): it hung ({:?})",
            c.what,
            c.took,
            c.timeout,
            c.error
        );
        if let Some(e) = &c.error {
            assert!(
                e.starts_with("error: ") && e.trim().len() > "error: ".len() + 10,
                "{} failed without a clear error: {e:?}",
                c.what
            );
        }
    }
}

/// A state workload: majority puts through each node in turn (distinct
/// keys) and local increments of `hits`, until `stop`.
/// `acked` counts the acknowledged puts as they come (the test's progress).
fn state_writer(
    apis: Vec<String>,
    prefix: &'static str,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
) -> (Writes, Vec<Call>) {
    let mut w = Writes::default();
    let mut calls = vec![];
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let n = i % apis.len();
        let (key, value) = (format!("{prefix}/{i:04}"), format!("{i}"));
        w.tried += 1;
        let t = Instant::now();
        let o = state_put(
            &apis[n],
            &key,
            &value,
            &["--consistency", "majority", "--timeout-ms", "2000"],
        );
        let error = (o.code != 0).then(|| o.stderr.clone());
        calls.push(Call {
            what: format!("majority put {key} via node{}", n + 1),
            at: t,
            took: t.elapsed(),
            timeout: Duration::from_millis(2000),
            error: error.clone(),
        });
        match error {
            None => {
                w.acked.insert(key, value);
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Some(e) => *w.errors.entry(e).or_default() += 1,
        }
        w.hits_tried += 1;
        let t = Instant::now();
        let ok = incr(&apis[n], "hits");
        calls.push(Call {
            what: format!("incr hits via node{}", n + 1),
            at: t,
            took: t.elapsed(),
            timeout: Duration::from_millis(3000),
            error: None,
        });
        if ok {
            w.hits_acked += 1;
        }
        i += 1;
    }
    (w, calls)
}

/// An exec workload: each `(api index, plugin, command, host)` in turn, with
/// a 4 s timeout, until `stop`.
fn exec_workload(
    apis: Vec<String>,
    targets: Vec<(usize, &'static str, &'static str)>,
    stop: Arc<AtomicBool>,
) -> Vec<Call> {
    let mut calls = vec![];
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let (n, plugin, command) = targets[i % targets.len()];
        let t = Instant::now();
        // A new input each time: a failed call must not be answered from
        // the result cache (which serves the last good answer of the same
        // input when every try failed).
        let o = exec(
            &apis[n],
            plugin,
            command,
            &format!(r#"{{"probe":{i}}}"#),
            4_000,
        );
        let served = (o.code == 0).then(|| o.json()["served_by"].to_string());
        calls.push(Call {
            what: format!("exec {plugin} via node{} (served by {served:?})", n + 1),
            at: t,
            took: t.elapsed(),
            timeout: Duration::from_millis(4_000),
            error: (o.code != 0).then_some(o.stderr),
        });
        i += 1;
    }
    calls
}

/// Hold a fault until `min` has passed and `progress()` reports at least
/// `ops` more operations than when it started (or `max` passed).
fn hold_fault(min: Duration, max: Duration, ops: usize, progress: impl Fn() -> usize) {
    let (start, base) = (Instant::now(), progress());
    wait_for(max, "the workload to run under the fault", || {
        (start.elapsed() >= min && progress() >= base + ops).then_some(())
    });
}

#[test]
#[ignore = "needs Docker; run by .ci/run (cargo test -p plexus-tests --test docker -- --ignored)"]
fn a_one_way_partition_heals_with_every_acknowledged_write_everywhere_and_no_request_hangs() {
    // Plugins without retries (the built-in manifests retry, and `exec
    // --timeout-ms` bounds each attempt, not the request: see the README).
    let tmp = tempfile::tempdir().unwrap();
    let cat = write_saga_catalog(tmp.path());
    let c = DockerCluster::up(["exec-automator,ledger", "depot", "shipper"], Some(&cat));
    let apis: Vec<String> = (1..=3).map(|n| c.api(n)).collect();
    let containers: Vec<String> = (1..=3).map(|n| c.container(n)).collect();
    let mut faults = NetFaults::default();

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (apis, stop, acked) = (apis.clone(), stop.clone(), acked.clone());
        std::thread::spawn(move || state_writer(apis, "oneway", stop, acked))
    };
    // From every node, a plugin of each other node: node1 ↔ node3 crosses
    // the cut link in both directions.
    let execs = {
        let (apis, stop) = (apis.clone(), stop.clone());
        let targets = vec![
            (0, "shipper", "ship"),
            (2, "ledger", "reserve"),
            (1, "shipper", "ship"),
            (0, "depot", "count"),
            (2, "depot", "count"),
            (1, "ledger", "reserve"),
        ];
        std::thread::spawn(move || exec_workload(apis, targets, stop))
    };
    let progress = || acked.load(Ordering::Relaxed);
    hold_fault(Duration::from_secs(3), Duration::from_secs(60), 5, progress);

    // node3 stops hearing node1; node1 still hears node3.
    let cut = Instant::now();
    faults.deafen(&c.container(3), c.get("NODE1_IP"));
    let mut views = BTreeMap::new();
    let record_views = |views: &mut BTreeMap<String, u32>| {
        for (n, m) in [(1, "node3"), (3, "node1"), (2, "node1"), (2, "node3")] {
            let st = c.member_status(n, m).unwrap_or_else(|| "no answer".into());
            *views.entry(format!("node{n} sees {m} {st}")).or_default() += 1;
        }
    };
    let (min, max) = (Duration::from_secs(15), Duration::from_secs(90));
    let start_keys = progress();
    wait_for(
        max,
        "the workload to run under the one-way partition",
        || {
            record_views(&mut views);
            (cut.elapsed() >= min && progress() >= start_keys + 5).then_some(())
        },
    );
    let dropped = faults.dropped(&c.container(3));
    faults.heal(&containers);
    let healed = Instant::now();
    c.wait_all_up(Duration::from_secs(90));
    let converged_view = healed.elapsed();
    // A little traffic after the heal, then stop.
    hold_fault(Duration::ZERO, Duration::from_secs(60), 3, progress);
    stop.store(true, Ordering::Relaxed);
    let (w, write_calls) = writer.join().expect("writer thread");
    let exec_calls = execs.join().expect("exec thread");
    eprintln!(
        "one-way partition: held {:?}, {dropped} packets dropped; views seen during it: {views:#?}; all up {converged_view:?} after the heal",
        healed - cut
    );
    assert!(
        dropped > 0,
        "the one-way rule dropped nothing: no fault was injected"
    );

    check_calls(&write_calls);
    check_calls(&exec_calls);
    // The cut link was really cut: requests from node1 to node3's plugin (or
    // back) failed while it was.
    let during = |c: &&Call| c.at >= cut && c.at + c.took <= healed;
    let crossing_failed = exec_calls
        .iter()
        .filter(during)
        .filter(|c| c.what.contains("shipper via node1") || c.what.contains("ledger via node3"))
        .any(|c| c.error.is_some());
    let crossing: Vec<String> = exec_calls
        .iter()
        .filter(|c| c.what.contains("shipper via node1") || c.what.contains("ledger via node3"))
        .map(|x| {
            format!(
                "{} at {:?} took {:?}: {:?}",
                x.what,
                x.at.saturating_duration_since(cut),
                x.took,
                x.error
            )
        })
        .collect();
    eprintln!("crossing calls (since the cut): {crossing:#?}");
    assert!(
        crossing_failed,
        "no request across the cut link failed during the partition"
    );
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for c in exec_calls.iter().chain(&write_calls) {
        if let Some(e) = &c.error {
            *errors
                .entry(e.lines().next().unwrap_or("").chars().take(140).collect())
                .or_default() += 1;
        }
    }
    eprintln!(
        "{} exec calls ({} failed), {} majority puts ({} acknowledged); errors: {errors:#?}",
        exec_calls.len(),
        exec_calls.iter().filter(|c| c.error.is_some()).count(),
        w.tried,
        w.acked.len()
    );
    assert!(
        w.acked.len() >= 10,
        "only {} puts acknowledged: {:#?}",
        w.acked.len(),
        w.errors
    );
    wait_converged(&c, &w.acked, w.hits_acked, w.hits_tried);
    // Every node serves requests across the healed link again.
    for (n, plugin, command) in [(1, "shipper", "ship"), (3, "ledger", "reserve")] {
        wait_for(
            Duration::from_secs(30),
            &format!("exec {plugin} via node{n}"),
            || (exec(&c.api(n), plugin, command, "{}", 4_000).code == 0).then_some(()),
        );
    }
}

/// Start an `order` saga on `api` (detached); its run id.
fn start_saga(api: &str, file: &Path, item: &str) -> String {
    let input = format!(r#"{{"item":"{item}"}}"#);
    let o = plexus(&[
        "run",
        "--connect",
        api,
        file.to_str().expect("utf-8 path"),
        "--input",
        &input,
        "--detach",
    ]);
    assert_eq!(o.code, 0, "start a saga on {api}: {o:?}");
    o.stdout.trim().to_string()
}

/// Each saga ended completed or compensated, and each of its effects ran
/// exactly once: every key at most once across the effect logs, a completed
/// saga's three steps present, a compensated step's command and its
/// compensation both present, no compensation of a step that did not
/// complete. `runs` maps run id → final report.
fn check_sagas_atomic(runs: &BTreeMap<String, Value>, logs: &[(String, String)]) {
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for (command, key) in logs {
        if let Some(prev) = seen.insert(key, command) {
            panic!("effect key {key} ran twice ({prev}, {command}): {logs:#?}");
        }
    }
    for (id, report) in runs {
        let status = report["status"].as_str().unwrap_or("");
        assert!(
            status == "completed" || status == "compensated",
            "saga {id} ended {status}: {report:#}"
        );
        let has = |k: String| seen.contains_key(k.as_str());
        for (i, st) in step_statuses(report).iter().enumerate() {
            let (step, comp) = (format!("{id}:{i}"), format!("{id}:{i}:compensate"));
            match st.as_str() {
                "ok" | "completed" => {
                    assert!(has(step.clone()), "saga {id}: step {i} done but no effect {step}: {report:#}");
                    assert!(!has(comp.clone()), "saga {id}: step {i} compensated but reported {st}");
                }
                "compensated" => {
                    assert!(has(step.clone()), "saga {id}: step {i} compensated but never ran: {report:#}");
                    assert!(has(comp.clone()), "saga {id}: step {i}'s compensation has no effect: {report:#}");
                }
                _ => assert!(
                    !has(comp.clone()),
                    "saga {id}: step {i} ({st}) compensated although it did not complete: {report:#}"
                ),
            }
        }
        if status == "completed" {
            for i in 0..3 {
                assert!(
                    has(format!("{id}:{i}")),
                    "completed saga {id} lacks step {i}'s effect"
                );
            }
        }
    }
}

#[test]
#[ignore = "needs Docker; run by .ci/run (cargo test -p plexus-tests --test docker -- --ignored)"]
fn a_lossy_link_under_writes_and_sagas_loses_no_acknowledged_write_and_sagas_stay_atomic() {
    let tmp = tempfile::tempdir().unwrap();
    let cat = write_saga_catalog(tmp.path());
    let c = DockerCluster::up(
        [
            "jira-orchestrator,exec-automator",
            "ledger,depot",
            "shipper,depot",
        ],
        Some(&cat),
    );
    let apis: Vec<String> = (1..=3).map(|n| c.api(n)).collect();
    let containers: Vec<String> = (1..=3).map(|n| c.container(n)).collect();
    let mut faults = NetFaults::default();
    let f = tmp.path().join("order.toml");
    std::fs::write(&f, order_saga("{}", "{ delay_ms = 300 }")).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (apis, stop, acked) = (apis.clone(), stop.clone(), acked.clone());
        std::thread::spawn(move || state_writer(apis, "lossy", stop, acked))
    };
    let progress = || acked.load(Ordering::Relaxed);
    hold_fault(Duration::from_secs(2), Duration::from_secs(60), 3, progress);

    // node3 (hosting shipper) loses 15 % of what node1 and node2 send it.
    let lossy_from = Instant::now();
    faults.lossy(&c.container(3), c.get("NODE1_IP"), 0.15);
    faults.lossy(&c.container(3), c.get("NODE2_IP"), 0.15);
    // Sagas from node1 and node3 while the link is lossy (ledger on node2,
    // shipper on node3), one every 2 s or so, spread over the loss.
    let api_of = |i: usize| {
        if i.is_multiple_of(2) {
            &apis[0]
        } else {
            &apis[2]
        }
    };
    let mut ids = vec![];
    let mut views: BTreeMap<String, u32> = BTreeMap::new();
    let start_keys = progress();
    wait_for(
        Duration::from_secs(90),
        "the workload to run on the lossy link",
        || {
            if ids.len() < 6
                && lossy_from.elapsed() >= Duration::from_millis(2_000 * ids.len() as u64)
            {
                let i = ids.len();
                ids.push(start_saga(api_of(i), &f, &format!("item-{i}")));
            }
            for (n, m) in [(1, "node3"), (3, "node1"), (3, "node2")] {
                let st = c.member_status(n, m).unwrap_or_else(|| "no answer".into());
                *views.entry(format!("node{n} sees {m} {st}")).or_default() += 1u32;
            }
            (ids.len() == 6
                && lossy_from.elapsed() >= Duration::from_secs(15)
                && progress() >= start_keys + 8)
                .then_some(())
        },
    );
    let dropped = faults.dropped(&c.container(3));
    faults.heal(&containers);
    let healed = Instant::now();
    c.wait_all_up(Duration::from_secs(90));
    eprintln!(
        "lossy link: held {:?}, {dropped} packets dropped; views seen: {views:#?}; all up {:?} after the heal",
        healed - lossy_from,
        healed.elapsed()
    );
    assert!(
        dropped > 0,
        "the loss rules dropped nothing: no fault was injected"
    );
    stop.store(true, Ordering::Relaxed);
    let (w, calls) = writer.join().expect("writer thread");
    check_calls(&calls);

    // Every saga ends completed or compensated (on the node that ran it).
    let mut runs = BTreeMap::new();
    for (i, id) in ids.iter().enumerate() {
        let api = api_of(i);
        let r = wait_for(
            Duration::from_secs(90),
            &format!("saga {id} to end"),
            || {
                let r = run_report(api, id)?;
                (r["status"] == "completed" || r["status"] == "compensated").then_some(r)
            },
        );
        runs.insert(id.clone(), r);
    }
    let mut logs = effect_log(&c.data_dir(2), "ledger");
    logs.extend(effect_log(&c.data_dir(3), "shipper"));
    check_sagas_atomic(&runs, &logs);
    let completed = runs.values().filter(|r| r["status"] == "completed").count();
    eprintln!(
        "{completed} of {} sagas completed, the others compensated; {} of {} majority puts acknowledged; errors: {:#?}",
        runs.len(),
        w.acked.len(),
        w.tried,
        w.errors
    );
    assert!(
        w.acked.len() >= 10,
        "only {} puts acknowledged: {:#?}",
        w.acked.len(),
        w.errors
    );
    wait_converged(&c, &w.acked, w.hits_acked, w.hits_tried);
}

/// `plexus state lease acquire` of `name` for `exec-automator` via `api`,
/// as a [`Call`] whose `what` is the granted lease's JSON when it succeeded.
fn lease(api: &str, name: &str, ttl_ms: u64) -> Call {
    let t = Instant::now();
    let o = plexus(&[
        "state",
        "lease",
        "acquire",
        "--connect",
        api,
        "--as",
        "exec-automator",
        name,
        "--ttl-ms",
        &ttl_ms.to_string(),
        "--timeout-ms",
        "2000",
        "--json",
    ]);
    Call {
        what: if o.code == 0 {
            o.stdout.clone()
        } else {
            format!("lease {name} via {api}")
        },
        at: t,
        took: t.elapsed(),
        timeout: Duration::from_millis(2000),
        error: (o.code != 0).then_some(o.stderr),
    }
}

/// `state get --json` of `key` on `api`: the whole answer.
fn get_json(api: &str, key: &str) -> Option<Value> {
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
    (o.code == 0).then(|| o.json())
}

/// The guarded resource of a fencing test: remembers the highest token seen
/// and refuses any lower one (what `plexus_state::Fence` does).
#[derive(Default)]
struct FencedResource {
    highest: u64,
    accepted: Vec<(String, u64)>,
}

impl FencedResource {
    fn write(&mut self, holder: &str, token: u64) -> Result<(), String> {
        if token < self.highest {
            return Err(format!(
                "{holder}: token {token} < {} (fenced)",
                self.highest
            ));
        }
        self.highest = token;
        self.accepted.push((holder.to_string(), token));
        Ok(())
    }
}

#[test]
#[ignore = "needs Docker; run by .ci/run (cargo test -p plexus-tests --test docker -- --ignored)"]
fn clock_skew_between_containers_keeps_leases_fenced_and_expiry_on_each_nodes_clock() {
    // node1 runs 6 s ahead, node3 6 s behind, node2 on time.
    const SKEW: [i64; 3] = [6_000, 0, -6_000];
    let c = DockerCluster::up_skewed(DEFAULT_PLACEMENT, None, SKEW);
    let apis: Vec<String> = (1..=3).map(|n| c.api(n)).collect();

    // The skew is in effect: a key written with a TTL on each node expires
    // at that node's clock plus the TTL.
    for n in 0..3 {
        let key = format!("skew/node{}", n + 1);
        let o = state_put(&apis[n], &key, "1", &["--ttl-ms", "600000"]);
        assert_eq!(o.code, 0, "{o:?}");
        let at = host_ms();
        let g = get_json(&apis[n], &key).expect("read back");
        let expires = g["expires_at_ms"].as_i64().expect("expires_at_ms");
        let offset = expires - 600_000 - at;
        assert!(
            (offset - SKEW[n]).abs() < 2_000,
            "node{}: expiry {expires} is {offset} ms off the host clock, its skew is {} ms: {g:#}",
            n + 1,
            SKEW[n]
        );
    }

    // A write after a read wins whatever the clocks: node3 (12 s behind
    // node1) overwrites what it read from node1.
    assert!(put(&apis[0], "lww", r#""node1, ahead""#));
    wait_for(
        Duration::from_secs(20),
        "node3 to read node1's write",
        || (get(&apis[2], "lww")? == "node1, ahead").then_some(()),
    );
    assert!(put(&apis[2], "lww", r#""node3, behind, later""#));
    for api in &apis {
        wait_for(
            Duration::from_secs(20),
            "the later write everywhere",
            || (get(api, "lww")? == "node3, behind, later").then_some(()),
        );
    }

    // Expiry is data: each replica hides an entry from `expires_at_ms` on,
    // by its own clock. Written on node3 with a 9 s TTL, it expires at host
    // time +3 s: node1 (6 s ahead) never shows it, node2 hides it after
    // about 3 s, node3 after about 9 s.
    let o = state_put(&apis[2], "exp/behind", r#""soon""#, &["--ttl-ms", "9000"]);
    assert_eq!(o.code, 0, "{o:?}");
    let expires = get_json(&apis[2], "exp/behind").expect("read back")["expires_at_ms"]
        .as_i64()
        .expect("expires_at_ms");
    let mut seen = [0u32; 3];
    let mut log = vec![];
    wait_for(
        Duration::from_secs(30),
        "every node to hide the expired key",
        || {
            let mut visible_anywhere = false;
            for n in 0..3 {
                let before = host_ms();
                let visible = get(&apis[n], "exp/behind").is_some();
                let after = host_ms();
                log.push(format!(
                    "node{} at host {before}..{after}: {visible}",
                    n + 1
                ));
                // The node's clock during the read, against the expiry.
                let (lo, hi) = (before + SKEW[n], after + SKEW[n]);
                if visible {
                    seen[n] += 1;
                    visible_anywhere = true;
                    assert!(
                    lo < expires + 1_000,
                    "node{} shows exp/behind at its clock {lo}, past its expiry {expires}: {log:#?}",
                    n + 1
                );
                } else if hi < expires - 1_000 && n == 2 {
                    // The writer itself holds it from the start.
                    panic!("node3 hides exp/behind at its clock {hi}, before its expiry {expires}: {log:#?}");
                }
            }
            (!visible_anywhere && host_ms() + SKEW[2] > expires + 1_000).then_some(())
        },
    );
    assert_eq!(
        seen[0], 0,
        "node1 (ahead) showed an entry already expired on its clock: {log:#?}"
    );
    assert!(
        seen[1] > 0,
        "node2 never showed exp/behind before its expiry: {log:#?}"
    );
    assert!(
        seen[2] > seen[1],
        "node3 (behind) should show exp/behind longest: {seen:?} {log:#?}"
    );
    // Created again after expiry: a higher generation, everywhere.
    assert!(put(&apis[1], "exp/behind", r#""again""#));
    for api in &apis {
        wait_for(
            Duration::from_secs(20),
            "the re-created key everywhere",
            || (get(api, "exp/behind")? == "again").then_some(()),
        );
    }

    // Leases across the skewed clocks: grants through each node in turn.
    // Every grant's token is above every earlier one; while a grant is fresh
    // every other node is refused; a stale holder's late write is fenced.
    let mut resource = FencedResource::default();
    let mut other_named = 0;
    let mut grants: Vec<(usize, u64, String)> = vec![];
    let mut calls = vec![];
    for &n in &[0usize, 2, 1, 2, 0, 1] {
        let grant = wait_for(
            Duration::from_secs(30),
            &format!("a lease through node{}", n + 1),
            || {
                let call = lease(&apis[n], "skewed-lock", 3_000);
                let ok = call.error.is_none();
                if let Some(e) = &call.error {
                    assert!(
                        e.contains("409") || e.contains("held"),
                        "lease refusal unclear: {e}"
                    );
                }
                let json = ok.then(|| call.what.clone());
                calls.push(call);
                json
            },
        );
        let granted_at = Instant::now();
        let l: Value = serde_json::from_str(&grant).expect("lease JSON");
        let token = l["token"].as_u64().expect("token");
        let holder = l["holder"].as_str().expect("holder").to_string();
        assert_eq!(holder, format!("exec-automator@node{}", n + 1), "{l:#}");
        // The grant's expiry is on the granting node's clock.
        let off = l["expires_at_ms"].as_i64().unwrap_or(0) - 3_000 - host_ms();
        assert!(
            (off - SKEW[n]).abs() < 3_000,
            "lease expiry off by {off} ms on node{}: {l:#}",
            n + 1
        );
        if let Some((_, last, _)) = grants.last() {
            assert!(
                token > *last,
                "token {token} after {last}: not increasing ({grants:?})"
            );
        }
        resource
            .write(&holder, token)
            .unwrap_or_else(|e| panic!("a fresh holder was fenced: {e}"));
        // While it is fresh, nobody else gets it, whatever its clock says.
        for m in (0..3).filter(|m| *m != n) {
            let other = lease(&apis[m], "skewed-lock", 3_000);
            if other.at.duration_since(granted_at) < Duration::from_millis(1_500) {
                let e = other.error.clone().unwrap_or_else(|| {
                    panic!(
                        "node{} got the lease held by {holder} (token {token}): {}",
                        m + 1,
                        other.what
                    )
                });
                // The refusal names the promise the refusing nodes hold.
                // That is usually the holder, but a losing proposal can
                // leave a promise behind on an acceptor it reached first
                // (with a higher token than the grant), so only count it.
                assert!(
                    e.contains("409") && e.contains("lease `skewed-lock`"),
                    "unclear refusal through node{}: {e}",
                    m + 1
                );
                if !e.contains(&holder) {
                    other_named += 1;
                }
            }
            calls.push(other);
        }
        grants.push((n, token, holder));
    }
    check_calls(&calls);
    // The first holder wakes up late and writes with its old token.
    let (_, first_token, first_holder) = grants[0].clone();
    let late = resource.write(&first_holder, first_token);
    assert!(
        late.is_err(),
        "a stale holder's write was accepted: {:?}",
        resource.accepted
    );
    eprintln!("lease grants across skewed clocks (node index, token, holder): {grants:?}; late write: {late:?}; {other_named} refusals of a fresh grant named another promise than the holder's");
}

/// No Docker needed: a node whose clock is behind, and that missed the last
/// grant of a lease (it joined after it), still gets the lease once the
/// grant expired on the other nodes' clocks. The refusals it gets carry
/// promises dated by their acceptors' clocks; it used to compare those with
/// its own clock, find them unexpired, and answer 409 "held for another
/// ~N ms" for a free lease (until its own clock caught up: skew + TTL).
#[test]
fn a_node_with_a_slow_clock_that_missed_a_grant_acquires_the_expired_lease() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = |name: &str, extra: Vec<String>| plexus_tests::NodeSpec {
        name: name.into(),
        plugins: vec!["exec-automator".into()],
        catalogs: vec![],
        extra,
    };
    let mut c = plexus_tests::Cluster::start(vec![spec("a", vec![]), spec("b", vec![])]);
    // Granted by a and b (the cluster they know has two members).
    let first = lease(&c.nodes[0].api, "slow-lock", 1_000);
    assert!(first.error.is_none(), "{:?}", first.error);
    let granted = Instant::now();
    let token1 = serde_json::from_str::<Value>(&first.what).expect("lease JSON")["token"]
        .as_u64()
        .expect("token");
    // c joins with its clock 30 s behind (`[node] clock_skew_ms` in a file).
    let conf = tmp.path().join("c.toml");
    std::fs::write(&conf, "[node]\nclock_skew_ms = -30000\n").unwrap();
    let node_c = c.start_seeded(spec(
        "c",
        vec!["--config".into(), conf.display().to_string()],
    ));
    assert!(
        node_c.log_text().contains("skewed"),
        "node c does not say its clock is skewed:\n{}",
        node_c.log_text()
    );
    c.nodes.push(node_c);
    c.wait_converged();
    // The grant has expired on a's and b's clocks.
    wait_for(Duration::from_secs(10), "the first grant to expire", || {
        (granted.elapsed() > Duration::from_millis(1_500)).then_some(())
    });
    assert!(
        granted.elapsed() < Duration::from_secs(25),
        "too slow to test: c's clock has caught up with the grant"
    );
    let second = lease(&c.nodes[2].api, "slow-lock", 1_000);
    let l: Value = match &second.error {
        None => serde_json::from_str(&second.what).expect("lease JSON"),
        Some(e) => panic!("node c was refused an expired lease: {e}"),
    };
    assert_eq!(l["holder"], "exec-automator@c", "{l:#}");
    assert!(l["token"].as_u64().expect("token") > token1, "{l:#}");
}

/// No Docker needed: a bad `PLEXUS_CLOCK_SKEW_MS` stops `plexus node` with a
/// usage error that names the variable.
#[test]
fn a_bad_clock_skew_in_the_environment_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    for (bad, says) in [("5s", "whole number"), ("-90000000", "out of range")] {
        let out = Command::new(plexus_tests::bin())
            .args(["node", "--check", "--name", "n1", "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path())
            .env("PLEXUS_CLOCK_SKEW_MS", bad)
            .env("PLEXUS_LOG", "warn")
            .output()
            .expect("run plexus node --check");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(
            err.contains("PLEXUS_CLOCK_SKEW_MS") && err.contains(says),
            "{bad}: {err}"
        );
    }
}
