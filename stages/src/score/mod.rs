//! The `scores(matrix, K, rho)` stage: singular-value gradients and matrix scores.
//!
//! With W_b = Σ_i σ_i u_i v_iᵀ the SVD of a row-block and G = dLoss/dW the gradient
//! (same shape as W), the gradient of the loss with respect to σ_i is
//! g_i = u_iᵀ G_b v_i, G_b being G's rows of the block. [`sv_grads`] computes g_i as
//! `dot(u_i, G_b v_i)` for the components asked for only, never forming UᵀG_bV: cost
//! `rows_b · cols` per component, and with the factors' row-major Uᵀ/Vᵀ layout each
//! u_i and v_i is one contiguous row (a memory map pages in only what is read).
//! Products of two f32 are exact in f64, and the sums are accumulated in f64.
//!
//! Rank kept per block at fraction rho: r_b = max(1, ⌊rho · min(rows_b, cols)⌋)
//! ([`rank_kept`]), rho ∈ (0, 1]; components i ≥ r_b are dropped. LASER's "rate"
//! convention maps to rho = (10 − rate) · 0.1 ([`rho_from_laser_rate`]).
//!
//! # Score rules ([`ScoreRule`]), summed over the dropped components of every block
//!
//! - `negative-sv-grad` (the paper's rule): Σ max(0, −g_i), reported as a
//!   non-negative number; larger = the loss "wants those components gone" in the
//!   paper's reading. Ranking value = the score.
//! - `first-order`: ΔL ≈ −Σ g_i σ_i, the first-order predicted change of the loss when
//!   σ_i → 0 for the dropped components. Negative ΔL = removing them is predicted to
//!   lower the loss, so more negative is better: the ranking value is −ΔL.
//!
//! - `first-order-slope`: the first-order change per unit of change of the block,
//!   −Σ g_i σ_i / √(Σ σ_i²) over the dropped components, summed over blocks; more
//!   negative is better (ranking value = −value). For K = 1 it is the directional
//!   derivative of the loss along the removal, ⟨G, −ΔW⟩ / ‖ΔW‖_F (⟨G, u_i v_iᵀ⟩ = g_i
//!   and ‖Σ σ_i u_i v_iᵀ‖_F = √(Σ σ_i²)). Why: `first-order` is the slope times the
//!   step length ‖ΔW‖_F, and the step it extrapolates over differs between matrices
//!   by orders of magnitude (a keep of 0.02 removes most of a matrix's norm, a keep of
//!   0.4 little of it). The neglected second-order term grows with ‖ΔW‖², so the
//!   first-order estimate is least trustworthy exactly for the large removals that
//!   dominate its ranking; the slope keeps what the gradient knows (does the removal
//!   point downhill, and how steeply) and drops the extrapolation.
//!
//! The rules can disagree: for a component with g_i < 0 and σ_i > 0 the first rule
//! adds |g_i| while the second predicts a loss *increase* of |g_i| σ_i. All are offered
//! so they can be compared on real tasks (`c2i study`, with [`agreement`]).
//!
//! # Top-k
//!
//! [`top_k`] ranks (matrix, K, rho) entries by ranking value, descending, with ties
//! broken by MatrixId, then K, then rho, ascending, so the order is deterministic;
//! [`top_k_matrices`] keeps each matrix's best entry first. A NaN score is an error.

pub mod agreement;

use crate::factor::{BlockView, FactorError, FactorsView, RowMajor};
use crate::model::MatrixId;
use rayon::prelude::*;
use std::cmp::Ordering;
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

/// What can go wrong while scoring.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    /// rho outside (0, 1].
    #[error("rho (fraction of rank kept) must be in (0, 1], got {0}")]
    Rho(f64),
    /// LASER rate outside [0, 10).
    #[error("LASER rate must be in [0, 10), got {0}")]
    Rate(f64),
    /// Bad gradient matrix (shape, empty).
    #[error(transparent)]
    Factor(#[from] FactorError),
    /// The gradient's shape differs from the factored matrix's.
    #[error("gradient is {g_rows}x{g_cols} but the factors are of a {rows}x{cols} matrix")]
    GradShape {
        g_rows: usize,
        g_cols: usize,
        rows: usize,
        cols: usize,
    },
    /// A component range outside the block.
    #[error("components {start}..{end} are outside block {block}'s {rank} components")]
    Components {
        block: usize,
        start: usize,
        end: usize,
        rank: usize,
    },
    /// A score needs gradients that were not computed.
    #[error(
        "block {block}: keeping rank {kept} needs singular-value gradients from component \
         {kept}, but they were computed from component {first} on"
    )]
    NotComputed {
        block: usize,
        kept: usize,
        first: usize,
    },
    /// Gradients computed for other factors.
    #[error("singular-value gradients do not match the factors: {0}")]
    Mismatch(String),
    /// An unknown rule name.
    #[error(
        "unknown score rule `{0}`: expected `negative-sv-grad`, `first-order` or \
         `first-order-slope`"
    )]
    UnknownRule(String),
    /// A NaN score or rho in a ranking.
    #[error("entry {matrix} K={blocks} rho={rho} has a NaN score or rho ({value})")]
    Nan {
        matrix: MatrixId,
        blocks: usize,
        rho: f64,
        value: f64,
    },
    /// A ranking over scores of different rules.
    #[error("cannot rank scores of different rules together ({0} and {1})")]
    MixedRules(ScoreRule, ScoreRule),
}

