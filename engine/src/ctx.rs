//! What the stages share while a process runs: the on-disk store, the stat cache,
//! loaded resources (weights, data, gradients) kept in memory, and the log of which
//! stage instances ran and how.

use crate::EngineError;
use c2i_cache::{
    ActionEntry, Blob, BlobRef, CacheError, Digest, KeyParts, Lookup, MissReason, RemoteBackend,
    StatCache, Store,
};
use c2i_stages::data::{self, Dataset, Task};
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
    /// Missing locally, fetched from the remote cache (every blob rehashed).
    Pulled,
    /// The remote had it, but a blob failed its hash or size (or the entry its
    /// checks): rejected, and computed here instead.
    #[serde(rename = "remote-rejected")]
    RemoteRejected,
}

impl Outcome {
    /// The name used in run.json and on the console.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Computed => "computed",
            Outcome::Memo => "memo",
            Outcome::Pulled => "pulled",
            Outcome::RemoteRejected => "remote-rejected",
        }
    }
}

/// The remote cache of a run and what happened with it (run.json's `remote`).
pub struct Remote {
    backend: Box<dyn RemoteBackend>,
    state: Mutex<RemoteSummary>,
}

/// What a run did with its remote cache.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RemoteSummary {
    pub url: String,
    /// `ok`, or why the remote was given up (the first failure to reach it; the run
    /// then goes on with the local cache only).
    pub status: String,
    pub pulled_entries: u64,
    pub pushed_entries: u64,
    pub uploaded_blobs: u64,
    pub uploaded_bytes: u64,
    /// Remote blobs found damaged and overwritten with verified local bytes.
    pub repaired_blobs: u64,
    /// Stage instances whose remote copy was rejected, with the reason.
    pub rejected: Vec<String>,
}

impl Remote {
    pub fn new(backend: Box<dyn RemoteBackend>) -> Remote {
        let url = backend.describe();
        Remote {
            backend,
            state: Mutex::new(RemoteSummary {
                url,
                status: "ok".into(),
                ..RemoteSummary::default()
            }),
        }
    }

    fn up(&self) -> bool {
        self.state.lock().map(|s| s.status == "ok").unwrap_or(false)
    }

    fn update(&self, f: impl FnOnce(&mut RemoteSummary)) {
        if let Ok(mut s) = self.state.lock() {
            f(&mut s);
        }
    }

    /// Stops using the remote for the rest of the run, with one warning.
    fn give_up(&self, e: &c2i_cache::CacheError) {
        let url = self.backend.describe();
        tracing::warn!(
            "remote cache {url} failed: {e}; going on with the local cache only \
             (nothing more is pulled from or pushed to it in this run)"
        );
        self.update(|s| s.status = format!("unreachable: {e}"));
    }

