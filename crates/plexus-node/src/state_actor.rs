//! The StateReplica actor: this node's replica of the cluster's replicated
//! state (`plexus-state`), persisted in `data_dir/state.redb`.
//!
//! - Local reads and writes come from the HTTP API ([`StateMsg::Write`],
//!   [`StateMsg::Read`], ...). A write is answered only once it is durable
//!   here (`DurableStore::apply_local` fsyncs) and, at `majority`/`all`,
//!   once enough peers acked that they durably cover it.
//! - Anti-entropy: every `state.gossip_interval_ms` the actor starts a
//!   digest round ([`GossipMsg::Digest`]) with `state.gossip_fanout` random
//!   up peers; fresh local deltas are also pushed eagerly to every up peer.
//! - Every accepted change is published on the bus on its key's topic
//!   (`state/changes/{key}`, see [`plexus_state::topic_for`]).
//! - Expired entries are purged on a timer.
//!
//! Between nodes everything travels as one [`StateWire`] encoded into
//! [`Wire::State`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use plexus_bus::{Envelope, MessageKind};
use plexus_membership::{MemberStatus, MemberView};
use plexus_state::{
    Access, AckStatus, AckTracker, AuditQuery, AuditRecord, Change, Consistency, DurableConfig,
    DurableStore, EntryState, Gen, GossipMsg, Kind, Lease, LeaseAcquire, LeaseProgress,
    LeaseRequest, LeaseVote, LocalOp, StateError, StateEvent, Version, View,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::ctx::{local_actor, NodeCtx};
use crate::membership_actor::MembershipMsg;
use crate::wire::Wire;

/// Wall clock in ms since the Unix epoch (what the state core expects).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A state protocol message between two nodes' replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StateWire {
    /// Anti-entropy (digest, summaries, items) and eager delta pushes.
    Gossip(GossipMsg),
    /// A majority/all write: merge this state of `key` durably, then ack if
    /// it covers `(gen, version)`.
    Write {
        id: u64,
        key: String,
        state: EntryState,
        gen: Gen,
        version: Version,
    },
    /// Answer to [`StateWire::Write`]: `ok` once durable and covering.
    WriteAck {
        id: u64,
        ok: bool,
        reason: Option<String>,
    },
    /// A majority/all read: send your state of `key`.
    ReadReq { id: u64, key: String },
    /// Answer to [`StateWire::ReadReq`].
    ReadResp { id: u64, state: Option<EntryState> },
    /// Vote on a lease request (acceptor side).
    LeaseReq { id: u64, req: LeaseRequest },
    /// An acceptor's vote.
    LeaseVote { id: u64, vote: LeaseVote },
    /// Release a lease (every acceptor).
    LeaseRelease {
        name: String,
        holder: String,
        token: u64,
    },
}

/// A refused or failed state operation, mapped to an HTTP problem by the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateProblem {
    pub status: u16,
    pub kind: &'static str,
    pub detail: String,
}

impl StateProblem {
    fn new(status: u16, kind: &'static str, detail: impl Into<String>) -> Self {
        StateProblem {
            status,
            kind,
            detail: detail.into(),
        }
    }
}

/// A value change requested through the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteOp {
    /// Set a register to a JSON document.
    Put(serde_json::Value),
    /// Count up (positive) or down (negative).
    Incr(i64),
    /// Add members to a set.
    Add(Vec<String>),
    /// Remove members from a set.
    Remove(Vec<String>),
    /// Delete the key (owner only).
    Delete,
}

/// A write: who, which key, what, with optional access and expiry.
#[derive(Debug, Clone)]
pub struct WriteReq {
    pub plugin: String,
    pub key: String,
    pub op: WriteOp,
    /// Access level to create the key with (or change it to: owner only).
    pub access: Option<Access>,
    /// Expiry from now (creates with it, or changes it: owner only).
    pub ttl_ms: Option<u64>,
    /// Value type to create the key with (default: implied by the op).
    pub kind: Option<Kind>,
    /// Map field the op applies to (the key is a map).
    pub field: Option<String>,
    pub consistency: Consistency,
    pub timeout: Duration,
}

/// A successful write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WriteDone {
    pub node: String,
    pub key: String,
    pub ops: Vec<String>,
    pub consistency: String,
    pub acks: usize,
    pub required: usize,
    pub acked_by: Vec<String>,
}

/// A read.
#[derive(Debug, Clone)]
pub struct ReadReq {
    pub plugin: String,
    pub key: String,
    pub consistency: Consistency,
    pub timeout: Duration,
}

/// A successful read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReadDone {
    pub node: String,
    pub key: String,
    pub kind: String,
    pub value: serde_json::Value,
    pub owner: String,
    pub access: AccessView,
    pub expires_at_ms: Option<u64>,
    pub generation: u64,
    /// Version vector: node → changes seen.
    pub version: std::collections::BTreeMap<String, u64>,
    pub consistency: String,
    pub acks: usize,
    pub required: usize,
}

