//! The StateReplica actor: this node's replica of the cluster's replicated
//! state (`plexus-state`), persisted in `data_dir/state.redb`.
//!
//! A thin shell around [`plexus_state::Coordinator`], which holds the
//! protocol (majority/all writes and reads, lease votes and retries, gossip
//! rounds, timeouts). The actor owns the coordinator and the
//! [`DurableStore`], turns API requests, peer messages and timers into
//! coordinator calls, and performs each returned [`Ready`] in order: commit
//! the changed replica (fsync), then publish events on the bus (each on its
//! key's topic `state/changes/{key}`, see [`plexus_state::topic_for`]), send
//! the messages, answer the API, set the timers.
//!
//! Between nodes everything travels as one [`StateWire`] encoded into
//! [`Wire::State`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use plexus_bus::{Envelope, MessageKind};
use plexus_membership::{MemberStatus, MemberView};
use plexus_state::{
    Access, AuditQuery, AuditRecord, Consistency, Coordinator, CoordinatorConfig, DurableConfig,
    DurableStore, Kind, Lease, LeaseAcquireRequest, LocalOp, Member, ReadOutcome, ReadRequest,
    Ready, Reply, ReqId, RequestError, StateError, StateEvent, Timer, View, WriteOutcome,
    WriteRequest,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use serde::{Deserialize, Serialize};

use crate::actors::membership::MembershipMsg;
use crate::ctx::NodeCtx;
use crate::net::wire::Wire;

/// The state protocol message, defined with the coordinator.
pub use plexus_state::StateWire;

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
    /// Who asked (`principal (credential)`), for the audit.
    pub by: String,
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

/// A read.
#[derive(Debug, Clone)]
pub struct ReadReq {
    pub plugin: String,
    pub key: String,
    pub consistency: Consistency,
    pub timeout: Duration,
}

pub use plexus_api::state::{ReadDone, WriteDone};

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

#[derive(RactorMessage)]
pub enum StateMsg {
    /// An encoded [`StateWire`] from a peer.
    Peer {
        from: String,
        bytes: Vec<u8>,
    },
    /// A coordinator timer fired (gossip round, purge, request deadline).
    Timer(Timer),
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

/// Where the answer to a coordinator request goes.
enum Port {
    Write(RpcReplyPort<Result<WriteDone, StateProblem>>),
    Read(RpcReplyPort<Result<ReadDone, StateProblem>>),
    Lease(RpcReplyPort<Result<Lease, StateProblem>>),
    Released(RpcReplyPort<Result<bool, StateProblem>>),
}

impl Port {
    fn fail(self, p: StateProblem) {
        // A caller that gave up is no error.
        let _ = match self {
            Port::Write(r) => r.send(Err(p)).is_ok(),
            Port::Read(r) => r.send(Err(p)).is_ok(),
            Port::Lease(r) => r.send(Err(p)).is_ok(),
            Port::Released(r) => r.send(Err(p)).is_ok(),
        };
    }
}

pub struct StateState {
    ctx: Arc<NodeCtx>,
    store: DurableStore,
    coord: Coordinator,
    /// Callers waiting for a coordinator reply.
    ports: HashMap<ReqId, Port>,
}

pub struct StateActor;

/// The path of a node's state file.
pub fn store_path(ctx: &NodeCtx) -> std::path::PathBuf {
    ctx.config.data_dir.join("state.redb")
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
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
        let s = &ctx.config.state;
        let cfg = CoordinatorConfig {
            gossip_interval_ms: millis(s.gossip_interval),
            gossip_fanout: s.gossip_fanout,
            purge_interval_ms: millis(s.purge_interval),
            max_message_bytes: s.max_message_bytes,
        };
        let coord = Coordinator::new(ctx.name(), cfg, ctx.clock.wall_ms());
        let mut st = StateState {
            ctx,
            store,
            coord,
            ports: HashMap::new(),
        };
        let ready = st.coord.start();
        st.perform(&myself, ready);
        Ok(st)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: StateMsg,
        st: &mut StateState,
    ) -> Result<(), ActorProcessingErr> {
        let now = st.ctx.clock.wall_ms();
        match msg {
            StateMsg::Peer { from, bytes } => {
                let limit = st.ctx.config.max_frame_bytes;
                let m = match plexus_codec::decode_limited::<StateWire>(&bytes, limit) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(peer = %from, error = %e, "dropped a malformed state message");
                        return Ok(());
                    }
                };
                if let (StateWire::Gossip(plexus_state::GossipMsg::Digest(theirs)), Ok(store)) =
                    (&m, st.store.store())
                {
                    // Convergence, for /metrics (alert: state not converging).
                    let differing = store.digest().differing(theirs).len();
                    st.ctx
                        .metrics
                        .state_digest_compared(&from, differing, store.len() as u64);
                }
                match st.store.replica_mut() {
                    Ok(replica) => {
                        let ready = st.coord.on_message(now, &from, m, replica);
                        st.perform(&myself, ready);
                    }
                    Err(e) => {
                        tracing::error!(peer = %from, error = %e, "state message dropped")
                    }
                }
            }
            StateMsg::Timer(t) => {
                if t == Timer::Gossip {
                    st.refresh_members().await;
                }
                match st.store.replica_mut() {
                    Ok(replica) => {
                        let ready = {
                            let mut rng = st.ctx.rng.lock();
                            st.coord.on_timer(now, t, replica, &mut *rng)
                        };
                        st.perform(&myself, ready);
                    }
                    Err(e) => {
                        // Keep the periodic timers: the store refuses until
                        // reopened, and a request's deadline has no caller
                        // left (it was failed with the store).
                        tracing::error!(error = %e, "state store unusable; {t:?} skipped");
                        let every = match t {
                            Timer::Gossip => st.ctx.config.state.gossip_interval,
                            Timer::Purge => st.ctx.config.state.purge_interval,
                            Timer::Expire(_) => return Ok(()),
                        };
                        myself.send_after(every, move || StateMsg::Timer(t));
                    }
                }
            }
            StateMsg::Write(req, reply) => {
                // Also for `local`: its deltas are pushed to the live peers.
                st.refresh_members().await;
                let w = write_request(req);
                let port = Port::Write(reply);
                st.request(&myself, port, |c, r| c.write(now, w, r));
            }
            StateMsg::Read(req, reply) => {
                if req.consistency != Consistency::Local {
                    st.refresh_members().await;
                }
                let q = ReadRequest {
                    plugin: req.plugin,
                    key: req.key,
                    consistency: req.consistency,
                    timeout_ms: millis(req.timeout),
                };
                st.request(&myself, Port::Read(reply), |c, r| c.read(now, q, r));
            }
            StateMsg::List(plugin, reply) => {
                let r = st
                    .store
                    .store()
                    .map(|s| s.keys(&plugin, now))
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
                st.refresh_members().await;
                let q = LeaseAcquireRequest {
                    name,
                    holder,
                    ttl_ms,
                    timeout_ms: millis(timeout),
                };
                st.request(&myself, Port::Lease(reply), |c, r| {
                    c.acquire_lease(now, q, r)
                });
            }
            StateMsg::LeaseRelease {
                name,
                holder,
                token,
                reply,
            } => {
                st.refresh_members().await;
                st.request(&myself, Port::Released(reply), |c, r| {
                    c.release_lease(now, &name, &holder, token, r)
                });
            }
        }
        Ok(())
    }
}

