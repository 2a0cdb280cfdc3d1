//! The plugin catalog: Claude Code plugin directories merged with Plexus's
//! own TOML manifests.
//!
//! Loading never stops at the first bad file: every plugin or file that could
//! not be read becomes a [`Diagnostic`] naming the file (and line where known),
//! and everything else still loads.

pub mod builtin;
mod claude;
pub mod llm;
pub mod manifest;
pub mod model;
pub mod process;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use llm::{LlmSpec, ProviderKind, WorkspaceSpec};
pub use manifest::{
    Backoff, CircuitBreakerSpec, HandlerSpec, Manifest, McpServerEntry, McpSpec, RetryPolicySpec,
    SimSpec,
};
pub use model::{Agent, Command, McpServer, ModelTier, Plugin, RoutingDenied};
pub use process::{ProcessCommand, ProcessLimits, ProcessServer, ProcessSpec, SandboxSpec};

/// How bad a load problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Loaded anyway, with a guess (e.g. no frontmatter).
    Warning,
    /// The file or plugin was not loaded.
    Error,
}

/// One problem found while loading, naming where it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub plugin: Option<String>,
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl Diagnostic {
    pub fn error(plugin: Option<&str>, file: &Path, line: Option<usize>, message: String) -> Self {
        Diagnostic {
            severity: Severity::Error,
            plugin: plugin.map(str::to_string),
            file: file.to_path_buf(),
            line,
            message,
        }
    }

    pub fn warning(
        plugin: Option<&str>,
        file: &Path,
        line: Option<usize>,
        message: String,
    ) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(plugin, file, line, message)
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(f, "{sev}: {}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(p) = &self.plugin {
            write!(f, " (plugin {p})")?;
        }
        Ok(())
    }
}

/// Where plugins come from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Manifests compiled into the binary: (label, TOML text).
    pub embedded: Vec<(String, String)>,
    /// Directories given with `--catalog`: each may be a Claude Code plugin
    /// directory, a directory of them, and/or a directory of `*.toml` manifests.
    pub dirs: Vec<PathBuf>,
}

/// The loaded catalog.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Catalog {
    /// Plugins sorted by name.
    pub plugins: Vec<Plugin>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Catalog {
    /// Load and merge everything `sources` names.
    pub fn load(sources: &Sources) -> Catalog {
        let mut diags = vec![];
        let mut manifests: BTreeMap<String, (Manifest, PathBuf)> = BTreeMap::new();
        let mut claude: BTreeMap<String, claude::ClaudePlugin> = BTreeMap::new();

        for (label, text) in &sources.embedded {
            let file = PathBuf::from(format!("<embedded>/{label}"));
            add_manifest(text, &file, &mut manifests, &mut diags);
        }
        for dir in &sources.dirs {
            scan_dir(dir, &mut manifests, &mut claude, &mut diags);
        }

        let mut names: Vec<String> = manifests.keys().chain(claude.keys()).cloned().collect();
        names.sort();
        names.dedup();
        let plugins = names
            .into_iter()
            .map(|n| merge(&n, manifests.remove(&n), claude.remove(&n)))
            .collect();
        Catalog {
            plugins,
            diagnostics: diags,
        }
    }

    /// A plugin by name.
    pub fn plugin(&self, name: &str) -> Option<&Plugin> {
        self.plugins.iter().find(|p| p.name == name)
    }

    /// Diagnostics of error severity.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
    }
}

fn add_manifest(
    text: &str,
    file: &Path,
    manifests: &mut BTreeMap<String, (Manifest, PathBuf)>,
    diags: &mut Vec<Diagnostic>,
) {
    match Manifest::parse(text) {
        Ok(m) => {
            let name = m.plugin.name.clone();
            if let Some((_, prev)) = manifests.get(&name) {
                if !prev.starts_with("<embedded>") {
                    diags.push(Diagnostic::warning(
                        Some(&name),
                        file,
                        None,
                        format!("replaces the manifest of {name} from {}", prev.display()),
                    ));
                }
            }
            manifests.insert(name, (m, file.to_path_buf()));
        }
        Err(p) => diags.push(Diagnostic {
            severity: Severity::Error,
            plugin: None,
            file: file.to_path_buf(),
            line: p.line,
            message: match p.column {
                Some(c) => format!("invalid manifest (column {c}): {}", p.message),
                None => format!("invalid manifest: {}", p.message),
            },
        }),
    }
}

fn scan_dir(
    dir: &Path,
    manifests: &mut BTreeMap<String, (Manifest, PathBuf)>,
    claude: &mut BTreeMap<String, claude::ClaudePlugin>,
    diags: &mut Vec<Diagnostic>,
) {
    if !dir.is_dir() {
        diags.push(Diagnostic::error(
            None,
            dir,
            None,
            "catalog directory does not exist or is not a directory".into(),
        ));
        return;
    }
    if claude::is_plugin_dir(dir) {
        add_claude(dir, claude, manifests, diags);
        return;
    }
    let mut entries: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) => {
            diags.push(Diagnostic::error(
                None,
                dir,
                None,
                format!("cannot list: {e}"),
            ));
            return;
        }
    };
    entries.sort();
    let mut found = false;
    for p in entries {
        if p.is_dir() {
            if claude::is_plugin_dir(&p) {
                found = true;
                add_claude(&p, claude, manifests, diags);
            } else if p.join(".claude-plugin").exists() || p.join("agents").is_dir() {
                found = true;
                diags.push(Diagnostic::error(
                    None,
                    &p.join(".claude-plugin").join("plugin.json"),
                    None,
                    "plugin directory without a readable .claude-plugin/plugin.json".into(),
                ));
            }
        } else if p.extension().is_some_and(|x| x == "toml") {
            found = true;
            match std::fs::read_to_string(&p) {
                Ok(text) => add_manifest(&text, &p, manifests, diags),
                Err(e) => diags.push(Diagnostic::error(
                    None,
                    &p,
                    None,
                    format!("cannot read: {e}"),
                )),
            }
        }
    }
    if !found {
        diags.push(Diagnostic::warning(
            None,
            dir,
            None,
            "no plugin directories or *.toml manifests found here".into(),
        ));
    }
}