    pub fn summary(&self) -> RemoteSummary {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }
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
    /// Why a remote copy was rejected, when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
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
    remote: Option<Remote>,
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
            remote: None,
        })
    }

    /// Reads through and writes back to `remote` (see [`Ctx::get_or_compute`]).
    pub fn with_remote(mut self, remote: Option<Box<dyn RemoteBackend>>) -> Ctx {
        self.remote = remote.map(Remote::new);
        self
    }

    /// What the run did with its remote, if it has one.
    pub fn remote_summary(&self) -> Option<RemoteSummary> {
        self.remote.as_ref().map(Remote::summary)
    }

    fn live_remote(&self) -> Option<&Remote> {
        self.remote.as_ref().filter(|r| r.up())
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

    /// The device of `exec`, created once per process (tensors of two CUDA device
    /// handles do not mix).
    pub fn device(
        &self,
        exec: &crate::keys::Exec,
    ) -> Result<Arc<candle_core::Device>, EngineError> {
        self.memo(&format!("device:{}", exec.device), || {
            match exec.cuda_ordinal() {
                None => Ok(candle_core::Device::Cpu),
                Some(n) => candle_core::Device::new_cuda(n).map_err(|e| {
                    EngineError::Invalid(format!(
                        "run.device {}: {e} (a GPU run needs a c2i built with `--features cuda` \
                         and a CUDA driver)",
                        exec.device
                    ))
                }),
            }
        })
    }

    /// The model's weights on `exec`'s device in its dtype (the loaded weights
    /// themselves on the CPU in f32).
    pub fn weights_on(
        &self,
        path: &Path,
        digest: &Digest,
        exec: &crate::keys::Exec,
    ) -> Result<Arc<Weights>, EngineError> {
        let loaded = self.model(path, digest)?;
        self.memo(
            &format!("weights:{}:{}:{}", digest.to_hex(), exec.device, exec.dtype),
            || {
                if exec.is_cpu() {
                    return Ok(loaded.weights.clone());
                }
                let dev = self.device(exec)?;
                Ok(loaded.weights.to_device(&dev, exec.dtype())?)
            },
        )
    }

    /// A data file read for a task (keyed by the task's and the file's content).
    pub fn examples(
        &self,
        task: &Task,
        path: &Path,
        digest: &Digest,
    ) -> Result<Arc<Dataset>, EngineError> {
        self.memo(
            &format!("data:{}:{}", task.digest(), digest.to_hex()),
            || Ok(data::load(task, path)?),
        )
    }

    /// Looks `parts` up on disk; on a miss pulls it from the remote cache if there is
    /// one (every blob rehashed; a damaged remote copy is rejected with a warning and
    /// recomputed), else computes the outputs with `compute`, stores them and the
    /// entry, and pushes them to the remote. Logs the outcome. A remote that cannot be
    /// reached is given up for the rest of the run with one warning; the run goes on.
    pub fn get_or_compute(
        &self,
        parts: &KeyParts,
        instance: &str,
        compute: impl FnOnce() -> Result<(BTreeMap<String, Vec<u8>>, serde_json::Value), EngineError>,
    ) -> Result<ActionEntry, EngineError> {
        let key = parts.key();
        let started = Instant::now();
        let reason = match self.store.lookup(&key)? {
            Lookup::Hit(entry) => {
                self.record(parts, instance, Outcome::Hit, None, started);
                return Ok(entry);
            }
            Lookup::Miss(reason) => reason,
        };
        tracing::debug!(stage = %parts.stage, instance, ?reason, "cache miss");
        let mut outcome = Outcome::Computed;
        let mut note = None;
        let mut bad_blob = None;
        if let Some(r) = self.live_remote() {
            match self.store.pull(&key, r.backend.as_ref()) {
                Ok(Lookup::Hit(entry)) => {
                    r.update(|s| s.pulled_entries += 1);
                    self.record(parts, instance, Outcome::Pulled, None, started);
                    return Ok(entry);
                }
                Ok(Lookup::Miss(MissReason::NoEntry)) => {}
                Ok(Lookup::Miss(why)) => {
                    tracing::warn!(
                        "remote cache {}: {} {instance} is incomplete there ({why}); computing it",
                        r.backend.describe(),
                        parts.stage
                    );
                    note = Some(format!("incomplete on the remote: {why}"));
                }
                Err(e) if e.is_corruption() => {
                    tracing::warn!(
                        "remote cache {}: rejected {} {instance}: {e}; computing it here",
                        r.backend.describe(),
                        parts.stage
                    );
                    let text = e.to_string();
                    r.update(|s| {
                        s.rejected
                            .push(format!("{} {instance} ({}): {text}", parts.stage, key))
                    });
                    outcome = Outcome::RemoteRejected;
                    note = Some(text);
                    bad_blob = e.corrupt_blob();
                }
                Err(e) => r.give_up(&e),
            }
        }
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
        if let Some(r) = self.live_remote() {
            self.push(r, &entry, bad_blob);
        }
        self.record(parts, instance, outcome, note, started);
        Ok(entry)
    }

    /// Writes a computed entry back to the remote (blobs first). `bad_blob`: a blob
    /// whose remote copy failed its hash on the way in; if this entry has the same
    /// blob (the stage is deterministic), the damaged remote copy is overwritten.
    fn push(&self, r: &Remote, entry: &ActionEntry, bad_blob: Option<Digest>) {
        let backend = r.backend.as_ref();
        match self.store.push(&entry.key, backend) {
            Ok(rep) => r.update(|s| {
                s.pushed_entries += u64::from(rep.entry_uploaded);
                s.uploaded_blobs += rep.uploaded_blobs.len() as u64;
                s.uploaded_bytes += rep.uploaded_bytes;
                s.repaired_blobs += rep.repaired_blobs.len() as u64;
            }),
            Err(e) if e.is_corruption() => {
                tracing::warn!("not pushing {}: {e}", entry.key);
                return;
            }
            Err(e) => {
                r.give_up(&e);
                return;
            }
        }
        let Some(d) = bad_blob else { return };
        if !entry.outputs.values().any(|b| b.digest == d) {
            tracing::warn!(
                "remote cache {}: the damaged blob {} is not what this run computed, so it \
                 stays there (other runs will reject it too)",
                backend.describe(),
                d.short()
            );
            return;
        }
        match self.store.repair_remote_blob(&d, backend) {
            Ok(()) => r.update(|s| s.repaired_blobs += 1),
            Err(e) if e.is_corruption() => tracing::warn!("cannot repair remote blob: {e}"),
            Err(e) => r.give_up(&e),
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

    fn record(
        &self,
        parts: &KeyParts,
        instance: &str,
        outcome: Outcome,
        note: Option<String>,
        started: Instant,
    ) {
        if let Ok(mut log) = self.log.lock() {
            log.push(StageRecord {
                stage: parts.stage.clone(),
                instance: instance.to_string(),
                key: parts.key().to_hex(),
                outcome,
                seconds: started.elapsed().as_secs_f64(),
                note,
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
