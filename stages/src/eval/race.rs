//! Racing candidates over growing shares of the selection rows, and stopping the ones
//! that cannot win.
//!
//! The rows are evaluated in rounds ([`rounds`]); after each round every candidate
//! still in the race has figures on the rows seen so far.
//!
//! - [`Racing::Exact`]: a candidate stops when even full credit on all its remaining
//!   rows could not lift its final selection metric to the score the leader is already
//!   guaranteed ([`bounds`]). Ties on the metric go to the lower log-loss, which the
//!   remaining rows can change either way, so a candidate stops only when its best
//!   case is *strictly* below the leader's worst case: the winner is the one a full
//!   evaluation of every candidate picks, with the same figures.
//! - [`Racing::Halving`]: successive halving: after each round the better half (by
//!   the metric, then log-loss, on the rows seen) goes on. Faster, and statistical: the
//!   winner can differ from a full evaluation's.
//! - [`Racing::Off`]: every candidate on every row.

use super::metrics::{compare_candidates, MetricsError, SelectionMetric, SelectionScore};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

/// How candidates race (`search.racing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Racing {
    /// Stop a candidate only when it provably cannot win.
    #[default]
    Exact,
    /// Keep the better half after each round.
    Halving,
    /// Every candidate on every row.
    Off,
}

impl Racing {
    pub fn name(self) -> &'static str {
        match self {
            Racing::Exact => "exact",
            Racing::Halving => "halving",
            Racing::Off => "off",
        }
    }
}

impl fmt::Display for Racing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Racing {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "exact" => Ok(Racing::Exact),
            "halving" => Ok(Racing::Halving),
            "off" => Ok(Racing::Off),
            other => Err(format!(
                "unknown racing `{other}`: expected exact, halving or off"
            )),
        }
    }
}

/// Where the rounds end, as shares of the selection rows: a quarter, a half, three
/// quarters, 90%, all. The last rounds are short because that is where exact racing
/// can stop candidates (a deficit must exceed the rows left).
pub const ROUND_ENDS: [f64; 5] = [0.25, 0.5, 0.75, 0.9, 1.0];

/// The rounds over `n` rows: consecutive, non-empty ranges covering `0..n`, ending at
/// `ceil(share × n)` for each share of [`ROUND_ENDS`] (fewer rounds when `n` is small).
pub fn rounds(n: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for share in ROUND_ENDS {
        let end = ((share * n as f64).ceil() as usize).min(n);
        if end > start {
            out.push(start..end);
            start = end;
        }
    }
    out
}

/// One evaluated row, as racing sees it: its credit toward accuracy (0 or 1, or a
/// token F1) and its gold class (fixed choices only).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowOutcome {
    pub credit: f64,
    pub class: Option<usize>,
}

/// The least and the most a candidate's final selection metric can be, after the
/// first `seen.len()` rows of `gold` (the gold class of every row, in evaluation
/// order; `None` entries without classes) were evaluated with outcomes `seen`.
///
/// Accuracy: (credit so far + [0, rows left]) / rows. Balanced accuracy: the mean over
/// the classes present of (credit so far in the class + [0, its rows left]) / its rows,
/// as [`classification_metrics`](super::metrics::classification_metrics) defines it.
pub fn bounds(
    metric: SelectionMetric,
    gold: &[Option<usize>],
    seen: &[RowOutcome],
) -> Result<(f64, f64), MetricsError> {
    let n = gold.len();
    if n == 0 || seen.len() > n {
        return Err(MetricsError::LengthMismatch {
            what: "rows seen and rows in the race",
            left: seen.len(),
            right: n,
        });
    }
    match metric {
        SelectionMetric::Accuracy => {
            let got: f64 = seen.iter().map(|o| o.credit).sum();
            let left = (n - seen.len()) as f64;
            Ok((got / n as f64, (got + left) / n as f64))
        }
        SelectionMetric::BalancedAccuracy => {
            let classes = gold.iter().flatten().copied().max().map_or(0, |m| m + 1);
            if classes == 0 || gold.iter().any(Option::is_none) {
                return Err(MetricsError::MetricUnavailable { metric });
            }
            let mut total = vec![0usize; classes];
            for g in gold.iter().flatten() {
                total[*g] += 1;
            }
            let mut got = vec![0f64; classes];
            let mut done = vec![0usize; classes];
            for (o, g) in seen.iter().zip(gold) {
                let g = g.unwrap_or(0);
                got[g] += o.credit;
                done[g] += 1;
            }
            let present: Vec<usize> = (0..classes).filter(|&c| total[c] > 0).collect();
            let k = present.len() as f64;
            let lo = present
                .iter()
                .map(|&c| got[c] / total[c] as f64)
                .sum::<f64>()
                / k;
            let hi = present
                .iter()
                .map(|&c| (got[c] + (total[c] - done[c]) as f64) / total[c] as f64)
                .sum::<f64>()
                / k;
            Ok((lo, hi))
        }
    }
}

/// Slack for float rounding between a bound and the metric computed from counts.
const EPS: f64 = 1e-9;

/// Which candidates stay in an exact race, given each one's (lower, upper) bounds:
/// those whose upper bound reaches the best lower bound.
pub fn exact_survivors(bounds: &[(f64, f64)]) -> Vec<bool> {
    let best_lower = bounds.iter().map(|b| b.0).fold(f64::NEG_INFINITY, f64::max);
    bounds.iter().map(|b| b.1 >= best_lower - EPS).collect()
}

