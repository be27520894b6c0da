//! Candidate matrices from cached factors: keep the top r_b components of every
//! row-block (r_b from [`rank_kept`](crate::score::rank_kept) at fraction rho, or
//! given explicitly).
//!
//! - Dense: W' = the blocks U_b[:, :r_b] · diag(S_b[:r_b]) · V_bᵀ[:r_b, :] stacked
//!   vertically, row-major `rows × cols` f32 ([`dense_candidate`]).
//! - Factored: per block A_b = U_b[:, :r_b] · diag(S_b[:r_b]) (`rows_b × r_b`) and
//!   B_b = V_bᵀ[:r_b, :] (`r_b × cols`), so W'_b = A_b B_b ([`factored_candidate`]),
//!   with its parameter count against the dense matrix's ([`ParamCount`]).
//!
//! The products run in f32 with faer's matmul (one output element sums r_b ≤ 1536
//! products; the error is ~1e-7 relative, far below the factors' own rounding).
//! Blocks are built in parallel on rayon's pool when there are at least as many
//! blocks as threads, otherwise each product uses faer's own parallelism.

use crate::factor::{BlockView, FactorsView};
use crate::score::{ranks_kept, ScoreError};
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// What can go wrong while building a candidate.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    /// rho outside (0, 1].
    #[error(transparent)]
    Rank(#[from] ScoreError),
    /// Explicit ranks that do not fit the factors.
    #[error("ranks: {0}")]
    Ranks(String),
}

/// Checks explicit ranks: one per block, each in `1 ..= rank of the block`.
fn check_ranks(factors: &FactorsView<'_>, ranks: &[usize]) -> Result<(), CompressError> {
    if ranks.len() != factors.num_blocks() {
        return Err(CompressError::Ranks(format!(
            "{} ranks for {} blocks",
            ranks.len(),
            factors.num_blocks()
        )));
    }
    for (b, (block, &r)) in factors.blocks().iter().zip(ranks).enumerate() {
        if r == 0 || r > block.rank() {
            return Err(CompressError::Ranks(format!(
                "block {b}: rank {r} is outside 1..={}",
                block.rank()
            )));
        }
    }
    Ok(())
}

/// Parallelism for each of `tasks` independent products.
fn inner_par(tasks: usize) -> Par {
    if tasks >= rayon::current_num_threads() {
        Par::Seq
    } else {
        Par::rayon(0)
    }
}

/// A_b = U_b[:, :r] · diag(S_b[:r]), `rows_b × r` row-major.
fn scaled_u(block: &BlockView<'_>, r: usize) -> Vec<f32> {
    let rows = block.rows();
    let mut a = vec![0f32; rows * r];
    for i in 0..r {
        let (u, s) = (block.u(i), block.s()[i]);
        for (j, &x) in u.iter().enumerate() {
            a[j * r + i] = x * s;
        }
    }
    a
}

/// out (`rows_b × cols`, row-major) = A (`rows_b × r`) · Vᵀ[:r, :].
fn product_into(out: &mut [f32], a: &[f32], block: &BlockView<'_>, r: usize, par: Par) {
    let (rows, cols) = (block.rows(), block.cols());
    let lhs = MatRef::from_row_major_slice(a, rows, r);
    let rhs = MatRef::from_row_major_slice(&block.vt()[..r * cols], r, cols);
    let dst = MatMut::from_row_major_slice_mut(out, rows, cols);
    matmul(dst, Accum::Replace, lhs, rhs, 1.0f32, par);
}

/// The dense candidate at fraction `rho` (rank per block from
/// [`rank_kept`](crate::score::rank_kept)).
pub fn dense_candidate(factors: &FactorsView<'_>, rho: f64) -> Result<Vec<f32>, CompressError> {
    let ranks = ranks_kept(factors, rho)?;
    dense_with_ranks(factors, &ranks)
}

