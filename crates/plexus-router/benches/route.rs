//! Criterion benchmarks of the routing engine.
//!
//! - `route/real_catalog`: one decision on the real catalog (the six plugins
//!   of `shared/catalog/claude-plugins`, ≈190 agents and commands), cycling
//!   through the labelled dev requests. Goal: p99 < 100 µs.
//! - `route/synthetic_10k`: one decision on a synthetic catalog of 10,000
//!   agents (50 plugins × 200 agents, Zipf-distributed vocabulary). Goal: < 2 ms.
//! - `build/*`: index build time for both catalogs.
//! - `route_fused/*`: the same decisions with the sentence-embedding signal,
//!   the query's vector computed beforehand (its own cost is
//!   `plexus-embed`'s bench). The real catalog uses all-MiniLM-L6-v2
//!   (`.models/minilm`, `PLEXUS_EMBED_DIR`; skipped with a note when
//!   missing); the 10,000-agent catalog uses deterministic pseudo-random unit
//!   vectors, since embedding 10,000 agents takes minutes and the decision's
//!   cost does not depend on the values. Goals: p99 ≤ 5 ms and ≤ 20 ms.
//!
//! After criterion, the harness times 20,000 single decisions on each catalog
//! one by one and prints p50 / p99 / max, since criterion reports means and
//! medians only.
//!
//! ```text
//! cargo bench -p plexus-router -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! `PLEXUS_CATALOG` and `PLEXUS_DEV_SET` override where the real catalog and
//! the requests are read from.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{black_box, Criterion};
use plexus_catalog::{Agent, Catalog, Manifest, Plugin, Sources};
use std::sync::Arc;

use plexus_router::{EmbedError, Embedder, RouteRequest, Router, RouterConfig};

/// Unit vectors from a hash of the text: the shape of an embedding, none of
/// its meaning (for timing only).
#[derive(Debug)]
struct HashVectors(usize);

impl Embedder for HashVectors {
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        Ok(texts
            .iter()
            .map(|t| {
                let mut rng = Rng(t.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
                }) | 1);
                let v: Vec<f32> = (0..self.0)
                    .map(|_| (rng.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
                    .collect();
                let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-9);
                v.into_iter().map(|x| x / n).collect()
            })
            .collect())
    }
    fn dim(&self) -> usize {
        self.0
    }
    fn name(&self) -> &str {
        "hash-vectors"
    }
}

fn minilm() -> Option<Arc<dyn Embedder>> {
    let dir = std::env::var_os("PLEXUS_EMBED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.models/minilm"));
    match plexus_embed::MiniLm::load(&dir) {
        Ok(m) => Some(Arc::new(m)),
        Err(e) => {
            println!("route_fused/real_catalog skipped: {e}");
            None
        }
    }
}

fn percentiles_fused(
    router: &Router,
    reqs: &[(RouteRequest, Option<Vec<f32>>)],
    n: usize,
) -> (Duration, Duration, Duration) {
    let mut t: Vec<Duration> = (0..n + 200)
        .map(|i| {
            let (r, q) = &reqs[i % reqs.len()];
            let s = Instant::now();
            black_box(router.route_embedded(black_box(r), q.as_deref()));
            s.elapsed()
        })
        .skip(200)
        .collect();
    t.sort();
    let at = |q: f64| t[((t.len() as f64 * q) as usize).min(t.len() - 1)];
    (at(0.5), at(0.99), *t.last().unwrap())
}

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

fn real_catalog() -> Catalog {
    let dir = std::env::var_os("PLEXUS_CATALOG")
        .map(PathBuf::from)
        .unwrap_or_else(|| shared().join("catalog/claude-plugins"));
    Catalog::load(&Sources {
        embedded: vec![],
        dirs: vec![dir],
    })
}

fn dev_requests() -> Vec<String> {
    let path = std::env::var_os("PLEXUS_DEV_SET")
        .map(PathBuf::from)
        .unwrap_or_else(|| shared().join("routing/dev.jsonl"));
    let reqs: Vec<String> = std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["request"].as_str().map(str::to_string))
        .collect();
    if reqs.is_empty() {
        vec![
            "Store the database password in Vault and rotate it".into(),
            "Build a signup form with React Hook Form and Zod validation".into(),
            "Plan the next sprint using our team's velocity and capacity".into(),
        ]
    } else {
        reqs
    }
}

/// Deterministic xorshift generator (no dependency, same catalog every run).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Zipf-like index in 0..n (rank r with probability ∝ 1/(r+1)).
    fn zipf(&mut self, n: usize) -> usize {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        (((n as f64 + 1.0).powf(u) - 1.0) as usize).min(n - 1)
    }
}

