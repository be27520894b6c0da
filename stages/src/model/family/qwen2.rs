//! Qwen2 (Qwen2.5): biases on the q, k and v projections, rope base 1e6, the
//! half-split rotary layout in GGUF too (llama.cpp does not permute qwen2), optional
//! sliding windows on the layers from `max_window_layers` on (off in released models).

use super::{gguf_common, hf_common, hf_rope, Hf};
use crate::model::config::{Activation, Family, LayerSpec, ModelConfig, Rope};
use crate::model::gguf::Meta;
use crate::model::ModelError;
use serde_json::{json, Value};

pub fn from_gguf(meta: &Meta<'_>) -> Result<ModelConfig, ModelError> {
    let c = gguf_common(meta, "qwen2")?;
    Ok(config(
        c.vocab_size,
        c.hidden_size,
        c.intermediate_size,
        c.num_hidden_layers,
        (c.num_attention_heads, c.num_key_value_heads, c.head_dim),
        c.rms_norm_eps,
        Rope::plain(c.rope_theta),
        c.tie_word_embeddings,
        c.max_position_embeddings,
        None,
    ))
}

pub fn from_hf(hf: &Hf<'_>) -> Result<ModelConfig, ModelError> {
    let c = hf_common(hf, None)?;
    let theta = hf.opt_f64("rope_theta")?.unwrap_or(10_000.0);
    let window = if hf.opt_bool("use_sliding_window")?.unwrap_or(false) {
        let w = hf.usize("sliding_window")?;
        let from = hf.opt_usize("max_window_layers")?.unwrap_or(0);
        Some((w, from))
    } else {
        None
    };
    Ok(config(
        c.vocab_size,
        c.hidden_size,
        c.intermediate_size,
        c.num_hidden_layers,
        (c.num_attention_heads, c.num_key_value_heads, c.head_dim),
        c.rms_norm_eps,
        hf_rope(hf, theta, c.head_dim)?,
        hf.opt_bool("tie_word_embeddings")?.unwrap_or(false),
        c.max_position_embeddings,
        window,
    ))
}

#[allow(clippy::too_many_arguments)]
fn config(
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    layers: usize,
    (heads, kv_heads, head_dim): (usize, usize, usize),
    eps: f64,
    rope: Rope,
    tie: bool,
    max_pos: usize,
    window: Option<(usize, usize)>,
) -> ModelConfig {
    let specs = (0..crate::model::config::bounded_layers(layers))
        .map(|l| LayerSpec {
            rope: 0,
            window: window.and_then(|(w, from)| (l >= from).then_some(w)),
        })
        .collect();
    ModelConfig {
        family: Family::Qwen2,
        vocab_size,
        hidden_size,
        intermediate_size,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim,
        rms_norm_eps: eps,
        activation: Activation::Silu,
        qkv_bias: true,
        qk_norm: false,
        post_norms: false,
        embed_scale: 1.0,
        attn_scale: 1.0 / (head_dim as f64).sqrt(),
        tie_word_embeddings: tie,
        max_position_embeddings: max_pos,
        ropes: vec![rope],
        layers: specs,
    }
}

pub fn hf_config(cfg: &ModelConfig) -> Value {
    let window = cfg.layers.iter().find_map(|l| l.window);
    let from = cfg.layers.iter().position(|l| l.window.is_some());
    let mut v = json!({
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_act": "silu",
        "rope_theta": cfg.ropes[0].theta,
        "use_sliding_window": window.is_some(),
        "sliding_window": window,
        "max_window_layers": from.unwrap_or(cfg.num_hidden_layers),
    });
    if let Some(s) = super::llama::rope_scaling(&cfg.ropes[0]) {
        v["rope_scaling"] = s;
    }
    v
}
