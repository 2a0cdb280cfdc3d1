//! The node's two seams to the outside world: how it reaches peers
//! ([`ClusterLinks`]) and what time it is ([`Clock`]).
//!
//! In production the links are ractor_cluster sessions ([`RactorLinks`]) and
//! the clock is the machine's. The simulation harness (`plexus-sim`) runs
//! several nodes in one process and passes its own links and clock instead.
//! It cannot use ractor_cluster there: ractor's named registry and `pg`
//! groups are process-global, so a node looking up a peer's Gateway by group
//! could get the peer's real, local actor instead of the proxy behind the
//! (faulty) link, and every NodeServer would advertise the other nodes'
//! actors as its own. Everything a node says to another node goes through
//! [`ClusterLinks::send`] as one encoded [`WireFrame`](crate::net::wire::WireFrame),
//! so replacing the links here, and only here, puts every inter-node byte
//! on the harness's network.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use ractor::{pg, ActorRef};
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::{NodeEventSubscription, NodeServerMessage};
use tokio::sync::mpsc;

use crate::ctx::{actor_name, gateway_group, LinkError};
use crate::net::wire::{batch, GatewayMsg};

/// Where links deliver to a node: its link changes, and (for links that do
/// not go through ractor_cluster's remote actors, as the simulation's)
/// frames for its Gateway. The node implements it over its typed actor
/// handles; nothing looks an actor up by name.
pub trait LinkInbox: Send + Sync + 'static {
    fn link_up(&self, peer: String);
    fn link_down(&self, peer: String);
    /// One frame for the node's Gateway; `false` when it is not running.
    fn frame(&self, bytes: Vec<u8>) -> bool;
}

/// How a node reaches its peers.
///
/// Link changes are reported to the node's [`LinkInbox`], which
/// [`ClusterLinks::watch`] registers.
pub trait ClusterLinks: Send + Sync + 'static {
    /// Hand one encoded frame from node `from` to node `to`'s Gateway.
    /// `Ok` means the link took it, not that it arrived.
    fn send(&self, from: &str, to: &str, frame: Vec<u8>) -> Result<(), LinkError>;
    /// Nodes `me` has a link to now (sorted, without `me`).
    fn linked(&self, me: &str) -> Vec<String>;
    /// Try to open a link from `me` to the node listening at `addr`
    /// (asynchronously; success shows up as a `LinkUp`).
    fn dial(&self, me: &str, addr: &str);
    /// Start reporting `me`'s link changes (and frames, for in-process
    /// links) to `inbox`.
    fn watch(&self, me: &str, inbox: Arc<dyn LinkInbox>);
    /// Stop reporting them (the Membership actor is stopping).
    fn unwatch(&self, me: &str);
    /// Drop `me`'s link to `peer`, which membership declared down. A link
    /// to a node that died without closing its sockets (a container killed
    /// with its network) can outlive it; while it does, the restarted node's
    /// handshakes are answered "already connected" and fail. Default: no-op.
    fn drop_link(&self, _me: &str, _peer: &str) {}
}

/// How long a dial may take: TCP connect and, with TLS, the handshake.
const DIAL_TIMEOUT: Duration = Duration::from_secs(15);

/// Production links: ractor_cluster sessions of the node's NodeServer. A
/// peer's Gateway is found through its `pg` group, which ractor_cluster
/// fills with the remote proxy when the session comes up.
///
/// Frames to a peer go through that peer's outbox, a queue drained by one
/// task: whatever queued up while the task was busy leaves as one
/// [`GatewayMsg::Batch`]. Each cluster message costs three actor hops and a
/// socket write on the sending side and a socket read and three hops on the
/// receiving side, so under load (many requests in flight) this is most of
/// the per-frame cost; a lone frame still leaves at once, as
/// [`GatewayMsg::Frame`]. One queue per peer keeps frames to it in order.
pub struct RactorLinks {
    node_server: ActorRef<NodeServerMessage>,
    /// Dial over mutual TLS (`[node] tls_*`) instead of plain TCP.
    tls: Option<tokio_rustls::TlsConnector>,
    /// Largest batch (the peers' inbound frame limit minus headroom).
    max_batch: usize,
    outboxes: Mutex<HashMap<String, Outbox>>,
}

/// One peer's queue, and the peer's gateway as last looked up (a `pg`
/// lookup locks and copies the group; the proxy stays valid while its
/// session lives).
struct Outbox {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    gw: ActorRef<GatewayMsg>,
}

/// A remote gateway proxy is stopped when its cluster session ends.
fn alive(gw: &ActorRef<GatewayMsg>) -> bool {
    matches!(gw.get_status(), ractor::ActorStatus::Running)
}

/// At most this many frames are taken from an outbox per batch, so one
/// busy peer cannot hold its task in a loop for ever.
const MAX_FRAMES_PER_DRAIN: usize = 1024;

impl RactorLinks {
    /// Links through `node_server`; batches stay at or under `max_batch` bytes.
    pub fn new(
        node_server: ActorRef<NodeServerMessage>,
        tls: Option<tokio_rustls::TlsConnector>,
        max_batch: usize,
    ) -> RactorLinks {
        RactorLinks {
            node_server,
            tls,
            max_batch,
            outboxes: Mutex::new(HashMap::new()),
        }
    }

