//! Runs a pipeline: resolves its inputs, builds each wave of stage actions, has them
//! looked up or computed (through an [`Executor`]), picks the best candidate, and
//! returns everything run.json, report.json and the lock file are made of.
//!
//! The DAG (DESIGN.md), in waves of independent actions:
//! matrix digests → gradients and factors(matrix, K) → sv-grads → scores (here) →
//! top-k → evaluate(base, candidates; base held-out) → best → evaluate(best, held-out)
//! → export.

use crate::action::{Action, Input};
use crate::ctx::{Ctx, Found, RemoteSummary, StageRecord};
use crate::exec::Executor;
use crate::lock::{Lock, LockBook};
use crate::spec::{ExecutorKind, Pipeline, SearchMode, Select};
use crate::stages::evaluate::{self, Candidate, EvalOf, Rows};
use crate::stages::matrix_digests::{self, MatrixDigests, MatrixInfo};
use crate::stages::sv_grads::{self, BlockSpectrum};
use crate::stages::{factors, gradients};
use crate::EngineError;
use c2i_cache::ActionEntry;
use c2i_stages::assets;
use c2i_stages::data::split::{sample_with, selection_samples_with, Split};
use c2i_stages::data::Answer;
use c2i_stages::data::Task;
use c2i_stages::eval::evaluator::{credit, summarize, SampleRecord, Shape};
use c2i_stages::eval::metrics::{select_best, SelectionScore};
use c2i_stages::eval::race::{self, Racing, RowOutcome};
use c2i_stages::model::MatrixId;
use c2i_stages::score::{rank_kept, ScoreRule};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Where a run may stop early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Until {
    Gradients,
    Factors,
    Scores,
    Evaluate,
}

impl std::str::FromStr for Until {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "gradients" => Ok(Until::Gradients),
            "factors" => Ok(Until::Factors),
            "scores" | "sv-grads" => Ok(Until::Scores),
            "evaluate" => Ok(Until::Evaluate),
            other => Err(format!(
                "unknown stage `{other}`: expected gradients, factors, scores or evaluate"
            )),
        }
    }
}

pub use c2i_stages::export::schema::{
    Baseline, Best, DataInfo, Evaluated, Figures, RaceSummary, Report, Scored, TaskInfo,
};

/// Everything a run found: the report (report.json) and what only run.json and the
/// lock file record.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub report: Report,
    /// Where the stages computed (run.json's versions).
    pub device: crate::action::DeviceSpec,
    /// What the run did with the remote cache (run.json only: it differs between
    /// runs that found the same results).
    pub remote: Option<RemoteSummary>,
    /// The executor and what it submitted (run.json only).
    pub executor: String,
    pub jobs: serde_json::Value,
    /// The lock of a complete run (`None` with `--until`).
    pub lock: Option<Lock>,
}

/// The task of a run, as report.json records it.
fn task_info(task: &Task) -> TaskInfo {
    TaskInfo {
        name: task.name().to_string(),
        digest: task.digest().to_string(),
        file: task.origin.clone(),
        definition: task.canonical(),
    }
}

/// The report of `p` before anything is found.
fn empty_report(p: &Pipeline) -> Report {
    Report {
        task: p.task.name().to_string(),
        model: p.spec.model.path.clone(),
        mode: p.spec.search.mode,
        selection_metric: p.spec.search.selection_metric.to_string(),
        scores: Vec::new(),
        baseline: None,
        candidates: Vec::new(),
        race: None,
        best: None,
        stages: Vec::new(),
        seconds: 0.0,
        // A spec serializes (plain data); `null` would only hide a bug, never a user's.
        resolved: serde_json::to_value(&p.spec).unwrap_or_default(),
        export: None,
        rows: BTreeMap::new(),
        data: PathBuf::new(),
        data_info: None,
        task_info: Some(task_info(&p.task)),
    }
}

