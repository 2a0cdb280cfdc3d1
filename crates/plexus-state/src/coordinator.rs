//! The replication coordinator: majority/all writes and reads, lease
//! acquisition, gossip rounds and purges, as a sans-IO state machine in the
//! style of raft-rs's `Ready`.
//!
//! Every call takes `now_ms`, the [`Replica`] it changes in memory, and
//! what happened (a local request, a peer's [`StateWire`], a timer) and
//! returns a [`Ready`]: what changed and must be durable, events to
//! publish, messages to send, replies to local requests and timers to set.
//! The caller performs a `Ready` **in order**: commit [`Ready::persist`]
//! (`DurableStore::commit`), then publish, send and reply, then set the
//! timers. Nothing in a `Ready` may go out before its changes are durable:
//! an ack or a lease vote promises durability, and a reply acknowledges a
//! write.
//!
//! Quorums are counted over the members known when a request starts
//! ([`Coordinator::set_members`], every member whatever its status, this
//! node included), never only the reachable ones, so a partition cannot
//! shrink them. An answer from a node outside that set, a duplicate, or one
//! for a finished request is ignored.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use rand::seq::SliceRandom;
use rand::Rng;

use crate::delta::StateEvent;
use crate::entry::EntryInfo;
use crate::lease::{Lease, LeaseAcquire, LeaseProgress, LeaseRequest};
use crate::quorum::{AckStatus, AckTracker, Consistency};
use crate::replica::{Persist, Replica};
use crate::store::{Change, LocalOp};
use crate::sync::{pack_deltas, GossipMsg};
use crate::types::{Access, Kind, NodeId, PluginId, StateError};
use crate::value::View;
use crate::wire::StateWire;

/// Names one local request of a [`Coordinator`] (allocated by it): the
/// reply in a [`Ready`] carries it.
pub type ReqId = u64;

/// A cluster member as the coordinator sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Node id.
    pub name: NodeId,
    /// Up and linked: worth an eager push or a gossip round now. Quorums
    /// count every member, live or not.
    pub live: bool,
}

impl Member {
    /// A member that is up and linked.
    pub fn live(name: impl Into<NodeId>) -> Self {
        Member {
            name: name.into(),
            live: true,
        }
    }

    /// A member known but unreachable (down, or no link).
    pub fn unreachable(name: impl Into<NodeId>) -> Self {
        Member {
            name: name.into(),
            live: false,
        }
    }
}

/// Settings of a [`Coordinator`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoordinatorConfig {
    /// Period of anti-entropy rounds.
    pub gossip_interval_ms: u64,
    /// Peers per gossip round.
    pub gossip_fanout: usize,
    /// Period of expiry purges.
    pub purge_interval_ms: u64,
    /// Largest gossip message (summaries, items and pushed deltas are split
    /// under it).
    pub max_message_bytes: usize,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            gossip_interval_ms: 500,
            gossip_fanout: 2,
            purge_interval_ms: 1_000,
            max_message_bytes: 256 * 1024,
        }
    }
}

/// A timer the caller sets and feeds back through
/// [`Coordinator::on_timer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Timer {
    /// Start an anti-entropy round.
    Gossip,
    /// Purge expired entries.
    Purge,
    /// A request's deadline.
    Expire(ReqId),
}

/// Set `timer` to fire `after_ms` from now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerSet {
    /// Which timer.
    pub timer: Timer,
    /// Delay (ms).
    pub after_ms: u64,
}

/// A message to send to one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// Destination node.
    pub to: NodeId,
    /// The message.
    pub msg: StateWire,
}

/// A write asked by a local plugin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteRequest {
    /// The acting plugin.
    pub plugin: PluginId,
    /// Who asked, as the node authenticated them (`principal
    /// (credential)`), for the audit; empty for the node's own writes.
    pub by: String,
    /// Key.
    pub key: String,
    /// The value change (a `Put`, `Incr`, ..., map op, or `Delete`).
    pub op: LocalOp,
    /// Access level to create the key with (or change it to: owner only).
    pub access: Option<Access>,
    /// Expiry from now (creates with it, or changes it: owner only).
    pub ttl_ms: Option<u64>,
    /// Value type to create the key with (default: implied by the op).
    pub kind: Option<Kind>,
    /// How many replicas must hold it before the reply.
    pub consistency: Consistency,
    /// Deadline for the acks (ms from the request).
    pub timeout_ms: u64,
}

/// A read asked by a local plugin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadRequest {
    /// The acting plugin.
    pub plugin: PluginId,
    /// Key.
    pub key: String,
    /// How many replicas must answer before the local read.
    pub consistency: Consistency,
    /// Deadline for the answers (ms from the request).
    pub timeout_ms: u64,
}

