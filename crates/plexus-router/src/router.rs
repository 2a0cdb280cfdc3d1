//! The router: query the index, aggregate to plugins, decide, plan, price.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use plexus_catalog::Catalog;
use serde::{Deserialize, Serialize};

use crate::calibrate::ConfidenceModel;
use crate::classify::{self, ComplexityModel};
use crate::decision::{
    Candidate, Classification, CollaborationPlan, Evidence, Phase, RouteRequest, RoutingDecision,
    Strategy,
};
use crate::index::{pattern_literals, Bm25Params, DocKind, Index};
use crate::learning::OutcomeStats;
use crate::semantic::{Embedder, SemanticConfig, SemanticIndex};

/// Scoring weights and calibrated thresholds.
///
/// The thresholds are on normalised quantities (coverage and normalised
/// score lie in 0–1, ratios relative to the best plugin), so they carry over
/// between catalogs better than raw BM25 scores would. `docs/routing.md`
/// says how the defaults were fitted and checked on held-out folds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RouterConfig {
    pub bm25: Bm25Params,
    /// Query weight of a bigram term relative to a word.
    pub bigram_weight: f32,
    /// Plugin score = mix × (best doc + plugin_doc_weight × plugin doc)
    ///              + (1 − mix) × Σ over query terms of the plugin's best match.
    pub best_doc_mix: f32,
    pub plugin_doc_weight: f32,
    /// How much the manifest's routing priority (1–10, default 5) scales a
    /// plugin's score: × (1 + priority_weight × (priority − 5) / 5).
    pub priority_weight: f32,
    /// Confidence from the best plugin's evidence; abstain below its threshold.
    pub confidence: ConfidenceModel,
    /// A runner-up joins the plan when its score is at least this share of the
    /// primary's...
    pub collab_min_ratio: f64,
    /// ...and it adds at least this much new evidence (share of the primary's score).
    pub collab_min_gain: f64,
    /// Runners-up below this share of the primary's score are not fallbacks.
    pub fallback_min_ratio: f64,
    pub complexity: ComplexityModel,
    /// How far outcomes move scores: a perfect record multiplies by 1 + w/2.
    pub learning_weight: f64,
    /// Fusion with the sentence embedding, when the router has one.
    #[serde(default)]
    pub semantic: SemanticConfig,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            bm25: Bm25Params::default(),
            bigram_weight: 0.5,
            best_doc_mix: 0.5,
            plugin_doc_weight: 0.5,
            priority_weight: 0.0,
            confidence: ConfidenceModel::default(),
            collab_min_ratio: 0.7,
            collab_min_gain: 0.1,
            fallback_min_ratio: 0.15,
            complexity: ComplexityModel::default(),
            learning_weight: 0.3,
            semantic: SemanticConfig::default(),
        }
    }
}

/// One analysed query term.
#[derive(Debug, Clone)]
struct QTerm {
    id: Option<u32>,
    idf: f32,
    weight: f32,
    pos: usize,
    unigram: bool,
}

/// Per-plugin result of scoring one request.
#[derive(Debug, Clone, Copy, Default)]
struct PluginScore {
    score: f32,
    /// The BM25F score before priority and learnt outcomes scale it.
    raw: f32,
    coverage: f32,
    best_doc: Option<u32>,
    /// Cosine of the request with the plugin's closest document (0 without
    /// the embedding).
    semantic: f32,
}

/// Everything the scoring pass found, before the decision.
struct Scored {
    q: Vec<QTerm>,
    doc_scores: Vec<f32>,
    /// contrib[p * nq + i]: the best weight of query term i in any doc of plugin p.
    contrib: Vec<f32>,
    plugins: Vec<PluginScore>,
    /// Most any document could score on this request (words only).
    max_possible: f32,
}

/// The routing engine. Build once per catalog; `route` is cheap.
#[derive(Debug)]
pub struct Router {
    index: Index,
    config: RouterConfig,
    doc_stats: Vec<OutcomeStats>,
    doc_mult: Vec<f32>,
    plugin_stats: Vec<OutcomeStats>,
    plugin_mult: Vec<f32>,
    available: Vec<bool>,
    coordinator: Option<String>,
    fallbacks_declared: Vec<Vec<String>>,
    plugin_by_name: HashMap<String, u32>,
    counter: AtomicU64,
    /// The sentence embedder and the documents' vectors; None: BM25F alone.
    embedder: Option<Arc<dyn Embedder>>,
    semantic: Option<SemanticIndex>,
    /// Why the router runs on BM25F alone, when it does.
    semantic_off: Option<String>,
}

impl Router {
    /// Index `catalog` with the default configuration.
    pub fn new(catalog: &Catalog) -> Router {
        Router::with_config(catalog, RouterConfig::default())
    }

    pub fn with_config(catalog: &Catalog, config: RouterConfig) -> Router {
        Router::with_embedder(catalog, config, None)
    }

    /// Index `catalog` and embed every document with `embedder` (None, or an
    /// embedding failure: BM25F alone, and [`Router::semantic_status`] says why).
    pub fn with_embedder(
        catalog: &Catalog,
        config: RouterConfig,
        embedder: Option<Arc<dyn Embedder>>,
    ) -> Router {
        let index = Index::build(catalog, config.bm25);
        let (semantic, semantic_off) = match &embedder {
            None => (None, Some("no embedding model loaded".to_string())),
            Some(e) => {
                let texts: Vec<Vec<&str>> = index
                    .docs
                    .iter()
                    .map(|d| d.texts.iter().map(String::as_str).collect())
                    .collect();
                match SemanticIndex::build(e.as_ref(), &texts) {
                    Ok(s) => (Some(s), None),
                    Err(err) => (None, Some(format!("embedding the catalog failed: {err}"))),
                }
            }
        };
        let nd = index.docs.len();
        let np = index.plugins.len();
        // The seed names jira-orchestrator the coordinator; a catalog without it
        // falls back to a plugin whose manifest declares orchestration patterns.
        let coordinator = catalog
            .plugin("jira-orchestrator")
            .or_else(|| {
                catalog
                    .plugins
                    .iter()
                    .find(|p| !p.manifest.orchestration.patterns.is_empty())
            })
            .map(|p| p.name.clone());
        Router {
            doc_stats: vec![OutcomeStats::default(); nd],
            doc_mult: vec![1.0; nd],
            plugin_stats: vec![OutcomeStats::default(); np],
            plugin_mult: vec![1.0; np],
            available: vec![true; np],
            coordinator,
            fallbacks_declared: catalog
                .plugins
                .iter()
                .map(|p| p.manifest.error_handling.fallback.clone())
                .collect(),
            plugin_by_name: index
                .plugins
                .iter()
                .enumerate()
                .map(|(i, p)| (p.name.clone(), i as u32))
                .collect(),
            index,
            config,
            counter: AtomicU64::new(0),
            embedder: if semantic.is_some() { embedder } else { None },
            semantic,
            semantic_off,
        }
    }

