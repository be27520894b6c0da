//! Runs a pipeline: resolves its inputs, drives the stages through the salsa
//! database, picks the best candidate, and writes `run.json` and `report.json`.
//!
//! The DAG (DESIGN.md): weights and data → gradients → factors(matrix, K) →
//! sv-grads → scores(matrix, K, rho) → top-k → evaluate(candidate) → best → held-out.

use crate::ctx::{RemoteSummary, StageRecord};
use crate::db::{self, Candidate, Database, EngineDb, EvalReq, MatrixReq, Out, Rows, Setup};
use crate::spec::{Pipeline, SearchMode, Select};
use crate::stages::{spectra, BlockSpectrum};
use crate::EngineError;
use c2i_cache::Digest;
use c2i_stages::assets;
use c2i_stages::data::split::{sample_with, selection_samples_with, Split};
use c2i_stages::data::{Format, Task};
use c2i_stages::eval::metrics::{select_best, SelectionScore};
use c2i_stages::model::MatrixId;
use c2i_stages::score::{rank_kept, ScoreRule};
use salsa::Setter;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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

/// One scored (matrix, K, rho).
#[derive(Debug, Clone, Serialize)]
pub struct Scored {
    pub matrix: String,
    pub layer: usize,
    pub kind: String,
    pub blocks: usize,
    pub keep: f64,
    pub score: f64,
}

/// An evaluation's figures as reports show them.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub samples: usize,
    pub accuracy: f64,
    pub log_loss: f64,
    pub metrics: serde_json::Value,
    pub selection: SelectionScore,
}

/// One evaluated candidate.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluated {
    pub matrix: String,
    pub layer: usize,
    pub blocks: usize,
    pub keep: f64,
    pub score: Option<f64>,
    pub selection: Figures,
}

/// The best candidate with its held-out figures.
#[derive(Debug, Clone, Serialize)]
pub struct Best {
    pub matrix: String,
    pub blocks: usize,
    pub keep: f64,
    pub selection: Figures,
    pub heldout: Figures,
}

/// Everything a run found (report.json is made from this).
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub task: String,
    pub model: String,
    pub mode: SearchMode,
    pub selection_metric: String,
    pub scores: Vec<Scored>,
    pub baseline: Option<BTreeMap<String, Figures>>,
    pub candidates: Vec<Evaluated>,
    pub best: Option<Best>,
    pub stages: Vec<StageRecord>,
    pub seconds: f64,
    pub resolved: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub export: Option<crate::export::ExportInfo>,
    /// The data rows (0-based, in the data file's order; LASER's order for BigBench)
    /// each sample used: `calibration` by the gradient pass, `evaluation` by the
    /// baseline's and every candidate's selection evaluation, `heldout` by the
    /// baseline's and the winner's held-out evaluation.
    pub rows: BTreeMap<String, Vec<usize>>,
    /// The data file read.
    pub data: PathBuf,
    /// Where the stages computed (run.json's versions).
    #[serde(skip)]
    pub exec: crate::keys::Exec,
    /// What reproduces the run's data: the file's digest, format and row counts.
    pub data_info: DataInfo,
    /// The task: name, content digest, where it was defined and what it means.
    pub task_info: TaskInfo,
    /// What the run did with the remote cache (run.json only: it differs between
    /// runs that found the same results).
    #[serde(skip)]
    pub remote: Option<RemoteSummary>,
}

/// The data file of a run, as report.json records it.
#[derive(Debug, Clone, Serialize)]
pub struct DataInfo {
    /// BLAKE3 of the file.
    pub digest: String,
    pub format: Format,
    /// Examples read (after any skipped rows).
    pub rows: usize,
    /// Rows left out, with the reason (BigBench generation rows with several targets).
    pub skipped: usize,
    /// The first `selection_rows` rows are the selection split.
    pub selection_rows: usize,
    pub selection_share: f64,
}

/// The task of a run, as report.json records it.
#[derive(Debug, Clone, Serialize)]
pub struct TaskInfo {
    pub name: String,
    /// The content digest that enters the gradients' and evaluations' keys.
    pub digest: String,
    /// The task file, or `builtin:NAME`.
    pub file: PathBuf,
    /// Every key with its default filled in.
    pub definition: serde_json::Value,
}

