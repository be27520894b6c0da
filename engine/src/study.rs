//! `c2i study PIPELINE`: do the score rules predict what evaluating every candidate
//! measures? Runs variants of one pipeline in this process, through the same runner as
//! `c2i run` and `c2i sweep` (so every stage instance is looked up in the cache first,
//! and a rerun computes nothing), and hands what they found to
//! [`c2i_stages::export::study::analyse`].
//!
//! The variants, in the order they run (cheap ones first, so an interrupted study
//! keeps what it computed and a rerun picks up where it stopped):
//!
//! 1. `pipeline`: the pipeline as configured (c2i's own search, timed; its baseline
//!    figures on the evaluation rows are the oracle's reference).
//! 2. `scores-RULE`, one per [`ScoreRule`]: the gradient mode with `search.score =
//!    RULE`, K = 1, the oracle's keeps and layers, every MLP matrix, stopped after the
//!    scores (the sv-grads are shared by all rules).
//! 3. `oracle`: `search.mode = "laser"` over every MLP matrix of the layers, K = 1, the
//!    oracle's keeps, racing off, stopped after the selection evaluations.
//! 4. `calibration-N-RULE`: the scores with `data.calibration.samples = N` (each new N
//!    is one gradient pass and its sv-grads).
//! 5. `evaluation-N`: the pipeline as configured with `data.evaluation.samples = N`.
//!
//! The study's files are written after the oracle and again after every sample-size
//! variant; until the last, study.md says PARTIAL (a study stopped part-way still
//! leaves its tables, and a rerun finishes it from the cache).
//!
//! Each variant writes `run.json` and `report.json` to `OUT/runs/NAME/` (no model is
//! exported); the study writes `OUT/study.json`, `OUT/study.md` and
//! `OUT/scatter-RULE.svg`.

use crate::ctx::{Ctx, StageRecord};
use crate::exec::Executor;
use crate::lock::LockBook;
use crate::runner::{self, Baseline, Figures, Report, Until};
use crate::spec::{Pipeline, SearchMode, Select};
use crate::EngineError;
use c2i_cache::Key;
use c2i_stages::export::study::{
    analyse, markdown, rederive, scatter_svg, CalibrationInput, CostInput, EvaluationInput, Header,
    Measured, OracleInput, RuleScore, RuleScores, Size, Study, StudyInput, Tally, Winner,
};
use c2i_stages::model::MatrixId;
use c2i_stages::score::ScoreRule;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What `c2i study` was asked.
#[derive(Debug, Clone)]
pub struct StudyOptions {
    pub pipeline: PathBuf,
    /// `--set` overrides, applied to every variant before the study's own.
    pub set: Vec<String>,
    /// rho values of the oracle (and of the rules' scores).
    pub oracle_keep: Vec<f64>,
    /// `search.layers` of the oracle and the rules' scores (TOML: `all`, `[0, 1]`).
    pub layers: String,
    /// Calibration (gradient pass) sample sizes.
    pub calibration: Vec<usize>,
    /// Evaluation (selection) sample sizes.
    pub evaluation: Vec<usize>,
    /// Where study.json, study.md, the scatters and the variants' runs go.
    pub out: PathBuf,
}

/// The defaults of the command line.
pub const DEFAULT_ORACLE_KEEP: [f64; 3] = crate::spec::DEFAULT_KEEP;
pub const DEFAULT_CALIBRATION: [usize; 6] = [10, 25, 50, 100, 200, 400];
pub const DEFAULT_EVALUATION: [usize; 4] = [25, 50, 100, 200];

impl StudyOptions {
    /// Checks the options; an error names the flag.
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |m: String| Err(EngineError::Invalid(m));
        if self.oracle_keep.is_empty() {
            return bad("--oracle-keep: at least one fraction in (0, 1]".into());
        }
        if let Some(k) = self
            .oracle_keep
            .iter()
            .find(|k| !(k.is_finite() && **k > 0.0 && **k <= 1.0))
        {
            return bad(format!(
                "--oracle-keep: {k} is not a fraction of the rank kept in (0, 1]"
            ));
        }
        for (flag, v) in [
            ("--calibration", &self.calibration),
            ("--evaluation", &self.evaluation),
        ] {
            if v.is_empty() {
                return bad(format!("{flag}: at least one sample size"));
            }
            if v.contains(&0) {
                return bad(format!("{flag}: sample sizes must be positive, got 0"));
            }
        }
        if self.layers.trim().is_empty() {
            return bad("--layers: `all`, `last_third` or a list such as [0, 1]".into());
        }
        Ok(())
    }
}

