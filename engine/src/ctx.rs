//! What an engine process works with: the on-disk store and its remote, what to trust
//! and sign, the resources it keeps loaded, the actions it knows, and the log of how
//! each stage instance was satisfied.
//!
//! [`Ctx::find`] looks an action up (this process's memory, the local store, the
//! remote); [`Ctx::compute`] runs its stage's body here, stores (and signs) the result
//! and pushes it. Executors decide where `compute` runs; workers call it too.

use crate::action::{Action, DeviceSpec, Input};
use crate::loaded::Loaded;
use crate::{stages, EngineError};
use c2i_cache::{
    ActionEntry, Blob, BlobRef, CacheError, Digest, Key, Lookup, MissReason, PutEntry,
    RemoteBackend, SigningKey, StatCache, Store, TrustedKeys,
};
use c2i_stages::data::{self, Dataset, Task};
use c2i_stages::model::{LoadedModel, MatrixId, Weights};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub use c2i_stages::export::schema::{Outcome, StageRecord};

/// The remote cache of a run and what happened with it (run.json's `remote`).
pub struct Remote {
    backend: Box<dyn RemoteBackend>,
    url: String,
    state: Mutex<RemoteSummary>,
}

/// What a run did with its remote cache.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RemoteSummary {
    pub url: String,
    /// `ok`, or why the remote was given up (the first failure to reach it; the run
    /// then goes on with the local cache only).
    pub status: String,
    /// Whether remote entries had to be signed by a trusted key.
    pub authenticated: bool,
    /// Whether the run wrote to the remote (`[cache] push`).
    pub push: bool,
    pub pulled_entries: u64,
    pub pushed_entries: u64,
    pub uploaded_blobs: u64,
    pub uploaded_bytes: u64,
    /// Remote blobs found damaged and overwritten with verified local bytes.
    pub repaired_blobs: u64,
    /// Stage instances whose remote copy was rejected, with the reason.
    pub rejected: Vec<String>,
    /// Stage instances whose remote copy was not signed by a trusted key.
    pub untrusted: Vec<String>,
}

