//! Security across real nodes: a node with the wrong cookie never joins,
//! and a plugin that forges another's source (or publishes on a topic its
//! manifest does not declare) is refused and audited.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use plexus_tests::{plexus, wait_for, Cluster, Node, NodeSpec};
use serde_json::Value;

fn spec(name: &str, plugins: &[&str]) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        plugins: plugins.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn get(api: &str, path: &str) -> String {
    let mut s = TcpStream::connect(api).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let (_, body) = buf.split_once("\r\n\r\n").expect("http response");
    body.to_string()
}

fn names(v: &Value, list: &str) -> Vec<String> {
    let mut n: Vec<String> = v[list]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| m["name"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default();
    n.sort();
    n
}

#[test]
fn a_node_with_the_wrong_cookie_cannot_join() {
    let c = Cluster::start(vec![
        spec("node1", &["jira-orchestrator"]),
        spec("node2", &["frontend-powerhouse"]),
    ]);
    let before = c.nodes[0].status().unwrap();
    // The harness derives the cookie from the test directory: another
    // directory means another cookie.
    let other = tempfile::tempdir().unwrap();
    let intruder = Node::start(
        spec("intruder", &["exec-automator"]),
        other.path(),
        "127.0.0.1:0",
        "127.0.0.1:0",
        &[c.nodes[0].cluster.clone()],
    );
    // Wait for node1 to refuse the intruder's handshake, twice (the intruder
    // keeps dialling its seed while alone).
    wait_for(
        Duration::from_secs(30),
        "node1 to refuse the intruder twice",
        || {
            let refusals = c.nodes[0]
                .log_text()
                .matches("shutting down due to authentication failure")
                .count();
            (refusals >= 2).then_some(())
        },
    );
    for n in &c.nodes {
        let s = n.status().unwrap();
        assert_eq!(names(&s, "members"), vec!["node1", "node2"], "{s:#}");
        assert_eq!(names(&s, "plugins"), names(&before, "plugins"), "{s:#}");
    }
    let s = intruder.status().unwrap();
    assert_eq!(names(&s, "members"), vec!["intruder"], "{s:#}");
    // Nothing the intruder hosts is reachable through the cluster.
    let o = plexus(&[
        "exec",
        "--connect",
        &c.nodes[0].api,
        "--plugin",
        "exec-automator",
        "--command",
        "analyze",
        "--json",
    ]);
    assert_ne!(o.code, 0, "{o:?}");
    assert!(o.stdout.contains("no node hosts it"), "{o:?}");
}

/// A plugin whose server publishes as itself, as another plugin, and on a
/// topic it did not declare.
fn forger_catalog(root: &Path) -> std::path::PathBuf {
    let dir = root.join("forger-catalog");
    std::fs::create_dir_all(&dir).unwrap();
    // The server runs as nobody when the tests run as root.
    for d in [root, &dir] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let srv = dir.join("forger.py");
    std::fs::write(
        &srv,
        r#"#!/usr/bin/env python3
import json, sys
for line in sys.stdin:
    req = json.loads(line)
    cmd = req["command"]
    if cmd == "legit":
        pub = {"topic": "plugin/forger/events", "payload": {"n": 1}}
    elif cmd == "declared":
        pub = {"topic": "orders/new", "payload": {"n": 2}}
    elif cmd == "forge":
        pub = {"topic": "plugin/forger/events", "source": "jira-orchestrator", "payload": {"n": 3}}
    else:
        pub = {"topic": "system/alerts", "payload": {"fake": "alert"}}
    print(json.dumps({"publish": pub}), flush=True)
    print(json.dumps({"id": req["id"], "output": {"sent": cmd}}), flush=True)
"#,
    )
    .unwrap();
    std::fs::set_permissions(&srv, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        dir.join("forger.toml"),
        r#"[plugin]
name = "forger"
[communication]
topics = ["orders/*"]
[handler]
kind = "process"
[handler.server]
program = "./forger.py"
[[commands]]
name = "legit"
[[commands]]
name = "declared"
[[commands]]
name = "forge"
[[commands]]
name = "undeclared"
"#,
    )
    .unwrap();
    dir
}

fn rejected(api: &str) -> u64 {
    let s = plexus(&["status", "--connect", api, "--json"]).json();
    s["bus"]["rejected"]
        .as_u64()
        .expect("bus.rejected in status")
}

#[test]
fn a_plugin_forging_another_source_is_rejected_and_audited() {
    let tmp = tempfile::tempdir().unwrap();
    let cat = forger_catalog(tmp.path());
    let mut s1 = spec("node1", &["jira-orchestrator"]);
    s1.catalogs = vec![cat.clone()];
    let mut s2 = spec("node2", &["forger"]);
    s2.catalogs = vec![cat];
    let c = Cluster::start(vec![s1, s2]);
    let api2 = &c.nodes[1].api;
    wait_for(Duration::from_secs(20), "forger to be available", || {
        (c.plugin_status(0, "forger").as_deref() == Some("available")).then_some(())
    });
    let run = |cmd: &str| {
        let o = c.nodes[0].exec("forger", cmd, Some("{}"));
        assert_eq!(o.code, 0, "{cmd}: {o:?}");
    };
    run("legit");
    run("declared");
    assert_eq!(rejected(api2), 0);
    run("forge");
    run("undeclared");
    // The reply line follows the publish line, so both are handled by now.
    assert_eq!(rejected(api2), 2);

    let dl: Value = serde_json::from_str(&get(api2, "/v1/dead-letters")).unwrap();
    let audit: Vec<&Value> = dl
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["reason"].as_str().unwrap_or("").starts_with("rejected:"))
        .collect();
    assert_eq!(audit.len(), 2, "{dl:#}");
    let forged = audit
        .iter()
        .find(|d| d["envelope"]["source"] == "jira-orchestrator")
        .expect("the forged envelope is kept");
    assert!(
        forged["reason"]
            .as_str()
            .unwrap()
            .contains("plugin forger tried to publish as \"jira-orchestrator\""),
        "{forged:#}"
    );
    assert!(audit
        .iter()
        .any(|d| d["envelope"]["topic"] == "system/alerts"
            && d["reason"].as_str().unwrap().contains("may not publish")));
    let metrics = get(api2, "/metrics");
    assert!(
        metrics.lines().any(|l| l == "plexus_bus_rejected_total 2"),
        "{metrics}"
    );
    let log = c.nodes[1].log_text();
    assert!(log.contains("publish rejected"), "no audit log line");
    // The node that did not host the forger saw nothing forged.
    assert_eq!(rejected(&c.nodes[0].api), 0);
}

