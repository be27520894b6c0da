//! `c2i study`: does a score rule predict the gains that evaluating every candidate
//! measures? What the engine's study driver collected ([`StudyInput`]: the oracle's
//! measured figures, each rule's scores, the sample-size variants, stage seconds) is
//! turned into the figures of the study ([`analyse`] → [`Study`], written as
//! `study.json`), a Markdown report ([`markdown`], `study.md`) and one SVG scatter
//! per rule ([`scatter_svg`]).
//!
//! Conventions, so that "higher is better" throughout:
//!
//! - a rule's *ranking value* is its score mapped so that higher is more promising
//!   ([`ScoreRule::ranking_value`]);
//! - the measured *improvement* of a candidate is −Δ log-loss (the loss falls) and
//!   Δ accuracy (Δ balanced accuracy) against the unmodified model on the same rows;
//! - Spearman's rho between the two: +1 = the rule orders candidates as the
//!   measurement does, 0 = what a uniformly random ranking gives on average.
//!
//! The oracle's order is the pipeline's own selection rule: the selection metric
//! (accuracy or balanced accuracy), ties to the lower log-loss, then matrix name and
//! keep (so the order is total and deterministic). A matrix's oracle figure is that of
//! its best keep; a matrix's rule value is that of its best entry (as `select =
//! "matrices"` picks).
//!
//! Every output is deterministic: the same input gives the same bytes (entries are
//! sorted, numbers printed with fixed decimals, no hash-map iteration).

use super::plots::{escape_xml, PALETTE};
use crate::score::agreement::{
    holds_in_top_k, kendall_tau_b, order_desc, position, random_holds_best, random_recall,
    random_subset_expected_max, random_top_k_overlap, recall_in_top_k, spearman, top_k_overlap,
    AgreementError, RANDOM_CORRELATION,
};
use crate::score::ScoreRule;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// What is wrong with a study's input.
#[derive(Debug, thiserror::Error)]
pub enum StudyError {
    /// A statistic could not be computed from the values given.
    #[error("{what}: {source}")]
    Agreement {
        what: String,
        #[source]
        source: AgreementError,
    },
    /// The pieces of the input do not fit together.
    #[error("{0}")]
    Invalid(String),
}

/// One evaluation's figures on a set of rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    pub samples: usize,
    pub accuracy: f64,
    /// Classification only.
    pub balanced_accuracy: Option<f64>,
    pub log_loss: f64,
    /// How often each answer was predicted (classification only).
    pub predictions: Option<Vec<usize>>,
    /// The most frequent answer's share of the predictions (classification only).
    pub max_predicted_share: Option<f64>,
    /// `max_predicted_share` above the pipeline's collapse threshold.
    pub collapsed: bool,
}

/// One (matrix, keep) of a rule's scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleScore {
    pub matrix: String,
    pub layer: usize,
    pub kind: String,
    pub keep: f64,
    /// The rule's value as `report.json` prints it (see [`ScoreRule`]).
    pub value: f64,
}

/// One rule's scores of the study's (matrix, keep) entries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleScores {
    pub rule: ScoreRule,
    pub scores: Vec<RuleScore>,
}

/// One oracle candidate as measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OracleInput {
    pub matrix: String,
    pub layer: usize,
    pub kind: String,
    pub keep: f64,
    pub measured: Measured,
}

/// A sample size asked for and the one used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Size {
    pub requested: usize,
    pub used: usize,
    /// Why `used` is smaller than `requested`, when it is.
    pub capped: Option<String>,
}

/// The rules' scores from a gradient pass on `size` calibration rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationInput {
    pub size: Size,
    pub rules: Vec<RuleScores>,
}

/// A winner of the pipeline as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Winner {
    pub matrix: String,
    pub blocks: usize,
    pub keep: f64,
    pub selection: Measured,
    pub heldout: Measured,
}

/// The pipeline as configured, with `size` evaluation rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluationInput {
    pub size: Size,
    pub baseline_selection: Measured,
    pub baseline_heldout: Measured,
    /// `None` when no candidate finished the race (cannot happen with `exact`).
    pub winner: Option<Winner>,
}

/// Instances of one stage (or kind of evaluation) and their seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    pub instances: usize,
    /// Rows they ran on (evaluations, gradient passes); 0 where rows mean nothing.
    pub rows: usize,
    pub seconds: f64,
}

impl Tally {
    pub fn add(&mut self, rows: usize, seconds: f64) {
        self.instances += 1;
        self.rows += rows;
        self.seconds += seconds;
    }

    fn per_row(&self) -> Option<f64> {
        (self.rows > 0).then(|| self.seconds / self.rows as f64)
    }

    fn per_instance(&self) -> Option<f64> {
        (self.instances > 0).then(|| self.seconds / self.instances as f64)
    }
}

/// Seconds the study's runs recorded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CostInput {
    /// Where the seconds come from (said in the report).
    pub source: String,
    /// The oracle's candidate evaluations (every round of every candidate).
    pub oracle_candidates: Tally,
    /// The base model's evaluations on the selection rows (every round).
    pub base_selection: Tally,
    /// Block SVDs of the searched matrices at K = 1.
    pub factors_k1: Tally,
    /// Gradient passes (rows = calibration rows).
    pub gradients: Tally,
    /// The pipeline as configured: each stage's instances of its search (everything but
    /// the held-out evaluations), by stage name.
    pub c2i_search: BTreeMap<String, Tally>,
    /// Candidates the pipeline as configured evaluated.
    pub c2i_candidates: usize,
    /// Layers of the model.
    pub n_layers: usize,
}

/// Who and what a study is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub pipeline: String,
    pub task: String,
    pub model: String,
    /// `accuracy` or `balanced_accuracy`.
    pub selection_metric: String,
    pub top_k: usize,
    /// `entries` or `matrices`: what top_k counts.
    pub select: String,
    /// The pipeline's own `search.score`.
    pub score: String,
    /// Rows of the selection split (calibration and evaluation come from it).
    pub selection_split_rows: usize,
    pub calibration_rows: usize,
    pub evaluation_rows: usize,
    pub heldout_rows: usize,
    pub collapse_threshold: f64,
    pub oracle_keeps: Vec<f64>,
    /// The layers searched by the oracle and scored (`all` or a list).
    pub layers: String,
    /// Fixed answer classes (balanced accuracy and collapse flags exist).
    pub classification: bool,
}

/// Everything the study driver collected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyInput {
    pub header: Header,
    /// The unmodified model on the evaluation rows.
    pub baseline: Measured,
    pub oracle: Vec<OracleInput>,
    /// Each rule's scores at the pipeline's calibration size.
    pub rules: Vec<RuleScores>,
    pub calibration: Vec<CalibrationInput>,
    pub evaluation: Vec<EvaluationInput>,
    pub cost: CostInput,
    /// Things the reader must know (sizes capped, ...), in order.
    pub notes: Vec<String>,
}

/// One oracle entry with its changes against the baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OracleEntry {
    pub matrix: String,
    pub layer: usize,
    pub kind: String,
    pub keep: f64,
    pub measured: Measured,
    pub delta_accuracy: f64,
    pub delta_balanced_accuracy: Option<f64>,
    pub delta_log_loss: f64,
}

/// The oracle: every entry, best first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Oracle {
    pub entries: Vec<OracleEntry>,
    pub matrices: usize,
    /// The matrices, best first (each by its best keep).
    pub matrix_order: Vec<String>,
    /// Entries whose selection metric beats the baseline's.
    pub beat_baseline: usize,
    /// Of those, collapsed.
    pub beat_baseline_collapsed: usize,
    /// Entries collapsed overall.
    pub collapsed: usize,
    /// Entries whose log-loss is below the baseline's.
    pub lower_log_loss: usize,
    /// The best entry that is not collapsed (index into `entries`).
    pub best_not_collapsed: Option<usize>,
}

/// A point of a rule's scatter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub matrix: String,
    pub keep: f64,
    pub ranking_value: f64,
    pub delta_log_loss: f64,
    pub delta_accuracy: f64,
    pub collapsed: bool,
}

/// How one rule's ranking agrees with the oracle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleReport {
    pub rule: ScoreRule,
    /// Spearman of the ranking value against −Δ log-loss, over (matrix, keep) entries.
    pub spearman_entries_log_loss: Option<f64>,
    /// ... against Δ accuracy, over entries.
    pub spearman_entries_accuracy: Option<f64>,
    /// ... against Δ balanced accuracy, over entries (classification only).
    pub spearman_entries_balanced_accuracy: Option<f64>,
    /// Over matrices (each matrix's best rule value against its best measured change).
    pub spearman_matrices_log_loss: Option<f64>,
    pub spearman_matrices_accuracy: Option<f64>,
    /// Share of the oracle's top-10 matrices among the rule's top-3 / top-10 matrices.
    pub recall_top10_in_top3: Option<f64>,
    pub recall_top10_in_top10: Option<f64>,
    /// What top_k counts (`matrices` or `entries`) and whether the rule's top-k
    /// holds the oracle's best (matrix, or entry).
    pub top_k: usize,
    pub top_k_unit: String,
    pub holds_best: bool,
    /// The oracle's best matrix's position in the rule's matrix order (1-based).
    pub best_matrix_position: Option<usize>,
    /// The same for the matrix of the oracle's best entry that is not collapsed.
    pub best_not_collapsed_position: Option<usize>,
    /// The rule's first 10 matrices.
    pub top_matrices: Vec<String>,
    /// What a search of the rule's top k matrices (every oracle keep, K = 1) would
    /// find, for several k: how deep the search must go.
    #[serde(default)]
    pub depth: Vec<DepthPoint>,
    /// Share of the matrices whose best keep by the rule is the oracle's best keep of
    /// that matrix (selection metric, ties lower log-loss) / its lowest-log-loss keep:
    /// whether the rule can pick the keep (`select = "entries"`) or should leave it to
    /// the evaluation (`select = "matrices"`).
    #[serde(default)]
    pub keep_agreement_metric: Option<f64>,
    #[serde(default)]
    pub keep_agreement_log_loss: Option<f64>,
    pub points: Vec<Point>,
}

/// The best the search finds among a rule's top k matrices, each evaluated at every
/// oracle keep (K = 1) on the oracle's rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DepthPoint {
    pub k: usize,
    /// The best entry among them (selection metric, ties lower log-loss).
    pub best_matrix: String,
    pub best_keep: f64,
    /// Its change of the selection metric against the baseline.
    pub delta_metric: f64,
    pub delta_log_loss: f64,
    pub collapsed: bool,
    /// The lowest Δ log-loss among their entries.
    pub lowest_delta_log_loss: f64,
}

/// What k matrices drawn uniformly at random would give, expected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RandomDepth {
    pub k: usize,
    /// Expected Δ of the selection metric of the best of k random matrices.
    pub delta_metric: f64,
    /// Expected lowest Δ log-loss among k random matrices' entries.
    pub lowest_delta_log_loss: f64,
}

/// The depths the study reports (capped at the number of matrices).
pub const DEPTHS: [usize; 6] = [1, 2, 3, 5, 10, 20];

