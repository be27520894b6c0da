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
//! The layers are the decoder's own ([`Decoder::run_layers_cached`], with candle's
//! fused inference kernels: [`Decoder::inference`]), fed the cached keys and values and
//! each key's rotary position (for sliding windows). The final norm and the LM head
//! are the decoder's [`Decoder::log_probs_at`]. [`greedy_generate_uncached`] is the
//! reference without a cache (one full forward per new token through
//! [`Decoder::hidden`]).

use super::evaluator::{argmax_first, EvalError, EvalSet, SampleAnswer};
use super::prefix::Start;
use crate::model::decoder::Attend;
pub use crate::model::decoder::LayerKv;
use crate::model::{Batch, Decoder, ModelError, Padding};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::ops::Range;

type CResult<T> = candle_core::Result<T>;

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

/// Runs layers `range` over a whole batch, keeping each layer's keys and values for
/// columns `0..keep_cols`, and the hidden states at the input of each layer in
/// `snapshot` (`range.end` included: the output).
pub(crate) fn run_layers_kv(
    model: &Decoder,
    h: &Tensor,
    range: Range<usize>,
    batch: &Batch,
    keep_cols: usize,
    snapshot: &[usize],
) -> CResult<(Tensor, Vec<LayerKv>, BTreeMap<usize, Tensor>)> {
    let att = batch.attend();
    let mut h = h.clone();
    let mut kv = Vec::with_capacity(range.len());
    let mut snaps = BTreeMap::new();
    // Segments between snapshot layers run in one call each.
    let mut cuts: Vec<usize> = snapshot
        .iter()
        .copied()
        .filter(|l| range.contains(l))
        .collect();
    cuts.push(range.end);
    cuts.sort_unstable();
    cuts.dedup();
    let mut from = range.start;
    for cut in cuts {
        if snapshot.contains(&from) {
            snaps.insert(from, h.clone());
        }
        if cut > from {
            let (out, layer_kv) = model.run_layers_cached(&h, from..cut, &att, None)?;
            h = out;
            for (k, v) in layer_kv {
                kv.push((
                    k.narrow(2, 0, keep_cols)?.contiguous()?,
                    v.narrow(2, 0, keep_cols)?.contiguous()?,
                ));
            }
        }
        from = cut;
    }
    if snapshot.contains(&range.end) {
        snaps.insert(range.end, h.clone());
    }
    Ok((h, kv, snaps))
}

/// Greedy decoding from a prompt KV cache (see the module docs). `first[r]` is the
/// token chosen from the prompt's last logits.
fn decode(
    model: &Decoder,
    mut kv: Vec<LayerKv>,
    ab: &AlignedBatch,
    first: Vec<u32>,
    max_new: &[usize],
    eos: Option<u32>,
) -> CResult<Vec<Generation>> {
    let dev = model.device();
    let b = first.len();
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
        let ids = Tensor::from_vec(ids, (nb, 1), dev)?;
        let q_pos: Vec<u32> = live
            .iter()
            .map(|&r| (ab.prompt_lens[r] + s) as u32)
            .collect();
        let mut bias = vec![-1e9f32; nb * total];
        // The rotary position of every key column: the prompt's (left-padded) tokens,
        // then the generated ones.
        let mut k_pos = vec![0u32; nb * total];
        for (i, &r) in live.iter().enumerate() {
            let pad = p_cols - ab.prompt_lens[r];
            bias[i * total + pad..(i + 1) * total].fill(0.0);
            for (c, kp) in k_pos[i * total..(i + 1) * total].iter_mut().enumerate() {
                *kp = if c < p_cols {
                    c.saturating_sub(pad) as u32
                } else {
                    (ab.prompt_lens[r] + c - p_cols) as u32
                };
            }
        }
        let att = Attend {
            bias: Tensor::from_vec(bias, (nb, 1, 1, total), dev)?,
            q_pos: Tensor::from_vec(q_pos, (nb, 1), dev)?,
            k_pos: Tensor::from_vec(k_pos, (nb, total), dev)?,
        };
        let h = model.embed_ids(&ids)?;
        let (h, new_kv) = model.run_layers_cached(&h, 0..model.layers.len(), &att, Some(&kv))?;
        kv = new_kv;
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
    model: &Decoder,
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
    model: &Decoder,
    set: &EvalSet,
    idx: &[usize],
    start: &Start<'_>,
) -> Result<Vec<GenOutput>, EvalError> {
    let (ab, conts, max_new) = batch_for(set, idx, model.device())?;
    prefill_and_decode(model, &ab, &conts, &max_new, set.eos(), start)
}

/// Greedy, KV-cached generation of at most `max_new_tokens` tokens after each prompt,
/// all prompts in one batch. Stops a row at `eos`.
pub fn greedy_generate(
    model: &Decoder,
    prompts: &[Vec<u32>],
    max_new_tokens: usize,
    eos: Option<u32>,
) -> Result<Vec<Generation>, EvalError> {
    let rows: Vec<(&[u32], &[u32])> = prompts.iter().map(|p| (p.as_slice(), &[][..])).collect();
    let ab = aligned_batch(&rows, model.device())?;
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
/// ([`Decoder::hidden`]) over the whole sequence per new token. Quadratic; for tests.
pub fn greedy_generate_uncached(
    model: &Decoder,
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
            model.device(),
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

    /// KV-cached, batched generation (fused kernels) against one full forward per new
    /// token, for a tiny model of every family, from prompts shorter and longer than the
    /// mistral and gemma3 windows.
    #[test]
    fn cached_generation_matches_uncached_every_family() {
        use crate::model::tiny::tiny_weights;
        use crate::model::Family;
        let prompts: Vec<Vec<u32>> = vec![
            vec![3, 17, 4, 9, 22, 1, 8, 5, 6],
            vec![5, 2],
            vec![40, 41, 42, 43, 44],
        ];
        for family in Family::ALL {
            let w = tiny_weights(family, DType::F64, 3);
            let plain = Decoder::new(&w).unwrap();
            let fused = plain.clone().inference();
            let got = greedy_generate(&fused, &prompts, 7, Some(49)).unwrap();
            for (p, g) in prompts.iter().zip(&got) {
                let want = greedy_generate_uncached(&plain, p, 7, Some(49)).unwrap();
                assert_eq!(g, &want, "{family} prompt {p:?}");
            }
        }
    }
}
