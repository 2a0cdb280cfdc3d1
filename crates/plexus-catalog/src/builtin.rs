//! The plugin manifests built into every binary that links this crate
//! (`cluster-config/plugins/`), so `plexus up` and the simulation work on a
//! machine with nothing else.

/// `(file name, TOML text)` of each built-in manifest.
pub const MANIFESTS: &[(&str, &str)] = &[
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

/// The built-in manifests as [`crate::Sources::embedded`] takes them.
pub fn embedded() -> Vec<(String, String)> {
    MANIFESTS
        .iter()
        .map(|(l, t)| (l.to_string(), t.to_string()))
        .collect()
}
