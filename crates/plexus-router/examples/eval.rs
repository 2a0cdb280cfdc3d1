//! Measure the router held out, and fit its parameters by cross-validation.
//!
//! ```text
//! cargo run --release -p plexus-router --example eval -- \
//!     [--catalog DIR[,DIR...]]... [--labels FILE.jsonl]... [--folds K] \
//!     [--embed-dir DIR | --no-embed] [--errors]
//! ```
//!
//! Labels (pooled): `shared/routing/dev.jsonl` (short, plugin-labelled) and
//! this crate's `eval/agents.jsonl`, `eval/everyday.jsonl`,
//! `eval/out-of-scope.jsonl` (realistic length, agent-labelled). Folds are
//! by request (`i % K`, so every set is spread over every fold); each fold's
//! parameters are fitted on the other folds only: the fusion weights
//! (BM25F × cosine, for plugins and for agents), the confidence model, the
//! abstention threshold, the collaboration thresholds and the complexity cut
//! points. Every figure printed under "held-out" is on requests the fitted
//! parameters never saw; the parameters fitted on everything (the shipped
//! defaults) come last.
//!
//! Catalogs: each `--catalog` is one configuration (its directories merged).
//! Without any, the real Claude Code plugins alone and merged with
//! `cluster-config/plugins`. The embedding model is read from `--embed-dir`
//! (default `.models/minilm`, `PLEXUS_EMBED_DIR`); `--no-embed` measures
//! BM25F alone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use plexus_catalog::{Catalog, Sources};
use plexus_router::calibrate::{features, from_features, NFEAT};
use plexus_router::{
    CachedEmbedder, Complexity, ComplexityModel, ConfidenceModel, Embedder, RouteRequest, Router,
    RouterConfig, RoutingDecision,
};

pub(crate) struct Label {
    pub(crate) request: String,
    pub(crate) expect: Vec<String>,
    /// Acceptable `plugin/name` agents or commands (empty: not agent-labelled).
    pub(crate) agents: Vec<String>,
    pub(crate) complexity: Option<Complexity>,
    /// Which file it came from (dev, agents, everyday, out-of-scope).
    pub(crate) set: String,
}

#[derive(Default, Debug, Clone, Copy)]
pub(crate) struct Metrics {
    pub(crate) inscope: usize,
    pub(crate) top1: usize,
    pub(crate) oos: usize,
    pub(crate) abstained: usize,
    /// In-scope requests the router abstained on.
    pub(crate) false_abstain: usize,
    pub(crate) recall_hit: usize,
    pub(crate) recall_all: usize,
    pub(crate) agent_all: usize,
    pub(crate) agent_hit: usize,
    pub(crate) cx_all: usize,
    pub(crate) cx_hit: usize,
    pub(crate) cost: f64,
    pub(crate) opus_cost: f64,
}

fn rate(a: usize, b: usize) -> f64 {
    a as f64 / b.max(1) as f64
}

/// `plugin/name` of the decision's agent or command.
fn agent_of(d: &RoutingDecision) -> Option<String> {
    let p = d.primary_plugin.as_ref()?;
    let a = d.agent.as_ref()?;
    let name = a.split_once(':').map(|x| x.1).unwrap_or(a);
    Some(format!("{p}/{}", name.trim_start_matches('/')))
}

impl Metrics {
    fn add(&mut self, lab: &Label, d: &RoutingDecision) {
        if lab.expect.is_empty() {
            self.oos += 1;
            self.abstained += d.primary_plugin.is_none() as usize;
            return;
        }
        self.inscope += 1;
        self.false_abstain += d.primary_plugin.is_none() as usize;
        self.top1 += d
            .primary_plugin
            .as_ref()
            .is_some_and(|p| lab.expect.contains(p)) as usize;
        let plan = d.plugins();
        self.recall_all += lab.expect.len();
        self.recall_hit += lab.expect.iter().filter(|p| plan.contains(p)).count();
        if !lab.agents.is_empty() {
            self.agent_all += 1;
            self.agent_hit += agent_of(d).is_some_and(|a| lab.agents.contains(&a)) as usize;
        }
        if let Some(c) = lab.complexity {
            self.cx_all += 1;
            self.cx_hit += (d.classification.complexity == c) as usize;
        }
        if d.primary_plugin.is_some() {
            self.cost += d.estimated_cost_usd;
            self.opus_cost += d.opus_cost_usd;
        }
    }

