//! Confidence and abstention: a logistic model over the [`Evidence`] of the
//! best plugin, fitted on labelled requests (see `examples/eval.rs`) and
//! checked on held-out folds.
//!
//! The model answers "is the best plugin a right answer?": positive
//! examples are in-scope requests whose best plugin is one of the expected
//! ones; negative ones are in-scope requests routed wrongly, out-of-scope
//! requests, and in-scope requests routed with their expected plugins
//! removed from the catalog (nothing left fits them: the labels say which
//! plugins may rightly serve a request, so without those plugins the right
//! answer is to abstain). Its output is the decision's confidence; the
//! router abstains below [`ConfidenceModel::abstain_below`].

use serde::{Deserialize, Serialize};

use crate::decision::Evidence;

/// Number of model features.
pub const NFEAT: usize = 6;

/// Names of the features, in order (for reports).
pub const FEATURE_NAMES: [&str; NFEAT] = [
    "coverage",
    "doc_coverage",
    "norm_score",
    "info",
    "semantic",
    "semantic_margin",
];

/// The features of one piece of evidence, each in 0–1. (The margin to the
/// runner-up is left out: requests that span two plugins have a small
/// margin and a right answer, and with it the held-out top-1 fell. A count
/// of matched words was tried too and got next to no weight.)
pub fn features(e: &Evidence) -> [f64; NFEAT] {
    [
        e.coverage,
        e.doc_coverage,
        e.norm_score,
        // Matched information in units of the rarest possible word, squashed.
        (e.info / 3.0).min(1.0),
        e.semantic,
        e.semantic_margin,
    ]
}

/// Evidence whose [`features`] are `x` (for re-scoring stored features).
pub fn from_features(x: &[f64; NFEAT]) -> Evidence {
    Evidence {
        coverage: x[0],
        doc_coverage: x[1],
        norm_score: x[2],
        info: 3.0 * x[3],
        semantic: x[4],
        semantic_margin: x[5],
        margin: 0.0,
        words: 0,
        matched_words: 0,
    }
}

/// Logistic model: confidence = σ(bias + Σ wᵢ·xᵢ).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ConfidenceModel {
    pub bias: f64,
    pub weights: [f64; NFEAT],
    /// Abstain when the confidence is below this.
    pub abstain_below: f64,
}

impl Default for ConfidenceModel {
    /// Fitted by `cargo run --release -p plexus-router --example eval` on
    /// `shared/routing/dev.jsonl` against the real catalog, with and without
    /// the cluster manifests (see `docs/routing.md`).
    fn default() -> Self {
        ConfidenceModel {
            bias: -4.666,
            weights: [1.236, 1.284, 5.316, 0.642, 0.0, 0.0],
            abstain_below: 0.19,
        }
    }
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

impl ConfidenceModel {
    /// Probability that the best plugin is a right answer.
    pub fn confidence(&self, e: &Evidence) -> f64 {
        let x = features(e);
        let z = self.bias + self.weights.iter().zip(x).map(|(w, x)| w * x).sum::<f64>();
        let p = sigmoid(z);
        if p.is_finite() {
            p.clamp(0.0, 1.0)
        } else {
            0.0
        }
    }

    /// Fit by Newton's method (iteratively reweighted least squares) with an
    /// L2 penalty `l2` on the weights (not the bias). `samples` are feature
    /// vectors with whether the answer was right.
    #[allow(clippy::needless_range_loop)]
    pub fn fit(samples: &[([f64; NFEAT], bool)], l2: f64) -> ConfidenceModel {
        const D: usize = NFEAT + 1;
        let mut beta = [0f64; D];
        for _ in 0..50 {
            let mut grad = [0f64; D];
            let mut hess = [[0f64; D]; D];
            for (x, y) in samples {
                let xs: [f64; D] = std::array::from_fn(|i| if i == 0 { 1.0 } else { x[i - 1] });
                let z: f64 = xs.iter().zip(&beta).map(|(a, b)| a * b).sum();
                let p = sigmoid(z);
                let r = p - if *y { 1.0 } else { 0.0 };
                let w = (p * (1.0 - p)).max(1e-9);
                for i in 0..D {
                    grad[i] += r * xs[i];
                    for j in 0..D {
                        hess[i][j] += w * xs[i] * xs[j];
                    }
                }
            }
            for i in 1..D {
                grad[i] += l2 * beta[i];
                hess[i][i] += l2;
            }
            hess[0][0] += 1e-6;
            let Some(step) = solve(hess, grad) else { break };
            let mut moved = 0f64;
            for i in 0..D {
                beta[i] -= step[i];
                moved = moved.max(step[i].abs());
            }
            if moved < 1e-8 {
                break;
            }
        }
        ConfidenceModel {
            bias: beta[0],
            weights: std::array::from_fn(|i| beta[i + 1]),
            abstain_below: 0.5,
        }
    }
}

/// Solve `a · x = b` by Gaussian elimination with partial pivoting.
#[allow(clippy::needless_range_loop)]
fn solve<const D: usize>(mut a: [[f64; D]; D], mut b: [f64; D]) -> Option<[f64; D]> {
    for c in 0..D {
        let p = (c..D).max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs()))?;
        if a[p][c].abs() < 1e-12 {
            return None;
        }
        a.swap(c, p);
        b.swap(c, p);
        for r in c + 1..D {
            let f = a[r][c] / a[c][c];
            for k in c..D {
                a[r][k] -= f * a[c][k];
            }
            b[r] -= f * b[c];
        }
    }
    let mut x = [0f64; D];
    for r in (0..D).rev() {
        let s: f64 = (r + 1..D).map(|k| a[r][k] * x[k]).sum();
        x[r] = (b[r] - s) / a[r][r];
    }
    Some(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(norm: f64) -> Evidence {
        Evidence {
            coverage: norm,
            doc_coverage: norm,
            norm_score: norm,
            info: 3.0 * norm,
            semantic: 0.0,
            semantic_margin: 0.0,
            margin: 0.5,
            words: 4,
            matched_words: 2,
        }
    }

    #[test]
    fn fit_separates_and_orders() {
        let mut s = vec![];
        for i in 0..40 {
            let x = i as f64 / 40.0;
            s.push((features(&ev(x)), x > 0.45 || i % 9 == 0));
        }
        let m = ConfidenceModel::fit(&s, 0.1);
        assert!(m.confidence(&ev(0.9)) > 0.8, "{m:?}");
        assert!(m.confidence(&ev(0.1)) < 0.2, "{m:?}");
        assert!(m.confidence(&ev(0.6)) > m.confidence(&ev(0.4)));
    }

    #[test]
    fn confidence_is_a_probability_even_for_odd_input() {
        let m = ConfidenceModel::default();
        for e in [
            Evidence::default(),
            ev(1.0),
            ev(f64::NAN),
            ev(1e300),
            ev(-1e300),
        ] {
            let c = m.confidence(&e);
            assert!((0.0..=1.0).contains(&c), "{c}");
        }
    }
}