/// A lease acquisition (or renewal) asked by a local plugin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseAcquireRequest {
    /// Lease name.
    pub name: String,
    /// Would-be holder.
    pub holder: String,
    /// Time to live (ms).
    pub ttl_ms: u64,
    /// Deadline for the votes, retry included (ms from the request).
    pub timeout_ms: u64,
}

/// A write that reached its consistency level.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Key.
    pub key: String,
    /// Names of the operations applied (an implicit creation or meta change
    /// first).
    pub ops: Vec<String>,
    /// Level asked.
    pub consistency: Consistency,
    /// Acks needed, this node included.
    pub required: usize,
    /// Nodes that durably hold the write.
    pub acked_by: Vec<NodeId>,
}

/// A read that reached its consistency level: the local replica's value
/// after merging what the peers answered.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadOutcome {
    /// Key.
    pub key: String,
    /// The value.
    pub view: View,
    /// Owner, access, kind, version, expiry.
    pub info: EntryInfo,
    /// Level asked.
    pub consistency: Consistency,
    /// Answers needed, this node included.
    pub required: usize,
    /// Nodes whose state was merged (this node included).
    pub acked_by: Vec<NodeId>,
}

/// The answer to a local request.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// To [`Coordinator::write`].
    Write(Result<WriteOutcome, RequestError>),
    /// To [`Coordinator::read`].
    Read(Result<ReadOutcome, RequestError>),
    /// To [`Coordinator::acquire_lease`].
    Lease(Result<Lease, RequestError>),
    /// To [`Coordinator::release_lease`]: whether this node's promise ended.
    Released(Result<bool, RequestError>),
}

/// Which kind of request did not reach its level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// A write.
    Write,
    /// A read.
    Read,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Write => "write",
            Operation::Read => "read",
        })
    }
}

fn names(nodes: &[NodeId]) -> String {
    if nodes.is_empty() {
        "none".to_string()
    } else {
        nodes.join(", ")
    }
}

fn not_confirmed_note(what: &Operation) -> &'static str {
    match what {
        Operation::Write => "; the change stays applied where it reached and gossip spreads it",
        Operation::Read => "",
    }
}

fn field_hint(hint: &bool) -> &'static str {
    if *hint {
        " (use --field for a map)"
    } else {
        ""
    }
}

/// Why a local request failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The store refused it (access, type, size, not found, storage).
    #[error(transparent)]
    State(#[from] StateError),
    /// The value type asked for cannot take the operation.
    #[error("a {kind} cannot take `{op}`{}", field_hint(.map_hint))]
    KindMismatch {
        /// Type asked for.
        kind: Kind,
        /// Operation name.
        op: &'static str,
        /// The op is not a map op (the caller may have meant a map field).
        map_hint: bool,
    },
    /// Not enough replicas acked before the deadline (or too many refused).
    #[error(
        "{what} at consistency {level} not confirmed within {timeout_ms} ms: {} of {required} required acks arrived (from {}){}",
        .acked_by.len(),
        names(.acked_by),
        not_confirmed_note(.what)
    )]
    NotConfirmed {
        /// Write or read.
        what: Operation,
        /// Level asked.
        level: Consistency,
        /// The request's timeout.
        timeout_ms: u64,
        /// Acks needed.
        required: usize,
        /// Nodes that acked.
        acked_by: Vec<NodeId>,
    },
    /// The lease is held: this node's own promise to another holder runs.
    #[error("lease `{name}` is held by `{holder}` (token {token}) for another {remaining_ms} ms")]
    LeaseHeld {
        /// Lease name.
        name: String,
        /// Its holder.
        holder: String,
        /// Its token.
        token: u64,
        /// Time left on this node's clock.
        remaining_ms: u64,
    },
    /// A majority refused, naming a promise of another node (whose expiry
    /// only that node's clock can judge; it may never have been granted).
    #[error("lease `{name}` not granted: a majority of the nodes refused; the highest promise they reported is to `{holder}` (token {token})")]
    LeaseRefused {
        /// Lease name.
        name: String,
        /// Holder of the highest promise reported.
        holder: String,
        /// Its token.
        token: u64,
    },
    /// No majority voted (timeout, or refusals without a live promise).
    #[error("lease `{name}` not granted: no majority of the cluster voted for it within {timeout_ms} ms")]
    LeaseNoMajority {
        /// Lease name.
        name: String,
        /// The request's timeout.
        timeout_ms: u64,
    },
    /// No membership view: the quorum size is unknown.
    #[error("the membership view is unavailable (restarting?); only `local` reads and writes are served")]
    NoMembershipView,
}

