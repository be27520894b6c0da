//! Lock files: `PIPELINE.lock` beside a pipeline (like `Cargo.lock` or `dvc.lock`)
//! records what a complete run found: the c2i version and environment, every stage
//! instance's key and output digests, and the digest of every exported file.
//!
//! Keys are built from content, and every output is the same bytes whatever the
//! machine's thread count, so two machines running the same pipeline on the same
//! inputs write the same lock file. `c2i run --frozen` checks a run against it: it
//! fails, naming the stage and both digests, when a computed (or cached) output differs
//! from the lock, and when the pipeline asks for stage instances the lock does not
//! have (or no longer asks for some it has). A frozen run never writes the lock.

use crate::action::{environment, Action, DeviceSpec};
use crate::EngineError;
use c2i_cache::ActionEntry;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The lock file format.
pub const LOCK_FORMAT: u32 = 1;

/// One stage instance in a lock.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LockedStage {
    pub stage: String,
    pub instance: String,
    pub key: String,
    /// Output name -> BLAKE3 of its bytes.
    pub outputs: BTreeMap<String, String>,
}

/// A lock file's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lock {
    pub format: u32,
    /// The c2i version that wrote it.
    pub c2i: String,
    pub environment: BTreeMap<String, String>,
    /// Every stage instance of the run, sorted.
    #[serde(rename = "stage", default)]
    pub stages: Vec<LockedStage>,
    /// Exported file (relative to the output directory) -> BLAKE3.
    #[serde(default)]
    pub export: BTreeMap<String, String>,
}

/// `dir/name.toml` -> `dir/name.lock`.
pub fn lock_path(pipeline: &Path) -> PathBuf {
    pipeline.with_extension("lock")
}

fn locked(action: &Action, entry: &ActionEntry) -> LockedStage {
    LockedStage {
        stage: action.stage.clone(),
        instance: action.instance.clone(),
        key: action.key().to_hex(),
        outputs: entry
            .outputs
            .iter()
            .map(|(n, b)| (n.clone(), b.digest.to_hex()))
            .collect(),
    }
}

fn frozen(msg: String) -> EngineError {
    EngineError::Frozen(msg)
}

/// Collects a run's stage instances into a lock, or checks them against one.
pub struct LockBook {
    /// The lock checked against (`--frozen`), by key.
    frozen: Option<(PathBuf, Lock, BTreeMap<String, LockedStage>)>,
    seen: BTreeMap<String, LockedStage>,
    /// The run's environment (its device and dtype included).
    environment: BTreeMap<String, String>,
}

impl LockBook {
    /// A book that only collects.
    pub fn collect(device: &DeviceSpec) -> LockBook {
        LockBook {
            frozen: None,
            seen: BTreeMap::new(),
            environment: environment(device),
        }
    }

    /// A book that checks everything against the lock file at `path`.
    pub fn frozen(path: &Path, device: &DeviceSpec) -> Result<LockBook, EngineError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            frozen(format!(
                "--frozen needs {}: {e} (run once without --frozen to write it)",
                path.display()
            ))
        })?;
        let lock: Lock = toml::from_str(&text)
            .map_err(|e| frozen(format!("{}: not a c2i lock file: {e}", path.display())))?;
        if lock.format != LOCK_FORMAT {
            return Err(frozen(format!(
                "{}: lock format {}, this c2i reads format {LOCK_FORMAT}",
                path.display(),
                lock.format
            )));
        }
        let env = environment(device);
        if lock.environment != env {
            return Err(frozen(format!(
                "{}: written in environment {:?}, this run's is {:?}: its results would have \
                 other keys",
                path.display(),
                lock.environment,
                env
            )));
        }
        let by_key = lock
            .stages
            .iter()
            .map(|s| (s.key.clone(), s.clone()))
            .collect();
        Ok(LockBook {
            frozen: Some((path.to_path_buf(), lock, by_key)),
            seen: BTreeMap::new(),
            environment: env,
        })
    }

    /// Whether this book checks against a lock.
    pub fn is_frozen(&self) -> bool {
        self.frozen.is_some()
    }

    /// Before anything runs: every action of a wave must be in the lock.
    pub fn expect(&self, actions: &[Action]) -> Result<(), EngineError> {
        let Some((path, _, by_key)) = &self.frozen else {
            return Ok(());
        };
        for a in actions {
            if !by_key.contains_key(&a.key().to_hex()) {
                let same = by_key
                    .values()
                    .find(|s| s.stage == a.stage && s.instance == a.instance);
                return Err(frozen(format!(
                    "the pipeline no longer matches {}: {} {} has key {}, {}",
                    path.display(),
                    a.stage,
                    a.instance,
                    a.key(),
                    match same {
                        Some(s) =>
                            format!("the lock has {} (an input or parameter changed)", s.key),
                        None => "which the lock does not have".into(),
                    }
                )));
            }
        }
        Ok(())
    }

    /// After an action resolved: its outputs must be the locked ones.
    pub fn record(&mut self, action: &Action, entry: &ActionEntry) -> Result<(), EngineError> {
        let got = locked(action, entry);
        if let Some((path, _, by_key)) = &self.frozen {
            if let Some(want) = by_key.get(&got.key) {
                let names: BTreeSet<&String> =
                    want.outputs.keys().chain(got.outputs.keys()).collect();
                for n in names {
                    let (w, g) = (want.outputs.get(n), got.outputs.get(n));
                    if w != g {
                        return Err(frozen(format!(
                            "{} {} (key {}): output `{n}` is {}, {} has {}",
                            action.stage,
                            action.instance,
                            action.key().short(),
                            g.map_or("missing", String::as_str),
                            path.display(),
                            w.map_or("none", String::as_str)
                        )));
                    }
                }
            }
        }
        self.seen.insert(got.key.clone(), got);
        Ok(())
    }

    /// At the end of a complete run: the lock (for writing), or, when frozen, the
    /// check that nothing locked went unused and the export is the locked one.
    pub fn finish(&self, export: BTreeMap<String, String>) -> Result<Lock, EngineError> {
        let lock = Lock {
            format: LOCK_FORMAT,
            c2i: env!("CARGO_PKG_VERSION").to_string(),
            environment: self.environment.clone(),
            stages: self
                .seen
                .values()
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            export,
        };
        if let Some((path, want, by_key)) = &self.frozen {
            if let Some(s) = by_key.values().find(|s| !self.seen.contains_key(&s.key)) {
                return Err(frozen(format!(
                    "the pipeline no longer matches {}: it did not ask for {} {} (key {}), which the lock has",
                    path.display(),
                    s.stage,
                    s.instance,
                    s.key
                )));
            }
            let names: BTreeSet<&String> = want.export.keys().chain(lock.export.keys()).collect();
            for n in names {
                let (w, g) = (want.export.get(n), lock.export.get(n));
                if w != g {
                    return Err(frozen(format!(
                        "exported {n} is {}, {} has {}",
                        g.map_or("missing", String::as_str),
                        path.display(),
                        w.map_or("none", String::as_str)
                    )));
                }
            }
        }
        Ok(lock)
    }
}

/// Writes a lock file (atomically).
pub fn write(path: &Path, lock: &Lock) -> Result<(), EngineError> {
    let text = toml::to_string(lock)
        .map_err(|e| EngineError::Invalid(format!("cannot write {}: {e}", path.display())))?;
    let header = "# Written by `c2i run`: the stage instances of the last complete run and their \
                  output digests.\n# `c2i run --frozen` fails when a run's outputs differ from it.\n";
    crate::runner::write_atomic(path, format!("{header}{text}").as_bytes())
}
