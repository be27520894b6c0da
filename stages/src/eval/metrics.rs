//! Metrics of LASER's protocol and the diagnostics c2i adds, as pure functions.
//!
//! # Classification ([`classification_metrics`])
//!
//! Inputs are the gold and predicted class indices of the same samples and the number
//! of classes. With the confusion matrix `C[gold][pred]`:
//!
//! - **accuracy** = `sum_c C[c][c] / n` (LASER's 0-1 correctness, as a fraction, not
//!   a percentage);
//! - **balanced accuracy** = mean over the classes *present in gold* of the recall
//!   `C[c][c] / #gold(c)`; a model that always answers one class scores `1 / k` for `k`
//!   gold classes (0.5 for two), whatever the label balance;
//! - **macro-F1** = mean over the classes *present in gold or in the predictions* of
//!   `F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c)` (its denominator is positive for every
//!   such class); classes absent from both are left out rather than counted as 0 or 1;
//! - **predicted histogram** `#pred(c)` and **gold histogram** `#gold(c)`;
//! - **majority-class rate** = `max_c #gold(c) / n`: the accuracy of the best constant
//!   answer, the floor any real improvement must clear;
//! - **collapsed** = `max_c #pred(c) / n > threshold` (default
//!   [`DEFAULT_COLLAPSE_THRESHOLD`] = 0.95): the model (or a candidate) answers almost
//!   always the same class, so its accuracy says little beyond the label balance.
//!
//! # Multiple choice ([`multiple_choice_metrics`])
//!
//! When each row has its own choices, a class index means nothing across rows (it is
//! a position in the row's list), so neither balanced accuracy nor a majority-class
//! rate over gold positions is reported: a task that lists the gold answer first in
//! most rows would make "always answer the first" look like skill. Instead:
//!
//! - **accuracy** = share of rows whose prediction is the gold choice;
//! - **chance** = mean over rows of `1 / choices`: what a uniformly random choice
//!   scores, the floor a real model must clear.
//!
//! # Ties between choices ([`choose`])
//!
//! The prediction is the choice with the largest summed log-probability; exact ties
//! (and an all-NaN row) go to the tied choice whose text has the smallest BLAKE3
//! hash, which does not depend on where the task lists it. NaN counts as the lowest
//! value.
//!
//! # Log-loss
//!
//! [`mean_log_loss`] is the mean over samples of `-log p(gold answer | prompt)`, from
//! each sample's gold log-probability summed over the answer's tokens.
//! [`mean_log_loss_per_token`] is LASER's `get_acc_log_loss`: the mean of
//! `-answer_logprob / answer_length`; the two agree for single-token answers.
//!
//! # Generation ([`score_generation`], [`generation_metrics`])
//!
//! All checks look at the generated **continuation only**, never the prompt:
//!
//! - **correct** under the task's `match` ([`Match`]): `substring` (the default,
//!   [`substring_match`]) is LASER's `generation_match` with its
//!   `case_sensitive=False, strip=True`: `target.strip().lower()` is a substring of
//!   `continuation.strip().lower()`. (LASER's decoded generation includes the prompt,
//!   so an answer already in the prompt counted as correct there; not here.) An empty
//!   target never matches. `exact` is SQuAD's exact match; `token_f1` credits each row
//!   with its token F1 (accuracy is then the mean F1, and a row is *correct* only
//!   with F1 = 1).
//! - a task's `stop` strings cut the continuation before the first of them
//!   ([`cut_at_stop`]) before anything is scored.
//! - **exact match** and **token F1**: SQuAD's `normalize_answer` ([`normalize_answer`]:
//!   lower-case, drop ASCII punctuation, drop the articles a/an/the, collapse
//!   whitespace), then equality, and the F1 of the multiset overlap of the
//!   whitespace tokens (both empty: 1; one empty: 0). LASER's own F1 uses nltk word
//!   sets instead; this is the standard SQuAD definition.
//! - **empty**: the normalized continuation is empty (nothing, whitespace, or only
//!   punctuation and articles).
//! - **copies prompt**: the normalized continuation is non-empty and a substring of
//!   the normalized prompt (the model echoes its input).
//!
//! # Selection ([`select_best`], [`compare_candidates`])
//!
//! LASER keeps the candidate with the higher validation accuracy, ties to the lower
//! validation log-loss (`src/intervention_*_bbh.py`), and otherwise the earlier one.
//! c2i does the same with a choice of metric ([`SelectionMetric`]: `accuracy` or
//! `balanced_accuracy`) and a caller-given key for the last tie-break (smaller key
//! wins; pass the position in the search order to match LASER). NaN counts as the worst
//! value of a metric and of a log-loss.

use crate::data::Match;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// `collapsed` is set when one class takes more than this share of the predictions.
pub const DEFAULT_COLLAPSE_THRESHOLD: f64 = 0.95;

