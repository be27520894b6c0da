//! Names of the weight matrices the method works on, in Hugging Face's convention.

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
    }
}