impl RunResult {
    /// What a run that failed part-way leaves for run.json: the stage instances it
    /// resolved, the remote summary, the executor's jobs.
    pub fn partial(
        p: &Pipeline,
        ctx: &Ctx,
        exec: &dyn Executor,
        log_start: usize,
        seconds: f64,
    ) -> RunResult {
        let mut report = empty_report(p);
        report.stages = ctx.log_since(log_start);
        report.seconds = seconds;
        RunResult {
            report,
            device: p.device.clone(),
            remote: ctx.remote_summary(),
            executor: exec.kind().name().to_string(),
            jobs: exec.jobs(),
            lock: None,
        }
    }

    /// Count of stage records with each outcome.
    pub fn outcomes(&self) -> BTreeMap<String, BTreeMap<String, usize>> {
        outcome_counts(&self.report.stages)
    }
}

/// Count of records with each outcome, per stage.
pub fn outcome_counts(stages: &[StageRecord]) -> BTreeMap<String, BTreeMap<String, usize>> {
    let mut m: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for r in stages {
        *m.entry(r.stage.clone())
            .or_default()
            .entry(r.outcome.name().to_string())
            .or_default() += 1;
    }
    m
}

/// The model file: a path, or the name of a model c2i fetches (`smollm2`,
/// `qwen2.5-0.5b`, `gemma3-270m`, `qwen2.5-1.5b`).
pub fn resolve_model(path: &str) -> Result<PathBuf, EngineError> {
    if let Some(p) = assets::model_file(path)? {
        return Ok(p);
    }
    let p = PathBuf::from(path);
    if !p.exists() {
        let names: Vec<&str> = assets::MODELS.iter().map(|s| s.name).collect();
        return Err(EngineError::Invalid(format!(
            "model.path {path}: no such file or directory (expected a .gguf file, a Hugging Face directory, or one of {})",
            names.join(", ")
        )));
    }
    Ok(p)
}

/// The data file: `data.path`, else the task file's `path`, else the task's default
/// rows ([`c2i_stages::data::default_rows`]: a built-in task's shipped file, or a
/// BIG-bench task's `task.json` under `$C2I_BIGBENCH_DIR`).
pub fn resolve_data(p: &Pipeline) -> Result<PathBuf, EngineError> {
    resolve_task_data(&p.task, p.spec.data.path.as_deref(), &p.file, "data.path")
}

/// [`resolve_data`] for a task and an optional explicit path; `origin` and `field`
/// name where the explicit path was given.
pub fn resolve_task_data(
    task: &Task,
    explicit: Option<&Path>,
    origin: &Path,
    field: &str,
) -> Result<PathBuf, EngineError> {
    let (path, origin, field) = match (explicit, &task.path) {
        (Some(p), _) => (p.to_path_buf(), origin.to_path_buf(), field),
        (None, Some(p)) => (p.clone(), task.origin.clone(), "path"),
        (None, None) => match c2i_stages::data::default_rows(task)? {
            Some(p) => return Ok(p),
            None => {
                return Err(EngineError::Invalid(format!(
                    "{}: field `{field}`: missing: task `{}` names no rows (give `{field}`, or \
                     `path` in the task file)",
                    origin.display(),
                    task.name()
                )))
            }
        },
    };
    if !path.exists() {
        return Err(EngineError::Invalid(format!(
            "{}: {field} {}: no such file",
            origin.display(),
            path.display()
        )));
    }
    Ok(path)
}

/// A pipeline's inputs, resolved: the model and data files by digest, the rows.
pub struct Inputs {
    pub model: Input,
    pub model_path: PathBuf,
    pub data: Input,
    pub data_path: PathBuf,
    pub task: Task,
    pub calibration: Vec<usize>,
    pub evaluation: Vec<usize>,
    pub heldout: Vec<usize>,
}

