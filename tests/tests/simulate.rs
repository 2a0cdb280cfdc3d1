//! `plexus simulate`: every shipped scenario over fixed seeds, replay by seed,
//! scenario errors, and a failing run's report — through the CLI.
//!
//! Runs per scenario: `PLEXUS_SIM_RUNS` (default [`CI_RUNS`]; a debug build
//! on the shared 2-core CI machine does a run in 2–4 s of CPU). The long
//! soak is `plexus simulate FILE --runs 1000` (see simulations/README.md).

use std::path::{Path, PathBuf};

use plexus_tests::plexus;
use serde_json::Value;

fn simulations() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../simulations")
}

fn scenario(name: &str) -> String {
    simulations()
        .join(format!("{name}.toml"))
        .display()
        .to_string()
}

fn simulate(file: &str, seed: u64, runs: u64) -> (i32, Value, String) {
    let out = plexus(&[
        "simulate",
        file,
        "--seed",
        &seed.to_string(),
        "--runs",
        &runs.to_string(),
        "--json",
    ]);
    let json = serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "simulate {file} printed no JSON ({e}): code {} stderr {}",
            out.code,
            plexus_tests::tail(&out.stderr, 20)
        )
    });
    (out.code, json, out.stderr)
}

fn sum(doc: &Value, path: &[&str]) -> u64 {
    doc["reports"]
        .as_array()
        .expect("reports")
        .iter()
        .map(|r| {
            path.iter()
                .fold(r, |v, k| &v[*k])
                .as_u64()
                .unwrap_or_default()
        })
        .sum()
}

const SHIPPED: [&str; 5] = [
    "partition-heal",
    "node-crash-mid-saga",
    "flaky-plugin",
    "rolling-restart",
    "lossy-gossip",
];

/// Runs per scenario in CI: 5 scenarios × 50 = 250 runs over fixed seeds,
/// one test per scenario so they run side by side. `PLEXUS_SIM_RUNS`
/// overrides it (a soak: `plexus simulate FILE --runs 1000`).
const CI_RUNS: u64 = 50;

fn runs() -> u64 {
    std::env::var("PLEXUS_SIM_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CI_RUNS)
}

#[test]
fn every_scenario_file_is_shipped_and_tested() {
    let mut found: Vec<String> = std::fs::read_dir(simulations())
        .expect("simulations/")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".toml"))
                .map(str::to_string)
        })
        .collect();
    found.sort();
    let mut shipped: Vec<String> = SHIPPED.iter().map(|s| s.to_string()).collect();
    shipped.sort();
    assert_eq!(
        found, shipped,
        "simulations/*.toml and the tested list differ"
    );
}

#[test]
fn partition_heal_passes_its_invariants_over_fixed_seeds() {
    passes_over_fixed_seeds("partition-heal");
}

#[test]
fn node_crash_mid_saga_passes_its_invariants_over_fixed_seeds() {
    passes_over_fixed_seeds("node-crash-mid-saga");
}

#[test]
fn flaky_plugin_passes_its_invariants_over_fixed_seeds() {
    passes_over_fixed_seeds("flaky-plugin");
}

#[test]
fn rolling_restart_passes_its_invariants_over_fixed_seeds() {
    passes_over_fixed_seeds("rolling-restart");
}

#[test]
fn lossy_gossip_passes_its_invariants_over_fixed_seeds() {
    passes_over_fixed_seeds("lossy-gossip");
}

/// Runs `name` over seeds 1000.. and checks every invariant held in every
/// run, and that the scenario really injected its faults.
fn passes_over_fixed_seeds(name: &str) {
    let runs = runs();
    let (code, doc, stderr) = simulate(&scenario(name), 1000, runs);
    assert_eq!(
        code,
        0,
        "{name} failed: {}\n{}",
        doc["failures"],
        plexus_tests::tail(&stderr, 10)
    );
    assert_eq!(doc["runs"], runs, "{name}");
    for (inv, v) in doc["invariants"].as_object().expect("invariants") {
        assert_eq!(v["passed"], runs, "{name}: {inv} {v}");
    }
    // Each scenario must really have injected its faults and exercised
    // what its invariants talk about (else they pass vacuously).
    match name {
        "partition-heal" => {
            assert!(sum(&doc, &["net", "partitioned"]) > 0, "no frame was cut");
            assert!(sum(&doc, &["writes", "ok"]) > 0);
            assert!(sum(&doc, &["leases"]) > 0, "no lease was granted");
        }
        "node-crash-mid-saga" => {
            assert!(
                sum(&doc, &["crashes"]) >= 2 * runs,
                "nodes were not crashed"
            );
            assert!(sum(&doc, &["sagas", "completed"]) > 0, "{doc}");
            assert!(sum(&doc, &["sagas", "compensated"]) > 0, "{doc}");
        }
        "flaky-plugin" => {
            assert!(
                sum(&doc, &["breakers", "opened"]) > 0,
                "the breaker never opened"
            );
            assert!(sum(&doc, &["requests", "failed"]) > 0);
            assert!(sum(&doc, &["breakers", "handler_calls"]) > 0, "{doc}");
            assert_eq!(
                sum(&doc, &["breakers", "unpermitted_calls"]),
                0,
                "a call reached the plugin without a breaker permit of its own"
            );
        }
        "rolling-restart" => {
            assert_eq!(sum(&doc, &["restarts"]), 3 * runs);
            assert!(sum(&doc, &["writes", "ok"]) > 0);
        }
        "lossy-gossip" => {
            assert!(sum(&doc, &["net", "lost"]) > 0, "nothing was lost");
            assert!(
                sum(&doc, &["net", "reordered"]) > 0,
                "nothing was reordered"
            );
        }
        _ => unreachable!(),
    }
    eprintln!(
        "{name}: {runs} runs, {} simulated ms in {} wall ms",
        doc["simulated_ms"], doc["wall_ms"]
    );
}

