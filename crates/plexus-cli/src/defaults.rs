//! The plugin manifests built into the binary (`cluster-config/plugins/`), so
//! `plexus up` works on a machine with nothing else.

use plexus_catalog::{Catalog, Sources};

use crate::CatalogArgs;

/// The sources a command's flags name.
pub fn sources(args: &CatalogArgs) -> Sources {
    Sources {
        embedded: if args.no_default_plugins {
            vec![]
        } else {
            plexus_catalog::builtin::embedded()
        },
        dirs: args.catalog.clone(),
    }
}

/// Load the catalog the flags name.
pub fn load(args: &CatalogArgs) -> Catalog {
    Catalog::load(&sources(args))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_manifests_load_without_errors() {
        let c = load(&CatalogArgs::default());
        let errors: Vec<String> = c.errors().map(|d| d.to_string()).collect();
        assert!(errors.is_empty(), "{errors:#?}");
        assert_eq!(c.plugins.len(), 6);
    }

    /// The embedded lists must name exactly what the real plugins offer.
    #[test]
    fn embedded_manifests_match_the_claude_plugins() {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/catalog/claude-plugins");
        if !dir.is_dir() {
            panic!("expected the shared catalog at {}", dir.display());
        }
        let embedded = load(&CatalogArgs::default());
        let real = Catalog::load(&Sources {
            embedded: vec![],
            dirs: vec![dir],
        });
        for p in &real.plugins {
            let e = embedded
                .plugin(&p.name)
                .unwrap_or_else(|| panic!("{} not embedded", p.name));
            let names = |v: Vec<&str>| {
                let mut v: Vec<String> = v.into_iter().map(str::to_string).collect();
                v.sort();
                v
            };
            assert_eq!(
                names(e.commands.iter().map(|c| c.name.as_str()).collect()),
                names(p.commands.iter().map(|c| c.name.as_str()).collect()),
                "{} commands",
                p.name
            );
            assert_eq!(
                names(e.agents.iter().map(|a| a.name.as_str()).collect()),
                names(p.agents.iter().map(|a| a.name.as_str()).collect()),
                "{} agents",
                p.name
            );
        }
    }
}
