//! Replicated state across real `plexus node` processes on loopback, driven
//! through `plexus state`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use plexus_tests::{plexus, wait_for, Cluster, Node, NodeSpec, Output};
use serde_json::Value;

/// A node config file with the given gossip interval.
fn state_config(dir: &Path, gossip_ms: u64) -> PathBuf {
    let p = dir.join(format!("state-{gossip_ms}.toml"));
    std::fs::write(
        &p,
        format!("[state]\ngossip_interval_ms = {gossip_ms}\ngossip_fanout = 2\npurge_interval_ms = 200\n"),
    )
    .unwrap();
    p
}

fn spec(name: &str, config: &Path) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        plugins: vec![],
        catalogs: vec![],
        extra: vec!["--config".into(), config.display().to_string()],
    }
}

fn cluster(n: usize, gossip_ms: u64) -> (tempfile::TempDir, Cluster) {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = state_config(tmp.path(), gossip_ms);
    let specs = (1..=n).map(|i| spec(&format!("node{i}"), &cfg)).collect();
    (tmp, Cluster::start(specs))
}

/// `plexus state SUB --connect NODE --as PLUGIN --json ARGS...`.
fn state(node: &Node, sub: &str, plugin: &str, args: &[&str]) -> Output {
    let mut a = vec![
        "state",
        sub,
        "--connect",
        node.api.as_str(),
        "--as",
        plugin,
        "--json",
    ];
    a.extend_from_slice(args);
    plexus(&a)
}

fn ok(o: Output) -> Value {
    assert_eq!(o.code, 0, "plexus state failed: {o:?}");
    o.json()
}

/// The value and version of `key` on `node` as `plugin` (None if not readable).
fn read(node: &Node, plugin: &str, key: &str) -> Option<(Value, Value)> {
    let o = state(node, "get", plugin, &[key]);
    (o.code == 0).then(|| {
        let v = o.json();
        (v["value"].clone(), v["version"].clone())
    })
}

fn value(node: &Node, plugin: &str, key: &str) -> Option<Value> {
    read(node, plugin, key).map(|(v, _)| v)
}

/// Wait until every node holds the same value and version of every key,
/// and return the values.
fn converged(c: &Cluster, plugin: &str, keys: &[&str], timeout: Duration) -> Vec<Value> {
    wait_for(timeout, "all replicas to converge", || {
        let mut out = vec![];
        for k in keys {
            let first = read(&c.nodes[0], plugin, k)?;
            for n in &c.nodes[1..] {
                if read(n, plugin, k)? != first {
                    return None;
                }
            }
            out.push(first.0);
        }
        Some(out)
    })
}

