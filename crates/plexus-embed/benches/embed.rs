//! Criterion bench of the query embedding (issue 20: its own p99, apart from
//! the decision's).
//!
//! - `embed/request`: one request of everyday length (~20 words), cycling
//!   through the realistic eval requests.
//!
//! After criterion the harness embeds every request one by one several times
//! and prints p50 / p99 / max, with the thread count candle used
//! (`RAYON_NUM_THREADS=1` for one core).
//!
//! ```text
//! RAYON_NUM_THREADS=1 cargo bench -p plexus-embed -- --warm-up-time 1 --measurement-time 3
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{black_box, Criterion};
use plexus_embed::MiniLm;
use plexus_router::Embedder;

fn requests() -> Vec<String> {
    let eval = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plexus-router/eval");
    let mut out = vec![];
    for f in ["everyday.jsonl", "agents.jsonl", "out-of-scope.jsonl"] {
        let text = std::fs::read_to_string(eval.join(f)).unwrap_or_default();
        for l in text.lines() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(l) {
                if let Some(r) = v["request"].as_str() {
                    out.push(r.to_string());
                }
            }
        }
    }
    if out.is_empty() {
        out.push("turn off the kitchen lights at 11pm every weekday".into());
    }
    out
}

fn main() {
    let dir = std::env::var_os("PLEXUS_EMBED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.models/minilm"));
    let model = MiniLm::load(&dir).unwrap_or_else(|e| panic!("{e}"));
    let reqs = requests();
    let mut c = Criterion::default().configure_from_args();
    let mut i = 0usize;
    c.bench_function("embed/request", |b| {
        b.iter(|| {
            i = (i + 1) % reqs.len();
            black_box(model.embed(&[reqs[i].as_str()]).ok())
        })
    });
    c.final_summary();

    let mut times: Vec<Duration> = vec![];
    for _ in 0..3 {
        for r in &reqs {
            let t = Instant::now();
            black_box(model.embed(&[r.as_str()]).ok());
            times.push(t.elapsed());
        }
    }
    times.sort();
    let pct = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    let words: usize = reqs.iter().map(|r| r.split_whitespace().count()).sum();
    println!(
        "embed one request ({} requests, mean {:.1} words, {} threads): p50 {:?} p99 {:?} max {:?}",
        reqs.len(),
        words as f64 / reqs.len() as f64,
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into()),
        pct(0.5),
        pct(0.99),
        times[times.len() - 1]
    );
}
