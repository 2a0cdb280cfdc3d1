//! Changes from other replicas: deltas (validated, ACL-checked, delivered
//! causally per key), whole entry states from anti-entropy, and expiry.

use crdts::{CmRDT, CvRDT, Dot, LWWReg};
use serde::{Deserialize, Serialize};

use crate::audit::{Outcome, Source};
use crate::delta::{ChangeKind, Delta, DeltaOp, StateEvent};
use crate::entry::{Body, Creation, EntryState};
use crate::store::{Slot, Store};
use crate::types::{Access, NodeId, PluginId, Stamp, StateError};
use crate::value::{MapAct, Value, ValueOp};

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

enum Readiness {
    Ready,
    Duplicate,
    Obsolete,
    Wait,
}

impl Store {
    /// Apply a delta from another node.
    ///
    /// It is checked before anything is merged: integrity (its dots and
    /// stamps are its origin's own, its counter follows its dependencies),
    /// size, and the ACL. The ACL verdict depends only on the delta and its
    /// causal past (the access level its author had seen, the immutable
    /// owner), so every replica reaches the same one. A refused delta is
    /// audited and returned as an error, and never merged. Deltas that
    /// arrive before their dependencies wait in a bounded buffer; duplicates
    /// are ignored.
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
                    self.pending
                        .entry(delta.key.clone())
                        .or_default()
                        .push(delta);
                    DeltaStatus::Buffered
                }
            }
            Readiness::Ready => {
                if let Err(e) = self.authorize_remote(&delta) {
                    self.audit_delta(&delta, now_ms, Outcome::Rejected(e.to_string()));
                    return Err(e);
                }
                events.push(self.apply_ready(&delta));
                self.audit_delta(&delta, now_ms, Outcome::Accepted);
                self.drain_pending(&delta.key, now_ms, &mut events);
                DeltaStatus::Applied
            }
        };
        Ok(RemoteOutcome { status, events })
    }

    fn audit_delta(&mut self, d: &Delta, now_ms: u64, outcome: Outcome) {
        self.record(
            now_ms,
            (&d.author, ""),
            &d.origin,
            &d.key,
            d.op_name(),
            Source::Remote,
            outcome,
        );
    }

    /// Integrity and size checks that do not depend on this replica's state.
    fn validate_remote(&self, d: &Delta) -> Result<(), StateError> {
        self.check_key(&d.key)?;
        let bad = |what: &str| {
            Err(StateError::Invalid(format!(
                "{} delta: {what}",
                d.op_name()
            )))
        };
        if d.counter == 0 || d.deps.get(&d.origin).checked_add(1) != Some(d.counter) {
            return bad("counter does not follow its origin's previous change");
        }
        if d.author.is_empty() {
            return bad("no author");
        }
        // A change of an existing creation must depend on that creation.
        let targets_seen = |t: &Stamp| t.seq == 1 && d.deps.get(&t.node) >= 1;
        let size = match &d.op {
            DeltaOp::Create {
                stamp, meta, prev, ..
            } => {
                if d.counter != 1 || !d.deps.is_empty() || *stamp != d.stamp() {
                    return bad("a creation must be its origin's first change, stamped by it");
                }
                if prev.as_ref().is_some_and(|p| p.gen >= d.gen) {
                    return bad(
                        "a creation must be of a later generation than the one it replaces",
                    );
                }
                meta.access.byte_len()
            }
            DeltaOp::Access { target, access } => {
                if !targets_seen(target) {
                    return bad("targets a creation its author had not seen");
                }
                access.byte_len()
            }
            DeltaOp::Expiry { target, .. } | DeltaOp::Delete { target } => {
                if !targets_seen(target) {
                    return bad("targets a creation its author had not seen");
                }
                0
            }
            DeltaOp::Value { target, op } => {
                if !targets_seen(target) {
                    return bad("targets a creation its author had not seen");
                }
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

    fn readiness(&self, d: &Delta) -> Readiness {
        let held = self.entries.get(&d.key).map(|s| &s.state);
        match held {
            Some(s) if s.gen > d.gen => Readiness::Obsolete,
            Some(s) if s.gen == d.gen => {
                let have = s.version.get(&d.origin);
                if have >= d.counter {
                    Readiness::Duplicate
                } else if have + 1 == d.counter && d.deps <= s.version {
                    Readiness::Ready
                } else {
                    Readiness::Wait
                }
            }
            // Nothing of this generation yet: only its creations can apply,
            // once this replica has seen what the creator saw of the
            // generation it replaces.
            _ => match &d.op {
                DeltaOp::Create { prev, .. } => match (prev, held) {
                    (Some(p), Some(s)) if p.gen == s.gen && !dominated(&p.version, &s.version) => {
                        Readiness::Wait
                    }
                    _ => Readiness::Ready,
                },
                _ => Readiness::Wait,
            },
        }
    }

    /// The ACL check of a causally ready delta: a function of the delta and
    /// of its causal past only (see `docs/state.md`).
    fn authorize_remote(&self, d: &Delta) -> Result<(), StateError> {
        let denied = |action| {
            Err(StateError::AccessDenied {
                plugin: d.author.clone(),
                key: d.key.clone(),
                action,
            })
        };
        let held = self.entries.get(&d.key).map(|s| &s.state);
        if let DeltaOp::Create { prev, .. } = &d.op {
            let Some(s) = held else { return Ok(()) };
            if s.gen >= d.gen {
                // A concurrent creation of the same generation: kept beside
                // the others, the earliest stamp wins ownership.
                return Ok(());
            }
            // Replaces the generation held here: allowed if it had ended
            // (deleted, or expired when the creation was made), if the
            // author owns it, or if the creator had seen a later generation.
            let ended = !s.is_visible(d.ts_ms);
            let owns = s.owner() == Some(&d.author);
            let saw_later = prev.as_ref().is_some_and(|p| p.gen > s.gen);
            return if ended || owns || saw_later {
                Ok(())
            } else {
                denied("replace")
            };
        }
        let Some(s) = held.filter(|s| s.gen == d.gen) else {
            return Err(StateError::Invalid(
                "change of a generation this replica does not hold".into(),
            ));
        };
        let Some(live) = s.live() else {
            // Changes concurrent with a delete have no effect: nothing to guard.
            return Ok(());
        };
        let target = match &d.op {
            DeltaOp::Value { target, .. }
            | DeltaOp::Access { target, .. }
            | DeltaOp::Expiry { target, .. }
            | DeltaOp::Delete { target } => target,
            DeltaOp::Create { .. } => return Ok(()),
        };
        let Some(c) = live.creations.get(target) else {
            return Err(StateError::Invalid(
                "change targets an unknown creation".into(),
            ));
        };
        match &d.op {
            DeltaOp::Value { .. } => {
                if c.access_at(&d.deps).can_write(&c.owner, &d.author) {
                    Ok(())
                } else {
                    denied("write")
                }
            }
            DeltaOp::Access { .. } if c.owner != d.author => denied("change access of"),
            DeltaOp::Expiry { .. } if c.owner != d.author => denied("change expiry of"),
            DeltaOp::Delete { .. } if c.owner != d.author => denied("delete"),
            _ => Ok(()),
        }
    }

    pub(crate) fn drain_pending(&mut self, key: &str, now_ms: u64, events: &mut Vec<StateEvent>) {
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
                        list.remove(i);
                    }
                    Readiness::Ready => {
                        let d = list.remove(i);
                        match self.authorize_remote(&d) {
                            Ok(()) => {
                                events.push(self.apply_ready(&d));
                                self.audit_delta(&d, now_ms, Outcome::Accepted);
                                progressed = true;
                            }
                            Err(e) => {
                                self.audit_delta(&d, now_ms, Outcome::Rejected(e.to_string()))
                            }
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

    /// Apply a delta that is causally ready and authorised (local or remote).
    pub(crate) fn apply_ready(&mut self, d: &Delta) -> StateEvent {
        let log_cap = self.cfg.delta_log_per_key;
        let slot = self
            .entries
            .entry(d.key.clone())
            .or_insert_with(|| Slot::new(&d.key, EntryState::fresh(d.gen)));
        if slot.state.gen < d.gen {
            slot.state = EntryState::fresh(d.gen);
            self.log.len -= slot.log.len();
            slot.log.clear();
        }
        let before = owner_access(&slot.state);
        let st = &mut slot.state;
        match (&d.op, &mut st.body) {
            (
                DeltaOp::Create {
                    stamp, kind, meta, ..
                },
                Body::Live(l),
            ) => {
                l.creations.entry(stamp.clone()).or_insert_with(|| {
                    Creation::new(d.author.clone(), stamp.clone(), meta.clone())
                });
                l.values
                    .entry(d.author.clone())
                    .or_insert_with(|| Value::empty(*kind))
                    .join(Value::empty(*kind));
            }
            (DeltaOp::Value { target, op }, Body::Live(l)) => {
                if let Some(owner) = l.creations.get(target).map(|c| c.owner.clone()) {
                    l.values
                        .entry(owner)
                        .or_insert_with(|| Value::empty(op.kind()))
                        .apply(op.clone());
                }
            }
            (DeltaOp::Access { target, access }, Body::Live(l)) => {
                if let Some(c) = l.creations.get_mut(target) {
                    c.access.entry(d.stamp()).or_insert_with(|| access.clone());
                }
            }
            (DeltaOp::Expiry { target, expires_at }, Body::Live(l)) => {
                if let Some(c) = l.creations.get_mut(target) {
                    c.expiry.merge(LWWReg {
                        val: *expires_at,
                        marker: d.stamp(),
                    });
                }
            }
            (DeltaOp::Delete { .. }, body @ Body::Live(_)) => {
                *body = Body::Tombstone { at_ms: d.ts_ms }
            }
            (DeltaOp::Delete { .. }, Body::Tombstone { at_ms }) => *at_ms = (*at_ms).max(d.ts_ms),
            // Changes concurrent with a delete are recorded but have no effect.
            (_, Body::Tombstone { .. }) => {}
        }
        st.version.apply(Dot::new(d.origin.clone(), d.counter));
        if log_cap > 0 {
            if slot.log.len() >= log_cap {
                slot.log.pop_front();
                self.log.len -= 1;
            }
            slot.log.push_back(d.clone());
            self.log.len += 1;
            self.log
                .order
                .push_back((d.key.clone(), d.gen, d.origin.clone(), d.counter));
        }
        let (owner, access) = owner_access(&slot.state).or(before).unzip();
        let event = StateEvent {
            key: d.key.clone(),
            kind: d.op.change_kind(),
            author: Some(d.author.clone()),
            owner,
            access,
            node: d.origin.clone(),
            gen: slot.state.gen,
            version: slot.state.version.clone(),
        };
        self.rehash(&d.key);
        self.trim_log();
        event
    }

    /// Keep the delta logs of all keys within `delta_log_capacity`, oldest
    /// out first.
    fn trim_log(&mut self) {
        let cap = self.cfg.delta_log_capacity;
        while self.log.len > cap || self.log.order.len() > cap.saturating_mul(2).max(64) {
            let Some((key, gen, origin, counter)) = self.log.order.pop_front() else {
                break;
            };
            if let Some(slot) = self.entries.get_mut(&key) {
                let front = slot
                    .log
                    .front()
                    .is_some_and(|d| d.gen == gen && d.origin == origin && d.counter == counter);
                if front {
                    slot.log.pop_front();
                    self.log.len -= 1;
                }
            }
        }
    }

    /// Join a whole entry state from peer node `from` (anti-entropy, or a
    /// majority/all read reply). Peers are authenticated cluster nodes whose
    /// stores hold only changes that passed the same deterministic checks,
    /// so the state is joined as a whole. Returns the events of what
    /// changed (the merge, and buffered deltas it unblocked).
    pub fn merge_state(
        &mut self,
        from: &str,
        key: &str,
        state: EntryState,
        now_ms: u64,
    ) -> Result<Vec<StateEvent>, StateError> {
        let check = self.check_key(key).and_then(|_| match &state.body {
            Body::Live(l) if l.creations.is_empty() => {
                Err(StateError::Invalid("live state without a creation".into()))
            }
            Body::Live(l) if l.creations.values().any(|c| c.access.is_empty()) => Err(
                StateError::Invalid("creation without an access level".into()),
            ),
            _ => Ok(()),
        });
        if let Err(e) = check {
            self.record(
                now_ms,
                ("", ""),
                from,
                key,
                "merge",
                Source::Sync,
                Outcome::Rejected(e.to_string()),
            );
            return Err(e);
        }
        // Owner and access before, only needed if the merge deletes.
        let (before_hash, before) = match self.entries.get(key) {
            Some(s) if state.is_tombstone() || state.gen > s.state.gen => {
                (Some(s.hash), owner_access(&s.state))
            }
            Some(s) => (Some(s.hash), None),
            None => (None, None),
        };
        // Nothing new: same generation, no change this replica lacks.
        if let Some(s) = self.entries.get(key) {
            let st = &s.state;
            if st.gen == state.gen
                && state.version <= st.version
                && (st.is_tombstone() || !state.is_tombstone())
            {
                return Ok(Vec::new());
            }
        }
        match self.entries.get_mut(key) {
            Some(slot) => {
                let gen = slot.state.gen;
                slot.state.join(state);
                if slot.state.gen != gen {
                    self.log.len -= slot.log.len();
                    slot.log.clear();
                }
            }
            None => {
                self.entries.insert(key.to_string(), Slot::new(key, state));
            }
        }
        self.rehash(key);
        let mut events = Vec::new();
        let Some(slot) = self.entries.get(key) else {
            return Ok(events);
        };
        if before_hash == Some(slot.hash) {
            return Ok(events);
        }
        let (owner, access) = owner_access(&slot.state).or(before).unzip();
        events.push(StateEvent {
            key: key.to_string(),
            kind: ChangeKind::Merged,
            author: None,
            owner,
            access,
            node: from.to_string(),
            gen: slot.state.gen,
            version: slot.state.version.clone(),
        });
        self.record(
            now_ms,
            ("", ""),
            from,
            key,
            "merge",
            Source::Sync,
            Outcome::Accepted,
        );
        self.drain_pending(key, now_ms, &mut events);
        Ok(events)
    }

    /// Housekeeping, to call periodically: purge expired entries to
    /// tombstones (once `expiry_grace_ms` past their expiry), forget
    /// tombstones older than `tombstone_ttl_ms`, and drop buffered deltas
    /// that are stale or waited longer than `pending_ttl_ms`.
    ///
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
                    if let Some(e) = slot.state.expires_at() {
                        if e.saturating_add(self.cfg.expiry_grace_ms) <= now_ms {
                            expired.push((key.clone(), e));
                        }
                    }
                }
            }
        }
        let mut events = Vec::new();
        for (key, e) in expired {
            let Some(slot) = self.entries.get_mut(&key) else {
                continue;
            };
            let (owner, access) = owner_access(&slot.state).unzip();
            slot.state.body = Body::Tombstone { at_ms: e };
            self.log.len -= slot.log.len();
            slot.log.clear();
            events.push(StateEvent {
                key: key.clone(),
                kind: ChangeKind::Expired,
                author: None,
                owner,
                access,
                node: self.node.clone(),
                gen: slot.state.gen,
                version: slot.state.version.clone(),
            });
            self.rehash(&key);
            let node = self.node.clone();
            self.record(
                now_ms,
                ("", ""),
                &node,
                &key,
                "expire",
                Source::Purge,
                Outcome::Accepted,
            );
        }
        for key in forgotten {
            self.forget(&key);
        }
        // Buffered deltas: drop what is now stale, or waited too long.
        let pending = std::mem::take(&mut self.pending);
        self.pending_len = 0;
        for (key, list) in pending {
            let keep: Vec<Delta> = list
                .into_iter()
                .filter(|d| {
                    matches!(self.readiness(d), Readiness::Wait | Readiness::Ready)
                        && d.ts_ms.saturating_add(self.cfg.pending_ttl_ms) > now_ms
                })
                .collect();
            if !keep.is_empty() {
                self.pending_len += keep.len();
                self.pending.insert(key.clone(), keep);
                self.drain_pending(&key, now_ms, &mut events);
            }
        }
        events
    }
}

