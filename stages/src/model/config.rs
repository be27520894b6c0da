//! The one decoder's hyperparameters: everything that says what a layer computes, for
//! every supported family (llama, mistral, qwen2, gemma3). A family adapter
//! ([`super::family`]) reads them from GGUF metadata or a Hugging Face `config.json`;
//! the forwards (candle's in [`super::decoder`], the hand-written kernels in
//! [`super::ops`]) read only this.
//!
//! One layer, in canonical form (norm weights are the multiplicative factors, Gemma's
//! `1 + w` already added; rotary embeddings in the half-split layout):
//!
//! ```text
//! x  = rms_norm(h, attn_norm)
//! q, k, v = x·Wqᵀ (+bq), x·Wkᵀ (+bk), x·Wvᵀ (+bv)      qkv_bias (qwen2)
//! q, k = rms_norm_per_head(q, q_norm), (k, k_norm)       qk_norm (gemma3)
//! q, k = rope(q), rope(k)                                the layer's rope
//! y  = softmax(q·kᵀ · attn_scale + causal/window) · v    the layer's window
//! o  = y·Woᵀ;  o = rms_norm(o, attn_post_norm)           post_norms (gemma3)
//! h  = h + o
//! x  = rms_norm(h, ffn_norm)
//! m  = (act(x·Wgᵀ) ⊙ x·Wuᵀ)·Wdᵀ;  m = rms_norm(m, ffn_post_norm)   act: silu | gelu-tanh
//! h  = h + m
//! ```
//!
//! The embedding is multiplied by `embed_scale` (gemma: √hidden), the final norm and
//! the LM head (tied or not) give the logits.

