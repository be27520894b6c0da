//! The batched evaluator: an [`EvalSet`] (tokenized samples of one task), [`evaluate`]
//! (one model on one set, optionally reusing the base model's hidden states at the
//! input of a layer, see [`Prefix`]), and its serializable [`EvalResult`].
//!
//! # Protocol
//!
//! - **Choice** (epistemic reasoning, FEVER, TruthfulQA, any `kind = "choice"` task):
//!   every choice is scored by the log-probability of its tokens after the prompt,
//!   summed over the choice's tokens (LASER's rule). The prediction is the argmax of
//!   these sums; an exact tie goes to the tied choice whose text has the smallest
//!   BLAKE3 hash ([`choose`]), never to a position, so the order in which a task lists
//!   its choices cannot help. The prompt runs once per sample for all choices
//!   ([`choice`]'s tree layout). The gold log-probability is the gold choice's sum.
//!   With the same choices on every row they are classes ([`classification_metrics`]:
//!   balanced accuracy, majority-class rate); with per-row choices it is multiple
//!   choice ([`multiple_choice_metrics`]: accuracy against chance, the mean of
//!   1/choices).
//! - **Generation** (WikidataQA, HotPotQA): greedy decoding with a KV cache
//!   ([`generate`]) of at most the example's `max_new_tokens`, stopping
//!   at the end-of-sequence token when the set has one; the continuation alone (EOS
//!   excluded, special tokens skipped) is decoded, cut before the first of the task's
//!   `stop` strings, and scored with [`score_generation`] under the task's `match`. The gold log-probability is the summed log-probability of
//!   the tokens of `" " + target` after the prompt, teacher-forced (the gradient pass's
//!   loss), computed in the same forward as the prompt.
//! - **Log-loss** is [`mean_log_loss`] of the gold log-probabilities.
//!
//! # Batching
//!
//! Samples run in micro-batches of at most [`EvalOptions::micro_batch`] samples and
//! [`EvalOptions::max_batch_tokens`] padded token slots (so memory is bounded whatever
//! the number of samples), after sorting by length so that little padding is wasted.
//! Records come back in the set's order. Choice tasks pad on the right; generation
//! tasks pad prompts on the left and continuations on the right, so that every
//! prompt ends in the same column (see [`generate`]).
//!
//! # Layer-prefix reuse
//!
//! A candidate that changes matrices of layers `>= L` only computes the same hidden
//! states as the base model at the input of layer `L`. [`evaluate`] with
//! `Some(prefix)` and `from_layer = L` takes those states from a [`Prefix`] computed
//! once with the base model and runs only layers `L..`. The caller guarantees that the
//! model agrees with the prefix's base model on layers `< L` ([`first_changed_layer`]
//! gives `L` for a set of replaced matrices); the prefix checks that it was computed
//! on the same set (its fingerprint) and holds layer `L`.

use super::choice;
use super::generate;
use super::metrics::{
    choose, classification_metrics, cut_at_stop, generation_metrics, mean_log_loss,
    multiple_choice_metrics, score_generation, ClassificationMetrics, GenerationMetrics,
    GenerationScore, MetricsError, MultipleChoiceMetrics, SelectionScore,
    DEFAULT_COLLAPSE_THRESHOLD,
};
use super::prefix::{Prefix, Start};
use crate::data::task::{Generation, Match};
use crate::data::{Answer, ChoiceMode, Dataset, Example, Task, TaskKind};
use crate::model::tokenizer::{encode, encode_prompt};
use crate::model::{Decoder, MatrixId, ModelError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokenizers::Tokenizer;

/// What can go wrong while building a set or evaluating a model on it.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("the evaluation set has no samples")]
    Empty,
    #[error("row {row}: a {task} example needs a {expected} answer")]
    AnswerKind {
        row: usize,
        task: Task,
        expected: &'static str,
    },
    #[error("row {row}: {what} encodes to no tokens")]
    NoTokens { row: usize, what: String },
    #[error("row {row}: a choice answer without choices")]
    NoChoices { row: usize },
    #[error("row {row}: {found} choices, but the task's classes are {expected}")]
    ChoiceCount {
        row: usize,
        expected: usize,
        found: usize,
    },
    #[error("row {row}: gold index {gold} is not among its {choices} choices")]
    Gold {
        row: usize,
        gold: usize,
        choices: usize,
    },
    #[error("row {row}: max_new_tokens is 0")]
    NoNewTokens { row: usize },
    #[error("row {row}: needs {positions} positions, the model has {max}")]
    TooLong {
        row: usize,
        positions: usize,
        max: usize,
    },
    #[error("row {row} is not in the data ({rows} rows)")]
    RowOutOfRange { row: usize, rows: usize },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("prefix: {0}")]
    Prefix(String),
    #[error("layer {layer} is out of range: the model has {layers} layers")]
    Layer { layer: usize, layers: usize },
    #[error("invalid evaluation options: {0}")]
    Options(String),
}

