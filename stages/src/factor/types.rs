//! The factor types: an owned form ([`MatrixFactors`], [`BlockFactors`]) that the SVD
//! produces, and a borrowed view ([`FactorsView`], [`BlockView`]) that everything
//! downstream reads, so scores and candidates work the same on a fresh factorization
//! and on a memory-mapped safetensors blob.
//!
//! Layout per block of `rows_b` rows, with `k = min(rows_b, cols)`:
//! - `ut`: Uᵀ, `k × rows_b` row-major: row i is the left singular vector u_i;
//! - `s`: the `k` singular values, descending;
//! - `vt`: Vᵀ, `k × cols` row-major: row i is the right singular vector v_i.
//!
//! Each component (u_i, σ_i, v_i) is contiguous, so a reader that needs only the
//! dropped components touches only those rows of a memory map.

use super::split::{split_rows, BlockRange};
use super::FactorError;
use std::borrow::Cow;

/// Checks the lengths of one block's factors against its shape.
pub(crate) fn check_block(
    block: Option<usize>,
    rows: usize,
    cols: usize,
    ut: usize,
    s: usize,
    vt: usize,
) -> Result<(), FactorError> {
    let k = rows.min(cols);
    let name = block.map_or_else(|| "block".to_string(), |b| format!("block {b}"));
    let bad = |what: &str, expected: usize, found: usize| FactorError::Format {
        message: format!("{name} ({rows}x{cols}): {what} has {found} values, expected {expected}"),
    };
    if s != k {
        return Err(bad("s", k, s));
    }
    if Some(ut) != k.checked_mul(rows) {
        return Err(bad("ut", k.saturating_mul(rows), ut));
    }
    if Some(vt) != k.checked_mul(cols) {
        return Err(bad("vt", k.saturating_mul(cols), vt));
    }
    Ok(())
}

/// Checks that singular values are finite, non-negative and descending.
pub(crate) fn check_singular_values(block: usize, s: &[f32]) -> Result<(), FactorError> {
    for (i, &x) in s.iter().enumerate() {
        if !x.is_finite() || x < 0.0 {
            return Err(FactorError::Format {
                message: format!("block {block}: singular value {i} is {x}"),
            });
        }
        if i > 0 && x > s[i - 1] {
            return Err(FactorError::Format {
                message: format!(
                    "block {block}: singular values are not descending at {i} ({} < {x})",
                    s[i - 1]
                ),
            });
        }
    }
    Ok(())
}

/// Checks that `blocks` tile a `rows × cols` matrix the way [`split_rows`] does.
fn check_tiling(
    rows: usize,
    cols: usize,
    blocks: &[(usize, usize, usize)],
) -> Result<(), FactorError> {
    if cols == 0 {
        return Err(FactorError::Format {
            message: "matrix has 0 columns".into(),
        });
    }
    let expected: Vec<BlockRange> =
        split_rows(rows, blocks.len()).map_err(|e| FactorError::Format {
            message: format!("{rows} rows in {} blocks: {e}", blocks.len()),
        })?;
    for (b, (&(start, r, c), want)) in blocks.iter().zip(&expected).enumerate() {
        if start != want.start || r != want.rows || c != cols {
            return Err(FactorError::Format {
                message: format!(
                    "block {b} covers rows {start}..{} with {c} columns; expected rows {}..{} with {cols}",
                    start + r,
                    want.start,
                    want.end()
                ),
            });
        }
    }
    Ok(())
}

/// The thin SVD of one row-block, owned.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockFactors {
    row_start: usize,
    rows: usize,
    cols: usize,
    ut: Vec<f32>,
    s: Vec<f32>,
    vt: Vec<f32>,
}

impl BlockFactors {
    /// Builds a block from its parts, checking their lengths (`k = min(rows, cols)`;
    /// `ut` is `k × rows`, `s` is `k`, `vt` is `k × cols`, all row-major).
    pub fn new(
        row_start: usize,
        rows: usize,
        cols: usize,
        ut: Vec<f32>,
        s: Vec<f32>,
        vt: Vec<f32>,
    ) -> Result<Self, FactorError> {
        check_block(None, rows, cols, ut.len(), s.len(), vt.len())?;
        Ok(BlockFactors {
            row_start,
            rows,
            cols,
            ut,
            s,
            vt,
        })
    }