/// An access level in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AccessView {
    pub level: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub readers: Vec<String>,
}

impl From<&Access> for AccessView {
    fn from(a: &Access) -> Self {
        match a {
            Access::Public => AccessView {
                level: "public".into(),
                readers: vec![],
            },
            Access::Private => AccessView {
                level: "private".into(),
                readers: vec![],
            },
            Access::Protected(l) => AccessView {
                level: "protected".into(),
                readers: l.iter().cloned().collect(),
            },
        }
    }
}

/// Parse `local|majority|all`.
pub fn parse_consistency(s: &str) -> Result<Consistency, String> {
    match s.to_ascii_lowercase().as_str() {
        "local" => Ok(Consistency::Local),
        "majority" => Ok(Consistency::Majority),
        "all" => Ok(Consistency::All),
        _ => Err(format!(
            "unknown consistency {s:?}: use local, majority or all"
        )),
    }
}

fn level_name(c: Consistency) -> &'static str {
    match c {
        Consistency::Local => "local",
        Consistency::Majority => "majority",
        Consistency::All => "all",
    }
}

#[derive(RactorMessage)]
pub enum StateMsg {
    /// An encoded [`StateWire`] from a peer.
    Peer {
        from: String,
        bytes: Vec<u8>,
    },
    /// Start an anti-entropy round (timer).
    Gossip,
    /// Purge expired entries (timer).
    Purge,
    /// A consistency request's timeout fired.
    Expire(u64),
    Write(WriteReq, RpcReplyPort<Result<WriteDone, StateProblem>>),
    Read(ReadReq, RpcReplyPort<Result<ReadDone, StateProblem>>),
    /// Keys `plugin` may read.
    List(String, RpcReplyPort<Result<Vec<String>, StateProblem>>),
    /// Audit records `plugin` may see (its own changes and those of keys it
    /// may read).
    Audit(
        String,
        AuditQuery,
        RpcReplyPort<Result<Vec<AuditRecord>, StateProblem>>,
    ),
    LeaseAcquire {
        name: String,
        holder: String,
        ttl_ms: u64,
        timeout: Duration,
        reply: RpcReplyPort<Result<Lease, StateProblem>>,
    },
    LeaseRelease {
        name: String,
        holder: String,
        token: u64,
        reply: RpcReplyPort<Result<bool, StateProblem>>,
    },
}

enum Pending {
    Write {
        tracker: AckTracker,
        done: WriteDone,
        timeout: Duration,
        reply: RpcReplyPort<Result<WriteDone, StateProblem>>,
    },
    Read {
        tracker: AckTracker,
        req: ReadReq,
        reply: RpcReplyPort<Result<ReadDone, StateProblem>>,
    },
    Lease {
        acq: LeaseAcquire,
        peers: Vec<String>,
        cluster: usize,
        retried: bool,
        timed_out: bool,
        timeout: Duration,
        reply: RpcReplyPort<Result<Lease, StateProblem>>,
    },
}

pub struct StateState {
    ctx: Arc<NodeCtx>,
    store: DurableStore,
    pending: HashMap<u64, Pending>,
    /// Lease requests retried with a higher token: old id → new id.
    retries: HashMap<u64, u64>,
    next_id: u64,
}

pub struct StateActor;

/// The path of a node's state file.
pub fn store_path(ctx: &NodeCtx) -> std::path::PathBuf {
    ctx.config.data_dir.join("state.redb")
}

