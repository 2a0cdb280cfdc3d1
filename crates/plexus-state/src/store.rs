//! The replicated store: local operations under the ACL, reads, expiry and
//! audit. Remote deltas are in [`crate::remote`], anti-entropy in
//! [`crate::sync`]. Pure: no I/O, no clock (every call takes `now_ms`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::audit::{AuditLog, AuditQuery, AuditRecord, Outcome, Source};
use crate::delta::{Delta, DeltaOp, Prev, StateEvent};
use crate::digest::{bucket_of, summary_hash, BUCKETS};
use crate::entry::{EntryInfo, EntryState, Meta};
use crate::types::{Access, Gen, Kind, NodeId, Stamp, StateError, Version};
use crate::value::{field_kind, make, Value, ValueOp, View};

/// Limits and timings of a store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreConfig {
    /// Largest payload of one change: register text, set members, map field
    /// name and value, access list (bytes).
    pub max_value_bytes: usize,
    /// Largest key (bytes).
    pub max_key_bytes: usize,
    /// Audit records kept in memory (the durable store keeps
    /// [`crate::DurableConfig::audit_retention`] on disk).
    pub audit_capacity: usize,
    /// Out-of-order deltas buffered (all keys together); beyond it they are
    /// dropped and anti-entropy repairs.
    pub pending_capacity: usize,
    /// A buffered delta still waiting this long after it was made (origin
    /// clock) is dropped by [`Store::purge`]; anti-entropy repairs.
    pub pending_ttl_ms: u64,
    /// Deltas remembered per key so that anti-entropy can send a lagging
    /// peer exactly the changes it lacks (each one ACL-checked on arrival)
    /// instead of the whole entry. 0 always sends whole entries.
    pub delta_log_per_key: usize,
    /// Deltas remembered over all keys (oldest forgotten first): bounds the
    /// log's memory (a delta is typically 100-300 bytes).
    pub delta_log_capacity: usize,
    /// An expired entry is purged to a tombstone this long after it expired
    /// (it is invisible from the expiry on). Absorbs clock skew between nodes.
    pub expiry_grace_ms: u64,
    /// A tombstone is forgotten this long after its deletion. A replica
    /// partitioned for longer can resurrect the deleted entry.
    pub tombstone_ttl_ms: u64,
    /// Length of a generation epoch (see [`Gen`]). Must not exceed the
    /// tombstone TTL (it is clamped to it), so that a key re-created after
    /// its tombstone was forgotten lands in a later epoch.
    pub epoch_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_value_bytes: 64 * 1024,
            max_key_bytes: 512,
            audit_capacity: 10_000,
            pending_capacity: 10_000,
            pending_ttl_ms: 10 * 60_000,
            delta_log_per_key: 16,
            delta_log_capacity: 20_000,
            expiry_grace_ms: 60_000,
            tombstone_ttl_ms: 24 * 3_600_000,
            epoch_ms: 24 * 3_600_000,
        }
    }
}

/// A change a plugin asks for (see [`Store::apply_local`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LocalOp {
    /// Create the key; the author becomes its owner.
    Create {
        /// Value type.
        kind: Kind,
        /// Access level.
        access: Access,
        /// Optional expiry (ms timestamp).
        expires_at: Option<u64>,
    },
    /// Set a register (JSON text). Creates a public register if absent.
    Put(String),
    /// Count up (G- or PN-counter). Creates a public PN-counter if absent.
    Incr(u64),
    /// Count down (PN-counter). Creates a public PN-counter if absent.
    Decr(u64),
    /// Add members to a set. Creates a public set if absent.
    Add(Vec<String>),
    /// Remove members from a set (those the author has observed).
    Remove(Vec<String>),
    /// Set a map field's register. Creates a public map if absent.
    MapPut {
        /// Field.
        field: String,
        /// JSON text.
        value: String,
    },
    /// Count a map field up.
    MapIncr {
        /// Field.
        field: String,
        /// Amount.
        by: u64,
    },
    /// Count a map field down.
    MapDecr {
        /// Field.
        field: String,
        /// Amount.
        by: u64,
    },
    /// Add members to a map field's set.
    MapAdd {
        /// Field.
        field: String,
        /// Members.
        members: Vec<String>,
    },
    /// Remove members from a map field's set.
    MapRemove {
        /// Field.
        field: String,
        /// Members.
        members: Vec<String>,
    },
    /// Remove a map field.
    MapRemoveField(String),
    /// Change the access level (owner only).
    SetAccess(Access),
    /// Change or clear the expiry (owner only).
    SetExpiry(Option<u64>),
    /// Delete the key (owner only).
    Delete,
}

