//! The plugin manifests the simulated nodes host: the ones built into the
//! `plexus` binary (`cluster-config/plugins/`), with per-scenario behaviour.

use std::sync::OnceLock;

use plexus_catalog::{Catalog, Plugin, Sources};

/// The built-in catalog (loaded once).
pub fn base() -> &'static Catalog {
    static CAT: OnceLock<Catalog> = OnceLock::new();
    CAT.get_or_init(|| {
        Catalog::load(&Sources {
            embedded: plexus_catalog::builtin::embedded(),
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
