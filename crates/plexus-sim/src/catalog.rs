//! The plugin manifests the simulated nodes host: the ones built into the
//! `plexus` binary (`cluster-config/plugins/`), with per-scenario behaviour.

use std::sync::OnceLock;

use plexus_catalog::{Catalog, Plugin, Sources};

const EMBEDDED: &[(&str, &str)] = &[
    (
        "ahling-command-center.toml",
        include_str!("../../../cluster-config/plugins/ahling-command-center.toml"),
    ),
    (
        "exec-automator.toml",
        include_str!("../../../cluster-config/plugins/exec-automator.toml"),
    ),
    (
        "frontend-powerhouse.toml",
        include_str!("../../../cluster-config/plugins/frontend-powerhouse.toml"),
    ),
    (
        "home-assistant-architect.toml",
        include_str!("../../../cluster-config/plugins/home-assistant-architect.toml"),
    ),
    (
        "jira-orchestrator.toml",
        include_str!("../../../cluster-config/plugins/jira-orchestrator.toml"),
    ),
    (
        "lobbi-platform-manager.toml",
        include_str!("../../../cluster-config/plugins/lobbi-platform-manager.toml"),
    ),
];

/// The built-in catalog (loaded once).
pub fn base() -> &'static Catalog {
    static CAT: OnceLock<Catalog> = OnceLock::new();
    CAT.get_or_init(|| {
        Catalog::load(&Sources {
            embedded: EMBEDDED
                .iter()
                .map(|(l, t)| (l.to_string(), t.to_string()))
                .collect(),
            dirs: vec![],
        })
    })
}

/// A built-in plugin by name.
pub fn plugin(name: &str) -> Option<&'static Plugin> {
    base().plugin(name)
}

/// The built-in plugins' names, for error messages.
pub fn names() -> String {
    base()
        .plugins
        .iter()
        .map(|p| p.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