/// Checks rho ∈ (0, 1] and returns it.
pub fn validate_rho(rho: f64) -> Result<f64, ScoreError> {
    if rho.is_finite() && rho > 0.0 && rho <= 1.0 {
        Ok(rho)
    } else {
        Err(ScoreError::Rho(rho))
    }
}

/// Rank kept in a `rows_b × cols` block at fraction `rho`:
/// `max(1, floor(rho · min(rows_b, cols)))` (the product in f64, as LASER's
/// `int(max_rank * rho)`). Never more than `min(rows_b, cols)`; 0 only for an empty block.
pub fn rank_kept(rows_b: usize, cols: usize, rho: f64) -> Result<usize, ScoreError> {
    let rho = validate_rho(rho)?;
    let full = rows_b.min(cols);
    let r = (rho * full as f64).floor() as usize;
    Ok(r.clamp(1.min(full), full))
}

/// [`rank_kept`] for every block of `factors`.
pub fn ranks_kept(factors: &FactorsView<'_>, rho: f64) -> Result<Vec<usize>, ScoreError> {
    factors
        .blocks()
        .iter()
        .map(|b| rank_kept(b.rows(), b.cols(), rho))
        .collect()
}

/// LASER's rate → rho: rho = (10 − rate) · 0.1 = 1 − 0.1 · rate, rate ∈ [0, 10).
/// Computed in the order LASER's code writes it, so ranks match LASER bit for bit
/// (`1.0 - 0.1 * 9.0` is 0.09999999999999998, `(10.0 - 9.0) * 0.1` is 0.1).
pub fn rho_from_laser_rate(rate: f64) -> Result<f64, ScoreError> {
    if !(rate.is_finite() && (0.0..10.0).contains(&rate)) {
        return Err(ScoreError::Rate(rate));
    }
    validate_rho((10.0 - rate) * 0.1).map_err(|_| ScoreError::Rate(rate))
}

/// Σ a_i b_i with f64 products and accumulation (four lanes, so it vectorizes).
fn dot(a: &[f32], b: &[f32]) -> f64 {
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let mut acc = [0f64; 4];
    for (x, y) in ca.zip(cb) {
        for l in 0..4 {
            acc[l] += f64::from(x[l]) * f64::from(y[l]);
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// Σ u_i t_i with u in f32 and t in f64.
fn dot_mixed(u: &[f32], t: &[f64]) -> f64 {
    u.iter().zip(t).map(|(x, y)| f64::from(*x) * y).sum()
}

/// Components processed together: each row of G_b is read once per group, the group's
/// v_i (8 × cols f32, 48 KiB at cols = 1536) stay in L2.
const GROUP: usize = 8;

/// g_i = u_iᵀ G_b v_i for i in `components`, where `g_block` is the block's rows of
/// the gradient (`block.rows() × block.cols()`, row-major). Computes G_b v_i, then
/// dots it with u_i; never forms UᵀG_bV.
pub fn sv_grads_block(
    block: &BlockView<'_>,
    g_block: &[f32],
    components: Range<usize>,
) -> Result<Vec<f64>, ScoreError> {
    let (rows, cols) = (block.rows(), block.cols());
    if g_block.len() != rows * cols {
        return Err(FactorError::Shape {
            rows,
            cols,
            len: g_block.len(),
        }
        .into());
    }
    if components.start > components.end || components.end > block.rank() {
        return Err(ScoreError::Components {
            block: 0,
            start: components.start,
            end: components.end,
            rank: block.rank(),
        });
    }
    let starts: Vec<usize> = components.clone().step_by(GROUP).collect();
    let groups: Vec<Vec<f64>> = starts
        .par_iter()
        .map(|&start| {
            let idx = start..(start + GROUP).min(components.end);
            let n = idx.len();
            // t[c * rows + j] = G_b[j, :] · v_{start + c}
            let mut t = vec![0f64; n * rows];
            for (j, g_row) in g_block.chunks_exact(cols).enumerate() {
                for (c, i) in idx.clone().enumerate() {
                    t[c * rows + j] = dot(g_row, block.v(i));
                }
            }
            idx.enumerate()
                .map(|(c, i)| dot_mixed(block.u(i), &t[c * rows..(c + 1) * rows]))
                .collect()
        })
        .collect();
    Ok(groups.into_iter().flatten().collect())
}

/// Singular-value gradients of one block, for components `first .. rank`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BlockSvGrads {
    /// First component computed.
    pub first: usize,
    /// g_i for i in `first .. first + grads.len()`.
    pub grads: Vec<f64>,
}

impl BlockSvGrads {
    /// g_i, if computed.
    pub fn get(&self, i: usize) -> Option<f64> {
        i.checked_sub(self.first)
            .and_then(|k| self.grads.get(k))
            .copied()
    }
}

/// Singular-value gradients of every block of one matrix.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SvGrads {
    pub blocks: Vec<BlockSvGrads>,
}

/// Which components [`sv_grads`] computes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Components {
    /// All of them.
    All,
    /// Those dropped at this rho, which also covers every larger rho (the kept rank
    /// only grows with rho): pass the smallest rho of a sweep.
    DroppedAt(f64),
}

