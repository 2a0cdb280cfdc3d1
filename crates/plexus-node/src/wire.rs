//! What nodes say to each other over the cluster links.
//!
//! Each node has exactly one cluster-visible actor, its [`Gateway`](crate::gateway),
//! whose message is an opaque byte frame: everything inside is a [`WireFrame`]
//! encoded by `plexus-codec`, size-checked before it is sent. Keeping one
//! remote-visible actor per node keeps ractor_cluster's per-actor proxying
//! cheap.

use plexus_bus::BusFrame;
use plexus_handler::{DiscoveredCommand, ServerStatus};
use plexus_membership::NodeIdentity;
use ractor_cluster::RactorClusterMessage;
use serde::{Deserialize, Serialize};

/// The gateway's message: bytes in, dispatched by the receiver.
#[derive(RactorClusterMessage)]
pub enum GatewayMsg {
    /// One encoded [`WireFrame`].
    Frame(Vec<u8>),
}

/// A message between nodes, with the sender's name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireFrame {
    pub from: String,
    pub msg: Wire,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Wire {
    /// "This is who I am" — sent when a link comes up.
    Hello(NodeIdentity),
    /// A SWIM packet.
    Foca(Vec<u8>),
    /// The sender's hosted plugins.
    Announce(NodeAnnounce),
    /// Message bus traffic.
    Bus(Box<BusFrame>),
    /// Replicated state protocol: one encoded
    /// [`StateWire`](crate::state_actor::StateWire).
    State(Vec<u8>),
}

/// A plugin as its host node describes it to the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostedPlugin {
    pub name: String,
    pub version: String,
    pub status: PluginStatus,
    pub handler: String,
    pub agents: Vec<String>,
    /// Command names, then aliases.
    pub commands: Vec<String>,
    pub aliases: Vec<(String, String)>,
    pub restarts: u32,
    /// The plugin's circuit breaker: closed | open | half-open | forced-open.
    pub breaker: String,
    /// Commands its handler discovered at run time (an MCP server's tools,
    /// with description and input schema); their names are in `commands` too.
    pub tools: Vec<DiscoveredCommand>,
    /// The handler's servers (MCP), with state, pid and restarts.
    pub servers: Vec<ServerStatus>,
}

/// A plugin host's state on its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginStatus {
    Running,
    Restarting,
    /// Restarted too often; no longer serving.
    Failed,
}

/// Everything a node tells others about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeAnnounce {
    pub identity: NodeIdentity,
    /// Increases with every change on the sender.
    pub seq: u64,
    pub plugins: Vec<HostedPlugin>,
}
