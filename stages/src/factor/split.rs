//! Splitting a matrix's rows into K consecutive blocks of near-equal size.

use super::FactorError;

/// One row-block of a matrix: rows `start .. start + rows`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockRange {
    /// First row of the block.
    pub start: usize,
    /// Number of rows in the block (at least 1).
    pub rows: usize,
}

impl BlockRange {
    /// One past the block's last row.
    pub fn end(&self) -> usize {
        self.start + self.rows
    }
}

/// Splits `rows` rows into `blocks` consecutive blocks whose sizes differ by at most
/// one: each block has `rows / blocks` rows and the first `rows % blocks` blocks get
/// one more. Errors if `blocks == 0` or `blocks > rows` (a block would be empty).
pub fn split_rows(rows: usize, blocks: usize) -> Result<Vec<BlockRange>, FactorError> {
    if blocks == 0 {
        return Err(FactorError::ZeroBlocks);
    }
    if blocks > rows {
        return Err(FactorError::TooManyBlocks { blocks, rows });
    }
    let base = rows / blocks;
    let extra = rows % blocks;
    let mut start = 0;
    Ok((0..blocks)
        .map(|b| {
            let size = base + usize::from(b < extra);
            let range = BlockRange { start, rows: size };
            start += size;
            range
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hand_cases() {
        let r = split_rows(10, 3).unwrap();
        assert_eq!(
            r,
            vec![
                BlockRange { start: 0, rows: 4 },
                BlockRange { start: 4, rows: 3 },
                BlockRange { start: 7, rows: 3 }
            ]
        );
        assert_eq!(
            split_rows(5, 5)
                .unwrap()
                .iter()
                .map(|b| b.rows)
                .collect::<Vec<_>>(),
            [1; 5]
        );
        assert_eq!(
            split_rows(7, 1).unwrap(),
            vec![BlockRange { start: 0, rows: 7 }]
        );
    }

    #[test]
    fn invalid_block_counts() {
        assert!(matches!(split_rows(10, 0), Err(FactorError::ZeroBlocks)));
        assert!(matches!(
            split_rows(3, 4),
            Err(FactorError::TooManyBlocks { blocks: 4, rows: 3 })
        ));
        assert!(matches!(
            split_rows(0, 1),
            Err(FactorError::TooManyBlocks { .. })
        ));
    }

    proptest! {
        #[test]
        fn blocks_cover_rows_and_differ_by_at_most_one(rows in 1usize..5000, k in 1usize..64) {
            prop_assume!(k <= rows);
            let r = split_rows(rows, k).unwrap();
            prop_assert_eq!(r.len(), k);
            // Consecutive, starting at 0, ending at rows.
            prop_assert_eq!(r[0].start, 0);
            for w in r.windows(2) {
                prop_assert_eq!(w[0].end(), w[1].start);
            }
            prop_assert_eq!(r[k - 1].end(), rows);
            let min = r.iter().map(|b| b.rows).min().unwrap();
            let max = r.iter().map(|b| b.rows).max().unwrap();
            prop_assert!(min >= 1);
            prop_assert!(max - min <= 1);
            // The larger blocks come first.
            for (b, block) in r.iter().enumerate() {
                prop_assert_eq!(block.rows, rows / k + usize::from(b < rows % k));
            }
        }

        #[test]
        fn too_many_blocks_is_an_error(rows in 0usize..100, extra in 1usize..10) {
            prop_assert!(split_rows(rows, rows + extra).is_err());
        }
    }
}
