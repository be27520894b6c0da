//! `c2i status`: each stage instance of a pipeline as cached or to-run and, for a
//! to-run one, which part of its key differs from the closest cached entry of the
//! same stage (a parameter's old and new value, an input that changed, a version).
//!
//! Keys are computed without running any stage; the only work done is hashing the
//! model and data files (stat-cached) and, once per model, each matrix's content.
//! Evaluations are listed when the scores that choose them are already cached.

use crate::db::{self, Candidate, Database, EngineDb, MatrixReq, Setup};
use crate::runner::{score_of, search_matrices};
use crate::spec::{Pipeline, SearchMode, Select};
use crate::stages::{evaluate_parts, gradients_parts, spectra};
use crate::{keys, EngineError};
use c2i_cache::{Digest, KeyParts, Lookup};
use c2i_stages::score::ScoreRule;
use serde::Serialize;

/// One stage instance.
#[derive(Debug, Clone, Serialize)]
pub struct StatusLine {
    pub stage: String,
    pub instance: String,
    pub key: String,
    pub cached: bool,
    /// For to-run instances: what differs from the closest cached entry.
    pub why: Vec<String>,
}

fn line(db: &Database, parts: &KeyParts, instance: String) -> Result<StatusLine, EngineError> {
    let store = &db.ctx().store;
    let key = parts.key();
    let cached = matches!(store.lookup(&key)?, Lookup::Hit(_));
    let why = if cached {
        Vec::new()
    } else {
        match store.closest_entry(parts)? {
            Some(c) if c.changes.is_empty() => {
                vec!["same key, but its entry or a blob is missing".into()]
            }
            Some(c) => c.changes.iter().map(|x| x.to_string()).collect(),
            None => vec![format!("no cached {} entry yet", parts.stage)],
        }
    };
    Ok(StatusLine {
        stage: parts.stage.clone(),
        instance,
        key: key.to_hex(),
        cached,
        why,
    })
}

/// Lists every stage instance of `p`.
pub fn status(db: &mut Database, p: &Pipeline) -> Result<(Setup, Vec<StatusLine>), EngineError> {
    let s = crate::runner::setup(db, None, p)?;
    let db: &Database = db;
    let mut out = Vec::new();
    let n_layers = c2i_stages::model::weights::layer_count(s.model_path(db))?;
    let matrices = search_matrices(p, n_layers);
    let gparts = gradients_parts(db, s)?;
    if p.spec.search.mode == SearchMode::Gradient {
        out.push(line(db, &gparts, "all matrices".into())?);
    }
    let mut all_scores = true;
    let mut entries: Vec<(Candidate, f64)> = Vec::new();
    let rule = if p.spec.search.score == "first-order" {
        ScoreRule::FirstOrder
    } else {
        ScoreRule::NegativeSvGrad
    };
    for &m in &matrices {
        for &k in &p.spec.search.blocks {
            let digest =
                db::matrix_digest(db, MatrixReq::new(db, s, m, 0)).map_err(EngineError::Stage)?;
            let fparts = keys::factors(s.exec(db), &Digest::from_bytes(digest), k)?;
            out.push(line(db, &fparts, format!("{} K={k}", m.hf_name()))?);
            if p.spec.search.mode == SearchMode::Laser {
                for &keep in &p.keep {
                    entries.push((Candidate::new(m, k, keep), 0.0));
                }
                continue;
            }
            let sparts = keys::sv_grads(s.exec(db), m, &fparts.key(), &gparts.key())?;
            let l = line(db, &sparts, format!("{} K={k}", m.hf_name()))?;
            if l.cached {
                if let Some(e) = db.ctx().store.read_entry(&sparts.key())? {
                    let sp = spectra(&e)?;
                    for &keep in &p.keep {
                        entries.push((Candidate::new(m, k, keep), score_of(&sp, keep, rule)?));
                    }
                }
            } else {
                all_scores = false;
            }
            out.push(l);
        }
    }
    if !all_scores {
        out.push(StatusLine {
            stage: keys::EVALUATE.0.into(),
            instance: "candidates".into(),
            key: String::new(),
            cached: false,
            why: vec!["chosen by the scores, which are not all cached yet".into()],
        });
        return Ok((s, out));
    }
    if p.spec.search.mode == SearchMode::Gradient {
        let sign = if rule == ScoreRule::FirstOrder {
            -1.0
        } else {
            1.0
        };
        entries.sort_by(|a, b| (sign * b.1).total_cmp(&(sign * a.1)).then(a.0.cmp(&b.0)));
        match p.spec.search.select {
            Select::Entries => entries.truncate(p.spec.search.top_k),
            Select::Matrices => {
                let mut chosen = Vec::new();
                for (c, _) in &entries {
                    if chosen.len() < p.spec.search.top_k && !chosen.contains(&c.matrix) {
                        chosen.push(c.matrix);
                    }
                }
                entries.retain(|(c, _)| chosen.contains(&c.matrix));
            }
        }
    }
    let base = evaluate_parts(db, s, db::Rows::Selection, None)?;
    out.push(line(db, &base, "base model, selection".into())?);
    let base_h = evaluate_parts(db, s, db::Rows::Heldout, None)?;
    out.push(line(db, &base_h, "base model, held-out".into())?);
    for (c, _) in entries {
        let digest = db::matrix_digest(db, MatrixReq::new(db, s, c.matrix, 0))
            .map_err(EngineError::Stage)?;
        let fkey = keys::factors(s.exec(db), &Digest::from_bytes(digest), c.blocks)?.key();
        let parts = evaluate_parts(db, s, db::Rows::Selection, Some((c, &fkey)))?;
        out.push(line(
            db,
            &parts,
            format!(
                "{} K={} keep={}, selection",
                c.matrix.hf_name(),
                c.blocks,
                c.keep()
            ),
        )?);
    }
    Ok((s, out))
}
