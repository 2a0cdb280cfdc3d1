//! `plexus`: run a node, start a local cluster, inspect and drive it.
//!
//! Exit codes: 0 success, 1 the operation failed (the cluster said no, a node
//! is unreachable), 2 usage or configuration error (bad flag, bad file, bad
//! JSON input).

mod ask_cmd;
mod bench_cmd;
mod catalog_cmd;
mod client;
mod defaults;
mod exec_cmd;
mod health_cmd;
mod node_cmd;
#[cfg(feature = "otlp")]
mod otlp;
mod route_cmd;
mod run_cmd;
mod simulate_cmd;
mod state_cmd;
mod status_cmd;
mod stream_out;
mod token_cmd;
mod up_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// A distributed plugin cluster: host plugins on several nodes, route requests
/// to them and run them resiliently.
#[derive(Parser)]
#[command(name = "plexus", version, about, propagate_version = true)]
struct Cli {
    /// Log as JSON lines (stderr).
    #[arg(long, global = true)]
    log_json: bool,
    /// API token: sent to nodes that require one (`Authorization: Bearer`);
    /// for `plexus node`, the token its API requires (overrides `[api] token`).
    #[arg(
        long = "api-token",
        global = true,
        env = "PLEXUS_API_TOKEN",
        hide_env_values = true
    )]
    api_token: Option<String>,
    /// Read the API token from this file (a mounted secret; one trailing
    /// newline is trimmed). Not together with --api-token / PLEXUS_API_TOKEN.
    #[arg(long = "api-token-file", global = true, value_name = "FILE")]
    api_token_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a local cluster of N node processes with the default plugins.
    Up(up_cmd::UpArgs),
    /// Run one node (for multi-host deployments).
    Node(node_cmd::NodeArgs),
    /// Probe a node: liveness (`/v1/health`), or with --ready readiness
    /// (`/v1/ready`). Exit 0 healthy, 1 not. Needs no token and no shell
    /// (the container image's HEALTHCHECK).
    Health(health_cmd::HealthArgs),
    /// Show the cluster's members and plugins as one node sees them.
    Status(status_cmd::StatusArgs),
    /// Inspect the plugin catalog (offline).
    #[command(subcommand)]
    Catalog(catalog_cmd::CatalogCmd),
    /// Run a plugin command on whichever node hosts the plugin.
    Exec(exec_cmd::ExecArgs),
    /// Route a request to the best plugin and agent (offline, or live with --connect).
    Route(route_cmd::RouteArgs),
    /// Route a request in the cluster and run it where the chosen plugin lives.
    Ask(ask_cmd::AskArgs),
    /// Read and write the cluster's replicated state (CRDTs) as a plugin.
    #[command(subcommand)]
    State(state_cmd::StateCmd),
    /// Run a workflow file (sequential, parallel, conditional, or a saga).
    Run(run_cmd::RunArgs),
    /// List the workflow runs of a node with their step states.
    Workflows(run_cmd::WorkflowsArgs),
    /// Issue, revoke and hash API tokens.
    #[command(subcommand)]
    Token(token_cmd::TokenCmd),
    /// Print the node API's OpenAPI document (what `docs/openapi.json` holds).
    Openapi,
    /// Run a simulation scenario: real nodes in one process, injected faults, invariants checked.
    Simulate(simulate_cmd::SimulateArgs),
    /// Benchmark a local cluster, side by side with NATS (docs/benchmarks.md).
    Bench(bench_cmd::BenchArgs),
}

/// Catalog sources shared by several subcommands.
#[derive(Args, Clone, Debug, Default)]
pub struct CatalogArgs {
    /// Extra catalog directory: a Claude Code plugin directory, a directory of
    /// them, or a directory of Plexus `*.toml` manifests. Repeatable.
    #[arg(long = "catalog", value_name = "DIR")]
    pub catalog: Vec<PathBuf>,
    /// Leave out the plugin manifests built into the binary.
    #[arg(long)]
    pub no_default_plugins: bool,
}

/// The language model the nodes' agents run on (`plexus node`, `plexus up`).
/// The key is never a flag: it comes from `PLEXUS_LLM_API_KEY`, or
/// `ANTHROPIC_API_KEY` / `OPENAI_API_KEY` by provider.
#[derive(Args, Clone, Debug, Default)]
pub struct LlmArgs {
    /// Run agents and commands on this provider's API: `openai` (also
    /// llama.cpp, Ollama, vLLM, LiteLLM) or `anthropic`. Overrides `[llm]`.
    #[arg(long, value_name = "openai|anthropic")]
    pub llm_provider: Option<String>,
    /// The provider's base URL (default: the provider's own).
    #[arg(long, value_name = "URL")]
    pub llm_base_url: Option<String>,
    /// Model ids per tier: `haiku=ID,sonnet=ID,opus=ID` (any subset).
    #[arg(long, value_name = "TIER=ID,...")]
    pub llm_model_map: Option<String>,
}

impl LlmArgs {
    /// Whether any flag is given.
    pub fn any(&self) -> bool {
        self.llm_provider.is_some() || self.llm_base_url.is_some() || self.llm_model_map.is_some()
    }

