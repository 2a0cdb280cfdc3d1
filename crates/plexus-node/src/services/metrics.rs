//! `/metrics` in the Prometheus text format (version 0.0.4), through the
//! `prometheus` crate.
//!
//! Two kinds of series. The ones no other part already has (request latency
//! and outcomes per plugin, as seen by the node that took the client's
//! request; routing decisions; breaker transitions; membership events; wire
//! traffic) live in [`Metrics`]'s registry for the node's lifetime. Series
//! whose owner already counts them (bus, links, members, plugins, workflow
//! runs) are read from that owner when the page is rendered, into a
//! [`Scrape`] that lives for one request.

use std::collections::VecDeque;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds of the routing confidence buckets (0–1).
const CONFIDENCE_BUCKETS: [f64; 10] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

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

/// Protocols on the cluster links: `foca` is SWIM membership gossip, `state`
/// the replicated state's anti-entropy and quorum traffic.
pub const WIRE_KINDS: [&str; 5] = ["hello", "foca", "announce", "bus", "state"];

/// Node-local request and routing metrics.
pub struct Metrics {
    families: Families,
    exec_duration: HistogramVec,
    exec_total: IntCounterVec,
    route_decisions: IntCounterVec,
    route_confidence: Histogram,
    breaker_transitions: IntCounterVec,
    member_events: IntCounterVec,
    /// Frames and bytes sent per protocol, resolved once: `wire_sent` is on
    /// every frame's path.
    wire_frames: Vec<IntCounter>,
    wire_bytes: Vec<IntCounter>,
    state_gossip_rounds: IntCounter,
    /// Plugins started or stopped on this node because the placement moved them.
    placement_moves: IntCounter,
    /// Peer → digest buckets that differed from this replica's when its
    /// last anti-entropy digest arrived (0: equal then).
    state_differing: IntGaugeVec,
    /// This replica's key count, as of the last anti-entropy round.
    state_keys: prometheus::IntGauge,
    /// Model runs hosted on this node: runs and tokens per (plugin, model
    /// id[, direction]), and their cost.
    llm_runs: IntCounterVec,
    llm_tokens: IntCounterVec,
    llm_cost: prometheus::CounterVec,
    /// API requests refused before any handler ran, by why.
    api_refused: IntCounterVec,
    api_connections: prometheus::IntGauge,
    api_connections_refused: IntCounter,
    /// Streamed requests hosted here, per plugin and how they ended:
    /// `done`, or `cancelled` (the reader went away and the command was
    /// stopped).
    streams: IntCounterVec,
    recent: Mutex<VecDeque<DecisionRecord>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registered collectors, kept so that a family with no series yet (a
/// labelled family before its first child) still gets HELP and TYPE: the
/// registry's `gather` leaves such families out.
#[derive(Default)]
struct Families {
    /// Refuses a name registered twice.
    registry: Registry,
    collectors: Mutex<Vec<Box<dyn Collector>>>,
}

impl Families {
    /// Register `c`. The names are fixed and unique in this module, so a
    /// failure is a programming error caught by the unit test, not input.
    fn reg<C: Collector + Clone + 'static>(&self, c: C) -> C {
        self.registry
            .register(Box::new(c.clone()))
            .expect("metric names in services::metrics are unique and valid");
        self.collectors.lock().push(Box::new(c.clone()));
        c
    }

    fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.reg(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric options"))
    }

    /// Every family, the empty ones included.
    fn collect(&self) -> Vec<MetricFamily> {
        self.collectors
            .lock()
            .iter()
            .flat_map(|c| c.collect())
            .collect()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Families::default();
        let exec_duration = r.reg(
            HistogramVec::new(
                HistogramOpts::new(
                    "plexus_exec_duration_seconds",
                    "Client request latency per plugin, on the node that took the request.",
                )
                .buckets(BUCKETS.to_vec()),
                &["plugin"],
            )
            .expect("valid metric options"),
        );
        let exec_total = r.counter_vec(
            "plexus_exec_total",
            "Client requests per plugin and outcome (served_by path or error kind).",
            &["plugin", "outcome"],
        );
        let route_decisions = r.counter_vec(
            "plexus_route_decisions_total",
            "Routing decisions by result.",
            &["result"],
        );
        let route_confidence = r.reg(
            Histogram::with_opts(
                HistogramOpts::new(
                    "plexus_route_confidence",
                    "Confidence of routing decisions (0-1).",
                )
                .buckets(CONFIDENCE_BUCKETS.to_vec()),
            )
            .expect("valid metric options"),
        );
        let breaker_transitions = r.counter_vec(
            "plexus_breaker_transitions_total",
            "Circuit breaker state changes of the plugins hosted on this node.",
            &["plugin", "from", "to"],
        );
        let member_events = r.counter_vec(
            "plexus_membership_events_total",
            "Membership changes this node saw (up, down, rejoined).",
            &["event"],
        );
        let frames = r.counter_vec(
            "plexus_wire_frames_sent_total",
            "Cluster frames sent per protocol (foca = SWIM gossip, state = anti-entropy and quorums).",
            &["protocol"],
        );
        let bytes = r.counter_vec(
            "plexus_wire_bytes_sent_total",
            "Cluster bytes sent per protocol.",
            &["protocol"],
        );
        let state_gossip_rounds = r.reg(
            IntCounter::new(
                "plexus_state_gossip_rounds_total",
                "Anti-entropy rounds of the replicated state started by this node.",
            )
            .expect("valid metric options"),
        );
        let placement_moves = r.reg(
            IntCounter::new(
                "plexus_placement_moves_total",
                "Plugins started or stopped on this node because the cluster placement moved them.",
            )
            .expect("valid metric options"),
        );
        let state_differing = r.reg(
            IntGaugeVec::new(
                Opts::new(
                    "plexus_state_buckets_differing",
                    "Digest buckets (of 256) in which a peer's replica differed from this one at its last anti-entropy round (0: equal). Stuck above 0 means the replicas do not converge.",
                ),
                &["peer"],
            )
            .expect("valid metric options"),
        );
        let state_keys = r.reg(
            prometheus::IntGauge::new(
                "plexus_state_keys",
                "Keys in this node's state replica (as of the last anti-entropy round it answered).",
            )
            .expect("valid metric options"),
        );
        let llm_runs = r.counter_vec(
            "plexus_llm_runs_total",
            "Agent and command runs on a language model hosted on this node, per plugin and model id.",
            &["plugin", "model"],
        );
        let llm_tokens = r.counter_vec(
            "plexus_llm_tokens_total",
            "Tokens the provider counted for those runs, per plugin, model id and direction.",
            &["plugin", "model", "direction"],
        );
        let llm_cost = r.reg(
            prometheus::CounterVec::new(
                Opts::new(
                    "plexus_llm_cost_usd_total",
                    "Cost of those runs in US dollars (the price table's), per plugin and model id.",
                ),
                &["plugin", "model"],
            )
            .expect("valid metric options"),
        );
        let streams = r.counter_vec(
            "plexus_exec_streams_total",
            "Streamed requests hosted on this node, per plugin and end: done, or cancelled (the reader went away; the command was stopped).",
            &["plugin", "end"],
        );
        let api_refused = r.counter_vec(
            "plexus_api_refused_total",
            "API requests refused before they ran: unauthorized (no or a wrong token), forbidden (the role may not), rate-limited (over the caller's rate).",
            &["reason"],
        );
        let api_connections = r.reg(
            prometheus::IntGauge::new("plexus_api_connections", "Client API connections open now.")
                .expect("valid metric options"),
        );
        let api_connections_refused = r.reg(
            IntCounter::new(
                "plexus_api_connections_refused_total",
                "Client API connections closed at once because [limits] api_max_connections were open.",
            )
            .expect("valid metric options"),
        );
        Metrics {
            streams,
            api_refused,
            api_connections,
            api_connections_refused,
            llm_runs,
            llm_tokens,
            llm_cost,
            placement_moves,
            state_differing,
            state_keys,
            wire_frames: WIRE_KINDS
                .iter()
                .map(|k| frames.with_label_values(&[k]))
                .collect(),
            wire_bytes: WIRE_KINDS
                .iter()
                .map(|k| bytes.with_label_values(&[k]))
                .collect(),
            families: r,
            exec_duration,
            exec_total,
            route_decisions,
            route_confidence,
            breaker_transitions,
            member_events,
            state_gossip_rounds,
            recent: Mutex::new(VecDeque::with_capacity(RECENT_DECISIONS)),
        }
    }

    /// One client request to `plugin` ended with `outcome` (`primary`,
    /// `retry`, `cache`, `default`, or an error kind) after `took`.
    pub fn exec(&self, plugin: &str, outcome: &str, took: Duration) {
        self.exec_duration
            .with_label_values(&[plugin])
            .observe(took.as_secs_f64());
        self.exec_total.with_label_values(&[plugin, outcome]).inc();
    }

    /// A streamed request of `plugin` hosted here ended: `done`, or
    /// `cancelled` because its reader went away.
    pub fn stream_end(&self, plugin: &str, cancelled: bool) {
        let end = if cancelled { "cancelled" } else { "done" };
        self.streams.with_label_values(&[plugin, end]).inc();
    }

    /// One model run of `plugin` on this node finished: the provider's
    /// token counts and its cost. Counted where the model ran, once per
    /// run (a retried request runs, and is counted, again).
    pub fn llm_run(&self, plugin: &str, m: &plexus_handler::ModelUse, cost_usd: f64) {
        let model = m.model.as_str();
        self.llm_runs.with_label_values(&[plugin, model]).inc();
        self.llm_tokens
            .with_label_values(&[plugin, model, "input"])
            .inc_by(m.usage.input_tokens);
        self.llm_tokens
            .with_label_values(&[plugin, model, "output"])
            .inc_by(m.usage.output_tokens);
        if cost_usd.is_finite() && cost_usd > 0.0 {
            self.llm_cost
                .with_label_values(&[plugin, model])
                .inc_by(cost_usd);
        } else {
            // Present (at 0) for a run with no price, so the series exists.
            self.llm_cost.with_label_values(&[plugin, model]);
        }
    }

    /// An API request was refused (`unauthorized`, `forbidden`, `rate-limited`).
    pub fn api_refused(&self, reason: &str) {
        self.api_refused.with_label_values(&[reason]).inc();
    }

    /// An API connection opened (+1) or closed (-1).
    pub fn api_connections(&self, delta: i64) {
        self.api_connections.add(delta);
    }

    /// An API connection was closed at once: too many were open.
    pub fn api_connection_refused(&self) {
        self.api_connections_refused.inc();
    }

    /// One routing decision.
    pub fn route(&self, abstained: bool, confidence: f64) {
        self.route_decisions
            .with_label_values(&[if abstained { "abstained" } else { "routed" }])
            .inc();
        self.route_confidence.observe(confidence);
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
        self.breaker_transitions
            .with_label_values(&[plugin, from, to])
            .inc();
    }

    /// A membership event (`up`, `down`, `rejoined`).
    pub fn member_event(&self, kind: &'static str) {
        self.member_events.with_label_values(&[kind]).inc();
    }

    /// One frame of protocol `kind` (index into [`WIRE_KINDS`]) was sent.
    pub fn wire_sent(&self, kind: usize, bytes: usize) {
        if let (Some(f), Some(b)) = (self.wire_frames.get(kind), self.wire_bytes.get(kind)) {
            f.inc();
            b.inc_by(bytes as u64);
        }
    }

    /// The state replica started an anti-entropy round.
    pub fn state_gossip_round(&self) {
        self.state_gossip_rounds.inc();
    }

    /// A peer's anti-entropy digest arrived: `differing` buckets differ
    /// from this replica's, which holds `keys` keys.
    pub fn state_digest_compared(&self, peer: &str, differing: usize, keys: u64) {
        self.state_differing
            .with_label_values(&[peer])
            .set(i64::try_from(differing).unwrap_or(i64::MAX));
        self.state_keys.set(i64::try_from(keys).unwrap_or(i64::MAX));
    }

    /// `n` plugins were started or stopped here by a placement change.
    pub fn placement_moves(&self, n: usize) {
        self.placement_moves.inc_by(n as u64);
    }

    /// Plugins started or stopped here by placement changes so far.
    pub fn placement_moves_total(&self) -> u64 {
        self.placement_moves.get()
    }

    /// The page: this node's own series, then the scrape's, in the text
    /// format. A family with no series yet still gets its HELP and TYPE, so
    /// dashboards and alert rules find every name from the start.
    pub fn render(&self, scrape: &Scrape) -> String {
        let mut families = self.families.collect();
        families.extend(scrape.families.collect());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let (full, empty): (Vec<_>, Vec<_>) = families
            .into_iter()
            .partition(|f| !f.get_metric().is_empty());
        let mut out = String::new();
        if let Err(e) = TextEncoder::new().encode_utf8(&full, &mut out) {
            // Only a malformed family fails here; name the error on the page
            // rather than serving half of it silently.
            tracing::error!(error = %e, "rendering /metrics");
            return format!("# error rendering metrics: {e}\n");
        }
        for f in empty {
            // The type as the encoder writes it (`COUNTER` -> `counter`).
            let kind = format!("{:?}", f.get_field_type()).to_lowercase();
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n",
                name = f.name(),
                help = f.help()
            ));
        }
        out
    }
}

