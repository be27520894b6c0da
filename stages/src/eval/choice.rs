//! Choice scoring with the prompt computed once for all choices.
//!
//! Each sample is one row laid out as a tree flattened in time:
//!
//! ```text
//! [ prompt (p tokens) | choice 0 (n0 tokens) | choice 1 (n1 tokens) | ... | padding ]
//! ```
//!
//! with an attention bias such that a prompt token sees the prompt tokens up to
//! itself, and token `j` of choice `c` sees the whole prompt and tokens `0..=j` of
//! choice `c` only (never another choice). Rotary positions of every choice restart at
//! `p`, so choice `c` computes exactly what the sequence `prompt + choice c` would.
//! Rows are padded on the right; padded slots attend to themselves only (finite,
//! ignored).
//!
//! The log-probability of token `j` of choice `c` is read at the slot that predicts
//! it: the last prompt token for `j = 0`, token `j - 1` of the same choice otherwise.
//! Only those slots go through the final norm and the LM head
//! ([`Decoder::answer_log_probs`]). A choice's score is the sum over its tokens (LASER's
//! rule, see [`evaluator`](super::evaluator)).

use super::evaluator::{EvalError, EvalSet, Forward, SampleAnswer};
use super::prefix::Start;
use crate::model::ops::decoder::{self as kernels, RopeTables};
use crate::model::ops::tree::{tree_layers, TreeLayout};
use crate::model::{Batch, Decoder, ModelError, Target};
use candle_core::{DType, Device, Tensor};
use std::ops::Range;

/// A batch of choice trees and the answer tokens to score.
#[derive(Debug, Clone)]
pub struct ChoiceBatch {
    pub batch: Batch,
    /// Every choice token of every row, in row order, then choice order.
    pub targets: Vec<Target>,
    /// For each row and choice, its range in `targets`.
    pub spans: Vec<Vec<Range<usize>>>,
    /// For each row, the prompt's length and each choice's (the packed layout of
    /// [`TreeLayout`]).
    pub trees: Vec<(usize, Vec<usize>)>,
}

/// Builds the tree-shaped batch of `rows` = (prompt, choices) pairs. The prompt and
/// every choice must have at least one token.
pub fn tree_batch(rows: &[(&[u32], &[Vec<u32>])], dev: &Device) -> Result<ChoiceBatch, EvalError> {
    if rows.is_empty() {
        return Err(EvalError::Empty);
    }
    for (r, (p, cs)) in rows.iter().enumerate() {
        if p.is_empty() || cs.is_empty() || cs.iter().any(Vec::is_empty) {
            return Err(ModelError::Input(format!(
                "tree row {r}: the prompt and every choice need at least one token"
            ))
            .into());
        }
    }
    let lens: Vec<usize> = rows
        .iter()
        .map(|(p, cs)| p.len() + cs.iter().map(Vec::len).sum::<usize>())
        .collect();
    let b = rows.len();
    let t = lens.iter().copied().max().unwrap_or(0);
    let mut ids = vec![0u32; b * t];
    let mut pos = vec![0u32; b * t];
    let mut bias = vec![-1e9f32; b * t * t];
    let mut targets = Vec::new();
    let mut spans = Vec::with_capacity(b);
    let trees = rows
        .iter()
        .map(|(p, cs)| (p.len(), cs.iter().map(Vec::len).collect()))
        .collect();
    for (r, (prompt, choices)) in rows.iter().enumerate() {
        let p = prompt.len();
        let base = r * t;
        let brow = |q: usize| (base + q) * t;
        for (i, &tok) in prompt.iter().enumerate() {
            ids[base + i] = tok;
            pos[base + i] = i as u32;
            // Prompt token i sees prompt tokens 0..=i.
            bias[brow(i)..brow(i) + i + 1].fill(0.0);
        }
        let mut start = p;
        let mut row_spans = Vec::with_capacity(choices.len());
        for choice in choices.iter() {
            let first = targets.len();
            for (j, &tok) in choice.iter().enumerate() {
                let q = start + j;
                ids[base + q] = tok;
                pos[base + q] = (p + j) as u32;
                // The whole prompt, then this choice's tokens 0..=j.
                bias[brow(q)..brow(q) + p].fill(0.0);
                bias[brow(q) + start..brow(q) + q + 1].fill(0.0);
                let from = if j == 0 { p - 1 } else { q - 1 };
                targets.push(Target {
                    flat_pos: base + from,
                    token: tok,
                });
            }
            row_spans.push(first..targets.len());
            start += choice.len();
        }
        spans.push(row_spans);
        for q in lens[r]..t {
            bias[brow(q) + q] = 0.0;
        }
    }
    let batch = Batch {
        ids: Tensor::from_vec(ids, (b, t), dev)?,
        positions: Tensor::from_vec(pos, (b, t), dev)?,
        bias: Tensor::from_vec(bias, (b, 1, t, t), dev)?,
        offsets: vec![0; b],
        lens,
        time: t,
    };
    Ok(ChoiceBatch {
        batch,
        targets,
        spans,
        trees,
    })
}

