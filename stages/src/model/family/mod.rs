//! Family adapters: how each supported family's files describe the one decoder.
//!
//! An adapter knows three things about its family: how to read the config (GGUF
//! `general.architecture` metadata, or a Hugging Face `config.json` by `model_type`),
//! how its files name the tensors, and how to bring them to the canonical layout at
//! load time and back at export:
//!
//! | family | GGUF architecture | HF `model_type` | at load |
//! |---|---|---|---|
//! | [`llama`] | `llama` | `llama` | GGUF: un-permute Q and K (llama.cpp permutes them for interleaved rope) |
//! | [`mistral`] | (`llama`) | `mistral` | as llama; sliding window on every layer |
//! | [`qwen2`] | `qwen2` | `qwen2` | q/k/v biases |
//! | [`gemma3`] | `gemma3` | `gemma3_text` (`gemma3`) | HF: norm weights + 1 (GGUF has it baked in); q/k norms, post norms, local/global layers |
//!
//! GGUF names tensors the same way in every family (llama.cpp's `blk.N.*`), so the
//! GGUF side is shared here; the Hugging Face side differs in the norms only.

pub mod gemma3;
pub mod llama;
pub mod mistral;
pub mod qwen2;

use super::config::{Family, ModelConfig};
use super::gguf::Meta;
use super::names::{VectorKind, EMBED, FINAL_NORM, LM_HEAD};
use super::{MatrixId, MatrixKind, ModelError};
use candle_core::Tensor;
use serde_json::Value;
use std::path::Path;

/// The config of a GGUF file, by its `general.architecture`.
pub fn config_from_gguf(meta: &Meta<'_>) -> Result<ModelConfig, ModelError> {
    let arch = meta.str("general.architecture")?;
    let cfg = match arch.as_str() {
        "llama" => llama::from_gguf(meta)?,
        "qwen2" => qwen2::from_gguf(meta)?,
        "gemma3" => gemma3::from_gguf(meta)?,
        other => {
            return Err(ModelError::Config {
                path: meta.path.to_path_buf(),
                field: "general.architecture".into(),
                expected: format!(
                    "one of llama, qwen2, gemma3 (found `{other}`; mistral checkpoints come \
                     as `llama` GGUF files or as Hugging Face directories)"
                ),
            })
        }
    };
    cfg.validate(meta.path)?;
    Ok(cfg)
}

/// The config of a Hugging Face `config.json`, by its `model_type`.
pub fn config_from_hf(path: &Path) -> Result<ModelConfig, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let v: Value = serde_json::from_str(&text).map_err(|e| ModelError::Config {
        path: path.to_path_buf(),
        field: format!("line {} column {}", e.line(), e.column()),
        expected: format!("a JSON object ({e})"),
    })?;
    let hf = Hf { v: &v, path };
    let model_type = hf.str("model_type")?;
    let cfg = match model_type.as_str() {
        "llama" => llama::from_hf(&hf)?,
        "mistral" => mistral::from_hf(&hf)?,
        "qwen2" => qwen2::from_hf(&hf)?,
        "gemma3_text" => gemma3::from_hf(&hf)?,
        "gemma3" => match v.get("text_config") {
            Some(tc) => gemma3::from_hf(&Hf { v: tc, path })?,
            None => gemma3::from_hf(&hf)?,
        },
        other => {
            return Err(ModelError::Config {
                path: path.to_path_buf(),
                field: "model_type".into(),
                expected: format!(
                    "one of llama, mistral, qwen2, gemma3_text, gemma3 (found `{other}`)"
                ),
            })
        }
    };
    cfg.validate(path)?;
    Ok(cfg)
}

/// Typed access to a `config.json`, with errors naming the file and the field.
pub struct Hf<'a> {
    pub v: &'a Value,
    pub path: &'a Path,
}