impl LocalOp {
    /// Operation name for the audit log.
    pub fn name(&self) -> &'static str {
        match self {
            LocalOp::Create { .. } => "create",
            LocalOp::Put(_) => "put",
            LocalOp::Incr(_) => "incr",
            LocalOp::Decr(_) => "decr",
            LocalOp::Add(_) => "or-add",
            LocalOp::Remove(_) => "or-remove",
            LocalOp::MapPut { .. } => "map-put",
            LocalOp::MapIncr { .. } | LocalOp::MapDecr { .. } => "map-count",
            LocalOp::MapAdd { .. } => "map-or-add",
            LocalOp::MapRemove { .. } => "map-or-remove",
            LocalOp::MapRemoveField(_) => "map-remove-field",
            LocalOp::SetAccess(_) => "set-access",
            LocalOp::SetExpiry(_) => "set-expiry",
            LocalOp::Delete => "delete",
        }
    }

    pub(crate) fn payload_len(&self) -> usize {
        let sum = |v: &Vec<String>| v.iter().map(String::len).sum::<usize>();
        match self {
            LocalOp::Create { access, .. } | LocalOp::SetAccess(access) => access.byte_len(),
            LocalOp::Put(v) => v.len(),
            LocalOp::Add(m) | LocalOp::Remove(m) => sum(m),
            LocalOp::MapPut { field, value } => field.len() + value.len(),
            LocalOp::MapIncr { field, .. } | LocalOp::MapDecr { field, .. } => field.len(),
            LocalOp::MapAdd { field, members } | LocalOp::MapRemove { field, members } => {
                field.len() + sum(members)
            }
            LocalOp::MapRemoveField(f) => f.len(),
            LocalOp::Incr(_) | LocalOp::Decr(_) | LocalOp::SetExpiry(_) | LocalOp::Delete => 0,
        }
    }

    /// Kind a value operation creates when the key is absent (`None` for
    /// operations that need an existing key).
    pub(crate) fn creates(&self) -> Option<Kind> {
        match self {
            LocalOp::Put(_) => Some(Kind::Lww),
            LocalOp::Incr(_) | LocalOp::Decr(_) => Some(Kind::PnCounter),
            LocalOp::Add(_) => Some(Kind::Set),
            LocalOp::MapPut { .. }
            | LocalOp::MapIncr { .. }
            | LocalOp::MapDecr { .. }
            | LocalOp::MapAdd { .. } => Some(Kind::Map),
            _ => None,
        }
    }
}

/// The result of an accepted local change: the deltas to ship to the other
/// replicas (in order) and the events to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// Deltas, in causal order (an implicit creation comes first).
    pub deltas: Vec<Delta>,
    /// Events, one per delta.
    pub events: Vec<StateEvent>,
}

#[derive(Clone, Debug)]
pub(crate) struct Slot {
    pub(crate) state: EntryState,
    pub(crate) hash: u64,
    /// The key's digest bucket.
    pub(crate) bucket: u16,
    /// Recent deltas of the current generation, in apply (causal) order.
    pub(crate) log: VecDeque<Delta>,
}

impl Slot {
    pub(crate) fn new(key: &str, state: EntryState) -> Self {
        Slot {
            state,
            hash: 0,
            bucket: bucket_of(key),
            log: VecDeque::new(),
        }
    }
}

/// The replicated state of one node: a keyed store of CRDT entries with
/// owner, access level, version and expiry, plus the audit log.
///
/// Every mutating call returns the [`StateEvent`]s to publish; local changes
/// also return the [`Delta`]s to ship. See `docs/state.md`.
#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) node: NodeId,
    pub(crate) cfg: StoreConfig,
    pub(crate) entries: BTreeMap<String, Slot>,
    pub(crate) buckets: Vec<u64>,
    pub(crate) pending: BTreeMap<String, Vec<Delta>>,
    pub(crate) pending_len: usize,
    pub(crate) audit: AuditLog,
    pub(crate) dirty: Option<BTreeSet<String>>,
    pub(crate) log: LogIndex,
}

