//! The invariants, judged from what the harness recorded and from the nodes'
//! own durable files (effect logs, saga journals) and replies.

use std::collections::BTreeMap;
use std::path::PathBuf;

use plexus_membership::MemberStatus;
use plexus_workflow::{compensation_key, list_journals, step_key, RunStatus};
use serde::Serialize;
use serde_json::Value;

use crate::observe::Observations;
use crate::run::{ReqRecord, SagaRecord, WriteRecord};
use crate::scenario::Invariant;

/// One invariant's verdict for one run.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub invariant: String,
    pub ok: bool,
    /// What was checked, or what broke.
    pub detail: String,
}

fn verdict(inv: Invariant, problems: Vec<String>, checked: String) -> Verdict {
    let ok = problems.is_empty();
    let detail = if ok {
        checked
    } else {
        let n = problems.len();
        let mut d: Vec<String> = problems.into_iter().take(5).collect();
        if n > 5 {
            d.push(format!("… and {} more", n - 5));
        }
        d.join("; ")
    };
    Verdict {
        invariant: inv.name().to_string(),
        ok,
        detail,
    }
}

/// Every effect-log line of every node: (node, plugin, key) → count.
pub fn effects(dirs: &[(String, PathBuf)]) -> BTreeMap<(String, String, String), u32> {
    let mut out = BTreeMap::new();
    for (node, dir) in dirs {
        let Ok(rd) = std::fs::read_dir(dir.join("effects")) else {
            continue;
        };
        let mut files: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for f in files {
            let Some(plugin) = f
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".jsonl"))
                .map(str::to_string)
            else {
                continue;
            };
            let Ok(text) = std::fs::read_to_string(&f) else {
                continue;
            };
            for line in text.lines() {
                let key = serde_json::from_str::<Value>(line)
                    .ok()
                    .and_then(|v| v.get("key").and_then(Value::as_str).map(str::to_string));
                if let Some(k) = key {
                    *out.entry((node.clone(), plugin.clone(), k)).or_default() += 1;
                }
            }
        }
    }
    out
}

/// How often `key` was recorded, over all nodes and plugins.
fn count(effects: &BTreeMap<(String, String, String), u32>, key: &str) -> u32 {
    effects
        .iter()
        .filter(|((_, _, k), _)| k == key)
        .map(|(_, c)| *c)
        .sum()
}

/// Every request and write got an answer; every acknowledged keyed request
/// that ran on a plugin left its effect in that node's durable log.
pub fn no_lost_requests(
    requests: &[ReqRecord],
    writes: &[WriteRecord],
    dirs: &[(String, PathBuf)],
) -> Verdict {
    let mut problems = vec![];
    let effects = effects(dirs);
    for r in requests {
        match &r.outcome {
            None => problems.push(format!(
                "request {} to {} via {} never answered",
                r.n, r.plugin, r.entry
            )),
            Some(Ok(how)) => {
                // `"{node} {served_by}"`; served_by is "primary", "retry N",
                // "cache", "default" or "fallback:P".
                let (node, served) = how.split_once(' ').unwrap_or((how, ""));
                let ran = served == "primary" || served.starts_with("retry");
                if let (true, Some(k)) = (ran, &r.key) {
                    let c = effects
                        .get(&(node.to_string(), r.plugin.clone(), k.clone()))
                        .copied()
                        .unwrap_or(0);
                    if c != 1 {
                        problems.push(format!(
                            "request {} was acknowledged by {node} but its effect log for {} holds key {k} {c} times",
                            r.n, r.plugin
                        ));
                    }
                }
            }
            Some(Err(_)) => {}
        }
    }
    for (i, (k, o)) in writes.iter().enumerate() {
        if o.is_none() {
            problems.push(format!("state write {} to {k} never answered", i + 1));
        }
    }
    let answered = requests.iter().filter(|r| r.outcome.is_some()).count();
    verdict(
        Invariant::NoLostRequests,
        problems,
        format!(
            "{answered}/{} requests and {} writes answered; acknowledged effects durable",
            requests.len(),
            writes.len()
        ),
    )
}

/// Every saga's status from the journals of every node.
pub fn saga_statuses(dirs: &[(String, PathBuf)]) -> BTreeMap<String, RunStatus> {
    let mut out = BTreeMap::new();
    for (_, dir) in dirs {
        if let Ok(js) = list_journals(dir.join("workflows")) {
            for j in js {
                if let (Some(id), Some(st)) = (j.saga_id.clone(), j.status()) {
                    out.insert(id, st);
                }
            }
        }
    }
    out
}

