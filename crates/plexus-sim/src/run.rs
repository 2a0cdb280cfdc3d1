//! One simulated run: start the nodes, play the workload and the fault
//! schedule on the simulated clock, heal, let the cluster settle, judge the
//! invariants, tear everything down.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use plexus_catalog::manifest::HandlerSpec;
use plexus_catalog::Catalog;
use plexus_node::config::{FileConfig, NodeSection};
use plexus_node::testkit::{
    Clock, MembershipMsg, ReadReq, StateMsg, WorkflowsMsg, WriteOp, WriteReq,
};
use plexus_node::{CallSpec, RawJson, Target};
use plexus_node::{InProcess, NodeHandle};
use plexus_workflow::{RunStatus, Workflow};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::check::{self, Verdict};
use crate::net::{NetStats, SimNet};
use crate::observe::{BreakerTotals, Observations};
use crate::scenario::{Fault, FaultKind, Loaded, NetworkSpec};
use crate::trace::Trace;

/// Wall-clock origin of every simulated clock (2026-01-01T00:00:00Z), so
/// that runs do not depend on today's date.
pub const EPOCH_MS: u64 = 1_767_225_600_000;

/// The plugin the harness writes state as.
pub const CLIENT: &str = "sim-client";

/// Why a run could not be carried out (as opposed to an invariant failing).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot build the simulation runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot create a temporary directory: {0}")]
    TempDir(std::io::Error),
    #[error("node {node}: {message}")]
    Node { node: String, message: String },
    #[error("actors of a previous run are still registered: {0}")]
    Leftovers(String),
}

/// What one run found.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub scenario: String,
    pub seed: u64,
    pub passed: bool,
    pub verdicts: Vec<Verdict>,
    pub schedule_hash: String,
    pub trace_hash: String,
    /// Simulated time the run covered (faults + settling), ms.
    pub simulated_ms: u64,
    /// Wall-clock time it took, ms.
    pub wall_ms: u64,
    pub net: NetStats,
    pub breakers: BreakerTotals,
    pub requests: Counts,
    pub writes: Counts,
    pub sagas: SagaCounts,
    /// Leases granted.
    pub leases: u64,
    pub crashes: u32,
    pub restarts: u32,
    /// Harness events (faults, link changes, outcomes), in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    pub unanswered: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SagaCounts {
    pub started: u64,
    pub completed: u64,
    pub compensated: u64,
    pub other: u64,
}

/// A request the harness sent, and how it ended.
#[derive(Debug, Clone)]
pub struct ReqRecord {
    pub n: u64,
    pub entry: String,
    pub plugin: String,
    pub key: Option<String>,
    /// `Ok("{node} {served_by}")`, `Err(problem kind)`, `None`: no answer yet.
    pub outcome: Option<Result<String, String>>,
}

/// A state write the harness sent, and how it ended.
///
/// Registers are last-writer-wins by stamp, whose time is the entry node's
/// clock, raised to 1 ms past the stamp that node holds for the key when
/// that is later. The record bounds the stamp from both sides so that
/// `check::replicas_converge` can tell a value older than an acknowledged
/// write.
#[derive(Debug, Clone)]
pub struct WriteRecord {
    pub n: u64,
    pub key: String,
    pub entry: String,
    /// A counter increment by 1; else a register put of `{"n", "by": entry}`.
    pub incr: bool,
    /// Simulated ms when it was sent and answered.
    pub sent_at: u64,
    pub answered_at: Option<u64>,
    /// Its stamp's time is at least this (the entry node's clock while it
    /// was in flight; 0 when that clock's skew changed twice meanwhile).
    pub stamp_floor: u64,
    /// When answered: the furthest any node's clock had reached by then.
    /// Its stamp's time is at most this plus one per write to the key sent
    /// before the answer (each can raise the next stamp by 1 ms).
    pub clock_ceiling: Option<u64>,
    /// `None`: no answer yet.
    pub outcome: Option<Result<(), String>>,
}

impl WriteRecord {
    pub fn acked(&self) -> bool {
        matches!(self.outcome, Some(Ok(())))
    }
}

/// A saga the harness started.
#[derive(Debug, Clone)]
pub struct SagaRecord {
    pub n: u64,
    pub id: String,
    pub node: String,
    pub steps: usize,
}

struct NodeSlot {
    name: String,
    addr: String,
    clock: Clock,
    /// How often a fault changed `clock`'s skew.
    skew_changes: Arc<AtomicU64>,
    handle: Option<NodeHandle>,
    starts: u64,
}

#[derive(Debug, Clone)]
enum Action {
    FaultStart(usize),
    FaultEnd(usize),
    Restart(String),
    Request(u64),
    Write(u64),
    Saga(u64),
    Lease(u64),
}