    /// A borrowed view of this block.
    pub fn view(&self) -> BlockView<'_> {
        BlockView {
            row_start: self.row_start,
            rows: self.rows,
            cols: self.cols,
            ut: Cow::Borrowed(&self.ut),
            s: Cow::Borrowed(&self.s),
            vt: Cow::Borrowed(&self.vt),
        }
    }

    /// First row of the block in the matrix.
    pub fn row_start(&self) -> usize {
        self.row_start
    }
    /// Rows in the block.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Columns (same as the matrix).
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Number of components, `min(rows, cols)`.
    pub fn rank(&self) -> usize {
        self.s.len()
    }
    /// Uᵀ, `rank × rows` row-major.
    pub fn ut(&self) -> &[f32] {
        &self.ut
    }
    /// Singular values, descending.
    pub fn s(&self) -> &[f32] {
        &self.s
    }
    /// Vᵀ, `rank × cols` row-major.
    pub fn vt(&self) -> &[f32] {
        &self.vt
    }
}

/// The block SVD of one matrix, owned: K blocks of consecutive rows.
#[derive(Debug, Clone, PartialEq)]
pub struct MatrixFactors {
    rows: usize,
    cols: usize,
    blocks: Vec<BlockFactors>,
}

impl MatrixFactors {
    /// Assembles a matrix's factors, checking that the blocks tile `rows × cols` as
    /// [`split_rows`](super::split_rows) would.
    pub fn new(rows: usize, cols: usize, blocks: Vec<BlockFactors>) -> Result<Self, FactorError> {
        let shapes: Vec<_> = blocks
            .iter()
            .map(|b| (b.row_start, b.rows, b.cols))
            .collect();
        check_tiling(rows, cols, &shapes)?;
        Ok(MatrixFactors { rows, cols, blocks })
    }

    /// A borrowed view (no copy).
    pub fn view(&self) -> FactorsView<'_> {
        FactorsView {
            rows: self.rows,
            cols: self.cols,
            blocks: self.blocks.iter().map(BlockFactors::view).collect(),
        }
    }

    /// Rows of the matrix.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Columns of the matrix.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Number of blocks, K.
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }
    /// The blocks, top to bottom.
    pub fn blocks(&self) -> &[BlockFactors] {
        &self.blocks
    }
}

/// The thin SVD of one row-block, borrowed. Built by [`MatrixFactors::view`] or
/// [`FactorsView::from_safetensors`]; the slices borrow the source bytes when they
/// are aligned and are copies otherwise (see [`BlockView::is_borrowed`]).
#[derive(Debug, Clone, PartialEq)]
pub struct BlockView<'a> {
    row_start: usize,
    rows: usize,
    cols: usize,
    ut: Cow<'a, [f32]>,
    s: Cow<'a, [f32]>,
    vt: Cow<'a, [f32]>,
}

impl<'a> BlockView<'a> {
    /// Builds a view from parts, checking their lengths (as [`BlockFactors::new`]).
    pub fn new(
        row_start: usize,
        rows: usize,
        cols: usize,
        ut: Cow<'a, [f32]>,
        s: Cow<'a, [f32]>,
        vt: Cow<'a, [f32]>,
    ) -> Result<Self, FactorError> {
        check_block(None, rows, cols, ut.len(), s.len(), vt.len())?;
        Ok(BlockView {
            row_start,
            rows,
            cols,
            ut,
            s,
            vt,
        })
    }

    /// First row of the block in the matrix.
    pub fn row_start(&self) -> usize {
        self.row_start
    }
    /// Rows in the block.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Columns (same as the matrix).
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Number of components, `min(rows, cols)`.
    pub fn rank(&self) -> usize {
        self.s.len()
    }
    /// Uᵀ, `rank × rows` row-major.
    pub fn ut(&self) -> &[f32] {
        &self.ut
    }
    /// Singular values, descending.
    pub fn s(&self) -> &[f32] {
        &self.s
    }
    /// Vᵀ, `rank × cols` row-major.
    pub fn vt(&self) -> &[f32] {
        &self.vt
    }
    /// Left singular vector u_i (length `rows`). Panics if `i >= rank()`.
    pub fn u(&self, i: usize) -> &[f32] {
        &self.ut[i * self.rows..(i + 1) * self.rows]
    }
    /// Right singular vector v_i (length `cols`). Panics if `i >= rank()`.
    pub fn v(&self, i: usize) -> &[f32] {
        &self.vt[i * self.cols..(i + 1) * self.cols]
    }
    /// Whether all three slices borrow their source (no copy was made).
    pub fn is_borrowed(&self) -> bool {
        matches!(
            (&self.ut, &self.s, &self.vt),
            (Cow::Borrowed(_), Cow::Borrowed(_), Cow::Borrowed(_))
        )
    }
    /// An owned copy.
    pub fn to_owned_block(&self) -> BlockFactors {
        BlockFactors {
            row_start: self.row_start,
            rows: self.rows,
            cols: self.cols,
            ut: self.ut.to_vec(),
            s: self.s.to_vec(),
            vt: self.vt.to_vec(),
        }
    }
}

