//! Which MCP servers a plugin has and how to reach them: the manifest's
//! `[handler] kind = "mcp"` servers and the Claude Code plugin's `.mcp.json`,
//! with `${VAR}` expansion and relative paths resolved. Pure: the
//! environment comes in as a function.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plexus_catalog::{McpServerEntry, McpSpec, Plugin, ProcessLimits, SandboxSpec};

/// How to reach one server.
#[derive(Debug, Clone, PartialEq)]
pub enum Transport {
    /// A child process speaking MCP on its stdin/stdout.
    Stdio {
        program: String,
        args: Vec<String>,
        /// Set on top of the node's environment.
        env: BTreeMap<String, String>,
        cwd: Option<PathBuf>,
    },
    /// A streamable HTTP endpoint.
    Http { url: String },
}

impl Transport {
    /// `stdio` or `http`.
    pub fn kind(&self) -> &'static str {
        match self {
            Transport::Stdio { .. } => "stdio",
            Transport::Http { .. } => "http",
        }
    }
}

/// One server of a plugin, ready to connect to.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub name: String,
    pub transport: Transport,
    /// Where it was declared (for error messages).
    pub declared_in: String,
    /// A stdio server confined like a process plugin (`[handler.sandbox]`).
    pub sandbox: Option<Sandbox>,
}

/// How a sandboxed stdio server is confined, its paths resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Sandbox {
    pub spec: SandboxSpec,
    pub limits: ProcessLimits,
    /// Readable (and executable) besides the system directories: the
    /// declaring file's directory, the working directory, the program's
    /// directory and `readPaths`.
    pub read: Vec<PathBuf>,
    /// `writePaths`.
    pub write: Vec<PathBuf>,
    /// Where it runs: `cwd`, else the declaring file's directory.
    pub workdir: PathBuf,
}

impl ServerConfig {
    /// A short description for errors: `server "time" (stdio: /x/mcp-server-time)`.
    pub fn describe(&self) -> String {
        match &self.transport {
            Transport::Stdio { program, .. } => {
                format!("MCP server {:?} (stdio: {program})", self.name)
            }
            Transport::Http { url } => format!("MCP server {:?} (http: {url})", self.name),
        }
    }
}

/// Why a plugin's MCP servers cannot be set up.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("plugin {plugin} has handler kind \"mcp\" but declares no MCP server: add command or url under [handler], [[handler.servers]], or a .mcp.json in its Claude Code directory")]
    NoServers { plugin: String },
    #[error("{at}: {message}")]
    Invalid { at: String, message: String },
}