fn vocabulary(n: usize) -> Vec<String> {
    const SYL: &[&str] = &[
        "ka", "lo", "mi", "ra", "zu", "ten", "vor", "dal", "qui", "sen", "pra", "gol", "nex",
        "tor", "bri", "fal", "um", "ost", "wen", "cy",
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut v = std::collections::BTreeSet::new();
    while v.len() < n {
        let k = 2 + (rng.next() % 3) as usize;
        let w: String = (0..k)
            .map(|_| SYL[(rng.next() % SYL.len() as u64) as usize])
            .collect();
        v.insert(w);
    }
    // Shuffle so that rank (frequency) does not follow alphabetical order.
    let mut v: Vec<String> = v.into_iter().collect();
    for i in (1..v.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

fn words(rng: &mut Rng, vocab: &[String], n: usize) -> String {
    (0..n)
        .map(|_| vocab[rng.zipf(vocab.len())].as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// 50 plugins × 200 agents with names, keywords, descriptions and bodies
/// drawn from a 20,000-word Zipf vocabulary.
fn synthetic_catalog(plugins: usize, agents: usize) -> (Catalog, Vec<String>) {
    let vocab = vocabulary(20_000);
    let mut rng = Rng(42);
    let catalog = Catalog {
        plugins: (0..plugins)
            .map(|p| {
                let name = format!("synth-{p:03}");
                Plugin {
                    name: name.clone(),
                    version: "1".into(),
                    description: words(&mut rng, &vocab, 25),
                    keywords: (0..8).map(|_| words(&mut rng, &vocab, 1)).collect(),
                    agents: (0..agents)
                        .map(|a| Agent {
                            name: format!("agent-{a:03}-{}", words(&mut rng, &vocab, 1)),
                            description: words(&mut rng, &vocab, 30),
                            keywords: (0..5).map(|_| words(&mut rng, &vocab, 1)).collect(),
                            examples: vec![words(&mut rng, &vocab, 12)],
                            body: words(&mut rng, &vocab, 250),
                            ..Default::default()
                        })
                        .collect(),
                    commands: vec![],
                    mcp_servers: vec![],
                    manifest: Manifest::default_for(&name),
                    claude_dir: None,
                    manifest_file: None,
                }
            })
            .collect(),
        diagnostics: vec![],
    };
    let queries = (0..64)
        .map(|_| {
            let n = 4 + (rng.next() % 12) as usize;
            words(&mut rng, &vocab, n)
        })
        .collect();
    (catalog, queries)
}

fn percentiles(router: &Router, reqs: &[RouteRequest], n: usize) -> (Duration, Duration, Duration) {
    for r in reqs.iter().take(200) {
        black_box(router.route(r));
    }
    let mut t: Vec<Duration> = (0..n)
        .map(|i| {
            let r = &reqs[i % reqs.len()];
            let s = Instant::now();
            black_box(router.route(black_box(r)));
            s.elapsed()
        })
        .collect();
    t.sort();
    let at = |q: f64| t[((t.len() as f64 * q) as usize).min(t.len() - 1)];
    (at(0.5), at(0.99), *t.last().unwrap())
}

fn main() {
    let mut c = Criterion::default().configure_from_args();

    let real = real_catalog();
    let real_reqs: Vec<RouteRequest> = dev_requests().into_iter().map(RouteRequest::new).collect();
    let (synth, synth_q) = synthetic_catalog(50, 200);
    let synth_reqs: Vec<RouteRequest> = synth_q.into_iter().map(RouteRequest::new).collect();

    c.bench_function("build/real_catalog", |b| {
        b.iter(|| Router::new(black_box(&real)))
    });
    let router = Router::new(&real);
    let docs = router.doc_count();
    let mut i = 0;
    c.bench_function("route/real_catalog", |b| {
        b.iter(|| {
            i = (i + 1) % real_reqs.len();
            router.route(black_box(&real_reqs[i]))
        })
    });

    let mut g = c.benchmark_group("synthetic_10k");
    g.sample_size(10);
    g.bench_function("build", |b| b.iter(|| Router::new(black_box(&synth))));
    g.finish();
    let big = Router::new(&synth);
    let mut j = 0;
    c.bench_function("route/synthetic_10k", |b| {
        b.iter(|| {
            j = (j + 1) % synth_reqs.len();
            big.route(black_box(&synth_reqs[j]))
        })
    });
    // The fused decisions, query vectors computed beforehand.
    let fused_real = minilm().map(|e| {
        let r = Router::with_embedder(&real, RouterConfig::default(), Some(e));
        let reqs: Vec<(RouteRequest, Option<Vec<f32>>)> = real_reqs
            .iter()
            .map(|q| (q.clone(), r.embed_query(&q.text)))
            .collect();
        (r, reqs)
    });
    if let Some((r, reqs)) = &fused_real {
        let mut k = 0;
        c.bench_function("route_fused/real_catalog", |b| {
            b.iter(|| {
                k = (k + 1) % reqs.len();
                r.route_embedded(black_box(&reqs[k].0), reqs[k].1.as_deref())
            })
        });
    }
    let big_fused = Router::with_embedder(
        &synth,
        RouterConfig::default(),
        Some(Arc::new(HashVectors(384))),
    );
    let big_reqs: Vec<(RouteRequest, Option<Vec<f32>>)> = synth_reqs
        .iter()
        .map(|q| (q.clone(), big_fused.embed_query(&q.text)))
        .collect();
    let mut k = 0;
    c.bench_function("route_fused/synthetic_10k", |b| {
        b.iter(|| {
            k = (k + 1) % big_reqs.len();
            big_fused.route_embedded(black_box(&big_reqs[k].0), big_reqs[k].1.as_deref())
        })
    });
    c.final_summary();

    if let Some((r, reqs)) = &fused_real {
        let (p50, p99, max) = percentiles_fused(r, reqs, 20_000);
        println!(
            "real catalog, fused (query vector given): single decisions p50 {p50:?} p99 {p99:?} max {max:?}"
        );
    }
    let (p50, p99, max) = percentiles_fused(&big_fused, &big_reqs, 2_000);
    println!(
        "synthetic catalog, fused (query vector given): single decisions p50 {p50:?} p99 {p99:?} max {max:?}"
    );

    let (p50, p99, max) = percentiles(&router, &real_reqs, 20_000);
    println!(
        "real catalog ({docs} documents): single decisions p50 {p50:?} p99 {p99:?} max {max:?}"
    );
    let (p50, p99, max) = percentiles(&big, &synth_reqs, 2_000);
    println!(
        "synthetic catalog ({} documents): single decisions p50 {p50:?} p99 {p99:?} max {max:?}",
        big.doc_count()
    );
}
