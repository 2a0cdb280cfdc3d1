//! The seed's reference router, kept as the floor to measure against:
//! 30 points per matched domain keyword, 20 per context keyword, 15 per
//! pattern, scaled by priority (and availability). Complexity from length.
//!
//! With Claude Code files alone a plugin has no manifest capabilities, so the
//! `plugin.json` keywords stand in for its domains (that is what they are).

use plexus_catalog::Catalog;

use crate::classify;
use crate::decision::{
    Candidate, Classification, CollaborationPlan, Complexity, Phase, RouteRequest, RoutingDecision,
    Strategy,
};
use crate::index::pattern_literals;

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    priority: u8,
    domains: Vec<String>,
    contexts: Vec<String>,
    /// Each pattern as its ordered literal fragments.
    patterns: Vec<Vec<String>>,
}

/// The seed's keyword-point router.
#[derive(Debug, Clone)]
pub struct BaselineRouter {
    plugins: Vec<Entry>,
}

fn norm_kw(k: &str) -> String {
    k.to_lowercase().replace(['-', '_'], " ")
}

/// Whole-word (or whole-phrase) occurrence.
fn has_phrase(text: &str, phrase: &str) -> bool {
    if phrase.is_empty() {
        return false;
    }
    let mut from = 0;
    while let Some(i) = text[from..].find(phrase) {
        let s = from + i;
        let e = s + phrase.len();
        let ok_l = text[..s]
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_alphanumeric());
        let ok_r = text[e..]
            .chars()
            .next()
            .is_none_or(|c| !c.is_alphanumeric());
        if ok_l && ok_r {
            return true;
        }
        from = s + 1;
        while !text.is_char_boundary(from) {
            from += 1;
        }
    }
    false
}

impl BaselineRouter {
    pub fn new(catalog: &Catalog) -> BaselineRouter {
        let plugins = catalog
            .plugins
            .iter()
            .map(|p| {
                let m = &p.manifest;
                let mut domains: Vec<String> =
                    m.capabilities.domains.iter().map(|k| norm_kw(k)).collect();
                domains.extend(p.keywords.iter().map(|k| norm_kw(k)));
                domains.sort();
                domains.dedup();
                let mut contexts: Vec<String> = m
                    .capabilities
                    .contexts
                    .iter()
                    .chain(&m.routing.keywords)
                    .map(|k| norm_kw(k))
                    .collect();
                contexts.sort();
                contexts.dedup();
                let patterns = m
                    .capabilities
                    .patterns
                    .iter()
                    .chain(&m.routing.context_patterns)
                    .map(|p| {
                        pattern_literals(p)
                            .iter()
                            .map(|l| l.to_lowercase())
                            .collect()
                    })
                    .collect();
                Entry {
                    name: p.name.clone(),
                    priority: m.routing.priority,
                    domains,
                    contexts,
                    patterns,
                }
            })
            .collect();
        BaselineRouter { plugins }
    }

    /// Points of every plugin for `text`, in catalog order.
    pub fn scores(&self, text: &str) -> Vec<(String, f64)> {
        let l = text.to_lowercase().replace(['-', '_'], " ");
        self.plugins
            .iter()
            .map(|e| {
                let mut pts = 0.0;
                pts += 30.0 * e.domains.iter().filter(|k| has_phrase(&l, k)).count() as f64;
                pts += 20.0 * e.contexts.iter().filter(|k| has_phrase(&l, k)).count() as f64;
                pts += 15.0
                    * e.patterns
                        .iter()
                        .filter(|lits| {
                            let mut at = 0;
                            !lits.is_empty()
                                && lits.iter().all(|lit| match l[at..].find(lit.as_str()) {
                                    Some(i) => {
                                        at += i + lit.len();
                                        true
                                    }
                                    None => false,
                                })
                        })
                        .count() as f64;
                (e.name.clone(), pts * e.priority as f64 / 10.0)
            })
            .collect()
    }

    /// Length-based complexity, as simple as the seed's.
    pub fn complexity(text: &str) -> Complexity {
        match text.split_whitespace().count() {
            0..=8 => Complexity::Simple,
            9..=16 => Complexity::Moderate,
            _ => Complexity::Complex,
        }
    }