/// The servers of `plugin`: the manifest's first, then those of its
/// `.mcp.json` whose names are not taken. `env` looks up the node's
/// environment variables.
pub fn servers(
    plugin: &Plugin,
    spec: &McpSpec,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<ServerConfig>, ConfigError> {
    let manifest_dir = plugin
        .manifest_file
        .as_deref()
        .filter(|f| !f.starts_with("<embedded>"))
        .and_then(Path::parent)
        .map(absolute);
    let claude_dir = plugin.claude_dir.as_deref().map(absolute);
    let mut out: Vec<ServerConfig> = vec![];
    let manifest_label = plugin
        .manifest_file
        .as_ref()
        .map(|f| f.display().to_string())
        .unwrap_or_else(|| format!("manifest of {}", plugin.name));
    for e in spec.entries(&plugin.name) {
        let base = manifest_dir.clone().or_else(|| claude_dir.clone());
        let root = claude_dir.clone().or_else(|| manifest_dir.clone());
        let at = format!("{manifest_label}: [handler] server {:?}", e.name);
        out.push(build(&e, &at, base.as_deref(), root.as_deref(), spec, env)?);
    }
    for s in &plugin.mcp_servers {
        if out.iter().any(|o| o.name == s.name) {
            continue;
        }
        let file = claude_dir
            .as_ref()
            .map(|d| d.join(".mcp.json").display().to_string())
            .unwrap_or_else(|| ".mcp.json".into());
        let at = format!("{file}: server {:?}", s.name);
        let e = McpServerEntry {
            name: s.name.clone(),
            command: s.command.clone(),
            args: s.args.clone(),
            env: s.env.iter().cloned().collect(),
            cwd: None,
            url: s.url.clone(),
        };
        if e.command.is_none() && e.url.is_none() {
            return Err(ConfigError::Invalid {
                at,
                message: "needs \"command\" (stdio) or \"url\" (HTTP)".into(),
            });
        }
        out.push(build(
            &e,
            &at,
            claude_dir.as_deref(),
            claude_dir.as_deref(),
            spec,
            env,
        )?);
    }
    if out.is_empty() {
        return Err(ConfigError::NoServers {
            plugin: plugin.name.clone(),
        });
    }
    Ok(out)
}

fn build(
    e: &McpServerEntry,
    at: &str,
    base: Option<&Path>,
    root: Option<&Path>,
    spec: &McpSpec,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ServerConfig, ConfigError> {
    let vars = |name: &str| -> Option<String> {
        if name == "CLAUDE_PLUGIN_ROOT" {
            if let Some(r) = root {
                return Some(r.display().to_string());
            }
        }
        env(name)
    };
    let x = |what: &str, s: &str| {
        expand(s, &vars).map_err(|m| ConfigError::Invalid {
            at: at.to_string(),
            message: format!("{what}: {m}"),
        })
    };
    let transport = match (&e.command, &e.url) {
        (Some(c), None) => {
            let program = x("command", c)?;
            if program.trim().is_empty() {
                return Err(ConfigError::Invalid {
                    at: at.to_string(),
                    message: "command is empty".into(),
                });
            }
            let mut env_out = BTreeMap::new();
            for (k, v) in &e.env {
                env_out.insert(k.clone(), x(&format!("env {k}"), v)?);
            }
            Transport::Stdio {
                program: resolve_path(&program, base),
                args: e
                    .args
                    .iter()
                    .map(|a| x("args", a))
                    .collect::<Result<_, _>>()?,
                env: env_out,
                cwd: match &e.cwd {
                    Some(c) => {
                        let c = PathBuf::from(x("cwd", c)?);
                        Some(match base {
                            Some(b) if c.is_relative() => b.join(c),
                            _ => c,
                        })
                    }
                    None => None,
                },
            }
        }
        (None, Some(u)) => {
            let url = x("url", u)?;
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::Invalid {
                    at: at.to_string(),
                    message: format!("url {url:?} must start with http:// or https://"),
                });
            }
            Transport::Http { url }
        }
        _ => {
            return Err(ConfigError::Invalid {
                at: at.to_string(),
                message: "give either command (stdio) or url (HTTP)".into(),
            })
        }
    };
    let sandbox = match (&spec.sandbox, &transport) {
        (Some(sb), Transport::Stdio { program, cwd, .. }) => {
            let resolve = |p: String| match base {
                Some(b) if Path::new(&p).is_relative() => b.join(p),
                _ => PathBuf::from(p),
            };
            let dir = base
                .map(Path::to_path_buf)
                .unwrap_or_else(|| absolute(Path::new(".")));
            let workdir = cwd.clone().unwrap_or_else(|| dir.clone());
            let mut read = vec![dir, workdir.clone()];
            if let Some(d) = Path::new(program)
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
            {
                read.push(d.to_path_buf());
            }
            for p in &sb.read_paths {
                read.push(resolve(x("sandbox.readPaths", p)?));
            }
            let write = sb
                .write_paths
                .iter()
                .map(|p| x("sandbox.writePaths", p).map(resolve))
                .collect::<Result<_, _>>()?;
            Some(Sandbox {
                spec: sb.clone(),
                limits: spec.limits.clone().unwrap_or_default(),
                read,
                write,
                workdir,
            })
        }
        _ => None,
    };
    Ok(ServerConfig {
        name: e.name.clone(),
        transport,
        declared_in: at.to_string(),
        sandbox,
    })
}

