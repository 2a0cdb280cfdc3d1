//! Measure the router and the seed's keyword baseline on labelled requests,
//! and calibrate the router's confidence model, collaboration thresholds and
//! complexity cut points by cross-validation.
//!
//! ```text
//! cargo run --release -p plexus-router --example eval -- \
//!     [--catalog DIR[,DIR...]]... [--labels FILE.jsonl] [--probe FILE.txt] \
//!     [--folds K] [--out OUT.jsonl] [--errors]
//! ```
//!
//! Each `--catalog` is one catalog configuration (its directories merged, as
//! `plexus route --catalog A --catalog B` would). Without any, two are used:
//! the real Claude Code plugins (`shared/catalog/claude-plugins`) alone, and
//! the same merged with the cluster manifests (`cluster-config/plugins`, what
//! the CLI embeds). Labels default to `shared/routing/dev.jsonl`.
//!
//! What it prints, per configuration: top-1 accuracy (in-scope), abstention
//! (out-of-scope), plan recall and precision, complexity accuracy and the
//! cost saving against always-opus, for the shipped router and for the
//! baseline, on the whole set; then the same figures for parameters fitted
//! on the other folds only (held-out), and the parameters fitted on the
//! whole set (what the shipped defaults should be).
//!
//! `--probe` names a plain-text file of out-of-scope requests, one a line,
//! that is never fitted on: its abstention rate is reported as is.

use std::path::PathBuf;

use plexus_catalog::{Catalog, Sources};
use plexus_router::calibrate::{features, NFEAT};
use plexus_router::{
    classify, BaselineRouter, Complexity, ComplexityModel, ConfidenceModel, RouteRequest, Router,
    RouterConfig, RoutingDecision,
};

pub(crate) struct Label {
    request: String,
    expect: Vec<String>,
    complexity: Option<Complexity>,
}

#[derive(Default, Debug, Clone, Copy)]
pub(crate) struct Metrics {
    inscope: usize,
    top1: usize,
    oos: usize,
    abstained: usize,
    recall_hit: usize,
    recall_all: usize,
    plan_sizes: usize,
    plan_hits: usize,
    jaccard: f64,
    cx_all: usize,
    cx_hit: usize,
    cost: f64,
    opus_cost: f64,
}

impl Metrics {
    fn add(&mut self, lab: &Label, d: &RoutingDecision) {
        let plan = d.plugins();
        if lab.expect.is_empty() {
            self.oos += 1;
            self.abstained += d.primary_plugin.is_none() as usize;
            return;
        }
        self.inscope += 1;
        self.top1 += d
            .primary_plugin
            .as_ref()
            .is_some_and(|p| lab.expect.contains(p)) as usize;
        self.recall_all += lab.expect.len();
        let hits = lab.expect.iter().filter(|p| plan.contains(p)).count();
        self.recall_hit += hits;
        self.plan_sizes += plan.len();
        self.plan_hits += plan.iter().filter(|p| lab.expect.contains(p)).count();
        let union = plan.len() + lab.expect.len() - hits;
        self.jaccard += hits as f64 / union.max(1) as f64;
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
        self.top1 as f64 / self.inscope.max(1) as f64
    }

    fn print(&self, name: &str) {
        let r = |a: usize, b: usize| a as f64 / b.max(1) as f64;
        println!(
            "  {name:<34} top1 {:.3} ({}/{})  abstain {:.3} ({}/{})  plan-recall {:.3}  plan-precision {:.3}  complexity {:.3} ({}/{})  saving vs opus {:.1}%",
            self.top1_rate(),
            self.top1,
            self.inscope,
            r(self.abstained, self.oos),
            self.abstained,
            self.oos,
            r(self.recall_hit, self.recall_all),
            r(self.plan_hits, self.plan_sizes),
            r(self.cx_hit, self.cx_all),
            self.cx_hit,
            self.cx_all,
            if self.opus_cost > 0.0 { 100.0 * (1.0 - self.cost / self.opus_cost) } else { 0.0 },
        );
    }
}