/// What a study wrote.
pub struct StudyOutput {
    pub study: Study,
    pub files: Vec<PathBuf>,
}

/// A TOML string literal of `s` (quoted and escaped).
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn toml_floats(v: &[f64]) -> String {
    let parts: Vec<String> = v.iter().map(|x| format!("{x:?}")).collect();
    format!("[{}]", parts.join(", "))
}

/// The study's variants: loading, running, writing their records.
struct Variants<'a> {
    ctx: &'a Ctx,
    exec: &'a mut dyn Executor,
    opts: &'a StudyOptions,
    runs: PathBuf,
    say: &'a mut dyn FnMut(&str),
    done: usize,
}

impl Variants<'_> {
    fn load(&self, name: &str, extra: &[String]) -> Result<Pipeline, EngineError> {
        let dir = self.runs.join(name);
        let dir = dir.to_str().ok_or_else(|| {
            EngineError::Invalid(format!(
                "--out {}: not valid UTF-8, cannot be written into a pipeline",
                self.opts.out.display()
            ))
        })?;
        let mut set = self.opts.set.clone();
        set.extend(extra.iter().cloned());
        set.push(format!("output.dir={}", toml_str(dir)));
        set.push("output.dense=false".into());
        set.push("output.factored=false".into());
        Ok(Pipeline::load(&self.opts.pipeline, &set)?)
    }

    fn run(
        &mut self,
        name: &str,
        extra: &[String],
        until: Option<Until>,
    ) -> Result<(Pipeline, Report), EngineError> {
        let p = self.load(name, extra)?;
        self.done += 1;
        (self.say)(&format!("study: variant {} `{name}`", self.done));
        let mut book = LockBook::collect(&p.device);
        let r = runner::run(self.ctx, &mut *self.exec, &mut book, &p, until)?;
        let dir = &p.spec.output.dir;
        runner::write_run_json(dir, &r, None)?;
        let r = r.report;
        runner::write_atomic(&dir.join("report.json"), &serde_json::to_vec_pretty(&r)?)?;
        (self.say)(&format!(
            "study: variant {} `{name}` done in {:.1} s",
            self.done, r.seconds
        ));
        Ok((p, r))
    }
}

/// `x` on a grid of `step`: figures read back from a cache entry's metadata come
/// through serde_json's float parser, which may land one ulp away from the value a
/// cold run holds in memory; on the grid, a cold run and its warm rerun write the
/// same bytes.
fn grid(x: f64, step: f64) -> f64 {
    if x.is_finite() {
        (x / step).round() * step
    } else {
        x
    }
}

/// Figures to 1e-9, seconds to the microsecond.
const FIGURE_STEP: f64 = 1e-9;
const SECONDS_STEP: f64 = 1e-6;

/// An evaluation's figures for the study: the typed selection score, and the collapse
/// flag from the metrics' prediction share (classification only).
fn measured(f: &Figures, collapse_threshold: f64) -> Measured {
    let share = f.max_predicted_share().map(|x| grid(x, FIGURE_STEP));
    Measured {
        samples: f.samples,
        accuracy: grid(f.selection.accuracy, FIGURE_STEP),
        balanced_accuracy: f.selection.balanced_accuracy.map(|x| grid(x, FIGURE_STEP)),
        log_loss: grid(f.selection.log_loss, FIGURE_STEP),
        predictions: f.predicted_histogram().map(<[usize]>::to_vec),
        max_predicted_share: share,
        collapsed: share.is_some_and(|s| s > collapse_threshold),
    }
}

