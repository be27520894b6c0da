//! Greedy generation with a KV cache, and the teacher-forced log-probability of the
//! gold continuation in the same forward.
//!
//! # Layout
//!
//! A batch of (prompt, continuation) pairs is laid out so that every prompt ends in the
//! same column `P` (the longest prompt's length): prompts are padded on the left,
//! continuations (the tokens of `" " + target`, possibly none) follow from column `P`
//! and are padded on the right ([`aligned_batch`]). Rotary positions count real tokens
//! only, so a padded row computes what its unpadded sequence would. One forward over
//! this batch gives
//!
//! - the log-probability of each continuation token (read at the slot before it),
//! - the logits at column `P - 1`, whose argmax is the first generated token,
//! - every layer's keys and values, of which columns `0..P` (the prompts) are the
//!   KV cache for decoding; the continuation columns are dropped.
//!
//! # Decoding
//!
//! Each step feeds every row's last token at column `P + s` (position
//! `prompt_len + s`), appends its keys and values to the cache, and takes the argmax
//! of the logits (ties to the lower token id). A row stops when it produces the
//! end-of-sequence token (not part of the continuation) or has `max_new_tokens`
//! tokens; finished rows leave the batch (and their cache), and decoding ends when
//! every row has finished.
//!
//! The layers are re-implemented here (the model's own layer forward keeps no cache)
//! from its public weights with [`rms_norm`](candle_nn::ops::rms_norm) and
//! [`softmax_last_dim`](candle_nn::ops::softmax_last_dim), candle's fused inference
//! kernels, plus the model's [`rope`] and [`Llama::rope_at`]. The final norm and the
//! LM head are the model's [`Llama::log_probs_at`].
//! [`greedy_generate_uncached`] is the reference without a cache (one full forward
//! per new token through [`Llama::hidden`]).

use super::evaluator::{argmax_first, EvalError, EvalSet, SampleAnswer};
use super::prefix::Start;
use crate::model::llama::{rope, Layer};
use crate::model::{Batch, Llama, ModelError, Padding};
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

type CResult<T> = candle_core::Result<T>;

/// Keys and values of one layer, each (batch, kv_heads, time, head_dim), rotary applied
/// to the keys.
pub type LayerKv = (Tensor, Tensor);

/// A greedy continuation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// Generated tokens, the end-of-sequence token excluded.
    pub tokens: Vec<u32>,
    /// Whether generation stopped at the end-of-sequence token.
    pub stopped_at_eos: bool,
}

/// A generation and the teacher-forced log-probability of the gold continuation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GenOutput {
    pub tokens: Vec<u32>,
    pub stopped_at_eos: bool,
    pub target_log_prob: f64,
}

/// The end-of-sequence token id of a GGUF model (`tokenizer.ggml.eos_token_id`),
/// `None` when the file does not name one. Reads the header only.
pub fn eos_token_id(gguf: &Path) -> Result<Option<u32>, EvalError> {
    let io = |source| ModelError::Io {
        path: gguf.to_owned(),
        source,
    };
    let mut f = std::fs::File::open(gguf).map_err(io)?;
    let ct = crate::model::gguf::read_content(&mut f, gguf)?;
    Ok(match ct.metadata.get("tokenizer.ggml.eos_token_id") {
        Some(gguf_file::Value::U32(v)) => Some(*v),
        Some(gguf_file::Value::I32(v)) => u32::try_from(*v).ok(),
        Some(gguf_file::Value::U64(v)) => u32::try_from(*v).ok(),
        Some(gguf_file::Value::I64(v)) => u32::try_from(*v).ok(),
        _ => None,
    })
}

/// A prompt-aligned batch (see the module docs).
#[derive(Debug, Clone)]
pub struct AlignedBatch {
    pub batch: Batch,
    /// `P`: the column after every prompt's last token.
    pub prompt_cols: usize,
    pub prompt_lens: Vec<usize>,
    pub cont_lens: Vec<usize>,
}