/// Global bookkeeping of the per-key delta logs.
#[derive(Clone, Debug, Default)]
pub(crate) struct LogIndex {
    /// Deltas held in all logs.
    pub(crate) len: usize,
    /// Log pushes, oldest first: `(key, gen, origin, counter)`; entries
    /// whose delta already left its log are skipped when popped.
    pub(crate) order: VecDeque<(String, Gen, NodeId, u64)>,
}

impl Store {
    /// An empty store for `node` (the actor id of its changes: it must be
    /// unique in the cluster and never reused after losing this replica's
    /// data, or its new changes would be taken for old ones).
    pub fn new(node: impl Into<NodeId>, mut cfg: StoreConfig) -> Self {
        cfg.epoch_ms = cfg.epoch_ms.clamp(1, cfg.tombstone_ttl_ms.max(1));
        let audit = AuditLog::new(cfg.audit_capacity);
        Store {
            node: node.into(),
            cfg,
            entries: BTreeMap::new(),
            buckets: vec![0; BUCKETS],
            pending: BTreeMap::new(),
            pending_len: 0,
            audit,
            dirty: None,
            log: LogIndex::default(),
        }
    }

    /// This node's id.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// The configuration (after clamping).
    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    // ----------------------------------------------------------------- reads

    /// Read `key` as `reader`: `Ok(None)` if absent, deleted or expired,
    /// [`StateError::AccessDenied`] if `reader` may not read it.
    pub fn get(&self, reader: &str, key: &str, now_ms: u64) -> Result<Option<View>, StateError> {
        Ok(self
            .readable(reader, key, now_ms)?
            .and_then(EntryState::view))
    }

    /// Metadata of `key` as `reader` (same rules as [`Store::get`]).
    pub fn info(
        &self,
        reader: &str,
        key: &str,
        now_ms: u64,
    ) -> Result<Option<EntryInfo>, StateError> {
        let Some(st) = self.readable(reader, key, now_ms)? else {
            return Ok(None);
        };
        let (Some((stamp, c)), Some(kind)) = (st.winner(), st.kind()) else {
            return Ok(None);
        };
        Ok(Some(EntryInfo {
            owner: c.owner.clone(),
            access: c.current_access().clone(),
            kind,
            gen: st.gen,
            version: st.version.clone(),
            expires_at: c.expires_at(),
            created: stamp.clone(),
        }))
    }