/// The expected values of a uniformly random ranking, beside the rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RandomBaseline {
    pub spearman: f64,
    pub kendall_tau: f64,
    pub recall_top10_in_top3: Option<f64>,
    pub recall_top10_in_top10: Option<f64>,
    pub holds_best: Option<f64>,
    /// (N + 1) / 2 of N matrices.
    pub best_matrix_position: Option<f64>,
    pub top3_overlap: Option<f64>,
    #[serde(default)]
    pub depth: Vec<RandomDepth>,
    /// 1 / the number of oracle keeps.
    #[serde(default)]
    pub keep_agreement: Option<f64>,
}

/// One rule at one calibration size, against the largest size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stability {
    pub rule: ScoreRule,
    /// Kendall's tau-b of the matrices' rule values against those at the largest size.
    pub kendall_tau: Option<f64>,
    /// Matrices the two top-3s share.
    pub top3_overlap: usize,
    /// The top-3 matrices at this size.
    pub top3: Vec<String>,
}

/// One calibration size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationReport {
    pub size: Size,
    pub reference: bool,
    pub rules: Vec<Stability>,
}

/// One evaluation size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluationReport {
    pub size: Size,
    /// The pipeline's own size.
    pub own: bool,
    pub baseline_selection: Measured,
    pub baseline_heldout: Measured,
    pub winner: Option<Winner>,
    /// Whether the winner (matrix, K, keep) differs from the one at the pipeline's own
    /// size; `None` when either has none.
    pub differs_from_own: Option<bool>,
    /// The winner beats the baseline on the selection metric.
    pub gain_on_selection: Option<bool>,
}

/// The cost figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostReport {
    pub source: String,
    pub seconds_per_candidate_row: Option<f64>,
    pub seconds_per_base_row: Option<f64>,
    pub seconds_per_factorization: Option<f64>,
    pub seconds_per_calibration_row: Option<f64>,
    pub oracle_candidates: Tally,
    /// The exhaustive oracle on the same rows as c2i: candidates' and base
    /// evaluations, factorizations (no gradient pass), measured.
    pub oracle_seconds: f64,
    pub oracle_candidate_count: usize,
    /// The pipeline as configured: per stage and in total (measured).
    pub c2i_search: BTreeMap<String, Tally>,
    pub c2i_search_seconds: f64,
    pub c2i_candidates: usize,
    /// The paper's LASER protocol, projected.
    pub paper_protocol: PaperProtocol,
}

/// LASER over every layer × all 7 matrix types × LASER's rate grid, on the whole
/// selection split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaperProtocol {
    pub layers: usize,
    pub matrix_types: usize,
    pub rates: Vec<f64>,
    pub candidates: usize,
    pub rows: usize,
    /// `None` when the per-row costs were not measured.
    pub projected_seconds: Option<f64>,
    /// Projected over c2i's measured search.
    pub speedup_over_c2i: Option<f64>,
    pub from: String,
}

/// LASER's rate grid (the paper's protocol).
pub const LASER_RATES: [f64; 9] = [1.0, 2.0, 4.0, 6.0, 8.0, 9.0, 9.5, 9.9, 9.95];
/// Matrix types per llama layer (q, k, v, o, gate, up, down).
pub const MATRIX_TYPES: usize = 7;

/// The study's figures (`study.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Study {
    pub header: Header,
    pub baseline: Measured,
    pub oracle: Oracle,
    pub rules: Vec<RuleReport>,
    pub random: RandomBaseline,
    pub calibration: Vec<CalibrationReport>,
    pub evaluation: Vec<EvaluationReport>,
    pub cost: CostReport,
    pub notes: Vec<String>,
}

fn agreement(what: impl Into<String>) -> impl FnOnce(AgreementError) -> StudyError {
    let what = what.into();
    move |source| StudyError::Agreement { what, source }
}

/// The key of an entry: matrix and the bits of keep.
type EntryKey = (String, u64);

fn metric_value(metric: &str, m: &Measured) -> Result<f64, StudyError> {
    match metric {
        "accuracy" => Ok(m.accuracy),
        "balanced_accuracy" => m.balanced_accuracy.ok_or_else(|| {
            StudyError::Invalid(
                "selection metric balanced_accuracy, but an evaluation has none (not a \
                 classification task)"
                    .into(),
            )
        }),
        other => Err(StudyError::Invalid(format!(
            "unknown selection metric `{other}`"
        ))),
    }
}

/// Oracle order: metric descending, log-loss ascending, matrix, keep.
fn oracle_cmp(metric: &str, a: &OracleEntry, b: &OracleEntry) -> std::cmp::Ordering {
    let va = metric_value(metric, &a.measured).unwrap_or(f64::NEG_INFINITY);
    let vb = metric_value(metric, &b.measured).unwrap_or(f64::NEG_INFINITY);
    vb.total_cmp(&va)
        .then(a.measured.log_loss.total_cmp(&b.measured.log_loss))
        .then(a.layer.cmp(&b.layer))
        .then(a.matrix.cmp(&b.matrix))
        .then(a.keep.total_cmp(&b.keep))
}

fn check_finite(what: &str, v: f64) -> Result<(), StudyError> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(StudyError::Invalid(format!("{what} is {v}")))
    }
}

fn check_measured(what: &str, m: &Measured) -> Result<(), StudyError> {
    check_finite(&format!("{what}: accuracy"), m.accuracy)?;
    check_finite(&format!("{what}: log_loss"), m.log_loss)?;
    if let Some(b) = m.balanced_accuracy {
        check_finite(&format!("{what}: balanced_accuracy"), b)?;
    }
    Ok(())
}

fn oracle(input: &StudyInput) -> Result<Oracle, StudyError> {
    let metric = input.header.selection_metric.as_str();
    let base = &input.baseline;
    check_measured("baseline", base)?;
    let base_metric = metric_value(metric, base)?;
    let mut seen = BTreeSet::new();
    let mut entries = Vec::with_capacity(input.oracle.len());
    for o in &input.oracle {
        let what = format!("oracle entry {} keep {}", o.matrix, o.keep);
        check_measured(&what, &o.measured)?;
        check_finite(&format!("{what}: keep"), o.keep)?;
        metric_value(metric, &o.measured)?;
        if !seen.insert((o.matrix.clone(), o.keep.to_bits())) {
            return Err(StudyError::Invalid(format!("{what} appears twice")));
        }
        entries.push(OracleEntry {
            matrix: o.matrix.clone(),
            layer: o.layer,
            kind: o.kind.clone(),
            keep: o.keep,
            measured: o.measured.clone(),
            delta_accuracy: o.measured.accuracy - base.accuracy,
            delta_balanced_accuracy: match (o.measured.balanced_accuracy, base.balanced_accuracy) {
                (Some(a), Some(b)) => Some(a - b),
                _ => None,
            },
            delta_log_loss: o.measured.log_loss - base.log_loss,
        });
    }
    if entries.is_empty() {
        return Err(StudyError::Invalid(
            "the oracle evaluated no candidate".into(),
        ));
    }
    entries.sort_by(|a, b| oracle_cmp(metric, a, b));
    let mut matrix_order = Vec::new();
    let mut in_order = BTreeSet::new();
    for e in &entries {
        if in_order.insert(e.matrix.clone()) {
            matrix_order.push(e.matrix.clone());
        }
    }
    let mut beat = 0;
    let mut beat_collapsed = 0;
    for e in &entries {
        if metric_value(metric, &e.measured)? > base_metric {
            beat += 1;
            if e.measured.collapsed {
                beat_collapsed += 1;
            }
        }
    }
    Ok(Oracle {
        best_not_collapsed: entries.iter().position(|e| !e.measured.collapsed),
        matrices: matrix_order.len(),
        matrix_order,
        beat_baseline: beat,
        beat_baseline_collapsed: beat_collapsed,
        collapsed: entries.iter().filter(|e| e.measured.collapsed).count(),
        lower_log_loss: entries
            .iter()
            .filter(|e| e.measured.log_loss < base.log_loss)
            .count(),
        entries,
    })
}

/// A rule's ranking values by entry, checked against the oracle's entries.
fn rule_values(
    oracle: &Oracle,
    r: &RuleScores,
    what: &str,
) -> Result<BTreeMap<EntryKey, f64>, StudyError> {
    let mut values = BTreeMap::new();
    for s in &r.scores {
        check_finite(
            &format!("{what}: {} score of {} keep {}", r.rule, s.matrix, s.keep),
            s.value,
        )?;
        if values
            .insert(
                (s.matrix.clone(), s.keep.to_bits()),
                r.rule.ranking_value(s.value),
            )
            .is_some()
        {
            return Err(StudyError::Invalid(format!(
                "{what}: {} scores {} keep {} twice",
                r.rule, s.matrix, s.keep
            )));
        }
    }
    covers_oracle(oracle, r.rule, &values, what)?;
    Ok(values)
}

/// Checks that a rule's values are for exactly the oracle's entries.
fn covers_oracle(
    oracle: &Oracle,
    rule: ScoreRule,
    values: &BTreeMap<EntryKey, f64>,
    what: &str,
) -> Result<(), StudyError> {
    let want: BTreeSet<EntryKey> = oracle
        .entries
        .iter()
        .map(|e| (e.matrix.clone(), e.keep.to_bits()))
        .collect();
    let have: BTreeSet<EntryKey> = values.keys().cloned().collect();
    if let Some((m, k)) = want.difference(&have).next() {
        return Err(StudyError::Invalid(format!(
            "{what}: rule {} has no score for the oracle's entry {m} keep {}",
            rule,
            f64::from_bits(*k)
        )));
    }
    if let Some((m, k)) = have.difference(&want).next() {
        return Err(StudyError::Invalid(format!(
            "{what}: rule {} scores {m} keep {}, which the oracle did not evaluate",
            rule,
            f64::from_bits(*k)
        )));
    }
    Ok(())
}

/// Each matrix's best value among its entries.
fn best_per_matrix<'a>(values: impl Iterator<Item = (&'a str, f64)>) -> Vec<(String, f64)> {
    let mut best: BTreeMap<String, f64> = BTreeMap::new();
    for (m, v) in values {
        best.entry(m.to_string())
            .and_modify(|b| *b = b.max(v))
            .or_insert(v);
    }
    best.into_iter().collect()
}

/// The matrices by each one's best rule value, best first (ties by name).
fn matrix_ranking(values: &BTreeMap<EntryKey, f64>) -> Result<Vec<String>, StudyError> {
    let best = best_per_matrix(values.iter().map(|((m, _), v)| (m.as_str(), *v)));
    order_desc(&best).map_err(agreement("matrix ranking"))
}

/// An entry's change of the selection metric against the baseline.
fn delta_metric(metric: &str, e: &OracleEntry) -> Result<f64, StudyError> {
    if metric == "balanced_accuracy" {
        e.delta_balanced_accuracy.ok_or_else(|| {
            StudyError::Invalid(format!(
                "selection metric balanced_accuracy, but {} keep {} has none",
                e.matrix, e.keep
            ))
        })
    } else {
        metric_value(metric, &e.measured).map(|_| e.delta_accuracy)
    }
}

/// The depths that apply to `n` matrices: [`DEPTHS`] below n, then n itself.
fn depths(n: usize) -> Vec<usize> {
    let mut ks: Vec<usize> = DEPTHS.iter().copied().filter(|&k| k < n).collect();
    if n > 0 {
        ks.push(n);
    }
    ks
}

