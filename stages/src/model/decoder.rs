//! The one decoder on candle's tensor ops: the reference forward (differentiable end to
//! end), the forward of any device and dtype (the GPU), and its KV-cached generation.
//! What a layer computes is [`super::config`]'s definition; the hand-written CPU
//! kernels in [`super::ops::decoder`] compute the same.
//!
//! candle's fused kernels (`softmax_last_dim`, `rms_norm`, `rope`, ...) have no
//! backward and `backward()` silently skips what lies upstream of them, so by default
//! this forward uses only plain tensor ops: RMSNorm as `x / sqrt(mean(x²) + eps) * w`,
//! softmax as `exp(x - max) / sum`, rotary embeddings as `x·cos + rotate_half(x)·sin`.
//! [`Decoder::inference`] switches RMSNorm and softmax to the fused kernels where no
//! gradient is taken.
//!
//! Batches are padded (left or right) and carry an attention bias that hides padded
//! keys and future positions; rotary positions count real tokens only, so a left-padded
//! sequence sees the same positions as an unpadded one. Sliding windows are masked by
//! position (a query at position `i` sees keys at positions `> i - window`).
//!
//! The forward is split into pieces so callers can do less work: [`Decoder::embed`],
//! [`Decoder::run_layers`] over any layer range (layer-prefix reuse: keep the hidden
//! states at the input of layer L and rerun only L..end), and
//! [`Decoder::answer_log_probs`], which applies the final norm and the LM head only at
//! the positions that score an answer token.

use super::config::{Activation, ModelConfig};
use super::names::{VectorKind, FINAL_NORM};
use super::weights::Weights;
use super::{MatrixId, MatrixKind, ModelError};
use candle_core::{DType, Device, IndexOp, Tensor, D};
use std::collections::BTreeMap;

type CResult<T> = candle_core::Result<T>;

/// The weights of one decoder layer; the optional ones per the config.
#[derive(Debug, Clone)]
pub struct Layer {
    pub attn_norm: Tensor,
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub o: Tensor,
    pub q_bias: Option<Tensor>,
    pub k_bias: Option<Tensor>,
    pub v_bias: Option<Tensor>,
    pub q_norm: Option<Tensor>,
    pub k_norm: Option<Tensor>,
    pub attn_post_norm: Option<Tensor>,
    pub ffn_norm: Tensor,
    pub gate: Tensor,
    pub up: Tensor,
    pub down: Tensor,
    pub ffn_post_norm: Option<Tensor>,
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

    /// A per-layer vector, when the layer has it.
    pub fn vector(&self, kind: VectorKind) -> Option<&Tensor> {
        match kind {
            VectorKind::AttnNorm => Some(&self.attn_norm),
            VectorKind::FfnNorm => Some(&self.ffn_norm),
            VectorKind::AttnPostNorm => self.attn_post_norm.as_ref(),
            VectorKind::FfnPostNorm => self.ffn_post_norm.as_ref(),
            VectorKind::QNorm => self.q_norm.as_ref(),
            VectorKind::KNorm => self.k_norm.as_ref(),
            VectorKind::QBias => self.q_bias.as_ref(),
            VectorKind::KBias => self.k_bias.as_ref(),
            VectorKind::VBias => self.v_bias.as_ref(),
        }
    }
}

/// A decoder ready to run. Cloning is cheap (tensors are shared).
#[derive(Debug, Clone)]
pub struct Decoder {
    pub config: ModelConfig,
    pub embed: Tensor,
    pub layers: Vec<Layer>,
    pub norm: Tensor,
    pub lm_head: Tensor,
    /// Fused RMSNorm and softmax kernels (no gradient through them).
    fused: bool,
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

    /// What attention needs for a forward over the whole batch (no cache).
    pub fn attend(&self) -> Attend {
        Attend {
            bias: self.bias.clone(),
            q_pos: self.positions.clone(),
            k_pos: self.positions.clone(),
        }
    }
}

