//! Executors: where the stage instances a run must compute are computed.
//!
//! - [`local`]: in this process (the default);
//! - [`pool`]: `run.jobs` worker processes on this machine (`c2i worker serve`),
//!   sharing the cache directory;
//! - [`slurm`]: Slurm job arrays of `c2i worker run KEY`, through a shared cache.
//!
//! The runner hands an executor a wave of independent actions, every one missing
//! from the caches and described in the cache (so a worker can compute it from its
//! key); the executor returns each one's entry and where and how it ran. Results are
//! the same bytes whichever executor computes them: only the cache is shared.

pub mod local;
pub mod pool;
pub mod slurm;

use crate::action::Action;
use crate::ctx::{Ctx, Miss, RanOn};
use crate::spec::ExecutorKind;
use crate::EngineError;
use c2i_cache::ActionEntry;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A computed action.
pub struct Ran {
    pub entry: ActionEntry,
    pub on: RanOn,
}

/// Where actions are computed.
pub trait Executor {
    fn kind(&self) -> ExecutorKind;
    /// Computes every action of `todo` (independent of each other), returning their
    /// results in the same order, or the first failure that is not worth retrying.
    fn run(&mut self, ctx: &Ctx, todo: &[(Action, Miss)]) -> Result<Vec<Ran>, EngineError>;
    /// The layers the next evaluations are of (for layer-prefix reuse: speed only).
    fn hint_prefix_layers(&mut self, ctx: &Ctx, layers: &[usize]) {
        ctx.set_prefix_layers(layers.to_vec());
    }
    /// What the executor submitted (Slurm job arrays), for run.json.
    fn jobs(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// How a worker process reaches the cache, and what it trusts and signs: the
/// coordinator's own settings, passed on its command line.
#[derive(Debug, Clone, Default)]
pub struct WorkerConfig {
    pub cache: PathBuf,
    pub remote: Option<String>,
    pub endpoint: Option<String>,
    pub allow_http: bool,
    pub timeout_secs: Option<u64>,
    pub signing_key: Option<PathBuf>,
    pub trusted_keys: Vec<String>,
    pub push: bool,
    pub quiet: bool,
}

impl WorkerConfig {
    /// The `c2i worker` options that give a worker these settings.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec!["--cache".to_string(), self.cache.display().to_string()];
        match &self.remote {
            Some(r) => a.extend(["--remote".into(), r.clone()]),
            // An explicit "no remote", so C2I_CACHE_REMOTE on a node cannot add one.
            None => a.extend(["--remote".into(), String::new()]),
        }
        if let Some(e) = &self.endpoint {
            a.extend(["--endpoint".into(), e.clone()]);
        }
        if self.allow_http {
            a.push("--allow-http".into());
        }
        if let Some(t) = self.timeout_secs {
            a.extend(["--timeout-secs".into(), t.to_string()]);
        }
        if let Some(k) = &self.signing_key {
            a.extend(["--signing-key".into(), k.display().to_string()]);
        }
        if !self.trusted_keys.is_empty() {
            a.extend(["--trusted-keys".into(), self.trusted_keys.join(",")]);
        }
        if !self.push {
            a.push("--no-push".into());
        }
        if self.quiet {
            a.insert(0, "--quiet".into());
        }
        a
    }
}

/// Why a worker could not compute an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailClass {
    /// The stage itself failed (a malformed input...): it would fail again.
    Action,
    /// The worker refused (another c2i version or environment, no description).
    Refused,
    /// Anything else (I/O, the remote): worth another try.
    Transient,
}

impl FailClass {
    /// The worker's exit code for this failure.
    pub fn exit_code(self) -> i32 {
        match self {
            FailClass::Action => 3,
            FailClass::Refused => 4,
            FailClass::Transient => 1,
        }
    }

    /// From a worker's exit code (`None`: not a failure a worker reports).
    pub fn from_exit_code(code: i32) -> Option<FailClass> {
        match code {
            3 => Some(FailClass::Action),
            4 => Some(FailClass::Refused),
            0 => None,
            _ => Some(FailClass::Transient),
        }
    }

    /// Whether trying again could help.
    pub fn retryable(self) -> bool {
        self == FailClass::Transient
    }
}

/// What a worker reports for one action (a JSON line from `c2i worker serve`, a
/// report file from `c2i worker run --report`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerReport {
    pub key: String,
    pub stage: String,
    pub instance: String,
    /// `computed`, `hit` or `pulled` on success.
    pub outcome: String,
    pub ok: bool,
    pub error: Option<String>,
    pub class: Option<FailClass>,
    pub host: String,
    pub pid: u32,
    pub seconds: f64,
}

/// The entry a worker reported it stored: from the local cache (shared with the
/// worker), else from the remote (with the run's trust rules).
pub(crate) fn fetch_result(
    ctx: &Ctx,
    action: &Action,
    job: &str,
) -> Result<ActionEntry, EngineError> {
    use c2i_cache::Lookup;
    let key = action.key();
    if let Lookup::Hit(e) = ctx.store.lookup(&key)? {
        return Ok(e);
    }
    let why = match ctx.live_remote() {
        Some(r) => match ctx
            .store
            .pull_with(&key, r.backend(), ctx.trust().trusted.as_ref())
        {
            Ok(Lookup::Hit(e)) => return Ok(e),
            Ok(Lookup::Miss(m)) => format!("the remote has no usable copy ({m})"),
            Err(e) => format!("pulling it from the remote failed: {e}"),
        },
        None => "there is no remote to pull it from".into(),
    };
    Err(EngineError::Executor(format!(
        "{} {} (key {}): {job} reported it done, but it is not in the local cache and {why}; \
         are the workers using this cache ([run.slurm] worker_cache) or its remote?",
        action.stage,
        action.instance,
        key.short()
    )))
}

/// The last `n` lines of a log file (for error messages).
pub(crate) fn log_tail(path: &std::path::Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(b) => {
            let text = String::from_utf8_lossy(&b);
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(n);
            lines[start..]
                .iter()
                .map(|l| format!("    {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        }
        Err(e) => format!("    ({}: {e})", path.display()),
    }
}
