//! Claude Code's built-in tools, each a process in the plugin process
//! sandbox (`plexus-process`): uid nobody when the node is root, landlock
//! with the system paths read-only and only the run's workspace (plus the
//! manifest's `writePaths`) writable, an empty network namespace unless the
//! manifest grants network, rlimits and a timeout. File logic (line
//! numbers, edits, glob matching) runs here; every read and write of the
//! filesystem happens in the sandboxed process, so the kernel enforces
//! the access, not a check on path strings.

use std::path::{Path, PathBuf};
use std::time::Duration;

use plexus_catalog::{ProcessLimits, SandboxSpec};
use plexus_handler::HandlerError;
use plexus_process::run::{self, Ended, Invocation};
use plexus_process::sandbox::Plan;
use serde_json::Value;

use crate::policy::Builtin;
use crate::workspace::Workspace;

/// Lines a Read returns when the call names no limit.
const READ_LINES: usize = 2000;
/// Longest line a Read returns.
const READ_LINE_CHARS: usize = 2000;
/// Files a Glob returns at most.
const GLOB_FILES: usize = 100;
/// Longest Bash timeout a call may ask for.
const MAX_BASH_MS: u64 = 600_000;

/// Files besides the system paths a process with network may read (TLS
/// roots, name resolution).
const NETWORK_READ: &[&str] = &[
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/host.conf",
];

/// How tool processes of one plugin are confined.
#[derive(Debug, Clone)]
pub struct ToolSandbox {
    pub plugin: String,
    pub spec: SandboxSpec,
    pub limits: ProcessLimits,
    /// Default (and largest) time of one tool process.
    pub timeout: Duration,
    /// Extra readable paths (the manifest's `readPaths`, resolved).
    pub read: Vec<PathBuf>,
    /// Extra writable paths (the manifest's `writePaths`, resolved).
    pub write: Vec<PathBuf>,
}

/// One tool process to run.
struct Proc<'a> {
    tool: &'a str,
    program: &'a str,
    args: Vec<String>,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
    network: bool,
}

/// A finished tool process.
struct Output {
    stdout: String,
    stderr: String,
    code: i32,
}

impl ToolSandbox {
    /// Run `program args` in the workspace, confined. `Err` is a tool
    /// error for the model (the run goes on).
    async fn exec(&self, ws: &Workspace, p: Proc<'_>) -> Result<Output, String> {
        let Proc {
            tool,
            program,
            args,
            stdin,
            timeout,
            network,
        } = p;
        let dir = ws.dir().to_path_buf();
        let env = vec![
            ("PATH".to_string(), plexus_process::DEFAULT_PATH.to_string()),
            ("HOME".to_string(), dir.display().to_string()),
            ("TMPDIR".to_string(), dir.display().to_string()),
            ("LANG".to_string(), "C.UTF-8".to_string()),
        ];
        let inv = Invocation {
            plugin: self.plugin.clone(),
            command: tool.to_string(),
            program: PathBuf::from(program),
            args,
            env,
            workdir: dir.clone(),
            stdin,
            timeout,
            limits: self.limits.clone(),
        };
        let mut spec = self.spec.clone();
        spec.network = network;
        let mut read = vec![dir.clone()];
        read.extend(self.read.iter().cloned());
        if network {
            read.extend(NETWORK_READ.iter().map(PathBuf::from));
        }
        let mut write = vec![dir];
        write.extend(self.write.iter().cloned());
        let plan = Plan::new(&self.limits, &spec, &read, &write);
        let done = match run::run(&inv, plan).await {
            Ok(d) => d,
            Err(HandlerError::Timeout(ms)) => {
                return Err(format!(
                    "{tool} timed out after {ms} ms (its processes were killed)"
                ))
            }
            Err(e) => return Err(format!("{tool}: {e}")),
        };
        // A resource limit reads better as the classifier says it.
        if let Err(e @ HandlerError::LimitExceeded { .. }) =
            run::classify(&done.ended, &done.stderr_tail, &self.limits)
        {
            return Err(format!("{tool}: {e}"));
        }
        let code = match done.ended {
            Ended::Exited(c) => c,
            Ended::Signalled(s) => 128 + s,
        };
        Ok(Output {
            stdout: String::from_utf8_lossy(&done.stdout).into_owned(),
            stderr: done.stderr_tail,
            code,
        })
    }

    /// Run one built-in tool call.
    pub async fn call(
        &self,
        ws: &Workspace,
        tool: Builtin,
        input: &Value,
    ) -> Result<String, String> {
        match tool {
            Builtin::Read => self.read(ws, input).await,
            Builtin::Write => {
                let path = ws.resolve(str_arg(input, "file_path")?);
                let content = str_arg(input, "content")?;
                self.write_file(ws, &path, content).await?;
                Ok(format!(
                    "Wrote {} bytes to {}",
                    content.len(),
                    path.display()
                ))
            }
            Builtin::Edit => self.edit(ws, input).await,
            Builtin::Glob => self.glob(ws, input).await,
            Builtin::Grep => self.grep(ws, input).await,
            Builtin::Bash => self.bash(ws, input).await,
        }
    }

