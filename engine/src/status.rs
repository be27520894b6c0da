//! `c2i status`: each stage instance of a pipeline as cached or to-run and, for a
//! to-run one, which part of its key differs from the closest cached entry of the
//! same stage (a parameter's old and new value, an input that changed, a version).
//!
//! Keys are computed without running any stage; the only work done is hashing the
//! model and data files (stat-cached). A key is built from the digests of its inputs'
//! outputs, so the key of an instance whose upstream is not cached yet cannot be known:
//! such lines say which upstream it waits for. Evaluations are listed when the scores
//! that choose them are cached.

use crate::action::Action;
use crate::ctx::Ctx;
use crate::runner::{choose, inputs, rule, score_of, search_matrices};
use crate::spec::{Pipeline, SearchMode};
use crate::stages::evaluate::{self, Candidate, Rows};
use crate::stages::{factors, gradients, matrix_digests, sv_grads};
use crate::EngineError;
use c2i_cache::{ActionEntry, Lookup};
use c2i_stages::export::report::fmt_keep;
use c2i_stages::model::MatrixId;
use serde::Serialize;
use std::collections::BTreeMap;

/// One stage instance.
#[derive(Debug, Clone, Serialize)]
pub struct StatusLine {
    pub stage: String,
    pub instance: String,
    /// Empty when the key cannot be known yet.
    pub key: String,
    pub cached: bool,
    /// For to-run instances: what differs from the closest cached entry, or which
    /// upstream the key waits for.
    pub why: Vec<String>,
}

/// The usable cached entry of `action`, and its status line.
fn line(ctx: &Ctx, action: &Action) -> Result<(Option<ActionEntry>, StatusLine), EngineError> {
    let store = &ctx.store;
    let key = action.key();
    let entry = match store.lookup(&key)? {
        Lookup::Hit(e) if crate::stages::check(&e).is_ok() => Some(e),
        _ => None,
    };
    let why = if entry.is_some() {
        Vec::new()
    } else {
        match store.closest_entry(action.parts())? {
            Some(c) if c.changes.is_empty() => {
                vec!["same key, but its entry or a blob is missing or unusable".into()]
            }
            Some(c) => c.changes.iter().map(|x| x.to_string()).collect(),
            None => vec![format!("no cached {} entry yet", action.stage)],
        }
    };
    let l = StatusLine {
        stage: action.stage.clone(),
        instance: action.instance.clone(),
        key: key.to_hex(),
        cached: entry.is_some(),
        why,
    };
    Ok((entry, l))
}

fn unknown(stage: &str, instance: String, waits_for: &str) -> StatusLine {
    StatusLine {
        stage: stage.to_string(),
        instance,
        key: String::new(),
        cached: false,
        why: vec![format!(
            "key not known yet: it is made from the output digests of {waits_for}, not cached yet"
        )],
    }
}

/// Lists every stage instance of `p` whose key can be known, and the others.
pub fn status(ctx: &Ctx, p: &Pipeline) -> Result<Vec<StatusLine>, EngineError> {
    let inp = inputs(ctx, p)?;
    let mut out = Vec::new();
    let n_layers = c2i_stages::model::weights::layer_count(&inp.model_path)?;
    let matrices = search_matrices(p, n_layers);
    let gradient_mode = p.spec.search.mode == SearchMode::Gradient;
    let (md, l) = line(ctx, &matrix_digests::action(&inp.model)?)?;
    out.push(l);
    let grads = if gradient_mode {
        let (g, l) = line(
            ctx,
            &gradients::action(
                &inp.model,
                &inp.data,
                &inp.task,
                &inp.calibration,
                p.spec.run.micro_batch,
                &p.device,
            )?,
        )?;
        out.push(l);
        g
    } else {
        None
    };
    let digests = match &md {
        Some(e) => Some(matrix_digests::read(ctx, e)?),
        None => None,
    };
    let mut facts: BTreeMap<(MatrixId, usize), Option<ActionEntry>> = BTreeMap::new();
    let mut entries: Vec<(Candidate, f64)> = Vec::new();
    let mut all_scores = gradient_mode;
    let r = rule(p);
    for &m in &matrices {
        for &k in &p.spec.search.blocks {
            let inst = factors::instance(m, k);
            let f = match digests.as_ref().and_then(|d| d.get(&m.hf_name())) {
                Some(info) => {
                    let (f, l) = line(ctx, &factors::action(&inp.model, m, info, k, &p.device)?)?;
                    out.push(l);
                    f
                }
                None => {
                    out.push(unknown(factors::NAME, inst.clone(), "matrix-digests"));
                    None
                }
            };
            if gradient_mode {
                match (&f, &grads) {
                    (Some(f), Some(g)) => {
                        let (s, l) = line(ctx, &sv_grads::action(m, k, f, g)?)?;
                        out.push(l);
                        match s {
                            Some(s) => {
                                let sp = sv_grads::spectra(ctx, &s)?;
                                for &keep in &p.keep {
                                    entries.push((
                                        Candidate::new(m, k, keep),
                                        score_of(&sp, keep, r)?,
                                    ));
                                }
                            }
                            None => all_scores = false,
                        }
                    }
                    _ => {
                        out.push(unknown(sv_grads::NAME, inst, "factors and gradients"));
                        all_scores = false;
                    }
                }
            } else {
                for &keep in &p.keep {
                    entries.push((Candidate::new(m, k, keep), 0.0));
                }
            }
            facts.insert((m, k), f);
        }
    }
    let of = |rows: Rows| crate::runner::eval_of(p, &inp, rows);
    // The selection rows in racing rounds: every round of every candidate is listed
    // (what `racing = "off"` runs; a race may stop some candidates before their last).
    let rounds = c2i_stages::eval::race::rounds(inp.evaluation.len());
    let round_of = |ri: usize| crate::runner::round_of(p, &inp, &rounds, ri);
    for ri in 0..rounds.len() {
        out.push(line(ctx, &evaluate::action(&round_of(ri), None)?)?.1);
    }
    out.push(line(ctx, &evaluate::action(&of(Rows::Heldout), None)?)?.1);
    if gradient_mode && !all_scores {
        out.push(StatusLine {
            stage: evaluate::NAME.into(),
            instance: "candidates".into(),
            key: String::new(),
            cached: false,
            why: vec!["chosen by the scores, which are not all cached yet".into()],
        });
        return Ok(out);
    }
    if gradient_mode {
        entries = choose(p, r, entries);
    }
    for (c, _) in entries {
        let inst = format!(
            "{} K={} keep={}, Selection",
            c.matrix.hf_name(),
            c.blocks,
            fmt_keep(c.keep())
        );
        match facts.get(&(c.matrix, c.blocks)).and_then(|f| f.as_ref()) {
            Some(f) => {
                for ri in 0..rounds.len() {
                    out.push(line(ctx, &evaluate::action(&round_of(ri), Some((c, f)))?)?.1);
                }
            }
            None => out.push(unknown(evaluate::NAME, inst, "factors")),
        }
    }
    Ok(out)
}