impl Remote {
    pub fn new(backend: Box<dyn RemoteBackend>) -> Remote {
        let url = backend.describe();
        Remote {
            state: Mutex::new(RemoteSummary {
                url: url.clone(),
                status: "ok".into(),
                ..RemoteSummary::default()
            }),
            backend,
            url,
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
    fn give_up(&self, e: &CacheError) {
        tracing::warn!(
            "remote cache {} failed: {e}; going on with the local cache only \
             (nothing more is pulled from or pushed to it in this run)",
            self.url
        );
        self.update(|s| s.status = format!("unreachable: {e}"));
    }

    pub fn summary(&self) -> RemoteSummary {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn backend(&self) -> &dyn RemoteBackend {
        self.backend.as_ref()
    }
}

/// What to trust and sign.
#[derive(Debug, Default)]
pub struct Trust {
    /// Signs every entry this process writes.
    pub signing_key: Option<SigningKey>,
    /// When set (non-empty), remote entries are used only if signed by one of these.
    pub trusted: Option<TrustedKeys>,
    /// Whether computed entries (and descriptions) are written to the remote.
    pub push: bool,
}

/// Where and how a computed instance ran, for its [`StageRecord`].
#[derive(Debug, Clone, Default)]
pub struct RanOn {
    pub executor: String,
    pub host: String,
    pub job: Option<String>,
    pub attempts: u32,
    /// Seconds the computation took where it ran.
    pub seconds: Option<f64>,
}

/// Progress callbacks for long stages (the CLI shows bars; tests pass nothing).
pub trait Progress: Send + Sync {
    /// A long stage starts: `total` units of work.
    fn start(&self, _stage: &str, _total: u64) {}
    /// `done` units finished.
    fn advance(&self, _done: u64) {}
    fn finish(&self) {}
    /// A wave of `total` stage instances starts.
    fn wave(&self, _total: usize) {}
    /// A stage instance of the wave is done: found (`hit`, `memo`, `pulled`) or
    /// computed, in `seconds`.
    fn instance(&self, _stage: &str, _instance: &str, _outcome: &str, _seconds: f64) {}
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
    fn wave(&self, total: usize) {
        self.inner.wave(total);
    }
    fn instance(&self, stage: &str, instance: &str, outcome: &str, seconds: f64) {
        self.inner.instance(stage, instance, outcome, seconds);
    }
}

/// What [`Ctx::find`] found.
pub enum Found {
    /// Usable, with how it was found (memo, hit or pulled).
    Ready(Arc<ActionEntry>, Outcome),
    /// Must be computed.
    Missing(Miss),
}

/// Why an action must be computed, for its record.
#[derive(Debug, Clone)]
pub struct Miss {
    /// `computed`, or `remote-rejected` / `remote-untrusted` when the remote had a copy
    /// that was not used.
    pub outcome: Outcome,
    pub note: Option<String>,
    /// A remote blob that failed its hash (overwritten if the recomputation makes it).
    pub bad_blob: Option<Digest>,
    /// A local entry exists but is unusable: replace it.
    pub replace: bool,
}

/// The name of this machine.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// The shared state of an engine process.
pub struct Ctx {
    pub store: Store,
    stat: Mutex<StatCache>,
    pub loaded: Loaded,
    log: Mutex<Vec<StageRecord>>,
    prefix_layers: Mutex<Vec<usize>>,
    /// Blobs whose hash this process has checked on read.
    verified: Mutex<HashSet<Digest>>,
    pub progress: Box<dyn Progress>,
    remote: Option<Remote>,
    trust: Trust,
    /// Entries this process resolved, by key (content-addressed, so always valid).
    resolved: Mutex<HashMap<Key, Arc<ActionEntry>>>,
    /// Actions this process planned, by key (to rerun an upstream whose blob is lost).
    planned: Mutex<HashMap<Key, Action>>,
    host: String,
    /// Freed activation memory stays in the process while a context lives: without it
    /// glibc maps and zeroes fresh pages for large activations of every evaluation.
    _heap: c2i_stages::model::ops::alloc::RetainHeap,
}

impl Ctx {
    pub fn new(cache_dir: &Path, progress: Box<dyn Progress>) -> Result<Ctx, EngineError> {
        let store = Store::open(cache_dir)?;
        let stat = store.stat_cache();
        Ok(Ctx {
            store,
            stat: Mutex::new(stat),
            loaded: Loaded::default(),
            log: Mutex::new(Vec::new()),
            prefix_layers: Mutex::new(Vec::new()),
            verified: Mutex::new(HashSet::new()),
            progress: Box::new(Traced {
                inner: progress,
                stage: Mutex::new(String::new()),
            }),
            remote: None,
            trust: Trust {
                push: true,
                ..Trust::default()
            },
            resolved: Mutex::new(HashMap::new()),
            planned: Mutex::new(HashMap::new()),
            host: hostname(),
            _heap: c2i_stages::model::ops::alloc::RetainHeap::new(),
        })
    }

    /// Reads through and writes back to `remote` (see [`Ctx::find`], [`Ctx::compute`]).
    pub fn with_remote(mut self, remote: Option<Box<dyn RemoteBackend>>) -> Ctx {
        self.remote = remote.map(Remote::new);
        self.sync_summary();
        self
    }

    /// What to sign, trust and push.
    pub fn with_trust(mut self, trust: Trust) -> Ctx {
        self.trust = trust;
        self.sync_summary();
        self
    }

    fn sync_summary(&self) {
        let auth = self.trusted().is_some();
        let push = self.trust.push;
        if let Some(r) = &self.remote {
            r.update(|s| {
                s.authenticated = auth;
                s.push = push;
            });
        }
    }

    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    fn trusted(&self) -> Option<&TrustedKeys> {
        self.trust.trusted.as_ref().filter(|t| !t.is_empty())
    }

    /// What the run did with its remote, if it has one.
    pub fn remote_summary(&self) -> Option<RemoteSummary> {
        self.remote.as_ref().map(Remote::summary)
    }

    /// The remote, if there is one and it has not been given up.
    pub fn live_remote(&self) -> Option<&Remote> {
        self.remote.as_ref().filter(|r| r.up())
    }

    /// Whether a remote is configured (even if it was given up).
    pub fn has_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// This machine's name.
    pub fn host(&self) -> &str {
        &self.host
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

    // ---- actions known to this process --------------------------------------------

    /// Remembers `action` and stores its description (once) so that any process with
    /// the cache can compute it from its key.
    pub fn plan(&self, action: &Action) -> Result<(), EngineError> {
        let key = action.key();
        let mut planned = self.planned.lock().map_err(|_| EngineError::Poisoned)?;
        if planned.contains_key(&key) {
            return Ok(());
        }
        self.store.put_description(&key, &action.to_json()?)?;
        planned.insert(key, action.clone());
        Ok(())
    }

    /// Copies an action's description to the remote (for workers on other machines).
    pub fn push_description(&self, action: &Action) -> Result<(), EngineError> {
        if let Some(r) = self.live_remote() {
            self.store
                .put_description(&action.key(), &action.to_json()?)?;
            self.store.push_description(&action.key(), r.backend())?;
        }
        Ok(())
    }

    /// The action with `key`: planned here, else its stored description (local, then
    /// remote), checked against the key.
    pub fn action_for(&self, key: &Key) -> Result<Action, EngineError> {
        if let Some(a) = self
            .planned
            .lock()
            .map_err(|_| EngineError::Poisoned)?
            .get(key)
        {
            return Ok(a.clone());
        }
        let bytes = match self.store.read_description(key)? {
            Some(b) => Some(b),
            None => match self.live_remote() {
                Some(r) => self.store.pull_description(key, r.backend())?,
                None => None,
            },
        };
        let Some(bytes) = bytes else {
            return Err(EngineError::NoDescription {
                key: key.to_hex(),
                remote: self.remote.as_ref().map(|r| r.url.clone()),
            });
        };
        match Action::from_json(&bytes, key) {
            Ok(a) => Ok(a),
            Err(e) => {
                // A damaged local copy is removed so that a good one can be fetched.
                let _ = self.store.remove_description(key);
                Err(e)
            }
        }
    }

    // ---- looking up -----------------------------------------------------------------

    /// An entry resolved earlier in this process.
    pub fn resolved(&self, key: &Key) -> Option<Arc<ActionEntry>> {
        self.resolved.lock().ok().and_then(|m| m.get(key).cloned())
    }

    /// Remembers a resolved entry for the rest of the process.
    pub fn remember(&self, entry: Arc<ActionEntry>) {
        if let Ok(mut m) = self.resolved.lock() {
            m.insert(entry.key, entry);
        }
    }

    /// Looks `action` up: this process's memory, the local store, then the remote
    /// (every blob rehashed; with trusted keys, only entries signed by one of them).
    /// An entry whose stage rejects its metadata is treated as missing. A remote that
    /// cannot be reached is given up for the rest of the run with one warning.
    pub fn find(&self, action: &Action) -> Result<Found, EngineError> {
        let key = action.key();
        if let Some(e) = self.resolved(&key) {
            return Ok(Found::Ready(e, Outcome::Memo));
        }
        let mut miss = Miss {
            outcome: Outcome::Computed,
            note: None,
            bad_blob: None,
            replace: false,
        };
        match self.store.lookup(&key)? {
            Lookup::Hit(entry) => match stages::check(&entry) {
                Ok(()) => return Ok(Found::Ready(Arc::new(entry), Outcome::Hit)),
                Err(why) => {
                    tracing::warn!(
                        "cached {} {} ({}) is unusable: {why}; computing it again",
                        action.stage,
                        action.instance,
                        key.short()
                    );
                    miss.note = Some(format!("cached entry unusable: {why}"));
                    miss.replace = true;
                    return Ok(Found::Missing(miss));
                }
            },
            Lookup::Miss(reason) => {
                tracing::debug!(stage = %action.stage, instance = %action.instance, %reason, "cache miss");
            }
        }
        let Some(r) = self.live_remote() else {
            return Ok(Found::Missing(miss));
        };
        let what = format!("{} {}", action.stage, action.instance);
        match self.store.pull_with(&key, r.backend(), self.trusted()) {
            Ok(Lookup::Hit(entry)) => match stages::check(&entry) {
                Ok(()) => {
                    r.update(|s| s.pulled_entries += 1);
                    return Ok(Found::Ready(Arc::new(entry), Outcome::Pulled));
                }
                Err(why) => {
                    tracing::warn!(
                        "remote cache {}: rejected {what}: its metadata is invalid ({why}); computing it here",
                        r.url
                    );
                    r.update(|s| {
                        s.rejected
                            .push(format!("{what} ({key}): invalid metadata: {why}"))
                    });
                    miss.outcome = Outcome::RemoteRejected;
                    miss.note = Some(format!("invalid metadata: {why}"));
                    miss.replace = true;
                }
            },
            Ok(Lookup::Miss(MissReason::NoEntry)) => {}
            Ok(Lookup::Miss(MissReason::Untrusted { why })) => {
                tracing::warn!(
                    "remote cache {}: not using {what} ({}): {why}; computing it here",
                    r.url,
                    key.short()
                );
                r.update(|s| s.untrusted.push(format!("{what} ({key}): {why}")));
                miss.outcome = Outcome::RemoteUntrusted;
                miss.note = Some(why);
            }
            Ok(Lookup::Miss(why)) => {
                tracing::warn!(
                    "remote cache {}: {what} is incomplete there ({why}); computing it",
                    r.url
                );
                miss.note = Some(format!("incomplete on the remote: {why}"));
            }
            Err(e) if e.is_corruption() => {
                tracing::warn!(
                    "remote cache {}: rejected {what}: {e}; computing it here",
                    r.url
                );
                let text = e.to_string();
                r.update(|s| s.rejected.push(format!("{what} ({key}): {text}")));
                miss.outcome = Outcome::RemoteRejected;
                miss.note = Some(text);
                miss.bad_blob = e.corrupt_blob();
            }
            Err(e) => r.give_up(&e),
        }
        Ok(Found::Missing(miss))
    }

    // ---- computing ------------------------------------------------------------------

    /// Runs `action`'s stage body here, stores the outputs and the entry (signed when a
    /// signing key is set; replacing an unusable one when `replace`), and pushes it to
    /// the remote unless pushing is off. An error of the body itself is
    /// [`EngineError::Action`] (it would fail again: not worth retrying).
    pub fn compute(&self, action: &Action, miss: &Miss) -> Result<ActionEntry, EngineError> {
        let def = stages::def(&action.stage).ok_or_else(|| EngineError::UnknownStage {
            stage: action.stage.clone(),
            key: action.key().to_hex(),
        })?;
        // A stable line at the start and end of every computed stage instance
        // (`C2I_LOG=c2i::stage=debug`): where a run is, for scripts and tests.
        tracing::debug!(target: "c2i::stage", stage = %action.stage, instance = %action.instance, "computing");
        let started = Instant::now();
        let produced = (def.run)(self, action).map_err(|e| match e {
            e @ (EngineError::Action { .. } | EngineError::Poisoned) => e,
            e => EngineError::Action {
                stage: action.stage.clone(),
                instance: action.instance.clone(),
                key: action.key().to_hex(),
                source: Box::new(e),
            },
        })?;
        let mut refs: BTreeMap<String, BlobRef> = BTreeMap::new();
        for (name, bytes) in produced.outputs {
            refs.insert(name, self.store.put_bytes(&bytes)?);
        }
        let entry = self.store.put_entry_with(
            action.parts(),
            refs,
            produced.metadata,
            &PutEntry {
                signer: self.trust.signing_key.as_ref(),
                replace: miss.replace,
            },
        )?;
        tracing::debug!(target: "c2i::stage", stage = %action.stage, instance = %action.instance, "stored");
        self.progress.instance(
            &action.stage,
            &action.instance,
            miss.outcome.name(),
            started.elapsed().as_secs_f64(),
        );
        if self.trust.push {
            if let Some(r) = self.live_remote() {
                self.push(r, action, &entry, miss.bad_blob);
            }
        }
        Ok(entry)
    }

    /// Writes a computed entry back to the remote (description, blobs, entry).
    /// `bad_blob`: a blob whose remote copy failed its hash on the way in; if this
    /// entry has the same blob (the stage is deterministic), the damaged remote copy is
    /// overwritten.
    fn push(&self, r: &Remote, action: &Action, entry: &ActionEntry, bad_blob: Option<Digest>) {
        let backend = r.backend();
        // The description first, so that any process that finds the entry can also
        // recompute it from its key.
        if let Ok(json) = action.to_json() {
            let described = self
                .store
                .put_description(&action.key(), &json)
                .and_then(|_| self.store.push_description(&action.key(), backend));
            if let Err(e) = described {
                if !e.is_corruption() {
                    r.give_up(&e);
                    return;
                }
            }
        }
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
                r.url,
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

    /// Computes an action here and records it (a lost upstream blob's producer).
    fn rebuild(&self, action: &Action) -> Result<ActionEntry, EngineError> {
        let started = Instant::now();
        let miss = Miss {
            outcome: Outcome::Computed,
            note: Some("rebuilt: an output another stage needed was lost or damaged".into()),
            bad_blob: None,
            replace: true,
        };
        let entry = self.compute(action, &miss)?;
        self.record(
            action,
            Outcome::Computed,
            miss.note,
            started,
            Some(RanOn {
                executor: "local".into(),
                host: self.host.clone(),
                job: None,
                attempts: 1,
                seconds: None,
            }),
        );
        self.remember(Arc::new(entry.clone()));
        Ok(entry)
    }

    // ---- reading inputs and outputs ---------------------------------------------------

    /// Opens a blob, rehashing it once per process. A blob that is missing, of the
    /// wrong size or of the wrong hash is removed (so a lookup of its entry misses) and
    /// reported as [`EngineError::DamagedOutput`].
    fn read_blob(
        &self,
        blob: &BlobRef,
        stage: &str,
        key: &Key,
        name: &str,
    ) -> Result<Blob, EngineError> {
        let known_good = self
            .verified
            .lock()
            .map(|v| v.contains(&blob.digest))
            .unwrap_or(false);
        let damaged = |detail: String| EngineError::DamagedOutput {
            stage: stage.to_string(),
            key: key.to_hex(),
            output: name.to_string(),
            detail,
        };
        match self.store.get(blob, !known_good) {
            Ok(b) => {
                if let Ok(mut v) = self.verified.lock() {
                    v.insert(blob.digest);
                }
                Ok(b)
            }
            Err(e @ (CacheError::CorruptBlob { .. } | CacheError::BlobSize { .. })) => {
                let path = self.store.blob_path(&blob.digest);
                tracing::warn!(
                    stage,
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

    /// The bytes of output blob `blob` of upstream action `key`: from the local store,
    /// else from the remote, else by recomputing the upstream action (from its
    /// description) here. The recomputation must give the same bytes: the key of every
    /// action downstream was made from them.
    pub fn upstream_blob(
        &self,
        stage: &str,
        key: &Key,
        output: &str,
        blob: &BlobRef,
    ) -> Result<Blob, EngineError> {
        match self.read_blob(blob, stage, key, output) {
            Err(EngineError::DamagedOutput { detail, .. }) => {
                if let Some(r) = self.live_remote() {
                    match self.store.pull_blob(blob, r.backend()) {
                        Ok(true) => return self.read_blob(blob, stage, key, output),
                        Ok(false) => {}
                        Err(e) if e.is_corruption() => {
                            tracing::warn!("remote cache {}: {e}", r.url)
                        }
                        Err(e) => r.give_up(&e),
                    }
                }
                tracing::warn!(
                    "{stage} output `{output}` ({}) is lost here ({detail}); computing {stage} {} again",
                    blob.digest.short(),
                    key.short()
                );
                let producer = self.action_for(key)?;
                let fresh = self.rebuild(&producer)?;
                let got = fresh.outputs.get(output).copied();
                if got.map(|b| b.digest) != Some(blob.digest) {
                    return Err(EngineError::Invalid(format!(
                        "{stage} {} ({}) was computed again and output `{output}` is now {}, \
                         not {} as before: it is not reproducible, so what was computed from it \
                         cannot be checked; run again to recompute downstream",
                        producer.instance,
                        key.short(),
                        got.map_or("missing".into(), |b| b.digest.to_hex()),
                        blob.digest
                    )));
                }
                self.read_blob(blob, stage, key, output)
            }
            other => other,
        }
    }

    /// Output `name` of a resolved entry (recomputing its action if the blob is lost).
    pub fn output(&self, entry: &ActionEntry, name: &str) -> Result<Blob, EngineError> {
        let blob = entry.outputs.get(name).ok_or_else(|| {
            EngineError::Corrupt(format!(
                "{} entry {} has no output `{name}`",
                entry.stage, entry.key
            ))
        })?;
        self.upstream_blob(&entry.stage, &entry.key, name, blob)
    }

    /// The bytes of input `name` of `action`, an upstream output.
    pub fn input_blob(&self, action: &Action, name: &str) -> Result<Blob, EngineError> {
        match action.input(name)? {
            Input::Output {
                digest,
                size,
                stage,
                key,
                output,
            } => self.upstream_blob(
                stage,
                key,
                output,
                &BlobRef {
                    digest: *digest,
                    size: *size,
                },
            ),
            other => Err(EngineError::Invalid(format!(
                "{} action {}: input `{name}` is {other:?}, expected an upstream output",
                action.stage,
                action.key().short()
            ))),
        }
    }

    /// A file input, where this machine has it with the digest the action names.
    fn input_path(&self, action: &Action, input: &Input) -> Result<(PathBuf, Digest), EngineError> {
        let Input::File {
            digest,
            path,
            fetch,
        } = input
        else {
            return Err(EngineError::Invalid(format!(
                "{} action {}: expected a file input, found {input:?}",
                action.stage,
                action.key().short()
            )));
        };
        let mismatch = |p: &Path, got: Option<Digest>| {
            EngineError::Invalid(format!(
                "{} action {} ({}) reads {} with BLAKE3 {digest}, but {}",
                action.stage,
                action.key().short(),
                action.instance,
                p.display(),
                match got {
                    Some(g) =>
                        format!("the file here hashes to {g}: it changed, or is another file"),
                    None => "there is no such file on this machine".into(),
                }
            ))
        };
        if path.exists() {
            let got = self.digest_path(path)?;
            if got == *digest {
                return Ok((path.clone(), *digest));
            }
            if fetch.is_none() {
                return Err(mismatch(path, Some(got)));
            }
        }
        if let Some(name) = fetch {
            let p = crate::runner::resolve_model(name)?;
            let got = self.digest_path(&p)?;
            if got == *digest {
                return Ok((p, *digest));
            }
            return Err(mismatch(&p, Some(got)));
        }
        Err(mismatch(path, None))
    }

    /// The model file of input `name`, loaded (once per process).
    pub fn input_model(
        &self,
        action: &Action,
        name: &str,
    ) -> Result<Arc<LoadedModel>, EngineError> {
        let input = action.input(name)?.clone();
        let input = match input {
            Input::Matrix { model, .. } => *model,
            other => other,
        };
        self.model_of(action, &input)
    }

    fn model_of(&self, action: &Action, input: &Input) -> Result<Arc<LoadedModel>, EngineError> {
        let (path, digest) = self.input_path(action, input)?;
        self.loaded.model(&digest, || {
            tracing::info!(path = %path.display(), "loading model");
            Ok(Weights::load(&path)?)
        })
    }

    /// The task an action reads: its parameter `task` (the task's canonical form) and
    /// `task_digest`, rebuilt and checked.
    pub fn input_task(&self, action: &Action) -> Result<Task, EngineError> {
        let canonical: serde_json::Value = action.param("task")?;
        let digest: String = action.param("task_digest")?;
        let origin = PathBuf::from(format!(
            "{} action {} (task)",
            action.stage,
            action.key().short()
        ));
        Ok(Task::from_canonical(&canonical, &digest, &origin)?)
    }

    /// The rows of the data file of input `name`, read as `task`, as the model of
    /// input `model` sees them (wrapped in its chat template for a `chat = true` task).
    pub fn input_examples(
        &self,
        action: &Action,
        name: &str,
        model: &str,
        task: &Task,
    ) -> Result<Arc<Dataset>, EngineError> {
        let input = action.input(name)?.clone();
        let (path, digest) = self.input_path(action, &input)?;
        let ds = self.examples(task, &path, &digest)?;
        if !task.chat {
            return Ok(ds);
        }
        let model_input = action.input(model)?.clone();
        let (model_path, model_digest) = self.input_path(action, &model_input)?;
        self.loaded.chat_examples(task, &digest, &model_digest, || {
            let template = c2i_stages::model::chat::chat_template(&model_path)?;
            Ok(ds
                .for_model(template.as_deref(), &model_path.display().to_string())?
                .into_owned())
        })
    }

    /// The rows of a data file (once per process).
    pub fn examples(
        &self,
        task: &Task,
        path: &Path,
        digest: &Digest,
    ) -> Result<Arc<Dataset>, EngineError> {
        self.loaded
            .examples(task, digest, || Ok(data::load(task, path)?))
    }

    /// The device an action computes on (created once per process).
    pub fn device(&self, spec: &DeviceSpec) -> Result<Arc<candle_core::Device>, EngineError> {
        self.loaded.device(spec, || match spec.cuda_ordinal() {
            None => Ok(candle_core::Device::Cpu),
            Some(n) => candle_core::Device::new_cuda(n).map_err(|e| {
                EngineError::Invalid(format!(
                    "run.device {}: {e} (a GPU run needs a c2i built with `--features cuda` \
                     and a CUDA driver)",
                    spec.device
                ))
            }),
        })
    }

    /// The weights of `loaded` (the model with `digest`) on `spec`'s device in its
    /// dtype (the loaded weights themselves on the CPU).
    pub fn weights_on(
        &self,
        loaded: &LoadedModel,
        digest: &Digest,
        spec: &DeviceSpec,
    ) -> Result<Arc<Weights>, EngineError> {
        self.loaded.weights(digest, spec, || {
            if spec.is_cpu() {
                // The same tensors (shared storage), held once per process.
                return Ok(loaded.weights.clone());
            }
            let dev = self.device(spec)?;
            Ok(loaded.weights.to_device(&dev, spec.dtype())?)
        })
    }

    /// The weight matrix of input `name` (row-major f32, rows, cols), checked against
    /// the content digest the action names.
    pub fn input_matrix(
        &self,
        action: &Action,
        name: &str,
    ) -> Result<(Vec<f32>, usize, usize), EngineError> {
        let Input::Matrix {
            digest,
            name: tensor,
            model,
        } = action.input(name)?
        else {
            return Err(EngineError::Invalid(format!(
                "{} action {}: input `{name}` is not a matrix",
                action.stage,
                action.key().short()
            )));
        };
        let id = MatrixId::from_hf_name(tensor).ok_or_else(|| {
            EngineError::Invalid(format!(
                "{} action {}: `{tensor}` is not a weight matrix name",
                action.stage,
                action.key().short()
            ))
        })?;
        let loaded = self.model_of(action, model)?;
        let w = loaded.weights.matrix(id)?;
        let (r, c) = w.dims2()?;
        let v: Vec<f32> = w.flatten_all()?.to_vec1()?;
        let got = crate::stages::matrix_digests::digest_of(&v, r, c);
        if got != *digest {
            return Err(EngineError::Invalid(format!(
                "{} action {} ({}): matrix {tensor} hashes to {got}, the action expects {digest}",
                action.stage,
                action.key().short(),
                action.instance
            )));
        }
        Ok((v, r, c))
    }

    // ---- the log ----------------------------------------------------------------------

    /// Logs how an instance was satisfied.
    pub fn record(
        &self,
        action: &Action,
        outcome: Outcome,
        note: Option<String>,
        started: Instant,
        ran: Option<RanOn>,
    ) {
        if let Ok(mut log) = self.log.lock() {
            log.push(StageRecord {
                stage: action.stage.clone(),
                instance: action.instance.clone(),
                key: action.key().to_hex(),
                outcome,
                seconds: ran
                    .as_ref()
                    .and_then(|r| r.seconds)
                    .unwrap_or_else(|| started.elapsed().as_secs_f64()),
                note,
                executor: ran.as_ref().map(|r| r.executor.clone()),
                host: ran.as_ref().map(|r| r.host.clone()),
                job: ran.as_ref().and_then(|r| r.job.clone()),
                attempts: ran.as_ref().map(|r| r.attempts),
            });
        }
    }

    /// The layers whose input hidden states evaluations keep for prefix reuse (the
    /// layers of this run's candidates). A hint: it changes speed, never results.
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