/// Summed log-probability of every choice of every row, from the hidden states `h`
/// after the last layer (before the final norm) of `cb.batch`.
pub fn choice_log_probs(
    model: &Decoder,
    h: &Tensor,
    cb: &ChoiceBatch,
) -> Result<Vec<Vec<f64>>, EvalError> {
    let lp: Vec<f32> = model
        .answer_log_probs(h, &cb.targets)?
        .to_dtype(DType::F32)?
        .to_vec1()?;
    Ok(cb
        .spans
        .iter()
        .map(|row| {
            row.iter()
                .map(|span| lp[span.clone()].iter().map(|&x| f64::from(x)).sum())
                .collect()
        })
        .collect())
}

/// Scores the samples `idx` of `set` (one micro-batch), starting from `start`.
pub(crate) fn score_batch(
    model: &Decoder,
    set: &EvalSet,
    idx: &[usize],
    start: &Start<'_>,
    forward: Forward,
) -> Result<Vec<Vec<f64>>, EvalError> {
    let cb = batch_for(set, idx, model.device())?;
    let h = hidden_from(model, &cb, start, forward)?;
    choice_log_probs(model, &h, &cb)
}

/// The tree batch of samples `idx` of a choice set.
pub(crate) fn batch_for(
    set: &EvalSet,
    idx: &[usize],
    dev: &Device,
) -> Result<ChoiceBatch, EvalError> {
    let mut rows = Vec::with_capacity(idx.len());
    for &i in idx {
        let s = &set.samples()[i];
        match &s.answer {
            SampleAnswer::Choice { choices, .. } => rows.push((s.prompt.as_slice(), &choices[..])),
            SampleAnswer::Generate { .. } => {
                return Err(EvalError::AnswerKind {
                    row: s.row,
                    task: set.task(),
                    expected: "choice",
                })
            }
        }
    }
    tree_batch(&rows, dev)
}

/// Hidden states after the last layer, from the embeddings or from a prefix.
fn hidden_from(
    model: &Decoder,
    cb: &ChoiceBatch,
    start: &Start<'_>,
    forward: Forward,
) -> Result<Tensor, EvalError> {
    let n = model.layers.len();
    let (h, from) = match start {
        Start::Embed => (model.embed(&cb.batch)?, 0),
        Start::Prefix { hidden, layer, .. } => ((*hidden).clone(), *layer),
    };
    run_layers(model, cb, &h, from..n, forward)
}