/// The attention context of a forward: the additive bias (batch, 1, queries, keys) and
/// the rotary positions of the queries (batch, queries) and keys (batch, keys), from
/// which the rotary tables and the sliding-window masks are made.
#[derive(Debug, Clone)]
pub struct Attend {
    pub bias: Tensor,
    pub q_pos: Tensor,
    pub k_pos: Tensor,
}

/// One answer token to score: the logits at `flat_pos` predict `token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub flat_pos: usize,
    pub token: u32,
}

/// Keys and values of one layer, each (batch, kv_heads, time, head_dim), rotary applied
/// to the keys.
pub type LayerKv = (Tensor, Tensor);

/// The per-forward tables: for each rope of the config, cos and sin at the query
/// positions, (batch, 1, queries, head_dim); for each window in use, its full bias.
struct Tables {
    rope: Vec<(Tensor, Tensor)>,
    bias: BTreeMap<Option<usize>, Tensor>,
}

/// `t` in f32 when it is in half precision (bf16, f16); f32 and f64 as they are.
/// Bytes of f32 logits the LM head computes at a time (see
/// [`Decoder::answer_log_probs`]): well under glibc's 32 MiB mmap threshold, so the
/// buffers are reused from the heap, and enough rows for an efficient product.
pub const LOGITS_BLOCK_BYTES: usize = 8 << 20;

/// Positions per LM-head block for a vocabulary of `vocab` tokens (at least 1).
pub fn logits_block(vocab: usize) -> usize {
    (LOGITS_BLOCK_BYTES / vocab.max(1).saturating_mul(4)).max(1)
}

pub fn at_least_f32(t: Tensor) -> CResult<Tensor> {
    match t.dtype() {
        DType::F64 | DType::F32 => Ok(t),
        _ => t.to_dtype(DType::F32),
    }
}

impl Decoder {
    /// Builds the decoder from dense weights.
    pub fn new(weights: &Weights) -> Result<Decoder, ModelError> {
        Self::with_matrices(weights, &BTreeMap::new())
    }

