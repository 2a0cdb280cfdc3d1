//! `/metrics` in the Prometheus text format (version 0.0.4).
//!
//! Counters kept here are the ones no other part already has: request
//! latency and outcomes per plugin (as seen by the node that took the
//! client's request) and routing decisions. Bus, link, membership and plugin
//! gauges are read from their owners when the page is rendered.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use parking_lot::Mutex;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }
}

/// How many routing decisions the node remembers for the dashboard.
pub const RECENT_DECISIONS: usize = 50;

/// One routing decision as the dashboard shows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct DecisionRecord {
    /// When it was made, ms since the Unix epoch.
    pub at_ms: u64,
    /// The request text (first 200 characters).
    pub request: String,
    /// The chosen plugin; none when the router abstained.
    pub plugin: Option<String>,
    /// `agent:NAME` or `command:NAME`.
    pub agent: Option<String>,
    pub confidence: f64,
    pub fallbacks: Vec<String>,
    /// Why: the router's explanation lines, or the abstention reason.
    pub reasons: Vec<String>,
}

/// Node-local request and routing metrics.
#[derive(Default)]
pub struct Metrics {
    exec: Mutex<BTreeMap<String, Histogram>>,
    outcomes: Mutex<BTreeMap<(String, String), u64>>,
    routes: Mutex<BTreeMap<&'static str, u64>>,
    confidence: Mutex<Histogram>,
    recent: Mutex<std::collections::VecDeque<DecisionRecord>>,
    /// (plugin, from, to) → transitions of its breaker on this node.
    breaker_transitions: Mutex<BTreeMap<(String, &'static str, &'static str), u64>>,
    /// `up` / `down` / `rejoined` → membership events seen by this node.
    member_events: Mutex<BTreeMap<&'static str, u64>>,
    /// Cluster frames and bytes sent, per protocol ([`WIRE_KINDS`]).
    wire_out: [[std::sync::atomic::AtomicU64; 2]; WIRE_KINDS.len()],
    /// Anti-entropy rounds of the state replica started by this node.
    state_gossip_rounds: std::sync::atomic::AtomicU64,
    /// (plugin, model id) → model runs hosted on this node.
    llm: Mutex<BTreeMap<(String, String), LlmCounts>>,
}

/// What the model runs of one plugin on one model used, on the hosting node.
#[derive(Default, Clone, Copy)]
struct LlmCounts {
    runs: u64,
    input_tokens: u64,
    output_tokens: u64,
    cost_usd: f64,
}

/// Protocols on the cluster links: `foca` is SWIM membership gossip, `state`
/// the replicated state's anti-entropy and quorum traffic.
pub const WIRE_KINDS: [&str; 5] = ["hello", "foca", "announce", "bus", "state"];

impl Metrics {
    /// One client request to `plugin` ended with `outcome` (`primary`,
    /// `retry`, `cache`, `default`, or an error kind) after `took`.
    pub fn exec(&self, plugin: &str, outcome: &str, took: Duration) {
        self.exec
            .lock()
            .entry(plugin.to_string())
            .or_default()
            .observe(took.as_secs_f64());
        *self
            .outcomes
            .lock()
            .entry((plugin.to_string(), outcome.to_string()))
            .or_default() += 1;
    }

    /// One model run of `plugin` on this node finished: the provider's
    /// token counts and its cost. Counted where the model ran, once per
    /// run (a retried request runs, and is counted, again).
    pub fn llm_run(&self, plugin: &str, m: &plexus_handler::ModelUse, cost_usd: f64) {
        let mut g = self.llm.lock();
        let c = g.entry((plugin.to_string(), m.model.clone())).or_default();
        c.runs += 1;
        c.input_tokens += m.usage.input_tokens;
        c.output_tokens += m.usage.output_tokens;
        c.cost_usd += cost_usd;
    }

    /// One routing decision.
    pub fn route(&self, abstained: bool, confidence: f64) {
        *self
            .routes
            .lock()
            .entry(if abstained { "abstained" } else { "routed" })
            .or_default() += 1;
        self.confidence.lock().observe(confidence);
    }

