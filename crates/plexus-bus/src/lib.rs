//! The Plexus message bus.
//!
//! One [`Bus`] per node. Local subscribers get a bounded priority mailbox;
//! messages for other nodes go through a [`RemoteSink`] the node layer
//! provides (the cluster link). Each node tells its peers which patterns it
//! has subscribers for (its *interest*), so a publish is forwarded only to
//! nodes that want it, and each forwarded message is delivered there
//! locally, never forwarded again (no loops).
//!
//! Rules:
//! - A `request` goes to exactly one subscriber: a local one if any, else one
//!   interested node (round robin). Events and commands go to all.
//! - `destination` other than `*` restricts delivery to subscribers of that name.
//! - Undeliverable messages (no subscriber for a request, command or addressed
//!   message; expired; mailbox full; link failure; late response) become
//!   dead letters with a reason.

pub mod envelope;
mod mailbox;
pub mod policy;
pub mod stream;
pub mod text;
pub mod topic;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use uuid::Uuid;

pub use compact_str::CompactString;
pub use envelope::{
    now_ms, Envelope, Headers, MessageKind, Metadata, DEFAULT_PRIORITY, MAX_PRIORITY, MIN_PRIORITY,
};
use mailbox::{PushError, Shared};
pub use policy::{PublishPolicy, Violation};
use smallvec::SmallVec;
pub use stream::{StreamGone, StreamReceiver, StreamSender};
pub use text::TraceId;
pub use topic::{matches, validate_pattern, validate_topic, TopicError, TopicTrie};

/// Bus settings.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// This node's name (stamped as `source_node`).
    pub node: String,
    /// Messages a subscriber may have waiting before new ones are dead-lettered.
    pub mailbox_capacity: usize,
    /// Dead letters kept for inspection (older ones are counted, not kept).
    pub dead_letter_capacity: usize,
    /// Largest payload accepted, in bytes.
    pub max_payload: usize,
}

impl BusConfig {
    pub fn new(node: impl Into<String>) -> Self {
        BusConfig {
            node: node.into(),
            mailbox_capacity: 10_000,
            dead_letter_capacity: 1_000,
            max_payload: 1024 * 1024,
        }
    }
}

/// Bus errors a caller sees.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BusError {
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error("priority {0} is outside 1..=10")]
    Priority(u8),
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    PayloadTooLarge { size: usize, limit: usize },
    #[error("no subscriber for {topic:?} (destination {destination:?}) on any reachable node")]
    NoRoute { topic: String, destination: String },
    #[error("no response to {topic:?} within {0:?}", .timeout)]
    Timeout { topic: String, timeout: Duration },
    #[error("the responder went away before answering {topic:?}")]
    Dropped { topic: String },
    /// The one node the request went to was declared down before it
    /// answered; the request may or may not have run there.
    #[error("node {node} went down before answering {topic:?}")]
    PeerDown { topic: String, node: String },
    #[error("message expired before delivery")]
    Expired,
    /// A publish on behalf of a plugin broke its policy (audited).
    #[error("refused: {0}")]
    Forbidden(#[from] Violation),
}

/// What crosses the link between two nodes' buses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BusFrame {
    /// Deliver locally on the receiving node.
    Publish(Envelope),
    /// A response for a request the receiving node is waiting on.
    Response(Envelope),
    /// The sender's full set of (pattern, subscriber name).
    Interest(Vec<(String, String)>),
    /// The next part of the stream answering request `id` (responder →
    /// requester; see [`stream`]).
    StreamPart { id: Uuid, part: Vec<u8> },
    /// The stream answering `id` ended (responder → requester).
    StreamEnd { id: Uuid },
    /// The requester took `n` more parts of `id`: the responder may send
    /// that many more.
    StreamCredit { id: Uuid, n: u32 },
    /// The requester of `id` went away: stop producing.
    StreamCancel { id: Uuid },
}