    /// Top-1 on the in-scope requests: the chosen plugin is an expected one.
    pub(crate) fn top1_rate(&self) -> f64 {
        rate(self.top1, self.inscope)
    }
    pub(crate) fn abstain_rate(&self) -> f64 {
        rate(self.abstained, self.oos)
    }
    pub(crate) fn false_abstain_rate(&self) -> f64 {
        rate(self.false_abstain, self.inscope)
    }
    pub(crate) fn agent_rate(&self) -> f64 {
        rate(self.agent_hit, self.agent_all)
    }
    pub(crate) fn recall_rate(&self) -> f64 {
        rate(self.recall_hit, self.recall_all)
    }

    pub(crate) fn print(&self, name: &str) {
        let mut s = format!("  {name:<28}");
        if self.inscope > 0 {
            s += &format!(
                " top1 {:.3} ({}/{})  false-abstain {:.3} ({})  plan-recall {:.3}",
                self.top1_rate(),
                self.top1,
                self.inscope,
                self.false_abstain_rate(),
                self.false_abstain,
                self.recall_rate(),
            );
        }
        if self.agent_all > 0 {
            s += &format!(
                "  agent-top1 {:.3} ({}/{})",
                self.agent_rate(),
                self.agent_hit,
                self.agent_all
            );
        }
        if self.oos > 0 {
            s += &format!(
                "  oos-abstain {:.3} ({}/{})",
                self.abstain_rate(),
                self.abstained,
                self.oos
            );
        }
        if self.cx_all > 0 {
            s += &format!(
                "  complexity {:.3} ({}/{})  saving vs opus {:.1}%",
                rate(self.cx_hit, self.cx_all),
                self.cx_hit,
                self.cx_all,
                if self.opus_cost > 0.0 {
                    100.0 * (1.0 - self.cost / self.opus_cost)
                } else {
                    0.0
                }
            );
        }
        println!("{s}");
    }
}

pub(crate) fn load_labels(path: &Path, set: &str) -> Vec<Label> {
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("label JSON");
            Label {
                request: v["request"].as_str().unwrap_or_default().to_string(),
                expect: strings(&v["expect_plugins"]),
                agents: strings(&v["expect_agents"]),
                complexity: v
                    .get("complexity")
                    .and_then(|c| c.as_str())
                    .and_then(Complexity::parse),
                set: set.to_string(),
            }
        })
        .collect()
}

/// The pooled default label sets: (dev, agents, everyday, out-of-scope).
pub(crate) fn default_labels(root: &Path) -> Vec<Label> {
    let eval = root.join("crates/plexus-router/eval");
    let mut all = load_labels(&root.join("../shared/routing/dev.jsonl"), "dev");
    for set in ["agents", "everyday", "out-of-scope"] {
        all.extend(load_labels(&eval.join(format!("{set}.jsonl")), set));
    }
    all
}

/// Load the embedding model, wrapped in a cache (each text embedded once).
pub(crate) fn load_embedder(dir: &Path) -> Result<Arc<dyn Embedder>, String> {
    let m = plexus_embed::MiniLm::load(dir).map_err(|e| e.to_string())?;
    Ok(Arc::new(CachedEmbedder::new(Arc::new(m))))
}

/// One catalog configuration, its router and the labels' embeddings.
pub(crate) struct Setup {
    pub(crate) name: String,
    catalog: Catalog,
    router: Router,
    embedder: Option<Arc<dyn Embedder>>,
    qvecs: Vec<Option<Vec<f32>>>,
    /// Routers with one plugin left out (its requests must then abstain).
    lopo: Vec<(String, Router)>,
}

