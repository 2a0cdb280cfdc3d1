//! Deltas (one accepted change, shipped to other replicas) and change events.

use serde::{Deserialize, Serialize};

use crate::entry::Meta;
use crate::types::{Access, Gen, Kind, NodeId, PluginId, Stamp, Version};
use crate::value::ValueOp;

/// One change, as produced by [`crate::Store::apply_local`] and consumed by
/// [`crate::Store::apply_remote`].
///
/// Deltas are delivered causally per key: a replica applies a delta only when
/// it has seen everything the origin had seen on that key (`deps`) and the
/// origin's previous change (`counter - 1`); earlier ones wait in a bounded
/// buffer, duplicates are ignored, and anything lost is repaired by digest
/// anti-entropy. Every delta, removals included, carries its own dot
/// `(origin, counter)`, so a lost removal always shows up as a version
/// difference (the crdts OR-set remove alone does not advance any clock).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// Key changed.
    pub key: String,
    /// Plugin that authored the change (re-checked against the ACL on apply).
    pub author: PluginId,
    /// Node where the change was made: the actor of its dot.
    pub origin: NodeId,
    /// Generation of the key the change belongs to.
    pub gen: Gen,
    /// Dot counter: this is the origin's `counter`-th change of the key in
    /// this generation.
    pub counter: u64,
    /// The key's version at the origin just before the change.
    pub deps: Version,
    /// Origin wall clock (ms) when the change was made.
    pub ts_ms: u64,
    /// The change.
    pub op: DeltaOp,
}

/// The creator's view of the key's previous generation, carried by a
/// creation so that receivers can check that the creator was allowed to
/// replace it (see [`DeltaOp::Create`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prev {
    /// Generation the creator held.
    pub gen: Gen,
    /// Its version at the creator.
    pub version: Version,
}

/// What a delta does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeltaOp {
    /// Create the key (first change of a generation at its origin). The
    /// author becomes the owner. A creation of a higher generation than a
    /// replica holds replaces the entry; it is accepted only if the creator
    /// had seen the held generation end (deleted, or expired at the
    /// creation's time) or is its owner. A receiver that has not yet seen
    /// `prev` waits for it (buffered) so that every replica judges alike.
    Create {
        /// Unique creation stamp `(ts_ms, origin, counter)`.
        stamp: Stamp,
        /// Value type.
        kind: Kind,
        /// Initial access and expiry.
        meta: Meta,
        /// The creator's state of the previous generation, if it held one.
        prev: Option<Prev>,
    },
    /// Change the value, under the creation the author saw as winner.
    Value {
        /// Creation whose ACL authorised the change.
        target: Stamp,
        /// The CRDT operation.
        op: ValueOp,
    },
    /// Change the access level (owner only). Stamped by the delta.
    Access {
        /// Creation whose access changes.
        target: Stamp,
        /// New access level.
        access: Access,
    },
    /// Change or clear the expiry (owner only). Stamped by the delta.
    Expiry {
        /// Creation whose expiry changes.
        target: Stamp,
        /// New expiry (ms timestamp).
        expires_at: Option<u64>,
    },
    /// Delete the generation (owner only): a tombstone that wins over any
    /// concurrent change of the same generation.
    Delete {
        /// Creation whose owner deleted it.
        target: Stamp,
    },
}

impl Delta {
    /// Short operation name for audit and logs.
    pub fn op_name(&self) -> &'static str {
        self.op.name()
    }

    /// The delta's unique stamp `(ts_ms, origin, counter)`.
    pub fn stamp(&self) -> Stamp {
        Stamp {
            ts_ms: self.ts_ms,
            node: self.origin.clone(),
            seq: self.counter,
        }
    }
}

