//! Malformed config, manifests, frontmatter and input: clear errors naming
//! where, exit code 2 for usage errors, nothing already accepted is lost.

use plexus_tests::plexus;

#[test]
fn malformed_node_config_names_file_and_line() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("node.toml");
    std::fs::write(&f, "[node]\nname = \"n1\"\nlisten = 7101\n").unwrap();
    let o = plexus(&["node", "--config", f.to_str().unwrap()]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("node.toml:3"), "{}", o.stderr);

    std::fs::write(&f, "[node]\nname = \"n1\"\nlsiten = \"127.0.0.1:0\"\n").unwrap();
    let o = plexus(&["node", "--config", f.to_str().unwrap()]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(
        o.stderr.contains("node.toml:3") && o.stderr.contains("lsiten"),
        "{}",
        o.stderr
    );

    std::fs::write(&f, "[node]\nlisten = \"127.0.0.1:0\"\n").unwrap();
    let o = plexus(&["node", "--config", f.to_str().unwrap()]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("node.name"), "{}", o.stderr);

    let o = plexus(&[
        "node",
        "--config",
        d.path().join("missing.toml").to_str().unwrap(),
    ]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("missing.toml"), "{}", o.stderr);
}

#[test]
fn bad_flags_are_usage_errors() {
    let o = plexus(&["node", "--name", "Bad Name!", "--listen", "127.0.0.1:0"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("node.name"), "{}", o.stderr);
    let o = plexus(&["node", "--name", "n1", "--listen", "not-an-address"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("node.listen"), "{}", o.stderr);
    let d = tempfile::tempdir().unwrap();
    let o = plexus(&[
        "node",
        "--name",
        "n1",
        "--listen",
        "127.0.0.1:0",
        "--api",
        "127.0.0.1:0",
        "--plugins",
        "nope",
        "--data-dir",
        d.path().to_str().unwrap(),
    ]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(
        o.stderr.contains("unknown plugin") && o.stderr.contains("nope"),
        "{}",
        o.stderr
    );
    let o = plexus(&[
        "exec",
        "--connect",
        "127.0.0.1:9",
        "--plugin",
        "p",
        "--command",
        "c",
        "--input",
        "{not json",
    ]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(
        o.stderr.contains("--input is not valid JSON"),
        "{}",
        o.stderr
    );
    let o = plexus(&["frobnicate"]);
    assert_eq!(o.code, 2, "{o:?}");
}

#[test]
fn unreachable_node_is_a_clear_runtime_error() {
    let o = plexus(&["status", "--connect", "127.0.0.1:9"]);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(
        o.stderr
            .contains("cannot reach the node at http://127.0.0.1:9"),
        "{}",
        o.stderr
    );
}

#[test]
fn a_bad_manifest_is_reported_and_the_rest_still_loads() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("good.toml"),
        "[plugin]\nname = \"good\"\n\n[[commands]]\nname = \"go\"\n",
    )
    .unwrap();
    std::fs::write(
        d.path().join("bad.toml"),
        "[plugin]\nname = \"bad\"\n[routing]\npriority = \"high\"\n",
    )
    .unwrap();
    std::fs::write(d.path().join("worse.toml"), "[plugin\nname = 1\n").unwrap();
    let o = plexus(&[
        "catalog",
        "list",
        "--no-default-plugins",
        "--catalog",
        d.path().to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(o.code, 1, "{o:?}");
    let v = o.json();
    let names: Vec<&str> = v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["good"]);
    let diags = v["diagnostics"].as_array().unwrap();
    assert!(
        diags
            .iter()
            .any(|d| d["file"].as_str().unwrap().ends_with("bad.toml") && d["line"] == 4),
        "{diags:#?}"
    );
    assert!(
        diags
            .iter()
            .any(|d| d["file"].as_str().unwrap().ends_with("worse.toml") && d["line"] == 1),
        "{diags:#?}"
    );

    // The human form names file:line too.
    let o = plexus(&[
        "catalog",
        "list",
        "--no-default-plugins",
        "--catalog",
        d.path().to_str().unwrap(),
    ]);
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("bad.toml:4"), "{}", o.stderr);
    assert!(o.stdout.contains("good"), "{}", o.stdout);
}

#[test]
fn claude_plugins_with_broken_files_still_load_what_they_can() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("myplugin");
    std::fs::create_dir_all(p.join(".claude-plugin")).unwrap();
    std::fs::create_dir_all(p.join("agents")).unwrap();
    std::fs::create_dir_all(p.join("commands")).unwrap();
    std::fs::write(
        p.join(".claude-plugin/plugin.json"),
        r#"{"name":"myplugin","version":"1.2.3","description":"d"}"#,
    )
    .unwrap();
    std::fs::write(
        p.join("agents/plain.md"),
        "# Just a title\nNo frontmatter here.\n",
    )
    .unwrap();
    std::fs::write(
        p.join("agents/ok.md"),
        "---\nname: ok\ndescription: fine\nmodel: haiku\n---\nbody\n",
    )
    .unwrap();
    std::fs::write(p.join("commands/run.md"), "---\ndescription: runs\n---\n").unwrap();
    // A second plugin whose plugin.json is broken.
    let q = d.path().join("broken");
    std::fs::create_dir_all(q.join(".claude-plugin")).unwrap();
    std::fs::write(
        q.join(".claude-plugin/plugin.json"),
        "{\"name\": \"broken\",\n  \"version\": }",
    )
    .unwrap();

    let o = plexus(&[
        "catalog",
        "list",
        "--no-default-plugins",
        "--catalog",
        d.path().to_str().unwrap(),
        "--json",
    ]);
    let v = o.json();
    let mine = v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "myplugin")
        .expect("myplugin loaded")
        .clone();
    assert_eq!(mine["version"], "1.2.3");
    assert_eq!(mine["agents"], 2);
    assert_eq!(mine["commands"], 1);
    let diags = v["diagnostics"].as_array().unwrap();
    assert!(
        diags.iter().any(
            |d| d["severity"] == "warning" && d["file"].as_str().unwrap().ends_with("plain.md")
        ),
        "{diags:#?}"
    );
    assert!(
        diags.iter().any(|d| d["severity"] == "error"
            && d["file"].as_str().unwrap().ends_with("plugin.json")
            && d["line"] == 2),
        "{diags:#?}"
    );
    assert_eq!(o.code, 1);
}

