//! The routing floor (issues 20, 25): held-out figures of the fused router
//! (BM25F + all-MiniLM-L6-v2) on the real Claude Code plugins, with the same
//! 5-fold cross-validation `examples/eval.rs` reports (docs/routing.md).
//! Every fitted piece sees the training folds only, so these are the figures
//! to expect on unseen requests; a router change that loses accuracy fails
//! CI. Without the model files this test FAILS (it does not fall back to
//! BM25F): CI installs them with scripts/setup-embed.sh.

#[path = "../examples/eval.rs"]
#[allow(dead_code)]
mod eval;

use std::path::PathBuf;

/// (label set, figure, floor). Measured figures are in docs/routing.md; the
/// floors sit a little under them (a few requests of slack).
const FLOORS: &[(&str, &str, f64)] = &[
    ("dev", "top1", 0.95),
    ("everyday", "top1", 0.60),
    ("agents", "top1", 0.97),
    ("agents", "agent", 0.93),
    ("everyday", "agent", 0.38),
    ("out-of-scope", "abstain", 0.90),
    ("everyday", "false-abstain-max", 0.30),
];

#[test]
fn held_out_figures_of_the_fused_router_stay_above_their_floors() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let claude = root.join("../shared/catalog/claude-plugins");
    assert!(
        claude.is_dir(),
        "{} is needed (the shared catalog beside the checkout)",
        claude.display()
    );
    let dir = std::env::var_os("PLEXUS_EMBED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".models/minilm"));
    let embedder = eval::load_embedder(&dir)
        .unwrap_or_else(|e| panic!("the embedding model is needed for the routing floor: {e}"));
    let labels = eval::default_labels(&root);
    let mut setups = vec![eval::setup("claude", &[claude], &labels, Some(embedder))];
    let (held, _) = eval::held_out(&mut setups, &labels, 5);
    let m = &held[0];
    let mut failed = vec![];
    for &(set, figure, floor) in FLOORS {
        let s = &m[set];
        let (v, ok) = match figure {
            "top1" => (s.top1_rate(), s.top1_rate() >= floor),
            "agent" => (s.agent_rate(), s.agent_rate() >= floor),
            "abstain" => (s.abstain_rate(), s.abstain_rate() >= floor),
            "false-abstain-max" => (s.false_abstain_rate(), s.false_abstain_rate() <= floor),
            _ => unreachable!("a figure this test names"),
        };
        eprintln!("held-out {figure} on {set}: {v:.3} (floor {floor})");
        if !ok {
            failed.push(format!("{figure} on {set} is {v:.3}, floor {floor}"));
        }
    }
    assert!(failed.is_empty(), "under the floor: {failed:?}");
}