    /// Use `embedder` from now on (None: BM25F alone), embedding every
    /// document; what was learned and availability are kept. On an
    /// embedding failure the router stays on BM25F and says why.
    pub fn set_embedder(&mut self, embedder: Option<Arc<dyn Embedder>>) {
        let Some(e) = embedder else {
            self.embedder = None;
            self.semantic = None;
            self.semantic_off = Some("no embedding model loaded".to_string());
            return;
        };
        let texts: Vec<Vec<&str>> = self
            .index
            .docs
            .iter()
            .map(|d| d.texts.iter().map(String::as_str).collect())
            .collect();
        match SemanticIndex::build(e.as_ref(), &texts) {
            Ok(s) => {
                self.semantic = Some(s);
                self.embedder = Some(e);
                self.semantic_off = None;
            }
            Err(err) => {
                self.semantic = None;
                self.embedder = None;
                self.semantic_off = Some(format!("embedding the catalog failed: {err}"));
            }
        }
    }

    /// Say why the router runs on BM25F alone (e.g. "loading the model").
    pub fn set_semantic_off_reason(&mut self, why: impl Into<String>) {
        if self.semantic.is_none() {
            self.semantic_off = Some(why.into());
        }
    }

    /// The embedding model in use, or why there is none (BM25F alone).
    pub fn semantic_status(&self) -> Result<&str, &str> {
        match (&self.semantic, &self.semantic_off) {
            (Some(s), _) => Ok(s.model.as_str()),
            (None, Some(why)) => Err(why.as_str()),
            (None, None) => Err("no embedding model loaded"),
        }
    }

    /// The request's embedding, when the router has a model (None also for
    /// blank text, or when the model fails on it).
    pub fn embed_query(&self, text: &str) -> Option<Vec<f32>> {
        if text.trim().is_empty() {
            return None;
        }
        let e = self.embedder.as_ref()?;
        e.embed(&[text]).ok()?.pop()
    }

    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    /// Index a changed catalog (e.g. commands discovered at run time: an MCP
    /// server's tools), keeping the configuration, what was learned about
    /// the plugins and documents that are still there, and availability.
    pub fn reindex(&mut self, catalog: &Catalog) {
        let mut next = Router::with_embedder(catalog, self.config, self.embedder.clone());
        for (name, &p) in &self.plugin_by_name {
            let Some(&q) = next.plugin_by_name.get(name) else {
                continue;
            };
            let (p, q) = (p as usize, q as usize);
            next.plugin_stats[q] = self.plugin_stats[p];
            next.available[q] = self.available[p];
            for d in self.index.plugins[p].docs.clone() {
                let m = &self.index.docs[d as usize];
                let same = next.index.plugins[q].docs.clone().find(|&e| {
                    let n = &next.index.docs[e as usize];
                    n.kind == m.kind && n.name == m.name
                });
                if let Some(e) = same {
                    next.doc_stats[e as usize] = self.doc_stats[d as usize];
                }
            }
        }
        next.counter = AtomicU64::new(self.counter.load(Ordering::Relaxed));
        next.refresh_multipliers();
        *self = next;
    }

    /// Replace the thresholds (the index keeps its BM25 parameters).
    pub fn set_config(&mut self, config: RouterConfig) {
        self.config = config;
    }

    /// Number of indexed documents (plugins + agents + commands).
    pub fn doc_count(&self) -> usize {
        self.index.docs.len()
    }

    /// Mark a plugin up or down (e.g. its circuit breaker opened). A plugin
    /// that is down is never chosen, planned or offered as a fallback.
    /// Returns false when the plugin is unknown.
    pub fn set_available(&mut self, plugin: &str, available: bool) -> bool {
        match self.plugin_by_name.get(plugin) {
            Some(&p) => {
                self.available[p as usize] = available;
                true
            }
            None => false,
        }
    }

    pub fn is_available(&self, plugin: &str) -> bool {
        self.plugin_by_name
            .get(plugin)
            .is_some_and(|&p| self.available[p as usize])
    }

    /// Record how a call to `agent` (`agent:NAME`, `command:NAME` or a bare
    /// name; empty for the plugin as a whole) of `plugin` went. Later scores
    /// of that agent and plugin shift modestly. Returns false when the plugin
    /// is unknown.
    pub fn record_outcome(
        &mut self,
        plugin: &str,
        agent: &str,
        success: bool,
        latency_ms: u64,
    ) -> bool {
        let Some(&p) = self.plugin_by_name.get(plugin) else {
            return false;
        };
        let p = p as usize;
        let doc = self.find_doc(p, agent);
        self.plugin_stats[p].record(success, latency_ms as f64);
        if let Some(d) = doc {
            self.doc_stats[d].record(success, latency_ms as f64);
        }
        self.refresh_multipliers();
        true
    }

    /// The outcome record of an agent (see `record_outcome` for the name forms).
    pub fn outcome_stats(&self, plugin: &str, agent: &str) -> Option<OutcomeStats> {
        let p = *self.plugin_by_name.get(plugin)? as usize;
        match self.find_doc(p, agent) {
            Some(d) => Some(self.doc_stats[d]),
            None if agent.is_empty() => Some(self.plugin_stats[p]),
            None => None,
        }
    }

    fn find_doc(&self, p: usize, agent: &str) -> Option<usize> {
        if agent.is_empty() {
            return None;
        }
        let (kind, name) = match agent.split_once(':') {
            Some(("agent", n)) => (Some(DocKind::Agent), n),
            Some(("command", n)) => (Some(DocKind::Command), n.trim_start_matches('/')),
            _ => (None, agent.trim_start_matches('/')),
        };
        let r = self.index.plugins[p].docs.clone();
        r.map(|d| d as usize).find(|&d| {
            let m = &self.index.docs[d];
            m.name == name && kind.is_none_or(|k| k == m.kind)
        })
    }

    fn refresh_multipliers(&mut self) {
        let w = self.config.learning_weight;
        let typical = |stats: &[OutcomeStats]| {
            let ls: Vec<f64> = stats.iter().filter_map(|s| s.latency_ms).collect();
            (!ls.is_empty()).then(|| ls.iter().sum::<f64>() / ls.len() as f64)
        };
        let td = typical(&self.doc_stats);
        for (m, s) in self.doc_mult.iter_mut().zip(&self.doc_stats) {
            *m = s.multiplier(w, td) as f32;
        }
        let tp = typical(&self.plugin_stats);
        for (m, s) in self.plugin_mult.iter_mut().zip(&self.plugin_stats) {
            *m = s.multiplier(w, tp) as f32;
        }
    }

    fn analyse(&self, text: &str) -> Vec<QTerm> {
        let ix = &self.index;
        let mut q: Vec<QTerm> = vec![];
        let mut seen: HashMap<String, usize> = HashMap::new();
        for tok in ix.analyzer.analyze(text) {
            if let Some(&i) = seen.get(&tok.term) {
                q[i].weight += if q[i].unigram {
                    1.0
                } else {
                    self.config.bigram_weight
                };
                continue;
            }
            if q.len() >= 64 {
                break;
            }
            let unigram = !tok.term.contains('_');
            let id = ix.terms.get(&tok.term).copied();
            let idf = match id {
                Some(id) => ix.idf[id as usize],
                None => ix.idf_unseen,
            };
            seen.insert(tok.term, q.len());
            q.push(QTerm {
                id,
                idf,
                weight: if unigram {
                    1.0
                } else {
                    self.config.bigram_weight
                },
                pos: tok.pos,
                unigram,
            });
        }
        q
    }