    /// Builds the decoder with some matrices replaced (candidates, or gradient variables).
    pub fn with_matrices(
        weights: &Weights,
        replace: &BTreeMap<MatrixId, Tensor>,
    ) -> Result<Decoder, ModelError> {
        let c = weights.config.clone();
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let m = |kind| -> Result<Tensor, ModelError> {
                Ok(weights.matrix(MatrixId::new(l, kind))?.clone())
            };
            let v = |kind| -> Result<Option<Tensor>, ModelError> {
                Ok(weights.vector(l, kind)?.cloned())
            };
            let req = |kind: VectorKind| -> Result<Tensor, ModelError> {
                Ok(weights.get(&kind.name(l))?.clone())
            };
            let mut layer = Layer {
                attn_norm: req(VectorKind::AttnNorm)?,
                q: m(MatrixKind::Q)?,
                k: m(MatrixKind::K)?,
                v: m(MatrixKind::V)?,
                o: m(MatrixKind::O)?,
                q_bias: v(VectorKind::QBias)?,
                k_bias: v(VectorKind::KBias)?,
                v_bias: v(VectorKind::VBias)?,
                q_norm: v(VectorKind::QNorm)?,
                k_norm: v(VectorKind::KNorm)?,
                attn_post_norm: v(VectorKind::AttnPostNorm)?,
                ffn_norm: req(VectorKind::FfnNorm)?,
                gate: m(MatrixKind::Gate)?,
                up: m(MatrixKind::Up)?,
                down: m(MatrixKind::Down)?,
                ffn_post_norm: v(VectorKind::FfnPostNorm)?,
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
        Ok(Decoder {
            embed: weights.get(super::names::EMBED)?.clone(),
            lm_head: weights.lm_head()?.clone(),
            norm: weights.get(FINAL_NORM)?.clone(),
            config: c,
            layers,
            fused: false,
        })
    }

    /// The same decoder on candle's fused RMSNorm and softmax kernels: faster, with no
    /// gradient through them.
    pub fn inference(mut self) -> Decoder {
        self.fused = true;
        self
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.embed.device()
    }

    /// Embeddings of token ids (any shape), times the family's embedding scale, with
    /// a trailing hidden dimension.
    pub fn embed_ids(&self, ids: &Tensor) -> CResult<Tensor> {
        let mut shape = ids.dims().to_vec();
        shape.push(self.config.hidden_size);
        let e = self.embed.index_select(&ids.flatten_all()?, 0)?;
        let e = if self.config.embed_scale != 1.0 {
            (e * self.config.embed_scale)?
        } else {
            e
        };
        e.reshape(shape)
    }

    /// Token embeddings, (batch, time, hidden).
    pub fn embed(&self, batch: &Batch) -> CResult<Tensor> {
        self.embed_ids(&batch.ids)
    }

    /// Runs layers `range` on hidden states `h` (batch, time, hidden).
    pub fn run_layers(
        &self,
        h: &Tensor,
        range: std::ops::Range<usize>,
        batch: &Batch,
    ) -> CResult<Tensor> {
        let att = batch.attend();
        let tables = self.tables(&att, range.clone())?;
        let mut h = h.clone();
        for li in range {
            h = self.layer_forward(li, &h, &tables, None)?.0;
        }
        Ok(h)
    }

    /// Runs layers `range` on `h` (batch, queries, hidden) attending to `past` keys and
    /// values (one per layer of `range`, if given) and to themselves, under `att`.
    /// Returns the output and each layer's keys and values of past and new tokens.
    pub fn run_layers_cached(
        &self,
        h: &Tensor,
        range: std::ops::Range<usize>,
        att: &Attend,
        past: Option<&[LayerKv]>,
    ) -> CResult<(Tensor, Vec<LayerKv>)> {
        let tables = self.tables(att, range.clone())?;
        let mut h = h.clone();
        let mut kv = Vec::with_capacity(range.len());
        for (i, li) in range.enumerate() {
            let (out, new_kv) = self.layer_forward(li, &h, &tables, past.and_then(|p| p.get(i)))?;
            h = out;
            kv.push(new_kv);
        }
        Ok((h, kv))
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
        let rows = self.rms_norm(&rows, &self.norm)?;
        // A bf16 log-softmax loses the answer.
        let logits = at_least_f32(rows.matmul(&self.lm_head.t()?)?)?;
        candle_nn::ops::log_softmax(&logits, D::Minus1)
    }

    /// Log-probability of each target token, (n,).
    ///
    /// The positions go through the LM head and the log-softmax in blocks of
    /// [`LOGITS_BLOCK_BYTES`], not all at once: a batch of multiple-choice rows has
    /// thousands of answer positions, and (positions × vocabulary) logits plus the
    /// log-softmax's temporaries of that size are hundreds of MiB each, which glibc
    /// serves as fresh mappings (above its largest mmap threshold) that are faulted in
    /// and zeroed again for every batch (measured on LASER's logical-deduction search:
    /// 133 million minor page faults, system time 16% of user time).
    pub fn answer_log_probs(&self, h: &Tensor, targets: &[Target]) -> CResult<Tensor> {
        self.answer_log_probs_in_blocks(h, targets, logits_block(self.config.vocab_size))
    }

    /// [`Decoder::answer_log_probs`] with at most `block` positions per LM-head product,
    /// in blocks of equal size (so no block is a lone row when the whole is not).
    pub fn answer_log_probs_in_blocks(
        &self,
        h: &Tensor,
        targets: &[Target],
        block: usize,
    ) -> CResult<Tensor> {
        let n_blocks = targets.len().div_ceil(block.max(1)).max(1);
        let size = targets.len().div_ceil(n_blocks).max(1);
        let mut parts = Vec::with_capacity(n_blocks);
        for chunk in targets.chunks(size) {
            let pos: Vec<usize> = chunk.iter().map(|t| t.flat_pos).collect();
            let lp = self.log_probs_at(h, &pos)?;
            let tok: Vec<u32> = chunk.iter().map(|t| t.token).collect();
            let tok = Tensor::from_vec(tok, (chunk.len(), 1), h.device())?;
            parts.push(lp.gather(&tok, 1)?.squeeze(1)?);
        }
        match parts.len() {
            0 => {
                let dtype = if h.dtype() == DType::F64 {
                    DType::F64
                } else {
                    DType::F32
                };
                Tensor::zeros(0, dtype, h.device())
            }
            1 => Ok(parts.remove(0)),
            _ => Tensor::cat(&parts, 0),
        }
    }

    /// Full logits for every position, (batch, time, vocab). For tests and small inputs.
    pub fn logits(&self, batch: &Batch) -> CResult<Tensor> {
        let h = self.hidden(batch)?;
        let h = self.rms_norm(&h, &self.norm)?;
        h.broadcast_matmul(&self.lm_head.t()?)
    }

    /// cos and sin of rope `rope` at `positions` (batch, time) of u32, each
    /// (batch, 1, time, head_dim).
    pub fn rope_at(&self, rope: usize, positions: &Tensor) -> CResult<(Tensor, Tensor)> {
        let (b, t) = positions.dims2()?;
        let pos: Vec<u32> = positions.flatten_all()?.to_vec1()?;
        let n = pos.iter().max().map_or(1, |&p| p as usize + 1);
        let hd = self.config.head_dim;
        let (cos, sin) = self.config.ropes[rope].table(hd, n);
        let dtype = self.embed.dtype();
        let dev = positions.device();
        let take = |table: Vec<f64>| -> CResult<Tensor> {
            let table = Tensor::from_vec(table, (n, hd / 2), dev)?.to_dtype(dtype)?;
            let x = table
                .index_select(&positions.flatten_all()?, 0)?
                .reshape((b, 1, t, hd / 2))?;
            Tensor::cat(&[&x, &x], D::Minus1)
        };
        Ok((take(cos)?, take(sin)?))
    }

    /// The rotary tables and window biases the layers of `range` need under `att`.
    fn tables(&self, att: &Attend, range: std::ops::Range<usize>) -> CResult<Tables> {
        let mut rope: Vec<(Tensor, Tensor)> = Vec::with_capacity(self.config.ropes.len());
        let used: Vec<usize> = range.clone().map(|l| self.config.layers[l].rope).collect();
        for r in 0..self.config.ropes.len() {
            if used.contains(&r) {
                rope.push(self.rope_at(r, &att.q_pos)?);
            } else {
                // Never read: the layers of this range do not use this rope.
                let z = Tensor::zeros(1, self.embed.dtype(), self.embed.device())?;
                rope.push((z.clone(), z));
            }
        }
        let dtype = self.embed.dtype();
        let mut bias = BTreeMap::new();
        for l in range {
            let w = self.config.layers[l].window;
            if bias.contains_key(&w) {
                continue;
            }
            let b = match w {
                None => att.bias.to_dtype(dtype)?,
                Some(w) => {
                    // Keys at positions <= q - w are out of the window.
                    let q = att.q_pos.to_dtype(DType::F32)?.unsqueeze(2)?;
                    let k = att.k_pos.to_dtype(DType::F32)?.unsqueeze(1)?;
                    let far = q.broadcast_sub(&k)?.ge(w as f64)?;
                    let mask = far
                        .where_cond(
                            &Tensor::new(-1e9f32, att.bias.device())?.broadcast_as(far.shape())?,
                            &Tensor::new(0f32, att.bias.device())?.broadcast_as(far.shape())?,
                        )?
                        .unsqueeze(1)?;
                    (att.bias.to_dtype(DType::F32)? + mask)?.to_dtype(dtype)?
                }
            };
            bias.insert(w, b);
        }
        Ok(Tables { rope, bias })
    }

    fn rms_norm(&self, x: &Tensor, w: &Tensor) -> CResult<Tensor> {
        // candle's fused RMSNorm has no f64 kernel.
        if self.fused && x.dtype() != DType::F64 {
            candle_nn::ops::rms_norm(&x.contiguous()?, w, self.config.rms_norm_eps as f32)
        } else {
            rms_norm(x, w, self.config.rms_norm_eps)
        }
    }

    fn softmax(&self, x: &Tensor) -> CResult<Tensor> {
        if self.fused {
            candle_nn::ops::softmax_last_dim(x)
        } else {
            candle_nn::ops::softmax(x, D::Minus1)
        }
    }

    /// One decoder layer (the definition in [`super::config`]) on `h` (batch, t,
    /// hidden), attending to `past` keys and values and to itself. Returns the output
    /// and the keys and values of past and new tokens.
    fn layer_forward(
        &self,
        li: usize,
        h: &Tensor,
        tables: &Tables,
        past: Option<&LayerKv>,
    ) -> CResult<(Tensor, LayerKv)> {
        let c = &self.config;
        let l = &self.layers[li];
        let spec = c.layers[li];
        let (cos, sin) = &tables.rope[spec.rope];
        let bias = tables
            .bias
            .get(&spec.window)
            .ok_or_else(|| candle_core::Error::Msg("no bias for this layer's window".into()))?;
        let (b, t, d) = h.dims3()?;
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let rep = nh / nkv;
        let x = self.rms_norm(h, &l.attn_norm)?.reshape((b * t, d))?;
        let heads = |w: &Tensor, bias: &Option<Tensor>, norm: &Option<Tensor>, n: usize| {
            let mut y = x.matmul(&w.t()?)?;
            if let Some(bb) = bias {
                y = y.broadcast_add(bb)?;
            }
            let mut y = y.reshape((b, t, n, hd))?;
            if let Some(nw) = norm {
                y = self.rms_norm(&y, nw)?;
            }
            y.transpose(1, 2)?.contiguous()
        };
        let q = rope(&heads(&l.q, &l.q_bias, &l.q_norm, nh)?, cos, sin)?;
        let k = rope(&heads(&l.k, &l.k_bias, &l.k_norm, nkv)?, cos, sin)?.contiguous()?;
        let v = heads(&l.v, &l.v_bias, &None, nkv)?;
        let (k, v) = match past {
            Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
            None => (k, v),
        };
        let tk = k.dim(2)?;
        // Grouped-query attention without copying K and V: the `rep` query heads that
        // share a KV head are stacked along time.
        let q = q.reshape((b, nkv, rep * t, hd))?;
        let scores = (q.matmul(&k.t()?)? * c.attn_scale)?
            .reshape((b, nkv, rep, t, tk))?
            .broadcast_add(&bias.unsqueeze(1)?)?
            .reshape((b, nkv, rep * t, tk))?;
        let att = self.softmax(&scores)?;
        let y = att
            .matmul(&v)?
            .reshape((b, nh, t, hd))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b * t, nh * hd))?;
        let mut o = y.matmul(&l.o.t()?)?.reshape((b, t, d))?;
        if let Some(w) = &l.attn_post_norm {
            o = self.rms_norm(&o, w)?;
        }
        let h = (h + o)?;
        let x = self.rms_norm(&h, &l.ffn_norm)?.reshape((b * t, d))?;
        let g = x.matmul(&l.gate.t()?)?;
        let g = match c.activation {
            Activation::Silu => g.silu()?,
            Activation::GeluTanh => g.gelu()?,
        };
        let u = x.matmul(&l.up.t()?)?;
        let mut m = (g * u)?.matmul(&l.down.t()?)?.reshape((b, t, d))?;
        if let Some(w) = &l.ffn_post_norm {
            m = self.rms_norm(&m, w)?;
        }
        Ok(((h + m)?, (k, v)))
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

#[cfg(test)]
mod tests {
    //! Tiny random models against candle-transformers' own model of each family, on
    //! identical weights (written in the family's Hugging Face names and layout).
    use super::*;
    use crate::model::config::Family;
    use crate::model::tiny::tiny_weights;
    use candle_nn::VarBuilder;
    use std::collections::HashMap;