/// Which candidates stay after a round of successive halving: the better
/// `ceil(n / 2)` under `metric` on the rows seen (then log-loss, then key), never
/// fewer than one.
pub fn halving_survivors<K: Ord>(
    metric: SelectionMetric,
    partial: &[(K, SelectionScore)],
) -> Result<Vec<bool>, MetricsError> {
    let mut order: Vec<usize> = (0..partial.len()).collect();
    let mut err = None;
    order.sort_by(|&a, &b| {
        match compare_candidates(
            metric,
            (&partial[b].0, &partial[b].1),
            (&partial[a].0, &partial[a].1),
        ) {
            Ok(o) => o,
            Err(e) => {
                err = Some(e);
                Ordering::Equal
            }
        }
    });
    if let Some(e) = err {
        return Err(e);
    }
    let keep = partial.len().div_ceil(2);
    let mut alive = vec![false; partial.len()];
    for &i in order.iter().take(keep) {
        alive[i] = true;
    }
    Ok(alive)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(credit: f64, class: usize) -> RowOutcome {
        RowOutcome {
            credit,
            class: Some(class),
        }
    }

    #[test]
    fn rounds_cover_every_row_once() {
        assert_eq!(rounds(100), vec![0..25, 25..50, 50..75, 75..90, 90..100]);
        assert_eq!(rounds(3), vec![0..1, 1..2, 2..3]);
        assert_eq!(rounds(1), vec![0..1]);
        assert!(rounds(0).is_empty());
        for n in 1..60 {
            let r = rounds(n);
            assert_eq!(r.first().unwrap().start, 0);
            assert_eq!(r.last().unwrap().end, n);
            assert!(r.windows(2).all(|w| w[0].end == w[1].start));
            assert!(r.iter().all(|x| !x.is_empty()));
        }
    }

    #[test]
    fn accuracy_bounds_by_hand() {
        let gold = vec![None; 10];
        let seen = [o(1.0, 0), o(0.0, 0), o(1.0, 0), o(0.5, 0)];
        let (lo, hi) = bounds(SelectionMetric::Accuracy, &gold, &seen).unwrap();
        assert!((lo - 0.25).abs() < 1e-12 && (hi - 0.85).abs() < 1e-12);
        // All rows seen: both bounds are the accuracy.
        let all: Vec<_> = (0..10).map(|i| o((i % 2) as f64, 0)).collect();
        let (lo, hi) = bounds(SelectionMetric::Accuracy, &gold, &all).unwrap();
        assert_eq!((lo, hi), (0.5, 0.5));
    }

    #[test]
    fn balanced_accuracy_bounds_by_hand() {
        // Classes: 0 0 0 1 (3 and 1 rows). Seen: the first two (one right).
        let gold = [Some(0), Some(0), Some(0), Some(1)];
        let seen = [o(1.0, 0), o(0.0, 0)];
        let (lo, hi) = bounds(SelectionMetric::BalancedAccuracy, &gold, &seen).unwrap();
        // lower: (1/3 + 0/1) / 2; upper: (2/3 + 1/1) / 2.
        assert!((lo - 1.0 / 6.0).abs() < 1e-12, "{lo}");
        assert!((hi - 5.0 / 6.0).abs() < 1e-12, "{hi}");
        let e = bounds(SelectionMetric::BalancedAccuracy, &[None, None], &[]);
        assert!(e.is_err());
    }

    #[test]
    fn bounds_hold_for_every_completion() {
        // Every way to finish 3 remaining rows lands within the bounds, and the
        // bounds are reached.
        let gold = [Some(0), Some(1), Some(1), Some(0), Some(2), Some(1)];
        let seen = [o(1.0, 0), o(0.0, 1), o(1.0, 1)];
        for metric in [SelectionMetric::Accuracy, SelectionMetric::BalancedAccuracy] {
            let (lo, hi) = bounds(metric, &gold, &seen).unwrap();
            let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
            for mask in 0..8u32 {
                let mut all = seen.to_vec();
                for (j, g) in gold[3..].iter().enumerate() {
                    all.push(o(f64::from((mask >> j) & 1), g.unwrap()));
                }
                let (v, _) = bounds(metric, &gold, &all).unwrap();
                assert!(v >= lo - 1e-12 && v <= hi + 1e-12);
                min = min.min(v);
                max = max.max(v);
            }
            assert!((min - lo).abs() < 1e-12 && (max - hi).abs() < 1e-12);
        }
    }

    #[test]
    fn exact_keeps_ties_and_drops_only_hopeless() {
        let alive = exact_survivors(&[(0.5, 0.7), (0.2, 0.5), (0.1, 0.49), (0.3, 0.9)]);
        assert_eq!(alive, vec![true, true, false, true]);
    }

    #[test]
    fn halving_keeps_the_better_half() {
        let s = |a: f64, l: f64| SelectionScore {
            accuracy: a,
            balanced_accuracy: None,
            log_loss: l,
        };
        let p = vec![
            (0, s(0.5, 1.0)),
            (1, s(0.7, 1.0)),
            (2, s(0.5, 0.9)),
            (3, s(0.1, 0.1)),
            (4, s(0.6, 2.0)),
        ];
        let alive = halving_survivors(SelectionMetric::Accuracy, &p).unwrap();
        assert_eq!(alive, vec![false, true, true, false, true]);
        let one = halving_survivors(SelectionMetric::Accuracy, &p[..1]).unwrap();
        assert_eq!(one, vec![true]);
    }

    #[test]
    fn names_round_trip() {
        for r in [Racing::Exact, Racing::Halving, Racing::Off] {
            assert_eq!(r.name().parse::<Racing>().unwrap(), r);
        }
        assert!("fast".parse::<Racing>().unwrap_err().contains("exact"));
    }
}
