//! What every actor of a node shares: its name, config, bus, catalog, and
//! the means to reach other nodes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::RwLock;
use plexus_bus::{Bus, BusFrame, RemoteSink};
use plexus_catalog::{Catalog, Plugin};
use plexus_handler::{DiscoveredCommand, HandlerReport};
use plexus_membership::NodeIdentity;
use ractor::ActorRef;

use crate::config::NodeConfig;
use crate::net::links::{Clock, ClusterLinks};
use crate::net::wire::{Wire, WireFrame};

/// Process-group name of a node's gateway.
pub fn gateway_group(node: &str) -> String {
    format!("plexus.gw.{node}")
}

/// Registered name of a node-local actor (node-qualified so several nodes can
/// share a process in the simulation harness).
pub fn actor_name(node: &str, role: &str) -> String {
    format!("{node}:{role}")
}

/// A typed handle to one actor of the node, set by its supervisor when it
/// starts and cleared when it stops. Messages to an actor that is between
/// restarts are dropped (a cast) or answered "restarting" (a call).
pub struct Slot<M>(RwLock<Option<ActorRef<M>>>);

impl<M> Default for Slot<M> {
    fn default() -> Self {
        Slot(RwLock::new(None))
    }
}

impl<M: ractor::Message> Slot<M> {
    pub fn get(&self) -> Option<ActorRef<M>> {
        self.0.read().clone()
    }

    pub fn set(&self, a: ActorRef<M>) {
        *self.0.write() = Some(a);
    }

    /// Forget the actor, if it is still `cell` (a newer one may be set).
    pub fn clear(&self, cell: &ractor::ActorCell) {
        let mut g = self.0.write();
        if g.as_ref().is_some_and(|a| a.get_id() == cell.get_id()) {
            *g = None;
        }
    }

    /// Send without waiting; `false` when the actor is not running.
    pub fn cast(&self, msg: M) -> bool {
        match self.get() {
            Some(a) => a.cast(msg).is_ok(),
            None => false,
        }
    }
}

/// The node's actors, by role (replacing lookups by name strings).
#[derive(Default)]
pub struct Actors {
    pub registry: Slot<crate::actors::registry::RegistryMsg>,
    pub membership: Slot<crate::actors::membership::MembershipMsg>,
    pub gateway: Slot<crate::net::wire::GatewayMsg>,
    pub router: Slot<crate::actors::router::RouterMsg>,
    pub state: Slot<crate::actors::state::StateMsg>,
    pub workflows: Slot<crate::actors::workflows::WorkflowsMsg>,
    pub plugins: Slot<crate::actors::plugins::PluginSupervisorMsg>,
    pub supervisor: Slot<crate::actors::supervisor::NodeSupervisorMsg>,
    /// Each hosted plugin's circuit breaker.
    pub breakers:
        RwLock<std::collections::HashMap<String, ActorRef<crate::actors::breaker::BreakerMsg>>>,
}

impl Actors {
    pub fn breaker(&self, plugin: &str) -> Option<ActorRef<crate::actors::breaker::BreakerMsg>> {
        self.breakers.read().get(plugin).cloned()
    }
}

/// Why a frame could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("no link to node {0}")]
    NoLink(String),
    #[error(transparent)]
    Codec(#[from] plexus_codec::CodecError),
    #[error("send to {0} failed: {1}")]
    Send(String, String),
}

/// Counters shown in status.
#[derive(Debug, Default)]
pub struct LinkStats {
    pub frames_out: AtomicU64,
    pub frames_in: AtomicU64,
    /// Cluster messages the frames came in: a frame alone or a batch of them.
    pub messages_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bad_frames: AtomicU64,
    pub send_failures: AtomicU64,
    /// Incoming cluster connections dropped before a session: TLS
    /// handshakes that failed, timed out or were refused (too many pending).
    pub handshakes_failed: AtomicU64,
    /// Frames refused because the peer speaks another wire protocol
    /// (another Plexus release).
    pub protocol_mismatches: AtomicU64,
}