/// The dense candidate keeping `ranks[b]` components of block b.
pub fn dense_with_ranks(
    factors: &FactorsView<'_>,
    ranks: &[usize],
) -> Result<Vec<f32>, CompressError> {
    check_ranks(factors, ranks)?;
    let cols = factors.cols();
    let mut out = vec![0f32; factors.rows() * cols];
    // Split the output into the blocks' row ranges.
    let mut parts = Vec::with_capacity(factors.num_blocks());
    let mut rest = out.as_mut_slice();
    for block in factors.blocks() {
        let (head, tail) = rest.split_at_mut(block.rows() * cols);
        parts.push(head);
        rest = tail;
    }
    let par = inner_par(factors.num_blocks());
    parts
        .into_par_iter()
        .zip(factors.blocks().par_iter().zip(ranks.par_iter()))
        .for_each(|(dst, (block, &r))| {
            let a = scaled_u(block, r);
            product_into(dst, &a, block, r, par);
        });
    Ok(out)
}

/// One block of a factored candidate: W'_b = A_b · B_b.
#[derive(Debug, Clone, PartialEq)]
pub struct FactoredBlock {
    /// First row of the block in the matrix.
    pub row_start: usize,
    /// Rows of the block.
    pub rows: usize,
    /// Columns (same as the matrix).
    pub cols: usize,
    /// Rank kept, r_b.
    pub rank: usize,
    /// A_b = U_b[:, :r_b] · diag(S_b[:r_b]), `rows × rank` row-major.
    pub a: Vec<f32>,
    /// B_b = V_bᵀ[:r_b, :], `rank × cols` row-major.
    pub b: Vec<f32>,
}

/// A factored candidate: every block as A_b · B_b.
#[derive(Debug, Clone, PartialEq)]
pub struct FactoredMatrix {
    pub rows: usize,
    pub cols: usize,
    pub blocks: Vec<FactoredBlock>,
}

/// Parameters of a factored matrix against the dense one it replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ParamCount {
    /// Σ_b r_b · (rows_b + cols).
    pub factored: usize,
    /// rows · cols.
    pub dense: usize,
}

impl ParamCount {
    /// factored / dense (below 1 means the factored form is smaller).
    pub fn ratio(&self) -> f64 {
        self.factored as f64 / self.dense as f64
    }
    /// Whether storing A_b and B_b takes fewer parameters than W.
    pub fn saves(&self) -> bool {
        self.factored < self.dense
    }
}

/// Parameter count of a factored form with `ranks[b]` kept in blocks of
/// `block_rows[b]` rows, against the dense `Σ block_rows × cols`.
pub fn param_count(block_rows: &[usize], cols: usize, ranks: &[usize]) -> ParamCount {
    ParamCount {
        factored: block_rows
            .iter()
            .zip(ranks)
            .map(|(&m, &r)| r * (m + cols))
            .sum(),
        dense: block_rows.iter().sum::<usize>() * cols,
    }
}

impl FactoredMatrix {
    /// Parameters of the factored form against the dense matrix.
    pub fn param_count(&self) -> ParamCount {
        let rows: Vec<usize> = self.blocks.iter().map(|b| b.rows).collect();
        let ranks: Vec<usize> = self.blocks.iter().map(|b| b.rank).collect();
        param_count(&rows, self.cols, &ranks)
    }

