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
//!
//! A plain run writes the lock when there is none, or when its stage instances differ
//! from the lock's (the pipeline or its inputs changed). When the same stage instances
//! gave other bytes ([`LockChange::Outputs`]: this machine does not reproduce the lock),
//! the lock is left as it was and the run says so; `c2i run --update-lock` replaces it.

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

/// How a complete run's lock compares with the one already beside the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockChange {
    /// The same lock: nothing to write.
    Same,
    /// Other stage instances (a parameter, an input, the environment or c2i changed):
    /// the new lock replaces the old.
    Inputs,
    /// A stage instance with the same key gave other bytes here (another CPU or
    /// library, or a non-reproducible stage), or the same stages exported other files:
    /// the first difference, said.
    Outputs(String),
}

/// Compares the lock `old` with a run's lock `new` (see [`LockChange`]).
pub fn compare(old: &Lock, new: &Lock) -> LockChange {
    if old == new {
        return LockChange::Same;
    }
    let old_by_key: BTreeMap<&str, &LockedStage> =
        old.stages.iter().map(|s| (s.key.as_str(), s)).collect();
    for s in &new.stages {
        if let Some(o) = old_by_key.get(s.key.as_str()) {
            let names: BTreeSet<&String> = o.outputs.keys().chain(s.outputs.keys()).collect();
            for n in names {
                let (was, now) = (o.outputs.get(n), s.outputs.get(n));
                if was != now {
                    return LockChange::Outputs(format!(
                        "{} {} (key {}): output `{n}` is {} here, the lock has {}",
                        s.stage,
                        s.instance,
                        &s.key[..s.key.len().min(12)],
                        now.map_or("missing", |d| &d[..d.len().min(12)]),
                        was.map_or("none", |d| &d[..d.len().min(12)]),
                    ));
                }
            }
        }
    }
    let keys = |l: &Lock| {
        l.stages
            .iter()
            .map(|s| s.key.clone())
            .collect::<BTreeSet<_>>()
    };
    if old.c2i == new.c2i && old.environment == new.environment && keys(old) == keys(new) {
        if let Some((n, now)) = new
            .export
            .iter()
            .find(|(n, d)| old.export.get(*n) != Some(d))
        {
            return LockChange::Outputs(format!(
                "exported {n} is {} here, the lock has {}",
                &now[..now.len().min(12)],
                old.export.get(n).map_or("none", |d| &d[..d.len().min(12)])
            ));
        }
        if let Some(n) = old.export.keys().find(|n| !new.export.contains_key(*n)) {
            return LockChange::Outputs(format!("{n} is no longer exported"));
        }
    }
    LockChange::Inputs
}

/// Reads a lock file; `None` when there is none or it is not a lock this c2i reads.
pub fn read(path: &Path) -> Option<Lock> {
    let text = std::fs::read_to_string(path).ok()?;
    toml::from_str::<Lock>(&text)
        .ok()
        .filter(|l| l.format == LOCK_FORMAT)
}

/// Writes a lock file (atomically).
pub fn write(path: &Path, lock: &Lock) -> Result<(), EngineError> {
    let text = toml::to_string(lock)
        .map_err(|e| EngineError::Invalid(format!("cannot write {}: {e}", path.display())))?;
    let header = "# Written by `c2i run`: the stage instances of the last complete run and their \
                  output digests.\n# `c2i run --frozen` fails when a run's outputs differ from it.\n";
    crate::runner::write_atomic(path, format!("{header}{text}").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(stage: &str, key: &str, out: &str) -> LockedStage {
        LockedStage {
            stage: stage.into(),
            instance: "all".into(),
            key: key.into(),
            outputs: BTreeMap::from([("out".to_string(), out.to_string())]),
        }
    }

    fn lock(stages: Vec<LockedStage>, export: &str) -> Lock {
        Lock {
            format: LOCK_FORMAT,
            c2i: "0.1.0".into(),
            environment: BTreeMap::new(),
            stages,
            export: BTreeMap::from([("model/model.safetensors".to_string(), export.into())]),
        }
    }

    #[test]
    fn a_lock_is_replaced_when_its_inputs_change_and_kept_when_its_outputs_do() {
        let old = lock(
            vec![
                stage("gradients", "k1", "g1"),
                stage("sv-grads", "k2", "s1"),
            ],
            "e1",
        );
        assert_eq!(compare(&old, &old.clone()), LockChange::Same);
        // Same gradient key, other bytes (another CPU): the sv-grads' key follows the
        // gradients' digest, but the first difference is an output.
        let other_cpu = lock(
            vec![
                stage("gradients", "k1", "g2"),
                stage("sv-grads", "k3", "s2"),
            ],
            "e1",
        );
        match compare(&old, &other_cpu) {
            LockChange::Outputs(why) => {
                assert!(why.contains("gradients") && why.contains("g2"), "{why}")
            }
            c => panic!("{c:?}"),
        }
        // Same stages, another export.
        match compare(&old, &lock(old.stages.clone(), "e2")) {
            LockChange::Outputs(why) => assert!(why.contains("model.safetensors"), "{why}"),
            c => panic!("{c:?}"),
        }
        // A parameter changed: other keys, no shared key with other bytes.
        let edited = lock(
            vec![
                stage("gradients", "k9", "g9"),
                stage("sv-grads", "k8", "s8"),
            ],
            "e9",
        );
        assert_eq!(compare(&old, &edited), LockChange::Inputs);
        let mut newer = old.clone();
        newer.c2i = "0.2.0".into();
        newer.export.clear();
        assert_eq!(compare(&old, &newer), LockChange::Inputs);
    }
}
