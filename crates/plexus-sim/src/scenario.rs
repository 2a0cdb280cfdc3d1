//! Scenario files (`simulations/*.toml`): the cluster, its workload, the
//! fault schedule and the invariants to check.
//!
//! Unknown keys are errors. Every error names the file, the line and the
//! field (`faults[2].node: unknown node "n9"`).

use std::collections::BTreeSet;
use std::path::Path;

use plexus_node::config::{LimitsSection, MembershipSection, StateSection};
use serde::{Deserialize, Serialize};

/// A scenario file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {field}{}{message}", .line.map(|l| format!(":{l}")).unwrap_or_default(), if .field.is_empty() { "" } else { ": " })]
pub struct ScenarioError {
    pub file: String,
    pub line: Option<usize>,
    /// The field at fault (`faults[1].at_ms`), empty when unknown.
    pub field: String,
    pub message: String,
}

/// A whole scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Length of the workload-and-faults phase, simulated ms.
    pub duration_ms: u64,
    /// After the faults end (everything healed, crashed nodes restarted),
    /// how long the cluster may take to settle before invariants are judged.
    #[serde(default = "default_settle")]
    pub settle_ms: u64,
    /// Invariants to check (default: all).
    #[serde(default = "all_invariants")]
    pub invariants: Vec<Invariant>,
    #[serde(default)]
    pub network: NetworkSpec,
    pub nodes: Vec<NodeSpec>,
    /// Overrides of the plugins' simulated behaviour.
    #[serde(default)]
    pub plugins: Vec<PluginSpec>,
    #[serde(default)]
    pub workload: Workload,
    #[serde(default)]
    pub faults: Vec<Fault>,
    /// Node settings every node gets (membership timing, limits, state).
    #[serde(default)]
    pub membership: MembershipSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub state: StateSection,
}

fn default_settle() -> u64 {
    30_000
}

/// What is checked after every run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Invariant {
    /// Every request the harness sent got an answer (a reply or a clear
    /// error) or a dead letter; no keyed request took effect twice (by the
    /// simulated handlers' witness, over all nodes, whatever its outcome);
    /// every acknowledged keyed request took effect once and left its key
    /// in the answering node's durable effect log.
    NoLostRequests,
    /// Every saga ended completed or compensated, each step and
    /// compensation took effect at most once (witness), compensations cover
    /// every step that had an effect.
    SagasAtomic,
    /// After heal and quiescence every replica holds the same state, every
    /// acknowledged key is on every replica, counters lie between their
    /// acknowledged and sent increments, and registers hold one of their
    /// writes, none older than an acknowledged one.
    ReplicasConverge,
    /// No request reached a plugin's handler without a breaker permit, and no
    /// permit was granted while the breaker was open.
    BreakerRespected,
    /// After heal every node sees every other node up, at its latest
    /// generation.
    MembershipConverges,
    /// No fencing token of a lease was granted to two different holders.
    LeasesFenced,
}

impl Invariant {
    pub const ALL: [Invariant; 6] = [
        Invariant::NoLostRequests,
        Invariant::SagasAtomic,
        Invariant::ReplicasConverge,
        Invariant::BreakerRespected,
        Invariant::MembershipConverges,
        Invariant::LeasesFenced,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Invariant::NoLostRequests => "no_lost_requests",
            Invariant::SagasAtomic => "sagas_atomic",
            Invariant::ReplicasConverge => "replicas_converge",
            Invariant::BreakerRespected => "breaker_respected",
            Invariant::MembershipConverges => "membership_converges",
            Invariant::LeasesFenced => "leases_fenced",
        }
    }
}

fn all_invariants() -> Vec<Invariant> {
    Invariant::ALL.to_vec()
}

/// Behaviour of every link (a fault can change it for a while).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// One-way delay of a frame.
    #[serde(default = "default_delay")]
    pub delay_ms: u64,
    /// Uniform extra delay, 0..=jitter_ms.
    #[serde(default)]
    pub jitter_ms: u64,
    /// Probability (0–1) that a frame is lost.
    #[serde(default)]
    pub loss: f64,
    /// Let frames of one link overtake each other (TCP would not).
    #[serde(default)]
    pub reorder: bool,
}

fn default_delay() -> u64 {
    1
}

