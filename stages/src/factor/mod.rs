//! The `factors(matrix, K)` stage: the thin SVD of each of K consecutive row-blocks
//! of a weight matrix.
//!
//! A matrix W (`rows × cols`, row-major, rows = output features as Hugging Face stores
//! them) is split by [`split_rows`] into K blocks of consecutive rows whose sizes
//! differ by at most one, and each block W_b = U_b S_b V_bᵀ is factored with faer.
//! The result ([`MatrixFactors`], or the borrowed [`FactorsView`]) stores per block
//! Uᵀ (`k × rows_b`), S (`k`, descending) and Vᵀ (`k × cols`), row-major, with
//! `k = min(rows_b, cols)`, so each singular component is contiguous; it serializes to
//! safetensors ([`to_safetensors`], [`from_safetensors`]) and reads back in place from
//! a memory map.
//!
//! # Precision
//!
//! The SVD runs in **f64** by default ([`Precision::F64`]: the f32 block is widened,
//! factored, and the factors rounded back to f32 for storage). Measured on
//! SmolLM2-135M's real MLP matrices (`examples/bench_factor.rs`, K = 1, 4, 16):
//!
//! | SVD in | ‖W − USVᵀ‖_F/‖W‖_F | max \|UᵀU − I\|, \|VᵀV − I\| | time, 1536×576 K=1 |
//! |--------|---------------------|-------------------------------|--------------------|
//! | f32    | 2.5e-6 .. 7.7e-6    | 3.8e-6 .. 1.6e-5              | 0.12 s             |
//! | f64    | 4.2e-8 .. 4.4e-8    | 7e-9 .. 6.3e-8                | 0.21 s             |
//!
//! f32 meets the 1e-5 reconstruction bound with too little margin (7.7e-6 at K = 16,
//! and the error grows with the dimension, so larger models would cross it), and its
//! orthogonality error is two orders of magnitude above f32 rounding. f64 leaves only
//! the rounding of the stored factors, at 1.5..2.3× the f32 time — paid once per
//! (matrix, K), since factors are cached and shared across data sets and rho.
//! [`Precision::F32`] stays available; the precision belongs in the cache key.
//!
//! # Parallelism
//!
//! [`factor_many`] factors many matrices: every (matrix, block) pair is one task.
//! Six SmolLM2 MLP matrices (1536×576 and 576×1536, K = 1) on the 2-core dev machine,
//! modes interleaved, median of 5..7 runs (the machine was shared, load average 2..5,
//! so two threads never got two idle cores):
//!
//! | mode                                        | f32          | f64          |
//! |---------------------------------------------|--------------|--------------|
//! | rayon across matrices/blocks, faer `Par::Seq` | 0.88..1.07 s | 1.70..1.84 s |
//! | one SVD at a time, faer `Par::rayon(0)`     | 1.17..1.23 s | 1.68..2.10 s |
//! | one thread                                  | 0.89..0.92 s | 1.57..1.77 s |
//!
//! faer's internal parallelism was never meaningfully faster than independent SVDs
//! on rayon's pool, and up to 40 % slower in f32 (faer gains little from a second
//! thread at these sizes). Under that load one thread was as fast as either parallel
//! mode; an idle 2-core run, not available here, should favour rayon across tasks
//! further, since those tasks share nothing.
//!
//! It also changes the result: a block factored with faer's parallelism differs in
//! its last bits from the same block factored on one thread (measured: the K = 1
//! factors of SmolLM2's MLP matrices, with 1 and with 2 rayon threads, hashed
//! differently, while K = 2 ones, already sequential per block, were identical). A
//! cache shared by machines with different core counts needs the same bytes for the
//! same key, so [`Parallelism::Auto`] (the default) always factors each block on one
//! thread and runs blocks (and matrices, [`factor_many`]; the engine runs factor
//! actions in parallel) across rayon's pool: the output is bit-identical whatever the
//! thread count. [`Parallelism::WithinSvd`] stays available for speed measurements.
//! The SVD is called through `faer::linalg::svd::svd` with an explicit `Par`, the
//! routine behind `MatRef::thin_svd()`, so no global faer setting is touched.

#[cfg(feature = "cuda")]
pub mod cuda;
mod split;
mod store;
mod svd;
mod types;

pub use split::{split_rows, BlockRange};
pub use store::{from_safetensors, to_safetensors, FORMAT, FORMAT_VERSION};
pub use types::{BlockFactors, BlockView, FactorsView, MatrixFactors};

use faer::Par;
use rayon::prelude::*;

