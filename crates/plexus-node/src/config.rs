//! Node configuration: a TOML file (`plexus node --config FILE`), command-line
//! flags, or both (flags win). Errors name the file and line.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use plexus_membership::MembershipConfig;
use serde::{Deserialize, Serialize};

/// Cookie used when none is configured (fine on a laptop, never in production).
pub const DEV_COOKIE: &str = "plexus-dev-cookie";

/// A configuration problem, naming where it is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Parse {
        file: PathBuf,
        line: Option<usize>,
        message: String,
    },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

/// The `[node]` table and friends, as written in a file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub node: NodeSection,
    #[serde(default)]
    pub membership: MembershipSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub state: StateSection,
    #[serde(default)]
    pub api: ApiSection,
    /// The `[llm]` table: the language model the node's agents run on.
    /// Absent: agents and commands of `sim` plugins stay simulated.
    #[serde(default)]
    pub llm: Option<plexus_llm::LlmConfig>,
    /// The `[router] table`.
    #[serde(default)]
    pub router: RouterSection,
}

/// The `[router]` table.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterSection {
    /// Directory of the sentence-embedding model (model.safetensors,
    /// tokenizer.json, config.json). Unset: `PLEXUS_EMBED_DIR`, else
    /// `.models/minilm` under the working directory. Without the files the
    /// router runs on BM25F alone and `status` says so.
    pub embed_dir: Option<PathBuf>,
}

/// The `[api]` table: the client API's access control.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// Bearer token every API call must carry (`Authorization: Bearer ...`),
    /// except the `/v1/health` probe and the dashboard page. Unset: the API
    /// is open (fine on loopback). `plexus node --api-token` (global flag) or
    /// `PLEXUS_API_TOKEN` override it. This is the admin token.
    pub token: Option<String>,
    /// More tokens, each with its role (`[[api.tokens]]`), stored hashed.
    #[serde(default)]
    pub tokens: Vec<TokenDecl>,
    /// A file with the cluster's key for signing issued tokens
    /// (`plexus token create`); at least 32 bytes. Every node that should
    /// accept issued tokens has the same key. Not the cookie.
    pub signing_key_file: Option<PathBuf>,
    /// Requests per caller (`N/s` or `N/m`) for credentials without a rate
    /// of their own; unset: no limit.
    pub rate: Option<String>,
    /// Serve the API beyond loopback with no token at all (`plexus node
    /// --insecure-open-api`). Refused otherwise: anyone who reaches such an
    /// API can exec commands and write state as any plugin.
    #[serde(default)]
    pub insecure_open: bool,
}

/// One `[[api.tokens]]` entry.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenDecl {
    /// Who it is, for the audit and the logs (`grafana`, `ci`, ...).
    pub name: String,
    /// `admin`, `operator`, `reader` or `plugin:NAME`.
    pub role: String,
    /// SHA-256 of the token in hex (`plexus token hash`).
    pub sha256: String,
    /// `N/s` or `N/m`; unset: `[api] rate`.
    pub rate: Option<String>,
}

/// The API's credentials, checked and ready for [`plexus_auth::Authenticator`].
#[derive(Debug, Clone, Default)]
pub struct ApiAuth {
    pub declared: Vec<plexus_auth::DeclaredToken>,
    pub signing_key: Option<Vec<u8>>,
    pub default_rate: Option<plexus_auth::Rate>,
    pub insecure_open: bool,
}