impl Setup {
    fn route(&self, r: &Router, i: usize, l: &Label) -> RoutingDecision {
        r.route_embedded(&RouteRequest::new(&l.request), self.qvecs[i].as_deref())
    }
}

pub(crate) fn setup(
    name: &str,
    dirs: &[PathBuf],
    labels: &[Label],
    embedder: Option<Arc<dyn Embedder>>,
) -> Setup {
    let catalog = Catalog::load(&Sources {
        embedded: vec![],
        dirs: dirs.to_vec(),
    });
    let cfg = RouterConfig::default();
    let router = Router::with_embedder(&catalog, cfg, embedder.clone());
    let qvecs = labels
        .iter()
        .map(|l| router.embed_query(&l.request))
        .collect();
    let lopo = catalog
        .plugins
        .iter()
        .map(|p| {
            let mut c = catalog.clone();
            c.plugins.retain(|x| x.name != p.name);
            (
                p.name.clone(),
                Router::with_embedder(&c, cfg, embedder.clone()),
            )
        })
        .collect();
    Setup {
        name: name.to_string(),
        catalog,
        router,
        embedder,
        qvecs,
        lopo,
    }
}

/// Which confidence model a setup's decisions use.
fn conf_of(cfg: &RouterConfig, semantic: bool) -> ConfidenceModel {
    if semantic {
        cfg.semantic.confidence
    } else {
        cfg.confidence
    }
}

/// Which collaboration thresholds a setup's decisions use.
fn collab_of(cfg: &RouterConfig, semantic: bool) -> (f64, f64) {
    if semantic {
        (cfg.semantic.collab_min_ratio, cfg.semantic.collab_min_gain)
    } else {
        (cfg.collab_min_ratio, cfg.collab_min_gain)
    }
}

/// `cfg` that never abstains while a plugin matches (to see the evidence).
fn open_config(cfg: &RouterConfig) -> RouterConfig {
    let mut c = *cfg;
    c.confidence.abstain_below = 0.0;
    c.semantic.confidence.abstain_below = 0.0;
    c
}

/// (label, features, right?) from open routers at `cfg`'s fusion weights,
/// plus the left-out-plugin samples (whose right answer is to abstain).
type Sample = (usize, [f64; NFEAT], bool);

fn samples(setups: &mut [Setup], labels: &[Label], cfg: &RouterConfig) -> Vec<(Sample, bool)> {
    let open = open_config(cfg);
    let mut out = vec![];
    for s in setups.iter_mut() {
        s.router.set_config(open);
        for (i, l) in labels.iter().enumerate() {
            let d = s.route(&s.router, i, l);
            if d.primary_plugin.is_none() {
                continue;
            }
            let right = d
                .primary_plugin
                .as_ref()
                .is_some_and(|p| l.expect.contains(p));
            out.push(((i, features(&d.evidence), right), false));
        }
        for k in 0..s.lopo.len() {
            s.lopo[k].1.set_config(open);
            let name = s.lopo[k].0.clone();
            for (i, l) in labels.iter().enumerate() {
                if l.expect.len() == 1 && l.expect[0] == name {
                    let d = s.route(&s.lopo[k].1, i, l);
                    if d.primary_plugin.is_some() {
                        out.push(((i, features(&d.evidence), false), true));
                    }
                }
            }
        }
    }
    out
}

const L2: f64 = 0.5;

/// Assumed share of requests that nothing fits, for choosing the abstention
/// threshold: a confident wrong answer costs more than an honest abstention.
const PRIOR_OUT_OF_SCOPE: f64 = 0.2;

