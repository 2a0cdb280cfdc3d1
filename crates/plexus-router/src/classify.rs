//! Request classification from generic signals (complexity, urgency) and the
//! seed's cost model (model choice under budget and duration limits).
//!
//! The word lists here are generic English request vocabulary (scope words,
//! quick inspection verbs, urgency words); none names a plugin or a domain.

use plexus_catalog::ModelTier;
use serde::{Deserialize, Serialize};

use crate::decision::{Complexity, Urgency};

/// Words that widen the scope of a request.
const SCOPE: &[&str] = &[
    "all",
    "every",
    "entire",
    "whole",
    "across",
    "migrate",
    "migration",
    "end-to-end",
    "comprehensive",
    "complete",
    "full",
    "multi",
    "multiple",
    "several",
    "overhaul",
    "enterprise",
    "organization-wide",
    "company-wide",
    "portfolio",
    "program",
];
/// Words that ask for design or creation of something new and sizeable.
const BUILD: &[&str] = &[
    "architect",
    "architecture",
    "design",
    "build",
    "implement",
    "develop",
    "refactor",
    "analyze",
    "analyse",
    "orchestrate",
    "integrate",
    "strategy",
    "plan",
    "optimize",
    "optimise",
    "automate",
    "pipeline",
    "framework",
];
/// Verbs of quick inspection or a single toggle.
const QUICK: &[&str] = &[
    "show", "list", "check", "view", "get", "display", "find", "tail", "status", "what", "which",
    "how", "is", "are", "turn", "switch", "restart", "start", "stop", "enable", "disable", "open",
    "close", "count", "fetch", "read", "print",
];
/// Clause joiners that usually start another action.
const JOINERS: &[&str] = &[
    "and", "then", "also", "plus", "after", "before", "once", "while",
];

/// Generic signals of one request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Signals {
    pub words: usize,
    pub clauses: usize,
    pub scope_words: usize,
    pub build_words: usize,
    pub quick_start: bool,
    pub plugins: usize,
    /// The model tier the best-matching agent's author declared.
    pub agent_model: Option<ModelTier>,
}

/// Weights and cut points of the complexity score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ComplexityModel {
    /// score ≥ this → at least moderate
    pub moderate_at: f64,
    /// score ≥ this → complex
    pub complex_at: f64,
}

impl Default for ComplexityModel {
    fn default() -> Self {
        ComplexityModel {
            moderate_at: 0.5,
            complex_at: 3.0,
        }
    }
}

fn lower_words(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '-' || c == '\''))
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect()
}

/// Count generic signals in `text`.
pub fn signals(text: &str) -> Signals {
    let words = lower_words(text);
    let clauses = 1
        + words
            .iter()
            .filter(|w| JOINERS.contains(&w.as_str()))
            .count()
        + text.matches([',', ';']).count();
    Signals {
        words: words.len(),
        clauses,
        scope_words: words.iter().filter(|w| SCOPE.contains(&w.as_str())).count(),
        build_words: words.iter().filter(|w| BUILD.contains(&w.as_str())).count(),
        quick_start: words.first().is_some_and(|w| QUICK.contains(&w.as_str())),
        plugins: 0,
        agent_model: None,
    }
}

/// A complexity score: higher means bigger work.
pub fn complexity_score(s: &Signals) -> f64 {
    let mut x = 0.0;
    x += (s.words as f64 / 6.0).min(3.0);
    x += 0.5 * (s.clauses.saturating_sub(1) as f64);
    x += 0.5 * s.scope_words as f64;
    x += 0.5 * s.build_words as f64;
    x += 1.0 * s.plugins.saturating_sub(1) as f64;
    if s.quick_start {
        x -= 1.0;
    }
    x += match s.agent_model {
        Some(ModelTier::Haiku) => -0.5,
        Some(ModelTier::Sonnet) | None => 0.0,
        Some(ModelTier::Opus) => 0.75,
    };
    x - 1.0
}

