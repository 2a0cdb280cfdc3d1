//! Workloads against the cluster's node processes: exec (through a node's
//! API code and over HTTP), routing decisions, discovery lookups, and CRDT
//! convergence.

use std::time::{Duration, Instant};

use plexus_api::ExecBody;
use plexus_node::{CallSpec, NodeCtx, RawJson, Target};
use serde_json::{json, Value};

use crate::catalog::{ECHO_COMMAND, ECHO_PLUGIN};
use crate::hist::Latency;
use crate::messaging::{closed_loop, Closed};

/// A small blocking HTTP client for one node's API.
pub struct Http {
    base: String,
    agent: ureq::Agent,
}

impl Http {
    pub fn new(api: &str) -> Http {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        Http {
            base: format!("http://{api}"),
            agent,
        }
    }

    fn read(
        &self,
        path: &str,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<(u16, Value), String> {
        let mut resp = r.map_err(|e| format!("{}{path}: {e}", self.base))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("{}{path}: {e}", self.base))?;
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, v))
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<(u16, Value), String> {
        let r = self
            .agent
            .post(format!("{}{path}", self.base))
            .send_json(body);
        self.read(path, r)
    }

    pub fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<(u16, Value), String> {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        for (k, v) in query {
            req = req.query(*k, *v);
        }
        self.read(path, req.call())
    }
}

/// `threads` blocking clients, client *t* talking to `apis[t % len]`, each
/// calling `one` in a loop for `dur`.
pub fn http_closed_loop(
    apis: &[String],
    threads: usize,
    dur: Duration,
    one: impl Fn(&Http, u64) -> Result<(), String> + Sync,
) -> Closed {
    let started = Instant::now();
    let deadline = started + dur;
    let results: Vec<(Latency, u64, Option<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|t| {
                let http = Http::new(&apis[t % apis.len()]);
                let one = &one;
                s.spawn(move || {
                    let mut h = Latency::new();
                    let (mut errors, mut first) = (0u64, None);
                    let mut i = 0u64;
                    while Instant::now() < deadline {
                        let t0 = Instant::now();
                        match one(&http, i) {
                            Ok(()) => h.record(t0.elapsed().as_nanos() as u64),
                            Err(e) => {
                                errors += 1;
                                first.get_or_insert(e);
                            }
                        }
                        i += 1;
                    }
                    (h, errors, first)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| (Latency::new(), 1, Some("client thread panicked".into())))
            })
            .collect()
    });
    let mut out = Closed {
        ok: 0,
        errors: 0,
        first_error: None,
        secs: started.elapsed().as_secs_f64(),
        latency: Latency::new(),
    };
    for (h, e, f) in results {
        out.latency.merge(&h);
        out.errors += e;
        if out.first_error.is_none() {
            out.first_error = f;
        }
    }
    out.ok = out.latency.count();
    out
}

/// The exec request every exec workload sends.
pub fn echo_exec() -> ExecBody {
    ExecBody {
        plugin: ECHO_PLUGIN.into(),
        command: ECHO_COMMAND.into(),
        input: Some(plexus_api::raw(&json!({"n": 1}))),
        timeout_ms: Some(10_000),
        priority: None,
        idempotency_key: None,
        model: None,
    }
}

/// `POST /v1/exec` of the echo command.
pub fn http_exec(http: &Http) -> Result<(), String> {
    let body = serde_json::to_value(echo_exec()).map_err(|e| e.to_string())?;
    match http.post("/v1/exec", &body)? {
        (200, v) if v["ok"] == true => Ok(()),
        (s, v) => Err(format!("exec answered {s}: {v}")),
    }
}

/// Exec through the node's exec pipeline (host choice, retry policy, bus
/// request, typed reply), without HTTP.
pub async fn exec_via_node(ctx: std::sync::Arc<NodeCtx>, inflight: usize, dur: Duration) -> Closed {
    closed_loop(inflight, dur, move || {
        let ctx = ctx.clone();
        async move {
            let spec = CallSpec {
                timeout_ms: Some(10_000),
                ..CallSpec::new(
                    Target::new(ECHO_PLUGIN, ECHO_COMMAND),
                    Some(RawJson::from_value(&json!({"n": 1}))),
                )
            };
            plexus_node::exec(&ctx, spec)
                .await
                .map(|_| ())
                .map_err(|f| f.detail())
        }
    })
    .await
}

/// Requests for the routing workload (one per domain of the default plugins).
pub const ROUTE_TEXTS: &[&str] = &[
    "set up a keycloak realm for the new tenant with SSO",
    "create a jira epic for the billing migration and plan the sprint",
    "automate the home assistant lights when nobody is home",
    "build a responsive react dashboard with a design system",
    "score the automation potential of the executive director's tasks",
    "deploy the ollama model on the home lab and monitor it",
];

/// `POST /v1/route`.
pub fn http_route(http: &Http, i: u64) -> Result<(), String> {
    let text = ROUTE_TEXTS[(i as usize) % ROUTE_TEXTS.len()];
    match http.post("/v1/route", &json!({"request": text}))? {
        (200, _) => Ok(()),
        (s, v) => Err(format!("route answered {s}: {v}")),
    }
}

/// Discovery: look up `count` agent ids (round robin over `ids`) in the
/// node's directory, one at a time, timing each.
pub fn discovery(ctx: &NodeCtx, ids: &[String], count: u64) -> (Latency, u64, f64) {
    let mut h = Latency::new();
    let mut found = 0u64;
    let started = Instant::now();
    for i in 0..count {
        let id = &ids[(i as usize) % ids.len().max(1)];
        let t = Instant::now();
        let hits = ctx.directory.load().agent(id);
        h.record(t.elapsed().as_nanos() as u64);
        if hits.iter().any(|p| p.usable()) {
            found += 1;
        }
    }
    (h, found, started.elapsed().as_secs_f64())
}

/// CRDT convergence: write `key` = `n` on `writer` (consistency local) and
/// poll every other node until each returns `n`. Returns the time from the
/// write's acknowledgement to the last node seeing it.
pub fn converge_once(
    writer: &Http,
    readers: &[Http],
    key: &str,
    n: u64,
) -> Result<Duration, String> {
    let body = json!({"as": ECHO_PLUGIN, "key": key, "value": n});
    match writer.post("/v1/state/put", &body)? {
        (200, _) => {}
        (s, v) => return Err(format!("state put answered {s}: {v}")),
    }
    let acked = Instant::now();
    let deadline = acked + Duration::from_secs(10);
    let want = json!(n);
    let mut pending: Vec<&Http> = readers.iter().collect();
    while !pending.is_empty() {
        if Instant::now() > deadline {
            return Err(format!(
                "{} nodes did not see {key} = {n} within 10 s",
                pending.len()
            ));
        }
        let mut still = vec![];
        for r in pending {
            let seen = match r.get("/v1/state/get", &[("as", ECHO_PLUGIN), ("key", key)])? {
                (200, v) => v["value"] == want,
                _ => false,
            };
            if !seen {
                still.push(r);
            }
        }
        pending = still;
    }
    Ok(acked.elapsed())
}