/// What to do after a [`Coordinator`] call, in this order: make
/// [`Ready::persist`] durable, then publish the events, send the messages,
/// answer the replies, and set the timers.
#[derive(Debug, Default)]
#[must_use = "perform a Ready: persist, then publish, send, reply, set timers"]
pub struct Ready {
    /// What changed in the replica: durable before anything below goes out.
    pub persist: Persist,
    /// State changes to publish (each on its key's topic).
    pub events: Vec<StateEvent>,
    /// Messages to peers.
    pub messages: Vec<Outgoing>,
    /// Answers to local requests.
    pub replies: Vec<(ReqId, Reply)>,
    /// Timers to set.
    pub timers: Vec<TimerSet>,
    /// A gossip round started (for metrics).
    pub gossip_round: bool,
}

impl Ready {
    fn send(&mut self, to: &str, msg: StateWire) {
        self.messages.push(Outgoing {
            to: to.to_string(),
            msg,
        });
    }

    fn timer(&mut self, timer: Timer, after_ms: u64) {
        self.timers.push(TimerSet { timer, after_ms });
    }
}

/// A request waiting for answers.
struct Pending {
    /// Wire id of the current attempt.
    wire: u64,
    timeout_ms: u64,
    /// The members it counts (this node included); answers from others are
    /// ignored.
    voters: BTreeSet<NodeId>,
    op: PendingOp,
}

enum PendingOp {
    Write {
        tracker: AckTracker,
        done: WriteOutcome,
    },
    Read {
        tracker: AckTracker,
        req: ReadRequest,
    },
    Lease {
        acq: LeaseAcquire,
        retried: bool,
    },
}

/// The replication coordinator of one node (see the module docs).
pub struct Coordinator {
    me: NodeId,
    cfg: CoordinatorConfig,
    members: Option<Vec<Member>>,
    pending: BTreeMap<ReqId, Pending>,
    /// Wire id of an attempt → its request.
    attempts: HashMap<u64, ReqId>,
    next_req: ReqId,
    next_wire: u64,
}

impl Coordinator {
    /// The coordinator of node `me`. Wire ids start from `now_ms` shifted
    /// left by 20 bits, so a restarted node does not reuse the ids of
    /// requests whose answers may still be in flight.
    pub fn new(me: impl Into<NodeId>, cfg: CoordinatorConfig, now_ms: u64) -> Self {
        Coordinator {
            me: me.into(),
            cfg,
            members: None,
            pending: BTreeMap::new(),
            attempts: HashMap::new(),
            next_req: 1,
            next_wire: now_ms.saturating_mul(1 << 20).max(1),
        }
    }

    /// This node's id.
    pub fn node(&self) -> &NodeId {
        &self.me
    }

    /// The first timers to set (gossip and purge).
    pub fn start(&self) -> Ready {
        let mut r = Ready::default();
        r.timer(Timer::Gossip, self.cfg.gossip_interval_ms);
        r.timer(Timer::Purge, self.cfg.purge_interval_ms);
        r
    }

    /// The membership view changed (`None`: unknown, e.g. the membership
    /// service is restarting; then only `local` requests are served and
    /// gossip pauses). Requests already started keep the members they
    /// started with.
    pub fn set_members(&mut self, members: Option<Vec<Member>>) {
        self.members = members;
    }

    /// The current membership view.
    pub fn members(&self) -> Option<&[Member]> {
        self.members.as_deref()
    }

    /// Requests waiting for answers.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Forget every waiting request (after the store failed: the caller
    /// answers them itself).
    pub fn abandon_all(&mut self) -> Vec<ReqId> {
        self.attempts.clear();
        std::mem::take(&mut self.pending).into_keys().collect()
    }

    fn alloc_req(&mut self) -> ReqId {
        let id = self.next_req;
        self.next_req += 1;
        id
    }

    fn alloc_wire(&mut self) -> u64 {
        let id = self.next_wire;
        self.next_wire = self.next_wire.wrapping_add(1).max(1);
        id
    }

    /// The members a new request counts (this node included), if known.
    fn voters(&self) -> Option<BTreeSet<NodeId>> {
        let m = self.members.as_ref()?;
        if m.is_empty() {
            return None;
        }
        let mut v: BTreeSet<NodeId> = m.iter().map(|m| m.name.clone()).collect();
        v.insert(self.me.clone());
        Some(v)
    }