impl ComplexityModel {
    /// The class of a complexity score.
    pub fn classify(&self, x: f64) -> Complexity {
        if x >= self.complex_at {
            Complexity::Complex
        } else if x >= self.moderate_at {
            Complexity::Moderate
        } else {
            Complexity::Simple
        }
    }
}

pub fn complexity(s: &Signals, m: &ComplexityModel) -> Complexity {
    m.classify(complexity_score(s))
}

/// Urgency from generic urgency words.
pub fn urgency(text: &str) -> Urgency {
    let l = text.to_lowercase();
    let has = |ws: &[&str]| ws.iter().any(|w| contains_word(&l, w));
    if has(&[
        "emergency",
        "critical",
        "outage",
        "sev1",
        "sev-1",
        "p0",
        "production down",
        "data loss",
        "security breach",
        "is down",
        "are down",
    ]) {
        Urgency::Critical
    } else if has(&[
        "urgent",
        "urgently",
        "asap",
        "immediately",
        "right away",
        "right now",
        "now!",
        "blocker",
        "blocking",
        "high priority",
        "as soon as possible",
        "today",
        "broken",
    ]) {
        Urgency::High
    } else if has(&[
        "no rush",
        "whenever",
        "when you have time",
        "low priority",
        "eventually",
        "someday",
        "at some point",
        "not urgent",
    ]) {
        Urgency::Low
    } else {
        Urgency::Normal
    }
}

fn contains_word(hay: &str, needle: &str) -> bool {
    let mut from = 0;
    while let Some(i) = hay[from..].find(needle) {
        let s = from + i;
        let e = s + needle.len();
        let before = hay[..s]
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_alphanumeric());
        let after = hay[e..].chars().next().is_none_or(|c| !c.is_alphanumeric());
        if before && after {
            return true;
        }
        from = s + 1;
        while !hay.is_char_boundary(from) {
            from += 1;
        }
    }
    false
}

/// Minutes of work for one plugin phase at the model the complexity calls for.
pub fn base_minutes(c: Complexity) -> f64 {
    match c {
        Complexity::Simple => 5.0,
        Complexity::Moderate => 15.0,
        Complexity::Complex => 40.0,
    }
}

/// Relative time a tier takes for the same work (bigger models are slower).
pub fn speed_factor(t: ModelTier) -> f64 {
    match t {
        ModelTier::Haiku => 0.6,
        ModelTier::Sonnet => 0.8,
        ModelTier::Opus => 1.0,
    }
}

/// The model chosen and what it costs.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelChoice {
    pub model: ModelTier,
    pub duration_min: f64,
    pub cost_usd: f64,
    /// What always-opus would cost and take.
    pub opus_cost_usd: f64,
    pub notes: Vec<String>,
}