    async fn cat(&self, ws: &Workspace, tool: &str, path: &Path) -> Result<String, String> {
        let out = self
            .exec(
                ws,
                Proc {
                    tool,
                    program: "/bin/cat",
                    args: vec!["--".into(), path.display().to_string()],
                    stdin: None,
                    timeout: self.timeout,
                    network: false,
                },
            )
            .await?;
        if out.code != 0 {
            return Err(failure(&out, &format!("cannot read {}", path.display())));
        }
        Ok(out.stdout)
    }

    async fn read(&self, ws: &Workspace, input: &Value) -> Result<String, String> {
        let path = ws.resolve(str_arg(input, "file_path")?);
        let text = self.cat(ws, "Read", &path).await?;
        let offset = input
            .get("offset")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            .max(1) as usize;
        let limit = input
            .get("limit")
            .and_then(Value::as_u64)
            .map(|l| l as usize)
            .unwrap_or(READ_LINES);
        if text.is_empty() {
            return Ok(format!("({} is empty)", path.display()));
        }
        let mut out = String::new();
        for (i, line) in text.lines().enumerate().skip(offset - 1).take(limit) {
            let line = plexus_llm::error::cut(line, READ_LINE_CHARS);
            out.push_str(&format!("{:>6}\t{line}\n", i + 1));
        }
        if out.is_empty() {
            return Ok(format!(
                "({} has {} lines; none from line {offset})",
                path.display(),
                text.lines().count()
            ));
        }
        Ok(out)
    }

    async fn write_file(&self, ws: &Workspace, path: &Path, content: &str) -> Result<(), String> {
        // No shell sees the path or the content: both are arguments/stdin.
        let script = "mkdir -p -- \"$(dirname -- \"$1\")\" && cat > \"$1\"";
        let out = self
            .exec(
                ws,
                Proc {
                    tool: "Write",
                    program: "/bin/sh",
                    args: vec![
                        "-c".into(),
                        script.into(),
                        "sh".into(),
                        path.display().to_string(),
                    ],
                    stdin: Some(content.as_bytes().to_vec()),
                    timeout: self.timeout,
                    network: false,
                },
            )
            .await?;
        if out.code != 0 {
            return Err(failure(&out, &format!("cannot write {}", path.display())));
        }
        Ok(())
    }

    async fn edit(&self, ws: &Workspace, input: &Value) -> Result<String, String> {
        let path = ws.resolve(str_arg(input, "file_path")?);
        let old = str_arg(input, "old_string")?;
        let new = str_arg(input, "new_string")?;
        let all = input
            .get("replace_all")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if old.is_empty() {
            return Err("old_string is empty".into());
        }
        if old == new {
            return Err("old_string and new_string are the same".into());
        }
        let text = self.cat(ws, "Edit", &path).await?;
        let n = text.matches(old).count();
        let edited = match (n, all) {
            (0, _) => return Err(format!("old_string was not found in {}", path.display())),
            (1, _) | (_, true) => text.replace(old, new),
            (n, false) => {
                return Err(format!(
                    "old_string occurs {n} times in {}; give more context to make it unique, or set replace_all",
                    path.display()
                ))
            }
        };
        self.write_file(ws, &path, &edited).await?;
        Ok(format!(
            "Replaced {} occurrence{} in {}",
            n,
            if n == 1 { "" } else { "s" },
            path.display()
        ))
    }

    async fn glob(&self, ws: &Workspace, input: &Value) -> Result<String, String> {
        let pattern = str_arg(input, "pattern")?;
        let base = input
            .get("path")
            .and_then(Value::as_str)
            .map(|p| ws.resolve(p))
            .unwrap_or_else(|| ws.dir().to_path_buf());
        let matcher = globset::GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .map_err(|e| format!("bad glob pattern {pattern:?}: {e}"))?
            .compile_matcher();
        let out = self
            .exec(
                ws,
                Proc {
                    tool: "Glob",
                    program: "/usr/bin/find",
                    args: vec![
                        base.display().to_string(),
                        "-type".into(),
                        "f".into(),
                        "-printf".into(),
                        "%T@\\t%p\\n".into(),
                    ],
                    stdin: None,
                    timeout: self.timeout,
                    network: false,
                },
            )
            .await?;
        if out.code != 0 && out.stdout.is_empty() {
            return Err(failure(&out, &format!("cannot list {}", base.display())));
        }
        let mut found: Vec<(f64, &str)> = out
            .stdout
            .lines()
            .filter_map(|l| {
                let (t, p) = l.split_once('\t')?;
                let rel = Path::new(p).strip_prefix(&base).ok()?;
                matcher.is_match(rel).then(|| (t.parse().unwrap_or(0.0), p))
            })
            .collect();
        if found.is_empty() {
            return Ok("No files found".into());
        }
        // Newest first, as Claude Code lists them.
        found.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
        let more = found.len().saturating_sub(GLOB_FILES);
        let mut s: String = found
            .iter()
            .take(GLOB_FILES)
            .map(|(_, p)| format!("{p}\n"))
            .collect();
        if more > 0 {
            s.push_str(&format!("({more} more files not shown)\n"));
        }
        Ok(s)
    }

