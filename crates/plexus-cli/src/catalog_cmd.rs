//! `plexus catalog list`.

use clap::{Args, Subcommand};
use plexus_catalog::Severity;
use serde::Serialize;

use crate::{defaults, CatalogArgs, CliResult, Failure};

#[derive(Subcommand)]
pub enum CatalogCmd {
    /// Each plugin with its version, agent and command counts, and every
    /// problem found while loading.
    List(ListArgs),
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub catalog: CatalogArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Row<'a> {
    name: &'a str,
    version: &'a str,
    agents: usize,
    commands: usize,
    handler: &'static str,
    source: String,
}

pub fn run(c: CatalogCmd) -> CliResult {
    let CatalogCmd::List(a) = c;
    let cat = defaults::load(&a.catalog);
    let rows: Vec<Row> = cat
        .plugins
        .iter()
        .map(|p| Row {
            name: &p.name,
            version: &p.version,
            agents: p.agents.len(),
            commands: p.commands.len(),
            handler: p.manifest.handler.kind(),
            source: match (&p.claude_dir, &p.manifest_file) {
                (Some(d), _) => d.display().to_string(),
                (None, Some(f)) => f.display().to_string(),
                (None, None) => String::new(),
            },
        })
        .collect();
    let errors = cat.errors().count();
    if a.json {
        let v = serde_json::json!({ "plugins": rows, "diagnostics": cat.diagnostics });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{:<26} {:<10} {:<7} {:>6} {:>8}  SOURCE",
            "PLUGIN", "VERSION", "HANDLER", "AGENTS", "COMMANDS"
        );
        for r in &rows {
            println!(
                "{:<26} {:<10} {:<7} {:>6} {:>8}  {}",
                r.name, r.version, r.handler, r.agents, r.commands, r.source
            );
        }
        let warnings = cat
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Warning)
            .count();
        println!(
            "\n{} plugins, {} errors, {} warnings",
            rows.len(),
            errors,
            warnings
        );
        for d in &cat.diagnostics {
            eprintln!("{d}");
        }
    }
    if errors > 0 {
        return Err(Failure {
            code: 1,
            error: anyhow::anyhow!(
                "{errors} plugin(s) or file(s) could not be loaded (listed above)"
            ),
        });
    }
    Ok(())
}