/// Invalid metric inputs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    #[error("no samples to score")]
    Empty,
    #[error("{what}: {left} entries against {right}")]
    LengthMismatch {
        what: &'static str,
        left: usize,
        right: usize,
    },
    #[error("{what}[{position}] = {index} is not a class index (there are {n_classes} classes)")]
    ClassOutOfRange {
        what: &'static str,
        position: usize,
        index: usize,
        n_classes: usize,
    },
    #[error("sample {position} has an answer of 0 tokens")]
    ZeroLengthAnswer { position: usize },
    #[error("sample {position} has no choices")]
    NoChoices { position: usize },
    #[error("selection metric `{metric}` is not available for this result (a generation task or per-row multiple choice has no balanced accuracy)")]
    MetricUnavailable { metric: SelectionMetric },
    #[error("unknown selection metric `{0}`: expected accuracy or balanced_accuracy")]
    UnknownMetric(String),
}

/// Metrics of a classification run (fractions in [0, 1], not percentages).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationMetrics {
    pub n: usize,
    pub n_classes: usize,
    pub correct: usize,
    pub accuracy: f64,
    pub balanced_accuracy: f64,
    pub macro_f1: f64,
    /// `confusion[gold][predicted]`.
    pub confusion: Vec<Vec<usize>>,
    /// Number of predictions of each class.
    pub predicted_histogram: Vec<usize>,
    /// Number of gold labels of each class.
    pub gold_histogram: Vec<usize>,
    /// Share of the most frequent gold class.
    pub majority_class_rate: f64,
    /// Share of the most frequent predicted class.
    pub max_predicted_share: f64,
    pub collapse_threshold: f64,
    /// `max_predicted_share > collapse_threshold`.
    pub collapsed: bool,
}

fn check_classes(what: &'static str, xs: &[usize], n_classes: usize) -> Result<(), MetricsError> {
    match xs.iter().position(|&c| c >= n_classes) {
        Some(position) => Err(MetricsError::ClassOutOfRange {
            what,
            position,
            index: xs[position],
            n_classes,
        }),
        None => Ok(()),
    }
}

/// Classification metrics of `predicted` against `gold` (see the module docs).
pub fn classification_metrics(
    gold: &[usize],
    predicted: &[usize],
    n_classes: usize,
    collapse_threshold: f64,
) -> Result<ClassificationMetrics, MetricsError> {
    if gold.len() != predicted.len() {
        return Err(MetricsError::LengthMismatch {
            what: "gold and predicted labels",
            left: gold.len(),
            right: predicted.len(),
        });
    }
    if gold.is_empty() {
        return Err(MetricsError::Empty);
    }
    check_classes("gold", gold, n_classes)?;
    check_classes("predicted", predicted, n_classes)?;
    let n = gold.len();
    let mut confusion = vec![vec![0usize; n_classes]; n_classes];
    for (&g, &p) in gold.iter().zip(predicted) {
        confusion[g][p] += 1;
    }
    let gold_histogram: Vec<usize> = confusion.iter().map(|row| row.iter().sum()).collect();
    let predicted_histogram: Vec<usize> = (0..n_classes)
        .map(|c| confusion.iter().map(|row| row[c]).sum())
        .collect();
    let correct: usize = (0..n_classes).map(|c| confusion[c][c]).sum();

    let recalls: Vec<f64> = (0..n_classes)
        .filter(|&c| gold_histogram[c] > 0)
        .map(|c| confusion[c][c] as f64 / gold_histogram[c] as f64)
        .collect();
    let balanced_accuracy = recalls.iter().sum::<f64>() / recalls.len() as f64;

    let f1s: Vec<f64> = (0..n_classes)
        .filter(|&c| gold_histogram[c] > 0 || predicted_histogram[c] > 0)
        .map(|c| {
            let tp = confusion[c][c] as f64;
            let fp = predicted_histogram[c] as f64 - tp;
            let fn_ = gold_histogram[c] as f64 - tp;
            2.0 * tp / (2.0 * tp + fp + fn_)
        })
        .collect();
    let macro_f1 = f1s.iter().sum::<f64>() / f1s.len() as f64;

    let max_gold = gold_histogram.iter().copied().max().unwrap_or(0);
    let max_pred = predicted_histogram.iter().copied().max().unwrap_or(0);
    let max_predicted_share = max_pred as f64 / n as f64;
    Ok(ClassificationMetrics {
        n,
        n_classes,
        correct,
        accuracy: correct as f64 / n as f64,
        balanced_accuracy,
        macro_f1,
        confusion,
        predicted_histogram,
        gold_histogram,
        majority_class_rate: max_gold as f64 / n as f64,
        max_predicted_share,
        collapse_threshold,
        collapsed: max_predicted_share > collapse_threshold,
    })
}