    /// The flags over a file's `[llm]` table. A base URL or model map
    /// without a provider needs the file's provider.
    pub fn apply(
        &self,
        file: Option<plexus_llm::LlmConfig>,
    ) -> Result<Option<plexus_llm::LlmConfig>, Failure> {
        if !self.any() {
            return Ok(file);
        }
        let mut c = match (&self.llm_provider, file) {
            (Some(p), file) => {
                let kind = plexus_catalog::ProviderKind::parse(p).ok_or_else(|| {
                    Failure::usage(anyhow::anyhow!(
                        "--llm-provider: {p:?} is not a provider (openai or anthropic)"
                    ))
                })?;
                match file {
                    Some(f) if f.provider == kind => f,
                    _ => plexus_llm::LlmConfig::new(kind),
                }
            }
            (None, Some(f)) => f,
            (None, None) => {
                return Err(Failure::usage(anyhow::anyhow!(
                    "--llm-base-url and --llm-model-map need --llm-provider (openai or anthropic)"
                )))
            }
        };
        if let Some(u) = &self.llm_base_url {
            c.base_url = Some(u.clone());
        }
        if let Some(m) = &self.llm_model_map {
            c.models
                .extend(plexus_llm::parse_model_map(m).map_err(Failure::usage)?);
        }
        c.validate().map_err(|e| {
            let field = match e.field.as_str() {
                "llm.base_url" => "--llm-base-url",
                f => f,
            };
            Failure::usage(anyhow::anyhow!("{field}: {}", e.message))
        })?;
        Ok(Some(c))
    }

    /// The same flags for a child `plexus node`.
    pub fn to_args(&self) -> Vec<String> {
        let mut v = vec![];
        for (flag, val) in [
            ("--llm-provider", &self.llm_provider),
            ("--llm-base-url", &self.llm_base_url),
            ("--llm-model-map", &self.llm_model_map),
        ] {
            if let Some(x) = val {
                v.push(flag.to_string());
                v.push(x.clone());
            }
        }
        v
    }
}

/// An error with the exit code it deserves.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

impl Failure {
    /// A usage or configuration problem (exit 2).
    pub fn usage(e: impl Into<anyhow::Error>) -> Failure {
        Failure {
            code: 2,
            error: e.into(),
        }
    }
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure {
            code: 1,
            error: e.into(),
        }
    }
}

pub type CliResult = Result<(), Failure>;

