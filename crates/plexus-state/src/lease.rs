//! Leases (distributed locks with expiry) with fencing tokens.
//!
//! A CRDT cannot give mutual exclusion (two sides of a partition both
//! accept writes), so leases are not CRDTs. A lease is granted by a
//! **majority of acceptors**:
//!
//! - Every node keeps a [`LeaseTable`] of promises: per lease name, the
//!   holder and fencing token it last voted for, and until when.
//! - A node wanting a lease builds a [`LeaseRequest`] (next token), sends it
//!   to every node (itself included), feeds the [`LeaseVote`]s into a
//!   [`LeaseAcquire`], and holds the lease once a majority granted it.
//! - An acceptor grants a request only if its token is higher than the one
//!   it promised (and that promise expired, or is the same holder's), or is
//!   the same holder's renewal of the same token. Promises are durable
//!   before the vote is sent ([`crate::DurableStore::lease_vote`]).
//!
//! Guarantees (see `docs/state.md` for the partition analysis):
//!
//! - at most one holder per token, and a later grant always has a higher
//!   token than an earlier one (two majorities share an acceptor, which
//!   only ever votes for increasing tokens);
//! - no grant at all on a minority side of a partition;
//! - mutual exclusion in time only while clocks run at about the same rate
//!   and the holder stops before `expires_at - drift margin`
//!   ([`Lease::valid_at`]); beyond that the resource must check the token
//!   with a [`Fence`], which rejects a stale holder whatever the clocks do.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::quorum::{AckStatus, AckTracker, Consistency};
use crate::types::StateError;

/// A lease: who holds `name`, under which fencing token, until when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Lease {
    /// Lease name (the resource it guards).
    pub name: String,
    /// Holder (e.g. `plugin@node`).
    pub holder: String,
    /// Fencing token: strictly increases from one grant to the next.
    pub token: u64,
    /// Until when (ms). For an acceptor's promise, its own clock at the
    /// vote plus the TTL; for a granted lease, the proposer's clock when it
    /// sent the request plus the TTL.
    pub expires_at_ms: u64,
}

impl Lease {
    /// May the holder still act at `now_ms`, keeping `drift_margin_ms` for
    /// clock-rate differences between it and the acceptors?
    pub fn valid_at(&self, now_ms: u64, drift_margin_ms: u64) -> bool {
        now_ms.saturating_add(drift_margin_ms) < self.expires_at_ms
    }
}

/// A request for (or renewal of) a lease, sent to every acceptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRequest {
    /// Lease name.
    pub name: String,
    /// Would-be holder.
    pub holder: String,
    /// Proposed fencing token (the current holder's own token to renew).
    pub token: u64,
    /// Time to live (ms).
    pub ttl_ms: u64,
}

/// An acceptor's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseVote {
    /// Promised to this request until the acceptor's `expires_at_ms`.
    Granted,
    /// Refused; the acceptor's current promise, so the proposer can retry
    /// with a higher token once it expires.
    Refused {
        /// What the acceptor promised before.
        current: Option<Lease>,
    },
}

/// One node's lease promises (the acceptor side) and its token knowledge
/// (the proposer side).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseTable {
    promises: BTreeMap<String, Lease>,
    dirty: BTreeSet<String>,
}

impl LeaseTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Restore persisted promises.
    pub(crate) fn restore(leases: Vec<Lease>) -> Self {
        LeaseTable {
            promises: leases.into_iter().map(|l| (l.name.clone(), l)).collect(),
            dirty: BTreeSet::new(),
        }
    }

    /// This acceptor's promise for `name`.
    pub fn get(&self, name: &str) -> Option<&Lease> {
        self.promises.get(name)
    }

    /// Every promise, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.promises.values()
    }

    /// A request for `name` by `holder`: a renewal (same token) if this
    /// table's promise is `holder`'s and unexpired at `now_ms`, else the next
    /// token this node knows of.
    pub fn request(&self, name: &str, holder: &str, ttl_ms: u64, now_ms: u64) -> LeaseRequest {
        let token = match self.promises.get(name) {
            Some(p) if p.holder == holder && p.expires_at_ms > now_ms => p.token,
            Some(p) => p.token + 1,
            None => 1,
        };
        LeaseRequest {
            name: name.to_string(),
            holder: holder.to_string(),
            token,
            ttl_ms,
        }
    }

    /// Vote on a request at `now_ms` (acceptor side). A grant records the
    /// promise; persist it before sending the vote.
    pub fn vote(&mut self, req: &LeaseRequest, now_ms: u64) -> LeaseVote {
        let grant = match self.promises.get(&req.name) {
            None => req.token >= 1,
            Some(p) if req.token > p.token => p.holder == req.holder || p.expires_at_ms <= now_ms,
            Some(p) => req.token == p.token && p.holder == req.holder,
        };
        if !grant {
            return LeaseVote::Refused {
                current: self.promises.get(&req.name).cloned(),
            };
        }
        let until = now_ms.saturating_add(req.ttl_ms);
        let promise = self
            .promises
            .entry(req.name.clone())
            .or_insert_with(|| Lease {
                name: req.name.clone(),
                holder: req.holder.clone(),
                token: req.token,
                expires_at_ms: until,
            });
        let renewal = promise.token == req.token;
        promise.holder = req.holder.clone();
        promise.token = req.token;
        promise.expires_at_ms = if renewal {
            promise.expires_at_ms.max(until)
        } else {
            until
        };
        self.dirty.insert(req.name.clone());
        LeaseVote::Granted
    }

    /// Release `holder`'s lease `name` under `token` (acceptor side): the
    /// promise ends now, its token stays so later tokens stay higher.
    /// Returns whether anything changed.
    pub fn release(&mut self, name: &str, holder: &str, token: u64, now_ms: u64) -> bool {
        match self.promises.get_mut(name) {
            Some(p) if p.holder == holder && p.token == token && p.expires_at_ms > now_ms => {
                p.expires_at_ms = now_ms;
                self.dirty.insert(name.to_string());
                true
            }
            _ => false,
        }
    }

    /// Names whose promise changed since the last [`LeaseTable::take_dirty`].
    pub(crate) fn dirty(&self) -> &BTreeSet<String> {
        &self.dirty
    }

    /// Names whose promise changed since the last call (for persistence).
    pub(crate) fn take_dirty(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.dirty)
    }
}

