//! LASER's selection / held-out split and seeded, disjoint samples.
//!
//! # The split
//!
//! LASER evaluates every candidate on the whole data set in its fixed order and then
//! splits the predictions (`validate(predictions, split=0.2)` in
//! `src/intervention_*_bbh.py`, `*_bbh_qa.py`, `roberta_hotpot.py`; the same
//! expression in `temperature_tuning` of `*_truthfulqa.py`):
//!
//! ```text
//! val_size = int(split * len(predictions))     # split = 0.2
//! validation = predictions[:val_size]; test = predictions[val_size:]
//! ```
//!
//! So the first `int(0.2 * n)` rows are the selection part (LASER's "validation", on
//! which the best intervention is chosen) and the remaining rows the held-out part
//! (LASER's "test"). `int()` truncates the double `0.2 * n`: it rounds toward zero,
//! and since the double 0.2 is slightly above 1/5 the product never falls below `n / 5`,
//! so the rule is `floor(n / 5)` for any realistic `n` (exactly so for `n < 2^49`; the
//! tests check every `n < 200 000`). [`selection_len`] evaluates the same double
//! expression, so it agrees with Python even beyond that. For the shared files: 2000 -> 400, 18812 -> 3762, 13086 -> 2617,
//! 5882 -> 1176, 14810 -> 2962.
//!
//! # Samples
//!
//! c2i evaluates candidates on a seeded sample of the selection rows rather than all of
//! them, and computes gradients on a seeded *calibration* sample.
//! [`selection_samples`] draws both with this guarantee:
//!
//! 1. the evaluation sample is drawn first, from all selection rows, with the
//!    evaluation seed alone; it depends only on (number of rows, evaluation size,
//!    evaluation seed), so changing the calibration size or seed never changes it;
//! 2. the calibration sample is drawn from the selection rows *not* in the evaluation
//!    sample, with its own seed; the two samples never share a row.
//!
//! A request for more rows than the pool holds is an error ([`DataError::SampleTooLarge`]);
//! [`SampleSize::All`] takes the whole pool.
//!
//! The draw ([`sample_from`]) is c2i's own algorithm so that it stays the same across
//! platforms and `rand` releases: the pool is sorted, a `ChaCha8Rng` seeded with
//! `seed_from_u64(seed)` drives a partial Fisher-Yates shuffle whose bounded integers
//! use Lemire's unbiased multiply-and-reject on `next_u64`, and the chosen rows are
//! returned in ascending order.

use super::error::DataError;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

/// LASER's validation fraction.
pub const SELECTION_FRACTION: f64 = 0.2;

/// Number of selection rows among `n_rows`: Python's `int(0.2 * n_rows)`.
pub fn selection_len(n_rows: usize) -> usize {
    selection_len_with(n_rows, SELECTION_FRACTION)
}

/// Number of selection rows among `n_rows` for a task's `selection_share`:
/// `int(share * n_rows)`, as LASER computes it for 0.2.
pub fn selection_len_with(n_rows: usize, share: f64) -> usize {
    (share * n_rows as f64) as usize
}

/// A part of a data file in LASER's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// First 20 %: LASER's validation part, where the best candidate is selected.
    Selection,
    /// Last 80 %: LASER's test part, reported only.
    HeldOut,
    /// Every row.
    All,
}

impl Split {
    /// The name: `selection`, `held_out`, `all`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Selection => "selection",
            Split::HeldOut => "held_out",
            Split::All => "all",
        }
    }

    /// The rows of this split in a file of `n_rows` rows (LASER's 20 %).
    pub fn rows(self, n_rows: usize) -> Range<usize> {
        self.rows_with(n_rows, SELECTION_FRACTION)
    }

    /// The rows of this split when the first `share` of the rows select.
    pub fn rows_with(self, n_rows: usize, share: f64) -> Range<usize> {
        let v = selection_len_with(n_rows, share);
        match self {
            Split::Selection => 0..v,
            Split::HeldOut => v..n_rows,
            Split::All => 0..n_rows,
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Split {
    type Err = DataError;
    /// Accepts `selection` (or LASER's `validation`), `held_out` (or `test`), `all`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "selection" | "validation" => Ok(Split::Selection),
            "held_out" | "test" => Ok(Split::HeldOut),
            "all" => Ok(Split::All),
            _ => Err(DataError::UnknownSplit(s.to_owned())),
        }
    }
}