/// The node layer's side of the bus: how frames reach other nodes.
pub trait RemoteSink: Send + Sync + 'static {
    /// Send a frame to `node`. An error dead-letters the message.
    fn send(&self, node: &str, frame: BusFrame) -> Result<(), String>;
    /// Local interest changed: tell every peer.
    fn interest_changed(&self, interest: Vec<(String, String)>);
}

/// An undeliverable message and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeadLetter {
    pub at_ms: u64,
    pub reason: String,
    pub envelope: Envelope,
}

/// Counters for status and metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BusStats {
    pub published: u64,
    pub delivered: u64,
    pub forwarded: u64,
    pub dead_lettered: u64,
    pub subscriptions: usize,
    pub pending_requests: usize,
    /// Publishes refused by the source check (forged source, undeclared
    /// topic, or a peer forwarding another node's message).
    #[serde(default)]
    pub rejected: u64,
}

/// Where one publish went.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PublishReport {
    pub local: usize,
    pub remote_nodes: Vec<String>,
    pub dead_lettered: bool,
}

struct SubEntry {
    pattern: String,
    owner: String,
    mailbox: Arc<Shared>,
}

#[derive(Default)]
struct SubTable {
    trie: TopicTrie<u64>,
    entries: HashMap<u64, SubEntry>,
}

#[derive(Default)]
struct RemoteInterest {
    trie: TopicTrie<usize>,
    owners: Vec<String>,
}

/// The local subscribers one message goes to (inline for the usual few).
type Targets = SmallVec<[(u64, Arc<Shared>); 4]>;

struct Inner {
    cfg: BusConfig,
    /// `cfg.node` as stamped on every envelope (inline: no allocation).
    node: CompactString,
    subs: RwLock<SubTable>,
    remote: RwLock<HashMap<String, RemoteInterest>>,
    pending: Mutex<HashMap<Uuid, oneshot::Sender<Envelope>>>,
    /// Pending requests that went to exactly one other node: failed at
    /// once by `peer_down` of that node instead of waiting out the timeout.
    awaiting: Mutex<HashMap<Uuid, String>>,
    dead: Mutex<VecDeque<DeadLetter>>,
    streams: stream::Streams,
    sink: RwLock<Option<Arc<dyn RemoteSink>>>,
    next_sub: AtomicU64,
    rr: AtomicUsize,
    published: AtomicU64,
    delivered: AtomicU64,
    forwarded: AtomicU64,
    dead_count: AtomicU64,
    rejected: AtomicU64,
    /// published, delivered, dead-lettered per [`TOPIC_CLASSES`] entry.
    by_class: [[AtomicU64; 3]; TOPIC_CLASSES.len()],
}

/// Topic classes the per-class counters use: a topic's first segment when
/// it is one of these, else `other` (so clients cannot mint time series).
pub const TOPIC_CLASSES: [&str; 5] = ["plugin", "system", "state", "workflow", "other"];

/// The class of a topic (see [`TOPIC_CLASSES`]).
pub fn topic_class(topic: &str) -> usize {
    let first = topic.find('/').map_or(topic, |i| &topic[..i]);
    TOPIC_CLASSES[..TOPIC_CLASSES.len() - 1]
        .iter()
        .position(|c| *c == first)
        .unwrap_or(TOPIC_CLASSES.len() - 1)
}

/// Counters of one topic class.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TopicClassStats {
    pub class: String,
    pub published: u64,
    pub delivered: u64,
    pub dead_lettered: u64,
}

/// A node's bus; cheap to clone.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("node", &self.inner.cfg.node)
            .finish()
    }
}

impl Bus {
    pub fn new(cfg: BusConfig) -> Bus {
        Bus {
            inner: Arc::new(Inner {
                node: CompactString::from(cfg.node.as_str()),
                cfg,
                subs: RwLock::new(SubTable::default()),
                remote: RwLock::new(HashMap::new()),
                pending: Mutex::new(HashMap::new()),
                awaiting: Mutex::new(HashMap::new()),
                dead: Mutex::new(VecDeque::new()),
                streams: stream::Streams::default(),
                sink: RwLock::new(None),
                next_sub: AtomicU64::new(1),
                rr: AtomicUsize::new(0),
                published: AtomicU64::new(0),
                delivered: AtomicU64::new(0),
                forwarded: AtomicU64::new(0),
                dead_count: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
                by_class: Default::default(),
            }),
        }
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.inner.cfg.node
    }

