//! Consistency levels: the ack counting a node does for reads and writes
//! that must reach more than the local replica (as Akka Distributed Data's
//! `ReadLocal/WriteLocal`, `ReadMajority/WriteMajority`, `ReadAll/WriteAll`).
//!
//! [`AckTracker`] does the counting; the [`crate::Coordinator`] runs the
//! requests. A write at level `Majority`:
//!
//! 1. apply it locally (durable before anything else happens) and ack for
//!    this node;
//! 2. send the entry's state ([`crate::Store::state`]) to the peers; each
//!    peer merges it ([`crate::Store::merge_state`], durable before it
//!    answers) and acks once [`crate::Store::covers`] the written
//!    `(gen, version)`;
//! 3. answer the caller when [`AckTracker::status`] is `Reached`, or fail
//!    when it is `Failed` or the timeout fires first (the write stays
//!    applied where it reached and gossip spreads it anyway).
//!
//! A read at level `Majority` asks peers for their state of the key, merges
//! each reply, and reads locally once enough replies arrived.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::types::NodeId;

/// How many replicas a read or write must reach before it is answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    /// This node only.
    #[default]
    Local,
    /// More than half of the cluster (this node included).
    Majority,
    /// Every node of the cluster.
    All,
}

impl Consistency {
    /// `local`, `majority` or `all`.
    pub fn name(self) -> &'static str {
        match self {
            Consistency::Local => "local",
            Consistency::Majority => "majority",
            Consistency::All => "all",
        }
    }

    /// Acks needed (this node included) in a cluster of `cluster_size`
    /// nodes. Count every member that is up or unreachable (not removed):
    /// a partition must not shrink the quorum.
    pub fn required(self, cluster_size: usize) -> usize {
        let n = cluster_size.max(1);
        match self {
            Consistency::Local => 1,
            Consistency::Majority => n / 2 + 1,
            Consistency::All => n,
        }
    }
}

impl std::fmt::Display for Consistency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a counted request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AckStatus {
    /// Not enough answers yet.
    Pending,
    /// Enough nodes acked.
    Reached,
    /// Too many nodes refused (or the timeout fired): it cannot be reached.
    Failed,
}

/// Counts acks from distinct nodes towards a [`Consistency`] level.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckTracker {
    required: usize,
    cluster_size: usize,
    acked: BTreeSet<NodeId>,
    refused: BTreeSet<NodeId>,
    timed_out: bool,
}

impl AckTracker {
    /// A tracker for `level` in a cluster of `cluster_size` nodes. Nothing
    /// is counted yet: ack this node's own answer too.
    pub fn new(level: Consistency, cluster_size: usize) -> Self {
        AckTracker {
            required: level.required(cluster_size),
            cluster_size: cluster_size.max(1),
            acked: BTreeSet::new(),
            refused: BTreeSet::new(),
            timed_out: false,
        }
    }

    /// Count an ack from `node` (repeats count once).
    pub fn ack(&mut self, node: &str) -> AckStatus {
        if !self.refused.contains(node) {
            self.acked.insert(node.to_string());
        }
        self.status()
    }

    /// Count a refusal from `node` (repeats count once).
    pub fn refuse(&mut self, node: &str) -> AckStatus {
        if !self.acked.contains(node) {
            self.refused.insert(node.to_string());
        }
        self.status()
    }

    /// The timeout fired: `Failed` unless already reached.
    pub fn time_out(&mut self) -> AckStatus {
        self.timed_out = true;
        self.status()
    }

    /// Where it stands.
    pub fn status(&self) -> AckStatus {
        if self.acked.len() >= self.required {
            AckStatus::Reached
        } else if self.timed_out
            || self.cluster_size.saturating_sub(self.refused.len()) < self.required
        {
            AckStatus::Failed
        } else {
            AckStatus::Pending
        }
    }

    /// Acks needed.
    pub fn required(&self) -> usize {
        self.required
    }

    /// Nodes that acked.
    pub fn acked(&self) -> &BTreeSet<NodeId> {
        &self.acked
    }
}