/// Lays out `rows` = (prompt, continuation) with every prompt ending at column `P`.
/// Prompts need at least one token; continuations may be empty.
pub fn aligned_batch(rows: &[(&[u32], &[u32])], dev: &Device) -> Result<AlignedBatch, EvalError> {
    if rows.is_empty() {
        return Err(EvalError::Empty);
    }
    if let Some(r) = rows.iter().position(|(p, _)| p.is_empty()) {
        return Err(ModelError::Input(format!("row {r}: the prompt has no tokens")).into());
    }
    let b = rows.len();
    let p_cols = rows.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
    let c_cols = rows.iter().map(|(_, c)| c.len()).max().unwrap_or(0);
    let t = p_cols + c_cols;
    let mut ids = vec![0u32; b * t];
    let mut pos = vec![0u32; b * t];
    let mut bias = vec![-1e9f32; b * t * t];
    let mut offsets = Vec::with_capacity(b);
    let mut lens = Vec::with_capacity(b);
    for (r, (p, c)) in rows.iter().enumerate() {
        let off = p_cols - p.len();
        let len = p.len() + c.len();
        for (i, &tok) in p.iter().chain(c.iter()).enumerate() {
            ids[r * t + off + i] = tok;
            pos[r * t + off + i] = i as u32;
        }
        for q in 0..t {
            let row = &mut bias[(r * t + q) * t..(r * t + q + 1) * t];
            if q >= off && q < off + len {
                row[off..=q].fill(0.0);
            } else {
                row[q] = 0.0;
            }
        }
        offsets.push(off);
        lens.push(len);
    }
    Ok(AlignedBatch {
        batch: Batch {
            ids: Tensor::from_vec(ids, (b, t), dev)?,
            positions: Tensor::from_vec(pos, (b, t), dev)?,
            bias: Tensor::from_vec(bias, (b, 1, t, t), dev)?,
            offsets,
            lens,
            time: t,
        },
        prompt_cols: p_cols,
        prompt_lens: rows.iter().map(|(p, _)| p.len()).collect(),
        cont_lens: rows.iter().map(|(_, c)| c.len()).collect(),
    })
}

/// One decoder layer on new tokens `h` (batch, t, hidden) attending to `past` keys and
/// values (if any) and to themselves under `bias` (batch, 1, t, past + t). Returns the
/// output and the keys and values of past and new tokens.
fn layer_step(
    model: &Llama,
    l: &Layer,
    h: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    bias: &Tensor,
    past: Option<&LayerKv>,
) -> CResult<(Tensor, LayerKv)> {
    let c = &model.config;
    let eps = c.rms_norm_eps as f32;
    let (b, t, d) = h.dims3()?;
    let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim());
    let rep = nh / nkv;
    let x = candle_nn::ops::rms_norm(&h.contiguous()?, &l.input_norm, eps)?.reshape((b * t, d))?;
    let heads = |w: &Tensor, n: usize| -> CResult<Tensor> {
        x.matmul(&w.t()?)?
            .reshape((b, t, n, hd))?
            .transpose(1, 2)?
            .contiguous()
    };
    let q = rope(&heads(&l.q, nh)?, cos, sin)?;
    let k = rope(&heads(&l.k, nkv)?, cos, sin)?.contiguous()?;
    let v = heads(&l.v, nkv)?;
    let (k, v) = match past {
        Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
        None => (k, v),
    };
    let tk = k.dim(2)?;
    // The `rep` query heads sharing a KV head are stacked along time.
    let q = q.contiguous()?.reshape((b, nkv, rep * t, hd))?;
    let scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?
        .reshape((b, nkv, rep, t, tk))?
        .broadcast_add(&bias.to_dtype(h.dtype())?.unsqueeze(1)?)?
        .reshape((b, nkv, rep * t, tk))?;
    let att = candle_nn::ops::softmax_last_dim(&scores)?;
    let y = att
        .matmul(&v)?
        .reshape((b, nh, t, hd))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b * t, nh * hd))?;
    let h = (h + y.matmul(&l.o.t()?)?.reshape((b, t, d))?)?;
    let x = candle_nn::ops::rms_norm(&h, &l.post_norm, eps)?.reshape((b * t, d))?;
    let gate = x.matmul(&l.gate.t()?)?.silu()?;
    let up = x.matmul(&l.up.t()?)?;
    let m = (gate * up)?.matmul(&l.down.t()?)?.reshape((b, t, d))?;
    Ok(((h + m)?, (k, v)))
}

