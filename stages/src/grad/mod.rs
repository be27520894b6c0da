//! The gradient pass: one forward and backward over the calibration samples gives
//! G = dLoss/dW for every 2-D weight matrix of every layer.
//!
//! The calibration loss is, per sample, the summed negative log-likelihood of the gold
//! answer tokens that follow the prompt, averaged over the samples. Only the answer
//! positions go through the final norm and the LM head. Samples run in micro-batches
//! (sorted by length) and the gradients are summed, so memory is bounded by one
//! micro-batch's activations whatever the number of samples.
//!
//! On the CPU in f32 or f64 the pass is the hand-written forward and backward of
//! [`crate::model::ops::decoder`] (packed rows, no padding, only the gradients asked
//! for, accumulated in place); elsewhere it is candle's autograd through [`Decoder`]
//! ([`gradient_pass_autograd`], also the reference the fast pass is tested against).

use crate::model::ops::alloc::RetainHeap;
use crate::model::ops::decoder::{self as kernels, GradBuffers, Packed, RopeTables};
use crate::model::ops::Real;
use crate::model::{Batch, Decoder, MatrixId, ModelError, Padding, Target, Weights};
use candle_core::{DType, Tensor, Var};
use rayon::prelude::*;
use std::collections::BTreeMap;

/// One calibration sample, tokenized: the prompt and the gold answer's tokens.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LossSample {
    pub prompt: Vec<u32>,
    pub answer: Vec<u32>,
}

/// dLoss/dW for every matrix, with the loss they were taken at.
#[derive(Debug, Clone)]
pub struct Gradients {
    /// Mean over samples of the summed answer-token NLL.
    pub loss: f64,
    pub samples: usize,
    pub answer_tokens: usize,
    /// Per matrix, in Hugging Face layout (same shape as the weight).
    pub grads: BTreeMap<MatrixId, Tensor>,
}

/// How the pass runs.
#[derive(Debug, Clone)]
pub struct GradOptions {
    /// Samples per forward/backward; bounds peak memory.
    pub micro_batch: usize,
}

impl Default for GradOptions {
    fn default() -> Self {
        GradOptions { micro_batch: 8 }
    }
}

fn check_samples(samples: &[LossSample]) -> Result<(), ModelError> {
    if samples.is_empty() {
        return Err(ModelError::Input(
            "the gradient pass needs at least one sample".into(),
        ));
    }
    for (i, s) in samples.iter().enumerate() {
        if s.prompt.is_empty() || s.answer.is_empty() {
            return Err(ModelError::Input(format!(
                "sample {i}: prompt and answer must both have at least one token"
            )));
        }
    }
    Ok(())
}

/// Micro-batches of sample indices, sorted by total length (stable, so deterministic).
fn micro_batches(samples: &[LossSample], size: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..samples.len()).collect();
    order.sort_by_key(|&i| samples[i].prompt.len() + samples[i].answer.len());
    order.chunks(size.max(1)).map(<[usize]>::to_vec).collect()
}

/// Builds the padded batch for some samples and the answer targets to score.
fn batch_for(
    samples: &[LossSample],
    idx: &[usize],
    dev: &candle_core::Device,
) -> Result<(Batch, Vec<Target>), ModelError> {
    let seqs: Vec<Vec<u32>> = idx
        .iter()
        .map(|&i| [samples[i].prompt.as_slice(), samples[i].answer.as_slice()].concat())
        .collect();
    let batch = Batch::new(&seqs, Padding::Right, 0, dev)?;
    let mut targets = Vec::new();
    for (row, &i) in idx.iter().enumerate() {
        let p = samples[i].prompt.len();
        for (j, &tok) in samples[i].answer.iter().enumerate() {
            // The logits at position p+j-1 predict the token at p+j.
            targets.push(Target {
                flat_pos: batch.flat_index(row, p + j - 1),
                token: tok,
            });
        }
    }
    Ok((batch, targets))
}

