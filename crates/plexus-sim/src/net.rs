//! The simulated network: every frame one node sends another passes through
//! here, where the harness decides whether it is lost, how late it arrives
//! and whether a partition swallows it.
//!
//! Modelled on turmoil's in-memory network: links are pairs of nodes, frames
//! wait in one queue ordered by delivery time (then by send order), and one
//! pump task delivers them on the simulated clock. Each directed link draws
//! from its own seeded random stream, so what happens on one link does not
//! shift the random choices of the others.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use plexus_node::testkit::{ClusterLinks, LinkError, LinkInbox};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::scenario::NetworkSpec;
use crate::trace::Trace;

type Pair = (String, String);

/// Counters over a run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct NetStats {
    pub sent: u64,
    pub delivered: u64,
    pub lost: u64,
    pub partitioned: u64,
    /// Dropped because the link went down (crash) while they were in flight.
    pub stale: u64,
    pub reordered: u64,
}

struct Slot {
    addr: String,
    alive: bool,
    incarnation: u64,
}

enum Item {
    Frame {
        from: String,
        to: String,
        epoch: u64,
        bytes: Vec<u8>,
    },
    LinkUp {
        a: String,
        b: String,
        epoch: u64,
    },
}

struct Queued {
    at: Instant,
    seq: u64,
    item: Item,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

struct State {
    seed: u64,
    nodes: BTreeMap<String, Slot>,
    /// Undirected links that are up (a < b) with their epoch.
    links: BTreeMap<Pair, u64>,
    next_epoch: u64,
    /// Directed pairs whose frames vanish.
    blocked: BTreeSet<Pair>,
    base: NetworkSpec,
    /// Per directed pair overrides (fault `network` with `between`).
    overrides: BTreeMap<Pair, NetworkSpec>,
    rngs: BTreeMap<Pair, StdRng>,
    /// Latest delivery time per directed pair (FIFO unless reordering).
    last_at: BTreeMap<Pair, Instant>,
    queue: BinaryHeap<Reverse<Queued>>,
    seq: u64,
    stats: NetStats,
    /// Each live node's inbox (registered by its Membership actor).
    inboxes: BTreeMap<String, Arc<dyn LinkInbox>>,
}

/// The network between the simulated nodes.
pub struct SimNet {
    st: Mutex<State>,
    wake: Notify,
    trace: Arc<Trace>,
}

fn undirected(a: &str, b: &str) -> Pair {
    if a < b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

impl SimNet {
    pub fn new(seed: u64, base: NetworkSpec, trace: Arc<Trace>) -> Arc<SimNet> {
        Arc::new(SimNet {
            st: Mutex::new(State {
                seed,
                nodes: BTreeMap::new(),
                links: BTreeMap::new(),
                next_epoch: 1,
                blocked: BTreeSet::new(),
                base,
                overrides: BTreeMap::new(),
                rngs: BTreeMap::new(),
                last_at: BTreeMap::new(),
                queue: BinaryHeap::new(),
                seq: 0,
                stats: NetStats::default(),
                inboxes: BTreeMap::new(),
            }),
            wake: Notify::new(),
            trace,
        })
    }

    /// Register a node (down until [`SimNet::node_up`]).
    pub fn add_node(&self, name: &str, addr: &str) {
        self.st.lock().nodes.insert(
            name.to_string(),
            Slot {
                addr: addr.to_string(),
                alive: false,
                incarnation: 0,
            },
        );
    }

    /// A node (re)starts: returns the links object of this incarnation.
    pub fn node_up(self: &Arc<Self>, name: &str) -> Arc<SimLinks> {
        let mut st = self.st.lock();
        let slot = st.nodes.get_mut(name).expect("node registered");
        slot.alive = true;
        slot.incarnation += 1;
        Arc::new(SimLinks {
            net: self.clone(),
            incarnation: slot.incarnation,
        })
    }

    /// A node dies: its links drop (peers see the socket close) and frames
    /// to or from it in flight are lost.
    pub fn node_down(&self, name: &str) {
        let peers: Vec<(String, Option<Arc<dyn LinkInbox>>)> = {
            let mut st = self.st.lock();
            if let Some(s) = st.nodes.get_mut(name) {
                s.alive = false;
            }
            st.inboxes.remove(name);
            let gone: Vec<Pair> = st
                .links
                .keys()
                .filter(|(a, b)| a == name || b == name)
                .cloned()
                .collect();
            gone.iter()
                .map(|p| {
                    st.links.remove(p);
                    let peer = if p.0 == name {
                        p.1.clone()
                    } else {
                        p.0.clone()
                    };
                    let inbox = st.inboxes.get(&peer).cloned();
                    (peer, inbox)
                })
                .collect()
        };
        for (_, inbox) in peers {
            if let Some(i) = inbox {
                i.link_down(name.to_string());
            }
        }
    }

    /// Block frames from `from` to `to`.
    pub fn block(&self, from: &str, to: &str) {
        self.st
            .lock()
            .blocked
            .insert((from.to_string(), to.to_string()));
    }

    /// Remove every partition.
    pub fn heal(&self) {
        self.st.lock().blocked.clear();
    }

    /// Remove the given blocks.
    pub fn unblock(&self, pairs: &[Pair]) {
        let mut st = self.st.lock();
        for p in pairs {
            st.blocked.remove(p);
        }
    }

    /// The link settings now (base, or one directed pair's).
    pub fn spec(&self, between: Option<(&str, &str)>) -> NetworkSpec {
        let st = self.st.lock();
        match between {
            None => st.base.clone(),
            Some((a, b)) => st
                .overrides
                .get(&(a.to_string(), b.to_string()))
                .cloned()
                .unwrap_or_else(|| st.base.clone()),
        }
    }

    /// Change the base link settings, or one pair's (both directions).
    pub fn set_spec(&self, between: Option<(&str, &str)>, spec: NetworkSpec) {
        let mut st = self.st.lock();
        match between {
            None => st.base = spec,
            Some((a, b)) => {
                st.overrides
                    .insert((a.to_string(), b.to_string()), spec.clone());
                st.overrides.insert((b.to_string(), a.to_string()), spec);
            }
        }
    }

    /// Drop per-pair overrides.
    pub fn clear_overrides(&self) {
        self.st.lock().overrides.clear();
    }

    pub fn stats(&self) -> NetStats {
        self.st.lock().stats.clone()
    }

    /// Frames waiting for delivery.
    pub fn in_flight(&self) -> usize {
        self.st.lock().queue.len()
    }

    fn alive(st: &State, name: &str, incarnation: Option<u64>) -> bool {
        st.nodes
            .get(name)
            .is_some_and(|s| s.alive && incarnation.is_none_or(|i| i == s.incarnation))
    }

    fn enqueue(&self, st: &mut State, at: Instant, item: Item) {
        st.seq += 1;
        let seq = st.seq;
        st.queue.push(Reverse(Queued { at, seq, item }));
        self.wake.notify_one();
    }

    fn send(
        &self,
        incarnation: u64,
        from: &str,
        to: &str,
        bytes: Vec<u8>,
    ) -> Result<(), LinkError> {
        let mut st = self.st.lock();
        if !Self::alive(&st, from, Some(incarnation)) {
            // A task of a crashed incarnation: its process is gone.
            return Err(LinkError::NoLink(to.to_string()));
        }
        let Some(&epoch) = st.links.get(&undirected(from, to)) else {
            return Err(LinkError::NoLink(to.to_string()));
        };
        st.stats.sent += 1;
        let pair = (from.to_string(), to.to_string());
        let t = self.trace.elapsed_ms();
        if st.blocked.contains(&pair) {
            st.stats.partitioned += 1;
            self.trace.net(t, from, to, "cut");
            return Ok(());
        }
        let spec = st
            .overrides
            .get(&pair)
            .cloned()
            .unwrap_or_else(|| st.base.clone());
        let seed = st.seed;
        let rng = st.rngs.entry(pair.clone()).or_insert_with(|| {
            StdRng::seed_from_u64(seed ^ plexus_handler::fnv(format!("{from}>{to}").as_bytes()))
        });
        let lost = spec.loss > 0.0 && rng.gen_bool(spec.loss);
        let jitter = if spec.jitter_ms > 0 {
            rng.gen_range(0..=spec.jitter_ms)
        } else {
            0
        };
        if lost {
            st.stats.lost += 1;
            self.trace.net(t, from, to, "lost");
            return Ok(());
        }
        let mut at = Instant::now() + Duration::from_millis(spec.delay_ms + jitter);
        let last = st.last_at.get(&pair).copied();
        if let Some(last) = last {
            if at < last {
                if spec.reorder {
                    st.stats.reordered += 1;
                } else {
                    at = last;
                }
            }
        }
        if last.is_none_or(|l| at > l) {
            st.last_at.insert(pair, at);
        }
        self.trace.net(t, from, to, "sent");
        self.enqueue(
            &mut st,
            at,
            Item::Frame {
                from: from.to_string(),
                to: to.to_string(),
                epoch,
                bytes,
            },
        );
        Ok(())
    }

    fn dial(&self, incarnation: u64, me: &str, addr: &str) {
        let mut st = self.st.lock();
        if !Self::alive(&st, me, Some(incarnation)) {
            return;
        }
        let Some(peer) = st
            .nodes
            .iter()
            .find(|(_, s)| s.addr == addr)
            .map(|(n, _)| n.clone())
        else {
            return;
        };
        if peer == me || !Self::alive(&st, &peer, None) {
            return;
        }
        // A handshake needs both directions.
        if st.blocked.contains(&(me.to_string(), peer.clone()))
            || st.blocked.contains(&(peer.clone(), me.to_string()))
        {
            return;
        }
        let pair = undirected(me, &peer);
        if st.links.contains_key(&pair) {
            return;
        }
        let epoch = st.next_epoch;
        st.next_epoch += 1;
        st.links.insert(pair.clone(), epoch);
        self.trace.event(format!("link up {}-{}", pair.0, pair.1));
        // The session is ready after a handshake round trip.
        let rtt = Duration::from_millis(2 * st.base.delay_ms);
        self.enqueue(
            &mut st,
            Instant::now() + rtt,
            Item::LinkUp {
                a: pair.0,
                b: pair.1,
                epoch,
            },
        );
    }

    fn linked(&self, me: &str) -> Vec<String> {
        let st = self.st.lock();
        st.links
            .keys()
            .filter_map(|(a, b)| {
                if a == me {
                    Some(b.clone())
                } else if b == me {
                    Some(a.clone())
                } else {
                    None
                }
            })
            .collect()
    }

    /// Deliver frames when they are due. Runs until the runtime ends.
    pub async fn pump(self: Arc<Self>) {
        loop {
            let next = {
                let mut st = self.st.lock();
                let now = Instant::now();
                let due = st.queue.peek().map(|Reverse(q)| q.at);
                match due {
                    Some(at) if at <= now => {
                        let Reverse(q) = st.queue.pop().expect("peeked");
                        self.deliver(&mut st, q.item);
                        continue;
                    }
                    other => other,
                }
            };
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = self.wake.notified() => {}
                    }
                }
                None => self.wake.notified().await,
            }
        }
    }

    fn deliver(&self, st: &mut State, item: Item) {
        match item {
            Item::Frame {
                from,
                to,
                epoch,
                bytes,
            } => {
                let live = st.links.get(&undirected(&from, &to)) == Some(&epoch)
                    && Self::alive(st, &to, None);
                let inbox = if live {
                    st.inboxes.get(&to).cloned()
                } else {
                    None
                };
                match inbox {
                    Some(i) if i.frame(bytes) => st.stats.delivered += 1,
                    _ => st.stats.stale += 1,
                }
            }
            Item::LinkUp { a, b, epoch } => {
                if st.links.get(&(a.clone(), b.clone())) == Some(&epoch) {
                    if let Some(i) = st.inboxes.get(&a) {
                        i.link_up(b.clone());
                    }
                    if let Some(i) = st.inboxes.get(&b) {
                        i.link_up(a);
                    }
                }
            }
        }
    }
}

/// One node incarnation's view of the network (what `plexus-node` calls its
/// [`ClusterLinks`]).
pub struct SimLinks {
    net: Arc<SimNet>,
    incarnation: u64,
}

impl ClusterLinks for SimLinks {
    fn send(&self, from: &str, to: &str, frame: Vec<u8>) -> Result<(), LinkError> {
        self.net.send(self.incarnation, from, to, frame)
    }

    fn linked(&self, me: &str) -> Vec<String> {
        self.net.linked(me)
    }

    fn dial(&self, me: &str, addr: &str) {
        self.net.dial(self.incarnation, me, addr);
    }

    fn watch(&self, me: &str, inbox: Arc<dyn LinkInbox>) {
        let mut st = self.net.st.lock();
        // Only this incarnation's: a dead one's actors may still be stopping.
        if SimNet::alive(&st, me, Some(self.incarnation)) {
            st.inboxes.insert(me.to_string(), inbox);
        }
    }

    fn unwatch(&self, me: &str) {
        let mut st = self.net.st.lock();
        if SimNet::alive(&st, me, Some(self.incarnation)) {
            st.inboxes.remove(me);
        }
    }
}