/// Resolves and hashes the model and data files and draws the rows.
pub fn inputs(ctx: &Ctx, p: &Pipeline) -> Result<Inputs, EngineError> {
    let model_path = resolve_model(&p.spec.model.path)?;
    let data_path = resolve_data(p)?;
    let model_digest = ctx.digest_path(&model_path)?;
    let data_digest = ctx.digest_path(&data_path)?;
    let task = p.task.clone();
    let n_rows = ctx.examples(&task, &data_path, &data_digest)?.len();
    let share = task.selection_share;
    let too_few = |e: c2i_stages::data::DataError, field: &str| {
        EngineError::Invalid(format!(
            "{}: field `{field}`: {} {e}",
            p.file.display(),
            data_path.display()
        ))
    };
    let sel = selection_samples_with(
        n_rows,
        share,
        p.spec.data.evaluation,
        p.spec.data.calibration,
    )
    .map_err(|e| too_few(e, "data.evaluation / data.calibration"))?;
    let heldout = sample_with(
        Split::HeldOut,
        n_rows,
        share,
        p.spec.data.heldout.size,
        p.spec.data.heldout.seed,
    )
    .map_err(|e| too_few(e, "data.heldout"))?;
    let fetch = assets::MODELS
        .iter()
        .any(|m| m.name == p.spec.model.path)
        .then(|| p.spec.model.path.clone());
    Ok(Inputs {
        model: Input::File {
            digest: model_digest,
            path: model_path.clone(),
            fetch,
        },
        model_path,
        data: Input::File {
            digest: data_digest,
            path: data_path.clone(),
            fetch: None,
        },
        data_path,
        task,
        calibration: sel.calibration,
        evaluation: sel.evaluation,
        heldout,
    })
}

/// What an evaluation of `p` on all of `rows` is of.
pub fn eval_of<'a>(p: &'a Pipeline, inp: &'a Inputs, rows: Rows) -> EvalOf<'a> {
    EvalOf {
        model: &inp.model,
        data: &inp.data,
        task: &inp.task,
        rows,
        row_list: match rows {
            Rows::Selection => &inp.evaluation,
            Rows::Heldout => &inp.heldout,
        },
        eval_batch: p.spec.run.eval_batch,
        device: &p.device,
        round: None,
    }
}

/// What the evaluation of round `ri` (0-based) of the selection rows is of.
pub fn round_of<'a>(
    p: &'a Pipeline,
    inp: &'a Inputs,
    rounds: &[std::ops::Range<usize>],
    ri: usize,
) -> EvalOf<'a> {
    EvalOf {
        row_list: &inp.evaluation[rounds[ri].clone()],
        round: Some((ri + 1, rounds.len())),
        ..eval_of(p, inp, Rows::Selection)
    }
}

/// The matrices searched.
pub fn search_matrices(p: &Pipeline, n_layers: usize) -> Vec<MatrixId> {
    let mut v = Vec::new();
    for l in p.layers(n_layers) {
        for k in &p.kinds {
            v.push(MatrixId::new(l, *k));
        }
    }
    v
}

/// Score of one (K, rho) from a matrix's spectra under a rule.
pub fn score_of(spectra: &[BlockSpectrum], keep: f64, rule: ScoreRule) -> Result<f64, EngineError> {
    let mut total = 0.0;
    for b in spectra {
        let kept = rank_kept(b.rows, b.cols, keep)?;
        total += rule.block_value(&b.g[kept.min(b.g.len())..], &b.s[kept.min(b.s.len())..]);
    }
    Ok(total)
}

/// The score rule of a pipeline.
pub fn rule(p: &Pipeline) -> ScoreRule {
    p.spec.search.score
}