impl DeltaOp {
    /// Short operation name.
    pub fn name(&self) -> &'static str {
        use crate::value::MapAct;
        match self {
            DeltaOp::Create { .. } => "create",
            DeltaOp::Access { .. } => "set-access",
            DeltaOp::Expiry { .. } => "set-expiry",
            DeltaOp::Delete { .. } => "delete",
            DeltaOp::Value { op, .. } => match op {
                ValueOp::Put(_) => "put",
                ValueOp::GInc(_) => "incr",
                ValueOp::Pn(c) if c.up => "incr",
                ValueOp::Pn(_) => "decr",
                ValueOp::Set(crdts::orswot::Op::Add { .. }) => "or-add",
                ValueOp::Set(crdts::orswot::Op::Rm { .. }) => "or-remove",
                ValueOp::Map(m) => match m.act {
                    MapAct::Put(_) => "map-put",
                    MapAct::Count(_) => "map-count",
                    MapAct::Add(_) => "map-or-add",
                    MapAct::Remove(_) => "map-or-remove",
                    MapAct::RemoveField => "map-remove-field",
                },
            },
        }
    }

    pub(crate) fn change_kind(&self) -> ChangeKind {
        match self {
            DeltaOp::Create { .. } => ChangeKind::Created,
            DeltaOp::Value { .. } => ChangeKind::Updated,
            DeltaOp::Access { .. } | DeltaOp::Expiry { .. } => ChangeKind::MetaChanged,
            DeltaOp::Delete { .. } => ChangeKind::Deleted,
        }
    }
}

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    /// Created (a new generation).
    Created,
    /// Value changed.
    Updated,
    /// Access level or expiry changed.
    MetaChanged,
    /// Deleted.
    Deleted,
    /// Expired and purged to a tombstone.
    Expired,
    /// Full state merged from a peer by anti-entropy.
    Merged,
}

/// An accepted change, for the node layer to publish on
/// [`StateEvent::topic`] (`state/changes/{key}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateEvent {
    /// Key changed.
    pub key: String,
    /// What happened.
    pub kind: ChangeKind,
    /// Author plugin (`None` for merges and purges).
    pub author: Option<PluginId>,
    /// Owner of the entry (before the change, for a deletion or expiry;
    /// `None` if unknown, e.g. a merged tombstone).
    pub owner: Option<PluginId>,
    /// Access level of the entry (same rule as `owner`).
    pub access: Option<Access>,
    /// Node the change came from.
    pub node: NodeId,
    /// Generation after the change.
    pub gen: Gen,
    /// Version after the change.
    pub version: Version,
}

impl StateEvent {
    /// May `plugin` be told about this change? Only if it may read the
    /// entry (the event names the key, not the value). Unknown owner or
    /// access: no.
    pub fn readable_by(&self, plugin: &str) -> bool {
        match (&self.owner, &self.access) {
            (Some(owner), Some(access)) => access.can_read(owner, plugin),
            _ => false,
        }
    }

    /// The bus topic for this event: `state/changes/{key}`, always a valid
    /// concrete topic. The key's `/` separate segments; `*`, `%`, whitespace
    /// and control characters are percent-encoded (and `/` too if the key
    /// has an empty segment); a topic longer than [`MAX_TOPIC_BYTES`] ends in
    /// `~` and a hash of the key instead. Subscribe to `state/changes/**`;
    /// the event carries the exact key.
    pub fn topic(&self) -> String {
        topic_for(&self.key)
    }
}

/// Longest bus topic (the bus refuses longer ones).
pub const MAX_TOPIC_BYTES: usize = 256;

/// Topic prefix of state-change events.
pub const TOPIC_PREFIX: &str = "state/changes/";

/// The bus topic of changes to `key` (see [`StateEvent::topic`]).
pub fn topic_for(key: &str) -> String {
    use std::fmt::Write;
    let keep_slash = !key.split('/').any(str::is_empty);
    let mut t = String::with_capacity(TOPIC_PREFIX.len() + key.len());
    t.push_str(TOPIC_PREFIX);
    for c in key.chars() {
        let escape = c == '*'
            || c == '%'
            || c.is_whitespace()
            || c.is_control()
            || (c == '/' && !keep_slash);
        if escape {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(t, "%{b:02X}");
            }
        } else {
            t.push(c);
        }
    }
    if t.len() > MAX_TOPIC_BYTES || key.is_empty() {
        let h = crate::digest::Fnv::new().str(key).finish();
        t = format!("{TOPIC_PREFIX}~{h:016x}");
    }
    t
}
