//! Plexus replicated state core.
//!
//! A pure (no actors, no sockets, no clock) keyed store of CRDT values that
//! a node's state actor drives:
//!
//! - [`Store`] holds entries (LWW register, G-/PN-counter, OR-set, map of those)
//!   with owner plugin, access level, version and optional expiry; local
//!   operations ([`Store::apply_local`]) checked against the ACL; remote
//!   deltas ([`Store::apply_remote`]) re-checked deterministically and
//!   delivered causally; audit log; state-change [`StateEvent`]s.
//! - Anti-entropy ([`GossipMsg`], [`Store::handle_gossip`]) exchanges bucketed
//!   digests, then per-key summaries, then only what the peer lacks, every
//!   message under a byte limit.
//! - [`DurableStore`] is the same store persisted in redb; a local write
//!   returns only after its commit is fsync'd, and reopening restores every
//!   acknowledged change and the audit log.
//! - Leases ([`LeaseTable`], [`LeaseAcquire`], [`Fence`]) are granted by a
//!   majority of acceptors and carry fencing tokens.
//! - Consistency levels ([`Consistency`], [`AckTracker`]) count the acks for
//!   local / majority / all reads and writes.
//! - The [`Coordinator`] runs the replication protocol ([`StateWire`]):
//!   majority/all writes and reads, lease votes and retries, gossip rounds,
//!   timeouts. It changes a [`Replica`] in memory and returns a [`Ready`]
//!   (persist, then publish, send, reply, set timers) for the node to
//!   perform.
//!
//! Time is always passed in (`now_ms`, milliseconds since the Unix epoch).
//! `docs/state.md` describes the model, the protocol and the guarantees.

#![warn(missing_docs)]

pub mod audit;
pub mod coordinator;
pub mod delta;
pub mod digest;
pub mod durable;
pub mod entry;
pub mod lease;
pub mod quorum;
pub mod remote;
pub mod replica;
pub mod store;
pub mod sync;
pub mod types;
pub mod value;
pub mod wire;

pub use audit::{AuditLog, AuditQuery, AuditRecord, Outcome, Source};
pub use coordinator::{
    Coordinator, CoordinatorConfig, LeaseAcquireRequest, Member, Operation, Outgoing, ReadOutcome,
    ReadRequest, Ready, Reply, ReqId, RequestError, Timer, TimerSet, WriteOutcome, WriteRequest,
};
pub use delta::{
    topic_for, ChangeKind, Delta, DeltaOp, Prev, StateEvent, MAX_TOPIC_BYTES, TOPIC_PREFIX,
};
pub use digest::{bucket_of, Digest, KeyDigest, KeySummary, SyncItem, BUCKETS};
pub use durable::{DurableConfig, DurableStore};
pub use entry::{Body, Creation, EntryInfo, EntryState, Live, Meta};
pub use lease::{Fence, Lease, LeaseAcquire, LeaseProgress, LeaseRequest, LeaseTable, LeaseVote};
pub use quorum::{AckStatus, AckTracker, Consistency};
pub use remote::{DeltaStatus, RemoteOutcome};
pub use replica::{Changes, Persist, Replica};
pub use store::{Change, LocalOp, Store, StoreConfig};
pub use sync::{
    pack_deltas, pack_items, pack_summaries, GossipMsg, GossipOutput, Packed, MIN_MESSAGE_BYTES,
};
pub use types::{Access, Gen, Kind, NodeId, PluginId, Stamp, StateError, Version};
pub use value::{
    CounterOp, FieldKind, FieldMap, FieldStores, FieldView, LwwReg, MapAct, MapDot, MapOp, RegVal,
    Value, ValueOp, View,
};
pub use wire::StateWire;
