//! `plexus ask`: route a request in the cluster and run it.

use std::time::Duration;

use anyhow::anyhow;
use clap::Args;
use plexus_api::{AskBody, AskReply};

use crate::client::Client;
use crate::{CliResult, Failure};

#[derive(Args)]
pub struct AskArgs {
    /// Any node's API address, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub connect: String,
    /// The request, in plain words.
    pub text: String,
    /// Input for the chosen agent or command, a JSON value (`@FILE`, `-`).
    #[arg(long, value_name = "JSON")]
    pub input: Option<String>,
    #[arg(long)]
    pub budget_usd: Option<f64>,
    #[arg(long)]
    pub max_duration_min: Option<f64>,
    #[arg(long, default_value_t = 30_000)]
    pub timeout_ms: u64,
    /// Print the node's answer as JSON.
    #[arg(long)]
    pub json: bool,
    /// Print the answer as it is generated (the node's Server-Sent Events):
    /// the model's text on stdout piece by piece, where it runs and the
    /// summary on stderr; with --json, one JSON line per event.
    #[arg(long)]
    pub stream: bool,
}

pub fn run(a: AskArgs) -> CliResult {
    let input = match &a.input {
        None => None,
        Some(s) => Some(crate::exec_cmd::parse_input(s)?),
    };
    let body = AskBody {
        request: a.text.clone(),
        input: input.as_ref().map(plexus_api::raw),
        budget_usd: a.budget_usd,
        max_duration_min: a.max_duration_min,
        timeout_ms: Some(a.timeout_ms),
    };
    let c = Client::new(&a.connect, Duration::from_millis(a.timeout_ms * 4 + 5_000));
    if a.stream {
        return crate::stream_out::run(&c, "/v1/ask", &body, a.json);
    }
    let r: AskReply = c.post("/v1/ask", &body)??;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", render(&r));
    }
    match (&r.result, r.decision["primary_plugin"].is_null()) {
        (Some(_), _) => Ok(()),
        (None, true) => Err(Failure::from(anyhow!(
            "no plugin fits this request: {}",
            r.decision["abstain_reason"]
                .as_str()
                .unwrap_or("nothing in the catalog matched")
        ))),
        (None, false) => Err(Failure::from(anyhow!(
            "every plugin the router chose failed ({} attempts)",
            r.attempts.len()
        ))),
    }
}

fn render(r: &AskReply) -> String {
    use std::fmt::Write;
    let d = &r.decision;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "routed: {} ({}) confidence {:.2}, {} complexity, model {}, strategy {}",
        d["primary_plugin"].as_str().unwrap_or("-"),
        d["agent"].as_str().unwrap_or("-"),
        d["confidence"].as_f64().unwrap_or(0.0),
        d["complexity"].as_str().unwrap_or("?"),
        d["model"].as_str().unwrap_or("?"),
        d["strategy"].as_str().unwrap_or("?"),
    );
    if let Some(f) = d["fallbacks"].as_array().filter(|f| !f.is_empty()) {
        let f: Vec<&str> = f.iter().filter_map(|x| x.as_str()).collect();
        let _ = writeln!(o, "fallbacks: {}", f.join(", "));
    }
    for e in d["explanation"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str())
    {
        let _ = writeln!(o, "  why: {e}");
    }
    for at in &r.attempts {
        let _ = writeln!(
            o,
            "attempt {}/{}: {} {}",
            at.plugin,
            at.target,
            if at.ok { "ok on" } else { "failed" },
            at.node
                .clone()
                .or_else(|| at.error.clone())
                .unwrap_or_default()
        );
    }
    if let Some(res) = &r.result {
        match &res.usage {
            // A run on a language model: its model, tokens and real cost.
            Some(u) => {
                let _ = writeln!(
                    o,
                    "served by {} on {} in {:.1} ms, model {}, {} tokens in, {} out, cost ${:.6}",
                    r.served_by.as_deref().unwrap_or("?"),
                    res.node,
                    res.duration_ms,
                    res.model.as_deref().unwrap_or("?"),
                    u.input_tokens,
                    u.output_tokens,
                    res.cost_usd.unwrap_or(0.0)
                );
            }
            None => {
                let _ = writeln!(
                    o,
                    "served by {} on {} in {:.1} ms, est. cost ${:.4}",
                    r.served_by.as_deref().unwrap_or("?"),
                    res.node,
                    res.duration_ms,
                    res.cost_usd.unwrap_or(0.0)
                );
            }
        }
        let text = res
            .output_value()
            .filter(|_| res.usage.is_some())
            .and_then(|v| v["text"].as_str().map(str::to_string));
        if let Some(t) = text {
            let _ = writeln!(o, "\n{}", t.trim_end());
        } else if let Some(out) = res.output_value() {
            let _ = writeln!(
                o,
                "{}",
                serde_json::to_string_pretty(&out).unwrap_or_default()
            );
        }
    }
    o
}