/// The block SVD of one matrix, borrowed.
#[derive(Debug, Clone, PartialEq)]
pub struct FactorsView<'a> {
    rows: usize,
    cols: usize,
    blocks: Vec<BlockView<'a>>,
}

impl<'a> FactorsView<'a> {
    /// Assembles a view, checking that the blocks tile `rows × cols` as
    /// [`split_rows`](super::split_rows) would.
    pub fn new(rows: usize, cols: usize, blocks: Vec<BlockView<'a>>) -> Result<Self, FactorError> {
        let shapes: Vec<_> = blocks
            .iter()
            .map(|b| (b.row_start, b.rows, b.cols))
            .collect();
        check_tiling(rows, cols, &shapes)?;
        Ok(FactorsView { rows, cols, blocks })
    }

    /// Rows of the matrix.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Columns of the matrix.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Number of blocks, K.
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }
    /// The blocks, top to bottom.
    pub fn blocks(&self) -> &[BlockView<'a>] {
        &self.blocks
    }
    /// Whether every block borrows its source (no copy was made).
    pub fn is_borrowed(&self) -> bool {
        self.blocks.iter().all(BlockView::is_borrowed)
    }
    /// An owned copy.
    pub fn to_owned_factors(&self) -> MatrixFactors {
        MatrixFactors {
            rows: self.rows,
            cols: self.cols,
            blocks: self.blocks.iter().map(BlockView::to_owned_block).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(start: usize, rows: usize, cols: usize) -> BlockFactors {
        let k = rows.min(cols);
        BlockFactors::new(
            start,
            rows,
            cols,
            vec![0.0; k * rows],
            vec![0.0; k],
            vec![0.0; k * cols],
        )
        .unwrap()
    }

    #[test]
    fn lengths_are_checked() {
        assert!(BlockFactors::new(0, 3, 2, vec![0.0; 6], vec![0.0; 2], vec![0.0; 4]).is_ok());
        assert!(BlockFactors::new(0, 3, 2, vec![0.0; 5], vec![0.0; 2], vec![0.0; 4]).is_err());
        assert!(BlockFactors::new(0, 3, 2, vec![0.0; 6], vec![0.0; 3], vec![0.0; 4]).is_err());
        assert!(BlockFactors::new(0, 3, 2, vec![0.0; 6], vec![0.0; 2], vec![0.0; 6]).is_err());
    }

    #[test]
    fn tiling_is_checked() {
        assert!(MatrixFactors::new(5, 4, vec![block(0, 3, 4), block(3, 2, 4)]).is_ok());
        // Wrong order of sizes (split_rows puts the larger block first).
        assert!(MatrixFactors::new(5, 4, vec![block(0, 2, 4), block(2, 3, 4)]).is_err());
        // Gap.
        assert!(MatrixFactors::new(5, 4, vec![block(0, 3, 4), block(4, 2, 4)]).is_err());
        // Wrong column count.
        assert!(MatrixFactors::new(5, 4, vec![block(0, 3, 4), block(3, 2, 3)]).is_err());
        // No blocks.
        assert!(MatrixFactors::new(5, 4, vec![]).is_err());
    }

    #[test]
    fn views_borrow_and_round_trip() {
        let f = MatrixFactors::new(5, 4, vec![block(0, 3, 4), block(3, 2, 4)]).unwrap();
        let v = f.view();
        assert!(v.is_borrowed());
        assert_eq!(v.to_owned_factors(), f);
        assert_eq!(v.blocks()[1].u(1).len(), 2);
        assert_eq!(v.blocks()[1].v(1).len(), 4);
    }

    #[test]
    fn singular_value_checks() {
        assert!(check_singular_values(0, &[3.0, 2.0, 2.0, 0.0]).is_ok());
        assert!(check_singular_values(0, &[1.0, 2.0]).is_err());
        assert!(check_singular_values(0, &[f32::NAN]).is_err());
        assert!(check_singular_values(0, &[-1.0]).is_err());
    }
}