/// Is every dot of `a` in `b`?
fn dominated(a: &crate::types::Version, b: &crate::types::Version) -> bool {
    a.iter().all(|dot| b.get(dot.actor) >= dot.counter)
}

fn owner_access(st: &EntryState) -> Option<(PluginId, Access)> {
    st.winner()
        .map(|(_, c)| (c.owner.clone(), c.current_access().clone()))
}

/// Does every dot or stamp inside `op` belong to the delta's origin and
/// change? (A forged dot of another actor would corrupt its counts.)
fn value_op_is_own(op: &ValueOp, d: &Delta) -> bool {
    let own_stamp = |s: &Stamp| s.node == d.origin && s.seq == d.counter && s.ts_ms == d.ts_ms;
    let own_dot = |dot: &Dot<NodeId>| dot.actor == d.origin;
    match op {
        ValueOp::Put(r) => own_stamp(&r.marker),
        ValueOp::GInc(dot) => own_dot(dot),
        ValueOp::Pn(c) => own_dot(&c.dot),
        ValueOp::Set(crdts::orswot::Op::Add { dot, .. }) => own_dot(dot),
        ValueOp::Set(crdts::orswot::Op::Rm { .. }) => true,
        ValueOp::Map(m) => {
            m.dot.node == d.origin
                && match &m.act {
                    MapAct::Put(v) => own_stamp(&v.stamp),
                    _ => true,
                }
        }
    }
}