/// Run openssl (part of the machine image; `.ci/run` checks it).
fn openssl(dir: &Path, args: &[&str]) {
    let o = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A CA and one node certificate (SAN 127.0.0.1) signed by it, in `dir`;
/// returns a node config file naming them.
fn pki(dir: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=plexus-test-ca",
    ]);
    openssl(dir, &ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "node.key",
        "-out",
        "node.csr",
        "-subj",
        "/CN=plexus-node",
    ]);
    openssl(dir, &csr);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "node.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "node.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    let cfg = dir.join("node.toml");
    std::fs::write(
        &cfg,
        "[node]\ntls_cert = \"node.pem\"\ntls_key = \"node.key\"\ntls_ca = \"ca.pem\"\n",
    )
    .unwrap();
    cfg
}

fn handshakes_failed(n: &Node) -> u64 {
    let s = n.status().unwrap();
    s["links"]["handshakes_failed"]
        .as_u64()
        .unwrap_or_else(|| panic!("status has links.handshakes_failed: {s:#}"))
}

fn tls_spec(name: &str, plugins: &[&str], cfg: &Path) -> NodeSpec {
    let mut s = spec(name, plugins);
    s.extra = vec!["--config".into(), cfg.display().to_string()];
    s
}

#[test]
fn tls_nodes_join_and_nodes_without_the_clusters_ca_cannot() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = pki(&tmp.path().join("pki"));
    let rogue_cfg = pki(&tmp.path().join("rogue-pki"));
    let tls = tls_spec;
    let c = Cluster::start(vec![
        tls("node1", &["jira-orchestrator"], &cfg),
        tls("node2", &["frontend-powerhouse"], &cfg),
    ]);
    // Requests cross the TLS link.
    let o = c.nodes[0].exec("frontend-powerhouse", "analyze-performance", Some("{}"));
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.json()["node"], "node2", "{o:?}");

    // Same cookie (same test directory), but a certificate of another CA,
    // and a node without TLS at all.
    let rogue = c.start_seeded(tls("rogue", &["exec-automator"], &rogue_cfg));
    let plain = c.start_seeded(spec("plain", &["lobbi-platform-manager"]));
    wait_for(
        Duration::from_secs(30),
        "node1 to refuse both handshakes twice",
        || (handshakes_failed(&c.nodes[0]) >= 4).then_some(()),
    );
    assert!(
        c.nodes[0]
            .log_text()
            .contains("cluster TLS handshake failed"),
        "node1 logs each refusal"
    );
    for n in &c.nodes {
        let s = n.status().unwrap();
        assert_eq!(names(&s, "members"), vec!["node1", "node2"], "{s:#}");
    }
    for n in [&rogue, &plain] {
        let s = n.status().unwrap();
        assert_eq!(names(&s, "members"), vec![n.spec.name.clone()], "{s:#}");
    }
}

/// ractor_cluster's own listener does each TLS handshake inline: one client
/// that connected and said nothing kept every later peer out. The node's
/// listener does each in a task of its own, with a time limit.
#[test]
fn a_client_that_never_finishes_its_tls_handshake_keeps_no_peer_out() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = pki(&tmp.path().join("pki"));
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("[limits]\nhandshake_timeout_ms = 1500\n");
    std::fs::write(&cfg, text).unwrap();
    let c = Cluster::start(vec![tls_spec("node1", &["jira-orchestrator"], &cfg)]);
    let silent: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(&c.nodes[0].cluster).expect("connect to node1's cluster port"))
        .collect();
    let node2 = c.start_seeded(tls_spec("node2", &["frontend-powerhouse"], &cfg));
    wait_for(
        Duration::from_secs(30),
        "node2 to join node1 while three silent clients hold connections",
        || {
            [&c.nodes[0], &node2]
                .iter()
                .all(|n| {
                    n.status()
                        .is_some_and(|s| names(&s, "members") == vec!["node1", "node2"])
                })
                .then_some(())
        },
    );
    let o = c.nodes[0].exec("frontend-powerhouse", "analyze-performance", Some("{}"));
    assert_eq!(o.code, 0, "{o:?}");
    // At the time limit node1 drops them, counts them and closes the sockets.
    wait_for(
        Duration::from_secs(30),
        "node1 to drop the three silent connections",
        || (handshakes_failed(&c.nodes[0]) >= 3).then_some(()),
    );
    assert!(
        c.nodes[0]
            .log_text()
            .contains("no handshake within 1500 ms"),
        "node1 logs why it dropped them"
    );
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("node1 left a silent connection open: {other:?}"),
        }
    }
}