/// The candidates chosen from scored entries: top-k entries, or every entry of the
/// top-k matrices. Ties go to (matrix, K, rho) order: deterministic.
pub fn choose(
    p: &Pipeline,
    rule: ScoreRule,
    mut entries: Vec<(Candidate, f64)>,
) -> Vec<(Candidate, f64)> {
    entries.sort_by(|a, b| {
        rule.ranking_value(b.1)
            .total_cmp(&rule.ranking_value(a.1))
            .then(a.0.cmp(&b.0))
    });
    match p.spec.search.select {
        Select::Entries => entries.into_iter().take(p.spec.search.top_k).collect(),
        Select::Matrices => {
            let mut chosen: Vec<MatrixId> = Vec::new();
            for (c, _) in &entries {
                if chosen.len() < p.spec.search.top_k && !chosen.contains(&c.matrix) {
                    chosen.push(c.matrix);
                }
            }
            let mut v = Vec::new();
            for m in &chosen {
                let mut mine: Vec<&(Candidate, f64)> =
                    entries.iter().filter(|(c, _)| c.matrix == *m).collect();
                mine.sort_by_key(|e| e.0);
                v.extend(mine.into_iter().copied());
            }
            v
        }
    }
}

/// An evaluation's figures, with the collapse flag computed now from the stored
/// prediction histogram and the pipeline's threshold (so changing the threshold
/// changes the report without recomputing anything).
pub fn figures(entry: &ActionEntry, collapse_threshold: f64) -> Result<Figures, EngineError> {
    let s = evaluate::summary(entry)
        .map_err(|e| EngineError::Corrupt(format!("evaluation entry {}: {e}", entry.key)))?;
    Ok(Figures::new(
        s.samples,
        s.metrics,
        s.log_loss,
        s.selection,
        collapse_threshold,
    ))
}

/// One model's evaluations over a race's rounds: each round's per-row records, read
/// once from its entry and kept in order; their figures are what evaluating all those
/// rows at once gives.
#[derive(Default)]
pub struct RoundRecords {
    shape: Option<Shape>,
    records: Vec<SampleRecord>,
}

impl RoundRecords {
    /// Adds the records of one round's evaluation entry.
    pub fn add(&mut self, ctx: &Ctx, e: &ActionEntry) -> Result<(), EngineError> {
        let corrupt =
            |what: String| EngineError::Corrupt(format!("evaluation entry {}: {what}", e.key));
        let s = evaluate::summary(e).map_err(corrupt)?;
        self.shape.get_or_insert(s.shape);
        let blob = ctx.output(e, "records")?;
        let r: Vec<SampleRecord> =
            serde_json::from_slice(blob.bytes()).map_err(|m| corrupt(m.to_string()))?;
        self.records.extend(r);
        Ok(())
    }

    /// The records so far, in evaluation order.
    pub fn records(&self) -> &[SampleRecord] {
        &self.records
    }

    /// The figures of every row so far.
    pub fn figures(&self, collapse_threshold: f64) -> Result<Figures, EngineError> {
        let shape = self
            .shape
            .as_ref()
            .ok_or_else(|| EngineError::Invalid("no rounds to add up".into()))?;
        let r = summarize(shape, "rounds", self.records.clone(), collapse_threshold)?;
        Ok(Figures::new(
            r.samples,
            r.metrics,
            r.log_loss,
            r.selection,
            collapse_threshold,
        ))
    }
}

/// Resolves waves of actions: looks each up, has the executor compute the rest,
/// records how each was satisfied, and keeps the lock book.
pub struct Waves<'a> {
    pub ctx: &'a Ctx,
    pub exec: &'a mut dyn Executor,
    pub book: &'a mut LockBook,
}