impl Actor for StateActor {
    type Msg = StateMsg;
    type State = StateState;
    type Arguments = Arc<NodeCtx>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        ctx: Arc<NodeCtx>,
    ) -> Result<StateState, ActorProcessingErr> {
        let path = store_path(&ctx);
        let store = DurableStore::open(&path, ctx.name(), DurableConfig::default())
            .map_err(|e| format!("state store {}: {e}", path.display()))?;
        tracing::info!(keys = store.store().map(|s| s.len()).unwrap_or(0), path = %path.display(), "state replica opened");
        myself.send_after(ctx.config.state.gossip_interval, || StateMsg::Gossip);
        myself.send_after(ctx.config.state.purge_interval, || StateMsg::Purge);
        Ok(StateState {
            ctx,
            store,
            pending: HashMap::new(),
            retries: HashMap::new(),
            next_id: 1,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: StateMsg,
        st: &mut StateState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            StateMsg::Peer { from, bytes } => {
                let limit = st.ctx.config.max_frame_bytes;
                match plexus_codec::decode_limited::<StateWire>(&bytes, limit) {
                    Ok(m) => st.on_peer(&from, m),
                    Err(e) => {
                        tracing::warn!(peer = %from, error = %e, "dropped a malformed state message")
                    }
                }
            }
            StateMsg::Gossip => {
                let members = members(&st.ctx).await;
                st.gossip_round(&members);
                myself.send_after(st.ctx.config.state.gossip_interval, || StateMsg::Gossip);
            }
            StateMsg::Purge => {
                match st.store.purge(st.ctx.clock.wall_ms()) {
                    Ok(evs) => st.publish(&evs),
                    Err(e) => tracing::error!(error = %e, "state purge failed"),
                }
                myself.send_after(st.ctx.config.state.purge_interval, || StateMsg::Purge);
            }
            StateMsg::Expire(id) => st.expire(id),
            StateMsg::Write(req, reply) => {
                let members = members(&st.ctx).await;
                if members.is_empty() && req.consistency != Consistency::Local {
                    let _ = reply.send(Err(no_view()));
                    return Ok(());
                }
                st.write(&myself, &members, req, reply);
            }
            StateMsg::Read(req, reply) => {
                let members = members(&st.ctx).await;
                if members.is_empty() && req.consistency != Consistency::Local {
                    let _ = reply.send(Err(no_view()));
                    return Ok(());
                }
                st.read(&myself, &members, req, reply);
            }
            StateMsg::List(plugin, reply) => {
                let r = st
                    .store
                    .store()
                    .map(|s| s.keys(&plugin, st.ctx.clock.wall_ms()))
                    .map_err(|e| problem(&st.store, &e));
                let _ = reply.send(r);
            }
            StateMsg::Audit(plugin, q, reply) => {
                let _ = reply.send(st.audit(&plugin, q));
            }
            StateMsg::LeaseAcquire {
                name,
                holder,
                ttl_ms,
                timeout,
                reply,
            } => {
                let members = members(&st.ctx).await;
                if members.is_empty() {
                    let _ = reply.send(Err(no_view()));
                    return Ok(());
                }
                st.lease_acquire(&myself, &members, name, holder, ttl_ms, timeout, reply);
            }
            StateMsg::LeaseRelease {
                name,
                holder,
                token,
                reply,
            } => {
                let r = st
                    .store
                    .lease_release(&name, &holder, token, st.ctx.clock.wall_ms())
                    .map_err(|e| problem(&st.store, &e));
                let members = members(&st.ctx).await;
                for m in members.iter().filter(|m| !m.local) {
                    st.send(
                        &m.identity.name,
                        &StateWire::LeaseRelease {
                            name: name.clone(),
                            holder: holder.clone(),
                            token,
                        },
                    );
                }
                let _ = reply.send(r);
            }
        }
        Ok(())
    }
}

/// The membership view (empty if the membership actor does not answer: then
/// only `local` operations succeed and gossip pauses).
async fn members(ctx: &NodeCtx) -> Vec<MemberView> {
    let Some(a) = local_actor::<MembershipMsg>(ctx.name(), "membership") else {
        return vec![];
    };
    a.call(MembershipMsg::View, Some(Duration::from_secs(2)))
        .await
        .ok()
        .and_then(|r| r.success_or(()).ok())
        .unwrap_or_default()
}

/// Without a membership view the quorum size is unknown: refuse rather
/// than count a majority of one.
fn no_view() -> StateProblem {
    StateProblem::new(
        503,
        "membership-unavailable",
        "the membership view is unavailable (restarting?); only `local` reads and writes are served",
    )
}

/// Nodes counted for consistency: every member the view knows, whatever its
/// status (a partition must not shrink the quorum), at least this node.
fn cluster_size(members: &[MemberView]) -> usize {
    members.len().max(1)
}

/// Describe the access rule of `key` (for 403 problems).
fn rule(store: &DurableStore, key: &str) -> String {
    let Ok(s) = store.store() else {
        return String::new();
    };
    let Some((_, c)) = s.state(key).and_then(|st| st.winner()) else {
        return String::new();
    };
    let owner = &c.owner;
    match c.current_access() {
        Access::Public => format!(
            "key `{key}` is public: every plugin reads it, only its owner `{owner}` writes it"
        ),
        Access::Private => {
            format!("key `{key}` is private: only its owner `{owner}` reads or writes it")
        }
        Access::Protected(l) => format!(
            "key `{key}` is protected: only its owner `{owner}` and the plugins it lists ({}) read or write it",
            l.iter().cloned().collect::<Vec<_>>().join(", ")
        ),
    }
}

fn problem(store: &DurableStore, e: &StateError) -> StateProblem {
    match e {
        StateError::AccessDenied { key, .. } => {
            let r = rule(store, key);
            let detail = if r.is_empty() {
                e.to_string()
            } else {
                format!("{e}: {r}")
            };
            StateProblem::new(403, "access-denied", detail)
        }
        StateError::NotFound(_) => StateProblem::new(404, "not-found", e.to_string()),
        StateError::UnknownType(_) | StateError::Invalid(_) => {
            StateProblem::new(400, "bad-request", e.to_string())
        }
        StateError::TypeMismatch { .. } => StateProblem::new(409, "type-mismatch", e.to_string()),
        StateError::AlreadyExists(_) => StateProblem::new(409, "exists", e.to_string()),
        StateError::TooLarge { .. } => StateProblem::new(413, "too-large", e.to_string()),
        StateError::Fenced { .. } => StateProblem::new(409, "fenced", e.to_string()),
        StateError::Storage(_) => StateProblem::new(500, "storage", e.to_string()),
    }
}