impl Hf<'_> {
    fn bad(&self, field: &str, expected: &str) -> ModelError {
        ModelError::Config {
            path: self.path.to_path_buf(),
            field: field.to_string(),
            expected: expected.to_string(),
        }
    }

    /// The value of `field` unless it is absent or null.
    pub fn get(&self, field: &str) -> Option<&Value> {
        self.v.get(field).filter(|v| !v.is_null())
    }

    pub fn str(&self, field: &str) -> Result<String, ModelError> {
        self.get(field)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| self.bad(field, "a string"))
    }

    pub fn usize(&self, field: &str) -> Result<usize, ModelError> {
        self.opt_usize(field)?
            .ok_or_else(|| self.bad(field, "a non-negative integer"))
    }

    pub fn opt_usize(&self, field: &str) -> Result<Option<usize>, ModelError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| self.bad(field, "a non-negative integer")),
        }
    }

    pub fn f64(&self, field: &str) -> Result<f64, ModelError> {
        self.opt_f64(field)?
            .ok_or_else(|| self.bad(field, "a number"))
    }

    pub fn opt_f64(&self, field: &str) -> Result<Option<f64>, ModelError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.bad(field, "a number")),
        }
    }

    pub fn opt_bool(&self, field: &str) -> Result<Option<bool>, ModelError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.bad(field, "true or false")),
        }
    }

    /// An error for a field whose value is not supported.
    pub fn unsupported(&self, field: &str, expected: &str) -> ModelError {
        self.bad(field, expected)
    }
}

/// Fields every family's `config.json` shares, read the same way.
pub(crate) struct HfCommon {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
}

pub(crate) fn hf_common(hf: &Hf<'_>, default_eps: Option<f64>) -> Result<HfCommon, ModelError> {
    let hidden_size = hf.usize("hidden_size")?;
    let num_attention_heads = hf.usize("num_attention_heads")?;
    if num_attention_heads == 0 {
        return Err(hf.unsupported("num_attention_heads", "a positive integer"));
    }
    Ok(HfCommon {
        vocab_size: hf.usize("vocab_size")?,
        hidden_size,
        intermediate_size: hf.usize("intermediate_size")?,
        num_hidden_layers: hf.usize("num_hidden_layers")?,
        num_attention_heads,
        num_key_value_heads: hf
            .opt_usize("num_key_value_heads")?
            .unwrap_or(num_attention_heads),
        head_dim: hf
            .opt_usize("head_dim")?
            .unwrap_or(hidden_size / num_attention_heads),
        rms_norm_eps: match default_eps {
            Some(d) => hf.opt_f64("rms_norm_eps")?.unwrap_or(d),
            None => hf.f64("rms_norm_eps")?,
        },
        max_position_embeddings: hf.opt_usize("max_position_embeddings")?.unwrap_or(4096),
    })
}

/// Fields every family's GGUF metadata shares (`{arch}.*`).
pub(crate) struct GgufCommon {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
}

pub(crate) fn gguf_common(meta: &Meta<'_>, arch: &str) -> Result<GgufCommon, ModelError> {
    let key = |k: &str| format!("{arch}.{k}");
    let vocab_size = match meta.opt_usize(&key("vocab_size"))? {
        Some(v) => v,
        None => match meta.ct.metadata.get("tokenizer.ggml.tokens") {
            Some(candle_core::quantized::gguf_file::Value::Array(a)) => a.len(),
            _ => {
                return Err(ModelError::Config {
                    path: meta.path.to_path_buf(),
                    field: key("vocab_size"),
                    expected: "an integer, or a tokenizer.ggml.tokens array".into(),
                })
            }
        },
    };
    let hidden_size = meta.usize(&key("embedding_length"))?;
    let num_attention_heads = meta.usize(&key("attention.head_count"))?;
    if num_attention_heads == 0 {
        return Err(ModelError::Config {
            path: meta.path.to_path_buf(),
            field: key("attention.head_count"),
            expected: "a positive integer".into(),
        });
    }
    Ok(GgufCommon {
        vocab_size,
        hidden_size,
        intermediate_size: meta.usize(&key("feed_forward_length"))?,
        num_hidden_layers: meta.usize(&key("block_count"))?,
        num_attention_heads,
        num_key_value_heads: meta
            .opt_usize(&key("attention.head_count_kv"))?
            .unwrap_or(num_attention_heads),
        head_dim: meta
            .opt_usize(&key("attention.key_length"))?
            .unwrap_or(hidden_size / num_attention_heads),
        rms_norm_eps: meta.f64(&key("attention.layer_norm_rms_epsilon"))?,
        rope_theta: meta.opt_f64(&key("rope.freq_base"))?.unwrap_or(10_000.0),
        max_position_embeddings: meta.opt_usize(&key("context_length"))?.unwrap_or(4096),
        tie_word_embeddings: !meta.ct.tensor_infos.contains_key("output.weight"),
    })
}

