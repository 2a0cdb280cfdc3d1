//! `plexus run` and `plexus workflows`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::anyhow;
use clap::Args;
use plexus_api::StartWorkflowBody;
use plexus_workflow::{RunReport, RunStatus, Workflow};

use crate::client::Client;
use crate::{CliResult, Failure};

#[derive(Args)]
pub struct RunArgs {
    /// Any node's API address, HOST:PORT. The run (its journal, for a saga)
    /// lives on that node.
    #[arg(long, value_name = "HOST:PORT")]
    pub connect: String,
    /// The workflow file (TOML; see docs/workflows.md).
    pub file: PathBuf,
    /// The workflow's input, a JSON value (`@FILE`, `-`).
    #[arg(long, value_name = "JSON")]
    pub input: Option<String>,
    /// Return the run's id at once instead of waiting for its end.
    #[arg(long)]
    pub detach: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct WorkflowsArgs {
    #[arg(long, value_name = "HOST:PORT")]
    pub connect: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: RunArgs) -> CliResult {
    // Check the file here first: errors name the file, line and field.
    let text = std::fs::read_to_string(&a.file)
        .map_err(|e| Failure::usage(anyhow!("{}: cannot read: {e}", a.file.display())))?;
    Workflow::load(&a.file).map_err(Failure::usage)?;
    let input = match &a.input {
        None => None,
        Some(s) => Some(crate::exec_cmd::parse_input(s)?),
    };
    let body = StartWorkflowBody {
        workflow: text,
        file: Some(a.file.display().to_string()),
        input,
        detach: a.detach,
        wait_ms: None,
    };
    let c = Client::new(&a.connect, Duration::from_secs(620));
    if a.detach {
        let v: serde_json::Value = c.post("/v1/workflows", &body)??;
        println!(
            "{}",
            if a.json {
                v.to_string()
            } else {
                v["id"].as_str().unwrap_or_default().to_string()
            }
        );
        return Ok(());
    }
    let r: RunReport = c.post("/v1/workflows", &body)??;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", render(&r));
    }
    match r.status {
        RunStatus::Completed => Ok(()),
        s => Err(anyhow!(
            "workflow {} ended {:?}{}",
            r.id,
            s,
            r.error.map(|e| format!(": {e}")).unwrap_or_default()
        )
        .into()),
    }
}

pub fn list(a: WorkflowsArgs) -> CliResult {
    let c = Client::new(&a.connect, Duration::from_secs(10));
    let all: Vec<RunReport> = c.get("/v1/workflows")??;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else if all.is_empty() {
        println!("no workflow runs on this node");
    } else {
        for r in &all {
            print!("{}", render(r));
            println!();
        }
    }
    Ok(())
}

fn render(r: &RunReport) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "{} {} ({:?}): {:?}", r.id, r.name, r.kind, r.status);
    if let Some(e) = &r.error {
        let _ = writeln!(o, "  error: {e}");
    }
    for s in &r.steps {
        let ms = match (s.started_ms, s.finished_ms) {
            (Some(a), Some(b)) => format!("{} ms", b.saturating_sub(a)),
            _ => String::new(),
        };
        let _ = writeln!(
            o,
            "  {:<20} {:<12} {:>8}  {}",
            s.id,
            format!("{:?}", s.status).to_lowercase(),
            ms,
            s.error
                .clone()
                .or(s.compensation_error.clone())
                .unwrap_or_default()
        );
    }
    o
}
