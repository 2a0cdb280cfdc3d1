//! The semantic signal: sentence embeddings of the request and of every
//! agent, command and plugin, compared by cosine similarity.
//!
//! The router only sees the [`Embedder`] trait, so its core stays pure and
//! testable: `plexus-embed` implements it with all-MiniLM-L6-v2 (candle),
//! tests implement it with small deterministic vectors. Document vectors are
//! computed once at index time ([`SemanticIndex::build`]); a request costs one
//! embedding plus a dot product per document.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::calibrate::ConfidenceModel;

/// Why an embedding could not be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EmbedError {
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("model: {0}")]
    Model(String),
}

/// Turns texts into unit-length vectors of one dimension (cosine = dot).
pub trait Embedder: Send + Sync + std::fmt::Debug {
    /// One L2-normalised vector per text, in order.
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError>;
    /// The vectors' dimension.
    fn dim(&self) -> usize;
    /// What model this is, for `status` and explanations.
    fn name(&self) -> &str;
}

/// How the semantic signal is fused with BM25F. Fitted by cross-validation
/// (`examples/eval.rs`, docs/routing.md).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SemanticConfig {
    /// Plugin score = (1 − w) × BM25F share of the possible + w × best cosine.
    pub weight: f32,
    /// The same mix for choosing the agent or command inside the plugin.
    pub agent_weight: f32,
    /// Confidence and abstention when the embedding is there (its features
    /// include the cosine and its margin); BM25F alone uses
    /// `RouterConfig::confidence`.
    pub confidence: ConfidenceModel,
    /// `RouterConfig::collab_min_ratio` and `collab_min_gain` on the fused
    /// score (its scale differs from BM25F's).
    pub collab_min_ratio: f64,
    pub collab_min_gain: f64,
}

impl Default for SemanticConfig {
    fn default() -> Self {
        // Fitted by `examples/eval.rs` on all 357 labelled requests (dev,
        // agents, everyday, out-of-scope); held-out figures in docs/routing.md.
        SemanticConfig {
            weight: 0.7,
            agent_weight: 0.5,
            confidence: ConfidenceModel {
                bias: -5.986,
                weights: [-2.326, 2.044, 2.952, 3.035, 5.744, 3.394],
                abstain_below: 0.21,
            },
            collab_min_ratio: 0.9,
            collab_min_gain: 0.05,
        }
    }
}

/// Unit vectors of the indexed documents' texts (one or more per
/// document), flat, with the document each belongs to.
#[derive(Debug, Clone)]
pub struct SemanticIndex {
    pub dim: usize,
    pub vecs: Vec<f32>,
    /// owner[k]: the document of vector k.
    pub owner: Vec<u32>,
    pub docs: usize,
    pub model: String,
}

impl SemanticIndex {
    /// Embed each document's texts (`docs[d]`: the texts of document d).
    pub fn build(embedder: &dyn Embedder, docs: &[Vec<&str>]) -> Result<SemanticIndex, EmbedError> {
        let dim = embedder.dim();
        let owner: Vec<u32> = docs
            .iter()
            .enumerate()
            .flat_map(|(d, t)| std::iter::repeat_n(d as u32, t.len()))
            .collect();
        let texts: Vec<&str> = docs.iter().flatten().copied().collect();
        let mut vecs = Vec::with_capacity(texts.len() * dim);
        for chunk in texts.chunks(16) {
            for v in embedder.embed(chunk)? {
                if v.len() != dim {
                    return Err(EmbedError::Model(format!(
                        "vector of {} values, expected {dim}",
                        v.len()
                    )));
                }
                vecs.extend(v);
            }
        }
        Ok(SemanticIndex {
            dim,
            vecs,
            owner,
            docs: docs.len(),
            model: embedder.name().to_string(),
        })
    }

    /// Per document, the best cosine of `q` (unit length) with its texts
    /// (0 for a document without texts, or a query of the wrong dimension).
    pub fn cosines(&self, q: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; self.docs];
        if q.len() != self.dim || self.dim == 0 {
            return out;
        }
        let mut seen = vec![false; self.docs];
        for (v, &d) in self.vecs.chunks_exact(self.dim).zip(&self.owner) {
            let c: f32 = v.iter().zip(q).map(|(a, b)| a * b).sum();
            let d = d as usize;
            if !seen[d] || c > out[d] {
                out[d] = c;
                seen[d] = true;
            }
        }
        out
    }
}

/// An embedder that remembers what it computed: re-indexing a catalog (or
/// evaluating many catalogs) embeds each distinct text once.
#[derive(Debug)]
pub struct CachedEmbedder {
    inner: Arc<dyn Embedder>,
    cache: Mutex<HashMap<String, Vec<f32>>>,
}

impl CachedEmbedder {
    pub fn new(inner: Arc<dyn Embedder>) -> CachedEmbedder {
        CachedEmbedder {
            inner,
            cache: Mutex::new(HashMap::new()),
        }
    }
}

impl Embedder for CachedEmbedder {
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let missing: Vec<&str> = {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            let mut m: Vec<&str> = texts
                .iter()
                .copied()
                .filter(|t| !cache.contains_key(*t))
                .collect();
            m.sort_unstable();
            m.dedup();
            m
        };
        let fresh = if missing.is_empty() {
            vec![]
        } else {
            self.inner.embed(&missing)?
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        for (t, v) in missing.iter().zip(fresh) {
            cache.insert((*t).to_string(), v);
        }
        Ok(texts
            .iter()
            .map(|t| cache.get(*t).cloned().unwrap_or_default())
            .collect())
    }
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn name(&self) -> &str {
        self.inner.name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts the texts it is asked for; vectors from the text's length.
    #[derive(Debug, Default)]
    struct Counting(AtomicUsize);
    impl Embedder for Counting {
        fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
            self.0.fetch_add(texts.len(), Ordering::Relaxed);
            Ok(texts
                .iter()
                .map(|t| {
                    let a = t.len() as f32;
                    let n = (a * a + 1.0).sqrt();
                    vec![a / n, 1.0 / n]
                })
                .collect())
        }
        fn dim(&self) -> usize {
            2
        }
        fn name(&self) -> &str {
            "counting"
        }
    }

    #[test]
    fn cache_embeds_each_distinct_text_once() {
        let inner = Arc::new(Counting::default());
        let c = CachedEmbedder::new(inner.clone());
        let a = c.embed(&["ab", "abc", "ab"]).unwrap();
        let b = c.embed(&["abc", "ab", "x"]).unwrap();
        assert_eq!(inner.0.load(Ordering::Relaxed), 3);
        assert_eq!(a[0], b[1]);
        assert_eq!(a[1], b[0]);
    }

    #[test]
    fn cosines_are_dot_products_and_a_wrong_dimension_gives_zeros() {
        let ix = SemanticIndex::build(
            &Counting::default(),
            &[vec!["a"], vec!["abcd", "ab"], vec![]],
        )
        .unwrap();
        let q = Counting::default().embed(&["a"]).unwrap().remove(0);
        let c = ix.cosines(&q);
        let ab = Counting::default().embed(&["ab"]).unwrap().remove(0);
        let ab: f32 = ab.iter().zip(&q).map(|(a, b)| a * b).sum();
        // The second document's best text is "ab".
        assert!((c[0] - 1.0).abs() < 1e-6 && (c[1] - ab).abs() < 1e-6 && c[1] < c[0]);
        assert_eq!(c[2], 0.0);
        assert_eq!(ix.cosines(&[1.0, 0.0, 0.0]), vec![0.0, 0.0, 0.0]);
    }
}