/// The canonical name of a GGUF tensor (llama.cpp's names are shared by every family);
/// `None` for tensors the decoder does not use as weights (e.g. `rope_freqs.weight`).
pub fn canonical_of_gguf(name: &str) -> Option<String> {
    match name {
        "token_embd.weight" => return Some(EMBED.into()),
        "output_norm.weight" => return Some(FINAL_NORM.into()),
        "output.weight" => return Some(LM_HEAD.into()),
        _ => {}
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let vector = match tail {
        "attn_norm.weight" => Some(VectorKind::AttnNorm),
        "post_attention_norm.weight" => Some(VectorKind::AttnPostNorm),
        "ffn_norm.weight" => Some(VectorKind::FfnNorm),
        "post_ffw_norm.weight" => Some(VectorKind::FfnPostNorm),
        "attn_q_norm.weight" => Some(VectorKind::QNorm),
        "attn_k_norm.weight" => Some(VectorKind::KNorm),
        "attn_q.bias" => Some(VectorKind::QBias),
        "attn_k.bias" => Some(VectorKind::KBias),
        "attn_v.bias" => Some(VectorKind::VBias),
        _ => None,
    };
    if let Some(v) = vector {
        return Some(v.name(layer));
    }
    MatrixKind::ALL
        .into_iter()
        .find(|k| tail == format!("{}.weight", k.gguf_name()))
        .map(|k| MatrixId::new(layer, k).hf_name())
}

/// Brings one tensor read from a GGUF file to the canonical layout.
pub fn from_gguf_tensor(
    cfg: &ModelConfig,
    canonical: &str,
    t: Tensor,
) -> candle_core::Result<Tensor> {
    match cfg.family {
        Family::Llama | Family::Mistral => llama::from_gguf_tensor(cfg, canonical, t),
        Family::Qwen2 | Family::Gemma3 => Ok(t),
    }
}

/// How a family's Hugging Face files name a per-layer vector.
fn hf_vector_module(family: Family, kind: VectorKind) -> &'static str {
    match family {
        Family::Gemma3 => gemma3::hf_vector_module(kind),
        Family::Llama | Family::Mistral | Family::Qwen2 => match kind {
            VectorKind::AttnNorm => "input_layernorm.weight",
            VectorKind::FfnNorm => "post_attention_layernorm.weight",
            other => other.canonical(),
        },
    }
}

/// The canonical name of a tensor of a Hugging Face checkpoint of `family`; `None` for
/// tensors the decoder does not use (rotary buffers some checkpoints carry).
pub fn canonical_of_hf(family: Family, name: &str) -> Option<String> {
    if matches!(name, EMBED | FINAL_NORM | LM_HEAD) || MatrixId::from_hf_name(name).is_some() {
        return Some(name.to_string());
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, module) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    VectorKind::ALL
        .into_iter()
        .find(|&k| hf_vector_module(family, k) == module)
        .map(|k| k.name(layer))
}

/// The Hugging Face name of a canonical tensor name, for `family`.
pub fn hf_of_canonical(family: Family, name: &str) -> String {
    match VectorKind::from_name(name) {
        Some((layer, kind)) => {
            format!("model.layers.{layer}.{}", hf_vector_module(family, kind))
        }
        None => name.to_string(),
    }
}

/// Whether a canonical tensor is a norm weight (Gemma's files store these as `w - 1`).
pub fn is_norm(name: &str) -> bool {
    name == FINAL_NORM || VectorKind::from_name(name).is_some_and(|(_, k)| k.is_norm())
}