/// `layers.11.mlp.down_proj` → `down` (the kind's short name, as scores carry it).
fn kind_of(matrix: &str) -> String {
    MatrixId::from_hf_name(matrix)
        .map_or_else(|| matrix.to_string(), |m| m.kind.short().to_string())
}

/// The K = 1 scores of a run stopped after its scores.
fn rule_scores(rule: ScoreRule, r: &Report) -> RuleScores {
    RuleScores {
        rule,
        scores: r
            .scores
            .iter()
            .filter(|s| s.blocks == 1)
            .map(|s| RuleScore {
                matrix: s.matrix.clone(),
                layer: s.layer,
                kind: s.kind.clone(),
                keep: s.keep,
                value: s.score,
            })
            .collect(),
    }
}

/// The baseline of a complete run.
fn baseline(r: &Report) -> Result<&Baseline, EngineError> {
    r.baseline
        .as_ref()
        .ok_or_else(|| EngineError::Invalid("the run has no baseline figures".into()))
}

fn winner(r: &Report, threshold: f64) -> Option<Winner> {
    r.best.as_ref().map(|b| Winner {
        matrix: b.matrix.clone(),
        blocks: b.blocks,
        keep: b.keep,
        selection: measured(&b.selection, threshold),
        heldout: measured(&b.heldout, threshold),
    })
}

/// A stage instance's seconds and rows as its cache entry recorded them when it was
/// computed, and its parameters.
struct Recorded {
    seconds: f64,
    rows: usize,
    params: BTreeMap<String, String>,
}

fn recorded(ctx: &Ctx, rec: &StageRecord) -> Result<Recorded, EngineError> {
    let key = Key::from_hex(&rec.key)?;
    let entry = ctx.resolved(&key).ok_or_else(|| {
        EngineError::Invalid(format!(
            "{} {}: its entry was not resolved in this process",
            rec.stage, rec.instance
        ))
    })?;
    let seconds = entry
        .metadata
        .get("seconds")
        .and_then(|v| v.as_f64())
        .ok_or_else(|| {
            EngineError::Corrupt(format!(
                "{} entry {}: no `seconds` in its metadata",
                rec.stage, rec.key
            ))
        })?;
    let rows = entry
        .metadata
        .get("samples")
        .and_then(|v| v.as_u64())
        .unwrap_or(0) as usize;
    Ok(Recorded {
        seconds: grid(seconds, SECONDS_STEP),
        rows,
        params: entry.parts.params.clone(),
    })
}

fn rows_param(r: &Recorded) -> Option<Vec<usize>> {
    r.params
        .get("rows")
        .and_then(|v| serde_json::from_str::<Vec<usize>>(v).ok())
}

/// Caps `requested` sizes at `cap`, saying why.
fn capped(requested: &[usize], cap: usize, why: &str) -> Vec<Size> {
    let mut v: Vec<Size> = requested
        .iter()
        .map(|&n| Size {
            requested: n,
            used: n.min(cap),
            capped: (n > cap).then(|| why.to_string()),
        })
        .filter(|s| s.used > 0)
        .collect();
    v.sort_by_key(|s| (s.used, s.requested));
    v.dedup_by_key(|s| s.used);
    v
}