/// g_i = u_iᵀ G_b v_i for every block of `factors` and the requested components.
pub fn sv_grads(
    factors: &FactorsView<'_>,
    g: RowMajor<'_>,
    which: Components,
) -> Result<SvGrads, ScoreError> {
    if (g.rows(), g.cols()) != (factors.rows(), factors.cols()) {
        return Err(ScoreError::GradShape {
            g_rows: g.rows(),
            g_cols: g.cols(),
            rows: factors.rows(),
            cols: factors.cols(),
        });
    }
    let firsts: Vec<usize> = match which {
        Components::All => vec![0; factors.num_blocks()],
        Components::DroppedAt(rho) => ranks_kept(factors, rho)?,
    };
    let blocks = factors
        .blocks()
        .par_iter()
        .zip(firsts)
        .enumerate()
        .map(|(b, (block, first))| {
            let g_block = &g.data()
                [block.row_start() * g.cols()..(block.row_start() + block.rows()) * g.cols()];
            let grads =
                sv_grads_block(block, g_block, first..block.rank()).map_err(|e| match e {
                    ScoreError::Components {
                        start, end, rank, ..
                    } => ScoreError::Components {
                        block: b,
                        start,
                        end,
                        rank,
                    },
                    e => e,
                })?;
            Ok(BlockSvGrads { first, grads })
        })
        .collect::<Result<Vec<_>, ScoreError>>()?;
    Ok(SvGrads { blocks })
}

/// A score rule, by its pipeline name.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum ScoreRule {
    /// `negative-sv-grad`: Σ_{dropped} max(0, −g_i) ≥ 0; larger is better. The
    /// paper's rule (a pipeline's default is chosen in `engine/src/spec.rs`).
    NegativeSvGrad,
    /// `first-order`: ΔL ≈ −Σ_{dropped} g_i σ_i; more negative is better.
    FirstOrder,
    /// `first-order-slope`: −Σ_{dropped} g_i σ_i / √(Σ_{dropped} σ_i²) per block,
    /// summed over blocks: the first-order change of the loss per unit Frobenius norm
    /// of the removal (the directional derivative along it, for K = 1); more negative
    /// is better. The first-order estimate without the step length it extrapolates
    /// over (see the module docs for why).
    FirstOrderSlope,
}

impl ScoreRule {
    pub const ALL: [ScoreRule; 3] = [
        ScoreRule::NegativeSvGrad,
        ScoreRule::FirstOrder,
        ScoreRule::FirstOrderSlope,
    ];

