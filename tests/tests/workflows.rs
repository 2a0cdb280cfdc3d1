//! Workflows and journaled sagas across real node processes.

use std::path::Path;
use std::time::Duration;

use plexus_tests::fixtures::{
    effect_log, order_saga, step_statuses as statuses, write_saga_catalog,
};
use plexus_tests::{plexus, wait_for, Cluster, NodeSpec};

fn cluster(dir: &Path) -> Cluster {
    let cat = write_saga_catalog(dir);
    let spec = |name: &str, plugins: &[&str]| NodeSpec {
        name: name.into(),
        plugins: plugins.iter().map(|s| s.to_string()).collect(),
        catalogs: vec![cat.clone()],
        extra: vec![],
    };
    Cluster::start(vec![
        spec("node1", &["jira-orchestrator"]),
        spec("node2", &["ledger", "shipper"]),
    ])
}

/// `plexus run` of `file` against node 0 with `input` and one extra flag.
fn run(c: &Cluster, file: &Path, input: &str, flag: &str) -> plexus_tests::Output {
    plexus(&[
        "run",
        "--connect",
        &c.nodes[0].api,
        file.to_str().unwrap(),
        "--input",
        input,
        flag,
    ])
}

/// The effects of the saga's plugins on node2: (command, key), `ledger`'s
/// then `shipper`'s, each in the order they ran.
fn effects(c: &Cluster) -> Vec<(String, String)> {
    let dir = &c.node("node2").data_dir;
    let mut fx = effect_log(dir, "ledger");
    fx.extend(effect_log(dir, "shipper"));
    fx
}

#[test]
fn a_failing_third_step_compensates_two_then_one() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cluster(tmp.path());
    let f = tmp.path().join("order.toml");
    std::fs::write(&f, order_saga("{}", "{ fail = true }")).unwrap();
    let o = run(&c, &f, r#"{"item":"book"}"#, "--json");
    assert_eq!(o.code, 1, "{o:?}");
    let r = o.json();
    assert_eq!(r["status"], "compensated", "{r:#}");
    assert_eq!(
        statuses(&r),
        vec!["compensated", "compensated", "failed"],
        "{r:#}"
    );
    let cmds: Vec<String> = effects(&c).into_iter().map(|(c, _)| c).collect();
    assert_eq!(cmds, vec!["reserve", "charge", "refund", "release"]);
    // The run is listed with its step states.
    let o = plexus(&["workflows", "--connect", &c.nodes[0].api, "--json"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.json()[0]["status"], "compensated");
}

#[test]
fn a_saga_survives_kill_9_of_its_node_between_steps_with_each_effect_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = cluster(tmp.path());
    let f = tmp.path().join("order.toml");
    // Step 2 takes 2 s: node1 is killed while it runs.
    std::fs::write(&f, order_saga("{ delay_ms = 2000 }", "{}")).unwrap();
    let o = run(&c, &f, r#"{"item":"lamp"}"#, "--detach");
    assert_eq!(o.code, 0, "{o:?}");
    let id = o.stdout.trim().to_string();
    let api = c.nodes[0].api.clone();
    wait_for(Duration::from_secs(10), "step 2 to be running", || {
        let o = plexus(&["workflows", "--connect", &api, "--json"]);
        let v = o.json();
        let run = v
            .as_array()?
            .iter()
            .find(|r| r["id"] == id.as_str())?
            .clone();
        (run["steps"][1]["status"] == "running").then_some(())
    });
    c.node_mut("node1").kill9();
    c.node_mut("node1").restart();
    let api = c.nodes[0].api.clone();
    let report = wait_for(
        Duration::from_secs(30),
        "the saga to end after the restart",
        || {
            let o = plexus(&["workflows", "--connect", &api, "--json"]);
            if o.code != 0 {
                return None;
            }
            let v = o.json();
            let run = v
                .as_array()?
                .iter()
                .find(|r| r["id"] == id.as_str())?
                .clone();
            (run["status"] == "completed" || run["status"] == "compensated").then_some(run)
        },
    );
    assert_eq!(report["status"], "completed", "{report:#}");
    // Every effect exactly once, although step 2 was sent twice.
    let fx = effects(&c);
    let cmds: Vec<&str> = fx.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(cmds, vec!["reserve", "charge", "ship"], "{fx:?}");
    let mut keys: Vec<&str> = fx.iter().map(|(_, k)| k.as_str()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 3);
}

#[test]
fn a_sequential_workflow_with_a_condition_runs_across_nodes() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cluster(tmp.path());
    let f = tmp.path().join("seq.toml");
    std::fs::write(
        &f,
        r#"
[workflow]
name = "seq"
kind = "sequential"

[[steps]]
id = "reserve"
plugin = "ledger"
command = "reserve"
input = { item = "{{input.item}}" }

[[steps]]
id = "skipped"
plugin = "ledger"
command = "charge"
when = "steps.reserve.failed"
input = { amount = 1 }

[[steps]]
id = "ship"
plugin = "shipper"
command = "ship"
when = "steps.reserve.ok"
input = { item = "{{steps.reserve.output.input.item}}" }
"#,
    )
    .unwrap();
    let o = run(&c, &f, r#"{"item":"pen"}"#, "--json");
    assert_eq!(
        o.code,
        0,
        "{o:?}\n{}",
        plexus_tests::tail(&c.nodes[0].log_text(), 30)
    );
    let r = o.json();
    assert_eq!(statuses(&r), vec!["ok", "skipped", "ok"], "{r:#}");
    assert_eq!(r["steps"][2]["output"]["input"]["item"], "pen");
}

#[test]
fn a_malformed_workflow_file_names_file_line_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("bad.toml");
    std::fs::write(&f, "[workflow]\nname = \"x\"\nkind = \"sequential\"\n\n[[steps]]\nid = \"a\"\ncommand = \"c\"\n").unwrap();
    // No cluster needed: the file is checked before anything is sent.
    let o = plexus(&["run", "--connect", "127.0.0.1:9", f.to_str().unwrap()]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(
        o.stderr.contains("bad.toml") && o.stderr.contains("plugin"),
        "{}",
        o.stderr
    );
    assert!(
        o.stderr.contains(":5") || o.stderr.contains(":6") || o.stderr.contains("line"),
        "{}",
        o.stderr
    );
}