#[test]
fn the_real_catalog_lists_every_plugin() {
    let cat = plexus_tests::shared_catalog();
    let o = plexus(&[
        "catalog",
        "list",
        "--catalog",
        cat.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    let v = o.json();
    let rows: Vec<(String, u64, u64)> = v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["agents"].as_u64().unwrap(),
                p["commands"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows.len(), 6, "{rows:?}");
    assert!(
        rows.contains(&("jira-orchestrator".into(), 60, 35)),
        "{rows:?}"
    );
}

#[test]
fn route_batch_keeps_going_past_a_bad_line() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("reqs.jsonl");
    std::fs::write(&f, "{\"request\":\"create a jira epic for the release\"}\nnot json\n{\"request\":\"add a React button component with Chakra UI\"}\n").unwrap();
    let o = plexus(&["route", "--batch", f.to_str().unwrap(), "--json"]);
    assert_eq!(o.code, 0, "{o:?}");
    let lines: Vec<serde_json::Value> = o
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["primary_plugin"], "jira-orchestrator");
    assert!(lines[1].get("error").is_some(), "{:?}", lines[1]);
    assert_eq!(lines[1]["line"], 2);
    assert_eq!(lines[2]["primary_plugin"], "frontend-powerhouse");
}

#[test]
fn the_example_cluster_configs_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster-config");
    let mut all = vec![];
    for i in 1..=3 {
        let f = dir.join(format!("node{i}.toml"));
        let o = plexus(&["node", "--config", f.to_str().unwrap(), "--check"]);
        assert_eq!(o.code, 0, "{o:?}");
        let v = o.json();
        assert_eq!(v["name"], format!("node{i}"));
        assert_eq!(v["cluster_addr"], format!("10.0.0.{i}:7101"));
        all.extend(
            v["plugins"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap().to_string()),
        );
    }
    all.sort();
    assert_eq!(
        all.len(),
        6,
        "each default plugin is hosted exactly once: {all:?}"
    );
    all.dedup();
    assert_eq!(all.len(), 6, "{all:?}");
}
