//! Reading Claude Code plugin directories exactly as their authors wrote them:
//! `.claude-plugin/plugin.json`, `agents/*.md`, `commands/*.md` (YAML
//! frontmatter, or none), and `.mcp.json`.

use std::path::{Path, PathBuf};

use serde_norway::Value;

use crate::model::{Agent, Command, McpServer, ModelTier};
use crate::Diagnostic;

/// What `plugin.json` says about the plugin.
#[derive(Debug, Clone, Default)]
pub struct ClaudeManifest {
    pub name: String,
    pub version: String,
    pub description: String,
    pub keywords: Vec<String>,
}

/// A plugin directory's raw contents.
#[derive(Debug, Clone, Default)]
pub struct ClaudePlugin {
    pub dir: PathBuf,
    pub manifest: ClaudeManifest,
    pub agents: Vec<Agent>,
    pub commands: Vec<Command>,
    pub mcp_servers: Vec<McpServer>,
}

/// True when `dir` looks like a Claude Code plugin.
pub fn is_plugin_dir(dir: &Path) -> bool {
    dir.join(".claude-plugin").join("plugin.json").is_file()
}

/// Load one plugin directory. Fatal problems (no readable `plugin.json`)
/// return `Err`; per-file problems become diagnostics and the rest loads.
pub fn load_plugin_dir(
    dir: &Path,
    diags: &mut Vec<Diagnostic>,
) -> Result<ClaudePlugin, Diagnostic> {
    let pj = dir.join(".claude-plugin").join("plugin.json");
    let text = std::fs::read_to_string(&pj)
        .map_err(|e| Diagnostic::error(None, &pj, None, format!("cannot read: {e}")))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Diagnostic::error(None, &pj, Some(e.line()), format!("invalid JSON: {e}")))?;
    let name = json
        .get("name")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .ok_or_else(|| {
            Diagnostic::error(None, &pj, None, "missing string field \"name\"".into())
        })?;
    let manifest = ClaudeManifest {
        version: json
            .get("version")
            .and_then(|v| v.as_str())
            .unwrap_or("0.0.0")
            .to_string(),
        description: json
            .get("description")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string(),
        keywords: json
            .get("keywords")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|k| k.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        name: name.clone(),
    };

    let mut plugin = ClaudePlugin {
        dir: dir.to_path_buf(),
        manifest,
        ..Default::default()
    };
    for path in md_files(&dir.join("agents"), &name, diags) {
        if let Some(doc) = read_doc(&path, &name, diags) {
            plugin.agents.push(doc.into_agent(path));
        }
    }
    for path in md_files(&dir.join("commands"), &name, diags) {
        if let Some(doc) = read_doc(&path, &name, diags) {
            plugin.commands.push(doc.into_command(path));
        }
    }
    let mcp = dir.join(".mcp.json");
    if mcp.is_file() {
        match read_mcp(&mcp) {
            Ok(servers) => plugin.mcp_servers = servers,
            Err(d) => diags.push(d.for_plugin(&name)),
        }
    }
    Ok(plugin)
}

fn md_files(dir: &Path, plugin: &str, diags: &mut Vec<Diagnostic>) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut out = vec![];
    for entry in rd {
        match entry {
            Ok(e) => {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "md") && p.is_file() {
                    out.push(p);
                }
            }
            Err(e) => diags.push(Diagnostic::error(
                Some(plugin),
                dir,
                None,
                format!("cannot list directory: {e}"),
            )),
        }
    }
    out.sort();
    out
}

/// A markdown definition file split into frontmatter fields and body.
#[derive(Debug, Default)]
struct Doc {
    stem: String,
    fields: serde_norway::Mapping,
    body: String,
}

fn read_doc(path: &Path, plugin: &str, diags: &mut Vec<Diagnostic>) -> Option<Doc> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            diags.push(Diagnostic::error(
                Some(plugin),
                path,
                None,
                format!("cannot read: {e}"),
            ));
            return None;
        }
    };
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    Some(parse_doc(&stem, &text, |line, msg| {
        diags.push(Diagnostic::warning(Some(plugin), path, line, msg))
    }))
}

