//! What the stages share while a process runs: the on-disk store, the stat cache,
//! loaded resources (weights, data, gradients) kept in memory, and the log of which
//! stage instances ran and how.

use crate::EngineError;
use c2i_cache::{
    ActionEntry, Blob, BlobRef, CacheError, Digest, KeyParts, Lookup, StatCache, Store,
};
use c2i_stages::data::{self, Example, Task};
use c2i_stages::model::{LoadedModel, Weights};
use serde::Serialize;
use std::any::Any;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// How one stage instance was satisfied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Found in the on-disk cache.
    Hit,
    /// Computed (and stored).
    Computed,
    /// Reused from this process's memory (an earlier variant of a sweep).
    Memo,
}

/// One line of `run.json`: a stage instance, its key, how it was satisfied, how long.
#[derive(Debug, Clone, Serialize)]
pub struct StageRecord {
    pub stage: String,
    /// What the instance is about (matrix, K, candidate...).
    pub instance: String,
    pub key: String,
    pub outcome: Outcome,
    pub seconds: f64,
}

/// Progress callbacks for long stages (the CLI shows bars; tests pass nothing).
pub trait Progress: Send + Sync {
    /// A long stage starts: `total` units of work.
    fn start(&self, _stage: &str, _total: u64) {}
    /// `done` units finished.
    fn advance(&self, _done: u64) {}
    fn finish(&self) {}
}

/// No progress output.
pub struct Silent;
impl Progress for Silent {}

/// Forwards to the caller's [`Progress`] and also logs each step at debug level under
/// the target `c2i::progress` (`C2I_LOG=c2i::progress=debug`), so that scripts and the
/// fault tests can see where a run is without a terminal.
struct Traced {
    inner: Box<dyn Progress>,
    stage: Mutex<String>,
}

impl Progress for Traced {
    fn start(&self, stage: &str, total: u64) {
        if let Ok(mut s) = self.stage.lock() {
            *s = stage.to_string();
        }
        tracing::debug!(target: "c2i::progress", stage, total, "progress start");
        self.inner.start(stage, total);
    }
    fn advance(&self, done: u64) {
        let stage = self.stage.lock().map(|s| s.clone()).unwrap_or_default();
        tracing::debug!(target: "c2i::progress", stage = %stage, done, "progress");
        self.inner.advance(done);
    }
    fn finish(&self) {
        self.inner.finish();
    }
}

/// The shared state of an engine process.
pub struct Ctx {
    pub store: Store,
    stat: Mutex<StatCache>,
    memo: Mutex<HashMap<String, Arc<dyn Any + Send + Sync>>>,
    log: Mutex<Vec<StageRecord>>,
    prefix_layers: Mutex<Vec<usize>>,
    /// Blobs whose hash this process has checked on read.
    verified: Mutex<HashSet<Digest>>,
    pub progress: Box<dyn Progress>,
}

impl Ctx {
    pub fn new(cache_dir: &Path, progress: Box<dyn Progress>) -> Result<Ctx, EngineError> {
        let store = Store::open(cache_dir)?;
        let stat = store.stat_cache();
        Ok(Ctx {
            store,
            stat: Mutex::new(stat),
            memo: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
            prefix_layers: Mutex::new(Vec::new()),
            verified: Mutex::new(HashSet::new()),
            progress: Box::new(Traced {
                inner: progress,
                stage: Mutex::new(String::new()),
            }),
        })
    }

    /// BLAKE3 of a file (or of every file of a directory, in name order), through the
    /// stat cache so an unchanged file is not rehashed.
    pub fn digest_path(&self, path: &Path) -> Result<Digest, EngineError> {
        let mut stat = self.stat.lock().map_err(|_| EngineError::Poisoned)?;
        let digest = if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|source| EngineError::Io {
                    path: path.to_path_buf(),
                    source,
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            let mut h = blake3::Hasher::new();
            for f in files {
                let d = stat.digest_file(&f)?;
                h.update(
                    f.file_name()
                        .map(|n| n.as_encoded_bytes())
                        .unwrap_or_default(),
                );
                h.update(d.digest.as_bytes());
            }
            Digest::from(h.finalize())
        } else {
            stat.digest_file(path)?.digest
        };
        stat.save()?;
        Ok(digest)
    }

    /// A value computed once per process and shared (weights, examples, gradients).
    pub fn memo<T: Any + Send + Sync>(
        &self,
        key: &str,
        make: impl FnOnce() -> Result<T, EngineError>,
    ) -> Result<Arc<T>, EngineError> {
        if let Some(v) = self
            .memo
            .lock()
            .map_err(|_| EngineError::Poisoned)?
            .get(key)
        {
            if let Ok(v) = v.clone().downcast::<T>() {
                return Ok(v);
            }
        }
        let v = Arc::new(make()?);
        self.memo
            .lock()
            .map_err(|_| EngineError::Poisoned)?
            .insert(key.to_string(), v.clone());
        Ok(v)
    }

    /// The loaded model of a file.
    pub fn model(&self, path: &Path, digest: &Digest) -> Result<Arc<LoadedModel>, EngineError> {
        self.memo(&format!("model:{}", digest.to_hex()), || {
            tracing::info!(path = %path.display(), "loading model");
            Ok(Weights::load(path)?)
        })
    }