    fn score(&self, text: &str, qvec: Option<&[f32]>) -> Scored {
        let ix = &self.index;
        let cfg = &self.config;
        let q = self.analyse(text);
        let nq = q.len();
        let nd = ix.docs.len();
        let np = ix.plugins.len();
        let mut doc_scores = vec![0f32; nd];
        let mut contrib = vec![0f32; np * nq.max(1)];
        for (i, t) in q.iter().enumerate() {
            let Some(id) = t.id else { continue };
            for post in &ix.postings[id as usize] {
                let w = post.w * t.weight;
                doc_scores[post.doc as usize] += w;
                let c = &mut contrib[ix.docs[post.doc as usize].plugin as usize * nq + i];
                if w > *c {
                    *c = w;
                }
            }
        }
        let max_term = |t: &QTerm| ix.max_term_weight(t.idf) * t.weight;
        let max_possible: f32 = q.iter().filter(|t| t.unigram).map(max_term).sum();
        let idf_total: f32 = q
            .iter()
            .filter(|t| t.unigram)
            .map(|t| t.idf * t.weight)
            .sum();
        let cos: Option<Vec<f32>> = match (qvec, &self.semantic) {
            (Some(q), Some(s)) => Some(s.cosines(q)),
            _ => None,
        };
        let sem = &cfg.semantic;
        let norm = |x: f32| {
            if max_possible > 0.0 {
                x / max_possible
            } else {
                0.0
            }
        };
        let mut plugins = vec![PluginScore::default(); np];
        for (p, pm) in ix.plugins.iter().enumerate() {
            let mut best = 0f32;
            let mut best_doc = None;
            let mut best_agent = f32::MIN;
            for d in pm.docs.clone() {
                let s = doc_scores[d as usize] * self.doc_mult[d as usize];
                if s > best {
                    best = s;
                }
                // The agent: BM25F alone, or mixed with the cosine.
                let a = match &cos {
                    Some(c) => {
                        (1.0 - sem.agent_weight) * norm(s)
                            + sem.agent_weight * c[d as usize] * self.doc_mult[d as usize]
                    }
                    None => s,
                };
                if a > best_agent && (cos.is_some() || s > 0.0) {
                    best_agent = a;
                    best_doc = Some(d);
                }
            }
            let semantic = cos
                .as_ref()
                .map(|c| {
                    std::iter::once(pm.plugin_doc)
                        .chain(pm.docs.clone())
                        .map(|d| c[d as usize])
                        .fold(0f32, f32::max)
                })
                .unwrap_or(0.0);
            let row = &contrib[p * nq..p * nq + nq];
            let union: f32 = row.iter().sum();
            let covered: f32 = q
                .iter()
                .zip(row)
                .filter(|(t, c)| t.unigram && **c > 0.0)
                .map(|(t, _)| t.idf * t.weight)
                .sum();
            let pdoc = doc_scores[pm.plugin_doc as usize];
            let mix = cfg.best_doc_mix;
            let raw = mix * (best + cfg.plugin_doc_weight * pdoc) + (1.0 - mix) * union;
            let prio = 1.0 + cfg.priority_weight * (pm.priority as f32 - 5.0) / 5.0;
            let fused = match &cos {
                Some(_) => (1.0 - sem.weight) * norm(raw).min(1.0) + sem.weight * semantic,
                None => raw,
            };
            let s = fused * prio.max(0.05) * self.plugin_mult[p];
            plugins[p] = PluginScore {
                score: s,
                semantic,
                raw,
                coverage: if idf_total > 0.0 {
                    covered / idf_total
                } else {
                    0.0
                },
                best_doc,
            };
        }
        Scored {
            q,
            doc_scores,
            contrib,
            plugins,
            max_possible,
        }
    }

    /// How well plugin `p` explains the request (see [`Evidence`]).
    fn evidence(&self, sc: &Scored, p: usize, runner_up: Option<usize>) -> Evidence {
        let ix = &self.index;
        let ps = sc.plugins[p];
        let nq = sc.q.len();
        let row = &sc.contrib[p * nq..p * nq + nq];
        let mut total = 0f32;
        let mut in_doc = 0f32;
        let mut words = 0;
        let mut matched = 0;
        let mut info = 0f32;
        for (i, t) in sc.q.iter().enumerate().filter(|(_, t)| t.unigram) {
            let w = t.idf * t.weight;
            total += w;
            words += 1;
            if row[i] > 0.0 {
                matched += 1;
                info += t.idf;
            }
            let hit = match (t.id, ps.best_doc) {
                (Some(id), Some(d)) => ix.postings[id as usize]
                    .binary_search_by_key(&d, |x| x.doc)
                    .is_ok(),
                _ => false,
            };
            if hit {
                in_doc += w;
            }
        }
        let s1 = ps.score.max(1e-9);
        let other = (0..sc.plugins.len())
            .filter(|&o| o != p && self.available[o])
            .map(|o| sc.plugins[o].semantic)
            .fold(0f32, f32::max);
        Evidence {
            semantic: ps.semantic as f64,
            semantic_margin: (ps.semantic - other) as f64,
            coverage: ps.coverage as f64,
            doc_coverage: if total > 0.0 {
                (in_doc / total) as f64
            } else {
                0.0
            },
            norm_score: if sc.max_possible > 0.0 {
                ((ps.raw / sc.max_possible) as f64).min(1.0)
            } else {
                0.0
            },
            info: (info / ix.idf_unseen.max(1e-6)) as f64,
            margin: runner_up
                .map(|r| (1.0 - sc.plugins[r].score / s1).clamp(0.0, 1.0) as f64)
                .unwrap_or(1.0),
            words,
            matched_words: matched,
        }
    }

    fn agent_label(&self, d: Option<u32>) -> Option<String> {
        d.map(|d| {
            let m = &self.index.docs[d as usize];
            format!("{}:{}", m.kind.as_str(), m.name)
        })
    }

    /// Route one request (embedding it first when the router has a model).
    pub fn route(&self, req: &RouteRequest) -> RoutingDecision {
        let q = self.embed_query(&req.text);
        self.route_embedded(req, q.as_deref())
    }