/// Run `loaded` once with `seed` (on its own paused single-threaded runtime).
pub fn run(loaded: &Loaded, seed: u64, keep_events: bool) -> Result<RunReport, RunError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .map_err(RunError::Runtime)?;
    let wall = std::time::Instant::now();
    let r = rt.block_on(async {
        let mut h = Harness::new(loaded, seed)?;
        let r = h.run().await;
        h.teardown().await;
        r
    });
    drop(rt);
    let mut r = r?;
    r.wall_ms = wall.elapsed().as_millis() as u64;
    if !keep_events {
        r.events.clear();
    }
    Ok(r)
}

struct Harness<'a> {
    loaded: &'a Loaded,
    seed: u64,
    rng: StdRng,
    trace: Arc<Trace>,
    net: Arc<SimNet>,
    dir: tempfile::TempDir,
    nodes: BTreeMap<String, NodeSlot>,
    catalog: Catalog,
    observer: Arc<Observations>,
    requests: Arc<Mutex<Vec<ReqRecord>>>,
    writes: Arc<Mutex<Vec<WriteRecord>>>,
    sagas: Arc<Mutex<Vec<SagaRecord>>>,
    leases: Arc<Mutex<Vec<plexus_state::Lease>>>,
    saga_workflow: Option<Workflow>,
    /// Active plugin faults: plugin → (fail rate, extra delay).
    plugin_faults: BTreeMap<String, (f64, u64)>,
    /// Blocks each partition fault added (removed at its end).
    fault_blocks: BTreeMap<usize, Vec<(String, String)>>,
    /// Link settings each network fault replaced.
    fault_saved: BTreeMap<usize, NetworkSpec>,
    /// Resolved `"*"` nodes of each fault.
    resolved: BTreeMap<usize, String>,
    /// The largest clock skew (ms, ahead) any node has had so far, or 0.
    max_skew: Arc<AtomicI64>,
    crashes: u32,
    restarts: u32,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pump: Option<tokio::task::JoinHandle<()>>,
    agenda: BinaryHeap<Reverse<(u64, u64)>>,
    actions: BTreeMap<u64, Action>,
    next_seq: u64,
}

impl<'a> Harness<'a> {
    fn new(loaded: &'a Loaded, seed: u64) -> Result<Harness<'a>, RunError> {
        let sc = &loaded.scenario;
        let trace = Arc::new(Trace::new());
        let net = SimNet::new(seed, sc.network.clone(), trace.clone());
        // Data directories on tmpfs when there is one: the nodes fsync every
        // acknowledged write, which is what makes a run slow on a disk.
        let mut b = tempfile::Builder::new();
        b.prefix("plexus-sim-");
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            b.tempdir_in(shm).or_else(|_| b.tempdir())
        } else {
            b.tempdir()
        }
        .map_err(RunError::TempDir)?;
        // Each simulated plugin's calls that take effect, whatever node
        // runs them (the exactly-once witness, `check::witness`).
        let witness = dir.path().join("witness");
        std::fs::create_dir_all(&witness).map_err(RunError::TempDir)?;
        // The plugins' simulated behaviour, seeded by the run's seed.
        let mut catalog = crate::catalog::base().clone();
        for p in &mut catalog.plugins {
            // Only simulated plugins run here (the catalog is the built-in one).
            let HandlerSpec::Sim(spec) = &mut p.manifest.handler else {
                continue;
            };
            spec.seed = seed ^ plexus_handler::fnv(p.name.as_bytes());
            spec.witness = Some(witness.join(format!("{}.jsonl", p.name)));
            if let Some(o) = sc.plugins.iter().find(|o| o.name == p.name) {
                if let Some(v) = o.latency_ms {
                    spec.latency_ms = v;
                }
                if let Some(v) = o.jitter_ms {
                    spec.jitter_ms = v;
                }
                if let Some(v) = o.failure_rate {
                    spec.failure_rate = v;
                }
                spec.allow_fault_injection |= o.allow_fault_injection;
            }
        }
        let mut nodes = BTreeMap::new();
        for (i, n) in sc.nodes.iter().enumerate() {
            let addr = format!("10.77.0.{}:7000", i + 1);
            net.add_node(&n.name, &addr);
            nodes.insert(
                n.name.clone(),
                NodeSlot {
                    name: n.name.clone(),
                    addr,
                    clock: Clock::simulated(EPOCH_MS),
                    skew_changes: Arc::default(),
                    handle: None,
                    starts: 0,
                },
            );
        }
        let saga_workflow = match &loaded.saga_source {
            Some(src) => Some(Workflow::parse(src).map_err(|e| RunError::Node {
                node: "-".into(),
                message: format!("saga workflow: {e}"),
            })?),
            None => None,
        };
        Ok(Harness {
            loaded,
            seed,
            rng: StdRng::seed_from_u64(seed),
            trace,
            net,
            dir,
            nodes,
            catalog,
            observer: Arc::new(Observations::default()),
            requests: Arc::default(),
            writes: Arc::default(),
            sagas: Arc::default(),
            leases: Arc::default(),
            saga_workflow,
            plugin_faults: BTreeMap::new(),
            fault_blocks: BTreeMap::new(),
            fault_saved: BTreeMap::new(),
            resolved: BTreeMap::new(),
            max_skew: Arc::default(),
            crashes: 0,
            restarts: 0,
            tasks: vec![],
            pump: None,
            agenda: BinaryHeap::new(),
            actions: BTreeMap::new(),
            next_seq: 0,
        })
    }