/// What searching the first k matrices of `ranking` finds, for each depth.
fn depth_points(
    metric: &str,
    oracle: &Oracle,
    ranking: &[String],
) -> Result<Vec<DepthPoint>, StudyError> {
    let mut out = Vec::new();
    for k in depths(oracle.matrices) {
        let chosen: BTreeSet<&String> = ranking.iter().take(k).collect();
        // The oracle's entries are in its order, so the first one chosen is the best.
        let mut within = oracle.entries.iter().filter(|e| chosen.contains(&e.matrix));
        let Some(best) = within.next() else {
            continue;
        };
        let lowest = within
            .map(|e| e.delta_log_loss)
            .fold(best.delta_log_loss, f64::min);
        out.push(DepthPoint {
            k,
            best_matrix: best.matrix.clone(),
            best_keep: best.keep,
            delta_metric: delta_metric(metric, best)?,
            delta_log_loss: best.delta_log_loss,
            collapsed: best.measured.collapsed,
            lowest_delta_log_loss: lowest,
        });
    }
    Ok(out)
}

/// What k random matrices give, expected, for each depth.
fn random_depth(metric: &str, oracle: &Oracle) -> Result<Vec<RandomDepth>, StudyError> {
    // Per matrix: the metric of its best entry (its first in oracle order) and its
    // lowest Δ log-loss, negated so that the expected maximum gives the minimum.
    let mut best: BTreeMap<&str, f64> = BTreeMap::new();
    let mut lowest: BTreeMap<&str, f64> = BTreeMap::new();
    for e in &oracle.entries {
        if !best.contains_key(e.matrix.as_str()) {
            best.insert(&e.matrix, delta_metric(metric, e)?);
        }
        lowest
            .entry(&e.matrix)
            .and_modify(|l| *l = l.max(-e.delta_log_loss))
            .or_insert(-e.delta_log_loss);
    }
    let best: Vec<f64> = best.into_values().collect();
    let lowest: Vec<f64> = lowest.into_values().collect();
    let mut out = Vec::new();
    for k in depths(oracle.matrices) {
        let m = random_subset_expected_max(&best, k).map_err(agreement("random depth"))?;
        let l = random_subset_expected_max(&lowest, k).map_err(agreement("random depth"))?;
        if let (Some(m), Some(l)) = (m, l) {
            out.push(RandomDepth {
                k,
                delta_metric: m,
                lowest_delta_log_loss: -l,
            });
        }
    }
    Ok(out)
}

/// Share of matrices whose best keep by the rule's values is the oracle's best keep
/// (by the selection metric, ties lower log-loss; and by log-loss alone).
fn keep_agreement(oracle: &Oracle, values: &BTreeMap<EntryKey, f64>) -> (Option<f64>, Option<f64>) {
    // The rule's best keep per matrix: highest value, ties to the smaller keep.
    let mut rule_best: BTreeMap<&str, (f64, u64)> = BTreeMap::new();
    for ((m, k), v) in values {
        let keep = f64::from_bits(*k);
        match rule_best.get(m.as_str()) {
            Some(&(bv, bk)) if bv > *v || (bv == *v && f64::from_bits(bk) <= keep) => {}
            _ => {
                rule_best.insert(m, (*v, *k));
            }
        }
    }
    let mut by_metric: BTreeMap<&str, u64> = BTreeMap::new();
    let mut by_loss: BTreeMap<&str, (f64, u64)> = BTreeMap::new();
    for e in &oracle.entries {
        by_metric.entry(&e.matrix).or_insert(e.keep.to_bits());
        match by_loss.get(e.matrix.as_str()) {
            Some(&(l, _)) if l <= e.delta_log_loss => {}
            _ => {
                by_loss.insert(&e.matrix, (e.delta_log_loss, e.keep.to_bits()));
            }
        }
    }
    let share = |hits: usize| (!rule_best.is_empty()).then(|| hits as f64 / rule_best.len() as f64);
    let metric_hits = rule_best
        .iter()
        .filter(|(m, (_, k))| by_metric.get(*m) == Some(k))
        .count();
    let loss_hits = rule_best
        .iter()
        .filter(|(m, (_, k))| by_loss.get(*m).map(|x| x.1) == Some(*k))
        .count();
    (share(metric_hits), share(loss_hits))
}

fn rule_report(header: &Header, oracle: &Oracle, r: &RuleScores) -> Result<RuleReport, StudyError> {
    let values = rule_values(oracle, r, "scores at the pipeline's calibration size")?;
    let name = r.rule.name();
    let key = |e: &OracleEntry| (e.matrix.clone(), e.keep.to_bits());
    let x: Vec<f64> = oracle.entries.iter().map(|e| values[&key(e)]).collect();
    let loss: Vec<f64> = oracle.entries.iter().map(|e| -e.delta_log_loss).collect();
    let acc: Vec<f64> = oracle.entries.iter().map(|e| e.delta_accuracy).collect();
    let spearman_entries_log_loss =
        spearman(&x, &loss).map_err(agreement(format!("{name}: Spearman, log-loss")))?;
    let spearman_entries_accuracy =
        spearman(&x, &acc).map_err(agreement(format!("{name}: Spearman, accuracy")))?;
    let spearman_entries_balanced_accuracy = if header.classification {
        let bal: Option<Vec<f64>> = oracle
            .entries
            .iter()
            .map(|e| e.delta_balanced_accuracy)
            .collect();
        match bal {
            Some(b) => spearman(&x, &b)
                .map_err(agreement(format!("{name}: Spearman, balanced accuracy")))?,
            None => None,
        }
    } else {
        None
    };
    // Per matrix: best rule value against best measured improvement.
    let mx = best_per_matrix(values.iter().map(|((m, _), v)| (m.as_str(), *v)));
    let ml = best_per_matrix(
        oracle
            .entries
            .iter()
            .map(|e| (e.matrix.as_str(), -e.delta_log_loss)),
    );
    let ma = best_per_matrix(
        oracle
            .entries
            .iter()
            .map(|e| (e.matrix.as_str(), e.delta_accuracy)),
    );
    let xs: Vec<f64> = mx.iter().map(|(_, v)| *v).collect();
    let ls: Vec<f64> = ml.iter().map(|(_, v)| *v).collect();
    let as_: Vec<f64> = ma.iter().map(|(_, v)| *v).collect();
    let spearman_matrices_log_loss = spearman(&xs, &ls).map_err(agreement(format!(
        "{name}: Spearman over matrices, log-loss"
    )))?;
    let spearman_matrices_accuracy = spearman(&xs, &as_).map_err(agreement(format!(
        "{name}: Spearman over matrices, accuracy"
    )))?;
    let ranking = matrix_ranking(&values)?;
    let (keep_agreement_metric, keep_agreement_log_loss) = keep_agreement(oracle, &values);
    let reference = &oracle.matrix_order;
    let best_matrix = reference.first().cloned();
    let (unit, holds_best) = if header.select == "entries" {
        let items: Vec<(EntryKey, f64)> = values.iter().map(|(k, v)| (k.clone(), *v)).collect();
        let order = order_desc(&items).map_err(agreement(format!("{name}: entry ranking")))?;
        let best = oracle.entries.first().map(key);
        (
            "entries",
            best.is_some_and(|b| holds_in_top_k(&b, &order, header.top_k)),
        )
    } else {
        (
            "matrices",
            best_matrix
                .as_ref()
                .is_some_and(|b| holds_in_top_k(b, &ranking, header.top_k)),
        )
    };
    let mut points: Vec<Point> = oracle
        .entries
        .iter()
        .map(|e| Point {
            matrix: e.matrix.clone(),
            keep: e.keep,
            ranking_value: values[&key(e)],
            delta_log_loss: e.delta_log_loss,
            delta_accuracy: e.delta_accuracy,
            collapsed: e.measured.collapsed,
        })
        .collect();
    points.sort_by(|a, b| a.matrix.cmp(&b.matrix).then(a.keep.total_cmp(&b.keep)));
    Ok(RuleReport {
        rule: r.rule,
        spearman_entries_log_loss,
        spearman_entries_accuracy,
        spearman_entries_balanced_accuracy,
        spearman_matrices_log_loss,
        spearman_matrices_accuracy,
        recall_top10_in_top3: recall_in_top_k(reference, 10, &ranking, 3),
        recall_top10_in_top10: recall_in_top_k(reference, 10, &ranking, 10),
        top_k: header.top_k,
        top_k_unit: unit.to_string(),
        holds_best,
        best_matrix_position: best_matrix.as_ref().and_then(|b| position(b, &ranking)),
        best_not_collapsed_position: oracle
            .best_not_collapsed
            .and_then(|i| oracle.entries.get(i))
            .and_then(|e| position(&e.matrix, &ranking)),
        top_matrices: ranking.iter().take(10).cloned().collect(),
        depth: depth_points(&header.selection_metric, oracle, &ranking)?,
        keep_agreement_metric,
        keep_agreement_log_loss,
        points,
    })
}

fn calibration(input: &StudyInput, oracle: &Oracle) -> Result<Vec<CalibrationReport>, StudyError> {
    let Some(reference) = input.calibration.iter().max_by_key(|c| c.size.used) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for c in &input.calibration {
        let mut rules = Vec::new();
        for r in &c.rules {
            let what = format!("{} calibration rows", c.size.used);
            let values = rule_values(oracle, r, &what)?;
            let reference_rule = reference
                .rules
                .iter()
                .find(|x| x.rule == r.rule)
                .ok_or_else(|| {
                    StudyError::Invalid(format!(
                        "no {} scores at the largest calibration size ({} rows)",
                        r.rule, reference.size.used
                    ))
                })?;
            let ref_values = rule_values(
                oracle,
                reference_rule,
                &format!("{} calibration rows", reference.size.used),
            )?;
            let here = best_per_matrix(values.iter().map(|((m, _), v)| (m.as_str(), *v)));
            let there = best_per_matrix(ref_values.iter().map(|((m, _), v)| (m.as_str(), *v)));
            let x: Vec<f64> = here.iter().map(|(_, v)| *v).collect();
            let y: Vec<f64> = there.iter().map(|(_, v)| *v).collect();
            let kendall_tau = kendall_tau_b(&x, &y)
                .map_err(agreement(format!("{what}: {} Kendall tau", r.rule)))?;
            let a = matrix_ranking(&values)?;
            let b = matrix_ranking(&ref_values)?;
            rules.push(Stability {
                rule: r.rule,
                kendall_tau,
                top3_overlap: top_k_overlap(&a, &b, 3),
                top3: a.iter().take(3).cloned().collect(),
            });
        }
        rules.sort_by_key(|s| s.rule);
        out.push(CalibrationReport {
            size: c.size.clone(),
            reference: c.size.used == reference.size.used,
            rules,
        });
    }
    out.sort_by_key(|c| (c.size.used, c.size.requested));
    Ok(out)
}

