//! The stages, one module each: its name and code version, how its action is built
//! (key, inputs, parameters), its body, and readers of its outputs. The engine knows
//! them only through [`StageDef`], registered by name in [`ALL`], so any process that
//! reaches the cache can run any stage instance from its description
//! (`c2i worker run KEY`).
//!
//! | stage | inputs (by content digest) | outputs |
//! |---|---|---|
//! | [`matrix_digests`] | the model file | `digests`: BLAKE3 of every weight matrix |
//! | [`gradients`] | model and data files; task, calibration rows | `grads`: dLoss/dW |
//! | [`factors`] | one matrix's content; K | `factors`: block SVD |
//! | [`sv_grads`] | a `factors` blob and the `grads` blob | `spectra`: σ and dLoss/dσ |
//! | [`evaluate`] | model and data files, a `factors` blob (candidates); rows | `records` |
//!
//! Bump a stage's version when its code changes what it computes.

pub mod evaluate;
pub mod factors;
pub mod gradients;
pub mod matrix_digests;
pub mod sv_grads;

use crate::action::Action;
use crate::ctx::Ctx;
use crate::EngineError;
use c2i_cache::ActionEntry;
use std::collections::BTreeMap;

/// What a stage body produces: named output blobs and small metadata.
pub struct Produced {
    pub outputs: BTreeMap<String, Vec<u8>>,
    pub metadata: serde_json::Value,
}

/// A stage as the engine sees it.
pub struct StageDef {
    pub name: &'static str,
    pub version: &'static str,
    /// Computes an action of this stage.
    pub run: fn(&Ctx, &Action) -> Result<Produced, EngineError>,
    /// Whether a cached entry is usable (its outputs and metadata have the expected
    /// form); an unusable one is a miss and is recomputed.
    pub check: fn(&ActionEntry) -> Result<(), String>,
    /// Whether the local executor may run several actions of this stage at once (their
    /// bodies are sequential inside and results do not depend on the thread count).
    pub parallel: bool,
}

/// Every stage, by name.
pub const ALL: &[&StageDef] = &[
    &matrix_digests::DEF,
    &gradients::DEF,
    &factors::DEF,
    &sv_grads::DEF,
    &evaluate::DEF,
];

/// The stage called `name`.
pub fn def(name: &str) -> Option<&'static StageDef> {
    ALL.iter().copied().find(|d| d.name == name)
}

/// Whether `entry` is usable by its stage (see [`StageDef::check`]).
pub fn check(entry: &ActionEntry) -> Result<(), String> {
    match def(&entry.stage) {
        Some(d) => (d.check)(entry),
        None => Ok(()),
    }
}

/// `Ok` when `entry` has every output in `names`.
pub(crate) fn has_outputs(entry: &ActionEntry, names: &[&str]) -> Result<(), String> {
    for n in names {
        if !entry.outputs.contains_key(*n) {
            return Err(format!("no output `{n}`"));
        }
    }
    Ok(())
}

/// Seconds since `t`, for metadata.
pub(crate) fn seconds(t: std::time::Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

/// Output `name` of a resolved entry as an input of a downstream action: its digest
/// (which enters the downstream key) and where it comes from.
pub fn output_input(entry: &ActionEntry, name: &str) -> Result<crate::action::Input, EngineError> {
    let b = entry.outputs.get(name).ok_or_else(|| {
        EngineError::Corrupt(format!(
            "{} entry {} has no output `{name}`",
            entry.stage, entry.key
        ))
    })?;
    Ok(crate::action::Input::Output {
        digest: b.digest,
        size: b.size,
        stage: entry.stage.clone(),
        key: entry.key,
        output: name.to_string(),
    })
}
