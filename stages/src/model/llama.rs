//! A llama-architecture decoder whose forward is differentiable end to end.
//!
//! candle's fused kernels (`softmax_last_dim`, `rms_norm`, `rope`, ...) have no
//! backward and `backward()` silently skips what lies upstream of them, so this forward
//! uses only plain tensor ops: RMSNorm as `x / sqrt(mean(x²) + eps) * w`, softmax as
//! `exp(x - max) / sum`, rotary embeddings as `x·cos + rotate_half(x)·sin`, no KV cache.
//!
//! Batches are padded (left or right) and carry an attention bias that hides padded
//! keys and future positions; rotary positions count real tokens only, so a left-padded
//! sequence sees the same positions as an unpadded one.
//!
//! The forward is split into pieces so callers can do less work: [`Llama::embed`],
//! [`Llama::run_layers`] over any layer range (layer-prefix reuse: keep the hidden
//! states at the input of layer L and rerun only L..end), and
//! [`Llama::answer_log_probs`], which applies the final norm and the LM head only at
//! the positions that score an answer token.

use super::config::LlamaConfig;
use super::weights::Weights;
use super::{MatrixId, MatrixKind, ModelError};
use candle_core::{DType, Device, IndexOp, Tensor, D};
use std::collections::BTreeMap;

type CResult<T> = candle_core::Result<T>;

/// The weights of one decoder layer.
#[derive(Debug, Clone)]
pub struct Layer {
    pub input_norm: Tensor,
    pub post_norm: Tensor,
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub o: Tensor,
    pub gate: Tensor,
    pub up: Tensor,
    pub down: Tensor,
}

impl Layer {
    pub fn matrix(&self, kind: MatrixKind) -> &Tensor {
        match kind {
            MatrixKind::Q => &self.q,
            MatrixKind::K => &self.k,
            MatrixKind::V => &self.v,
            MatrixKind::O => &self.o,
            MatrixKind::Gate => &self.gate,
            MatrixKind::Up => &self.up,
            MatrixKind::Down => &self.down,
        }
    }

    fn matrix_mut(&mut self, kind: MatrixKind) -> &mut Tensor {
        match kind {
            MatrixKind::Q => &mut self.q,
            MatrixKind::K => &mut self.k,
            MatrixKind::V => &mut self.v,
            MatrixKind::O => &mut self.o,
            MatrixKind::Gate => &mut self.gate,
            MatrixKind::Up => &mut self.up,
            MatrixKind::Down => &mut self.down,
        }
    }
}

/// A llama model ready to run. Cloning is cheap (tensors are shared).
#[derive(Debug, Clone)]
pub struct Llama {
    pub config: LlamaConfig,
    pub embed: Tensor,
    pub layers: Vec<Layer>,
    pub norm: Tensor,
    pub lm_head: Tensor,
    cos: Tensor,
    sin: Tensor,
}

/// Padding side of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// Real tokens first, padding after (natural for scoring answers).
    Right,
    /// Padding first, real tokens last (natural for batched generation).
    Left,
}

/// A padded batch of token sequences and what the forward needs to honour the padding.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Token ids, (batch, time), u32.
    pub ids: Tensor,
    /// Rotary position of each slot, (batch, time), u32: 0 at each sequence's first real token.
    pub positions: Tensor,
    /// Additive attention bias, (batch, 1, time, time): 0 where allowed, -1e9 elsewhere.
    pub bias: Tensor,
    /// Index of each sequence's first real token in its padded row.
    pub offsets: Vec<usize>,
    /// Real length of each sequence.
    pub lens: Vec<usize>,
    pub time: usize,
}

impl Batch {
    /// Pads `seqs` to a common length. Empty sequences are refused.
    pub fn new(
        seqs: &[Vec<u32>],
        padding: Padding,
        pad_id: u32,
        dev: &Device,
    ) -> Result<Batch, ModelError> {
        if seqs.is_empty() || seqs.iter().any(|s| s.is_empty()) {
            return Err(ModelError::Input(
                "a batch needs at least one non-empty sequence".into(),
            ));
        }
        let b = seqs.len();
        let t = seqs.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = vec![pad_id; b * t];
        let mut pos = vec![0u32; b * t];
        let mut bias = vec![-1e9f32; b * t * t];
        let mut offsets = Vec::with_capacity(b);
        for (r, s) in seqs.iter().enumerate() {
            let off = match padding {
                Padding::Right => 0,
                Padding::Left => t - s.len(),
            };
            offsets.push(off);
            for (i, &tok) in s.iter().enumerate() {
                ids[r * t + off + i] = tok;
                pos[r * t + off + i] = i as u32;
            }
            for qi in 0..t {
                let row = &mut bias[(r * t + qi) * t..(r * t + qi + 1) * t];
                let q_real = qi >= off && qi < off + s.len();
                for (kj, slot) in row.iter_mut().enumerate() {
                    let k_real = kj >= off && kj < off + s.len();
                    // Padded queries attend to themselves only, which keeps them finite.
                    if (q_real && k_real && kj <= qi) || (!q_real && kj == qi) {
                        *slot = 0.0;
                    }
                }
            }
        }
        let ids = Tensor::from_vec(ids, (b, t), dev)?;
        let positions = Tensor::from_vec(pos, (b, t), dev)?;
        let bias = Tensor::from_vec(bias, (b, 1, t, t), dev)?;
        Ok(Batch {
            ids,
            positions,
            bias,
            offsets,
            lens: seqs.iter().map(Vec::len).collect(),
            time: t,
        })
    }