impl ApiAuth {
    /// The credentials as an authenticator (`admin`: the admin token).
    pub fn authenticator(&self, admin: Option<&str>) -> plexus_auth::Authenticator {
        plexus_auth::Authenticator::new(admin, self.declared.clone(), self.signing_key.as_deref())
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    pub name: Option<String>,
    /// Cluster listener, `host:port`.
    pub listen: Option<String>,
    /// Client API listener, `host:port` (default: cluster port + 100).
    pub api: Option<String>,
    /// Host other nodes use to reach this one (default: the listen host).
    pub advertise: Option<String>,
    #[serde(default)]
    pub seeds: Vec<String>,
    /// Seeds found by DNS, `NAME:PORT`: every address the name resolves to
    /// is dialled (a Kubernetes headless Service, a Compose network alias).
    /// Looked up again while the node is alone, never at start only.
    #[serde(default)]
    pub seed_dns: Vec<String>,
    pub cookie: Option<String>,
    pub data_dir: Option<PathBuf>,
    /// Plugins this node may host (default: every plugin in its catalog);
    /// the cluster's placement picks which of them it runs.
    pub plugins: Option<Vec<String>>,
    /// This node's labels, which plugins' `[placement] labels` match:
    /// `labels = { zone = "a", gpu = "yes" }`.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// How long a node that comes back (restarted, or seen down) must stay
    /// up before plugins move back to it (default 30,000 ms).
    pub placement_settle_ms: Option<u64>,
    /// `pinned` (default): the node runs every plugin it may host, as
    /// `--plugins` lists them. `cluster`: the cluster's placement rule
    /// (replicas, labels, rendezvous hashing) decides where each runs.
    pub placement: Option<PlacementMode>,
    /// Extra catalog directories.
    #[serde(default)]
    pub catalog: Vec<PathBuf>,
    /// Leave out the manifests built into the binary.
    #[serde(default)]
    pub no_default_plugins: bool,
    /// Mutual TLS between nodes: this node's certificate (PEM)...
    pub tls_cert: Option<PathBuf>,
    /// ...its private key (PEM)...
    pub tls_key: Option<PathBuf>,
    /// ...and the CA every node's certificate must chain to (PEM).
    pub tls_ca: Option<PathBuf>,
    /// Fault injection: offset this node's wall clock by this many ms
    /// (positive: ahead). It moves what the node's [`crate::net::links::Clock`]
    /// dates: state write stamps, expiry and leases. For tests only.
    /// `PLEXUS_CLOCK_SKEW_MS` in the environment overrides it.
    pub clock_skew_ms: Option<i64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembershipSection {
    pub probe_period_ms: Option<u64>,
    pub probe_rtt_ms: Option<u64>,
    pub suspect_to_down_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Largest cluster frame sent or accepted.
    pub max_frame_bytes: Option<usize>,
    /// Default time a request waits for its response.
    pub request_timeout_ms: Option<u64>,
    /// Largest request payload accepted from clients.
    pub max_payload_bytes: Option<usize>,
    /// Time a peer has to finish its TLS handshake (default 10,000 ms).
    pub handshake_timeout_ms: Option<u64>,
    /// TLS handshakes in progress at once; more are refused (default 64).
    pub max_pending_handshakes: Option<usize>,
    /// Time a client has to send a request's headers once it starts one
    /// (or after connecting); slower clients are disconnected (default 10,000 ms).
    pub api_header_timeout_ms: Option<u64>,
    /// API connections open at once; more are closed at once (default 1024).
    pub api_max_connections: Option<usize>,
    /// Largest request head (request line and headers) in bytes (default 64 KiB).
    pub api_max_header_bytes: Option<usize>,
}

/// What a client of the API may hold: bounds that keep idle or slow
/// connections (a slowloris) from piling up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    pub header_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
}

impl LimitsSection {
    fn api_limits(&self) -> Result<ApiLimits, ConfigError> {
        let range = |field: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(v)
            } else {
                Err(ConfigError::Invalid {
                    field: format!("limits.{field}"),
                    message: format!("must be between {lo} and {hi}"),
                })
            }
        };
        Ok(ApiLimits {
            header_timeout: Duration::from_millis(range(
                "api_header_timeout_ms",
                self.api_header_timeout_ms.unwrap_or(10_000),
                50,
                600_000,
            )?),
            max_connections: range(
                "api_max_connections",
                self.api_max_connections.unwrap_or(1024) as u64,
                1,
                1_000_000,
            )? as usize,
            // hyper's read buffer takes no less than 8 KiB.
            max_header_bytes: range(
                "api_max_header_bytes",
                self.api_max_header_bytes.unwrap_or(64 * 1024) as u64,
                8192,
                16 << 20,
            )? as usize,
        })
    }
}

/// The `[state]` table: replicated state (anti-entropy and consistency).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSection {
    /// Time between anti-entropy rounds (default 500 ms).
    pub gossip_interval_ms: Option<u64>,
    /// Peers a round talks to (default 2).
    pub gossip_fanout: Option<usize>,
    /// Largest state protocol message (default 256 KiB).
    pub max_message_bytes: Option<usize>,
    /// Time between expiry purges (default 1000 ms).
    pub purge_interval_ms: Option<u64>,
    /// Default timeout of majority/all reads and writes (default 3000 ms).
    pub consistency_timeout_ms: Option<u64>,
}

/// Validated `[state]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateConfig {
    pub gossip_interval: Duration,
    pub gossip_fanout: usize,
    pub max_message_bytes: usize,
    pub purge_interval: Duration,
    pub consistency_timeout: Duration,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            gossip_interval: Duration::from_millis(500),
            gossip_fanout: 2,
            max_message_bytes: 256 * 1024,
            purge_interval: Duration::from_millis(1000),
            consistency_timeout: Duration::from_millis(3000),
        }
    }
}

impl StateSection {
    fn finish(&self, max_frame_bytes: usize) -> Result<StateConfig, ConfigError> {
        let d = StateConfig::default();
        let bad = |field: &str, message: String| ConfigError::Invalid {
            field: format!("state.{field}"),
            message,
        };
        let interval = self
            .gossip_interval_ms
            .unwrap_or(d.gossip_interval.as_millis() as u64);
        if !(10..=600_000).contains(&interval) {
            return Err(bad(
                "gossip_interval_ms",
                format!("{interval} must be between 10 and 600000"),
            ));
        }
        let fanout = self.gossip_fanout.unwrap_or(d.gossip_fanout);
        if !(1..=64).contains(&fanout) {
            return Err(bad(
                "gossip_fanout",
                format!("{fanout} must be between 1 and 64"),
            ));
        }
        let max = self.max_message_bytes.unwrap_or(d.max_message_bytes);
        let ceiling = max_frame_bytes.saturating_sub(16 * 1024);
        if max < plexus_state::MIN_MESSAGE_BYTES || max > ceiling {
            return Err(bad(
                "max_message_bytes",
                format!(
                    "{max} must be between {} and {ceiling} (limits.max_frame_bytes minus 16 KiB)",
                    plexus_state::MIN_MESSAGE_BYTES
                ),
            ));
        }
        let purge = self
            .purge_interval_ms
            .unwrap_or(d.purge_interval.as_millis() as u64);
        if !(10..=3_600_000).contains(&purge) {
            return Err(bad(
                "purge_interval_ms",
                format!("{purge} must be between 10 and 3600000"),
            ));
        }
        let timeout = self
            .consistency_timeout_ms
            .unwrap_or(d.consistency_timeout.as_millis() as u64);
        if !(1..=600_000).contains(&timeout) {
            return Err(bad(
                "consistency_timeout_ms",
                format!("{timeout} must be between 1 and 600000"),
            ));
        }
        Ok(StateConfig {
            gossip_interval: Duration::from_millis(interval),
            gossip_fanout: fanout,
            max_message_bytes: max,
            purge_interval: Duration::from_millis(purge),
            consistency_timeout: Duration::from_millis(timeout),
        })
    }
}