#[test]
fn writes_on_every_node_converge_by_gossip() {
    let (_tmp, c) = cluster(3, 100);
    // node1 writes a register; all three count concurrently.
    ok(state(
        &c.nodes[0],
        "put",
        "alpha",
        &["cfg", r#"{"mode":"fast"}"#],
    ));
    let handles: Vec<_> = c
        .nodes
        .iter()
        .map(|n| n.api.clone())
        .map(|api| {
            std::thread::spawn(move || {
                for _ in 0..5 {
                    let o = plexus(&[
                        "state",
                        "incr",
                        "--connect",
                        &api,
                        "--as",
                        "alpha",
                        "hits",
                        "--by",
                        "2",
                    ]);
                    assert_eq!(o.code, 0, "{o:?}");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    // node3 sees node1's register without any consistency level: gossip.
    let v = wait_for(Duration::from_secs(10), "cfg on node3", || {
        value(&c.nodes[2], "beta", "cfg")
    });
    assert_eq!(v, serde_json::json!({"mode": "fast"}));
    let vals = converged(&c, "beta", &["cfg", "hits"], Duration::from_secs(10));
    assert_eq!(vals[1], 30, "3 nodes x 5 increments of 2");
    // The change is audited on a node it reached by replication.
    let a = ok(state(&c.nodes[2], "audit", "alpha", &["--key", "cfg"]));
    let recs = a["records"].as_array().unwrap();
    assert!(
        recs.iter()
            .any(|r| r["node"] == "node1" && r["source"] != "Local"),
        "{a:#}"
    );
}

#[test]
fn a_majority_write_is_readable_at_once_at_majority_elsewhere() {
    // Gossip every minute: only the consistency levels can move the value.
    let (_tmp, c) = cluster(3, 60_000);
    let w = ok(state(
        &c.nodes[0],
        "put",
        "alpha",
        &[
            "order/42",
            r#"{"status":"paid"}"#,
            "--consistency",
            "majority",
        ],
    ));
    assert!(w["acks"].as_u64().unwrap() >= 2, "{w:#}");
    assert_eq!(w["required"], 2);
    let r = ok(state(
        &c.nodes[2],
        "get",
        "beta",
        &["order/42", "--consistency", "majority"],
    ));
    assert_eq!(r["value"], serde_json::json!({"status": "paid"}), "{r:#}");
    assert_eq!(r["node"], "node3");
    // `all` reaches every node; a local read anywhere then has it.
    ok(state(
        &c.nodes[1],
        "add",
        "alpha",
        &["tags", "a", "b", "--consistency", "all"],
    ));
    for n in &c.nodes {
        assert_eq!(
            value(n, "beta", "tags"),
            Some(serde_json::json!(["a", "b"])),
            "on {}",
            n.spec.name
        );
    }
}

#[test]
fn acl_refusals_are_403_audited_and_private_keys_stay_private() {
    let (_tmp, c) = cluster(3, 100);
    ok(state(
        &c.nodes[0],
        "put",
        "alpha",
        &[
            "secret",
            r#""s3cr3t""#,
            "--access",
            "private",
            "--consistency",
            "all",
        ],
    ));
    ok(state(
        &c.nodes[0],
        "put",
        "alpha",
        &[
            "shared",
            "1",
            "--access",
            "protected",
            "--readers",
            "gamma",
            "--consistency",
            "all",
        ],
    ));
    for n in &c.nodes {
        // The owner reads it everywhere; another plugin reads nothing.
        assert_eq!(value(n, "alpha", "secret"), Some(Value::from("s3cr3t")));
        let o = state(n, "get", "beta", &["secret"]);
        assert_eq!(o.code, 1, "{o:?}");
        let p = o.json();
        assert_eq!(p["status"], 403, "{p:#}");
        let d = p["detail"].as_str().unwrap();
        assert!(d.contains("private") && d.contains("alpha"), "{d}");
        let keys = ok(state(n, "list", "beta", &[]));
        assert!(
            !keys["keys"].as_array().unwrap().contains(&"secret".into()),
            "{keys:#}"
        );
        // Writing it is refused too.
        let o = state(n, "put", "beta", &["secret", "2"]);
        assert_eq!(o.json()["status"], 403, "{o:?}");
        // Protected: the listed reader may read and write, others may not.
        assert_eq!(value(n, "gamma", "shared"), Some(Value::from(1)));
        assert_eq!(state(n, "get", "beta", &["shared"]).json()["status"], 403);
    }
    ok(state(&c.nodes[1], "put", "gamma", &["shared", "2"]));
    let o = state(&c.nodes[1], "put", "beta", &["shared", "3"]);
    let p = o.json();
    assert_eq!(p["status"], 403);
    assert!(p["detail"].as_str().unwrap().contains("protected"), "{p:#}");
    // The refusal is in node2's audit log, for the refused plugin to see.
    let a = ok(state(
        &c.nodes[1],
        "audit",
        "beta",
        &["--key", "shared", "--rejected"],
    ));
    let recs = a["records"].as_array().unwrap();
    assert!(
        recs.iter().any(|r| r["author"] == "beta"
            && r["op"] == "put"
            && r["outcome"]["Rejected"]
                .as_str()
                .is_some_and(|s| s.contains("may not write"))),
        "{a:#}"
    );
    // Nothing of the refused writes leaked anywhere.
    let vals = converged(&c, "alpha", &["secret", "shared"], Duration::from_secs(10));
    assert_eq!(vals, vec![Value::from("s3cr3t"), Value::from(2)]);
    // A missing key is a 404.
    assert_eq!(
        state(&c.nodes[2], "get", "alpha", &["nope"]).json()["status"],
        404
    );
}

#[test]
fn an_acknowledged_local_write_survives_kill_9() {
    // A single node: after the restart, the value can only come from its disk.
    let (_tmp, mut c) = cluster(1, 100);
    let w = ok(state(
        &c.nodes[0],
        "put",
        "alpha",
        &["durable", r#"{"n":1}"#],
    ));
    assert_eq!(w["acks"], 1);
    ok(state(&c.nodes[0], "add", "alpha", &["set", "x", "y"]));
    ok(state(&c.nodes[0], "remove", "alpha", &["set", "x"]));
    c.nodes[0].kill9();
    c.nodes[0].restart();
    assert_eq!(
        value(&c.nodes[0], "alpha", "durable"),
        Some(serde_json::json!({"n": 1}))
    );
    assert_eq!(
        value(&c.nodes[0], "alpha", "set"),
        Some(serde_json::json!(["y"]))
    );
    // The audit log survived too.
    let a = ok(state(&c.nodes[0], "audit", "alpha", &["--key", "durable"]));
    assert!(!a["records"].as_array().unwrap().is_empty(), "{a:#}");
}

#[test]
fn a_frozen_node_catches_up_after_thaw_and_all_replicas_converge() {
    let (_tmp, c) = cluster(3, 100);
    ok(state(&c.nodes[0], "add", "alpha", &["members", "x", "y"]));
    converged(&c, "alpha", &["members"], Duration::from_secs(10));

    c.nodes[2].freeze();
    // The live side keeps writing: local writes, and majority writes (2 of 3).
    ok(state(&c.nodes[1], "remove", "alpha", &["members", "x"]));
    ok(state(&c.nodes[0], "add", "alpha", &["members", "z"]));
    ok(state(
        &c.nodes[0],
        "put",
        "alpha",
        &["during", r#""partition""#],
    ));
    for n in &c.nodes[..2] {
        ok(state(n, "incr", "alpha", &["count", "--by", "5"]));
    }
    let w = ok(state(
        &c.nodes[1],
        "put",
        "alpha",
        &[
            "quorum",
            "1",
            "--consistency",
            "majority",
            "--timeout-ms",
            "3000",
        ],
    ));
    assert_eq!(w["acks"], 2, "{w:#}");
    c.nodes[2].thaw();
    let thawed = std::time::Instant::now();

    let keys = ["members", "during", "count", "quorum"];
    let vals = converged(&c, "alpha", &keys, Duration::from_secs(20));
    eprintln!(
        "replicas converged {:?} after the thaw (gossip every 100 ms)",
        thawed.elapsed()
    );
    // The removal made during the partition was not lost over gossip.
    assert_eq!(vals[0], serde_json::json!(["y", "z"]));
    assert_eq!(vals[1], Value::from("partition"));
    assert_eq!(vals[2], Value::from(10));
    assert_eq!(vals[3], Value::from(1));
}

#[test]
fn a_majority_write_with_two_of_three_frozen_times_out_clearly() {
    let (_tmp, c) = cluster(3, 100);
    c.nodes[1].freeze();
    c.nodes[2].freeze();
    // Once node1 has declared them down, they still count in the quorum: a
    // partition must not shrink it.
    c.wait_members(0, Duration::from_secs(20), |ms| {
        ms.iter()
            .filter(|m| m["name"] != "node1")
            .all(|m| m["status"] == "down")
    });
    let o = state(
        &c.nodes[0],
        "put",
        "alpha",
        &["k", "1", "--consistency", "majority", "--timeout-ms", "800"],
    );
    assert_eq!(o.code, 1, "{o:?}");
    let p = o.json();
    assert_eq!(p["status"], 504, "{p:#}");
    let d = p["detail"].as_str().unwrap();
    assert!(
        d.contains("1 of 2 required acks") && d.contains("node1") && d.contains("majority"),
        "{d}"
    );
    assert!(o.stderr.contains("504"), "{o:?}");
    // A majority read cannot be answered either; a local one can.
    let o = state(
        &c.nodes[0],
        "get",
        "alpha",
        &["k", "--consistency", "majority", "--timeout-ms", "500"],
    );
    assert_eq!(o.json()["status"], 504, "{o:?}");
    assert_eq!(value(&c.nodes[0], "alpha", "k"), Some(Value::from(1)));
    // A lease cannot be granted by a minority.
    let o = plexus(&[
        "state",
        "lease",
        "acquire",
        "deploy",
        "--ttl-ms",
        "10000",
        "--timeout-ms",
        "500",
        "--connect",
        c.nodes[0].api.as_str(),
        "--as",
        "alpha",
        "--json",
    ]);
    assert_eq!(o.code, 1, "{o:?}");
    assert_eq!(o.json()["status"], 409, "{o:?}");
    c.nodes[1].thaw();
    c.nodes[2].thaw();
    // The write stayed applied on node1 and spreads once the others are back.
    let vals = converged(&c, "alpha", &["k"], Duration::from_secs(20));
    assert_eq!(vals[0], Value::from(1));
}

#[test]
fn leases_are_granted_by_a_majority_with_increasing_fencing_tokens() {
    let (_tmp, c) = cluster(3, 100);
    let lease = |node: &Node, plugin: &str, args: &[&str]| {
        let mut a = vec!["state", "lease"];
        a.extend_from_slice(args);
        a.extend(["--connect", node.api.as_str(), "--as", plugin, "--json"]);
        plexus(&a)
    };
    let l1 = ok(lease(
        &c.nodes[0],
        "alpha",
        &["acquire", "deploy", "--ttl-ms", "60000"],
    ));
    let t1 = l1["token"].as_u64().unwrap();
    // Another plugin on another node is refused while it is held.
    let o = lease(
        &c.nodes[1],
        "beta",
        &["acquire", "deploy", "--ttl-ms", "60000"],
    );
    assert_eq!(o.code, 1, "{o:?}");
    let p = o.json();
    assert_eq!(p["status"], 409);
    assert!(p["detail"].as_str().unwrap().contains("alpha"), "{p:#}");
    // Released, it goes to the other plugin under a higher token.
    let r = ok(lease(
        &c.nodes[0],
        "alpha",
        &["release", "deploy", "--fencing-token", &t1.to_string()],
    ));
    assert_eq!(r["released"], true);
    let l2 = wait_for(Duration::from_secs(5), "the lease for beta", || {
        let o = lease(
            &c.nodes[1],
            "beta",
            &["acquire", "deploy", "--ttl-ms", "60000"],
        );
        (o.code == 0).then(|| o.json())
    });
    assert!(l2["token"].as_u64().unwrap() > t1, "{l1:#} then {l2:#}");
    assert_eq!(l2["holder"], "beta@node2");
    assert_eq!(l1["holder"], "alpha@node1");
}

#[test]
fn bad_input_is_refused_clearly_and_changes_nothing() {
    let (_tmp, c) = cluster(1, 100);
    let n = &c.nodes[0];
    ok(state(n, "incr", "alpha", &["ctr", "--by", "3"]));
    // Type mismatch on an existing key.
    let o = state(n, "put", "alpha", &["ctr", r#""text""#]);
    let p = o.json();
    assert_eq!(p["status"], 409, "{p:#}");
    assert!(p["detail"].as_str().unwrap().contains("pncounter"), "{p:#}");
    let o = state(n, "add", "alpha", &["ctr", "m"]);
    assert_eq!(o.json()["status"], 409, "{o:?}");
    // Oversized value (the limit is 64 KiB), on a new key with an access level.
    let big = format!("\"{}\"", "x".repeat(70_000));
    let o = state(n, "put", "alpha", &["big", &big, "--access", "private"]);
    let p = o.json();
    assert_eq!(p["status"], 413, "{p:#}");
    assert!(p["detail"].as_str().unwrap().contains("limit"), "{p:#}");
    // Not JSON: a usage error before anything is sent.
    let o = state(n, "put", "alpha", &["k", "not json"]);
    assert_eq!(o.code, 2, "{o:?}");
    // Bad access combinations.
    let o = state(
        n,
        "put",
        "alpha",
        &["k", "1", "--access", "private", "--readers", "b"],
    );
    assert_eq!(o.json()["status"], 400, "{o:?}");
    // Nothing changed.
    assert_eq!(value(n, "alpha", "ctr"), Some(Value::from(3)));
    assert_eq!(state(n, "get", "alpha", &["big"]).json()["status"], 404);
    assert_eq!(state(n, "get", "alpha", &["k"]).json()["status"], 404);
}

#[test]
fn a_killed_node_restarts_and_catches_up_with_writes_made_while_it_was_dead() {
    let (_tmp, mut c) = cluster(3, 100);
    ok(state(&c.nodes[2], "put", "alpha", &["before", "1"]));
    ok(state(&c.nodes[2], "incr", "alpha", &["n"]));
    c.nodes[2].kill9();
    // Writes go on concurrently on the two live nodes.
    let apis: Vec<String> = c.nodes[..2].iter().map(|n| n.api.clone()).collect();
    let handles: Vec<_> = apis
        .into_iter()
        .enumerate()
        .map(|(i, api)| {
            std::thread::spawn(move || {
                for j in 0..5 {
                    let member = format!("m{i}-{j}");
                    for args in [
                        vec!["state", "incr", "--connect", &api, "--as", "alpha", "n"],
                        vec![
                            "state",
                            "add",
                            "--connect",
                            &api,
                            "--as",
                            "alpha",
                            "s",
                            &member,
                        ],
                    ] {
                        let o = plexus(&args);
                        assert_eq!(o.code, 0, "{o:?}");
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    ok(state(
        &c.nodes[0],
        "remove",
        "alpha",
        &["s", "m0-0", "m1-0"],
    ));
    c.nodes[2].restart();
    let vals = converged(&c, "alpha", &["before", "n", "s"], Duration::from_secs(20));
    assert_eq!(vals[0], Value::from(1));
    assert_eq!(vals[1], Value::from(11));
    assert_eq!(vals[2].as_array().unwrap().len(), 8, "{:#}", vals[2]);
}

#[test]
fn maps_fields_and_explicit_types() {
    let (_tmp, c) = cluster(1, 100);
    let n = &c.nodes[0];
    ok(state(
        n,
        "put",
        "alpha",
        &["job", r#""build""#, "--field", "name"],
    ));
    ok(state(
        n,
        "incr",
        "alpha",
        &["job", "--field", "tries", "--by", "2"],
    ));
    ok(state(
        n,
        "add",
        "alpha",
        &["job", "a", "b", "--field", "tags"],
    ));
    ok(state(
        n,
        "remove",
        "alpha",
        &["job", "a", "--field", "tags"],
    ));
    let r = ok(state(n, "get", "alpha", &["job"]));
    assert_eq!(r["kind"], "map");
    assert_eq!(
        r["value"],
        serde_json::json!({"name": "build", "tries": 2, "tags": ["b"]})
    );
    ok(state(n, "delete", "alpha", &["job", "--field", "tries"]));
    assert_eq!(
        value(n, "alpha", "job"),
        Some(serde_json::json!({"name": "build", "tags": ["b"]}))
    );
    // A field holding a counter does not take a register.
    let o = state(n, "put", "alpha", &["job", "1", "--field", "tags"]);
    assert_eq!(o.code, 1, "{o:?}");
    // Explicit types.
    let r = ok(state(n, "incr", "alpha", &["g", "--type", "gcounter"]));
    assert_eq!(r["ops"], serde_json::json!(["create", "incr"]));
    assert_eq!(ok(state(n, "get", "alpha", &["g"]))["kind"], "gcounter");
    let o = state(n, "incr", "alpha", &["g", "--by", "-1"]);
    assert_eq!(o.json()["status"], 409, "{o:?}");
    let o = state(n, "put", "alpha", &["t", "1", "--type", "orset"]);
    assert_eq!(o.json()["status"], 409, "{o:?}");
    let o = state(n, "put", "alpha", &["u", "1", "--type", "tensor"]);
    let p = o.json();
    assert_eq!(p["status"], 400, "{p:#}");
    assert!(
        p["detail"].as_str().unwrap().contains("unknown value type"),
        "{p:#}"
    );
    assert_eq!(state(n, "get", "alpha", &["t"]).json()["status"], 404);
    assert_eq!(state(n, "get", "alpha", &["u"]).json()["status"], 404);
    assert_eq!(value(n, "alpha", "g"), Some(Value::from(1)));
}

/// Issue 5's convergence figure: 5 nodes, gossip every 100 ms; two nodes are
/// cut off (SIGSTOP) until the others declare them down, writes go on, then
/// the partition heals. Prints the time until both returning nodes hold
/// exactly what the other three hold (polling through the CLI, so an upper
/// bound; `docs/benchmarks.md` has the figures).
#[test]
fn five_nodes_converge_quickly_after_a_partition_heals() {
    let (_tmp, c) = cluster(5, 100);
    ok(state(&c.nodes[0], "add", "alpha", &["set", "a", "b", "c"]));
    converged(&c, "alpha", &["set"], Duration::from_secs(10));
    c.nodes[3].freeze();
    c.nodes[4].freeze();
    c.wait_members(0, Duration::from_secs(20), |ms| {
        ms.iter()
            .filter(|m| m["name"] == "node4" || m["name"] == "node5")
            .all(|m| m["status"] == "down")
    });
    for (i, n) in c.nodes[..3].iter().enumerate() {
        ok(state(n, "incr", "alpha", &["count", "--by", "3"]));
        ok(state(n, "add", "alpha", &["set", &format!("n{i}")]));
        ok(state(
            n,
            "put",
            "alpha",
            &[&format!("reg{i}"), &i.to_string()],
        ));
    }
    ok(state(&c.nodes[1], "remove", "alpha", &["set", "a"]));
    let keys = ["count", "set", "reg0", "reg1", "reg2"];
    // The majority side agrees first.
    let live = wait_for(Duration::from_secs(10), "the live side to agree", || {
        let mut vals = vec![];
        for k in keys {
            let v = read(&c.nodes[0], "alpha", k)?;
            for n in &c.nodes[1..3] {
                if read(n, "alpha", k)? != v {
                    return None;
                }
            }
            vals.push(v);
        }
        Some(vals)
    });
    c.nodes[3].thaw();
    c.nodes[4].thaw();
    let healed = std::time::Instant::now();
    wait_for(
        Duration::from_secs(20),
        "the returning nodes to converge",
        || {
            for n in &c.nodes[3..] {
                for (k, want) in keys.iter().zip(&live) {
                    if read(n, "alpha", k).as_ref() != Some(want) {
                        return None;
                    }
                }
            }
            Some(())
        },
    );
    let took = healed.elapsed();
    eprintln!("5 nodes: the 2 returning replicas converged {took:?} after the partition healed (gossip 100 ms)");
    assert_eq!(live[0].0, Value::from(9));
    assert_eq!(live[1].0, serde_json::json!(["b", "c", "n0", "n1", "n2"]));
    converged(&c, "alpha", &keys, Duration::from_secs(10));
}
