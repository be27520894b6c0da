//! Names of the tensors of the one decoder: the seven weight matrices the method works
//! on (Hugging Face's names, the same in every supported family), and the per-layer
//! vectors (norms and biases), whose canonical names say their role. Families name
//! norms differently (llama's `post_attention_layernorm` is the norm before the MLP,
//! gemma3's is the norm of the attention output), so [`super::family`] maps each file's
//! names to these and back.

use std::fmt;

/// One of the seven 2-D weight matrices of a llama-style decoder layer.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum MatrixKind {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl MatrixKind {
    pub const ALL: [MatrixKind; 7] = [
        MatrixKind::Q,
        MatrixKind::K,
        MatrixKind::V,
        MatrixKind::O,
        MatrixKind::Gate,
        MatrixKind::Up,
        MatrixKind::Down,
    ];
    pub const ATTN: [MatrixKind; 4] = [MatrixKind::Q, MatrixKind::K, MatrixKind::V, MatrixKind::O];
    pub const MLP: [MatrixKind; 3] = [MatrixKind::Gate, MatrixKind::Up, MatrixKind::Down];

    /// The short name used in pipelines and reports: `q`, `k`, `v`, `o`, `gate`, `up`, `down`.
    pub fn short(self) -> &'static str {
        match self {
            MatrixKind::Q => "q",
            MatrixKind::K => "k",
            MatrixKind::V => "v",
            MatrixKind::O => "o",
            MatrixKind::Gate => "gate",
            MatrixKind::Up => "up",
            MatrixKind::Down => "down",
        }
    }

    pub fn from_short(s: &str) -> Option<MatrixKind> {
        MatrixKind::ALL.into_iter().find(|k| k.short() == s)
    }

    /// The module path inside a Hugging Face llama layer, e.g. `self_attn.q_proj`.
    pub fn hf_module(self) -> &'static str {
        match self {
            MatrixKind::Q => "self_attn.q_proj",
            MatrixKind::K => "self_attn.k_proj",
            MatrixKind::V => "self_attn.v_proj",
            MatrixKind::O => "self_attn.o_proj",
            MatrixKind::Gate => "mlp.gate_proj",
            MatrixKind::Up => "mlp.up_proj",
            MatrixKind::Down => "mlp.down_proj",
        }
    }

    /// The tensor name inside a GGUF file's layer, e.g. `attn_q`.
    pub fn gguf_name(self) -> &'static str {
        match self {
            MatrixKind::Q => "attn_q",
            MatrixKind::K => "attn_k",
            MatrixKind::V => "attn_v",
            MatrixKind::O => "attn_output",
            MatrixKind::Gate => "ffn_gate",
            MatrixKind::Up => "ffn_up",
            MatrixKind::Down => "ffn_down",
        }
    }
}

/// A weight matrix of the model: layer index and kind. Orders by layer, then kind.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct MatrixId {
    pub layer: usize,
    pub kind: MatrixKind,
}

impl MatrixId {
    pub fn new(layer: usize, kind: MatrixKind) -> Self {
        MatrixId { layer, kind }
    }

    /// Hugging Face tensor name, e.g. `model.layers.7.mlp.down_proj.weight`.
    pub fn hf_name(&self) -> String {
        format!(
            "model.layers.{}.{}.weight",
            self.layer,
            self.kind.hf_module()
        )
    }

    /// Parses a Hugging Face tensor name back; `None` if it is not one of the seven matrices.
    pub fn from_hf_name(name: &str) -> Option<MatrixId> {
        let rest = name.strip_prefix("model.layers.")?;
        let (layer, rest) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let module = rest.strip_suffix(".weight")?;
        let kind = MatrixKind::ALL
            .into_iter()
            .find(|k| k.hf_module() == module)?;
        Some(MatrixId { layer, kind })
    }

    /// GGUF tensor name, e.g. `blk.7.ffn_down.weight`.
    pub fn gguf_name(&self) -> String {
        format!("blk.{}.{}.weight", self.layer, self.kind.gguf_name())
    }
}

/// A per-layer vector of the decoder: a norm weight or a projection bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum VectorKind {
    /// RMSNorm before attention (every family).
    AttnNorm,
    /// RMSNorm of the attention output (gemma3).
    AttnPostNorm,
    /// RMSNorm before the MLP (every family).
    FfnNorm,
    /// RMSNorm of the MLP output (gemma3).
    FfnPostNorm,
    /// Per-head RMSNorm of queries and keys (gemma3).
    QNorm,
    KNorm,
    /// Projection biases (qwen2).
    QBias,
    KBias,
    VBias,
}

impl VectorKind {
    pub const ALL: [VectorKind; 9] = [
        VectorKind::AttnNorm,
        VectorKind::AttnPostNorm,
        VectorKind::FfnNorm,
        VectorKind::FfnPostNorm,
        VectorKind::QNorm,
        VectorKind::KNorm,
        VectorKind::QBias,
        VectorKind::KBias,
        VectorKind::VBias,
    ];

    /// The canonical module path inside a layer.
    pub fn canonical(self) -> &'static str {
        match self {
            VectorKind::AttnNorm => "attn_norm.weight",
            VectorKind::AttnPostNorm => "attn_post_norm.weight",
            VectorKind::FfnNorm => "ffn_norm.weight",
            VectorKind::FfnPostNorm => "ffn_post_norm.weight",
            VectorKind::QNorm => "self_attn.q_norm.weight",
            VectorKind::KNorm => "self_attn.k_norm.weight",
            VectorKind::QBias => "self_attn.q_proj.bias",
            VectorKind::KBias => "self_attn.k_proj.bias",
            VectorKind::VBias => "self_attn.v_proj.bias",
        }
    }

    /// Whether this is a norm weight (as opposed to a bias).
    pub fn is_norm(self) -> bool {
        !matches!(
            self,
            VectorKind::QBias | VectorKind::KBias | VectorKind::VBias
        )
    }

    /// The canonical tensor name of this vector in layer `layer`.
    pub fn name(self, layer: usize) -> String {
        format!("model.layers.{layer}.{}", self.canonical())
    }

    /// Parses a canonical tensor name back into (layer, kind).
    pub fn from_name(name: &str) -> Option<(usize, VectorKind)> {
        let rest = name.strip_prefix("model.layers.")?;
        let (layer, rest) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let kind = VectorKind::ALL
            .into_iter()
            .find(|k| k.canonical() == rest)?;
        Some((layer, kind))
    }
}

/// The canonical names of the tensors outside the layers.
pub const EMBED: &str = "model.embed_tokens.weight";
pub const FINAL_NORM: &str = "model.norm.weight";
pub const LM_HEAD: &str = "lm_head.weight";

impl fmt::Display for MatrixId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "L{}.{}", self.layer, self.kind.short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_names_round_trip() {
        for layer in [0, 7, 29] {
            for kind in MatrixKind::ALL {
                let id = MatrixId::new(layer, kind);
                assert_eq!(MatrixId::from_hf_name(&id.hf_name()), Some(id));
            }
        }
        assert_eq!(
            MatrixId::new(7, MatrixKind::Down).hf_name(),
            "model.layers.7.mlp.down_proj.weight"
        );
        assert_eq!(MatrixId::from_hf_name("model.embed_tokens.weight"), None);
        assert_eq!(
            MatrixId::from_hf_name("model.layers.x.mlp.up_proj.weight"),
            None
        );
        for kind in VectorKind::ALL {
            assert_eq!(VectorKind::from_name(&kind.name(3)), Some((3, kind)));
            assert_eq!(MatrixId::from_hf_name(&kind.name(3)), None);
        }
    }
}