/// Series read from their owners for one `/metrics` request.
#[derive(Default)]
pub struct Scrape {
    families: Families,
}

impl Scrape {
    /// A counter whose owner keeps the running total (`value`).
    pub fn counter(&self, name: &str, help: &str, value: u64) {
        let c = self
            .families
            .reg(IntCounter::new(name, help).expect("valid metric options"));
        c.inc_by(value);
    }

    /// A gauge read from its owner.
    pub fn gauge(&self, name: &str, help: &str, value: i64) {
        let g = self
            .families
            .reg(prometheus::IntGauge::new(name, help).expect("valid metric options"));
        g.set(value);
    }

    /// A labelled counter family; the caller sets each child with
    /// `inc_by(total)` once.
    pub fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.families.counter_vec(name, help, labels)
    }

    /// A labelled gauge family.
    pub fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.families
            .reg(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric options"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_labels_escaped() {
        let m = Metrics::default();
        m.exec("p\"x", "primary", Duration::from_millis(3));
        m.exec("p\"x", "primary", Duration::from_millis(300));
        let s = m.render(&Scrape::default());
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
            // The exposition sorts labels by name.
            s.contains("plexus_exec_total{outcome=\"primary\",plugin=\"p\\\"x\"} 2"),
            "{s}"
        );
    }

    #[test]
    fn scrape_series_render_beside_the_nodes_own() {
        let m = Metrics::default();
        m.wire_sent(1, 40);
        m.wire_sent(99, 40); // an unknown protocol index is ignored
        let s = Scrape::default();
        s.counter("plexus_link_frames_out_total", "Cluster frames sent.", 7);
        s.gauge_vec("plexus_members", "Members.", &["status"])
            .with_label_values(&["up"])
            .set(3);
        let page = m.render(&s);
        assert!(page.contains("plexus_link_frames_out_total 7"), "{page}");
        assert!(page.contains("plexus_members{status=\"up\"} 3"), "{page}");
        assert!(
            page.contains("plexus_wire_bytes_sent_total{protocol=\"foca\"} 40"),
            "{page}"
        );
        assert!(page.contains("# TYPE plexus_state_gossip_rounds_total counter"));
        // Labelled families with no series yet are declared all the same.
        assert!(page.contains("# TYPE plexus_exec_total counter"), "{page}");
        assert!(
            page.contains("# TYPE plexus_exec_duration_seconds histogram"),
            "{page}"
        );
        assert_eq!(
            page.matches("# TYPE plexus_members gauge").count(),
            1,
            "{page}"
        );
        assert!(!page.contains("plexus_exec_total{"), "{page}");
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
        let s = m.render(&Scrape::default());
        // The exposition sorts labels by name.
        for line in [
            "plexus_llm_runs_total{model=\"haiku-x\",plugin=\"jira\"} 2",
            "plexus_llm_tokens_total{direction=\"input\",model=\"haiku-x\",plugin=\"jira\"} 15",
            "plexus_llm_tokens_total{direction=\"output\",model=\"haiku-x\",plugin=\"jira\"} 7",
            "plexus_llm_cost_usd_total{model=\"haiku-x\",plugin=\"jira\"} 0.75",
            "plexus_llm_runs_total{model=\"opus-y\",plugin=\"git\"} 1",
        ] {
            assert!(s.lines().any(|l| l == line), "{line} missing in\n{s}");
        }
    }
}