use super::ModelError;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A model family: how its files name and lay out tensors (see [`super::family`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Gemma3,
}

impl Family {
    pub const ALL: [Family; 4] = [
        Family::Llama,
        Family::Mistral,
        Family::Qwen2,
        Family::Gemma3,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Gemma3 => "gemma3",
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The gating activation of the MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// x·σ(x) (llama, mistral, qwen2).
    Silu,
    /// GELU with the tanh approximation (gemma: `gelu_pytorch_tanh`).
    GeluTanh,
}

/// How one layer rotates queries and keys: base, and optional frequency changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rope {
    pub theta: f64,
    /// Positions are divided by this (linear scaling, gemma3's global layers); 1 = none.
    #[serde(default = "one")]
    pub linear_factor: f64,
    /// Per frequency, the inverse frequency is divided by this factor (llama3-style
    /// scaling, GGUF `rope_freqs.weight`); empty = none. Length head_dim/2 otherwise.
    #[serde(default)]
    pub freq_factors: Vec<f64>,
}

fn one() -> f64 {
    1.0
}

impl Rope {
    pub fn plain(theta: f64) -> Rope {
        Rope {
            theta,
            linear_factor: 1.0,
            freq_factors: Vec::new(),
        }
    }

    /// The inverse frequencies of a head of `head_dim`, in f64.
    pub fn inv_freq(&self, head_dim: usize) -> Vec<f64> {
        (0..head_dim / 2)
            .map(|i| {
                let f = 1.0 / self.theta.powf((2 * i) as f64 / head_dim as f64);
                let f = f / self.freq_factors.get(i).copied().unwrap_or(1.0);
                f / self.linear_factor
            })
            .collect()
    }

    /// cos and sin of `position · inv_freq`, `positions x head_dim/2`, computed in f64.
    pub fn table(&self, head_dim: usize, positions: usize) -> (Vec<f64>, Vec<f64>) {
        let inv = self.inv_freq(head_dim);
        let mut cos = Vec::with_capacity(positions * inv.len());
        let mut sin = Vec::with_capacity(positions * inv.len());
        for p in 0..positions {
            for f in &inv {
                let a = p as f64 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        (cos, sin)
    }
}

/// What differs from layer to layer: which rotary embedding and which attention window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerSpec {
    /// Index into [`ModelConfig::ropes`].
    pub rope: usize,
    /// A query sees itself and the `window - 1` keys before it (Hugging Face's
    /// `sliding_window` semantics); `None`: every earlier key.
    pub window: Option<usize>,
}

/// Shape and numerics of a decoder of any supported family.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// Size of one attention head (not always hidden / heads: gemma3 270m has 4 heads
    /// of 256 on a hidden size of 640).
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub activation: Activation,
    /// Biases on the q, k and v projections (qwen2).
    pub qkv_bias: bool,
    /// RMSNorm of each query and key head before the rotary embedding (gemma3).
    pub qk_norm: bool,
    /// RMSNorm of the attention output and of the MLP output before each residual add
    /// (gemma3).
    pub post_norms: bool,
    /// The token embeddings are multiplied by this (gemma: √hidden_size), 1 elsewhere.
    pub embed_scale: f64,
    /// The attention scores are multiplied by this (1/√head_dim, or gemma3's
    /// `query_pre_attn_scalar^-1/2`).
    pub attn_scale: f64,
    pub tie_word_embeddings: bool,
    /// The longest sequence the model was trained for (checked, never allocated for).
    pub max_position_embeddings: usize,
    /// The rotary embeddings the layers use (gemma3: local and global).
    pub ropes: Vec<Rope>,
    /// One entry per layer.
    pub layers: Vec<LayerSpec>,
}

/// Bounds that keep a forged header from sizing allocations: no real decoder comes near.
pub const MAX_LAYERS: usize = 4096;
pub const MAX_DIM: usize = 1 << 20;
pub const MAX_HEADS: usize = 4096;

/// `n`, capped just past [`MAX_LAYERS`] (for loops that build per-layer specs before
/// [`ModelConfig::validate`] has run).
pub fn bounded_layers(n: usize) -> usize {
    n.min(MAX_LAYERS + 1)
}

impl ModelConfig {
    /// Layer specs for `n` layers that share rope 0 and one window. Never more than
    /// [`MAX_LAYERS`] + 1 of them, so a forged layer count cannot size an allocation
    /// ([`ModelConfig::validate`] then refuses it).
    pub fn uniform_layers(n: usize, window: Option<usize>) -> Vec<LayerSpec> {
        vec![LayerSpec { rope: 0, window }; bounded_layers(n)]
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Width of the query projection's output.
    pub fn q_width(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    /// Width of the key and value projections' outputs.
    pub fn kv_width(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    pub fn layer(&self, l: usize) -> LayerSpec {
        self.layers[l]
    }

    /// Checks the shapes fit together and stay within sane bounds; `source` names the
    /// file for the error.
    pub fn validate(&self, source: &Path) -> Result<(), ModelError> {
        let bad = |field: &str, expected: String| ModelError::Config {
            path: source.to_path_buf(),
            field: field.to_string(),
            expected,
        };
        for (field, v, max) in [
            ("vocab_size", self.vocab_size, MAX_DIM * 4),
            ("hidden_size", self.hidden_size, MAX_DIM),
            ("intermediate_size", self.intermediate_size, MAX_DIM),
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
            ("num_attention_heads", self.num_attention_heads, MAX_HEADS),
            ("num_key_value_heads", self.num_key_value_heads, MAX_HEADS),
            ("head_dim", self.head_dim, MAX_DIM),
        ] {
            if v == 0 || v > max {
                return Err(bad(field, format!("an integer in 1..={max} (found {v})")));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(bad(
                "num_key_value_heads",
                format!(
                    "a divisor of num_attention_heads {} (found {})",
                    self.num_attention_heads, self.num_key_value_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(bad(
                "head_dim",
                format!("an even head dimension (found {})", self.head_dim),
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return Err(bad("rms_norm_eps", "a finite non-negative number".into()));
        }
        for (field, v) in [
            ("embed_scale", self.embed_scale),
            ("attn_scale", self.attn_scale),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(bad(field, format!("a finite positive number (found {v})")));
            }
        }
        if self.ropes.is_empty() {
            return Err(bad("rope", "at least one rotary embedding".into()));
        }
        for r in &self.ropes {
            if !(r.theta.is_finite() && r.theta > 0.0) {
                return Err(bad(
                    "rope_theta",
                    format!("a finite positive base (found {})", r.theta),
                ));
            }
            if !(r.linear_factor.is_finite() && r.linear_factor > 0.0) {
                return Err(bad(
                    "rope_scaling.factor",
                    "a finite positive factor".into(),
                ));
            }
            if !r.freq_factors.is_empty()
                && (r.freq_factors.len() != self.head_dim / 2
                    || r.freq_factors.iter().any(|f| !(f.is_finite() && *f > 0.0)))
            {
                return Err(bad(
                    "rope_freqs",
                    format!("{} finite positive factors", self.head_dim / 2),
                ));
            }
        }
        if self.layers.len() != self.num_hidden_layers {
            return Err(bad(
                "num_hidden_layers",
                format!(
                    "{} layer specs (found {})",
                    self.num_hidden_layers,
                    self.layers.len()
                ),
            ));
        }
        for (l, s) in self.layers.iter().enumerate() {
            if s.rope >= self.ropes.len() {
                return Err(bad(&format!("layer {l} rope"), "a known rope".into()));
            }
            if s.window == Some(0) {
                return Err(bad("sliding_window", "a positive window".into()));
            }
        }
        Ok(())
    }

    /// The config of a GGUF file (its `general.architecture` picks the family).
    pub fn from_gguf(
        ct: &candle_core::quantized::gguf_file::Content,
        path: &Path,
    ) -> Result<ModelConfig, ModelError> {
        super::family::config_from_gguf(&super::gguf::Meta::new(ct, path))
    }

    /// The config of a Hugging Face `config.json` (its `model_type` picks the family).
    pub fn from_hf_config(path: &Path) -> Result<ModelConfig, ModelError> {
        super::family::config_from_hf(path)
    }

    /// Shape of a weight matrix: (rows, cols) in Hugging Face's `out x in` layout.
    pub fn matrix_shape(&self, kind: super::MatrixKind) -> (usize, usize) {
        use super::MatrixKind::*;
        let (d, im) = (self.hidden_size, self.intermediate_size);
        match kind {
            Q => (self.q_width(), d),
            K | V => (self.kv_width(), d),
            O => (d, self.q_width()),
            Gate | Up => (im, d),
            Down => (d, im),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_tables_follow_the_definition() {
        let r = Rope::plain(10000.0);
        let (c, s) = r.table(4, 3);
        // inv_freq = [1, 1/100]; position 2: angles 2 and 0.02.
        assert!((c[4] - 2f64.cos()).abs() < 1e-15 && (s[5] - 0.02f64.sin()).abs() < 1e-15);
        let scaled = Rope {
            linear_factor: 2.0,
            freq_factors: vec![1.0, 4.0],
            ..Rope::plain(10000.0)
        };
        assert_eq!(scaled.inv_freq(4), vec![0.5, 1.0 / 100.0 / 4.0 / 2.0]);
    }
}