/// Metrics of per-row multiple choice (fractions in [0, 1]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultipleChoiceMetrics {
    pub n: usize,
    pub correct: usize,
    pub accuracy: f64,
    /// Mean of `1 / choices`: the expected accuracy of a uniformly random choice.
    pub chance: f64,
    /// Fewest and most choices of a row.
    pub min_choices: usize,
    pub max_choices: usize,
}

/// Multiple-choice metrics from each row's hit and number of choices.
pub fn multiple_choice_metrics(
    correct: &[bool],
    n_choices: &[usize],
) -> Result<MultipleChoiceMetrics, MetricsError> {
    if correct.len() != n_choices.len() {
        return Err(MetricsError::LengthMismatch {
            what: "hits and choice counts",
            left: correct.len(),
            right: n_choices.len(),
        });
    }
    if correct.is_empty() {
        return Err(MetricsError::Empty);
    }
    if let Some(position) = n_choices.iter().position(|&c| c == 0) {
        return Err(MetricsError::NoChoices { position });
    }
    let n = correct.len();
    let hits = correct.iter().filter(|&&c| c).count();
    Ok(MultipleChoiceMetrics {
        n,
        correct: hits,
        accuracy: hits as f64 / n as f64,
        chance: n_choices.iter().map(|&c| 1.0 / c as f64).sum::<f64>() / n as f64,
        min_choices: n_choices.iter().copied().min().unwrap_or(0),
        max_choices: n_choices.iter().copied().max().unwrap_or(0),
    })
}

/// The chosen answer: the index of the largest log-probability, exact ties (NaN the
/// lowest) to the tied choice whose text has the smallest BLAKE3 hash, so the choices'
/// order never decides. Without texts (or with repeated ones) the lower index wins a
/// remaining tie.
pub fn choose(log_probs: &[f64], texts: &[String]) -> usize {
    let key = |x: f64| if x.is_nan() { f64::NEG_INFINITY } else { x };
    let best = log_probs
        .iter()
        .copied()
        .map(key)
        .fold(f64::NEG_INFINITY, f64::max);
    let hash = |i: usize| texts.get(i).map(|t| *blake3::hash(t.as_bytes()).as_bytes());
    let mut chosen: Option<usize> = None;
    for (i, &x) in log_probs.iter().enumerate() {
        if key(x) != best {
            continue;
        }
        chosen = match chosen {
            Some(c) if hash(c) <= hash(i) => Some(c),
            _ => Some(i),
        };
    }
    chosen.unwrap_or(0)
}

/// `text` up to the first occurrence of any of `stop` (all of it when none occurs).
pub fn cut_at_stop<'a>(text: &'a str, stop: &[String]) -> &'a str {
    let end = stop
        .iter()
        .filter_map(|s| text.find(s.as_str()))
        .min()
        .unwrap_or(text.len());
    &text[..end]
}

/// Mean of `-log p(gold)` from each sample's summed gold log-probability.
pub fn mean_log_loss(gold_log_probs: &[f64]) -> Result<f64, MetricsError> {
    if gold_log_probs.is_empty() {
        return Err(MetricsError::Empty);
    }
    Ok(-gold_log_probs.iter().sum::<f64>() / gold_log_probs.len() as f64)
}

/// LASER's log-loss: mean of `-answer_logprob / answer_length` (tokens).
pub fn mean_log_loss_per_token(
    gold_log_probs: &[f64],
    answer_tokens: &[usize],
) -> Result<f64, MetricsError> {
    if gold_log_probs.len() != answer_tokens.len() {
        return Err(MetricsError::LengthMismatch {
            what: "log-probabilities and answer lengths",
            left: gold_log_probs.len(),
            right: answer_tokens.len(),
        });
    }
    if gold_log_probs.is_empty() {
        return Err(MetricsError::Empty);
    }
    if let Some(position) = answer_tokens.iter().position(|&t| t == 0) {
        return Err(MetricsError::ZeroLengthAnswer { position });
    }
    let sum: f64 = gold_log_probs
        .iter()
        .zip(answer_tokens)
        .map(|(lp, &t)| -lp / t as f64)
        .sum();
    Ok(sum / gold_log_probs.len() as f64)
}

fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// SQuAD's `normalize_answer`: lower-case, remove ASCII punctuation
/// (`string.punctuation`), replace the words a/an/the (regex `\b(a|an|the)\b`) by a
/// space, and join the whitespace-separated tokens with single spaces.
pub fn normalize_answer(s: &str) -> String {
    let lowered: String = s
        .to_lowercase()
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    // Remove articles: a maximal run of word characters equal to a/an/the.
    let mut no_articles = String::with_capacity(lowered.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if matches!(word.as_str(), "a" | "an" | "the") {
            out.push(' ');
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in lowered.chars() {
        if is_word_char(c) {
            word.push(c);
        } else {
            flush(&mut word, &mut no_articles);
            no_articles.push(c);
        }
    }
    flush(&mut word, &mut no_articles);
    no_articles
        .split(is_python_space)
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// LASER's correctness for generation tasks, on the continuation only:
/// `target.strip().lower() in continuation.strip().lower()`; an empty target never
/// matches.
pub fn substring_match(continuation: &str, target: &str) -> bool {
    let t = target.trim_matches(is_python_space).to_lowercase();
    !t.is_empty()
        && continuation
            .trim_matches(is_python_space)
            .to_lowercase()
            .contains(&t)
}

/// SQuAD exact match: the normalized strings are equal.
pub fn exact_match(continuation: &str, target: &str) -> bool {
    normalize_answer(continuation) == normalize_answer(target)
}

/// SQuAD token F1 between the normalized continuation and target.
pub fn token_f1(continuation: &str, target: &str) -> f64 {
    let pred = normalize_answer(continuation);
    let gold = normalize_answer(target);
    let p: Vec<&str> = pred.split(' ').filter(|t| !t.is_empty()).collect();
    let g: Vec<&str> = gold.split(' ').filter(|t| !t.is_empty()).collect();
    if p.is_empty() || g.is_empty() {
        return if p.is_empty() && g.is_empty() {
            1.0
        } else {
            0.0
        };
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in &g {
        *counts.entry(t).or_default() += 1;
    }
    let mut same = 0usize;
    for t in &p {
        if let Some(c) = counts.get_mut(t) {
            if *c > 0 {
                *c -= 1;
                same += 1;
            }
        }
    }
    if same == 0 {
        return 0.0;
    }
    let precision = same as f64 / p.len() as f64;
    let recall = same as f64 / g.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// The normalized continuation is empty.
pub fn is_empty_generation(continuation: &str) -> bool {
    normalize_answer(continuation).is_empty()
}

/// The normalized continuation is non-empty and occurs in the normalized prompt.
pub fn copies_prompt(prompt: &str, continuation: &str) -> bool {
    let c = normalize_answer(continuation);
    !c.is_empty() && normalize_answer(prompt).contains(&c)
}

/// `match = "text"`: equal after stripping and making every run of whitespace one
/// space; case and punctuation count.
pub fn text_match(continuation: &str, target: &str) -> bool {
    let t: Vec<&str> = target.split_whitespace().collect();
    !t.is_empty() && continuation.split_whitespace().eq(t.iter().copied())
}

/// The scores of one generated continuation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GenerationScore {
    /// Full credit under the task's match ([`substring_match`] by default).
    pub correct: bool,
    /// The row's credit in [0, 1] (0/1, or the token F1 for `match = "token_f1"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credit: Option<f64>,
    pub exact_match: bool,
    pub token_f1: f64,
    pub empty: bool,
    pub copies_prompt: bool,
}

/// Score one continuation (the generated text after the prompt, without it) under a
/// task's `match`.
pub fn score_generation(
    prompt: &str,
    continuation: &str,
    target: &str,
    how: Match,
) -> GenerationScore {
    let exact = exact_match(continuation, target);
    let f1 = token_f1(continuation, target);
    let (correct, credit) = match how {
        Match::Substring => (substring_match(continuation, target), None),
        Match::Exact => (exact, None),
        Match::TokenF1 => (f1 == 1.0, Some(f1)),
        Match::Text => (text_match(continuation, target), None),
    };
    GenerationScore {
        correct,
        credit,
        exact_match: exact,
        token_f1: f1,
        empty: is_empty_generation(continuation),
        copies_prompt: copies_prompt(prompt, continuation),
    }
}

/// Aggregate generation metrics (fractions in [0, 1]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationMetrics {
    pub n: usize,
    pub correct: usize,
    /// Share of [`GenerationScore::correct`] (mean token F1 for `match = "token_f1"`).
    pub accuracy: f64,
    /// The match rule, when it is not LASER's `substring`.
    #[serde(rename = "match", default, skip_serializing_if = "is_substring")]
    pub match_: Match,
    pub exact_match: f64,
    /// Mean token F1.
    pub token_f1: f64,
    pub empty_rate: f64,
    pub prompt_copy_rate: f64,
}

fn is_substring(m: &Match) -> bool {
    *m == Match::Substring
}

/// Aggregate per-sample generation scores made under `how`.
pub fn generation_metrics(
    scores: &[GenerationScore],
    how: Match,
) -> Result<GenerationMetrics, MetricsError> {
    if scores.is_empty() {
        return Err(MetricsError::Empty);
    }
    let n = scores.len() as f64;
    let share = |f: fn(&GenerationScore) -> bool| scores.iter().filter(|s| f(s)).count() as f64 / n;
    let correct = scores.iter().filter(|s| s.correct).count();
    let accuracy = match how {
        Match::TokenF1 => {
            scores
                .iter()
                .map(|s| s.credit.unwrap_or(s.token_f1))
                .sum::<f64>()
                / n
        }
        Match::Substring | Match::Exact | Match::Text => correct as f64 / n,
    };
    Ok(GenerationMetrics {
        n: scores.len(),
        correct,
        accuracy,
        match_: how,
        exact_match: share(|s| s.exact_match),
        token_f1: scores.iter().map(|s| s.token_f1).sum::<f64>() / n,
        empty_rate: share(|s| s.empty),
        prompt_copy_rate: share(|s| s.copies_prompt),
    })
}

/// The metric that picks the best candidate on the selection samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelectionMetric {
    /// LASER's rule.
    #[default]
    Accuracy,
    /// Robust to a candidate that answers one class on an unbalanced task.
    BalancedAccuracy,
}

impl SelectionMetric {
    /// `accuracy` or `balanced_accuracy`.
    pub fn name(self) -> &'static str {
        match self {
            SelectionMetric::Accuracy => "accuracy",
            SelectionMetric::BalancedAccuracy => "balanced_accuracy",
        }
    }

    /// The metric's value in a score.
    pub fn value(self, s: &SelectionScore) -> Result<f64, MetricsError> {
        match self {
            SelectionMetric::Accuracy => Ok(s.accuracy),
            SelectionMetric::BalancedAccuracy => s
                .balanced_accuracy
                .ok_or(MetricsError::MetricUnavailable { metric: self }),
        }
    }
}

impl fmt::Display for SelectionMetric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SelectionMetric {
    type Err = MetricsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "accuracy" => Ok(SelectionMetric::Accuracy),
            "balanced_accuracy" => Ok(SelectionMetric::BalancedAccuracy),
            _ => Err(MetricsError::UnknownMetric(s.to_owned())),
        }
    }
}