/// Where a lease acquisition stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseProgress {
    /// Waiting for more votes.
    Pending,
    /// A majority granted it: the lease (expiry from the proposer's clock
    /// when the request was sent).
    Granted(Lease),
    /// A majority can no longer be reached; the highest promise seen, to
    /// wait for or to outbid with [`LeaseAcquire::retry`].
    Refused {
        /// Highest conflicting promise reported.
        current: Option<Lease>,
    },
}

/// The proposer side of one lease request: counts votes towards a
/// majority.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseAcquire {
    request: LeaseRequest,
    sent_at_ms: u64,
    tracker: AckTracker,
    highest: Option<Lease>,
}

impl LeaseAcquire {
    /// Start counting votes on `request`, sent at `sent_at_ms` to a cluster
    /// of `cluster_size` nodes (this one included: feed its own vote too).
    pub fn new(request: LeaseRequest, cluster_size: usize, sent_at_ms: u64) -> Self {
        LeaseAcquire {
            request,
            sent_at_ms,
            tracker: AckTracker::new(Consistency::Majority, cluster_size),
            highest: None,
        }
    }

    /// The request being voted on.
    pub fn request(&self) -> &LeaseRequest {
        &self.request
    }

    /// Count `from`'s vote.
    pub fn on_vote(&mut self, from: &str, vote: LeaseVote) -> LeaseProgress {
        match vote {
            LeaseVote::Granted => {
                self.tracker.ack(from);
            }
            LeaseVote::Refused { current } => {
                if let Some(c) = current {
                    if self.highest.as_ref().is_none_or(|h| c.token > h.token) {
                        self.highest = Some(c);
                    }
                }
                self.tracker.refuse(from);
            }
        }
        self.progress()
    }

    /// The timeout fired: refused unless already granted.
    pub fn time_out(&mut self) -> LeaseProgress {
        self.tracker.time_out();
        self.progress()
    }

    /// Where it stands.
    pub fn progress(&self) -> LeaseProgress {
        match self.tracker.status() {
            AckStatus::Reached => LeaseProgress::Granted(Lease {
                name: self.request.name.clone(),
                holder: self.request.holder.clone(),
                token: self.request.token,
                expires_at_ms: self.sent_at_ms.saturating_add(self.request.ttl_ms),
            }),
            AckStatus::Failed => LeaseProgress::Refused {
                current: self.highest.clone(),
            },
            AckStatus::Pending => LeaseProgress::Pending,
        }
    }

    /// A new request above every token seen, to send once the conflicting
    /// promise has expired.
    pub fn retry(&self) -> LeaseRequest {
        let seen = self.highest.as_ref().map_or(0, |h| h.token);
        LeaseRequest {
            token: self.request.token.max(seen) + 1,
            ..self.request.clone()
        }
    }
}

/// The resource side of fencing: remembers the highest token seen per lease
/// and refuses anything older. Keep it with (and persist it like) the
/// resource it guards.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    highest: BTreeMap<String, u64>,
}

impl Fence {
    /// An empty fence.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accept an action under lease `name` with `token` if no higher token
    /// was seen (and remember it), else [`StateError::Fenced`].
    pub fn check(&mut self, name: &str, token: u64) -> Result<(), StateError> {
        let highest = self.highest.entry(name.to_string()).or_insert(0);
        if token < *highest {
            return Err(StateError::Fenced {
                name: name.to_string(),
                token,
                highest: *highest,
            });
        }
        *highest = token;
        Ok(())
    }

    /// The highest token seen for `name`.
    pub fn highest(&self, name: &str) -> Option<u64> {
        self.highest.get(name).copied()
    }
}
