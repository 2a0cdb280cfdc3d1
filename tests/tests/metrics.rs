//! `/metrics` parses as Prometheus text and its counters move with traffic.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;

use plexus_tests::{Cluster, NodeSpec};

fn get(api: &str, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(api).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").expect("http response");
    (head.to_string(), body.to_string())
}

/// Samples by `name{labels}`, labels in any order (the exposition sorts
/// them by name; the text format gives the order no meaning).
struct Samples(HashMap<String, f64>);

/// `name{b="1",a="2"}` as `name{a="2",b="1"}`. Label values here hold no
/// `,` or `"`, so splitting on `,` is enough.
fn canon(key: &str) -> String {
    match key.split_once('{') {
        Some((name, rest)) => {
            let mut labels: Vec<&str> = rest.trim_end_matches('}').split(',').collect();
            labels.sort_unstable();
            format!("{name}{{{}}}", labels.join(","))
        }
        None => key.to_string(),
    }
}

impl Samples {
    fn get(&self, key: &str) -> Option<&f64> {
        self.0.get(&canon(key))
    }
}

impl std::ops::Index<&str> for Samples {
    type Output = f64;
    fn index(&self, key: &str) -> &f64 {
        self.get(key).unwrap_or_else(|| panic!("no sample {key}"))
    }
}

/// Parse the text format strictly enough to catch a malformed page:
/// every sample line is `name{labels} value` with a known TYPE.
fn parse(body: &str) -> Samples {
    let mut types = HashMap::new();
    let mut samples = HashMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (key, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("sample without value: {line}"));
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        let name = key.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample before its TYPE: {line}");
        if key.contains('{') {
            assert!(key.ends_with('}'), "{line}");
        }
        samples.insert(canon(key), v);
    }
    Samples(samples)
}

const BRITTLE: &str = r#"
[plugin]
name = "brittle"

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
name = "poke"
"#;

const SAGA: &str = r#"
[workflow]
name = "two-step"
kind = "saga"

[[steps]]
id = "one"
plugin = "frontend-powerhouse"
command = "create-component"
compensate = { command = "create-component" }

[[steps]]
id = "two"
plugin = "frontend-powerhouse"
command = "no-such-command"
max_attempts = 1
compensate = { command = "create-component" }
"#;

