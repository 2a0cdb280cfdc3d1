//! Streaming across the cluster (issue 18): an agent's text flows from the
//! node that hosts it to the node that took the request, and on to the
//! client as Server-Sent Events, on real node processes and the bundled
//! tiny model (`scripts/setup-llm.sh`) through both providers' APIs. These
//! tests fail, not skip, when the model is not installed.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::Duration;

use plexus_tests::llm::{LlmServer, MODEL};
use plexus_tests::{plexus, tail, wait_for, Cluster, NodeSpec};
use serde_json::Value;

const JIRA: &str = "jira-orchestrator";
const OTHERS: [&str; 3] = [
    "ahling-command-center",
    "frontend-powerhouse",
    "exec-automator",
];
const REQUEST: &str = "create a jira epic for the SSO migration and break it into stories";

fn spec(name: &str, plugins: &[&str], extra: Vec<String>) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        plugins: plugins.iter().map(|s| s.to_string()).collect(),
        catalogs: vec![],
        extra,
    }
}

/// node1 and node2 without the jira plugin, node3 with it only; all on the
/// model server through `provider`.
fn cluster(server: &LlmServer, provider: &str, dir: &Path) -> Cluster {
    std::fs::write(
        dir.join("prices.toml"),
        format!("[models.\"{MODEL}\"]\ninput = 1000.0\noutput = 3000.0\n"),
    )
    .unwrap();
    let node = |name: &str, plugins: &[&str]| {
        let cfg = dir.join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!("[llm]\nprovider = \"{provider}\"\nprices_file = \"prices.toml\"\n"),
        )
        .unwrap();
        let mut extra = server.node_flags(provider);
        extra.extend(["--config".into(), cfg.display().to_string()]);
        spec(name, plugins, extra)
    };
    Cluster::start(vec![
        node("node1", &OTHERS[..2]),
        node("node2", &OTHERS[2..]),
        node("node3", &[JIRA]),
    ])
}

/// One Server-Sent Event.
#[derive(Debug)]
struct Ev {
    name: String,
    data: Value,
}