impl Waves<'_> {
    /// The entry of every action of `actions` (independent of each other), in order.
    pub fn ensure(&mut self, actions: &[Action]) -> Result<Vec<Arc<ActionEntry>>, EngineError> {
        self.book.expect(actions)?;
        let ctx = self.ctx;
        ctx.progress.wave(actions.len());
        let mut out: Vec<Option<Arc<ActionEntry>>> = vec![None; actions.len()];
        let mut todo = Vec::new();
        let mut at = Vec::new();
        for (i, a) in actions.iter().enumerate() {
            let started = Instant::now();
            ctx.plan(a)?;
            match ctx.find(a)? {
                Found::Ready(e, outcome) => {
                    ctx.record(a, outcome, None, started, None);
                    ctx.progress.instance(
                        &a.stage,
                        &a.instance,
                        outcome.name(),
                        started.elapsed().as_secs_f64(),
                    );
                    out[i] = Some(e);
                }
                Found::Missing(miss) => {
                    todo.push((a.clone(), miss));
                    at.push(i);
                }
            }
        }
        if !todo.is_empty() {
            let started = Instant::now();
            let ran = self.exec.run(ctx, &todo)?;
            // The local executor reports each instance as it finishes (`Ctx::compute`);
            // the others' instances are reported here, when the wave is back.
            let reported = self.exec.kind() == ExecutorKind::Local;
            for (((a, miss), r), i) in todo.iter().zip(ran).zip(at) {
                if !reported {
                    ctx.progress.instance(
                        &a.stage,
                        &a.instance,
                        miss.outcome.name(),
                        r.on.seconds
                            .unwrap_or_else(|| started.elapsed().as_secs_f64()),
                    );
                }
                ctx.record(a, miss.outcome, miss.note.clone(), started, Some(r.on));
                out[i] = Some(Arc::new(r.entry));
            }
        }
        let mut entries = Vec::with_capacity(actions.len());
        for (a, e) in actions.iter().zip(out) {
            let e = e.ok_or_else(|| {
                EngineError::Executor(format!("{} {} was not computed", a.stage, a.instance))
            })?;
            self.book.record(a, &e)?;
            ctx.remember(e.clone());
            entries.push(e);
        }
        Ok(entries)
    }

    /// One action's entry.
    pub fn one(&mut self, action: Action) -> Result<Arc<ActionEntry>, EngineError> {
        let mut v = self.ensure(std::slice::from_ref(&action))?;
        v.pop()
            .ok_or_else(|| EngineError::Executor(format!("{} was not computed", action.stage)))
    }
}

fn info<'a>(
    digests: &'a MatrixDigests,
    m: MatrixId,
    model: &Path,
) -> Result<&'a MatrixInfo, EngineError> {
    digests.get(&m.hf_name()).ok_or_else(|| {
        EngineError::Invalid(format!(
            "{}: the model has no matrix {} (search.layers or search.matrices name one it lacks)",
            model.display(),
            m.hf_name()
        ))
    })
}

