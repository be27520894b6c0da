//! Singular-value gradients on the real model against an independent check: perturb
//! σ_i of one block by ±ε, rebuild W, recompute the calibration loss, and compare the
//! central difference with g_i = u_iᵀ G_b v_i from the gradient pass (issue 3).

use crate::common::wikidata_samples;
use c2i_stages::assets::smollm2_gguf;
use c2i_stages::factor::{factor_matrix, RowMajor};
use c2i_stages::grad::{calibration_loss, gradient_pass, GradOptions};
use c2i_stages::model::{Decoder, MatrixId, MatrixKind, Weights};
use c2i_stages::score::{sv_grads, Components};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;

#[test]
fn singular_value_gradients_match_finite_differences_of_the_loss() {
    let loaded = Weights::load_gguf(&smollm2_gguf().unwrap()).unwrap();
    let w64 = loaded.weights.to_dtype(DType::F64).unwrap();
    let samples = wikidata_samples(&loaded.tokenizer, 2);
    let opts = GradOptions { micro_batch: 2 };
    let checks = [
        (MatrixId::new(27, MatrixKind::Down), 2usize, 1usize),
        (MatrixId::new(15, MatrixKind::Gate), 4, 2),
        (MatrixId::new(5, MatrixKind::O), 1, 0),
    ];
    let ids: Vec<MatrixId> = checks.iter().map(|c| c.0).collect();
    let g = gradient_pass(&w64, &samples, &ids, &opts, &mut |_, _| {}).unwrap();
    let mut worst = 0f64;
    for (id, k, block) in checks {
        let w = loaded.weights.matrix(id).unwrap();
        let (rows, cols) = w.dims2().unwrap();
        let wv: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        let f = factor_matrix(RowMajor::new(&wv, rows, cols).unwrap(), k).unwrap();
        let gv: Vec<f32> = g.grads[&id]
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let view = f.view();
        let svg = sv_grads(
            &view,
            RowMajor::new(&gv, rows, cols).unwrap(),
            Components::All,
        )
        .unwrap();
        let b = &view.blocks()[block];
        let rank = b.rank();
        // W rebuilt from its factors in f64; then σ_i ± ε changes it by ± ε u_i v_iᵀ.
        let mut base = vec![0f64; rows * cols];
        for bl in view.blocks() {
            for i in 0..bl.rank() {
                let (u, v, s) = (bl.u(i), bl.v(i), bl.s()[i] as f64);
                for r in 0..bl.rows() {
                    let row =
                        &mut base[(bl.row_start() + r) * cols..(bl.row_start() + r + 1) * cols];
                    let ur = s * u[r] as f64;
                    for (x, &vc) in row.iter_mut().zip(v) {
                        *x += ur * vc as f64;
                    }
                }
            }
        }
        for i in [0, rank / 2, rank - 1] {
            let eps = 1e-3 * (b.s()[0] as f64).max(1e-3);
            let loss_at = |delta: f64| {
                let mut wp = base.clone();
                let (u, v) = (b.u(i), b.v(i));
                for r in 0..b.rows() {
                    let row = &mut wp[(b.row_start() + r) * cols..(b.row_start() + r + 1) * cols];
                    for (x, &vc) in row.iter_mut().zip(v) {
                        *x += delta * u[r] as f64 * vc as f64;
                    }
                }
                let t = Tensor::from_vec(wp, (rows, cols), &Device::Cpu).unwrap();
                let m = Decoder::with_matrices(&w64, &BTreeMap::from([(id, t)])).unwrap();
                calibration_loss(&m, &samples, &opts).unwrap()
            };
            let fd = (loss_at(eps) - loss_at(-eps)) / (2.0 * eps);
            let an = svg.blocks[block].grads[i];
            let rel = (fd - an).abs() / fd.abs().max(an.abs()).max(1e-9);
            println!("{} K={k} block {block} σ_{i:<3} = {:.4e}: g analytic {an:+.6e}, finite difference {fd:+.6e}, rel {rel:.1e}", id.hf_name(), b.s()[i]);
            worst = worst.max(rel);
            assert!(
                rel < 5e-2,
                "{} K={k} block {block} component {i}: analytic {an}, finite difference {fd}",
                id.hf_name()
            );
        }
    }
    println!("worst relative error over 9 singular values: {worst:.2e}");
}
