//! The exec pipeline's order and host choice, across real node processes.
//! Each test here failed on the pipeline before it was one typed service
//! (commit 7a07701): run them with `PLEXUS_BIN` set to that build to see.

use std::path::{Path, PathBuf};
use std::time::Duration;

use plexus_tests::{plexus, wait_for, Cluster, NodeSpec};
use serde_json::Value;

fn catalog(dir: &Path) -> PathBuf {
    let d = dir.join("catalog");
    std::fs::create_dir_all(&d).unwrap();
    let files = [
        (
            "twin",
            r#"
[plugin]
name = "twin"

[handler]
kind = "sim"
latencyMs = 1
allowFaultInjection = true

[errorHandling.circuitBreaker]
failureRateThreshold = 0.5
monitoringWindow = 4
minimumCalls = 2
timeoutMs = 60000

[errorHandling.retryPolicy]
maxRetries = 0

[[commands]]
name = "work"
"#,
        ),
        (
            "ledger",
            r#"
[plugin]
name = "ledger"
description = "Reconciles invoices against the ledger"

[routing]
priority = 9
keywords = ["invoice", "ledger", "reconcile"]

[handler]
kind = "sim"
latencyMs = 1
allowFaultInjection = true

[errorHandling]
fallback = ["ledger-backup"]
defaultResult = { status = "degraded" }

[errorHandling.retryPolicy]
maxRetries = 0

[[agents]]
name = "reconciler"
description = "Reconciles the invoices of a month against the ledger"
keywords = ["invoice", "reconcile", "ledger"]
"#,
        ),
        (
            "ledger-backup",
            r#"
[plugin]
name = "ledger-backup"
description = "Backup invoice reconciliation"

[routing]
priority = 2
keywords = ["invoice", "reconcile"]

[handler]
kind = "sim"
latencyMs = 1

[errorHandling.retryPolicy]
maxRetries = 0

[[agents]]
name = "backup-reconciler"
description = "Reconciles invoices when the ledger cannot"
keywords = ["invoice", "reconcile"]
"#,
        ),
    ];
    for (name, text) in files {
        std::fs::write(d.join(format!("{name}.toml")), text).unwrap();
    }
    d
}

fn spec(cat: &Path, name: &str, plugins: &[&str]) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        plugins: plugins.iter().map(|s| s.to_string()).collect(),
        catalogs: vec![cat.to_path_buf()],
        extra: vec![],
    }
}

/// `plexus ask --json`: its exit code and its answer.
fn ask(c: &Cluster, text: &str, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["ask", "--connect", &c.nodes[0].api, text, "--json"];
    args.extend(extra);
    let o = plexus(&args);
    (o.code, o.json())
}

/// A node whose own host has its breaker open sends the request to a
/// healthy host elsewhere (the bus used to pick the local host anyway, and
/// every request failed with 503).
#[test]
fn a_local_host_with_an_open_breaker_yields_to_a_healthy_remote_host() {
    let tmp = tempfile::tempdir().unwrap();
    let cat = catalog(tmp.path());
    let c = Cluster::start(vec![
        spec(&cat, "node1", &["twin"]),
        spec(&cat, "node2", &["twin"]),
    ]);
    let n1 = &c.nodes[0];
    // Failures through node1 run on node1's own host and open its breaker.
    for _ in 0..2 {
        let o = n1.exec("twin", "work", Some(r#"{"$sim":{"fail":true}}"#));
        assert_eq!(o.code, 1, "{o:?}");
    }
    wait_for(
        Duration::from_secs(10),
        "node1's twin breaker to open",
        || {
            let s = n1.status()?;
            let open = s["plugins"]
                .as_array()?
                .iter()
                .any(|p| p["name"] == "twin" && p["node"] == "node1" && p["breaker"] == "open");
            open.then_some(())
        },
    );
    let o = n1.exec("twin", "work", Some(r#"{"n":1}"#));
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.json()["node"], "node2");
    assert_eq!(o.json()["served_by"], "primary");
}

/// The ask's timeout is one deadline for the primary and every fallback
/// (each fallback used to get the whole timeout again).
#[test]
fn fallbacks_share_the_asks_one_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let cat = catalog(tmp.path());
    let c = Cluster::start(vec![
        spec(&cat, "node1", &[]),
        spec(&cat, "node2", &["ledger", "ledger-backup"]),
    ]);
    // The primary takes 1.5 s of an ask that may take 1 s in all: no time
    // is left for its fallback.
    let (code, v) = ask(
        &c,
        "reconcile the invoices of March against the ledger",
        &[
            "--timeout-ms",
            "1000",
            "--input",
            r#"{"$sim":{"delay_ms":1500}}"#,
        ],
    );
    assert_eq!(code, 1, "nothing served: {v:#}");
    assert_eq!(v["decision"]["primary_plugin"], "ledger", "{v:#}");
    let ran: Vec<&Value> = v["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["duration_ms"].as_f64().unwrap() > 0.0)
        .collect();
    assert_eq!(ran.len(), 1, "a fallback ran after the deadline: {v:#}");
    assert_eq!(ran[0]["plugin"], "ledger");
    assert!(v["served_by"].is_null(), "{v:#}");
}

/// When the primary fails, its fallback serves before the primary's cached
/// or default answer, and the reply says so (the default used to be served
/// first, labelled `primary`).
#[test]
fn a_fallback_serves_before_the_primarys_default_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let cat = catalog(tmp.path());
    let c = Cluster::start(vec![
        spec(&cat, "node1", &[]),
        spec(&cat, "node2", &["ledger", "ledger-backup"]),
    ]);
    // The primary fails (fault injection); the backup does not inject faults.
    let (code, v) = ask(
        &c,
        "reconcile the invoices of March against the ledger",
        &["--input", r#"{"$sim":{"fail":true}}"#],
    );
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["decision"]["primary_plugin"], "ledger", "{v:#}");
    assert_eq!(v["served_by"], "fallback:ledger-backup", "{v:#}");
    assert_eq!(v["result"]["plugin"], "ledger-backup", "{v:#}");
    assert_eq!(v["result"]["served_by"], "fallback:ledger-backup", "{v:#}");
}