fn evaluation(input: &StudyInput) -> Result<Vec<EvaluationReport>, StudyError> {
    let metric = input.header.selection_metric.as_str();
    let own = input
        .evaluation
        .iter()
        .find(|e| e.size.used == input.header.evaluation_rows);
    let same = |a: &Winner, b: &Winner| {
        a.matrix == b.matrix && a.blocks == b.blocks && a.keep.to_bits() == b.keep.to_bits()
    };
    let mut out = Vec::new();
    for e in &input.evaluation {
        let what = format!("{} evaluation rows", e.size.used);
        check_measured(&format!("{what}: baseline"), &e.baseline_selection)?;
        let gain_on_selection = match &e.winner {
            Some(w) => {
                check_measured(&format!("{what}: winner"), &w.selection)?;
                check_measured(&format!("{what}: winner held-out"), &w.heldout)?;
                Some(
                    metric_value(metric, &w.selection)?
                        > metric_value(metric, &e.baseline_selection)?,
                )
            }
            None => None,
        };
        let differs_from_own = match (own.and_then(|o| o.winner.as_ref()), &e.winner) {
            (Some(o), Some(w)) => Some(!same(o, w)),
            _ => None,
        };
        out.push(EvaluationReport {
            size: e.size.clone(),
            own: e.size.used == input.header.evaluation_rows,
            baseline_selection: e.baseline_selection.clone(),
            baseline_heldout: e.baseline_heldout.clone(),
            winner: e.winner.clone(),
            differs_from_own,
            gain_on_selection,
        });
    }
    out.sort_by_key(|e| (e.size.used, e.size.requested));
    Ok(out)
}

fn cost(input: &StudyInput, oracle: &Oracle) -> CostReport {
    let c = &input.cost;
    let per_row = c.oracle_candidates.per_row();
    let base_row = c.base_selection.per_row();
    let per_factor = c.factors_k1.per_instance();
    let layers = c.n_layers;
    let candidates = layers * MATRIX_TYPES * LASER_RATES.len();
    let rows = input.header.selection_split_rows;
    let projected = match (per_row, base_row, per_factor) {
        (Some(r), Some(b), Some(f)) => Some(
            candidates as f64 * rows as f64 * r
                + rows as f64 * b
                + (layers * MATRIX_TYPES) as f64 * f,
        ),
        _ => None,
    };
    let c2i_search_seconds: f64 = c.c2i_search.values().map(|t| t.seconds).sum();
    let from = format!(
        "projected, from the oracle's measured evaluate seconds per candidate-row ({} \
         candidate-rows in {} evaluations of {} candidates of the MLP matrices of every \
         searched layer, layer-prefix reuse included, so attention matrices are assumed \
         to cost what MLP matrices of the same layers cost), the base model's seconds per \
         row ({} rows) and the mean seconds of a K = 1 block SVD of an MLP matrix ({} \
         SVDs; attention matrices are smaller, so this over-counts their SVDs); no \
         gradient pass",
        c.oracle_candidates.rows,
        c.oracle_candidates.instances,
        oracle.entries.len(),
        c.base_selection.rows,
        c.factors_k1.instances,
    );
    CostReport {
        source: c.source.clone(),
        seconds_per_candidate_row: per_row,
        seconds_per_base_row: base_row,
        seconds_per_factorization: per_factor,
        seconds_per_calibration_row: c.gradients.per_row(),
        oracle_candidates: c.oracle_candidates.clone(),
        oracle_seconds: c.oracle_candidates.seconds
            + per_row.map_or(0.0, |_| {
                base_row.map_or(0.0, |b| b * input.header.evaluation_rows as f64)
            })
            + per_factor.map_or(0.0, |f| f * oracle.matrices as f64),
        oracle_candidate_count: oracle.entries.len(),
        c2i_search: c.c2i_search.clone(),
        c2i_search_seconds,
        c2i_candidates: c.c2i_candidates,
        paper_protocol: PaperProtocol {
            layers,
            matrix_types: MATRIX_TYPES,
            rates: LASER_RATES.to_vec(),
            candidates,
            rows,
            projected_seconds: projected,
            speedup_over_c2i: projected
                .filter(|_| c2i_search_seconds > 0.0)
                .map(|p| p / c2i_search_seconds),
            from,
        },
    }
}

/// The study's figures from what the driver collected.
pub fn analyse(input: &StudyInput) -> Result<Study, StudyError> {
    let oracle = oracle(input)?;
    let mut rules = Vec::new();
    let mut seen = BTreeSet::new();
    for r in &input.rules {
        if !seen.insert(r.rule) {
            return Err(StudyError::Invalid(format!("rule {} given twice", r.rule)));
        }
        rules.push(rule_report(&input.header, &oracle, r)?);
    }
    rules.sort_by_key(|r| r.rule);
    let n = oracle.matrices;
    let (k_unit_n, k) = if input.header.select == "entries" {
        (oracle.entries.len(), input.header.top_k)
    } else {
        (n, input.header.top_k)
    };
    let random = RandomBaseline {
        spearman: RANDOM_CORRELATION,
        kendall_tau: RANDOM_CORRELATION,
        recall_top10_in_top3: random_recall(n, 3),
        recall_top10_in_top10: random_recall(n, 10),
        holds_best: random_holds_best(k_unit_n, k),
        best_matrix_position: (n > 0).then(|| (n as f64 + 1.0) / 2.0),
        top3_overlap: random_top_k_overlap(n, 3),
        depth: random_depth(&input.header.selection_metric, &oracle)?,
        keep_agreement: (!input.header.oracle_keeps.is_empty())
            .then(|| 1.0 / input.header.oracle_keeps.len() as f64),
    };
    let calibration = calibration(input, &oracle)?;
    let evaluation = evaluation(input)?;
    let cost = cost(input, &oracle);
    Ok(Study {
        header: input.header.clone(),
        baseline: input.baseline.clone(),
        oracle,
        rules,
        random,
        calibration,
        evaluation,
        cost,
        notes: input.notes.clone(),
    })
}

/// Recomputes the figures derived from the oracle and the rules' points (search depth,
/// keep agreement and their random expectations) of a study read back from its
/// `study.json`, so that a study written by an earlier c2i gets this one's tables
/// without evaluating anything again. Everything measured stays as it was.
pub fn rederive(study: &mut Study) -> Result<(), StudyError> {
    let metric = study.header.selection_metric.clone();
    for r in &mut study.rules {
        let mut values = BTreeMap::new();
        for p in &r.points {
            check_finite(
                &format!("{}: ranking value of {} keep {}", r.rule, p.matrix, p.keep),
                p.ranking_value,
            )?;
            if values
                .insert((p.matrix.clone(), p.keep.to_bits()), p.ranking_value)
                .is_some()
            {
                return Err(StudyError::Invalid(format!(
                    "study.json points: {} has {} keep {} twice",
                    r.rule, p.matrix, p.keep
                )));
            }
        }
        covers_oracle(&study.oracle, r.rule, &values, "study.json points")?;
        let ranking = matrix_ranking(&values)?;
        (r.keep_agreement_metric, r.keep_agreement_log_loss) =
            keep_agreement(&study.oracle, &values);
        r.depth = depth_points(&metric, &study.oracle, &ranking)?;
    }
    study.random.depth = random_depth(&metric, &study.oracle)?;
    study.random.keep_agreement = (!study.header.oracle_keeps.is_empty())
        .then(|| 1.0 / study.header.oracle_keeps.len() as f64);
    Ok(())
}

// ---- Markdown ----------------------------------------------------------------------

/// A number with `d` decimals, never `-0.000`.
fn fx(v: f64, d: usize) -> String {
    let s = format!("{v:.d$}");
    if s.trim_start_matches('-')
        .chars()
        .all(|c| c == '0' || c == '.')
    {
        s.trim_start_matches('-').to_string()
    } else {
        s
    }
}

/// A signed number with `d` decimals (`+0.010`, `-0.020`, `0.000`).
fn signed(v: f64, d: usize) -> String {
    let s = fx(v, d);
    if s.starts_with('-') || s.chars().all(|c| c == '0' || c == '.') {
        s
    } else {
        format!("+{s}")
    }
}

fn opt(v: Option<f64>, d: usize) -> String {
    v.map_or_else(|| "—".to_string(), |x| signed(x, d))
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn keep(k: f64) -> String {
    format!("{k}")
}

fn short(matrix: &str) -> String {
    // model.layers.11.mlp.down_proj.weight -> layers.11.mlp.down_proj
    let s = matrix.strip_prefix("model.").unwrap_or(matrix);
    s.strip_suffix(".weight").unwrap_or(s).to_string()
}

fn predictions(m: &Measured) -> String {
    let mut s = match &m.predictions {
        Some(p) => format!(
            "[{}]",
            p.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => "—".to_string(),
    };
    if m.collapsed {
        s.push_str(" COLLAPSED");
    }
    s
}

fn figures(m: &Measured) -> String {
    match m.balanced_accuracy {
        Some(b) => format!("{} / {}", fx(m.accuracy, 3), fx(b, 3)),
        None => fx(m.accuracy, 3),
    }
}

fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

fn secs(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.4}")
    }
}

fn hours(v: f64) -> String {
    if v >= 3600.0 {
        format!("{} s ({:.1} h)", secs(v), v / 3600.0)
    } else if v >= 60.0 {
        format!("{} s ({:.1} min)", secs(v), v / 60.0)
    } else {
        format!("{} s", secs(v))
    }
}

/// "How deep must the search go?": per depth k, what each rule's top k finds.
fn depth_section(o: &mut String, s: &Study) {
    let h = &s.header;
    if s.rules.iter().all(|r| r.depth.is_empty()) {
        return;
    }
    let _ = writeln!(o, "## How deep must the search go?\n");
    let _ = writeln!(
        o,
        "If the search evaluated each rule's top k matrices at every oracle keep (K = 1) \
         on these rows, what would it find? Per cell: the Δ {} of the best entry \
         (COLLAPSED when it is) / the lowest Δ log-loss among them. A random choice of k \
         matrices, expected, beside them; at k = {} every rule finds the oracle's best.\n",
        h.selection_metric, s.oracle.matrices
    );
    let _ = write!(o, "| k |");
    for r in &s.rules {
        let _ = write!(o, " `{}` |", r.rule);
    }
    let _ = writeln!(o, " random k matrices (expected) |");
    let _ = writeln!(o, "|---|{}---|", "---|".repeat(s.rules.len()));
    let ks: BTreeSet<usize> = s
        .rules
        .iter()
        .flat_map(|r| r.depth.iter().map(|d| d.k))
        .collect();
    for k in ks {
        let _ = write!(o, "| {k} |");
        for r in &s.rules {
            match r.depth.iter().find(|d| d.k == k) {
                Some(d) => {
                    let _ = write!(
                        o,
                        " {}{} / {} |",
                        signed(d.delta_metric, 3),
                        if d.collapsed { " COLLAPSED" } else { "" },
                        signed(d.lowest_delta_log_loss, 4)
                    );
                }
                None => {
                    let _ = write!(o, " — |");
                }
            }
        }
        match s.random.depth.iter().find(|d| d.k == k) {
            Some(d) => {
                let _ = writeln!(
                    o,
                    " {} / {} |",
                    signed(d.delta_metric, 3),
                    signed(d.lowest_delta_log_loss, 4)
                );
            }
            None => {
                let _ = writeln!(o, " — |");
            }
        }
    }
    let _ = writeln!(
        o,
        "\nCan a rule pick the keep? The share of the {} matrices whose best keep by the \
         rule is the oracle's best keep of that matrix (by {}, ties lower log-loss / by \
         log-loss alone){}:\n",
        s.oracle.matrices,
        h.selection_metric,
        s.random
            .keep_agreement
            .map_or_else(String::new, |x| format!(
                "; a random keep gets {}",
                fx(x, 2)
            ))
    );
    for r in &s.rules {
        let _ = writeln!(
            o,
            "- `{}`: {} / {}",
            r.rule,
            r.keep_agreement_metric
                .map_or("—".to_string(), |x| fx(x, 2)),
            r.keep_agreement_log_loss
                .map_or("—".to_string(), |x| fx(x, 2))
        );
    }
    o.push('\n');
}