/// Every shipped scenario: same seed, same schedule and trace; another
/// seed, another of both. (Crashes, restarts, saga resumes, loss and
/// reordering included.)
#[test]
fn the_same_seed_replays_the_same_trace_and_another_seed_does_not() {
    for name in SHIPPED {
        let file = scenario(name);
        let (_, a, _) = simulate(&file, 42, 1);
        let (_, b, _) = simulate(&file, 42, 1);
        let (_, c, _) = simulate(&file, 43, 1);
        let hash = |d: &Value, k: &str| d["reports"][0][k].as_str().expect(k).to_string();
        assert_eq!(
            hash(&a, "schedule_hash"),
            hash(&b, "schedule_hash"),
            "{name}"
        );
        assert_eq!(hash(&a, "trace_hash"), hash(&b, "trace_hash"), "{name}");
        assert_ne!(
            hash(&a, "schedule_hash"),
            hash(&c, "schedule_hash"),
            "{name}"
        );
        assert_ne!(hash(&a, "trace_hash"), hash(&c, "trace_hash"), "{name}");
        // The run covered the scenario's simulated time (speed is not a
        // test matter: the CLI reports the simulated/wall-clock ratio).
        assert!(a["simulated_ms"].as_u64() >= Some(20_000), "{name}: {a}");
    }
}

#[test]
fn a_bad_scenario_is_refused_naming_its_line_and_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("bad.toml");
    std::fs::write(
        &f,
        "name = \"bad\"\nduration_ms = 1000\n\n[[nodes]]\nname = \"n1\"\nplugins = [\"exec-automator\"]\n\n[[faults]]\nkind = \"crash\"\nnode = \"n9\"\nat_ms = 10\n",
    )
    .expect("write");
    let out = plexus(&["simulate", &f.display().to_string()]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("bad.toml:8: faults[0].node: unknown node \"n9\""),
        "{out:?}"
    );

    std::fs::write(&f, "name = \"bad\"\nduration_ms = 1000\nnodez = []\n").expect("write");
    let out = plexus(&["simulate", &f.display().to_string()]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("bad.toml:3") && out.stderr.contains("nodez"),
        "{out:?}"
    );
}

#[test]
fn a_failing_run_prints_its_seed_and_the_command_that_replays_it() {
    // The partition lasts to the end and the cluster gets 1 ms to settle:
    // membership cannot have converged, and the run must say so.
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("unsettled.toml");
    std::fs::write(
        &f,
        r#"name = "unsettled"
duration_ms = 6000
settle_ms = 1
invariants = ["membership_converges"]

[[nodes]]
name = "a"
plugins = ["exec-automator"]

[[nodes]]
name = "b"
plugins = ["jira-orchestrator"]

[[faults]]
kind = "partition"
groups = [["a"], ["b"]]
at_ms = 1000
"#,
    )
    .expect("write");
    let file = f.display().to_string();
    let out = plexus(&["simulate", &file, "--seed", "9"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("FAIL membership_converges"), "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("replay: plexus simulate {file} --seed 9")),
        "{out:?}"
    );
}

/// Seeds of `lossy-gossip` that left a live node `unreachable` for good
/// (foca dropped a suspicion timer when the suspecting node's own identity
/// changed; `plexus-membership` now re-arms it). Fixed seeds, so they
/// replay the same schedule; a code change may move the trace away from
/// the original failure, but membership must converge either way.
#[test]
fn lossy_gossip_seeds_that_once_stuck_a_node_unreachable_converge() {
    let file = scenario("lossy-gossip");
    for seed in [9, 37] {
        let (code, doc, stderr) = simulate(&file, seed, 1);
        assert_eq!(
            code,
            0,
            "seed {seed}: {}\n{}",
            doc["failures"],
            plexus_tests::tail(&stderr, 20)
        );
        assert_eq!(doc["passed"], 1, "seed {seed}: {doc}");
    }
}

/// Seed 19 of rolling-restart stopped a node after it ran a saga's last step
/// and before it answered; the saga compensated the earlier steps and left
/// that step's effect. A step in doubt is now re-sent, not failed.
#[test]
fn rolling_restart_seed_with_a_step_in_doubt_keeps_sagas_atomic() {
    let (code, doc, stderr) = simulate(&scenario("rolling-restart"), 19, 1);
    assert_eq!(
        code,
        0,
        "{}\n{}",
        doc["failures"],
        plexus_tests::tail(&stderr, 10)
    );
    assert_eq!(doc["invariants"]["sagas_atomic"]["passed"], 1, "{doc}");
}
