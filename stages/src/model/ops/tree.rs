//! The decoder's layers forward only ([`super::decoder::layer_forward`]), on packed
//! choice trees: what the evaluator runs to score the answer choices of a
//! classification task.
//!
//! A tree is one sample laid out as `[prompt | choice 0 | choice 1 | ...]`, packed row
//! after row with the other samples' trees and no padding (the layout of
//! `eval::choice`, whose candle path pads it). A prompt token sees the prompt up to
//! itself; token `j` of choice `c` sees the whole prompt and tokens `0..=j` of choice
//! `c`, at rotary position `prompt + j`. So every choice computes exactly what the
//! sequence `prompt + choice` would, and the prompt is computed once for all choices.
//!
//! The causal kernel of [`super::attention`] runs it as it is: each choice becomes a
//! sequence of `prompt + choice` keys whose queries are the choice's rows only
//! (`q_first = prompt`), over keys and values gathered into contiguous blocks (a copy of
//! the prompt's rows per choice: `2 · kv_heads · head_dim` = 384 floats per prompt token
//! and choice for SmolLM2, against about 7 MFLOP per token in the layer's products), and
//! the prompt is one more sequence over the first choice's block, querying all its rows.
//! In a gathered block the key index is the position, so sliding windows hold as they
//! are.

use super::attention::SeqRows;
use super::decoder::{layer_forward, Dims, KvRows, ModelWeights, QuerySide, RopeTables};
use super::Real;
use crate::model::ModelError;
use std::ops::Range;

/// The packed layout of a batch of trees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeLayout {
    /// Rows (tokens) in all.
    pub rows: usize,
    /// Rotary position of each row.
    pub pos: Vec<u32>,
    /// Attention sequences over the gathered keys and values.
    seqs: Vec<SeqRows>,
    /// Packed row of each gathered key/value row.
    kv_rows: Vec<usize>,
}

impl TreeLayout {
    /// The layout of trees given as (prompt length, each choice's length), in order.
    /// Every prompt and every choice needs at least one token.
    pub fn new(trees: &[(usize, Vec<usize>)]) -> Result<TreeLayout, ModelError> {
        let mut t = TreeLayout {
            rows: 0,
            pos: Vec::new(),
            seqs: Vec::new(),
            kv_rows: Vec::new(),
        };
        for (i, (p, choices)) in trees.iter().enumerate() {
            let p = *p;
            if p == 0 || choices.is_empty() || choices.contains(&0) {
                return Err(ModelError::Input(format!(
                    "tree {i}: the prompt and every choice need at least one token"
                )));
            }
            let prompt = t.rows;
            t.pos.extend(0..p as u32);
            let mut row = prompt + p;
            let first_block = t.kv_rows.len();
            for &n in choices {
                let block = t.kv_rows.len();
                t.kv_rows.extend(prompt..prompt + p);
                t.kv_rows.extend(row..row + n);
                t.seqs.push(SeqRows {
                    start: block,
                    len: p + n,
                    q_first: p,
                    q_row: row,
                });
                t.pos.extend(p as u32..(p + n) as u32);
                row += n;
            }
            t.seqs.push(SeqRows {
                start: first_block,
                len: p,
                q_first: 0,
                q_row: prompt,
            });
            t.rows = row;
        }
        Ok(t)
    }

    /// The largest rotary position plus one (the rope table's size).
    pub fn positions(&self) -> usize {
        self.pos.iter().max().map_or(0, |&p| p as usize + 1)
    }
}

/// Runs layers `range` of `m` on the hidden states `h` (`rows x hidden`, packed as
/// `layout`) and returns the states after the last of them.
pub fn tree_layers<T: Real>(
    m: &ModelWeights<'_, T>,
    layout: &TreeLayout,
    mut h: Vec<T>,
    range: Range<usize>,
    ropes: &RopeTables<T>,
) -> Result<Vec<T>, ModelError> {
    let dm = Dims::new(&m.config);
    if h.len() != layout.rows * dm.d {
        return Err(ModelError::Input(format!(
            "tree forward: {} values for {} rows of width {}",
            h.len(),
            layout.rows,
            dm.d
        )));
    }
    if range.end > m.layers.len() || range.start > range.end {
        return Err(ModelError::Input(format!(
            "tree forward: layers {range:?} of a model of {}",
            m.layers.len()
        )));
    }
    if ropes.positions() < layout.positions() {
        return Err(ModelError::Input(
            "tree forward: the rope tables are shorter than the trees".into(),
        ));
    }
    let qs = QuerySide {
        rows: None,
        seqs: layout.seqs.clone(),
        pos: layout.pos.clone(),
    };
    for l in range {
        let spec = m.config.layers[l];
        let kv = KvRows::Gather(&layout.kv_rows);
        h = layer_forward(
            &m.layers[l],
            &dm,
            spec,
            h,
            &layout.pos,
            &qs,
            kv,
            ropes,
            false,
        )
        .0;
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_of_two_trees() {
        // Tree 0: prompt 2, choices 1 and 2 (rows 0-1 | 2 | 3-4); tree 1: prompt 1,
        // choices 1 and 1 (rows 5 | 6 | 7).
        let t = TreeLayout::new(&[(2, vec![1, 2]), (1, vec![1, 1])]).unwrap();
        assert_eq!(t.rows, 8);
        assert_eq!(t.pos, vec![0, 1, 2, 2, 3, 0, 1, 1]);
        assert_eq!(t.kv_rows, vec![0, 1, 2, 0, 1, 3, 4, 5, 6, 5, 7]);
        let s = |start, len, q_first, q_row| SeqRows {
            start,
            len,
            q_first,
            q_row,
        };
        assert_eq!(
            t.seqs,
            vec![
                s(0, 3, 2, 2),
                s(3, 4, 2, 3),
                s(0, 2, 0, 0),
                s(7, 2, 1, 6),
                s(9, 2, 1, 7),
                s(7, 1, 0, 5),
            ]
        );
        assert_eq!(t.positions(), 4);
        assert!(TreeLayout::new(&[(0, vec![1])]).is_err());
        assert!(TreeLayout::new(&[(1, vec![])]).is_err());
        assert!(TreeLayout::new(&[(1, vec![2, 0])]).is_err());
    }
}