/// What can go wrong while factoring or reading factors.
#[derive(Debug, thiserror::Error)]
pub enum FactorError {
    /// K = 0.
    #[error("the block count K must be at least 1")]
    ZeroBlocks,
    /// K > rows: some block would have no rows.
    #[error("cannot split {rows} rows into {blocks} blocks: a block would be empty")]
    TooManyBlocks { blocks: usize, rows: usize },
    /// The slice length does not match the declared shape.
    #[error("a {rows}x{cols} matrix needs rows*cols values, got {len}")]
    Shape {
        rows: usize,
        cols: usize,
        len: usize,
    },
    /// A matrix with no rows or no columns.
    #[error("a {rows}x{cols} matrix is empty")]
    Empty { rows: usize, cols: usize },
    /// NaN or infinity in the input.
    #[error("non-finite value {value} at row {row}, column {col}")]
    NonFinite { row: usize, col: usize, value: f32 },
    /// faer's SVD did not converge.
    #[error("the SVD of block {block} (rows {start}..{end}) did not converge")]
    NoConvergence {
        block: usize,
        start: usize,
        end: usize,
    },
    /// The GPU SVD failed (feature `cuda`).
    #[error("GPU SVD: {0}")]
    Gpu(String),
    /// The safetensors layer rejected the bytes.
    #[error("factor file: {0}")]
    Safetensors(#[from] safetensors::SafeTensorError),
    /// Factors (read from bytes or assembled from parts) that are not consistent.
    #[error("malformed factors: {message}")]
    Format { message: String },
}

/// A dense `rows × cols` f32 matrix in row-major order, borrowed. Used for weights W
/// and gradients G alike.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowMajor<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
}

impl<'a> RowMajor<'a> {
    /// Wraps `data`, checking `data.len() == rows * cols` and that neither is 0.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Result<Self, FactorError> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(FactorError::Shape {
                rows,
                cols,
                len: data.len(),
            });
        }
        if rows == 0 || cols == 0 {
            return Err(FactorError::Empty { rows, cols });
        }
        Ok(RowMajor { data, rows, cols })
    }
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// All values, row-major.
    pub fn data(&self) -> &'a [f32] {
        self.data
    }
    /// Rows `range.start .. range.end()`, row-major. Panics if out of range.
    pub fn block(&self, range: BlockRange) -> &'a [f32] {
        &self.data[range.start * self.cols..range.end() * self.cols]
    }
    /// The first non-finite value, as an error.
    pub fn check_finite(&self) -> Result<(), FactorError> {
        match self.data.iter().position(|x| !x.is_finite()) {
            None => Ok(()),
            Some(i) => Err(FactorError::NonFinite {
                row: i / self.cols,
                col: i % self.cols,
                value: self.data[i],
            }),
        }
    }
}

/// Floating-point type the SVD runs in (the stored factors are f32 either way).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 throughout: faster, orthogonality error ~1e-5 on 576..1536-wide matrices.
    F32,
    /// f64 SVD of the f32 input, rounded to f32: errors at f32 rounding level.
    #[default]
    F64,
}

impl Precision {
    /// `"f32"` or `"f64"`, for cache keys and reports.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F64 => "f64",
        }
    }
}

/// How [`factor_many`] uses the cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Parallelism {
    /// [`AcrossBlocks`](Parallelism::AcrossBlocks): results do not depend on the
    /// number of threads.
    #[default]
    Auto,
    /// Tasks in parallel on rayon's pool, each SVD sequential.
    AcrossBlocks,
    /// One task at a time, each SVD using faer's rayon parallelism.
    WithinSvd,
    /// One thread.
    Sequential,
}

/// Options of the factor stage. Only `precision` changes the numbers (and belongs in
/// the cache key); `parallelism` changes only the speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FactorOptions {
    pub precision: Precision,
    pub parallelism: Parallelism,
}

/// Block SVD of `w` with `blocks` = K row-blocks, default options.
pub fn factor_matrix(w: RowMajor<'_>, blocks: usize) -> Result<MatrixFactors, FactorError> {
    factor_matrix_with(w, blocks, &FactorOptions::default())
}

/// Block SVD of `w` with `blocks` = K row-blocks.
pub fn factor_matrix_with(
    w: RowMajor<'_>,
    blocks: usize,
    opts: &FactorOptions,
) -> Result<MatrixFactors, FactorError> {
    let mut out = factor_many(&[(w, blocks)], opts);
    out.pop().unwrap_or(Err(FactorError::ZeroBlocks))
}