/// Sum over the micro-batch of the answer NLL, divided by `denom`.
fn batch_loss(
    model: &Decoder,
    samples: &[LossSample],
    idx: &[usize],
    denom: f64,
) -> Result<Tensor, ModelError> {
    let (batch, targets) = batch_for(samples, idx, model.embed.device())?;
    let h = model.hidden(&batch)?;
    // One LM-head product for the micro-batch (a few answers): the gradients stay
    // those of the version that computed them.
    let lp = model.answer_log_probs_in_blocks(&h, &targets, usize::MAX)?;
    Ok((lp.sum_all()?.neg()? / denom)?)
}

/// The calibration loss without gradients (for checks and reporting).
pub fn calibration_loss(
    model: &Decoder,
    samples: &[LossSample],
    opts: &GradOptions,
) -> Result<f64, ModelError> {
    check_samples(samples)?;
    let n = samples.len() as f64;
    let mut total = 0f64;
    for idx in micro_batches(samples, opts.micro_batch) {
        let l = batch_loss(model, samples, &idx, n)?;
        total += l.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    }
    Ok(total)
}

/// Runs the gradient pass for `matrices` (all of them when empty). `progress` is called
/// with (samples done, samples total) after each micro-batch.
pub fn gradient_pass(
    weights: &Weights,
    samples: &[LossSample],
    matrices: &[MatrixId],
    opts: &GradOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Gradients, ModelError> {
    if kernels::supported::<f32>(weights) {
        gradient_pass_fast::<f32>(weights, samples, matrices, opts, progress)
    } else if kernels::supported::<f64>(weights) {
        gradient_pass_fast::<f64>(weights, samples, matrices, opts, progress)
    } else {
        gradient_pass_autograd(weights, samples, matrices, opts, progress)
    }
}

fn matrix_list(weights: &Weights, matrices: &[MatrixId]) -> Result<Vec<MatrixId>, ModelError> {
    let ids: Vec<MatrixId> = if matrices.is_empty() {
        weights.matrix_ids()
    } else {
        matrices.to_vec()
    };
    for id in &ids {
        weights.matrix(*id)?;
    }
    Ok(ids)
}

/// A micro-batch packed for the hand-written pass: each sample's prompt and answer
/// without the answer's last token (no loss term looks past it), and one target per
/// answer token.
fn packed_for(samples: &[LossSample], idx: &[usize]) -> Result<Packed, ModelError> {
    let items: Vec<kernels::PackedItem> = idx
        .iter()
        .map(|&i| {
            let s = &samples[i];
            let p = s.prompt.len();
            let mut toks = s.prompt.clone();
            toks.extend_from_slice(&s.answer[..s.answer.len() - 1]);
            let targets = s
                .answer
                .iter()
                .enumerate()
                .map(|(j, &tok)| (p + j - 1, tok))
                .collect();
            (toks, targets)
        })
        .collect();
    Packed::new(&items)
}

/// [`gradient_pass`] on the hand-written forward and backward, in `T`.
pub fn gradient_pass_fast<T: Real>(
    weights: &Weights,
    samples: &[LossSample],
    matrices: &[MatrixId],
    opts: &GradOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Gradients, ModelError> {
    gradient_pass_fast_with::<T>(weights, samples, matrices, opts, 1, progress)
}

/// [`gradient_pass_fast`] with each micro-batch split into `parties` parts that run
/// concurrently (rayon), their gradients added in a fixed order so the result does not
/// depend on thread timing.
pub fn gradient_pass_fast_with<T: Real>(
    weights: &Weights,
    samples: &[LossSample],
    matrices: &[MatrixId],
    opts: &GradOptions,
    parties: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Gradients, ModelError> {
    check_samples(samples)?;
    let ids = matrix_list(weights, matrices)?;
    let config = &weights.config;
    let max_len = samples
        .iter()
        .map(|s| s.prompt.len() + s.answer.len())
        .max()
        .unwrap_or(1);
    let rope = RopeTables::<T>::new(config, max_len);
    let mut bufs = GradBuffers::<T>::new(config, &ids);
    let n = samples.len() as f64;
    let _heap = RetainHeap::new();
    // Longest first: later, smaller micro-batches reuse the memory freed before them.
    let batches: Vec<Vec<usize>> = micro_batches(samples, opts.micro_batch)
        .into_iter()
        .rev()
        .collect();
    let parties = parties.max(1);
    let loss = kernels::with_weights::<T, _>(weights, |m| {
        let mut loss = 0f64;
        let mut done = 0;
        for idx in &batches {
            // Deal the samples (sorted by length) round-robin to the parties.
            let groups: Vec<Vec<usize>> = (0..parties.min(idx.len()))
                .map(|p| idx.iter().skip(p).step_by(parties).copied().collect())
                .collect();
            let losses: Vec<Result<f64, ModelError>> = groups
                .par_iter()
                .enumerate()
                .with_max_len(1)
                .map(|(party, group)| {
                    let b = packed_for(samples, group)?;
                    kernels::loss_and_grad(m, &b, 1.0 / n, &rope, Some((&bufs, party)))
                })
                .collect();
            for l in losses {
                loss += l?;
            }
            bufs.end_round();
            done += idx.len();
            progress(done, samples.len());
        }
        Ok::<f64, ModelError>(loss)
    })??;
    Ok(Gradients {
        loss,
        samples: samples.len(),
        answer_tokens: samples.iter().map(|s| s.answer.len()).sum(),
        grads: bufs.into_tensors(config)?.into_iter().collect(),
    })
}

/// The calibration loss on the hand-written forward (what [`gradient_pass_fast`]
/// differentiates), in `T`.
pub fn calibration_loss_fast<T: Real>(
    weights: &Weights,
    samples: &[LossSample],
    opts: &GradOptions,
) -> Result<f64, ModelError> {
    check_samples(samples)?;
    let max_len = samples
        .iter()
        .map(|s| s.prompt.len() + s.answer.len())
        .max()
        .unwrap_or(1);
    let rope = RopeTables::<T>::new(&weights.config, max_len);
    let n = samples.len() as f64;
    kernels::with_weights::<T, _>(weights, |m| {
        let mut loss = 0f64;
        for idx in micro_batches(samples, opts.micro_batch) {
            let b = packed_for(samples, &idx)?;
            loss += kernels::loss_and_grad(m, &b, 1.0 / n, &rope, None)?;
        }
        Ok(loss)
    })?
}

/// [`gradient_pass`] through candle's autograd on [`Decoder`] (any device or dtype; slower
/// and keeps every intermediate of a micro-batch).
pub fn gradient_pass_autograd(
    weights: &Weights,
    samples: &[LossSample],
    matrices: &[MatrixId],
    opts: &GradOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Gradients, ModelError> {
    check_samples(samples)?;
    let ids = matrix_list(weights, matrices)?;
    let mut vars: BTreeMap<MatrixId, Var> = BTreeMap::new();
    for id in &ids {
        vars.insert(*id, Var::from_tensor(weights.matrix(*id)?)?);
    }
    let replace: BTreeMap<MatrixId, Tensor> = vars
        .iter()
        .map(|(id, v)| (*id, v.as_tensor().clone()))
        .collect();
    let model = Decoder::with_matrices(weights, &replace)?;

    let n = samples.len() as f64;
    let mut loss = 0f64;
    let mut grads: BTreeMap<MatrixId, Tensor> = BTreeMap::new();
    let mut done = 0;
    for idx in micro_batches(samples, opts.micro_batch) {
        let l = batch_loss(&model, samples, &idx, n)?;
        loss += l.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let store = l.backward()?;
        for (id, var) in &vars {
            let g = store.get(var.as_tensor()).ok_or_else(|| {
                ModelError::Input(format!(
                    "no gradient reached {} (a non-differentiable op?)",
                    id.hf_name()
                ))
            })?;
            // Accumulated in at least f32 (bf16 weights on a GPU).
            let g = crate::model::decoder::at_least_f32(g.clone())?;
            let sum = match grads.remove(id) {
                Some(acc) => (acc + g)?,
                None => g,
            };
            grads.insert(*id, sum);
        }
        done += idx.len();
        progress(done, samples.len());
    }
    Ok(Gradients {
        loss,
        samples: samples.len(),
        answer_tokens: samples.iter().map(|s| s.answer.len()).sum(),
        grads,
    })
}

impl Gradients {
    /// Tensors by Hugging Face name, for safetensors export, giving up this result's
    /// references: a writer that consumes the map frees each gradient once written.
    pub fn into_named(self) -> BTreeMap<String, Tensor> {
        self.grads
            .into_iter()
            .map(|(id, g)| (id.hf_name(), g))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops::test_flat as flat;

    #[test]
    fn micro_batches_cover_every_sample_once_sorted_by_length() {
        let s = |p: usize, a: usize| LossSample {
            prompt: vec![1; p],
            answer: vec![2; a],
        };
        let samples = vec![s(5, 1), s(2, 1), s(9, 2), s(2, 1), s(4, 1)];
        let mb = micro_batches(&samples, 2);
        assert_eq!(mb, vec![vec![1, 3], vec![4, 0], vec![2]]);
        let mut all: Vec<usize> = mb.concat();
        all.sort();
        assert_eq!(all, vec![0, 1, 2, 3, 4]);
    }

    fn tiny_samples() -> Vec<LossSample> {
        (0..7u32)
            .map(|i| LossSample {
                prompt: (0..3 + 2 * i).map(|j| (i * 7 + j * 3) % 50).collect(),
                answer: (0..1 + i % 3).map(|j| (i * 11 + j * 5 + 1) % 50).collect(),
            })
            .collect()
    }

    #[test]
    fn fast_pass_matches_autograd_for_any_micro_batching_and_parties() {
        let w = crate::model::tiny::tiny_weights(crate::model::Family::Qwen2, DType::F64, 2);
        let samples = tiny_samples();
        let want = gradient_pass_autograd(
            &w,
            &samples,
            &[],
            &GradOptions { micro_batch: 3 },
            &mut |_, _| {},
        )
        .unwrap();
        let want_loss = calibration_loss(
            &Decoder::new(&w).unwrap(),
            &samples,
            &GradOptions { micro_batch: 7 },
        )
        .unwrap();
        assert!((want.loss - want_loss).abs() < 1e-12);
        let mut seen = Vec::new();
        for (mb, parties) in [(1, 1), (3, 1), (7, 1), (4, 2), (7, 3), (2, 2)] {
            let mut calls = Vec::new();
            let got = gradient_pass_fast_with::<f64>(
                &w,
                &samples,
                &[],
                &GradOptions { micro_batch: mb },
                parties,
                &mut |done, total| calls.push((done, total)),
            )
            .unwrap();
            assert_eq!(calls.last(), Some(&(7, 7)));
            assert!((got.loss - want.loss).abs() < 1e-12, "loss {mb}/{parties}");
            assert_eq!(got.grads.len(), want.grads.len());
            for (id, g) in &got.grads {
                let (a, b) = (flat(g), flat(&want.grads[id]));
                let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
                let diff = a
                    .iter()
                    .zip(&b)
                    .fold(0f64, |m, (x, y)| m.max((x - y).abs()));
                assert!(
                    diff <= 1e-10 * scale,
                    "{} mb {mb} parties {parties}",
                    id.hf_name()
                );
            }
            let fast_loss =
                calibration_loss_fast::<f64>(&w, &samples, &GradOptions { micro_batch: mb })
                    .unwrap();
            assert!((fast_loss - want.loss).abs() < 1e-12);
            seen.push(got);
        }
        // Concurrent parties add in a fixed order: the same bits every time.
        let again = gradient_pass_fast_with::<f64>(
            &w,
            &samples,
            &[],
            &GradOptions { micro_batch: 7 },
            3,
            &mut |_, _| {},
        )
        .unwrap();
        for (id, g) in &again.grads {
            assert_eq!(flat(g), flat(&seen[4].grads[id]), "{}", id.hf_name());
        }
    }

    #[test]
    fn empty_inputs_are_refused() {
        assert!(check_samples(&[]).is_err());
        let bad = LossSample {
            prompt: vec![],
            answer: vec![1],
        };
        assert!(check_samples(&[bad]).is_err());
    }
}
