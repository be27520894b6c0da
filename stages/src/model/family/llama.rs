//! Llama (and SmolLM2): SiLU gating, no biases, one rotary embedding. llama.cpp's
//! converter permutes the Q and K rows of llama-family GGUF files for interleaved
//! rope; [`from_gguf_tensor`] un-permutes them so every matrix, gradient and export
//! uses Hugging Face's layout and the half-split rotary embedding.

use super::{gguf_common, hf_common, hf_rope, Hf};
use crate::model::config::{Activation, Family, ModelConfig, Rope};
use crate::model::gguf::Meta;
use crate::model::{MatrixId, MatrixKind, ModelError};
use candle_core::Tensor;
use serde_json::{json, Value};

pub fn from_gguf(meta: &Meta<'_>) -> Result<ModelConfig, ModelError> {
    let c = gguf_common(meta, "llama")?;
    let mut rope = Rope::plain(c.rope_theta);
    match meta.opt_str("llama.rope.scaling.type")?.as_deref() {
        None | Some("none") => {}
        Some("linear") => rope.linear_factor = meta.f64("llama.rope.scaling.factor")?,
        Some(other) => {
            return Err(ModelError::Config {
                path: meta.path.to_path_buf(),
                field: "llama.rope.scaling.type".into(),
                expected: format!("none or linear (found `{other}`)"),
            })
        }
    }
    let window = meta.opt_usize("llama.attention.sliding_window")?;
    Ok(ModelConfig {
        family: if window.is_some() {
            Family::Mistral
        } else {
            Family::Llama
        },
        vocab_size: c.vocab_size,
        hidden_size: c.hidden_size,
        intermediate_size: c.intermediate_size,
        num_hidden_layers: c.num_hidden_layers,
        num_attention_heads: c.num_attention_heads,
        num_key_value_heads: c.num_key_value_heads,
        head_dim: c.head_dim,
        rms_norm_eps: c.rms_norm_eps,
        activation: Activation::Silu,
        qkv_bias: meta.ct.tensor_infos.contains_key("blk.0.attn_q.bias"),
        qk_norm: false,
        post_norms: false,
        embed_scale: 1.0,
        attn_scale: 1.0 / (c.head_dim as f64).sqrt(),
        tie_word_embeddings: c.tie_word_embeddings,
        max_position_embeddings: c.max_position_embeddings,
        ropes: vec![rope],
        layers: ModelConfig::uniform_layers(c.num_hidden_layers, window),
    })
}

pub fn from_hf(hf: &Hf<'_>) -> Result<ModelConfig, ModelError> {
    from_hf_as(hf, Family::Llama, None)
}

/// A llama-shaped `config.json` (llama, mistral), with the window every layer uses.
pub(crate) fn from_hf_as(
    hf: &Hf<'_>,
    family: Family,
    window: Option<usize>,
) -> Result<ModelConfig, ModelError> {
    let c = hf_common(hf, None)?;
    if let Some(act) = hf.get("hidden_act").and_then(Value::as_str) {
        if act != "silu" {
            return Err(hf.unsupported("hidden_act", &format!("silu (found `{act}`)")));
        }
    }
    if hf.opt_bool("mlp_bias")? == Some(true) {
        return Err(hf.unsupported("mlp_bias", "false (MLP biases are not supported)"));
    }
    let theta = hf.opt_f64("rope_theta")?.unwrap_or(10_000.0);
    let rope = hf_rope(hf, theta, c.head_dim)?;
    Ok(ModelConfig {
        family,
        vocab_size: c.vocab_size,
        hidden_size: c.hidden_size,
        intermediate_size: c.intermediate_size,
        num_hidden_layers: c.num_hidden_layers,
        num_attention_heads: c.num_attention_heads,
        num_key_value_heads: c.num_key_value_heads,
        head_dim: c.head_dim,
        rms_norm_eps: c.rms_norm_eps,
        activation: Activation::Silu,
        qkv_bias: hf.opt_bool("attention_bias")?.unwrap_or(false),
        qk_norm: false,
        post_norms: false,
        embed_scale: 1.0,
        attn_scale: 1.0 / (c.head_dim as f64).sqrt(),
        tie_word_embeddings: hf.opt_bool("tie_word_embeddings")?.unwrap_or(false),
        max_position_embeddings: c.max_position_embeddings,
        ropes: vec![rope],
        layers: ModelConfig::uniform_layers(c.num_hidden_layers, window),
    })
}

/// Undoes llama.cpp's Q/K permutation: rows go from interleaved pairs back to halves.
pub fn unpermute_qk(w: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let (d_out, d_in) = w.dims2()?;
    let head_dim = d_out / n_head;
    w.reshape((n_head, head_dim / 2, 2, d_in))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((d_out, d_in))
}

/// GGUF Q and K come permuted for interleaved rope (biases too, when present).
pub fn from_gguf_tensor(
    cfg: &ModelConfig,
    canonical: &str,
    t: Tensor,
) -> candle_core::Result<Tensor> {
    use crate::model::names::VectorKind;
    let heads = match MatrixId::from_hf_name(canonical).map(|id| id.kind) {
        Some(MatrixKind::Q) => Some(cfg.num_attention_heads),
        Some(MatrixKind::K) => Some(cfg.num_key_value_heads),
        _ => match VectorKind::from_name(canonical).map(|(_, k)| k) {
            Some(VectorKind::QBias) => Some(cfg.num_attention_heads),
            Some(VectorKind::KBias) => Some(cfg.num_key_value_heads),
            _ => None,
        },
    };
    match heads {
        Some(n) if t.rank() == 2 => unpermute_qk(&t, n),
        Some(n) => unpermute_qk(&t.unsqueeze(1)?, n)?.squeeze(1),
        None => Ok(t),
    }
}

pub fn hf_config(cfg: &ModelConfig) -> Value {
    let mut v = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "attention_bias": cfg.qkv_bias,
        "mlp_bias": false,
        "rope_theta": cfg.ropes[0].theta,
    });
    if let Some(s) = rope_scaling(&cfg.ropes[0]) {
        v["rope_scaling"] = s;
    }
    v
}

/// The `rope_scaling` object of a rope that has one (linear only: llama3 frequency
/// factors cannot be written back as the four numbers that made them).
pub(crate) fn rope_scaling(r: &Rope) -> Option<Value> {
    (r.linear_factor != 1.0).then(|| json!({ "rope_type": "linear", "factor": r.linear_factor }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() -> candle_core::Result<()> {
        // llama.cpp's convert script: w.reshape(n_head, 2, hd/2, d_in).swapaxes(1, 2).
        let (n_head, hd, d_in) = (3, 4, 5);
        let w = Tensor::arange(0f32, (n_head * hd * d_in) as f32, &Device::Cpu)?
            .reshape((n_head * hd, d_in))?;
        let permuted = w
            .reshape((n_head, 2, hd / 2, d_in))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((n_head * hd, d_in))?;
        let back = unpermute_qk(&permuted, n_head)?;
        assert_eq!(back.to_vec2::<f32>()?, w.to_vec2::<f32>()?);
        Ok(())
    }
}
