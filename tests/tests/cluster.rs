//! A real 3-node cluster of `plexus node` processes on loopback.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use plexus_tests::{member, Cluster, NodeSpec};

/// A catalog directory with a plugin that accepts fault injection.
fn test_catalog(dir: &Path) -> PathBuf {
    let d = dir.join("test-catalog");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("flaky.toml"),
        r#"
[plugin]
name = "flaky"
version = "0.1.0"
description = "A plugin tests crash on purpose"

[handler]
kind = "sim"
latencyMs = 2
allowFaultInjection = true

[placement]
maxRestarts = 2
restartWindowSecs = 120

[[commands]]
name = "work"
description = "does some work"
"#,
    )
    .unwrap();
    d
}

fn spec(name: &str, plugins: &[&str], catalog: &Path) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        plugins: plugins.iter().map(|s| s.to_string()).collect(),
        catalogs: vec![catalog.to_path_buf()],
        extra: vec![],
    }
}

fn three_nodes() -> (tempfile::TempDir, Cluster) {
    let tmp = tempfile::tempdir().unwrap();
    let cat = test_catalog(tmp.path());
    let c = Cluster::start(vec![
        spec("node1", &["jira-orchestrator"], &cat),
        spec(
            "node2",
            &["exec-automator", "frontend-powerhouse", "flaky"],
            &cat,
        ),
        spec(
            "node3",
            &["lobbi-platform-manager", "home-assistant-architect"],
            &cat,
        ),
    ]);
    (tmp, c)
}

fn not_up(status: &serde_json::Value, name: &str) -> bool {
    member(status, name).is_some_and(|m| m["status"] != "up")
}

