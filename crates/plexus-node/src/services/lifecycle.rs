//! Readiness and drain: what `/v1/ready` answers and how a node stops
//! taking work before it leaves (SIGTERM in a container or a pod).
//!
//! [`readiness`] is a pure function of what the node knows (joined, plugins
//! started, draining), so tests drive it directly. [`Lifecycle`] holds the
//! few atomics the request paths touch: the drain flag and the count of work
//! in flight (API requests that change something, and plugin calls this node
//! runs for anyone), which the drain waits on.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use plexus_membership::{MemberStatus, MemberView};

use crate::net::wire::{NodeAnnounce, PluginStatus};

/// Why a node is not ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("draining: the node is shutting down and takes no new work")]
    Draining,
    #[error("joining: no peer is up yet and the seeds name other nodes ({seeds})")]
    Joining { seeds: String },
    #[error("resolving seeds: the DNS seeds ({names}) have not been looked up yet")]
    Resolving { names: String },
    #[error("starting plugins: {plugins} not running yet")]
    Starting { plugins: String },
}

/// What [`readiness`] looks at.
pub struct ReadyInput<'a> {
    pub me: &'a str,
    pub draining: bool,
    /// The node was ready once: losing peers later does not make it unready
    /// (a partition would otherwise take every node out of its service).
    pub joined_before: bool,
    pub view: &'a [MemberView],
    /// Static seeds other than this node's own address.
    pub other_seeds: &'a [String],
    /// `--seed-dns` names and what the last lookup found: `None` before the
    /// first lookup, else the number of addresses other than this node's.
    pub dns_seeds: &'a [String],
    pub dns_others: Option<usize>,
    /// Plugins this node hosts, and every node's announce (its own included).
    pub hosted: &'a [String],
    pub announces: &'a [NodeAnnounce],
}

/// Ready = not draining, joined (a peer is up, or no seed names another
/// node, so this node is the first), and every hosted plugin running.
pub fn readiness(i: &ReadyInput<'_>) -> Result<(), NotReady> {
    if i.draining {
        return Err(NotReady::Draining);
    }
    let peer_up = i
        .view
        .iter()
        .any(|m| !m.local && m.identity.name != i.me && m.status == MemberStatus::Up);
    if !peer_up && !i.joined_before {
        if !i.dns_seeds.is_empty() && i.dns_others.is_none() {
            return Err(NotReady::Resolving {
                names: i.dns_seeds.join(", "),
            });
        }
        let mut named: Vec<String> = i.other_seeds.to_vec();
        if i.dns_others.unwrap_or(0) > 0 {
            named.extend(i.dns_seeds.iter().cloned());
        }
        if !named.is_empty() {
            return Err(NotReady::Joining {
                seeds: named.join(", "),
            });
        }
    }
    let own = i.announces.iter().find(|a| a.identity.name == i.me);
    let missing: Vec<&str> = i
        .hosted
        .iter()
        .filter(|p| {
            !own.is_some_and(|a| {
                a.plugins
                    .iter()
                    .any(|h| &h.name == *p && h.status == PluginStatus::Running)
            })
        })
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(NotReady::Starting {
            plugins: missing.join(", "),
        });
    }
    Ok(())
}

/// The node's drain flag and in-flight count.
#[derive(Default)]
pub struct Lifecycle {
    draining: AtomicBool,
    joined: AtomicBool,
    in_flight: AtomicUsize,
    idle: tokio::sync::Notify,
    /// Addresses other than this node's that `--seed-dns` found last time.
    dns_others: Mutex<Option<usize>>,
}

/// One piece of work in flight; the drain waits until none is left.
pub struct InFlight<'a>(&'a Lifecycle);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// An owned [`InFlight`] for tasks that outlive a borrow of the context.
pub struct InFlightOwned(std::sync::Arc<crate::ctx::NodeCtx>);