    pub fn size(&self) -> usize {
        self.lens.len()
    }

    /// Flat index into (batch·time) of token `i` of sequence `row`.
    pub fn flat_index(&self, row: usize, i: usize) -> usize {
        row * self.time + self.offsets[row] + i
    }
}

/// One answer token to score: the logits at `flat_pos` predict `token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub flat_pos: usize,
    pub token: u32,
}

impl Llama {
    /// Builds the model from dense weights.
    pub fn new(weights: &Weights) -> Result<Llama, ModelError> {
        Self::with_matrices(weights, &BTreeMap::new())
    }

    /// Builds the model with some matrices replaced (candidates, or gradient variables).
    pub fn with_matrices(
        weights: &Weights,
        replace: &BTreeMap<MatrixId, Tensor>,
    ) -> Result<Llama, ModelError> {
        let c = weights.config.clone();
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let g = |n: &str| {
                weights
                    .get(&format!("model.layers.{l}.{n}.weight"))
                    .cloned()
            };
            let mut layer = Layer {
                input_norm: g("input_layernorm")?,
                post_norm: g("post_attention_layernorm")?,
                q: weights.matrix(MatrixId::new(l, MatrixKind::Q))?.clone(),
                k: weights.matrix(MatrixId::new(l, MatrixKind::K))?.clone(),
                v: weights.matrix(MatrixId::new(l, MatrixKind::V))?.clone(),
                o: weights.matrix(MatrixId::new(l, MatrixKind::O))?.clone(),
                gate: weights.matrix(MatrixId::new(l, MatrixKind::Gate))?.clone(),
                up: weights.matrix(MatrixId::new(l, MatrixKind::Up))?.clone(),
                down: weights.matrix(MatrixId::new(l, MatrixKind::Down))?.clone(),
            };
            for kind in MatrixKind::ALL {
                if let Some(t) = replace.get(&MatrixId::new(l, kind)) {
                    if t.dims() != layer.matrix(kind).dims() {
                        return Err(ModelError::Shape {
                            path: weights.source.clone(),
                            name: MatrixId::new(l, kind).hf_name(),
                            expected: layer.matrix(kind).dims().to_vec(),
                            found: t.dims().to_vec(),
                        });
                    }
                    *layer.matrix_mut(kind) = t.clone();
                }
            }
            layers.push(layer);
        }
        let embed = weights.get("model.embed_tokens.weight")?.clone();
        let lm_head = if c.tie_word_embeddings {
            embed.clone()
        } else {
            weights.get("lm_head.weight")?.clone()
        };
        let (cos, sin) = rope_tables(&c, embed.device(), embed.dtype())?;
        Ok(Llama {
            norm: weights.get("model.norm.weight")?.clone(),
            config: c,
            embed,
            layers,
            lm_head,
            cos,
            sin,
        })
    }

    /// Token embeddings, (batch, time, hidden).
    pub fn embed(&self, batch: &Batch) -> CResult<Tensor> {
        let (b, t) = batch.ids.dims2()?;
        self.embed
            .index_select(&batch.ids.flatten_all()?, 0)?
            .reshape((b, t, self.config.hidden_size))
    }

    /// Runs layers `range` on hidden states `h` (batch, time, hidden).
    pub fn run_layers(
        &self,
        h: &Tensor,
        range: std::ops::Range<usize>,
        batch: &Batch,
    ) -> CResult<Tensor> {
        let (cos, sin) = self.rope_for(batch)?;
        let mut h = h.clone();
        for layer in &self.layers[range] {
            h = self.layer_forward(layer, &h, &cos, &sin, &batch.bias)?;
        }
        Ok(h)
    }

    /// Hidden states after the last layer (before the final norm).
    pub fn hidden(&self, batch: &Batch) -> CResult<Tensor> {
        let h = self.embed(batch)?;
        self.run_layers(&h, 0..self.layers.len(), batch)
    }

    /// Log-softmax over the vocabulary at the given flat positions of `h`
    /// (batch, time, hidden), after the final norm: (n, vocab).
    pub fn log_probs_at(&self, h: &Tensor, flat_pos: &[usize]) -> CResult<Tensor> {
        let (b, t, d) = h.dims3()?;
        let idx: Vec<u32> = flat_pos.iter().map(|&p| p as u32).collect();
        let idx = Tensor::from_vec(idx, flat_pos.len(), h.device())?;
        let rows = h.reshape((b * t, d))?.index_select(&idx, 0)?;
        let rows = rms_norm(&rows, &self.norm, self.config.rms_norm_eps)?;
        let logits = rows.matmul(&self.lm_head.t()?)?;
        candle_nn::ops::log_softmax(&logits, D::Minus1)
    }

    /// Log-probability of each target token, (n,).
    pub fn answer_log_probs(&self, h: &Tensor, targets: &[Target]) -> CResult<Tensor> {
        let pos: Vec<usize> = targets.iter().map(|t| t.flat_pos).collect();
        let lp = self.log_probs_at(h, &pos)?;
        let tok: Vec<u32> = targets.iter().map(|t| t.token).collect();
        let tok = Tensor::from_vec(tok, (targets.len(), 1), h.device())?;
        lp.gather(&tok, 1)?.squeeze(1)
    }

    /// Full logits for every position, (batch, time, vocab). For tests and small inputs.
    pub fn logits(&self, batch: &Batch) -> CResult<Tensor> {
        let h = self.hidden(batch)?;
        let h = rms_norm(&h, &self.norm, self.config.rms_norm_eps)?;
        h.broadcast_matmul(&self.lm_head.t()?)
    }

    /// cos and sin for the rotary embedding of a batch, each (batch, 1, time, head_dim).
    pub fn rope_for(&self, batch: &Batch) -> CResult<(Tensor, Tensor)> {
        self.rope_at(&batch.positions)
    }

    /// cos and sin at arbitrary positions (batch, time) of u32, each
    /// (batch, 1, time, head_dim): for callers that run the layers themselves (KV-cached
    /// generation, tree-shaped batches).
    pub fn rope_at(&self, positions: &Tensor) -> CResult<(Tensor, Tensor)> {
        let (b, t) = positions.dims2()?;
        let flat = positions.flatten_all()?;
        let half = self.config.head_dim() / 2;
        let take = |table: &Tensor| -> CResult<Tensor> {
            let x = table.index_select(&flat, 0)?.reshape((b, 1, t, half))?;
            Tensor::cat(&[&x, &x], D::Minus1)
        };
        Ok((take(&self.cos)?, take(&self.sin)?))
    }

    fn layer_forward(
        &self,
        l: &Layer,
        h: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        bias: &Tensor,
    ) -> CResult<Tensor> {
        let c = &self.config;
        let (b, t, d) = h.dims3()?;
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim());
        let rep = nh / nkv;
        let x = rms_norm(h, &l.input_norm, c.rms_norm_eps)?.reshape((b * t, d))?;
        let heads = |w: &Tensor, n: usize| -> CResult<Tensor> {
            x.matmul(&w.t()?)?
                .reshape((b, t, n, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = rope(&heads(&l.q, nh)?, cos, sin)?;
        let k = rope(&heads(&l.k, nkv)?, cos, sin)?;
        let v = heads(&l.v, nkv)?;
        // Grouped-query attention without copying K and V: the `rep` query heads that
        // share a KV head are stacked along time.
        let q = q.reshape((b, nkv, rep * t, hd))?;
        let scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?;
        let scores = scores
            .reshape((b, nkv, rep, t, t))?
            .broadcast_add(&bias.to_dtype(h.dtype())?.unsqueeze(1)?)?
            .reshape((b, nkv, rep * t, t))?;
        let att = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let y = att
            .matmul(&v)?
            .reshape((b, nh, t, hd))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b * t, nh * hd))?;
        let y = y.matmul(&l.o.t()?)?.reshape((b, t, d))?;
        let h = (h + y)?;
        let x = rms_norm(&h, &l.post_norm, c.rms_norm_eps)?.reshape((b * t, d))?;
        let gate = x.matmul(&l.gate.t()?)?.silu()?;
        let up = x.matmul(&l.up.t()?)?;
        let m = (gate * up)?.matmul(&l.down.t()?)?.reshape((b, t, d))?;
        h + m
    }
}