pub(crate) fn load_labels(path: &PathBuf) -> Vec<Label> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("label JSON");
            Label {
                request: v["request"].as_str().unwrap_or_default().to_string(),
                expect: v["expect_plugins"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
                complexity: v
                    .get("complexity")
                    .and_then(|c| c.as_str())
                    .and_then(Complexity::parse),
            }
        })
        .collect()
}

/// One catalog configuration and what routing the labels against it gave.
pub(crate) struct Setup {
    pub(crate) name: String,
    catalog: Catalog,
    /// Evidence samples: (label index, features, right answer?).
    samples: Vec<(usize, [f64; NFEAT], bool)>,
    /// How many samples come from leaving the expected plugins out.
    lopo: usize,
}

/// A router that never abstains while a plugin matches (to see the evidence).
fn open_config(base: &RouterConfig) -> RouterConfig {
    RouterConfig {
        confidence: ConfidenceModel {
            abstain_below: 0.0,
            ..base.confidence
        },
        ..*base
    }
}

fn collect_samples(
    catalog: &Catalog,
    labels: &[Label],
    cfg: &RouterConfig,
) -> (Vec<(usize, [f64; NFEAT], bool)>, usize) {
    let open = open_config(cfg);
    let router = Router::with_config(catalog, open);
    let mut samples = vec![];
    for (i, l) in labels.iter().enumerate() {
        let d = router.route(&RouteRequest::new(&l.request));
        if d.primary_plugin.is_none() {
            continue; // nothing matched at all: abstains whatever the model says
        }
        let right = d
            .primary_plugin
            .as_ref()
            .is_some_and(|p| l.expect.contains(p));
        samples.push((i, features(&d.evidence), right));
    }
    // Leave the expected plugins out: nothing in the catalog may rightly
    // serve the request any more, so the right answer is to abstain.
    let mut lopo = 0;
    for p in &catalog.plugins {
        let mut c = catalog.clone();
        c.plugins.retain(|x| x.name != p.name);
        let r = Router::with_config(&c, open);
        for (i, l) in labels.iter().enumerate() {
            if l.expect.len() == 1 && l.expect[0] == p.name {
                let d = r.route(&RouteRequest::new(&l.request));
                if d.primary_plugin.is_some() {
                    samples.push((i, features(&d.evidence), false));
                    lopo += 1;
                }
            }
        }
    }
    (samples, lopo)
}

const L2: f64 = 0.5;

/// Assumed share of requests that nothing fits, for choosing the abstention
/// threshold: above the dev set's 6 % on purpose, since a confident wrong
/// answer costs more than an honest abstention.
const PRIOR_OUT_OF_SCOPE: f64 = 0.2;

/// Abstention threshold (the middle of the range) maximising
/// (1 − π)·top-1 + π·abstention on the
/// samples `keep` selects (abstention counted on out-of-scope and
/// left-out-plugin samples alike).
fn choose_threshold(
    model: &ConfidenceModel,
    samples: &[(usize, [f64; NFEAT], bool)],
    labels: &[Label],
    keep: impl Fn(usize) -> bool,
) -> f64 {
    let mut values = vec![];
    for k in 5..=70 {
        let t = k as f64 * 0.01;
        let (mut pos, mut pos_ok, mut neg, mut neg_ok) = (0f64, 0f64, 0f64, 0f64);
        for (i, x, right) in samples.iter().filter(|s| keep(s.0)) {
            let c = model.confidence(&plexus_router::calibrate::from_features(x));
            let inscope = !labels[*i].expect.is_empty();
            if inscope && *right && c >= t {
                pos_ok += 1.0;
            }
            if inscope && *right {
                pos += 1.0;
            } else {
                neg += 1.0;
                neg_ok += (c < t) as u8 as f64;
            }
        }
        let v = (1.0 - PRIOR_OUT_OF_SCOPE) * pos_ok / pos.max(1.0)
            + PRIOR_OUT_OF_SCOPE * neg_ok / neg.max(1.0);
        values.push((t, v));
    }
    // The middle of the best plateau: the threshold farthest from both
    // neighbouring choices that score worse.
    let best = values.iter().map(|x| x.1).fold(f64::MIN, f64::max);
    let first = values.iter().position(|x| x.1 >= best - 1e-12).unwrap_or(0);
    let len = values[first..]
        .iter()
        .take_while(|x| x.1 >= best - 1e-12)
        .count();
    (values[first].0 + values[first + len - 1].0) / 2.0
}

