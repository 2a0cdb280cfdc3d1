//! The replicated store: local operations under the ACL, causal delta
//! delivery, digest anti-entropy, expiry and audit. Pure: no I/O, no clock
//! (every call takes `now_ms`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crdts::{CmRDT, CvRDT, Dot, LWWReg};
use serde::{Deserialize, Serialize};

use crate::audit::{AuditLog, AuditQuery, AuditRecord, Outcome, Source};
use crate::delta::{ChangeKind, Delta, DeltaOp, StateEvent};
use crate::digest::{bucket_of, summary_hash, Digest, KeyDigest, KeySummary, SyncItem, BUCKETS};
use crate::entry::{Body, Creation, EntryInfo, EntryState, Meta};
use crate::types::{Access, Kind, NodeId, PluginId, Stamp, StateError, Version};
use crate::value::{field_kind, make, FieldOp, Value, ValueOp, View};

/// Limits and timings of a store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreConfig {
    /// Largest payload of one change: register text, set members, map field
    /// name and value, access list (bytes).
    pub max_value_bytes: usize,
    /// Largest key (bytes).
    pub max_key_bytes: usize,
    /// Audit records kept in memory.
    pub audit_capacity: usize,
    /// Out-of-order deltas buffered (all keys together); beyond it they are
    /// dropped and anti-entropy repairs.
    pub pending_capacity: usize,
    /// An expired entry is purged to a tombstone this long after it expired
    /// (it is invisible from the expiry on). Absorbs clock skew between nodes.
    pub expiry_grace_ms: u64,
    /// A tombstone is forgotten this long after its deletion. A replica
    /// partitioned for longer can resurrect the deleted entry.
    pub tombstone_ttl_ms: u64,
    /// Length of a generation epoch (see [`Gen`]); keep it >= the tombstone
    /// TTL.
    pub epoch_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_value_bytes: 64 * 1024,
            max_key_bytes: 512,
            audit_capacity: 10_000,
            pending_capacity: 10_000,
            expiry_grace_ms: 60_000,
            tombstone_ttl_ms: 24 * 3_600_000,
            epoch_ms: 24 * 3_600_000,
        }
    }
}

/// A change a plugin asks for.
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

    fn payload_len(&self) -> usize {
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
    fn creates(&self) -> Option<Kind> {
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

/// What became of a remote delta.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeltaStatus {
    /// Applied now.
    Applied,
    /// Already applied (or covered by a merged state): ignored.
    Duplicate,
    /// Of a generation this replica has already replaced: ignored.
    Obsolete,
    /// Waiting for earlier changes (buffered).
    Buffered,
    /// Waiting, but the buffer is full: dropped, anti-entropy will repair.
    Dropped,
}

/// Result of [`Store::apply_remote`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteOutcome {
    /// What became of the delta itself.
    pub status: DeltaStatus,
    /// Events of every change applied: this delta and buffered ones it
    /// unblocked.
    pub events: Vec<StateEvent>,
}

#[derive(Clone, Debug)]
struct Slot {
    state: EntryState,
    hash: u64,
}

enum Readiness {
    Ready,
    Duplicate,
    Obsolete,
    Wait,
}

#[derive(Clone, Copy)]
enum Action {
    Write,
    Meta,
    Delete,
}

/// The replicated state of one node. See the crate docs.
#[derive(Clone, Debug)]
pub struct Store {
    node: NodeId,
    cfg: StoreConfig,
    entries: BTreeMap<String, Slot>,
    buckets: Vec<u64>,
    pending: BTreeMap<String, Vec<Delta>>,
    pending_len: usize,
    audit: AuditLog,
    dirty: Option<BTreeSet<String>>,
}

