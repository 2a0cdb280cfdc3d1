//! Sentence embeddings for the router (issue 20): all-MiniLM-L6-v2 run in
//! Rust with candle's BERT and the `tokenizers` crate, CPU only.
//!
//! [`MiniLm::load`] reads `model.safetensors`, `tokenizer.json` and
//! `config.json` from a directory (`scripts/setup-embed.sh` installs them
//! into `.models/minilm/`). [`MiniLm`] implements
//! [`plexus_router::Embedder`]: mean pooling over the real tokens, then L2
//! normalisation, as sentence-transformers does for this model, so a cosine
//! is a dot product. [`default_dir`] says where a node looks.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use plexus_router::{EmbedError, Embedder};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// The files a model directory must hold.
pub const FILES: [&str; 3] = ["model.safetensors", "tokenizer.json", "config.json"];

/// Word pieces per text the model reads (it was trained on 128; longer text
/// is cut, which for a request is rare and for a document keeps its start).
const MAX_TOKENS: usize = 128;

/// Why a model directory could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0} is missing (run scripts/setup-embed.sh)")]
    Missing(PathBuf),
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
}

/// Where a node looks for the model when its config names no directory:
/// `PLEXUS_EMBED_DIR`, else `.models/minilm` under the working directory.
pub fn default_dir() -> PathBuf {
    std::env::var_os("PLEXUS_EMBED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".models/minilm"))
}

/// all-MiniLM-L6-v2, loaded once; `embed` is `&self` and thread-safe.
pub struct MiniLm {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    dim: usize,
    name: String,
}

impl std::fmt::Debug for MiniLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiniLm")
            .field("name", &self.name)
            .field("dim", &self.dim)
            .finish()
    }
}

impl MiniLm {
    /// Load the model from `dir` (the three [`FILES`]).
    pub fn load(dir: &Path) -> Result<MiniLm, LoadError> {
        for f in FILES {
            let p = dir.join(f);
            if !p.is_file() {
                return Err(LoadError::Missing(p));
            }
        }
        let read = |f: &str| {
            let path = dir.join(f);
            std::fs::read(&path).map_err(|source| LoadError::Io { path, source })
        };
        let invalid = |f: &str, msg: String| LoadError::Invalid {
            path: dir.join(f),
            msg,
        };
        let config: Config = serde_json::from_slice(&read("config.json")?)
            .map_err(|e| invalid("config.json", e.to_string()))?;
        let mut tokenizer = Tokenizer::from_bytes(read("tokenizer.json")?)
            .map_err(|e| invalid("tokenizer.json", e.to_string()))?;
        // The file pads every text to 128 word pieces; pad a batch to its
        // longest text instead (a request is ~25).
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..Default::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| invalid("tokenizer.json", e.to_string()))?;
        let device = Device::Cpu;
        let vb =
            VarBuilder::from_buffered_safetensors(read("model.safetensors")?, DType::F32, &device)
                .map_err(|e| invalid("model.safetensors", e.to_string()))?;
        let model = BertModel::load(vb, &config)
            .map_err(|e| invalid("model.safetensors", e.to_string()))?;
        Ok(MiniLm {
            model,
            tokenizer,
            device,
            dim: config.hidden_size,
            name: "all-MiniLM-L6-v2".to_string(),
        })
    }

    fn forward(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let model_err = |e: candle_core::Error| EmbedError::Model(e.to_string());
        let enc = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        let rows = |f: &dyn Fn(&tokenizers::Encoding) -> &[u32]| -> Result<Tensor, EmbedError> {
            let v: Vec<Tensor> = enc
                .iter()
                .map(|e| Tensor::new(f(e), &self.device))
                .collect::<Result<_, _>>()
                .map_err(model_err)?;
            Tensor::stack(&v, 0).map_err(model_err)
        };
        let ids = rows(&|e| e.get_ids())?;
        let types = rows(&|e| e.get_type_ids())?;
        let mask = rows(&|e| e.get_attention_mask())?;
        let out = self
            .model
            .forward(&ids, &types, Some(&mask))
            .map_err(model_err)?;
        // Mean over the real tokens, then unit length.
        let pooled = (|| {
            let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
            let sum = out.broadcast_mul(&m)?.sum(1)?;
            let n = m.sum(1)?.clamp(1e-9, f64::MAX)?;
            let mean = sum.broadcast_div(&n)?;
            let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
            mean.broadcast_div(&norm)?.to_vec2::<f32>()
        })()
        .map_err(model_err)?;
        Ok(pooled)
    }
}

impl Embedder for MiniLm {
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(vec![]);
        }
        self.forward(texts)
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_directory_is_a_typed_error_naming_the_file() {
        let e = MiniLm::load(Path::new("/nonexistent/minilm")).unwrap_err();
        assert!(
            matches!(&e, LoadError::Missing(p) if p.ends_with("model.safetensors")),
            "{e}"
        );
        assert!(e.to_string().contains("setup-embed.sh"));
    }
}