/// Runs layers `range` over a whole batch, keeping each layer's keys and values for
/// columns `0..keep_cols`, and the hidden states at the input of each layer in
/// `snapshot` (`range.end` included: the output).
pub(crate) fn run_layers_kv(
    model: &Llama,
    h: &Tensor,
    range: Range<usize>,
    batch: &Batch,
    keep_cols: usize,
    snapshot: &[usize],
) -> CResult<(Tensor, Vec<LayerKv>, BTreeMap<usize, Tensor>)> {
    let (cos, sin) = model.rope_at(&batch.positions)?;
    let mut h = h.clone();
    let mut kv = Vec::with_capacity(range.len());
    let mut snaps = BTreeMap::new();
    for li in range.clone() {
        if snapshot.contains(&li) {
            snaps.insert(li, h.clone());
        }
        let (out, (k, v)) =
            layer_step(model, &model.layers[li], &h, &cos, &sin, &batch.bias, None)?;
        h = out;
        kv.push((
            k.narrow(2, 0, keep_cols)?.contiguous()?,
            v.narrow(2, 0, keep_cols)?.contiguous()?,
        ));
    }
    if snapshot.contains(&range.end) {
        snaps.insert(range.end, h.clone());
    }
    Ok((h, kv, snaps))
}

/// Greedy decoding from a prompt KV cache (see the module docs). `first[r]` is the
/// token chosen from the prompt's last logits.
fn decode(
    model: &Llama,
    mut kv: Vec<LayerKv>,
    ab: &AlignedBatch,
    first: Vec<u32>,
    max_new: &[usize],
    eos: Option<u32>,
) -> CResult<Vec<Generation>> {
    let dev = model.embed.device();
    let b = first.len();
    let d = model.config.hidden_size;
    let p_cols = ab.prompt_cols;
    let mut out: Vec<Generation> = (0..b)
        .map(|_| Generation {
            tokens: Vec::new(),
            stopped_at_eos: false,
        })
        .collect();
    let mut active: Vec<bool> = max_new.iter().map(|&m| m > 0).collect();
    let accept = |r: usize, tok: u32, out: &mut [Generation], active: &mut [bool]| {
        if !active[r] {
            return;
        }
        if Some(tok) == eos {
            out[r].stopped_at_eos = true;
            active[r] = false;
        } else {
            out[r].tokens.push(tok);
            if out[r].tokens.len() >= max_new[r] {
                active[r] = false;
            }
        }
    };
    for (r, &tok) in first.iter().enumerate() {
        accept(r, tok, &mut out, &mut active);
    }
    // Rows still generating, as indices of the original batch; finished rows are
    // dropped from the cache so that they cost nothing.
    let mut last = first;
    let mut live: Vec<usize> = (0..b).collect();
    let mut s = 0usize;
    loop {
        let keep: Vec<u32> = (0..live.len())
            .filter(|&i| active[live[i]])
            .map(|i| i as u32)
            .collect();
        if keep.is_empty() {
            break;
        }
        if keep.len() < live.len() {
            let idx = Tensor::from_vec(keep.clone(), keep.len(), dev)?;
            for (k, v) in kv.iter_mut() {
                *k = k.index_select(&idx, 0)?;
                *v = v.index_select(&idx, 0)?;
            }
            live = keep.iter().map(|&i| live[i as usize]).collect();
        }
        let nb = live.len();
        let total = p_cols + s + 1;
        let ids: Vec<u32> = live.iter().map(|&r| last[r]).collect();
        let ids = Tensor::from_vec(ids, nb, dev)?;
        let pos: Vec<u32> = live
            .iter()
            .map(|&r| (ab.prompt_lens[r] + s) as u32)
            .collect();
        let pos = Tensor::from_vec(pos, (nb, 1), dev)?;
        let mut bias = vec![-1e9f32; nb * total];
        for (i, &r) in live.iter().enumerate() {
            bias[i * total + p_cols - ab.prompt_lens[r]..(i + 1) * total].fill(0.0);
        }
        let bias = Tensor::from_vec(bias, (nb, 1, 1, total), dev)?;
        let mut h = model.embed.index_select(&ids, 0)?.reshape((nb, 1, d))?;
        let (cos, sin) = model.rope_at(&pos)?;
        for (li, layer) in model.layers.iter().enumerate() {
            let (o, new_kv) = layer_step(model, layer, &h, &cos, &sin, &bias, Some(&kv[li]))?;
            h = o;
            kv[li] = new_kv;
        }
        let rows: Vec<usize> = (0..nb).collect();
        let lp = model
            .log_probs_at(&h, &rows)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        for (i, row) in lp.iter().enumerate() {
            let tok = argmax_f32(row) as u32;
            accept(live[i], tok, &mut out, &mut active);
            last[live[i]] = tok;
        }
        s += 1;
    }
    Ok(out)
}

/// Index of the largest value, ties to the lower index.
fn argmax_f32(xs: &[f32]) -> usize {
    let v: Vec<f64> = xs.iter().map(|&x| f64::from(x)).collect();
    argmax_first(&v)
}