/// Runs the study of `opts.pipeline` and writes its files to `opts.out`.
pub fn run(
    ctx: &Ctx,
    exec: &mut dyn Executor,
    opts: &StudyOptions,
    say: &mut dyn FnMut(&str),
) -> Result<StudyOutput, EngineError> {
    opts.validate()?;
    let mut keeps: Vec<f64> = Vec::new();
    for k in &opts.oracle_keep {
        if !keeps.iter().any(|x| x.to_bits() == k.to_bits()) {
            keeps.push(*k);
        }
    }
    let out = std::path::absolute(&opts.out).map_err(|source| EngineError::Io {
        path: opts.out.clone(),
        source,
    })?;
    let mut v = Variants {
        ctx,
        exec,
        opts,
        runs: out.join("runs"),
        say,
        done: 0,
    };
    // The pipeline as given, checked before anything runs.
    let base = v.load("pipeline", &[])?;
    let file = opts.pipeline.display().to_string();
    if base.spec.search.mode != SearchMode::Gradient {
        return Err(EngineError::Invalid(format!(
            "{file}: field `search.mode`: c2i study compares the gradient scores with what \
             evaluation measures, so the pipeline must be search.mode = \"gradient\""
        )));
    }
    if base.spec.search.rate.is_some() {
        return Err(EngineError::Invalid(format!(
            "{file}: field `search.rate`: the study sets search.keep for its variants; \
             write the pipeline's rho values as search.keep"
        )));
    }
    std::fs::create_dir_all(&out).map_err(|source| EngineError::Io {
        path: out.clone(),
        source,
    })?;
    let threshold = base.spec.search.collapse_threshold;
    let layers = format!("search.layers={}", opts.layers.trim());
    let keep = format!("search.keep={}", toml_floats(&keeps));
    let scored = |rule: ScoreRule| {
        vec![
            format!("search.score={}", toml_str(rule.name())),
            "search.blocks=[1]".to_string(),
            "search.matrices=\"mlp\"".to_string(),
            layers.clone(),
            keep.clone(),
        ]
    };

    // 1. The pipeline as configured.
    let (p0, r0) = v.run("pipeline", &[], None)?;
    let rows_of = |r: &Report, which: &str| r.rows.get(which).map_or(0, Vec::len);
    let own_calibration = rows_of(&r0, "calibration");
    let own_evaluation = rows_of(&r0, "evaluation");
    let split = r0
        .data_info
        .as_ref()
        .map(|d| d.selection_rows)
        .ok_or_else(|| EngineError::Invalid("the pipeline's run read no data".into()))?;
    let base_selection = measured(&baseline(&r0)?.selection, threshold);

    // 2. Every rule's scores at the pipeline's calibration size.
    let mut rules = Vec::new();
    for rule in ScoreRule::ALL {
        let (_, r) = v.run(
            &format!("scores-{}", rule.name()),
            &scored(rule),
            Some(Until::Scores),
        )?;
        rules.push(rule_scores(rule, &r));
    }

    // 3. The oracle (before the sample sizes: it is what the study is about, and the
    // study's files are written from here on, after every step).
    let mut oracle_set = vec![
        "search.mode=\"laser\"".to_string(),
        "search.matrices=\"mlp\"".to_string(),
        "search.blocks=[1]".to_string(),
        "search.racing=\"off\"".to_string(),
        layers.clone(),
        keep.clone(),
    ];
    // A pipeline's own score rule does not matter in laser mode.
    oracle_set.push(format!(
        "search.score={}",
        toml_str(base.spec.search.score.name())
    ));
    let (_, ro) = v.run("oracle", &oracle_set, Some(Until::Evaluate))?;
    if ro.rows.get("evaluation") != r0.rows.get("evaluation") {
        return Err(EngineError::Invalid(
            "the oracle's evaluation rows differ from the pipeline's: the study cannot \
             compare them with the pipeline's baseline"
                .into(),
        ));
    }
    let mut oracle = Vec::new();
    for c in &ro.candidates {
        if c.stopped_after_round.is_some() || c.rows_evaluated != own_evaluation {
            return Err(EngineError::Invalid(format!(
                "oracle candidate {} keep {}: evaluated on {} of {} rows (racing must be off)",
                c.matrix, c.keep, c.rows_evaluated, own_evaluation
            )));
        }
        oracle.push(OracleInput {
            matrix: c.matrix.clone(),
            layer: c.layer,
            kind: kind_of(&c.matrix),
            keep: c.keep,
            measured: measured(&c.selection, threshold),
        });
    }

    // Cost, from the entries' recorded seconds.
    let heldout_rows = r0.rows.get("heldout").cloned().unwrap_or_default();
    // In key order: a cold run records an instance when it is computed, a warm one in
    // the order the runner asked, and float sums depend on the order.
    let by_key = |stages: &[StageRecord]| {
        let mut v = stages.to_vec();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    };
    let mut c2i_search: BTreeMap<String, Tally> = BTreeMap::new();
    for rec in &by_key(&r0.stages) {
        let rc = recorded(ctx, rec)?;
        if rec.stage == "evaluate" && rows_param(&rc).as_ref() == Some(&heldout_rows) {
            continue;
        }
        c2i_search
            .entry(rec.stage.clone())
            .or_default()
            .add(rc.rows, rc.seconds);
    }
    let (mut oracle_candidates, mut base_eval, mut factors_k1) =
        (Tally::default(), Tally::default(), Tally::default());
    for rec in &by_key(&ro.stages) {
        let rc = recorded(ctx, rec)?;
        match rec.stage.as_str() {
            "evaluate" if rc.params.contains_key("candidate") => base_eval.add(rc.rows, rc.seconds),
            "evaluate" => oracle_candidates.add(rc.rows, rc.seconds),
            "factors" => factors_k1.add(0, rc.seconds),
            _ => {}
        }
    }
    // The gradient pass of the pipeline's own calibration rows.
    let mut gradients = Tally::default();
    for rec in r0.stages.iter().filter(|s| s.stage == "gradients") {
        let g = recorded(ctx, rec)?;
        gradients.add(g.rows, g.seconds);
    }
    let model_path = runner::resolve_model(&p0.spec.model.path)?;
    let n_layers = c2i_stages::model::weights::layer_count(&model_path)?;
    let mut notes = Vec::new();
    if opts.layers.trim() != "all" {
        notes.push(format!(
            "Layers studied: {} (not all): the oracle, the rules' rankings and the \
             per-candidate-row cost behind the paper protocol's projection cover these \
             layers only.",
            opts.layers.trim()
        ));
    }
    if p0.spec.search.blocks != [1] {
        notes.push(format!(
            "The oracle and the rules' scores cover K = 1; the pipeline also searches K in \
             {:?}, so its own candidates and winners may be K > 1.",
            p0.spec.search.blocks
        ));
    }
    let mut input = StudyInput {
        header: Header {
            pipeline: file,
            task: r0.task.clone(),
            model: p0.spec.model.path.clone(),
            selection_metric: p0.spec.search.selection_metric.name().to_string(),
            top_k: p0.spec.search.top_k,
            select: match p0.spec.search.select {
                Select::Entries => "entries",
                Select::Matrices => "matrices",
            }
            .to_string(),
            score: p0.spec.search.score.name().to_string(),
            selection_split_rows: split,
            calibration_rows: own_calibration,
            evaluation_rows: own_evaluation,
            heldout_rows: heldout_rows.len(),
            collapse_threshold: threshold,
            oracle_keeps: keeps,
            layers: opts.layers.trim().to_string(),
            classification: base_selection.balanced_accuracy.is_some(),
        },
        baseline: base_selection,
        oracle,
        rules,
        calibration: Vec::new(),
        evaluation: vec![EvaluationInput {
            size: Size {
                requested: own_evaluation,
                used: own_evaluation,
                capped: None,
            },
            baseline_selection: measured(&baseline(&r0)?.selection, threshold),
            baseline_heldout: measured(&baseline(&r0)?.heldout, threshold),
            winner: winner(&r0, threshold),
        }],
        cost: CostInput {
            source: "each stage instance's own seconds, as its cache entry recorded them \
                     when it was computed (the stage's body: without loading the model, \
                     and for a candidate evaluated from a layer prefix, without computing \
                     that prefix, one base-model forward per row set), so a rerun from the \
                     cache reports the same; on this machine, one instance at a time"
                .into(),
            oracle_candidates,
            base_selection: base_eval,
            factors_k1,
            gradients,
            c2i_search,
            c2i_candidates: r0.candidates.len(),
            n_layers,
        },
        notes,
    };

    // 4. Calibration sizes, and 5. evaluation sizes (the pipeline's own is in already).
    let cal_cap = split.saturating_sub(own_evaluation);
    let cal_why = format!(
        "capped: the selection split has {split} rows and {own_evaluation} of them are the \
         evaluation sample"
    );
    let cal_sizes = capped(&opts.calibration, cal_cap, &cal_why);
    let ev_cap = split.saturating_sub(own_calibration);
    let ev_why = format!(
        "capped: the selection split has {split} rows and {own_calibration} of them are the \
         calibration sample"
    );
    let ev_sizes: Vec<Size> = capped(&opts.evaluation, ev_cap, &ev_why)
        .into_iter()
        .filter(|s| s.used != own_evaluation)
        .collect();
    if !capped(&opts.evaluation, ev_cap, &ev_why)
        .iter()
        .any(|s| s.used == own_evaluation)
    {
        input.notes.push(format!(
            "Evaluation rows: the pipeline's own {own_evaluation} added to the sizes asked \
             for (the reference winner)."
        ));
    }
    for s in cal_sizes.iter().chain(&ev_sizes) {
        if let Some(c) = &s.capped {
            input.notes.push(format!(
                "Sample size {} asked, {} used ({c}).",
                s.requested, s.used
            ));
        }
    }
    let steps = cal_sizes.len() + ev_sizes.len();
    let mut done = 0;
    let mut written = write_files(&out, &input, done, steps)?;
    for size in cal_sizes {
        let mut per_rule = Vec::new();
        for rule in ScoreRule::ALL {
            let mut extra = scored(rule);
            extra.push(format!("data.calibration.samples={}", size.used));
            let (_, r) = v.run(
                &format!("calibration-{}-{}", size.used, rule.name()),
                &extra,
                Some(Until::Scores),
            )?;
            if rule == ScoreRule::ALL[0] && size.used != own_calibration {
                for rec in r.stages.iter().filter(|s| s.stage == "gradients") {
                    let g = recorded(ctx, rec)?;
                    input.cost.gradients.add(g.rows, g.seconds);
                }
            }
            per_rule.push(rule_scores(rule, &r));
        }
        input.calibration.push(CalibrationInput {
            size,
            rules: per_rule,
        });
        done += 1;
        written = write_files(&out, &input, done, steps)?;
    }
    for size in ev_sizes {
        let (_, r) = v.run(
            &format!("evaluation-{}", size.used),
            &[format!("data.evaluation.samples={}", size.used)],
            None,
        )?;
        input.evaluation.push(EvaluationInput {
            size,
            baseline_selection: measured(&baseline(&r)?.selection, threshold),
            baseline_heldout: measured(&baseline(&r)?.heldout, threshold),
            winner: winner(&r, threshold),
        });
        done += 1;
        written = write_files(&out, &input, done, steps)?;
    }
    Ok(written)
}