    /// A decision of the same shape as [`crate::Router::route`].
    pub fn route(&self, req: &RouteRequest) -> RoutingDecision {
        let mut ranked: Vec<(String, f64)> = self
            .scores(&req.text)
            .into_iter()
            .filter(|x| x.1 > 0.0)
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let complexity = Self::complexity(&req.text);
        let top = ranked.first().map(|x| x.1).unwrap_or(0.0);
        let plan: Vec<&(String, f64)> =
            ranked.iter().take(3).filter(|x| x.1 >= 0.5 * top).collect();
        let base = classify::base_minutes(complexity);
        let minutes = if plan.is_empty() { 0.0 } else { base };
        let choice =
            classify::choose_model(complexity, minutes, req.budget_usd, req.max_duration_min);
        let primary = ranked.first().map(|x| x.0.clone());
        RoutingDecision {
            request_id: "baseline".into(),
            request: req.text.clone(),
            classification: Classification {
                domains: vec![],
                complexity,
                complexity_score: req.text.split_whitespace().count() as f64,
                contexts: vec![],
                patterns: vec![],
                urgency: classify::urgency(&req.text),
                estimated_duration_min: choice.duration_min,
            },
            agent: None,
            fallbacks: ranked.iter().skip(1).take(3).map(|x| x.0.clone()).collect(),
            confidence: if top > 0.0 {
                (top / 100.0).min(1.0)
            } else {
                0.0
            },
            plan: CollaborationPlan {
                coordinator: (plan.len() > 1).then(|| "jira-orchestrator".to_string()),
                phases: plan
                    .iter()
                    .map(|x| Phase {
                        plugin: x.0.clone(),
                        agent: None,
                        depends_on: vec![],
                        parallel: plan.len() > 1,
                        duration_min: choice.duration_min,
                    })
                    .collect(),
            },
            strategy: if plan.len() > 1 {
                Strategy::Parallel
            } else {
                Strategy::Single
            },
            model: choice.model,
            estimated_cost_usd: choice.cost_usd,
            estimated_duration_min: choice.duration_min,
            opus_cost_usd: choice.opus_cost_usd,
            abstain_reason: primary.is_none().then(|| "no keyword matched".to_string()),
            evidence: Default::default(),
            candidates: ranked
                .iter()
                .take(5)
                .map(|x| Candidate {
                    plugin: x.0.clone(),
                    score: x.1,
                    agent: None,
                })
                .collect(),
            explanation: ranked
                .iter()
                .take(4)
                .map(|x| format!("{} {:.0} points", x.0, x.1))
                .collect(),
            primary_plugin: primary,
            signals: "keyword baseline".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_catalog::{Manifest, Plugin};

    fn plugin(name: &str, keywords: &[&str], priority: u8) -> Plugin {
        let mut m = Manifest::default_for(name);
        m.routing.priority = priority;
        Plugin {
            name: name.into(),
            version: "1".into(),
            description: String::new(),
            keywords: keywords.iter().map(|s| s.to_string()).collect(),
            agents: vec![],
            commands: vec![],
            mcp_servers: vec![],
            manifest: m,
            claude_dir: None,
            manifest_file: None,
        }
    }

    #[test]
    fn thirty_points_per_domain_scaled_by_priority() {
        let mut a = plugin("a", &["home-assistant", "lights"], 5);
        a.manifest.routing.keywords = vec!["sunset".into()];
        a.manifest.routing.context_patterns = vec!["porch.*light".into()];
        let c = Catalog {
            plugins: vec![a, plugin("b", &["lights"], 10)],
            diagnostics: vec![],
        };
        let b = BaselineRouter::new(&c);
        let s = b.scores("Turn on the porch lights in Home Assistant at sunset");
        // a: 2 domains (60) + 1 context (20) + 1 pattern (15) = 95 × 0.5
        assert_eq!(s[0], ("a".to_string(), 47.5));
        // b: 1 domain (30) × 1.0
        assert_eq!(s[1], ("b".to_string(), 30.0));
        let d = b.route(&RouteRequest::new(
            "Turn on the porch lights in Home Assistant at sunset",
        ));
        assert_eq!(d.primary_plugin.as_deref(), Some("a"));
        let d = b.route(&RouteRequest::new("book me a flight"));
        assert_eq!(d.primary_plugin, None);
    }
}