    /// Route one request whose embedding is already known (`None`: BM25F
    /// alone). The embedding is the costly part, so benches and evaluations
    /// compute it once.
    pub fn route_embedded(&self, req: &RouteRequest, qvec: Option<&[f32]>) -> RoutingDecision {
        let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let cfg = &self.config;
        let ix = &self.index;
        let qvec = qvec.filter(|_| self.semantic.is_some() && !req.text.trim().is_empty());
        let sc = self.score(&req.text, qvec);
        let nq = sc.q.len();
        let mut explanation = vec![];
        let confidence_model = if qvec.is_some() {
            cfg.semantic.confidence
        } else {
            cfg.confidence
        };
        let used_signals = match (qvec, &self.semantic, self.semantic_status()) {
            (Some(_), Some(s), _) => format!("bm25f+{}", s.model),
            (_, _, Err(why)) => format!("bm25f alone: {why}"),
            _ => "bm25f alone: blank request".to_string(),
        };

        // Rank available plugins.
        let mut ranked: Vec<usize> = (0..ix.plugins.len())
            .filter(|&p| sc.plugins[p].score > 0.0)
            .collect();
        ranked.sort_by(|&a, &b| {
            sc.plugins[b]
                .score
                .total_cmp(&sc.plugins[a].score)
                .then(a.cmp(&b))
        });
        let down: Vec<usize> = ranked
            .iter()
            .copied()
            .filter(|&p| !self.available[p])
            .collect();
        ranked.retain(|&p| self.available[p]);
        for &p in &down {
            explanation.push(format!(
                "skipped {} (unavailable), score {:.2}",
                ix.plugins[p].name, sc.plugins[p].score
            ));
        }
        let candidates: Vec<Candidate> = ranked
            .iter()
            .take(5)
            .map(|&p| Candidate {
                plugin: ix.plugins[p].name.clone(),
                score: sc.plugins[p].score as f64,
                agent: self.agent_label(sc.plugins[p].best_doc),
            })
            .collect();

        // Abstain?
        let top = ranked.first().copied();
        let evidence = top.map(|p| self.evidence(&sc, p, ranked.get(1).copied()));
        let top_confidence = evidence.map(|e| confidence_model.confidence(&e));
        let abstain_reason = match (top, evidence, top_confidence) {
            (Some(p), Some(ev), Some(c)) if c < confidence_model.abstain_below => Some(format!(
                "confidence {c:.2} is below {:.2}: the best match, {}, covers {:.0}% of the request's \
                 informative words ({:.0}% in one agent or command), scores {:.2} of the possible \
                 and has cosine {:.2} ({:+.2} over the next plugin)",
                confidence_model.abstain_below,
                ix.plugins[p].name,
                100.0 * ev.coverage,
                100.0 * ev.doc_coverage,
                ev.norm_score,
                ev.semantic,
                ev.semantic_margin
            )),
            (Some(_), _, _) => None,
            _ if down.is_empty() => Some("no word of the request matches any plugin".to_string()),
            _ => Some("every plugin that matches is unavailable".to_string()),
        };

        let signals = classify::signals(&req.text);
        let urgency = classify::urgency(&req.text);

        if let Some(reason) = abstain_reason {
            explanation.push(reason.clone());
            for c in candidates.iter().take(3) {
                explanation.push(format!("runner-up {} score {:.2}", c.plugin, c.score));
            }
            let complexity_score = classify::complexity_score(&signals);
            let complexity = cfg.complexity.classify(complexity_score);
            return RoutingDecision {
                request_id: format!("route-{n:06}"),
                request: req.text.clone(),
                classification: Classification {
                    domains: vec![],
                    complexity,
                    complexity_score,
                    contexts: vec![],
                    patterns: vec![],
                    urgency,
                    estimated_duration_min: 0.0,
                },
                primary_plugin: None,
                agent: None,
                fallbacks: vec![],
                confidence: top_confidence.unwrap_or(0.0),
                plan: CollaborationPlan {
                    coordinator: None,
                    phases: vec![],
                },
                strategy: Strategy::Single,
                model: complexity.model(),
                estimated_cost_usd: 0.0,
                estimated_duration_min: 0.0,
                opus_cost_usd: 0.0,
                abstain_reason: Some(reason),
                evidence: evidence.unwrap_or_default(),
                candidates,
                explanation,
                signals: used_signals,
            };
        }
        let primary = top.expect("not abstaining");
        let s1 = sc.plugins[primary].score;
        // New BM25F evidence is measured against the primary's BM25F score.
        let raw1 = sc.plugins[primary].raw.max(1e-6);
        let row = |p: usize| &sc.contrib[p * nq..p * nq + nq];

        // Collaboration: runners-up close enough that add evidence of their own.
        let (collab_min_ratio, collab_min_gain) = if qvec.is_some() {
            (cfg.semantic.collab_min_ratio, cfg.semantic.collab_min_gain)
        } else {
            (cfg.collab_min_ratio, cfg.collab_min_gain)
        };
        let mut plan = vec![primary];
        for &p in ranked.iter().skip(1).take(4) {
            if plan.len() >= 3 {
                break;
            }
            let ratio = (sc.plugins[p].score / s1) as f64;
            if ratio < collab_min_ratio {
                break;
            }
            let gain: f32 = (0..nq)
                .map(|i| {
                    let have = plan.iter().map(|&q| row(q)[i]).fold(0f32, f32::max);
                    (row(p)[i] - have).max(0.0)
                })
                .sum();
            let gain = (gain / raw1) as f64;
            if gain >= collab_min_gain {
                explanation.push(format!(
                    "{} joins the plan: score {:.2} ({:.0}% of the primary) and adds {:.0}% new evidence",
                    ix.plugins[p].name,
                    sc.plugins[p].score,
                    100.0 * ratio,
                    100.0 * gain
                ));
                plan.push(p);
            }
        }

        // Order phases by where in the request each plugin's own evidence sits.
        let mention = |p: usize| -> usize {
            let mut best = (f32::MIN, usize::MAX);
            for i in 0..nq {
                let others = plan
                    .iter()
                    .filter(|&&q| q != p)
                    .map(|&q| row(q)[i])
                    .fold(0f32, f32::max);
                let own = row(p)[i] - others;
                if row(p)[i] > 0.0 && own > best.0 {
                    best = (own, sc.q[i].pos);
                }
            }
            best.1
        };
        let mut order: Vec<(usize, usize)> = plan.iter().map(|&p| (mention(p), p)).collect();
        order.sort();
        let cx_signals = classify::Signals {
            plugins: plan.len(),
            agent_model: sc.plugins[primary]
                .best_doc
                .and_then(|d| ix.docs[d as usize].model),
            ..signals
        };
        let complexity = classify::complexity(&cx_signals, &cfg.complexity);
        let base = classify::base_minutes(complexity);
        let mut phases: Vec<Phase> = vec![];
        for (k, &(pos, p)) in order.iter().enumerate() {
            let depends = k > 0 && sequenced(&req.text, order[k - 1].0, pos);
            phases.push(Phase {
                plugin: ix.plugins[p].name.clone(),
                agent: self.agent_label(sc.plugins[p].best_doc),
                depends_on: if depends { vec![k - 1] } else { vec![] },
                parallel: false,
                duration_min: if p == primary { base } else { 0.6 * base },
            });
        }
        let any_dep = phases.iter().any(|p| !p.depends_on.is_empty());
        let all_dep = phases.iter().skip(1).all(|p| !p.depends_on.is_empty());
        let strategy = match (phases.len(), any_dep, all_dep) {
            (1, _, _) => Strategy::Single,
            (_, false, _) => Strategy::Parallel,
            (_, true, true) => Strategy::Sequential,
            _ => Strategy::Mixed,
        };
        let np = phases.len();
        for k in 0..np {
            let dependent = (0..np).any(|j| phases[j].depends_on.contains(&k));
            phases[k].parallel = np > 1 && phases[k].depends_on.is_empty() && !dependent;
        }
        // Critical path plus a little coordination per extra plugin.
        let mut finish = vec![0f64; np];
        for k in 0..np {
            let start = phases[k]
                .depends_on
                .iter()
                .map(|&d| finish[d])
                .fold(0.0, f64::max);
            finish[k] = start + phases[k].duration_min;
        }
        let minutes = finish.iter().copied().fold(0.0, f64::max) + 2.0 * (np - 1) as f64;
        let choice =
            classify::choose_model(complexity, minutes, req.budget_usd, req.max_duration_min);
        let scale = choice.duration_min / minutes;
        for ph in &mut phases {
            ph.duration_min *= scale;
        }

        // Fallbacks: declared ones first, then runners-up.
        let mut fallbacks: Vec<String> = vec![];
        for f in &self.fallbacks_declared[primary] {
            if fallbacks.len() < 3 && f != &ix.plugins[primary].name && self.is_available(f) {
                fallbacks.push(f.clone());
            }
        }
        for &p in ranked.iter().skip(1) {
            if fallbacks.len() >= 3 || ((sc.plugins[p].score / s1) as f64) < cfg.fallback_min_ratio
            {
                break;
            }
            if !fallbacks.contains(&ix.plugins[p].name) {
                fallbacks.push(ix.plugins[p].name.clone());
            }
        }

        // Classification details from what matched.
        let mut contexts: Vec<(f32, String)> = vec![];
        for (i, t) in sc.q.iter().enumerate() {
            let c = plan.iter().map(|&p| row(p)[i]).fold(0f32, f32::max);
            if c > 0.0 && t.unigram {
                let w = surface(&req.text, t.pos).to_lowercase();
                if !contexts.iter().any(|(_, x)| x == &w) {
                    contexts.push((c, w));
                }
            }
        }
        contexts.sort_by(|a, b| b.0.total_cmp(&a.0));
        let contexts: Vec<String> = contexts.into_iter().take(6).map(|x| x.1).collect();
        let mut domains: Vec<String> = vec![];
        for &p in &plan {
            let pm = &ix.plugins[p];
            if !pm.domains.is_empty() {
                domains.extend(pm.domains.iter().cloned());
                continue;
            }
            for (kw, terms) in pm.keywords.iter().zip(&pm.keyword_terms) {
                let hit = terms.iter().any(|t| {
                    sc.q.iter()
                        .position(|q| q.id == Some(*t))
                        .is_some_and(|i| row(p)[i] > 0.0)
                });
                if hit && !domains.contains(kw) {
                    domains.push(kw.clone());
                }
            }
        }
        let lower = req.text.to_lowercase();
        let mut patterns: Vec<String> = vec![];
        for &p in &plan {
            for pat in &ix.plugins[p].patterns {
                let lits = pattern_literals(pat);
                if !lits.is_empty() && lits.iter().all(|l| lower.contains(&l.to_lowercase())) {
                    patterns.push(pat.clone());
                }
            }
        }

        let ps = sc.plugins[primary];
        let norm = evidence.map(|e| e.norm_score).unwrap_or(0.0);
        let confidence = top_confidence.unwrap_or(0.0);

        let agent = self.agent_label(ps.best_doc);
        let matched: Vec<String> = match ps.best_doc {
            Some(d) => {
                let mut m: Vec<(f32, String)> =
                    sc.q.iter()
                        .filter(|t| t.unigram)
                        .filter_map(|t| {
                            let id = t.id?;
                            let w = ix.postings[id as usize].iter().find(|x| x.doc == d)?.w;
                            Some((w, surface(&req.text, t.pos).to_string()))
                        })
                        .collect();
                m.sort_by(|a, b| b.0.total_cmp(&a.0));
                m.into_iter().map(|x| x.1).collect()
            }
            None => vec![],
        };
        explanation.insert(
            0,
            format!(
                "{} scores {:.2} ({:.0}% of the request's informative words matched, {:.2} of the possible score){}",
                ix.plugins[primary].name,
                s1,
                100.0 * ps.coverage,
                norm,
                match (&agent, ps.best_doc) {
                    (Some(a), Some(d)) => format!(
                        "; best fit {a} ({:.2}) on: {}",
                        sc.doc_scores[d as usize],
                        matched.join(", ")
                    ),
                    _ => String::new(),
                }
            ),
        );
        for c in candidates.iter().skip(1).take(3) {
            explanation.push(format!(
                "runner-up {} {:.2} ({:.0}% of the primary){}",
                c.plugin,
                c.score,
                100.0 * c.score / s1 as f64,
                c.agent
                    .as_deref()
                    .map(|a| format!(" via {a}"))
                    .unwrap_or_default()
            ));
        }
        if (self.plugin_mult[primary] - 1.0).abs() > 1e-3 {
            explanation.push(format!(
                "past outcomes weigh {} at ×{:.2}",
                ix.plugins[primary].name, self.plugin_mult[primary]
            ));
        }
        explanation.push(format!(
            "complexity {} (score {:.2}) → {}",
            complexity.as_str(),
            classify::complexity_score(&cx_signals),
            complexity.model()
        ));
        explanation.extend(choice.notes.iter().cloned());

        let plugins_in_plan: Vec<String> = phases.iter().map(|p| p.plugin.clone()).collect();
        // The primary comes first in the plan's plugin list.
        if let Some(i) = plugins_in_plan
            .iter()
            .position(|x| *x == ix.plugins[primary].name)
        {
            if i != 0 {
                // keep execution order in depends_on by remapping indexes
                let perm: Vec<usize> = std::iter::once(i)
                    .chain((0..np).filter(|&k| k != i))
                    .collect();
                let inv: Vec<usize> = {
                    let mut inv = vec![0; np];
                    for (new, &old) in perm.iter().enumerate() {
                        inv[old] = new;
                    }
                    inv
                };
                phases = perm
                    .iter()
                    .map(|&old| {
                        let mut ph = phases[old].clone();
                        ph.depends_on = ph.depends_on.iter().map(|&d| inv[d]).collect();
                        ph
                    })
                    .collect();
            }
        }
        let coordinator = if np > 1 {
            self.coordinator
                .clone()
                .or_else(|| Some(ix.plugins[primary].name.clone()))
        } else {
            None
        };

        RoutingDecision {
            request_id: format!("route-{n:06}"),
            request: req.text.clone(),
            classification: Classification {
                domains,
                complexity,
                complexity_score: classify::complexity_score(&cx_signals),
                contexts,
                patterns,
                urgency,
                estimated_duration_min: choice.duration_min,
            },
            primary_plugin: Some(ix.plugins[primary].name.clone()),
            agent,
            fallbacks,
            confidence,
            plan: CollaborationPlan {
                coordinator,
                phases,
            },
            strategy,
            model: choice.model,
            estimated_cost_usd: choice.cost_usd,
            estimated_duration_min: choice.duration_min,
            opus_cost_usd: choice.opus_cost_usd,
            abstain_reason: None,
            evidence: evidence.unwrap_or_default(),
            candidates,
            explanation,
            signals: used_signals,
        }
    }
}

