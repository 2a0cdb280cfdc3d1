//! `plexus node`: run one node in the foreground.

use std::io::Write;
use std::path::PathBuf;

use anyhow::anyhow;
use clap::Args;
use plexus_node::config::{read_file, FileConfig};
use plexus_node::StartError;
use tokio::signal::unix::{signal, SignalKind};

use crate::{defaults, CatalogArgs, CliResult, Failure, LlmArgs};

#[derive(Args, Debug)]
pub struct NodeArgs {
    /// A node config file (TOML, see cluster-config/); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This node's name, unique in the cluster.
    #[arg(long)]
    pub name: Option<String>,
    /// Cluster listener, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// Client API listener, HOST:PORT (default: cluster port + 100).
    #[arg(long, value_name = "HOST:PORT")]
    pub api: Option<String>,
    /// Host name other nodes use to reach this one (default: the listen host).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Another node's cluster address to join through. Repeatable.
    #[arg(long = "seed", value_name = "HOST:PORT")]
    pub seeds: Vec<String>,
    /// Seeds found by DNS: every address NAME resolves to is dialled (a
    /// Kubernetes headless Service, a Compose network alias). Repeatable.
    #[arg(long = "seed-dns", value_name = "NAME:PORT")]
    pub seed_dns: Vec<String>,
    /// Plugins this node may host (default: every plugin in the catalog).
    #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
    pub plugins: Option<Vec<String>>,
    /// `pinned` (default): run every plugin this node may host. `cluster`:
    /// the cluster's placement rule decides where each plugin runs and moves
    /// it when a node dies (docs/placement.md).
    #[arg(long, value_name = "pinned|cluster")]
    pub placement: Option<plexus_node::config::PlacementMode>,
    #[command(flatten)]
    pub catalog: CatalogArgs,
    /// Shared secret every node of the cluster must present.
    #[arg(long, env = "PLEXUS_COOKIE", hide_env_values = true)]
    pub cookie: Option<String>,
    /// Read the cookie from this file (a mounted secret; one trailing
    /// newline is trimmed). Not together with --cookie / PLEXUS_COOKIE.
    #[arg(long, value_name = "FILE")]
    pub cookie_file: Option<PathBuf>,
    /// On SIGTERM, how long the node keeps serving the work in flight
    /// (while taking no new work) before it leaves the cluster: `30s`,
    /// `500ms`, `2m` or whole seconds.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = crate::parse_duration)]
    pub drain_grace: std::time::Duration,
    /// Where the node keeps its state (generation, journals).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub llm: LlmArgs,
    /// Serve the API beyond loopback with no token at all. Refused without
    /// this flag: anyone who reaches such an API can exec commands and write
    /// state as any plugin.
    #[arg(long)]
    pub insecure_open_api: bool,
    /// Validate the configuration and catalog, print the result, and exit.
    #[arg(long)]
    pub check: bool,
}

fn merged_config(a: &NodeArgs) -> Result<FileConfig, Failure> {
    let mut fc = match &a.config {
        Some(p) => read_file(p).map_err(Failure::usage)?,
        None => FileConfig::default(),
    };
    let n = &mut fc.node;
    if a.name.is_some() {
        n.name = a.name.clone();
    }
    if a.listen.is_some() {
        n.listen = a.listen.clone();
    }
    if a.api.is_some() {
        n.api = a.api.clone();
    }
    if a.advertise.is_some() {
        n.advertise = a.advertise.clone();
    }
    if !a.seeds.is_empty() {
        n.seeds = a.seeds.clone();
    }
    if a.placement.is_some() {
        n.placement = a.placement;
    }
    if !a.seed_dns.is_empty() {
        n.seed_dns = a.seed_dns.clone();
    }
    if let Some(ps) = &a.plugins {
        // `--plugins ""` means "host nothing".
        n.plugins = Some(
            ps.iter()
                .filter(|s| !s.trim().is_empty())
                .cloned()
                .collect(),
        );
    }
    n.catalog.extend(a.catalog.catalog.iter().cloned());
    n.no_default_plugins |= a.catalog.no_default_plugins;
    if a.cookie.is_some() {
        n.cookie = a.cookie.clone();
    }
    if let Some(f) = &a.cookie_file {
        if a.cookie.is_some() {
            return Err(Failure::usage(anyhow!(
                "give the cookie once: --cookie-file {} and --cookie (or PLEXUS_COOKIE) are both set",
                f.display()
            )));
        }
        n.cookie = Some(crate::read_secret_file("--cookie-file", f).map_err(Failure::usage)?);
    }
    if a.data_dir.is_some() {
        n.data_dir = a.data_dir.clone();
    }
    fc.llm = a.llm.apply(fc.llm.take())?;
    fc.api.insecure_open |= a.insecure_open_api;
    // The global `--api-token` / PLEXUS_API_TOKEN.
    if let Some(t) = crate::client::token() {
        fc.api.token = Some(t.to_string());
    }
    Ok(fc)
}