/// Split `text` into frontmatter and body, tolerating the quirks of real files:
/// no frontmatter at all, a `# Title` before the frontmatter, and YAML that a
/// strict parser refuses (then the top-level `key: value` lines are kept).
fn parse_doc(stem: &str, text: &str, mut warn: impl FnMut(Option<usize>, String)) -> Doc {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text.lines().collect();
    // Find an opening `---` at the top, or after a title and blank lines.
    let mut open = None;
    for (i, l) in lines.iter().enumerate().take(8) {
        let t = l.trim();
        if t == "---" {
            open = Some(i);
            break;
        }
        if !(t.is_empty() || t.starts_with('#')) {
            break;
        }
    }
    let close = open.and_then(|o| {
        lines
            .iter()
            .enumerate()
            .skip(o + 1)
            .find(|(_, l)| l.trim_end() == "---")
            .map(|(i, _)| i)
    });
    let (fields, body) = match (open, close) {
        (Some(o), Some(c)) => {
            if o > 0 {
                warn(
                    Some(o + 1),
                    "frontmatter does not start on line 1 (a title precedes it); read anyway"
                        .into(),
                );
            }
            let yaml = lines[o + 1..c].join("\n");
            let fields = match serde_norway::from_str::<Value>(&yaml) {
                Ok(Value::Mapping(m)) => m,
                Ok(Value::Null) => serde_norway::Mapping::new(),
                Ok(_) => {
                    warn(Some(o + 1), "frontmatter is not a mapping; ignored".into());
                    serde_norway::Mapping::new()
                }
                Err(e) => {
                    let line = e.location().map(|l| l.line() + o + 1);
                    warn(
                        line,
                        format!("frontmatter is not valid YAML ({e}); kept its simple `key: value` lines"),
                    );
                    lenient_fields(&lines[o + 1..c])
                }
            };
            let title_lines = lines[..o].join("\n");
            let body = format!("{}\n{}", title_lines, lines[c + 1..].join("\n"));
            (fields, body)
        }
        _ => {
            warn(
                Some(1),
                format!("no YAML frontmatter; name taken from the file name ({stem})"),
            );
            (serde_norway::Mapping::new(), text.to_string())
        }
    };
    Doc {
        stem: stem.to_string(),
        fields,
        body: body.trim().to_string(),
    }
}

/// Top-level `key: value` pairs of YAML a strict parser refused.
fn lenient_fields(lines: &[&str]) -> serde_norway::Mapping {
    let mut m = serde_norway::Mapping::new();
    for l in lines {
        if l.starts_with(' ') || l.starts_with('\t') || l.starts_with('-') {
            continue;
        }
        if let Some((k, v)) = l.split_once(':') {
            let v = v.trim().trim_matches('"').trim_matches('\'');
            if !k.trim().is_empty() && !v.is_empty() && !v.starts_with('|') && !v.starts_with('>') {
                m.insert(Value::String(k.trim().into()), Value::String(v.into()));
            }
        }
    }
    m
}

impl Doc {
    fn str_field(&self, keys: &[&str]) -> Option<String> {
        keys.iter().find_map(|k| match self.fields.get(*k) {
            Some(Value::String(s)) => Some(s.trim().to_string()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(Value::Sequence(seq)) => Some(
                seq.iter()
                    .filter_map(scalar_string)
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
            _ => None,
        })
    }

    fn list_field(&self, keys: &[&str]) -> Vec<String> {
        let mut out = vec![];
        for k in keys {
            match self.fields.get(*k) {
                Some(Value::Sequence(seq)) => {
                    for v in seq {
                        match v {
                            Value::Mapping(m) => {
                                // e.g. examples as {user: ..., assistant: ...} or arguments as {name, description}
                                for (_, mv) in m {
                                    if let Some(s) = scalar_string(mv) {
                                        out.push(s);
                                    }
                                }
                            }
                            other => out.extend(scalar_string(other)),
                        }
                    }
                }
                Some(Value::String(s)) => out.extend(
                    s.split(',')
                        .map(|x| x.trim().to_string())
                        .filter(|x| !x.is_empty()),
                ),
                _ => {}
            }
        }
        out
    }

    /// Name from frontmatter, else the file stem.
    fn name(&self) -> String {
        self.str_field(&["name"])
            .unwrap_or_else(|| self.stem.clone())
    }

    /// Description from frontmatter, else the first paragraph after the title.
    fn description(&self) -> String {
        if let Some(d) = self.str_field(&["description"]) {
            return d;
        }
        self.body
            .split("\n\n")
            .map(str::trim)
            .find(|p| !p.is_empty() && !p.starts_with('#') && !p.starts_with("---"))
            .unwrap_or_default()
            .to_string()
    }

    /// Model from frontmatter, else from a markdown table row such as `| **Model** | sonnet |`.
    fn model(&self) -> Option<ModelTier> {
        if let Some(m) = self.str_field(&["model"]) {
            return ModelTier::parse_loose(&m);
        }
        self.body.lines().find_map(|l| {
            let lower = l.to_ascii_lowercase();
            if lower.trim_start().starts_with('|') && lower.contains("model") {
                let cells: Vec<&str> = lower.split('|').map(str::trim).collect();
                let key = cells.iter().position(|c| c.trim_matches('*') == "model")?;
                cells.get(key + 1).and_then(|v| ModelTier::parse_loose(v))
            } else {
                None
            }
        })
    }

    fn into_agent(self, file: PathBuf) -> Agent {
        Agent {
            name: self.name(),
            description: self.description(),
            model: self.model(),
            tools: self.list_field(&["tools", "allowed-tools"]),
            triggers: self.list_field(&["triggers", "trigger"]),
            keywords: self.list_field(&["keywords", "tags"]),
            examples: self.list_field(&["examples"]),
            capabilities: self.list_field(&["capabilities"]),
            when_to_use: self.str_field(&["whenToUse", "when_to_use"]),
            category: self.str_field(&["category", "agent_type", "type"]),
            body: self.body,
            file: Some(file),
        }
    }

    fn into_command(self, file: PathBuf) -> Command {
        let fm_name = self.str_field(&["name"]);
        let alias = fm_name.filter(|n| *n != self.stem);
        let idempotent = !matches!(self.fields.get("idempotent"), Some(Value::Bool(false)));
        Command {
            name: self.stem.clone(),
            alias,
            description: self.description(),
            argument_hint: self.str_field(&["argument-hint", "argument-help"]),
            model: self.model(),
            tools: self.list_field(&["allowed-tools", "tools"]),
            triggers: self.list_field(&["triggers", "trigger", "aliases"]),
            keywords: self.list_field(&["keywords", "tags"]),
            examples: self.list_field(&["examples"]),
            when_to_use: self.str_field(&["whenToUse", "when_to_use"]),
            idempotent,
            body: self.body,
            file: Some(file),
        }
    }
}

fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn read_mcp(path: &Path) -> Result<Vec<McpServer>, Diagnostic> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Diagnostic::error(None, path, None, format!("cannot read: {e}")))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Diagnostic::error(None, path, Some(e.line()), format!("invalid JSON: {e}")))?;
    let Some(servers) = json.get("mcpServers").and_then(|v| v.as_object()) else {
        return Err(Diagnostic::error(
            None,
            path,
            None,
            "missing object field \"mcpServers\"".into(),
        ));
    };
    let mut out = vec![];
    for (name, s) in servers {
        let strs = |k: &str| -> Vec<String> {
            s.get(k)
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        out.push(McpServer {
            name: name.clone(),
            command: s
                .get("command")
                .and_then(|v| v.as_str())
                .map(str::to_string),
            args: strs("args"),
            url: s.get("url").and_then(|v| v.as_str()).map(str::to_string),
            env: s
                .get("env")
                .and_then(|v| v.as_object())
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default(),
            description: s
                .get("description")
                .and_then(|v| v.as_str())
                .map(str::to_string),
        });
    }
    Ok(out)
}