    fn live_peers(&self) -> Vec<NodeId> {
        self.members
            .iter()
            .flatten()
            .filter(|m| m.live && m.name != self.me)
            .map(|m| m.name.clone())
            .collect()
    }

    fn ready(&self, mut r: Ready, replica: &Replica) -> Ready {
        r.persist = replica.unpersisted();
        r
    }

    // ----------------------------------------------------------- writes

    /// A local write: applied here (durable once the `Ready` is
    /// persisted), then, at `majority`/`all`, its whole entry state sent to
    /// every other member; answered once enough members durably hold it,
    /// or with [`RequestError::NotConfirmed`] at the deadline. A `local`
    /// write is answered at once and its deltas pushed to the live peers.
    pub fn write(&mut self, now_ms: u64, w: WriteRequest, replica: &mut Replica) -> (ReqId, Ready) {
        let id = self.alloc_req();
        let mut r = Ready::default();
        let voters = match (w.consistency, self.voters()) {
            (_, Some(v)) => v,
            (Consistency::Local, None) => BTreeSet::from([self.me.clone()]),
            (_, None) => {
                r.replies
                    .push((id, Reply::Write(Err(RequestError::NoMembershipView))));
                return (id, self.ready(r, replica));
            }
        };
        let (change, ops) = match apply_write(now_ms, &w, replica, &mut r.events) {
            Ok(x) => x,
            Err(e) => {
                r.replies.push((id, Reply::Write(Err(e))));
                return (id, self.ready(r, replica));
            }
        };
        r.events.extend(change.events);
        let mut tracker = AckTracker::new(w.consistency, voters.len());
        tracker.ack(&self.me);
        let done = WriteOutcome {
            key: w.key.clone(),
            ops,
            consistency: w.consistency,
            required: tracker.required(),
            acked_by: vec![self.me.clone()],
        };
        if w.consistency == Consistency::Local || tracker.status() == AckStatus::Reached {
            // Push the fresh deltas eagerly; gossip repairs any loss.
            let max = self.cfg.max_message_bytes;
            let packed = pack_deltas(change.deltas, max);
            for k in &packed.oversized {
                tracing::warn!(key = %k, max, "a change exceeds state.max_message_bytes; peers get it only if it fits later");
            }
            for p in self.live_peers() {
                for m in &packed.messages {
                    r.send(&p, StateWire::Gossip(m.clone()));
                }
            }
            r.replies.push((id, Reply::Write(Ok(done))));
            return (id, self.ready(r, replica));
        }
        let Some(state) = replica.store().state(&w.key) else {
            r.replies.push((id, Reply::Write(Ok(done))));
            return (id, self.ready(r, replica));
        };
        let wire = self.alloc_wire();
        for v in voters.iter().filter(|v| **v != self.me) {
            r.send(
                v,
                StateWire::Write {
                    id: wire,
                    key: w.key.clone(),
                    state: state.clone(),
                    gen: state.gen,
                    version: state.version.clone(),
                },
            );
        }
        r.timer(Timer::Expire(id), w.timeout_ms);
        self.attempts.insert(wire, id);
        self.pending.insert(
            id,
            Pending {
                wire,
                timeout_ms: w.timeout_ms,
                voters,
                op: PendingOp::Write { tracker, done },
            },
        );
        (id, self.ready(r, replica))
    }

    // ------------------------------------------------------------ reads

    /// A local read: at `majority`/`all`, ask every other member for its
    /// state of the key, merge each answer here (read repair, durable), and
    /// read locally once enough answered.
    pub fn read(&mut self, now_ms: u64, q: ReadRequest, replica: &mut Replica) -> (ReqId, Ready) {
        let id = self.alloc_req();
        let mut r = Ready::default();
        let voters = match (q.consistency, self.voters()) {
            (_, Some(v)) => v,
            (Consistency::Local, None) => BTreeSet::from([self.me.clone()]),
            (_, None) => {
                r.replies
                    .push((id, Reply::Read(Err(RequestError::NoMembershipView))));
                return (id, self.ready(r, replica));
            }
        };
        let mut tracker = AckTracker::new(q.consistency, voters.len());
        tracker.ack(&self.me);
        if tracker.status() == AckStatus::Reached {
            r.replies
                .push((id, Reply::Read(read_local(now_ms, &q, &tracker, replica))));
            return (id, self.ready(r, replica));
        }
        let wire = self.alloc_wire();
        for v in voters.iter().filter(|v| **v != self.me) {
            r.send(
                v,
                StateWire::ReadReq {
                    id: wire,
                    key: q.key.clone(),
                },
            );
        }
        r.timer(Timer::Expire(id), q.timeout_ms);
        self.attempts.insert(wire, id);
        self.pending.insert(
            id,
            Pending {
                wire,
                timeout_ms: q.timeout_ms,
                voters,
                op: PendingOp::Read { tracker, req: q },
            },
        );
        (id, self.ready(r, replica))
    }