impl Default for NetworkSpec {
    fn default() -> Self {
        NetworkSpec {
            delay_ms: default_delay(),
            jitter_ms: 0,
            loss: 0.0,
            reorder: false,
        }
    }
}

/// One node and the plugins it hosts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub name: String,
    pub plugins: Vec<String>,
}

/// A plugin's simulated behaviour for this scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSpec {
    pub name: String,
    pub latency_ms: Option<u64>,
    pub jitter_ms: Option<u64>,
    pub failure_rate: Option<f64>,
    /// Let the harness put `$sim` fault directives in requests (needed by
    /// `plugin` faults).
    #[serde(default)]
    pub allow_fault_injection: bool,
}

/// What clients do during the run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub requests: Option<Requests>,
    pub state: Option<StateWrites>,
    pub sagas: Option<Sagas>,
    pub leases: Option<Leases>,
}

/// Lease acquisitions (distributed locks) from random live nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Leases {
    pub every_ms: u64,
    /// Number of distinct lease names.
    #[serde(default = "one")]
    pub names: u32,
    pub ttl_ms: u64,
}

fn one() -> u32 {
    1
}

/// Plugin requests (`exec`) sent to random live nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requests {
    /// Mean time between requests.
    pub every_ms: u64,
    /// `plugin/command` targets, picked at random.
    pub targets: Vec<String>,
    /// Per-request timeout (default: the node's).
    pub timeout_ms: Option<u64>,
    /// Give each request an idempotency key (then retries are allowed and
    /// the effect log is checked).
    #[serde(default = "yes")]
    pub keyed: bool,
}

fn yes() -> bool {
    true
}

/// Replicated state writes to random live nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateWrites {
    pub every_ms: u64,
    /// Number of distinct keys written.
    pub keys: u32,
    /// "local" (default), "majority" or "all".
    #[serde(default = "local")]
    pub consistency: String,
    /// Counter increments instead of register puts.
    #[serde(default)]
    pub counters: bool,
}

fn local() -> String {
    "local".into()
}

/// Sagas started on random live nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sagas {
    pub every_ms: u64,
    /// Workflow file (relative to the scenario file) of kind "saga".
    pub workflow: String,
    /// The saga's input; `{n}` in string values becomes the saga's number.
    #[serde(default)]
    pub input: serde_json::Map<String, serde_json::Value>,
    /// Probability that a saga is told to fail at its last step (so it
    /// compensates); needs `allow_fault_injection` on that step's plugin.
    #[serde(default)]
    pub fail_last_step: f64,
}

/// One entry of the fault schedule. (No `deny_unknown_fields` here: serde
/// does not support it with `flatten`; the kind's table rejects unknown keys.)
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fault {
    /// When it starts, simulated ms from the run's start.
    pub at_ms: u64,
    /// Random extra start delay, 0..=jitter_ms (seeded).
    #[serde(default)]
    pub jitter_ms: u64,
    /// When it ends (partitions heal, network settings return, the plugin
    /// recovers). Crashed nodes use `restart_after_ms`.
    pub until_ms: Option<u64>,
    #[serde(flatten)]
    pub kind: FaultKind,
}

/// What goes wrong. Node names may be `"*"`: a random node (seeded).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultKind {
    /// Cut the cluster into groups; frames between groups vanish both ways.
    /// Without `groups`, `node` is cut off from the rest.
    Partition {
        #[serde(default)]
        groups: Vec<Vec<String>>,
        node: Option<String>,
    },
    /// Frames from `from` to `to` vanish; the other way still works.
    OneWay { from: String, to: String },
    /// Kill a node (no goodbye); restart it from its data directory after
    /// `restart_after_ms` (never, if absent: it restarts at heal).
    Crash {
        node: String,
        restart_after_ms: Option<u64>,
    },
    /// Stop a node gracefully (it says goodbye), restart it later.
    Stop {
        node: String,
        restart_after_ms: Option<u64>,
    },
    /// Change every link's behaviour (or one link's, `between` two nodes).
    Network {
        loss: Option<f64>,
        delay_ms: Option<u64>,
        jitter_ms: Option<u64>,
        reorder: Option<bool>,
        between: Option<[String; 2]>,
    },
    /// Set a node's wall clock ahead (positive) or behind (negative).
    ClockSkew { node: String, skew_ms: i64 },
    /// Make a plugin fail a share of requests and/or add latency, through
    /// the `$sim` fault directives of the harness's requests.
    Plugin {
        plugin: String,
        #[serde(default)]
        fail_rate: f64,
        #[serde(default)]
        delay_ms: u64,
    },
}