/// How the evaluator batches (speed and memory only: the numbers do not depend on
/// these beyond float rounding, since padded slots are masked).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalOptions {
    /// At most this many samples per forward.
    pub micro_batch: usize,
    /// At most this many padded token slots (samples × padded length) per forward,
    /// except that a single sample always runs.
    pub max_batch_tokens: usize,
    /// [`ClassificationMetrics::collapsed`] threshold.
    pub collapse_threshold: f64,
    /// Which forward scores answer choices.
    #[serde(default)]
    pub forward: Forward,
}

/// Which implementation of the layers scores answer choices (generation always runs on
/// candle's ops, with its KV cache).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Forward {
    /// The hand-written kernels of the gradient pass (packed trees, no padding) when the
    /// model is f32 on the CPU; candle's ops otherwise.
    #[default]
    Auto,
    /// Always candle's ops (padded trees): the reference the kernels are tested against.
    Candle,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            micro_batch: 16,
            max_batch_tokens: 4096,
            collapse_threshold: DEFAULT_COLLAPSE_THRESHOLD,
            forward: Forward::Auto,
        }
    }
}

impl EvalOptions {
    fn check(&self) -> Result<(), EvalError> {
        if self.micro_batch == 0 || self.max_batch_tokens == 0 {
            return Err(EvalError::Options(
                "micro_batch and max_batch_tokens must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// The tokenized answer of one sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SampleAnswer {
    /// Each choice's tokens (each choice string encoded on its own, leading space
    /// included), the gold index, and the choices' texts (for position-free ties).
    Choice {
        choices: Vec<Vec<u32>>,
        gold: usize,
        #[serde(default)]
        texts: Vec<String>,
    },
    /// The target string, the tokens of `" " + target` (teacher-forced for the
    /// log-loss) and the generation length.
    Generate {
        target: String,
        target_tokens: Vec<u32>,
        max_new_tokens: usize,
    },
}

/// One tokenized sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalSample {
    /// The example's row in its data file.
    pub row: usize,
    /// The prompt text (for the prompt-copy diagnostic).
    pub prompt_text: String,
    pub prompt: Vec<u32>,
    pub answer: SampleAnswer,
}

impl EvalSample {
    /// Tokens of the longest sequence the sample puts in a row of a batch.
    pub(crate) fn choice_tree_len(&self) -> usize {
        match &self.answer {
            SampleAnswer::Choice { choices, .. } => {
                self.prompt.len() + choices.iter().map(Vec::len).sum::<usize>()
            }
            SampleAnswer::Generate { .. } => self.prompt.len(),
        }
    }

    /// Largest rotary position + 1 the sample needs.
    fn positions_needed(&self) -> usize {
        match &self.answer {
            SampleAnswer::Choice { choices, .. } => {
                self.prompt.len() + choices.iter().map(Vec::len).max().unwrap_or(0)
            }
            SampleAnswer::Generate {
                target_tokens,
                max_new_tokens,
                ..
            } => self.prompt.len() + target_tokens.len().max(*max_new_tokens),
        }
    }
}

/// The tokenized samples of one task, ready to evaluate any number of models on.
#[derive(Debug, Clone)]
pub struct EvalSet {
    task: Task,
    samples: Vec<EvalSample>,
    /// Number of classes (fixed choices); 0 for per-row choices and generation.
    n_classes: usize,
    per_row: bool,
    generation: Option<Generation>,
    eos: Option<u32>,
    tokenizer: Arc<Tokenizer>,
    fingerprint: String,
}

impl EvalSet {
    /// Tokenizes `examples` (in the given order) of the data set `data` (which says
    /// whether the choices are classes or per row). `eos` is the token that ends a
    /// generation early (the model's
    /// [`SpecialTokens::stop`](crate::model::tokenizer::SpecialTokens::stop)); `None`
    /// always generates `max_new_tokens` tokens.
    pub fn new(
        data: &Dataset,
        examples: &[Example],
        tokenizer: &Tokenizer,
        eos: Option<u32>,
    ) -> Result<EvalSet, EvalError> {
        if examples.is_empty() {
            return Err(EvalError::Empty);
        }
        let task = data.task.clone();
        let tok = |row: usize, what: &str, text: &str| -> Result<Vec<u32>, EvalError> {
            // A prompt gets the special tokens the model's tokenizer adds (Gemma's BOS).
            let ids = if what == "the prompt" {
                encode_prompt(tokenizer, text)?
            } else {
                encode(tokenizer, text)?
            };
            if ids.is_empty() {
                return Err(EvalError::NoTokens {
                    row,
                    what: what.to_owned(),
                });
            }
            Ok(ids)
        };
        let (per_row, n_classes) = match &data.choices {
            Some(ChoiceMode::Classes { classes }) => (false, classes.len()),
            Some(ChoiceMode::PerRow) | None => (data.choices.is_some(), 0),
        };
        let mut samples = Vec::with_capacity(examples.len());
        for ex in examples {
            let row = ex.row;
            let prompt = tok(row, "the prompt", &ex.prompt)?;
            let answer = match (task.kind(), &ex.answer) {
                (TaskKind::Classification, Answer::Choice { choices, gold }) => {
                    if choices.is_empty() {
                        return Err(EvalError::NoChoices { row });
                    }
                    if !per_row && choices.len() != n_classes {
                        return Err(EvalError::ChoiceCount {
                            row,
                            expected: n_classes,
                            found: choices.len(),
                        });
                    }
                    if *gold >= choices.len() {
                        return Err(EvalError::Gold {
                            row,
                            gold: *gold,
                            choices: choices.len(),
                        });
                    }
                    let tokens = choices
                        .iter()
                        .enumerate()
                        .map(|(i, c)| tok(row, &format!("choice {i} {c:?}"), c))
                        .collect::<Result<Vec<_>, _>>()?;
                    SampleAnswer::Choice {
                        choices: tokens,
                        gold: *gold,
                        texts: choices.clone(),
                    }
                }
                (
                    TaskKind::Generation,
                    Answer::Generate {
                        target,
                        max_new_tokens,
                        ..
                    },
                ) => {
                    if *max_new_tokens == 0 {
                        return Err(EvalError::NoNewTokens { row });
                    }
                    SampleAnswer::Generate {
                        target: target.clone(),
                        target_tokens: tok(row, "the target", &ex.answer.gold_continuation())?,
                        max_new_tokens: *max_new_tokens,
                    }
                }
                (kind, _) => {
                    return Err(EvalError::AnswerKind {
                        row,
                        task,
                        expected: match kind {
                            TaskKind::Classification => "choice",
                            TaskKind::Generation => "generation",
                        },
                    })
                }
            };
            samples.push(EvalSample {
                row,
                prompt_text: ex.prompt.clone(),
                prompt,
                answer,
            });
        }
        let fingerprint = fingerprint(&task, per_row, &samples, eos);
        Ok(EvalSet {
            generation: task.generation.clone(),
            task,
            samples,
            n_classes,
            per_row,
            eos,
            tokenizer: Arc::new(tokenizer.clone()),
            fingerprint,
        })
    }

    /// The examples at `rows` of a data set (`examples[i].row == i`), in the order of
    /// `rows`.
    pub fn from_rows(
        data: &Dataset,
        rows: &[usize],
        tokenizer: &Tokenizer,
        eos: Option<u32>,
    ) -> Result<EvalSet, EvalError> {
        let examples = &data.examples;
        let picked = rows
            .iter()
            .map(|&row| {
                examples
                    .get(row)
                    .filter(|e| e.row == row)
                    .or_else(|| examples.iter().find(|e| e.row == row))
                    .cloned()
                    .ok_or(EvalError::RowOutOfRange {
                        row,
                        rows: examples.len(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        EvalSet::new(data, &picked, tokenizer, eos)
    }

    /// The task (a cheap clone).
    pub fn task(&self) -> Task {
        self.task.clone()
    }

    /// Whether each row has its own choices (multiple choice).
    pub fn per_row_choices(&self) -> bool {
        self.per_row
    }

    pub fn samples(&self) -> &[EvalSample] {
        &self.samples
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Number of classes (the choices of every sample); 0 for per-row choices and for a
    /// generation task.
    pub fn n_classes(&self) -> usize {
        self.n_classes
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// BLAKE3 (hex) of the task's digest, the eos id and every sample's tokens and
    /// targets: two sets with the same fingerprint evaluate identically.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The micro-batches (sample indices) [`evaluate`] uses with these options:
    /// samples sorted by length (stable), then cut greedily.
    pub fn plan(&self, opts: &EvalOptions) -> Result<Vec<Vec<usize>>, EvalError> {
        opts.check()?;
        let generation = self.task.kind() == TaskKind::Generation;
        let mut order: Vec<usize> = (0..self.samples.len()).collect();
        // (prompt columns, continuation columns) of a sample in its batch.
        let cols = |i: usize| -> (usize, usize) {
            let s = &self.samples[i];
            match &s.answer {
                SampleAnswer::Choice { .. } => (s.choice_tree_len(), 0),
                SampleAnswer::Generate {
                    target_tokens,
                    max_new_tokens,
                    ..
                } => (s.prompt.len(), target_tokens.len().max(*max_new_tokens)),
            }
        };
        order.sort_by_key(|&i| cols(i));
        let mut plan: Vec<Vec<usize>> = Vec::new();
        let mut cur: Vec<usize> = Vec::new();
        let (mut a, mut b) = (0usize, 0usize);
        for i in order {
            let (ai, bi) = cols(i);
            let (na, nb) = (a.max(ai), b.max(bi));
            let width = if generation { na + nb } else { na };
            if !cur.is_empty()
                && (cur.len() >= opts.micro_batch
                    || (cur.len() + 1) * width > opts.max_batch_tokens)
            {
                plan.push(std::mem::take(&mut cur));
                (a, b) = (ai, bi);
            } else {
                (a, b) = (na, nb);
            }
            cur.push(i);
        }
        if !cur.is_empty() {
            plan.push(cur);
        }
        Ok(plan)
    }

    /// Errors when a sample needs more rotary positions than `model` has.
    pub(crate) fn check_fits(&self, model: &Decoder) -> Result<(), EvalError> {
        let max = model.config.max_position_embeddings;
        for s in &self.samples {
            let positions = s.positions_needed();
            if positions > max {
                return Err(EvalError::TooLong {
                    row: s.row,
                    positions,
                    max,
                });
            }
        }
        Ok(())
    }
}

fn fingerprint(task: &Task, per_row: bool, samples: &[EvalSample], eos: Option<u32>) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"c2i-eval-set-v2\0");
    h.update(task.digest().as_bytes());
    h.update(&[0, u8::from(per_row)]);
    h.update(&eos.map_or(u64::MAX, u64::from).to_le_bytes());
    let words = |h: &mut blake3::Hasher, xs: &[u32]| {
        h.update(&(xs.len() as u64).to_le_bytes());
        for x in xs {
            h.update(&x.to_le_bytes());
        }
    };
    for s in samples {
        h.update(&(s.row as u64).to_le_bytes());
        words(&mut h, &s.prompt);
        match &s.answer {
            SampleAnswer::Choice {
                choices,
                gold,
                texts,
            } => {
                h.update(&(*gold as u64).to_le_bytes());
                h.update(&(choices.len() as u64).to_le_bytes());
                for c in choices {
                    words(&mut h, c);
                }
                for t in texts {
                    h.update(&(t.len() as u64).to_le_bytes());
                    h.update(t.as_bytes());
                }
            }
            SampleAnswer::Generate {
                target,
                target_tokens,
                max_new_tokens,
            } => {
                h.update(&(target.len() as u64).to_le_bytes());
                h.update(target.as_bytes());
                words(&mut h, target_tokens);
                h.update(&(*max_new_tokens as u64).to_le_bytes());
            }
        }
    }
    h.finalize().to_hex().to_string()
}

/// The layer of the first replaced matrix: the `from_layer` for a candidate that
/// replaces `replaced` (0 when nothing is replaced).
pub fn first_changed_layer<T>(replaced: &BTreeMap<MatrixId, T>) -> usize {
    replaced.keys().map(|id| id.layer).min().unwrap_or(0)
}

/// What the model answered for one sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Prediction {
    /// The chosen index and every choice's summed log-probability.
    Choice { index: usize, log_probs: Vec<f64> },
    /// The decoded continuation, its tokens (EOS excluded), whether it stopped at EOS,
    /// and its scores.
    Generation {
        text: String,
        tokens: Vec<u32>,
        stopped_at_eos: bool,
        scores: GenerationScore,
    },
}

/// The gold answer of one sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Gold {
    Choice { index: usize },
    Target { text: String },
}

/// One sample's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRecord {
    pub row: usize,
    pub prediction: Prediction,
    pub gold: Gold,
    /// Summed log-probability of the gold answer's tokens after the prompt.
    pub gold_log_prob: f64,
    pub correct: bool,
}

/// The aggregate metrics of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TaskMetrics {
    /// Fixed choices: classes.
    Classification(ClassificationMetrics),
    /// Per-row choices.
    MultipleChoice(MultipleChoiceMetrics),
    Generation(GenerationMetrics),
}

impl TaskMetrics {
    pub fn accuracy(&self) -> f64 {
        match self {
            TaskMetrics::Classification(m) => m.accuracy,
            TaskMetrics::MultipleChoice(m) => m.accuracy,
            TaskMetrics::Generation(m) => m.accuracy,
        }
    }

    /// `None` for multiple choice and generation.
    pub fn balanced_accuracy(&self) -> Option<f64> {
        match self {
            TaskMetrics::Classification(m) => Some(m.balanced_accuracy),
            TaskMetrics::MultipleChoice(_) | TaskMetrics::Generation(_) => None,
        }
    }
}

/// The result of one model on one set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    /// The task's name.
    pub task: String,
    /// The set's fingerprint ([`EvalSet::fingerprint`]).
    pub set: String,
    pub samples: usize,
    pub metrics: TaskMetrics,
    /// [`mean_log_loss`] of the records' gold log-probabilities.
    pub log_loss: f64,
    /// What [`select_best`](super::metrics::select_best) compares.
    pub selection: SelectionScore,
    /// One per sample, in the set's order.
    pub records: Vec<SampleRecord>,
}

impl EvalResult {
    pub fn accuracy(&self) -> f64 {
        self.metrics.accuracy()
    }
}

/// Per-sample raw outcome of a forward, before scoring.
pub(crate) enum Raw {
    Choice(Vec<f64>),
    Generation(generate::GenOutput),
}

/// Index of the largest value; ties (and NaN) go to the lower index. For greedy
/// decoding over a vocabulary; answer choices use the position-free [`choose`].
pub fn argmax_first(xs: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] || (xs[best].is_nan() && !x.is_nan()) {
            best = i;
        }
    }
    best
}

/// Evaluates `model` on `set`.
///
/// With `prefix = Some(p)` the hidden states at the input of layer `from_layer` come
/// from `p` (computed with the base model on this set) and only layers
/// `from_layer..` run; the micro-batches are then `p`'s, whatever `opts` says. With
/// `None`, `from_layer` must be 0. `progress` gets (samples done, samples total) after
/// each micro-batch.
pub fn evaluate(
    model: &Decoder,
    set: &EvalSet,
    prefix: Option<&Prefix>,
    from_layer: usize,
    opts: &EvalOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EvalResult, EvalError> {
    opts.check()?;
    set.check_fits(model)?;
    let n_layers = model.layers.len();
    if from_layer >= n_layers.max(1) {
        return Err(EvalError::Layer {
            layer: from_layer,
            layers: n_layers,
        });
    }
    let plan = match prefix {
        Some(p) => {
            p.check(set, model, from_layer)?;
            p.plan().to_vec()
        }
        None if from_layer != 0 => {
            return Err(EvalError::Prefix(format!(
                "from_layer = {from_layer} needs a prefix"
            )))
        }
        None => set.plan(opts)?,
    };
    let total = set.len();
    let mut raw: Vec<Option<Raw>> = (0..total).map(|_| None).collect();
    let mut done = 0;
    for (bi, idx) in plan.iter().enumerate() {
        let start = match prefix {
            Some(p) if from_layer > 0 => Start::Prefix {
                hidden: p.hidden(bi, from_layer)?,
                kv: p.kv(bi),
                layer: from_layer,
            },
            _ => Start::Embed,
        };
        match set.task.kind() {
            TaskKind::Classification => {
                let out = choice::score_batch(model, set, idx, &start, opts.forward)?;
                for (&i, lps) in idx.iter().zip(out) {
                    raw[i] = Some(Raw::Choice(lps));
                }
            }
            TaskKind::Generation => {
                let out = generate::eval_batch(model, set, idx, &start)?;
                for (&i, g) in idx.iter().zip(out) {
                    raw[i] = Some(Raw::Generation(g));
                }
            }
        }
        done += idx.len();
        progress(done, total);
    }
    assemble(set, raw, opts)
}

/// Scores the raw outcomes and aggregates them.
fn assemble(
    set: &EvalSet,
    raw: Vec<Option<Raw>>,
    opts: &EvalOptions,
) -> Result<EvalResult, EvalError> {
    let mut records = Vec::with_capacity(set.len());
    for (s, r) in set.samples.iter().zip(raw) {
        let r = r.ok_or_else(|| {
            EvalError::Prefix(format!("row {}: the plan skipped this sample", s.row))
        })?;
        let rec = match (&s.answer, r) {
            (SampleAnswer::Choice { gold, texts, .. }, Raw::Choice(lps)) => {
                let index = choose(&lps, texts);
                SampleRecord {
                    row: s.row,
                    gold_log_prob: lps[*gold],
                    correct: index == *gold,
                    prediction: Prediction::Choice {
                        index,
                        log_probs: lps,
                    },
                    gold: Gold::Choice { index: *gold },
                }
            }
            (SampleAnswer::Generate { target, .. }, Raw::Generation(g)) => {
                let decoded = set
                    .tokenizer
                    .decode(&g.tokens, true)
                    .map_err(|e| EvalError::Tokenizer(format!("row {}: {e}", s.row)))?;
                let (stop, how) = match &set.generation {
                    Some(gen) => (&gen.stop[..], gen.match_),
                    None => (&[][..], Default::default()),
                };
                let text = cut_at_stop(&decoded, stop).to_owned();
                let scores = score_generation(&s.prompt_text, &text, target, how);
                SampleRecord {
                    row: s.row,
                    gold_log_prob: g.target_log_prob,
                    correct: scores.correct,
                    prediction: Prediction::Generation {
                        text,
                        tokens: g.tokens,
                        stopped_at_eos: g.stopped_at_eos,
                        scores,
                    },
                    gold: Gold::Target {
                        text: target.clone(),
                    },
                }
            }
            _ => {
                return Err(EvalError::AnswerKind {
                    row: s.row,
                    task: set.task.clone(),
                    expected: "matching",
                })
            }
        };
        records.push(rec);
    }
    summarize(
        &set.shape(),
        &set.fingerprint,
        records,
        opts.collapse_threshold,
    )
}

/// What aggregating a set's records needs to know of the set: the task's kind and
/// name, whether choices are per row, the classes, the generation match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shape {
    pub task: String,
    pub kind: TaskKind,
    pub per_row: bool,
    /// 0 for per-row choices and generation.
    pub n_classes: usize,
    #[serde(default, rename = "match")]
    pub match_: Match,
}

impl EvalSet {
    /// What [`summarize`] needs of this set.
    pub fn shape(&self) -> Shape {
        Shape {
            task: self.task.name().to_owned(),
            kind: self.task.kind(),
            per_row: self.per_row,
            n_classes: self.n_classes,
            match_: self
                .generation
                .as_ref()
                .map(|g| g.match_)
                .unwrap_or_default(),
        }
    }
}

/// A record's credit toward accuracy: 0 or 1, or its token F1 under `match = "token_f1"`.
pub fn credit(r: &SampleRecord) -> f64 {
    match &r.prediction {
        Prediction::Generation { scores, .. } => {
            scores
                .credit
                .unwrap_or(if scores.correct { 1.0 } else { 0.0 })
        }
        Prediction::Choice { .. } => {
            if r.correct {
                1.0
            } else {
                0.0
            }
        }
    }
}

/// Aggregates per-sample records (of one set, or of several sets of the same task
/// concatenated) into a result: what evaluating all their rows at once gives.
pub fn summarize(
    shape: &Shape,
    set: &str,
    records: Vec<SampleRecord>,
    collapse_threshold: f64,
) -> Result<EvalResult, EvalError> {
    let gold_lps: Vec<f64> = records.iter().map(|r| r.gold_log_prob).collect();
    let log_loss = mean_log_loss(&gold_lps)?;
    let metrics = match shape.kind {
        TaskKind::Classification if shape.per_row => {
            let mut hits = Vec::with_capacity(records.len());
            let mut n_choices = Vec::with_capacity(records.len());
            for r in &records {
                if let Prediction::Choice { log_probs, .. } = &r.prediction {
                    hits.push(r.correct);
                    n_choices.push(log_probs.len());
                }
            }
            TaskMetrics::MultipleChoice(multiple_choice_metrics(&hits, &n_choices)?)
        }
        TaskKind::Classification => {
            let mut gold = Vec::with_capacity(records.len());
            let mut pred = Vec::with_capacity(records.len());
            for r in &records {
                if let (Prediction::Choice { index, .. }, Gold::Choice { index: g }) =
                    (&r.prediction, &r.gold)
                {
                    pred.push(*index);
                    gold.push(*g);
                }
            }
            TaskMetrics::Classification(classification_metrics(
                &gold,
                &pred,
                shape.n_classes,
                collapse_threshold,
            )?)
        }
        TaskKind::Generation => {
            let scores: Vec<GenerationScore> = records
                .iter()
                .filter_map(|r| match &r.prediction {
                    Prediction::Generation { scores, .. } => Some(*scores),
                    Prediction::Choice { .. } => None,
                })
                .collect();
            TaskMetrics::Generation(generation_metrics(&scores, shape.match_)?)
        }
    };
    let selection = match &metrics {
        TaskMetrics::Classification(m) => SelectionScore::from_classification(m, log_loss),
        TaskMetrics::MultipleChoice(m) => SelectionScore::from_multiple_choice(m, log_loss),
        TaskMetrics::Generation(m) => SelectionScore::from_generation(m, log_loss),
    };
    Ok(EvalResult {
        task: shape.task.clone(),
        set: set.to_owned(),
        samples: records.len(),
        metrics,
        log_loss,
        selection,
        records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_ties_go_low() {
        assert_eq!(argmax_first(&[-1.0, -1.0]), 0);
        assert_eq!(argmax_first(&[-2.0, -1.0, -1.0]), 1);
        assert_eq!(argmax_first(&[f64::NAN, -3.0]), 1);
        assert_eq!(argmax_first(&[-3.0, f64::NAN]), 0);
    }

    #[test]
    fn first_changed_layer_is_min() {
        use crate::model::MatrixKind;
        let mut m = BTreeMap::new();
        assert_eq!(first_changed_layer::<()>(&m), 0);
        m.insert(MatrixId::new(7, MatrixKind::Down), ());
        m.insert(MatrixId::new(3, MatrixKind::Q), ());
        assert_eq!(first_changed_layer(&m), 3);
    }
}