    fn data_dir(&self, node: &str) -> PathBuf {
        self.dir.path().join(node)
    }

    fn witness_dir(&self) -> PathBuf {
        self.dir.path().join("witness")
    }

    async fn start_node(&mut self, name: &str) -> Result<(), RunError> {
        let sc = &self.loaded.scenario;
        let spec = sc
            .nodes
            .iter()
            .find(|n| n.name == name)
            .expect("scenario node");
        let seeds: Vec<String> = self
            .nodes
            .values()
            .filter(|s| s.name != name)
            .map(|s| s.addr.clone())
            .collect();
        let data_dir = self.data_dir(name);
        let slot = self.nodes.get_mut(name).expect("slot");
        let err = |m: String| RunError::Node {
            node: name.to_string(),
            message: m,
        };
        let host = slot.addr.split(':').next().unwrap_or_default().to_string();
        let fc = FileConfig {
            node: NodeSection {
                name: Some(name.to_string()),
                listen: Some(slot.addr.clone()),
                api: Some(format!("{host}:7100")),
                advertise: Some(host),
                seeds,
                cookie: Some("sim".into()),
                data_dir: Some(data_dir),
                plugins: Some(spec.plugins.clone()),
                catalog: vec![],
                no_default_plugins: false,
                ..Default::default()
            },
            membership: sc.membership.clone(),
            limits: sc.limits.clone(),
            state: sc.state.clone(),
            // An in-process node serves no HTTP API at all: nothing is open.
            api: plexus_node::config::ApiSection {
                insecure_open: true,
                ..Default::default()
            },
            ..Default::default()
        };
        let config = fc.finish().map_err(|e| err(e.to_string()))?;
        slot.starts += 1;
        let links = self.net.node_up(name);
        let wiring = InProcess {
            links,
            clock: slot.clock.clone(),
            rng_seed: self.seed ^ plexus_handler::fnv(format!("{name}/{}", slot.starts).as_bytes()),
            observer: Some(self.observer.clone()),
        };
        let h = plexus_node::start_in_process(config, self.catalog.clone(), wiring)
            .await
            .map_err(|e| err(e.to_string()))?;
        slot.handle = Some(h);
        Ok(())
    }

    /// Kill (or stop) a node and wait until its actors are gone.
    async fn stop_node(&mut self, name: &str, graceful: bool) {
        let Some(slot) = self.nodes.get_mut(name) else {
            return;
        };
        let Some(h) = slot.handle.take() else {
            return;
        };
        if graceful {
            h.shutdown().await;
            self.net.node_down(name);
        } else {
            self.net.node_down(name);
            h.crash().await;
        }
        wait_unregistered(name).await;
    }

    fn live(&self) -> Vec<String> {
        self.nodes
            .values()
            .filter(|s| s.handle.is_some())
            .map(|s| s.name.clone())
            .collect()
    }

    /// The context of a running node.
    fn ctx_of(&self, name: &str) -> Option<std::sync::Arc<plexus_node::NodeCtx>> {
        self.nodes
            .get(name)
            .and_then(|s| s.handle.as_ref())
            .map(|h| h.ctx.clone())
    }

    fn pick_live(&mut self) -> Option<String> {
        let live = self.live();
        if live.is_empty() {
            None
        } else {
            Some(live[self.rng.gen_range(0..live.len())].clone())
        }
    }

    fn resolve_node(&mut self, i: usize, n: &str) -> String {
        if n != "*" {
            return n.to_string();
        }
        if let Some(r) = self.resolved.get(&i) {
            return r.clone();
        }
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        let r = names[self.rng.gen_range(0..names.len())].clone();
        self.resolved.insert(i, r.clone());
        r
    }

    fn schedule(&mut self, at: u64, action: Action) {
        self.next_seq += 1;
        self.agenda.push(Reverse((at, self.next_seq)));
        self.actions.insert(self.next_seq, action);
    }

    /// Every timed action of the run, from the seed.
    fn plan(&mut self) {
        let sc = &self.loaded.scenario;
        let mut planned: Vec<(u64, Action)> = vec![];
        for (i, f) in sc.faults.iter().enumerate() {
            let j = if f.jitter_ms > 0 {
                self.rng.gen_range(0..=f.jitter_ms)
            } else {
                0
            };
            planned.push((f.at_ms + j, Action::FaultStart(i)));
            if let Some(u) = f.until_ms {
                planned.push((u.max(f.at_ms + j + 1), Action::FaultEnd(i)));
            }
        }
        let w = &sc.workload;
        let duration = sc.duration_ms;
        let mut ticks = |every: u64, mk: fn(u64) -> Action, rng: &mut StdRng| {
            let mut t = 0u64;
            let mut n = 0u64;
            loop {
                t += ((every as f64) * rng.gen_range(0.5..1.5)).max(1.0) as u64;
                if t >= duration {
                    break;
                }
                n += 1;
                planned.push((t, mk(n)));
            }
        };
        if let Some(r) = &w.requests {
            ticks(r.every_ms, Action::Request, &mut self.rng);
        }
        if let Some(s) = &w.state {
            ticks(s.every_ms, Action::Write, &mut self.rng);
        }
        if let Some(s) = &w.sagas {
            ticks(s.every_ms, Action::Saga, &mut self.rng);
        }
        if let Some(l) = &w.leases {
            ticks(l.every_ms, Action::Lease, &mut self.rng);
        }
        for (t, a) in planned {
            self.schedule(t, a);
        }
    }