/// How many rows to draw: a number, or the whole pool. Written `100` or `"all"` in
/// TOML/JSON; parsed from `"100"` or `"all"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SampleSize {
    N(usize),
    All,
}

impl fmt::Display for SampleSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SampleSize::N(n) => write!(f, "{n}"),
            SampleSize::All => f.write_str("all"),
        }
    }
}

impl FromStr for SampleSize {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t == "all" {
            return Ok(SampleSize::All);
        }
        t.parse::<usize>()
            .map(SampleSize::N)
            .map_err(|_| DataError::InvalidSampleSize(s.to_owned()))
    }
}

impl Serialize for SampleSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            SampleSize::N(n) => s.serialize_u64(*n as u64),
            SampleSize::All => s.serialize_str("all"),
        }
    }
}

impl<'de> Deserialize<'de> for SampleSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = SampleSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative integer or \"all\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<SampleSize, E> {
                usize::try_from(v)
                    .map(SampleSize::N)
                    .map_err(|_| E::custom(format!("sample size {v} is too large")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<SampleSize, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("sample size {v} is negative")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SampleSize, E> {
                v.parse().map_err(|e: DataError| E::custom(e.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Size and seed of one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SampleSpec {
    #[serde(rename = "samples")]
    pub size: SampleSize,
    pub seed: u64,
}

impl SampleSpec {
    pub fn new(size: SampleSize, seed: u64) -> Self {
        SampleSpec { size, seed }
    }
}

/// Uniform integer in `0..bound` (bound > 0), Lemire's multiply-and-reject.
fn below(rng: &mut ChaCha8Rng, bound: u64) -> u64 {
    debug_assert!(bound > 0);
    let threshold = bound.wrapping_neg() % bound;
    loop {
        let m = u128::from(rng.next_u64()) * u128::from(bound);
        if (m as u64) >= threshold {
            return (m >> 64) as u64;
        }
    }
}

/// Draw `size` distinct rows from `pool` with `seed`; rows come back ascending.
/// `what` names the sample in the error message ("evaluation", "calibration", ...).
/// The result depends on the *set* of rows in `pool`, not on their order.
pub fn sample_from(
    pool: &[usize],
    size: SampleSize,
    seed: u64,
    what: &str,
) -> Result<Vec<usize>, DataError> {
    let mut rows = pool.to_vec();
    rows.sort_unstable();
    rows.dedup();
    let k = match size {
        SampleSize::All => return Ok(rows),
        SampleSize::N(k) => k,
    };
    if k > rows.len() {
        return Err(DataError::SampleTooLarge {
            what: what.to_owned(),
            requested: k,
            available: rows.len(),
            detail: format!("pool of {} rows", rows.len()),
        });
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = rows.len();
    for i in 0..k {
        let j = i + below(&mut rng, (n - i) as u64) as usize;
        rows.swap(i, j);
    }
    rows.truncate(k);
    rows.sort_unstable();
    Ok(rows)
}

/// Draw from a split of a file with `n_rows` rows; rows come back ascending.
pub fn sample(
    split: Split,
    n_rows: usize,
    size: SampleSize,
    seed: u64,
) -> Result<Vec<usize>, DataError> {
    sample_with(split, n_rows, SELECTION_FRACTION, size, seed)
}

/// [`sample`] when the first `share` of the rows select.
pub fn sample_with(
    split: Split,
    n_rows: usize,
    share: f64,
    size: SampleSize,
    seed: u64,
) -> Result<Vec<usize>, DataError> {
    let pool: Vec<usize> = split.rows_with(n_rows, share).collect();
    sample_from(&pool, size, seed, split.name()).map_err(|e| match e {
        DataError::SampleTooLarge {
            what,
            requested,
            available,
            ..
        } => DataError::SampleTooLarge {
            what,
            requested,
            available,
            detail: format!("the {} split of a {n_rows}-row file", split.name()),
        },
        other => other,
    })
}

/// The evaluation and calibration samples, both within the selection split, disjoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelectionSamples {
    /// Rows on which candidates are evaluated and the best one selected (ascending).
    pub evaluation: Vec<usize>,
    /// Rows for the gradient pass (ascending); never in `evaluation`.
    pub calibration: Vec<usize>,
}

/// Draw the evaluation sample from the selection rows of an `n_rows`-row file, then
/// the calibration sample from the selection rows left over (see the module docs for
/// the guarantee). Errors when either sample does not fit.
pub fn selection_samples(
    n_rows: usize,
    evaluation: SampleSpec,
    calibration: SampleSpec,
) -> Result<SelectionSamples, DataError> {
    selection_samples_with(n_rows, SELECTION_FRACTION, evaluation, calibration)
}

/// [`selection_samples`] when the first `share` of the rows select.
pub fn selection_samples_with(
    n_rows: usize,
    share: f64,
    evaluation: SampleSpec,
    calibration: SampleSpec,
) -> Result<SelectionSamples, DataError> {
    let sel = Split::Selection.rows_with(n_rows, share);
    let eval = sample_with(
        Split::Selection,
        n_rows,
        share,
        evaluation.size,
        evaluation.seed,
    )
    .map_err(|e| rename_what(e, "evaluation"))?;
    let mut in_eval = vec![false; sel.len()];
    for &r in &eval {
        in_eval[r - sel.start] = true;
    }
    let rest: Vec<usize> = sel.clone().filter(|r| !in_eval[r - sel.start]).collect();
    let calib = sample_from(&rest, calibration.size, calibration.seed, "calibration").map_err(
        |e| match e {
            DataError::SampleTooLarge {
                what,
                requested,
                available,
                ..
            } => DataError::SampleTooLarge {
                what,
                requested,
                available,
                detail: format!(
                    "the selection split of a {n_rows}-row file has {} rows and the \
                     evaluation sample takes {}",
                    sel.len(),
                    eval.len()
                ),
            },
            other => other,
        },
    )?;
    Ok(SelectionSamples {
        evaluation: eval,
        calibration: calib,
    })
}

fn rename_what(e: DataError, new: &str) -> DataError {
    match e {
        DataError::SampleTooLarge {
            requested,
            available,
            detail,
            ..
        } => DataError::SampleTooLarge {
            what: new.to_owned(),
            requested,
            available,
            detail,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn selection_len_is_python_int_of_point_two_times_n() {
        for n in 0..200_000usize {
            assert_eq!(selection_len(n), n / 5, "n = {n}");
        }
        for (n, v) in [
            (2000, 400),
            (18812, 3762),
            (13086, 2617),
            (5882, 1176),
            (14810, 2962),
        ] {
            assert_eq!(selection_len(n), v);
            assert_eq!(Split::Selection.rows(n), 0..v);
            assert_eq!(Split::HeldOut.rows(n), v..n);
        }
    }

    #[test]
    fn split_and_size_names() {
        for s in [Split::Selection, Split::HeldOut, Split::All] {
            assert_eq!(s.name().parse::<Split>().unwrap(), s);
        }
        assert_eq!("validation".parse::<Split>().unwrap(), Split::Selection);
        assert_eq!("test".parse::<Split>().unwrap(), Split::HeldOut);
        assert!("train".parse::<Split>().is_err());
        assert_eq!("all".parse::<SampleSize>().unwrap(), SampleSize::All);
        assert_eq!("100".parse::<SampleSize>().unwrap(), SampleSize::N(100));
        assert!("-1".parse::<SampleSize>().is_err());
        assert_eq!(serde_json::to_string(&SampleSize::All).unwrap(), "\"all\"");
        assert_eq!(
            serde_json::from_str::<SampleSize>("7").unwrap(),
            SampleSize::N(7)
        );
        assert_eq!(
            serde_json::from_str::<SampleSize>("\"all\"").unwrap(),
            SampleSize::All
        );
        assert!(serde_json::from_str::<SampleSize>("-3").is_err());
        let spec: SampleSpec = serde_json::from_str(r#"{"samples": 100, "seed": 0}"#).unwrap();
        assert_eq!(spec, SampleSpec::new(SampleSize::N(100), 0));
    }

    #[test]
    fn sampling_is_deterministic_sorted_and_pinned() {
        let a = sample(Split::Selection, 2000, SampleSize::N(10), 1).unwrap();
        let b = sample(Split::Selection, 2000, SampleSize::N(10), 1).unwrap();
        assert_eq!(a, b);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert!(a.iter().all(|&r| r < 400));
        let c = sample(Split::Selection, 2000, SampleSize::N(10), 2).unwrap();
        assert_ne!(a, c);
        // Pinned values: a change here changes every cached calibration/evaluation set.
        assert_eq!(a, PINNED_SEED1_N10_OF_400);
    }

    /// `sample(Split::Selection, 2000, N(10), seed 1)`.
    const PINNED_SEED1_N10_OF_400: [usize; 10] = [5, 33, 66, 90, 116, 160, 187, 239, 285, 350];

    #[test]
    fn held_out_and_all() {
        let h = sample(Split::HeldOut, 100, SampleSize::All, 0).unwrap();
        assert_eq!(h, (20..100).collect::<Vec<_>>());
        let s = sample(Split::HeldOut, 100, SampleSize::N(80), 9).unwrap();
        assert_eq!(s, h);
    }

    #[test]
    fn too_large_is_an_error() {
        let e = sample(Split::Selection, 100, SampleSize::N(21), 0).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("cannot draw 21 selection samples"), "{msg}");
        assert!(msg.contains("only 20 rows"), "{msg}");
        let e = selection_samples(
            100,
            SampleSpec::new(SampleSize::N(15), 0),
            SampleSpec::new(SampleSize::N(6), 1),
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("cannot draw 6 calibration samples"), "{msg}");
        assert!(msg.contains("only 5 rows"), "{msg}");
        let e = selection_samples(
            100,
            SampleSpec::new(SampleSize::N(21), 0),
            SampleSpec::new(SampleSize::N(0), 1),
        )
        .unwrap_err();
        assert!(e.to_string().contains("21 evaluation samples"), "{e}");
        // All for evaluation leaves nothing for calibration.
        let e = selection_samples(
            100,
            SampleSpec::new(SampleSize::All, 0),
            SampleSpec::new(SampleSize::N(1), 1),
        )
        .unwrap_err();
        assert!(e.to_string().contains("calibration"), "{e}");
    }

    #[test]
    fn all_calibration_takes_the_rest() {
        let s = selection_samples(
            100,
            SampleSpec::new(SampleSize::N(5), 3),
            SampleSpec::new(SampleSize::All, 4),
        )
        .unwrap();
        assert_eq!(s.evaluation.len(), 5);
        assert_eq!(s.calibration.len(), 15);
        let mut all: Vec<usize> = s.evaluation.iter().chain(&s.calibration).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..20).collect::<Vec<_>>());
    }

    #[test]
    fn below_is_in_range() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for bound in [1u64, 2, 3, 7, 1000, u64::MAX] {
            for _ in 0..100 {
                assert!(below(&mut rng, bound) < bound);
            }
        }
    }

    proptest! {
        #[test]
        fn samples_are_disjoint_within_selection_and_eval_ignores_calibration(
            n_rows in 0usize..3000,
            ne in 0usize..200,
            nc in 0usize..200,
            se in any::<u64>(),
            sc in any::<u64>(),
            sc2 in any::<u64>(),
        ) {
            let sel = selection_len(n_rows);
            let r = selection_samples(
                n_rows,
                SampleSpec::new(SampleSize::N(ne), se),
                SampleSpec::new(SampleSize::N(nc), sc),
            );
            if ne + nc > sel {
                prop_assert!(r.is_err());
            } else {
                let s = r.unwrap();
                prop_assert_eq!(s.evaluation.len(), ne);
                prop_assert_eq!(s.calibration.len(), nc);
                prop_assert!(s.evaluation.windows(2).all(|w| w[0] < w[1]));
                prop_assert!(s.calibration.windows(2).all(|w| w[0] < w[1]));
                prop_assert!(s.evaluation.iter().chain(&s.calibration).all(|&r| r < sel));
                prop_assert!(s.evaluation.iter().all(|r| s.calibration.binary_search(r).is_err()));
                // Changing the calibration seed or size never changes the evaluation sample.
                let s2 = selection_samples(
                    n_rows,
                    SampleSpec::new(SampleSize::N(ne), se),
                    SampleSpec::new(SampleSize::N(nc.min(sel - ne) / 2), sc2),
                ).unwrap();
                prop_assert_eq!(&s2.evaluation, &s.evaluation);
                let alone = sample(Split::Selection, n_rows, SampleSize::N(ne), se).unwrap();
                prop_assert_eq!(&alone, &s.evaluation);
            }
        }

        #[test]
        fn sample_from_depends_on_the_set_not_the_order(
            mut pool in proptest::collection::vec(0usize..10_000, 0..300),
            k in 0usize..50,
            seed in any::<u64>(),
        ) {
            let a = sample_from(&pool, SampleSize::N(k), seed, "x");
            pool.reverse();
            let b = sample_from(&pool, SampleSize::N(k), seed, "x");
            match (a, b) {
                (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                (Err(_), Err(_)) => {}
                _ => prop_assert!(false, "one errored and the other did not"),
            }
        }
    }
}