/// The membership view (empty if the membership actor does not answer: then
/// only `local` operations succeed and gossip pauses).
async fn members(ctx: &NodeCtx) -> Vec<MemberView> {
    let Some(a) = ctx.actors.membership.get() else {
        return vec![];
    };
    a.call(MembershipMsg::View, Some(Duration::from_secs(2)))
        .await
        .ok()
        .and_then(|r| r.success_or(()).ok())
        .unwrap_or_default()
}

/// The coordinator's view of the members: every member counts in quorums;
/// `live` (up and linked) ones get eager pushes and gossip. Without a view
/// (empty) the quorum size is unknown: the coordinator then refuses rather
/// than count a majority of one.
fn coordinator_members(ctx: &NodeCtx, view: Vec<MemberView>) -> Option<Vec<Member>> {
    if view.is_empty() {
        return None;
    }
    let linked = ctx.linked_nodes();
    Some(
        view.into_iter()
            .map(|m| Member {
                live: !m.local && m.status == MemberStatus::Up && linked.contains(&m.identity.name),
                name: m.identity.name,
            })
            .collect(),
    )
}

/// An API write as a coordinator request: the value change as the core's
/// operation (a JSON document is stored as its text).
fn write_request(req: WriteReq) -> WriteRequest {
    let op = match (req.op, req.field) {
        (WriteOp::Put(v), None) => LocalOp::Put(v.to_string()),
        (WriteOp::Put(v), Some(field)) => LocalOp::MapPut {
            field,
            value: v.to_string(),
        },
        (WriteOp::Incr(n), None) if n >= 0 => LocalOp::Incr(n.unsigned_abs()),
        (WriteOp::Incr(n), None) => LocalOp::Decr(n.unsigned_abs()),
        (WriteOp::Incr(n), Some(field)) if n >= 0 => LocalOp::MapIncr {
            field,
            by: n.unsigned_abs(),
        },
        (WriteOp::Incr(n), Some(field)) => LocalOp::MapDecr {
            field,
            by: n.unsigned_abs(),
        },
        (WriteOp::Add(m), None) => LocalOp::Add(m),
        (WriteOp::Add(m), Some(field)) => LocalOp::MapAdd { field, members: m },
        (WriteOp::Remove(m), None) => LocalOp::Remove(m),
        (WriteOp::Remove(m), Some(field)) => LocalOp::MapRemove { field, members: m },
        (WriteOp::Delete, None) => LocalOp::Delete,
        (WriteOp::Delete, Some(field)) => LocalOp::MapRemoveField(field),
    };
    WriteRequest {
        plugin: req.plugin,
        by: req.by,
        key: req.key,
        op,
        access: req.access,
        ttl_ms: req.ttl_ms,
        kind: req.kind,
        consistency: req.consistency,
        timeout_ms: millis(req.timeout),
    }
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

/// A coordinator error as an HTTP problem.
fn request_problem(store: &DurableStore, e: &RequestError) -> StateProblem {
    let (status, kind) = match e {
        RequestError::State(e) => return problem(store, e),
        RequestError::KindMismatch { .. } => (409, "type-mismatch"),
        RequestError::NotConfirmed { .. } => (504, "consistency-timeout"),
        RequestError::LeaseHeld { .. }
        | RequestError::LeaseRefused { .. }
        | RequestError::LeaseNoMajority { .. } => (409, "lease-held"),
        RequestError::NoMembershipView => (503, "membership-unavailable"),
    };
    StateProblem::new(status, kind, e.to_string())
}

fn write_done(node: &str, w: WriteOutcome) -> WriteDone {
    WriteDone {
        node: node.to_string(),
        key: w.key,
        ops: w.ops,
        consistency: w.consistency.name().into(),
        acks: w.acked_by.len(),
        required: w.required,
        acked_by: w.acked_by,
    }
}

fn read_done(node: &str, r: ReadOutcome) -> ReadDone {
    ReadDone {
        node: node.to_string(),
        key: r.key,
        kind: r.info.kind.name().into(),
        value: view_json(r.view),
        owner: r.info.owner,
        access: (&r.info.access).into(),
        expires_at_ms: r.info.expires_at,
        generation: r.info.gen,
        version: r
            .info
            .version
            .iter()
            .map(|d| (d.actor.clone(), d.counter))
            .collect(),
        consistency: r.consistency.name().into(),
        acks: r.acked_by.len(),
        required: r.required,
    }
}

impl StateState {
    async fn refresh_members(&mut self) {
        let view = members(&self.ctx).await;
        self.coord.set_members(coordinator_members(&self.ctx, view));
    }

    /// Start a coordinator request answered on `port`.
    fn request(
        &mut self,
        myself: &ActorRef<StateMsg>,
        port: Port,
        call: impl FnOnce(&mut Coordinator, &mut plexus_state::Replica) -> (ReqId, Ready),
    ) {
        let replica = match self.store.replica_mut() {
            Ok(r) => r,
            Err(e) => {
                port.fail(problem(&self.store, &e));
                return;
            }
        };
        let (id, ready) = call(&mut self.coord, replica);
        self.ports.insert(id, port);
        self.perform(myself, ready);
    }

    /// Perform a coordinator `Ready`: commit, then publish, send, answer;
    /// timers in any case. If the commit fails nothing of it goes out (the
    /// change is not durable): its callers and every waiting one get the
    /// storage error, and the store refuses further calls until reopened.
    fn perform(&mut self, myself: &ActorRef<StateMsg>, ready: Ready) {
        for t in &ready.timers {
            let timer = t.timer;
            myself.send_after(Duration::from_millis(t.after_ms), move || {
                StateMsg::Timer(timer)
            });
        }
        if !ready.persist.is_empty() {
            if let Err(e) = self.store.commit() {
                let p = problem(&self.store, &e);
                let waiting = self.coord.abandon_all();
                for id in ready.replies.iter().map(|(id, _)| *id).chain(waiting) {
                    if let Some(port) = self.ports.remove(&id) {
                        port.fail(p.clone());
                    }
                }
                return;
            }
        }
        if ready.gossip_round {
            self.ctx.metrics.state_gossip_round();
        }
        self.publish(&ready.events);
        for m in &ready.messages {
            self.send(&m.to, &m.msg);
        }
        for (id, reply) in ready.replies {
            let Some(port) = self.ports.remove(&id) else {
                tracing::error!(id, "state reply without a waiting caller");
                continue;
            };
            let me = self.ctx.name();
            let err = |e: RequestError| request_problem(&self.store, &e);
            // A caller that gave up is no error.
            let _ = match (port, reply) {
                (Port::Write(p), Reply::Write(r)) => {
                    p.send(r.map(|w| write_done(me, w)).map_err(err)).is_ok()
                }
                (Port::Read(p), Reply::Read(r)) => {
                    p.send(r.map(|x| read_done(me, x)).map_err(err)).is_ok()
                }
                (Port::Lease(p), Reply::Lease(r)) => p.send(r.map_err(err)).is_ok(),
                (Port::Released(p), Reply::Released(r)) => p.send(r.map_err(err)).is_ok(),
                (port, reply) => {
                    tracing::error!(id, ?reply, "state reply of the wrong kind");
                    port.fail(StateProblem::new(
                        500,
                        "internal",
                        "state reply of the wrong kind",
                    ));
                    false
                }
            };
        }
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
}
