//! The state protocol between two nodes' replicas: one [`StateWire`] per
//! message, encoded by `plexus-codec` (the node carries the bytes in its
//! `Wire::State` frame). The encoding is bincode's of this enum: changing a
//! variant or a field changes the wire, and the node's protocol version
//! must be bumped with it.

use serde::{Deserialize, Serialize};

use crate::entry::EntryState;
use crate::lease::{LeaseRequest, LeaseVote};
use crate::sync::GossipMsg;
use crate::types::{Gen, Version};

/// A state protocol message between two nodes' replicas. `id` names one
/// attempt of a [`crate::Coordinator`] request; answers carry it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StateWire {
    /// Anti-entropy (digest, summaries, items) and eager delta pushes.
    Gossip(GossipMsg),
    /// A majority/all write: merge this state of `key` durably, then ack if
    /// it covers `(gen, version)`.
    Write {
        /// Attempt id.
        id: u64,
        /// Key written.
        key: String,
        /// The writer's whole state of the key after the write.
        state: EntryState,
        /// Generation of the write.
        gen: Gen,
        /// Version the acker's state must cover.
        version: Version,
    },
    /// Answer to [`StateWire::Write`]: `ok` once durable and covering.
    WriteAck {
        /// Attempt id.
        id: u64,
        /// Durable and covering.
        ok: bool,
        /// Why not, if not.
        reason: Option<String>,
    },
    /// A majority/all read: send your state of `key`.
    ReadReq {
        /// Attempt id.
        id: u64,
        /// Key read.
        key: String,
    },
    /// Answer to [`StateWire::ReadReq`].
    ReadResp {
        /// Attempt id.
        id: u64,
        /// The answering replica's state of the key, if it has one.
        state: Option<EntryState>,
    },
    /// Vote on a lease request (acceptor side).
    LeaseReq {
        /// Attempt id.
        id: u64,
        /// The request.
        req: LeaseRequest,
    },
    /// An acceptor's vote.
    LeaseVote {
        /// Attempt id.
        id: u64,
        /// The vote (a grant is durable before it is sent).
        vote: LeaseVote,
    },
    /// Release a lease (every acceptor).
    LeaseRelease {
        /// Lease name.
        name: String,
        /// Holder releasing it.
        holder: String,
        /// Its token.
        token: u64,
    },
}