/// Abstention threshold (the middle of the best plateau) maximising
/// (1 − π)·(right and answered) + π·(abstained on wrong, out-of-scope or
/// left-out samples), on the training samples.
fn choose_threshold(
    model: &ConfidenceModel,
    samples: &[(Sample, bool)],
    labels: &[Label],
    train: &dyn Fn(usize) -> bool,
) -> f64 {
    let mut values = vec![];
    for k in 2..=80 {
        let t = k as f64 * 0.01;
        let (mut pos, mut pos_ok, mut neg, mut neg_ok) = (0f64, 0f64, 0f64, 0f64);
        for ((i, x, right), _) in samples.iter().filter(|s| train(s.0 .0)) {
            let c = model.confidence(&from_features(x));
            if !labels[*i].expect.is_empty() && *right {
                pos += 1.0;
                pos_ok += (c >= t) as u8 as f64;
            } else {
                neg += 1.0;
                neg_ok += (c < t) as u8 as f64;
            }
        }
        let v = (1.0 - PRIOR_OUT_OF_SCOPE) * pos_ok / pos.max(1.0)
            + PRIOR_OUT_OF_SCOPE * neg_ok / neg.max(1.0);
        values.push((t, v));
    }
    let best = values.iter().map(|x| x.1).fold(f64::MIN, f64::max);
    let first = values.iter().position(|x| x.1 >= best - 1e-12).unwrap_or(0);
    let len = values[first..]
        .iter()
        .take_while(|x| x.1 >= best - 1e-12)
        .count();
    (values[first].0 + values[first + len - 1].0) / 2.0
}

fn fit_conf(samples: &[(Sample, bool)], train: &dyn Fn(usize) -> bool) -> ConfidenceModel {
    let xs: Vec<([f64; NFEAT], bool)> = samples
        .iter()
        .filter(|s| train(s.0 .0))
        .map(|s| (s.0 .1, s.0 .2))
        .collect();
    ConfidenceModel::fit(&xs, L2)
}

/// Fusion weights tried: plugin mix and agent mix, 0 (BM25F) to 1 (cosine).
const WEIGHTS: [f32; 11] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

/// Per weight and label: (plugin right, agent right) on open routers.
fn weight_table(setups: &mut [Setup], labels: &[Label], base: &RouterConfig) -> Vec<Vec<[f64; 2]>> {
    WEIGHTS
        .iter()
        .map(|&w| {
            let mut cfg = open_config(base);
            cfg.semantic.weight = w;
            cfg.semantic.agent_weight = w;
            let mut row = vec![[0f64; 2]; labels.len()];
            for s in setups.iter_mut() {
                s.router.set_config(cfg);
                for (i, l) in labels.iter().enumerate() {
                    if l.expect.is_empty() {
                        continue;
                    }
                    let d = s.route(&s.router, i, l);
                    row[i][0] += d
                        .primary_plugin
                        .as_ref()
                        .is_some_and(|p| l.expect.contains(p))
                        as u8 as f64;
                    row[i][1] += agent_of(&d).is_some_and(|a| l.agents.contains(&a)) as u8 as f64;
                }
            }
            row
        })
        .collect()
}

/// The weight with the most right answers (column `col`) on the training
/// labels; ties go to the smaller weight.
fn best_weight(table: &[Vec<[f64; 2]>], col: usize, train: &dyn Fn(usize) -> bool) -> f32 {
    let score = |k: usize| -> f64 {
        table[k]
            .iter()
            .enumerate()
            .filter(|(i, _)| train(*i))
            .map(|(_, v)| v[col])
            .sum()
    };
    let k = (0..WEIGHTS.len())
        .max_by(|&a, &b| score(a).total_cmp(&score(b)).then(b.cmp(&a)))
        .unwrap_or(0);
    WEIGHTS[k]
}

/// Collaboration thresholds tried.
fn collab_grid() -> Vec<(f64, f64)> {
    let mut g = vec![];
    for r in 3..=9 {
        for gn in 1..=10 {
            g.push((r as f64 * 0.1, gn as f64 * 0.05));
        }
    }
    g
}

