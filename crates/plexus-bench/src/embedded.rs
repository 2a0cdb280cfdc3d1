//! A Plexus node inside the bench process: it joins the spawned cluster as
//! one more member and the bench uses its [`Bus`](plexus_bus::Bus) and
//! directory directly, as a NATS client uses its connection.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use plexus_catalog::{Catalog, Sources};
use plexus_membership::MemberStatus;
use plexus_node::{FileConfig, NodeHandle};

/// Start a node named `name` that hosts nothing, joins through `seeds`, and
/// knows the plugins of `manifests` (label, TOML).
pub async fn start(
    name: &str,
    seeds: &[String],
    cookie: &str,
    data_dir: PathBuf,
    manifests: Vec<(String, String)>,
) -> Result<NodeHandle, String> {
    let mut fc = FileConfig::default();
    fc.node.name = Some(name.to_string());
    fc.node.listen = Some("127.0.0.1:0".into());
    fc.node.api = Some("127.0.0.1:0".into());
    fc.node.seeds = seeds.to_vec();
    fc.node.cookie = Some(cookie.to_string());
    fc.node.data_dir = Some(data_dir);
    fc.node.plugins = Some(vec![]);
    fc.node.no_default_plugins = true;
    let config = fc
        .finish()
        .map_err(|e| format!("embedded node {name}: {e}"))?;
    let catalog = Catalog::load(&Sources {
        embedded: manifests,
        dirs: vec![],
    });
    plexus_node::start(config, catalog)
        .await
        .map_err(|e| format!("embedded node {name}: {e}"))
}

/// Wait until `node` sees at least `n` members up (itself included).
pub async fn wait_members(node: &NodeHandle, n: usize, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        let up = node
            .ctx
            .directory
            .load()
            .view
            .iter()
            .filter(|m| m.status == MemberStatus::Up)
            .count();
        if up >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} sees {up} members up after {} s; expected {n}",
                node.ctx.name(),
                limit.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait until `check` holds, polling every few milliseconds.
pub async fn wait_until(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while !check() {
        if Instant::now() > deadline {
            return Err(format!("{what}: not reached within {} s", limit.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}