/// A bare name is looked up on `PATH` at spawn time; a relative path with a
/// `/` is relative to the declaring file's directory.
fn resolve_path(p: &str, base: Option<&Path>) -> String {
    let path = Path::new(p);
    match base {
        Some(b) if path.is_relative() && p.contains('/') => b.join(path).display().to_string(),
        _ => p.to_string(),
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Expand `${VAR}` and `${VAR:-default}` (the default may itself hold
/// `${...}`), as Claude Code does in `.mcp.json`. An unset variable without a
/// default is an error naming it.
pub fn expand(s: &str, vars: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        // Find the matching brace, allowing nested `${...}` in a default.
        let mut depth = 1usize;
        let mut end = None;
        let bytes = after.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'$' && bytes.get(i + 1) == Some(&b'{') {
                depth += 1;
                i += 2;
                continue;
            }
            if bytes[i] == b'}' {
                depth -= 1;
                if depth == 0 {
                    end = Some(i);
                    break;
                }
            }
            i += 1;
        }
        let Some(end) = end else {
            return Err(format!("unclosed \"${{\" in {s:?}"));
        };
        let inner = &after[..end];
        let (name, default) = match inner.find(":-") {
            Some(i) => (&inner[..i], Some(&inner[i + 2..])),
            None => (inner, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("bad variable name {name:?} in {s:?}"));
        }
        match (vars(name).filter(|v| !v.is_empty()), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(&expand(d, vars)?),
            (None, None) => {
                return Err(format!(
                "environment variable {name} is not set (write ${{{name}:-default}} for a default)"
            ))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_catalog::{Catalog, HandlerSpec, Sources};

    fn vars(name: &str) -> Option<String> {
        match name {
            "HOME" => Some("/home/u".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expansion_follows_claude_code() {
        assert_eq!(expand("${HOME}/x", &vars).unwrap(), "/home/u/x");
        assert_eq!(expand("a${NOPE:-b}c", &vars).unwrap(), "abc");
        assert_eq!(expand("${EMPTY:-d}", &vars).unwrap(), "d");
        assert_eq!(
            expand("${NOPE:-${HOME}/v}/bin", &vars).unwrap(),
            "/home/u/v/bin"
        );
        assert_eq!(expand("no vars", &vars).unwrap(), "no vars");
        let e = expand("--token ${API_TOKEN}", &vars).unwrap_err();
        assert!(e.contains("API_TOKEN is not set"), "{e}");
        assert!(expand("${HOME", &vars).unwrap_err().contains("unclosed"));
        assert!(expand("${A B}", &vars)
            .unwrap_err()
            .contains("bad variable"));
    }

    fn catalog_in(dir: &Path) -> Catalog {
        Catalog::load(&Sources {
            embedded: vec![],
            dirs: vec![dir.to_path_buf()],
        })
    }

    fn spec_of(p: &Plugin) -> McpSpec {
        match &p.manifest.handler {
            HandlerSpec::Mcp(s) => (**s).clone(),
            other => panic!("not mcp: {other:?}"),
        }
    }

    #[test]
    fn claude_code_mcp_json_servers_are_used_with_the_plugin_root() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("clock");
        std::fs::create_dir_all(p.join(".claude-plugin")).unwrap();
        std::fs::write(
            p.join(".claude-plugin/plugin.json"),
            r#"{"name":"clock","version":"1.0.0","description":"Clock"}"#,
        )
        .unwrap();
        std::fs::write(
            p.join(".mcp.json"),
            r#"{"mcpServers":{"time":{"command":"${CLAUDE_PLUGIN_ROOT}/bin/server","args":["--home","${HOME}"],"env":{"X":"${NOPE:-1}"}},
                "web":{"type":"http","url":"http://127.0.0.1:1/mcp"}}}"#,
        )
        .unwrap();
        std::fs::write(
            p.join("plexus.toml"),
            "[plugin]\nname = \"clock\"\n[handler]\nkind = \"mcp\"\n",
        )
        .unwrap();
        let c = catalog_in(d.path());
        let plugin = c.plugin("clock").unwrap();
        let s = servers(plugin, &spec_of(plugin), &vars).unwrap();
        let root = std::fs::canonicalize(&p).unwrap();
        assert_eq!(s.len(), 2);
        let time = s.iter().find(|s| s.name == "time").unwrap();
        assert_eq!(
            time.transport,
            Transport::Stdio {
                program: format!("{}/bin/server", root.display()),
                args: vec!["--home".into(), "/home/u".into()],
                env: [("X".to_string(), "1".to_string())].into(),
                cwd: None,
            }
        );
        let web = s.iter().find(|s| s.name == "web").unwrap();
        assert_eq!(
            web.transport,
            Transport::Http {
                url: "http://127.0.0.1:1/mcp".into()
            }
        );
    }

    #[test]
    fn manifest_servers_resolve_relative_paths_and_name_bad_variables() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("git.toml"),
            "[plugin]\nname = \"git\"\n[handler]\nkind = \"mcp\"\ncommand = \"../venv/bin/mcp-server-git\"\ncwd = \"work\"\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("bad.toml"),
            "[plugin]\nname = \"bad\"\n[handler]\nkind = \"mcp\"\ncommand = \"srv\"\nargs = [\"${SECRET_TOKEN}\"]\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("none.toml"),
            "[plugin]\nname = \"none\"\n[handler]\nkind = \"mcp\"\n",
        )
        .unwrap();
        let c = catalog_in(d.path());
        let base = std::fs::canonicalize(d.path()).unwrap();
        let git = c.plugin("git").unwrap();
        let s = servers(git, &spec_of(git), &vars).unwrap();
        let Transport::Stdio { program, cwd, .. } = &s[0].transport else {
            panic!()
        };
        assert_eq!(
            program,
            &format!("{}/../venv/bin/mcp-server-git", base.display())
        );
        assert_eq!(cwd.as_deref(), Some(base.join("work").as_path()));

        let bad = c.plugin("bad").unwrap();
        let e = servers(bad, &spec_of(bad), &vars).unwrap_err().to_string();
        assert!(e.contains("bad.toml"), "{e}");
        assert!(e.contains("SECRET_TOKEN is not set"), "{e}");

        let none = c.plugin("none").unwrap();
        let e = servers(none, &spec_of(none), &vars)
            .unwrap_err()
            .to_string();
        assert!(e.contains("declares no MCP server"), "{e}");
    }
}