/// `promtool check metrics` (Prometheus's own linter: types, HELP, `_total`
/// on counters, label syntax) must accept the page. `.ci/run` installs it
/// (Debian package `prometheus`); without it this check fails, not skips.
fn promtool_accepts(body: &str) {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; .ci/run installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics refused the page:\n{}{}\n--- page ---\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn value(m: &Samples, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

#[test]
fn metrics_parse_and_counters_move_with_traffic() {
    let tmp = tempfile::tempdir().unwrap();
    let cat = tmp.path().join("catalog");
    std::fs::create_dir_all(&cat).unwrap();
    std::fs::write(cat.join("brittle.toml"), BRITTLE).unwrap();
    let spec = |name: &str, plugins: &[&str]| NodeSpec {
        name: name.into(),
        plugins: plugins.iter().map(|s| s.to_string()).collect(),
        catalogs: vec![cat.clone()],
        ..Default::default()
    };
    let c = Cluster::start(vec![
        spec("node1", &["jira-orchestrator"]),
        spec("node2", &["frontend-powerhouse", "brittle"]),
    ]);
    let (head, body) = get(&c.nodes[0].api, "/metrics");
    assert!(
        head.contains("200") && head.contains("text/plain"),
        "{head}"
    );
    let before = parse(&body);
    assert_eq!(
        before.get("plexus_members{status=\"up\"}"),
        Some(&2.0),
        "{body}"
    );
    assert_eq!(
        before.get("plexus_plugin_available{plugin=\"frontend-powerhouse\",node=\"node2\"}"),
        Some(&1.0)
    );
    for _ in 0..3 {
        let o = c.nodes[0].exec(
            "frontend-powerhouse",
            "create-component",
            Some(r#"{"name":"X"}"#),
        );
        assert_eq!(o.code, 0, "{o:?}");
    }
    let _ = c.nodes[0].exec("frontend-powerhouse", "no-such-command", None);
    let after = parse(&get(&c.nodes[0].api, "/metrics").1);
    let key = "plexus_exec_total{plugin=\"frontend-powerhouse\",outcome=\"primary\"}";
    assert_eq!(
        after.get(key).copied().unwrap_or(0.0) - before.get(key).copied().unwrap_or(0.0),
        3.0
    );
    assert_eq!(
        after.get("plexus_exec_total{plugin=\"frontend-powerhouse\",outcome=\"unknown-command\"}"),
        Some(&1.0)
    );
    assert_eq!(
        after.get("plexus_exec_duration_seconds_count{plugin=\"frontend-powerhouse\"}"),
        Some(&4.0)
    );
    assert!(after["plexus_link_frames_out_total"] > before["plexus_link_frames_out_total"]);
    // Per topic class: the three requests that ran were `plugin` traffic.
    let k = "plexus_bus_class_published_total{class=\"plugin\"}";
    assert_eq!(value(&after, k) - value(&before, k), 3.0, "{k}");
    // Membership: node2 came up once; SWIM and the state replica gossip.
    assert!(value(&after, "plexus_membership_events_total{event=\"up\"}") >= 1.0);
    for k in [
        "plexus_wire_bytes_sent_total{protocol=\"foca\"}",
        "plexus_wire_frames_sent_total{protocol=\"state\"}",
        "plexus_state_gossip_rounds_total",
    ] {
        let b = value(&before, k);
        plexus_tests::wait_for(std::time::Duration::from_secs(10), k, || {
            (value(&parse(&get(&c.nodes[0].api, "/metrics").1), k) > b).then_some(())
        });
    }
    // A breaker opens on node2, which hosts the plugin.
    for _ in 0..2 {
        let o = c.nodes[0].exec("brittle", "poke", Some(r#"{"$sim":{"fail":true}}"#));
        assert_eq!(o.code, 1, "{o:?}");
    }
    let k = "plexus_breaker_transitions_total{plugin=\"brittle\",from=\"closed\",to=\"open\"}";
    plexus_tests::wait_for(std::time::Duration::from_secs(10), k, || {
        (value(&parse(&get(&c.nodes[1].api, "/metrics").1), k) == 1.0).then_some(())
    });
    // A saga whose second step fails ends compensated.
    let wf = tmp.path().join("saga.toml");
    std::fs::write(&wf, SAGA).unwrap();
    let o = plexus_tests::plexus(&["run", "--connect", &c.nodes[0].api, wf.to_str().unwrap()]);
    assert_eq!(o.code, 1, "{o:?}");
    let page = get(&c.nodes[0].api, "/metrics").1;
    promtool_accepts(&page);
    let m = parse(&page);
    assert_eq!(
        value(
            &m,
            "plexus_workflow_runs{kind=\"saga\",status=\"compensated\"}"
        ),
        1.0
    );
}

#[test]
fn status_watch_keeps_reporting_until_stopped() {
    use std::io::BufRead;
    let c = Cluster::start(vec![NodeSpec {
        name: "node1".into(),
        plugins: vec!["jira-orchestrator".into()],
        ..Default::default()
    }]);
    let mut child = std::process::Command::new(plexus_tests::bin())
        .args(["status", "--connect", &c.nodes[0].api, "--watch", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    for _ in 0..2 {
        let line = lines.next().expect("a line").expect("read");
        let v: serde_json::Value = serde_json::from_str(&line).expect("json line");
        assert_eq!(v["node"], "node1");
    }
    assert!(child.try_wait().unwrap().is_none(), "still watching");
    child.kill().unwrap();
    let _ = child.wait();
}