/// `study.md`: the study's tables and what they say.
pub fn markdown(s: &Study, scatter_files: &[(ScoreRule, String)]) -> String {
    let h = &s.header;
    let mut o = String::new();
    let _ = writeln!(o, "# What the score predicts: {}\n", cell(&h.task));
    let keeps: Vec<String> = h.oracle_keeps.iter().map(|k| keep(*k)).collect();
    let _ = writeln!(
        o,
        "Pipeline `{}`, model `{}`. The oracle evaluates every MLP matrix of layers {} \
         ({} matrices) at keep {} with K = 1 ({} candidates, racing off) on the pipeline's \
         {} evaluation rows; the rules score the same (matrix, keep) entries from one \
         gradient pass on {} calibration rows. Both samples come from the selection split \
         ({} rows). Selection metric: {} (ties: lower log-loss); the pipeline evaluates the \
         top {} {}.\n",
        cell(&h.pipeline),
        cell(&h.model),
        cell(&h.layers),
        s.oracle.matrices,
        keeps.join(", "),
        s.oracle.entries.len(),
        h.evaluation_rows,
        h.calibration_rows,
        h.selection_split_rows,
        h.selection_metric,
        h.top_k,
        h.select
    );
    let b = &s.baseline;
    let _ = writeln!(
        o,
        "Baseline (unmodified model) on the evaluation rows: accuracy {}{}, log-loss {}, \
         predictions {}.\n",
        fx(b.accuracy, 3),
        b.balanced_accuracy
            .map_or_else(String::new, |x| format!(", balanced accuracy {}", fx(x, 3))),
        fx(b.log_loss, 4),
        predictions(b)
    );

    // The oracle.
    let _ = writeln!(
        o,
        "## The oracle: the 10 best of {} (matrix, keep)\n",
        s.oracle.entries.len()
    );
    let _ = writeln!(
        o,
        "| # | matrix | keep | {} | Δ accuracy | Δ balanced | Δ log-loss | predictions |",
        if h.classification {
            "accuracy / balanced"
        } else {
            "accuracy"
        }
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|");
    for (i, e) in s.oracle.entries.iter().take(10).enumerate() {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            i + 1,
            cell(&short(&e.matrix)),
            keep(e.keep),
            figures(&e.measured),
            signed(e.delta_accuracy, 3),
            opt(e.delta_balanced_accuracy, 3),
            signed(e.delta_log_loss, 4),
            predictions(&e.measured)
        );
    }
    let _ = writeln!(
        o,
        "\n{} of {} entries beat the baseline's {} on these rows ({} of them COLLAPSED to \
         one answer); {} have a lower log-loss than the baseline; {} are COLLAPSED \
         (predictions: the share of the most frequent answer above {}).\n",
        s.oracle.beat_baseline,
        s.oracle.entries.len(),
        h.selection_metric,
        s.oracle.beat_baseline_collapsed,
        s.oracle.lower_log_loss,
        s.oracle.collapsed,
        fx(h.collapse_threshold, 2)
    );

    // Rules.
    let _ = writeln!(o, "## The rules against the oracle\n");
    let _ = writeln!(
        o,
        "Spearman's rho between a rule's ranking value (higher = more promising) and the \
         measured improvement (−Δ log-loss; Δ accuracy): +1 = the rule orders the \
         candidates as the measurement does, 0 = no better than a random ranking. Over \
         entries: every (matrix, keep); over matrices: each matrix's best rule value \
         against its best measured change. Recall: the share of the oracle's 10 best \
         matrices found in the rule's top 3 / top 10 matrices. \"Top-{} holds the best\": \
         the rule's top {} {} include the oracle's best {}.\n",
        h.top_k,
        h.top_k,
        h.select,
        if h.select == "entries" {
            "(matrix, keep)"
        } else {
            "matrix"
        }
    );
    let bal_col = h.classification;
    let _ = writeln!(
        o,
        "| rule | Spearman, −Δ log-loss (entries / matrices) | Spearman, Δ accuracy (entries / matrices) |{} oracle top-10 in top-3 | oracle top-10 in top-10 | top-{} holds the best | oracle's best matrix ranked | best not collapsed, ranked |",
        if bal_col { " Spearman, Δ balanced (entries) |" } else { "" },
        h.top_k
    );
    let _ = writeln!(
        o,
        "|---|---|---|{}---|---|---|---|---|",
        if bal_col { "---|" } else { "" }
    );
    for r in &s.rules {
        let _ = writeln!(
            o,
            "| `{}` | {} / {} | {} / {} |{} {} | {} | {} | {} | {} |",
            r.rule,
            opt(r.spearman_entries_log_loss, 3),
            opt(r.spearman_matrices_log_loss, 3),
            opt(r.spearman_entries_accuracy, 3),
            opt(r.spearman_matrices_accuracy, 3),
            if bal_col {
                format!(" {} |", opt(r.spearman_entries_balanced_accuracy, 3))
            } else {
                String::new()
            },
            r.recall_top10_in_top3.map_or("—".to_string(), |x| fx(x, 2)),
            r.recall_top10_in_top10
                .map_or("—".to_string(), |x| fx(x, 2)),
            if r.holds_best { "yes" } else { "no" },
            rank_of(r.best_matrix_position, s.oracle.matrices),
            rank_of(r.best_not_collapsed_position, s.oracle.matrices),
        );
    }
    let rnd = &s.random;
    let _ = writeln!(
        o,
        "| random ranking (expected) | {} / {} | {} / {} |{} {} | {} | {} | {} of {} | {} of {} |\n",
        fx(rnd.spearman, 3),
        fx(rnd.spearman, 3),
        fx(rnd.spearman, 3),
        fx(rnd.spearman, 3),
        if bal_col {
            format!(" {} |", fx(rnd.spearman, 3))
        } else {
            String::new()
        },
        rnd.recall_top10_in_top3
            .map_or("—".to_string(), |x| fx(x, 3)),
        rnd.recall_top10_in_top10
            .map_or("—".to_string(), |x| fx(x, 3)),
        rnd.holds_best.map_or("—".to_string(), |x| fx(x, 3)),
        rnd.best_matrix_position
            .map_or("—".to_string(), |x| fx(x, 1)),
        s.oracle.matrices,
        rnd.best_matrix_position
            .map_or("—".to_string(), |x| fx(x, 1)),
        s.oracle.matrices
    );
    let best = s.oracle.entries.first();
    if let Some(b) = best {
        let _ = writeln!(
            o,
            "The oracle's best: {} at keep {} ({} {}, Δ log-loss {}{}).\n",
            cell(&short(&b.matrix)),
            keep(b.keep),
            h.selection_metric,
            fx(
                if h.selection_metric == "balanced_accuracy" {
                    b.measured.balanced_accuracy.unwrap_or(f64::NAN)
                } else {
                    b.measured.accuracy
                },
                3
            ),
            signed(b.delta_log_loss, 4),
            if b.measured.collapsed {
                ", COLLAPSED"
            } else {
                ""
            }
        );
    }
    if let Some(b) = s
        .oracle
        .best_not_collapsed
        .and_then(|i| s.oracle.entries.get(i))
        .filter(|_| best.is_some_and(|x| x.measured.collapsed))
    {
        let _ = writeln!(
            o,
            "The best that is not collapsed: {} at keep {} (accuracy {}, Δ balanced \
             accuracy {}, Δ log-loss {}).\n",
            cell(&short(&b.matrix)),
            keep(b.keep),
            fx(b.measured.accuracy, 3),
            opt(b.delta_balanced_accuracy, 3),
            signed(b.delta_log_loss, 4)
        );
    }
    let _ = writeln!(o, "Each rule's first three matrices:\n");
    for r in &s.rules {
        let top: Vec<String> = r.top_matrices.iter().take(3).map(|m| short(m)).collect();
        let _ = writeln!(o, "- `{}`: {}", r.rule, cell(&top.join(", ")));
    }
    let oracle_top: Vec<String> = s
        .oracle
        .matrix_order
        .iter()
        .take(3)
        .map(|m| short(m))
        .collect();
    let _ = writeln!(o, "- oracle: {}\n", cell(&oracle_top.join(", ")));
    if !scatter_files.is_empty() {
        let _ = writeln!(
            o,
            "Scatter plots (rule's ranking value against the measured Δ log-loss and Δ \
             accuracy, one point per (matrix, keep), colour = keep, hollow = collapsed):\n"
        );
        for (rule, file) in scatter_files {
            let _ = writeln!(o, "- `{rule}`: [{}]({})", cell(file), cell(file));
        }
        o.push('\n');
    }

    depth_section(&mut o, s);

    // Calibration sizes.
    if !s.calibration.is_empty() {
        let reference = s.calibration.iter().find(|c| c.reference);
        let _ = writeln!(
            o,
            "## Calibration rows: how stable is each rule's matrix ranking?\n\nKendall's \
             tau-b of the matrices' rule values, and the matrices the top 3 share, against \
             the largest size ({} rows). The evaluation rows stay the same.\n",
            reference.map_or(0, |r| r.size.used)
        );
        let mut head = "| calibration rows |".to_string();
        let mut line = "|---|".to_string();
        if let Some(c) = s.calibration.first() {
            for r in &c.rules {
                let _ = write!(head, " `{}`: tau / top-3 shared |", r.rule);
                line.push_str("---|");
            }
        }
        let _ = writeln!(o, "{head} top 3 (`{}`) |", h.score);
        let _ = writeln!(o, "{line}---|");
        for c in &s.calibration {
            let mut row = format!("| {} |", size_text(&c.size));
            for r in &c.rules {
                let _ = write!(
                    row,
                    " {} / {} of 3 |",
                    r.kendall_tau.map_or("—".to_string(), |t| fx(t, 3)),
                    r.top3_overlap
                );
            }
            let own_top = c
                .rules
                .iter()
                .find(|r| r.rule.name() == h.score)
                .map(|r| {
                    r.top3
                        .iter()
                        .map(|m| short(m))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            let _ = writeln!(o, "{row} {} |", cell(&own_top));
        }
        let mut row = "| random ranking (expected) |".to_string();
        if let Some(c) = s.calibration.first() {
            for _ in &c.rules {
                let _ = write!(
                    row,
                    " {} / {} of 3 |",
                    fx(rnd.kendall_tau, 3),
                    rnd.top3_overlap.map_or("—".to_string(), |x| fx(x, 2))
                );
            }
        }
        let _ = writeln!(o, "{row} |\n");
    }

    // Evaluation sizes.
    if !s.evaluation.is_empty() {
        let _ = writeln!(
            o,
            "## Evaluation rows: does the winner change?\n\nThe pipeline as configured, \
             with `data.evaluation.samples` changed. The evaluation sample is drawn first \
             and the calibration sample from the rest of the selection split, so another \
             evaluation size also draws other calibration rows (and other top-{} \
             candidates). Held-out: the same {} rows for every size.\n",
            h.top_k, h.heldout_rows
        );
        let _ = writeln!(
            o,
            "| evaluation rows | winner | same as at {} rows | selection {} (baseline) | held-out {} (baseline) | held-out predictions |",
            h.evaluation_rows,
            if h.classification { "acc. / bal." } else { "acc." },
            if h.classification { "acc. / bal." } else { "acc." }
        );
        let _ = writeln!(o, "|---|---|---|---|---|---|");
        for e in &s.evaluation {
            let (winner, sel, held, pred) = match &e.winner {
                Some(w) => (
                    format!(
                        "{}, K={}, keep {}{}",
                        short(&w.matrix),
                        w.blocks,
                        keep(w.keep),
                        if e.gain_on_selection == Some(false) {
                            " (no gain on the selection rows)"
                        } else {
                            ""
                        }
                    ),
                    format!(
                        "{}{} ({})",
                        figures(&w.selection),
                        if w.selection.collapsed {
                            " COLLAPSED"
                        } else {
                            ""
                        },
                        figures(&e.baseline_selection)
                    ),
                    format!("{} ({})", figures(&w.heldout), figures(&e.baseline_heldout)),
                    predictions(&w.heldout),
                ),
                None => (
                    "none".to_string(),
                    "—".to_string(),
                    "—".to_string(),
                    "—".to_string(),
                ),
            };
            let same = match (e.own, e.differs_from_own) {
                (true, _) => "(own size)".to_string(),
                (false, Some(d)) => if d { "no" } else { "yes" }.to_string(),
                (false, None) => "—".to_string(),
            };
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} |",
                size_text(&e.size),
                cell(&winner),
                same,
                sel,
                held,
                pred
            );
        }
        o.push('\n');
    }

    // Cost.
    let c = &s.cost;
    let _ = writeln!(o, "## Cost\n\nSeconds: {}.\n", cell(&c.source));
    let _ = writeln!(o, "| what | seconds |");
    let _ = writeln!(o, "|---|---|");
    let per = |v: Option<f64>| v.map_or("—".to_string(), secs);
    let _ = writeln!(
        o,
        "| evaluate, per candidate-row ({} candidate-rows, {} evaluations) | {} |",
        c.oracle_candidates.rows,
        c.oracle_candidates.instances,
        per(c.seconds_per_candidate_row)
    );
    let _ = writeln!(
        o,
        "| evaluate, base model, per row | {} |",
        per(c.seconds_per_base_row)
    );
    let _ = writeln!(
        o,
        "| block SVD of one MLP matrix, K = 1 | {} |",
        per(c.seconds_per_factorization)
    );
    let _ = writeln!(
        o,
        "| gradient pass, per calibration row | {} |",
        per(c.seconds_per_calibration_row)
    );
    let stages: Vec<String> = c
        .c2i_search
        .iter()
        .map(|(k, t)| format!("{k} {} ({})", secs(t.seconds), t.instances))
        .collect();
    let _ = writeln!(
        o,
        "| **c2i's search**, the pipeline as configured ({} candidates on {} rows; measured: {}) | **{}** |",
        c.c2i_candidates,
        h.evaluation_rows,
        cell(&stages.join(", ")),
        hours(c.c2i_search_seconds)
    );
    let _ = writeln!(
        o,
        "| exhaustive oracle on the same rows ({} candidates: every MLP matrix × {} keeps; measured) | {} |",
        c.oracle_candidate_count,
        h.oracle_keeps.len(),
        hours(c.oracle_seconds)
    );
    let p = &c.paper_protocol;
    let _ = writeln!(
        o,
        "| **the paper's protocol**: LASER over {} layers × {} matrix types × {} rates = {} candidates on all {} selection rows (**projected**) | **{}** |",
        p.layers,
        p.matrix_types,
        p.rates.len(),
        p.candidates,
        p.rows,
        p.projected_seconds.map_or("—".to_string(), hours)
    );
    let _ = writeln!(
        o,
        "| paper's protocol over c2i's search (projected) | {} |\n",
        p.speedup_over_c2i
            .map_or("—".to_string(), |x| format!("{}×", fx(x, 1)))
    );
    let _ = writeln!(o, "The paper's protocol is {}.\n", cell(&p.from));
    if !s.notes.is_empty() {
        let _ = writeln!(o, "## Notes\n");
        for n in &s.notes {
            let _ = writeln!(o, "- {}", cell(n));
        }
        o.push('\n');
    }
    o
}