    /// Keys `reader` may read, visible at `now_ms`, in key order.
    pub fn keys(&self, reader: &str, now_ms: u64) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(_, s)| s.state.is_visible(now_ms) && s.state.readable_by(reader))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Raw replicated state of `key` (tombstones and expired entries too).
    /// This is what a node sends a peer asking for a majority/all read.
    pub fn state(&self, key: &str) -> Option<&EntryState> {
        self.entries.get(key).map(|s| &s.state)
    }

    /// Every key's raw state, in key order.
    pub fn states(&self) -> impl Iterator<Item = (&String, &EntryState)> {
        self.entries.iter().map(|(k, s)| (k, &s.state))
    }

    /// Does this replica hold everything of `key` that `(gen, version)`
    /// names (a later generation counts)? A peer answers a majority/all
    /// write with an ack once this is true for the written version.
    pub fn covers(&self, key: &str, gen: Gen, version: &Version) -> bool {
        match self.entries.get(key) {
            Some(s) => s.state.gen > gen || (s.state.gen == gen && *version <= s.state.version),
            None => false,
        }
    }

    /// Number of keys held (tombstones included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No keys held?
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Deltas waiting for earlier changes.
    pub fn pending_len(&self) -> usize {
        self.pending_len
    }

    /// The in-memory audit ring.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Audit records matching `q` (in-memory ring).
    pub fn audit_query(&self, q: &AuditQuery) -> Vec<AuditRecord> {
        self.audit.query(q)
    }

    fn readable(
        &self,
        reader: &str,
        key: &str,
        now_ms: u64,
    ) -> Result<Option<&EntryState>, StateError> {
        let Some(st) = self.visible(key, now_ms) else {
            return Ok(None);
        };
        if !st.readable_by(reader) {
            return Err(StateError::AccessDenied {
                plugin: reader.to_string(),
                key: key.to_string(),
                action: "read",
            });
        }
        Ok(Some(st))
    }

    fn visible(&self, key: &str, now_ms: u64) -> Option<&EntryState> {
        self.entries
            .get(key)
            .map(|s| &s.state)
            .filter(|s| s.is_visible(now_ms))
    }

    // ----------------------------------------------------------- local ops

    /// Apply a change authored by `author` (a plugin on this node). Checked
    /// against the ACL, types and size limits; on error nothing stored
    /// changes. Accepted or not, the attempt is audited. On success, ship
    /// [`Change::deltas`] to the other replicas and publish
    /// [`Change::events`].
    pub fn apply_local(
        &mut self,
        author: &str,
        key: &str,
        op: LocalOp,
        now_ms: u64,
    ) -> Result<Change, StateError> {
        self.apply_local_by(author, "", key, op, now_ms)
    }

    /// [`Store::apply_local`] for a caller the node authenticated: `by`
    /// (`principal (credential)`) goes into the audit record.
    pub fn apply_local_by(
        &mut self,
        author: &str,
        by: &str,
        key: &str,
        op: LocalOp,
        now_ms: u64,
    ) -> Result<Change, StateError> {
        let name = op.name();
        let res = self.try_local(author, key, op, now_ms);
        let outcome = match &res {
            Ok(_) => Outcome::Accepted,
            Err(e) => Outcome::Rejected(e.to_string()),
        };
        let node = self.node.clone();
        let who = (author, by);
        self.record(now_ms, who, &node, key, name, Source::Local, outcome);
        res
    }

    /// Create `key` with a type, access level and optional expiry.
    pub fn create(
        &mut self,
        author: &str,
        key: &str,
        kind: Kind,
        access: Access,
        expires_at: Option<u64>,
        now_ms: u64,
    ) -> Result<Change, StateError> {
        self.apply_local(
            author,
            key,
            LocalOp::Create {
                kind,
                access,
                expires_at,
            },
            now_ms,
        )
    }

    /// Set a register (creates a public register if absent).
    pub fn put(
        &mut self,
        author: &str,
        key: &str,
        json: impl Into<String>,
        now_ms: u64,
    ) -> Result<Change, StateError> {
        self.apply_local(author, key, LocalOp::Put(json.into()), now_ms)
    }

    /// Count up (creates a public PN-counter if absent).
    pub fn incr(
        &mut self,
        author: &str,
        key: &str,
        by: u64,
        now_ms: u64,
    ) -> Result<Change, StateError> {
        self.apply_local(author, key, LocalOp::Incr(by), now_ms)
    }

    /// Count down (PN-counter only).
    pub fn decr(
        &mut self,
        author: &str,
        key: &str,
        by: u64,
        now_ms: u64,
    ) -> Result<Change, StateError> {
        self.apply_local(author, key, LocalOp::Decr(by), now_ms)
    }

    /// Add a member to a set (creates a public set if absent).
    pub fn add(
        &mut self,
        author: &str,
        key: &str,
        member: impl Into<String>,
        now_ms: u64,
    ) -> Result<Change, StateError> {
        self.apply_local(author, key, LocalOp::Add(vec![member.into()]), now_ms)
    }

    /// Remove a member from a set (the adds the author has observed).
    pub fn remove(
        &mut self,
        author: &str,
        key: &str,
        member: impl Into<String>,
        now_ms: u64,
    ) -> Result<Change, StateError> {
        self.apply_local(author, key, LocalOp::Remove(vec![member.into()]), now_ms)
    }

    /// Delete a key (owner only).
    pub fn delete(&mut self, author: &str, key: &str, now_ms: u64) -> Result<Change, StateError> {
        self.apply_local(author, key, LocalOp::Delete, now_ms)
    }

    fn try_local(
        &mut self,
        author: &str,
        key: &str,
        op: LocalOp,
        now_ms: u64,
    ) -> Result<Change, StateError> {
        self.check_key(key)?;
        let size = op.payload_len();
        if size > self.cfg.max_value_bytes {
            return Err(StateError::TooLarge {
                what: "value",
                size,
                limit: self.cfg.max_value_bytes,
            });
        }
        let denied = |action| StateError::AccessDenied {
            plugin: author.to_string(),
            key: key.to_string(),
            action,
        };
        let mut out = Change {
            deltas: Vec::new(),
            events: Vec::new(),
        };
        // The winning creation of the visible entry, if any.
        let winner = self
            .visible(key, now_ms)
            .and_then(|st| st.winner())
            .map(|(s, c)| (s.clone(), c.clone()));
        match (op, winner) {
            (LocalOp::Create { .. }, Some(_)) => return Err(StateError::AlreadyExists(key.into())),
            (
                LocalOp::Create {
                    kind,
                    access,
                    expires_at,
                },
                None,
            ) => {
                self.local_create(
                    author,
                    key,
                    kind,
                    Meta { access, expires_at },
                    now_ms,
                    &mut out,
                );
            }
            (LocalOp::SetAccess(_) | LocalOp::SetExpiry(_) | LocalOp::Delete, None) => {
                return Err(StateError::NotFound(key.into()))
            }
            (LocalOp::SetAccess(access), Some((target, c))) => {
                if c.owner != author {
                    return Err(denied("change access of"));
                }
                let floor = c.access_stamp().map_or(0, |s| s.ts_ms.saturating_add(1));
                let stamp = self.local_stamp(key, now_ms.max(floor));
                let d = self.local_delta(author, key, stamp, DeltaOp::Access { target, access });
                self.commit_local(d, &mut out);
            }
            (LocalOp::SetExpiry(expires_at), Some((target, c))) => {
                if c.owner != author {
                    return Err(denied("change expiry of"));
                }
                let floor = c.expiry.marker.ts_ms.saturating_add(1);
                let stamp = self.local_stamp(key, now_ms.max(floor));
                let d =
                    self.local_delta(author, key, stamp, DeltaOp::Expiry { target, expires_at });
                self.commit_local(d, &mut out);
            }
            (LocalOp::Delete, Some((target, c))) => {
                if c.owner != author {
                    return Err(denied("delete"));
                }
                let stamp = self.local_stamp(key, now_ms);
                let d = self.local_delta(author, key, stamp, DeltaOp::Delete { target });
                self.commit_local(d, &mut out);
            }
            (op, None) => {
                let Some(kind) = op.creates() else {
                    return Err(StateError::NotFound(key.into()));
                };
                // Validate against the value the creation will produce
                // before changing anything.
                value_op(key, &self.node, &Value::empty(kind), &op, Stamp::default())?;
                self.local_create(author, key, kind, Meta::default(), now_ms, &mut out);
                self.local_value(author, key, op, now_ms, &mut out)?;
            }
            (op, Some((_, c))) => {
                if !c.current_access().can_write(&c.owner, author) {
                    return Err(denied("write"));
                }
                self.local_value(author, key, op, now_ms, &mut out)?;
            }
        }
        Ok(out)
    }

    fn local_create(
        &mut self,
        author: &str,
        key: &str,
        kind: Kind,
        meta: Meta,
        now_ms: u64,
        out: &mut Change,
    ) {
        let epoch = (now_ms / self.cfg.epoch_ms) << 32;
        let (gen, prev) = match self.entries.get(key) {
            Some(s) => (
                (s.state.gen + 1).max(epoch),
                Some(Prev {
                    gen: s.state.gen,
                    version: s.state.version.clone(),
                }),
            ),
            None => (epoch, None),
        };
        let stamp = Stamp {
            ts_ms: now_ms,
            node: self.node.clone(),
            seq: 1,
        };
        let d = Delta {
            key: key.to_string(),
            author: author.to_string(),
            origin: self.node.clone(),
            gen,
            counter: 1,
            deps: Version::new(),
            ts_ms: now_ms,
            op: DeltaOp::Create {
                stamp,
                kind,
                meta,
                prev,
            },
        };
        self.commit_local(d, out);
    }

    /// Build and apply a value change on a visible entry the author may
    /// write. Fails (with nothing changed) on a type mismatch.
    fn local_value(
        &mut self,
        author: &str,
        key: &str,
        op: LocalOp,
        now_ms: u64,
        out: &mut Change,
    ) -> Result<(), StateError> {
        let (target, value) = {
            let st = self.entries.get(key).map(|s| &s.state);
            match st.and_then(|st| st.winner().zip(st.value())) {
                Some(((t, _), v)) => (t.clone(), v),
                None => return Err(StateError::NotFound(key.into())),
            }
        };
        let floor = match value {
            Value::Lww(Some(r)) => r.marker.ts_ms.saturating_add(1),
            _ => 0,
        };
        let stamp = self.local_stamp(key, now_ms.max(floor));
        let vop = value_op(key, &self.node, value, &op, stamp.clone())?;
        let d = self.local_delta(author, key, stamp, DeltaOp::Value { target, op: vop });
        self.commit_local(d, out);
        Ok(())
    }

    /// The stamp of the next local change of `key` (same generation).
    fn local_stamp(&self, key: &str, ts_ms: u64) -> Stamp {
        let seq = self
            .entries
            .get(key)
            .map(|s| s.state.version.get(&self.node))
            .unwrap_or(0)
            + 1;
        Stamp {
            ts_ms,
            node: self.node.clone(),
            seq,
        }
    }

    fn local_delta(&self, author: &str, key: &str, stamp: Stamp, op: DeltaOp) -> Delta {
        let (gen, deps) = self
            .entries
            .get(key)
            .map(|s| (s.state.gen, s.state.version.clone()))
            .unwrap_or_default();
        Delta {
            key: key.to_string(),
            author: author.to_string(),
            origin: self.node.clone(),
            gen,
            counter: stamp.seq,
            deps,
            ts_ms: stamp.ts_ms,
            op,
        }
    }

    fn commit_local(&mut self, d: Delta, out: &mut Change) {
        let ev = self.apply_ready(&d);
        out.events.push(ev);
        out.deltas.push(d);
    }

    pub(crate) fn check_key(&self, key: &str) -> Result<(), StateError> {
        if key.is_empty() {
            return Err(StateError::Invalid("empty key".into()));
        }
        if key.len() > self.cfg.max_key_bytes {
            return Err(StateError::TooLarge {
                what: "key",
                size: key.len(),
                limit: self.cfg.max_key_bytes,
            });
        }
        Ok(())
    }

    // -------------------------------------------------------------- helpers

    /// Recompute `key`'s summary hash and its bucket's hash (the key must be
    /// held), and mark it for persistence.
    pub(crate) fn rehash(&mut self, key: &str) {
        let Some(slot) = self.entries.get_mut(key) else {
            return;
        };
        let new = summary_hash(key, &slot.state);
        let b = slot.bucket as usize;
        self.buckets[b] = self.buckets[b].wrapping_sub(slot.hash).wrapping_add(new);
        slot.hash = new;
        if let Some(d) = self.dirty.as_mut() {
            d.insert(key.to_string());
        }
    }

    /// Forget `key` entirely (tombstone collection).
    pub(crate) fn forget(&mut self, key: &str) {
        if let Some(slot) = self.entries.remove(key) {
            self.log.len -= slot.log.len();
            let b = slot.bucket as usize;
            self.buckets[b] = self.buckets[b].wrapping_sub(slot.hash);
            if let Some(d) = self.dirty.as_mut() {
                d.insert(key.to_string());
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    /// `who`: the authoring plugin and, for a local change, who asked
    /// ([`AuditRecord::by`]).
    pub(crate) fn record(
        &mut self,
        now_ms: u64,
        who: (&str, &str),
        node: &str,
        key: &str,
        op: &str,
        source: Source,
        outcome: Outcome,
    ) {
        let (author, by) = who;
        if let Outcome::Rejected(reason) = &outcome {
            tracing::debug!(%author, %by, %node, %key, %op, %reason, "state change rejected");
        }
        self.audit.push(AuditRecord {
            seq: 0,
            at_ms: now_ms,
            author: author.to_string(),
            node: node.to_string(),
            key: key.to_string(),
            op: op.to_string(),
            source,
            outcome,
            by: by.to_string(),
        });
    }

    // ------------------------------------------------ durable store support

    /// Start recording which keys change and which audit records are added,
    /// for [`Store::take_changes`].
    pub(crate) fn track_changes(&mut self) {
        self.dirty.get_or_insert_with(BTreeSet::new);
        self.audit.track_unpersisted();
    }

    /// Keys changed or removed since the last [`Store::take_changes`].
    pub(crate) fn unpersisted_keys(&self) -> Option<&BTreeSet<String>> {
        self.dirty.as_ref()
    }

    /// Keys changed or removed, and audit records appended, since last call.
    pub(crate) fn take_changes(&mut self) -> (BTreeSet<String>, Vec<AuditRecord>) {
        let keys = self.dirty.as_mut().map(std::mem::take).unwrap_or_default();
        (keys, self.audit.take_unpersisted())
    }

    /// Load persisted states and audit records (on open).
    pub(crate) fn restore(
        &mut self,
        states: Vec<(String, EntryState)>,
        audit: Vec<AuditRecord>,
        next_seq: u64,
    ) {
        for (key, state) in states {
            self.entries.insert(key.clone(), Slot::new(&key, state));
            self.rehash(&key);
        }
        self.audit.restore(audit, next_seq);
        if let Some(d) = self.dirty.as_mut() {
            d.clear();
        }
    }
}

/// Build the CRDT operation for a local value change, or the type error.
fn value_op(
    key: &str,
    node: &NodeId,
    value: &Value,
    op: &LocalOp,
    stamp: Stamp,
) -> Result<ValueOp, StateError> {
    let mismatch = |expected: Kind| StateError::TypeMismatch {
        key: key.to_string(),
        expected,
        found: value.kind(),
    };
    let field_mismatch = |field: &str, wanted: &'static str| -> Result<(), StateError> {
        let Value::Map(m) = value else { return Ok(()) };
        match field_kind(m, field) {
            Some(k) if k != wanted => Err(StateError::Invalid(format!(
                "field `{field}` of key `{key}` holds a {k}, not a {wanted}"
            ))),
            _ => Ok(()),
        }
    };
    Ok(match (op, value) {
        (LocalOp::Put(v), Value::Lww(_)) => make::put(v.clone(), stamp),
        (LocalOp::Put(_), _) => return Err(mismatch(Kind::Lww)),
        (LocalOp::Incr(by), Value::GCounter(c)) => make::g_inc(c, node, *by),
        (LocalOp::Incr(by), Value::PnCounter(c)) => make::pn(c, node, *by, true),
        (LocalOp::Incr(_), _) => return Err(mismatch(Kind::PnCounter)),
        (LocalOp::Decr(by), Value::PnCounter(c)) => make::pn(c, node, *by, false),
        (LocalOp::Decr(_), _) => return Err(mismatch(Kind::PnCounter)),
        (LocalOp::Add(m), Value::Set(s)) => make::set_add(s, node, m.clone()),
        (LocalOp::Remove(m), Value::Set(s)) => make::set_rm(s, m.clone()),
        (LocalOp::Add(_) | LocalOp::Remove(_), _) => return Err(mismatch(Kind::Set)),
        (LocalOp::MapPut { field, value: v }, Value::Map(m)) => {
            field_mismatch(field, "register")?;
            make::map_put(m, node, field.clone(), v.clone(), stamp)
        }
        (LocalOp::MapIncr { field, by }, Value::Map(m)) => {
            field_mismatch(field, "counter")?;
            make::map_count(m, node, field.clone(), *by, true)
        }
        (LocalOp::MapDecr { field, by }, Value::Map(m)) => {
            field_mismatch(field, "counter")?;
            make::map_count(m, node, field.clone(), *by, false)
        }
        (LocalOp::MapAdd { field, members }, Value::Map(m)) => {
            field_mismatch(field, "set")?;
            make::map_set_add(m, node, field.clone(), members.clone())
        }
        (LocalOp::MapRemove { field, members }, Value::Map(m)) => {
            if field_kind(m, field) != Some("set") {
                return Err(StateError::NotFound(format!("{key}.{field}")));
            }
            make::map_set_rm(m, node, field.clone(), members.clone())
        }
        (LocalOp::MapRemoveField(field), Value::Map(m)) => {
            if field_kind(m, field).is_none() {
                return Err(StateError::NotFound(format!("{key}.{field}")));
            }
            make::map_rm_field(m, node, field.clone())
        }
        (
            LocalOp::MapPut { .. }
            | LocalOp::MapIncr { .. }
            | LocalOp::MapDecr { .. }
            | LocalOp::MapAdd { .. }
            | LocalOp::MapRemove { .. }
            | LocalOp::MapRemoveField(_),
            _,
        ) => return Err(mismatch(Kind::Map)),
        (
            LocalOp::Create { .. }
            | LocalOp::SetAccess(_)
            | LocalOp::SetExpiry(_)
            | LocalOp::Delete,
            _,
        ) => return Err(StateError::Invalid("not a value operation".into())),
    })
}
