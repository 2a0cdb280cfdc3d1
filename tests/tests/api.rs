//! The HTTP API over real node processes: the served OpenAPI document is the
//! checked-in one, and bearer-token auth refuses and admits as documented.

use std::time::Duration;

use plexus_tests::{plexus, wait_for, Cluster, Node, NodeSpec};
use serde_json::Value;

/// GET `path` with an optional bearer token: (status, content type, body).
fn get(api: &str, path: &str, token: Option<&str>) -> (u16, String, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut req = agent.get(format!("http://{api}{path}"));
    if let Some(t) = token {
        req = req.header("authorization", &format!("Bearer {t}"));
    }
    let mut r = req.call().expect("HTTP GET");
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = r.body_mut().read_to_string().expect("body");
    (r.status().as_u16(), ct, body)
}

/// Status and content type of a streaming answer, without reading its body.
fn stream_head(api: &str, path: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let r = agent
        .get(format!("http://{api}{path}"))
        .call()
        .expect("HTTP GET");
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (r.status().as_u16(), ct)
}

fn spec(name: &str, plugins: &[&str], extra: &[&str]) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        plugins: plugins.iter().map(|s| s.to_string()).collect(),
        extra: extra.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[test]
fn the_served_openapi_document_is_the_checked_in_one() {
    let c = Cluster::start(vec![
        spec("node1", &["jira-orchestrator"], &[]),
        spec("node2", &["frontend-powerhouse"], &[]),
    ]);
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    let on_disk = std::fs::read_to_string(&file).expect("docs/openapi.json");
    for n in &c.nodes {
        let (status, ct, body) = get(&n.api, "/v1/openapi.json", None);
        assert_eq!(status, 200, "{body}");
        assert!(ct.starts_with("application/json"), "{ct}");
        assert!(
            body == on_disk,
            "the spec {} serves differs from docs/openapi.json; regenerate: cargo run -p plexus-cli -- openapi > docs/openapi.json",
            n.spec.name
        );
    }
    let v: Value = serde_json::from_str(&on_disk).expect("JSON");
    assert!(v["openapi"].as_str().unwrap_or("").starts_with("3."));
    for p in [
        "/v1/status",
        "/v1/exec",
        "/v1/route",
        "/v1/ask",
        "/v1/workflows",
        "/v1/workflows/{id}",
        "/v1/state/put",
        "/v1/state/get",
        "/metrics",
    ] {
        assert!(v["paths"][p].is_object(), "{p} missing from the spec");
    }
    // The CLI prints the same document.
    let o = plexus(&["openapi"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stdout == on_disk, "plexus openapi differs from the file");
}

const TOKEN: &str = "test-token-0123456789abcdef";

#[test]
fn a_node_with_a_token_refuses_calls_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let extra = ["--api-token", TOKEN];
    let n1 = Node::start(
        spec("node1", &["jira-orchestrator"], &extra),
        dir.path(),
        "127.0.0.1:0",
        "127.0.0.1:0",
        &[],
    );
    let n2 = Node::start(
        spec("node2", &["frontend-powerhouse"], &extra),
        dir.path(),
        "127.0.0.1:0",
        "127.0.0.1:0",
        std::slice::from_ref(&n1.cluster),
    );
    // The cluster forms (links are cookie-authenticated, not token-checked).
    wait_for(Duration::from_secs(20), "two members up", || {
        let (s, _, body) = get(&n1.api, "/v1/status", Some(TOKEN));
        let v: Value = serde_json::from_str(&body).ok()?;
        let up = v["members"]
            .as_array()?
            .iter()
            .filter(|m| m["status"] == "up")
            .count();
        (s == 200 && up == 2).then_some(())
    });
    for path in [
        "/v1/status",
        "/metrics",
        "/v1/workflows",
        "/v1/openapi.json",
    ] {
        let (s, ct, body) = get(&n1.api, path, None);
        assert_eq!(s, 401, "{path}: {body}");
        assert!(ct.starts_with("application/problem+json"), "{path}: {ct}");
        let p: Value = serde_json::from_str(&body).expect("problem JSON");
        assert_eq!(p["status"], 401);
        assert!(p["detail"].as_str().unwrap().contains("token"), "{body}");
        let (s, _, _) = get(&n1.api, path, Some("wrong-token-0123456789"));
        assert_eq!(s, 401, "{path} with a wrong token");
        let (s, _, body) = get(&n1.api, path, Some(TOKEN));
        assert_eq!(s, 200, "{path} with the token: {body}");
    }
    // The liveness probe and the dashboard page (no data in it) stay open.
    let (s, _, _) = get(&n2.api, "/v1/health", None);
    assert_eq!(s, 200);
    let (s, ct, _) = get(&n2.api, "/", None);
    assert_eq!((s, ct.starts_with("text/html")), (200, true), "{ct}");
    // The page's event stream takes the token in the query (EventSource
    // cannot send headers); no other endpoint does.
    assert_eq!(get(&n2.api, "/v1/events", None).0, 401);
    let (s, ct) = stream_head(&n2.api, &format!("/v1/events?access_token={TOKEN}"));
    assert_eq!(
        (s, ct.starts_with("text/event-stream")),
        (200, true),
        "{ct}"
    );
    assert_eq!(
        get(&n2.api, &format!("/v1/status?access_token={TOKEN}"), None).0,
        401
    );
    // The CLI: refused without the token, works with --api-token across nodes.
    let o = plexus(&["status", "--connect", &n1.api]);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(
        o.stderr.contains("401") && o.stderr.contains("token"),
        "{}",
        o.stderr
    );
    let o = plexus(&[
        "exec",
        "--api-token",
        TOKEN,
        "--connect",
        &n1.api,
        "--plugin",
        "frontend-powerhouse",
        "--command",
        "create-component",
        "--input",
        r#"{"name":"X"}"#,
        "--json",
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.json()["node"], "node2");
}

/// POST JSON with headers: (status, headers, body).
fn post(
    api: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(15)))
        .build()
        .into();
    let mut req = agent
        .post(format!("http://{api}{path}"))
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut r = req.send(body).expect("HTTP POST");
    let hs = r
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    let body = r.body_mut().read_to_string().expect("body");
    (r.status().as_u16(), hs, body)
}