/// Why a secret file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("{flag} {}: cannot read: {source}", file.display())]
    Read {
        flag: &'static str,
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{flag} {}: the file is empty", file.display())]
    Empty { flag: &'static str, file: PathBuf },
    #[error("{flag} {}: the secret is not UTF-8 text", file.display())]
    NotText { flag: &'static str, file: PathBuf },
}

/// A secret from a file (a Docker or Kubernetes secret): its contents with
/// one trailing newline (`\n` or `\r\n`) trimmed, as `echo` and editors
/// leave one. Errors name the flag and the file.
pub fn read_secret_file(
    flag: &'static str,
    file: &std::path::Path,
) -> Result<String, SecretFileError> {
    let bytes = std::fs::read(file).map_err(|source| SecretFileError::Read {
        flag,
        file: file.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|_| SecretFileError::NotText {
        flag,
        file: file.to_path_buf(),
    })?;
    let t = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if t.is_empty() {
        return Err(SecretFileError::Empty {
            flag,
            file: file.to_path_buf(),
        });
    }
    Ok(t.to_string())
}

/// A duration flag: `30s`, `500ms`, `2m`, or whole seconds (`30`).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 30s, 500ms, 2m)"))?;
    match unit {
        "ms" => Ok(std::time::Duration::from_millis(n)),
        "s" => Ok(std::time::Duration::from_secs(n)),
        "m" => Ok(std::time::Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?}: unknown unit {unit:?} (use ms, s or m)")),
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PLEXUS_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,ractor=warn,ractor_cluster=warn")
    });
    use tracing_subscriber::prelude::*;
    // Colours only for a person at a terminal: a log file, `docker logs` or a
    // journal gets plain text (NO_COLOR turns them off everywhere).
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let fmt = if json {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    let registry = tracing_subscriber::registry().with(filter).with(fmt);
    #[cfg(feature = "otlp")]
    if let Some(otlp) = otlp::layer() {
        registry.with(otlp).init();
        return;
    }
    registry.init();
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`plexus status | head`), like other CLIs.
    // SAFETY: setting a signal disposition before any thread starts.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        );
    }
    let cli = Cli::parse();
    if let Some(f) = &cli.api_token_file {
        let r = if cli.api_token.is_some() {
            Err(format!(
                "give the API token once: --api-token-file {} and --api-token (or PLEXUS_API_TOKEN) are both set",
                f.display()
            ))
        } else {
            read_secret_file("--api-token-file", f).map_err(|e| e.to_string())
        };
        match r {
            Ok(t) => client::set_token(t),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    } else if let Some(t) = cli.api_token.clone().filter(|t| !t.is_empty()) {
        client::set_token(t);
    }
    let r = match cli.command {
        Cmd::Up(a) => up_cmd::run(a),
        Cmd::Node(a) => {
            init_logging(cli.log_json);
            node_cmd::run(a)
        }
        Cmd::Health(a) => health_cmd::run(a),
        Cmd::Token(c) => token_cmd::run(c),
        Cmd::Status(a) => status_cmd::run(a),
        Cmd::Catalog(c) => catalog_cmd::run(c),
        Cmd::Exec(a) => exec_cmd::run(a),
        Cmd::Route(a) => route_cmd::run(a),
        Cmd::Ask(a) => ask_cmd::run(a),
        Cmd::State(c) => state_cmd::run(c),
        Cmd::Run(a) => run_cmd::run(a),
        Cmd::Workflows(a) => run_cmd::list(a),
        Cmd::Openapi => {
            print!("{}", plexus_node::openapi_json());
            Ok(())
        }
        Cmd::Simulate(a) => simulate_cmd::run(a),
        Cmd::Bench(a) => {
            if a.peer.is_some() {
                init_logging(cli.log_json);
            }
            bench_cmd::run(a)
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {:#}", f.error);
            ExitCode::from(f.code)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    #[test]
    fn a_secret_file_loses_one_trailing_newline_and_names_itself_when_bad() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("cookie");
        for (text, want) in [
            ("s3cret\n", "s3cret"),
            ("s3cret\r\n", "s3cret"),
            ("s3cret", "s3cret"),
            ("a b\n\n", "a b\n"),
        ] {
            std::fs::write(&f, text).unwrap();
            assert_eq!(super::read_secret_file("--cookie-file", &f).unwrap(), want);
        }
        std::fs::write(&f, "\n").unwrap();
        let e = super::read_secret_file("--cookie-file", &f)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--cookie-file")
                && e.contains(&f.display().to_string())
                && e.contains("empty"),
            "{e}"
        );
        let missing = d.path().join("nope");
        let e = super::read_secret_file("--api-token-file", &missing)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--api-token-file") && e.contains("nope"), "{e}");
    }

    #[test]
    fn durations_take_a_unit_or_seconds() {
        use std::time::Duration;
        assert_eq!(super::parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(
            super::parse_duration("250ms"),
            Ok(Duration::from_millis(250))
        );
        assert_eq!(super::parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(super::parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(super::parse_duration("soon").is_err());
        assert!(super::parse_duration("3h").is_err());
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }

    /// A global API `--token` and a lease's `--token` once shared an
    /// argument id, which clap only notices when the subcommand is parsed.
    #[test]
    fn the_api_token_and_a_fencing_token_parse_together() {
        let cli = super::Cli::try_parse_from([
            "plexus",
            "--api-token",
            "s3cret-s3cret-s3cret",
            "state",
            "lease",
            "release",
            "--connect",
            "127.0.0.1:7100",
            "--as",
            "p",
            "deploy",
            "--fencing-token",
            "3",
        ])
        .expect("parses");
        assert_eq!(cli.api_token.as_deref(), Some("s3cret-s3cret-s3cret"));
    }

    #[test]
    fn llm_flags_over_the_file_and_their_errors() {
        use super::{up_cmd, LlmArgs};
        let flags = |p: Option<&str>, u: Option<&str>, m: Option<&str>| LlmArgs {
            llm_provider: p.map(str::to_string),
            llm_base_url: u.map(str::to_string),
            llm_model_map: m.map(str::to_string),
        };
        assert_eq!(flags(None, None, None).apply(None).unwrap(), None);
        let c = flags(
            Some("openai"),
            Some("http://127.0.0.1:8080"),
            Some("haiku=a,opus=c"),
        )
        .apply(None)
        .unwrap()
        .unwrap();
        assert_eq!(c.provider, plexus_catalog::ProviderKind::Openai);
        assert_eq!(c.base_url.as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(c.models.len(), 2);
        // The file's table of the same provider keeps its other keys.
        let mut file = plexus_llm::LlmConfig::new(plexus_catalog::ProviderKind::Openai);
        file.api_key_env = Some("MY_KEY".into());
        let c = flags(None, Some("http://h:1"), None)
            .apply(Some(file))
            .unwrap()
            .unwrap();
        assert_eq!(c.api_key_env.as_deref(), Some("MY_KEY"));
        for (f, want) in [
            (flags(Some("gemini"), None, None), "--llm-provider"),
            (flags(None, Some("http://h:1"), None), "need --llm-provider"),
            (
                flags(Some("openai"), Some("localhost"), None),
                "--llm-base-url",
            ),
            (
                flags(Some("openai"), None, Some("tiny=x")),
                "--llm-model-map",
            ),
        ] {
            let e = format!("{:#}", f.apply(None).unwrap_err().error);
            assert!(e.contains(want), "{want}: {e}");
        }
        assert_eq!(
            flags(Some("openai"), Some("http://h:1"), None).to_args(),
            vec!["--llm-provider", "openai", "--llm-base-url", "http://h:1"]
        );
        assert!(up_cmd::model_banner(&flags(None, None, None), None)
            .starts_with("agents are simulated"));
    }
}
