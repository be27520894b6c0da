//! The worker side of the `pool` and `slurm` executors: compute an action from its
//! key alone (`c2i worker run KEY`), or serve keys read from stdin
//! (`c2i worker serve`, one pool worker).
//!
//! A worker reads the action's description from the cache (local, then remote),
//! checks that it hashes to the key, and refuses when the action was described in
//! another environment (another c2i version, dtype, library versions: the key says
//! which environment the result belongs to, and a worker cannot compute another's).
//! It then computes the action exactly as the local executor does, stores the
//! result (signed when it has a signing key) and pushes it to the remote.

use crate::action::environment;
use crate::ctx::{Ctx, Found};
use crate::exec::{FailClass, WorkerReport};
use crate::EngineError;
use c2i_cache::Key;
use serde::Deserialize;
use std::io::{BufRead, Write};
use std::time::Instant;

/// Which failures are worth another try.
pub fn classify(e: &EngineError) -> FailClass {
    match e {
        EngineError::Action { .. } => FailClass::Action,
        EngineError::Refused(_)
        | EngineError::NoDescription { .. }
        | EngineError::UnknownStage { .. } => FailClass::Refused,
        _ => FailClass::Transient,
    }
}

fn refuse_other_environment(action: &crate::action::Action) -> Result<(), EngineError> {
    // The device and dtype are the action's to choose (a worker without the GPU build
    // fails on a CUDA action with its own error); the versions are not.
    let device =
        crate::action::DeviceSpec::of(action).map_err(|e| EngineError::Refused(e.to_string()))?;
    let mine = environment(&device);
    if action.env == mine {
        return Ok(());
    }
    let mut diffs = Vec::new();
    for k in mine.keys().chain(action.env.keys()) {
        let (a, w) = (action.env.get(k), mine.get(k));
        if a != w
            && !diffs
                .iter()
                .any(|d: &String| d.starts_with(&format!("{k}:")))
        {
            diffs.push(format!(
                "{k}: {} for the action, {} here",
                a.map_or("(none)", String::as_str),
                w.map_or("(none)", String::as_str)
            ));
        }
    }
    Err(EngineError::Refused(format!(
        "this worker (c2i {} on {}) will not compute {} {} (key {}): it was described in \
         another environment ({}); its result would not be the one its key names. Run the \
         coordinator's c2i build on the workers ([run.slurm] worker_command)",
        env!("CARGO_PKG_VERSION"),
        crate::ctx::hostname(),
        action.stage,
        action.instance,
        action.key(),
        diffs.join("; ")
    )))
}

/// Computes (or finds) the action with `key`; never panics, reports what happened.
pub fn run_key(ctx: &Ctx, key: &Key) -> WorkerReport {
    let started = Instant::now();
    let mut report = WorkerReport {
        key: key.to_hex(),
        stage: String::new(),
        instance: String::new(),
        outcome: String::new(),
        ok: false,
        error: None,
        class: None,
        host: ctx.host().to_string(),
        pid: std::process::id(),
        seconds: 0.0,
    };
    let result = (|| -> Result<String, EngineError> {
        let action = ctx.action_for(key)?;
        report.stage = action.stage.clone();
        report.instance = action.instance.clone();
        tracing::info!(
            "worker pid {} on {}: {} {} (key {})",
            std::process::id(),
            ctx.host(),
            action.stage,
            action.instance,
            key.short()
        );
        refuse_other_environment(&action)?;
        if crate::stages::def(&action.stage).is_none() {
            return Err(EngineError::UnknownStage {
                stage: action.stage.clone(),
                key: key.to_hex(),
            });
        }
        match ctx.find(&action)? {
            Found::Ready(_, outcome) => Ok(outcome.name().to_string()),
            Found::Missing(miss) => {
                ctx.compute(&action, &miss)?;
                Ok("computed".to_string())
            }
        }
    })();
    report.seconds = started.elapsed().as_secs_f64();
    match result {
        Ok(outcome) => {
            report.ok = true;
            report.outcome = outcome;
        }
        Err(e) => {
            tracing::error!("{e}");
            report.class = Some(classify(&e));
            report.error = Some(e.to_string());
        }
    }
    report
}

/// A request to a serving worker.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Request {
    /// Compute (or find) this key; answered with one [`WorkerReport`] line.
    Run(String),
    /// The layers the next evaluations are of (no answer).
    PrefixLayers(Vec<usize>),
}

/// Serves requests from `input` (one JSON object a line), answering on `output`, until
/// `input` ends.
pub fn serve(ctx: &Ctx, input: impl BufRead, mut output: impl Write) -> Result<(), EngineError> {
    let io = |source| EngineError::Io {
        path: "(worker stdio)".into(),
        source,
    };
    for line in input.lines() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        let req: Request = serde_json::from_str(&line)
            .map_err(|e| EngineError::Invalid(format!("worker request `{line}`: {e}")))?;
        match req {
            Request::PrefixLayers(l) => ctx.set_prefix_layers(l),
            Request::Run(k) => {
                let report = match Key::from_hex(&k) {
                    Ok(key) => run_key(ctx, &key),
                    Err(e) => WorkerReport {
                        key: k,
                        stage: String::new(),
                        instance: String::new(),
                        outcome: String::new(),
                        ok: false,
                        error: Some(e.to_string()),
                        class: Some(FailClass::Refused),
                        host: ctx.host().to_string(),
                        pid: std::process::id(),
                        seconds: 0.0,
                    },
                };
                let mut text = serde_json::to_string(&report)?;
                text.push('\n');
                output.write_all(text.as_bytes()).map_err(io)?;
                output.flush().map_err(io)?;
            }
        }
    }
    Ok(())
}
