//! The gradient pass: one forward and backward over the calibration samples gives
//! G = dLoss/dW for every 2-D weight matrix of every layer.
//!
//! The calibration loss is, per sample, the summed negative log-likelihood of the gold
//! answer tokens that follow the prompt, averaged over the samples. Only the answer
//! positions go through the final norm and the LM head. Samples run in micro-batches
//! (sorted by length, so little padding) and the gradients are summed, so memory is
//! bounded by one micro-batch's activations whatever the number of samples.

use crate::model::{Batch, Llama, MatrixId, ModelError, Padding, Target, Weights};
use candle_core::{DType, Tensor, Var};
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
    model: &Llama,
    samples: &[LossSample],
    idx: &[usize],
    denom: f64,
) -> Result<Tensor, ModelError> {
    let (batch, targets) = batch_for(samples, idx, model.embed.device())?;
    let h = model.hidden(&batch)?;
    let lp = model.answer_log_probs(&h, &targets)?;
    Ok((lp.sum_all()?.neg()? / denom)?)
}

/// The calibration loss without gradients (for checks and reporting).
pub fn calibration_loss(
    model: &Llama,
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
    check_samples(samples)?;
    let ids: Vec<MatrixId> = if matrices.is_empty() {
        weights.matrix_ids()
    } else {
        matrices.to_vec()
    };
    let mut vars: BTreeMap<MatrixId, Var> = BTreeMap::new();
    for id in &ids {
        vars.insert(*id, Var::from_tensor(weights.matrix(*id)?)?);
    }
    let replace: BTreeMap<MatrixId, Tensor> = vars
        .iter()
        .map(|(id, v)| (*id, v.as_tensor().clone()))
        .collect();
    let model = Llama::with_matrices(weights, &replace)?;

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
            let sum = match grads.remove(id) {
                Some(acc) => (acc + g)?,
                None => g.clone(),
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
    /// Tensors by Hugging Face name, for safetensors export.
    pub fn named(&self) -> BTreeMap<String, Tensor> {
        self.grads
            .iter()
            .map(|(id, g)| (id.hf_name(), g.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