/// Prefill + decode of one aligned batch from `start`. Returns, per row, the
/// generation and the summed log-probability of its continuation tokens.
fn prefill_and_decode(
    model: &Llama,
    ab: &AlignedBatch,
    conts: &[&[u32]],
    max_new: &[usize],
    eos: Option<u32>,
    start: &Start<'_>,
) -> Result<Vec<GenOutput>, EvalError> {
    let n = model.layers.len();
    let p_cols = ab.prompt_cols;
    let (h, from, mut kv) = match start {
        Start::Embed => (model.embed(&ab.batch)?, 0, Vec::with_capacity(n)),
        Start::Prefix { hidden, kv, layer } => {
            let kv = kv.filter(|kv| kv.len() >= *layer).ok_or_else(|| {
                EvalError::Prefix(format!("no keys and values for the layers below {layer}"))
            })?;
            ((*hidden).clone(), *layer, kv[..*layer].to_vec())
        }
    };
    let (h, rest, _) = run_layers_kv(model, &h, from..n, &ab.batch, p_cols, &[])?;
    kv.extend(rest);
    // Per row: the slot before the continuation (also the first generation step), then
    // the slots before continuation tokens 1.. .
    let t = ab.batch.time;
    let mut flat = Vec::new();
    let mut first_rows = Vec::with_capacity(conts.len());
    for (r, c) in conts.iter().enumerate() {
        first_rows.push(flat.len() as u32);
        flat.push(r * t + p_cols - 1);
        for j in 1..c.len() {
            flat.push(r * t + p_cols + j - 1);
        }
    }
    // Row r's slots start at first_rows[r]; slot first_rows[r] + j predicts token j.
    let mut gold_rows = Vec::new();
    let mut gold_toks = Vec::new();
    let mut gold_owner = Vec::new();
    for (r, c) in conts.iter().enumerate() {
        for (j, &tok) in c.iter().enumerate() {
            gold_rows.push(first_rows[r] + j as u32);
            gold_toks.push(tok);
            gold_owner.push(r);
        }
    }
    let lp = model.log_probs_at(&h, &flat)?;
    let dev = lp.device().clone();
    let mut target_lp = vec![0f64; conts.len()];
    if !gold_rows.is_empty() {
        let k = gold_rows.len();
        let rows = Tensor::from_vec(gold_rows, k, &dev)?;
        let toks = Tensor::from_vec(gold_toks, (k, 1), &dev)?;
        let g: Vec<f32> = lp
            .index_select(&rows, 0)?
            .gather(&toks, 1)?
            .squeeze(1)?
            .to_dtype(DType::F32)?
            .to_vec1()?;
        for (x, r) in g.into_iter().zip(gold_owner) {
            target_lp[r] += f64::from(x);
        }
    }
    let nb = first_rows.len();
    let first: Vec<u32> = lp
        .index_select(&Tensor::from_vec(first_rows, nb, &dev)?, 0)?
        .to_dtype(DType::F32)?
        .to_vec2::<f32>()?
        .iter()
        .map(|row| argmax_f32(row) as u32)
        .collect();
    let gens = decode(model, kv, ab, first, max_new, eos)?;
    Ok(gens
        .into_iter()
        .zip(target_lp)
        .map(|(g, lp)| GenOutput {
            tokens: g.tokens,
            stopped_at_eos: g.stopped_at_eos,
            target_log_prob: lp,
        })
        .collect())
}

/// An aligned batch, each row's continuation tokens and generation length.
pub(crate) type SetBatch<'s> = (AlignedBatch, Vec<&'s [u32]>, Vec<usize>);

/// The aligned batch of samples `idx` of a generation set, with their targets and
/// generation lengths.
pub(crate) fn batch_for<'s>(
    set: &'s EvalSet,
    idx: &[usize],
    dev: &Device,
) -> Result<SetBatch<'s>, EvalError> {
    let mut rows = Vec::with_capacity(idx.len());
    let mut max_new = Vec::with_capacity(idx.len());
    for &i in idx {
        let s = &set.samples()[i];
        match &s.answer {
            SampleAnswer::Generate {
                target_tokens,
                max_new_tokens,
                ..
            } => {
                rows.push((s.prompt.as_slice(), target_tokens.as_slice()));
                max_new.push(*max_new_tokens);
            }
            SampleAnswer::Choice { .. } => {
                return Err(EvalError::AnswerKind {
                    row: s.row,
                    task: set.task(),
                    expected: "generation",
                })
            }
        }
    }
    let ab = aligned_batch(&rows, dev)?;
    Ok((ab, rows.into_iter().map(|(_, c)| c).collect(), max_new))
}