/// POST `body` to `path` with `Accept: text/event-stream` over a plain
/// socket (HTTP/1.0: the body is the stream until the server closes it);
/// the events as they arrive, read on demand. Dropping the iterator closes
/// the connection, as a client that goes away does.
fn sse(api: &str, path: &str, body: &Value) -> impl Iterator<Item = Ev> {
    use std::io::Write;
    let body = body.to_string();
    let mut sock = std::net::TcpStream::connect(api).expect("connect");
    write!(
        sock,
        "POST {path} HTTP/1.0\r\nHost: {api}\r\nAccept: text/event-stream\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut lines = BufReader::new(sock).lines();
    let status = lines.next().expect("a status line").expect("text");
    let mut head = vec![];
    for l in lines.by_ref() {
        let l = l.expect("a header");
        if l.is_empty() {
            break;
        }
        head.push(l.to_ascii_lowercase());
    }
    assert!(
        status.contains(" 200 ")
            && head
                .iter()
                .any(|h| h.starts_with("content-type: text/event-stream")),
        "{status} {head:?}: {:?}",
        lines.next()
    );
    let (mut name, mut data) = (String::new(), String::new());
    std::iter::from_fn(move || {
        for l in lines.by_ref() {
            let l = l.ok()?;
            if let Some(v) = l.strip_prefix("event:") {
                name = v.trim().to_string();
            } else if let Some(v) = l.strip_prefix("data:") {
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            } else if l.is_empty() && !name.is_empty() {
                let ev = Ev {
                    name: std::mem::take(&mut name),
                    data: serde_json::from_str(&std::mem::take(&mut data)).expect("JSON data"),
                };
                return Some(ev);
            }
        }
        None
    })
}

/// llama.cpp's slots: how many are generating, and the tokens the busy
/// ones have decoded so far.
fn slots(server: &LlmServer) -> (usize, u64) {
    let v: Value = ureq::get(&format!("{}/slots", server.base_url()))
        .call()
        .expect("GET /slots")
        .into_body()
        .read_json()
        .expect("slots JSON");
    let busy: Vec<&Value> = v
        .as_array()
        .expect("a list of slots")
        .iter()
        .filter(|s| s["is_processing"] == true)
        .collect();
    let decoded = busy
        .iter()
        .map(|s| s["next_token"]["n_decoded"].as_u64().unwrap_or(0))
        .sum();
    (busy.len(), decoded)
}

fn metric(page: &str, prefix: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
}

fn metrics_page(api: &str) -> String {
    ureq::get(&format!("http://{api}/metrics"))
        .call()
        .expect("GET /metrics")
        .into_body()
        .read_to_string()
        .expect("text")
}

/// An ask on node1, routed to the jira agent that only node3 hosts,
/// streams back: `start` names node3, the text comes as many `text`
/// events, the first while the model is still generating, and `done`
/// carries the reply whose text is the pieces joined and whose usage is the
/// server's own count.
fn ask_streams_back_from_the_hosting_node(provider: &str) {
    let server = LlmServer::start(None, 4096);
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(&server, provider, dir.path());
    let predicted_before = server.metric("tokens_predicted_total");
    let body = serde_json::json!({
        "request": REQUEST,
        "input": {"$max_tokens": 96},
        "timeout_ms": 120000,
    });
    let mut events = sse(&c.nodes[0].api, "/v1/ask", &body);
    let start = events.next().expect("a start event");
    assert_eq!(start.name, "start", "{start:?}");
    assert_eq!(start.data["node"], "node3", "{start:?}");
    assert_eq!(start.data["plugin"], JIRA);
    assert_eq!(start.data["decision"]["primary_plugin"], JIRA);

    let first = events.next().expect("an event after start");
    assert_eq!(first.name, "text", "{first:?}");
    // The first piece is here while the server is still generating: it has
    // decoded fewer tokens than the run will end with.
    let (busy, decoded_at_first) = slots(&server);
    let mut text = first.data["text"].as_str().unwrap().to_string();
    let mut pieces = 1;
    let done = loop {
        let ev = events.next().expect("the stream ends with done");
        match ev.name.as_str() {
            "text" => {
                pieces += 1;
                text.push_str(ev.data["text"].as_str().unwrap());
            }
            "done" => break ev.data,
            other => panic!("unexpected {other}: {ev:?}"),
        }
    };
    assert!(events.next().is_none(), "nothing after done");
    let res = &done["result"];
    assert_eq!(res["ok"], true, "{done:#}");
    assert_eq!(res["node"], "node3");
    assert_eq!(res["model"], MODEL);
    assert_eq!(done["served_by"], "primary");
    let output = res["usage"]["output_tokens"].as_u64().expect("usage");
    assert!(
        pieces >= 8 && pieces as u64 <= output,
        "{pieces} text events for {output} tokens"
    );
    assert_eq!(busy, 1, "the model was still generating at the first piece");
    assert!(
        decoded_at_first < output,
        "first piece after {decoded_at_first} of {output} tokens"
    );
    assert_eq!(res["output"]["text"].as_str(), Some(text.as_str()));
    let predicted = server.metric("tokens_predicted_total") - predicted_before;
    assert_eq!(
        output as f64, predicted,
        "{provider}: usage is the server's"
    );
    let cost = res["cost_usd"].as_f64().expect("cost_usd");
    let input = res["usage"]["input_tokens"].as_u64().unwrap();
    let want = (input as f64 * 1000.0 + output as f64 * 3000.0) / 1e6;
    assert!((cost - want).abs() < 1e-9, "cost {cost}, want {want}");
    let page = metrics_page(&c.nodes[2].api);
    assert_eq!(
        metric(
            &page,
            &format!("plexus_exec_streams_total{{end=\"done\",plugin=\"{JIRA}\"}} ")
        ),
        Some(1.0),
        "{}",
        tail(&page, 40)
    );

    // The CLI prints the same stream, one JSON line per event.
    let o = plexus(&[
        "ask",
        "--connect",
        &c.nodes[0].api,
        REQUEST,
        "--input",
        r#"{"$max_tokens": 16}"#,
        "--timeout-ms",
        "120000",
        "--stream",
        "--json",
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    let names: Vec<String> = o
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("a JSON line")["event"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(names.first().map(String::as_str), Some("start"), "{o:?}");
    assert_eq!(names.last().map(String::as_str), Some("done"), "{o:?}");
    assert!(names.iter().filter(|n| *n == "text").count() >= 2, "{o:?}");
}

#[test]
fn openai_ask_streams_back_from_the_hosting_node() {
    ask_streams_back_from_the_hosting_node("openai");
}

#[test]
fn anthropic_ask_streams_back_from_the_hosting_node() {
    ask_streams_back_from_the_hosting_node("anthropic");
}

/// A client that goes away after the first piece: node3 drops the model
/// stream, so the server stops generating long before `max_tokens`, and
/// node3 counts the stream as cancelled. Then a prompt larger than the
/// model's context gives a clear error event.
#[test]
fn a_client_that_leaves_stops_the_generation_and_an_oversized_prompt_is_refused() {
    let server = LlmServer::start(None, 2048);
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(&server, "openai", dir.path());
    let exec = |input: Value| {
        serde_json::json!({
            "plugin": JIRA,
            "command": "agent:epic-decomposer",
            "input": input,
            "timeout_ms": 120000,
        })
    };
    const MAX: u64 = 1500;
    let predicted_before = server.metric("tokens_predicted_total");
    let mut events = sse(
        &c.nodes[0].api,
        "/v1/exec",
        &exec(serde_json::json!({
            "$request": "Write a very long, detailed story about a migration project, with many chapters.",
            "$max_tokens": MAX,
        })),
    );
    assert_eq!(events.next().expect("start").name, "start");
    assert_eq!(events.next().expect("text").name, "text");
    assert_eq!(slots(&server).0, 1, "generating");
    drop(events);
    wait_for(
        Duration::from_secs(5),
        "the server to stop generating",
        || (slots(&server).0 == 0).then_some(()),
    );
    let page = metrics_page(&c.nodes[2].api);
    assert_eq!(
        metric(
            &page,
            &format!("plexus_exec_streams_total{{end=\"cancelled\",plugin=\"{JIRA}\"}} ")
        ),
        Some(1.0),
        "{}",
        tail(&page, 40)
    );
    let predicted = server.metric("tokens_predicted_total") - predicted_before;
    assert!(
        predicted < MAX as f64,
        "the generation stopped early ({predicted} of {MAX} tokens)"
    );

    // A prompt far beyond the 2048-token context.
    let huge = "migration ".repeat(6000);
    let evs: Vec<Ev> = sse(
        &c.nodes[0].api,
        "/v1/exec",
        &exec(serde_json::json!({"$request": huge, "$max_tokens": 8})),
    )
    .collect();
    let names: Vec<&str> = evs.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["start", "error"], "{evs:?}");
    let p = &evs[1].data;
    assert_eq!(p["status"], 502, "{p:#}");
    assert!(
        p["detail"]
            .as_str()
            .unwrap_or("")
            .contains("context too long"),
        "{p:#}"
    );
}

/// A plugin that is not a model (sim) streams too: `start`, then `done`
/// with its output, on the node that hosts it; `plexus exec --stream`
/// prints it.
#[test]
fn a_sim_plugin_streams_start_and_done() {
    let c = Cluster::start(vec![
        spec("node1", &[], vec![]),
        spec("node2", &[JIRA], vec![]),
    ]);
    let body = serde_json::json!({
        "plugin": JIRA,
        "command": "agent:epic-decomposer",
        "input": {"summary": "SSO"},
    });
    let evs: Vec<Ev> = sse(&c.nodes[0].api, "/v1/exec", &body).collect();
    let names: Vec<&str> = evs.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["start", "done"], "{evs:?}");
    assert_eq!(evs[0].data["node"], "node2");
    assert_eq!(evs[1].data["ok"], true, "{evs:?}");
    assert_eq!(evs[1].data["node"], "node2");
    assert!(!evs[1].data["output"].is_null(), "{evs:?}");

    let o = plexus(&[
        "exec",
        "--connect",
        &c.nodes[0].api,
        "--plugin",
        JIRA,
        "--command",
        "agent:epic-decomposer",
        "--stream",
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stderr.contains("running on node2"), "{o:?}");
    assert!(o.stderr.contains("done on node2"), "{o:?}");

    // Errors before anything ran are plain problem documents.
    let o = plexus(&[
        "exec",
        "--connect",
        &c.nodes[0].api,
        "--plugin",
        "nope",
        "--command",
        "x",
        "--stream",
        "--json",
    ]);
    assert_ne!(o.code, 0, "{o:?}");
    assert!(o.stdout.contains("\"status\":404"), "{o:?}");
}