/// Analyses `input` and writes study.json, study.md and the scatters to `out`; before
/// the last step (`done < steps`) the files say the study is still running.
fn write_files(
    out: &Path,
    input: &StudyInput,
    done: usize,
    steps: usize,
) -> Result<StudyOutput, EngineError> {
    let mut input = input.clone();
    if done < steps {
        input.notes.insert(
            0,
            format!(
                "PARTIAL: {done} of {steps} sample-size variants done; the study was still \
                 running (or was stopped) when these files were written."
            ),
        );
    }
    let study = analyse(&input).map_err(|e| EngineError::Invalid(format!("study: {e}")))?;
    write_study(out, study)
}

/// Writes study.json, study.md and the scatters of `study` to `out`.
fn write_study(out: &Path, study: Study) -> Result<StudyOutput, EngineError> {
    let mut files = Vec::new();
    let mut scatters = Vec::new();
    for r in &study.rules {
        let name = format!("scatter-{}.svg", r.rule.name());
        let path = out.join(&name);
        match scatter_svg(&study, r.rule) {
            Some(svg) => {
                runner::write_atomic(&path, svg.as_bytes())?;
                files.push(path);
                scatters.push((r.rule, name));
            }
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    let mut json = serde_json::to_vec_pretty(&study)?;
    json.push(b'\n');
    let json_path = out.join("study.json");
    runner::write_atomic(&json_path, &json)?;
    let md_path = out.join("study.md");
    runner::write_atomic(&md_path, markdown(&study, &scatters).as_bytes())?;
    files.insert(0, md_path);
    files.insert(0, json_path);
    Ok(StudyOutput { study, files })
}

/// Re-analyses the `study.json` in `out` (written by an earlier c2i, whose cache keys
/// may differ from this one's) with this c2i's analysis and rewrites the study's files,
/// evaluating nothing: what was measured stays, the tables derived from it are this
/// version's.
pub fn rerender(out: &Path) -> Result<StudyOutput, EngineError> {
    let path = out.join("study.json");
    let bytes = std::fs::read(&path)
        .map_err(|e| EngineError::Invalid(format!("study: reading {}: {e}", path.display())))?;
    let mut study: Study = serde_json::from_slice(&bytes).map_err(|e| {
        EngineError::Invalid(format!(
            "study: {} is not a study.json c2i can read: {e}",
            path.display()
        ))
    })?;
    rederive(&mut study)
        .map_err(|e| EngineError::Invalid(format!("study: {}: {e}", path.display())))?;
    write_study(out, study)
}

/// The directory a pipeline's study goes to by default: `out/study/STEM` beside the
/// pipeline file's directory.
pub fn default_out(pipeline: &Path) -> PathBuf {
    let stem = pipeline
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "pipeline".into());
    PathBuf::from("out/study").join(stem)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> StudyOptions {
        StudyOptions {
            pipeline: PathBuf::from("p.toml"),
            set: Vec::new(),
            oracle_keep: DEFAULT_ORACLE_KEEP.to_vec(),
            layers: "all".into(),
            calibration: DEFAULT_CALIBRATION.to_vec(),
            evaluation: DEFAULT_EVALUATION.to_vec(),
            out: PathBuf::from("o"),
        }
    }

    #[test]
    fn options_are_checked_and_name_the_flag() {
        assert!(opts().validate().is_ok());
        for (change, flag) in [
            (
                (|o: &mut StudyOptions| o.oracle_keep = vec![0.1, 1.5]) as fn(&mut StudyOptions),
                "--oracle-keep: 1.5",
            ),
            (|o| o.oracle_keep = vec![f64::NAN], "--oracle-keep: NaN"),
            (|o| o.oracle_keep.clear(), "--oracle-keep"),
            (|o| o.calibration = vec![10, 0], "--calibration"),
            (|o| o.evaluation.clear(), "--evaluation"),
            (|o| o.layers = " ".into(), "--layers"),
        ] {
            let mut o = opts();
            change(&mut o);
            let e = o.validate().unwrap_err().to_string();
            assert!(e.contains(flag), "{e}");
        }
    }

    #[test]
    fn sizes_are_capped_with_the_reason() {
        let v = capped(&[10, 400, 300, 25], 300, "why");
        let used: Vec<usize> = v.iter().map(|s| s.used).collect();
        assert_eq!(used, vec![10, 25, 300]);
        // 300 asked and 400 capped to 300: the uncapped one is kept.
        assert_eq!(v[2].requested, 300);
        assert_eq!(v[2].capped, None);
        let v = capped(&[400], 300, "why");
        assert_eq!(v[0].capped.as_deref(), Some("why"));
        assert!(capped(&[5], 0, "why").is_empty());
    }

    #[test]
    fn helpers() {
        // One ulp apart, the same on the grid.
        let x = 0.053257453208333326f64;
        let y = f64::from_bits(x.to_bits() + 1);
        assert_eq!(grid(x, SECONDS_STEP), grid(y, SECONDS_STEP));
        assert_eq!(grid(0.6175, FIGURE_STEP), 0.6175);
        assert!(grid(f64::NAN, FIGURE_STEP).is_nan());
        assert_eq!(kind_of("model.layers.11.mlp.down_proj.weight"), "down");
        assert_eq!(kind_of("model.layers.1.self_attn.q_proj.weight"), "q");
        assert_eq!(toml_floats(&[0.02, 0.1, 1.0]), "[0.02, 0.1, 1.0]");
        for raw in ["a\"b", "/tmp/x y/'q'", "plain"] {
            let t: toml::Table = toml::from_str(&format!("v = {}", toml_str(raw))).unwrap();
            assert_eq!(t["v"].as_str(), Some(raw));
        }
        assert_eq!(
            default_out(Path::new("pipelines/quickstart.toml")),
            PathBuf::from("out/study/quickstart")
        );
    }
}
