//! The `[handler] kind = "process"` section of a manifest: which executable
//! each command runs, with which arguments, environment, limits and sandbox.
//!
//! Paths that are relative are taken from the manifest's directory, so a
//! plugin directory can ship its scripts next to its manifest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A plugin whose commands run real executables.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProcessSpec {
    /// Working directory of every process (default: the manifest's directory).
    #[serde(default)]
    pub workdir: Option<String>,
    /// The only environment variables a process gets, with their values.
    /// `PATH` defaults to `/usr/local/bin:/usr/bin:/bin` unless set here.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Variables copied from the node's environment when set there.
    #[serde(default)]
    pub inherit_env: Vec<String>,
    /// Default wall-clock limit of one command, in ms.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    #[serde(default)]
    pub limits: ProcessLimits,
    #[serde(default)]
    pub sandbox: SandboxSpec,
    /// One-shot commands by name: each call starts a fresh process.
    #[serde(default)]
    pub commands: BTreeMap<String, ProcessCommand>,
    /// A server the plugin keeps running: commands without an entry in
    /// `commands` go to it as line-delimited JSON requests.
    #[serde(default)]
    pub server: Option<ProcessServer>,
}

fn default_timeout() -> u64 {
    10_000
}

/// How one command runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProcessCommand {
    /// The executable: a path (relative to the manifest's directory when it
    /// contains a `/`) or a bare name looked up in the process's `PATH`.
    pub program: String,
    /// Arguments; `{field}` (or `{a.b}`) is replaced by that input field,
    /// which must be a string, number or boolean. `{{` and `}}` are literal
    /// braces. No shell is involved.
    #[serde(default)]
    pub args: Vec<String>,
    /// Overrides the handler's `timeoutMs`.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Whether the input JSON is written to the process's stdin (default true).
    #[serde(default = "yes")]
    pub stdin: bool,
}

fn yes() -> bool {
    true
}

/// A long-running server process (line-delimited JSON over stdin/stdout).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProcessServer {
    pub program: String,
    /// Fixed arguments (no templating: the server is started once).
    #[serde(default)]
    pub args: Vec<String>,
}

/// Resource limits (setrlimit) of every process; 0 means no limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProcessLimits {
    /// CPU seconds (RLIMIT_CPU); for a server, over its whole life.
    #[serde(default = "lim_cpu")]
    pub cpu_secs: u64,
    /// Address space in MiB (RLIMIT_AS).
    #[serde(default = "lim_mem")]
    pub memory_mb: u64,
    /// Largest file the process may write, in MiB (RLIMIT_FSIZE).
    #[serde(default = "lim_fsize")]
    pub file_size_mb: u64,
    /// Processes (threads included) the sandbox may hold (RLIMIT_NPROC).
    #[serde(default = "lim_nproc")]
    pub processes: u64,
    /// Largest stdout (and stderr kept), in KiB; beyond it the process is killed.
    #[serde(default = "lim_output")]
    pub output_kb: u64,
    /// Open files (RLIMIT_NOFILE).
    #[serde(default = "lim_nofile")]
    pub open_files: u64,
}

fn lim_cpu() -> u64 {
    10
}
fn lim_mem() -> u64 {
    1024
}
fn lim_fsize() -> u64 {
    64
}
fn lim_nproc() -> u64 {
    64
}
fn lim_output() -> u64 {
    1024
}
fn lim_nofile() -> u64 {
    256
}

impl Default for ProcessLimits {
    fn default() -> Self {
        ProcessLimits {
            cpu_secs: lim_cpu(),
            memory_mb: lim_mem(),
            file_size_mb: lim_fsize(),
            processes: lim_nproc(),
            output_kb: lim_output(),
            open_files: lim_nofile(),
        }
    }
}

/// Isolation beyond resource limits, applied where the kernel allows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SandboxSpec {
    /// Let the process use the network (default false: a new, empty
    /// network namespace).
    #[serde(default)]
    pub network: bool,
    /// Restrict the filesystem with landlock (default true).
    #[serde(default = "yes")]
    pub landlock: bool,
    /// Extra paths the process may read (and execute), besides the system
    /// directories, the manifest's directory and the working directory.
    #[serde(default)]
    pub read_paths: Vec<String>,
    /// Paths the process may write (and create files in).
    #[serde(default)]
    pub write_paths: Vec<String>,
}