fn rank_of(p: Option<usize>, n: usize) -> String {
    p.map_or("—".to_string(), |p| format!("{} of {n}", ordinal(p)))
}

fn size_text(s: &Size) -> String {
    match &s.capped {
        Some(why) => format!("{} ({} asked; {})", s.used, s.requested, cell(why)),
        None => s.used.to_string(),
    }
}

// ---- SVG -------------------------------------------------------------------------------

/// A coordinate with two decimals (never `-0.00`).
fn c2(v: f64) -> String {
    fx(v, 2)
}

/// Round tick values covering [lo, hi], about `target` of them, with their labels.
fn ticks(lo: f64, hi: f64, target: usize) -> (f64, f64, Vec<(f64, String)>) {
    let (lo, hi) = if hi > lo {
        (lo, hi)
    } else {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        (lo - pad, hi + pad)
    };
    let raw = (hi - lo) / target.max(1) as f64;
    let mag = 10f64.powi(raw.log10().floor() as i32);
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).floor();
    let last = (hi / step).ceil();
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    let mut v = Vec::new();
    let mut i = first;
    while i <= last + 0.5 {
        let x = i * step;
        // Labels in scientific notation for very large or very small ticks.
        let label = if x != 0.0 && (x.abs() >= 1e5 || step < 1e-3) {
            format!("{x:.1e}")
        } else {
            fx(x, decimals)
        };
        v.push((x, label));
        i += 1.0;
    }
    (first * step, last * step, v)
}

/// One rule's scatter: its ranking value (x) against the measured Δ log-loss (left)
/// and Δ accuracy (right), one point per (matrix, keep), colour by keep, hollow =
/// collapsed; dashed line at no change. `None` without points.
pub fn scatter_svg(study: &Study, rule: ScoreRule) -> Option<String> {
    let r = study.rules.iter().find(|r| r.rule == rule)?;
    if r.points.is_empty() {
        return None;
    }
    let keeps: Vec<f64> = {
        let mut k: Vec<f64> = r.points.iter().map(|p| p.keep).collect();
        k.sort_by(|a, b| a.total_cmp(b));
        k.dedup_by(|a, b| a.to_bits() == b.to_bits());
        k
    };
    let colour = |k: f64| {
        let i = keeps
            .iter()
            .position(|x| x.to_bits() == k.to_bits())
            .unwrap_or(0);
        PALETTE[i % PALETTE.len()]
    };
    let (w, h) = (1000.0, 460.0);
    let (pw, ph) = (400.0, 320.0);
    let top = 70.0;
    let lefts = [80.0, 580.0];
    let mut o = String::new();
    let _ = writeln!(
        o,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(
        o,
        "<rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{h}\" fill=\"white\"/>"
    );
    let title = format!(
        "{}: {} against the measured change, {} (matrix, keep) on {} rows",
        study.header.task,
        rule.name(),
        r.points.len(),
        study.header.evaluation_rows
    );
    let _ = writeln!(
        o,
        "<text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">{}</text>",
        c2(w / 2.0),
        escape_xml(&title)
    );
    let sub = format!(
        "Spearman, entries: {} vs −Δ log-loss, {} vs Δ accuracy (random ranking: 0)",
        opt(r.spearman_entries_log_loss, 3),
        opt(r.spearman_entries_accuracy, 3)
    );
    let _ = writeln!(
        o,
        "<text x=\"{}\" y=\"44\" text-anchor=\"middle\">{}</text>",
        c2(w / 2.0),
        escape_xml(&sub)
    );
    let xs: Vec<f64> = r.points.iter().map(|p| p.ranking_value).collect();
    let (xmin, xmax) = min_max(&xs);
    let (x0, x1, xt) = ticks(xmin, xmax, 5);
    let panels: [(&str, Vec<f64>); 2] = [
        (
            "Δ log-loss (lower: better)",
            r.points.iter().map(|p| p.delta_log_loss).collect(),
        ),
        (
            "Δ accuracy (higher: better)",
            r.points.iter().map(|p| p.delta_accuracy).collect(),
        ),
    ];
    for (left, (label, ys)) in lefts.iter().zip(panels.iter()) {
        let (ymin, ymax) = min_max(ys);
        let (y0, y1, yt) = ticks(ymin.min(0.0), ymax.max(0.0), 5);
        let sx = |x: f64| left + (x - x0) / (x1 - x0) * pw;
        let sy = |y: f64| top + ph - (y - y0) / (y1 - y0) * ph;
        let _ = writeln!(
            o,
            "<rect x=\"{}\" y=\"{}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#444\"/>",
            c2(*left),
            c2(top)
        );
        for (t, l) in &xt {
            let x = sx(*t);
            let _ = writeln!(
                o,
                "<line x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\" stroke=\"#ddd\"/><text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                c2(top),
                c2(top + ph),
                c2(top + ph + 16.0),
                escape_xml(l),
                x = c2(x)
            );
        }
        for (t, l) in &yt {
            let y = sy(*t);
            let _ = writeln!(
                o,
                "<line x1=\"{}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
                c2(*left),
                c2(left + pw),
                c2(left - 6.0),
                c2(y + 4.0),
                escape_xml(l),
                y = c2(y)
            );
        }
        let zero = sy(0.0);
        let _ = writeln!(
            o,
            "<line x1=\"{}\" y1=\"{z}\" x2=\"{}\" y2=\"{z}\" stroke=\"#000\" stroke-dasharray=\"4 3\"/>",
            c2(*left),
            c2(left + pw),
            z = c2(zero)
        );
        for (p, y) in r.points.iter().zip(ys) {
            let c = colour(p.keep);
            let fill = if p.collapsed { "none" } else { c };
            let _ = writeln!(
                o,
                "<circle cx=\"{}\" cy=\"{}\" r=\"3.5\" fill=\"{fill}\" stroke=\"{c}\" fill-opacity=\"0.75\"><title>{}</title></circle>",
                c2(sx(p.ranking_value)),
                c2(sy(*y)),
                escape_xml(&format!(
                    "{} keep {}: value {:.4e}, Δ log-loss {}, Δ accuracy {}{}",
                    short(&p.matrix),
                    keep(p.keep),
                    p.ranking_value,
                    signed(p.delta_log_loss, 4),
                    signed(p.delta_accuracy, 3),
                    if p.collapsed { ", COLLAPSED" } else { "" }
                ))
            );
        }
        let _ = writeln!(
            o,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            c2(left + pw / 2.0),
            c2(top + ph + 36.0),
            escape_xml(&format!(
                "{} ranking value (higher: more promising)",
                rule.name()
            ))
        );
        let _ = writeln!(
            o,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 {} {})\">{}</text>",
            c2(left - 58.0),
            c2(top + ph / 2.0),
            c2(left - 58.0),
            c2(top + ph / 2.0),
            escape_xml(label)
        );
    }
    // Legend: keeps, and hollow = collapsed.
    let mut x = 80.0;
    let y = h - 14.0;
    for k in &keeps {
        let _ = writeln!(
            o,
            "<circle cx=\"{}\" cy=\"{}\" r=\"4\" fill=\"{c}\" stroke=\"{c}\"/><text x=\"{}\" y=\"{}\">keep {}</text>",
            c2(x),
            c2(y - 4.0),
            c2(x + 8.0),
            c2(y),
            escape_xml(&keep(*k)),
            c = colour(*k)
        );
        x += 90.0;
    }
    let _ = writeln!(
        o,
        "<circle cx=\"{}\" cy=\"{}\" r=\"4\" fill=\"none\" stroke=\"#444\"/><text x=\"{}\" y=\"{}\">collapsed to one answer</text>",
        c2(x),
        c2(y - 4.0),
        c2(x + 8.0),
        c2(y)
    );
    o.push_str("</svg>\n");
    Some(o)
}