/// RMSNorm with plain ops (differentiable): x / sqrt(mean(x²) + eps) * w.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> CResult<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (ms + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&inv)?.broadcast_mul(w)
}

/// Half-split rotary embedding (Hugging Face layout), x: (batch, heads, time, head_dim).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> CResult<Tensor> {
    let hd = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, hd / 2)?;
    let x2 = x.narrow(D::Minus1, hd / 2, hd / 2)?;
    let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)? + rot.broadcast_mul(sin)?
}

/// cos and sin of position · inv_freq, (max_positions, head_dim/2), computed in f64.
fn rope_tables(c: &LlamaConfig, dev: &Device, dtype: DType) -> CResult<(Tensor, Tensor)> {
    let half = c.head_dim() / 2;
    let n = c.max_position_embeddings.max(1);
    let mut cos = Vec::with_capacity(n * half);
    let mut sin = Vec::with_capacity(n * half);
    for p in 0..n {
        for i in 0..half {
            let inv = 1.0 / c.rope_theta.powf((2 * i) as f64 / c.head_dim() as f64);
            let a = p as f64 * inv;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    Ok((
        Tensor::from_vec(cos, (n, half), dev)?.to_dtype(dtype)?,
        Tensor::from_vec(sin, (n, half), dev)?.to_dtype(dtype)?,
    ))
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> CResult<f32> {
    (a - b)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()
}

/// Row `i` of a 2-D tensor as a Vec.
pub fn row(t: &Tensor, i: usize) -> CResult<Vec<f32>> {
    t.i(i)?.to_vec1()
}