/// Environment variable that sets (and overrides) `[node] clock_skew_ms`.
pub const CLOCK_SKEW_ENV: &str = "PLEXUS_CLOCK_SKEW_MS";

/// The largest clock skew accepted, either way: one day.
pub const MAX_CLOCK_SKEW_MS: i64 = 86_400_000;

/// Check a clock skew; `field` names where it came from in the error.
fn check_skew(field: &str, ms: i64) -> Result<i64, ConfigError> {
    if !(-MAX_CLOCK_SKEW_MS..=MAX_CLOCK_SKEW_MS).contains(&ms) {
        return Err(ConfigError::Invalid {
            field: field.into(),
            message: format!(
                "{ms} ms is out of range: a clock skew must be between -{MAX_CLOCK_SKEW_MS} and {MAX_CLOCK_SKEW_MS} ms (one day)"
            ),
        });
    }
    Ok(ms)
}

/// Parse the text of `PLEXUS_CLOCK_SKEW_MS`: whole milliseconds, an optional
/// sign, within [`MAX_CLOCK_SKEW_MS`].
pub fn parse_clock_skew(text: &str) -> Result<i64, ConfigError> {
    let t = text.trim();
    let t = t.strip_prefix('+').unwrap_or(t);
    let ms: i64 = t.parse().map_err(|_| ConfigError::Invalid {
        field: CLOCK_SKEW_ENV.into(),
        message: format!(
            "{text:?} is not a whole number of milliseconds (for example 5000 for 5 s ahead, -5000 for 5 s behind)"
        ),
    })?;
    check_skew(CLOCK_SKEW_ENV, ms)
}

/// The clock skew the environment asks for, if any.
fn env_clock_skew() -> Result<Option<i64>, ConfigError> {
    match std::env::var(CLOCK_SKEW_ENV) {
        Ok(s) => parse_clock_skew(&s).map(Some),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError::Invalid {
            field: CLOCK_SKEW_ENV.into(),
            message: "is not valid UTF-8".into(),
        }),
    }
}

/// Who decides which plugins a node runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlacementMode {
    /// Every plugin the node may host runs on it (a plugin listed on two
    /// nodes runs on both): the operator places plugins with `--plugins`.
    #[default]
    Pinned,
    /// The cluster's placement rule places plugins over the nodes that may
    /// host them, and moves them when a node leaves (docs/placement.md).
    Cluster,
}

impl std::str::FromStr for PlacementMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pinned" => Ok(PlacementMode::Pinned),
            "cluster" => Ok(PlacementMode::Cluster),
            other => Err(format!(
                "placement {other:?}: expected \"pinned\" or \"cluster\""
            )),
        }
    }
}

/// A complete, validated node configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub api: SocketAddr,
    /// The host part peers dial (also the ractor_cluster hostname).
    pub advertise_host: String,
    pub seeds: Vec<String>,
    /// `NAME:PORT` seeds resolved at each dial round (`[node] seed_dns`).
    pub seed_dns: Vec<String>,
    pub cookie: String,
    pub data_dir: PathBuf,
    /// Plugins this node may host (`--plugins`: a constraint, not the placement).
    pub plugins: Option<Vec<String>>,
    /// `[node] labels`.
    pub labels: std::collections::BTreeMap<String, String>,
    /// `[node] placement_settle_ms`.
    pub placement_settle: Duration,
    /// `[node] placement` / `--placement`.
    pub placement: PlacementMode,
    pub catalog: Vec<PathBuf>,
    pub default_plugins: bool,
    pub membership: MembershipConfig,
    pub max_frame_bytes: usize,
    pub request_timeout: Duration,
    pub max_payload_bytes: usize,
    /// Time a connecting peer has to finish its TLS handshake.
    pub handshake_timeout: Duration,
    /// TLS handshakes in progress at once (more are refused).
    pub max_pending_handshakes: usize,
    /// The client API's connection limits (`[limits] api_*`).
    pub api_limits: ApiLimits,
    /// Where hosted plugins reach the API (`unix:PATH`), set at start;
    /// `None`: the TCP address.
    pub plugin_api: Option<String>,
    /// Replicated state settings (`[state]`).
    pub state: StateConfig,
    /// The API's admin token (`[api] token`); with no credential at all
    /// (see `api_auth`) the API is open.
    pub api_token: Option<String>,
    /// Declared tokens, the signing key, rates (`[api]`).
    pub api_auth: ApiAuth,
    /// Mutual TLS between nodes, when configured.
    pub tls: Option<crate::net::tls::TlsFiles>,
    /// Fault injection: this node's wall-clock offset in ms (positive:
    /// ahead); 0 in production. `[node] clock_skew_ms` or
    /// `PLEXUS_CLOCK_SKEW_MS`.
    pub clock_skew_ms: i64,
    /// The node's language model (`[llm]`, `--llm-*`); `None`: agents are
    /// simulated. Holds the key's variable name, never the key.
    pub llm: Option<plexus_llm::LlmConfig>,
    /// `[router] embed_dir`.
    pub embed_dir: Option<PathBuf>,
}