/// Shared node context.
pub struct NodeCtx {
    pub config: NodeConfig,
    pub identity: RwLock<NodeIdentity>,
    pub bus: Bus,
    pub catalog: Arc<Catalog>,
    /// The plugins this node may host: its catalog, within `--plugins`.
    /// Which of them it runs is the cluster placement's answer
    /// ([`NodeCtx::placement`]).
    pub offered: Vec<Arc<Plugin>>,
    /// The cluster placement as this node last computed it (the Registry
    /// actor keeps it), for status.
    pub placement: RwLock<plexus_placement::Assignment>,
    /// The plugins this node runs by that placement (so a restarted
    /// Registry starts from what the PluginSupervisor runs).
    pub placement_running: RwLock<std::collections::BTreeSet<String>>,
    pub stats: Arc<LinkStats>,
    pub started: Instant,
    /// Typed handles of the node's actors.
    pub actors: Actors,
    /// The exec pipeline (set once, right after the context is made: it
    /// holds the context weakly). See [`crate::services::exec`].
    pub exec_pipeline: std::sync::OnceLock<crate::services::exec::Pipeline>,
    /// Request and routing metrics (`/metrics`).
    pub metrics: crate::services::metrics::Metrics,
    /// How this node reaches its peers (ractor_cluster, or the simulation's network).
    pub links: Arc<dyn ClusterLinks>,
    /// Monotonic and wall-clock time (the simulation's clock can be skewed).
    pub clock: Clock,
    /// Randomness for protocol choices (gossip peers, retry jitter); seeded
    /// by the simulation harness.
    pub rng: parking_lot::Mutex<rand::rngs::StdRng>,
    /// The simulation harness's window into the node (`None` in production).
    pub observer: Option<Arc<dyn crate::services::observe::Observer>>,
    /// Who hosts what, joined with the membership view; published by the
    /// Registry and Membership actors, read by request paths without
    /// waiting for either.
    pub directory: crate::services::directory::DirectoryCell,
    /// Commands discovered at run time per plugin (MCP tools), cluster-wide,
    /// as the registry last saw them announced.
    pub discovered: RwLock<BTreeMap<String, Vec<DiscoveredCommand>>>,
    /// Which signals the router decides with (`bm25f+all-MiniLM-L6-v2`, or
    /// `bm25f alone: why`); the Router actor keeps it current for `status`.
    pub router_signals: RwLock<String>,
    /// The latest report of each local handler that reports (MCP), so a
    /// restarted registry starts from it.
    pub handler_reports: RwLock<BTreeMap<String, HandlerReport>>,
    /// Readiness and drain: the drain flag and the work in flight.
    pub lifecycle: crate::services::lifecycle::Lifecycle,
    /// The language model agents run on (`[llm]`); `None`: simulated.
    pub llm: Option<Arc<crate::services::agents::LlmRuntime>>,
    /// Who may call the API (`[api]` tokens and signing key).
    pub auth: plexus_auth::Authenticator,
    /// Each API caller's token bucket.
    pub quotas: parking_lot::Mutex<plexus_auth::Quotas>,
}

impl NodeCtx {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// An offered plugin by name.
    pub fn offered(&self, plugin: &str) -> Option<&Arc<Plugin>> {
        self.offered.iter().find(|p| p.name == plugin)
    }

    /// The node's exec pipeline.
    pub fn exec(&self) -> &crate::services::exec::Pipeline {
        self.exec_pipeline
            .get()
            .expect("the exec pipeline is set when the node context is made")
    }

    /// Whether `command` of `plugin` may be retried without an idempotency
    /// key: the catalog's word, else the discovered tool's, else yes (an
    /// unknown command fails before running anyway).
    pub fn command_idempotent(&self, plugin: &str, command: &str) -> bool {
        let command = command.trim_start_matches('/');
        let command = command.strip_prefix("command:").unwrap_or(command);
        if let Some(c) = self.catalog.plugin(plugin).and_then(|p| p.command(command)) {
            return c.idempotent;
        }
        self.discovered
            .read()
            .get(plugin)
            .and_then(|v| v.iter().find(|d| d.name == command))
            .is_none_or(|d| d.idempotent)
    }

    /// Encode and send one message to `node`'s gateway.
    pub fn send(&self, node: &str, msg: Wire) -> Result<(), LinkError> {
        let kind = match &msg {
            Wire::Hello(_) => 0,
            Wire::Foca(_) => 1,
            Wire::Announce(_) => 2,
            Wire::Bus(_) => 3,
            Wire::State(_) => 4,
        };
        let frame = WireFrame::new(self.config.name.clone(), msg);
        // Refuse oversized frames here: the receiver would drop the whole link.
        let bytes = plexus_codec::encode_limited(&frame, self.config.max_frame_bytes)?;
        let n = bytes.len() as u64;
        let bytes_len = bytes.len();
        match self.links.send(self.name(), node, bytes) {
            Ok(()) => {
                self.stats.frames_out.fetch_add(1, Ordering::Relaxed);
                self.stats.bytes_out.fetch_add(n, Ordering::Relaxed);
                self.metrics.wire_sent(kind, bytes_len);
                Ok(())
            }
            Err(e) => {
                if !matches!(e, LinkError::NoLink(_)) {
                    self.stats.send_failures.fetch_add(1, Ordering::Relaxed);
                }
                Err(e)
            }
        }
    }

    /// Nodes we currently have a gateway link to.
    pub fn linked_nodes(&self) -> Vec<String> {
        self.links.linked(self.name())
    }
}

/// The bus's way out of the node.
pub struct BusLink {
    pub ctx: std::sync::Weak<NodeCtx>,
}

impl RemoteSink for BusLink {
    fn send(&self, node: &str, frame: BusFrame) -> Result<(), String> {
        let ctx = self.ctx.upgrade().ok_or("node stopping")?;
        ctx.send(node, Wire::Bus(Box::new(frame)))
            .map_err(|e| e.to_string())
    }

    fn interest_changed(&self, interest: Vec<(String, String)>) {
        if let Some(ctx) = self.ctx.upgrade() {
            for n in ctx.linked_nodes() {
                let _ = ctx.send(
                    &n,
                    Wire::Bus(Box::new(BusFrame::Interest(interest.clone()))),
                );
            }
        }
    }
}
