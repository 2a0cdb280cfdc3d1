//! `plexus bench --smoke` runs every workload briefly against a real cluster
//! (node processes, peer processes, nats-server), so the bench cannot rot.
//! It checks that the bench runs and reports every workload, and that every
//! messaging row of both systems delivered what it sent (`sent ×
//! subscriptions`, no errors); it does not judge the speed (that is for the
//! bench itself, not for tests).
//!
//! `.ci/run` sets `PLEXUS_REQUIRE_NATS=1`: there the NATS side must run.

use std::path::Path;

use plexus_tests::plexus;
use serde_json::Value;

const WORKLOADS: &[&str] = &[
    "bus.inproc.max",
    "bus.inproc.open",
    "bus.inproc.open.1thread",
    "crdt.converge.3nodes",
    "crdt.converge.5nodes",
    "reqresp.inflight1",
    "reqresp.inflight16",
    "reqresp.inflight256",
    "fanout.wildcard",
    "exec.node.inflight1",
    "exec.node.inflight16",
    "exec.http.c1",
    "exec.http.c16",
    "route.http.c8",
    "discovery.small",
    "discovery.large",
];

/// The NATS side needs nats-server (CI installs the Debian package).
fn nats_server_present() -> bool {
    std::env::var_os("PLEXUS_NATS_SERVER").is_some()
        || std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .chain(["/usr/sbin", "/usr/local/sbin", "/usr/local/bin"].map(Into::into))
            .any(|d: std::path::PathBuf| d.join("nats-server").is_file())
}

/// Rows that move messages (or requests) and count what arrived.
const MESSAGING: &[&str] = &[
    "bus.inproc.max",
    "bus.inproc.open",
    "bus.inproc.open.1thread",
    "reqresp.inflight1",
    "reqresp.inflight16",
    "reqresp.inflight256",
    "fanout.wildcard",
    "exec.node.inflight1",
    "exec.node.inflight16",
    "exec.http.c1",
    "exec.http.c16",
    "route.http.c8",
];

fn row<'a>(rows: &'a [Value], workload: &str, system: &str) -> Option<&'a Value> {
    rows.iter()
        .find(|r| r["workload"] == workload && r["system"] == system)
}