pub fn run(a: NodeArgs) -> CliResult {
    let fc = merged_config(&a)?;
    let config = fc.finish().map_err(|e| {
        let at = a
            .config
            .as_ref()
            .map(|p| format!("{}: ", p.display()))
            .unwrap_or_default();
        Failure::usage(anyhow!("{at}{e}"))
    })?;
    let catalog = defaults::load(&CatalogArgs {
        catalog: config.catalog.clone(),
        no_default_plugins: !config.default_plugins,
    });
    for d in &catalog.diagnostics {
        match d.severity {
            plexus_catalog::Severity::Error => tracing::error!("{d}"),
            plexus_catalog::Severity::Warning => tracing::debug!("{d}"),
        }
    }
    if a.check {
        let hosted = plexus_node::select_plugins(&catalog, config.plugins.as_deref())
            .map_err(Failure::usage)?;
        let v = serde_json::json!({
            "name": config.name,
            "cluster_addr": config.cluster_addr(),
            "api_addr": config.api_addr(),
            "seeds": config.seeds,
            "seed_dns": config.seed_dns,
            "data_dir": config.data_dir,
            "plugins": hosted.iter().map(|p| p.name.clone()).collect::<Vec<_>>(),
            "llm": llm_summary(&config),
            "catalog_errors": catalog.errors().map(|d| d.to_string()).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut handle = plexus_node::start(config, catalog).await.map_err(|e| match e {
            StartError::UnknownPlugin { .. } => Failure::usage(e),
            other => Failure::from(other),
        })?;
        let ctx = handle.ctx.clone();
        let ready = serde_json::json!({
            "event": "ready",
            "node": ctx.name(),
            "cluster_addr": ctx.config.cluster_addr(),
            // The address peers and clients are told (the advertised host
            // when the API listens on 0.0.0.0, as in a container).
            "api_addr": ctx.config.api_addr(),
            "generation": ctx.identity.read().generation,
            "plugins": ctx.offered.iter().map(|p| p.name.clone()).collect::<Vec<_>>(),
            "llm": llm_summary(&ctx.config),
        });
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{ready}")?;
            out.flush()?;
        }
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining, then leaving the cluster"),
            _ = int.recv() => tracing::info!("SIGINT: draining, then leaving the cluster"),
            _ = handle.stopped() => {
                return Err(Failure::from(anyhow!("the node's supervisor gave up; see the log above")));
            }
        }
        // Drain: no new work, the work in flight finishes within the grace.
        // A second signal cuts the drain short.
        tokio::select! {
            _ = handle.drain(a.drain_grace) => {}
            _ = term.recv() => tracing::warn!("second signal: leaving without waiting"),
            _ = int.recv() => tracing::warn!("second signal: leaving without waiting"),
        }
        handle.shutdown().await;
        tracing::info!("left the cluster");
        Ok(())
    })
}

/// What `--check` and the ready line say about the model: provider, base
/// URL and the tiers' model ids, never the key.
fn llm_summary(c: &plexus_node::NodeConfig) -> serde_json::Value {
    match c.llm.as_ref().map(|l| (l, l.resolve(None))) {
        None => serde_json::Value::Null,
        Some((_, Err(e))) => serde_json::json!({ "error": e.to_string() }),
        Some((l, Ok(p))) => serde_json::json!({
            "provider": l.provider.as_str(),
            "base_url": p.endpoint.base_url,
            "models": p.models,
            "key_from": p.key_env,
        }),
    }
}