impl Drop for InFlightOwned {
    fn drop(&mut self) {
        let l = &self.0.lifecycle;
        if l.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            l.idle.notify_waiters();
        }
    }
}

impl Lifecycle {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Stop taking new work (`/v1/ready` answers 503 from now on).
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Admit new work: `None` while draining.
    pub fn admit(&self) -> Option<InFlight<'_>> {
        if self.is_draining() {
            return None;
        }
        Some(self.track())
    }

    /// Count work that is already accepted (a plugin call this node runs).
    pub fn track(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self)
    }

    /// [`Lifecycle::track`] for a spawned task.
    pub fn track_owned(ctx: &std::sync::Arc<crate::ctx::NodeCtx>) -> InFlightOwned {
        ctx.lifecycle.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlightOwned(ctx.clone())
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Wait until nothing is in flight or `grace` passed; returns what is
    /// still in flight (0: drained).
    pub async fn wait_idle(&self, grace: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let notified = self.idle.notified();
            let n = self.in_flight();
            if n == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.in_flight();
            }
        }
    }

    pub fn set_dns_others(&self, n: usize) {
        *self.dns_others.lock() = Some(n);
    }

    pub fn dns_others(&self) -> Option<usize> {
        *self.dns_others.lock()
    }

    /// Whether the node was ready once; set by [`Lifecycle::note_ready`].
    pub fn joined_before(&self) -> bool {
        self.joined.load(Ordering::Acquire)
    }

    pub fn note_ready(&self) {
        self.joined.store(true, Ordering::Release);
    }
}