fn header<'a>(hs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    hs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[test]
fn a_request_keeps_its_trace_id_on_the_node_that_runs_the_plugin() {
    // node2 logs JSON lines, so the test reads span fields, not text.
    let c = Cluster::start(vec![
        spec("node1", &["jira-orchestrator"], &[]),
        spec("node2", &["frontend-powerhouse"], &["--log-json"]),
    ]);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let (s, hs, body) = post(
        &c.nodes[0].api,
        "/v1/exec",
        r#"{"plugin":"frontend-powerhouse","command":"create-component","input":{"name":"X"}}"#,
        &[("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01"))],
    );
    assert_eq!(s, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["node"], "node2", "ran on the other node");
    // The answer names the trace; its traceparent continues it.
    assert_eq!(header(&hs, "x-trace-id"), Some(trace));
    let tp = header(&hs, "traceparent").expect("traceparent");
    assert!(
        tp.starts_with(&format!("00-{trace}-")) && !tp.contains("00f067aa0ba902b7"),
        "{tp}"
    );
    // node2, which ran the plugin, logged under the same trace id.
    let n2 = c.node("node2");
    let line = wait_for(Duration::from_secs(10), "node2 to log the trace", || {
        n2.log_text().lines().find_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            (v["span"]["trace_id"] == trace && v["fields"]["message"] == "plugin command done")
                .then_some(v)
        })
    });
    assert_eq!(line["span"]["name"], "exec");
    assert_eq!(line["span"]["plugin"], "frontend-powerhouse");
    assert_eq!(line["span"]["from"], "node1");
    // node1 logged the request under it too (the http span).
    assert!(
        c.nodes[0]
            .log_text()
            .lines()
            .any(|l| l.contains(trace) && l.contains("exec done")),
        "node1's log has no line of the trace"
    );
    // Without a traceparent, a fresh trace id comes back; garbage is ignored.
    let (_, hs, _) = post(
        &c.nodes[0].api,
        "/v1/route",
        r#"{"request":"create a react component"}"#,
        &[("traceparent", "not-a-trace")],
    );
    let fresh = header(&hs, "x-trace-id").expect("x-trace-id");
    assert!(fresh.len() == 32 && fresh != trace, "{fresh}");
}