impl Default for SandboxSpec {
    fn default() -> Self {
        SandboxSpec {
            network: false,
            landlock: true,
            read_paths: vec![],
            write_paths: vec![],
        }
    }
}

impl ProcessSpec {
    /// Checks that types alone cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if self.commands.is_empty() && self.server.is_none() {
            return Err(
                "handler (process) declares neither [handler.commands.NAME] nor [handler.server]"
                    .into(),
            );
        }
        if self.timeout_ms == 0 {
            return Err("handler.timeoutMs must be > 0".into());
        }
        for (name, c) in &self.commands {
            if c.program.trim().is_empty() {
                return Err(format!("handler.commands.{name}.program is empty"));
            }
            if c.timeout_ms == Some(0) {
                return Err(format!("handler.commands.{name}.timeoutMs must be > 0"));
            }
            for (i, a) in c.args.iter().enumerate() {
                crate::process::check_template(a)
                    .map_err(|e| format!("handler.commands.{name}.args[{i}] {a:?}: {e}"))?;
            }
        }
        if let Some(s) = &self.server {
            if s.program.trim().is_empty() {
                return Err("handler.server.program is empty".into());
            }
        }
        for k in self.env.keys().chain(self.inherit_env.iter()) {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(format!("handler.env: {k:?} is not a valid variable name"));
            }
        }
        if self.limits.output_kb == 0 {
            return Err("handler.limits.outputKb must be > 0".into());
        }
        Ok(())
    }
}

/// One piece of an argument template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    Literal(String),
    /// An input field path (`a.b` → `["a", "b"]`).
    Field(Vec<String>),
}

/// Split an argument template into literal text and `{field}` references.
pub fn parse_template(t: &str) -> Result<Vec<TemplatePart>, String> {
    let mut parts = vec![];
    let mut lit = String::new();
    let mut chars = t.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '{' if chars.peek().map(|p| p.1) == Some('{') => {
                chars.next();
                lit.push('{');
            }
            '}' if chars.peek().map(|p| p.1) == Some('}') => {
                chars.next();
                lit.push('}');
            }
            '{' => {
                let rest = &t[i + 1..];
                let Some(end) = rest.find('}') else {
                    return Err(format!("unclosed '{{' at byte {i}"));
                };
                let name = &rest[..end];
                let path: Vec<String> = name.split('.').map(str::to_string).collect();
                if path.iter().any(|s| {
                    s.is_empty()
                        || !s
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                }) {
                    return Err(format!(
                        "{{{name}}} is not a field name (a-z, 0-9, _, -, dots between)"
                    ));
                }
                if !lit.is_empty() {
                    parts.push(TemplatePart::Literal(std::mem::take(&mut lit)));
                }
                parts.push(TemplatePart::Field(path));
                for _ in 0..name.chars().count() + 1 {
                    chars.next();
                }
            }
            '}' => return Err(format!("lone '}}' at byte {i} (write '}}}}')")),
            c => lit.push(c),
        }
    }
    if !lit.is_empty() {
        parts.push(TemplatePart::Literal(lit));
    }
    Ok(parts)
}

/// Whether an argument template is well formed.
pub fn check_template(t: &str) -> Result<(), String> {
    parse_template(t).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_split_into_literals_and_fields() {
        assert_eq!(
            parse_template("--path={file.name}!").unwrap(),
            vec![
                TemplatePart::Literal("--path=".into()),
                TemplatePart::Field(vec!["file".into(), "name".into()]),
                TemplatePart::Literal("!".into()),
            ]
        );
        assert_eq!(
            parse_template("{{x}}").unwrap(),
            vec![TemplatePart::Literal("{x}".into())]
        );
        assert!(parse_template("{open").unwrap_err().contains("unclosed"));
        assert!(parse_template("a}b").unwrap_err().contains("lone"));
        assert!(parse_template("{$(rm)}")
            .unwrap_err()
            .contains("not a field"));
    }
}