fn add_claude(
    dir: &Path,
    claude: &mut BTreeMap<String, claude::ClaudePlugin>,
    manifests: &mut BTreeMap<String, (Manifest, PathBuf)>,
    diags: &mut Vec<Diagnostic>,
) {
    match claude::load_plugin_dir(dir, diags) {
        Ok(p) => {
            let name = p.manifest.name.clone();
            // A plugin directory may carry its Plexus manifest beside plugin.json.
            let own = dir.join("plexus.toml");
            if own.is_file() {
                match std::fs::read_to_string(&own) {
                    Ok(text) => add_manifest(&text, &own, manifests, diags),
                    Err(e) => diags.push(Diagnostic::error(
                        Some(&name),
                        &own,
                        None,
                        format!("cannot read: {e}"),
                    )),
                }
            }
            if let Some(prev) = claude.get(&name) {
                diags.push(Diagnostic::error(
                    Some(&name),
                    &dir.join(".claude-plugin").join("plugin.json"),
                    None,
                    format!(
                        "duplicate plugin name; keeping the one from {}",
                        prev.dir.display()
                    ),
                ));
            } else {
                claude.insert(name, p);
            }
        }
        Err(d) => diags.push(d),
    }
}

fn merge(
    name: &str,
    manifest: Option<(Manifest, PathBuf)>,
    cp: Option<claude::ClaudePlugin>,
) -> Plugin {
    let (manifest, manifest_file) = match manifest {
        Some((m, f)) => (m, Some(f)),
        None => (Manifest::default_for(name), None),
    };
    let mut plugin = Plugin {
        name: name.to_string(),
        version: manifest
            .plugin
            .version
            .clone()
            .unwrap_or_else(|| "0.0.0".into()),
        description: manifest.plugin.description.clone().unwrap_or_default(),
        keywords: vec![],
        agents: vec![],
        commands: vec![],
        mcp_servers: vec![],
        claude_dir: None,
        manifest_file,
        manifest: Manifest::default(),
    };
    if let Some(cp) = cp {
        plugin.version = cp.manifest.version;
        if !cp.manifest.description.is_empty() {
            plugin.description = cp.manifest.description;
        }
        plugin.keywords = cp.manifest.keywords;
        plugin.agents = cp.agents;
        plugin.commands = cp.commands;
        plugin.mcp_servers = cp.mcp_servers;
        plugin.claude_dir = Some(cp.dir);
    }
    for mc in &manifest.commands {
        match plugin.commands.iter_mut().find(|c| c.name == mc.name) {
            Some(c) => {
                if let Some(i) = mc.idempotent {
                    c.idempotent = i;
                }
                if c.model.is_none() {
                    c.model = mc.model;
                }
                c.keywords.extend(mc.keywords.iter().cloned());
            }
            None => plugin.commands.push(Command {
                name: mc.name.clone(),
                description: mc.description.clone(),
                model: mc.model,
                keywords: mc.keywords.clone(),
                idempotent: mc.idempotent.unwrap_or(true),
                ..Default::default()
            }),
        }
    }
    for ma in &manifest.agents {
        if plugin.agent(&ma.name).is_none() {
            plugin.agents.push(Agent {
                name: ma.name.clone(),
                description: ma.description.clone(),
                model: ma.model,
                keywords: ma.keywords.clone(),
                ..Default::default()
            });
        }
    }
    for kw in &manifest.routing.keywords {
        if !plugin.keywords.contains(kw) {
            plugin.keywords.push(kw.clone());
        }
    }
    plugin.manifest = manifest;
    plugin
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_only_plugin_has_declared_commands() {
        let c = Catalog::load(&Sources {
            embedded: vec![(
                "demo.toml".into(),
                "[plugin]\nname = \"demo\"\nversion = \"1.0.0\"\n[[commands]]\nname = \"hello\"\n"
                    .into(),
            )],
            dirs: vec![],
        });
        assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
        let p = c.plugin("demo").unwrap();
        assert_eq!(p.version, "1.0.0");
        assert!(p.command("hello").is_some());
        assert!(p.command("/hello").is_some());
    }

    #[test]
    fn bad_manifest_is_reported_and_others_load() {
        let c = Catalog::load(&Sources {
            embedded: vec![
                ("bad.toml".into(), "[plugin]\nname = 3\n".into()),
                ("ok.toml".into(), "[plugin]\nname = \"ok\"\n".into()),
            ],
            dirs: vec![],
        });
        assert_eq!(c.plugins.len(), 1);
        let e: Vec<_> = c.errors().collect();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].line, Some(2));
        assert!(
            e[0].to_string().contains("<embedded>/bad.toml:2"),
            "{}",
            e[0]
        );
    }

    #[test]
    fn missing_dir_is_an_error() {
        let c = Catalog::load(&Sources {
            embedded: vec![],
            dirs: vec![PathBuf::from("/definitely/not/here")],
        });
        assert_eq!(c.errors().count(), 1);
    }
}