/// Runs `p`: every stage instance is looked up in `ctx`'s caches or computed by `exec`;
/// `book` collects (or, with `--frozen`, checks) the lock.
pub fn run(
    ctx: &Ctx,
    exec: &mut dyn Executor,
    book: &mut LockBook,
    p: &Pipeline,
    until: Option<Until>,
) -> Result<RunResult, EngineError> {
    let started = Instant::now();
    let log_start = ctx.log_len();
    let inp = inputs(ctx, p)?;
    // The layer count from the file header (a warm run never loads the model).
    let n_layers = c2i_stages::model::weights::layer_count(&inp.model_path)?;
    let matrices = search_matrices(p, n_layers);
    let rule = rule(p);
    let threshold = p.spec.search.collapse_threshold;
    let ds = ctx.examples(&inp.task, &inp.data_path, &inp.data.digest())?;
    let task = &p.task;
    let data_info = DataInfo {
        digest: inp.data.digest().to_hex(),
        format: ds.format,
        rows: ds.len(),
        skipped: ds.skipped.len(),
        selection_rows: Split::Selection
            .rows_with(ds.len(), task.selection_share)
            .len(),
        selection_share: task.selection_share,
    };
    let mut result = RunResult {
        report: Report {
            rows: BTreeMap::from([
                ("calibration".to_string(), inp.calibration.clone()),
                ("evaluation".to_string(), inp.evaluation.clone()),
                ("heldout".to_string(), inp.heldout.clone()),
            ]),
            data: inp.data_path.clone(),
            data_info: Some(data_info),
            ..empty_report(p)
        },
        device: p.device.clone(),
        remote: None,
        executor: exec.kind().name().to_string(),
        jobs: serde_json::Value::Null,
        lock: None,
    };
    let finish = |mut result: RunResult, exec: &dyn Executor| {
        result.report.stages = ctx.log_since(log_start);
        result.remote = ctx.remote_summary();
        result.report.seconds = started.elapsed().as_secs_f64();
        result.jobs = exec.jobs();
        result
    };
    let mut w = Waves {
        ctx,
        exec: &mut *exec,
        book: &mut *book,
    };

    // Wave 1: the matrices' content digests (factors are keyed by them).
    let md = w.one(matrix_digests::action(&inp.model)?)?;
    let digests = matrix_digests::read(ctx, &md)?;

    // Wave 2: the gradient pass and every factorization, all independent.
    let gradient_mode = p.spec.search.mode == SearchMode::Gradient;
    let mut wave = Vec::new();
    if gradient_mode {
        wave.push(gradients::action(
            &inp.model,
            &inp.data,
            &inp.task,
            &inp.calibration,
            p.spec.run.micro_batch,
            &p.device,
        )?);
    }
    let n_grad = wave.len();
    let mut pairs = Vec::new();
    if until != Some(Until::Gradients) {
        for &m in &matrices {
            for &k in &p.spec.search.blocks {
                wave.push(factors::action(
                    &inp.model,
                    m,
                    info(&digests, m, &inp.model_path)?,
                    k,
                    &p.device,
                )?);
                pairs.push((m, k));
            }
        }
    }
    let got = w.ensure(&wave)?;
    if until == Some(Until::Gradients) {
        return Ok(finish(result, exec));
    }
    let grads = got.first().filter(|_| n_grad == 1).cloned();
    let facts: BTreeMap<(MatrixId, usize), Arc<ActionEntry>> = pairs
        .iter()
        .copied()
        .zip(got[n_grad..].iter().cloned())
        .collect();
    if until == Some(Until::Factors) {
        return Ok(finish(result, exec));
    }

    // Candidates to evaluate, with their scores.
    let candidates: Vec<(Candidate, Option<f64>)> = match (p.spec.search.mode, &grads) {
        (SearchMode::Gradient, Some(grads)) => {
            // Wave 3: singular-value gradients.
            let mut wave = Vec::new();
            for &(m, k) in &pairs {
                wave.push(sv_grads::action(m, k, &facts[&(m, k)], grads)?);
            }
            let svg = w.ensure(&wave)?;
            let mut entries = Vec::new();
            for (&(m, k), e) in pairs.iter().zip(&svg) {
                let sp = sv_grads::spectra(ctx, e)?;
                for &keep in &p.keep {
                    let score = score_of(&sp, keep, rule)?;
                    if !score.is_finite() {
                        return Err(EngineError::Invalid(format!(
                            "{} K={k} keep={keep}: score is not finite",
                            m.hf_name()
                        )));
                    }
                    entries.push((Candidate::new(m, k, keep), score));
                    result.report.scores.push(Scored {
                        matrix: m.hf_name(),
                        layer: m.layer,
                        kind: m.kind.short().to_string(),
                        blocks: k,
                        keep,
                        score,
                    });
                }
            }
            if until == Some(Until::Scores) {
                return Ok(finish(result, exec));
            }
            choose(p, rule, entries)
                .into_iter()
                .map(|(c, s)| (c, Some(s)))
                .collect()
        }
        _ => {
            let mut v = Vec::new();
            for &(m, k) in &pairs {
                for &keep in &p.keep {
                    v.push((Candidate::new(m, k, keep), None));
                }
            }
            v
        }
    };

    // Wave 4: the base model and the candidates on the selection rows, in racing
    // rounds (several candidates per layer share the base model's hidden states
    // there), and the base model on the held-out rows.
    let of = |rows: Rows| eval_of(p, &inp, rows);
    let racing = p.spec.search.racing;
    let metric = p.spec.search.selection_metric;
    let sel_rows = &inp.evaluation;
    let rounds = race::rounds(sel_rows.len());
    // The gold class of every selection row (fixed choices), for balanced-accuracy bounds.
    let gold: Vec<Option<usize>> = sel_rows
        .iter()
        .map(
            |&r| match &ds.examples.get(r).ok_or(EngineError::Row(r))?.answer {
                Answer::Choice { gold, .. } if !ds.per_row_choices() => Ok(Some(*gold)),
                _ => Ok(None),
            },
        )
        .collect::<Result<_, EngineError>>()?;
    let n = candidates.len();
    let mut alive = vec![true; n];
    let mut stopped: Vec<Option<usize>> = vec![None; n];
    let mut cand_rounds: Vec<RoundRecords> = (0..n).map(|_| RoundRecords::default()).collect();
    let mut base_rounds = RoundRecords::default();
    let mut base_held = None;
    let mut alive_after_round = Vec::new();
    for ri in 0..rounds.len() {
        let idx: Vec<usize> = (0..n).filter(|&i| alive[i]).collect();
        let mut layers: Vec<usize> = idx.iter().map(|&i| candidates[i].0.matrix.layer).collect();
        layers.sort();
        layers.dedup();
        w.exec.hint_prefix_layers(ctx, &layers);
        let round = round_of(p, &inp, &rounds, ri);
        let mut wave = vec![evaluate::action(&round, None)?];
        for &i in &idx {
            let c = candidates[i].0;
            let f = &facts[&(c.matrix, c.blocks)];
            wave.push(evaluate::action(&round, Some((c, f)))?);
        }
        let held_too = ri == 0 && until != Some(Until::Evaluate);
        if held_too {
            wave.push(evaluate::action(&of(Rows::Heldout), None)?);
        }
        let got = w.ensure(&wave)?;
        base_rounds.add(ctx, &got[0])?;
        for (k, &i) in idx.iter().enumerate() {
            cand_rounds[i].add(ctx, &got[1 + k])?;
        }
        if held_too {
            base_held = got.last().cloned();
        }
        if ri + 1 < rounds.len() && idx.len() > 1 {
            let keep = match racing {
                Racing::Off => vec![true; idx.len()],
                Racing::Exact => {
                    let mut b = Vec::with_capacity(idx.len());
                    for &i in &idx {
                        let seen: Vec<RowOutcome> = cand_rounds[i]
                            .records()
                            .iter()
                            .zip(&gold)
                            .map(|(r, g)| RowOutcome {
                                credit: credit(r),
                                class: *g,
                            })
                            .collect();
                        b.push(race::bounds(metric, &gold, &seen)?);
                    }
                    race::exact_survivors(&b)
                }
                Racing::Halving => {
                    let mut partial = Vec::with_capacity(idx.len());
                    for &i in &idx {
                        let f = cand_rounds[i].figures(threshold)?;
                        partial.push((candidates[i].0, f.selection));
                    }
                    race::halving_survivors(metric, &partial)?
                }
            };
            for (k, &i) in idx.iter().enumerate() {
                if !keep[k] {
                    alive[i] = false;
                    stopped[i] = Some(ri + 1);
                }
            }
        }
        alive_after_round.push(alive.iter().filter(|a| **a).count());
    }
    for (i, (c, score)) in candidates.iter().enumerate() {
        let selection = cand_rounds[i].figures(threshold)?;
        result.report.candidates.push(Evaluated {
            matrix: c.matrix.hf_name(),
            layer: c.matrix.layer,
            blocks: c.blocks,
            keep: c.keep(),
            score: *score,
            rows_evaluated: selection.samples,
            selection,
            stopped_after_round: stopped[i],
        });
    }
    let candidate_rows: usize = result
        .report
        .candidates
        .iter()
        .map(|c| c.rows_evaluated)
        .sum();
    let candidate_rows_full = n * sel_rows.len();
    result.report.race = Some(RaceSummary {
        racing,
        round_ends: rounds.iter().map(|r| r.end).collect(),
        alive_after_round,
        candidate_rows,
        candidate_rows_full,
        saved_share: if candidate_rows_full == 0 {
            0.0
        } else {
            1.0 - candidate_rows as f64 / candidate_rows_full as f64
        },
        guarantee: match racing {
            Racing::Exact => "the winner and its figures are those of a full evaluation",
            Racing::Halving => {
                "statistical: successive halving may stop the candidate a full evaluation \
                 would pick"
            }
            Racing::Off => "every candidate on every row",
        }
        .to_string(),
    });
    if until == Some(Until::Evaluate) {
        return Ok(finish(result, exec));
    }
    let base_held = base_held
        .ok_or_else(|| EngineError::Invalid("the held-out evaluation did not run".into()))?;
    result.report.baseline = Some(Baseline {
        selection: base_rounds.figures(threshold)?,
        heldout: figures(&base_held, threshold)?,
    });

    // Wave 5: the winner (among the candidates that ran on every row) on the held-out
    // rows, then its export.
    let finished: Vec<usize> = (0..n).filter(|&i| stopped[i].is_none()).collect();
    let pool: Vec<(Candidate, SelectionScore)> = finished
        .iter()
        .map(|&i| {
            (
                candidates[i].0,
                result.report.candidates[i].selection.selection,
            )
        })
        .collect();
    if let Some(j) = select_best(metric, &pool)? {
        let i = finished[j];
        let c = candidates[i].0;
        let f = facts[&(c.matrix, c.blocks)].clone();
        w.exec.hint_prefix_layers(ctx, &[]);
        let held = w.one(evaluate::action(&of(Rows::Heldout), Some((c, &f)))?)?;
        result.report.best = Some(Best {
            matrix: c.matrix.hf_name(),
            blocks: c.blocks,
            keep: c.keep(),
            selection: result.report.candidates[i].selection.clone(),
            heldout: figures(&held, threshold)?,
        });
        let o = &p.spec.output;
        if o.dense || o.factored {
            result.report.export = Some(crate::export::export(
                ctx,
                &inp,
                c,
                &f,
                &o.dir,
                o.dense,
                o.factored,
                o.dtype,
                book_frozen(w.book),
            )?);
        }
    }
    let export_digests = result
        .report
        .export
        .as_ref()
        .map(|e| e.digests.clone())
        .unwrap_or_default();
    result.lock = Some(w.book.finish(export_digests)?);
    Ok(finish(result, exec))
}

