//! Circuit breakers, retries and cached results across real node processes.

use std::path::Path;
use std::time::Duration;

use plexus_tests::{plexus, wait_for, Cluster, NodeSpec};

fn catalog(dir: &Path) -> std::path::PathBuf {
    let d = dir.join("catalog");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("brittle.toml"),
        r#"
[plugin]
name = "brittle"

[handler]
kind = "sim"
latencyMs = 1
allowFaultInjection = true

[errorHandling.circuitBreaker]
failureRateThreshold = 0.5
monitoringWindow = 4
minimumCalls = 3
timeoutMs = 60000
halfOpenRetries = 1

[errorHandling.retryPolicy]
maxRetries = 0

[[commands]]
name = "poke"
"#,
    )
    .unwrap();
    // As brittle, but its breaker waits only 1.5 s in Open.
    std::fs::write(
        d.join("springy.toml"),
        r#"
[plugin]
name = "springy"

[handler]
kind = "sim"
latencyMs = 1
allowFaultInjection = true

[errorHandling.circuitBreaker]
failureRateThreshold = 0.5
monitoringWindow = 4
minimumCalls = 3
timeoutMs = 1500
halfOpenRetries = 1

[errorHandling.retryPolicy]
maxRetries = 0

[[commands]]
name = "poke"
"#,
    )
    .unwrap();
    std::fs::write(
        d.join("patient.toml"),
        r#"
[plugin]
name = "patient"

[handler]
kind = "sim"
latencyMs = 1
allowFaultInjection = true

[errorHandling.circuitBreaker]
minimumCalls = 50
monitoringWindow = 100

[errorHandling.retryPolicy]
maxRetries = 2
backoff = "linear"
initialDelayMs = 20
maxDelayMs = 100
jitter = 0.0

[[commands]]
name = "read"

[[commands]]
name = "write"
idempotent = false
"#,
    )
    .unwrap();
    std::fs::write(
        d.join("steady.toml"),
        r#"
[plugin]
name = "steady"

[handler]
kind = "sim"
latencyMs = 1
allowFaultInjection = true

[errorHandling]
defaultResult = { status = "degraded", items = [] }

[errorHandling.retryPolicy]
maxRetries = 0

[[commands]]
name = "list"
"#,
    )
    .unwrap();
    std::fs::write(
        d.join("weather.toml"),
        r#"
[plugin]
name = "weather"
description = "Weather forecasts for any city"

[routing]
priority = 9
keywords = ["weather", "forecast", "rain", "temperature"]

[handler]
kind = "sim"
latencyMs = 1
allowFaultInjection = true

[errorHandling]
fallback = ["weather-backup"]

[errorHandling.circuitBreaker]
failureRateThreshold = 0.5
monitoringWindow = 4
minimumCalls = 2
timeoutMs = 1500
halfOpenRetries = 1

[errorHandling.retryPolicy]
maxRetries = 0

[[agents]]
name = "forecaster"
description = "Gives the weather forecast, rain and temperature for a city"
keywords = ["weather", "forecast"]
"#,
    )
    .unwrap();
    std::fs::write(
        d.join("weather-backup.toml"),
        r#"
[plugin]
name = "weather-backup"
description = "Backup weather service with cached forecasts"

[routing]
priority = 2
keywords = ["weather", "forecast"]

[handler]
kind = "sim"
latencyMs = 1

[[agents]]
name = "fallback-forecaster"
description = "Backup weather forecast for a city"
keywords = ["weather", "forecast"]
"#,
    )
    .unwrap();
    d
}

fn cluster() -> (tempfile::TempDir, Cluster) {
    let tmp = tempfile::tempdir().unwrap();
    let cat = catalog(tmp.path());
    let spec = |name: &str, plugins: &[&str]| NodeSpec {
        name: name.into(),
        plugins: plugins.iter().map(|s| s.to_string()).collect(),
        catalogs: vec![cat.clone()],
        extra: vec![],
    };
    let c = Cluster::start(vec![
        spec("node1", &["jira-orchestrator"]),
        spec(
            "node2",
            &[
                "brittle",
                "springy",
                "patient",
                "weather",
                "weather-backup",
                "steady",
            ],
        ),
    ]);
    (tmp, c)
}

fn breaker(c: &Cluster, plugin: &str) -> Option<String> {
    let s = c.nodes[0].status()?;
    s["plugins"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == plugin)?["breaker"]
        .as_str()
        .map(str::to_string)
}

