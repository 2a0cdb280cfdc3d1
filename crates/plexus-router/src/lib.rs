//! Plexus routing engine: a pure crate (no actors, no I/O) that routes a
//! free-text request to the plugin and agent of the catalog that fit best.
//!
//! - **Index** ([`index`]): one BM25F document per agent, per command and per
//!   plugin (plugin.json + manifest), four weighted fields (name, keywords,
//!   description, body), Snowball-stemmed words plus adjacent-word bigrams,
//!   an inverted index whose postings hold finished term weights.
//! - **Match**: a plugin's score mixes its best document (+ its plugin-level
//!   document) with the sum over request words of its best match anywhere,
//!   scaled by learnt outcomes (and by manifest priority, weight 0 by default:
//!   cross-validation found it did not help).
//! - **Decide**: the confidence is a logistic model ([`calibrate`]) over the
//!   best plugin's [`Evidence`] (coverage, single-document coverage, share of
//!   the possible score, matched information), fitted by cross-validation on
//!   labelled requests; below its threshold the router abstains and says why.
//!   Runners-up that score close and bring evidence of their own join a
//!   collaboration plan coordinated by jira-orchestrator; complexity, urgency
//!   and duration are classified; haiku/sonnet/opus is chosen within budget
//!   and time limits.
//!
//! # API for callers (the CLI, the Router actor)
//!
//! - [`Router::new`]`(&Catalog) -> Router` — build once per catalog (tens of ms).
//! - [`Router::route`]`(&self, &RouteRequest) -> RoutingDecision` — one
//!   decision; [`RouteRequest::new`]`(text)` with optional
//!   [`RouteRequest::with_budget`] / [`RouteRequest::with_max_duration`].
//! - [`RoutingDecision`]: `Serialize`; `Display` is the readable explanation
//!   (why this plugin, runners-up, plan, model and cost); also
//!   [`RoutingDecision::explain`]. [`RoutingDecision::to_batch_json`] gives
//!   the flat object of `plexus route --batch --json` (`request`,
//!   `primary_plugin` (string or null), `agent`, `fallbacks`, `plugins`,
//!   `complexity`, `model`, `confidence`, `strategy`, `estimated_cost_usd`,
//!   `estimated_duration_min`, and a few more).
//! - [`route_batch_line`]`(&Router, &str) -> serde_json::Value` — one JSONL
//!   line in, one object out; a malformed line gives `{"error": ...}`.
//! - [`keyword_baseline`]`(&Catalog) -> impl Fn(&str) -> RoutingDecision` —
//!   the seed's keyword-point router, for comparison ([`BaselineRouter`]).
//! - Live state: [`Router::set_available`] (plugin down / breaker open: never
//!   chosen, planned or offered as fallback) and [`Router::record_outcome`]
//!   (success and latency per agent shift later decisions).
//!
//! ```
//! use plexus_catalog::{Agent, Catalog, Manifest, Plugin};
//! use plexus_router::{RouteRequest, Router};
//!
//! let plugin = Plugin {
//!     name: "vaulty".into(),
//!     version: "1".into(),
//!     description: "HashiCorp Vault secrets management".into(),
//!     keywords: vec!["vault".into(), "secrets".into()],
//!     agents: vec![Agent {
//!         name: "secret-rotator".into(),
//!         description: "Rotate database passwords stored in Vault".into(),
//!         ..Default::default()
//!     }],
//!     commands: vec![],
//!     mcp_servers: vec![],
//!     manifest: Manifest::default_for("vaulty"),
//!     claude_dir: None,
//!     manifest_file: None,
//! };
//! let catalog = Catalog { plugins: vec![plugin], diagnostics: vec![] };
//! let router = Router::new(&catalog);
//! let d = router.route(&RouteRequest::new("Rotate the database password in Vault"));
//! assert_eq!(d.primary_plugin.as_deref(), Some("vaulty"));
//! assert_eq!(d.agent.as_deref(), Some("agent:secret-rotator"));
//! let d = router.route(&RouteRequest::new("What is the capital of Australia?"));
//! assert_eq!(d.primary_plugin, None);
//! ```

pub mod baseline;
pub mod calibrate;
pub mod classify;
pub mod decision;
pub mod index;
pub mod learning;
pub mod router;
pub mod semantic;
pub mod text;

pub use baseline::BaselineRouter;
pub use calibrate::ConfidenceModel;
pub use classify::ComplexityModel;
pub use decision::{
    Candidate, Classification, CollaborationPlan, Complexity, Evidence, Phase, RouteRequest,
    RoutingDecision, Strategy, Urgency,
};
pub use index::Bm25Params;
pub use learning::OutcomeStats;
pub use plexus_catalog::ModelTier;
pub use router::{Router, RouterConfig};
pub use semantic::{CachedEmbedder, EmbedError, Embedder, SemanticConfig, SemanticIndex};

/// The seed's keyword-point router as a plain function (see [`BaselineRouter`]).
pub fn keyword_baseline(catalog: &plexus_catalog::Catalog) -> impl Fn(&str) -> RoutingDecision {
    let b = BaselineRouter::new(catalog);
    move |text: &str| b.route(&RouteRequest::new(text))
}

/// Route one JSONL line (an object with a `request` string; `budget_usd` and
/// `max_duration_min` are honoured when present, other fields ignored).
/// Returns the batch JSON of the decision, or `{"error": "..."}` for a
/// malformed line. Blank lines give `{"error": "empty line"}`.
pub fn route_batch_line(router: &Router, line: &str) -> serde_json::Value {
    route_batch_line_n(router, line, None)
}

/// As [`route_batch_line`], naming the 1-based line number in errors.
pub fn route_batch_line_n(
    router: &Router,
    line: &str,
    line_no: Option<usize>,
) -> serde_json::Value {
    let err = |msg: String| match line_no {
        Some(n) => serde_json::json!({ "line": n, "error": msg }),
        None => serde_json::json!({ "error": msg }),
    };
    if line.trim().is_empty() {
        return err("empty line".into());
    }
    let v: serde_json::Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return err(format!("invalid JSON: {e}")),
    };
    let Some(obj) = v.as_object() else {
        return err("expected a JSON object with a \"request\" field".into());
    };
    let Some(text) = obj.get("request").and_then(|r| r.as_str()) else {
        return err("missing string field \"request\"".into());
    };
    let mut req = RouteRequest::new(text);
    req.budget_usd = obj.get("budget_usd").and_then(|x| x.as_f64());
    req.max_duration_min = obj.get("max_duration_min").and_then(|x| x.as_f64());
    router.route(&req).to_batch_json()
}
