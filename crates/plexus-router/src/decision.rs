//! The request and decision types, their batch JSON and their readable form.

use std::fmt;

use plexus_catalog::ModelTier;
use serde::{Deserialize, Serialize};

/// A free-text request with optional constraints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteRequest {
    pub text: String,
    /// Most the caller will spend, in US dollars (seed cost model).
    pub budget_usd: Option<f64>,
    /// Longest the caller will wait, in minutes.
    pub max_duration_min: Option<f64>,
}

impl RouteRequest {
    pub fn new(text: impl Into<String>) -> Self {
        RouteRequest {
            text: text.into(),
            budget_usd: None,
            max_duration_min: None,
        }
    }

    pub fn with_budget(mut self, usd: f64) -> Self {
        self.budget_usd = Some(usd);
        self
    }

    pub fn with_max_duration(mut self, minutes: f64) -> Self {
        self.max_duration_min = Some(minutes);
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Complexity {
    Simple,
    Moderate,
    Complex,
}

impl Complexity {
    pub fn as_str(self) -> &'static str {
        match self {
            Complexity::Simple => "simple",
            Complexity::Moderate => "moderate",
            Complexity::Complex => "complex",
        }
    }

    pub fn parse(s: &str) -> Option<Complexity> {
        match s {
            "simple" => Some(Complexity::Simple),
            "moderate" => Some(Complexity::Moderate),
            "complex" => Some(Complexity::Complex),
            _ => None,
        }
    }

    /// The seed's mapping: simple → haiku, moderate → sonnet, complex → opus.
    pub fn model(self) -> ModelTier {
        match self {
            Complexity::Simple => ModelTier::Haiku,
            Complexity::Moderate => ModelTier::Sonnet,
            Complexity::Complex => ModelTier::Opus,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Urgency {
    Low,
    Normal,
    High,
    Critical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// One plugin.
    Single,
    /// Plugins one after the other.
    Sequential,
    /// Plugins at once.
    Parallel,
    /// Some at once, some after others.
    Mixed,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Single => "single",
            Strategy::Sequential => "sequential",
            Strategy::Parallel => "parallel",
            Strategy::Mixed => "mixed",
        }
    }
}

/// What the request is about, as far as the router can tell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    /// Domains of the plugins that fit (manifest capabilities, else the
    /// plugin keywords the request touched).
    pub domains: Vec<String>,
    pub complexity: Complexity,
    /// The score the complexity class was cut from (higher is bigger work).
    pub complexity_score: f64,
    /// Request words that matched the chosen plugins, strongest first.
    pub contexts: Vec<String>,
    /// Manifest capability patterns the request touched.
    pub patterns: Vec<String>,
    pub urgency: Urgency,
    pub estimated_duration_min: f64,
}

/// One step of a collaboration plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    pub plugin: String,
    /// `agent:NAME` or `command:NAME`, when the plugin has one that fits.
    pub agent: Option<String>,
    /// Indexes of phases that must finish first.
    pub depends_on: Vec<usize>,
    /// True when it may run alongside other phases.
    pub parallel: bool,
    pub duration_min: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollaborationPlan {
    /// The plugin that coordinates a multi-plugin plan (None for one plugin).
    pub coordinator: Option<String>,
    pub phases: Vec<Phase>,
}

/// A scored plugin, for explanations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub plugin: String,
    pub score: f64,
    pub agent: Option<String>,
}

/// How well the best plugin explains the request: the quantities the
/// abstention thresholds and the confidence are computed from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// Share (idf-weighted) of the request's content words that the plugin
    /// matches in any of its documents.
    pub coverage: f64,
    /// The same share for its best single agent or command.
    pub doc_coverage: f64,
    /// Its score over the most any one document could score on this request.
    pub norm_score: f64,
    /// Matched information: Σ idf of the content words it matches, in units
    /// of the idf of a word only one document has.
    pub info: f64,
    /// Cosine of the request's sentence embedding with the plugin's closest
    /// document (0 without the embedding).
    #[serde(default)]
    pub semantic: f64,
    /// That cosine minus the best other plugin's.
    #[serde(default)]
    pub semantic_margin: f64,
    /// 1 − runner-up score / its score (1 when there is no runner-up).
    pub margin: f64,
    /// Content words in the request, and how many the plugin matches.
    pub words: usize,
    pub matched_words: usize,
}

