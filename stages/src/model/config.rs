//! The hyperparameters of a llama-architecture decoder, read from GGUF metadata or
//! from a Hugging Face `config.json`.

use super::ModelError;
use candle_core::quantized::gguf_file;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Shape and numerics of a llama-style model (llama, SmolLM2, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
    pub max_position_embeddings: usize,
}

impl LlamaConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Checks the shapes fit together; `source` names the file for the error.
    pub fn validate(&self, source: &Path) -> Result<(), ModelError> {
        let bad = |field: &str, expected: String| ModelError::Config {
            path: source.to_path_buf(),
            field: field.to_string(),
            expected,
        };
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(bad(
                "num_attention_heads",
                format!("a divisor of hidden_size {}", self.hidden_size),
            ));
        }
        if self.num_key_value_heads == 0
            || !self
                .num_attention_heads
                .is_multiple_of(self.num_key_value_heads)
        {
            return Err(bad(
                "num_key_value_heads",
                format!(
                    "a divisor of num_attention_heads {}",
                    self.num_attention_heads
                ),
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(bad("hidden_size", "an even head dimension".into()));
        }
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
        ] {
            if v == 0 {
                return Err(bad(field, "a positive integer".into()));
            }
        }
        Ok(())
    }

    /// Reads `llama.*` metadata of a GGUF file. `vocab_size` comes from the metadata
    /// or, when absent, from the token list.
    pub fn from_gguf(ct: &gguf_file::Content, path: &Path) -> Result<Self, ModelError> {
        let arch = meta_str(ct, path, "general.architecture")?;
        if arch != "llama" {
            return Err(ModelError::Config {
                path: path.to_path_buf(),
                field: "general.architecture".into(),
                expected: format!(
                    "`llama` (found `{arch}`; other architectures are not supported yet)"
                ),
            });
        }
        let u = |key: &str| meta_usize(ct, path, &format!("llama.{key}"));
        let vocab_size = match u("vocab_size") {
            Ok(v) => v,
            Err(_) => match ct.metadata.get("tokenizer.ggml.tokens") {
                Some(gguf_file::Value::Array(a)) => a.len(),
                _ => {
                    return Err(missing(
                        path,
                        "llama.vocab_size",
                        "an integer, or a tokenizer.ggml.tokens array",
                    ))
                }
            },
        };
        let hidden_size = u("embedding_length")?;
        let cfg = LlamaConfig {
            vocab_size,
            hidden_size,
            intermediate_size: u("feed_forward_length")?,
            num_hidden_layers: u("block_count")?,
            num_attention_heads: u("attention.head_count")?,
            num_key_value_heads: u("attention.head_count_kv")
                .or_else(|_| u("attention.head_count"))?,
            rope_theta: meta_f64(ct, path, "llama.rope.freq_base").unwrap_or(10_000.0),
            rms_norm_eps: meta_f64(ct, path, "llama.attention.layer_norm_rms_epsilon")?,
            tie_word_embeddings: !ct.tensor_infos.contains_key("output.weight"),
            max_position_embeddings: u("context_length").unwrap_or(4096),
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Reads a Hugging Face `config.json` (llama architecture).
    pub fn from_hf_config(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        #[derive(Deserialize)]
        struct Hf {
            vocab_size: usize,
            hidden_size: usize,
            intermediate_size: usize,
            num_hidden_layers: usize,
            num_attention_heads: usize,
            num_key_value_heads: Option<usize>,
            rope_theta: Option<f64>,
            rms_norm_eps: f64,
            tie_word_embeddings: Option<bool>,
            max_position_embeddings: Option<usize>,
            model_type: Option<String>,
        }
        let hf: Hf = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            path: path.to_path_buf(),
            field: format!("line {} column {}", e.line(), e.column()),
            expected: format!("a llama config.json ({e})"),
        })?;
        if let Some(mt) = &hf.model_type {
            if mt != "llama" {
                return Err(ModelError::Config {
                    path: path.to_path_buf(),
                    field: "model_type".into(),
                    expected: format!("`llama` (found `{mt}`)"),
                });
            }
        }
        let cfg = LlamaConfig {
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_hidden_layers: hf.num_hidden_layers,
            num_attention_heads: hf.num_attention_heads,
            num_key_value_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            rope_theta: hf.rope_theta.unwrap_or(10_000.0),
            rms_norm_eps: hf.rms_norm_eps,
            tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
            max_position_embeddings: hf.max_position_embeddings.unwrap_or(4096),
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// The `config.json` a Hugging Face loader expects for these weights.
    pub fn to_hf_config(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "hidden_act": "silu",
            "torch_dtype": "float32",
        })
    }
}

fn missing(path: &Path, key: &str, expected: &str) -> ModelError {
    ModelError::Config {
        path: path.to_path_buf(),
        field: key.to_string(),
        expected: expected.to_string(),
    }
}

pub(crate) fn meta_str(
    ct: &gguf_file::Content,
    path: &Path,
    key: &str,
) -> Result<String, ModelError> {
    match ct.metadata.get(key) {
        Some(gguf_file::Value::String(s)) => Ok(s.clone()),
        _ => Err(missing(path, key, "a string in the GGUF metadata")),
    }
}

pub(crate) fn meta_usize(
    ct: &gguf_file::Content,
    path: &Path,
    key: &str,
) -> Result<usize, ModelError> {
    use gguf_file::Value::*;
    let v = match ct.metadata.get(key) {
        Some(U8(v)) => *v as i128,
        Some(I8(v)) => *v as i128,
        Some(U16(v)) => *v as i128,
        Some(I16(v)) => *v as i128,
        Some(U32(v)) => *v as i128,
        Some(I32(v)) => *v as i128,
        Some(U64(v)) => *v as i128,
        Some(I64(v)) => *v as i128,
        _ => return Err(missing(path, key, "an integer in the GGUF metadata")),
    };
    usize::try_from(v).map_err(|_| missing(path, key, "a non-negative integer"))
}

fn meta_f64(ct: &gguf_file::Content, path: &Path, key: &str) -> Result<f64, ModelError> {
    match ct.metadata.get(key) {
        Some(gguf_file::Value::F32(v)) => Ok(*v as f64),
        Some(gguf_file::Value::F64(v)) => Ok(*v),
        _ => Err(missing(path, key, "a float in the GGUF metadata")),
    }
}