/// Runs layers `range` of `model` on the padded hidden states `h` (batch, time, hidden)
/// of the tree batch `cb`: on the hand-written kernels ([`tree_layers`], packed without
/// padding) when `forward` allows it and the model is f32 on the CPU, on candle's ops
/// otherwise. Padded slots of the result are zero on the first path and finite
/// garbage on the second; nobody reads them.
pub(crate) fn run_layers(
    model: &Decoder,
    cb: &ChoiceBatch,
    h: &Tensor,
    range: Range<usize>,
    forward: Forward,
) -> Result<Tensor, EvalError> {
    if forward == Forward::Candle || !kernels::supported_decoder::<f32>(model) {
        return Ok(model.run_layers(h, range, &cb.batch)?);
    }
    let (b, t, d) = h.dims3()?;
    let padded: Vec<f32> = h.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let lens = &cb.batch.lens;
    let mut packed = Vec::with_capacity(lens.iter().sum::<usize>() * d);
    for (r, &len) in lens.iter().enumerate() {
        packed.extend_from_slice(&padded[r * t * d..(r * t + len) * d]);
    }
    drop(padded);
    let layout = TreeLayout::new(&cb.trees)?;
    let rope_t = RopeTables::<f32>::new(&model.config, layout.positions());
    let out = kernels::with_decoder::<f32, _>(model, |m| {
        tree_layers(m, &layout, packed, range, &rope_t)
    })??;
    let mut padded = vec![0f32; b * t * d];
    let mut at = 0;
    for (r, &len) in lens.iter().enumerate() {
        padded[r * t * d..(r * t + len) * d].copy_from_slice(&out[at..at + len * d]);
        at += len * d;
    }
    Ok(Tensor::from_vec(padded, (b, t, d), h.device())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(cb: &ChoiceBatch) -> Vec<Vec<Vec<bool>>> {
        let b: Vec<Vec<Vec<f32>>> = cb.batch.bias.squeeze(1).unwrap().to_vec3().unwrap();
        b.iter()
            .map(|m| {
                m.iter()
                    .map(|r| r.iter().map(|&x| x == 0.0).collect())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn tree_layout_bias_positions_and_targets() {
        // Row 0: prompt [10, 11], choices [20] and [30, 31]; row 1: prompt [12], [21], [32].
        let c0 = vec![vec![20], vec![30, 31]];
        let c1 = vec![vec![21], vec![32]];
        let cb = tree_batch(&[(&[10, 11], &c0), (&[12], &c1)], &Device::Cpu).unwrap();
        assert_eq!(cb.batch.time, 5);
        assert_eq!(cb.batch.lens, vec![5, 3]);
        let ids: Vec<Vec<u32>> = cb.batch.ids.to_vec2().unwrap();
        assert_eq!(ids, vec![vec![10, 11, 20, 30, 31], vec![12, 21, 32, 0, 0]]);
        let pos: Vec<Vec<u32>> = cb.batch.positions.to_vec2().unwrap();
        assert_eq!(pos, vec![vec![0, 1, 2, 2, 3], vec![0, 1, 1, 0, 0]]);
        let a = allowed(&cb);
        let (t, f) = (true, false);
        assert_eq!(
            a[0],
            vec![
                vec![t, f, f, f, f],
                vec![t, t, f, f, f],
                vec![t, t, t, f, f],
                vec![t, t, f, t, f],
                vec![t, t, f, t, t],
            ]
        );
        assert_eq!(
            a[1],
            vec![
                vec![t, f, f, f, f],
                vec![t, t, f, f, f],
                vec![t, f, t, f, f],
                vec![f, f, f, t, f],
                vec![f, f, f, f, t],
            ]
        );
        let tg: Vec<(usize, u32)> = cb.targets.iter().map(|x| (x.flat_pos, x.token)).collect();
        // Row 0: 20 from slot 1; 30 from slot 1, 31 from slot 3. Row 1 (base 5): 21 and
        // 32 both from slot 0.
        assert_eq!(tg, vec![(1, 20), (1, 30), (3, 31), (5, 21), (5, 32)]);
        assert_eq!(cb.spans, vec![vec![0..1, 1..3], vec![3..4, 4..5]]);
        let empty: Vec<Vec<u32>> = vec![vec![]];
        assert!(tree_batch(&[(&[1], &empty)], &Device::Cpu).is_err());
        assert!(tree_batch(&[], &Device::Cpu).is_err());
    }

    /// The choice tree on the kernels and on candle's padded ops against one plain
    /// forward per (prompt + choice) sequence, for a tiny model of every family, with
    /// prompts longer than the mistral and gemma3 windows.
    #[test]
    fn trees_match_separate_forwards_every_family() {
        use crate::model::tiny::tiny_weights;
        use crate::model::{Decoder, Family};
        let prompts: Vec<Vec<u32>> = vec![
            vec![3, 17, 4, 9, 22, 1, 8, 5],
            vec![5, 2],
            vec![40, 41, 42, 43, 44, 45],
        ];
        let choices: Vec<Vec<Vec<u32>>> = vec![
            vec![vec![7], vec![11, 12, 13]],
            vec![vec![30, 31], vec![1]],
            vec![vec![2, 3], vec![4, 5]],
        ];
        for family in Family::ALL {
            let w = tiny_weights(family, candle_core::DType::F32, 3);
            let model = Decoder::new(&w).unwrap();
            let rows: Vec<(&[u32], &[Vec<u32>])> = prompts
                .iter()
                .zip(&choices)
                .map(|(p, c)| (p.as_slice(), c.as_slice()))
                .collect();
            let cb = tree_batch(&rows, &Device::Cpu).unwrap();
            let h0 = model.embed(&cb.batch).unwrap();
            let n = model.layers.len();
            let mut got = Vec::new();
            for forward in [Forward::Auto, Forward::Candle] {
                let h = run_layers(&model, &cb, &h0, 0..n, forward).unwrap();
                got.push(choice_log_probs(&model, &h, &cb).unwrap());
            }
            for (r, (p, cs)) in rows.iter().enumerate() {
                for (c, choice) in cs.iter().enumerate() {
                    let seq = [*p, choice.as_slice()].concat();
                    let batch =
                        Batch::new(&[seq], crate::model::Padding::Right, 0, &Device::Cpu).unwrap();
                    let lp = candle_nn::ops::log_softmax(&model.logits(&batch).unwrap(), 2)
                        .unwrap()
                        .squeeze(0)
                        .unwrap()
                        .to_vec2::<f32>()
                        .unwrap();
                    let want: f64 = choice
                        .iter()
                        .enumerate()
                        .map(|(j, &tok)| f64::from(lp[p.len() - 1 + j][tok as usize]))
                        .sum();
                    for (g, name) in got.iter().zip(["kernels", "candle"]) {
                        assert!(
                            (g[r][c] - want).abs() < 1e-4,
                            "{family} {name} row {r} choice {c}: {} vs {want}",
                            g[r][c]
                        );
                    }
                }
            }
        }
    }
}
