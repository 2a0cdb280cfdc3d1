//! Peers speaking garbage and oversized payloads must not hurt a node.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use plexus_tests::{Cluster, NodeSpec};

fn spec(name: &str, plugins: &[&str]) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        plugins: plugins.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[test]
fn garbage_on_the_cluster_port_is_dropped_and_the_node_keeps_running() {
    let c = Cluster::start(vec![
        spec("node1", &["jira-orchestrator"]),
        spec("node2", &["frontend-powerhouse"]),
    ]);
    let target = c.nodes[0].cluster.clone();
    // Random bytes, a frame header claiming 1 GiB, and a handful of idle connections.
    let mut idle = vec![];
    for i in 0..20u32 {
        let mut s = TcpStream::connect(&target).expect("connect");
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        match i % 3 {
            0 => {
                let junk: Vec<u8> = (0..65_536u32)
                    .map(|x| (x.wrapping_mul(2_654_435_761) >> 13) as u8)
                    .collect();
                let _ = s.write_all(&junk);
            }
            1 => {
                let _ = s.write_all(&(1u64 << 30).to_be_bytes());
                let _ = s.write_all(b"partial");
            }
            _ => idle.push(s),
        }
    }
    // The node still answers, still sees its peer, and still routes across the link.
    let s = c.nodes[0].status().expect("node1 still answers");
    assert!(
        s["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["status"] == "up"),
        "{s:#?}"
    );
    let o = c.nodes[0].exec(
        "frontend-powerhouse",
        "create-component",
        Some(r#"{"name":"Card"}"#),
    );
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.json()["node"], "node2");
    drop(idle);
}

#[test]
fn an_oversized_payload_is_refused_with_a_clear_error() {
    let c = Cluster::start(vec![
        spec("node1", &["jira-orchestrator"]),
        spec("node2", &["frontend-powerhouse"]),
    ]);
    let big = format!("{{\"blob\":\"{}\"}}", "x".repeat(3 * 1024 * 1024));
    let f = c.dir.path().join("big.json");
    std::fs::write(&f, big).unwrap();
    let at = format!("@{}", f.display());
    let o = c.nodes[0].exec("frontend-powerhouse", "create-component", Some(&at));
    assert_eq!(o.code, 1, "{:?} {}", o.code, o.stderr);
    assert!(
        o.stderr.contains("too large") || o.stderr.contains("413"),
        "{}",
        o.stderr
    );
    // Nothing broke: the link and the plugin still work.
    let o = c.nodes[0].exec(
        "frontend-powerhouse",
        "create-component",
        Some(r#"{"name":"Card"}"#),
    );
    assert_eq!(o.code, 0, "{o:?}");
}