    /// Remember a decision for the dashboard (a ring of the last
    /// [`RECENT_DECISIONS`]).
    pub fn record_decision(&self, d: &plexus_router::RoutingDecision) {
        let mut reasons = d.explanation.clone();
        if let Some(r) = &d.abstain_reason {
            reasons.insert(0, format!("abstained: {r}"));
        }
        let rec = DecisionRecord {
            at_ms: plexus_bus::now_ms(),
            request: d.request.chars().take(200).collect(),
            plugin: d.primary_plugin.clone(),
            agent: d.agent.clone(),
            confidence: d.confidence,
            fallbacks: d.fallbacks.clone(),
            reasons,
        };
        let mut r = self.recent.lock();
        if r.len() == RECENT_DECISIONS {
            r.pop_front();
        }
        r.push_back(rec);
    }

    /// The remembered decisions, newest first.
    pub fn recent_decisions(&self) -> Vec<DecisionRecord> {
        self.recent.lock().iter().rev().cloned().collect()
    }

    /// A breaker of a plugin hosted here changed state.
    pub fn breaker_transition(&self, plugin: &str, from: &'static str, to: &'static str) {
        *self
            .breaker_transitions
            .lock()
            .entry((plugin.to_string(), from, to))
            .or_default() += 1;
    }

    /// A membership event (`up`, `down`, `rejoined`).
    pub fn member_event(&self, kind: &'static str) {
        *self.member_events.lock().entry(kind).or_default() += 1;
    }

    /// One frame of protocol `kind` (index into [`WIRE_KINDS`]) was sent.
    pub fn wire_sent(&self, kind: usize, bytes: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(c) = self.wire_out.get(kind) {
            c[0].fetch_add(1, Relaxed);
            c[1].fetch_add(bytes as u64, Relaxed);
        }
    }