impl NodeConfig {
    /// The address peers dial for this node's cluster listener.
    pub fn cluster_addr(&self) -> String {
        format!("{}:{}", self.advertise_host, self.listen.port())
    }

    /// The address clients use for this node's API.
    pub fn api_addr(&self) -> String {
        let host = if self.api.ip().is_unspecified() {
            self.advertise_host.clone()
        } else {
            self.api.ip().to_string()
        };
        format!("{host}:{}", self.api.port())
    }
}

/// Read a config file, resolving relative paths against its directory.
pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: path.to_path_buf(),
        source,
    })?;
    let mut fc: FileConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
        file: path.to_path_buf(),
        line: e
            .span()
            .map(|s| plexus_catalog::manifest::line_col(&text, s.start).0),
        message: e.message().to_string(),
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    for p in [
        &mut fc.router.embed_dir,
        &mut fc.node.data_dir,
        &mut fc.node.tls_cert,
        &mut fc.node.tls_key,
        &mut fc.node.tls_ca,
    ] {
        if let Some(d) = p {
            if d.is_relative() {
                *p = Some(base.join(&*d));
            }
        }
    }
    if let Some(pf) = fc.llm.as_mut().and_then(|l| l.prices_file.as_mut()) {
        if pf.is_relative() {
            *pf = base.join(&*pf);
        }
    }
    fc.node.catalog = fc
        .node
        .catalog
        .iter()
        .map(|c| {
            if c.is_relative() {
                base.join(c)
            } else {
                c.clone()
            }
        })
        .collect();
    Ok(fc)
}

fn parse_addr(field: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| ConfigError::Invalid {
            field: field.into(),
            message: format!("{s:?} is not a HOST:PORT address"),
        })
}