fn view_json(v: View) -> serde_json::Value {
    use plexus_state::FieldView;
    let count = |c: i128| match i64::try_from(c) {
        Ok(n) => serde_json::Value::from(n),
        Err(_) => serde_json::Value::String(c.to_string()),
    };
    match v {
        View::Lww(None) => serde_json::Value::Null,
        View::Lww(Some(t)) => serde_json::from_str(&t).unwrap_or(serde_json::Value::String(t)),
        View::Counter(c) => count(c),
        View::Set(s) => serde_json::Value::from(s.into_iter().collect::<Vec<_>>()),
        View::Map(m) => serde_json::Value::Object(
            m.into_iter()
                .map(|(k, f)| {
                    let v = match f {
                        FieldView::Reg(t) => {
                            serde_json::from_str(&t).unwrap_or(serde_json::Value::String(t))
                        }
                        FieldView::Counter(c) => count(c),
                        FieldView::Set(s) => {
                            serde_json::Value::from(s.into_iter().collect::<Vec<_>>())
                        }
                    };
                    (k, v)
                })
                .collect(),
        ),
    }
}

impl StateState {
    fn me(&self) -> String {
        self.ctx.name().to_string()
    }

    fn alloc_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Encode and send one protocol message; a failure only costs that
    /// peer's answer (anti-entropy repairs).
    fn send(&self, node: &str, m: &StateWire) -> bool {
        let limit = self.ctx.config.max_frame_bytes.saturating_sub(1024);
        let bytes = match plexus_codec::encode_limited(m, limit) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(peer = %node, error = %e, "state message not sent");
                return false;
            }
        };
        match self.ctx.send(node, Wire::State(bytes)) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(peer = %node, error = %e, "state message not sent");
                false
            }
        }
    }

    fn publish(&self, events: &[StateEvent]) {
        for ev in events {
            let payload = serde_json::to_vec(ev).unwrap_or_default();
            let env = Envelope::new(
                MessageKind::Event,
                ev.topic(),
                format!("state@{}", self.ctx.name()),
                payload,
            );
            if let Err(e) = self.ctx.bus.publish(env) {
                tracing::debug!(key = %ev.key, error = %e, "state event not published");
            }
        }
    }

    /// Up peers we have a link to.
    fn live_peers(&self, members: &[MemberView]) -> Vec<String> {
        let linked = self.ctx.linked_nodes();
        members
            .iter()
            .filter(|m| !m.local && m.status == MemberStatus::Up)
            .map(|m| m.identity.name.clone())
            .filter(|n| linked.contains(n))
            .collect()
    }

    fn gossip_round(&mut self, members: &[MemberView]) {
        let mut peers = self.live_peers(members);
        if peers.is_empty() {
            return;
        }
        self.ctx.metrics.state_gossip_round();
        peers.shuffle(&mut *self.ctx.rng.lock());
        peers.truncate(self.ctx.config.state.gossip_fanout);
        let digest = match self.store.store() {
            Ok(s) => s.gossip_digest(),
            Err(e) => {
                tracing::error!(error = %e, "state store unusable; gossip paused");
                return;
            }
        };
        for p in peers {
            self.send(&p, &StateWire::Gossip(digest.clone()));
        }
    }

    fn on_peer(&mut self, from: &str, m: StateWire) {
        let now = self.ctx.clock.wall_ms();
        match m {
            StateWire::Gossip(g) => {
                let max = self.ctx.config.state.max_message_bytes;
                match self.store.handle_gossip(from, g, now, max) {
                    Ok(out) => {
                        self.publish(&out.events);
                        for e in &out.rejected {
                            tracing::info!(peer = %from, error = %e, "state item from peer rejected (audited)");
                        }
                        for k in &out.oversized {
                            tracing::warn!(peer = %from, key = %k, max, "state entry exceeds state.max_message_bytes; not sent");
                        }
                        for r in out.replies {
                            self.send(from, &StateWire::Gossip(r));
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "state gossip failed"),
                }
            }
            StateWire::Write {
                id,
                key,
                state,
                gen,
                version,
            } => {
                let res = self.store.merge_state(from, &key, state, now);
                let (ok, reason) = match res {
                    Ok(evs) => {
                        self.publish(&evs);
                        let covers = self
                            .store
                            .store()
                            .map(|s| s.covers(&key, gen, &version))
                            .unwrap_or(false);
                        (
                            covers,
                            (!covers).then(|| "state does not cover the write".to_string()),
                        )
                    }
                    Err(e) => (false, Some(e.to_string())),
                };
                self.send(from, &StateWire::WriteAck { id, ok, reason });
            }
            StateWire::WriteAck { id, ok, reason } => {
                let Some(Pending::Write { tracker, .. }) = self.pending.get_mut(&id) else {
                    return;
                };
                let status = if ok {
                    tracker.ack(from)
                } else {
                    tracing::info!(peer = %from, reason = ?reason, "peer refused a replicated write");
                    tracker.refuse(from)
                };
                if status != AckStatus::Pending {
                    self.finish(id);
                }
            }
            StateWire::ReadReq { id, key } => {
                let state = self.store.store().ok().and_then(|s| s.state(&key).cloned());
                self.send(from, &StateWire::ReadResp { id, state });
            }
            StateWire::ReadResp { id, state } => {
                let key = match self.pending.get(&id) {
                    Some(Pending::Read { req, .. }) => req.key.clone(),
                    _ => return,
                };
                if let Some(state) = state {
                    match self.store.merge_state(from, &key, state, now) {
                        Ok(evs) => self.publish(&evs),
                        Err(e) => {
                            tracing::info!(peer = %from, error = %e, "state from peer refused");
                            if let Some(Pending::Read { tracker, .. }) = self.pending.get_mut(&id) {
                                if tracker.refuse(from) == AckStatus::Failed {
                                    self.finish(id);
                                }
                            }
                            return;
                        }
                    }
                }
                if let Some(Pending::Read { tracker, .. }) = self.pending.get_mut(&id) {
                    if tracker.ack(from) == AckStatus::Reached {
                        self.finish(id);
                    }
                }
            }
            StateWire::LeaseReq { id, req } => {
                let vote = match self.store.lease_vote(&req, now) {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::error!(error = %e, "lease vote not made durable; refusing");
                        LeaseVote::Refused { current: None }
                    }
                };
                self.send(from, &StateWire::LeaseVote { id, vote });
            }
            StateWire::LeaseVote { id, vote } => {
                let Some(Pending::Lease { acq, .. }) = self.pending.get_mut(&id) else {
                    return;
                };
                if acq.on_vote(from, vote) != LeaseProgress::Pending {
                    self.finish(id);
                }
            }
            StateWire::LeaseRelease {
                name,
                holder,
                token,
            } => {
                if let Err(e) = self.store.lease_release(&name, &holder, token, now) {
                    tracing::error!(error = %e, "lease release failed");
                }
            }
        }
    }

    /// Answer a pending request that reached its end (reached or failed).
    fn finish(&mut self, id: u64) {
        let Some(p) = self.pending.remove(&id) else {
            return;
        };
        match p {
            Pending::Write {
                tracker,
                mut done,
                timeout,
                reply,
            } => {
                let r = match tracker.status() {
                    AckStatus::Reached => {
                        done.acks = tracker.acked().len();
                        done.acked_by = tracker.acked().iter().cloned().collect();
                        Ok(done)
                    }
                    _ => Err(not_reached(
                        "write",
                        &done.consistency,
                        &tracker,
                        timeout,
                        "; the change stays applied where it reached and gossip spreads it",
                    )),
                };
                let _ = reply.send(r);
            }
            Pending::Read {
                tracker,
                req,
                reply,
            } => {
                let r = match tracker.status() {
                    AckStatus::Reached => self.read_local(&req, &tracker),
                    _ => Err(not_reached(
                        "read",
                        level_name(req.consistency),
                        &tracker,
                        req.timeout,
                        "",
                    )),
                };
                let _ = reply.send(r);
            }
            Pending::Lease {
                acq,
                peers,
                cluster,
                retried,
                timed_out,
                timeout,
                reply,
            } => match acq.progress() {
                LeaseProgress::Granted(l) => {
                    let _ = reply.send(Ok(l));
                }
                LeaseProgress::Refused { current } => {
                    let now = self.ctx.clock.wall_ms();
                    // A promise is dated by its acceptor's clock. Only our
                    // own promise (the same holder and token in our table)
                    // can be compared with our clock; another node's, with a
                    // skewed clock, cannot: then retry and let the acceptors
                    // judge on their own clocks (a refusal is safe).
                    let own = self
                        .store
                        .leases()
                        .ok()
                        .and_then(|t| t.get(&acq.request().name).cloned())
                        .filter(|o| {
                            current
                                .as_ref()
                                .is_some_and(|c| c.token == o.token && c.holder == o.holder)
                        });
                    let stale = match (&current, &own) {
                        (None, _) => true,
                        (Some(_), Some(o)) => o.expires_at_ms <= now,
                        (Some(_), None) => true,
                    };
                    if !retried && stale && !timed_out {
                        // Outbid the expired or released promise once (the
                        // original timeout still bounds the whole request).
                        let req = acq.retry();
                        if let Some(new_id) =
                            self.start_lease(req, peers, cluster, true, timeout, reply)
                        {
                            self.retries.insert(id, new_id);
                        }
                        return;
                    }
                    let detail = match (current, own) {
                        (Some(c), Some(o)) if o.expires_at_ms > now => format!(
                            "lease `{}` is held by `{}` (token {}) for another {} ms",
                            c.name,
                            c.holder,
                            c.token,
                            o.expires_at_ms - now
                        ),
                        // Another node's promise: how long it lasts is on
                        // that node's clock, and it may be a request that
                        // never reached a majority, so it is not called held.
                        (Some(c), None) => format!(
                            "lease `{}` not granted: a majority of the nodes refused; the highest promise they reported is to `{}` (token {})",
                            c.name, c.holder, c.token
                        ),
                        _ => format!(
                            "lease `{}` not granted: no majority of the cluster voted for it within {} ms",
                            acq.request().name,
                            timeout.as_millis()
                        ),
                    };
                    let _ = reply.send(Err(StateProblem::new(409, "lease-held", detail)));
                }
                LeaseProgress::Pending => {}
            },
        }
    }

    fn expire(&mut self, id: u64) {
        match self.pending.get_mut(&id) {
            Some(Pending::Write { tracker, .. }) | Some(Pending::Read { tracker, .. }) => {
                tracker.time_out();
            }
            Some(Pending::Lease { acq, timed_out, .. }) => {
                *timed_out = true;
                acq.time_out();
            }
            None => {
                // A lease request retried under a new id: its timeout is the
                // original one.
                if let Some(new_id) = self.retries.remove(&id) {
                    self.expire(new_id);
                }
                return;
            }
        }
        self.finish(id);
    }

    fn write(
        &mut self,
        myself: &ActorRef<StateMsg>,
        members: &[MemberView],
        req: WriteReq,
        reply: RpcReplyPort<Result<WriteDone, StateProblem>>,
    ) {
        let r = self.write_local(&req);
        let (change, ops) = match r {
            Ok(x) => x,
            Err(p) => {
                let _ = reply.send(Err(p));
                return;
            }
        };
        self.publish(&change.events);
        let me = self.me();
        let mut tracker = AckTracker::new(req.consistency, cluster_size(members));
        tracker.ack(&me);
        let done = WriteDone {
            node: me.clone(),
            key: req.key.clone(),
            ops,
            consistency: level_name(req.consistency).into(),
            acks: 1,
            required: tracker.required(),
            acked_by: vec![me.clone()],
        };
        if req.consistency == Consistency::Local || tracker.status() == AckStatus::Reached {
            // Push the fresh deltas eagerly; gossip repairs any loss.
            let max = self.ctx.config.state.max_message_bytes;
            let packed = plexus_state::pack_deltas(change.deltas, max);
            for k in &packed.oversized {
                tracing::warn!(key = %k, max, "a change exceeds state.max_message_bytes; peers get it only if it fits later");
            }
            for p in self.live_peers(members) {
                for m in &packed.messages {
                    self.send(&p, &StateWire::Gossip(m.clone()));
                }
            }
            let _ = reply.send(Ok(done));
            return;
        }
        let (state, gen, version) = match self.store.store().ok().and_then(|s| s.state(&req.key)) {
            Some(s) => (s.clone(), s.gen, s.version.clone()),
            None => {
                let _ = reply.send(Ok(done));
                return;
            }
        };
        let id = self.alloc_id();
        for m in members.iter().filter(|m| !m.local) {
            self.send(
                &m.identity.name,
                &StateWire::Write {
                    id,
                    key: req.key.clone(),
                    state: state.clone(),
                    gen,
                    version: version.clone(),
                },
            );
        }
        self.pending.insert(
            id,
            Pending::Write {
                tracker,
                done,
                timeout: req.timeout,
                reply,
            },
        );
        myself.send_after(req.timeout, move || StateMsg::Expire(id));
    }

    /// Apply a write here (durably): the implicit creation with the asked
    /// access/expiry, meta changes, then the value change.
    fn write_local(&mut self, req: &WriteReq) -> Result<(Change, Vec<String>), StateProblem> {
        let now = self.ctx.clock.wall_ms();
        let (max_value, exists) = {
            let s = self.store.store().map_err(|e| problem(&self.store, &e))?;
            (
                s.config().max_value_bytes,
                s.state(&req.key).is_some_and(|st| st.is_visible(now)),
            )
        };
        let field = req.field.clone();
        let value_op = match (&req.op, field) {
            (WriteOp::Put(v), None) => LocalOp::Put(v.to_string()),
            (WriteOp::Put(v), Some(field)) => LocalOp::MapPut {
                field,
                value: v.to_string(),
            },
            (WriteOp::Incr(n), None) if *n >= 0 => LocalOp::Incr(n.unsigned_abs()),
            (WriteOp::Incr(n), None) => LocalOp::Decr(n.unsigned_abs()),
            (WriteOp::Incr(n), Some(field)) if *n >= 0 => LocalOp::MapIncr {
                field,
                by: n.unsigned_abs(),
            },
            (WriteOp::Incr(n), Some(field)) => LocalOp::MapDecr {
                field,
                by: n.unsigned_abs(),
            },
            (WriteOp::Add(m), None) => LocalOp::Add(m.clone()),
            (WriteOp::Add(m), Some(field)) => LocalOp::MapAdd {
                field,
                members: m.clone(),
            },
            (WriteOp::Remove(m), None) => LocalOp::Remove(m.clone()),
            (WriteOp::Remove(m), Some(field)) => LocalOp::MapRemove {
                field,
                members: m.clone(),
            },
            (WriteOp::Delete, None) => LocalOp::Delete,
            (WriteOp::Delete, Some(field)) => LocalOp::MapRemoveField(field),
        };
        // Size first: a refused write must not leave an implicit creation.
        let size = payload_len(&value_op);
        if size > max_value {
            return Err(StateProblem::new(
                413,
                "too-large",
                format!("value of {size} bytes exceeds the limit of {max_value} bytes"),
            ));
        }
        let implied = match &value_op {
            LocalOp::Put(_) => Some(Kind::Lww),
            LocalOp::Incr(_) | LocalOp::Decr(_) => Some(Kind::PnCounter),
            LocalOp::Add(_) => Some(Kind::Set),
            LocalOp::MapPut { .. }
            | LocalOp::MapIncr { .. }
            | LocalOp::MapDecr { .. }
            | LocalOp::MapAdd { .. } => Some(Kind::Map),
            _ => None,
        };
        let kind = match (req.kind, implied) {
            (Some(k), Some(_)) if !fits(k, &value_op) => {
                return Err(StateProblem::new(
                    409,
                    "type-mismatch",
                    format!(
                        "a {} cannot take `{}`{}",
                        k.name(),
                        value_op.name(),
                        if req.field.is_some() {
                            ""
                        } else {
                            " (use --field for a map)"
                        }
                    ),
                ));
            }
            (Some(k), _) => Some(k),
            (None, k) => k,
        };
        let expires_at = req.ttl_ms.map(|t| now.saturating_add(t));
        let mut ops: Vec<LocalOp> = Vec::new();
        let with_meta = req.access.is_some() || req.ttl_ms.is_some();
        if (with_meta || req.kind.is_some()) && !matches!(value_op, LocalOp::Delete) {
            match (exists, kind) {
                (false, Some(kind)) => ops.push(LocalOp::Create {
                    kind,
                    access: req.access.clone().unwrap_or_default(),
                    expires_at,
                }),
                (false, None) => {}
                (true, _) => {
                    if let Some(a) = &req.access {
                        ops.push(LocalOp::SetAccess(a.clone()));
                    }
                    if req.ttl_ms.is_some() {
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
            match self.store.apply_local(&req.plugin, &req.key, op, now) {
                Ok(c) => {
                    all.deltas.extend(c.deltas);
                    all.events.extend(c.events);
                    names.push(name);
                }
                Err(e) => {
                    // Earlier steps (a meta change) are applied and
                    // durable: publish them; gossip spreads them.
                    self.publish(&all.events);
                    return Err(problem(&self.store, &e));
                }
            }
        }
        Ok((all, names))
    }

    fn read(
        &mut self,
        myself: &ActorRef<StateMsg>,
        members: &[MemberView],
        req: ReadReq,
        reply: RpcReplyPort<Result<ReadDone, StateProblem>>,
    ) {
        let me = self.me();
        let mut tracker = AckTracker::new(req.consistency, cluster_size(members));
        tracker.ack(&me);
        if tracker.status() == AckStatus::Reached {
            let _ = reply.send(self.read_local(&req, &tracker));
            return;
        }
        let id = self.alloc_id();
        for m in members.iter().filter(|m| !m.local) {
            self.send(
                &m.identity.name,
                &StateWire::ReadReq {
                    id,
                    key: req.key.clone(),
                },
            );
        }
        let timeout = req.timeout;
        self.pending.insert(
            id,
            Pending::Read {
                tracker,
                req,
                reply,
            },
        );
        myself.send_after(timeout, move || StateMsg::Expire(id));
    }

    fn read_local(&self, req: &ReadReq, tracker: &AckTracker) -> Result<ReadDone, StateProblem> {
        let now = self.ctx.clock.wall_ms();
        let s = self.store.store().map_err(|e| problem(&self.store, &e))?;
        let view = s
            .get(&req.plugin, &req.key, now)
            .map_err(|e| problem(&self.store, &e))?;
        let info = s
            .info(&req.plugin, &req.key, now)
            .map_err(|e| problem(&self.store, &e))?;
        let (Some(view), Some(info)) = (view, info) else {
            return Err(StateProblem::new(
                404,
                "not-found",
                format!("key `{}` not found", req.key),
            ));
        };
        Ok(ReadDone {
            node: self.me(),
            key: req.key.clone(),
            kind: info.kind.name().into(),
            value: view_json(view),
            owner: info.owner,
            access: (&info.access).into(),
            expires_at_ms: info.expires_at,
            generation: info.gen,
            version: info
                .version
                .iter()
                .map(|d| (d.actor.clone(), d.counter))
                .collect(),
            consistency: level_name(req.consistency).into(),
            acks: tracker.acked().len(),
            required: tracker.required(),
        })
    }

    fn audit(&self, plugin: &str, mut q: AuditQuery) -> Result<Vec<AuditRecord>, StateProblem> {
        let limit = q.limit;
        q.limit = 0;
        let s = self.store.store().map_err(|e| problem(&self.store, &e))?;
        let mut rows: Vec<AuditRecord> = self
            .store
            .audit_query(&q)
            .map_err(|e| problem(&self.store, &e))?
            .into_iter()
            .filter(|r| {
                r.author == plugin || s.state(&r.key).is_some_and(|st| st.readable_by(plugin))
            })
            .collect();
        if limit > 0 && rows.len() > limit {
            rows.drain(..rows.len() - limit);
        }
        Ok(rows)
    }

    #[allow(clippy::too_many_arguments)]
    fn lease_acquire(
        &mut self,
        myself: &ActorRef<StateMsg>,
        members: &[MemberView],
        name: String,
        holder: String,
        ttl_ms: u64,
        timeout: Duration,
        reply: RpcReplyPort<Result<Lease, StateProblem>>,
    ) {
        let req = match self.store.leases() {
            Ok(t) => t.request(&name, &holder, ttl_ms, self.ctx.clock.wall_ms()),
            Err(e) => {
                let _ = reply.send(Err(problem(&self.store, &e)));
                return;
            }
        };
        let peers: Vec<String> = members
            .iter()
            .filter(|m| !m.local)
            .map(|m| m.identity.name.clone())
            .collect();
        let id = self.start_lease(req, peers, cluster_size(members), false, timeout, reply);
        if let Some(id) = id {
            myself.send_after(timeout, move || StateMsg::Expire(id));
        }
    }

    /// Vote locally, ask the peers, register the pending acquisition.
    /// Returns its id if it is still pending.
    fn start_lease(
        &mut self,
        req: LeaseRequest,
        peers: Vec<String>,
        cluster: usize,
        retried: bool,
        timeout: Duration,
        reply: RpcReplyPort<Result<Lease, StateProblem>>,
    ) -> Option<u64> {
        let now = self.ctx.clock.wall_ms();
        let me = self.me();
        let mut acq = LeaseAcquire::new(req.clone(), cluster, now);
        let vote = match self.store.lease_vote(&req, now) {
            Ok(v) => v,
            Err(e) => {
                let _ = reply.send(Err(problem(&self.store, &e)));
                return None;
            }
        };
        acq.on_vote(&me, vote);
        let id = self.alloc_id();
        for p in &peers {
            self.send(
                p,
                &StateWire::LeaseReq {
                    id,
                    req: req.clone(),
                },
            );
        }
        self.pending.insert(
            id,
            Pending::Lease {
                acq,
                peers,
                cluster,
                retried,
                timed_out: false,
                timeout,
                reply,
            },
        );
        if matches!(
            self.pending.get(&id),
            Some(Pending::Lease { acq, .. }) if acq.progress() != LeaseProgress::Pending
        ) {
            self.finish(id);
            return None;
        }
        Some(id)
    }
}

/// Bytes of a change's payload, as the core counts them for its limit.
fn payload_len(op: &LocalOp) -> usize {
    let sum = |v: &Vec<String>| v.iter().map(String::len).sum::<usize>();
    match op {
        LocalOp::Put(v) => v.len(),
        LocalOp::Add(m) | LocalOp::Remove(m) => sum(m),
        LocalOp::MapPut { field, value } => field.len() + value.len(),
        LocalOp::MapIncr { field, .. } | LocalOp::MapDecr { field, .. } => field.len(),
        LocalOp::MapAdd { field, members } | LocalOp::MapRemove { field, members } => {
            field.len() + sum(members)
        }
        LocalOp::MapRemoveField(f) => f.len(),
        _ => 0,
    }
}

/// Can a key of `kind` take `op`?
fn fits(kind: Kind, op: &LocalOp) -> bool {
    match op {
        LocalOp::Put(_) => kind == Kind::Lww,
        LocalOp::Incr(_) => matches!(kind, Kind::GCounter | Kind::PnCounter),
        LocalOp::Decr(_) => kind == Kind::PnCounter,
        LocalOp::Add(_) | LocalOp::Remove(_) => kind == Kind::Set,
        LocalOp::MapPut { .. }
        | LocalOp::MapIncr { .. }
        | LocalOp::MapDecr { .. }
        | LocalOp::MapAdd { .. }
        | LocalOp::MapRemove { .. }
        | LocalOp::MapRemoveField(_) => kind == Kind::Map,
        _ => true,
    }
}

fn not_reached(
    what: &str,
    level: &str,
    tracker: &AckTracker,
    timeout: Duration,
    note: &str,
) -> StateProblem {
    let acked: Vec<String> = tracker.acked().iter().cloned().collect();
    StateProblem::new(
        504,
        "consistency-timeout",
        format!(
            "{what} at consistency {level} not confirmed within {} ms: {} of {} required acks arrived (from {}){note}",
            timeout.as_millis(),
            acked.len(),
            tracker.required(),
            if acked.is_empty() { "none".to_string() } else { acked.join(", ") }
        ),
    )
}
