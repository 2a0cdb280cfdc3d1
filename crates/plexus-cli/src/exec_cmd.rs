//! `plexus exec`.

use std::time::Duration;

use anyhow::anyhow;
use clap::Args;
use plexus_api::ExecBody;
use plexus_api::ExecReply;

use crate::client::Client;
use crate::{CliResult, Failure};

#[derive(Args)]
pub struct ExecArgs {
    /// Any node's API address, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub connect: String,
    #[arg(long)]
    pub plugin: String,
    #[arg(long)]
    pub command: String,
    /// The command's input, a JSON value; `@FILE` reads it from a file, `-`
    /// from stdin.
    #[arg(long, value_name = "JSON")]
    pub input: Option<String>,
    /// How long to wait for the result, retries and their backoff included.
    #[arg(long, default_value_t = 30_000)]
    pub timeout_ms: u64,
    /// Message priority, 1 (lowest) to 10.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=10))]
    pub priority: Option<u8>,
    /// Makes a non-idempotent command safe to retry.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Bound an agent's run on a language model: its `max_tokens`, and it
    /// stops once this much is spent (`$budget_usd` in the input).
    #[arg(long, value_name = "USD")]
    pub budget_usd: Option<f64>,
    /// Print the node's answer as JSON.
    #[arg(long)]
    pub json: bool,
    /// Print the answer as it is generated (the node's Server-Sent Events):
    /// the model's text on stdout piece by piece, where it runs and the
    /// summary on stderr; with --json, one JSON line per event.
    #[arg(long)]
    pub stream: bool,
}

pub fn run(a: ExecArgs) -> CliResult {
    let mut input = match &a.input {
        None => None,
        Some(s) => Some(parse_input(s)?),
    };
    if let Some(b) = a.budget_usd {
        if !(b.is_finite() && b > 0.0) {
            return Err(Failure::usage(anyhow!(
                "--budget-usd must be a positive number of dollars"
            )));
        }
        match input.get_or_insert_with(|| serde_json::json!({})) {
            serde_json::Value::Object(o) => {
                o.insert("$budget_usd".into(), serde_json::json!(b));
            }
            _ => {
                return Err(Failure::usage(anyhow!(
                    "--budget-usd needs an input that is a JSON object"
                )))
            }
        }
    }
    let body = ExecBody {
        plugin: a.plugin.clone(),
        command: a.command.clone(),
        input: input.as_ref().map(plexus_api::raw),
        timeout_ms: Some(a.timeout_ms),
        priority: a.priority,
        idempotency_key: a.idempotency_key.clone(),
        model: None,
    };
    let c = Client::new(&a.connect, Duration::from_millis(a.timeout_ms + 5_000));
    if a.stream {
        return crate::stream_out::run(&c, "/v1/exec", &body, a.json);
    }
    match c.post::<_, ExecReply>("/v1/exec", &body)? {
        Ok(r) => {
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "{}/{} ran on {} in {:.1} ms (served by {})",
                    r.plugin,
                    r.command,
                    r.node,
                    r.duration_ms,
                    r.served_by.as_deref().unwrap_or("primary")
                );
                match (&r.model, r.cost_usd, &r.usage) {
                    (Some(m), Some(c), Some(u)) => println!(
                        "model {m}, {} tokens in, {} out, cost ${c:.6}",
                        u.input_tokens, u.output_tokens
                    ),
                    (Some(m), Some(c), None) => println!("model {m}, estimated cost ${c:.4}"),
                    _ => {}
                }
                let out = r
                    .output_value()
                    .map(|o| serde_json::to_string_pretty(&o).unwrap_or_default())
                    .unwrap_or_default();
                println!("{out}");
            }
            Ok(())
        }
        Err(p) => {
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({"ok": false, "status": p.status, "type": p.kind, "detail": p.detail, "reply": p.reply})
                );
            }
            Err(p.into())
        }
    }
}

/// The text of `--input`: inline, `@FILE` or `-` (stdin), and where it came from.
fn read_input(arg: &str) -> Result<(String, String), Failure> {
    if arg == "-" {
        let mut t = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)
            .map_err(|e| Failure::usage(anyhow!("--input -: cannot read stdin: {e}")))?;
        return Ok((t, " (stdin)".into()));
    }
    if let Some(path) = arg.strip_prefix('@') {
        let t = std::fs::read_to_string(path)
            .map_err(|e| Failure::usage(anyhow!("--input @{path}: cannot read: {e}")))?;
        return Ok((t, format!(" (@{path})")));
    }
    Ok((arg.to_string(), String::new()))
}

/// Parse `--input` (inline, `@FILE` or `-`) as JSON; errors are usage errors.
pub fn parse_input(arg: &str) -> Result<serde_json::Value, Failure> {
    let (text, from) = read_input(arg)?;
    serde_json::from_str(&text)
        .map_err(|e| Failure::usage(anyhow!("--input{from} is not valid JSON: {e}")))
}
