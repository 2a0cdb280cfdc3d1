//! The six real plugins in `../shared/catalog/claude-plugins` all load.

use std::path::PathBuf;

use plexus_catalog::{Catalog, ModelTier, Severity, Sources};

fn shared_catalog() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/catalog/claude-plugins")
}

#[test]
fn every_agent_and_command_file_loads_with_the_published_counts() {
    let dir = shared_catalog();
    assert!(
        dir.is_dir(),
        "expected the shared catalog at {}",
        dir.display()
    );
    let cat = Catalog::load(&Sources {
        embedded: vec![],
        dirs: vec![dir],
    });
    let errors: Vec<String> = cat.errors().map(|d| d.to_string()).collect();
    assert!(errors.is_empty(), "load errors: {errors:#?}");
    let counts: Vec<(&str, usize, usize)> = cat
        .plugins
        .iter()
        .map(|p| (p.name.as_str(), p.agents.len(), p.commands.len()))
        .collect();
    assert_eq!(
        counts,
        vec![
            ("ahling-command-center", 10, 15),
            ("exec-automator", 11, 13),
            ("frontend-powerhouse", 0, 8),
            ("home-assistant-architect", 15, 9),
            ("jira-orchestrator", 60, 35),
            ("lobbi-platform-manager", 4, 8),
        ]
    );
    // Files without frontmatter load with a warning naming them.
    let warned: Vec<_> = cat
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Warning)
        .collect();
    assert!(warned.iter().any(|d| d.file.ends_with("ha-diagnostics.md")));
    // The quirks: model from a markdown table; frontmatter after a title; invalid YAML.
    let ha = cat.plugin("home-assistant-architect").unwrap();
    assert_eq!(
        ha.agent("ha-diagnostics").unwrap().model,
        Some(ModelTier::Sonnet)
    );
    let jira = cat.plugin("jira-orchestrator").unwrap();
    assert_eq!(
        jira.agent("tag-manager").unwrap().model,
        Some(ModelTier::Haiku)
    );
    let batch = jira.command("batch").unwrap();
    assert!(
        batch.description.contains("bulk operations"),
        "{}",
        batch.description
    );
    assert!(jira.command("jira:batch").is_some());
    assert_eq!(jira.mcp_servers.len(), 1);
    for p in &cat.plugins {
        for a in &p.agents {
            assert!(
                !a.name.is_empty() && !a.description.is_empty(),
                "{}::{}",
                p.name,
                a.name
            );
        }
        for c in &p.commands {
            assert!(
                !c.name.is_empty() && !c.description.is_empty(),
                "{}/{}",
                p.name,
                c.name
            );
        }
    }
}

/// The built-in manifests' `[routing]` lists agree: every collaboration a
/// plugin's `canRouteTo` names is accepted by the other side, and nothing
/// else is.
#[test]
fn the_built_in_routing_permissions_allow_the_intended_collaborations() {
    let c = plexus_catalog::Catalog::load(&plexus_catalog::Sources {
        embedded: plexus_catalog::builtin::MANIFESTS
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect(),
        dirs: vec![],
    });
    let p = |n: &str| c.plugin(n).unwrap_or_else(|| panic!("{n} is built in"));
    for from in &c.plugins {
        for to in &from.manifest.routing.can_route_to {
            assert_eq!(from.may_route_to(p(to)), Ok(()), "{} -> {to}", from.name);
        }
    }
    assert_eq!(
        p("jira-orchestrator").may_route_to(p("frontend-powerhouse")),
        Ok(())
    );
    assert_eq!(
        p("ahling-command-center").may_route_to(p("home-assistant-architect")),
        Ok(())
    );
    let e = p("frontend-powerhouse")
        .may_route_to(p("home-assistant-architect"))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("not in frontend-powerhouse's canRouteTo"),
        "{e}"
    );
    // A plugin always reaches itself.
    assert_eq!(
        p("exec-automator").may_route_to(p("exec-automator")),
        Ok(())
    );
}