/// What the selection compares for one candidate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SelectionScore {
    pub accuracy: f64,
    /// `None` for generation tasks.
    pub balanced_accuracy: Option<f64>,
    pub log_loss: f64,
}

impl SelectionScore {
    pub fn from_classification(m: &ClassificationMetrics, log_loss: f64) -> Self {
        SelectionScore {
            accuracy: m.accuracy,
            balanced_accuracy: Some(m.balanced_accuracy),
            log_loss,
        }
    }

    pub fn from_multiple_choice(m: &MultipleChoiceMetrics, log_loss: f64) -> Self {
        SelectionScore {
            accuracy: m.accuracy,
            balanced_accuracy: None,
            log_loss,
        }
    }

    pub fn from_generation(m: &GenerationMetrics, log_loss: f64) -> Self {
        SelectionScore {
            accuracy: m.accuracy,
            balanced_accuracy: None,
            log_loss,
        }
    }
}

/// Total order on f64 with NaN below everything.
fn nan_low(x: f64) -> f64 {
    if x.is_nan() {
        f64::NEG_INFINITY
    } else {
        x
    }
}

/// `Ordering::Greater` when candidate `a` is better than `b`: higher metric, then
/// lower log-loss, then smaller key.
pub fn compare_candidates<K: Ord>(
    metric: SelectionMetric,
    a: (&K, &SelectionScore),
    b: (&K, &SelectionScore),
) -> Result<Ordering, MetricsError> {
    let (ma, mb) = (nan_low(metric.value(a.1)?), nan_low(metric.value(b.1)?));
    let by_metric = ma.partial_cmp(&mb).unwrap_or(Ordering::Equal);
    // Lower log-loss is better: compare negated, NaN as the worst.
    let (la, lb) = (nan_low(-a.1.log_loss), nan_low(-b.1.log_loss));
    let by_loss = la.partial_cmp(&lb).unwrap_or(Ordering::Equal);
    Ok(by_metric.then(by_loss).then_with(|| b.0.cmp(a.0)))
}