    /// The examples of a data file.
    pub fn examples(
        &self,
        task: Task,
        path: &Path,
        digest: &Digest,
    ) -> Result<Arc<Vec<Example>>, EngineError> {
        self.memo(&format!("data:{}:{}", task.name(), digest.to_hex()), || {
            Ok(data::load(task, path)?)
        })
    }

    /// Looks `parts` up on disk, or computes the outputs with `compute`, stores them and
    /// the entry, and logs the outcome. `compute` returns named output bytes and metadata.
    pub fn get_or_compute(
        &self,
        parts: &KeyParts,
        instance: &str,
        compute: impl FnOnce() -> Result<(BTreeMap<String, Vec<u8>>, serde_json::Value), EngineError>,
    ) -> Result<ActionEntry, EngineError> {
        let key = parts.key();
        let started = Instant::now();
        match self.store.lookup(&key)? {
            Lookup::Hit(entry) => {
                self.record(&parts.stage, instance, &key.to_hex(), Outcome::Hit, started);
                Ok(entry)
            }
            Lookup::Miss(reason) => {
                tracing::debug!(stage = %parts.stage, instance, ?reason, "cache miss");
                // A stable line at the start and end of every computed stage instance
                // (`C2I_LOG=c2i::stage=debug`): where a run is, for scripts and tests.
                tracing::debug!(target: "c2i::stage", stage = %parts.stage, instance, "computing");
                let (outputs, metadata) = compute()?;
                let mut refs: BTreeMap<String, BlobRef> = BTreeMap::new();
                for (name, bytes) in outputs {
                    refs.insert(name, self.store.put_bytes(&bytes)?);
                }
                let entry = self.store.put_entry(parts, refs, metadata)?;
                tracing::debug!(target: "c2i::stage", stage = %parts.stage, instance, "stored");
                self.record(
                    &parts.stage,
                    instance,
                    &key.to_hex(),
                    Outcome::Computed,
                    started,
                );
                Ok(entry)
            }
        }
    }

    /// Opens output `name` of a cached `entry` for reading. Lookups check only that
    /// blobs exist with the right size, so the bytes a stage is about to consume are
    /// rehashed here, once per blob per process (a flipped bit would otherwise flow
    /// silently into scores and evaluations). A blob that is missing, of the wrong size
    /// or of the wrong hash is [`EngineError::DamagedOutput`]; a damaged file is removed
    /// first, so that a lookup of its entry misses and the producing stage recomputes it
    /// (`put_bytes` keeps an existing file of the right size, so without the removal a
    /// same-size corruption would never heal).
    pub fn read_output(&self, entry: &ActionEntry, name: &str) -> Result<Blob, EngineError> {
        let r = entry.outputs.get(name).ok_or_else(|| {
            EngineError::Corrupt(format!("entry {} has no output `{name}`", entry.key))
        })?;
        let known_good = self
            .verified
            .lock()
            .map(|v| v.contains(&r.digest))
            .unwrap_or(false);
        let damaged = |detail: String| EngineError::DamagedOutput {
            stage: entry.stage.clone(),
            key: entry.key.to_hex(),
            output: name.to_string(),
            detail,
        };
        match self.store.get(r, !known_good) {
            Ok(blob) => {
                if let Ok(mut v) = self.verified.lock() {
                    v.insert(r.digest);
                }
                Ok(blob)
            }
            Err(e @ (CacheError::CorruptBlob { .. } | CacheError::BlobSize { .. })) => {
                let path = self.store.blob_path(&r.digest);
                tracing::warn!(
                    stage = %entry.stage,
                    output = name,
                    path = %path.display(),
                    "damaged cached blob: {e}; removing it so it is recomputed"
                );
                if let Err(rm) = std::fs::remove_file(&path) {
                    if rm.kind() != std::io::ErrorKind::NotFound {
                        return Err(EngineError::Io { path, source: rm });
                    }
                }
                Err(damaged(e.to_string()))
            }
            Err(e @ CacheError::MissingBlob { .. }) => Err(damaged(e.to_string())),
            Err(e) => Err(e.into()),
        }
    }

    fn record(&self, stage: &str, instance: &str, key: &str, outcome: Outcome, started: Instant) {
        if let Ok(mut log) = self.log.lock() {
            log.push(StageRecord {
                stage: stage.to_string(),
                instance: instance.to_string(),
                key: key.to_string(),
                outcome,
                seconds: started.elapsed().as_secs_f64(),
            });
        }
    }

    /// The layers whose input hidden states evaluations keep for prefix reuse (the
    /// layers of this run's candidates).
    pub fn set_prefix_layers(&self, layers: Vec<usize>) {
        if let Ok(mut l) = self.prefix_layers.lock() {
            *l = layers;
        }
    }

    pub fn prefix_layers(&self) -> Vec<usize> {
        self.prefix_layers
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    /// Number of records so far (a variant's records start here).
    pub fn log_len(&self) -> usize {
        self.log.lock().map(|l| l.len()).unwrap_or(0)
    }

    /// Records from `start` on.
    pub fn log_since(&self, start: usize) -> Vec<StageRecord> {
        self.log
            .lock()
            .map(|l| l[start.min(l.len())..].to_vec())
            .unwrap_or_default()
    }
}