/// Pick the tier for `complexity` (seed mapping), then step down while the
/// budget or the duration limit is broken. `minutes_at_natural` is the plan's
/// duration at the natural tier.
pub fn choose_model(
    complexity: Complexity,
    minutes_at_natural: f64,
    budget_usd: Option<f64>,
    max_duration_min: Option<f64>,
) -> ModelChoice {
    let natural = complexity.model();
    let at = |t: ModelTier| minutes_at_natural * speed_factor(t) / speed_factor(natural);
    let cost = |t: ModelTier| at(t) * t.cost_per_minute();
    let mut tier = natural;
    let mut notes = vec![];
    let lower = |t: ModelTier| match t {
        ModelTier::Opus => Some(ModelTier::Sonnet),
        ModelTier::Sonnet => Some(ModelTier::Haiku),
        ModelTier::Haiku => None,
    };
    loop {
        let over_budget = budget_usd.is_some_and(|b| cost(tier) > b + 1e-12);
        let too_long = max_duration_min.is_some_and(|m| at(tier) > m + 1e-9);
        if !over_budget && !too_long {
            break;
        }
        match lower(tier) {
            Some(t) => {
                notes.push(format!(
                    "{tier} would {} (${:.3}, {:.0} min): stepping down to {t}",
                    if over_budget {
                        "break the budget"
                    } else {
                        "take too long"
                    },
                    cost(tier),
                    at(tier)
                ));
                tier = t;
            }
            None => {
                notes.push(format!(
                    "even haiku breaks the {} (${:.3}, {:.0} min); kept haiku",
                    if over_budget {
                        "budget"
                    } else {
                        "duration limit"
                    },
                    cost(tier),
                    at(tier)
                ));
                break;
            }
        }
    }
    ModelChoice {
        model: tier,
        duration_min: at(tier),
        cost_usd: cost(tier),
        opus_cost_usd: cost(ModelTier::Opus),
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_inspection_is_simple_long_multi_part_is_complex() {
        let m = ComplexityModel::default();
        assert_eq!(
            complexity(&signals("Show the status of the build"), &m),
            Complexity::Simple
        );
        let mut s = signals(
            "Design and implement an end-to-end migration of all services across every region, \
             then generate the architecture docs and plan the rollout",
        );
        s.plugins = 2;
        assert_eq!(complexity(&s, &m), Complexity::Complex);
        assert_eq!(
            complexity(
                &signals("Configure presence detection using the phones in the house"),
                &m
            ),
            Complexity::Moderate
        );
    }

    #[test]
    fn more_plugins_and_opus_agents_raise_complexity() {
        let base = signals("Configure the thing for the team");
        let mut more = base.clone();
        more.plugins = 3;
        more.agent_model = Some(ModelTier::Opus);
        assert!(complexity_score(&more) > complexity_score(&base) + 2.0);
    }

    #[test]
    fn urgency_words() {
        assert_eq!(urgency("Production is down, fix it"), Urgency::Critical);
        assert_eq!(urgency("Please do this ASAP"), Urgency::High);
        assert_eq!(urgency("no rush, tidy the docs"), Urgency::Low);
        assert_eq!(urgency("Plan the next sprint"), Urgency::Normal);
        // "down" inside "downstairs" is not an outage
        assert_eq!(urgency("Turn off the lights downstairs"), Urgency::Normal);
    }

    #[test]
    fn model_follows_complexity_without_constraints() {
        assert_eq!(
            choose_model(Complexity::Simple, 5.0, None, None).model,
            ModelTier::Haiku
        );
        assert_eq!(
            choose_model(Complexity::Moderate, 15.0, None, None).model,
            ModelTier::Sonnet
        );
        let c = choose_model(Complexity::Complex, 40.0, None, None);
        assert_eq!(c.model, ModelTier::Opus);
        assert!((c.cost_usd - 0.4).abs() < 1e-9);
        assert_eq!(c.cost_usd, c.opus_cost_usd);
    }

    #[test]
    fn budget_steps_the_model_down() {
        // opus: 40 min × $0.01 = $0.40; sonnet: 32 min × $0.005 = $0.16; haiku: 24 × 0.001
        let c = choose_model(Complexity::Complex, 40.0, Some(0.20), None);
        assert_eq!(c.model, ModelTier::Sonnet);
        assert!(c.cost_usd <= 0.20);
        let c = choose_model(Complexity::Complex, 40.0, Some(0.05), None);
        assert_eq!(c.model, ModelTier::Haiku);
        let c = choose_model(Complexity::Complex, 40.0, Some(0.001), None);
        assert_eq!(c.model, ModelTier::Haiku);
        assert!(
            c.notes.last().unwrap().contains("even haiku"),
            "{:?}",
            c.notes
        );
    }

    #[test]
    fn duration_limit_steps_the_model_down() {
        let c = choose_model(Complexity::Complex, 40.0, None, Some(35.0));
        assert_eq!(c.model, ModelTier::Sonnet);
        assert!(c.duration_min <= 35.0);
        let c = choose_model(Complexity::Moderate, 15.0, None, Some(100.0));
        assert_eq!(c.model, ModelTier::Sonnet);
    }
}