/// Check a `--seed-dns` entry's shape (`NAME:PORT`) without resolving it:
/// the name may not exist yet when the node starts (the other pods or
/// containers are starting too).
pub fn check_dns_seed(s: &str) -> Result<(), ConfigError> {
    let bad = |why: &str| ConfigError::Invalid {
        field: "node.seed_dns".into(),
        message: format!(
            "{s:?} {why} (expected NAME:PORT, e.g. plexus.default.svc.cluster.local:7101)"
        ),
    };
    let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("has no port"))?;
    if host.is_empty() || host.contains(char::is_whitespace) || host.contains(['/', '[', ']']) {
        return Err(bad("has no valid host name"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(bad("has no valid port")),
    }
}

impl FileConfig {
    /// Check and complete the configuration. `PLEXUS_CLOCK_SKEW_MS`, when
    /// set, overrides `[node] clock_skew_ms`.
    pub fn finish(self) -> Result<NodeConfig, ConfigError> {
        let env_skew = env_clock_skew()?;
        self.finish_with_skew(env_skew)
    }

    /// [`FileConfig::finish`] with the environment's clock skew given.
    fn finish_with_skew(self, env_skew: Option<i64>) -> Result<NodeConfig, ConfigError> {
        let clock_skew_ms = match (env_skew, self.node.clock_skew_ms) {
            (Some(ms), _) => ms,
            (None, Some(ms)) => check_skew("node.clock_skew_ms", ms)?,
            (None, None) => 0,
        };
        let n = self.node;
        let name = n.name.ok_or_else(|| ConfigError::Invalid {
            field: "node.name".into(),
            message: "is required (--name)".into(),
        })?;
        if !plexus_catalog::manifest::valid_name(&name) {
            return Err(ConfigError::Invalid {
                field: "node.name".into(),
                message: format!("{name:?} must be 1-64 characters of a-z, 0-9, '-' or '_'"),
            });
        }
        let listen_s = n.listen.ok_or_else(|| ConfigError::Invalid {
            field: "node.listen".into(),
            message: "is required (--listen HOST:PORT)".into(),
        })?;
        let listen = parse_addr("node.listen", &listen_s)?;
        let api = match &n.api {
            Some(a) => parse_addr("node.api", a)?,
            None => {
                let port = if listen.port() == 0 {
                    0
                } else {
                    listen
                        .port()
                        .checked_add(100)
                        .ok_or_else(|| ConfigError::Invalid {
                            field: "node.api".into(),
                            message: "cannot derive from the listen port; set it".into(),
                        })?
                };
                SocketAddr::new(listen.ip(), port)
            }
        };
        let advertise_host = match n.advertise {
            Some(h) => h,
            None if listen.ip().is_unspecified() => {
                return Err(ConfigError::Invalid {
                    field: "node.advertise".into(),
                    message: format!(
                        "listen address {listen} is unspecified; set the host peers should dial (--advertise)"
                    ),
                })
            }
            None => listen.ip().to_string(),
        };
        for s in &n.seeds {
            parse_addr("node.seeds", s)?;
        }
        for s in &n.seed_dns {
            check_dns_seed(s)?;
        }
        if let Some(c) = &n.cookie {
            if c.is_empty() {
                return Err(ConfigError::Invalid {
                    field: "node.cookie".into(),
                    message: "must not be empty".into(),
                });
            }
        }
        let m = self.membership;
        let dm = MembershipConfig::default();
        let membership = MembershipConfig {
            probe_period: m
                .probe_period_ms
                .map(Duration::from_millis)
                .unwrap_or(dm.probe_period),
            probe_rtt: m
                .probe_rtt_ms
                .map(Duration::from_millis)
                .unwrap_or(dm.probe_rtt),
            suspect_to_down: m
                .suspect_to_down_ms
                .map(Duration::from_millis)
                .unwrap_or(dm.suspect_to_down),
            max_packet: dm.max_packet,
        };
        if membership.probe_rtt >= membership.probe_period {
            return Err(ConfigError::Invalid {
                field: "membership.probe_rtt_ms".into(),
                message: "must be shorter than probe_period_ms".into(),
            });
        }
        let max_frame_bytes = self
            .limits
            .max_frame_bytes
            .unwrap_or(plexus_codec::DEFAULT_MAX_FRAME);
        if !(64 * 1024..=64 * 1024 * 1024).contains(&max_frame_bytes) {
            return Err(ConfigError::Invalid {
                field: "limits.max_frame_bytes".into(),
                message: "must be between 64 KiB and 64 MiB".into(),
            });
        }
        let max_payload_bytes = self.limits.max_payload_bytes.unwrap_or(1024 * 1024);
        if max_payload_bytes + 64 * 1024 > max_frame_bytes {
            return Err(ConfigError::Invalid {
                field: "limits.max_payload_bytes".into(),
                message: "must leave at least 64 KiB of the frame limit for headers".into(),
            });
        }
        let handshake_timeout_ms = self.limits.handshake_timeout_ms.unwrap_or(10_000);
        if !(100..=600_000).contains(&handshake_timeout_ms) {
            return Err(ConfigError::Invalid {
                field: "limits.handshake_timeout_ms".into(),
                message: "must be between 100 and 600000".into(),
            });
        }
        let max_pending_handshakes = self.limits.max_pending_handshakes.unwrap_or(64);
        if !(1..=100_000).contains(&max_pending_handshakes) {
            return Err(ConfigError::Invalid {
                field: "limits.max_pending_handshakes".into(),
                message: "must be between 1 and 100000".into(),
            });
        }
        let api_limits = self.limits.api_limits()?;
        let state = self.state.finish(max_frame_bytes)?;
        let llm = match self.llm {
            Some(l) => {
                l.validate().map_err(|e| ConfigError::Invalid {
                    field: e.field,
                    message: e.message,
                })?;
                if let Some(p) = &l.prices_file {
                    plexus_llm::PriceTable::with_file(p).map_err(|e| ConfigError::Invalid {
                        field: "llm.prices_file".into(),
                        message: e.to_string(),
                    })?;
                }
                Some(l)
            }
            None => None,
        };
        let api_auth = api_auth(&self.api)?;
        let api_token = match self.api.token {
            Some(t) if t.trim().is_empty() => {
                return Err(ConfigError::Invalid {
                    field: "api.token".into(),
                    message: "must not be empty (leave it out for an open API)".into(),
                })
            }
            Some(t) if t.len() < 16 || t.chars().any(|c| !c.is_ascii_graphic()) => {
                return Err(ConfigError::Invalid {
                    field: "api.token".into(),
                    message: "must be at least 16 printable ASCII characters without spaces".into(),
                })
            }
            t => t,
        };
        if api_token.is_none()
            && api_auth.declared.is_empty()
            && api_auth.signing_key.is_none()
            && !api_auth.insecure_open
            && !api.ip().is_loopback()
        {
            return Err(ConfigError::Invalid {
                field: "api".into(),
                message: format!(
                    "the API would listen on {api}, beyond loopback, with no token: anyone who reaches it could exec commands and write state as any plugin. Give it a token ([api] token, --api-token, --api-token-file or [[api.tokens]]), or pass --insecure-open-api ([api] insecure_open = true) to serve it open anyway"
                ),
            });
        }
        let tls = match (n.tls_cert, n.tls_key, n.tls_ca) {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(ca)) => Some(crate::net::tls::TlsFiles { cert, key, ca }),
            (c, k, _) => {
                let missing = if c.is_none() {
                    "tls_cert"
                } else if k.is_none() {
                    "tls_key"
                } else {
                    "tls_ca"
                };
                return Err(ConfigError::Invalid {
                    field: format!("node.{missing}"),
                    message: "TLS needs tls_cert, tls_key and tls_ca together".into(),
                });
            }
        };
        for (k, v) in &n.labels {
            if !plexus_catalog::manifest::valid_name(k) || v.trim().is_empty() {
                return Err(ConfigError::Invalid {
                    field: format!("node.labels.{k}"),
                    message: format!(
                        "label {k:?} = {v:?}: the name must be 1-64 characters of a-z, 0-9, '-' or '_' and the value non-empty"
                    ),
                });
            }
        }
        let labels = n.labels.clone();
        Ok(NodeConfig {
            llm,
            embed_dir: self.router.embed_dir,
            clock_skew_ms,
            api_token,
            api_auth,
            state,
            tls,
            data_dir: n
                .data_dir
                .unwrap_or_else(|| PathBuf::from(".plexus").join(&name)),
            name,
            listen,
            api,
            advertise_host,
            seeds: n.seeds,
            seed_dns: n.seed_dns,
            cookie: n.cookie.unwrap_or_else(|| DEV_COOKIE.to_string()),
            plugins: n.plugins,
            labels,
            placement_settle: Duration::from_millis(n.placement_settle_ms.unwrap_or(30_000)),
            placement: n.placement.unwrap_or_default(),
            catalog: n.catalog,
            default_plugins: !n.no_default_plugins,
            membership,
            max_frame_bytes,
            request_timeout: Duration::from_millis(
                self.limits.request_timeout_ms.unwrap_or(30_000),
            ),
            max_payload_bytes,
            handshake_timeout: Duration::from_millis(handshake_timeout_ms),
            max_pending_handshakes,
            api_limits,
            plugin_api: None,
        })
    }
}