impl Store {
    /// An empty store for `node` (the actor id of its changes).
    pub fn new(node: impl Into<NodeId>, cfg: StoreConfig) -> Self {
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
        }
    }

    /// This node's id.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// The configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    // ----------------------------------------------------------------- reads

    /// Read `key` as `reader`: `Ok(None)` if absent, deleted or expired,
    /// [`StateError::AccessDenied`] if `reader` may not read it.
    pub fn get(&self, reader: &str, key: &str, now_ms: u64) -> Result<Option<View>, StateError> {
        match self.readable(reader, key, now_ms)? {
            Some(st) => Ok(st.view()),
            None => Ok(None),
        }
    }

    /// Metadata of `key` as `reader` (same rules as [`Store::get`]).
    pub fn info(&self, reader: &str, key: &str, now_ms: u64) -> Result<Option<EntryInfo>, StateError> {
        let Some(st) = self.readable(reader, key, now_ms)? else {
            return Ok(None);
        };
        let (stamp, c) = st.winner().expect("visible entries have a winner");
        Ok(Some(EntryInfo {
            owner: c.owner.clone(),
            access: c.meta.val.access.clone(),
            kind: st.kind().expect("visible entries are live"),
            gen: st.gen,
            version: st.version.clone(),
            expires_at: c.meta.val.expires_at,
            created: stamp.clone(),
        }))
    }

    /// Keys `reader` may read, visible at `now_ms`.
    pub fn keys(&self, reader: &str, now_ms: u64) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(_, s)| s.state.is_visible(now_ms))
            .filter(|(_, s)| {
                let (_, c) = s.state.winner().expect("visible");
                c.meta.val.access.can_read(&c.owner, reader)
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Raw replicated state of `key` (tombstones and expired entries too).
    pub fn state(&self, key: &str) -> Option<&EntryState> {
        self.entries.get(key).map(|s| &s.state)
    }

    /// Every key's raw state, in key order.
    pub fn states(&self) -> impl Iterator<Item = (&String, &EntryState)> {
        self.entries.iter().map(|(k, s)| (k, &s.state))
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

    fn readable(&self, reader: &str, key: &str, now_ms: u64) -> Result<Option<&EntryState>, StateError> {
        let Some(st) = self.visible(key, now_ms) else {
            return Ok(None);
        };
        let (_, c) = st.winner().expect("visible");
        if !c.meta.val.access.can_read(&c.owner, reader) {
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
    /// changes. Accepted or not, the attempt is audited.
    pub fn apply_local(&mut self, author: &str, key: &str, op: LocalOp, now_ms: u64) -> Result<Change, StateError> {
        let name = op.name();
        let res = self.try_local(author, key, op, now_ms);
        let outcome = match &res {
            Ok(_) => Outcome::Accepted,
            Err(e) => Outcome::Rejected(e.to_string()),
        };
        self.record(now_ms, author, &self.node.clone(), key, name, Source::Local, outcome);
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
        self.apply_local(author, key, LocalOp::Create { kind, access, expires_at }, now_ms)
    }

    /// Set a register.
    pub fn put(&mut self, author: &str, key: &str, json: impl Into<String>, now_ms: u64) -> Result<Change, StateError> {
        self.apply_local(author, key, LocalOp::Put(json.into()), now_ms)
    }

    /// Count up.
    pub fn incr(&mut self, author: &str, key: &str, by: u64, now_ms: u64) -> Result<Change, StateError> {
        self.apply_local(author, key, LocalOp::Incr(by), now_ms)
    }

    /// Count down.
    pub fn decr(&mut self, author: &str, key: &str, by: u64, now_ms: u64) -> Result<Change, StateError> {
        self.apply_local(author, key, LocalOp::Decr(by), now_ms)
    }

    /// Add a member to a set.
    pub fn add(&mut self, author: &str, key: &str, member: impl Into<String>, now_ms: u64) -> Result<Change, StateError> {
        self.apply_local(author, key, LocalOp::Add(vec![member.into()]), now_ms)
    }

    /// Remove a member from a set.
    pub fn remove(&mut self, author: &str, key: &str, member: impl Into<String>, now_ms: u64) -> Result<Change, StateError> {
        self.apply_local(author, key, LocalOp::Remove(vec![member.into()]), now_ms)
    }

    /// Delete a key (owner only).
    pub fn delete(&mut self, author: &str, key: &str, now_ms: u64) -> Result<Change, StateError> {
        self.apply_local(author, key, LocalOp::Delete, now_ms)
    }

    fn try_local(&mut self, author: &str, key: &str, op: LocalOp, now_ms: u64) -> Result<Change, StateError> {
        self.check_key(key)?;
        let size = op.payload_len();
        if size > self.cfg.max_value_bytes {
            return Err(StateError::TooLarge {
                what: "value",
                size,
                limit: self.cfg.max_value_bytes,
            });
        }
        let visible = self.visible(key, now_ms);
        let denied = |action| StateError::AccessDenied {
            plugin: author.to_string(),
            key: key.to_string(),
            action,
        };
        let mut out = Change {
            deltas: Vec::new(),
            events: Vec::new(),
        };
        match (op, visible) {
            (LocalOp::Create { .. }, Some(_)) => return Err(StateError::AlreadyExists(key.into())),
            (LocalOp::Create { kind, access, expires_at }, None) => {
                self.local_create(author, key, kind, Meta { access, expires_at }, now_ms, &mut out);
            }
            (LocalOp::SetAccess(_) | LocalOp::SetExpiry(_) | LocalOp::Delete, None) => {
                return Err(StateError::NotFound(key.into()))
            }
            (op @ (LocalOp::SetAccess(_) | LocalOp::SetExpiry(_)), Some(st)) => {
                let (target, c) = st.winner().expect("visible");
                if c.owner != author {
                    return Err(denied("change access or expiry of"));
                }
                let mut meta = c.meta.val.clone();
                match op {
                    LocalOp::SetAccess(a) => meta.access = a,
                    LocalOp::SetExpiry(e) => meta.expires_at = e,
                    _ => unreachable!(),
                }
                let target = target.clone();
                let floor = c.meta.marker.ts_ms.saturating_add(1);
                let stamp = self.local_stamp(key, now_ms.max(floor));
                let d = self.local_delta(
                    author,
                    key,
                    stamp.clone(),
                    DeltaOp::Meta {
                        target,
                        meta: LWWReg { val: meta, marker: stamp },
                    },
                );
                self.commit_local(d, &mut out);
            }
            (LocalOp::Delete, Some(st)) => {
                let (target, c) = st.winner().expect("visible");
                if c.owner != author {
                    return Err(denied("delete"));
                }
                let target = target.clone();
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
                let probe = Value::empty(kind);
                value_op(key, &self.node, &probe, &op, Stamp::default())?;
                self.local_create(author, key, kind, Meta::default(), now_ms, &mut out);
                self.local_value(author, key, op, now_ms, &mut out)?;
            }
            (op, Some(st)) => {
                let (_, c) = st.winner().expect("visible");
                if !c.meta.val.access.can_write(&c.owner, author) {
                    return Err(denied("write"));
                }
                self.local_value(author, key, op, now_ms, &mut out)?;
            }
        }
        Ok(out)
    }

    fn local_create(&mut self, author: &str, key: &str, kind: Kind, meta: Meta, now_ms: u64, out: &mut Change) {
        let epoch = (now_ms / self.cfg.epoch_ms.max(1)) << 32;
        let gen = match self.entries.get(key) {
            Some(s) => (s.state.gen + 1).max(epoch),
            None => epoch,
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
            op: DeltaOp::Create { stamp, kind, meta },
        };
        self.commit_local(d, out);
    }

    /// Build and apply a value change on a visible entry the author may
    /// write. Fails (with nothing changed) on a type mismatch.
    fn local_value(&mut self, author: &str, key: &str, op: LocalOp, now_ms: u64, out: &mut Change) -> Result<(), StateError> {
        let st = &self.entries.get(key).expect("visible").state;
        let (target, _) = st.winner().expect("visible");
        let target = target.clone();
        let live = st.live().expect("visible");
        let floor = match &live.value {
            Value::Lww(Some(r)) => r.marker.ts_ms.saturating_add(1),
            _ => 0,
        };
        let stamp = self.local_stamp(key, now_ms.max(floor));
        let vop = value_op(key, &self.node, &live.value, &op, stamp.clone())?;
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
        let st = &self.entries.get(key).expect("existing key").state;
        Delta {
            key: key.to_string(),
            author: author.to_string(),
            origin: self.node.clone(),
            gen: st.gen,
            counter: stamp.seq,
            deps: st.version.clone(),
            ts_ms: stamp.ts_ms,
            op,
        }
    }

    fn commit_local(&mut self, d: Delta, out: &mut Change) {
        let ev = self.apply_ready(&d);
        out.events.push(ev);
        out.deltas.push(d);
    }

    fn check_key(&self, key: &str) -> Result<(), StateError> {
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

    // ---------------------------------------------------------- replication

    /// Apply a delta from another node. It is checked (integrity, size, and
    /// the ACL: its author must have the right under this replica's view)
    /// before anything is merged; a refused delta is audited and returned as
    /// an error. Deltas that arrive early wait in a bounded buffer;
    /// duplicates are ignored.
    pub fn apply_remote(&mut self, delta: Delta, now_ms: u64) -> Result<RemoteOutcome, StateError> {
        if let Err(e) = self.validate_remote(&delta) {
            self.audit_delta(&delta, now_ms, Outcome::Rejected(e.to_string()));
            return Err(e);
        }
        let mut events = Vec::new();
        let status = match self.readiness(&delta) {
            Readiness::Duplicate => DeltaStatus::Duplicate,
            Readiness::Obsolete => DeltaStatus::Obsolete,
            Readiness::Wait => {
                if self.pending_len >= self.cfg.pending_capacity {
                    DeltaStatus::Dropped
                } else {
                    self.pending_len += 1;
                    self.pending.entry(delta.key.clone()).or_default().push(delta);
                    DeltaStatus::Buffered
                }
            }
            Readiness::Ready => {
                self.authorize_remote(&delta, now_ms)?;
                events.push(self.apply_ready(&delta));
                self.audit_delta(&delta, now_ms, Outcome::Accepted);
                let key = delta.key.clone();
                self.drain_pending(&key, now_ms, &mut events);
                DeltaStatus::Applied
            }
        };
        Ok(RemoteOutcome { status, events })
    }

    fn authorize_remote(&mut self, d: &Delta, now_ms: u64) -> Result<(), StateError> {
        let res = match (&d.op, self.entries.get(&d.key)) {
            (DeltaOp::Create { .. }, _) => Ok(()),
            (DeltaOp::Value { target, .. }, Some(s)) if s.state.gen == d.gen => {
                authorize(&d.key, &s.state, &d.author, target, Action::Write)
            }
            (DeltaOp::Meta { target, .. }, Some(s)) if s.state.gen == d.gen => {
                authorize(&d.key, &s.state, &d.author, target, Action::Meta)
            }
            (DeltaOp::Delete { target }, Some(s)) if s.state.gen == d.gen => {
                authorize(&d.key, &s.state, &d.author, target, Action::Delete)
            }
            _ => Err(StateError::Invalid("change of a generation this replica does not hold".into())),
        };
        if let Err(e) = &res {
            self.audit_delta(d, now_ms, Outcome::Rejected(e.to_string()));
        }
        res
    }

    fn drain_pending(&mut self, key: &str, now_ms: u64, events: &mut Vec<StateEvent>) {
        let Some(mut list) = self.pending.remove(key) else {
            return;
        };
        self.pending_len -= list.len();
        loop {
            let mut progressed = false;
            let mut i = 0;
            while i < list.len() {
                match self.readiness(&list[i]) {
                    Readiness::Wait => i += 1,
                    Readiness::Duplicate | Readiness::Obsolete => {
                        list.swap_remove(i);
                    }
                    Readiness::Ready => {
                        let d = list.swap_remove(i);
                        if self.authorize_remote(&d, now_ms).is_ok() {
                            events.push(self.apply_ready(&d));
                            self.audit_delta(&d, now_ms, Outcome::Accepted);
                            progressed = true;
                        }
                    }
                }
            }
            if !progressed {
                break;
            }
        }
        if !list.is_empty() {
            self.pending_len += list.len();
            self.pending.insert(key.to_string(), list);
        }
    }

    fn readiness(&self, d: &Delta) -> Readiness {
        let empty = Version::new();
        let base = match self.entries.get(&d.key) {
            Some(s) if s.state.gen == d.gen => &s.state.version,
            Some(s) if s.state.gen > d.gen => return Readiness::Obsolete,
            _ => &empty,
        };
        let have = base.get(&d.origin);
        if have >= d.counter {
            Readiness::Duplicate
        } else if have + 1 == d.counter && d.deps <= *base {
            Readiness::Ready
        } else {
            Readiness::Wait
        }
    }

    /// Integrity and size checks that do not depend on this replica's state.
    fn validate_remote(&self, d: &Delta) -> Result<(), StateError> {
        self.check_key(&d.key)?;
        let bad = |what: &str| Err(StateError::Invalid(format!("{} delta: {what}", d.op_name())));
        if d.counter == 0 || d.deps.get(&d.origin) + 1 != d.counter {
            return bad("counter does not follow its origin's previous change");
        }
        let size = match &d.op {
            DeltaOp::Create { stamp, meta, .. } => {
                if d.counter != 1 || !d.deps.is_empty() || *stamp != d.stamp() {
                    return bad("a creation must be its origin's first change, stamped by it");
                }
                meta.access.byte_len()
            }
            DeltaOp::Meta { meta, .. } => {
                if meta.marker.node != d.origin || meta.marker.seq != d.counter {
                    return bad("meta stamp is not the delta's own");
                }
                meta.val.access.byte_len()
            }
            DeltaOp::Delete { .. } => 0,
            DeltaOp::Value { op, .. } => {
                if !value_op_is_own(op, d) {
                    return bad("operation dot or stamp is not the origin's");
                }
                op.payload_len()
            }
        };
        if size > self.cfg.max_value_bytes {
            return Err(StateError::TooLarge {
                what: "value",
                size,
                limit: self.cfg.max_value_bytes,
            });
        }
        Ok(())
    }

    /// Apply a delta that is causally ready and authorised.
    fn apply_ready(&mut self, d: &Delta) -> StateEvent {
        let slot = self.entries.entry(d.key.clone()).or_insert_with(|| Slot {
            state: EntryState::fresh(d.gen),
            hash: 0,
        });
        if slot.state.gen < d.gen {
            slot.state = EntryState::fresh(d.gen);
        }
        let st = &mut slot.state;
        match (&d.op, &mut st.body) {
            (DeltaOp::Create { stamp, kind, meta }, Body::Live(l)) => {
                l.creations.entry(stamp.clone()).or_insert_with(|| Creation {
                    owner: d.author.clone(),
                    meta: LWWReg {
                        val: meta.clone(),
                        marker: stamp.clone(),
                    },
                });
                l.value.join(Value::empty(*kind));
            }
            (DeltaOp::Value { op, .. }, Body::Live(l)) => l.value.apply(op.clone()),
            (DeltaOp::Meta { target, meta }, Body::Live(l)) => {
                if let Some(c) = l.creations.get_mut(target) {
                    c.meta.merge(meta.clone());
                }
            }
            (DeltaOp::Delete { .. }, body @ Body::Live(_)) => *body = Body::Tombstone { at_ms: d.ts_ms },
            (DeltaOp::Delete { .. }, Body::Tombstone { at_ms }) => *at_ms = (*at_ms).max(d.ts_ms),
            // Changes concurrent with a delete are recorded but have no effect.
            (_, Body::Tombstone { .. }) => {}
        }
        st.version.apply(Dot::new(d.origin.clone(), d.counter));
        let event = StateEvent {
            key: d.key.clone(),
            kind: d.op.change_kind(),
            author: Some(d.author.clone()),
            node: d.origin.clone(),
            gen: st.gen,
            version: st.version.clone(),
        };
        self.rehash(&d.key);
        event
    }

    /// Top-level digest (fixed size, O(buckets)).
    pub fn digest(&self) -> Digest {
        Digest {
            buckets: self.buckets.clone(),
            keys: self.entries.len() as u64,
        }
    }

    /// Per-key summaries of the keys in `buckets`.
    pub fn key_digest(&self, buckets: &[u16]) -> KeyDigest {
        let wanted = bucket_mask(buckets);
        KeyDigest {
            buckets: buckets.to_vec(),
            keys: self
                .entries
                .iter()
                .filter(|(k, _)| wanted[bucket_of(k) as usize])
                .map(|(k, s)| KeySummary {
                    key: k.clone(),
                    gen: s.state.gen,
                    version: s.state.version.clone(),
                    hash: s.hash,
                })
                .collect(),
        }
    }

    /// What this replica has that the peer (described by `peer`) lacks, in
    /// the buckets `peer` covers: full states of the keys where this replica
    /// is ahead or concurrent, up to `budget_bytes` of encoded items (at
    /// least one item, so a round always makes progress). Call again after
    /// the peer applied them to get the rest.
    pub fn missing_for(&self, peer: &KeyDigest, budget_bytes: usize) -> Vec<SyncItem> {
        let wanted = bucket_mask(&peer.buckets);
        let theirs: HashMap<&str, &KeySummary> = peer.keys.iter().map(|s| (s.key.as_str(), s)).collect();
        let mut out = Vec::new();
        let mut used = 0usize;
        for (key, slot) in &self.entries {
            if !wanted[bucket_of(key) as usize] {
                continue;
            }
            let st = &slot.state;
            let send = match theirs.get(key.as_str()) {
                None => true,
                Some(t) if st.gen != t.gen => st.gen > t.gen,
                Some(t) => !(st.version <= t.version) || (st.version == t.version && slot.hash != t.hash),
            };
            if !send {
                continue;
            }
            let item = SyncItem::State {
                key: key.clone(),
                state: st.clone(),
            };
            let size = plexus_codec::encode_limited(&item, usize::MAX).map(|b| b.len()).unwrap_or(usize::MAX);
            if !out.is_empty() && used.saturating_add(size) > budget_bytes {
                break;
            }
            used = used.saturating_add(size);
            out.push(item);
        }
        out
    }

    /// Apply what a peer's [`Store::missing_for`] sent.
    pub fn apply_sync(&mut self, from: &str, items: Vec<SyncItem>, now_ms: u64) -> Vec<StateEvent> {
        let mut events = Vec::new();
        for item in items {
            match item {
                SyncItem::Delta(d) => {
                    if let Ok(o) = self.apply_remote(d, now_ms) {
                        events.extend(o.events);
                    }
                }
                SyncItem::State { key, state } => {
                    if let Ok(Some(ev)) = self.merge_state(from, &key, state, now_ms) {
                        events.push(ev);
                    }
                }
            }
        }
        events
    }

    /// Join a full entry state from peer node `from` (anti-entropy; peers are
    /// authenticated cluster nodes, so the state is trusted as a whole).
    /// Returns an event if anything changed.
    pub fn merge_state(&mut self, from: &str, key: &str, state: EntryState, now_ms: u64) -> Result<Option<StateEvent>, StateError> {
        let check = self.check_key(key).and_then(|_| match &state.body {
            Body::Live(l) if l.creations.is_empty() => Err(StateError::Invalid("live state without a creation".into())),
            _ => Ok(()),
        });
        if let Err(e) = check {
            self.record(now_ms, "", from, key, "merge", Source::Sync, Outcome::Rejected(e.to_string()));
            return Err(e);
        }
        let before = self.entries.get(key).map(|s| s.hash);
        match self.entries.get_mut(key) {
            Some(slot) => slot.state.join(state),
            None => {
                self.entries.insert(key.to_string(), Slot { state, hash: 0 });
            }
        }
        self.rehash(key);
        let slot = &self.entries[key];
        let changed = before != Some(slot.hash);
        let ev = changed.then(|| StateEvent {
            key: key.to_string(),
            kind: ChangeKind::Merged,
            author: None,
            node: from.to_string(),
            gen: slot.state.gen,
            version: slot.state.version.clone(),
        });
        if changed {
            self.record(now_ms, "", from, key, "merge", Source::Sync, Outcome::Accepted);
            let mut evs = Vec::new();
            self.drain_pending(key, now_ms, &mut evs);
        }
        Ok(ev)
    }

    /// Purge expired entries to tombstones (once `expiry_grace_ms` past their
    /// expiry) and forget tombstones older than `tombstone_ttl_ms`.
    /// Deterministic: a tombstone left by expiry is stamped with the expiry
    /// time, so every replica purges to the same state.
    pub fn purge(&mut self, now_ms: u64) -> Vec<StateEvent> {
        let mut expired = Vec::new();
        let mut forgotten = Vec::new();
        for (key, slot) in &self.entries {
            match &slot.state.body {
                Body::Tombstone { at_ms } => {
                    if at_ms.saturating_add(self.cfg.tombstone_ttl_ms) <= now_ms {
                        forgotten.push(key.clone());
                    }
                }
                Body::Live(_) => {
                    if let Some(e) = slot.state.meta().and_then(|m| m.expires_at) {
                        if e.saturating_add(self.cfg.expiry_grace_ms) <= now_ms {
                            expired.push((key.clone(), e));
                        }
                    }
                }
            }
        }
        let mut events = Vec::new();
        for (key, e) in expired {
            let slot = self.entries.get_mut(&key).expect("listed");
            slot.state.body = Body::Tombstone { at_ms: e };
            events.push(StateEvent {
                key: key.clone(),
                kind: ChangeKind::Expired,
                author: None,
                node: self.node.clone(),
                gen: slot.state.gen,
                version: slot.state.version.clone(),
            });
            self.rehash(&key);
            let node = self.node.clone();
            self.record(now_ms, "", &node, &key, "expire", Source::Purge, Outcome::Accepted);
        }
        for key in forgotten {
            if let Some(slot) = self.entries.remove(&key) {
                let b = bucket_of(&key) as usize;
                self.buckets[b] = self.buckets[b].wrapping_sub(slot.hash);
                if let Some(d) = self.dirty.as_mut() {
                    d.insert(key);
                }
            }
        }
        events
    }

    // -------------------------------------------------------------- helpers

    fn rehash(&mut self, key: &str) {
        let slot = self.entries.get_mut(key).expect("rehash of a held key");
        let new = summary_hash(key, &slot.state);
        let b = bucket_of(key) as usize;
        self.buckets[b] = self.buckets[b].wrapping_sub(slot.hash).wrapping_add(new);
        slot.hash = new;
        if let Some(d) = self.dirty.as_mut() {
            d.insert(key.to_string());
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn record(&mut self, now_ms: u64, author: &str, node: &str, key: &str, op: &str, source: Source, outcome: Outcome) {
        if let Outcome::Rejected(reason) = &outcome {
            tracing::debug!(%author, %node, %key, %op, %reason, "state change rejected");
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
        });
    }

    fn audit_delta(&mut self, d: &Delta, now_ms: u64, outcome: Outcome) {
        self.record(now_ms, &d.author, &d.origin, &d.key, d.op_name(), Source::Remote, outcome);
    }

    // ------------------------------------------------ durable store support

    pub(crate) fn track_changes(&mut self) {
        self.dirty.get_or_insert_with(BTreeSet::new);
        self.audit.track_unpersisted();
    }

    /// Keys changed or removed, and audit records appended, since last call.
    pub(crate) fn take_changes(&mut self) -> (BTreeSet<String>, Vec<AuditRecord>) {
        let keys = self.dirty.as_mut().map(std::mem::take).unwrap_or_default();
        (keys, self.audit.take_unpersisted())
    }

    pub(crate) fn restore(&mut self, states: Vec<(String, EntryState)>, audit: Vec<AuditRecord>, next_seq: u64) {
        for (key, state) in states {
            self.entries.insert(key.clone(), Slot { state, hash: 0 });
            self.rehash(&key);
        }
        self.audit.restore(audit, next_seq);
        if let Some(d) = self.dirty.as_mut() {
            d.clear();
        }
    }
}

fn bucket_mask(buckets: &[u16]) -> Vec<bool> {
    let mut m = vec![false; BUCKETS];
    for b in buckets {
        if let Some(x) = m.get_mut(*b as usize) {
            *x = true;
        }
    }
    m
}

fn authorize(key: &str, st: &EntryState, author: &PluginId, target: &Stamp, action: Action) -> Result<(), StateError> {
    let Some(live) = st.live() else {
        // Changes concurrent with a delete have no effect: nothing to guard.
        return Ok(());
    };
    let Some(c) = live.creations.get(target) else {
        return Err(StateError::Invalid(format!("key `{key}`: change targets an unknown creation")));
    };
    let (ok, what) = match action {
        Action::Write => (c.meta.val.access.can_write(&c.owner, author), "write"),
        Action::Meta => (c.owner == *author, "change access or expiry of"),
        Action::Delete => (c.owner == *author, "delete"),
    };
    if ok {
        Ok(())
    } else {
        Err(StateError::AccessDenied {
            plugin: author.clone(),
            key: key.to_string(),
            action: what,
        })
    }
}

/// Does every dot or stamp inside `op` belong to the delta's origin and
/// change? (A forged dot of another actor would corrupt its counts.)
fn value_op_is_own(op: &ValueOp, d: &Delta) -> bool {
    let own_stamp = |s: &Stamp| s.node == d.origin && s.seq == d.counter;
    let own_dot = |dot: &Dot<NodeId>| dot.actor == d.origin;
    match op {
        ValueOp::Put(r) => own_stamp(&r.marker),
        ValueOp::GInc(dot) => own_dot(dot),
        ValueOp::Pn(c) => own_dot(&c.dot),
        ValueOp::Set(crdts::orswot::Op::Add { dot, .. }) => own_dot(dot),
        ValueOp::Set(crdts::orswot::Op::Rm { .. }) => true,
        ValueOp::Map(crdts::map::Op::Rm { .. }) => true,
        ValueOp::Map(crdts::map::Op::Up { dot, op, .. }) => {
            own_dot(dot)
                && match op {
                    FieldOp::Reg(crdts::mvreg::Op::Put { val, .. }) => own_stamp(&val.stamp),
                    FieldOp::Counter(c) => own_dot(&c.dot),
                    FieldOp::Set(crdts::orswot::Op::Add { dot, .. }) => own_dot(dot),
                    FieldOp::Set(crdts::orswot::Op::Rm { .. }) => true,
                }
        }
    }
}

/// Build the CRDT operation for a local value change, or the type error.
fn value_op(key: &str, node: &NodeId, value: &Value, op: &LocalOp, stamp: Stamp) -> Result<ValueOp, StateError> {
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
            make::map_rm_field(m, field.clone())
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
        (LocalOp::Create { .. } | LocalOp::SetAccess(_) | LocalOp::SetExpiry(_) | LocalOp::Delete, _) => {
            return Err(StateError::Invalid("not a value operation".into()))
        }
    })
}