    /// Connect the bus to the cluster.
    pub fn set_remote_sink(&self, sink: Arc<dyn RemoteSink>) {
        *self.inner.sink.write() = Some(sink);
    }

    /// Subscribe `owner` to `pattern`. Dropping the subscription unsubscribes.
    pub fn subscribe(&self, pattern: &str, owner: &str) -> Result<Subscription, BusError> {
        validate_pattern(pattern)?;
        let id = self.inner.next_sub.fetch_add(1, Ordering::Relaxed);
        let mailbox = Shared::new(self.inner.cfg.mailbox_capacity, owner);
        {
            let mut subs = self.inner.subs.write();
            subs.trie.insert(pattern, id);
            subs.entries.insert(
                id,
                SubEntry {
                    pattern: pattern.to_string(),
                    owner: owner.to_string(),
                    mailbox: mailbox.clone(),
                },
            );
        }
        self.interest_changed();
        Ok(Subscription {
            id,
            pattern: pattern.to_string(),
            owner: owner.to_string(),
            mailbox,
            bus: Arc::downgrade(&self.inner),
        })
    }

    /// This node's (pattern, subscriber) pairs, deduplicated.
    pub fn local_interest(&self) -> Vec<(String, String)> {
        let subs = self.inner.subs.read();
        let mut v: Vec<(String, String)> = subs
            .entries
            .values()
            .map(|e| (e.pattern.clone(), e.owner.clone()))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    fn interest_changed(&self) {
        let sink = self.inner.sink.read().clone();
        if let Some(sink) = sink {
            sink.interest_changed(self.local_interest());
        }
    }

    fn validate(&self, env: &Envelope) -> Result<(), BusError> {
        topic::validate_topic_fast(&env.topic)?;
        if !(MIN_PRIORITY..=MAX_PRIORITY).contains(&env.priority) {
            return Err(BusError::Priority(env.priority));
        }
        if env.payload.len() > self.inner.cfg.max_payload {
            return Err(BusError::PayloadTooLarge {
                size: env.payload.len(),
                limit: self.inner.cfg.max_payload,
            });
        }
        Ok(())
    }

    /// Publish `env` on behalf of a plugin: only as itself and on a topic its
    /// policy allows. A refusal is audited: logged at warn, counted
    /// (`stats().rejected`) and kept as a dead letter whose reason starts
    /// with `rejected:`.
    pub fn publish_as(
        &self,
        policy: &PublishPolicy,
        env: Envelope,
    ) -> Result<PublishReport, BusError> {
        if let Err(v) = policy.check(&env) {
            self.reject(env, &v.to_string());
            return Err(BusError::Forbidden(v));
        }
        self.publish(env)
    }

    fn reject(&self, env: Envelope, why: &str) {
        self.inner.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(target: "plexus_bus::audit", topic = %env.topic, source = %env.source, source_node = %env.source_node, reason = %why, "publish rejected");
        self.dead_letter(env, format!("rejected: {why}"));
    }

    /// Publish `env` to every matching subscriber in the cluster (one, for a request).
    pub fn publish(&self, env: Envelope) -> Result<PublishReport, BusError> {
        self.publish_on(env, None)
    }

    /// Publish, delivering only on node `only` when given (the caller chose
    /// the node: a request goes there or nowhere).
    fn publish_on(&self, mut env: Envelope, only: Option<&str>) -> Result<PublishReport, BusError> {
        self.validate(&env)?;
        if env.source_node.is_empty() {
            env.source_node = self.inner.node.clone();
        }
        self.inner.published.fetch_add(1, Ordering::Relaxed);
        self.inner.by_class[topic_class(&env.topic)][0].fetch_add(1, Ordering::Relaxed);
        let mut report = PublishReport::default();
        if env.is_expired() {
            self.dead_letter(env, "expired before delivery".into());
            report.dead_lettered = true;
            return Ok(report);
        }
        let single = env.kind == MessageKind::Request;
        let local = match only {
            Some(n) if n != self.inner.node.as_str() => Targets::new(),
            _ => self.local_targets(&env),
        };
        let remote_nodes: Vec<String> = if let Some(n) = only {
            if n == self.inner.node.as_str() {
                vec![]
            } else {
                self.remote_targets(&env)
                    .into_iter()
                    .filter(|r| r == n)
                    .collect()
            }
        } else if single && !local.is_empty() {
            vec![]
        } else {
            let mut nodes = self.remote_targets(&env);
            if single && nodes.len() > 1 {
                let i = self.inner.rr.fetch_add(1, Ordering::Relaxed) % nodes.len();
                nodes = vec![nodes.swap_remove(i)];
            }
            nodes
        };
        let mut local = local;
        if single {
            local.truncate(1);
        }

        if local.is_empty() && remote_nodes.is_empty() {
            let must_route = env.kind != MessageKind::Event || env.destination != "*";
            if must_route {
                self.dead_letter(env, "no subscriber on any reachable node".into());
                report.dead_lettered = true;
            }
            return Ok(report);
        }
        let sink = if remote_nodes.is_empty() {
            None
        } else {
            self.inner.sink.read().clone()
        };
        for node in &remote_nodes {
            let sent = match &sink {
                Some(s) => s.send(node, BusFrame::Publish(env.clone())),
                None => Err("no cluster link".into()),
            };
            match sent {
                Ok(()) => {
                    self.inner.forwarded.fetch_add(1, Ordering::Relaxed);
                    report.remote_nodes.push(node.clone());
                }
                Err(e) => {
                    self.dead_letter(env.clone(), format!("link to {node} failed: {e}"));
                    report.dead_lettered = true;
                }
            }
        }
        report.local = self.deliver(env, local);
        Ok(report)
    }

    fn local_targets(&self, env: &Envelope) -> Targets {
        let subs = self.inner.subs.read();
        let mut out = Targets::new();
        let any = env.destination == "*";
        subs.trie.for_each_match(&env.topic, |id| {
            if out.iter().any(|(i, _)| i == id) {
                return;
            }
            if let Some(e) = subs.entries.get(id) {
                if any || env.destination == e.owner {
                    out.push((*id, e.mailbox.clone()));
                }
            }
        });
        out
    }

    fn remote_targets(&self, env: &Envelope) -> Vec<String> {
        let remote = self.inner.remote.read();
        if remote.is_empty() {
            return Vec::new();
        }
        let mut nodes: Vec<String> = remote
            .iter()
            .filter(|(_, ri)| {
                let mut hit = false;
                ri.trie.for_each_match(&env.topic, |&i| {
                    if env.destination == "*" || ri.owners[i] == env.destination {
                        hit = true;
                    }
                });
                hit
            })
            .map(|(n, _)| n.clone())
            .collect();
        nodes.sort();
        nodes
    }

    /// Push `env` into each target's mailbox: a copy for all but the last,
    /// which takes `env` itself (one subscriber, no copy).
    fn deliver(&self, env: Envelope, targets: Targets) -> usize {
        let mut n = 0;
        let class = topic_class(&env.topic);
        let mut env = Some(env);
        let last = targets.len().saturating_sub(1);
        for (i, (_, mb)) in targets.into_iter().enumerate() {
            let e = if i == last {
                match env.take() {
                    Some(e) => e,
                    None => break,
                }
            } else {
                match &env {
                    Some(e) => e.clone(),
                    None => break,
                }
            };
            match mb.push(e) {
                Ok(()) => n += 1,
                Err((PushError::Full, e)) => {
                    self.dead_letter(*e, format!("mailbox of {} is full", mb.owner))
                }
                Err((PushError::Closed, e)) => {
                    self.dead_letter(*e, format!("subscriber {} is gone", mb.owner))
                }
            }
        }
        self.inner.delivered.fetch_add(n as u64, Ordering::Relaxed);
        self.inner.by_class[class][1].fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Published, delivered and dead-lettered messages per topic class.
    pub fn class_stats(&self) -> Vec<TopicClassStats> {
        TOPIC_CLASSES
            .iter()
            .zip(&self.inner.by_class)
            .map(|(c, n)| TopicClassStats {
                class: c.to_string(),
                published: n[0].load(Ordering::Relaxed),
                delivered: n[1].load(Ordering::Relaxed),
                dead_lettered: n[2].load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Send a request and wait for its response.
    pub async fn request(&self, env: Envelope, timeout: Duration) -> Result<Envelope, BusError> {
        self.request_on(env, timeout, None).await
    }

    /// Send a request to a subscriber on node `node` only (the caller chose
    /// the host) and wait for its response. `NoRoute` when that node has no
    /// matching subscriber (as far as its announced interest says).
    pub async fn request_to(
        &self,
        env: Envelope,
        timeout: Duration,
        node: &str,
    ) -> Result<Envelope, BusError> {
        self.request_on(env, timeout, Some(node)).await
    }

    async fn request_on(
        &self,
        mut env: Envelope,
        timeout: Duration,
        only: Option<&str>,
    ) -> Result<Envelope, BusError> {
        env.kind = MessageKind::Request;
        env.metadata.timeout_ms = Some(timeout.as_millis() as u64);
        if env.metadata.expires_at_ms.is_none() {
            env.metadata.expires_at_ms = Some(now_ms() + timeout.as_millis() as u64);
        }
        let id = env.message_id;
        let topic = env.topic.to_string();
        let destination = env.destination.to_string();
        let (tx, rx) = oneshot::channel();
        self.inner.pending.lock().insert(id, tx);
        let report = match self.publish_on(env, only) {
            Ok(r) => r,
            Err(e) => {
                self.inner.pending.lock().remove(&id);
                return Err(e);
            }
        };
        if report.local == 0 && report.remote_nodes.is_empty() {
            self.inner.pending.lock().remove(&id);
            return Err(BusError::NoRoute { topic, destination });
        }
        let remote = match report.remote_nodes.as_slice() {
            [node] if report.local == 0 => Some(node.clone()),
            _ => None,
        };
        if let Some(node) = &remote {
            // Only while still pending: a fast answer may already be here.
            let pending = self.inner.pending.lock();
            if pending.contains_key(&id) {
                self.inner.awaiting.lock().insert(id, node.clone());
                tracing::debug!(%id, %node, topic = %topic, "request awaits one node");
            }
        }
        let r = tokio::time::timeout(timeout, rx).await;
        self.inner.awaiting.lock().remove(&id);
        match r {
            Ok(Ok(resp)) => Ok(resp),
            // Only `peer_down` drops the sender of a remote request.
            Ok(Err(_)) => match remote {
                Some(node) => Err(BusError::PeerDown { topic, node }),
                None => Err(BusError::Dropped { topic }),
            },
            Err(_) => {
                self.inner.pending.lock().remove(&id);
                Err(BusError::Timeout { topic, timeout })
            }
        }
    }

    /// Answer `request` with `response` (see [`Envelope::reply`]).
    pub fn respond(&self, request: &Envelope, mut response: Envelope) -> Result<(), BusError> {
        response.kind = MessageKind::Response;
        response.correlation_id = Some(request.message_id);
        response.source_node = self.inner.node.clone();
        if response.payload.len() > self.inner.cfg.max_payload {
            return Err(BusError::PayloadTooLarge {
                size: response.payload.len(),
                limit: self.inner.cfg.max_payload,
            });
        }
        if request.source_node == self.inner.cfg.node || request.source_node.is_empty() {
            self.resolve(response);
            return Ok(());
        }
        let sink = self.inner.sink.read().clone();
        let sent = match sink {
            Some(s) => s.send(&request.source_node, BusFrame::Response(response.clone())),
            None => Err("no cluster link".into()),
        };
        if let Err(e) = sent {
            self.dead_letter(
                response,
                format!("link to {} failed: {e}", request.source_node),
            );
        }
        Ok(())
    }

    fn resolve(&self, response: Envelope) {
        let tx = response
            .correlation_id
            .and_then(|c| self.inner.pending.lock().remove(&c));
        match tx {
            Some(tx) => {
                if let Err(r) = tx.send(response) {
                    self.dead_letter(r, "requester stopped waiting".into());
                }
            }
            None => self.dead_letter(
                response,
                "no pending request (late or unknown response)".into(),
            ),
        }
    }

    /// A frame from `from_node` arrived over the cluster link.
    pub fn handle_frame(&self, from_node: &str, frame: BusFrame) {
        match frame {
            BusFrame::Publish(env) => {
                // A peer forwards only what was published on it.
                if env.source_node != from_node {
                    let why = format!(
                        "node {from_node} forwarded a message claiming to come from node {:?}",
                        env.source_node
                    );
                    self.reject(env, &why);
                    return;
                }
                if let Err(e) = self.validate(&env) {
                    tracing::warn!(peer = from_node, error = %e, "refused a malformed bus message");
                    return;
                }
                if env.is_expired() {
                    self.dead_letter(env, "expired before delivery".into());
                    return;
                }
                let mut targets = self.local_targets(&env);
                if env.kind == MessageKind::Request {
                    targets.truncate(1);
                }
                if targets.is_empty() {
                    self.dead_letter(
                        env,
                        format!("forwarded by {from_node} but no local subscriber"),
                    );
                } else {
                    self.deliver(env, targets);
                }
            }
            BusFrame::Response(env) => self.resolve(env),
            BusFrame::Interest(list) => {
                let mut ri = RemoteInterest::default();
                for (pattern, owner) in list {
                    if validate_pattern(&pattern).is_ok() {
                        ri.owners.push(owner);
                        ri.trie.insert(&pattern, ri.owners.len() - 1);
                    }
                }
                self.inner.remote.write().insert(from_node.to_string(), ri);
            }
            f @ (BusFrame::StreamPart { .. }
            | BusFrame::StreamEnd { .. }
            | BusFrame::StreamCredit { .. }
            | BusFrame::StreamCancel { .. }) => self.handle_stream_frame(from_node, f),
        }
    }

    /// Forget a peer's interest (it is down), end the streams to and from
    /// it, and fail at once the pending requests that went to it alone
    /// (`BusError::PeerDown`); returns how many requests.
    pub fn peer_down(&self, node: &str) -> usize {
        self.inner.remote.write().remove(node);
        self.streams_peer_down(node);
        let mut pending = self.inner.pending.lock();
        let mut awaiting = self.inner.awaiting.lock();
        let mut failed = 0;
        awaiting.retain(|id, n| {
            if n.as_str() == node {
                // Dropping the sender wakes the request.
                if pending.remove(id).is_some() {
                    tracing::debug!(%id, %node, "request failed: its node is down");
                    failed += 1;
                }
                false
            } else {
                true
            }
        });
        failed
    }

    /// Other nodes with a subscriber for `topic` (any subscriber name), as
    /// this node knows from their interest.
    pub fn nodes_interested_in(&self, topic: &str) -> Vec<String> {
        let probe = Envelope::new(MessageKind::Event, topic, "", Vec::new());
        self.remote_targets(&probe)
    }

    /// Nodes with any interest registered.
    pub fn peers_with_interest(&self) -> Vec<String> {
        let mut v: Vec<String> = self.inner.remote.read().keys().cloned().collect();
        v.sort();
        v
    }

    /// Record an undeliverable message.
    pub fn dead_letter(&self, envelope: Envelope, reason: String) {
        tracing::debug!(topic = %envelope.topic, %reason, "dead letter");
        self.inner.dead_count.fetch_add(1, Ordering::Relaxed);
        self.inner.by_class[topic_class(&envelope.topic)][2].fetch_add(1, Ordering::Relaxed);
        let mut dl = self.inner.dead.lock();
        if dl.len() >= self.inner.cfg.dead_letter_capacity.max(1) {
            dl.pop_front();
        }
        dl.push_back(DeadLetter {
            at_ms: now_ms(),
            reason,
            envelope,
        });
    }

    /// The most recent dead letters, newest last.
    pub fn dead_letters(&self, limit: usize) -> Vec<DeadLetter> {
        let dl = self.inner.dead.lock();
        dl.iter()
            .skip(dl.len().saturating_sub(limit))
            .cloned()
            .collect()
    }

    pub fn stats(&self) -> BusStats {
        BusStats {
            published: self.inner.published.load(Ordering::Relaxed),
            delivered: self.inner.delivered.load(Ordering::Relaxed),
            forwarded: self.inner.forwarded.load(Ordering::Relaxed),
            dead_lettered: self.inner.dead_count.load(Ordering::Relaxed),
            subscriptions: self.inner.subs.read().entries.len(),
            pending_requests: self.inner.pending.lock().len(),
            rejected: self.inner.rejected.load(Ordering::Relaxed),
        }
    }
}

/// A live subscription; messages arrive highest priority first.
pub struct Subscription {
    id: u64,
    pattern: String,
    owner: String,
    mailbox: Arc<Shared>,
    bus: Weak<Inner>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("pattern", &self.pattern)
            .field("owner", &self.owner)
            .finish()
    }
}

impl Subscription {
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Next message; expired ones are dead-lettered and skipped.
    pub async fn recv(&self) -> Option<Envelope> {
        loop {
            let env = self.mailbox.recv().await?;
            if let Some(e) = self.check_expiry(env) {
                return Some(e);
            }
        }
    }

    /// Wait for messages, then move up to `max` of those waiting into `buf`
    /// (highest priority first, one lock for all): how many were added, 0
    /// once the subscription is closed and drained. Expired ones are
    /// dead-lettered and skipped. For subscribers that take bursts: one
    /// wake-up and one lock per batch instead of per message.
    pub async fn recv_many(&self, buf: &mut Vec<Envelope>, max: usize) -> usize {
        loop {
            let start = buf.len();
            if self.mailbox.recv_many(buf, max).await == 0 {
                return 0;
            }
            if buf[start..]
                .iter()
                .any(|e| e.metadata.expires_at_ms.is_some())
            {
                let now = now_ms();
                let mut i = start;
                while i < buf.len() {
                    if buf[i].expired_at(now) {
                        let env = buf.remove(i);
                        self.expire(env);
                    } else {
                        i += 1;
                    }
                }
            }
            if buf.len() > start {
                return buf.len() - start;
            }
        }
    }

    /// Next message if one is waiting.
    pub fn try_recv(&self) -> Option<Envelope> {
        loop {
            let env = self.mailbox.try_pop()?;
            if let Some(e) = self.check_expiry(env) {
                return Some(e);
            }
        }
    }

    fn check_expiry(&self, env: Envelope) -> Option<Envelope> {
        if env.is_expired() {
            self.expire(env);
            None
        } else {
            Some(env)
        }
    }

    fn expire(&self, env: Envelope) {
        if let Some(inner) = self.bus.upgrade() {
            Bus { inner }.dead_letter(env, format!("expired in the mailbox of {}", self.owner));
        }
    }

    /// Messages waiting.
    pub fn backlog(&self) -> usize {
        self.mailbox.len()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let left = self.mailbox.close();
        if let Some(inner) = self.bus.upgrade() {
            {
                let mut subs = inner.subs.write();
                subs.trie.remove(&self.pattern, &self.id);
                subs.entries.remove(&self.id);
            }
            let bus = Bus { inner };
            for e in left {
                bus.dead_letter(e, format!("subscriber {} unsubscribed", self.owner));
            }
            bus.interest_changed();
        }
    }
}

#[cfg(test)]
mod tests;