/// The node's readiness now.
pub fn check(ctx: &crate::ctx::NodeCtx) -> Result<(), NotReady> {
    let dir = ctx.directory.load();
    let own = ctx.config.cluster_addr();
    let other_seeds: Vec<String> = ctx
        .config
        .seeds
        .iter()
        .filter(|s| **s != own)
        .cloned()
        .collect();
    // What the placement runs here (in pinned mode: every plugin the node
    // may host).
    let hosted: Vec<String> = ctx.placement_running.read().iter().cloned().collect();
    let r = readiness(&ReadyInput {
        me: ctx.name(),
        draining: ctx.lifecycle.is_draining(),
        joined_before: ctx.lifecycle.joined_before(),
        view: &dir.view,
        other_seeds: &other_seeds,
        dns_seeds: &ctx.config.seed_dns,
        dns_others: ctx.lifecycle.dns_others(),
        hosted: &hosted,
        announces: &dir.announces,
    });
    if r.is_ok() {
        ctx.lifecycle.note_ready();
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::wire::HostedPlugin;
    use plexus_membership::NodeIdentity;

    fn id(n: &str) -> NodeIdentity {
        NodeIdentity {
            name: n.into(),
            cluster_addr: format!("{n}:7101"),
            api_addr: format!("{n}:7201"),
            generation: 1,
        }
    }

    fn member(n: &str, status: MemberStatus, local: bool) -> MemberView {
        MemberView {
            identity: id(n),
            status,
            local,
        }
    }

    fn announce(n: &str, plugins: &[(&str, PluginStatus)]) -> NodeAnnounce {
        NodeAnnounce {
            identity: id(n),
            seq: 1,
            plugins: plugins
                .iter()
                .map(|(p, s)| HostedPlugin {
                    name: (*p).into(),
                    version: "1".into(),
                    status: *s,
                    handler: "sim".into(),
                    agents: vec![],
                    commands: vec![],
                    aliases: vec![],
                    restarts: 0,
                    breaker: "closed".into(),
                    tools: vec![],
                    servers: vec![],
                })
                .collect(),
            labels: Default::default(),
            offers: vec![],
        }
    }

    struct Case {
        draining: bool,
        joined_before: bool,
        view: Vec<MemberView>,
        other_seeds: Vec<String>,
        dns_seeds: Vec<String>,
        dns_others: Option<usize>,
        hosted: Vec<String>,
        announces: Vec<NodeAnnounce>,
    }

    impl Case {
        fn new() -> Case {
            Case {
                draining: false,
                joined_before: false,
                view: vec![member("a", MemberStatus::Up, true)],
                other_seeds: vec![],
                dns_seeds: vec![],
                dns_others: None,
                hosted: vec!["p".into()],
                announces: vec![announce("a", &[("p", PluginStatus::Running)])],
            }
        }
        fn run(&self) -> Result<(), NotReady> {
            readiness(&ReadyInput {
                me: "a",
                draining: self.draining,
                joined_before: self.joined_before,
                view: &self.view,
                other_seeds: &self.other_seeds,
                dns_seeds: &self.dns_seeds,
                dns_others: self.dns_others,
                hosted: &self.hosted,
                announces: &self.announces,
            })
        }
    }

    #[test]
    fn a_first_node_with_its_plugins_running_is_ready() {
        assert_eq!(Case::new().run(), Ok(()));
    }

    #[test]
    fn draining_is_never_ready() {
        let mut c = Case::new();
        c.draining = true;
        assert_eq!(c.run(), Err(NotReady::Draining));
    }

    #[test]
    fn a_node_whose_seeds_name_others_waits_for_a_peer() {
        let mut c = Case::new();
        c.other_seeds = vec!["b:7101".into()];
        assert!(matches!(c.run(), Err(NotReady::Joining { .. })));
        c.view.push(member("b", MemberStatus::Down, false));
        assert!(matches!(c.run(), Err(NotReady::Joining { .. })));
        c.view[1].status = MemberStatus::Up;
        assert_eq!(c.run(), Ok(()));
        // Once ready, a lost peer does not make it unready.
        c.view[1].status = MemberStatus::Down;
        c.joined_before = true;
        assert_eq!(c.run(), Ok(()));
    }

    #[test]
    fn dns_seeds_must_be_looked_up_and_count_only_other_addresses() {
        let mut c = Case::new();
        c.dns_seeds = vec!["plexus:7101".into()];
        assert!(matches!(c.run(), Err(NotReady::Resolving { .. })));
        c.dns_others = Some(0);
        assert_eq!(c.run(), Ok(()), "only its own address: the first node");
        c.dns_others = Some(2);
        assert!(matches!(c.run(), Err(NotReady::Joining { .. })));
    }

    #[test]
    fn plugins_must_be_running_here() {
        let mut c = Case::new();
        c.announces = vec![announce("a", &[("p", PluginStatus::Restarting)])];
        assert!(matches!(c.run(), Err(NotReady::Starting { plugins }) if plugins == "p"));
        c.announces = vec![announce("b", &[("p", PluginStatus::Running)])];
        assert!(
            matches!(c.run(), Err(NotReady::Starting { .. })),
            "another node's copy does not count"
        );
        c.announces = vec![];
        assert!(matches!(c.run(), Err(NotReady::Starting { .. })));
        c.hosted = vec![];
        assert_eq!(c.run(), Ok(()));
    }

    #[tokio::test]
    async fn the_drain_waits_for_work_in_flight_up_to_the_grace() {
        let l = std::sync::Arc::new(Lifecycle::default());
        assert_eq!(l.wait_idle(Duration::ZERO).await, 0);
        let g = l.admit().expect("admitted before the drain");
        l.begin_drain();
        assert!(l.admit().is_none(), "no new work while draining");
        let t = l.track();
        // A grace already over: what is still in flight.
        assert_eq!(l.wait_idle(Duration::ZERO).await, 2);
        drop(t);
        let l2 = l.clone();
        let waiter = tokio::spawn(async move { l2.wait_idle(Duration::from_secs(600)).await });
        tokio::task::yield_now().await;
        drop(g);
        // Woken by the last piece of work ending, long before the grace.
        assert_eq!(waiter.await.unwrap(), 0);
    }
}