/// Per grid point and label: top-1 right + plan Jaccard, open routers.
fn collab_table(setups: &mut [Setup], labels: &[Label], base: &RouterConfig) -> Vec<Vec<f64>> {
    collab_grid()
        .iter()
        .map(|&(ratio, gain)| {
            let mut row = vec![0f64; labels.len()];
            let mut cfg = RouterConfig {
                collab_min_ratio: ratio,
                collab_min_gain: gain,
                ..open_config(base)
            };
            cfg.semantic.collab_min_ratio = ratio;
            cfg.semantic.collab_min_gain = gain;
            for s in setups.iter_mut() {
                s.router.set_config(cfg);
                for (i, l) in labels.iter().enumerate() {
                    // Plans are what the dev and everyday sets label.
                    if l.expect.is_empty() || l.set == "agents" {
                        continue;
                    }
                    let d = s.route(&s.router, i, l);
                    let plan = d.plugins();
                    let top = d
                        .primary_plugin
                        .as_ref()
                        .is_some_and(|p| l.expect.contains(p));
                    let hits = l.expect.iter().filter(|p| plan.contains(p)).count();
                    let union = plan.len() + l.expect.len() - hits;
                    row[i] += top as u8 as f64 + hits as f64 / union.max(1) as f64;
                }
            }
            row
        })
        .collect()
}

fn best_collab(table: &[Vec<f64>], train: &dyn Fn(usize) -> bool) -> (f64, f64) {
    let g = collab_grid();
    let s = |c: usize| -> f64 {
        table[c]
            .iter()
            .enumerate()
            .filter(|(i, _)| train(*i))
            .map(|(_, v)| v)
            .sum()
    };
    let k = (0..g.len())
        .max_by(|&a, &b| s(a).total_cmp(&s(b)).then(b.cmp(&a)))
        .unwrap_or(0);
    g[k]
}

/// Complexity cut points fitted on the training rows.
fn fit_cuts(rows: &[(usize, f64, Complexity)], train: &dyn Fn(usize) -> bool) -> ComplexityModel {
    let cuts: Vec<f64> = (-8..=24).map(|i| i as f64 * 0.25).collect();
    let mut best = (0usize, ComplexityModel::default());
    for &m in &cuts {
        for &c in cuts.iter().filter(|&&c| c > m) {
            let model = ComplexityModel {
                moderate_at: m,
                complex_at: c,
            };
            let h = rows
                .iter()
                .filter(|r| train(r.0) && model.classify(r.1) == r.2)
                .count();
            if h > best.0 {
                best = (h, model);
            }
        }
    }
    best.1
}

fn complexity_rows(
    s: &mut Setup,
    labels: &[Label],
    cfg: &RouterConfig,
) -> Vec<(usize, f64, Complexity)> {
    s.router.set_config(open_config(cfg));
    labels
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.expect.is_empty())
        .filter_map(|(i, l)| {
            let c = l.complexity?;
            Some((
                i,
                s.route(&s.router, i, l).classification.complexity_score,
                c,
            ))
        })
        .collect()
}

/// Fit every parameter on the labels `train` selects.
pub(crate) fn fit_all(
    setups: &mut [Setup],
    labels: &[Label],
    train: &dyn Fn(usize) -> bool,
    weights: &[Vec<[f64; 2]>],
    collab_cache: &mut HashMap<u32, Vec<Vec<f64>>>,
) -> RouterConfig {
    let semantic = setups.iter().all(|s| s.embedder.is_some());
    let mut cfg = RouterConfig::default();
    if semantic {
        cfg.semantic.weight = best_weight(weights, 0, train);
        cfg.semantic.agent_weight = best_weight(weights, 1, train);
    }
    let sm = samples(setups, labels, &cfg);
    let mut conf = fit_conf(&sm, train);
    conf.abstain_below = choose_threshold(&conf, &sm, labels, train);
    if semantic {
        cfg.semantic.confidence = conf;
    } else {
        cfg.confidence = conf;
    }
    let table = collab_cache
        .entry(cfg.semantic.weight.to_bits())
        .or_insert_with(|| collab_table(setups, labels, &cfg));
    let collab = best_collab(table, train);
    if semantic {
        (cfg.semantic.collab_min_ratio, cfg.semantic.collab_min_gain) = collab;
    } else {
        (cfg.collab_min_ratio, cfg.collab_min_gain) = collab;
    }
    let rows = complexity_rows(&mut setups[0], labels, &cfg);
    cfg.complexity = fit_cuts(&rows, train);
    cfg
}