    // ----------------------------------------------------------- leases

    /// Acquire (or renew) a lease: vote here, ask every other member, and
    /// answer once a majority of all members granted it. A refusal because
    /// of a stale promise is retried once with a token above every one
    /// reported (see [`Coordinator::on_message`]).
    pub fn acquire_lease(
        &mut self,
        now_ms: u64,
        q: LeaseAcquireRequest,
        replica: &mut Replica,
    ) -> (ReqId, Ready) {
        let id = self.alloc_req();
        let mut r = Ready::default();
        let Some(voters) = self.voters() else {
            r.replies
                .push((id, Reply::Lease(Err(RequestError::NoMembershipView))));
            return (id, self.ready(r, replica));
        };
        let req = replica
            .leases()
            .request(&q.name, &q.holder, q.ttl_ms, now_ms);
        self.start_lease(
            now_ms,
            id,
            req,
            voters,
            false,
            q.timeout_ms,
            replica,
            &mut r,
        );
        if self.pending.contains_key(&id) {
            r.timer(Timer::Expire(id), q.timeout_ms);
        }
        (id, self.ready(r, replica))
    }

    /// Release a lease: end this node's promise now and tell every other
    /// member (best effort). Replies whether this node's promise ended.
    pub fn release_lease(
        &mut self,
        now_ms: u64,
        name: &str,
        holder: &str,
        token: u64,
        replica: &mut Replica,
    ) -> (ReqId, Ready) {
        let id = self.alloc_req();
        let mut r = Ready::default();
        let changed = replica.leases_mut().release(name, holder, token, now_ms);
        for m in self.members.iter().flatten().filter(|m| m.name != self.me) {
            r.send(
                &m.name,
                StateWire::LeaseRelease {
                    name: name.to_string(),
                    holder: holder.to_string(),
                    token,
                },
            );
        }
        r.replies.push((id, Reply::Released(Ok(changed))));
        (id, self.ready(r, replica))
    }

    /// Vote here, ask the other voters, and register the attempt under
    /// request `id`; answer at once if the vote already decided it.
    #[allow(clippy::too_many_arguments)]
    fn start_lease(
        &mut self,
        now_ms: u64,
        id: ReqId,
        req: LeaseRequest,
        voters: BTreeSet<NodeId>,
        retried: bool,
        timeout_ms: u64,
        replica: &mut Replica,
        r: &mut Ready,
    ) {
        let mut acq = LeaseAcquire::new(req.clone(), voters.len(), now_ms);
        let vote = replica.leases_mut().vote(&req, now_ms);
        acq.on_vote(&self.me, vote);
        let wire = self.alloc_wire();
        for v in voters.iter().filter(|v| **v != self.me) {
            r.send(
                v,
                StateWire::LeaseReq {
                    id: wire,
                    req: req.clone(),
                },
            );
        }
        let decided = acq.progress() != LeaseProgress::Pending;
        self.attempts.insert(wire, id);
        self.pending.insert(
            id,
            Pending {
                wire,
                timeout_ms,
                voters,
                op: PendingOp::Lease { acq, retried },
            },
        );
        if decided {
            self.finish(now_ms, id, false, replica, r);
        }
    }

    // ------------------------------------------------------------ peers