    /// Queue `frame` for `to`. "No link" is answered now, as a direct cast
    /// would: the bus fails requests to an unlinked node at once instead of
    /// at their timeout.
    fn enqueue(&self, to: &str, frame: Vec<u8>) -> Result<(), LinkError> {
        let closed = || LinkError::Send(to.to_string(), "its outbox is closed".into());
        let mut boxes = self.outboxes.lock();
        if let Some(ob) = boxes.get(to) {
            if alive(&ob.gw) && !ob.tx.is_closed() {
                return ob.tx.send(frame).map_err(|_| closed());
            }
        }
        let gw = gateway_of(to).ok_or_else(|| LinkError::NoLink(to.to_string()))?;
        if let Some(ob) = boxes.get_mut(to).filter(|ob| !ob.tx.is_closed()) {
            ob.gw = gw;
            return ob.tx.send(frame).map_err(|_| closed());
        }
        // No runtime (only while the process shuts down): refuse the frame
        // rather than queue it where nothing would send it.
        let rt = tokio::runtime::Handle::try_current().map_err(|_| closed())?;
        let (tx, rx) = mpsc::unbounded_channel();
        rt.spawn(drain_outbox(to.to_string(), rx, self.max_batch));
        tx.send(frame).map_err(|_| closed())?;
        boxes.insert(to.to_string(), Outbox { tx, gw });
        Ok(())
    }
}

/// The task behind one peer's outbox. It ends when the outbox is dropped
/// (the links are, or the peer was declared down).
async fn drain_outbox(peer: String, mut rx: mpsc::UnboundedReceiver<Vec<u8>>, max_batch: usize) {
    let mut frames = Vec::new();
    let mut gw: Option<ActorRef<GatewayMsg>> = None;
    while rx.recv_many(&mut frames, MAX_FRAMES_PER_DRAIN).await > 0 {
        // Woken by the first frame, this task would otherwise run at once
        // (on an idle worker) and send frames one by one. Yielding once lets
        // the tasks already scheduled (typically the requests a batch of
        // answers just woke) queue theirs behind it first.
        tokio::task::yield_now().await;
        while frames.len() < MAX_FRAMES_PER_DRAIN {
            match rx.try_recv() {
                Ok(f) => frames.push(f),
                Err(_) => break,
            }
        }
        if !gw.as_ref().is_some_and(alive) {
            gw = gateway_of(&peer);
        }
        let Some(gw) = &gw else {
            tracing::debug!(%peer, frames = frames.len(), "link gone; queued frames dropped");
            frames.clear();
            continue;
        };
        let mut packer = batch::Packer::new(max_batch);
        for f in frames.drain(..) {
            packer.push(f);
        }
        for msg in packer.finish() {
            if let Err(e) = gw.cast(msg) {
                tracing::debug!(%peer, error = %e, "send to the peer's gateway failed");
                break;
            }
        }
    }
}

/// The remote gateway of `node`, if linked (ractor_cluster links only).
pub fn gateway_of(node: &str) -> Option<ActorRef<GatewayMsg>> {
    pg::get_members(&gateway_group(node))
        .into_iter()
        .max_by_key(|c| c.get_id().pid())
        .map(ActorRef::from)
}

impl ClusterLinks for RactorLinks {
    fn send(&self, _from: &str, to: &str, frame: Vec<u8>) -> Result<(), LinkError> {
        self.enqueue(to, frame)
    }

    fn linked(&self, me: &str) -> Vec<String> {
        let mut v: Vec<String> = pg::which_groups()
            .into_iter()
            .filter_map(|g| g.strip_prefix("plexus.gw.").map(str::to_string))
            .filter(|n| n != me && gateway_of(n).is_some())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    fn dial(&self, _me: &str, addr: &str) {
        let server = self.node_server.clone();
        let addr = addr.to_string();
        let tls = self.tls.clone();
        tokio::spawn(async move {
            let connect = async {
                match tls {
                    None => ractor_cluster::client_connect(&server, addr.as_str())
                        .await
                        .map_err(|e| e.to_string()),
                    Some(connector) => {
                        let name = crate::net::tls::server_name(&addr)
                            .map_err(|e| format!("no TLS server name: {e}"))?;
                        ractor_cluster::client_connect_enc(&server, addr.as_str(), connector, name)
                            .await
                            .map_err(|e| e.to_string())
                    }
                }
            };
            // A peer that accepts and then never answers (a hung process, a
            // black-holed link) would otherwise keep this task forever, and
            // the membership loop dials again every round.
            let r = match tokio::time::timeout(DIAL_TIMEOUT, connect).await {
                Ok(r) => r,
                Err(_) => Err(format!("no session within {} s", DIAL_TIMEOUT.as_secs())),
            };
            if let Err(e) = r {
                tracing::debug!(%addr, error = %e, "dial failed");
            }
        });
    }

    fn watch(&self, me: &str, inbox: Arc<dyn LinkInbox>) {
        let _ = self.node_server.cast(NodeServerMessage::SubscribeToEvents {
            id: actor_name(me, "membership-links"),
            subscription: Box::new(LinkEvents { inbox }),
        });
    }

    fn drop_link(&self, _me: &str, peer: &str) {
        self.outboxes.lock().remove(peer);
        let server = self.node_server.clone();
        let peer = peer.to_string();
        tokio::spawn(async move {
            let sessions = match ractor::call_t!(server, NodeServerMessage::GetSessions, 1_000) {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "cannot list cluster sessions");
                    return;
                }
            };
            for ses in sessions.into_values() {
                if LinkEvents::peer(&ses).as_deref() == Some(peer.as_str()) {
                    tracing::info!(%peer, addr = %ses.peer_addr, "dropping the link to a member declared down");
                    ses.actor.stop(Some("member down".into()));
                }
            }
        });
    }

    fn unwatch(&self, me: &str) {
        let _ = self
            .node_server
            .cast(NodeServerMessage::UnsubscribeToEvents(actor_name(
                me,
                "membership-links",
            )));
    }
}