    /// The pipeline name: `negative-sv-grad`, `first-order` or `first-order-slope`.
    pub fn name(self) -> &'static str {
        match self {
            ScoreRule::NegativeSvGrad => "negative-sv-grad",
            ScoreRule::FirstOrder => "first-order",
            ScoreRule::FirstOrderSlope => "first-order-slope",
        }
    }

    /// The rule's contribution of dropped components with gradients `g` and singular
    /// values `s` (same length): see [`ScoreRule`]'s variants.
    pub fn block_value(self, g: &[f64], s: &[f32]) -> f64 {
        match self {
            ScoreRule::NegativeSvGrad => g.iter().map(|&x| (-x).max(0.0)).sum(),
            ScoreRule::FirstOrder => -g.iter().zip(s).map(|(x, y)| x * f64::from(*y)).sum::<f64>(),
            ScoreRule::FirstOrderSlope => {
                let norm = s
                    .iter()
                    .take(g.len())
                    .map(|y| f64::from(*y) * f64::from(*y))
                    .sum::<f64>()
                    .sqrt();
                if norm > 0.0 {
                    ScoreRule::FirstOrder.block_value(g, s) / norm
                } else {
                    // Nothing of the block is removed: no change, no slope.
                    0.0
                }
            }
        }
    }

    /// Maps a score to "higher is better": the score itself for `negative-sv-grad`,
    /// −ΔL for `first-order` and −slope for `first-order-slope`.
    pub fn ranking_value(self, value: f64) -> f64 {
        match self {
            ScoreRule::NegativeSvGrad => value,
            ScoreRule::FirstOrder | ScoreRule::FirstOrderSlope => -value,
        }
    }
}

impl fmt::Display for ScoreRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ScoreRule {
    type Err = ScoreError;
    fn from_str(s: &str) -> Result<Self, ScoreError> {
        ScoreRule::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| ScoreError::UnknownRule(s.to_string()))
    }
}

/// The score of one matrix's factors at `rho` under `rule`, from its singular-value
/// gradients (which must cover the components dropped at `rho`).
pub fn score(
    factors: &FactorsView<'_>,
    grads: &SvGrads,
    rho: f64,
    rule: ScoreRule,
) -> Result<f64, ScoreError> {
    if grads.blocks.len() != factors.num_blocks() {
        return Err(ScoreError::Mismatch(format!(
            "{} blocks of gradients for {} blocks of factors",
            grads.blocks.len(),
            factors.num_blocks()
        )));
    }
    let mut total = 0f64;
    for (b, (block, bg)) in factors.blocks().iter().zip(&grads.blocks).enumerate() {
        let kept = rank_kept(block.rows(), block.cols(), rho)?;
        if bg.first > kept {
            return Err(ScoreError::NotComputed {
                block: b,
                kept,
                first: bg.first,
            });
        }
        if bg.first + bg.grads.len() != block.rank() {
            return Err(ScoreError::Mismatch(format!(
                "block {b}: gradients for components {}..{}, the block has {}",
                bg.first,
                bg.first + bg.grads.len(),
                block.rank()
            )));
        }
        total += rule.block_value(&bg.grads[kept - bg.first..], &block.s()[kept..]);
    }
    Ok(total)
}

/// Singular-value gradients and the score in one call (computes only the dropped
/// components).
pub fn score_matrix(
    factors: &FactorsView<'_>,
    g: RowMajor<'_>,
    rho: f64,
    rule: ScoreRule,
) -> Result<f64, ScoreError> {
    let grads = sv_grads(factors, g, Components::DroppedAt(rho))?;
    score(factors, &grads, rho, rule)
}

/// One scored candidate: a matrix, its block count K, the fraction of rank kept and
/// the score under `rule`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScoredEntry {
    pub matrix: MatrixId,
    pub blocks: usize,
    pub rho: f64,
    pub rule: ScoreRule,
    /// The rule's value ([`score`]); see [`ScoredEntry::ranking_value`] for order.
    pub value: f64,
}

impl ScoredEntry {
    /// Higher is better, whatever the rule.
    pub fn ranking_value(&self) -> f64 {
        self.rule.ranking_value(self.value)
    }
}

/// The ranking order: ranking value descending, then MatrixId, K, rho ascending.
/// Callers have checked for NaN.
fn rank_order(a: &ScoredEntry, b: &ScoredEntry) -> Ordering {
    b.ranking_value()
        .partial_cmp(&a.ranking_value())
        .unwrap_or(Ordering::Equal)
        .then(a.matrix.cmp(&b.matrix))
        .then(a.blocks.cmp(&b.blocks))
        .then(a.rho.total_cmp(&b.rho))
}

fn check_entries(entries: &[ScoredEntry]) -> Result<(), ScoreError> {
    for e in entries {
        if e.value.is_nan() || e.rho.is_nan() {
            return Err(ScoreError::Nan {
                matrix: e.matrix,
                blocks: e.blocks,
                rho: e.rho,
                value: e.value,
            });
        }
    }
    if let Some(first) = entries.first() {
        if let Some(other) = entries.iter().find(|e| e.rule != first.rule) {
            return Err(ScoreError::MixedRules(first.rule, other.rule));
        }
    }
    Ok(())
}

