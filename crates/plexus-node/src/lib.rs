//! A Plexus node: one process of the cluster.
//!
//! [`start`] loads nothing by itself: the caller passes the configuration and
//! the catalog. It bumps the node's generation in its data directory, opens
//! the ractor_cluster listener (with the cookie), starts the supervised actor
//! tree and the client API, and returns a [`NodeHandle`].

// The layers are private: other crates use the start/exec face below, the
// configuration, and `testkit` (the simulation harness and the bench).
mod actors;
pub mod config;
mod ctx;
mod http;
mod net;
mod services;
pub mod testkit;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use plexus_bus::{Bus, BusConfig};
use plexus_catalog::{Catalog, Plugin};
use plexus_membership::NodeIdentity;
use ractor::{Actor, ActorRef};
use ractor_cluster::node::NodeConnectionMode;
use ractor_cluster::{NodeServer, NodeServerMessage};
use rand::SeedableRng;

use actors::membership::MembershipMsg;
use actors::supervisor::{NodeSupervisor, NodeSupervisorArgs, NodeSupervisorMsg};
pub use config::{ConfigError, FileConfig, NodeConfig};
pub use plexus_exec::{ExecError, Failure, RawJson, Served, ServedBy, Target};
pub use services::exec::{kind as exec_error_kind, CallSpec};

