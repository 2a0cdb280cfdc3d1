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
        SemanticConfig {
            weight: 0.7,
            agent_weight: 0.7,
            confidence: ConfidenceModel {
                bias: -7.0,
                weights: [0.0, 0.0, 2.0, 0.0, 12.0, 8.0],
                abstain_below: 0.3,
            },
            collab_min_ratio: 0.7,
            collab_min_gain: 0.1,
        }
    }
}

/// Unit vectors of every indexed document, in index order, flat.
#[derive(Debug, Clone)]
pub struct SemanticIndex {
    pub dim: usize,
    pub vecs: Vec<f32>,
    pub model: String,
}

impl SemanticIndex {
    /// Embed `texts` (one per document, index order).
    pub fn build(embedder: &dyn Embedder, texts: &[&str]) -> Result<SemanticIndex, EmbedError> {
        let dim = embedder.dim();
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
            model: embedder.name().to_string(),
        })
    }

    /// Cosine of `q` (unit length) with every document.
    pub fn cosines(&self, q: &[f32]) -> Vec<f32> {
        if q.len() != self.dim || self.dim == 0 {
            return vec![0.0; self.vecs.len() / self.dim.max(1)];
        }
        self.vecs
            .chunks_exact(self.dim)
            .map(|d| d.iter().zip(q).map(|(a, b)| a * b).sum())
            .collect()
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
        let ix = SemanticIndex::build(&Counting::default(), &["a", "abcd"]).unwrap();
        let q = Counting::default().embed(&["a"]).unwrap().remove(0);
        let c = ix.cosines(&q);
        assert!((c[0] - 1.0).abs() < 1e-6 && c[1] < c[0]);
        assert_eq!(ix.cosines(&[1.0, 0.0, 0.0]), vec![0.0, 0.0]);
    }
}