/// Brings one tensor of a Hugging Face checkpoint to the canonical layout.
pub fn from_hf_tensor(family: Family, canonical: &str, t: Tensor) -> candle_core::Result<Tensor> {
    match family {
        Family::Gemma3 if is_norm(canonical) => t + 1.0,
        _ => Ok(t),
    }
}

/// The inverse of [`from_hf_tensor`], for export.
pub fn to_hf_tensor(family: Family, canonical: &str, t: Tensor) -> candle_core::Result<Tensor> {
    match family {
        Family::Gemma3 if is_norm(canonical) => t - 1.0,
        _ => Ok(t),
    }
}

/// Token ids a `config.json` names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpecialIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub pad: Option<u32>,
}

/// The `config.json` a Hugging Face loader expects for a model of this config.
pub fn hf_config(cfg: &ModelConfig, ids: SpecialIds, torch_dtype: &str) -> Value {
    let mut v = match cfg.family {
        Family::Llama => llama::hf_config(cfg),
        Family::Mistral => mistral::hf_config(cfg),
        Family::Qwen2 => qwen2::hf_config(cfg),
        Family::Gemma3 => gemma3::hf_config(cfg),
    };
    let common = serde_json::json!({
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "max_position_embeddings": cfg.max_position_embeddings,
        "torch_dtype": torch_dtype,
    });
    if let (Some(obj), Value::Object(c)) = (v.as_object_mut(), common) {
        for (k, x) in c {
            obj.entry(k).or_insert(x);
        }
        for (field, id) in [
            ("bos_token_id", ids.bos),
            ("eos_token_id", ids.eos),
            ("pad_token_id", ids.pad),
        ] {
            if let Some(id) = id {
                obj.insert(field.into(), id.into());
            }
        }
    }
    v
}

