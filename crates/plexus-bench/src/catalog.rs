//! The plugins the bench adds to the cluster's catalog.

use std::path::Path;

/// The echo plugin: one command, answered at once by the `sim` handler (no
/// simulated latency), so a request measures Plexus, not a model.
pub const ECHO_PLUGIN: &str = "bench-echo";
pub const ECHO_COMMAND: &str = "echo";

/// Manifest of [`ECHO_PLUGIN`].
pub fn echo_manifest() -> String {
    format!(
        r#"# Written by `plexus bench`: a plugin that answers at once.
[plugin]
name = "{ECHO_PLUGIN}"
version = "1.0.0"
description = "Benchmark echo plugin: answers every request at once."

[capabilities]
domains = ["benchmark"]

[errorHandling.circuitBreaker]
failureRateThreshold = 1.0
slowCallRateThreshold = 1.0
slowCallDurationMs = 60000
monitoringWindow = 100
minimumCalls = 100

[handler]
kind = "sim"
latencyMs = 0
jitterMs = 0
failureRate = 0.0

[placement]
maxConcurrency = 4096

[[commands]]
name = "{ECHO_COMMAND}"
description = "Answer at once"
model = "haiku"
"#
    )
}

/// Manifests of synthetic plugins holding `agents` agents in total
/// (`per_plugin` each), named `{prefix}-{k}` with agents `agent-{i}`.
pub fn agent_manifests(prefix: &str, agents: usize, per_plugin: usize) -> Vec<(String, String)> {
    let per_plugin = per_plugin.max(1);
    let mut out = vec![];
    let mut i = 0usize;
    let mut k = 0usize;
    while i < agents {
        let name = format!("{prefix}-{k}");
        let mut t = format!(
            "[plugin]\nname = \"{name}\"\nversion = \"1.0.0\"\ndescription = \"Synthetic plugin for discovery benchmarks\"\n\n[handler]\nkind = \"sim\"\nlatencyMs = 0\n\n[[commands]]\nname = \"noop\"\ndescription = \"Does nothing\"\n"
        );
        for _ in 0..per_plugin.min(agents - i) {
            t.push_str(&format!(
                "\n[[agents]]\nname = \"agent-{i}\"\ndescription = \"Synthetic agent {i}\"\nmodel = \"haiku\"\n"
            ));
            i += 1;
        }
        out.push((name, t));
        k += 1;
    }
    out
}

/// Write manifests as `{name}.toml` into `dir` (created).
pub fn write(dir: &Path, manifests: &[(String, String)]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, text) in manifests {
        std::fs::write(dir.join(format!("{name}.toml")), text)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_catalog::{Catalog, Sources};

    #[test]
    fn the_bench_manifests_load_cleanly() {
        let mut embedded = vec![(format!("{ECHO_PLUGIN}.toml"), echo_manifest())];
        embedded.extend(
            agent_manifests("synth", 250, 100)
                .into_iter()
                .map(|(n, t)| (format!("{n}.toml"), t)),
        );
        let c = Catalog::load(&Sources {
            embedded,
            dirs: vec![],
        });
        let errors: Vec<String> = c.errors().map(|d| d.to_string()).collect();
        assert!(errors.is_empty(), "{errors:#?}");
        assert_eq!(c.plugins.len(), 4);
        let agents: usize = c.plugins.iter().map(|p| p.agents.len()).sum();
        assert_eq!(agents, 250);
        let echo = c.plugin(ECHO_PLUGIN).unwrap();
        assert!(echo.command(ECHO_COMMAND).is_some());
    }
}