/// Held-out metrics per setup and label set, `folds`-fold; and the configs
/// each fold chose.
pub(crate) type HeldOut = (Vec<HashMap<String, Metrics>>, Vec<RouterConfig>);

pub(crate) fn held_out(setups: &mut [Setup], labels: &[Label], folds: usize) -> HeldOut {
    let weights = weight_table(setups, labels, &RouterConfig::default());
    let mut cache = HashMap::new();
    let mut held: Vec<HashMap<String, Metrics>> = vec![HashMap::new(); setups.len()];
    let mut chosen = vec![];
    for f in 0..folds {
        let train = move |i: usize| i % folds != f;
        let cfg = fit_all(setups, labels, &train, &weights, &mut cache);
        chosen.push(cfg);
        for (k, s) in setups.iter_mut().enumerate() {
            s.router.set_config(cfg);
            for (i, l) in labels.iter().enumerate().filter(|(i, _)| !train(*i)) {
                let d = s.route(&s.router, i, l);
                held[k].entry(l.set.clone()).or_default().add(l, &d);
                held[k].entry("all".into()).or_default().add(l, &d);
            }
        }
    }
    (held, chosen)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let opt = |name: &str| -> Vec<String> {
        args.windows(2)
            .filter(|w| w[0] == name)
            .map(|w| w[1].clone())
            .collect()
    };
    let mut configs: Vec<Vec<PathBuf>> = opt("--catalog")
        .iter()
        .map(|c| c.split(',').map(PathBuf::from).collect())
        .collect();
    if configs.is_empty() {
        let claude = root.join("../shared/catalog/claude-plugins");
        configs = vec![
            vec![claude.clone()],
            vec![root.join("cluster-config/plugins"), claude],
        ];
    }
    let label_files = opt("--labels");
    let labels: Vec<Label> = if label_files.is_empty() {
        default_labels(&root)
    } else {
        label_files
            .iter()
            .flat_map(|f| {
                let p = PathBuf::from(f);
                let set = p
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                load_labels(&p, &set)
            })
            .collect()
    };
    let folds: usize = opt("--folds")
        .pop()
        .and_then(|f| f.parse().ok())
        .unwrap_or(5);
    let show_errors = args.iter().any(|a| a == "--errors");
    let embedder = if args.iter().any(|a| a == "--no-embed") {
        None
    } else {
        let dir = opt("--embed-dir")
            .pop()
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("PLEXUS_EMBED_DIR").map(PathBuf::from))
            .unwrap_or_else(|| root.join(".models/minilm"));
        match load_embedder(&dir) {
            Ok(e) => Some(e),
            Err(e) => {
                eprintln!("error: {e} (or pass --no-embed for BM25F alone)");
                std::process::exit(2);
            }
        }
    };
    let mut sets: Vec<(String, usize)> = vec![];
    for l in &labels {
        match sets.iter_mut().find(|s| s.0 == l.set) {
            Some(s) => s.1 += 1,
            None => sets.push((l.set.clone(), 1)),
        }
    }
    println!(
        "{} labelled requests {sets:?}; signals: {}; {folds}-fold cross-validation",
        labels.len(),
        if embedder.is_some() {
            "BM25F + all-MiniLM-L6-v2"
        } else {
            "BM25F alone"
        }
    );
    let t0 = std::time::Instant::now();
    let mut setups: Vec<Setup> = configs
        .iter()
        .map(|dirs| {
            let name = dirs
                .iter()
                .map(|d| {
                    d.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default()
                })
                .collect::<Vec<_>>()
                .join("+");
            setup(&name, dirs, &labels, embedder.clone())
        })
        .collect();
    println!(
        "catalogs indexed and requests embedded in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    println!("\n== held-out ({folds}-fold; each fold fitted on the others)");
    let (held, chosen) = held_out(&mut setups, &labels, folds);
    for (k, s) in setups.iter().enumerate() {
        println!("catalog {}:", s.name);
        for (set, _) in sets.iter().chain([&("all".to_string(), 0)]) {
            if let Some(m) = held[k].get(set) {
                m.print(set);
            }
        }
    }
    let range = |v: Vec<f64>| {
        let lo = v.iter().copied().fold(f64::MAX, f64::min);
        let hi = v.iter().copied().fold(f64::MIN, f64::max);
        format!("{lo:.2}..{hi:.2}")
    };
    let semantic = embedder.is_some();
    println!(
        "  per fold: weight {} agent_weight {} abstain_below {} collab_min_ratio {} collab_min_gain {}",
        range(chosen.iter().map(|c| c.semantic.weight as f64).collect()),
        range(chosen.iter().map(|c| c.semantic.agent_weight as f64).collect()),
        range(chosen.iter().map(|c| conf_of(c, semantic).abstain_below).collect()),
        range(chosen.iter().map(|c| collab_of(c, semantic).0).collect()),
        range(chosen.iter().map(|c| collab_of(c, semantic).1).collect()),
    );

    if show_errors {
        let folds_cfg = &chosen;
        let s = &mut setups[0];
        println!("\n== held-out errors on {}", s.name);
        for (i, l) in labels.iter().enumerate() {
            s.router.set_config(folds_cfg[i % folds]);
            let d = s.route(&s.router, i, l);
            let ok_plugin = if l.expect.is_empty() {
                d.primary_plugin.is_none()
            } else {
                d.primary_plugin
                    .as_ref()
                    .is_some_and(|p| l.expect.contains(p))
            };
            let ok_agent = l.agents.is_empty()
                || l.expect.is_empty()
                || agent_of(&d).is_some_and(|a| l.agents.contains(&a));
            if !ok_plugin || !ok_agent {
                println!(
                    "  [{}] {:<70.70} want {:?} got {:?} ({:?}) conf {:.2} cos {:.2}",
                    l.set,
                    l.request,
                    l.expect,
                    d.primary_plugin,
                    d.agent,
                    d.confidence,
                    d.evidence.semantic
                );
            }
        }
    }

    // ---- Everything: what the shipped defaults should be.
    let weights = weight_table(&mut setups, &labels, &RouterConfig::default());
    let cfg = fit_all(
        &mut setups,
        &labels,
        &|_| true,
        &weights,
        &mut HashMap::new(),
    );
    let conf = conf_of(&cfg, semantic);
    println!(
        "\n== fitted on all {} requests (the shipped defaults)",
        labels.len()
    );
    println!(
        "  weight {:.2} agent_weight {:.2}\n  ConfidenceModel {{ bias: {:.3}, weights: [{}], abstain_below: {:.3} }} (features {:?})\n  collab_min_ratio {:.2} collab_min_gain {:.2} complexity {:?}",
        cfg.semantic.weight,
        cfg.semantic.agent_weight,
        conf.bias,
        conf.weights
            .iter()
            .map(|w| format!("{w:.3}"))
            .collect::<Vec<_>>()
            .join(", "),
        conf.abstain_below,
        plexus_router::calibrate::FEATURE_NAMES,
        collab_of(&cfg, semantic).0,
        collab_of(&cfg, semantic).1,
        cfg.complexity,
    );
    let shipped = RouterConfig::default();
    let close = |a: f64, b: f64| (a - b).abs() < 5e-3;
    let sc = conf_of(&shipped, semantic);
    let same = close(sc.bias, conf.bias)
        && close(sc.abstain_below, conf.abstain_below)
        && sc
            .weights
            .iter()
            .zip(conf.weights)
            .all(|(a, b)| close(*a, b))
        && (!semantic
            || (close(shipped.semantic.weight as f64, cfg.semantic.weight as f64)
                && close(
                    shipped.semantic.agent_weight as f64,
                    cfg.semantic.agent_weight as f64,
                )))
        && close(collab_of(&shipped, semantic).0, collab_of(&cfg, semantic).0)
        && close(collab_of(&shipped, semantic).1, collab_of(&cfg, semantic).1);
    println!(
        "  shipped defaults {} these",
        if same { "equal" } else { "DIFFER FROM" }
    );
    let _ = &setups[0].catalog;
}
