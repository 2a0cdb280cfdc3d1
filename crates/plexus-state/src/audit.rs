//! Audit log: every accepted or rejected change, in a bounded ring in memory
//! (and, through [`crate::DurableStore`], persisted).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::types::{NodeId, PluginId};

/// Accepted, or rejected with the reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Outcome {
    /// The change was applied.
    Accepted,
    /// The change was refused; nothing stored changed.
    Rejected(String),
}

impl Outcome {
    /// Was it accepted?
    pub fn is_accepted(&self) -> bool {
        matches!(self, Outcome::Accepted)
    }
}

/// Where a change came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Source {
    /// A plugin on this node.
    Local,
    /// A delta from another node.
    Remote,
    /// A full entry state from anti-entropy (merged, not checked per change).
    Sync,
    /// Expiry or tombstone collection on this node.
    Purge,
}

/// One audited change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditRecord {
    /// Position in this node's log (monotonic, survives restarts when durable).
    pub seq: u64,
    /// When this node recorded it (ms).
    pub at_ms: u64,
    /// Plugin that authored the change (empty for sync and purge).
    pub author: PluginId,
    /// Node the change came from (its origin for deltas, the peer for sync).
    pub node: NodeId,
    /// Key changed.
    pub key: String,
    /// Operation name (`put`, `incr`, `or-remove`, `delete`, `merge`, ...).
    pub op: String,
    /// How it came in.
    pub source: Source,
    /// Accepted or rejected with reason.
    pub outcome: Outcome,
    /// Who asked, as this node authenticated them: `principal (credential)`,
    /// e.g. `plugin:jira-orchestrator (hosted:jira-orchestrator)` or
    /// `admin (admin-token)`. Only the node that accepted a local change
    /// knows the credential; deltas from peers, syncs, purges and the node's
    /// own writes leave it empty (the origin node's record has it).
    #[serde(default)]
    pub by: String,
}

impl AuditRecord {
    /// Decode a stored record: today's layout, or the one before `by`
    /// existed (data dirs written by earlier versions stay readable).
    pub(crate) fn decode_stored(
        b: &[u8],
        limit: usize,
    ) -> Result<AuditRecord, plexus_codec::CodecError> {
        match plexus_codec::decode_limited::<AuditRecord>(b, limit) {
            Ok(r) => Ok(r),
            Err(e) => match plexus_codec::decode_limited::<AuditRecordV1>(b, limit) {
                Ok(v1) => Ok(v1.into()),
                Err(_) => Err(e),
            },
        }
    }
}

/// [`AuditRecord`] as stored before it had `by`.
#[derive(Deserialize)]
struct AuditRecordV1 {
    seq: u64,
    at_ms: u64,
    author: PluginId,
    node: NodeId,
    key: String,
    op: String,
    source: Source,
    outcome: Outcome,
}

impl From<AuditRecordV1> for AuditRecord {
    fn from(r: AuditRecordV1) -> AuditRecord {
        AuditRecord {
            seq: r.seq,
            at_ms: r.at_ms,
            author: r.author,
            node: r.node,
            key: r.key,
            op: r.op,
            source: r.source,
            outcome: r.outcome,
            by: String::new(),
        }
    }
}

/// A query over audit records; every set field must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditQuery {
    /// Only this key.
    pub key: Option<String>,
    /// Only changes authored by this plugin.
    pub plugin: Option<PluginId>,
    /// Only records at or after this time (ms).
    pub from_ms: Option<u64>,
    /// Only records before this time (ms).
    pub to_ms: Option<u64>,
    /// Only accepted (`Some(true)`) or rejected (`Some(false)`) changes.
    pub accepted: Option<bool>,
    /// At most this many records, newest kept (0 = no limit).
    pub limit: usize,
}

