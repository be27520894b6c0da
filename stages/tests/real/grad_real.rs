//! The gradient pass on the real SmolLM2 model, checked against central finite
//! differences of the calibration loss in f64.

use c2i_stages::assets::smollm2_gguf;
use c2i_stages::grad::{calibration_loss, gradient_pass, GradOptions};
use c2i_stages::model::{Decoder, MatrixId, MatrixKind, Weights};
use candle_core::{DType, Tensor};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

use crate::common::wikidata_samples;

fn perturbed(w: &Tensor, row: usize, col: usize, delta: f64) -> Tensor {
    let (r, c) = w.dims2().unwrap();
    let mut v: Vec<f64> = w.flatten_all().unwrap().to_vec1().unwrap();
    v[row * c + col] += delta;
    Tensor::from_vec(v, (r, c), w.device()).unwrap()
}

#[test]
fn every_matrix_gets_a_nonzero_gradient() {
    let loaded = Weights::load_gguf(&smollm2_gguf().unwrap()).unwrap();
    let samples = wikidata_samples(&loaded.tokenizer, 4);
    let g = gradient_pass(
        &loaded.weights,
        &samples,
        &[],
        &GradOptions { micro_batch: 2 },
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(g.grads.len(), 30 * 7);
    for (id, t) in &g.grads {
        assert_eq!(t.dims(), loaded.weights.matrix(*id).unwrap().dims());
        let max = t
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            max > 0.0 && max.is_finite(),
            "{}: max |g| = {max}",
            id.hf_name()
        );
    }
    // Micro-batch size changes only the summation order.
    let one = gradient_pass(
        &loaded.weights,
        &samples,
        &[],
        &GradOptions { micro_batch: 4 },
        &mut |_, _| {},
    )
    .unwrap();
    assert!((one.loss - g.loss).abs() < 1e-4 * g.loss.abs());
}

#[test]
fn gradients_match_central_finite_differences_in_f64() {
    let loaded = Weights::load_gguf(&smollm2_gguf().unwrap()).unwrap();
    let w64 = loaded.weights.to_dtype(DType::F64).unwrap();
    let samples = wikidata_samples(&loaded.tokenizer, 2);
    let opts = GradOptions { micro_batch: 2 };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    // 21 entries: each of the seven kinds in three layers spread over the depth.
    let mut picks = Vec::new();
    for (i, kind) in MatrixKind::ALL.into_iter().enumerate() {
        for layer in [i % 5, 12 + i % 4, 29 - i % 3] {
            picks.push(MatrixId::new(layer, kind));
        }
    }
    let g = gradient_pass(&w64, &samples, &picks, &opts, &mut |_, _| {}).unwrap();
    let eps = 1e-4;
    let mut worst = 0f64;
    for id in &picks {
        let w = w64.matrix(*id).unwrap();
        let (r, c) = w.dims2().unwrap();
        let (row, col) = (rng.random_range(0..r), rng.random_range(0..c));
        let loss_at = |delta: f64| {
            let m = Decoder::with_matrices(
                &w64,
                &BTreeMap::from([(*id, perturbed(w, row, col, delta))]),
            )
            .unwrap();
            calibration_loss(&m, &samples, &opts).unwrap()
        };
        let fd = (loss_at(eps) - loss_at(-eps)) / (2.0 * eps);
        let an: f64 = g.grads[id]
            .get(row)
            .unwrap()
            .get(col)
            .unwrap()
            .to_scalar()
            .unwrap();
        let rel = (fd - an).abs() / fd.abs().max(an.abs()).max(1e-8);
        println!(
            "{:<42} [{row:>4},{col:>4}] analytic {an:+.6e} finite-diff {fd:+.6e} rel {rel:.1e}",
            id.hf_name()
        );
        worst = worst.max(rel);
        assert!(
            rel < 1e-2,
            "{} [{row},{col}]: analytic {an}, finite difference {fd}",
            id.hf_name()
        );
    }
    println!(
        "worst relative error over {} entries: {worst:.2e}",
        picks.len()
    );
}