fn book_frozen(book: &LockBook) -> bool {
    book.is_frozen()
}

/// Writes `run.json` (stage keys, outcomes, where each computed instance ran,
/// seconds, resolved parameters, versions, what was pulled from, pushed to or
/// rejected from the remote cache, and the error of a failed run).
pub fn write_run_json(
    dir: &Path,
    r: &RunResult,
    error: Option<&str>,
) -> Result<PathBuf, EngineError> {
    std::fs::create_dir_all(dir).map_err(|source| EngineError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join("run.json");
    let mut json = serde_json::json!({
        "versions": crate::action::environment(&r.device),
        "parameters": r.report.resolved,
        "executor": r.executor,
        "stages": r.report.stages,
        "outcomes": r.outcomes(),
        "seconds": r.report.seconds,
        "remote": r.remote,
    });
    if !r.jobs.is_null() {
        json["jobs"] = r.jobs.clone();
    }
    if let Some(e) = error {
        json["error"] = e.into();
    }
    write_atomic(&path, &serde_json::to_vec_pretty(&json)?)?;
    Ok(path)
}

/// Writes `bytes` to `path` through a temporary file in the same directory, fsynced
/// and renamed into place: `path` holds the old bytes or the new ones, never part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), EngineError> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| EngineError::Io { path: p, source }
    };
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io(path))
}