#[test]
fn exec_runs_where_the_plugin_lives_and_survives_kill_and_restart() {
    let (_tmp, mut c) = three_nodes();

    // Status on node1 names every member and which node hosts each plugin.
    let s = c.nodes[0].status().expect("status");
    let lobbi = s["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "lobbi-platform-manager")
        .unwrap_or_else(|| panic!("no lobbi row in {s:#}"))
        .clone();
    assert_eq!(lobbi["node"], "node3");
    assert_eq!(lobbi["status"], "available");

    // exec from node1 runs on node3.
    let o = c.nodes[0].exec(
        "lobbi-platform-manager",
        "health",
        Some(r#"{"service":"keycloak"}"#),
    );
    assert_eq!(o.code, 0, "{o:?}");
    let r = o.json();
    assert_eq!(r["node"], "node3");
    assert_eq!(r["ok"], true);
    assert!(r["duration_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(r["output"]["input"]["service"], "keycloak");

    // Unknown plugin or command: clear error, non-zero exit.
    let o = c.nodes[0].exec("no-such-plugin", "x", None);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(
        o.stderr.contains("unknown plugin") && o.stderr.contains("no-such-plugin"),
        "{}",
        o.stderr
    );
    let o = c.nodes[0].exec("lobbi-platform-manager", "no-such-command", None);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(
        o.stderr.contains("has no command") && o.stderr.contains("no-such-command"),
        "{}",
        o.stderr
    );

    // kill -9 node3: node1 sees it unreachable or down within 10 s.
    c.node_mut("node3").kill9();
    let t0 = Instant::now();
    c.wait_members(0, Duration::from_secs(10), |ms| {
        ms.iter()
            .any(|m| m["name"] == "node3" && m["status"] != "up")
    });
    eprintln!("node3 noticed after {:?}", t0.elapsed());
    plexus_tests::wait_for(
        Duration::from_secs(10),
        "lobbi to become unavailable",
        || (c.plugin_status(0, "lobbi-platform-manager")? == "unavailable").then_some(()),
    );

    // exec on its plugins fails fast with a clear error: node1 answers
    // from its directory that the plugin has no live host, without sending
    // the request and waiting out its timeout (a wait would end in a
    // "no answer ... within" timeout error instead).
    let o = c.nodes[0].exec("lobbi-platform-manager", "health", None);
    assert_ne!(o.code, 0, "{o:?}");
    assert!(
        (o.stderr.contains("node3") || o.stderr.contains("unavailable"))
            && !o.stderr.contains("no answer"),
        "{}",
        o.stderr
    );
    // Plugins elsewhere still work.
    let o = c.nodes[0].exec("exec-automator", "analyze", None);
    assert_eq!(o.code, 0, "{o:?}");

    // Restart node3 (same addresses, same data dir): it rejoins with a new generation.
    c.node_mut("node3").restart();
    assert_eq!(c.node("node3").generation, 2);
    let s = c.wait_members(0, Duration::from_secs(15), |ms| {
        ms.iter()
            .any(|m| m["name"] == "node3" && m["status"] == "up" && m["generation"] == 2)
    });
    assert!(!not_up(&s, "node2"));
    plexus_tests::wait_for(
        Duration::from_secs(10),
        "lobbi to be available again",
        || (c.plugin_status(0, "lobbi-platform-manager")? == "available").then_some(()),
    );
    let o = c.nodes[0].exec("lobbi-platform-manager", "health", None);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.json()["node"], "node3");
}

#[test]
fn a_frozen_node_is_noticed_and_comes_back() {
    let (_tmp, c) = three_nodes();
    c.node("node3").freeze();
    let t0 = Instant::now();
    c.wait_members(0, Duration::from_secs(10), |ms| {
        ms.iter()
            .any(|m| m["name"] == "node3" && m["status"] != "up")
    });
    eprintln!("frozen node3 noticed after {:?}", t0.elapsed());
    plexus_tests::wait_for(
        Duration::from_secs(10),
        "lobbi to become unavailable",
        || (c.plugin_status(0, "lobbi-platform-manager")? != "available").then_some(()),
    );
    // Refused at once from the directory, not sent and timed out.
    let o = c.nodes[0].exec("lobbi-platform-manager", "health", None);
    assert_ne!(o.code, 0, "{o:?}");
    assert!(
        (o.stderr.contains("node3") || o.stderr.contains("unavailable"))
            && !o.stderr.contains("no answer"),
        "{}",
        o.stderr
    );

    c.node("node3").thaw();
    c.wait_members(0, Duration::from_secs(20), |ms| {
        ms.iter().filter(|m| m["status"] == "up").count() == 3
    });
    plexus_tests::wait_for(
        Duration::from_secs(10),
        "lobbi to be available again",
        || (c.plugin_status(0, "lobbi-platform-manager")? == "available").then_some(()),
    );
    let o = c.nodes[0].exec("lobbi-platform-manager", "health", None);
    assert_eq!(o.code, 0, "{o:?}");
}

#[test]
fn a_crashing_plugin_is_restarted_then_marked_failed() {
    let (_tmp, c) = three_nodes();
    let n1 = &c.nodes[0];
    let ok = n1.exec("flaky", "work", Some(r#"{"n":1}"#));
    assert_eq!(ok.code, 0, "{ok:?}");
    assert_eq!(ok.json()["node"], "node2");

    // The host actor panics (fault injection) and is restarted by its supervisor.
    let o = n1.exec("flaky", "work", Some(r#"{"$sim":{"panic":true}}"#));
    assert_ne!(o.code, 0, "{o:?}");
    assert!(o.stderr.contains("crashed"), "{}", o.stderr);
    let restarts = plexus_tests::wait_for(Duration::from_secs(10), "flaky to be restarted", || {
        let s = n1.status()?;
        let p = s["plugins"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == "flaky")?
            .clone();
        (p["status"] == "available" && p["restarts"].as_u64()? >= 1)
            .then(|| p["restarts"].as_u64().unwrap())
    });
    assert_eq!(restarts, 1);
    let o = n1.exec("flaky", "work", Some(r#"{"n":2}"#));
    assert_eq!(o.code, 0, "{o:?}");

    // Past the restart intensity (2 in 120 s) it is marked failed and says so.
    for _ in 0..2 {
        let _ = plexus_tests::wait_for(Duration::from_secs(10), "flaky to be running", || {
            let st = c.plugin_status(0, "flaky")?;
            (st == "available" || st == "failed").then_some(st)
        });
        let o = n1.exec("flaky", "work", Some(r#"{"$sim":{"panic":true}}"#));
        assert_ne!(o.code, 0, "{o:?}");
    }
    plexus_tests::wait_for(Duration::from_secs(10), "flaky to be marked failed", || {
        (c.plugin_status(0, "flaky")? == "failed").then_some(())
    });
    let o = n1.exec("flaky", "work", None);
    assert_ne!(o.code, 0, "{o:?}");
    assert!(o.stderr.contains("failed"), "{}", o.stderr);
    // Other plugins on the same node are unaffected.
    let o = n1.exec(
        "frontend-powerhouse",
        "create-component",
        Some(r#"{"name":"Button"}"#),
    );
    assert_eq!(o.code, 0, "{o:?}");
}

#[test]
fn ask_routes_to_the_live_plugin_and_skips_a_dead_one() {
    let (_tmp, mut c) = three_nodes();
    let ask = |c: &Cluster| {
        let o = plexus_tests::plexus(&[
            "ask",
            "--connect",
            &c.nodes[0].api,
            "set up a keycloak realm and SSO login for a new tenant",
            "--json",
        ]);
        (o.code, o)
    };
    let (code, o) = ask(&c);
    assert_eq!(code, 0, "{o:?}");
    let v = o.json();
    assert_eq!(
        v["decision"]["primary_plugin"], "lobbi-platform-manager",
        "{v:#}"
    );
    assert_eq!(v["served_by"], "primary");
    assert_eq!(v["result"]["node"], "node3");
    // The router's model choice is what ran.
    assert_eq!(v["result"]["model"], v["decision"]["model"]);

    c.node_mut("node3").kill9();
    plexus_tests::wait_for(
        Duration::from_secs(10),
        "lobbi to become unavailable",
        || (c.plugin_status(0, "lobbi-platform-manager")? == "unavailable").then_some(()),
    );
    let (_, o) = ask(&c);
    let v = o.json();
    assert_ne!(
        v["decision"]["primary_plugin"], "lobbi-platform-manager",
        "{v:#}"
    );
    let tried: Vec<&str> = v["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["plugin"].as_str().unwrap())
        .collect();
    assert!(!tried.contains(&"lobbi-platform-manager"), "{tried:?}");
}

#[test]
fn a_request_in_flight_fails_as_soon_as_its_node_is_declared_down() {
    let (_tmp, mut c) = three_nodes();
    let api = c.nodes[0].api.clone();
    // `flaky` on node2 takes 20 s; node2 is killed while it runs.
    let call = std::thread::spawn(move || {
        let t = Instant::now();
        let o = plexus_tests::plexus(&[
            "exec",
            "--connect",
            &api,
            "--plugin",
            "flaky",
            "--command",
            "work",
            "--input",
            r#"{"$sim":{"delay_ms":20000}}"#,
            "--timeout-ms",
            "30000",
        ]);
        (o, t.elapsed())
    });
    plexus_tests::wait_for(
        Duration::from_secs(10),
        "node1 to wait on the request",
        || {
            let s = c.nodes[0].status()?;
            (s["bus"]["pending_requests"].as_u64()? >= 1).then_some(())
        },
    );
    let killed = Instant::now();
    c.node_mut("node2").kill9();
    let (o, took) = call.join().unwrap();
    assert_eq!(o.code, 1, "{o:?}");
    assert!(
        o.stderr.contains("node2 went down before answering"),
        "{}",
        o.stderr
    );
    // Ended by the failure detector (PeerDown), not by the 20 s command
    // or the 30 s timeout, whose errors read differently.
    assert!(!o.stderr.contains("no answer"), "{}", o.stderr);
    eprintln!(
        "the request ended {:?} after the kill ({took:?} in all)",
        killed.elapsed()
    );
}