/// The router's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutingDecision {
    pub request_id: String,
    pub request: String,
    pub classification: Classification,
    pub primary_plugin: Option<String>,
    /// `agent:NAME` or `command:NAME` of the primary plugin.
    pub agent: Option<String>,
    /// Up to three other plugins to try, best first.
    pub fallbacks: Vec<String>,
    /// 0–1.
    pub confidence: f64,
    pub plan: CollaborationPlan,
    pub strategy: Strategy,
    pub model: ModelTier,
    pub estimated_cost_usd: f64,
    pub estimated_duration_min: f64,
    /// What always-opus would cost for the same plan (for savings reports).
    pub opus_cost_usd: f64,
    pub abstain_reason: Option<String>,
    /// What the abstention test and the confidence saw (the best plugin's
    /// evidence, also when abstaining; zero when nothing matched).
    pub evidence: Evidence,
    /// Best plugins with their scores (primary first when not abstaining).
    pub candidates: Vec<Candidate>,
    pub explanation: Vec<String>,
    /// Which signals decided: `bm25f+all-MiniLM-L6-v2`, or `bm25f` and why
    /// the embedding was not used (no model files, blank request).
    #[serde(default)]
    pub signals: String,
}

impl RoutingDecision {
    /// Every plugin in the plan, primary first.
    pub fn plugins(&self) -> Vec<String> {
        self.plan.phases.iter().map(|p| p.plugin.clone()).collect()
    }

    /// The readable explanation (the same text as `Display`).
    pub fn explain(&self) -> String {
        self.to_string()
    }

    /// The flat object `plexus route --batch --json` prints for one request.
    pub fn to_batch_json(&self) -> serde_json::Value {
        serde_json::json!({
            "request_id": self.request_id,
            "request": self.request,
            "primary_plugin": self.primary_plugin,
            "agent": self.agent,
            "fallbacks": self.fallbacks,
            "plugins": self.plugins(),
            "complexity": self.classification.complexity,
            "urgency": self.classification.urgency,
            "domains": self.classification.domains,
            "model": self.model,
            "confidence": round(self.confidence, 3),
            "strategy": self.strategy,
            "coordinator": self.plan.coordinator,
            "estimated_cost_usd": round(self.estimated_cost_usd, 4),
            "estimated_duration_min": round(self.estimated_duration_min, 1),
            "abstain_reason": self.abstain_reason,
            "signals": self.signals,
        })
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

impl fmt::Display for RoutingDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "request: {}", self.request)?;
        match &self.primary_plugin {
            None => writeln!(
                f,
                "no plugin chosen: {}",
                self.abstain_reason.as_deref().unwrap_or("nothing fits")
            )?,
            Some(p) => {
                write!(f, "plugin: {p}")?;
                if let Some(a) = &self.agent {
                    write!(f, " ({a})")?;
                }
                writeln!(f, ", confidence {:.2}", self.confidence)?;
            }
        }
        if !self.signals.is_empty() {
            writeln!(f, "signals: {}", self.signals)?;
        }
        for line in &self.explanation {
            writeln!(f, "  - {line}")?;
        }
        if self.plan.phases.len() > 1 {
            writeln!(
                f,
                "plan ({}, coordinated by {}):",
                self.strategy.as_str(),
                self.plan.coordinator.as_deref().unwrap_or("-")
            )?;
            for (i, ph) in self.plan.phases.iter().enumerate() {
                write!(f, "  {}. {}", i + 1, ph.plugin)?;
                if let Some(a) = &ph.agent {
                    write!(f, " / {a}")?;
                }
                if !ph.depends_on.is_empty() {
                    let d: Vec<String> =
                        ph.depends_on.iter().map(|d| (d + 1).to_string()).collect();
                    write!(f, " after {}", d.join(","))?;
                }
                writeln!(f, ", {:.0} min", ph.duration_min)?;
            }
        }
        if !self.fallbacks.is_empty() {
            writeln!(f, "fallbacks: {}", self.fallbacks.join(", "))?;
        }
        let saving = if self.opus_cost_usd > 0.0 {
            100.0 * (1.0 - self.estimated_cost_usd / self.opus_cost_usd)
        } else {
            0.0
        };
        write!(
            f,
            "complexity {}, urgency {:?}, model {}: ~{:.0} min, ~${:.3} ({:.0}% below always-opus)",
            self.classification.complexity.as_str(),
            self.classification.urgency,
            self.model,
            self.estimated_duration_min,
            self.estimated_cost_usd,
            saving
        )
    }
}
