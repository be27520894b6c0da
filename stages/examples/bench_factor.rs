//! Block SVD timings on SmolLM2-135M's real MLP matrices.
//!
//! `cargo run --release -p c2i-stages --example bench_factor [-- REPEATS]`
//!
//! Prints, for the MLP shapes 1536×576 (`ffn_up`) and 576×1536 (`ffn_down`), K in
//! {1, 4, 16} and both SVD precisions: the median wall time over REPEATS runs
//! (default 3) with the default parallelism, and the accuracy (relative
//! reconstruction error, max |UᵀU − I|, max |VᵀV − I|). Then it compares the
//! parallelism modes on six matrices (gate, up, down of layers 0 and 1, K = 1).
//! Set `C2I_SMOLLM2_GGUF` to use a local GGUF instead of the fetched asset.

use c2i_stages::compress::dense_candidate;
use c2i_stages::factor::{
    factor_many, factor_matrix_with, FactorOptions, FactorsView, MatrixFactors, Parallelism,
    Precision, RowMajor,
};
use c2i_stages::score::{sv_grads, Components};
use candle_core::quantized::gguf_file;
use candle_core::Device;
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::Instant;

type Res<T> = Result<T, Box<dyn Error>>;

/// A dense matrix read from the GGUF: (values row-major, rows, cols).
struct Dense {
    data: Vec<f32>,
    rows: usize,
    cols: usize,
}

fn model_path() -> Res<PathBuf> {
    match std::env::var_os("C2I_SMOLLM2_GGUF") {
        Some(p) => Ok(PathBuf::from(p)),
        None => Ok(c2i_stages::assets::smollm2_gguf()?),
    }
}

