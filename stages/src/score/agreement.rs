//! How far two rankings agree, and what a ranking drawn uniformly at random would give.
//!
//! `c2i study` uses these to ask whether a score rule's ranking of the matrices
//! predicts the changes measured by evaluating every one of them (the "oracle"), and
//! whether a ranking is stable when the gradient pass sees fewer rows.
//!
//! - [`average_ranks`]: 1-based ascending ranks, tied values share the mean of their
//!   ranks (`[10, 20, 20, 30]` → `[1, 2.5, 2.5, 4]`).
//! - [`spearman`]: Pearson's correlation of the average ranks (Spearman's rho with the
//!   tie correction); `None` when it is undefined (fewer than two items, or one side
//!   constant).
//! - [`kendall_tau_b`]: (concordant − discordant) / √((n₀ − n₁)(n₀ − n₂)), with n₀ the
//!   pairs, n₁ and n₂ the pairs tied in x and in y; `None` when undefined.
//! - [`order_desc`]: items by value, largest first, ties by item (deterministic).
//! - [`top_k_overlap`], [`recall_in_top_k`], [`holds_in_top_k`]: set agreement of
//!   rankings' prefixes.
//! - Expected values under a uniformly random ranking of N items:
//!   [`RANDOM_CORRELATION`] (Spearman and Kendall: 0), [`random_recall`] (the
//!   reference's top-n found in a random top-k: k/N of them),
//!   [`random_holds_best`] (a random top-k holds a given item: k/N) and
//!   [`random_top_k_overlap`] (two top-k sets share k·k/N items).
//!
//! Every function rejects NaN and infinite values and mismatched lengths with an error
//! saying which; none panics on its input.

use std::collections::BTreeSet;

/// What is wrong with the values given.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AgreementError {
    /// Two value lists that should pair up item by item differ in length.
    #[error("{what}: {left} values against {right}")]
    LengthMismatch {
        what: &'static str,
        left: usize,
        right: usize,
    },
    /// A value is NaN or infinite.
    #[error("{what}: value {index} is not a finite number ({value})")]
    NotFinite {
        what: &'static str,
        index: usize,
        value: f64,
    },
}

/// The expected Spearman or Kendall correlation of a uniformly random ranking with any
/// fixed one.
pub const RANDOM_CORRELATION: f64 = 0.0;

fn check_finite(what: &'static str, xs: &[f64]) -> Result<(), AgreementError> {
    match xs.iter().position(|x| !x.is_finite()) {
        Some(index) => Err(AgreementError::NotFinite {
            what,
            index,
            value: xs[index],
        }),
        None => Ok(()),
    }
}

fn check_pair(x: &[f64], y: &[f64]) -> Result<(), AgreementError> {
    if x.len() != y.len() {
        return Err(AgreementError::LengthMismatch {
            what: "paired values",
            left: x.len(),
            right: y.len(),
        });
    }
    check_finite("x", x)?;
    check_finite("y", y)
}

/// 1-based ascending ranks; tied values all get the mean of the ranks they span.
pub fn average_ranks(xs: &[f64]) -> Result<Vec<f64>, AgreementError> {
    check_finite("values", xs)?;
    let mut idx: Vec<usize> = (0..xs.len()).collect();
    idx.sort_by(|&a, &b| xs[a].total_cmp(&xs[b]).then(a.cmp(&b)));
    let mut ranks = vec![0.0; xs.len()];
    let mut start = 0;
    while start < idx.len() {
        let mut end = start + 1;
        while end < idx.len() && xs[idx[end]] == xs[idx[start]] {
            end += 1;
        }
        // Positions start..end hold ranks start+1 ..= end: their mean.
        let mean = (start + 1 + end) as f64 / 2.0;
        for &i in &idx[start..end] {
            ranks[i] = mean;
        }
        start = end;
    }
    Ok(ranks)
}

/// Pearson's correlation; `None` with fewer than two items or a constant side.
fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len();
    if n < 2 {
        return None;
    }
    let mx = x.iter().sum::<f64>() / n as f64;
    let my = y.iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (dx, dy) = (a - mx, b - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx <= 0.0 || syy <= 0.0 {
        return None;
    }
    Some((sxy / (sxx * syy).sqrt()).clamp(-1.0, 1.0))
}