/// Index of the best candidate under [`compare_candidates`]; `None` when empty.
pub fn select_best<K: Ord>(
    metric: SelectionMetric,
    candidates: &[(K, SelectionScore)],
) -> Result<Option<usize>, MetricsError> {
    let mut best: Option<usize> = None;
    for (i, (k, s)) in candidates.iter().enumerate() {
        best = match best {
            None => {
                metric.value(s)?;
                Some(i)
            }
            Some(j) => {
                let (bk, bs) = &candidates[j];
                if compare_candidates(metric, (k, s), (bk, bs))? == Ordering::Greater {
                    Some(i)
                } else {
                    Some(j)
                }
            }
        };
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn hand_confusion_matrix() {
        // gold:  0 0 0 0 1 1 1 2 2 2
        // pred:  0 0 1 2 1 1 0 2 2 1
        let gold = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2];
        let pred = [0, 0, 1, 2, 1, 1, 0, 2, 2, 1];
        let m = classification_metrics(&gold, &pred, 3, DEFAULT_COLLAPSE_THRESHOLD).unwrap();
        assert_eq!(
            m.confusion,
            vec![vec![2, 1, 1], vec![1, 2, 0], vec![0, 1, 2]]
        );
        assert_eq!(m.correct, 6);
        assert!(close(m.accuracy, 0.6));
        // recalls 2/4, 2/3, 2/3
        assert!(close(
            m.balanced_accuracy,
            (0.5 + 2.0 / 3.0 + 2.0 / 3.0) / 3.0
        ));
        // F1: c0 tp2 fp1 fn2 -> 4/7; c1 tp2 fp2 fn1 -> 4/7; c2 tp2 fp1 fn1 -> 4/6
        assert!(close(m.macro_f1, (4.0 / 7.0 + 4.0 / 7.0 + 4.0 / 6.0) / 3.0));
        assert_eq!(m.predicted_histogram, vec![3, 4, 3]);
        assert_eq!(m.gold_histogram, vec![4, 3, 3]);
        assert!(close(m.majority_class_rate, 0.4));
        assert!(close(m.max_predicted_share, 0.4));
        assert!(!m.collapsed);
    }

    #[test]
    fn all_one_class_predictions() {
        // 6 gold of class 0, 4 of class 1; the model always says 0.
        let gold = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1];
        let pred = [0; 10];
        let m = classification_metrics(&gold, &pred, 2, DEFAULT_COLLAPSE_THRESHOLD).unwrap();
        assert!(close(m.accuracy, 0.6));
        assert!(close(m.balanced_accuracy, 0.5));
        // F1_0 = 2*6 / (2*6 + 4 + 0) = 0.75, F1_1 = 0 (tp 0, fn 4) -> 0.375
        assert!(close(m.macro_f1, 0.375));
        assert_eq!(m.predicted_histogram, vec![10, 0]);
        assert!(close(m.majority_class_rate, 0.6));
        assert!(close(m.max_predicted_share, 1.0));
        assert!(m.collapsed);
        // Always the minority class: same balanced accuracy.
        let m = classification_metrics(&gold, &[1; 10], 2, 0.95).unwrap();
        assert!(close(m.balanced_accuracy, 0.5));
        assert!(close(m.macro_f1, (2.0 * 4.0 / (8.0 + 6.0)) / 2.0));
    }

    #[test]
    fn collapse_threshold_is_strict() {
        let gold = vec![0usize; 20];
        let mut pred = vec![0usize; 20];
        pred[0] = 1; // 19/20 = 0.95, not above 0.95
        let m = classification_metrics(&gold, &pred, 2, 0.95).unwrap();
        assert!(close(m.max_predicted_share, 0.95));
        assert!(!m.collapsed);
        let m = classification_metrics(&gold, &pred, 2, 0.9).unwrap();
        assert!(m.collapsed);
        // Only class 0 in gold: balanced accuracy over class 0 alone; macro-F1 over
        // classes 0 and 1 (1 was predicted).
        assert!(close(m.balanced_accuracy, 19.0 / 20.0));
        assert!(close(m.macro_f1, (38.0 / 39.0 + 0.0) / 2.0));
    }

    #[test]
    fn classification_input_errors() {
        assert_eq!(
            classification_metrics(&[], &[], 2, 0.95).unwrap_err(),
            MetricsError::Empty
        );
        assert!(matches!(
            classification_metrics(&[0], &[0, 1], 2, 0.95).unwrap_err(),
            MetricsError::LengthMismatch { .. }
        ));
        assert_eq!(
            classification_metrics(&[0, 1], &[0, 2], 2, 0.95).unwrap_err(),
            MetricsError::ClassOutOfRange {
                what: "predicted",
                position: 1,
                index: 2,
                n_classes: 2
            }
        );
    }

    #[test]
    fn log_losses() {
        assert!(close(mean_log_loss(&[-1.0, -3.0]).unwrap(), 2.0));
        assert!(close(
            mean_log_loss_per_token(&[-1.0, -3.0], &[1, 3]).unwrap(),
            1.0
        ));
        assert_eq!(mean_log_loss(&[]).unwrap_err(), MetricsError::Empty);
        assert_eq!(
            mean_log_loss_per_token(&[-1.0], &[0]).unwrap_err(),
            MetricsError::ZeroLengthAnswer { position: 0 }
        );
    }

    #[test]
    fn normalization_is_squad() {
        assert_eq!(
            normalize_answer("The  Quick, brown FOX!"),
            "quick brown fox"
        );
        assert_eq!(normalize_answer("an apple a day"), "apple day");
        assert_eq!(normalize_answer("theater"), "theater");
        assert_eq!(normalize_answer("A."), "");
        assert_eq!(normalize_answer("  \n "), "");
        assert_eq!(normalize_answer("«the» end"), "« » end");
    }

    #[test]
    fn substring_match_uses_continuation_only() {
        let prompt = "The country of Vadodara is India? The answer is";
        // The answer appears in the prompt but not in the continuation: wrong.
        let s = score_generation(prompt, " a city in Gujarat.", "India", Match::Substring);
        assert!(!s.correct);
        assert!(!substring_match(" a city in Gujarat.", "India"));
        let s = score_generation(prompt, " India, in Asia", " india ", Match::Substring);
        assert!(s.correct);
        assert!(!s.exact_match);
        assert!(substring_match("\n  INDIA\n", "India"));
        assert!(!substring_match("anything", "  "));
    }

    #[test]
    fn exact_match_and_token_f1_hand_cases() {
        assert!(exact_match(" The Beatles.", "Beatles"));
        assert!(close(token_f1(" The Beatles.", "Beatles"), 1.0));
        // pred [barack, obama, was, president] vs gold [barack, obama]: p 2/4, r 1 -> 2/3
        assert!(close(
            token_f1("Barack Obama was president", "Barack Obama"),
            2.0 / 3.0
        ));
        // multiset overlap: pred [new, new, york] vs gold [new, york]: same 2, p 2/3, r 1 -> 0.8
        assert!(close(token_f1("new new york", "New York"), 0.8));
        assert!(close(token_f1("Paris", "London"), 0.0));
        assert!(close(token_f1("", "London"), 0.0));
        assert!(close(token_f1("the", "a"), 1.0));
    }

    #[test]
    fn empty_and_prompt_copy() {
        let prompt =
            "Which magazine was started first Arthur's Magazine or First for Women? The answer is";
        let s = score_generation(prompt, " ...", "Arthur's Magazine", Match::Substring);
        assert!(s.empty && !s.copies_prompt && !s.correct);
        let s = score_generation(
            prompt,
            " Arthur's Magazine",
            "Arthur's Magazine",
            Match::Substring,
        );
        assert!(s.correct && s.copies_prompt && s.exact_match && !s.empty);
        let s = score_generation(
            prompt,
            " First for Women? The answer is",
            "Arthur's Magazine",
            Match::Substring,
        );
        assert!(s.copies_prompt && !s.correct);
        let m = generation_metrics(
            &[
                score_generation(prompt, " ...", "Arthur's Magazine", Match::Substring),
                score_generation(
                    prompt,
                    " Arthur's Magazine",
                    "Arthur's Magazine",
                    Match::Substring,
                ),
                score_generation(prompt, " 1844", "Arthur's Magazine", Match::Substring),
                score_generation(
                    prompt,
                    " First for Women? The answer is",
                    "Arthur's Magazine",
                    Match::Substring,
                ),
            ],
            Match::Substring,
        )
        .unwrap();
        assert_eq!((m.n, m.correct), (4, 1));
        assert!(close(m.accuracy, 0.25));
        assert!(close(m.exact_match, 0.25));
        assert!(close(m.empty_rate, 0.25));
        assert!(close(m.prompt_copy_rate, 0.5));
        assert!(close(m.token_f1, 0.25));
        assert_eq!(
            generation_metrics(&[], Match::Substring).unwrap_err(),
            MetricsError::Empty
        );
    }

    #[test]
    fn selection_rule() {
        let s = |acc: f64, bal: f64, ll: f64| SelectionScore {
            accuracy: acc,
            balanced_accuracy: Some(bal),
            log_loss: ll,
        };
        let cands = vec![
            ("c", s(0.6, 0.50, 0.7)),
            ("b", s(0.7, 0.55, 0.9)),
            ("a", s(0.7, 0.55, 0.8)),
            ("d", s(0.7, 0.55, 0.8)),
            ("e", s(0.5, 0.60, 0.9)),
            ("f", s(f64::NAN, f64::NAN, 0.1)),
        ];
        // Accuracy: b, a, d tie at 0.7; a and d have the lower log-loss; key "a" < "d".
        assert_eq!(
            select_best(SelectionMetric::Accuracy, &cands).unwrap(),
            Some(2)
        );
        assert_eq!(
            select_best(SelectionMetric::BalancedAccuracy, &cands).unwrap(),
            Some(4)
        );
        let rev: Vec<_> = cands.iter().rev().cloned().collect();
        assert_eq!(
            rev[select_best(SelectionMetric::Accuracy, &rev)
                .unwrap()
                .unwrap()]
            .0,
            "a"
        );
        assert_eq!(
            select_best::<u32>(SelectionMetric::Accuracy, &[]).unwrap(),
            None
        );
        let g = SelectionScore {
            accuracy: 0.5,
            balanced_accuracy: None,
            log_loss: 1.0,
        };
        assert!(matches!(
            select_best(SelectionMetric::BalancedAccuracy, &[(0, g)]),
            Err(MetricsError::MetricUnavailable { .. })
        ));
        assert_eq!(
            compare_candidates(
                SelectionMetric::Accuracy,
                (&0, &s(0.5, 0.5, f64::NAN)),
                (&1, &s(0.5, 0.5, 3.0))
            )
            .unwrap(),
            Ordering::Less
        );
    }

    #[test]
    fn selection_metric_names_and_serde() {
        for m in [SelectionMetric::Accuracy, SelectionMetric::BalancedAccuracy] {
            assert_eq!(m.name().parse::<SelectionMetric>().unwrap(), m);
            assert_eq!(
                serde_json::to_string(&m).unwrap(),
                format!("\"{}\"", m.name())
            );
        }
        assert!("f1".parse::<SelectionMetric>().is_err());
        let m = classification_metrics(&[0, 1], &[0, 0], 2, 0.95).unwrap();
        let j = serde_json::to_value(&m).unwrap();
        assert_eq!(j["balanced_accuracy"], 0.5);
        assert_eq!(j["collapsed"], true);
    }

    #[test]
    fn ties_do_not_depend_on_position() {
        let texts = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let a = texts(&[" a", " b", " c"]);
        assert_eq!(choose(&[-1.0, -0.5, -2.0], &a), 1);
        // A three-way tie goes to the same text in every order of the choices.
        let base = choose(&[-1.0, -1.0, -1.0], &a);
        let winner = &a[base];
        for perm in [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ] {
            let t: Vec<String> = perm.iter().map(|&i| a[i].clone()).collect();
            assert_eq!(&t[choose(&[-1.0, -1.0, -1.0], &t)], winner);
        }
        // NaN is the lowest value; an all-NaN row is a tie among all.
        assert_eq!(choose(&[f64::NAN, -3.0], &texts(&["x", "y"])), 1);
        let all_nan = choose(&[f64::NAN, f64::NAN], &texts(&["x", "y"]));
        assert_eq!(
            choose(&[f64::NAN, f64::NAN], &texts(&["y", "x"])),
            1 - all_nan
        );
        assert_eq!(choose(&[-1.0, -1.0], &[]), 0);
    }

    #[test]
    fn multiple_choice_reports_chance_not_a_majority() {
        let m = multiple_choice_metrics(&[true, false, true, false], &[2, 4, 4, 5]).unwrap();
        assert_eq!((m.n, m.correct), (4, 2));
        assert!(close(m.accuracy, 0.5));
        assert!(close(m.chance, (0.5 + 0.25 + 0.25 + 0.2) / 4.0));
        assert_eq!((m.min_choices, m.max_choices), (2, 5));
        assert_eq!(
            multiple_choice_metrics(&[true], &[0]).unwrap_err(),
            MetricsError::NoChoices { position: 0 }
        );
        assert_eq!(
            multiple_choice_metrics(&[], &[]).unwrap_err(),
            MetricsError::Empty
        );
    }

    #[test]
    fn stop_strings_and_match_rules() {
        let stop = vec!["\n".to_string(), ".".to_string()];
        assert_eq!(cut_at_stop(" Paris. It is\n", &stop), " Paris");
        assert_eq!(cut_at_stop(" Paris", &stop), " Paris");
        assert_eq!(cut_at_stop("\nx", &stop), "");
        let p = "Q";
        let s = score_generation(p, " the Paris", "Paris", Match::Exact);
        assert!(s.correct && s.credit.is_none());
        let s = score_generation(p, " Paris France", "Paris", Match::Exact);
        assert!(!s.correct);
        let s = score_generation(p, " Paris France", "Paris", Match::TokenF1);
        assert!(!s.correct && close(s.credit.unwrap(), 2.0 / 3.0));
        // `text`: whitespace-normalized equality; punctuation and case count, which
        // SQuAD's normalization drops (`) ]` and `] )` both normalize to nothing).
        assert!(score_generation(p, " ) ]", ") ]", Match::Text).correct);
        assert!(score_generation(p, "  )\t]  ", ") ]", Match::Text).correct);
        assert!(!score_generation(p, " ] )", ") ]", Match::Text).correct);
        assert!(score_generation(p, " ] )", ") ]", Match::Exact).correct);
        assert!(!score_generation(p, " -35", "35", Match::Text).correct);
        assert!(!score_generation(p, " yes", "Yes", Match::Text).correct);
        assert!(!score_generation(p, " ", " ", Match::Text).correct);
        let m = generation_metrics(
            &[s, score_generation(p, "Paris", "Paris", Match::TokenF1)],
            Match::TokenF1,
        )
        .unwrap();
        assert!(close(m.accuracy, (2.0 / 3.0 + 1.0) / 2.0));
        assert_eq!(m.correct, 1);
        let j = serde_json::to_value(&m).unwrap();
        assert_eq!(j["match"], "token_f1");
        let m = generation_metrics(
            &[score_generation(p, "x", "y", Match::Substring)],
            Match::Substring,
        )
        .unwrap();
        assert!(serde_json::to_value(&m).unwrap().get("match").is_none());
    }
}