fn fit(samples: &[(usize, [f64; NFEAT], bool)], keep: impl Fn(usize) -> bool) -> ConfidenceModel {
    let train: Vec<([f64; NFEAT], bool)> = samples
        .iter()
        .filter(|s| keep(s.0))
        .map(|s| (s.1, s.2))
        .collect();
    ConfidenceModel::fit(&train, L2)
}

/// Collaboration and priority parameters tried by the grid.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Collab {
    ratio: f64,
    gain: f64,
    priority_weight: f32,
}

fn collab_grid() -> Vec<Collab> {
    let mut g = vec![];
    for pw in [0.0f32, 0.25, 0.5] {
        for r in 3..=9 {
            for gn in 1..=10 {
                g.push(Collab {
                    ratio: r as f64 * 0.1,
                    gain: gn as f64 * 0.05,
                    priority_weight: pw,
                });
            }
        }
    }
    g
}

/// Per (grid point, label): top-1 right and plan Jaccard, open routers.
fn collab_table(setups: &[Setup], labels: &[Label], base: &RouterConfig) -> Vec<Vec<f64>> {
    let routers: Vec<Router> = setups
        .iter()
        .map(|s| Router::with_config(&s.catalog, open_config(base)))
        .collect();
    let mut routers = routers;
    collab_grid()
        .iter()
        .map(|c| {
            let mut row = vec![0f64; labels.len()];
            for r in routers.iter_mut() {
                r.set_config(RouterConfig {
                    collab_min_ratio: c.ratio,
                    collab_min_gain: c.gain,
                    priority_weight: c.priority_weight,
                    ..open_config(base)
                });
                for (i, l) in labels.iter().enumerate() {
                    if l.expect.is_empty() {
                        continue;
                    }
                    let d = r.route(&RouteRequest::new(&l.request));
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

fn best_collab(table: &[Vec<f64>], keep: impl Fn(usize) -> bool) -> usize {
    let g = collab_grid();
    (0..g.len())
        .max_by(|&a, &b| {
            let s = |c: usize| -> f64 {
                table[c]
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| keep(*i))
                    .map(|(_, v)| v)
                    .sum()
            };
            // Ties: prefer the later grid point's opposite (smaller index = less
            // priority weight, lower thresholds) deterministically.
            s(a).total_cmp(&s(b)).then(b.cmp(&a))
        })
        .unwrap_or(0)
}

/// Complexity cut points fitted on the rows `keep` selects.
fn fit_cuts(rows: &[(usize, f64, Complexity)], keep: impl Fn(usize) -> bool) -> ComplexityModel {
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
                .filter(|r| keep(r.0))
                .filter(|r| model.classify(r.1) == r.2)
                .count();
            if h > best.0 {
                best = (h, model);
            }
        }
    }
    best.1
}

/// Held-out figures: `folds`-fold cross-validation by request, every
/// fitted piece (confidence model, abstention threshold, collaboration
/// thresholds, complexity cut points) fitted on the other folds only.
/// Per setup: the held-out metrics and (abstained, asked) on requests whose
/// plugins were left out of the catalog; and what each fold chose.
/// Per setup the held-out metrics and (abstained, asked) on left-out-plugin
/// requests; per fold what it chose.
pub(crate) type HeldOut = (
    Vec<Metrics>,
    Vec<(usize, usize)>,
    Vec<(ConfidenceModel, Collab, ComplexityModel)>,
);

/// A catalog from `dirs` with its calibration samples.
pub(crate) fn setup(
    name: &str,
    dirs: &[PathBuf],
    labels: &[Label],
    shipped: &RouterConfig,
) -> Setup {
    let catalog = Catalog::load(&Sources {
        embedded: vec![],
        dirs: dirs.to_vec(),
    });
    let (samples, lopo) = collect_samples(&catalog, labels, shipped);
    Setup {
        name: name.to_string(),
        catalog,
        samples,
        lopo,
    }
}

pub(crate) fn held_out(
    setups: &[Setup],
    labels: &[Label],
    shipped: &RouterConfig,
    folds: usize,
) -> HeldOut {
    let shipped = *shipped;
    let fold_of = |i: usize| i % folds;
    let table = collab_table(setups, labels, &shipped);
    let grid = collab_grid();
    let mut held = vec![Metrics::default(); setups.len()];
    let mut held_lopo = vec![(0usize, 0usize); setups.len()];
    let mut chosen = vec![];
    for f in 0..folds {
        let train = |i: usize| fold_of(i) != f;
        let all: Vec<(usize, [f64; NFEAT], bool)> = setups
            .iter()
            .flat_map(|s| s.samples.iter().copied())
            .collect();
        let mut conf = fit(&all, train);
        conf.abstain_below = choose_threshold(&conf, &all, labels, train);
        let c = grid[best_collab(&table, train)];
        // Complexity cut points from the training rows of the first setup.
        let mut cfg = RouterConfig {
            confidence: conf,
            collab_min_ratio: c.ratio,
            collab_min_gain: c.gain,
            priority_weight: c.priority_weight,
            ..shipped
        };
        let cx_rows = complexity_rows(&setups[0].catalog, labels, &cfg);
        cfg.complexity = fit_cuts(&cx_rows, train);
        chosen.push((conf, c, cfg.complexity));
        for (k, s) in setups.iter().enumerate() {
            let router = Router::with_config(&s.catalog, cfg);
            for (_, l) in labels.iter().enumerate().filter(|(i, _)| !train(*i)) {
                held[k].add(l, &router.route(&RouteRequest::new(&l.request)));
            }
            for (i, x, _) in s.samples.iter().skip(s.samples.len() - s.lopo) {
                if !train(*i) {
                    let p = conf.confidence(&plexus_router::calibrate::from_features(x));
                    held_lopo[k].1 += 1;
                    held_lopo[k].0 += (p < conf.abstain_below) as usize;
                }
            }
        }
    }
    (held, held_lopo, chosen)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let shared = root.join("../shared");
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
        let claude = shared.join("catalog/claude-plugins");
        configs = vec![
            vec![claude.clone()],
            vec![root.join("cluster-config/plugins"), claude],
        ];
    }
    let labels_path = opt("--labels")
        .pop()
        .map(PathBuf::from)
        .unwrap_or_else(|| shared.join("routing/dev.jsonl"));
    let probe: Vec<String> = opt("--probe")
        .pop()
        .map(|p| {
            std::fs::read_to_string(&p)
                .unwrap_or_else(|e| panic!("{p}: {e}"))
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let folds: usize = opt("--folds")
        .pop()
        .and_then(|f| f.parse().ok())
        .unwrap_or(5);
    let out = opt("--out").pop();
    let show_errors = args.iter().any(|a| a == "--errors");

    let labels = load_labels(&labels_path);
    let shipped = RouterConfig::default();
    println!(
        "{} labelled requests ({} out of scope) from {}; {} probe requests; {folds}-fold cross-validation",
        labels.len(),
        labels.iter().filter(|l| l.expect.is_empty()).count(),
        labels_path.display(),
        probe.len()
    );

    let mut setups = vec![];
    for dirs in &configs {
        let name = dirs
            .iter()
            .map(|d| {
                d.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("+");
        let s = setup(&name, dirs, &labels, &shipped);
        let catalog = &s.catalog;
        let t0 = std::time::Instant::now();
        let router = Router::new(catalog);
        let build = t0.elapsed();
        println!(
            "\n== catalog {name}: {} plugins, {} documents, index built in {:.1} ms",
            catalog.plugins.len(),
            router.doc_count(),
            build.as_secs_f64() * 1e3
        );
        let baseline = BaselineRouter::new(catalog);
        let mut m_router = Metrics::default();
        let mut m_base = Metrics::default();
        let mut lines = vec![];
        for l in &labels {
            let req = RouteRequest::new(&l.request);
            let d = router.route(&req);
            m_router.add(l, &d);
            m_base.add(l, &baseline.route(&req));
            lines.push(d.to_batch_json().to_string());
            let ok = if l.expect.is_empty() {
                d.primary_plugin.is_none()
            } else {
                d.primary_plugin
                    .as_ref()
                    .is_some_and(|p| l.expect.contains(p))
            };
            if show_errors && !ok {
                println!(
                    "  BAD {:<64} want {:?} got {:?} plan {:?} conf {:.2}",
                    l.request,
                    l.expect,
                    d.primary_plugin,
                    d.plugins(),
                    d.confidence
                );
            }
        }
        println!("whole set, shipped defaults:");
        m_router.print("router (BM25F)");
        m_base.print("baseline (seed keywords)");
        if !probe.is_empty() {
            let abst = probe
                .iter()
                .filter(|t| {
                    router
                        .route(&RouteRequest::new(t.as_str()))
                        .primary_plugin
                        .is_none()
                })
                .count();
            let babst = probe
                .iter()
                .filter(|t| {
                    baseline
                        .route(&RouteRequest::new(t.as_str()))
                        .primary_plugin
                        .is_none()
                })
                .count();
            println!(
                "  probe (out of scope, never fitted): router abstains {abst}/{n}, baseline {babst}/{n}",
                n = probe.len()
            );
        }
        if let Some(o) = &out {
            let path = format!("{o}.{name}.jsonl");
            std::fs::write(&path, lines.join("\n") + "\n").expect("write --out");
            println!("  batch output written to {path}");
        }
        setups.push(s);
    }

    // ---- Cross-validation: every fitted piece sees the training folds only.
    println!("\n== held-out ({folds}-fold, folds by request; each fold fitted on the others)");
    let (held, held_lopo, chosen) = held_out(&setups, &labels, &shipped, folds);
    let fold_of = |i: usize| i % folds;
    let table = collab_table(&setups, &labels, &shipped);
    let grid = collab_grid();
    for (k, s) in setups.iter().enumerate() {
        held[k].print(&format!("router on {}", s.name));
        println!(
            "  {:<34} abstains on {}/{} requests whose expected plugins were left out of the catalog",
            "",
            held_lopo[k].0,
            held_lopo[k].1
        );
    }
    let range = |v: Vec<f64>| {
        let lo = v.iter().copied().fold(f64::MAX, f64::min);
        let hi = v.iter().copied().fold(f64::MIN, f64::max);
        format!("{lo:.2}..{hi:.2}")
    };
    println!(
        "  per fold: abstain_below {} collab_min_ratio {} collab_min_gain {} priority_weight {} moderate_at {} complex_at {}",
        range(chosen.iter().map(|c| c.0.abstain_below).collect()),
        range(chosen.iter().map(|c| c.1.ratio).collect()),
        range(chosen.iter().map(|c| c.1.gain).collect()),
        range(chosen.iter().map(|c| c.1.priority_weight as f64).collect()),
        range(chosen.iter().map(|c| c.2.moderate_at).collect()),
        range(chosen.iter().map(|c| c.2.complex_at).collect()),
    );

    // ---- Calibration curve: held-out probabilities against thresholds.
    let mut heldp: Vec<(usize, f64, bool, bool, usize)> = vec![]; // (label, p, right, lopo, setup)
    for f in 0..folds {
        let train = |i: usize| fold_of(i) != f;
        let all: Vec<(usize, [f64; NFEAT], bool)> = setups
            .iter()
            .flat_map(|s| s.samples.iter().copied())
            .collect();
        let conf = fit(&all, train);
        for (k, s) in setups.iter().enumerate() {
            for (j, (i, x, right)) in s.samples.iter().enumerate() {
                if !train(*i) {
                    let e = plexus_router::calibrate::from_features(x);
                    heldp.push((
                        *i,
                        conf.confidence(&e),
                        *right,
                        j >= s.samples.len() - s.lopo,
                        k,
                    ));
                }
            }
        }
    }
    let inscope = labels.iter().filter(|l| !l.expect.is_empty()).count() * setups.len();
    let oos = labels.iter().filter(|l| l.expect.is_empty()).count() * setups.len();
    let lopo_n: usize = setups.iter().map(|s| s.lopo).sum();
    println!("  held-out calibration curve (both catalogs): threshold → top-1 on in-scope, abstention on out-of-scope, on left-out-plugin requests");
    for t in [0.1, 0.2, 0.3, 0.4, 0.5, 0.6] {
        let top1 = heldp.iter().filter(|h| !h.3 && h.2 && h.1 >= t).count();
        // out-of-scope requests that matched nothing abstain whatever t is
        let oos_routed = heldp
            .iter()
            .filter(|h| !h.3 && labels[h.0].expect.is_empty())
            .collect::<Vec<_>>();
        let oos_abst = oos - oos_routed.len() + oos_routed.iter().filter(|h| h.1 < t).count();
        let lopo_abst = heldp.iter().filter(|h| h.3 && h.1 < t).count();
        println!(
            "    {t:.2}: top1 {:.3}  abstain {:.3}  left-out {:.3}",
            top1 as f64 / inscope as f64,
            oos_abst as f64 / oos.max(1) as f64,
            lopo_abst as f64 / lopo_n.max(1) as f64
        );
    }

    // ---- The whole set: what the shipped defaults should be.
    let all: Vec<(usize, [f64; NFEAT], bool)> = setups
        .iter()
        .flat_map(|s| s.samples.iter().copied())
        .collect();
    let mut conf = fit(&all, |_| true);
    conf.abstain_below = choose_threshold(&conf, &all, &labels, |_| true);
    let c = grid[best_collab(&table, |_| true)];
    let mut cfg = RouterConfig {
        confidence: conf,
        collab_min_ratio: c.ratio,
        collab_min_gain: c.gain,
        priority_weight: c.priority_weight,
        ..shipped
    };
    let cx_rows = complexity_rows(&setups[0].catalog, &labels, &cfg);
    cfg.complexity = fit_cuts(&cx_rows, |_| true);
    println!(
        "\n== fitted on the whole set ({} evidence samples, {} of them with the expected plugins left out)",
        all.len(),
        setups.iter().map(|s| s.lopo).sum::<usize>()
    );
    println!(
        "  ConfidenceModel {{ bias: {:.3}, weights: [{}], abstain_below: {:.2} }}  (features {:?})",
        conf.bias,
        conf.weights
            .iter()
            .map(|w| format!("{w:.3}"))
            .collect::<Vec<_>>()
            .join(", "),
        conf.abstain_below,
        plexus_router::calibrate::FEATURE_NAMES
    );
    if !probe.is_empty() {
        for s in &setups {
            let r = Router::with_config(&s.catalog, cfg);
            let abst = probe
                .iter()
                .filter(|t| {
                    r.route(&RouteRequest::new(t.as_str()))
                        .primary_plugin
                        .is_none()
                })
                .count();
            println!(
                "  probe with these on {}: abstains {abst}/{}",
                s.name,
                probe.len()
            );
        }
    }
    println!(
        "  collab_min_ratio: {:.2}, collab_min_gain: {:.2}, priority_weight: {:.2}, complexity: {:?}",
        c.ratio, c.gain, c.priority_weight, cfg.complexity
    );
    let same = |a: f64, b: f64| (a - b).abs() < 5e-3;
    let shipped_matches = same(shipped.confidence.bias, conf.bias)
        && same(shipped.confidence.abstain_below, conf.abstain_below)
        && shipped
            .confidence
            .weights
            .iter()
            .zip(conf.weights)
            .all(|(a, b)| same(*a, b))
        && same(shipped.collab_min_ratio, c.ratio)
        && same(shipped.collab_min_gain, c.gain)
        && same(shipped.priority_weight as f64, c.priority_weight as f64)
        && same(shipped.complexity.moderate_at, cfg.complexity.moderate_at)
        && same(shipped.complexity.complex_at, cfg.complexity.complex_at);
    println!(
        "  shipped defaults {} these",
        if shipped_matches {
            "equal"
        } else {
            "DIFFER FROM"
        }
    );
    let _ = classify::base_minutes;
}

/// (label index, complexity score, label) for in-scope labelled rows.
fn complexity_rows(
    catalog: &Catalog,
    labels: &[Label],
    cfg: &RouterConfig,
) -> Vec<(usize, f64, Complexity)> {
    let router = Router::with_config(catalog, open_config(cfg));
    labels
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.expect.is_empty())
        .filter_map(|(i, l)| {
            let c = l.complexity?;
            let d = router.route(&RouteRequest::new(&l.request));
            Some((i, d.classification.complexity_score, c))
        })
        .collect()
}