/// Spearman's rank correlation of paired values, ties by average ranks. `None` when it
/// is undefined: fewer than two pairs, or every x (or every y) equal.
pub fn spearman(x: &[f64], y: &[f64]) -> Result<Option<f64>, AgreementError> {
    check_pair(x, y)?;
    Ok(pearson(&average_ranks(x)?, &average_ranks(y)?))
}

/// Kendall's tau-b of paired values (ties in either variable corrected for). `None`
/// when it is undefined: fewer than two pairs, or one side constant.
pub fn kendall_tau_b(x: &[f64], y: &[f64]) -> Result<Option<f64>, AgreementError> {
    check_pair(x, y)?;
    let n = x.len();
    let (mut concordant, mut discordant, mut tied_x, mut tied_y) = (0u64, 0u64, 0u64, 0u64);
    for i in 0..n {
        for j in i + 1..n {
            let dx = x[i].total_cmp(&x[j]);
            let dy = y[i].total_cmp(&y[j]);
            // ±0.0 are equal values, not an order.
            let ex = x[i] == x[j];
            let ey = y[i] == y[j];
            if ex {
                tied_x += 1;
            }
            if ey {
                tied_y += 1;
            }
            if ex || ey {
                continue;
            }
            if dx == dy {
                concordant += 1;
            } else {
                discordant += 1;
            }
        }
    }
    let pairs = (n * n.saturating_sub(1) / 2) as u64;
    let denom = ((pairs - tied_x) as f64) * ((pairs - tied_y) as f64);
    if n < 2 || denom <= 0.0 {
        return Ok(None);
    }
    let tau = (concordant as f64 - discordant as f64) / denom.sqrt();
    Ok(Some(tau.clamp(-1.0, 1.0)))
}

/// The items by value, largest first; equal values in item order (ascending), so the
/// order is the same whatever order the items come in.
pub fn order_desc<T: Ord + Clone>(items: &[(T, f64)]) -> Result<Vec<T>, AgreementError> {
    let values: Vec<f64> = items.iter().map(|(_, v)| *v).collect();
    check_finite("values to order", &values)?;
    let mut v: Vec<&(T, f64)> = items.iter().collect();
    v.sort_by(|a, b| {
        if a.1 == b.1 {
            // Equal values (0.0 and -0.0 included): item order.
            a.0.cmp(&b.0)
        } else {
            b.1.total_cmp(&a.1)
        }
    });
    Ok(v.into_iter().map(|(t, _)| t.clone()).collect())
}

fn prefix<T: Ord>(ranking: &[T], k: usize) -> BTreeSet<&T> {
    ranking.iter().take(k).collect()
}

/// Items the first `k` of `a` and the first `k` of `b` have in common (k is capped at
/// each list's length).
pub fn top_k_overlap<T: Ord>(a: &[T], b: &[T], k: usize) -> usize {
    prefix(a, k).intersection(&prefix(b, k)).count()
}

/// The share of `reference`'s first `n` items that are among `ranking`'s first `k`;
/// `None` when `reference` or `n` is empty.
pub fn recall_in_top_k<T: Ord>(reference: &[T], n: usize, ranking: &[T], k: usize) -> Option<f64> {
    let want = prefix(reference, n);
    if want.is_empty() {
        return None;
    }
    let got = prefix(ranking, k);
    Some(want.intersection(&got).count() as f64 / want.len() as f64)
}

/// Whether `item` is among `ranking`'s first `k`.
pub fn holds_in_top_k<T: PartialEq>(item: &T, ranking: &[T], k: usize) -> bool {
    ranking.iter().take(k).any(|x| x == item)
}

/// The 1-based position of `item` in `ranking`.
pub fn position<T: PartialEq>(item: &T, ranking: &[T]) -> Option<usize> {
    ranking.iter().position(|x| x == item).map(|i| i + 1)
}