impl FaultKind {
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::Partition { .. } => "partition",
            FaultKind::OneWay { .. } => "one_way",
            FaultKind::Crash { .. } => "crash",
            FaultKind::Stop { .. } => "stop",
            FaultKind::Network { .. } => "network",
            FaultKind::ClockSkew { .. } => "clock_skew",
            FaultKind::Plugin { .. } => "plugin",
        }
    }
}

/// A scenario with the text it came from (for saga workflows, errors).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub scenario: Scenario,
    pub file: String,
    /// The saga workflow's TOML text, if the workload has sagas.
    pub saga_source: Option<String>,
}

impl Scenario {
    /// Read and check a scenario file.
    pub fn load(path: &Path) -> Result<Loaded, ScenarioError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
            file: file.clone(),
            line: None,
            field: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        let scenario = Scenario::parse(&file, &text)?;
        let saga_source = match &scenario.workload.sagas {
            None => None,
            Some(s) => {
                let p = path.parent().unwrap_or(Path::new(".")).join(&s.workflow);
                let src = std::fs::read_to_string(&p).map_err(|e| ScenarioError {
                    file: file.clone(),
                    line: find_line(&text, "workflow"),
                    field: "workload.sagas.workflow".into(),
                    message: format!("cannot read {}: {e}", p.display()),
                })?;
                let wf = plexus_workflow::Workflow::parse(&src).map_err(|e| ScenarioError {
                    file: file.clone(),
                    line: find_line(&text, "workflow"),
                    field: "workload.sagas.workflow".into(),
                    message: format!("{}: {e}", p.display()),
                })?;
                if wf.kind() != plexus_workflow::WorkflowKind::Saga {
                    return Err(ScenarioError {
                        file: file.clone(),
                        line: find_line(&text, "workflow"),
                        field: "workload.sagas.workflow".into(),
                        message: format!("{} is not a saga", p.display()),
                    });
                }
                Some(src)
            }
        };
        Ok(Loaded {
            scenario,
            file,
            saga_source,
        })
    }

    /// Parse and check scenario text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Scenario, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(|e| ScenarioError {
            file: file.to_string(),
            line: e
                .span()
                .map(|sp| text[..sp.start.min(text.len())].matches('\n').count() + 1),
            field: String::new(),
            message: e.message().trim().to_string(),
        })?;
        s.check(file, text)?;
        Ok(s)
    }

    fn check(&self, file: &str, text: &str) -> Result<(), ScenarioError> {
        let err = |field: String, line: Option<usize>, message: String| ScenarioError {
            file: file.to_string(),
            line,
            field,
            message,
        };
        if self.duration_ms == 0 {
            return Err(err(
                "duration_ms".into(),
                find_line(text, "duration_ms"),
                "must be > 0".into(),
            ));
        }
        if self.nodes.is_empty() {
            return Err(err("nodes".into(), None, "at least one [[nodes]]".into()));
        }
        let mut names = BTreeSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let line = table_line(text, "nodes", i);
            if !plexus_catalog::manifest::valid_name(&n.name) {
                return Err(err(
                    format!("nodes[{i}].name"),
                    line,
                    format!("{:?}: 1-64 characters of a-z, 0-9, '-' or '_'", n.name),
                ));
            }
            if !names.insert(n.name.clone()) {
                return Err(err(
                    format!("nodes[{i}].name"),
                    line,
                    format!("{:?} appears twice", n.name),
                ));
            }
            for p in &n.plugins {
                if crate::catalog::plugin(p).is_none() {
                    return Err(err(
                        format!("nodes[{i}].plugins"),
                        line,
                        format!("unknown plugin {p:?}; known: {}", crate::catalog::names()),
                    ));
                }
            }
        }
        let node_ok = |n: &str| n == "*" || names.contains(n);
        check_rate(
            &err,
            "network.loss",
            find_line(text, "loss"),
            self.network.loss,
        )?;
        for (i, p) in self.plugins.iter().enumerate() {
            let line = table_line(text, "plugins", i);
            if crate::catalog::plugin(&p.name).is_none() {
                return Err(err(
                    format!("plugins[{i}].name"),
                    line,
                    format!(
                        "unknown plugin {:?}; known: {}",
                        p.name,
                        crate::catalog::names()
                    ),
                ));
            }
            if let Some(r) = p.failure_rate {
                check_rate(&err, &format!("plugins[{i}].failure_rate"), line, r)?;
            }
        }
        if let Some(r) = &self.workload.requests {
            let line = find_line(text, "[workload.requests]");
            if r.every_ms == 0 {
                return Err(err(
                    "workload.requests.every_ms".into(),
                    line,
                    "must be > 0".into(),
                ));
            }
            if r.targets.is_empty() {
                return Err(err(
                    "workload.requests.targets".into(),
                    line,
                    "name at least one plugin/command".into(),
                ));
            }
            for t in &r.targets {
                let ok = t.split_once('/').is_some_and(|(p, c)| {
                    crate::catalog::plugin(p).is_some_and(|pl| pl.command(c).is_some())
                });
                if !ok {
                    return Err(err(
                        "workload.requests.targets".into(),
                        line,
                        format!("{t:?} is not a known plugin/command"),
                    ));
                }
            }
        }
        if let Some(s) = &self.workload.state {
            let line = find_line(text, "[workload.state]");
            if s.every_ms == 0 || s.keys == 0 {
                return Err(err(
                    "workload.state".into(),
                    line,
                    "every_ms and keys must be > 0".into(),
                ));
            }
            plexus_node::testkit::parse_consistency(&s.consistency)
                .map_err(|m| err("workload.state.consistency".into(), line, m))?;
        }
        if let Some(s) = &self.workload.sagas {
            let line = find_line(text, "[workload.sagas]");
            if s.every_ms == 0 {
                return Err(err(
                    "workload.sagas.every_ms".into(),
                    line,
                    "must be > 0".into(),
                ));
            }
            check_rate(
                &err,
                "workload.sagas.fail_last_step",
                line,
                s.fail_last_step,
            )?;
        }
        if let Some(l) = &self.workload.leases {
            if l.every_ms == 0 || l.names == 0 || l.ttl_ms == 0 {
                return Err(err(
                    "workload.leases".into(),
                    find_line(text, "[workload.leases]"),
                    "every_ms, names and ttl_ms must be > 0".into(),
                ));
            }
        }
        for (i, f) in self.faults.iter().enumerate() {
            let line = table_line(text, "faults", i);
            let field = |k: &str| format!("faults[{i}].{k}");
            if let Some(u) = f.until_ms {
                if u <= f.at_ms {
                    return Err(err(field("until_ms"), line, "must be after at_ms".into()));
                }
            }
            if f.at_ms > self.duration_ms {
                return Err(err(
                    field("at_ms"),
                    line,
                    format!("{} is after the run's end ({})", f.at_ms, self.duration_ms),
                ));
            }
            let bad_node = |k: &str, n: &str| {
                err(
                    field(k),
                    line,
                    format!(
                        "unknown node {n:?}; nodes: {}",
                        names.iter().cloned().collect::<Vec<_>>().join(", ")
                    ),
                )
            };
            match &f.kind {
                FaultKind::Partition { groups, node } => {
                    if groups.is_empty() && node.is_none() {
                        return Err(err(
                            field("groups"),
                            line,
                            "give groups or a node to cut off".into(),
                        ));
                    }
                    for n in groups.iter().flatten().chain(node.iter()) {
                        if !node_ok(n) {
                            return Err(bad_node("groups", n));
                        }
                    }
                }
                FaultKind::OneWay { from, to } => {
                    if !node_ok(from) {
                        return Err(bad_node("from", from));
                    }
                    if !node_ok(to) {
                        return Err(bad_node("to", to));
                    }
                }
                FaultKind::Crash { node, .. }
                | FaultKind::Stop { node, .. }
                | FaultKind::ClockSkew { node, .. } => {
                    if !node_ok(node) {
                        return Err(bad_node("node", node));
                    }
                }
                FaultKind::Network { loss, between, .. } => {
                    if let Some(l) = loss {
                        check_rate(&err, &field("loss"), line, *l)?;
                    }
                    for n in between.iter().flatten() {
                        if !names.contains(n) {
                            return Err(bad_node("between", n));
                        }
                    }
                }
                FaultKind::Plugin {
                    plugin, fail_rate, ..
                } => {
                    let allowed = self
                        .plugins
                        .iter()
                        .any(|p| &p.name == plugin && p.allow_fault_injection);
                    if !allowed {
                        return Err(err(
                            field("plugin"),
                            line,
                            format!("{plugin:?} needs a [[plugins]] entry with allow_fault_injection = true"),
                        ));
                    }
                    check_rate(&err, &field("fail_rate"), line, *fail_rate)?;
                }
            }
        }
        Ok(())
    }
}