    /// The dense matrix A_b · B_b stacked, row-major. Errors if the blocks' shapes do
    /// not add up (the fields are public, so this is checked).
    pub fn to_dense(&self) -> Result<Vec<f32>, CompressError> {
        let mut row = 0;
        for (i, blk) in self.blocks.iter().enumerate() {
            let ok = blk.row_start == row
                && blk.cols == self.cols
                && Some(blk.a.len()) == blk.rows.checked_mul(blk.rank)
                && Some(blk.b.len()) == blk.rank.checked_mul(blk.cols);
            if !ok {
                return Err(CompressError::Ranks(format!(
                    "factored block {i} is inconsistent with rows {row}.. of a {}x{} matrix",
                    self.rows, self.cols
                )));
            }
            row += blk.rows;
        }
        if row != self.rows {
            return Err(CompressError::Ranks(format!(
                "factored blocks cover {row} rows of {}",
                self.rows
            )));
        }
        let mut out = vec![0f32; self.rows * self.cols];
        let par = inner_par(self.blocks.len());
        let mut rest = out.as_mut_slice();
        for blk in &self.blocks {
            let (head, tail) = rest.split_at_mut(blk.rows * self.cols);
            rest = tail;
            let lhs = MatRef::from_row_major_slice(&blk.a, blk.rows, blk.rank);
            let rhs = MatRef::from_row_major_slice(&blk.b, blk.rank, blk.cols);
            let dst = MatMut::from_row_major_slice_mut(head, blk.rows, blk.cols);
            matmul(dst, Accum::Replace, lhs, rhs, 1.0f32, par);
        }
        Ok(out)
    }
}

/// The factored candidate at fraction `rho`.
pub fn factored_candidate(
    factors: &FactorsView<'_>,
    rho: f64,
) -> Result<FactoredMatrix, CompressError> {
    let ranks = ranks_kept(factors, rho)?;
    factored_with_ranks(factors, &ranks)
}