/// Expected recall of any fixed top-n within the top-k of a uniformly random ranking of
/// `n_items`: each of the n lands in the random top-k with probability k/N. `None` for
/// no items.
pub fn random_recall(n_items: usize, k: usize) -> Option<f64> {
    (n_items > 0).then(|| k.min(n_items) as f64 / n_items as f64)
}

/// Probability that a uniformly random ranking of `n_items` has a given item in its
/// top-k: k/N. `None` for no items.
pub fn random_holds_best(n_items: usize, k: usize) -> Option<f64> {
    random_recall(n_items, k)
}

/// Expected overlap of a fixed top-k with a uniformly random ranking's top-k: each of
/// the k lands there with probability k/N, so k·k/N. `None` for no items.
pub fn random_top_k_overlap(n_items: usize, k: usize) -> Option<f64> {
    (n_items > 0).then(|| {
        let k = k.min(n_items) as f64;
        k * k / n_items as f64
    })
}

/// Expected largest value among `k` of `values` chosen uniformly at random without
/// replacement (k capped at the number of values): with the values sorted largest
/// first, the i-th (1-based) is the largest of the subset with probability
/// C(n-i, k-1) / C(n, k). `None` for no values or k = 0.
pub fn random_subset_expected_max(values: &[f64], k: usize) -> Result<Option<f64>, AgreementError> {
    check_finite("values of a random subset", values)?;
    let n = values.len();
    let k = k.min(n);
    if k == 0 {
        return Ok(None);
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    // p_1 = k/n; p_{i+1} = p_i (n-i-k+1)/(n-i), the ratio of consecutive binomials.
    let mut p = k as f64 / n as f64;
    let mut expected = 0.0;
    for (i, v) in sorted.iter().enumerate() {
        let i = i + 1;
        if p <= 0.0 {
            break;
        }
        expected += p * v;
        if i < n {
            p *= (n - i + 1).saturating_sub(k) as f64 / (n - i) as f64;
        }
    }
    Ok(Some(expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn average_ranks_share_ties() {
        assert_eq!(
            average_ranks(&[10.0, 20.0, 20.0, 30.0]).unwrap(),
            vec![1.0, 2.5, 2.5, 4.0]
        );
        assert_eq!(
            average_ranks(&[3.0, 1.0, 3.0, 3.0]).unwrap(),
            vec![3.0, 1.0, 3.0, 3.0]
        );
        assert!(average_ranks(&[]).unwrap().is_empty());
        // -0.0 and 0.0 are one value.
        assert_eq!(average_ranks(&[0.0, -0.0]).unwrap(), vec![1.5, 1.5]);
        assert!(matches!(
            average_ranks(&[1.0, f64::NAN]),
            Err(AgreementError::NotFinite { index: 1, .. })
        ));
    }

    #[test]
    fn spearman_hand_computed() {
        // x ranks 1..5; y = [5, 6, 7, 8, 7] ranks [1, 2, 3.5, 5, 3.5].
        // Deviations from 3: dx = [-2,-1,0,1,2], dy = [-2,-1,0.5,2,0.5]:
        // Σdxdy = 8, Σdx² = 10, Σdy² = 9.5, rho = 8 / √95.
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let y = [5.0, 6.0, 7.0, 8.0, 7.0];
        let r = spearman(&x, &y).unwrap().unwrap();
        assert!(close(r, 8.0 / 95f64.sqrt()), "{r}");
        assert!((r - 0.820_782_6).abs() < 1e-7);
        // Monotone transforms do not matter; reversal flips the sign.
        let y2: Vec<f64> = x.iter().map(|v: &f64| v.powi(3) + 100.0).collect();
        assert!(close(spearman(&x, &y2).unwrap().unwrap(), 1.0));
        let y3: Vec<f64> = x.iter().map(|v| -v).collect();
        assert!(close(spearman(&x, &y3).unwrap().unwrap(), -1.0));
        // Undefined: constant side, one pair.
        assert_eq!(spearman(&x, &[2.0; 5]).unwrap(), None);
        assert_eq!(spearman(&[1.0], &[2.0]).unwrap(), None);
        assert!(matches!(
            spearman(&x, &[1.0]),
            Err(AgreementError::LengthMismatch {
                left: 5,
                right: 1,
                ..
            })
        ));
        assert!(spearman(&[1.0, f64::INFINITY], &[1.0, 2.0]).is_err());
    }

    #[test]
    fn kendall_tau_b_hand_computed() {
        // Same data: of the 10 pairs, 8 concordant, 1 discordant (items 3, 4), 1 tied in
        // y only (items 2, 4): tau-b = (8 - 1) / √(10 · 9).
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let y = [5.0, 6.0, 7.0, 8.0, 7.0];
        let t = kendall_tau_b(&x, &y).unwrap().unwrap();
        assert!(close(t, 7.0 / 90f64.sqrt()), "{t}");
        // Ties on both sides: x = [1, 1, 2], y = [1, 2, 2]. Pairs: (0,1) tied in x,
        // (0,2) concordant, (1,2) tied in y: (1 - 0) / √(2 · 2) = 0.5.
        let t = kendall_tau_b(&[1.0, 1.0, 2.0], &[1.0, 2.0, 2.0])
            .unwrap()
            .unwrap();
        assert!(close(t, 0.5), "{t}");
        // A full reversal.
        assert!(close(
            kendall_tau_b(&[1.0, 2.0, 3.0, 4.0], &[4.0, 3.0, 2.0, 1.0])
                .unwrap()
                .unwrap(),
            -1.0
        ));
        assert_eq!(kendall_tau_b(&[1.0, 1.0], &[1.0, 2.0]).unwrap(), None);
        assert_eq!(kendall_tau_b(&[], &[]).unwrap(), None);
        assert!(kendall_tau_b(&[1.0, 2.0], &[1.0]).is_err());
    }

    #[test]
    fn order_desc_breaks_ties_by_item() {
        let items = [("c", 1.0), ("a", 2.0), ("b", 2.0), ("d", -1.0)];
        assert_eq!(order_desc(&items).unwrap(), vec!["a", "b", "c", "d"]);
        let mut rev = items;
        rev.reverse();
        assert_eq!(order_desc(&rev).unwrap(), vec!["a", "b", "c", "d"]);
        // -0.0 ties with 0.0.
        assert_eq!(
            order_desc(&[("y", -0.0), ("x", 0.0)]).unwrap(),
            vec!["x", "y"]
        );
        assert!(order_desc(&[("x", f64::NAN)]).is_err());
    }

    #[test]
    fn prefix_agreement_hand_computed() {
        let a = [1, 2, 3, 4];
        let b = [4, 3, 9, 1];
        assert_eq!(top_k_overlap(&a, &b, 2), 0);
        assert_eq!(top_k_overlap(&a, &b, 3), 1);
        assert_eq!(top_k_overlap(&a, &b, 4), 3);
        assert_eq!(top_k_overlap(&a, &b, 40), 3);
        let reference = ["a", "b", "c", "d"];
        let ranking = ["c", "x", "a", "y"];
        assert!(close(
            recall_in_top_k(&reference, 3, &ranking, 2).unwrap(),
            1.0 / 3.0
        ));
        assert!(close(
            recall_in_top_k(&reference, 3, &ranking, 3).unwrap(),
            2.0 / 3.0
        ));
        assert_eq!(recall_in_top_k(&reference, 0, &ranking, 3), None);
        assert_eq!(recall_in_top_k::<&str>(&[], 3, &ranking, 3), None);
        assert!(holds_in_top_k(&"a", &ranking, 3));
        assert!(!holds_in_top_k(&"a", &ranking, 2));
        assert_eq!(position(&"a", &ranking), Some(3));
        assert_eq!(position(&"z", &ranking), None);
    }

    #[test]
    fn random_baselines_hand_computed() {
        assert!(close(random_recall(90, 3).unwrap(), 3.0 / 90.0));
        assert!(close(random_recall(90, 10).unwrap(), 1.0 / 9.0));
        assert!(close(random_holds_best(90, 3).unwrap(), 1.0 / 30.0));
        assert!(close(random_top_k_overlap(90, 3).unwrap(), 0.1));
        assert!(close(random_recall(2, 5).unwrap(), 1.0));
        assert!(close(random_top_k_overlap(2, 5).unwrap(), 2.0));
        assert_eq!(random_recall(0, 3), None);
        assert_eq!(random_top_k_overlap(0, 3), None);
    }

    /// Every permutation of 0..n (Heap's algorithm).
    fn permutations(n: usize) -> Vec<Vec<usize>> {
        fn go(k: usize, a: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
            if k <= 1 {
                out.push(a.clone());
                return;
            }
            for i in 0..k {
                go(k - 1, a, out);
                let j = if k.is_multiple_of(2) { i } else { 0 };
                a.swap(j, k - 1);
            }
        }
        let mut a: Vec<usize> = (0..n).collect();
        let mut out = Vec::new();
        go(n, &mut a, &mut out);
        out
    }

    #[test]
    fn random_baselines_are_the_means_over_every_ranking() {
        // Over all 5! rankings of 5 items against the fixed ranking 0, 1, 2, 3, 4.
        let n = 5;
        let fixed: Vec<usize> = (0..n).collect();
        let all = permutations(n);
        assert_eq!(all.len(), 120);
        let m = all.len() as f64;
        for k in 1..=n {
            for top in 1..=n {
                let recall: f64 = all
                    .iter()
                    .map(|p| recall_in_top_k(&fixed, top, p, k).unwrap())
                    .sum::<f64>()
                    / m;
                assert!(close(recall, random_recall(n, k).unwrap()), "{top} {k}");
            }
            let holds = all.iter().filter(|p| holds_in_top_k(&0, p, k)).count() as f64 / m;
            assert!(close(holds, random_holds_best(n, k).unwrap()));
            let overlap = all
                .iter()
                .map(|p| top_k_overlap(&fixed, p, k) as f64)
                .sum::<f64>()
                / m;
            assert!(close(overlap, random_top_k_overlap(n, k).unwrap()), "{k}");
        }
        let fixed_f: Vec<f64> = fixed.iter().map(|&i| i as f64).collect();
        let (mut rho, mut tau) = (0.0, 0.0);
        for p in &all {
            // Position of each item in p as its value.
            let mut v = vec![0.0; n];
            for (pos, &item) in p.iter().enumerate() {
                v[item] = pos as f64;
            }
            rho += spearman(&fixed_f, &v).unwrap().unwrap();
            tau += kendall_tau_b(&fixed_f, &v).unwrap().unwrap();
        }
        assert!((rho / m - RANDOM_CORRELATION).abs() < 1e-12);
        assert!((tau / m - RANDOM_CORRELATION).abs() < 1e-12);
    }

    #[test]
    fn random_subset_expected_max_is_the_mean_over_every_subset() {
        let values = [0.3, -1.0, 2.5, 0.3, 7.0, -0.5];
        let n = values.len();
        for k in 1..=n {
            let mut sum = 0.0;
            let mut count = 0usize;
            for mask in 0u32..(1 << n) {
                if mask.count_ones() as usize != k {
                    continue;
                }
                let best = (0..n)
                    .filter(|i| mask & (1 << i) != 0)
                    .map(|i| values[i])
                    .fold(f64::NEG_INFINITY, f64::max);
                sum += best;
                count += 1;
            }
            let want = sum / count as f64;
            let got = random_subset_expected_max(&values, k).unwrap().unwrap();
            assert!(close(got, want), "k {k}: {got} vs {want}");
        }
        // k = 1 is the mean; k = n (or more) the maximum.
        let mean = values.iter().sum::<f64>() / n as f64;
        assert!(close(
            random_subset_expected_max(&values, 1).unwrap().unwrap(),
            mean
        ));
        assert_eq!(random_subset_expected_max(&values, 99).unwrap(), Some(7.0));
        assert_eq!(random_subset_expected_max(&values, 0).unwrap(), None);
        assert_eq!(random_subset_expected_max(&[], 3).unwrap(), None);
        assert!(random_subset_expected_max(&[1.0, f64::NAN], 1).is_err());
    }
}
