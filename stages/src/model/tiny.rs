//! Tiny random-weight models of every family, for fast unit tests (never instead of the
//! real models, which the integration tests load).

use super::config::{Activation, Family, LayerSpec, ModelConfig, Rope};
use super::names::{VectorKind, EMBED, FINAL_NORM, LM_HEAD};
use super::ops::kernels::tests::rand_vec;
use super::weights::{expected_shapes, Weights};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The config of a tiny model of `family` with `layers` layers: each family's features
/// on (biases for qwen2; a window of 3 for mistral; for gemma3 a head size that is not
/// hidden/heads, q/k and post norms, tanh-GELU, a scaled embedding, an unusual
/// attention scale, and local layers with a window of 4 and their own rope between
/// global ones).
pub fn tiny_config(family: Family, layers: usize) -> ModelConfig {
    let mut c = ModelConfig {
        family,
        vocab_size: 50,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: layers,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 8,
        rms_norm_eps: 1e-5,
        activation: Activation::Silu,
        qkv_bias: false,
        qk_norm: false,
        post_norms: false,
        embed_scale: 1.0,
        attn_scale: 1.0 / 8f64.sqrt(),
        tie_word_embeddings: true,
        max_position_embeddings: 64,
        ropes: vec![Rope::plain(10000.0)],
        layers: ModelConfig::uniform_layers(layers, None),
    };
    match family {
        Family::Llama => {}
        Family::Mistral => c.layers = ModelConfig::uniform_layers(layers, Some(3)),
        Family::Qwen2 => {
            c.qkv_bias = true;
            c.tie_word_embeddings = false;
            c.ropes = vec![Rope::plain(1e6)];
        }
        Family::Gemma3 => {
            c.num_key_value_heads = 1;
            c.head_dim = 12;
            c.qk_norm = true;
            c.post_norms = true;
            c.activation = Activation::GeluTanh;
            c.embed_scale = (32f32).sqrt() as f64;
            c.attn_scale = 1.0 / 10f64.sqrt();
            c.ropes = vec![
                Rope {
                    linear_factor: 2.0,
                    ..Rope::plain(1e6)
                },
                Rope::plain(100.0),
            ];
            c.layers = (0..layers)
                .map(|l| {
                    if l % 2 == 1 {
                        LayerSpec {
                            rope: 0,
                            window: None,
                        }
                    } else {
                        LayerSpec {
                            rope: 1,
                            window: Some(4),
                        }
                    }
                })
                .collect();
        }
    }
    c
}

/// Random weights for [`tiny_config`] in `dtype`: matrices of a scale that keeps the
/// activations of order one, norm weights around 1.
pub fn tiny_weights(family: Family, dtype: DType, layers: usize) -> Weights {
    let c = tiny_config(family, layers);
    let mut tensors = BTreeMap::new();
    for (seed, (name, shape)) in expected_shapes(&c).into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let (sd, mean) = if name == EMBED || name == LM_HEAD {
            (1.0, 0.0)
        } else if name == FINAL_NORM
            || VectorKind::from_name(&name).is_some_and(|(_, k)| k.is_norm())
        {
            (0.2, 1.0)
        } else if VectorKind::from_name(&name).is_some() {
            (0.3, 0.0)
        } else {
            (0.9 / (shape[1] as f64).sqrt(), 0.0)
        };
        let v: Vec<f64> = rand_vec(n, 101 + seed as u64)
            .iter()
            .map(|x| mean + sd * x)
            .collect();
        let t = Tensor::from_vec(v, shape, &Device::Cpu)
            .and_then(|t| t.to_dtype(dtype))
            .expect("a tensor of random values");
        tensors.insert(name, t);
    }
    Weights {
        config: c,
        tensors,
        source: PathBuf::from(format!("tiny-{family}")),
    }
}