impl Diagnostic {
    fn for_plugin(mut self, plugin: &str) -> Self {
        self.plugin = Some(plugin.to_string());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> (Doc, Vec<String>) {
        let mut w = vec![];
        let d = parse_doc("file-stem", text, |l, m| w.push(format!("{l:?}: {m}")));
        (d, w)
    }

    #[test]
    fn frontmatter_fields() {
        let (d, w) = doc("---\nname: a\ndescription: >\n  folded\n  text\nmodel: opus\ntools:\n  - Read\n---\n# Body\n");
        assert!(w.is_empty());
        let a = d.into_agent(PathBuf::from("x"));
        assert_eq!(a.name, "a");
        assert_eq!(a.description, "folded text");
        assert_eq!(a.model, Some(ModelTier::Opus));
        assert_eq!(a.tools, vec!["Read"]);
    }

    #[test]
    fn no_frontmatter_uses_stem_and_first_paragraph_and_table_model() {
        let (d, w) = doc("# Title Agent\n\nDoes things well.\n\n| Field | Value |\n|---|---|\n| **Model** | sonnet |\n");
        assert_eq!(w.len(), 1);
        let a = d.into_agent(PathBuf::from("x"));
        assert_eq!(a.name, "file-stem");
        assert_eq!(a.description, "Does things well.");
        assert_eq!(a.model, Some(ModelTier::Sonnet));
    }

    #[test]
    fn title_before_frontmatter() {
        let (d, w) = doc("# Tag Manager\n\n---\nname: tag-manager\nmodel: haiku\n---\nbody\n");
        assert_eq!(w.len(), 1, "{w:?}");
        let a = d.into_agent(PathBuf::from("x"));
        assert_eq!(a.name, "tag-manager");
        assert_eq!(a.model, Some(ModelTier::Haiku));
    }

    #[test]
    fn invalid_yaml_keeps_simple_lines() {
        let (d, w) = doc("---\nname: jira:batch\ndescription: Bulk ops\nx:\n  - name: y\n    description: Number (default: 25)\n---\nbody");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("Some(6)"), "{w:?}");
        let c = d.into_command(PathBuf::from("x"));
        assert_eq!(c.name, "file-stem");
        assert_eq!(c.alias.as_deref(), Some("jira:batch"));
        assert_eq!(c.description, "Bulk ops");
    }
}