/// Run a request through the node's exec pipeline (breaker-aware host
/// choice, retry, fallbacks, cache/default under one deadline): what
/// `POST /v1/exec` does, for in-process callers (the simulation, the bench).
pub async fn exec(ctx: &NodeCtx, spec: CallSpec) -> Result<Served, Failure> {
    let call = services::exec::call(ctx, spec)?;
    services::exec::run(ctx, &call).await
}
pub use ctx::NodeCtx;
use ctx::{actor_name, BusLink, LinkStats};
/// The client API's OpenAPI document (`plexus openapi`, `docs/openapi.json`).
pub use http::openapi::spec_json as openapi_json;
use net::links::{self, Clock, ClusterLinks, RactorLinks};
use net::{tls, tls_listener};
use services::observe::Observer;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("unknown plugin {name:?} in the node's plugin list; the catalog has: {known}")]
    UnknownPlugin { name: String, known: String },
    #[error("data directory {path}: {message}")]
    DataDir { path: String, message: String },
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start {what}: {message}")]
    Spawn { what: &'static str, message: String },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// A running node.
pub struct NodeHandle {
    pub ctx: Arc<NodeCtx>,
    pub api_addr: SocketAddr,
    supervisor: ActorRef<NodeSupervisorMsg>,
    supervisor_done: tokio::task::JoinHandle<()>,
    /// `None` for an in-process node (simulation): it has no listener.
    node_server: Option<ActorRef<NodeServerMessage>>,
    /// The sockets' tasks (the HTTP API first; with TLS, the cluster port).
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Ends the HTTP API gracefully (`None` in process: it has none).
    api_stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// How an in-process node (the simulation harness's) meets the world
/// instead of sockets: see [`start_in_process`].
pub struct InProcess {
    /// The network between the in-process nodes.
    pub links: Arc<dyn ClusterLinks>,
    /// Its clock (simulated, skewable).
    pub clock: Clock,
    /// Seed of the node's protocol randomness (gossip peers, retry jitter).
    pub rng_seed: u64,
    /// Receives the node's observations.
    pub observer: Option<Arc<dyn Observer>>,
}

/// Pick which catalog plugins this node may host (`--plugins` narrows the
/// catalog; the cluster placement picks among them).
pub fn select_plugins(
    catalog: &Catalog,
    wanted: Option<&[String]>,
) -> Result<Vec<Arc<Plugin>>, StartError> {
    match wanted {
        None => Ok(catalog.plugins.iter().cloned().map(Arc::new).collect()),
        Some(names) => {
            names
                .iter()
                .map(|n| {
                    catalog.plugin(n).cloned().map(Arc::new).ok_or_else(|| {
                        StartError::UnknownPlugin {
                            name: n.clone(),
                            known: catalog
                                .plugins
                                .iter()
                                .map(|p| p.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", "),
                        }
                    })
                })
                .collect()
        }
    }
}

/// Read, bump and durably store the node's generation (one per start).
pub fn next_generation(dir: &Path) -> Result<u64, StartError> {
    let err = |m: String| StartError::DataDir {
        path: dir.display().to_string(),
        message: m,
    };
    std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create: {e}")))?;
    let file = dir.join("generation");
    let prev = match std::fs::read_to_string(&file) {
        Ok(s) => s.trim().parse::<u64>().map_err(|_| {
            err(format!(
                "{} does not hold a number: {:?}",
                file.display(),
                s.trim()
            ))
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(err(format!("cannot read {}: {e}", file.display()))),
    };
    let next = prev + 1;
    let tmp = dir.join("generation.tmp");
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(next.to_string().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &file)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    };
    write().map_err(|e| err(format!("cannot write {}: {e}", file.display())))?;
    Ok(next)
}

/// Start a node.
pub async fn start(mut config: NodeConfig, catalog: Catalog) -> Result<NodeHandle, StartError> {
    let hosted = select_plugins(&catalog, config.plugins.as_deref())?;
    let generation = next_generation(&config.data_dir)?;

    // Resolve port 0 now so the identity carries the real addresses.
    if config.listen.port() == 0 {
        let l =
            std::net::TcpListener::bind(config.listen).map_err(|source| StartError::Listen {
                addr: config.listen,
                source,
            })?;
        config.listen = l.local_addr().map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
    }
    let api_listener = tokio::net::TcpListener::bind(config.api)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.api,
            source,
        })?;
    config.api = api_listener
        .local_addr()
        .map_err(|source| StartError::Listen {
            addr: config.api,
            source,
        })?;
    // The API again, on a Unix socket for the plugins this node hosts: a
    // sandboxed plugin has no network, but it can reach a socket file.
    let plugin_listener = plugin_socket(&config);
    if let Some((_, path)) = &plugin_listener {
        config.plugin_api = Some(format!("unix:{}", path.display()));
    }
    let tls = config.tls.as_ref().map(tls::load).transpose()?;
    // Without TLS, ractor_cluster's listener takes the cluster port (this
    // bind only fails early and clearly if it is taken). With TLS the node
    // keeps the port and does the handshakes itself (`tls_listener`).
    let cluster_listener = std::net::TcpListener::bind(config.listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
    let front_door =
        match &tls {
            Some(_) => Some(tokio::net::TcpListener::from_std(cluster_listener).map_err(
                |source| StartError::Listen {
                    addr: config.listen,
                    source,
                },
            )?),
            None => {
                drop(cluster_listener);
                None
            }
        };
    // With TLS, ractor_cluster's transitive dialling (plain TCP) cannot
    // reach a TLS listener: the membership actor's dial loop connects every
    // member itself, over TLS (`RactorLinks::dial`).
    let (encryption, mode, port, listen_ip) = match &tls {
        Some(t) => (
            Some(ractor_cluster::IncomingEncryptionMode::Tls(
                t.acceptor.clone(),
            )),
            NodeConnectionMode::Isolated,
            0,
            std::net::IpAddr::from([127, 0, 0, 1]),
        ),
        None => (
            None,
            NodeConnectionMode::Transitive,
            config.listen.port(),
            config.listen.ip(),
        ),
    };
    let server = NodeServer::new(
        port,
        config.cookie.clone(),
        config.name.clone(),
        config.advertise_host.clone(),
        encryption,
        // ractor_cluster treats `None` as Isolated: say what we mean.
        Some(mode),
    )
    .with_listen_addr(listen_ip)
    .with_max_inbound_frame_size((config.max_frame_bytes + 64 * 1024) as u64);
    let (node_server, _) = Actor::spawn(Some(actor_name(&config.name, "node-server")), server, ())
        .await
        .map_err(|e| StartError::Spawn {
            what: "cluster listener",
            message: e.to_string(),
        })?;
    let clock = Clock::system();
    if config.clock_skew_ms != 0 {
        // Fault injection (`[node] clock_skew_ms`, PLEXUS_CLOCK_SKEW_MS).
        clock.set_skew_ms(config.clock_skew_ms);
        tracing::warn!(
            skew_ms = config.clock_skew_ms,
            "fault injection: this node's wall clock (state stamps, expiry, leases) is skewed"
        );
    }
    let acceptor = tls.as_ref().map(|t| t.acceptor.clone());
    let wiring = InProcess {
        // A batch may fill the peers' inbound limit (set on the NodeServer
        // above) but not the headroom ractor_cluster's framing needs.
        links: Arc::new(RactorLinks::new(
            node_server.clone(),
            tls.map(|t| t.connector),
            config.max_frame_bytes,
        )),
        clock,
        rng_seed: rand::random(),
        observer: None,
    };
    let (ctx, supervisor, supervisor_done) =
        match spawn_tree(config, catalog, hosted, generation, wiring).await {
            Ok(t) => t,
            Err(e) => {
                node_server.stop(None);
                return Err(e);
            }
        };

    let app = http::api::router(ctx.clone());
    let api_addr = ctx.config.api;
    // Stopped gracefully by `shutdown`: answers already computed (the last
    // ones of a drain) still reach their clients.
    let (api_stop, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut tasks = vec![tokio::spawn(http::serve::serve(
        api_listener,
        app.clone(),
        ctx.clone(),
        api_stopped,
    ))];
    if let Some((l, path)) = plugin_listener {
        let (_keep, never) = tokio::sync::oneshot::channel::<()>();
        let ctx = ctx.clone();
        tasks.push(tokio::spawn(async move {
            // Aborted at shutdown; the socket's directory goes with it.
            let _cleanup = RemoveOnDrop(path.parent().map(Path::to_path_buf));
            let _keep = _keep;
            http::serve::serve(l, app, ctx, never).await;
        }));
    }
    if let (Some(listener), Some(acceptor)) = (front_door, acceptor) {
        let limits = tls_listener::HandshakeLimits {
            timeout: ctx.config.handshake_timeout,
            max_pending: ctx.config.max_pending_handshakes,
        };
        tasks.push(tokio::spawn(tls_listener::serve(
            listener,
            acceptor,
            node_server.clone(),
            ctx.stats.clone(),
            limits,
        )));
    }
    // The caller (and whoever reads the ready line) may send requests at
    // once: let the plugins of the first placement start before returning,
    // as hosts started inside the supervisor's own start used to.
    plugins_placed_here_started(&ctx, PLUGINS_START_WITHIN).await;
    tracing::info!(node = %ctx.name(), cluster = %ctx.config.cluster_addr(), api = %api_addr, generation, "node started");
    Ok(NodeHandle {
        ctx,
        api_addr,
        supervisor,
        supervisor_done,
        node_server: Some(node_server),
        tasks,
        api_stop: Some(api_stop),
    })
}

/// Bind the plugins' Unix socket: `$TMPDIR/plexus-NODE-PID/api.sock`, in a
/// directory anyone may enter and a socket anyone may connect to (plugin
/// processes run as nobody; the token is what admits them). `None` (the
/// plugins get the TCP address) when it cannot be made.
fn plugin_socket(config: &NodeConfig) -> Option<(tokio::net::UnixListener, std::path::PathBuf)> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    remove_stale_plugin_sockets();
    let dir = std::env::temp_dir().join(format!("plexus-{}-{}", config.name, std::process::id()));
    let path = dir.join("api.sock");
    let made = (|| {
        std::fs::DirBuilder::new()
            .mode(0o755)
            .recursive(true)
            .create(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        let _ = std::fs::remove_file(&path);
        let l = tokio::net::UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
        Ok::<_, std::io::Error>(l)
    })();
    match made {
        Ok(l) => Some((l, path)),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "no Unix socket for plugins; they get the TCP API address");
            None
        }
    }
}

/// Socket directories of node processes that are gone (killed, so their
/// own cleanup never ran): `plexus-NAME-PID` holding only `api.sock`.
fn remove_stale_plugin_sockets() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.starts_with("plexus-"))
            .and_then(|n| n.rsplit_once('-'))
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = e.path();
        let only_socket = std::fs::read_dir(&dir)
            .map(|d| d.flatten().all(|f| f.file_name() == "api.sock"))
            .unwrap_or(false);
        if only_socket && !std::path::Path::new("/proc").join(pid.to_string()).exists() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// Removes a directory (the plugins' socket's) when dropped.