/// Three failed calls open a plugin's breaker.
fn trip(c: &Cluster, plugin: &str) {
    for _ in 0..3 {
        let o = c.nodes[0].exec(plugin, "poke", Some(r#"{"$sim":{"fail":true}}"#));
        assert_eq!(o.code, 1, "{o:?}");
        assert!(o.stderr.contains("simulated failure"), "{}", o.stderr);
    }
}

/// brittle's breaker waits 60 s in Open, so the refusal below cannot race
/// its half-opening however slowly the CLI starts; springy's waits 1.5 s,
/// and its recovery is awaited, not timed.
#[test]
fn a_failing_plugin_trips_its_breaker_which_recovers_after_the_wait() {
    let (_t, c) = cluster();
    let n1 = &c.nodes[0];
    assert_eq!(breaker(&c, "brittle").as_deref(), Some("closed"));
    trip(&c, "brittle");
    wait_for(Duration::from_secs(5), "the breaker to open", || {
        (breaker(&c, "brittle")? == "open").then_some(())
    });
    // Open: refused, even a call that would succeed.
    let o = n1.exec("brittle", "poke", None);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(
        o.stderr
            .contains(r#"circuit breaker of plugin "brittle" is open (on node2)"#),
        "{}",
        o.stderr
    );

    trip(&c, "springy");
    wait_for(Duration::from_secs(5), "springy's breaker to open", || {
        matches!(breaker(&c, "springy")?.as_str(), "open" | "half-open").then_some(())
    });
    // After the wait a trial call goes through and closes it.
    let ok = wait_for(Duration::from_secs(10), "a trial call to succeed", || {
        let o = n1.exec("springy", "poke", None);
        (o.code == 0).then_some(o)
    });
    assert_eq!(ok.json()["node"], "node2");
    wait_for(Duration::from_secs(5), "the breaker to close", || {
        (breaker(&c, "springy")? == "closed").then_some(())
    });
    // brittle is still open: its wait has not ended.
    assert_eq!(breaker(&c, "brittle").as_deref(), Some("open"));
}

#[test]
fn failures_are_retried_by_policy_but_only_when_safe() {
    let (_t, c) = cluster();
    let n1 = &c.nodes[0];
    // Idempotent: 2 retries, then the error says so.
    let o = n1.exec("patient", "read", Some(r#"{"$sim":{"fail":true}}"#));
    assert_eq!(o.code, 1, "{o:?}");
    assert!(o.stderr.contains("after 2 retries"), "{}", o.stderr);
    // Not idempotent and no key: not retried.
    let o = n1.exec("patient", "write", Some(r#"{"$sim":{"fail":true}}"#));
    assert_eq!(o.code, 1, "{o:?}");
    assert!(!o.stderr.contains("retries"), "{}", o.stderr);
    // With an idempotency key it is.
    let o = n1.exec_with(
        "patient",
        "write",
        Some(r#"{"$sim":{"fail":true}}"#),
        &["--idempotency-key", "k1"],
    );
    assert_eq!(o.code, 1, "{o:?}");
    assert!(o.stderr.contains("after 2 retries"), "{}", o.stderr);
    // A success says which path served it.
    let o = n1.exec("patient", "read", Some(r#"{"q":1}"#));
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.json()["served_by"], "primary");
}

/// `--timeout-ms` bounds the whole request: a slow idempotent command is
/// not retried past it (each try used to get the full timeout, so 3 tries
/// of a 1 s timeout kept the client waiting 3 s).
#[test]
fn a_requests_timeout_bounds_all_its_retries_together() {
    let (_t, c) = cluster();
    let n1 = &c.nodes[0];
    let o = n1.exec_with(
        "patient",
        "read",
        Some(r#"{"$sim":{"delay_ms":1500}}"#),
        &["--timeout-ms", "1000"],
    );
    assert_eq!(o.code, 1, "{o:?}");
    // The first try used the whole budget, so no retry was started after
    // it (the node says "after N retries" when any ran). Measured by the
    // node, not by a clock around the CLI's process.
    assert!(
        o.stderr.contains("within the request's 1000 ms") && !o.stderr.contains("retries"),
        "{}",
        o.stderr
    );
}

#[test]
fn a_cached_answer_is_served_when_the_plugin_is_gone() {
    let (_t, mut c) = cluster();
    let o = c.nodes[0].exec("patient", "read", Some(r#"{"q":"cached"}"#));
    assert_eq!(o.code, 0, "{o:?}");
    let first = o.json();
    c.node_mut("node2").kill9();
    wait_for(
        Duration::from_secs(10),
        "patient to become unavailable",
        || (c.plugin_status(0, "patient")? == "unavailable").then_some(()),
    );
    let o = c.nodes[0].exec("patient", "read", Some(r#"{"q":"cached"}"#));
    assert_eq!(o.code, 0, "{o:?}");
    let v = o.json();
    assert_eq!(v["served_by"], "cache");
    assert_eq!(v["output"], first["output"]);
    // A request never answered before has nothing to fall back on.
    let o = c.nodes[0].exec("patient", "read", Some(r#"{"q":"new"}"#));
    assert_eq!(o.code, 1, "{o:?}");
}

#[test]
fn a_failing_plugin_is_served_by_its_fallback_then_heals_through_half_open() {
    let (_t, c) = cluster();
    let ask = |input: Option<&str>| {
        let mut args = vec![
            "ask",
            "--connect",
            &c.nodes[0].api,
            "weather forecast for Paris tomorrow, will it rain?",
            "--json",
        ];
        if let Some(i) = input {
            args.extend(["--input", i]);
        }
        let o = plexus(&args);
        assert_eq!(o.code, 0, "{o:?}");
        o.json()
    };
    // The primary fails; the fallback serves.
    let v = ask(Some(r#"{"$sim":{"fail":true}}"#));
    assert_eq!(v["decision"]["primary_plugin"], "weather", "{v:#}");
    assert_eq!(v["served_by"], "fallback:weather-backup", "{v:#}");
    assert_eq!(v["result"]["plugin"], "weather-backup");
    let _ = ask(Some(r#"{"$sim":{"fail":true}}"#));
    wait_for(Duration::from_secs(5), "weather's breaker to open", || {
        (breaker(&c, "weather")? == "open").then_some(())
    });
    // Open: the router does not even try it.
    let v = ask(None);
    let tried: Vec<&str> = v["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["plugin"].as_str().unwrap())
        .collect();
    assert!(!tried.contains(&"weather"), "{v:#}");
    assert_eq!(v["result"]["plugin"], "weather-backup");
    // Healed (no fault injected): after the wait a trial call closes the breaker.
    wait_for(Duration::from_secs(6), "weather to serve again", || {
        let v = ask(None);
        (v["result"]["plugin"] == "weather").then_some(())
    });
    wait_for(Duration::from_secs(5), "weather's breaker to close", || {
        (breaker(&c, "weather")? == "closed").then_some(())
    });
}

#[test]
fn a_request_resent_with_the_same_key_has_one_effect() {
    let (_t, mut c) = cluster();
    let send = |c: &Cluster, key: &str| {
        c.nodes[0].exec_with(
            "patient",
            "write",
            Some(r#"{"amount":5}"#),
            &["--idempotency-key", key],
        )
    };
    let a = send(&c, "order-1");
    let b = send(&c, "order-1");
    assert_eq!(a.code, 0, "{a:?}");
    assert_eq!(b.code, 0, "{b:?}");
    assert_eq!(a.json()["output"], b.json()["output"]);
    let _ = send(&c, "order-2");
    // The key is remembered across a restart of the plugin's node.
    c.node_mut("node2").restart();
    c.wait_members(0, Duration::from_secs(15), |ms| {
        ms.iter()
            .any(|m| m["name"] == "node2" && m["status"] == "up" && m["generation"] == 2)
    });
    wait_for(
        Duration::from_secs(10),
        "patient to be available again",
        || (c.plugin_status(0, "patient")? == "available").then_some(()),
    );
    let again = send(&c, "order-1");
    assert_eq!(again.code, 0, "{again:?}");
    let log =
        std::fs::read_to_string(c.node("node2").data_dir.join("effects/patient.jsonl")).unwrap();
    let keys: Vec<String> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["key"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(keys, vec!["order-1", "order-2"], "{log}");
}

#[test]
fn the_declared_default_is_served_when_nothing_else_can_answer() {
    let (_t, c) = cluster();
    let o = c.nodes[0].exec("steady", "list", Some(r#"{"$sim":{"fail":true}}"#));
    assert_eq!(o.code, 0, "{o:?}");
    let v = o.json();
    assert_eq!(v["served_by"], "default");
    assert_eq!(v["output"]["status"], "degraded");
}