/// Check `[api]`'s tokens, key and rates.
fn api_auth(a: &ApiSection) -> Result<ApiAuth, ConfigError> {
    let invalid = |field: String, message: String| ConfigError::Invalid { field, message };
    let rate =
        |field: String, r: &Option<String>| -> Result<Option<plexus_auth::Rate>, ConfigError> {
            r.as_deref()
                .map(plexus_auth::Rate::parse)
                .transpose()
                .map_err(|m| invalid(field, m))
        };
    let mut declared = vec![];
    for (i, t) in a.tokens.iter().enumerate() {
        let at = |f: &str| format!("api.tokens[{i}].{f}");
        if t.name.trim().is_empty() {
            return Err(invalid(at("name"), "must not be empty".into()));
        }
        let principal =
            plexus_auth::Principal::parse(&t.role).map_err(|m| invalid(at("role"), m))?;
        let h = t.sha256.trim().to_ascii_lowercase();
        if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(invalid(
                at("sha256"),
                "must be the token's SHA-256 in hex, 64 characters (`plexus token hash`)".into(),
            ));
        }
        declared.push(plexus_auth::DeclaredToken {
            name: t.name.trim().to_string(),
            principal,
            sha256: h,
            rate: rate(at("rate"), &t.rate)?,
        });
    }
    let signing_key = match &a.signing_key_file {
        None => None,
        Some(p) => {
            let k = std::fs::read(p).map_err(|e| {
                invalid(
                    "api.signing_key_file".into(),
                    format!("{}: {e}", p.display()),
                )
            })?;
            let k = k.trim_ascii().to_vec();
            if k.len() < plexus_auth::Authenticator::MIN_SIGNING_KEY {
                return Err(invalid(
                    "api.signing_key_file".into(),
                    format!(
                        "{}: the key has {} bytes; use at least {} (head -c 48 /dev/urandom | base64)",
                        p.display(),
                        k.len(),
                        plexus_auth::Authenticator::MIN_SIGNING_KEY
                    ),
                ));
            }
            Some(k)
        }
    };
    Ok(ApiAuth {
        declared,
        signing_key,
        default_rate: rate("api.rate".into(), &a.rate)?,
        insecure_open: a.insecure_open,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fc(name: Option<&str>, listen: Option<&str>) -> FileConfig {
        FileConfig {
            node: NodeSection {
                name: name.map(str::to_string),
                listen: listen.map(str::to_string),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn an_open_api_beyond_loopback_is_refused_unless_asked_for() {
        let mut f = fc(Some("n1"), Some("0.0.0.0:7101"));
        f.node.advertise = Some("n1.example".into());
        let e = f.clone().finish().unwrap_err().to_string();
        assert!(
            e.contains("beyond loopback") && e.contains("--insecure-open-api"),
            "{e}"
        );
        f.api.insecure_open = true;
        assert!(f.clone().finish().is_ok());
        f.api.insecure_open = false;
        f.api.token = Some("0123456789abcdef-secret".into());
        assert!(f.clone().finish().is_ok());
        // Loopback stays open by default, as on a laptop.
        assert!(fc(Some("n1"), Some("127.0.0.1:7101")).finish().is_ok());
    }

    #[test]
    fn declared_tokens_and_signing_keys_are_checked() {
        let mut f = fc(Some("n1"), Some("127.0.0.1:7101"));
        f.api.tokens = vec![TokenDecl {
            name: "grafana".into(),
            role: "reader".into(),
            sha256: plexus_auth::hash_token("a-reader-token-0123"),
            rate: Some("10/s".into()),
        }];
        let c = f.clone().finish().unwrap();
        assert_eq!(c.api_auth.declared.len(), 1);
        let a = c.api_auth.authenticator(None);
        assert!(a.authenticate("a-reader-token-0123", 0).is_ok());
        for (field, edit) in [
            (
                "api.tokens[0].role",
                (|t: &mut TokenDecl| t.role = "root".into()) as fn(&mut TokenDecl),
            ),
            ("api.tokens[0].sha256", |t: &mut TokenDecl| {
                t.sha256 = "abc".into()
            }),
            ("api.tokens[0].rate", |t: &mut TokenDecl| {
                t.rate = Some("fast".into())
            }),
            ("api.tokens[0].name", |t: &mut TokenDecl| {
                t.name = " ".into()
            }),
        ] {
            let mut g = f.clone();
            edit(&mut g.api.tokens[0]);
            let e = g.finish().unwrap_err().to_string();
            assert!(e.starts_with(field), "{field}: {e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "short\n").unwrap();
        f.api.signing_key_file = Some(key.clone());
        let e = f.clone().finish().unwrap_err().to_string();
        assert!(e.contains("at least 32"), "{e}");
        std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").unwrap();
        assert!(f.finish().unwrap().api_auth.authenticator(None).can_issue());
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = fc(Some("n1"), Some("127.0.0.1:7101")).finish().unwrap();
        assert_eq!(c.api.port(), 7201);
        assert_eq!(c.cluster_addr(), "127.0.0.1:7101");
        assert_eq!(c.cookie, DEV_COOKIE);
    }

    #[test]
    fn dns_seeds_need_a_name_and_a_port_but_are_not_resolved() {
        let mut f = fc(Some("n1"), Some("127.0.0.1:7101"));
        f.node.seed_dns = vec!["no-such-host.invalid:7101".into()];
        assert_eq!(f.clone().finish().unwrap().seed_dns.len(), 1);
        for bad in [
            "plexus",
            "plexus:",
            ":7101",
            "plexus:0",
            "plexus:http",
            "a b:1",
        ] {
            f.node.seed_dns = vec![bad.into()];
            let e = f.clone().finish().unwrap_err().to_string();
            assert!(
                e.starts_with("node.seed_dns: ") && e.contains(bad),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn tls_needs_all_three_files() {
        let mut f = fc(Some("n1"), Some("127.0.0.1:7101"));
        f.node.tls_cert = Some("c.pem".into());
        f.node.tls_ca = Some("ca.pem".into());
        let e = f.clone().finish().unwrap_err();
        assert!(e.to_string().starts_with("node.tls_key"), "{e}");
        f.node.tls_key = Some("k.pem".into());
        assert!(f.finish().unwrap().tls.is_some());
    }

    #[test]
    fn handshake_limits_default_and_are_checked() {
        let c = fc(Some("n1"), Some("127.0.0.1:7101")).finish().unwrap();
        assert_eq!(c.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.max_pending_handshakes, 64);
        let mut f = fc(Some("n1"), Some("127.0.0.1:7101"));
        f.limits.handshake_timeout_ms = Some(1_500);
        f.limits.max_pending_handshakes = Some(3);
        let c = f.clone().finish().unwrap();
        assert_eq!(c.handshake_timeout, Duration::from_millis(1_500));
        assert_eq!(c.max_pending_handshakes, 3);
        f.limits.handshake_timeout_ms = Some(0);
        let e = f.clone().finish().unwrap_err().to_string();
        assert!(e.starts_with("limits.handshake_timeout_ms"), "{e}");
        f.limits.handshake_timeout_ms = None;
        f.limits.max_pending_handshakes = Some(0);
        let e = f.finish().unwrap_err().to_string();
        assert!(e.starts_with("limits.max_pending_handshakes"), "{e}");
    }

    #[test]
    fn missing_and_bad_fields_are_named() {
        let e = fc(None, Some("127.0.0.1:1"))
            .finish()
            .unwrap_err()
            .to_string();
        assert!(e.contains("node.name"), "{e}");
        let e = fc(Some("Bad Name"), Some("127.0.0.1:1"))
            .finish()
            .unwrap_err()
            .to_string();
        assert!(e.contains("node.name"), "{e}");
        let e = fc(Some("n"), Some("nowhere"))
            .finish()
            .unwrap_err()
            .to_string();
        assert!(e.contains("node.listen"), "{e}");
        let e = fc(Some("n"), Some("0.0.0.0:7000"))
            .finish()
            .unwrap_err()
            .to_string();
        assert!(e.contains("node.advertise"), "{e}");
    }

    #[test]
    fn file_errors_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n.toml");
        std::fs::write(&p, "[node]\nname = \"n1\"\nlisten = 7\n").unwrap();
        let e = read_file(&p).unwrap_err().to_string();
        assert!(e.contains("n.toml:3"), "{e}");
        std::fs::write(&p, "[node]\nnmae = \"n1\"\n").unwrap();
        let e = read_file(&p).unwrap_err().to_string();
        assert!(e.contains("n.toml:2") && e.contains("nmae"), "{e}");
    }

    #[test]
    fn state_section_defaults_and_validation() {
        let c = fc(Some("n1"), Some("127.0.0.1:7101")).finish().unwrap();
        assert_eq!(c.state, StateConfig::default());
        assert_eq!(c.state.gossip_interval, Duration::from_millis(500));
        assert_eq!(c.state.gossip_fanout, 2);
        assert_eq!(c.state.max_message_bytes, 256 * 1024);
        for (field, f) in [
            (
                "state.gossip_interval_ms",
                (|s: &mut StateSection| s.gossip_interval_ms = Some(0)) as fn(&mut StateSection),
            ),
            ("state.gossip_fanout", |s| s.gossip_fanout = Some(0)),
            ("state.max_message_bytes", |s| {
                s.max_message_bytes = Some(100)
            }),
            ("state.max_message_bytes", |s| {
                s.max_message_bytes = Some(1 << 30)
            }),
            ("state.purge_interval_ms", |s| s.purge_interval_ms = Some(1)),
        ] {
            let mut c = fc(Some("n1"), Some("127.0.0.1:7101"));
            f(&mut c.state);
            let e = c.finish().unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n.toml");
        std::fs::write(&p, "[state]\ngossip_interval_ms = 100\ngossip_fanout = 3\n").unwrap();
        let mut f = read_file(&p).unwrap();
        f.node.name = Some("n1".into());
        f.node.listen = Some("127.0.0.1:1".into());
        let c = f.finish().unwrap();
        assert_eq!(c.state.gossip_interval, Duration::from_millis(100));
        assert_eq!(c.state.gossip_fanout, 3);
        std::fs::write(&p, "[state]\ngossip_intervl_ms = 100\n").unwrap();
        let e = read_file(&p).unwrap_err().to_string();
        assert!(e.contains("n.toml:2"), "{e}");
    }

    #[test]
    fn api_token_is_read_and_checked() {
        let c = fc(Some("n1"), Some("127.0.0.1:7101")).finish().unwrap();
        assert_eq!(c.api_token, None);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n.toml");
        std::fs::write(&p, "[api]\ntoken = \"0123456789abcdef-secret\"\n").unwrap();
        let mut f = read_file(&p).unwrap();
        f.node.name = Some("n1".into());
        f.node.listen = Some("127.0.0.1:1".into());
        let c = f.clone().finish().unwrap();
        assert_eq!(c.api_token.as_deref(), Some("0123456789abcdef-secret"));
        for bad in ["", "short", "has a space in it, long enough"] {
            let mut f = f.clone();
            f.api.token = Some(bad.into());
            let e = f.finish().unwrap_err().to_string();
            assert!(e.contains("api.token"), "{bad:?}: {e}");
        }
        std::fs::write(&p, "[api]\ntokn = \"x\"\n").unwrap();
        let e = read_file(&p).unwrap_err().to_string();
        assert!(e.contains("n.toml:2"), "{e}");
    }

    #[test]
    fn clock_skew_is_read_checked_and_the_environment_wins() {
        let c = fc(Some("n1"), Some("127.0.0.1:7101"))
            .finish_with_skew(None)
            .unwrap();
        assert_eq!(c.clock_skew_ms, 0);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n.toml");
        std::fs::write(
            &p,
            "[node]\nname = \"n1\"\nlisten = \"127.0.0.1:1\"\nclock_skew_ms = -4000\n",
        )
        .unwrap();
        let f = read_file(&p).unwrap();
        assert_eq!(
            f.clone().finish_with_skew(None).unwrap().clock_skew_ms,
            -4000
        );
        assert_eq!(
            f.clone()
                .finish_with_skew(Some(7000))
                .unwrap()
                .clock_skew_ms,
            7000
        );
        let mut far = f.clone();
        far.node.clock_skew_ms = Some(MAX_CLOCK_SKEW_MS + 1);
        let e = far.finish_with_skew(None).unwrap_err().to_string();
        assert!(
            e.contains("node.clock_skew_ms") && e.contains("out of range"),
            "{e}"
        );
        assert_eq!(parse_clock_skew("5000").unwrap(), 5000);
        assert_eq!(parse_clock_skew(" +5000 ").unwrap(), 5000);
        assert_eq!(parse_clock_skew("-5000").unwrap(), -5000);
        for bad in ["", "5s", "1.5", "ahead", "99999999999999999999"] {
            let e = parse_clock_skew(bad).unwrap_err().to_string();
            assert!(
                e.starts_with(CLOCK_SKEW_ENV) && e.contains("milliseconds"),
                "{bad:?}: {e}"
            );
        }
        let e = parse_clock_skew("-86400001").unwrap_err().to_string();
        assert!(
            e.starts_with(CLOCK_SKEW_ENV) && e.contains("out of range"),
            "{e}"
        );
        std::fs::write(&p, "[node]\nclock_skew_ms = \"5s\"\n").unwrap();
        let e = read_file(&p).unwrap_err().to_string();
        assert!(e.contains("n.toml:2"), "{e}");
    }

    #[test]
    fn the_llm_table_is_read_checked_and_named_in_errors() {
        let c = fc(Some("n1"), Some("127.0.0.1:7101")).finish().unwrap();
        assert!(c.llm.is_none(), "no [llm]: agents stay simulated");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n.toml");
        std::fs::write(
            dir.path().join("prices.toml"),
            "[models.\"m\"]\ninput = 1.0\noutput = 2.0\n",
        )
        .unwrap();
        std::fs::write(
            &p,
            "[node]\nname = \"n1\"\nlisten = \"127.0.0.1:1\"\n[llm]\nprovider = \"openai\"\nbase_url = \"http://127.0.0.1:8080\"\nprices_file = \"prices.toml\"\n[llm.models]\nhaiku = \"m\"\n",
        )
        .unwrap();
        let c = read_file(&p).unwrap().finish().unwrap();
        let l = c.llm.unwrap();
        assert_eq!(l.provider, plexus_llm::ProviderKind::Openai);
        assert_eq!(l.prices_file, Some(dir.path().join("prices.toml")));
        assert_eq!(l.models[&plexus_llm::ModelTier::Haiku], "m");
        // A bad value names its field; a misspelt key its line.
        std::fs::write(
            &p,
            "[llm]\nprovider = \"openai\"\nbase_url = \"localhost\"\n",
        )
        .unwrap();
        let mut f = read_file(&p).unwrap();
        f.node.name = Some("n1".into());
        f.node.listen = Some("127.0.0.1:1".into());
        let e = f.finish().unwrap_err().to_string();
        assert!(e.starts_with("llm.base_url"), "{e}");
        std::fs::write(&p, "[llm]\nprovider = \"openai\"\nbaseurl = \"x\"\n").unwrap();
        let e = read_file(&p).unwrap_err().to_string();
        assert!(e.contains("n.toml:3") && e.contains("baseurl"), "{e}");
        // A price file that is not there is refused at start, by name.
        std::fs::write(
            &p,
            "[llm]\nprovider = \"openai\"\nprices_file = \"nope.toml\"\n",
        )
        .unwrap();
        let mut f = read_file(&p).unwrap();
        f.node.name = Some("n1".into());
        f.node.listen = Some("127.0.0.1:1".into());
        let e = f.finish().unwrap_err().to_string();
        assert!(
            e.starts_with("llm.prices_file") && e.contains("nope.toml"),
            "{e}"
        );
    }

    #[test]
    fn relative_paths_resolve_against_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n.toml");
        std::fs::write(&p, "[node]\nname = \"n1\"\nlisten = \"127.0.0.1:1\"\ndata_dir = \"d\"\ncatalog = [\"c\"]\n").unwrap();
        let c = read_file(&p).unwrap().finish().unwrap();
        assert_eq!(c.data_dir, dir.path().join("d"));
        assert_eq!(c.catalog, vec![dir.path().join("c")]);
    }
}