fn check_rate(
    err: &impl Fn(String, Option<usize>, String) -> ScenarioError,
    field: &str,
    line: Option<usize>,
    r: f64,
) -> Result<(), ScenarioError> {
    if (0.0..=1.0).contains(&r) {
        Ok(())
    } else {
        Err(err(field.into(), line, format!("{r} is not within 0..=1")))
    }
}

/// 1-based line of the first line containing `needle`.
fn find_line(text: &str, needle: &str) -> Option<usize> {
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1)
}

/// 1-based line of the `idx`-th `[[name]]` table.
fn table_line(text: &str, name: &str, idx: usize) -> Option<usize> {
    let header = format!("[[{name}]]");
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.trim() == header)
        .nth(idx)
        .map(|(i, _)| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"name = "t"
duration_ms = 1000

[[nodes]]
name = "a"
plugins = ["exec-automator"]

[[nodes]]
name = "b"
plugins = ["jira-orchestrator"]
"#;

    fn err(text: &str) -> ScenarioError {
        Scenario::parse("t.toml", text).expect_err("should be refused")
    }

    #[test]
    fn a_minimal_scenario_gets_defaults() {
        let s = Scenario::parse("t.toml", OK).expect("parses");
        assert_eq!(s.invariants, Invariant::ALL.to_vec());
        assert_eq!(s.settle_ms, 30_000);
        assert_eq!(s.network, NetworkSpec::default());
    }

    #[test]
    fn every_shipped_scenario_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../simulations");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).expect("simulations/") {
            let p = e.expect("entry").path();
            if p.extension().is_some_and(|x| x == "toml") {
                Scenario::load(&p).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 5, "found {n} scenarios");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        let e = err(&format!("{OK}\n[network]\nlos = 0.1\n"));
        assert_eq!(e.line, Some(13), "{e}");
        assert!(e.message.contains("los"), "{e}");
        let e = err(&format!(
            "{OK}\n[[faults]]\nkind = \"crash\"\nnode = \"a\"\nat_ms = 1\nrestart_after = 5\n"
        ));
        assert!(e.message.contains("restart_after"), "{e}");
        let e = err(&format!("{OK}\n[[faults]]\nkind = \"melt\"\nat_ms = 1\n"));
        assert!(e.message.contains("melt"), "{e}");
    }

    #[test]
    fn semantic_errors_name_the_field_and_line() {
        let e = err(&format!(
            "{OK}\n[[faults]]\nkind = \"one_way\"\nfrom = \"a\"\nto = \"zz\"\nat_ms = 1\n"
        ));
        assert_eq!(
            (e.field.as_str(), e.line),
            ("faults[0].to", Some(12)),
            "{e}"
        );
        let e = err(&format!(
            "{OK}\n[[faults]]\nkind = \"partition\"\nnode = \"a\"\nat_ms = 500\nuntil_ms = 400\n"
        ));
        assert_eq!(e.field, "faults[0].until_ms", "{e}");
        let e = err(&OK.replace("jira-orchestrator", "nope"));
        assert_eq!(
            (e.field.as_str(), e.line),
            ("nodes[1].plugins", Some(8)),
            "{e}"
        );
        let e = err(&format!(
            "{OK}\n[workload.requests]\nevery_ms = 10\ntargets = [\"exec-automator/nope\"]\n"
        ));
        assert_eq!(e.field, "workload.requests.targets", "{e}");
        let e = err(&format!(
            "{OK}\n[[faults]]\nkind = \"plugin\"\nplugin = \"exec-automator\"\nat_ms = 1\n"
        ));
        assert!(e.message.contains("allow_fault_injection"), "{e}");
        let e = err(&OK.replace("name = \"b\"", "name = \"a\""));
        assert!(e.message.contains("twice"), "{e}");
        assert!(
            e.to_string().starts_with("t.toml:8: nodes[1].name: "),
            "{e}"
        );
    }
}
