//! `--stream` of `plexus exec` and `plexus ask`: the node's Server-Sent
//! Events printed as they arrive. The model's text goes to stdout piece by
//! piece; where it runs, its tool calls and the closing summary go to
//! stderr. With `--json`, each event is one JSON line
//! `{"event": NAME, "data": ...}` on stdout.

use std::io::Write;

use serde::Serialize;
use serde_json::Value;

use crate::client::{Client, Problem};
use crate::{CliResult, Failure};

/// POST `body` to `path` as a stream and print its events.
pub fn run<B: Serialize>(c: &Client, path: &str, body: &B, json: bool) -> CliResult {
    let mut failed: Option<Problem> = None;
    let mut out = std::io::stdout().lock();
    let r = c.post_stream(path, body, |name, data| {
        let v: Value = serde_json::from_str(data).unwrap_or(Value::String(data.to_string()));
        if json {
            writeln!(out, "{}", serde_json::json!({"event": name, "data": v}))?;
        } else {
            print_event(&mut out, name, &v)?;
        }
        out.flush()?;
        if name == "error" {
            failed = Some(serde_json::from_value(v).unwrap_or(Problem {
                status: 500,
                detail: data.to_string(),
                kind: String::new(),
                reply: None,
            }));
        }
        Ok(())
    })?;
    match (r, failed) {
        (Err(p), _) | (Ok(()), Some(p)) => {
            if json {
                // The problem before any event is not in the stream: say it.
                println!(
                    "{}",
                    serde_json::json!({"event": "error", "data": {"status": p.status, "type": p.kind, "detail": p.detail}})
                );
            }
            Err(p.into())
        }
        (Ok(()), None) => Ok(()),
    }
}

fn print_event(out: &mut impl Write, name: &str, v: &Value) -> Result<(), Failure> {
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    match name {
        "start" => eprintln!("{}/{} running on {}", s("plugin"), s("command"), s("node")),
        "text" => write!(out, "{}", s("text"))?,
        "tool_call" => eprintln!("\n[tool {} {}]", s("name"), v["input"]),
        "tool_result" => eprintln!("[tool {}: {}]", s("name"), s("status")),
        "done" => {
            // An ask's reply holds the exec reply in `result`.
            let r = if v.get("result").is_some() {
                &v["result"]
            } else {
                v
            };
            writeln!(out)?;
            if r["usage"].is_object() {
                eprintln!(
                    "done on {} in {:.1} ms, model {}, {} tokens in, {} out, cost ${:.6}",
                    r["node"].as_str().unwrap_or("?"),
                    r["duration_ms"].as_f64().unwrap_or(0.0),
                    r["model"].as_str().unwrap_or("?"),
                    r["usage"]["input_tokens"],
                    r["usage"]["output_tokens"],
                    r["cost_usd"].as_f64().unwrap_or(0.0)
                );
            } else if r.is_object() && !r.is_null() {
                // Not a model run: its output, as a plain exec prints it.
                eprintln!(
                    "done on {} in {:.1} ms",
                    r["node"].as_str().unwrap_or("?"),
                    r["duration_ms"].as_f64().unwrap_or(0.0)
                );
                if !r["output"].is_null() {
                    writeln!(
                        out,
                        "{}",
                        serde_json::to_string_pretty(&r["output"]).unwrap_or_default()
                    )?;
                }
            }
        }
        "error" => eprintln!("\nerror: {}", s("detail")),
        _ => {}
    }
    Ok(())
}