/// Forwards ractor_cluster session events to the node's inbox.
struct LinkEvents {
    inbox: Arc<dyn LinkInbox>,
}

impl LinkEvents {
    /// ractor_cluster names peers `name@host`; Plexus names nodes by `name`.
    fn peer(ses: &NodeServerSessionInformation) -> Option<String> {
        ses.peer_name
            .as_ref()
            .map(|n| n.name.split('@').next().unwrap_or_default().to_string())
            .filter(|n| !n.is_empty())
    }
}

impl NodeEventSubscription for LinkEvents {
    fn node_session_opened(&self, _ses: NodeServerSessionInformation) {}

    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        if let Some(p) = Self::peer(&ses) {
            self.inbox.link_down(p);
        }
    }

    fn node_session_authenticated(&self, _ses: NodeServerSessionInformation) {}

    fn node_session_ready(&self, ses: NodeServerSessionInformation) {
        if let Some(p) = Self::peer(&ses) {
            self.inbox.link_up(p);
        }
    }
}

/// The node's clock.
///
/// Monotonic time ([`Clock::now`]) is tokio's, so a paused tokio clock (the
/// simulation) moves breakers, restart windows and dial timers with it.
/// Wall-clock milliseconds ([`Clock::wall_ms`]) date state entries, expiry
/// and leases; the harness can fix their origin and skew them per node.
#[derive(Clone, Debug)]
pub struct Clock {
    inner: Arc<ClockInner>,
}

#[derive(Debug)]
struct ClockInner {
    /// `None`: the system clock. `Some`: wall time is this epoch (ms) plus
    /// the tokio time elapsed since `origin`.
    fixed: Option<(u64, tokio::time::Instant)>,
    skew_ms: AtomicI64,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl Clock {
    /// The machine's clock.
    pub fn system() -> Clock {
        Clock {
            inner: Arc::new(ClockInner {
                fixed: None,
                skew_ms: AtomicI64::new(0),
            }),
        }
    }

    /// A clock whose wall time starts at `epoch_ms` now and advances with
    /// tokio's (possibly paused) clock: simulated time.
    pub fn simulated(epoch_ms: u64) -> Clock {
        Clock {
            inner: Arc::new(ClockInner {
                fixed: Some((epoch_ms, tokio::time::Instant::now())),
                skew_ms: AtomicI64::new(0),
            }),
        }
    }

    /// Monotonic now (tokio's clock, as a std `Instant`).
    pub fn now(&self) -> std::time::Instant {
        now()
    }

    /// Wall-clock milliseconds since the Unix epoch, skew included.
    pub fn wall_ms(&self) -> u64 {
        let base = match self.inner.fixed {
            None => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            Some((epoch, origin)) => {
                epoch
                    + tokio::time::Instant::now()
                        .duration_since(origin)
                        .as_millis() as u64
            }
        };
        base.saturating_add_signed(self.inner.skew_ms.load(Ordering::Relaxed))
    }

    /// Set this clock's offset from true time (fault injection).
    pub fn set_skew(&self, skew: Duration, ahead: bool) {
        let ms = skew.as_millis().min(i64::MAX as u128) as i64;
        self.inner
            .skew_ms
            .store(if ahead { ms } else { -ms }, Ordering::Relaxed);
    }

    /// Set this clock's offset in ms (positive: ahead), as `[node]
    /// clock_skew_ms` / `PLEXUS_CLOCK_SKEW_MS` give it (fault injection).
    pub fn set_skew_ms(&self, ms: i64) {
        self.inner.skew_ms.store(ms, Ordering::Relaxed);
    }

    /// The current offset in ms (positive: ahead).
    pub fn skew_ms(&self) -> i64 {
        self.inner.skew_ms.load(Ordering::Relaxed)
    }
}

/// Monotonic now from tokio's clock: the real one in production, the paused
/// one under simulation.
pub fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// Time since `t` (taken with [`now`]) on the same clock. (`Instant::elapsed`
/// would read the real clock and mix it with a paused one.)
pub fn since(t: std::time::Instant) -> Duration {
    now().saturating_duration_since(t)
}
