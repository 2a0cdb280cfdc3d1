//! Measure the router and the seed's keyword baseline on labelled requests.
//!
//! ```text
//! cargo run --release -p plexus-router --example eval -- CATALOG_DIR LABELS.jsonl [--out OUT.jsonl] [--verbose] [--no-cv]
//! ```
//!
//! Prints top-1 accuracy (in-scope), abstention (out-of-scope), plan recall
//! and precision, complexity accuracy and the cost saving against
//! always-opus, for both routers; then leave-one-out and 5-fold figures for
//! thresholds calibrated on the training part of each fold only.

use std::collections::BTreeMap;

use plexus_catalog::{Catalog, Sources};
use plexus_router::{
    classify, BaselineRouter, Complexity, RouteRequest, Router, RouterConfig, RoutingDecision,
};

struct Label {
    request: String,
    expect: Vec<String>,
    complexity: Option<Complexity>,
}

#[derive(Default, Debug, Clone, Copy)]
struct Metrics {
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
        let plan: Vec<String> = d.plan.phases.iter().map(|p| p.plugin.clone()).collect();
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
    fn merge(&mut self, o: &Metrics) {
        self.inscope += o.inscope;
        self.top1 += o.top1;
        self.oos += o.oos;
        self.abstained += o.abstained;
        self.recall_hit += o.recall_hit;
        self.recall_all += o.recall_all;
        self.plan_sizes += o.plan_sizes;
        self.plan_hits += o.plan_hits;
        self.jaccard += o.jaccard;
        self.cx_all += o.cx_all;
        self.cx_hit += o.cx_hit;
        self.cost += o.cost;
        self.opus_cost += o.opus_cost;
    }
    fn objective(&self) -> f64 {
        let r = |a: usize, b: usize| a as f64 / b.max(1) as f64;
        r(self.top1, self.inscope)
            + r(self.abstained, self.oos)
            + self.jaccard / self.inscope.max(1) as f64
    }
    fn print(&self, name: &str) {
        let r = |a: usize, b: usize| a as f64 / b.max(1) as f64;
        println!(
            "{name:<28} top1 {:.3} ({}/{})  abstain {:.3} ({}/{})  plan-recall {:.3}  plan-precision {:.3}  complexity {:.3} ({}/{})  saving vs opus {:.1}%",
            r(self.top1, self.inscope),
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

fn load_labels(path: &str) -> Vec<Label> {
    std::fs::read_to_string(path)
        .expect("read labels")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("label JSON");
            Label {
                request: v["request"].as_str().unwrap().to_string(),
                expect: v["expect_plugins"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_str().unwrap().to_string())
                    .collect(),
                complexity: v
                    .get("complexity")
                    .and_then(|c| c.as_str())
                    .and_then(Complexity::parse),
            }
        })
        .collect()
}

/// The thresholds calibrated by cross-validation (index parameters fixed).
#[derive(Debug, Clone, Copy)]
struct Thresholds {
    min_coverage: f64,
    min_norm_score: f64,
    collab_min_ratio: f64,
    collab_min_gain: f64,
}

fn grid() -> Vec<Thresholds> {
    let mut g = vec![];
    for c in 0..=12 {
        for n in 0..=6 {
            for r in 3..=9 {
                for gn in 1..=10 {
                    g.push(Thresholds {
                        min_coverage: c as f64 * 0.05,
                        min_norm_score: n as f64 * 0.025,
                        collab_min_ratio: r as f64 * 0.1,
                        collab_min_gain: gn as f64 * 0.05,
                    });
                }
            }
        }
    }
    g
}

fn apply(base: &RouterConfig, t: &Thresholds) -> RouterConfig {
    RouterConfig {
        min_coverage: t.min_coverage,
        min_norm_score: t.min_norm_score,
        collab_min_ratio: t.collab_min_ratio,
        collab_min_gain: t.collab_min_gain,
        ..*base
    }
}

fn cross_validate(
    router: &mut Router,
    labels: &[Label],
    folds: usize,
) -> (Metrics, Vec<Thresholds>) {
    let base = *router.config();
    let g = grid();
    // metrics[config][row]
    let table: Vec<Vec<Metrics>> = g
        .iter()
        .map(|t| {
            router.set_config(apply(&base, t));
            labels
                .iter()
                .map(|l| {
                    let mut m = Metrics::default();
                    m.add(l, &router.route(&RouteRequest::new(&l.request)));
                    m
                })
                .collect()
        })
        .collect();
    // complexity scores per row with default config (signals don't depend on thresholds much)
    router.set_config(base);
    let mut held = Metrics::default();
    let mut chosen = vec![];
    let n = labels.len();
    for f in 0..folds {
        let test: Vec<usize> = (0..n).filter(|i| folds > 1 && i % folds == f).collect();
        let best = (0..g.len())
            .max_by(|&a, &b| {
                let score = |c: usize| {
                    let mut m = Metrics::default();
                    for i in (0..n).filter(|i| folds == 1 || i % folds != f) {
                        m.merge(&table[c][i]);
                    }
                    m.objective()
                };
                score(a).total_cmp(&score(b)).then(b.cmp(&a))
            })
            .unwrap();
        chosen.push(g[best]);
        for &i in &test {
            held.merge(&table[best][i]);
        }
    }
    (held, chosen)
}

/// Complexity cut points calibrated per fold on the router's complexity score.
fn cross_validate_complexity(
    router: &Router,
    labels: &[Label],
    folds: usize,
) -> (usize, usize, Vec<(f64, f64)>) {
    let rows: Vec<(f64, Complexity)> = labels
        .iter()
        .filter_map(|l| {
            let c = l.complexity?;
            if l.expect.is_empty() {
                return None;
            }
            let d = router.route(&RouteRequest::new(&l.request));
            let x = d
                .explanation
                .iter()
                .find_map(|e| {
                    e.strip_prefix("complexity ")
                        .and_then(|r| r.split("(score ").nth(1))
                })
                .and_then(|r| r.split(')').next())
                .and_then(|r| r.parse::<f64>().ok())?;
            Some((x, c))
        })
        .collect();
    let cuts: Vec<f64> = (-8..=24).map(|i| i as f64 * 0.25).collect();
    let classify = |x: f64, m: f64, c: f64| {
        if x >= c {
            Complexity::Complex
        } else if x >= m {
            Complexity::Moderate
        } else {
            Complexity::Simple
        }
    };
    let n = rows.len();
    let mut hit = 0;
    let mut chosen = vec![];
    for f in 0..folds {
        let mut best = (0usize, 0.0, 0.0);
        for &m in &cuts {
            for &c in cuts.iter().filter(|&&c| c > m) {
                let h = (0..n)
                    .filter(|i| folds == 1 || i % folds != f)
                    .filter(|&i| classify(rows[i].0, m, c) == rows[i].1)
                    .count();
                if h > best.0 {
                    best = (h, m, c);
                }
            }
        }
        chosen.push((best.1, best.2));
        hit += (0..n)
            .filter(|i| i % folds == f)
            .filter(|&i| classify(rows[i].0, best.1, best.2) == rows[i].1)
            .count();
    }
    (hit, n, chosen)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let pos: Vec<&String> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| !a.starts_with("--") && (*i == 0 || args[i - 1] != "--out"))
        .map(|(_, a)| a)
        .collect();
    let Some((labels_path, cat_dirs)) = pos.split_last().filter(|(_, d)| !d.is_empty()) else {
        eprintln!("usage: eval CATALOG_DIR... LABELS.jsonl [--out OUT.jsonl] [--verbose] [--errors] [--no-cv]");
        std::process::exit(2);
    };
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1));
    let verbose = args.iter().any(|a| a == "--verbose");
    let catalog = Catalog::load(&Sources {
        embedded: vec![],
        dirs: cat_dirs.iter().map(|d| d.into()).collect(),
    });
    let labels = load_labels(labels_path);
    let t0 = std::time::Instant::now();
    let mut router = Router::new(&catalog);
    let build = t0.elapsed();
    let baseline = BaselineRouter::new(&catalog);
    println!(
        "catalog: {} plugins, {} documents indexed in {:.1} ms; {} labelled requests",
        catalog.plugins.len(),
        router.doc_count(),
        build.as_secs_f64() * 1e3,
        labels.len()
    );

    let mut m_router = Metrics::default();
    let mut m_base = Metrics::default();
    let mut per_plugin: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut lines = vec![];
    let mut conf_bins = [(0usize, 0usize); 5];
    for l in &labels {
        let req = RouteRequest::new(&l.request);
        let d = router.route(&req);
        let b = baseline.route(&req);
        m_router.add(l, &d);
        m_base.add(l, &b);
        lines.push(d.to_batch_json().to_string());
        let ok = if l.expect.is_empty() {
            d.primary_plugin.is_none()
        } else {
            d.primary_plugin
                .as_ref()
                .is_some_and(|p| l.expect.contains(p))
        };
        let key = l
            .expect
            .first()
            .cloned()
            .unwrap_or_else(|| "(out of scope)".into());
        let e = per_plugin.entry(key).or_default();
        e.0 += ok as usize;
        e.1 += 1;
        if d.primary_plugin.is_some() && !l.expect.is_empty() {
            let bin = ((d.confidence * 5.0) as usize).min(4);
            conf_bins[bin].0 += ok as usize;
            conf_bins[bin].1 += 1;
        }
        if verbose || (!ok && args.iter().any(|a| a == "--errors")) {
            println!(
                "{} {:<60} want {:?} got {:?} plan {:?} conf {:.2} cx {} (want {:?}) | {}",
                if ok { "ok " } else { "BAD" },
                l.request,
                l.expect,
                d.primary_plugin,
                d.plugins(),
                d.confidence,
                d.classification.complexity.as_str(),
                l.complexity.map(|c| c.as_str()),
                d.explanation.join(" | ")
            );
        }
    }
    if let Some(o) = out {
        std::fs::write(o, lines.join("\n") + "\n").expect("write --out");
        println!("batch output written to {o}");
    }
    println!("\n== whole set, default configuration (thresholds as shipped)");
    m_router.print("router (BM25F)");
    m_base.print("baseline (seed keywords)");
    println!("\nper expected primary plugin (router): correct/total");
    for (k, (a, b)) in &per_plugin {
        println!("  {k:<28} {a}/{b}");
    }
    println!("\nconfidence bins (routed in-scope requests): accuracy per bin");
    for (i, (a, b)) in conf_bins.iter().enumerate() {
        if *b > 0 {
            println!(
                "  {:.1}-{:.1}: {}/{} = {:.2}",
                i as f64 / 5.0,
                (i + 1) as f64 / 5.0,
                a,
                b,
                *a as f64 / *b as f64
            );
        }
    }

    if !args.iter().any(|a| a == "--no-cv") {
        println!("\n== held-out figures: thresholds calibrated on the other folds only");
        for folds in [labels.len(), 5] {
            let (m, chosen) = cross_validate(&mut router, &labels, folds);
            let name = if folds == labels.len() {
                "leave-one-out".to_string()
            } else {
                format!("{folds}-fold")
            };
            m.print(&format!("router {name}"));
            let spread = |f: fn(&Thresholds) -> f64| {
                let v: Vec<f64> = chosen.iter().map(f).collect();
                let lo = v.iter().copied().fold(f64::MAX, f64::min);
                let hi = v.iter().copied().fold(f64::MIN, f64::max);
                format!("{lo:.3}..{hi:.3}")
            };
            println!(
                "    thresholds chosen per fold: min_coverage {} min_norm_score {} collab_min_ratio {} collab_min_gain {}",
                spread(|t| t.min_coverage),
                spread(|t| t.min_norm_score),
                spread(|t| t.collab_min_ratio),
                spread(|t| t.collab_min_gain)
            );
            let (h, n, cuts) = cross_validate_complexity(&router, &labels, folds);
            let ms: Vec<f64> = cuts.iter().map(|c| c.0).collect();
            let cs: Vec<f64> = cuts.iter().map(|c| c.1).collect();
            println!(
                "    complexity held-out {}/{} = {:.3} (cut points moderate {:.2}..{:.2}, complex {:.2}..{:.2})",
                h,
                n,
                h as f64 / n.max(1) as f64,
                ms.iter().copied().fold(f64::MAX, f64::min),
                ms.iter().copied().fold(f64::MIN, f64::max),
                cs.iter().copied().fold(f64::MAX, f64::min),
                cs.iter().copied().fold(f64::MIN, f64::max),
            );
        }
        // The same calibration on the whole set: what the defaults would be.
        let (_, all) = cross_validate(&mut router, &labels, 1);
        println!("    calibrated on the whole set: {:?}", all[0]);
        let (h, n, cuts) = cross_validate_complexity(&router, &labels, 1);
        println!(
            "    complexity cut points on the whole set: {:?} ({h}/{n} on the set itself)",
            cuts[0]
        );
    }
    let _ = classify::base_minutes;
}