    /// A message from peer `from`.
    pub fn on_message(
        &mut self,
        now_ms: u64,
        from: &str,
        msg: StateWire,
        replica: &mut Replica,
    ) -> Ready {
        let mut r = Ready::default();
        match msg {
            StateWire::Gossip(g) => self.on_gossip(now_ms, from, g, replica, &mut r),
            StateWire::Write {
                id,
                key,
                state,
                gen,
                version,
            } => {
                let (ok, reason) = match replica.store_mut().merge_state(from, &key, state, now_ms)
                {
                    Ok(evs) => {
                        r.events.extend(evs);
                        let covers = replica.store().covers(&key, gen, &version);
                        (
                            covers,
                            (!covers).then(|| "state does not cover the write".to_string()),
                        )
                    }
                    Err(e) => (false, Some(e.to_string())),
                };
                r.send(from, StateWire::WriteAck { id, ok, reason });
            }
            StateWire::WriteAck { id, ok, reason } => {
                if let Some((req, PendingOp::Write { tracker, .. })) = self.answer(id, from) {
                    let status = if ok {
                        tracker.ack(from)
                    } else {
                        tracing::info!(peer = %from, reason = ?reason, "peer refused a replicated write");
                        tracker.refuse(from)
                    };
                    if status != AckStatus::Pending {
                        self.finish(now_ms, req, false, replica, &mut r);
                    }
                }
            }
            StateWire::ReadReq { id, key } => {
                let state = replica.store().state(&key).cloned();
                r.send(from, StateWire::ReadResp { id, state });
            }
            StateWire::ReadResp { id, state } => {
                let key = match self.answer(id, from) {
                    Some((_, PendingOp::Read { req, .. })) => req.key.clone(),
                    _ => return self.ready(r, replica),
                };
                let merged = match state {
                    None => true,
                    Some(state) => match replica.store_mut().merge_state(from, &key, state, now_ms)
                    {
                        Ok(evs) => {
                            r.events.extend(evs);
                            true
                        }
                        Err(e) => {
                            tracing::info!(peer = %from, error = %e, "state from peer refused");
                            false
                        }
                    },
                };
                if let Some((req, PendingOp::Read { tracker, .. })) = self.answer(id, from) {
                    let status = if merged {
                        tracker.ack(from)
                    } else {
                        tracker.refuse(from)
                    };
                    if status != AckStatus::Pending {
                        self.finish(now_ms, req, false, replica, &mut r);
                    }
                }
            }
            StateWire::LeaseReq { id, req } => {
                let vote = replica.leases_mut().vote(&req, now_ms);
                r.send(from, StateWire::LeaseVote { id, vote });
            }
            StateWire::LeaseVote { id, vote } => {
                if let Some((req, PendingOp::Lease { acq, .. })) = self.answer(id, from) {
                    if acq.on_vote(from, vote) != LeaseProgress::Pending {
                        self.finish(now_ms, req, false, replica, &mut r);
                    }
                }
            }
            StateWire::LeaseRelease {
                name,
                holder,
                token,
            } => {
                replica.leases_mut().release(&name, &holder, token, now_ms);
            }
        }
        self.ready(r, replica)
    }

    /// The pending request answered by `from` under wire id `wire`, if
    /// `from` is one of its voters.
    fn answer(&mut self, wire: u64, from: &str) -> Option<(ReqId, &mut PendingOp)> {
        let req = *self.attempts.get(&wire)?;
        let p = self.pending.get_mut(&req)?;
        if p.wire != wire {
            return None;
        }
        if !p.voters.contains(from) {
            tracing::debug!(peer = %from, "answer from a node outside the request's members ignored");
            return None;
        }
        Some((req, &mut p.op))
    }

    fn on_gossip(
        &mut self,
        now_ms: u64,
        from: &str,
        g: GossipMsg,
        replica: &mut Replica,
        r: &mut Ready,
    ) {
        let max = self.cfg.max_message_bytes;
        let out = replica.store_mut().handle_gossip(from, g, now_ms, max);
        r.events.extend(out.events);
        for e in &out.rejected {
            tracing::info!(peer = %from, error = %e, "state item from peer rejected (audited)");
        }
        for k in &out.oversized {
            tracing::warn!(peer = %from, key = %k, max, "state entry exceeds state.max_message_bytes; not sent");
        }
        for m in out.replies {
            r.send(from, StateWire::Gossip(m));
        }
    }

    // ----------------------------------------------------------- timers

    /// A timer fired.
    pub fn on_timer<R: Rng + ?Sized>(
        &mut self,
        now_ms: u64,
        timer: Timer,
        replica: &mut Replica,
        rng: &mut R,
    ) -> Ready {
        match timer {
            Timer::Gossip => self.gossip_tick(replica, rng),
            Timer::Purge => self.purge_tick(now_ms, replica),
            Timer::Expire(id) => self.expire(now_ms, id, replica),
        }
    }

    /// Start an anti-entropy round: this node's digest to
    /// `gossip_fanout` random live peers; set the next round's timer.
    pub fn gossip_tick<R: Rng + ?Sized>(&mut self, replica: &Replica, rng: &mut R) -> Ready {
        let mut r = Ready::default();
        r.timer(Timer::Gossip, self.cfg.gossip_interval_ms);
        let mut peers = self.live_peers();
        if !peers.is_empty() {
            r.gossip_round = true;
            peers.shuffle(rng);
            peers.truncate(self.cfg.gossip_fanout);
            let digest = replica.store().gossip_digest();
            for p in peers {
                r.send(&p, StateWire::Gossip(digest.clone()));
            }
        }
        self.ready(r, replica)
    }