/// A `rope_scaling` object of a `config.json` turned into a [`super::config::Rope`]
/// change: `linear` divides positions, `llama3` rescales the frequencies; anything
/// else is refused.
pub(crate) fn hf_rope(
    hf: &Hf<'_>,
    theta: f64,
    head_dim: usize,
) -> Result<super::config::Rope, ModelError> {
    let mut rope = super::config::Rope::plain(theta);
    let Some(s) = hf.get("rope_scaling") else {
        return Ok(rope);
    };
    let sub = Hf {
        v: s,
        path: hf.path,
    };
    let kind = sub
        .get("rope_type")
        .or_else(|| sub.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("");
    match kind {
        "default" => {}
        "linear" => rope.linear_factor = sub.f64("factor")?,
        "llama3" => {
            let factor = sub.f64("factor")?;
            let low = sub.f64("low_freq_factor")?;
            let high = sub.f64("high_freq_factor")?;
            let old = sub.f64("original_max_position_embeddings")?;
            rope.freq_factors = llama3_freq_factors(theta, head_dim, factor, low, high, old);
        }
        other => {
            return Err(hf.unsupported(
                "rope_scaling.rope_type",
                &format!("default, linear or llama3 (found `{other}`)"),
            ))
        }
    }
    Ok(rope)
}

/// Llama 3.1's frequency rescaling as per-frequency divisors (Hugging Face's
/// `_compute_llama3_parameters`, expressed as what llama.cpp stores in `rope_freqs`).
pub fn llama3_freq_factors(
    theta: f64,
    head_dim: usize,
    factor: f64,
    low_freq_factor: f64,
    high_freq_factor: f64,
    old_context: f64,
) -> Vec<f64> {
    let low_wavelen = old_context / low_freq_factor;
    let high_wavelen = old_context / high_freq_factor;
    (0..head_dim / 2)
        .map(|i| {
            let inv = 1.0 / theta.powf((2 * i) as f64 / head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / inv;
            let new = if wavelen < high_wavelen {
                inv
            } else if wavelen > low_wavelen {
                inv / factor
            } else {
                let smooth = (old_context / wavelen - low_freq_factor)
                    / (high_freq_factor - low_freq_factor);
                (1.0 - smooth) * inv / factor + smooth * inv
            };
            inv / new
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_names_map_to_canonical() {
        assert_eq!(
            canonical_of_gguf("blk.3.ffn_down.weight").as_deref(),
            Some("model.layers.3.mlp.down_proj.weight")
        );
        assert_eq!(
            canonical_of_gguf("blk.0.attn_norm.weight").as_deref(),
            Some("model.layers.0.attn_norm.weight")
        );
        assert_eq!(
            canonical_of_gguf("blk.5.post_ffw_norm.weight").as_deref(),
            Some("model.layers.5.ffn_post_norm.weight")
        );
        assert_eq!(
            canonical_of_gguf("blk.1.attn_k.bias").as_deref(),
            Some("model.layers.1.self_attn.k_proj.bias")
        );
        assert_eq!(
            canonical_of_gguf("token_embd.weight").as_deref(),
            Some(EMBED)
        );
        assert_eq!(canonical_of_gguf("rope_freqs.weight"), None);
    }

    #[test]
    fn hf_names_round_trip_per_family() {
        for family in Family::ALL {
            for kind in VectorKind::ALL {
                let c = kind.name(7);
                let hf = hf_of_canonical(family, &c);
                assert_eq!(
                    canonical_of_hf(family, &hf),
                    Some(c.clone()),
                    "{family} {c}"
                );
            }
            let m = MatrixId::new(2, MatrixKind::Up).hf_name();
            assert_eq!(canonical_of_hf(family, &m), Some(m.clone()));
        }
        // The same Hugging Face name plays different roles in llama and gemma3.
        let hf = "model.layers.0.post_attention_layernorm.weight";
        assert_eq!(
            canonical_of_hf(Family::Llama, hf).as_deref(),
            Some("model.layers.0.ffn_norm.weight")
        );
        assert_eq!(
            canonical_of_hf(Family::Gemma3, hf).as_deref(),
            Some("model.layers.0.attn_post_norm.weight")
        );
        assert_eq!(
            canonical_of_hf(Family::Llama, "model.rotary_emb.inv_freq"),
            None
        );
    }

    #[test]
    fn exported_configs_read_back_to_the_same_config() {
        let dir = tempfile::tempdir().unwrap();
        for family in Family::ALL {
            let c = crate::model::tiny::tiny_config(family, 4);
            let v = hf_config(&c, SpecialIds::default(), "float32");
            let p = dir.path().join(format!("{family}.json"));
            std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
            assert_eq!(config_from_hf(&p).unwrap(), c, "{family}: {v}");
        }
    }

    #[test]
    fn unsupported_configs_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        let base = r#""vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 2, "num_attention_heads": 2, "rms_norm_eps": 1e-5"#;
        for (extra, field) in [
            (r#""model_type": "gpt2""#, "model_type"),
            (
                r#""model_type": "llama", "hidden_act": "relu""#,
                "hidden_act",
            ),
            (
                r#""model_type": "llama", "rope_scaling": {"rope_type": "yarn", "factor": 4}"#,
                "rope_scaling.rope_type",
            ),
            (
                r#""model_type": "gemma3_text", "final_logit_softcapping": 30.0"#,
                "final_logit_softcapping",
            ),
            (
                r#""model_type": "llama", "num_key_value_heads": 3"#,
                "num_key_value_heads",
            ),
        ] {
            std::fs::write(&p, format!("{{{base}, {extra}}}")).unwrap();
            let e = config_from_hf(&p).unwrap_err().to_string();
            assert!(e.contains(&format!("field `{field}`")), "{extra}: {e}");
            assert!(e.starts_with(&p.display().to_string()), "{e}");
        }
    }

    #[test]
    fn llama3_scaling_keeps_high_frequencies_and_divides_low_ones() {
        // Llama 3.2 1B: theta 5e5, head_dim 64, factor 32, 1, 4, 8192.
        let f = llama3_freq_factors(500000.0, 64, 32.0, 1.0, 4.0, 8192.0);
        assert_eq!(f.len(), 32);
        assert_eq!(f[0], 1.0);
        assert!((f[31] - 32.0).abs() < 1e-12);
        assert!(f.windows(2).all(|w| w[0] <= w[1] + 1e-12));
    }
}
