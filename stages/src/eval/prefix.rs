//! Layer-prefix reuse: the base model's hidden states at the input of chosen layers,
//! per micro-batch of an [`EvalSet`], so that a candidate changing only layers `>= L`
//! runs layers `L..` alone ([`evaluate`](super::evaluator::evaluate) with
//! `Some(prefix)` and `from_layer = L`).
//!
//! [`Prefix::compute`] runs the base model once, only up to the deepest requested
//! layer, and keeps the hidden states at the input of the requested layers only (one
//! (batch, time, hidden) tensor per layer and micro-batch). Layer 0 (the embeddings)
//! is never stored: it is cheaper to recompute. For a generation task it also keeps
//! the keys and values of the prompt tokens for every layer below the deepest
//! requested one, since decoding new tokens needs them in every layer; that is
//! `2 · kv_heads · head_dim = 384` floats per prompt token and layer for SmolLM2,
//! against 576 per token for a hidden state.
//!
//! A prefix belongs to one set (checked by its fingerprint) and one micro-batch plan
//! (kept in the prefix and used by `evaluate`), and to one base model, which is the
//! caller's to keep consistent.

use super::choice;
use super::evaluator::{EvalError, EvalOptions, EvalSet};
use super::generate::{self, LayerKv};
use crate::data::TaskKind;
use crate::model::Decoder;
use candle_core::Tensor;
use std::collections::BTreeMap;

/// Where a forward starts: the embeddings, or a prefix's hidden states at the input of
/// `layer` (with, for generation, the keys and values of the layers below it).
pub(crate) enum Start<'a> {
    Embed,
    Prefix {
        hidden: &'a Tensor,
        kv: Option<&'a [LayerKv]>,
        layer: usize,
    },
}

#[derive(Debug, Clone)]
struct PrefixBatch {
    hidden: BTreeMap<usize, Tensor>,
    /// Generation only: keys and values of the prompt columns, layers `0..max layer`.
    kv: Option<Vec<LayerKv>>,
}

/// The base model's hidden states at the input of some layers, per micro-batch.
#[derive(Debug, Clone)]
pub struct Prefix {
    set: String,
    layers: Vec<usize>,
    plan: Vec<Vec<usize>>,
    hidden_size: usize,
    n_layers: usize,
    batches: Vec<PrefixBatch>,
}

impl Prefix {
    /// Runs `base` on `set` up to the deepest of `layers` and keeps the hidden states at
    /// the input of each of `layers` (each in `0..number of layers`; 0 is accepted and
    /// not stored). The micro-batches are [`EvalSet::plan`] of `opts`. `progress` gets
    /// (samples done, samples total) after each micro-batch.
    pub fn compute(
        base: &Decoder,
        set: &EvalSet,
        layers: &[usize],
        opts: &EvalOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Prefix, EvalError> {
        let n = base.layers.len();
        if let Some(&layer) = layers.iter().find(|&&l| l >= n) {
            return Err(EvalError::Layer { layer, layers: n });
        }
        set.check_fits(base)?;
        let mut kept: Vec<usize> = layers.iter().copied().filter(|&l| l > 0).collect();
        kept.sort_unstable();
        kept.dedup();
        let deepest = kept.last().copied().unwrap_or(0);
        let plan = set.plan(opts)?;
        let dev = base.device();
        let mut batches = Vec::with_capacity(plan.len());
        let mut done = 0;
        for idx in &plan {
            let pb = if kept.is_empty() {
                PrefixBatch {
                    hidden: BTreeMap::new(),
                    kv: None,
                }
            } else {
                match set.task().kind() {
                    TaskKind::Classification => {
                        let cb = choice::batch_for(set, idx, dev)?;
                        let mut h = base.embed(&cb.batch)?;
                        let mut hidden = BTreeMap::new();
                        let mut from = 0;
                        for &l in &kept {
                            h = choice::run_layers(base, &cb, &h, from..l, opts.forward)?;
                            hidden.insert(l, h.clone());
                            from = l;
                        }
                        PrefixBatch { hidden, kv: None }
                    }
                    TaskKind::Generation => {
                        let (ab, _, _) = generate::batch_for(set, idx, dev)?;
                        let h = base.embed(&ab.batch)?;
                        let (_, kv, hidden) = generate::run_layers_kv(
                            base,
                            &h,
                            0..deepest,
                            &ab.batch,
                            ab.prompt_cols,
                            &kept,
                        )?;
                        PrefixBatch {
                            hidden,
                            kv: Some(kv),
                        }
                    }
                }
            };
            batches.push(pb);
            done += idx.len();
            progress(done, set.len());
        }
        Ok(Prefix {
            set: set.fingerprint().to_owned(),
            layers: kept,
            plan,
            hidden_size: base.config.hidden_size,
            n_layers: n,
            batches,
        })
    }

    /// The stored layers (ascending, 0 left out).
    pub fn layers(&self) -> &[usize] {
        &self.layers
    }

    /// Whether `evaluate` can start at `layer` with this prefix.
    pub fn supports(&self, layer: usize) -> bool {
        layer == 0 || self.layers.binary_search(&layer).is_ok()
    }

    /// The micro-batches (sample indices of the set) the states belong to.
    pub fn plan(&self) -> &[Vec<usize>] {
        &self.plan
    }

    /// The fingerprint of the set it was computed on.
    pub fn set_fingerprint(&self) -> &str {
        &self.set
    }

    /// Bytes held by the stored tensors.
    pub fn bytes(&self) -> usize {
        let size = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        self.batches
            .iter()
            .map(|b| {
                b.hidden.values().map(size).sum::<usize>()
                    + b.kv
                        .iter()
                        .flatten()
                        .map(|(k, v)| size(k) + size(v))
                        .sum::<usize>()
            })
            .sum()
    }

    /// Errors unless this prefix can serve `model` on `set` from `from_layer`.
    pub(crate) fn check(
        &self,
        set: &EvalSet,
        model: &Decoder,
        from_layer: usize,
    ) -> Result<(), EvalError> {
        if self.set != set.fingerprint() {
            return Err(EvalError::Prefix(
                "it was computed on a different evaluation set".into(),
            ));
        }
        if self.hidden_size != model.config.hidden_size || self.n_layers != model.layers.len() {
            return Err(EvalError::Prefix(format!(
                "it was computed with a model of {} layers of width {}, not {} of width {}",
                self.n_layers,
                self.hidden_size,
                model.layers.len(),
                model.config.hidden_size
            )));
        }
        if !self.supports(from_layer) {
            return Err(EvalError::Prefix(format!(
                "layer {from_layer} is not stored (stored: {:?})",
                self.layers
            )));
        }
        Ok(())
    }

    /// Hidden states at the input of `layer` for micro-batch `batch`.
    pub(crate) fn hidden(&self, batch: usize, layer: usize) -> Result<&Tensor, EvalError> {
        self.batches
            .get(batch)
            .and_then(|b| b.hidden.get(&layer))
            .ok_or_else(|| {
                EvalError::Prefix(format!(
                    "no states for layer {layer} of micro-batch {batch}"
                ))
            })
    }

    /// Keys and values of the prompt columns for micro-batch `batch` (generation only).
    pub(crate) fn kv(&self, batch: usize) -> Option<&[LayerKv]> {
        self.batches.get(batch).and_then(|b| b.kv.as_deref())
    }
}
