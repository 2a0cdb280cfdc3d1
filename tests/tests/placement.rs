//! Cluster placement across real `plexus node` processes: every node may
//! host every plugin, the placement rule spreads them, and when a node is
//! killed its plugins start on the survivors.

use std::collections::BTreeMap;
use std::time::Duration;

use plexus_tests::{wait_for, Cluster, NodeSpec};
use serde_json::Value;

/// The plugins built into the binary.
const ALL: [&str; 6] = [
    "ahling-command-center",
    "exec-automator",
    "frontend-powerhouse",
    "home-assistant-architect",
    "jira-orchestrator",
    "lobbi-platform-manager",
];

fn spec(name: &str) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        // "Only these": all of them, so the placement alone decides.
        plugins: ALL.iter().map(|s| s.to_string()).collect(),
        catalogs: vec![],
        extra: vec!["--placement".into(), "cluster".into()],
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Node `i`'s placement once every plugin runs exactly where it is
/// assigned, on one node each: plugin → node.
fn settled_placement(c: &Cluster, i: usize) -> BTreeMap<String, String> {
    wait_for(
        Duration::from_secs(30),
        &format!("node {i}'s placement to settle"),
        || {
            let s = c.nodes[i].status()?;
            let rows = s["placement"].as_array()?;
            let mut m = BTreeMap::new();
            for r in rows {
                let (assigned, running) = (strings(&r["assigned"]), strings(&r["running"]));
                if assigned.len() != 1 || assigned != running {
                    return None;
                }
                m.insert(r["plugin"].as_str()?.to_string(), assigned[0].clone());
            }
            (m.len() == ALL.len()).then_some(m)
        },
    )
}

#[test]
fn a_killed_nodes_plugins_are_served_by_primary_on_a_survivor() {
    let mut c = Cluster::start(vec![spec("node1"), spec("node2"), spec("node3")]);

    // Every node computes the same placement, each plugin runs once, and
    // the rule spreads them (it is deterministic for these names).
    let placed = settled_placement(&c, 0);
    for i in 1..3 {
        assert_eq!(settled_placement(&c, i), placed, "node {i} disagrees");
    }
    let hosts: std::collections::BTreeSet<&String> = placed.values().collect();
    assert!(hosts.len() > 1, "all on one node: {placed:?}");
    let host = placed["lobbi-platform-manager"].clone();
    let survivor = (0..3).find(|&i| c.nodes[i].spec.name != host).unwrap();

    let o = c.nodes[survivor].exec(
        "lobbi-platform-manager",
        "health",
        Some(r#"{"service":"keycloak"}"#),
    );
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.json()["node"], host.as_str());

    c.node_mut(&host).kill9();

    // A fresh input each time, so no cached answer can pass: served by
    // `primary` on a survivor once its node is declared down.
    let mut n = 0;
    let v = wait_for(
        Duration::from_secs(30),
        "lobbi-platform-manager served by primary on a survivor",
        || {
            n += 1;
            let o = c.nodes[survivor].exec(
                "lobbi-platform-manager",
                "health",
                Some(&format!(r#"{{"service":"keycloak","attempt":{n}}}"#)),
            );
            let v = (o.code == 0).then(|| o.json())?;
            (v["served_by"] == "primary" && v["node"] != host.as_str()).then_some(v)
        },
    );
    assert_eq!(v["output"]["input"]["attempt"], n, "{v:#}");

    // Every plugin of the killed node runs on a survivor, as the
    // survivors' placement says, and only the killed node's plugins moved.
    let after = settled_placement(&c, survivor);
    for (p, node) in &placed {
        if *node == host {
            assert_ne!(after[p], host, "{p} still on the killed node");
        } else {
            assert_eq!(&after[p], node, "{p} moved though its node lives");
        }
    }
}