    fn var_builder(w: &Weights) -> VarBuilder<'static> {
        let mut t: HashMap<String, Tensor> =
            w.hf_tensors(DType::F32).unwrap().into_iter().collect();
        // Some references always read an LM head.
        t.entry("lm_head.weight".into())
            .or_insert_with(|| w.lm_head().unwrap().clone());
        VarBuilder::from_tensors(t, DType::F32, &Device::Cpu)
    }

    const IDS: [u32; 12] = [3, 17, 4, 9, 22, 1, 8, 5, 40, 41, 2, 30];

    /// Our log-softmax at the last position of every prefix of [`IDS`].
    fn ours(model: &Decoder) -> Vec<Vec<f32>> {
        let batch = Batch::new(&[IDS.to_vec()], Padding::Right, 0, &Device::Cpu).unwrap();
        let lp = candle_nn::ops::log_softmax(&model.logits(&batch).unwrap(), D::Minus1)
            .unwrap()
            .squeeze(0)
            .unwrap();
        (0..IDS.len()).map(|i| row(&lp, i).unwrap()).collect()
    }

    fn worst(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
        a.iter()
            .zip(b)
            .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
            .fold(0f32, f32::max)
    }

    /// The last-position log-softmax of a reference fed every prefix from scratch.
    fn per_prefix(mut forward: impl FnMut(&Tensor) -> Tensor) -> Vec<Vec<f32>> {
        (1..=IDS.len())
            .map(|n| {
                let x = Tensor::new(&IDS[..n], &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap();
                let logits = forward(&x).flatten_all().unwrap();
                candle_nn::ops::log_softmax(&logits, D::Minus1)
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn answer_log_probs_are_the_same_in_lm_head_blocks() {
        let w = tiny_weights(Family::Llama, DType::F32, 2);
        let model = Decoder::new(&w).unwrap();
        let batch = Batch::new(&[IDS.to_vec()], Padding::Right, 0, &Device::Cpu).unwrap();
        let h = model.hidden(&batch).unwrap();
        let targets: Vec<Target> = (0..IDS.len() - 1)
            .map(|i| Target {
                flat_pos: i,
                token: IDS[i + 1],
            })
            .collect();
        let whole: Vec<f32> = model
            .answer_log_probs_in_blocks(&h, &targets, usize::MAX)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(whole.len(), 11);
        // The product's kernel depends on its row count, so the last bits may differ
        // between block sizes (the evaluate stage's version says which); the same block
        // size gives the same bits.
        for block in [1, 2, 3, 5, 10, 11] {
            let got = |b| -> Vec<f32> {
                model
                    .answer_log_probs_in_blocks(&h, &targets, b)
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            };
            let d = got(block)
                .iter()
                .zip(&whole)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(d < 1e-5, "block {block}: {d}");
            assert_eq!(got(block), got(block), "block {block}");
        }
        // Against the full log-softmax.
        let full = candle_nn::ops::log_softmax(&model.logits(&batch).unwrap(), D::Minus1)
            .unwrap()
            .squeeze(0)
            .unwrap();
        for (i, t) in targets.iter().enumerate() {
            let want = row(&full, i).unwrap()[t.token as usize];
            assert!(
                (whole[i] - want).abs() < 1e-5,
                "{i}: {} vs {want}",
                whole[i]
            );
        }
        assert_eq!(
            model.answer_log_probs(&h, &[]).unwrap().dims(),
            &[0],
            "no targets, no log-probs"
        );
        assert_eq!(logits_block(49152), 42);
        assert_eq!(logits_block(usize::MAX), 1);
    }

    #[test]
    fn mistral_matches_candle_transformers_with_a_window_shorter_than_the_sequence() {
        use candle_transformers::models::mistral;
        let w = tiny_weights(Family::Mistral, DType::F32, 3);
        assert_eq!(w.config.layers[0].window, Some(3));
        // candle's mask keeps `window + 1` keys (j + window >= i), Hugging Face's
        // `window` (i - j < window): the same attention with candle's window one less.
        let cfg: mistral::Config = serde_json::from_value(serde_json::json!({
            "vocab_size": 50, "hidden_size": 32, "intermediate_size": 48,
            "num_hidden_layers": 3, "num_attention_heads": 4, "head_dim": 8,
            "num_key_value_heads": 2, "hidden_act": "silu", "max_position_embeddings": 64,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "sliding_window": 2,
        }))
        .unwrap();
        let mut reference = mistral::Model::new(&cfg, var_builder(&w)).unwrap();
        let want = per_prefix(|x| {
            reference.clear_kv_cache();
            reference.forward(x, 0).unwrap()
        });
        let got = ours(&Decoder::new(&w).unwrap());
        let d = worst(&got, &want);
        assert!(d < 1e-4, "max log-prob difference {d}");
        // And the window matters: without it the answers differ.
        let mut no_window = w.clone();
        no_window.config.layers = ModelConfig::uniform_layers(3, None);
        let d = worst(&ours(&Decoder::new(&no_window).unwrap()), &want);
        assert!(d > 1e-2, "the window changed nothing ({d})");
    }

    #[test]
    fn gemma3_matches_candle_transformers_with_local_and_global_layers() {
        use candle_transformers::models::gemma3;
        let mut w = tiny_weights(Family::Gemma3, DType::F32, 3);
        // candle's gemma3 scales scores by 1/√head_dim and has no rope scaling.
        w.config.attn_scale = 1.0 / 12f64.sqrt();
        w.config.ropes[0].linear_factor = 1.0;
        let cfg: gemma3::Config = serde_json::from_value(serde_json::json!({
            "attention_bias": false, "head_dim": 12, "hidden_activation": "gelu_pytorch_tanh",
            "hidden_size": 32, "intermediate_size": 48, "num_attention_heads": 4,
            "num_hidden_layers": 3, "num_key_value_heads": 1, "rms_norm_eps": 1e-5,
            "rope_theta": 1e6, "rope_local_base_freq": 100.0, "vocab_size": 50,
            "final_logit_softcapping": null, "attn_logit_softcapping": null,
            "query_pre_attn_scalar": 12, "sliding_window": 3, "sliding_window_pattern": 2,
            "max_position_embeddings": 64,
        }))
        .unwrap();
        let mut reference = gemma3::Model::new(false, &cfg, var_builder(&w)).unwrap();
        let want = per_prefix(|x| {
            reference.clear_kv_cache();
            reference.forward(x, 0).unwrap()
        });
        let d = worst(&ours(&Decoder::new(&w).unwrap()), &want);
        assert!(d < 1e-4, "max log-prob difference {d}");
    }

    #[test]
    fn qwen2_matches_candle_transformers() {
        use candle_transformers::models::qwen2;
        let w = tiny_weights(Family::Qwen2, DType::F32, 3);
        let cfg: qwen2::Config = serde_json::from_value(serde_json::json!({
            "vocab_size": 50, "hidden_size": 32, "intermediate_size": 48,
            "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 64, "sliding_window": 64, "max_window_layers": 3,
            "tie_word_embeddings": false, "rope_theta": 1e6, "rms_norm_eps": 1e-5,
            "use_sliding_window": false, "hidden_act": "silu",
        }))
        .unwrap();
        let mut reference = qwen2::Model::new(&cfg, var_builder(&w)).unwrap();
        let x = Tensor::new(&IDS, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let h = reference.forward(&x, 0, None).unwrap().squeeze(0).unwrap();
        let lp = candle_nn::ops::log_softmax(
            &h.matmul(&w.lm_head().unwrap().t().unwrap()).unwrap(),
            D::Minus1,
        )
        .unwrap();
        let want: Vec<Vec<f32>> = (0..IDS.len()).map(|i| row(&lp, i).unwrap()).collect();
        let d = worst(&ours(&Decoder::new(&w).unwrap()), &want);
        assert!(d < 1e-4, "max log-prob difference {d}");
    }
}
