//! Mistral: a llama with a sliding attention window on every layer (Hugging Face
//! `sliding_window`: a query sees itself and the `window - 1` tokens before it).

use super::llama;
use super::Hf;
use crate::model::config::{Family, ModelConfig};
use crate::model::ModelError;
use serde_json::{json, Value};

pub fn from_hf(hf: &Hf<'_>) -> Result<ModelConfig, ModelError> {
    let window = hf.opt_usize("sliding_window")?;
    llama::from_hf_as(hf, Family::Mistral, window)
}

pub fn hf_config(cfg: &ModelConfig) -> Value {
    let mut v = json!({
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        "hidden_act": "silu",
        "rope_theta": cfg.ropes[0].theta,
        "sliding_window": cfg.layers.first().and_then(|l| l.window),
    });
    if let Some(s) = llama::rope_scaling(&cfg.ropes[0]) {
        v["rope_scaling"] = s;
    }
    v
}