    /// Purge expired entries; set the next purge's timer.
    pub fn purge_tick(&mut self, now_ms: u64, replica: &mut Replica) -> Ready {
        let mut r = Ready {
            events: replica.store_mut().purge(now_ms),
            ..Ready::default()
        };
        r.timer(Timer::Purge, self.cfg.purge_interval_ms);
        self.ready(r, replica)
    }

    /// Request `id`'s deadline: answer it with what arrived (nothing if it
    /// was already answered).
    pub fn expire(&mut self, now_ms: u64, id: ReqId, replica: &mut Replica) -> Ready {
        let mut r = Ready::default();
        if let Some(p) = self.pending.get_mut(&id) {
            match &mut p.op {
                PendingOp::Write { tracker, .. } | PendingOp::Read { tracker, .. } => {
                    tracker.time_out();
                }
                PendingOp::Lease { acq, .. } => {
                    acq.time_out();
                }
            }
            self.finish(now_ms, id, true, replica, &mut r);
        }
        self.ready(r, replica)
    }

    // ------------------------------------------------------------ finish

    /// Answer request `id` if it reached its end (reached, failed or timed
    /// out); a lease refused because of a stale promise is retried once.
    fn finish(
        &mut self,
        now_ms: u64,
        id: ReqId,
        timed_out: bool,
        replica: &mut Replica,
        r: &mut Ready,
    ) {
        let Some(p) = self.pending.remove(&id) else {
            return;
        };
        self.attempts.remove(&p.wire);
        match p.op {
            PendingOp::Write { tracker, mut done } => {
                let reply = match tracker.status() {
                    AckStatus::Reached => {
                        done.acked_by = tracker.acked().iter().cloned().collect();
                        Ok(done)
                    }
                    _ => Err(not_confirmed(
                        Operation::Write,
                        done.consistency,
                        &tracker,
                        p.timeout_ms,
                    )),
                };
                r.replies.push((id, Reply::Write(reply)));
            }
            PendingOp::Read { tracker, req } => {
                let reply = match tracker.status() {
                    AckStatus::Reached => read_local(now_ms, &req, &tracker, replica),
                    _ => Err(not_confirmed(
                        Operation::Read,
                        req.consistency,
                        &tracker,
                        p.timeout_ms,
                    )),
                };
                r.replies.push((id, Reply::Read(reply)));
            }
            PendingOp::Lease { acq, retried } => match acq.progress() {
                LeaseProgress::Pending => {
                    // Not decided yet: keep waiting.
                    self.attempts.insert(p.wire, id);
                    self.pending.insert(
                        id,
                        Pending {
                            op: PendingOp::Lease { acq, retried },
                            ..p
                        },
                    );
                }
                LeaseProgress::Granted(l) => r.replies.push((id, Reply::Lease(Ok(l)))),
                LeaseProgress::Refused { current } => {
                    // A promise is dated by its acceptor's clock. Only our
                    // own promise (the same holder and token in our table)
                    // can be compared with our clock; another node's, with
                    // a skewed clock, cannot: then retry and let the
                    // acceptors judge on their own clocks (a refusal is
                    // safe).
                    let name = acq.request().name.clone();
                    let own = replica.leases().get(&name).cloned().filter(|o| {
                        current
                            .as_ref()
                            .is_some_and(|c| c.token == o.token && c.holder == o.holder)
                    });
                    let stale = match (&current, &own) {
                        (None, _) | (Some(_), None) => true,
                        (Some(_), Some(o)) => o.expires_at_ms <= now_ms,
                    };
                    if !retried && stale && !timed_out {
                        // Outbid the expired or released promise once (the
                        // original deadline still bounds the request).
                        let req = acq.retry();
                        self.start_lease(now_ms, id, req, p.voters, true, p.timeout_ms, replica, r);
                        return;
                    }
                    let err = match (current, own) {
                        (Some(c), Some(o)) if o.expires_at_ms > now_ms => RequestError::LeaseHeld {
                            name: c.name,
                            holder: c.holder,
                            token: c.token,
                            remaining_ms: o.expires_at_ms - now_ms,
                        },
                        // Another node's promise: how long it lasts is on
                        // that node's clock, and it may be a request that
                        // never reached a majority, so it is not called
                        // held.
                        (Some(c), None) => RequestError::LeaseRefused {
                            name: c.name,
                            holder: c.holder,
                            token: c.token,
                        },
                        _ => RequestError::LeaseNoMajority {
                            name,
                            timeout_ms: p.timeout_ms,
                        },
                    };
                    r.replies.push((id, Reply::Lease(Err(err))));
                }
            },
        }
    }
}