fn load(path: &Path, names: &[String]) -> Res<Vec<Dense>> {
    let mut f = std::fs::File::open(path)?;
    let ct = gguf_file::Content::read(&mut f)?;
    names
        .iter()
        .map(|name| {
            let t = ct
                .tensor(&mut f, name, &Device::Cpu)?
                .dequantize(&Device::Cpu)?;
            let (rows, cols) = t.dims2()?;
            Ok(Dense {
                data: t.flatten_all()?.to_vec1::<f32>()?,
                rows,
                cols,
            })
        })
        .collect()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// (relative reconstruction error, max |UᵀU − I|, max |VᵀV − I|), in f64 via faer.
fn accuracy(w: &Dense, f: &FactorsView<'_>) -> (f64, f64, f64) {
    let (mut err2, mut norm2, mut ou, mut ov) = (0f64, 0f64, 0f64, 0f64);
    for b in f.blocks() {
        let k = b.rank();
        let ut = Mat::<f64>::from_fn(k, b.rows(), |i, j| f64::from(b.ut()[i * b.rows() + j]));
        let vt = Mat::<f64>::from_fn(k, w.cols, |i, j| f64::from(b.vt()[i * w.cols + j]));
        let us = Mat::<f64>::from_fn(b.rows(), k, |i, j| ut[(j, i)] * f64::from(b.s()[j]));
        let mut rec = Mat::<f64>::zeros(b.rows(), w.cols);
        matmul(&mut rec, Accum::Replace, &us, &vt, 1.0, Par::Seq);
        for i in 0..b.rows() {
            for j in 0..w.cols {
                let x = f64::from(w.data[(b.row_start() + i) * w.cols + j]);
                err2 += (x - rec[(i, j)]).powi(2);
                norm2 += x * x;
            }
        }
        for (x, o) in [(&ut, &mut ou), (&vt, &mut ov)] {
            let mut g = Mat::<f64>::zeros(k, k);
            matmul(&mut g, Accum::Replace, x, x.transpose(), 1.0, Par::Seq);
            for i in 0..k {
                for j in 0..k {
                    let d = (g[(i, j)] - if i == j { 1.0 } else { 0.0 }).abs();
                    *o = o.max(d);
                }
            }
        }
    }
    ((err2 / norm2).sqrt(), ou, ov)
}

fn time_one(
    w: &Dense,
    k: usize,
    opts: &FactorOptions,
    repeats: usize,
) -> Res<(f64, MatrixFactors)> {
    let m = RowMajor::new(&w.data, w.rows, w.cols)?;
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..repeats {
        let t = Instant::now();
        let f = factor_matrix_with(m, k, opts)?;
        times.push(t.elapsed().as_secs_f64());
        last = Some(f);
    }
    let f = last.ok_or("no repeats")?;
    Ok((median(times), f))
}

fn tables(path: &Path, repeats: usize) -> Res<()> {
    let shapes = load(
        path,
        &[
            "blk.0.ffn_up.weight".to_string(),
            "blk.0.ffn_down.weight".to_string(),
        ],
    )?;
    println!();
    println!("| shape     | K  | precision | time (s) | rel. err | max|UᵀU−I| | max|VᵀV−I| |");
    println!("|-----------|----|-----------|----------|----------|------------|------------|");
    for w in &shapes {
        for k in [1, 4, 16] {
            for precision in [Precision::F32, Precision::F64] {
                let opts = FactorOptions {
                    precision,
                    parallelism: Parallelism::Auto,
                };
                let (t, f) = time_one(w, k, &opts, repeats)?;
                let (e, ou, ov) = accuracy(w, &f.view());
                println!(
                    "| {:>4}x{:<4} | {k:>2} | {:<9} | {t:>8.3} | {e:>8.1e} | {ou:>10.1e} | {ov:>10.1e} |",
                    w.rows,
                    w.cols,
                    precision.name()
                );
            }
        }
    }

    // Scoring and candidates on the down projection (576x1536) with a random gradient.
    let down = &shapes[1];
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let g: Vec<f32> = (0..down.rows * down.cols)
        .map(|_| rng.random_range(-1e-3..1e-3))
        .collect();
    let g = RowMajor::new(&g, down.rows, down.cols)?;
    println!();
    println!(
        "scoring and candidates, {}x{} (f64 factors), median of {repeats}:",
        down.rows, down.cols
    );
    println!("| K  | sv-grads, all (s) | sv-grads, dropped at rho=0.1 (s) | dense candidate rho=0.1 (s) |");
    println!("|----|-------------------|----------------------------------|-----------------------------|");
    for k in [1, 4, 16] {
        let (_, f) = time_one(down, k, &FactorOptions::default(), 1)?;
        let v = f.view();
        let time = |run: &dyn Fn() -> Res<()>| -> Res<f64> {
            let mut times = Vec::new();
            for _ in 0..repeats {
                let t = Instant::now();
                run()?;
                times.push(t.elapsed().as_secs_f64());
            }
            Ok(median(times))
        };
        let all = time(&|| Ok(sv_grads(&v, g, Components::All).map(drop)?))?;
        let dropped = time(&|| Ok(sv_grads(&v, g, Components::DroppedAt(0.1)).map(drop)?))?;
        let dense = time(&|| Ok(dense_candidate(&v, 0.1).map(drop)?))?;
        println!("| {k:>2} | {all:>17.3} | {dropped:>32.3} | {dense:>27.3} |");
    }

    Ok(())
}

fn main() -> Res<()> {
    // Arguments: [REPEATS] [parallel] (the second runs only the parallelism comparison).
    let parallel_only = std::env::args().nth(2).as_deref() == Some("parallel");
    let repeats: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(3)
        .max(1);
    let path = model_path()?;
    println!(
        "model: {}; rayon threads: {}; median of {repeats}",
        path.display(),
        rayon::current_num_threads()
    );

    if !parallel_only {
        tables(&path, repeats)?;
    }
    let names: Vec<String> = [0, 1]
        .iter()
        .flat_map(|l| ["ffn_gate", "ffn_up", "ffn_down"].map(|k| format!("blk.{l}.{k}.weight")))
        .collect();
    let mats = load(&path, &names)?;
    println!();
    let jobs: Vec<(RowMajor<'_>, usize)> = mats
        .iter()
        .map(|w| Ok((RowMajor::new(&w.data, w.rows, w.cols)?, 1)))
        .collect::<Res<_>>()?;
    let modes = [
        (
            "across matrices (rayon, faer seq)",
            Parallelism::AcrossBlocks,
        ),
        ("one at a time (faer rayon)", Parallelism::WithinSvd),
        ("sequential (1 thread)", Parallelism::Sequential),
    ];
    // The modes run interleaved (A B C A B C ...) so that load from other processes
    // on a shared machine falls on all of them alike.
    let par_repeats = repeats.max(5);
    println!();
    println!(
        "6 MLP matrices (gate, up, down of layers 0-1), K = 1, interleaved, median of {par_repeats}:"
    );
    for precision in [Precision::F32, Precision::F64] {
        let mut times = vec![Vec::new(); modes.len()];
        for _ in 0..par_repeats {
            for (m, (_, parallelism)) in modes.iter().enumerate() {
                let opts = FactorOptions {
                    precision,
                    parallelism: *parallelism,
                };
                let t = Instant::now();
                for r in factor_many(&jobs, &opts) {
                    r?;
                }
                times[m].push(t.elapsed().as_secs_f64());
            }
        }
        let mut line = format!("  {}:", precision.name());
        for ((label, _), t) in modes.iter().zip(times) {
            line += &format!("  {label} {:.2} s;", median(t));
        }
        println!("{line}");
    }
    Ok(())
}