    /// The state replica started an anti-entropy round.
    pub fn state_gossip_round(&self) {
        self.state_gossip_rounds
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Append this node's own metrics.
    pub fn render(&self, out: &mut String) {
        use std::sync::atomic::Ordering::Relaxed;
        header(
            out,
            "plexus_breaker_transitions_total",
            "counter",
            "Circuit breaker state changes of the plugins hosted on this node.",
        );
        for ((p, f, t), n) in self.breaker_transitions.lock().iter() {
            let _ = writeln!(
                out,
                "plexus_breaker_transitions_total{{plugin=\"{}\",from=\"{f}\",to=\"{t}\"}} {n}",
                esc(p)
            );
        }
        header(
            out,
            "plexus_membership_events_total",
            "counter",
            "Membership changes this node saw (up, down, rejoined).",
        );
        for (k, n) in self.member_events.lock().iter() {
            let _ = writeln!(out, "plexus_membership_events_total{{event=\"{k}\"}} {n}");
        }
        header(
            out,
            "plexus_wire_frames_sent_total",
            "counter",
            "Cluster frames sent per protocol (foca = SWIM gossip, state = anti-entropy and quorums).",
        );
        for (k, c) in WIRE_KINDS.iter().zip(&self.wire_out) {
            let _ = writeln!(
                out,
                "plexus_wire_frames_sent_total{{protocol=\"{k}\"}} {}",
                c[0].load(Relaxed)
            );
        }
        header(
            out,
            "plexus_wire_bytes_sent_total",
            "counter",
            "Cluster bytes sent per protocol.",
        );
        for (k, c) in WIRE_KINDS.iter().zip(&self.wire_out) {
            let _ = writeln!(
                out,
                "plexus_wire_bytes_sent_total{{protocol=\"{k}\"}} {}",
                c[1].load(Relaxed)
            );
        }
        header(
            out,
            "plexus_state_gossip_rounds_total",
            "counter",
            "Anti-entropy rounds of the replicated state started by this node.",
        );
        let _ = writeln!(
            out,
            "plexus_state_gossip_rounds_total {}",
            self.state_gossip_rounds.load(Relaxed)
        );
        let llm = self.llm.lock().clone();
        header(
            out,
            "plexus_llm_runs_total",
            "counter",
            "Agent and command runs on a language model hosted on this node, per plugin and model id.",
        );
        for ((p, m), c) in &llm {
            let _ = writeln!(
                out,
                "plexus_llm_runs_total{{plugin=\"{}\",model=\"{}\"}} {}",
                esc(p),
                esc(m),
                c.runs
            );
        }
        header(
            out,
            "plexus_llm_tokens_total",
            "counter",
            "Tokens the provider counted for those runs, per plugin, model id and direction.",
        );
        for ((p, m), c) in &llm {
            for (dir, n) in [("input", c.input_tokens), ("output", c.output_tokens)] {
                let _ = writeln!(
                    out,
                    "plexus_llm_tokens_total{{plugin=\"{}\",model=\"{}\",direction=\"{dir}\"}} {n}",
                    esc(p),
                    esc(m)
                );
            }
        }
        header(
            out,
            "plexus_llm_cost_usd_total",
            "counter",
            "Cost of those runs in US dollars (the price table's), per plugin and model id.",
        );
        for ((p, m), c) in &llm {
            let _ = writeln!(
                out,
                "plexus_llm_cost_usd_total{{plugin=\"{}\",model=\"{}\"}} {}",
                esc(p),
                esc(m),
                c.cost_usd
            );
        }
        let exec = self.exec.lock().clone();
        header(
            out,
            "plexus_exec_duration_seconds",
            "histogram",
            "Client request latency per plugin, on the node that took the request.",
        );
        for (p, h) in &exec {
            histogram(
                out,
                "plexus_exec_duration_seconds",
                &format!("plugin=\"{}\"", esc(p)),
                h,
            );
        }
        header(
            out,
            "plexus_exec_total",
            "counter",
            "Client requests per plugin and outcome (served_by path or error kind).",
        );
        for ((p, o), n) in self.outcomes.lock().iter() {
            let _ = writeln!(
                out,
                "plexus_exec_total{{plugin=\"{}\",outcome=\"{}\"}} {n}",
                esc(p),
                esc(o)
            );
        }
        header(
            out,
            "plexus_route_decisions_total",
            "counter",
            "Routing decisions by result.",
        );
        for (r, n) in self.routes.lock().iter() {
            let _ = writeln!(out, "plexus_route_decisions_total{{result=\"{r}\"}} {n}");
        }
        header(
            out,
            "plexus_route_confidence",
            "histogram",
            "Confidence of routing decisions (0-1; buckets reuse the latency bounds).",
        );
        histogram(
            out,
            "plexus_route_confidence",
            "",
            &self.confidence.lock().clone(),
        );
    }
}

/// `# HELP` and `# TYPE` lines.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value escaped for the text format.
pub fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    let sep = if labels.is_empty() { "" } else { "," };
    for (i, b) in BUCKETS.iter().enumerate() {
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {}",
            h.counts[i]
        );
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", h.count);
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(out, "{name}_sum{braces} {}", h.sum);
    let _ = writeln!(out, "{name}_count{braces} {}", h.count);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_labels_escaped() {
        let m = Metrics::default();
        m.exec("p\"x", "primary", Duration::from_millis(3));
        m.exec("p\"x", "primary", Duration::from_millis(300));
        let mut s = String::new();
        m.render(&mut s);
        assert!(
            s.contains("plexus_exec_duration_seconds_bucket{plugin=\"p\\\"x\",le=\"0.005\"} 1"),
            "{s}"
        );
        assert!(
            s.contains("plexus_exec_duration_seconds_bucket{plugin=\"p\\\"x\",le=\"0.5\"} 2"),
            "{s}"
        );
        assert!(
            s.contains("plexus_exec_duration_seconds_count{plugin=\"p\\\"x\"} 2"),
            "{s}"
        );
        assert!(
            s.contains("plexus_exec_total{plugin=\"p\\\"x\",outcome=\"primary\"} 2"),
            "{s}"
        );
    }

    #[test]
    fn model_runs_add_up_per_plugin_and_model() {
        let m = Metrics::default();
        let run = |model: &str, i, o| plexus_handler::ModelUse {
            model: model.into(),
            usage: plexus_handler::TokenUsage {
                input_tokens: i,
                output_tokens: o,
                cached_input_tokens: 0,
            },
        };
        m.llm_run("jira", &run("haiku-x", 10, 3), 0.5);
        m.llm_run("jira", &run("haiku-x", 5, 4), 0.25);
        m.llm_run("git", &run("opus-y", 1, 1), 0.0);
        let mut s = String::new();
        m.render(&mut s);
        for line in [
            "plexus_llm_runs_total{plugin=\"jira\",model=\"haiku-x\"} 2",
            "plexus_llm_tokens_total{plugin=\"jira\",model=\"haiku-x\",direction=\"input\"} 15",
            "plexus_llm_tokens_total{plugin=\"jira\",model=\"haiku-x\",direction=\"output\"} 7",
            "plexus_llm_cost_usd_total{plugin=\"jira\",model=\"haiku-x\"} 0.75",
            "plexus_llm_runs_total{plugin=\"git\",model=\"opus-y\"} 1",
        ] {
            assert!(s.lines().any(|l| l == line), "{line} missing in\n{s}");
        }
    }
}