struct RemoveOnDrop(Option<std::path::PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(d) = &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// How long `start` waits for the first placement's plugins to start.
const PLUGINS_START_WITHIN: Duration = Duration::from_secs(1);

/// Wait until every plugin the placement runs here is announced running
/// (or failed), at most `limit`. A plugin that takes longer is reported
/// `restarting` until it runs, as it would be after a restart.
async fn plugins_placed_here_started(ctx: &NodeCtx, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    // Each placement and status change reaches the directory.
    let mut changes = ctx.directory.subscribe();
    loop {
        let placed = ctx.placement_running.read().clone();
        let dir = ctx.directory.load();
        let started = dir
            .announces
            .iter()
            .find(|a| a.identity.name == ctx.name())
            .is_some_and(|a| {
                placed.iter().all(|p| {
                    a.plugins
                        .iter()
                        .any(|h| &h.name == p && h.status != net::wire::PluginStatus::Restarting)
                })
            });
        if started {
            return;
        }
        if !matches!(
            tokio::time::timeout_at(deadline, changes.changed()).await,
            Ok(Ok(()))
        ) {
            tracing::warn!(plugins = ?placed, "not every plugin placed here has started yet");
            return;
        }
    }
}

/// Start a node without sockets: no cluster listener, no HTTP API. Its peers
/// are reached through `wiring.links`, its time is `wiring.clock`. This is
/// how the simulation harness runs several real nodes in one process.
pub async fn start_in_process(
    config: NodeConfig,
    catalog: Catalog,
    wiring: InProcess,
) -> Result<NodeHandle, StartError> {
    let hosted = select_plugins(&catalog, config.plugins.as_deref())?;
    let generation = next_generation(&config.data_dir)?;
    let api_addr = config.api;
    let (ctx, supervisor, supervisor_done) =
        spawn_tree(config, catalog, hosted, generation, wiring).await?;
    tracing::info!(node = %ctx.name(), generation, "in-process node started");
    Ok(NodeHandle {
        ctx,
        api_addr,
        supervisor,
        supervisor_done,
        node_server: None,
        tasks: Vec::new(),
        api_stop: None,
    })
}

type Tree = (
    Arc<NodeCtx>,
    ActorRef<NodeSupervisorMsg>,
    tokio::task::JoinHandle<()>,
);

/// The node's shared context and supervised actor tree.
async fn spawn_tree(
    config: NodeConfig,
    catalog: Catalog,
    hosted: Vec<Arc<Plugin>>,
    generation: u64,
    wiring: InProcess,
) -> Result<Tree, StartError> {
    let llm = match &config.llm {
        Some(c) => Some(Arc::new(
            services::agents::LlmRuntime::new(c.clone()).map_err(|message| StartError::Spawn {
                what: "the language-model runtime",
                message,
            })?,
        )),
        None => None,
    };
    let identity = NodeIdentity {
        name: config.name.clone(),
        cluster_addr: config.cluster_addr(),
        api_addr: config.api_addr(),
        generation,
    };
    let mut bus_cfg = BusConfig::new(config.name.clone());
    bus_cfg.max_payload = config.max_payload_bytes + 16 * 1024;
    let bus = Bus::new(bus_cfg);
    let auth = config.api_auth.authenticator(config.api_token.as_deref());
    let ctx = Arc::new(NodeCtx {
        auth,
        quotas: Default::default(),
        identity: RwLock::new(identity),
        bus: bus.clone(),
        catalog: Arc::new(catalog),
        offered: hosted,
        placement: RwLock::new(Default::default()),
        placement_running: RwLock::new(Default::default()),
        stats: Arc::new(LinkStats::default()),
        started: links::now(),
        metrics: services::metrics::Metrics::default(),
        directory: services::directory::DirectoryCell::default(),
        discovered: RwLock::new(Default::default()),
        router_signals: RwLock::new("bm25f alone: router starting".to_string()),
        handler_reports: RwLock::new(Default::default()),
        lifecycle: Default::default(),
        actors: ctx::Actors::default(),
        exec_pipeline: std::sync::OnceLock::new(),
        config,
        links: wiring.links,
        clock: wiring.clock,
        rng: parking_lot::Mutex::new(rand::rngs::StdRng::seed_from_u64(wiring.rng_seed)),
        observer: wiring.observer,
        llm,
    });
    let _ = ctx.exec_pipeline.set(services::exec::pipeline(&ctx));
    if ctx.auth.can_issue() {
        tokio::spawn(http::tokens::sync_revoked(Arc::downgrade(&ctx)));
    }
    bus.set_remote_sink(Arc::new(BusLink {
        ctx: Arc::downgrade(&ctx),
    }));
    let name = ctx.name().to_string();
    let seed = plexus_handler::fnv(format!("{name}/{generation}").as_bytes());
    let (supervisor, sup_join) = Actor::spawn(
        Some(actor_name(&name, "node")),
        NodeSupervisor,
        NodeSupervisorArgs {
            ctx: ctx.clone(),
            seed,
        },
    )
    .await
    .map_err(|e| StartError::Spawn {
        what: "node supervisor",
        message: e.to_string(),
    })?;
    let supervisor_done = tokio::spawn(async move {
        let _ = sup_join.await;
    });
    Ok((ctx, supervisor, supervisor_done))
}

impl NodeHandle {
    /// Wait until the actor tree stops by itself (a supervisor gave up).
    pub async fn stopped(&mut self) {
        let _ = (&mut self.supervisor_done).await;
    }

    /// Stop taking new work (`/v1/ready` and every API call that would
    /// start work answer 503), then wait up to `grace` for the work in
    /// flight: API requests and plugin calls this node runs for any node.
    /// Returns what was still in flight when the grace ran out (0: drained).
    /// Call [`NodeHandle::shutdown`] next to leave the cluster.
    pub async fn drain(&self, grace: Duration) -> usize {
        let l = &self.ctx.lifecycle;
        l.begin_drain();
        tracing::info!(
            in_flight = l.in_flight(),
            grace_ms = grace.as_millis() as u64,
            "draining: no new work; waiting for the work in flight"
        );
        let left = l.wait_idle(grace).await;
        if left == 0 {
            tracing::info!("drained: nothing in flight");
        } else {
            tracing::warn!(
                in_flight = left,
                "drain grace over with work still in flight; leaving anyway"
            );
        }
        left
    }

    /// Leave the cluster gracefully and stop everything.
    pub async fn shutdown(self) {
        if let Some(m) = self.ctx.actors.membership.get() {
            let _ = m
                .call(MembershipMsg::Leave, Some(Duration::from_secs(1)))
                .await;
        }
        // Give the leave notice a moment on the wire.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut tasks = self.tasks;
        if let Some(stop) = self.api_stop {
            // Finish sending the answers in hand (open event streams would
            // hold it forever: bounded).
            let _ = stop.send(());
            if let Some(api) = tasks.first_mut() {
                let _ = tokio::time::timeout(Duration::from_secs(2), api).await;
            }
        }
        for t in &tasks {
            t.abort();
        }
        self.supervisor.stop(Some("shutdown".into()));
        let _ = tokio::time::timeout(Duration::from_secs(3), self.supervisor_done).await;
        if let Some(s) = self.node_server {
            s.stop(Some("shutdown".into()));
        }
    }

    /// Stop at once, as a crash would: no leave notice, no graceful stop
    /// (the simulation's crash fault). Returns when the actor tree is gone.
    pub async fn crash(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.supervisor.kill();
        let _ = self.supervisor_done.await;
        if let Some(s) = self.node_server {
            s.kill();
        }
    }
}