fn not_confirmed(
    what: Operation,
    level: Consistency,
    tracker: &AckTracker,
    timeout_ms: u64,
) -> RequestError {
    RequestError::NotConfirmed {
        what,
        level,
        timeout_ms,
        required: tracker.required(),
        acked_by: tracker.acked().iter().cloned().collect(),
    }
}

fn read_local(
    now_ms: u64,
    q: &ReadRequest,
    tracker: &AckTracker,
    replica: &Replica,
) -> Result<ReadOutcome, RequestError> {
    let s = replica.store();
    let view = s.get(&q.plugin, &q.key, now_ms)?;
    let info = s.info(&q.plugin, &q.key, now_ms)?;
    let (Some(view), Some(info)) = (view, info) else {
        return Err(StateError::NotFound(q.key.clone()).into());
    };
    Ok(ReadOutcome {
        key: q.key.clone(),
        view,
        info,
        consistency: q.consistency,
        required: tracker.required(),
        acked_by: tracker.acked().iter().cloned().collect(),
    })
}

fn is_map_op(op: &LocalOp) -> bool {
    matches!(
        op,
        LocalOp::MapPut { .. }
            | LocalOp::MapIncr { .. }
            | LocalOp::MapDecr { .. }
            | LocalOp::MapAdd { .. }
            | LocalOp::MapRemove { .. }
            | LocalOp::MapRemoveField(_)
    )
}

/// Can a key of `kind` take `op`?
fn fits(kind: Kind, op: &LocalOp) -> bool {
    match op {
        LocalOp::Put(_) => kind == Kind::Lww,
        LocalOp::Incr(_) => matches!(kind, Kind::GCounter | Kind::PnCounter),
        LocalOp::Decr(_) => kind == Kind::PnCounter,
        LocalOp::Add(_) | LocalOp::Remove(_) => kind == Kind::Set,
        op if is_map_op(op) => kind == Kind::Map,
        _ => true,
    }
}

/// Apply a write here (in memory): the implicit creation with the asked
/// access/expiry, meta changes, then the value change. On a refusal, the
/// events of the steps already applied (a meta change) are added to
/// `applied` (they stay: gossip spreads them).
fn apply_write(
    now_ms: u64,
    w: &WriteRequest,
    replica: &mut Replica,
    applied: &mut Vec<StateEvent>,
) -> Result<(Change, Vec<String>), RequestError> {
    let (max_value, exists) = {
        let s = replica.store();
        (
            s.config().max_value_bytes,
            s.state(&w.key).is_some_and(|st| st.is_visible(now_ms)),
        )
    };
    let value_op = w.op.clone();
    // Size first: a refused write must not leave an implicit creation.
    let size = value_op.payload_len();
    if size > max_value {
        return Err(StateError::TooLarge {
            what: "value",
            size,
            limit: max_value,
        }
        .into());
    }
    let kind = match (w.kind, value_op.creates()) {
        (Some(k), Some(_)) if !fits(k, &value_op) => {
            return Err(RequestError::KindMismatch {
                kind: k,
                op: value_op.name(),
                map_hint: !is_map_op(&value_op),
            });
        }
        (Some(k), _) => Some(k),
        (None, k) => k,
    };
    let expires_at = w.ttl_ms.map(|t| now_ms.saturating_add(t));
    let mut ops: Vec<LocalOp> = Vec::new();
    let with_meta = w.access.is_some() || w.ttl_ms.is_some();
    if (with_meta || w.kind.is_some()) && !matches!(value_op, LocalOp::Delete) {
        match (exists, kind) {
            (false, Some(kind)) => ops.push(LocalOp::Create {
                kind,
                access: w.access.clone().unwrap_or_default(),
                expires_at,
            }),
            (false, None) => {}
            (true, _) => {
                if let Some(a) = &w.access {
                    ops.push(LocalOp::SetAccess(a.clone()));
                }
                if w.ttl_ms.is_some() {
                    ops.push(LocalOp::SetExpiry(expires_at));
                }
            }
        }
    }
    ops.push(value_op);
    let mut all = Change {
        deltas: vec![],
        events: vec![],
    };
    let mut names = vec![];
    for op in ops {
        let name = op.name().to_string();
        match replica
            .store_mut()
            .apply_local_by(&w.plugin, &w.by, &w.key, op, now_ms)
        {
            Ok(c) => {
                all.deltas.extend(c.deltas);
                all.events.extend(c.events);
                names.push(name);
            }
            Err(e) => {
                applied.extend(all.events);
                return Err(e.into());
            }
        }
    }
    Ok((all, names))
}