/// The word of `text` starting at byte `pos`.
fn surface(text: &str, pos: usize) -> &str {
    let rest = &text[pos..];
    let end = rest
        .find(|c: char| !(c.is_alphanumeric() || c == '-' || c == '.'))
        .unwrap_or(rest.len());
    rest[..end].trim_end_matches(['.', '-'])
}

/// True when the text from the first mention on says the second plugin's
/// part comes after the first's ("then", "once", "when it is done"...).
fn sequenced(text: &str, a: usize, b: usize) -> bool {
    if a >= b || b > text.len() {
        return false;
    }
    let between = format!("{} ", text[a..].to_lowercase());
    const CUES: &[&str] = &[
        " then ",
        " after ",
        " afterwards",
        " once ",
        " when ",
        " so ",
        " so that ",
        " and report",
        " finally",
        " followed by",
        " before ",
        " next ",
    ];
    CUES.iter().any(|c| between.contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route_batch_line;
    use plexus_catalog::{Agent, Command, Manifest, ModelTier, Plugin};

    fn plugin(name: &str, description: &str, agents: &[(&str, &str)]) -> Plugin {
        Plugin {
            name: name.into(),
            version: "1".into(),
            description: description.into(),
            keywords: vec![],
            agents: agents
                .iter()
                .map(|(n, d)| Agent {
                    name: n.to_string(),
                    description: d.to_string(),
                    ..Default::default()
                })
                .collect(),
            commands: vec![],
            mcp_servers: vec![],
            manifest: Manifest::default_for(name),
            claude_dir: None,
            manifest_file: None,
        }
    }

    #[test]
    fn reindex_adds_discovered_commands_and_keeps_what_was_learned() {
        let mut c = catalog();
        c.plugins.push(plugin("clock", "Clock", &[]));
        let mut r = Router::new(&c);
        r.record_outcome("jira-orchestrator", "agent:sprint-planner", false, 900);
        r.set_available("ui-kit", false);
        let before = r.outcome_stats("jira-orchestrator", "agent:sprint-planner");
        let text = "what is the current time in timezone Asia/Tokyo";
        assert_ne!(
            r.route(&RouteRequest::new(text)).agent.as_deref(),
            Some("command:get_current_time")
        );
        let clock = c.plugins.iter_mut().find(|p| p.name == "clock").unwrap();
        clock.commands.push(Command {
            name: "get_current_time".into(),
            description: "Get current time in a specific timezone".into(),
            argument_hint: Some("timezone; IANA timezone name".into()),
            ..Default::default()
        });
        r.reindex(&c);
        let d = r.route(&RouteRequest::new(text));
        assert_eq!(d.primary_plugin.as_deref(), Some("clock"), "{d:?}");
        assert_eq!(d.agent.as_deref(), Some("command:get_current_time"));
        assert_eq!(
            r.outcome_stats("jira-orchestrator", "agent:sprint-planner"),
            before
        );
        assert!(!r.is_available("ui-kit"));
    }

    /// A stand-in embedder for the fusion logic (the real model is tested
    /// in plexus-embed and by the held-out floor): one dimension per
    /// concept, counted from words that name it, plus a small constant.
    #[derive(Debug)]
    struct Concepts;
    const CONCEPTS: [&[&str]; 4] = [
        &[
            "lights",
            "lighting",
            "lamp",
            "lamps",
            "sprinkler",
            "garden",
            "fridge",
            "scene",
            "scenes",
            "home",
            "dimmer",
        ],
        &[
            "vault",
            "secrets",
            "password",
            "passwords",
            "credentials",
            "key",
        ],
        &[
            "react",
            "form",
            "forms",
            "page",
            "button",
            "theme",
            "component",
            "components",
        ],
        &["jira", "sprint", "issue", "ticket", "tickets", "backlog"],
    ];
    impl Embedder for Concepts {
        fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, crate::EmbedError> {
            Ok(texts
                .iter()
                .map(|t| {
                    let t = t.to_lowercase();
                    let mut v = vec![0.2f32; CONCEPTS.len() + 1];
                    for w in t.split(|c: char| !c.is_alphanumeric()) {
                        for (k, c) in CONCEPTS.iter().enumerate() {
                            v[k] += c.contains(&w) as u8 as f32;
                        }
                    }
                    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                    v.into_iter().map(|x| x / n).collect()
                })
                .collect())
        }
        fn dim(&self) -> usize {
            CONCEPTS.len() + 1
        }
        fn name(&self) -> &str {
            "concepts"
        }
    }

    fn open(mut cfg: RouterConfig) -> RouterConfig {
        cfg.confidence.abstain_below = 0.0;
        cfg.semantic.confidence.abstain_below = 0.0;
        cfg
    }

    #[test]
    fn the_embedding_routes_requests_whose_words_the_catalog_lacks() {
        let text = "the sprinkler in the garden should wait when rain comes";
        let bm25 = Router::with_config(&catalog(), open(RouterConfig::default()));
        let d = route(&bm25, text);
        assert_eq!(d.primary_plugin, None, "{d}");
        assert!(d.signals.starts_with("bm25f alone"), "{}", d.signals);
        assert!(d.to_string().contains("signals: bm25f alone"));
        assert_eq!(bm25.semantic_status(), Err("no embedding model loaded"));

        let fused = Router::with_embedder(
            &catalog(),
            open(RouterConfig::default()),
            Some(Arc::new(Concepts)),
        );
        assert_eq!(fused.semantic_status(), Ok("concepts"));
        let d = route(&fused, text);
        assert_eq!(d.primary_plugin.as_deref(), Some("home-lights"), "{d}");
        assert_eq!(d.signals, "bm25f+concepts");
        assert!(
            d.evidence.semantic > 0.5 && d.evidence.semantic_margin > 0.1,
            "{d:?}"
        );
        assert_eq!(d.to_batch_json()["signals"], "bm25f+concepts");
        // A blank request is not embedded.
        assert!(route(&fused, "  ").signals.contains("blank"));
    }

    #[test]
    fn the_agent_inside_the_plugin_is_chosen_with_the_embedding_too() {
        // Lexically the request matches the policy writer ("write",
        // "services") best; its meaning (credentials) is the rotator's.
        let mut cfg = open(RouterConfig::default());
        cfg.semantic.agent_weight = 1.0;
        let text = "write new credentials for the services in vault";
        let fused = Router::with_embedder(&catalog(), cfg, Some(Arc::new(Concepts)));
        let d = route(&fused, text);
        assert_eq!(d.primary_plugin.as_deref(), Some("secrets-keeper"), "{d}");
        assert_eq!(d.agent.as_deref(), Some("agent:secret-rotator"), "{d}");
        cfg.semantic.agent_weight = 0.0;
        let mut lexical = fused;
        lexical.set_config(cfg);
        let d = route(&lexical, text);
        assert_eq!(d.agent.as_deref(), Some("agent:policy-writer"), "{d}");
    }

    #[test]
    fn the_embedder_can_arrive_later_and_learning_survives() {
        let mut r = Router::with_config(&catalog(), open(RouterConfig::default()));
        r.set_semantic_off_reason("loading");
        assert_eq!(r.semantic_status(), Err("loading"));
        r.record_outcome("secrets-keeper", "agent:secret-rotator", true, 10);
        r.set_embedder(Some(Arc::new(Concepts)));
        assert_eq!(r.semantic_status(), Ok("concepts"));
        assert_eq!(
            r.outcome_stats("secrets-keeper", "agent:secret-rotator")
                .map(|s| s.successes),
            Some(1)
        );
        let d = route(&r, "the fridge lamp");
        assert_eq!(d.primary_plugin.as_deref(), Some("home-lights"), "{d}");
        r.set_embedder(None);
        assert!(r.semantic_status().is_err());
    }

    /// A small catalog in the shape of the real one (not its text).
    fn catalog() -> Catalog {
        let mut jira = plugin(
            "jira-orchestrator",
            "Jira issue tracking, sprints, pull requests and orchestration of other plugins",
            &[
                (
                    "sprint-planner",
                    "Plan sprints from team velocity and capacity in Jira",
                ),
                (
                    "pr-creator",
                    "Open a pull request for a finished Jira issue",
                ),
            ],
        );
        jira.commands.push(Command {
            name: "worklog".into(),
            description: "Log hours of work against a Jira issue".into(),
            ..Default::default()
        });
        Catalog {
            plugins: vec![
                jira,
                plugin(
                    "secrets-keeper",
                    "HashiCorp Vault secrets management for infrastructure",
                    &[
                        (
                            "secret-rotator",
                            "Rotate database passwords stored in Vault",
                        ),
                        ("policy-writer", "Write Vault access policies for services"),
                        (
                            "secrets-architect",
                            "Design and implement an end-to-end migration of all secrets across \
                             every service of the infrastructure into Vault",
                        ),
                    ],
                ),
                plugin(
                    "backup-a",
                    "Database backups",
                    &[("nightly", "Back up the database nightly to object storage")],
                ),
                plugin(
                    "backup-b",
                    "Database backups",
                    &[("nightly", "Back up the database nightly to object storage")],
                ),
                plugin(
                    "home-lights",
                    "Smart home lighting: lamps, dimmers, scenes and automations",
                    &[
                        (
                            "scene-builder",
                            "Create lighting scenes and turn lights on at sunset",
                        ),
                        ("dimmer-tuner", "Tune dimmer curves of smart lamps"),
                    ],
                ),
                plugin(
                    "ui-kit",
                    "React component library: buttons, forms, themes and accessibility",
                    &[
                        ("form-builder", "Build React forms with validation"),
                        (
                            "theme-designer",
                            "Design themes and colour tokens for React components",
                        ),
                    ],
                ),
            ],
            diagnostics: vec![],
        }
    }

    fn route(r: &Router, text: &str) -> RoutingDecision {
        r.route(&RouteRequest::new(text))
    }

    #[test]
    fn routes_to_the_plugin_and_agent_that_fit() {
        let r = Router::new(&catalog());
        let d = route(&r, "Rotate the database password kept in Vault");
        assert_eq!(d.primary_plugin.as_deref(), Some("secrets-keeper"), "{d}");
        assert_eq!(d.agent.as_deref(), Some("agent:secret-rotator"));
        assert!((0.0..=1.0).contains(&d.confidence));
        assert!(d.fallbacks.len() <= 3);
        assert!(!d.fallbacks.contains(&"secrets-keeper".to_string()));
        assert_eq!(d.strategy, Strategy::Single);
        assert_eq!(d.plugins(), vec!["secrets-keeper".to_string()]);
        let d = route(&r, "Log 3 hours of work against issue OPS-19");
        assert_eq!(d.primary_plugin.as_deref(), Some("jira-orchestrator"));
        assert_eq!(d.agent.as_deref(), Some("command:worklog"));
    }

    #[test]
    fn abstains_with_a_reason_on_off_topic_requests() {
        let r = Router::new(&catalog());
        for text in [
            "book me a flight",
            "What is the capital of Australia?",
            "Write me a poem about autumn leaves",
            "",
            "   ",
            "!!! ??? ...",
        ] {
            let d = route(&r, text);
            assert_eq!(d.primary_plugin, None, "{text:?} → {d}");
            assert!(d.agent.is_none() && d.fallbacks.is_empty() && d.plugins().is_empty());
            assert!(!d.abstain_reason.as_deref().unwrap_or("").is_empty());
            assert_eq!(d.estimated_cost_usd, 0.0);
            let j = d.to_batch_json();
            assert!(j["primary_plugin"].is_null());
            assert!(d.to_string().contains("no plugin chosen"));
        }
    }

    #[test]
    fn an_unavailable_plugin_is_skipped_for_its_fallback() {
        let mut c = catalog();
        // A second secrets plugin that fits a little less well.
        c.plugins.push(plugin(
            "vault-lite",
            "Secrets in Vault",
            &[("rotator", "Rotate passwords in Vault")],
        ));
        let mut r = Router::new(&c);
        let text = "Rotate the database password kept in Vault";
        let d = route(&r, text);
        assert_eq!(d.primary_plugin.as_deref(), Some("secrets-keeper"));
        assert!(d.fallbacks.contains(&"vault-lite".to_string()), "{d}");

        assert!(r.set_available("secrets-keeper", false));
        assert!(!r.is_available("secrets-keeper"));
        let d = route(&r, text);
        assert_eq!(d.primary_plugin.as_deref(), Some("vault-lite"), "{d}");
        assert!(!d.fallbacks.contains(&"secrets-keeper".to_string()));
        assert!(!d.plugins().contains(&"secrets-keeper".to_string()));
        assert!(d
            .explanation
            .iter()
            .any(|e| e.contains("skipped secrets-keeper")));

        assert!(r.set_available("secrets-keeper", true));
        assert_eq!(
            route(&r, text).primary_plugin.as_deref(),
            Some("secrets-keeper")
        );
        assert!(!r.set_available("no-such-plugin", false));
    }

    #[test]
    fn all_matching_plugins_down_means_abstain() {
        let mut r = Router::new(&catalog());
        r.set_available("secrets-keeper", false);
        let d = route(&r, "Vault");
        assert_eq!(d.primary_plugin, None, "{d}");
        assert!(d.abstain_reason.is_some());
    }

    #[test]
    fn outcomes_shift_later_decisions() {
        // backup-a and backup-b fit the request equally well.
        let mut r = Router::new(&catalog());
        let text = "Back up the database nightly to object storage";
        let first = route(&r, text).primary_plugin.unwrap();
        let other = if first == "backup-a" {
            "backup-b"
        } else {
            "backup-a"
        };
        for _ in 0..10 {
            assert!(r.record_outcome(&first, "agent:nightly", false, 900));
            assert!(r.record_outcome(other, "nightly", true, 100));
        }
        let d = route(&r, text);
        assert_eq!(d.primary_plugin.as_deref(), Some(other), "{d}");
        assert!(d.fallbacks.contains(&first));
        let s = r.outcome_stats(&first, "agent:nightly").unwrap();
        assert_eq!((s.successes, s.failures), (0, 10));
        assert!(!r.record_outcome("no-such-plugin", "x", true, 1));
        // A longer record of successes brings it back.
        for _ in 0..100 {
            r.record_outcome(&first, "agent:nightly", true, 100);
        }
        assert_eq!(
            route(&r, text).primary_plugin.as_deref(),
            Some(first.as_str())
        );
    }

    #[test]
    fn a_budget_or_time_limit_forces_a_cheaper_model() {
        let r = Router::new(&catalog());
        let text = "Design and implement an end-to-end migration of all secrets across every \
                    service into Vault, then rotate every database password";
        let free = r.route(&RouteRequest::new(text));
        assert_eq!(
            free.primary_plugin.as_deref(),
            Some("secrets-keeper"),
            "{free}"
        );
        assert_eq!(free.model, ModelTier::Opus, "{free}");
        let tight = r.route(&RouteRequest::new(text).with_budget(free.estimated_cost_usd / 3.0));
        assert!(tight.model < free.model, "{tight}");
        assert!(tight.estimated_cost_usd <= free.estimated_cost_usd / 3.0 + 1e-9);
        assert!(tight.explanation.iter().any(|e| e.contains("budget")));
        let quick =
            r.route(&RouteRequest::new(text).with_max_duration(free.estimated_duration_min * 0.9));
        assert!(quick.model < free.model);
        assert!(quick.estimated_duration_min <= free.estimated_duration_min * 0.9 + 1e-9);
        // Simple requests get haiku and save against always-opus.
        let d = route(&r, "Turn on the lights");
        assert_eq!(d.model, ModelTier::Haiku, "{d}");
        assert!(d.estimated_cost_usd < d.opus_cost_usd);
    }

    #[test]
    fn requests_spanning_plugins_get_a_coordinated_plan() {
        // The collaboration threshold is calibrated on the real catalog; the
        // toy one scores the second plugin lower, so admit it a bit sooner.
        let cfg = RouterConfig {
            collab_min_ratio: 0.5,
            ..RouterConfig::default()
        };
        let r = Router::with_config(&catalog(), cfg);
        let d = route(
            &r,
            "Build React forms with validation and design the colour theme of the React components, \
             then open a pull request for the Jira issue",
        );
        let plugins = d.plugins();
        assert!(plugins.len() >= 2, "{d}");
        assert_eq!(plugins[0], d.primary_plugin.clone().unwrap());
        assert_eq!(d.plan.coordinator.as_deref(), Some("jira-orchestrator"));
        assert_ne!(d.strategy, Strategy::Single);
        for (k, ph) in d.plan.phases.iter().enumerate() {
            assert!(ph.duration_min > 0.0);
            assert!(ph
                .depends_on
                .iter()
                .all(|&j| j < d.plan.phases.len() && j != k));
            if !ph.depends_on.is_empty() {
                assert!(!ph.parallel);
            }
        }
        let text = d.to_string();
        assert!(text.contains("plan ("), "{text}");
        assert!(
            text.contains("runner-up") || text.contains("joins the plan"),
            "{text}"
        );
    }

    #[test]
    fn batch_lines_give_decisions_or_error_objects_in_order() {
        let r = Router::new(&catalog());
        let lines = [
            r#"{"request": "Rotate the database password kept in Vault", "expect_plugins": ["x"]}"#,
            r#"{"request": "Rotate the database password"#,
            r#"["not", "an", "object"]"#,
            r#"{"text": "no request field"}"#,
            r#"{"request": 42}"#,
            "",
            r#"{"request": "book me a flight"}"#,
            r#"{"request": "Turn on the lights at sunset", "budget_usd": 0.0001}"#,
        ];
        let out: Vec<serde_json::Value> = lines.iter().map(|l| route_batch_line(&r, l)).collect();
        assert_eq!(out.len(), lines.len());
        assert_eq!(out[0]["primary_plugin"], "secrets-keeper");
        for k in [
            "request",
            "primary_plugin",
            "agent",
            "fallbacks",
            "plugins",
            "complexity",
            "model",
            "confidence",
            "strategy",
            "estimated_cost_usd",
            "estimated_duration_min",
        ] {
            assert!(out[0].get(k).is_some(), "missing {k}: {}", out[0]);
            assert!(out[6].get(k).is_some(), "missing {k}: {}", out[6]);
        }
        assert_eq!(
            out[0]["request"],
            "Rotate the database password kept in Vault"
        );
        for bad in &out[1..=5] {
            assert!(bad["error"].is_string(), "{bad}");
        }
        assert!(out[6]["primary_plugin"].is_null());
        assert_eq!(out[7]["primary_plugin"], "home-lights");
        assert_eq!(out[7]["model"], "haiku");
    }

    #[test]
    fn odd_input_never_panics() {
        let r = Router::new(&catalog());
        let huge = "rotate vault passwords and build react forms ".repeat(20_000);
        let texts = [
            String::new(),
            "\u{0}\u{1}\u{7f}".into(),
            "Vault—password rotation".into(),
            "ключи Vault и пароли базы данных".into(),
            "保管庫のパスワードを回転".into(),
            "🔐 vault 🔑 password 🏠 lights".into(),
            "a\u{301}e\u{301} Vault-Passwörter rotieren".into(),
            "PROJ-412—open a pull request·then log hours".into(),
            "x".repeat(100_000),
            huge,
        ];
        for t in &texts {
            let d = r.route(
                &RouteRequest::new(t.clone())
                    .with_budget(-1.0)
                    .with_max_duration(f64::NAN),
            );
            assert!((0.0..=1.0).contains(&d.confidence), "{t:?}");
            assert!(d.estimated_cost_usd.is_finite() && d.estimated_cost_usd >= 0.0);
            let _ = d.to_string();
            let _ = d.to_batch_json().to_string();
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        #[test]
        fn any_text_routes_without_panic(text in "\\PC{0,200}") {
            let r = Router::new(&catalog());
            let d = r.route(&RouteRequest::new(text.clone()));
            proptest::prop_assert!((0.0..=1.0).contains(&d.confidence));
            proptest::prop_assert!(d.fallbacks.len() <= 3);
            proptest::prop_assert_eq!(d.primary_plugin.is_none(), d.plugins().is_empty());
            let line = serde_json::json!({ "request": text }).to_string();
            let v = route_batch_line(&r, &line);
            proptest::prop_assert!(v.get("primary_plugin").is_some());
        }
    }
}
