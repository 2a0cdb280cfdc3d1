//! The invariants, judged from what the harness recorded and from the nodes'
//! own durable files (effect logs, saga journals) and replies.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

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

/// The calls that took effect, from the simulated handlers' own witness
/// files (`dir/{plugin}.jsonl`, one line per call that succeeded, whatever
/// node ran it): idempotency key → `plugin/command` of each effect. Unlike
/// the effect logs, nothing in the node reads or dedupes these.
pub fn witness(dir: &Path) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut files: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if let Some(k) = v.get("key").and_then(Value::as_str) {
                let what = format!(
                    "{}/{}",
                    v["plugin"].as_str().unwrap_or("?"),
                    v["command"].as_str().unwrap_or("?")
                );
                out.entry(k.to_string()).or_default().push(what);
            }
        }
    }
    out
}

fn witnessed(witness: &BTreeMap<String, Vec<String>>, key: &str) -> u32 {
    witness.get(key).map_or(0, |w| w.len() as u32)
}

/// Every request and write got an answer. Exactly once: no keyed request
/// took effect more than once over all nodes, whatever its outcome, and
/// one acknowledged as run by a plugin took effect once (by the handlers'
/// witness) and left its key in the answering node's durable effect log.
pub fn no_lost_requests(
    requests: &[ReqRecord],
    writes: &[WriteRecord],
    dirs: &[(String, PathBuf)],
    witness_dir: &Path,
) -> Verdict {
    let mut problems = vec![];
    let effects = effects(dirs);
    let witness = witness(witness_dir);
    let mut keyed = 0;
    for r in requests {
        let seen = r.key.as_ref().map_or(0, |k| witnessed(&witness, k));
        if let Some(k) = &r.key {
            keyed += 1;
            if seen > 1 {
                problems.push(format!(
                    "request {} (key {k}, outcome {:?}) took effect {seen} times: {}",
                    r.n,
                    r.outcome,
                    witness[k].join(", ")
                ));
            }
        }
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
                    if seen != 1 {
                        problems.push(format!(
                            "request {} was acknowledged as run by {} on {node} but took effect {seen} times",
                            r.n, r.plugin
                        ));
                    }
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
    for w in writes {
        if w.outcome.is_none() {
            problems.push(format!("state write {} to {} never answered", w.n, w.key));
        }
    }
    let answered = requests.iter().filter(|r| r.outcome.is_some()).count();
    verdict(
        Invariant::NoLostRequests,
        problems,
        format!(
            "{answered}/{} requests and {} writes answered; {keyed} keyed requests took effect at most once, acknowledged ones once and durably",
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

/// Every saga ended completed or compensated; each step and each
/// compensation took effect at most once (by the handlers' witness); a compensated saga compensated every
/// step that had an effect, a completed one has every step's effect.
pub fn sagas_atomic(
    sagas: &[SagaRecord],
    dirs: &[(String, PathBuf)],
    witness_dir: &Path,
) -> Verdict {
    let statuses = saga_statuses(dirs);
    let witness = witness(witness_dir);
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
            let done = witnessed(&witness, &step_key(&s.id, step));
            let undone = witnessed(&witness, &compensation_key(&s.id, step));
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

/// All live replicas hold the same state for every written key, every
/// acknowledged key is present on each of them, and the value is one the
/// writes can explain: a counter lies between its acknowledged and its sent
/// increments; a register holds one of its writes, and not one whose stamp
/// is older than an acknowledged write's (the register is last-writer-wins
/// by stamp, so that write would have won).
pub fn replicas_converge(
    states: &BTreeMap<String, BTreeMap<String, Option<Value>>>,
    writes: &[WriteRecord],
) -> Verdict {
    let mut problems = vec![];
    let acked: BTreeSet<&str> = writes
        .iter()
        .filter(|w| w.acked())
        .map(|w| w.key.as_str())
        .collect();
    let mut first: Option<(&String, &BTreeMap<String, Option<Value>>)> = None;
    for (node, st) in states {
        for k in &acked {
            if st.get(*k).is_none_or(|v| v.is_none()) {
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
    // Values: judged on every replica (they should be equal; if they are
    // not, that was reported above and each value is still judged).
    let mut by_key: BTreeMap<&str, Vec<&WriteRecord>> = BTreeMap::new();
    for w in writes {
        by_key.entry(w.key.as_str()).or_default().push(w);
    }
    for (node, st) in states {
        for (k, ws) in &by_key {
            let Some(Some(doc)) = st.get(*k) else {
                continue;
            };
            if let Some(p) = explain_value(k, &doc["value"], ws) {
                problems.push(format!("{node}: {p}"));
            }
        }
    }
    let keys = first.map(|(_, s)| s.len()).unwrap_or(0);
    verdict(
        Invariant::ReplicasConverge,
        problems,
        format!(
            "{keys} keys equal on {} replicas, each value explained by its writes",
            states.len()
        ),
    )
}

/// Why `value` of `key` cannot be the result of `writes` (all to `key`).
fn explain_value(key: &str, value: &Value, writes: &[&WriteRecord]) -> Option<String> {
    let acked: Vec<&WriteRecord> = writes.iter().copied().filter(|w| w.acked()).collect();
    if writes.iter().all(|w| w.incr) {
        let sent = writes.len() as i64;
        let got = value
            .as_i64()
            .or_else(|| value.as_str().and_then(|s| s.parse().ok()));
        return match got {
            Some(v) if (acked.len() as i64..=sent).contains(&v) => None,
            _ => Some(format!(
                "counter {key} is {value}, not between its {} acknowledged and {sent} sent increments",
                acked.len()
            )),
        };
    }
    let n = value.get("n").and_then(Value::as_u64);
    let by = value.get("by").and_then(Value::as_str);
    let Some(v) = writes
        .iter()
        .find(|w| Some(w.n) == n && by == Some(w.entry.as_str()))
    else {
        return Some(format!(
            "register {key} holds {}, which none of its {} writes wrote",
            short(Some(value.clone())),
            writes.len()
        ));
    };
    // The highest stamp time `v` can carry (known once it was acknowledged).
    let ceiling = v.clock_ceiling.filter(|_| v.acked()).map(|c| {
        let before = writes
            .iter()
            .filter(|w| v.answered_at.is_some_and(|t| w.sent_at <= t))
            .count() as u64;
        c + before
    });
    for a in acked {
        if a.n == v.n {
            continue;
        }
        // `a` went through the node that had already applied `v`: its
        // stamp is above `v`'s, whatever the clocks say.
        let same_node_later =
            a.entry == v.entry && v.acked() && v.answered_at.is_some_and(|t| t <= a.sent_at);
        let stamped_later = ceiling.is_some_and(|c| c < a.stamp_floor);
        if same_node_later || stamped_later {
            return Some(format!(
                "register {key} holds write {} (via {}) although write {} (via {}) was acknowledged with a later stamp{}",
                v.n,
                v.entry,
                a.n,
                a.entry,
                if same_node_later {
                    " (sent to the same node after the first was answered)".to_string()
                } else {
                    format!(" (at least {} ms, the first at most {} ms)", a.stamp_floor, ceiling.unwrap_or_default())
                }
            ));
        }
    }
    None
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

/// Every handler call held a permit its breaker granted, used by no other
/// call; no permit was granted while open.
pub fn breaker_respected(obs: &Observations) -> Verdict {
    let t = obs.totals();
    verdict(
        Invariant::BreakerRespected,
        obs.violations(),
        format!(
            "{} handler calls, each under a permit of its own ({} granted, {} refused); breakers opened {} times",
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