/// Generates for the samples `idx` of `set` (one micro-batch), starting from `start`.
pub(crate) fn eval_batch(
    model: &Llama,
    set: &EvalSet,
    idx: &[usize],
    start: &Start<'_>,
) -> Result<Vec<GenOutput>, EvalError> {
    let (ab, conts, max_new) = batch_for(set, idx, model.embed.device())?;
    prefill_and_decode(model, &ab, &conts, &max_new, set.eos(), start)
}

/// Greedy, KV-cached generation of at most `max_new_tokens` tokens after each prompt,
/// all prompts in one batch. Stops a row at `eos`.
pub fn greedy_generate(
    model: &Llama,
    prompts: &[Vec<u32>],
    max_new_tokens: usize,
    eos: Option<u32>,
) -> Result<Vec<Generation>, EvalError> {
    let rows: Vec<(&[u32], &[u32])> = prompts.iter().map(|p| (p.as_slice(), &[][..])).collect();
    let ab = aligned_batch(&rows, model.embed.device())?;
    let conts: Vec<&[u32]> = vec![&[]; prompts.len()];
    let max_new = vec![max_new_tokens; prompts.len()];
    let out = prefill_and_decode(model, &ab, &conts, &max_new, eos, &Start::Embed)?;
    Ok(out
        .into_iter()
        .map(|g| Generation {
            tokens: g.tokens,
            stopped_at_eos: g.stopped_at_eos,
        })
        .collect())
}

/// Reference greedy generation without a cache: one full forward of the model
/// ([`Llama::hidden`]) over the whole sequence per new token. Quadratic; for tests.
pub fn greedy_generate_uncached(
    model: &Llama,
    prompt: &[u32],
    max_new_tokens: usize,
    eos: Option<u32>,
) -> Result<Generation, EvalError> {
    let mut seq = prompt.to_vec();
    let mut out = Generation {
        tokens: Vec::new(),
        stopped_at_eos: false,
    };
    while out.tokens.len() < max_new_tokens {
        let batch = Batch::new(
            std::slice::from_ref(&seq),
            Padding::Right,
            0,
            model.embed.device(),
        )?;
        let h = model.hidden(&batch)?;
        let lp = model.log_probs_at(&h, &[seq.len() - 1])?;
        let row: Vec<f32> = lp.squeeze(0)?.to_dtype(DType::F32)?.to_vec1()?;
        let tok = argmax_f32(&row) as u32;
        if Some(tok) == eos {
            out.stopped_at_eos = true;
            break;
        }
        out.tokens.push(tok);
        seq.push(tok);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_layout_ends_every_prompt_in_the_same_column() {
        let ab = aligned_batch(&[(&[1, 2, 3], &[7]), (&[4], &[8, 9])], &Device::Cpu).unwrap();
        assert_eq!(ab.prompt_cols, 3);
        assert_eq!(ab.batch.time, 5);
        let ids: Vec<Vec<u32>> = ab.batch.ids.to_vec2().unwrap();
        assert_eq!(ids, vec![vec![1, 2, 3, 7, 0], vec![0, 0, 4, 8, 9]]);
        let pos: Vec<Vec<u32>> = ab.batch.positions.to_vec2().unwrap();
        assert_eq!(pos, vec![vec![0, 1, 2, 3, 0], vec![0, 0, 0, 1, 2]]);
        assert_eq!(ab.batch.offsets, vec![0, 2]);
        assert_eq!(ab.batch.flat_index(1, 1), 5 + 3);
        let bias: Vec<Vec<Vec<f32>>> = ab.batch.bias.squeeze(1).unwrap().to_vec3().unwrap();
        let ok = |r: usize, q: usize| -> Vec<usize> {
            (0..5).filter(|&k| bias[r][q][k] == 0.0).collect()
        };
        assert_eq!(ok(0, 3), vec![0, 1, 2, 3]);
        assert_eq!(ok(0, 4), vec![4]);
        assert_eq!(ok(1, 0), vec![0]);
        assert_eq!(ok(1, 2), vec![2]);
        assert_eq!(ok(1, 4), vec![2, 3, 4]);
        assert!(aligned_batch(&[(&[], &[1])], &Device::Cpu).is_err());
    }
}