/// All entries in ranking order (best first).
pub fn ranked(entries: &[ScoredEntry]) -> Result<Vec<ScoredEntry>, ScoreError> {
    check_entries(entries)?;
    let mut v = entries.to_vec();
    v.sort_by(rank_order);
    Ok(v)
}

/// The `k` best (matrix, K, rho) entries, best first.
pub fn top_k(entries: &[ScoredEntry], k: usize) -> Result<Vec<ScoredEntry>, ScoreError> {
    let mut v = ranked(entries)?;
    v.truncate(k);
    Ok(v)
}

/// The `k` best matrices, each with its best entry, best first.
pub fn top_k_matrices(entries: &[ScoredEntry], k: usize) -> Result<Vec<ScoredEntry>, ScoreError> {
    let mut seen = std::collections::BTreeSet::new();
    Ok(ranked(entries)?
        .into_iter()
        .filter(|e| seen.insert(e.matrix))
        .take(k)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::factor::tests::random_matrix;
    use crate::factor::{factor_matrix, MatrixFactors};
    use crate::model::MatrixKind;
    use proptest::prelude::*;

    #[test]
    fn rank_rule_hand_cases() {
        assert_eq!(rank_kept(576, 1536, 1.0).unwrap(), 576);
        assert_eq!(rank_kept(576, 1536, 0.5).unwrap(), 288);
        assert_eq!(rank_kept(576, 1536, 0.01).unwrap(), 5);
        assert_eq!(rank_kept(576, 1536, 1e-9).unwrap(), 1);
        assert_eq!(rank_kept(36, 1536, 0.1).unwrap(), 3);
        assert_eq!(rank_kept(1, 1, 0.5).unwrap(), 1);
        for bad in [0.0, -0.1, 1.0000001, f64::NAN, f64::INFINITY] {
            assert!(
                matches!(rank_kept(10, 10, bad), Err(ScoreError::Rho(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn laser_rate() {
        assert_eq!(rho_from_laser_rate(0.0).unwrap(), 1.0);
        assert_eq!(rho_from_laser_rate(9.0).unwrap(), 0.1);
        assert!((rho_from_laser_rate(9.9).unwrap() - 0.01).abs() < 1e-12);
        assert!((rho_from_laser_rate(5.0).unwrap() - 0.5).abs() < 1e-12);
        for bad in [10.0, 10.5, -0.1, f64::NAN] {
            assert!(
                matches!(rho_from_laser_rate(bad), Err(ScoreError::Rate(_))),
                "{bad}"
            );
        }
        // LASER's order of operations: 1000 * 0.1 keeps 100, not 99.
        assert_eq!(
            rank_kept(1000, 4000, rho_from_laser_rate(9.0).unwrap()).unwrap(),
            100
        );
    }

    proptest! {
        #[test]
        fn rank_rule_properties(rows in 1usize..3000, cols in 1usize..3000, rho in 1e-6f64..=1.0) {
            let full = rows.min(cols);
            let r = rank_kept(rows, cols, rho).unwrap();
            prop_assert!(r >= 1 && r <= full);
            prop_assert_eq!(r, ((rho * full as f64).floor() as usize).max(1));
            prop_assert_eq!(rank_kept(rows, cols, 1.0).unwrap(), full);
            // Monotone in rho.
            prop_assert!(rank_kept(rows, cols, (rho * 1.5).min(1.0)).unwrap() >= r);
        }
    }

    /// diag(UᵀG_bV) formed in full, naively, per block.
    fn full_diag(f: &FactorsView<'_>, g: &[f32]) -> Vec<Vec<f64>> {
        let cols = f.cols();
        f.blocks()
            .iter()
            .map(|b| {
                let k = b.rank();
                // M = Uᵀ G_b V, k × k.
                let mut m = vec![0f64; k * k];
                for i in 0..k {
                    for j in 0..k {
                        let mut x = 0f64;
                        for r in 0..b.rows() {
                            for c in 0..cols {
                                x += f64::from(b.u(i)[r])
                                    * f64::from(g[(b.row_start() + r) * cols + c])
                                    * f64::from(b.v(j)[c]);
                            }
                        }
                        m[i * k + j] = x;
                    }
                }
                (0..k).map(|i| m[i * k + i]).collect()
            })
            .collect()
    }

    fn setup(rows: usize, cols: usize, k: usize, seed: u64) -> (MatrixFactors, Vec<f32>) {
        let w = random_matrix(rows, cols, seed);
        let g = random_matrix(rows, cols, seed + 1000);
        (
            factor_matrix(RowMajor::new(&w, rows, cols).unwrap(), k).unwrap(),
            g,
        )
    }

    #[test]
    fn sv_grads_match_full_diagonal() {
        for (rows, cols, k) in [(7, 5, 1), (7, 5, 2), (5, 13, 2), (12, 12, 3), (20, 9, 1)] {
            let (f, g) = setup(rows, cols, k, 11);
            let v = f.view();
            let want = full_diag(&v, &g);
            let got =
                sv_grads(&v, RowMajor::new(&g, rows, cols).unwrap(), Components::All).unwrap();
            for (b, (w, gb)) in want.iter().zip(&got.blocks).enumerate() {
                assert_eq!(gb.first, 0);
                assert_eq!(gb.grads.len(), w.len());
                for (x, y) in w.iter().zip(&gb.grads) {
                    assert!(
                        (x - y).abs() < 1e-9 * (1.0 + x.abs()),
                        "{rows}x{cols} K={k} block {b}: {x} vs {y}"
                    );
                }
            }
            // Only the dropped components, same values.
            let rho = 0.4;
            let part = sv_grads(
                &v,
                RowMajor::new(&g, rows, cols).unwrap(),
                Components::DroppedAt(rho),
            )
            .unwrap();
            for ((w, gb), block) in want.iter().zip(&part.blocks).zip(v.blocks()) {
                let kept = rank_kept(block.rows(), cols, rho).unwrap();
                assert_eq!(gb.first, kept);
                assert_eq!(gb.grads.len(), block.rank() - kept);
                assert_eq!(w.len(), block.rank());
                for (i, wi) in w.iter().enumerate().skip(kept) {
                    assert!((wi - gb.get(i).unwrap()).abs() < 1e-9 * (1.0 + wi.abs()));
                }
                assert_eq!(gb.get(kept.wrapping_sub(1)), None);
            }
        }
    }

    #[test]
    fn sv_grad_is_the_derivative_of_the_loss() {
        // L(W) = Σ G ∘ W is linear with dL/dW = G, so dL/dσ_i = u_iᵀ G v_i exactly.
        let (rows, cols) = (9, 6);
        let (f, g) = setup(rows, cols, 1, 3);
        let v = f.view();
        let gr = sv_grads(&v, RowMajor::new(&g, rows, cols).unwrap(), Components::All).unwrap();
        let b = &v.blocks()[0];
        for i in 0..b.rank() {
            // dL/dσ_i = Σ_{r,c} G[r,c] u_i[r] v_i[c]
            let mut d = 0f64;
            for r in 0..rows {
                for c in 0..cols {
                    d += f64::from(g[r * cols + c]) * f64::from(b.u(i)[r]) * f64::from(b.v(i)[c]);
                }
            }
            assert!((d - gr.blocks[0].grads[i]).abs() < 1e-9);
        }
    }

    #[test]
    fn sv_grads_errors() {
        let (f, g) = setup(8, 6, 2, 5);
        let v = f.view();
        let wrong = RowMajor::new(&g[..42], 7, 6).unwrap();
        assert!(matches!(
            sv_grads(&v, wrong, Components::All),
            Err(ScoreError::GradShape { .. })
        ));
        let b = &v.blocks()[0];
        assert!(matches!(
            sv_grads_block(b, &g[..24], 0..5),
            Err(ScoreError::Components { .. })
        ));
        assert!(sv_grads_block(b, &g[..23], 0..1).is_err());
        assert!(sv_grads_block(b, &g[..24], 2..4).unwrap().len() == 2);
        assert!(sv_grads_block(b, &g[..24], 4..4).unwrap().is_empty());
        let gm = RowMajor::new(&g, 8, 6).unwrap();
        assert!(matches!(
            sv_grads(&v, gm, Components::DroppedAt(0.0)),
            Err(ScoreError::Rho(_))
        ));
        // Gradients computed for rho = 0.5 cannot score rho = 0.25.
        let part = sv_grads(&v, gm, Components::DroppedAt(0.5)).unwrap();
        assert!(score(&v, &part, 0.5, ScoreRule::FirstOrder).is_ok());
        assert!(score(&v, &part, 1.0, ScoreRule::FirstOrder).is_ok());
        assert!(matches!(
            score(&v, &part, 0.25, ScoreRule::FirstOrder),
            Err(ScoreError::NotComputed { .. })
        ));
        let mut one = part.clone();
        one.blocks.pop();
        assert!(matches!(
            score(&v, &one, 0.5, ScoreRule::FirstOrder),
            Err(ScoreError::Mismatch(_))
        ));
    }

    #[test]
    fn rule_values_hand_computed() {
        let g = [0.5, -2.0, 0.0, -0.25];
        let s = [4.0f32, 3.0, 2.0, 1.0];
        assert_eq!(ScoreRule::NegativeSvGrad.block_value(&g, &s), 2.25);
        // −(0.5·4 − 2·3 + 0 − 0.25·1) = −(2 − 6 − 0.25) = 4.25
        assert_eq!(ScoreRule::FirstOrder.block_value(&g, &s), 4.25);
        assert_eq!(ScoreRule::FirstOrder.ranking_value(4.25), -4.25);
        assert_eq!(ScoreRule::NegativeSvGrad.ranking_value(2.25), 2.25);
        assert_eq!(ScoreRule::NegativeSvGrad.block_value(&[], &[]), 0.0);
        // Slope: 4.25 / √(16 + 9 + 4 + 1) = 4.25 / √30.
        let slope = ScoreRule::FirstOrderSlope.block_value(&g, &s);
        assert!((slope - 4.25 / 30f64.sqrt()).abs() < 1e-12, "{slope}");
        assert_eq!(ScoreRule::FirstOrderSlope.ranking_value(slope), -slope);
        // Scaling the removed singular values scales ΔL, not the slope.
        let s10: Vec<f32> = s.iter().map(|x| x * 10.0).collect();
        assert!((ScoreRule::FirstOrder.block_value(&g, &s10) - 42.5).abs() < 1e-9);
        let slope10 = ScoreRule::FirstOrderSlope.block_value(&g, &s10);
        assert!((slope10 - slope).abs() < 1e-9, "{slope10}");
        assert_eq!(ScoreRule::FirstOrderSlope.block_value(&[], &[]), 0.0);
        assert_eq!(ScoreRule::FirstOrderSlope.block_value(&[1.0], &[0.0]), 0.0);
    }

    #[test]
    fn score_on_a_hand_built_matrix() {
        // W = diag(3, 2, 1) (one block): U = V = I up to sign, so g_i = ±G[i, i].
        let w = [3.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 1.0];
        let g = [9.0, 9.0, 9.0, 9.0, -0.5, 9.0, 9.0, 9.0, 0.25];
        let f = factor_matrix(RowMajor::new(&w, 3, 3).unwrap(), 1).unwrap();
        let v = f.view();
        let gm = RowMajor::new(&g, 3, 3).unwrap();
        // rho = 0.34 keeps 1 component and drops σ = 2, 1 with g = −0.5, 0.25 (u_i v_iᵀ = e_i e_iᵀ,
        // the signs of u_i and v_i cancel).
        let nsg = score_matrix(&v, gm, 0.34, ScoreRule::NegativeSvGrad).unwrap();
        assert!((nsg - 0.5).abs() < 1e-6, "{nsg}");
        let fo = score_matrix(&v, gm, 0.34, ScoreRule::FirstOrder).unwrap();
        // ΔL = −(−0.5·2 + 0.25·1) = 0.75
        assert!((fo - 0.75).abs() < 1e-6, "{fo}");
        // Slope: ΔL = 0.75 over ‖(2, 1)‖ = √5.
        let sl = score_matrix(&v, gm, 0.34, ScoreRule::FirstOrderSlope).unwrap();
        assert!((sl - 0.75 / 5f64.sqrt()).abs() < 1e-6, "{sl}");
        // rho = 1 drops nothing.
        assert_eq!(
            score_matrix(&v, gm, 1.0, ScoreRule::FirstOrder).unwrap(),
            0.0
        );
        // Two blocks: rows 0-1 and row 2; keep rank 1 of each, row 2's block has rank 1.
        let f2 = factor_matrix(RowMajor::new(&w, 3, 3).unwrap(), 2).unwrap();
        let v2 = f2.view();
        let fo2 = score_matrix(&v2, gm, 0.5, ScoreRule::FirstOrder).unwrap();
        // Block 0 = [[3,0,0],[0,2,0]] drops σ = 2 (u = e_1, v = e_1, g = −0.5): ΔL = 1.
        assert!((fo2 - 1.0).abs() < 1e-6, "{fo2}");
    }

    #[test]
    fn rule_names_round_trip() {
        for r in ScoreRule::ALL {
            assert_eq!(r.name().parse::<ScoreRule>().unwrap(), r);
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.name()));
        }
        assert!(matches!(
            "laser".parse::<ScoreRule>(),
            Err(ScoreError::UnknownRule(_))
        ));
    }

    fn entry(
        layer: usize,
        kind: MatrixKind,
        blocks: usize,
        rho: f64,
        value: f64,
        rule: ScoreRule,
    ) -> ScoredEntry {
        ScoredEntry {
            matrix: MatrixId::new(layer, kind),
            blocks,
            rho,
            rule,
            value,
        }
    }

    #[test]
    fn top_k_orders_and_breaks_ties() {
        use MatrixKind::*;
        let n = ScoreRule::NegativeSvGrad;
        let e = vec![
            entry(3, Down, 4, 0.1, 1.0, n),
            entry(1, Up, 1, 0.2, 5.0, n),
            entry(1, Up, 1, 0.1, 5.0, n),
            entry(0, Q, 2, 0.5, 5.0, n),
            entry(0, Q, 1, 0.5, 5.0, n),
            entry(2, Gate, 8, 0.01, 7.0, n),
        ];
        let t = top_k(&e, 4).unwrap();
        let key = |x: &ScoredEntry| (x.matrix.layer, x.blocks, x.rho);
        assert_eq!(
            t.iter().map(key).collect::<Vec<_>>(),
            vec![(2, 8, 0.01), (0, 1, 0.5), (0, 2, 0.5), (1, 1, 0.1)]
        );
        // Input order does not matter.
        let mut rev = e.clone();
        rev.reverse();
        assert_eq!(top_k(&rev, 4).unwrap(), t);
        // Best entry per matrix.
        let m = top_k_matrices(&e, 10).unwrap();
        assert_eq!(
            m.iter().map(key).collect::<Vec<_>>(),
            vec![(2, 8, 0.01), (0, 1, 0.5), (1, 1, 0.1), (3, 4, 0.1)]
        );
        assert_eq!(top_k_matrices(&e, 2).unwrap().len(), 2);
        assert!(top_k(&[], 3).unwrap().is_empty());
        assert!(top_k(&e, 0).unwrap().is_empty());
    }

    #[test]
    fn first_order_ranks_most_negative_first() {
        let f = ScoreRule::FirstOrder;
        let e = vec![
            entry(0, MatrixKind::Q, 1, 0.5, 0.3, f),
            entry(1, MatrixKind::Q, 1, 0.5, -2.0, f),
            entry(2, MatrixKind::Q, 1, 0.5, -0.1, f),
        ];
        let t = top_k(&e, 3).unwrap();
        assert_eq!(
            t.iter().map(|x| x.matrix.layer).collect::<Vec<_>>(),
            vec![1, 2, 0]
        );
    }

    #[test]
    fn nan_and_mixed_rules_are_errors() {
        let n = ScoreRule::NegativeSvGrad;
        let e = vec![
            entry(0, MatrixKind::Q, 1, 0.5, 1.0, n),
            entry(1, MatrixKind::Q, 1, 0.5, f64::NAN, n),
        ];
        assert!(matches!(top_k(&e, 1), Err(ScoreError::Nan { .. })));
        assert!(matches!(top_k_matrices(&e, 1), Err(ScoreError::Nan { .. })));
        let e = vec![entry(0, MatrixKind::Q, 1, f64::NAN, 1.0, n)];
        assert!(top_k(&e, 1).is_err());
        let e = vec![
            entry(0, MatrixKind::Q, 1, 0.5, 1.0, n),
            entry(1, MatrixKind::Q, 1, 0.5, 1.0, ScoreRule::FirstOrder),
        ];
        assert!(matches!(top_k(&e, 1), Err(ScoreError::MixedRules(..))));
    }

    proptest! {
        #[test]
        fn top_k_is_a_sorted_prefix(values in proptest::collection::vec((0usize..4, 1usize..4, 1u8..5, -3i8..3), 0..40), k in 0usize..50) {
            let e: Vec<ScoredEntry> = values
                .iter()
                .map(|&(l, b, r, v)| entry(l, MatrixKind::Down, b, f64::from(r) / 4.0, f64::from(v), ScoreRule::NegativeSvGrad))
                .collect();
            let all = ranked(&e).unwrap();
            let t = top_k(&e, k).unwrap();
            prop_assert_eq!(t.len(), k.min(e.len()));
            prop_assert_eq!(&all[..t.len()], &t[..]);
            for w in all.windows(2) {
                prop_assert!(rank_order(&w[0], &w[1]) != Ordering::Greater);
            }
        }
    }
}