impl RunResult {
    /// Count of stage records with each outcome.
    pub fn outcomes(&self) -> BTreeMap<String, BTreeMap<String, usize>> {
        let mut m: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
        for r in &self.stages {
            let o = r.outcome.name();
            *m.entry(r.stage.clone())
                .or_default()
                .entry(o.to_string())
                .or_default() += 1;
        }
        m
    }
}

fn stage<T>(r: Result<T, String>) -> Result<T, EngineError> {
    r.map_err(EngineError::Stage)
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

/// The data file: `data.path`, else the task file's `path`, else (a
/// `format = "bigbench"` task) the task's `task.json` from the `bigbench` package.
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
        (None, None) if task.format == Some(Format::Bigbench) => {
            return Ok(c2i_stages::data::bigbench_package_file(task)?)
        }
        (None, None) => {
            return Err(EngineError::Invalid(format!(
                "{}: field `{field}`: missing: task `{}` names no rows (give `{field}`, or \
                 `path` in the task file)",
                origin.display(),
                task.name()
            )))
        }
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

/// Creates the salsa inputs, or updates only the fields that changed (so salsa keeps
/// everything that does not depend on them).
pub fn setup(db: &mut Database, prev: Option<Setup>, p: &Pipeline) -> Result<Setup, EngineError> {
    let model_path = resolve_model(&p.spec.model.path)?;
    let data_path = resolve_data(p)?;
    let model_digest = *db.ctx().digest_path(&model_path)?.as_bytes();
    let data_digest = *db.ctx().digest_path(&data_path)?.as_bytes();
    let task = p.task.clone();
    let n_rows = db
        .ctx()
        .examples(&task, &data_path, &Digest::from_bytes(data_digest))?
        .len();
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
    let collapse = p.spec.search.collapse_threshold.to_bits();
    let exec = crate::keys::Exec::parse(&p.spec.run.device, &p.spec.run.dtype).map_err(
        |(field, expected)| {
            EngineError::Invalid(format!(
                "{}: {field}: expected {expected}",
                p.file.display()
            ))
        },
    )?;
    let s = match prev {
        None => {
            return Ok(Setup::new(
                db,
                model_path,
                model_digest,
                data_path,
                data_digest,
                task,
                sel.calibration,
                sel.evaluation,
                heldout,
                p.spec.run.micro_batch,
                p.spec.run.eval_batch,
                collapse,
                exec,
            ))
        }
        Some(s) => s,
    };
    macro_rules! update {
        ($get:ident, $set:ident, $v:expr) => {
            let v = $v;
            if s.$get(db).clone() != v {
                s.$set(db).to(v);
            }
        };
    }
    update!(model_path, set_model_path, model_path);
    update!(model_digest, set_model_digest, model_digest);
    update!(data_path, set_data_path, data_path);
    update!(data_digest, set_data_digest, data_digest);
    update!(task, set_task, task);
    update!(calibration, set_calibration, sel.calibration);
    update!(evaluation, set_evaluation, sel.evaluation);
    update!(heldout, set_heldout, heldout);
    update!(micro_batch, set_micro_batch, p.spec.run.micro_batch);
    update!(eval_batch, set_eval_batch, p.spec.run.eval_batch);
    update!(collapse_bits, set_collapse_bits, collapse);
    update!(exec, set_exec, exec);
    Ok(s)
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

fn rule(p: &Pipeline) -> ScoreRule {
    if p.spec.search.score == "first-order" {
        ScoreRule::FirstOrder
    } else {
        ScoreRule::NegativeSvGrad
    }
}

/// For ranking: larger is more promising (the first-order rule predicts a change of
/// loss, so its negation ranks).
fn ranking(rule: ScoreRule, value: f64) -> f64 {
    match rule {
        ScoreRule::NegativeSvGrad => value,
        ScoreRule::FirstOrder => -value,
    }
}

fn figures(out: &Out) -> Result<Figures, EngineError> {
    let m = &out.0.metadata;
    let selection: SelectionScore = serde_json::from_value(m["selection"].clone())
        .map_err(|e| EngineError::Corrupt(format!("evaluation entry {}: {e}", out.0.key)))?;
    Ok(Figures {
        samples: m["samples"].as_u64().unwrap_or(0) as usize,
        accuracy: selection.accuracy,
        log_loss: m["log_loss"].as_f64().unwrap_or(f64::NAN),
        metrics: m["metrics"].clone(),
        selection,
    })
}

/// Runs `p` against the database; `prev` is the setup of an earlier variant in
/// this process (a sweep), reused so salsa can skip unchanged work.
pub fn run(
    db: &mut Database,
    prev: Option<Setup>,
    p: &Pipeline,
    until: Option<Until>,
) -> Result<(Setup, RunResult), EngineError> {
    let started = Instant::now();
    let log_start = db.ctx().log_len();
    let s = setup(db, prev, p)?;
    let db: &Database = db;
    let n_layers = {
        // The layer count, from the model config (cheap once loaded; on a warm run
        // the sv-grads of every layer are cached, so read it from the file header).
        let path = s.model_path(db).clone();
        c2i_stages::model::weights::layer_count(&path)?
    };
    let matrices = search_matrices(p, n_layers);
    let rule = rule(p);
    let ds = db.ctx().examples(
        s.task(db),
        s.data_path(db),
        &Digest::from_bytes(s.data_digest(db)),
    )?;
    let task = &p.task;
    let data_info = DataInfo {
        digest: Digest::from_bytes(s.data_digest(db)).to_hex(),
        format: ds.format,
        rows: ds.len(),
        skipped: ds.skipped.len(),
        selection_rows: Split::Selection
            .rows_with(ds.len(), task.selection_share)
            .len(),
        selection_share: task.selection_share,
    };
    let task_info = TaskInfo {
        name: task.name().to_string(),
        digest: task.digest().to_string(),
        file: task.origin.clone(),
        definition: task.canonical(),
    };
    let mut result = RunResult {
        task: task.name().to_string(),
        model: p.spec.model.path.clone(),
        mode: p.spec.search.mode,
        selection_metric: p.spec.search.selection_metric.to_string(),
        scores: Vec::new(),
        baseline: None,
        candidates: Vec::new(),
        best: None,
        stages: Vec::new(),
        seconds: 0.0,
        resolved: serde_json::to_value(&p.spec)?,
        export: None,
        rows: BTreeMap::from([
            ("calibration".to_string(), s.calibration(db).clone()),
            ("evaluation".to_string(), s.evaluation(db).clone()),
            ("heldout".to_string(), s.heldout(db).clone()),
        ]),
        data: s.data_path(db).clone(),
        exec: s.exec(db).clone(),
        data_info,
        task_info,
        remote: None,
    };
    let finish = |mut result: RunResult, db: &Database| {
        result.stages = db.ctx().log_since(log_start);
        result.remote = db.ctx().remote_summary();
        result.seconds = started.elapsed().as_secs_f64();
        Ok((s, result))
    };

    // Candidates to evaluate, with their scores.
    let mut candidates: Vec<(Candidate, Option<f64>)> = Vec::new();
    match p.spec.search.mode {
        SearchMode::Gradient => {
            stage(db::gradients(db, s))?;
            if until == Some(Until::Gradients) {
                return finish(result, db);
            }
            for &m in &matrices {
                for &k in &p.spec.search.blocks {
                    stage(db::factors(db, MatrixReq::new(db, s, m, k)))?;
                }
            }
            if until == Some(Until::Factors) {
                return finish(result, db);
            }
            let mut entries = Vec::new();
            for &m in &matrices {
                for &k in &p.spec.search.blocks {
                    let out = stage(db::sv_grads(db, MatrixReq::new(db, s, m, k)))?;
                    let sp = spectra(&out.0)?;
                    for &keep in &p.keep {
                        let score = score_of(&sp, keep, rule)?;
                        if !score.is_finite() {
                            return Err(EngineError::Invalid(format!(
                                "{} K={k} keep={keep}: score is not finite",
                                m.hf_name()
                            )));
                        }
                        entries.push((Candidate::new(m, k, keep), score));
                        result.scores.push(Scored {
                            matrix: m.hf_name(),
                            layer: m.layer,
                            kind: m.kind.short().to_string(),
                            blocks: k,
                            keep,
                            score,
                        });
                    }
                }
            }
            if until == Some(Until::Scores) {
                return finish(result, db);
            }
            // Top-k by ranking value, ties to (matrix, K, rho) order: deterministic.
            entries.sort_by(|a, b| {
                ranking(rule, b.1)
                    .total_cmp(&ranking(rule, a.1))
                    .then(a.0.cmp(&b.0))
            });
            candidates = match p.spec.search.select {
                Select::Entries => entries
                    .into_iter()
                    .take(p.spec.search.top_k)
                    .map(|(c, v)| (c, Some(v)))
                    .collect(),
                Select::Matrices => {
                    let mut chosen: Vec<MatrixId> = Vec::new();
                    for (c, _) in &entries {
                        if chosen.len() < p.spec.search.top_k && !chosen.contains(&c.matrix) {
                            chosen.push(c.matrix);
                        }
                    }
                    let mut v: Vec<(Candidate, Option<f64>)> = Vec::new();
                    for m in &chosen {
                        let mut mine: Vec<&(Candidate, f64)> =
                            entries.iter().filter(|(c, _)| c.matrix == *m).collect();
                        mine.sort_by_key(|e| e.0);
                        v.extend(mine.into_iter().map(|(c, s)| (*c, Some(*s))));
                    }
                    v
                }
            };
        }
        SearchMode::Laser => {
            for &m in &matrices {
                for &k in &p.spec.search.blocks {
                    for &keep in &p.keep {
                        candidates.push((Candidate::new(m, k, keep), None));
                    }
                }
            }
        }
    }

    // Evaluations: the base model, then each candidate (prefix reuse per layer).
    let mut layers: Vec<usize> = candidates.iter().map(|(c, _)| c.matrix.layer).collect();
    layers.sort();
    layers.dedup();
    db.ctx().set_prefix_layers(layers);
    let base_sel = stage(db::evaluate(db, EvalReq::new(db, s, Rows::Selection, None)))?;
    let mut scored: Vec<(Candidate, Option<f64>, Out)> = Vec::new();
    for (c, score) in candidates {
        let out = stage(db::evaluate(
            db,
            EvalReq::new(db, s, Rows::Selection, Some(c)),
        ))?;
        result.candidates.push(Evaluated {
            matrix: c.matrix.hf_name(),
            layer: c.matrix.layer,
            blocks: c.blocks,
            keep: c.keep(),
            score,
            selection: figures(&out)?,
        });
        scored.push((c, score, out));
    }
    if until == Some(Until::Evaluate) {
        return finish(result, db);
    }
    let base_held = stage(db::evaluate(db, EvalReq::new(db, s, Rows::Heldout, None)))?;
    result.baseline = Some(BTreeMap::from([
        ("selection".to_string(), figures(&base_sel)?),
        ("heldout".to_string(), figures(&base_held)?),
    ]));
    let pool: Vec<(Candidate, SelectionScore)> = result
        .candidates
        .iter()
        .zip(&scored)
        .map(|(e, (c, _, _))| (*c, e.selection.selection))
        .collect();
    if let Some(i) = select_best(p.spec.search.selection_metric, &pool)? {
        let (c, _, out) = &scored[i];
        let held = stage(db::evaluate(
            db,
            EvalReq::new(db, s, Rows::Heldout, Some(*c)),
        ))?;
        result.best = Some(Best {
            matrix: c.matrix.hf_name(),
            blocks: c.blocks,
            keep: c.keep(),
            selection: figures(out)?,
            heldout: figures(&held)?,
        });
        let o = &p.spec.output;
        if o.dense || o.factored {
            result.export = Some(crate::export::export(
                db, s, *c, &o.dir, o.dense, o.factored, o.dtype,
            )?);
        }
    }
    finish(result, db)
}

/// Writes `run.json` (stage keys, outcomes, seconds, resolved parameters, versions,
/// and what was pulled from, pushed to or rejected from the remote cache).
pub fn write_run_json(dir: &Path, r: &RunResult) -> Result<PathBuf, EngineError> {
    std::fs::create_dir_all(dir).map_err(|source| EngineError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join("run.json");
    let json = serde_json::json!({
        "versions": crate::keys::environment(&r.exec).into_iter().collect::<BTreeMap<_, _>>(),
        "parameters": r.resolved,
        "stages": r.stages,
        "outcomes": r.outcomes(),
        "seconds": r.seconds,
        "remote": r.remote,
    });
    write_atomic(&path, &serde_json::to_vec_pretty(&json)?)?;
    Ok(path)
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), EngineError> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|source| EngineError::Io {
        path: tmp.clone(),
        source,
    })?;
    std::fs::rename(&tmp, path).map_err(|source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    })
}