/// Every saga ended completed or compensated; each step's effect and each
/// compensation recorded at most once; a compensated saga compensated every
/// step that had an effect, a completed one has every step's effect.
pub fn sagas_atomic(sagas: &[SagaRecord], dirs: &[(String, PathBuf)]) -> Verdict {
    let statuses = saga_statuses(dirs);
    let effects = effects(dirs);
    let mut problems = vec![];
    for s in sagas {
        let Some(st) = statuses.get(&s.id) else {
            problems.push(format!(
                "saga {} ({}) was accepted by {} but has no journal",
                s.n, s.id, s.node
            ));
            continue;
        };
        match st {
            RunStatus::Completed | RunStatus::Compensated => {}
            other => {
                problems.push(format!("saga {} ({}) ended {other:?}", s.n, s.id));
                continue;
            }
        }
        for step in 0..s.steps as u32 {
            let done = count(&effects, &step_key(&s.id, step));
            let undone = count(&effects, &compensation_key(&s.id, step));
            if done > 1 {
                problems.push(format!("saga {} step {step} ran {done} times", s.n));
            }
            if undone > 1 {
                problems.push(format!(
                    "saga {} step {step} was compensated {undone} times",
                    s.n
                ));
            }
            match st {
                RunStatus::Completed if done != 1 || undone != 0 => problems.push(format!(
                    "saga {} completed but step {step} has {done} effects and {undone} compensations",
                    s.n
                )),
                RunStatus::Compensated if done == 1 && undone != 1 => problems.push(format!(
                    "saga {} compensated but step {step}'s effect was never undone",
                    s.n
                )),
                _ => {}
            }
        }
    }
    let done = sagas
        .iter()
        .filter(|s| statuses.get(&s.id) == Some(&RunStatus::Completed))
        .count();
    let comp = sagas
        .iter()
        .filter(|s| statuses.get(&s.id) == Some(&RunStatus::Compensated))
        .count();
    verdict(
        Invariant::SagasAtomic,
        problems,
        format!(
            "{} sagas: {done} completed, {comp} compensated, each effect once",
            sagas.len()
        ),
    )
}

/// All live replicas hold the same state for every written key, and every
/// acknowledged key is present on each of them.
pub fn replicas_converge(
    states: &BTreeMap<String, BTreeMap<String, Option<Value>>>,
    acked: &std::collections::BTreeSet<String>,
) -> Verdict {
    let mut problems = vec![];
    let mut first: Option<(&String, &BTreeMap<String, Option<Value>>)> = None;
    for (node, st) in states {
        for k in acked {
            if st.get(k).is_none_or(|v| v.is_none()) {
                problems.push(format!("acknowledged key {k} is missing on {node}"));
            }
        }
        match first {
            None => first = Some((node, st)),
            Some((n0, s0)) => {
                for (k, v) in st {
                    if s0.get(k) != Some(v) {
                        problems.push(format!(
                            "{k} differs: {n0} has {}, {node} has {}",
                            short(s0.get(k).cloned().flatten()),
                            short(v.clone())
                        ));
                    }
                }
            }
        }
    }
    let keys = first.map(|(_, s)| s.len()).unwrap_or(0);
    verdict(
        Invariant::ReplicasConverge,
        problems,
        format!("{keys} keys equal on {} replicas", states.len()),
    )
}

fn short(v: Option<Value>) -> String {
    match v {
        None => "nothing".into(),
        Some(v) => {
            let s = v.to_string();
            if s.len() > 120 {
                format!("{}…", &s[..s.floor_char_boundary(120)])
            } else {
                s
            }
        }
    }
}

/// No call reached a handler without a permit; no permit while open.
pub fn breaker_respected(obs: &Observations) -> Verdict {
    let t = obs.totals();
    verdict(
        Invariant::BreakerRespected,
        obs.violations(),
        format!(
            "{} handler calls under {} permits; {} refused; breakers opened {} times",
            t.handler_calls, t.permits, t.refusals, t.opened
        ),
    )
}

/// A node's membership view: peer → (status, generation); `None` when the
/// node did not answer.
pub type View = Option<BTreeMap<String, (MemberStatus, u64)>>;

/// Every node sees every other node up at its current generation.
pub fn membership_converges(
    views: &BTreeMap<String, View>,
    generations: &BTreeMap<String, u64>,
    expected: usize,
) -> Verdict {
    let mut problems = vec![];
    if generations.len() != expected {
        problems.push(format!(
            "only {} of {expected} nodes are running",
            generations.len()
        ));
    }
    for (node, view) in views {
        let Some(view) = view else {
            problems.push(format!("{node}: no membership view"));
            continue;
        };
        for (peer, gen) in generations {
            if peer == node {
                continue;
            }
            match view.get(peer) {
                Some((MemberStatus::Up, g)) if g == gen => {}
                Some((st, g)) => problems.push(format!(
                    "{node} sees {peer} {st} at generation {g} (current {gen})"
                )),
                None => problems.push(format!("{node} does not know {peer}")),
            }
        }
    }
    verdict(
        Invariant::MembershipConverges,
        problems,
        format!("{} nodes agree that all are up", views.len()),
    )
}

/// No lease token was granted to two different holders (per lease name).
pub fn leases_fenced(grants: &[plexus_state::Lease]) -> Verdict {
    let mut holders: BTreeMap<(String, u64), String> = BTreeMap::new();
    let mut problems = vec![];
    for l in grants {
        match holders.get(&(l.name.clone(), l.token)) {
            Some(h) if *h != l.holder => problems.push(format!(
                "lease {} token {} granted to {h} and to {}",
                l.name, l.token, l.holder
            )),
            Some(_) => {}
            None => {
                holders.insert((l.name.clone(), l.token), l.holder.clone());
            }
        }
    }
    verdict(
        Invariant::LeasesFenced,
        problems,
        format!("{} grants, each token to one holder", grants.len()),
    )
}