#[test]
fn the_smoke_bench_runs_every_workload_on_a_real_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bench");
    let out = plexus(&["bench", "--smoke", "--json", "--dir", dir.to_str().unwrap()]);
    assert_eq!(out.code, 0, "bench failed: {out:?}");
    let report = out.json();
    assert_eq!(report["smoke"], true);
    let rows = report["rows"].as_array().expect("rows");
    for w in WORKLOADS {
        let r =
            row(rows, w, "plexus").unwrap_or_else(|| panic!("no plexus row for {w}: {rows:#?}"));
        assert!(r["ops"].as_u64().unwrap_or(0) > 0, "{w} did nothing: {r}");
        assert!(
            r["latency"]["samples"].as_u64().unwrap_or(0) > 0,
            "{w} has no latency samples: {r}"
        );
    }
    // Goals are judged and named.
    let inproc = row(rows, "bus.inproc.max", "plexus").unwrap();
    assert!(inproc["goal"].as_str().unwrap().contains("1,000,000"));
    assert!(inproc["met"].is_boolean());
    // With 256 requests in flight, frames queue up behind each other on the
    // real cluster links and travel in batches: the driver receives the
    // peers' answers in fewer cluster messages than frames.
    let rr = row(rows, "reqresp.inflight256", "plexus").unwrap();
    let (frames, messages) = frames_and_messages(rr["detail"].as_str().unwrap())
        .unwrap_or_else(|| panic!("no frame counts in {rr}"));
    assert!(
        messages > 0 && frames > messages,
        "no batching: {frames} frames in {messages} messages: {rr}"
    );
    // Every messaging row: nothing lost, nothing failed.
    for w in MESSAGING {
        for system in ["plexus", "nats"] {
            let Some(r) = row(rows, w, system) else {
                continue;
            };
            let n = |k: &str| {
                r[k].as_u64()
                    .unwrap_or_else(|| panic!("{w} ({system}) has no {k}: {r}"))
            };
            let (sent, subs) = (n("sent"), n("subscriptions"));
            assert!(sent > 0, "{w} ({system}) sent nothing: {r}");
            assert_eq!(
                n("delivered"),
                sent * subs,
                "{w} ({system}) lost messages: {r}"
            );
            assert_eq!(n("errors"), 0, "{w} ({system}) had errors: {r}");
        }
    }
    // One subscription per peer for both systems: each message reaches
    // each of the two peers once.
    assert_eq!(
        row(rows, "fanout.wildcard", "plexus").unwrap()["subscriptions"],
        2
    );
    let machine = &report["machine"];
    assert!(machine["nproc"].as_u64().unwrap() >= 1);
    assert!(!machine["cpu_model"].as_str().unwrap().is_empty());

    let required = std::env::var_os("PLEXUS_REQUIRE_NATS").is_some_and(|v| v == "1");
    assert!(
        nats_server_present() || !required,
        "PLEXUS_REQUIRE_NATS=1 but nats-server is not installed"
    );
    if nats_server_present() {
        for w in [
            "reqresp.inflight1",
            "reqresp.inflight16",
            "reqresp.inflight256",
            "fanout.wildcard",
        ] {
            let r = row(rows, w, "nats").unwrap_or_else(|| panic!("no nats row for {w}"));
            assert!(
                r["ops"].as_u64().unwrap_or(0) > 0,
                "{w} (nats) did nothing: {r}"
            );
        }
        assert_eq!(
            row(rows, "fanout.wildcard", "nats").unwrap()["subscriptions"],
            2
        );
        // Both systems warmed up the same, and the first system alternates.
        let first = |w: &str| {
            ["plexus", "nats"]
                .into_iter()
                .find(|s| {
                    row(rows, w, s).unwrap()["detail"]
                        .as_str()
                        .unwrap()
                        .contains("ran first")
                })
                .unwrap_or_else(|| panic!("{w}: no row ran first"))
        };
        assert_eq!(
            [
                first("reqresp.inflight1"),
                first("reqresp.inflight16"),
                first("reqresp.inflight256"),
                first("fanout.wildcard")
            ],
            ["plexus", "nats", "plexus", "nats"]
        );
        let cmp = report["comparisons"].as_array().unwrap();
        assert_eq!(cmp.len(), 4, "{cmp:#?}");
        assert!(cmp
            .iter()
            .all(|c| c["p50_ratio"].as_f64().is_some_and(|x| x > 0.0)));
        for w in [
            "reqresp.inflight1",
            "reqresp.inflight16",
            "reqresp.inflight256",
        ] {
            let rr = row(rows, w, "plexus").unwrap();
            assert!(rr["goal"].as_str().unwrap().contains("1.5× NATS"), "{rr}");
        }
    } else {
        eprintln!(
            "nats-server is not installed: the NATS side of the bench was skipped \
             (apt-get install nats-server; .ci/run does)"
        );
        let notes = report["notes"].to_string();
        assert!(notes.contains("nats-server not found"), "{notes}");
        assert!(row(rows, "reqresp.inflight1", "nats").is_none());
    }
    // The directory is marked as the bench's own (so a later run may wipe it).
    assert!(Path::new(&dir).join(".plexus-bench").exists());
}

/// "… received F frames in M cluster messages …" → (F, M).
fn frames_and_messages(detail: &str) -> Option<(u64, u64)> {
    let (_, rest) = detail.split_once("received ")?;
    let mut words = rest.split_whitespace();
    let frames = words.next()?.parse().ok()?;
    let _ = (words.next()?, words.next()?);
    let messages = words.next()?.parse().ok()?;
    Some((frames, messages))
}

#[test]
fn bad_bench_flags_are_usage_errors() {
    let out = plexus(&["bench", "--duration=0"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--duration"), "{out:?}");
    let out = plexus(&["bench", "--agents", "10"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--agents"), "{out:?}");
}
