//! `plexus route`: offline routing against the catalog.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{anyhow, Context};
use clap::Args;
use std::sync::Arc;

use plexus_router::{RouteRequest, Router, RouterConfig};

use crate::{defaults, CatalogArgs, CliResult, Failure};

#[derive(Args)]
pub struct RouteArgs {
    #[command(flatten)]
    pub catalog: CatalogArgs,
    /// The request, in plain words.
    #[arg(required_unless_present = "batch", conflicts_with = "batch")]
    pub text: Option<String>,
    /// Route every line of a JSONL file (objects with a `request` field).
    #[arg(long, value_name = "FILE.jsonl")]
    pub batch: Option<PathBuf>,
    /// Budget in USD for the chosen model.
    #[arg(long)]
    pub budget_usd: Option<f64>,
    /// Longest acceptable duration in minutes.
    #[arg(long)]
    pub max_duration_min: Option<f64>,
    /// Ask a node instead, which knows which plugins are up right now.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "batch")]
    pub connect: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// The sentence-embedding model's directory (default: PLEXUS_EMBED_DIR,
    /// else .models/minilm). Without its files: BM25F alone, and the output
    /// says so (`signals`).
    #[arg(long, value_name = "DIR")]
    pub embed_dir: Option<PathBuf>,
}

pub fn run(a: RouteArgs) -> CliResult {
    if let Some(node) = &a.connect {
        let body = plexus_api::RouteBody {
            request: a.text.clone().unwrap_or_default(),
            budget_usd: a.budget_usd,
            max_duration_min: a.max_duration_min,
        };
        let c = crate::client::Client::new(node, std::time::Duration::from_secs(10));
        let d: serde_json::Value = c.post("/v1/route", &body)??;
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(());
    }
    let cat = defaults::load(&a.catalog);
    for d in cat.errors() {
        eprintln!("{d}");
    }
    let dir = a
        .embed_dir
        .clone()
        .unwrap_or_else(plexus_embed::default_dir);
    let router = match plexus_embed::MiniLm::load(&dir) {
        Ok(m) => Router::with_embedder(&cat, RouterConfig::default(), Some(Arc::new(m))),
        Err(e) => {
            let mut r = Router::new(&cat);
            r.set_semantic_off_reason(e.to_string());
            r
        }
    };
    if let Some(path) = &a.batch {
        let f = std::fs::File::open(path)
            .map_err(|e| Failure::usage(anyhow!("{}: cannot open: {e}", path.display())))?;
        let out = std::io::stdout();
        let mut out = out.lock();
        for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
            let line =
                line.with_context(|| format!("{}:{}: cannot read", path.display(), i + 1))?;
            if line.trim().is_empty() {
                continue;
            }
            let mut v = plexus_router::route_batch_line(&router, &line);
            if let Some(obj) = v.as_object_mut() {
                if obj.contains_key("error") {
                    obj.insert("line".into(), serde_json::json!(i + 1));
                }
            }
            writeln!(out, "{v}")?;
        }
        return Ok(());
    }
    let text = a.text.unwrap_or_default();
    let mut req = RouteRequest::new(text);
    if let Some(b) = a.budget_usd {
        req = req.with_budget(b);
    }
    if let Some(m) = a.max_duration_min {
        req = req.with_max_duration(m);
    }
    let d = router.route(&req);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&d)?);
    } else {
        println!("{d}");
    }
    Ok(())
}