    async fn grep(&self, ws: &Workspace, input: &Value) -> Result<String, String> {
        let pattern = str_arg(input, "pattern")?;
        let base = input
            .get("path")
            .and_then(Value::as_str)
            .map(|p| ws.resolve(p))
            .unwrap_or_else(|| ws.dir().to_path_buf());
        let mode = input
            .get("output_mode")
            .and_then(Value::as_str)
            .unwrap_or("files_with_matches");
        let mut args: Vec<String> = vec!["-r".into(), "-E".into(), "-I".into()];
        args.push(match mode {
            "content" => "-n".into(),
            "count" => "-c".into(),
            "files_with_matches" => "-l".into(),
            other => {
                return Err(format!(
                    "output_mode {other:?} is not content, files_with_matches or count"
                ))
            }
        });
        if input.get("-i").and_then(Value::as_bool).unwrap_or(false) {
            args.push("-i".into());
        }
        if let Some(g) = input.get("glob").and_then(Value::as_str) {
            args.push(format!("--include={g}"));
        }
        args.extend([
            "-e".into(),
            pattern.to_string(),
            "--".into(),
            base.display().to_string(),
        ]);
        let out = self
            .exec(
                ws,
                Proc {
                    tool: "Grep",
                    program: "/usr/bin/grep",
                    args,
                    stdin: None,
                    timeout: self.timeout,
                    network: false,
                },
            )
            .await?;
        match out.code {
            0 => {
                let s = if mode == "count" {
                    out.stdout
                        .lines()
                        .filter(|l| !l.ends_with(":0"))
                        .map(|l| format!("{l}\n"))
                        .collect()
                } else {
                    out.stdout
                };
                Ok(if s.trim().is_empty() {
                    "No matches found".into()
                } else {
                    s
                })
            }
            1 => Ok("No matches found".into()),
            _ => Err(failure(&out, "grep failed")),
        }
    }

    async fn bash(&self, ws: &Workspace, input: &Value) -> Result<String, String> {
        let command = str_arg(input, "command")?;
        let timeout = input
            .get("timeout")
            .and_then(Value::as_u64)
            .map(|ms| Duration::from_millis(ms.clamp(1, MAX_BASH_MS)))
            .unwrap_or(self.timeout);
        let shell = if Path::new("/bin/bash").exists() {
            "/bin/bash"
        } else {
            "/bin/sh"
        };
        let out = self
            .exec(
                ws,
                Proc {
                    tool: "Bash",
                    program: shell,
                    args: vec!["-c".into(), command.to_string()],
                    stdin: None,
                    timeout,
                    network: self.spec.network,
                },
            )
            .await?;
        let mut s = out.stdout.clone();
        if !out.stderr.trim().is_empty() {
            if !s.is_empty() && !s.ends_with('\n') {
                s.push('\n');
            }
            s.push_str(&out.stderr);
        }
        if out.code != 0 {
            return Err(format!("{}\nExit code {}", s.trim_end(), out.code)
                .trim_start()
                .to_string());
        }
        Ok(if s.is_empty() {
            "(no output)".into()
        } else {
            s
        })
    }

    /// `WebFetch`: the URL's body, fetched in the sandbox with network.
    pub async fn web_fetch(&self, ws: &Workspace, input: &Value) -> Result<String, String> {
        let url = str_arg(input, "url")?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("url {url:?} must be http:// or https://"));
        }
        let secs = self.timeout.as_secs().max(1).to_string();
        let max = (self.limits.output_kb.max(1) * 1024).to_string();
        let out = self
            .exec(
                ws,
                Proc {
                    tool: "WebFetch",
                    program: "/usr/bin/curl",
                    args: vec![
                        "-sS".into(),
                        "-L".into(),
                        "--max-time".into(),
                        secs,
                        "--max-filesize".into(),
                        max,
                        "--".into(),
                        url.into(),
                    ],
                    stdin: None,
                    timeout: self.timeout,
                    network: true,
                },
            )
            .await?;
        if out.code != 0 {
            return Err(failure(&out, &format!("cannot fetch {url}")));
        }
        Ok(out.stdout)
    }
}

fn str_arg<'a>(input: &'a Value, key: &str) -> Result<&'a str, String> {
    input
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("the input needs {key} (a string)"))
}

fn failure(out: &Output, what: &str) -> String {
    let detail = out.stderr.trim();
    if detail.is_empty() {
        format!("{what} (exit code {})", out.code)
    } else {
        format!("{what}: {detail}")
    }
}