fn min_max(v: &[f64]) -> (f64, f64) {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if lo.is_finite() && hi.is_finite() {
        (lo, hi)
    } else {
        (0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(acc: f64, bal: f64, ll: f64, collapsed: bool) -> Measured {
        Measured {
            samples: 10,
            accuracy: acc,
            balanced_accuracy: Some(bal),
            log_loss: ll,
            predictions: Some(if collapsed { vec![0, 10] } else { vec![4, 6] }),
            max_predicted_share: Some(if collapsed { 1.0 } else { 0.6 }),
            collapsed,
        }
    }

    fn name(layer: usize, kind: &str) -> String {
        format!("model.layers.{layer}.mlp.{kind}_proj.weight")
    }

    fn header() -> Header {
        Header {
            pipeline: "p.toml".into(),
            task: "t".into(),
            model: "m".into(),
            selection_metric: "accuracy".into(),
            top_k: 2,
            select: "matrices".into(),
            score: "negative-sv-grad".into(),
            selection_split_rows: 40,
            calibration_rows: 10,
            evaluation_rows: 10,
            heldout_rows: 20,
            collapse_threshold: 0.95,
            oracle_keeps: vec![0.1, 0.5],
            layers: "all".into(),
            classification: true,
        }
    }

    /// Four matrices (layers 0-3, down) at two keeps. Measured accuracy rises with the
    /// layer; the log-loss falls with it.
    fn input() -> StudyInput {
        let mut oracle = Vec::new();
        for l in 0..4 {
            for (i, k) in [0.1, 0.5].into_iter().enumerate() {
                oracle.push(OracleInput {
                    matrix: name(l, "down"),
                    layer: l,
                    kind: "down".into(),
                    keep: k,
                    measured: measured(
                        0.5 + 0.1 * l as f64 + 0.01 * i as f64,
                        0.5,
                        2.0 - 0.1 * l as f64 - 0.01 * i as f64,
                        l == 3 && i == 1,
                    ),
                });
            }
        }
        let scores = |f: &dyn Fn(usize, usize) -> f64| -> Vec<RuleScore> {
            let mut v = Vec::new();
            for l in 0..4 {
                for (i, k) in [0.1, 0.5].into_iter().enumerate() {
                    v.push(RuleScore {
                        matrix: name(l, "down"),
                        layer: l,
                        kind: "down".into(),
                        keep: k,
                        value: f(l, i),
                    });
                }
            }
            v
        };
        // negative-sv-grad agrees with the oracle (higher value at higher layers);
        // first-order's value is ΔL (lower is better): it also agrees.
        // first-order-slope is reversed.
        let nsg = scores(&|l, i| (l * 2 + i) as f64);
        let fo = scores(&|l, i| -((l * 2 + i) as f64));
        let sl = scores(&|l, i| (l * 2 + i) as f64);
        let rules = vec![
            RuleScores {
                rule: ScoreRule::NegativeSvGrad,
                scores: nsg.clone(),
            },
            RuleScores {
                rule: ScoreRule::FirstOrder,
                scores: fo.clone(),
            },
            RuleScores {
                rule: ScoreRule::FirstOrderSlope,
                scores: sl,
            },
        ];
        // At 5 calibration rows, negative-sv-grad swaps layers 0 and 1.
        let nsg5 = scores(&|l, i| match l {
            0 => (2 + i) as f64,
            1 => i as f64,
            _ => (l * 2 + i) as f64,
        });
        StudyInput {
            header: header(),
            baseline: measured(0.55, 0.5, 1.9, false),
            oracle,
            rules: rules.clone(),
            calibration: vec![
                CalibrationInput {
                    size: Size {
                        requested: 5,
                        used: 5,
                        capped: None,
                    },
                    rules: vec![RuleScores {
                        rule: ScoreRule::NegativeSvGrad,
                        scores: nsg5,
                    }],
                },
                CalibrationInput {
                    size: Size {
                        requested: 50,
                        used: 30,
                        capped: Some("selection split 40 rows, 10 evaluation rows".into()),
                    },
                    rules: vec![RuleScores {
                        rule: ScoreRule::NegativeSvGrad,
                        scores: nsg,
                    }],
                },
            ],
            evaluation: vec![
                EvaluationInput {
                    size: Size {
                        requested: 10,
                        used: 10,
                        capped: None,
                    },
                    baseline_selection: measured(0.55, 0.5, 1.9, false),
                    baseline_heldout: measured(0.5, 0.5, 1.9, false),
                    winner: Some(Winner {
                        matrix: name(3, "down"),
                        blocks: 1,
                        keep: 0.5,
                        selection: measured(0.81, 0.5, 1.6, true),
                        heldout: measured(0.6, 0.5, 1.8, true),
                    }),
                },
                EvaluationInput {
                    size: Size {
                        requested: 5,
                        used: 5,
                        capped: None,
                    },
                    baseline_selection: measured(0.6, 0.5, 1.9, false),
                    baseline_heldout: measured(0.5, 0.5, 1.9, false),
                    winner: Some(Winner {
                        matrix: name(2, "down"),
                        blocks: 1,
                        keep: 0.1,
                        selection: measured(0.6, 0.5, 1.7, false),
                        heldout: measured(0.55, 0.55, 1.8, false),
                    }),
                },
            ],
            cost: CostInput {
                source: "test".into(),
                oracle_candidates: Tally {
                    instances: 8,
                    rows: 80,
                    seconds: 8.0,
                },
                base_selection: Tally {
                    instances: 1,
                    rows: 10,
                    seconds: 2.0,
                },
                factors_k1: Tally {
                    instances: 4,
                    rows: 0,
                    seconds: 2.0,
                },
                gradients: Tally {
                    instances: 2,
                    rows: 15,
                    seconds: 3.0,
                },
                c2i_search: BTreeMap::from([(
                    "evaluate".to_string(),
                    Tally {
                        instances: 3,
                        rows: 30,
                        seconds: 10.0,
                    },
                )]),
                c2i_candidates: 2,
                n_layers: 4,
            },
            notes: vec!["a note".into()],
        }
    }

    #[test]
    fn hand_built_study() {
        let s = analyse(&input()).unwrap();
        // Oracle order: layer 3 keep 0.5 (0.81), layer 3 keep 0.1 (0.8), layer 2 ...
        assert_eq!(s.oracle.entries[0].matrix, name(3, "down"));
        assert_eq!(s.oracle.entries[0].keep, 0.5);
        assert_eq!(s.oracle.entries[1].keep, 0.1);
        assert_eq!(
            s.oracle.matrix_order,
            vec![
                name(3, "down"),
                name(2, "down"),
                name(1, "down"),
                name(0, "down")
            ]
        );
        // Baseline accuracy 0.55: layers 1 (0.6, 0.61), 2, 3 beat it: 6 entries, one of
        // them collapsed; log-loss below 1.9: layer 1 keep 0.5 (1.89), layers 2, 3: 5.
        assert_eq!(s.oracle.beat_baseline, 6);
        assert_eq!(s.oracle.beat_baseline_collapsed, 1);
        assert_eq!(s.oracle.collapsed, 1);
        assert_eq!(s.oracle.lower_log_loss, 5);
        // The best is collapsed; the best that is not: layer 3 keep 0.1.
        assert_eq!(s.oracle.best_not_collapsed, Some(1));
        let e = &s.oracle.entries[0];
        assert!((e.delta_accuracy - 0.26).abs() < 1e-12);
        assert!((e.delta_log_loss - (1.69 - 1.9)).abs() < 1e-12);
        assert_eq!(e.delta_balanced_accuracy, Some(0.0));

        let nsg = &s.rules[0];
        assert_eq!(nsg.rule, ScoreRule::NegativeSvGrad);
        // Its values order the entries exactly as the measurement does.
        assert!((nsg.spearman_entries_log_loss.unwrap() - 1.0).abs() < 1e-12);
        assert!((nsg.spearman_entries_accuracy.unwrap() - 1.0).abs() < 1e-12);
        assert!((nsg.spearman_matrices_accuracy.unwrap() - 1.0).abs() < 1e-12);
        // Balanced accuracy is constant: undefined.
        assert_eq!(nsg.spearman_entries_balanced_accuracy, None);
        assert!(nsg.holds_best);
        assert_eq!(nsg.best_matrix_position, Some(1));
        // 4 matrices: the oracle's "top 10" is all 4; the rule's top 3 holds 3 of them.
        assert!((nsg.recall_top10_in_top3.unwrap() - 0.75).abs() < 1e-12);
        assert_eq!(nsg.recall_top10_in_top10, Some(1.0));
        // first-order: value = ΔL, lower is better: -value agrees too.
        let fo = &s.rules[1];
        assert!((fo.spearman_entries_log_loss.unwrap() - 1.0).abs() < 1e-12);
        // first-order-slope given reversed values: -1, the oracle's best ranked last.
        let sl = &s.rules[2];
        assert!((sl.spearman_entries_accuracy.unwrap() + 1.0).abs() < 1e-12);
        assert!(!sl.holds_best);
        assert_eq!(sl.best_matrix_position, Some(4));
        assert_eq!(sl.best_not_collapsed_position, Some(4));
        assert_eq!(nsg.best_not_collapsed_position, Some(1));
        assert!((sl.recall_top10_in_top3.unwrap() - 0.75).abs() < 1e-12);

        // Random: 4 matrices, top-2 of matrices.
        assert_eq!(s.random.holds_best, Some(0.5));
        assert_eq!(s.random.recall_top10_in_top3, Some(0.75));
        assert_eq!(s.random.best_matrix_position, Some(2.5));
        assert_eq!(s.random.top3_overlap, Some(9.0 / 4.0));

        // Calibration: the reference (30 rows) against itself, and 5 rows: layers 0
        // and 1 swapped = 1 discordant pair of 6: tau = (5 - 1) / 6.
        assert_eq!(s.calibration.len(), 2);
        assert_eq!(s.calibration[0].size.used, 5);
        assert!(!s.calibration[0].reference && s.calibration[1].reference);
        let t = s.calibration[0].rules[0].kendall_tau.unwrap();
        assert!((t - 4.0 / 6.0).abs() < 1e-12, "{t}");
        assert_eq!(s.calibration[0].rules[0].top3_overlap, 2);
        assert_eq!(s.calibration[1].rules[0].kendall_tau, Some(1.0));
        assert_eq!(s.calibration[1].rules[0].top3_overlap, 3);

        // Evaluation: sorted by size; 5 rows picks another winner (with a gain? 0.6 is
        // not above the baseline's 0.6: no).
        assert_eq!(s.evaluation[0].size.used, 5);
        assert_eq!(s.evaluation[0].differs_from_own, Some(true));
        assert_eq!(s.evaluation[0].gain_on_selection, Some(false));
        assert!(s.evaluation[1].own);
        assert_eq!(s.evaluation[1].differs_from_own, Some(false));
        assert_eq!(s.evaluation[1].gain_on_selection, Some(true));

        // Cost: 0.1 s per candidate-row, 0.2 per base row, 0.5 per SVD; the paper's
        // protocol: 4 layers × 7 × 9 = 252 candidates × 40 rows × 0.1 + 40 × 0.2 +
        // 28 × 0.5 = 1008 + 8 + 14 = 1030 s, over c2i's 10 s.
        let c = &s.cost;
        assert_eq!(c.paper_protocol.candidates, 252);
        assert!((c.paper_protocol.projected_seconds.unwrap() - 1030.0).abs() < 1e-9);
        assert!((c.paper_protocol.speedup_over_c2i.unwrap() - 103.0).abs() < 1e-9);
        assert!((c.seconds_per_calibration_row.unwrap() - 0.2).abs() < 1e-12);
        // Oracle: 8 s of candidates + 10 base rows × 0.2 + 4 SVDs × 0.5 = 12 s.
        assert!((c.oracle_seconds - 12.0).abs() < 1e-12);
    }

    #[test]
    fn outputs_are_deterministic_and_say_what_matters() {
        let a = analyse(&input()).unwrap();
        let mut shuffled = input();
        shuffled.oracle.reverse();
        for r in &mut shuffled.rules {
            r.scores.reverse();
        }
        shuffled.rules.reverse();
        shuffled.evaluation.reverse();
        shuffled.calibration.reverse();
        let b = analyse(&shuffled).unwrap();
        assert_eq!(a, b);
        let files = vec![(
            ScoreRule::NegativeSvGrad,
            "scatter-negative-sv-grad.svg".into(),
        )];
        let md = markdown(&a, &files);
        assert_eq!(md, markdown(&b, &files));
        assert!(
            md.contains("| `negative-sv-grad` | +1.000 / +1.000 |"),
            "{md}"
        );
        assert!(
            md.contains("| random ranking (expected) | 0.000 / 0.000"),
            "{md}"
        );
        assert!(md.contains("COLLAPSED"), "{md}");
        assert!(md.contains("30 (50 asked; selection split 40 rows"), "{md}");
        assert!(md.contains("**projected**"), "{md}");
        assert!(md.contains("1030 s (17.2 min)"), "{md}");
        assert!(md.contains("4th of 4"), "{md}");
        assert!(
            md.contains("The best that is not collapsed: layers.3.mlp.down_proj at keep 0.1"),
            "{md}"
        );
        assert!(md.contains("(no gain on the selection rows)"), "{md}");
        let svg = scatter_svg(&a, ScoreRule::FirstOrder).unwrap();
        assert_eq!(svg, scatter_svg(&b, ScoreRule::FirstOrder).unwrap());
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        // 8 points per panel, 2 panels, plus 3 legend circles.
        assert_eq!(svg.matches("<circle").count(), 8 * 2 + 3);
        // The collapsed point is hollow in both panels.
        assert_eq!(svg.matches("fill=\"none\" stroke=\"#").count(), 2 + 1 + 2);
        let json = serde_json::to_string_pretty(&a).unwrap();
        // serde_json parses floats to within an ulp (no `float_roundtrip`): compare
        // what is not a float.
        let back: Study = serde_json::from_str(&json).unwrap();
        assert_eq!(back.oracle.matrix_order, a.oracle.matrix_order);
        assert_eq!(back.header, a.header);
    }

    #[test]
    fn bad_inputs_are_errors_that_say_which() {
        let mut i = input();
        i.rules[1].scores.pop();
        let e = analyse(&i).unwrap_err().to_string();
        assert!(
            e.contains("first-order has no score for the oracle's entry model.layers.3"),
            "{e}"
        );
        let mut i = input();
        i.oracle[2].measured.log_loss = f64::NAN;
        let e = analyse(&i).unwrap_err().to_string();
        assert!(
            e.contains(
                "oracle entry model.layers.1.mlp.down_proj.weight keep 0.1: log_loss is NaN"
            ),
            "{e}"
        );
        let mut i = input();
        i.oracle.push(i.oracle[0].clone());
        assert!(analyse(&i)
            .unwrap_err()
            .to_string()
            .contains("appears twice"));
        let mut i = input();
        i.rules[0].scores[0].value = f64::INFINITY;
        assert!(analyse(&i).unwrap_err().to_string().contains("is inf"));
        let mut i = input();
        i.header.selection_metric = "balanced_accuracy".into();
        i.baseline.balanced_accuracy = None;
        assert!(analyse(&i)
            .unwrap_err()
            .to_string()
            .contains("balanced_accuracy"));
        let mut i = input();
        i.oracle.clear();
        assert!(analyse(&i).is_err());
    }

    #[test]
    fn entries_mode_asks_for_the_best_entry() {
        let mut i = input();
        i.header.select = "entries".into();
        i.header.top_k = 1;
        let s = analyse(&i).unwrap();
        // negative-sv-grad's best entry is layer 3 keep 0.5: the oracle's best.
        assert!(s.rules[0].holds_best);
        assert!(!s.rules[2].holds_best);
        // 8 entries, top 1.
        assert_eq!(s.random.holds_best, Some(1.0 / 8.0));
    }

    #[test]
    fn number_formats() {
        assert_eq!(fx(-0.0001, 3), "0.000");
        assert_eq!(signed(0.0004, 3), "0.000");
        assert_eq!(signed(0.01, 3), "+0.010");
        assert_eq!(signed(-0.01, 3), "-0.010");
        assert_eq!(ordinal(1), "1st");
        assert_eq!(ordinal(12), "12th");
        assert_eq!(ordinal(22), "22nd");
        assert_eq!(ordinal(56), "56th");
        let (lo, hi, t) = ticks(0.13, 0.87, 5);
        assert_eq!((lo, hi), (0.0, 1.0));
        assert_eq!(t.first().unwrap().1, "0.0");
        assert_eq!(t.last().unwrap().1, "1.0");
        let (lo, hi, _) = ticks(2.0, 2.0, 5);
        assert!(lo < 2.0 && hi > 2.0);
    }

    #[test]
    fn depth_and_keep_agreement_hand_computed() {
        let s = analyse(&input()).unwrap();
        let by = |rule| s.rules.iter().find(|r| r.rule == rule).unwrap();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        // negative-sv-grad ranks layer 3 first: its best entry (keep 0.5, accuracy
        // 0.81 against 0.55, collapsed) from k = 1 on.
        let nsg = by(ScoreRule::NegativeSvGrad);
        assert_eq!(
            nsg.depth.iter().map(|d| d.k).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        let d = &nsg.depth[0];
        assert_eq!(
            (d.best_matrix.as_str(), d.best_keep),
            (name(3, "down").as_str(), 0.5)
        );
        assert!(close(d.delta_metric, 0.26) && d.collapsed);
        assert!(close(d.lowest_delta_log_loss, -0.21));
        // first-order-slope is reversed: layer 0 first (0.51: -0.04; log-loss 1.99:
        // +0.09), then layer 1 (0.61: +0.06; 1.89: -0.01); at k = 4 the oracle's best.
        let sl = by(ScoreRule::FirstOrderSlope);
        assert!(close(sl.depth[0].delta_metric, -0.04) && !sl.depth[0].collapsed);
        assert!(close(sl.depth[0].lowest_delta_log_loss, 0.09));
        assert_eq!(sl.depth[1].best_matrix, name(1, "down"));
        assert!(close(sl.depth[1].delta_metric, 0.06));
        assert!(close(sl.depth[1].lowest_delta_log_loss, -0.01));
        assert!(close(sl.depth[3].delta_metric, 0.26));
        // Random: k = 1 is the mean of the matrices' best (-0.04, 0.06, 0.16, 0.26) and
        // lowest (0.09, -0.01, -0.11, -0.21); k = 4 is the oracle's best.
        let r = &s.random.depth;
        assert!(close(r[0].delta_metric, 0.11) && close(r[0].lowest_delta_log_loss, -0.06));
        assert!(close(r[3].delta_metric, 0.26) && close(r[3].lowest_delta_log_loss, -0.21));
        // k = 2 of 4: the best of a pair, over the 6 pairs of (-0.04, 0.06, 0.16, 0.26):
        // 0.26 three times, 0.16 twice, 0.06 once.
        assert!(close(
            r[1].delta_metric,
            (3.0 * 0.26 + 2.0 * 0.16 + 0.06) / 6.0
        ));
        // Every matrix is best at keep 0.5 by either measure; negative-sv-grad and
        // first-order prefer keep 0.5, first-order-slope keep 0.1.
        assert_eq!(nsg.keep_agreement_metric, Some(1.0));
        assert_eq!(by(ScoreRule::FirstOrder).keep_agreement_log_loss, Some(1.0));
        assert_eq!(
            (sl.keep_agreement_metric, sl.keep_agreement_log_loss),
            (Some(0.0), Some(0.0))
        );
        assert_eq!(s.random.keep_agreement, Some(0.5));
        let md = markdown(&s, &[]);
        assert!(md.contains("## How deep must the search go?"), "{md}");
        assert!(md.contains("| 1 | +0.260 COLLAPSED / -0.2100 |"), "{md}");
    }

    #[test]
    fn rederive_gives_what_analyse_gives() {
        let full = analyse(&input()).unwrap();
        let mut old = full.clone();
        for r in &mut old.rules {
            r.depth.clear();
            r.keep_agreement_metric = None;
            r.keep_agreement_log_loss = None;
        }
        old.random.depth.clear();
        old.random.keep_agreement = None;
        // A study.json of an earlier c2i has no such fields at all.
        let mut json: serde_json::Value = serde_json::to_value(&old).unwrap();
        for r in json["rules"].as_array_mut().unwrap() {
            let r = r.as_object_mut().unwrap();
            r.remove("depth");
            r.remove("keep_agreement_metric");
            r.remove("keep_agreement_log_loss");
        }
        json["random"].as_object_mut().unwrap().remove("depth");
        let mut back: Study = serde_json::from_value(json).unwrap();
        rederive(&mut back).unwrap();
        assert_eq!(back, full);
        // Points that are not the oracle's entries are refused.
        back.rules[0].points.pop();
        assert!(rederive(&mut back).is_err());
    }
}
