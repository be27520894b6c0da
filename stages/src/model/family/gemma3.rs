//! Gemma 3 (text): per-head RMSNorm of queries and keys, RMSNorms of the attention and
//! MLP outputs before each residual add, tanh-GELU gating, embeddings scaled by
//! √hidden, and two kinds of layers: local ones (a sliding window, rope base 1e4) and
//! every `pattern`-th a global one (full attention, rope base 1e6, optionally linearly
//! scaled). Hugging Face stores norm weights as `w` with the model computing
//! `x · (1 + w)`; GGUF (llama.cpp's converter) stores `1 + w`, which is the canonical
//! form here.

use super::{gguf_common, hf_common, Hf};
use crate::model::config::{bounded_layers, Activation, Family, LayerSpec, ModelConfig, Rope};
use crate::model::gguf::Meta;
use crate::model::names::VectorKind;
use crate::model::ModelError;
use serde_json::{json, Value};

/// llama.cpp's defaults for what older GGUF files do not record.
const DEFAULT_PATTERN: usize = 6;
const DEFAULT_LOCAL_BASE: f64 = 10_000.0;

pub fn from_gguf(meta: &Meta<'_>) -> Result<ModelConfig, ModelError> {
    let c = gguf_common(meta, "gemma3")?;
    let window = meta.opt_usize("gemma3.attention.sliding_window")?;
    let pattern = meta
        .opt_usize("gemma3.attention.sliding_window_pattern")?
        .unwrap_or(DEFAULT_PATTERN);
    let local_base = meta
        .opt_f64("gemma3.rope.freq_base_swa")?
        .unwrap_or(DEFAULT_LOCAL_BASE);
    let mut global = Rope::plain(c.rope_theta);
    match meta.opt_str("gemma3.rope.scaling.type")?.as_deref() {
        None | Some("none") => {}
        Some("linear") => global.linear_factor = meta.f64("gemma3.rope.scaling.factor")?,
        Some(other) => {
            return Err(ModelError::Config {
                path: meta.path.to_path_buf(),
                field: "gemma3.rope.scaling.type".into(),
                expected: format!("none or linear (found `{other}`)"),
            })
        }
    }
    let sliding: Vec<bool> = (0..bounded_layers(c.num_hidden_layers))
        .map(|l| pattern == 0 || !(l + 1).is_multiple_of(pattern))
        .collect();
    Ok(config(
        &c_fields(&c),
        1.0 / (c.head_dim as f64).sqrt(),
        global,
        Rope::plain(local_base),
        window,
        &sliding,
        c.tie_word_embeddings,
    ))
}

/// The fields [`config`] needs, from either source.
struct Fields {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    eps: f64,
    max_pos: usize,
}

fn c_fields(c: &super::GgufCommon) -> Fields {
    Fields {
        vocab_size: c.vocab_size,
        hidden_size: c.hidden_size,
        intermediate_size: c.intermediate_size,
        layers: c.num_hidden_layers,
        heads: c.num_attention_heads,
        kv_heads: c.num_key_value_heads,
        head_dim: c.head_dim,
        eps: c.rms_norm_eps,
        max_pos: c.max_position_embeddings,
    }
}