    async fn run(&mut self) -> Result<RunReport, RunError> {
        for name in self.nodes.keys() {
            if let Some(n) = ractor::registry::registered()
                .iter()
                .find(|r| r.starts_with(&format!("{name}:")))
            {
                return Err(RunError::Leftovers(n.clone()));
            }
        }
        self.pump = Some(tokio::spawn(self.net.clone().pump()));
        let start = Instant::now();
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for n in &names {
            self.start_node(n).await?;
        }
        self.trace.schedule(format!("started {}", names.join(",")));
        self.plan();
        let sc = &self.loaded.scenario;
        let duration = sc.duration_ms;
        while let Some(Reverse((at, seq))) = self.agenda.pop() {
            if at > duration {
                // Restarts scheduled past the end happen at heal.
                continue;
            }
            tokio::time::sleep_until(start + Duration::from_millis(at)).await;
            let Some(action) = self.actions.remove(&seq) else {
                continue;
            };
            self.act(action).await?;
        }
        tokio::time::sleep_until(start + Duration::from_millis(duration)).await;
        self.heal().await?;
        let settled_at = Instant::now();
        let deadline = settled_at + Duration::from_millis(sc.settle_ms);
        let verdicts = loop {
            let v = self.judge(false).await;
            if v.iter().all(|v| v.ok) || Instant::now() >= deadline {
                break self.judge(true).await;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let settle = settled_at.elapsed().as_millis() as u64;
        self.trace.event(format!("settled after {settle} ms"));
        for v in &verdicts {
            self.trace.event(format!(
                "{} {}",
                v.invariant,
                if v.ok { "ok" } else { "FAILED" }
            ));
        }
        Ok(self.report(verdicts, start.elapsed().as_millis() as u64))
    }
}

impl Harness<'_> {
    fn now_ms(&self) -> u64 {
        self.trace.elapsed_ms()
    }

    async fn act(&mut self, a: Action) -> Result<(), RunError> {
        match a {
            Action::FaultStart(i) => self.fault_start(i).await,
            Action::FaultEnd(i) => self.fault_end(i).await,
            Action::Restart(n) => self.restart(&n).await,
            Action::Request(n) => {
                self.request(n);
                Ok(())
            }
            Action::Write(n) => {
                self.write(n);
                Ok(())
            }
            Action::Saga(n) => {
                self.saga(n);
                Ok(())
            }
            Action::Lease(n) => {
                self.lease(n);
                Ok(())
            }
        }
    }

    async fn restart(&mut self, n: &str) -> Result<(), RunError> {
        if self.nodes.get(n).is_some_and(|s| s.handle.is_none()) {
            self.trace.schedule(format!("restart {n}"));
            self.start_node(n).await?;
            self.restarts += 1;
        }
        Ok(())
    }

    fn fault(&self, i: usize) -> &Fault {
        &self.loaded.scenario.faults[i]
    }

    async fn fault_start(&mut self, i: usize) -> Result<(), RunError> {
        let kind = self.fault(i).kind.clone();
        let until = self.fault(i).until_ms;
        match kind {
            FaultKind::Partition { groups, node } => {
                let mut groups: Vec<Vec<String>> = groups
                    .iter()
                    .map(|g| g.iter().map(|n| self.resolve_node(i, n)).collect())
                    .collect();
                if let Some(n) = node {
                    groups.push(vec![self.resolve_node(i, &n)]);
                }
                let listed: BTreeSet<String> = groups.iter().flatten().cloned().collect();
                let rest: Vec<String> = self
                    .nodes
                    .keys()
                    .filter(|n| !listed.contains(*n))
                    .cloned()
                    .collect();
                if !rest.is_empty() {
                    groups.push(rest);
                }
                let mut blocks = vec![];
                for (gi, g) in groups.iter().enumerate() {
                    for (hi, h) in groups.iter().enumerate() {
                        if gi == hi {
                            continue;
                        }
                        for a in g {
                            for b in h {
                                self.net.block(a, b);
                                blocks.push((a.clone(), b.clone()));
                            }
                        }
                    }
                }
                let desc: Vec<String> = groups.iter().map(|g| g.join(",")).collect();
                self.trace
                    .schedule(format!("partition {}", desc.join(" | ")));
                self.fault_blocks.insert(i, blocks);
            }
            FaultKind::OneWay { from, to } => {
                let (from, to) = (self.resolve_node(i, &from), self.resolve_node(i, &to));
                self.net.block(&from, &to);
                self.trace.schedule(format!("one-way cut {from} -> {to}"));
                self.fault_blocks.insert(i, vec![(from, to)]);
            }
            FaultKind::Crash {
                node,
                restart_after_ms,
            }
            | FaultKind::Stop {
                node,
                restart_after_ms,
            } => {
                let graceful = matches!(self.fault(i).kind, FaultKind::Stop { .. });
                let node = self.resolve_node(i, &node);
                if self.nodes.get(&node).is_some_and(|s| s.handle.is_some()) {
                    self.trace.schedule(format!(
                        "{} {node}",
                        if graceful { "stop" } else { "crash" }
                    ));
                    self.stop_node(&node, graceful).await;
                    self.crashes += 1;
                    let back = restart_after_ms.map(|d| self.now_ms() + d).or(until);
                    if let Some(t) = back {
                        self.schedule(t, Action::Restart(node));
                    }
                }
            }
            FaultKind::Network {
                loss,
                delay_ms,
                jitter_ms,
                reorder,
                between,
            } => {
                let pair = between.as_ref().map(|[a, b]| (a.as_str(), b.as_str()));
                let old = self.net.spec(pair);
                let mut new = old.clone();
                if let Some(v) = loss {
                    new.loss = v;
                }
                if let Some(v) = delay_ms {
                    new.delay_ms = v;
                }
                if let Some(v) = jitter_ms {
                    new.jitter_ms = v;
                }
                if let Some(v) = reorder {
                    new.reorder = v;
                }
                self.trace.schedule(format!(
                    "network {} loss={} delay={}+{} reorder={}",
                    between
                        .as_ref()
                        .map(|[a, b]| format!("{a}-{b}"))
                        .unwrap_or_else(|| "all".into()),
                    new.loss,
                    new.delay_ms,
                    new.jitter_ms,
                    new.reorder
                ));
                self.net.set_spec(pair, new);
                self.fault_saved.insert(i, old);
            }
            FaultKind::ClockSkew { node, skew_ms } => {
                let node = self.resolve_node(i, &node);
                if let Some(s) = self.nodes.get(&node) {
                    s.clock
                        .set_skew(Duration::from_millis(skew_ms.unsigned_abs()), skew_ms >= 0);
                    s.skew_changes.fetch_add(1, Ordering::Relaxed);
                }
                self.max_skew.fetch_max(skew_ms, Ordering::Relaxed);
                self.trace
                    .schedule(format!("clock of {node} skewed by {skew_ms} ms"));
            }
            FaultKind::Plugin {
                plugin,
                fail_rate,
                delay_ms,
            } => {
                self.trace.schedule(format!(
                    "plugin {plugin} fails {fail_rate} of calls, +{delay_ms} ms"
                ));
                self.plugin_faults.insert(plugin, (fail_rate, delay_ms));
            }
        }
        Ok(())
    }

    async fn fault_end(&mut self, i: usize) -> Result<(), RunError> {
        let kind = self.fault(i).kind.clone();
        match kind {
            FaultKind::Partition { .. } | FaultKind::OneWay { .. } => {
                if let Some(b) = self.fault_blocks.remove(&i) {
                    self.net.unblock(&b);
                    self.trace
                        .schedule(format!("fault {i} ({}) healed", kind.name()));
                }
            }
            FaultKind::Network { between, .. } => {
                if let Some(old) = self.fault_saved.remove(&i) {
                    let pair = between.as_ref().map(|[a, b]| (a.as_str(), b.as_str()));
                    self.net.set_spec(pair, old);
                    self.trace.schedule(format!("fault {i} (network) ended"));
                }
            }
            FaultKind::ClockSkew { node, .. } => {
                let node = self.resolve_node(i, &node);
                if let Some(s) = self.nodes.get(&node) {
                    s.clock.set_skew(Duration::ZERO, true);
                    s.skew_changes.fetch_add(1, Ordering::Relaxed);
                }
                self.trace.schedule(format!("clock of {node} back in sync"));
            }
            FaultKind::Plugin { plugin, .. } => {
                self.plugin_faults.remove(&plugin);
                self.trace.schedule(format!("plugin {plugin} recovered"));
            }
            FaultKind::Crash { node, .. } | FaultKind::Stop { node, .. } => {
                let node = self.resolve_node(i, &node);
                self.restart(&node).await?;
            }
        }
        Ok(())
    }

    fn request(&mut self, n: u64) {
        let Some(r) = self.loaded.scenario.workload.requests.clone() else {
            return;
        };
        let Some(entry) = self.pick_live() else {
            self.trace.schedule(format!("request {n}: no live node"));
            return;
        };
        let target = r.targets[self.rng.gen_range(0..r.targets.len())].clone();
        let (plugin, command) = target.split_once('/').unwrap_or((&target, ""));
        let mut input = json!({ "n": n });
        if let Some((rate, delay)) = self.plugin_faults.get(plugin).copied() {
            let fail = rate > 0.0 && self.rng.gen_bool(rate);
            input["$sim"] = json!({ "fail": fail, "delay_ms": delay });
        }
        let key = r.keyed.then(|| format!("req-{n}"));
        self.trace
            .schedule(format!("request {n} {target} via {entry}"));
        let Some(ctx) = self
            .nodes
            .get(&entry)
            .and_then(|s| s.handle.as_ref())
            .map(|h| h.ctx.clone())
        else {
            return;
        };
        let spec = CallSpec {
            timeout_ms: r.timeout_ms,
            idempotency_key: key.clone(),
            ..CallSpec::new(
                Target::new(plugin, command),
                Some(RawJson::from_value(&input)),
            )
        };
        let idx = {
            let mut reqs = self.requests.lock();
            reqs.push(ReqRecord {
                n,
                entry: entry.clone(),
                plugin: plugin.to_string(),
                key,
                outcome: None,
            });
            reqs.len() - 1
        };
        let reqs = self.requests.clone();
        let trace = self.trace.clone();
        self.tasks.push(tokio::spawn(async move {
            let out = plexus_node::exec(&ctx, spec).await;
            let outcome = match out {
                Ok(s) => Ok(format!("{} {}", s.node, s.served_by)),
                Err(f) => Err(plexus_node::exec_error_kind(&f.error).to_string()),
            };
            trace.event(format!("request {n} -> {outcome:?}"));
            reqs.lock()[idx].outcome = Some(outcome);
        }));
    }

    fn write(&mut self, n: u64) {
        let Some(w) = self.loaded.scenario.workload.state.clone() else {
            return;
        };
        let Some(entry) = self.pick_live() else {
            self.trace.schedule(format!("write {n}: no live node"));
            return;
        };
        let key = format!("sim/k{}", self.rng.gen_range(0..w.keys));
        self.trace.schedule(format!("write {n} {key} via {entry}"));
        let Ok(consistency) = plexus_node::testkit::parse_consistency(&w.consistency) else {
            return;
        };
        let op = if w.counters {
            WriteOp::Incr(1)
        } else {
            WriteOp::Put(json!({ "n": n, "by": entry }))
        };
        let req = WriteReq {
            plugin: CLIENT.into(),
            by: String::new(),
            key: key.clone(),
            op,
            access: None,
            ttl_ms: None,
            kind: None,
            field: None,
            consistency,
            timeout: Duration::from_secs(3),
        };
        let Some(slot) = self.nodes.get(&entry) else {
            return;
        };
        let (clock, skews) = (slot.clock.clone(), slot.skew_changes.clone());
        let skews_before = skews.load(Ordering::Relaxed);
        let max_skew = self.max_skew.clone();
        let sent_ms = clock.wall_ms();
        let idx = {
            let mut ws = self.writes.lock();
            ws.push(WriteRecord {
                n,
                key,
                entry: entry.clone(),
                incr: w.counters,
                sent_at: self.now_ms(),
                answered_at: None,
                stamp_floor: sent_ms,
                clock_ceiling: None,
                outcome: None,
            });
            ws.len() - 1
        };
        let writes = self.writes.clone();
        let trace = self.trace.clone();
        let state = self.ctx_of(&entry).and_then(|c| c.actors.state.get());
        self.tasks.push(tokio::spawn(async move {
            let out = match state {
                None => Err("state actor not running".to_string()),
                Some(a) => match a
                    .call(|r| StateMsg::Write(req, r), Some(Duration::from_secs(5)))
                    .await
                {
                    Ok(ractor::rpc::CallResult::Success(Ok(_))) => Ok(()),
                    Ok(ractor::rpc::CallResult::Success(Err(p))) => Err(p.kind.to_string()),
                    Ok(_) => Err("no answer".to_string()),
                    Err(e) => Err(e.to_string()),
                },
            };
            trace.event(format!(
                "write {n} -> {}",
                if out.is_ok() { "ok" } else { "err" }
            ));
            let now_ms = clock.wall_ms();
            let base_ms = now_ms.saturating_add_signed(-clock.skew_ms());
            let mut ws = writes.lock();
            let w = &mut ws[idx];
            w.answered_at = Some(trace.elapsed_ms());
            // One skew change in flight: the clock read one of the two
            // values when the write was applied.
            w.stamp_floor = match skews.load(Ordering::Relaxed) - skews_before {
                0 | 1 => sent_ms.min(now_ms),
                _ => 0,
            };
            w.clock_ceiling = Some(base_ms.saturating_add_signed(max_skew.load(Ordering::Relaxed)));
            w.outcome = Some(out);
        }));
    }

    fn saga(&mut self, n: u64) {
        let (Some(spec), Some(wf)) = (
            self.loaded.scenario.workload.sagas.clone(),
            self.saga_workflow.clone(),
        ) else {
            return;
        };
        let Some(entry) = self.pick_live() else {
            self.trace.schedule(format!("saga {n}: no live node"));
            return;
        };
        let fail = spec.fail_last_step > 0.0 && self.rng.gen_bool(spec.fail_last_step);
        let mut input = Value::Object(spec.input.clone());
        fill_n(&mut input, n);
        input["fault"] = if fail {
            json!({ "fail": true })
        } else {
            json!({})
        };
        self.trace.schedule(format!(
            "saga {n} via {entry}{}",
            if fail { " (last step fails)" } else { "" }
        ));
        let steps = wf.steps().len();
        let sagas = self.sagas.clone();
        let trace = self.trace.clone();
        let workflows = self.ctx_of(&entry).and_then(|c| c.actors.workflows.get());
        self.tasks.push(tokio::spawn(async move {
            let Some(a) = workflows else {
                trace.event(format!("saga {n} not started: no workflow supervisor"));
                return;
            };
            let r = a
                .call(
                    |reply| WorkflowsMsg::Start {
                        workflow: Box::new(wf),
                        input,
                        reply,
                    },
                    Some(Duration::from_secs(5)),
                )
                .await;
            match r {
                Ok(ractor::rpc::CallResult::Success(id)) => {
                    trace.event(format!("saga {n} started"));
                    sagas.lock().push(SagaRecord {
                        n,
                        id,
                        node: entry,
                        steps,
                    });
                }
                _ => trace.event(format!("saga {n} not started")),
            }
        }));
    }

    fn lease(&mut self, n: u64) {
        let Some(spec) = self.loaded.scenario.workload.leases.clone() else {
            return;
        };
        let Some(entry) = self.pick_live() else {
            self.trace.schedule(format!("lease {n}: no live node"));
            return;
        };
        let name = format!("sim-lock-{}", self.rng.gen_range(0..spec.names));
        let holder = format!("{CLIENT}@{entry}");
        self.trace
            .schedule(format!("lease {n} {name} for {holder}"));
        let leases = self.leases.clone();
        let trace = self.trace.clone();
        let state = self.ctx_of(&entry).and_then(|c| c.actors.state.get());
        self.tasks.push(tokio::spawn(async move {
            let Some(a) = state else {
                return;
            };
            let r = a
                .call(
                    |reply| StateMsg::LeaseAcquire {
                        name,
                        holder,
                        ttl_ms: spec.ttl_ms,
                        timeout: Duration::from_secs(2),
                        reply,
                    },
                    Some(Duration::from_secs(4)),
                )
                .await;
            match r {
                Ok(ractor::rpc::CallResult::Success(Ok(l))) => {
                    trace.event(format!("lease {n} granted token {}", l.token));
                    leases.lock().push(l);
                }
                _ => trace.event(format!("lease {n} refused")),
            }
        }));
    }

    /// End every fault: partitions heal, loss stops, plugins recover,
    /// stopped nodes come back.
    async fn heal(&mut self) -> Result<(), RunError> {
        self.net.heal();
        self.net.clear_overrides();
        let mut base = self.loaded.scenario.network.clone();
        base.loss = 0.0;
        self.net.set_spec(None, base);
        self.plugin_faults.clear();
        self.trace.schedule("heal");
        let down: Vec<String> = self
            .nodes
            .values()
            .filter(|s| s.handle.is_none())
            .map(|s| s.name.clone())
            .collect();
        for n in down {
            self.trace.schedule(format!("restart {n}"));
            self.start_node(&n).await?;
            self.restarts += 1;
        }
        Ok(())
    }

    async fn judge(&self, last: bool) -> Vec<Verdict> {
        let dirs: Vec<(String, PathBuf)> = self
            .nodes
            .keys()
            .map(|n| (n.clone(), self.data_dir(n)))
            .collect();
        let mut out = vec![];
        for inv in &self.loaded.scenario.invariants {
            let v = match inv {
                crate::scenario::Invariant::NoLostRequests => check::no_lost_requests(
                    &self.requests.lock(),
                    &self.writes.lock(),
                    &dirs,
                    &self.witness_dir(),
                ),
                crate::scenario::Invariant::SagasAtomic => {
                    check::sagas_atomic(&self.sagas.lock(), &dirs, &self.witness_dir())
                }
                crate::scenario::Invariant::ReplicasConverge => {
                    let writes = self.writes.lock().clone();
                    let keys: BTreeSet<String> = writes.iter().map(|w| w.key.clone()).collect();
                    let mut states = BTreeMap::new();
                    for n in self.live() {
                        let state = self.ctx_of(&n).and_then(|c| c.actors.state.get());
                        states.insert(n.clone(), read_all(state, &keys).await);
                    }
                    check::replicas_converge(&states, &writes)
                }
                crate::scenario::Invariant::LeasesFenced => {
                    check::leases_fenced(&self.leases.lock())
                }
                crate::scenario::Invariant::BreakerRespected => {
                    check::breaker_respected(&self.observer)
                }
                crate::scenario::Invariant::MembershipConverges => {
                    let mut views = BTreeMap::new();
                    let mut generations = BTreeMap::new();
                    for s in self.nodes.values() {
                        if let Some(h) = &s.handle {
                            generations.insert(s.name.clone(), h.ctx.identity.read().generation);
                            views.insert(
                                s.name.clone(),
                                view_of(h.ctx.actors.membership.get()).await,
                            );
                        }
                    }
                    check::membership_converges(&views, &generations, self.nodes.len())
                }
            };
            out.push(v);
            if !last && !out.last().is_some_and(|v| v.ok) {
                break;
            }
        }
        out
    }

    fn report(&self, verdicts: Vec<Verdict>, simulated_ms: u64) -> RunReport {
        let mut requests = Counts::default();
        for r in self.requests.lock().iter() {
            requests.sent += 1;
            match &r.outcome {
                Some(Ok(_)) => requests.ok += 1,
                Some(Err(_)) => requests.failed += 1,
                None => requests.unanswered += 1,
            }
        }
        let mut writes = Counts::default();
        for w in self.writes.lock().iter() {
            writes.sent += 1;
            match &w.outcome {
                Some(Ok(())) => writes.ok += 1,
                Some(Err(_)) => writes.failed += 1,
                None => writes.unanswered += 1,
            }
        }
        let mut sagas = SagaCounts::default();
        let dirs: Vec<(String, PathBuf)> = self
            .nodes
            .keys()
            .map(|n| (n.clone(), self.data_dir(n)))
            .collect();
        let statuses = check::saga_statuses(&dirs);
        for s in self.sagas.lock().iter() {
            sagas.started += 1;
            match statuses.get(&s.id) {
                Some(RunStatus::Completed) => sagas.completed += 1,
                Some(RunStatus::Compensated) => sagas.compensated += 1,
                _ => sagas.other += 1,
            }
        }
        RunReport {
            scenario: self.loaded.scenario.name.clone(),
            seed: self.seed,
            passed: verdicts.iter().all(|v| v.ok),
            verdicts,
            schedule_hash: self.trace.schedule_hash(),
            trace_hash: self.trace.trace_hash(),
            simulated_ms,
            wall_ms: 0,
            net: self.net.stats(),
            breakers: self.observer.totals(),
            requests,
            writes,
            sagas,
            leases: self.leases.lock().len() as u64,
            crashes: self.crashes,
            restarts: self.restarts,
            events: self.trace.events().into_iter().map(|(_, l)| l).collect(),
        }
    }

    /// Stop everything this run started, so the next run starts clean.
    async fn teardown(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for n in names {
            self.stop_node(&n, false).await;
        }
        if let Some(p) = self.pump.take() {
            p.abort();
        }
    }
}

/// Replace `{n}` in every string of `v`.
fn fill_n(v: &mut Value, n: u64) {
    match v {
        Value::String(s) => *s = s.replace("{n}", &n.to_string()),
        Value::Array(a) => a.iter_mut().for_each(|x| fill_n(x, n)),
        Value::Object(o) => o.values_mut().for_each(|x| fill_n(x, n)),
        _ => {}
    }
}

/// Wait until no actor of `node` is registered any more.
async fn wait_unregistered(node: &str) {
    let prefix = format!("{node}:");
    for _ in 0..5_000 {
        if !ractor::registry::registered()
            .iter()
            .any(|n| n.starts_with(&prefix))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tracing::warn!(node, "actors still registered after the node stopped");
}

/// A node's local copy of each key: `None` when absent or unreadable.
async fn read_all(
    actor: Option<ractor::ActorRef<StateMsg>>,
    keys: &BTreeSet<String>,
) -> BTreeMap<String, Option<Value>> {
    let mut out = BTreeMap::new();
    for k in keys {
        let v = match &actor {
            None => None,
            Some(a) => {
                let req = ReadReq {
                    plugin: CLIENT.into(),
                    key: k.clone(),
                    consistency: plexus_state::Consistency::Local,
                    timeout: Duration::from_secs(1),
                };
                match a
                    .call(|r| StateMsg::Read(req, r), Some(Duration::from_secs(2)))
                    .await
                {
                    Ok(ractor::rpc::CallResult::Success(Ok(d))) => Some(json!({
                        "kind": d.kind,
                        "value": d.value,
                        "version": d.version,
                        "owner": d.owner,
                    })),
                    _ => None,
                }
            }
        };
        out.insert(k.clone(), v);
    }
    out
}

/// A node's membership view: peer → (status, generation).
async fn view_of(a: Option<ractor::ActorRef<MembershipMsg>>) -> check::View {
    let a = a?;
    match a
        .call(MembershipMsg::View, Some(Duration::from_secs(2)))
        .await
    {
        Ok(ractor::rpc::CallResult::Success(v)) => Some(
            v.into_iter()
                .filter(|m| !m.local)
                .map(|m| (m.identity.name.clone(), (m.status, m.identity.generation)))
                .collect(),
        ),
        _ => None,
    }
}