/// The parallelism actually used.
fn resolve(par: Parallelism) -> Parallelism {
    match par {
        Parallelism::Auto => Parallelism::AcrossBlocks,
        p => p,
    }
}

fn factor_block(
    w: RowMajor<'_>,
    index: usize,
    range: BlockRange,
    precision: Precision,
    par: Par,
) -> Result<BlockFactors, FactorError> {
    let thin = svd::thin_svd_block(w.block(range), range.rows, w.cols(), precision, par).map_err(
        |_| FactorError::NoConvergence {
            block: index,
            start: range.start,
            end: range.end(),
        },
    )?;
    BlockFactors::new(range.start, range.rows, w.cols(), thin.ut, thin.s, thin.vt)
}

/// Block SVD of several matrices, each `(matrix, K)`, results in the same order.
/// One matrix's error does not stop the others.
pub fn factor_many(
    jobs: &[(RowMajor<'_>, usize)],
    opts: &FactorOptions,
) -> Vec<Result<MatrixFactors, FactorError>> {
    let plans: Vec<Result<Vec<BlockRange>, FactorError>> = jobs
        .iter()
        .map(|(w, k)| {
            let ranges = split_rows(w.rows(), *k)?;
            w.check_finite()?;
            Ok(ranges)
        })
        .collect();
    let tasks: Vec<(usize, usize, BlockRange)> = plans
        .iter()
        .enumerate()
        .filter_map(|(j, p)| p.as_ref().ok().map(|r| (j, r)))
        .flat_map(|(j, ranges)| ranges.iter().enumerate().map(move |(b, r)| (j, b, *r)))
        .collect();
    let precision = opts.precision;
    let run = |&(j, b, r): &(usize, usize, BlockRange), par: Par| {
        factor_block(jobs[j].0, b, r, precision, par)
    };
    let results: Vec<Result<BlockFactors, FactorError>> = match resolve(opts.parallelism) {
        Parallelism::AcrossBlocks => tasks.par_iter().map(|t| run(t, Par::Seq)).collect(),
        Parallelism::Sequential => tasks.iter().map(|t| run(t, Par::Seq)).collect(),
        Parallelism::WithinSvd | Parallelism::Auto => {
            tasks.iter().map(|t| run(t, Par::rayon(0))).collect()
        }
    };
    let mut grouped: Vec<Result<Vec<BlockFactors>, FactorError>> = plans
        .into_iter()
        .map(|p| p.map(|r| Vec::with_capacity(r.len())))
        .collect();
    for (&(j, _, _), res) in tasks.iter().zip(results) {
        let failed = match (&mut grouped[j], res) {
            (Ok(blocks), Ok(block)) => {
                blocks.push(block);
                None
            }
            (Ok(_), Err(e)) => Some(e),
            (Err(_), _) => None,
        };
        if let Some(e) = failed {
            grouped[j] = Err(e);
        }
    }
    grouped
        .into_iter()
        .zip(jobs)
        .map(|(blocks, (w, _))| MatrixFactors::new(w.rows(), w.cols(), blocks?))
        .collect()
}

impl MatrixFactors {
    /// Serializes to safetensors bytes (see [`to_safetensors`]).
    pub fn to_safetensors(&self) -> Result<Vec<u8>, FactorError> {
        to_safetensors(&self.view())
    }
}

impl<'a> FactorsView<'a> {
    /// Reads safetensors bytes in place (see [`from_safetensors`]).
    pub fn from_safetensors(bytes: &'a [u8]) -> Result<Self, FactorError> {
        from_safetensors(bytes)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// A seeded random `rows × cols` matrix with entries in [-1, 1).
    pub(crate) fn random_matrix(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..rows * cols)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect()
    }

    /// ‖W − Σ_b U_b S_b V_bᵀ‖_F / ‖W‖_F, accumulated in f64.
    pub(crate) fn reconstruction_error(w: &[f32], f: &FactorsView<'_>) -> f64 {
        let cols = f.cols();
        let (mut err, mut norm) = (0f64, 0f64);
        for b in f.blocks() {
            for r in 0..b.rows() {
                for c in 0..cols {
                    let mut x = 0f64;
                    for i in 0..b.rank() {
                        x += f64::from(b.u(i)[r]) * f64::from(b.s()[i]) * f64::from(b.v(i)[c]);
                    }
                    let wv = f64::from(w[(b.row_start() + r) * cols + c]);
                    err += (wv - x).powi(2);
                    norm += wv * wv;
                }
            }
        }
        (err / norm).sqrt()
    }

    /// max |XXᵀ − I| over the rows of the `k × n` row-major `x`.
    pub(crate) fn orthonormality_error(x: &[f32], k: usize, n: usize) -> f64 {
        let mut worst = 0f64;
        for i in 0..k {
            for j in 0..=i {
                let d: f64 = (0..n)
                    .map(|t| f64::from(x[i * n + t]) * f64::from(x[j * n + t]))
                    .sum();
                let want = if i == j { 1.0 } else { 0.0 };
                worst = worst.max((d - want).abs());
            }
        }
        worst
    }

    #[test]
    fn random_matrices_reconstruct_in_both_precisions() {
        for (rows, cols, k) in [
            (40, 25, 1),
            (40, 25, 3),
            (25, 40, 4),
            (17, 17, 17),
            (9, 3, 2),
        ] {
            let w = random_matrix(rows, cols, (rows * 100 + k) as u64);
            for precision in [Precision::F32, Precision::F64] {
                let opts = FactorOptions {
                    precision,
                    ..Default::default()
                };
                let f =
                    factor_matrix_with(RowMajor::new(&w, rows, cols).unwrap(), k, &opts).unwrap();
                assert_eq!(f.num_blocks(), k);
                let v = f.view();
                let err = reconstruction_error(&w, &v);
                assert!(
                    err < 1e-5,
                    "{rows}x{cols} K={k} {precision:?}: rel err {err:e}"
                );
                for b in v.blocks() {
                    assert_eq!(b.rank(), b.rows().min(cols));
                    assert!(orthonormality_error(b.ut(), b.rank(), b.rows()) < 1e-5);
                    assert!(orthonormality_error(b.vt(), b.rank(), cols) < 1e-5);
                    assert!(b.s().windows(2).all(|p| p[0] >= p[1]));
                }
            }
        }
    }

    #[test]
    fn all_parallelism_modes_agree() {
        let a = random_matrix(30, 20, 1);
        let b = random_matrix(20, 30, 2);
        let jobs = [
            (RowMajor::new(&a, 30, 20).unwrap(), 3),
            (RowMajor::new(&b, 20, 30).unwrap(), 2),
        ];
        let reference: Vec<_> = factor_many(
            &jobs,
            &FactorOptions {
                parallelism: Parallelism::Sequential,
                ..Default::default()
            },
        )
        .into_iter()
        .map(Result::unwrap)
        .collect();
        for parallelism in [
            Parallelism::Auto,
            Parallelism::AcrossBlocks,
            Parallelism::WithinSvd,
        ] {
            let out = factor_many(
                &jobs,
                &FactorOptions {
                    parallelism,
                    ..Default::default()
                },
            );
            for (f, r) in out.into_iter().zip(&reference) {
                let f = f.unwrap();
                for (x, y) in f.blocks().iter().zip(r.blocks()) {
                    let ds = x
                        .s()
                        .iter()
                        .zip(y.s())
                        .map(|(p, q)| (p - q).abs())
                        .fold(0f32, f32::max);
                    assert!(ds < 1e-5, "{parallelism:?}: singular values differ by {ds}");
                }
            }
        }
    }

    #[test]
    fn bad_input_is_an_error_per_job() {
        assert!(matches!(
            RowMajor::new(&[1.0; 5], 2, 3),
            Err(FactorError::Shape { len: 5, .. })
        ));
        assert!(matches!(
            RowMajor::new(&[], 0, 3),
            Err(FactorError::Empty { .. })
        ));
        assert!(matches!(
            RowMajor::new(&[], 3, 0),
            Err(FactorError::Empty { .. })
        ));
        assert!(RowMajor::new(&[], usize::MAX, 2).is_err());
        let mut w = random_matrix(4, 3, 5);
        let good = w.clone();
        w[7] = f32::NAN;
        let out = factor_many(
            &[
                (RowMajor::new(&w, 4, 3).unwrap(), 2),
                (RowMajor::new(&good, 4, 3).unwrap(), 0),
                (RowMajor::new(&good, 4, 3).unwrap(), 5),
                (RowMajor::new(&good, 4, 3).unwrap(), 4),
            ],
            &FactorOptions::default(),
        );
        assert!(matches!(
            out[0],
            Err(FactorError::NonFinite { row: 2, col: 1, .. })
        ));
        assert!(matches!(out[1], Err(FactorError::ZeroBlocks)));
        assert!(matches!(out[2], Err(FactorError::TooManyBlocks { .. })));
        let f = out[3].as_ref().unwrap();
        assert!(f.blocks().iter().all(|b| b.rows() == 1 && b.rank() == 1));
        assert!(factor_many(&[], &FactorOptions::default()).is_empty());
    }
}