pub fn from_hf(hf: &Hf<'_>) -> Result<ModelConfig, ModelError> {
    let c = hf_common(hf, Some(1e-6))?;
    let act = hf
        .get("hidden_activation")
        .or_else(|| hf.get("hidden_act"))
        .and_then(Value::as_str)
        .unwrap_or("gelu_pytorch_tanh");
    if act != "gelu_pytorch_tanh" && act != "gelu_tanh" {
        return Err(hf.unsupported(
            "hidden_activation",
            &format!("gelu_pytorch_tanh (found `{act}`)"),
        ));
    }
    for field in ["final_logit_softcapping", "attn_logit_softcapping"] {
        if hf.get(field).is_some() {
            return Err(hf.unsupported(field, "null (logit soft-capping is not supported)"));
        }
    }
    let head_dim = hf.opt_usize("head_dim")?.unwrap_or(256);
    let scalar = hf
        .opt_f64("query_pre_attn_scalar")?
        .unwrap_or(head_dim as f64);
    if !(scalar.is_finite() && scalar > 0.0) {
        return Err(hf.unsupported("query_pre_attn_scalar", "a positive number"));
    }
    let window = hf.opt_usize("sliding_window")?;
    let n = bounded_layers(c.num_hidden_layers);
    let sliding: Vec<bool> = match hf.get("layer_types").and_then(Value::as_array) {
        Some(types) => {
            let mut v = Vec::with_capacity(n);
            for (i, t) in types.iter().take(n).enumerate() {
                v.push(match t.as_str() {
                    Some("sliding_attention") => true,
                    Some("full_attention") => false,
                    _ => {
                        return Err(hf.unsupported(
                            &format!("layer_types[{i}]"),
                            "sliding_attention or full_attention",
                        ))
                    }
                });
            }
            v
        }
        None => {
            let pattern = hf
                .opt_usize("sliding_window_pattern")?
                .unwrap_or(DEFAULT_PATTERN);
            (0..n)
                .map(|l| pattern == 0 || !(l + 1).is_multiple_of(pattern))
                .collect()
        }
    };
    if sliding.len() != n {
        return Err(hf.unsupported(
            "layer_types",
            &format!("one entry per layer ({})", c.num_hidden_layers),
        ));
    }
    let theta = hf.opt_f64("rope_theta")?.unwrap_or(1_000_000.0);
    let local = hf
        .opt_f64("rope_local_base_freq")?
        .unwrap_or(DEFAULT_LOCAL_BASE);
    // Gemma 3 applies `rope_scaling` to the global layers only.
    let global = super::hf_rope(hf, theta, head_dim)?;
    let fields = Fields {
        vocab_size: c.vocab_size,
        hidden_size: c.hidden_size,
        intermediate_size: c.intermediate_size,
        layers: c.num_hidden_layers,
        heads: c.num_attention_heads,
        kv_heads: c.num_key_value_heads,
        head_dim,
        eps: c.rms_norm_eps,
        max_pos: c.max_position_embeddings,
    };
    Ok(config(
        &fields,
        1.0 / scalar.sqrt(),
        global,
        Rope::plain(local),
        window,
        &sliding,
        hf.opt_bool("tie_word_embeddings")?.unwrap_or(true),
    ))
}

fn config(
    f: &Fields,
    attn_scale: f64,
    global: Rope,
    local: Rope,
    window: Option<usize>,
    sliding: &[bool],
    tie: bool,
) -> ModelConfig {
    // Rope 0 is the global one, rope 1 the local one.
    let layers = sliding
        .iter()
        .map(|&s| LayerSpec {
            rope: usize::from(s),
            window: if s { window } else { None },
        })
        .collect();
    ModelConfig {
        family: Family::Gemma3,
        vocab_size: f.vocab_size,
        hidden_size: f.hidden_size,
        intermediate_size: f.intermediate_size,
        num_hidden_layers: f.layers,
        num_attention_heads: f.heads,
        num_key_value_heads: f.kv_heads,
        head_dim: f.head_dim,
        rms_norm_eps: f.eps,
        activation: Activation::GeluTanh,
        qkv_bias: false,
        qk_norm: true,
        post_norms: true,
        // Hugging Face multiplies by √hidden in the embedding's dtype; in f32 this is it.
        embed_scale: (f.hidden_size as f32).sqrt() as f64,
        attn_scale,
        tie_word_embeddings: tie,
        max_position_embeddings: f.max_pos,
        ropes: vec![global, local],
        layers,
    }
}

/// How Gemma 3's Hugging Face files name the per-layer vectors.
pub fn hf_vector_module(kind: VectorKind) -> &'static str {
    match kind {
        VectorKind::AttnNorm => "input_layernorm.weight",
        VectorKind::AttnPostNorm => "post_attention_layernorm.weight",
        VectorKind::FfnNorm => "pre_feedforward_layernorm.weight",
        VectorKind::FfnPostNorm => "post_feedforward_layernorm.weight",
        other => other.canonical(),
    }
}

pub fn hf_config(cfg: &ModelConfig) -> Value {
    let window = cfg.layers.iter().find_map(|l| l.window);
    let layer_types: Vec<&str> = cfg
        .layers
        .iter()
        .map(|l| {
            if l.window.is_some() {
                "sliding_attention"
            } else {
                "full_attention"
            }
        })
        .collect();
    let scalar = (1.0 / (cfg.attn_scale * cfg.attn_scale)).round();
    let mut v = json!({
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": scalar,
        "sliding_window": window,
        "layer_types": layer_types,
        "rope_theta": cfg.ropes[0].theta,
        "rope_local_base_freq": cfg.ropes.get(1).map_or(DEFAULT_LOCAL_BASE, |r| r.theta),
        "final_logit_softcapping": null,
        "attn_logit_softcapping": null,
        "rope_scaling": null,
    });
    if let Some(s) = super::llama::rope_scaling(&cfg.ropes[0]) {
        v["rope_scaling"] = s;
    }
    v
}
