//! Shared test fixtures: the saga test plugins and the `order` saga, used by
//! the multi-process workflow tests (`tests/workflows.rs`) and the Docker
//! tests (`tests/docker.rs`), and readers of what they leave behind.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// A test catalog of `sim` plugins: `ledger` (saga steps and compensations),
/// `shipper` (the third step, with fault injection) and `depot` (a plain
/// counter, for exec workloads), as `(name, fault injection, commands)`.
pub const SAGA_PLUGINS: &[(&str, bool, &[&str])] = &[
    ("ledger", true, &["reserve", "release", "charge", "refund"]),
    ("shipper", true, &["ship", "unship"]),
    ("depot", false, &["count"]),
];

/// The manifest of one test plugin: a `sim` handler (5 ms), no retries, and
/// a breaker that does not open within a test.
pub fn sim_manifest(name: &str, fault_injection: bool, commands: &[&str]) -> String {
    let mut m = format!(
        "[plugin]\nname = \"{name}\"\n[handler]\nkind = \"sim\"\nlatencyMs = 5\n\
         allowFaultInjection = {fault_injection}\n[errorHandling.retryPolicy]\nmaxRetries = 0\n\
         [errorHandling.circuitBreaker]\nminimumCalls = 100\nmonitoringWindow = 100\n"
    );
    for c in commands {
        m.push_str(&format!("[[commands]]\nname = \"{c}\"\n"));
    }
    m
}

/// Write [`SAGA_PLUGINS`] into `dir/catalog` and return that directory.
pub fn write_saga_catalog(dir: &Path) -> PathBuf {
    let cat = dir.join("catalog");
    std::fs::create_dir_all(&cat).expect("create the catalog dir");
    for (name, faults, commands) in SAGA_PLUGINS {
        std::fs::write(
            cat.join(format!("{name}.toml")),
            sim_manifest(name, *faults, commands),
        )
        .expect("write a test manifest");
    }
    cat
}

/// The `order` saga: `ledger` reserve, `ledger` charge (amount 42), `shipper`
/// ship (one attempt, 90 s timeout), each with its compensation (release,
/// refund, unship). `charge_sim` and `ship_sim` are the `$sim` directives of
/// the second and third step as TOML inline tables (`"{}"`, `"{ fail = true
/// }"`, `"{ delay_ms = 3000 }"`).
pub fn order_saga(charge_sim: &str, ship_sim: &str) -> String {
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

/// One line of a plugin's effect log (`data_dir/effects/P.jsonl`):
/// `(command, idempotency key)`, in the order they ran. A saga step's key is
/// `{run}:{step}`, its compensation's `{run}:{step}:compensate`.
pub fn effect_log(data_dir: &Path, plugin: &str) -> Vec<(String, String)> {
    std::fs::read_to_string(data_dir.join("effects").join(format!("{plugin}.jsonl")))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| {
            Some((
                v["command"].as_str()?.to_string(),
                v["key"].as_str()?.to_string(),
            ))
        })
        .collect()
}

/// The commands of a plugin's effect log, in order.
pub fn effects(data_dir: &Path, plugin: &str) -> Vec<String> {
    effect_log(data_dir, plugin)
        .into_iter()
        .map(|(c, _)| c)
        .collect()
}

/// The step statuses of a workflow run report.
pub fn step_statuses(report: &Value) -> Vec<String> {
    report["steps"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| s["status"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Node `api`'s report of workflow run `id` (`plexus workflows --json`).
pub fn run_report(api: &str, id: &str) -> Option<Value> {
    let o = crate::plexus(&["workflows", "--connect", api, "--json"]);
    if o.code != 0 {
        return None;
    }
    o.json().as_array()?.iter().find(|r| r["id"] == id).cloned()
}