/// The factored candidate keeping `ranks[b]` components of block b.
pub fn factored_with_ranks(
    factors: &FactorsView<'_>,
    ranks: &[usize],
) -> Result<FactoredMatrix, CompressError> {
    check_ranks(factors, ranks)?;
    let blocks = factors
        .blocks()
        .iter()
        .zip(ranks)
        .map(|(block, &r)| FactoredBlock {
            row_start: block.row_start(),
            rows: block.rows(),
            cols: block.cols(),
            rank: r,
            a: scaled_u(block, r),
            b: block.vt()[..r * block.cols()].to_vec(),
        })
        .collect();
    Ok(FactoredMatrix {
        rows: factors.rows(),
        cols: factors.cols(),
        blocks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::factor::tests::random_matrix;
    use crate::factor::{factor_matrix, RowMajor};
    use crate::score::rank_kept;

    fn rel_err(a: &[f32], b: &[f32]) -> f64 {
        let num: f64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
            .sum();
        let den: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum();
        (num / den).sqrt()
    }

    #[test]
    fn rho_one_reproduces_w() {
        for (rows, cols, k) in [
            (64, 48, 1),
            (64, 48, 4),
            (48, 96, 3),
            (33, 33, 5),
            (100, 7, 2),
        ] {
            let w = random_matrix(rows, cols, 21 + k as u64);
            let f = factor_matrix(RowMajor::new(&w, rows, cols).unwrap(), k).unwrap();
            let d = dense_candidate(&f.view(), 1.0).unwrap();
            let e = rel_err(&w, &d);
            assert!(e < 1e-5, "{rows}x{cols} K={k}: {e:e}");
            let fm = factored_candidate(&f.view(), 1.0).unwrap();
            assert!(rel_err(&w, &fm.to_dense().unwrap()) < 1e-5);
        }
    }

    /// Numerical rank of a row-major matrix: singular values above 1e-4 · σ_max.
    fn numerical_rank(x: &[f32], rows: usize, cols: usize) -> usize {
        let s = MatRef::from_row_major_slice(x, rows, cols)
            .singular_values()
            .unwrap();
        s.iter().filter(|&&v| v > 1e-4 * s[0]).count()
    }

    #[test]
    fn tiny_rho_keeps_rank_one_per_block() {
        let (rows, cols) = (40, 30);
        let w = random_matrix(rows, cols, 99);
        for k in [1, 2, 5] {
            let f = factor_matrix(RowMajor::new(&w, rows, cols).unwrap(), k).unwrap();
            let v = f.view();
            let d = dense_candidate(&v, 1e-6).unwrap();
            for block in v.blocks() {
                let part = &d[block.row_start() * cols..(block.row_start() + block.rows()) * cols];
                assert_eq!(numerical_rank(part, block.rows(), cols), 1, "K={k}");
            }
            // The whole matrix has rank ≤ K.
            assert_eq!(numerical_rank(&d, rows, cols), k);
            let fm = factored_candidate(&v, 1e-6).unwrap();
            assert!(fm
                .blocks
                .iter()
                .all(|b| b.rank == 1 && b.a.len() == b.rows && b.b.len() == cols));
        }
    }

    #[test]
    fn truncation_matches_the_direct_sum() {
        let (rows, cols, k) = (21, 17, 2);
        let w = random_matrix(rows, cols, 5);
        let f = factor_matrix(RowMajor::new(&w, rows, cols).unwrap(), k).unwrap();
        let v = f.view();
        let rho = 0.3;
        let d = dense_candidate(&v, rho).unwrap();
        for block in v.blocks() {
            let r = rank_kept(block.rows(), cols, rho).unwrap();
            for i in 0..block.rows() {
                for j in 0..cols {
                    let want: f64 = (0..r)
                        .map(|c| {
                            f64::from(block.u(c)[i])
                                * f64::from(block.s()[c])
                                * f64::from(block.v(c)[j])
                        })
                        .sum();
                    let got = f64::from(d[(block.row_start() + i) * cols + j]);
                    assert!((want - got).abs() < 1e-5, "{want} vs {got}");
                }
            }
        }
        let fm = factored_candidate(&v, rho).unwrap();
        assert!(rel_err(&d, &fm.to_dense().unwrap()) < 1e-6);
    }

    #[test]
    fn explicit_ranks_and_errors() {
        let (rows, cols) = (10, 6);
        let w = random_matrix(rows, cols, 8);
        let f = factor_matrix(RowMajor::new(&w, rows, cols).unwrap(), 2).unwrap();
        let v = f.view();
        assert!(dense_with_ranks(&v, &[2, 3]).is_ok());
        assert!(matches!(
            dense_with_ranks(&v, &[2]),
            Err(CompressError::Ranks(_))
        ));
        assert!(matches!(
            dense_with_ranks(&v, &[0, 1]),
            Err(CompressError::Ranks(_))
        ));
        assert!(matches!(
            factored_with_ranks(&v, &[6, 1]),
            Err(CompressError::Ranks(_))
        ));
        assert!(matches!(
            dense_candidate(&v, 0.0),
            Err(CompressError::Rank(ScoreError::Rho(_)))
        ));
        assert!(matches!(
            factored_candidate(&v, 1.5),
            Err(CompressError::Rank(_))
        ));
    }

    #[test]
    fn parameter_counts() {
        let p = param_count(&[288, 288], 1536, &[10, 20]);
        assert_eq!(p.dense, 576 * 1536);
        assert_eq!(p.factored, 10 * (288 + 1536) + 20 * (288 + 1536));
        assert!(p.saves());
        assert!((p.ratio() - p.factored as f64 / p.dense as f64).abs() < 1e-15);
        let full = param_count(&[576], 1536, &[576]);
        assert!(!full.saves());
        let (rows, cols) = (12, 8);
        let w = random_matrix(rows, cols, 1);
        let f = factor_matrix(RowMajor::new(&w, rows, cols).unwrap(), 3).unwrap();
        let fm = factored_with_ranks(&f.view(), &[1, 2, 3]).unwrap();
        assert_eq!(
            fm.param_count(),
            ParamCount {
                factored: 12 + 24 + 36,
                dense: 96
            }
        );
        let mut bad = fm.clone();
        bad.blocks[1].a.pop();
        assert!(bad.to_dense().is_err());
        let mut bad = fm.clone();
        bad.blocks.pop();
        assert!(bad.to_dense().is_err());
    }
}
