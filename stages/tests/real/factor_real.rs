//! Block SVD, scores and candidates on real SmolLM2-135M-Instruct matrices (the GGUF
//! is fetched by `assets::smollm2_gguf` if absent).
//!
//! For q, k, o, gate and down of layers 3 and 20 and K in {1, 2, 4, 8}: relative
//! reconstruction error ‖W − USVᵀ‖_F/‖W‖_F < 1e-5, max |UᵀU − I| and |VᵀV − I| < 1e-4,
//! singular values descending; plus a safetensors round trip, rho = 1 reproducing W,
//! and partial singular-value gradients agreeing with the full ones.

use c2i_stages::assets::smollm2_gguf;
use c2i_stages::compress::dense_candidate;
use c2i_stages::factor::{factor_many, FactorOptions, FactorsView, MatrixFactors, RowMajor};
use c2i_stages::model::{MatrixId, MatrixKind};
use c2i_stages::score::{sv_grads, Components};
use candle_core::quantized::gguf_file;
use candle_core::Device;
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

struct Dense {
    id: MatrixId,
    data: Vec<f32>,
    rows: usize,
    cols: usize,
}

fn load(ids: &[MatrixId]) -> Vec<Dense> {
    let path = smollm2_gguf().expect("SmolLM2 GGUF");
    let mut f = std::fs::File::open(&path).expect("open GGUF");
    let ct = gguf_file::Content::read(&mut f).expect("read GGUF");
    ids.iter()
        .map(|&id| {
            let t = ct
                .tensor(&mut f, &id.gguf_name(), &Device::Cpu)
                .and_then(|q| q.dequantize(&Device::Cpu))
                .expect("dequantize");
            let (rows, cols) = t.dims2().expect("2-D");
            let data = t
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .expect("f32");
            Dense {
                id,
                data,
                rows,
                cols,
            }
        })
        .collect()
}

fn ids() -> Vec<MatrixId> {
    use MatrixKind::*;
    [3, 20]
        .into_iter()
        .flat_map(|l| [Q, K, O, Gate, Down].map(|k| MatrixId::new(l, k)))
        .collect()
}

/// max |XXᵀ − I| for the `k × n` row-major `x`, in f64.
fn orthonormality_error(x: &[f32], k: usize, n: usize) -> f64 {
    let m = Mat::<f64>::from_fn(k, n, |i, j| f64::from(x[i * n + j]));
    let mut g = Mat::<f64>::zeros(k, k);
    matmul(&mut g, Accum::Replace, &m, m.transpose(), 1.0, Par::Seq);
    let mut worst = 0f64;
    for i in 0..k {
        for j in 0..k {
            worst = worst.max((g[(i, j)] - if i == j { 1.0 } else { 0.0 }).abs());
        }
    }
    worst
}

/// ‖W − Σ_b U_b S_b V_bᵀ‖_F / ‖W‖_F, in f64.
fn reconstruction_error(w: &Dense, f: &FactorsView<'_>) -> f64 {
    let (mut err2, mut norm2) = (0f64, 0f64);
    for b in f.blocks() {
        let k = b.rank();
        let us = Mat::<f64>::from_fn(b.rows(), k, |i, j| {
            f64::from(b.u(j)[i]) * f64::from(b.s()[j])
        });
        let vt = Mat::<f64>::from_fn(k, w.cols, |i, j| f64::from(b.v(i)[j]));
        let mut rec = Mat::<f64>::zeros(b.rows(), w.cols);
        matmul(&mut rec, Accum::Replace, &us, &vt, 1.0, Par::Seq);
        for i in 0..b.rows() {
            for j in 0..w.cols {
                let x = f64::from(w.data[(b.row_start() + i) * w.cols + j]);
                err2 += (x - rec[(i, j)]).powi(2);
                norm2 += x * x;
            }
        }
    }
    (err2 / norm2).sqrt()
}

#[test]
fn block_svd_of_real_matrices() {
    let mats = load(&ids());
    let ks = [1, 2, 4, 8];
    let jobs: Vec<(RowMajor<'_>, usize)> = mats
        .iter()
        .flat_map(|m| ks.map(|k| (RowMajor::new(&m.data, m.rows, m.cols).expect("shape"), k)))
        .collect();
    let results: Vec<MatrixFactors> = factor_many(&jobs, &FactorOptions::default())
        .into_iter()
        .map(|r| r.expect("factor"))
        .collect();
    let mut worst = (0f64, 0f64, 0f64);
    for (i, f) in results.iter().enumerate() {
        let (m, k) = (&mats[i / ks.len()], ks[i % ks.len()]);
        let v = f.view();
        assert_eq!((v.rows(), v.cols(), v.num_blocks()), (m.rows, m.cols, k));
        let e = reconstruction_error(m, &v);
        assert!(
            e < 1e-5,
            "{} K={k}: relative reconstruction error {e:e}",
            m.id
        );
        worst.0 = worst.0.max(e);
        for (b, block) in v.blocks().iter().enumerate() {
            let ou = orthonormality_error(block.ut(), block.rank(), block.rows());
            let ov = orthonormality_error(block.vt(), block.rank(), block.cols());
            assert!(
                ou < 1e-4,
                "{} K={k} block {b}: max |UᵀU − I| = {ou:e}",
                m.id
            );
            assert!(
                ov < 1e-4,
                "{} K={k} block {b}: max |VᵀV − I| = {ov:e}",
                m.id
            );
            worst.1 = worst.1.max(ou);
            worst.2 = worst.2.max(ov);
            assert!(
                block.s().windows(2).all(|p| p[0] >= p[1]),
                "{} K={k} block {b}: singular values not descending",
                m.id
            );
        }
    }
    eprintln!(
        "worst over {} factorizations: rel. err {:.1e}, |UᵀU−I| {:.1e}, |VᵀV−I| {:.1e}",
        results.len(),
        worst.0,
        worst.1,
        worst.2
    );
}

#[test]
fn real_factors_store_score_and_rebuild() {
    let m = &load(&[MatrixId::new(3, MatrixKind::Down)])[0];
    let w = RowMajor::new(&m.data, m.rows, m.cols).expect("shape");
    let f = factor_many(&[(w, 4)], &FactorOptions::default())
        .pop()
        .expect("one result")
        .expect("factor");

    // Safetensors round trip, read in place.
    let bytes = f.to_safetensors().expect("serialize");
    let v = FactorsView::from_safetensors(&bytes).expect("deserialize");
    assert!(v.is_borrowed());
    assert_eq!(v.to_owned_factors(), f);

    // rho = 1 gives W back.
    let d = dense_candidate(&v, 1.0).expect("candidate");
    let (num, den) = d.iter().zip(&m.data).fold((0f64, 0f64), |(n, s), (a, b)| {
        (
            n + (f64::from(*a) - f64::from(*b)).powi(2),
            s + f64::from(*b).powi(2),
        )
    });
    assert!((num / den).sqrt() < 1e-5);

    // Gradients for only the dropped components equal the tail of all of them.
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let g: Vec<f32> = (0..m.rows * m.cols)
        .map(|_| rng.random_range(-1e-3..1e-3))
        .collect();
    let g = RowMajor::new(&g, m.rows, m.cols).expect("shape");
    let all = sv_grads(&v, g, Components::All).expect("all");
    let part = sv_grads(&v, g, Components::DroppedAt(0.1)).expect("part");
    for (a, p) in all.blocks.iter().zip(&part.blocks) {
        assert_eq!(&a.grads[p.first..], &p.grads[..]);
    }
}