impl AuditQuery {
    /// Does `r` match?
    pub fn matches(&self, r: &AuditRecord) -> bool {
        self.key.as_ref().is_none_or(|k| *k == r.key)
            && self.plugin.as_ref().is_none_or(|p| *p == r.author)
            && self.from_ms.is_none_or(|t| r.at_ms >= t)
            && self.to_ms.is_none_or(|t| r.at_ms < t)
            && self.accepted.is_none_or(|a| a == r.outcome.is_accepted())
    }

    /// Keep only the newest `limit` of `records` (oldest first order kept).
    pub(crate) fn truncate(&self, mut records: Vec<AuditRecord>) -> Vec<AuditRecord> {
        if self.limit > 0 && records.len() > self.limit {
            records.drain(..records.len() - self.limit);
        }
        records
    }
}

/// Bounded in-memory ring of audit records.
#[derive(Clone, Debug)]
pub struct AuditLog {
    cap: usize,
    next_seq: u64,
    ring: VecDeque<AuditRecord>,
    unpersisted: Option<Vec<AuditRecord>>,
}

impl AuditLog {
    /// A ring holding at most `cap` records.
    pub fn new(cap: usize) -> Self {
        AuditLog {
            cap: cap.max(1),
            next_seq: 0,
            ring: VecDeque::new(),
            unpersisted: None,
        }
    }

    /// Append a record (its `seq` is assigned here) and return its seq.
    pub fn push(&mut self, mut r: AuditRecord) -> u64 {
        r.seq = self.next_seq;
        self.next_seq += 1;
        if let Some(u) = self.unpersisted.as_mut() {
            u.push(r.clone());
        }
        if self.ring.len() == self.cap {
            self.ring.pop_front();
        }
        self.ring.push_back(r);
        self.next_seq - 1
    }

    /// Records matching `q`, oldest first.
    pub fn query(&self, q: &AuditQuery) -> Vec<AuditRecord> {
        q.truncate(self.ring.iter().filter(|r| q.matches(r)).cloned().collect())
    }

    /// Number of records in the ring.
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// Is the ring empty?
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// The sequence number the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Restore the ring from persisted records (oldest first).
    pub(crate) fn restore(&mut self, records: Vec<AuditRecord>, next_seq: u64) {
        self.ring.clear();
        for r in records {
            if self.ring.len() == self.cap {
                self.ring.pop_front();
            }
            self.ring.push_back(r);
        }
        self.next_seq = next_seq;
    }

    pub(crate) fn track_unpersisted(&mut self) {
        self.unpersisted.get_or_insert_with(Vec::new);
    }

    pub(crate) fn unpersisted_len(&self) -> usize {
        self.unpersisted.as_ref().map_or(0, Vec::len)
    }

    pub(crate) fn take_unpersisted(&mut self) -> Vec<AuditRecord> {
        self.unpersisted
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout before `by`, as an earlier version wrote it.
    #[derive(Serialize)]
    struct Old {
        seq: u64,
        at_ms: u64,
        author: PluginId,
        node: NodeId,
        key: String,
        op: String,
        source: Source,
        outcome: Outcome,
    }

    #[test]
    fn a_record_stored_before_by_existed_still_loads() {
        let old = Old {
            seq: 7,
            at_ms: 1_000,
            author: "jira".into(),
            node: "n1".into(),
            key: "k".into(),
            op: "put".into(),
            source: Source::Local,
            outcome: Outcome::Rejected("no".into()),
        };
        let b = plexus_codec::encode(&old).unwrap();
        let r = AuditRecord::decode_stored(&b, 1 << 20).unwrap();
        assert_eq!((r.seq, r.key.as_str(), r.by.as_str()), (7, "k", ""));
        assert_eq!(r.outcome, Outcome::Rejected("no".into()));

        let mut now = r.clone();
        now.by = "admin (admin-token)".into();
        let b = plexus_codec::encode(&now).unwrap();
        assert_eq!(AuditRecord::decode_stored(&b, 1 << 20).unwrap(), now);
        assert!(AuditRecord::decode_stored(&b[..3], 1 << 20).is_err());
    }
}
