//! What a process keeps in memory between the stage instances it computes: the loaded
//! model, the data rows, the evaluation sets and their layer prefixes. Every table is
//! typed and keyed by content digests (the same digests the action keys use), so two
//! actions share a loaded resource exactly when they read the same bytes, and nothing
//! here can make a result depend on which actions ran before in the process.
//!
//! A table's lock is held while a missing value is made, so actions running at the same
//! time (the local executor runs independent factor actions in parallel) load a model
//! once, not once each.

use crate::action::DeviceSpec;
use crate::EngineError;
use c2i_cache::Digest;
use c2i_stages::data::{Dataset, Task};
use c2i_stages::eval::evaluator::EvalSet;
use c2i_stages::eval::prefix::Prefix;
use c2i_stages::model::{Decoder, LoadedModel, Weights};
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// One typed table.
struct Table<K, V> {
    map: Mutex<HashMap<K, Arc<V>>>,
}

impl<K: Eq + Hash + Clone, V> Table<K, V> {
    fn new() -> Self {
        Table {
            map: Mutex::new(HashMap::new()),
        }
    }

    fn get_or(
        &self,
        key: &K,
        make: impl FnOnce() -> Result<V, EngineError>,
    ) -> Result<Arc<V>, EngineError> {
        let mut m = self.map.lock().map_err(|_| EngineError::Poisoned)?;
        if let Some(v) = m.get(key) {
            return Ok(v.clone());
        }
        let v = Arc::new(make()?);
        m.insert(key.clone(), v.clone());
        Ok(v)
    }
}

/// Which evaluation set: the model (its tokenizer, chat template), the data file, the
/// task, the rows, and the device its prefixes live on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EvalSetId {
    pub model: Digest,
    pub data: Digest,
    pub task: Task,
    /// BLAKE3 of the row list.
    pub rows: Digest,
    pub device: DeviceSpec,
}

impl EvalSetId {
    pub fn new(
        model: Digest,
        data: Digest,
        task: Task,
        rows: &[usize],
        device: DeviceSpec,
    ) -> EvalSetId {
        let mut h = blake3::Hasher::new();
        for r in rows {
            h.update(&(*r as u64).to_le_bytes());
        }
        EvalSetId {
            model,
            data,
            task,
            rows: Digest::from(h.finalize()),
            device,
        }
    }
}

/// The in-memory resources of a process.
pub struct Loaded {
    models: Table<Digest, LoadedModel>,
    devices: Table<DeviceSpec, candle_core::Device>,
    weights: Table<(Digest, DeviceSpec), Weights>,
    decoders: Table<(Digest, DeviceSpec), Decoder>,
    /// Rows by (task digest, data digest): the task's meaning, not where it was defined,
    /// so the runner's task and an action's rebuilt one share the rows.
    examples: Table<(String, Digest), Dataset>,
    /// Rows wrapped in a model's chat template: (task digest, data, model).
    chat_examples: Table<(String, Digest, Digest), Dataset>,
    eval_sets: Table<EvalSetId, EvalSet>,
    prefixes: Table<(EvalSetId, Vec<usize>), Prefix>,
}

impl Default for Loaded {
    fn default() -> Self {
        Loaded {
            models: Table::new(),
            devices: Table::new(),
            weights: Table::new(),
            decoders: Table::new(),
            examples: Table::new(),
            chat_examples: Table::new(),
            eval_sets: Table::new(),
            prefixes: Table::new(),
        }
    }
}

impl Loaded {
    /// The model whose file has `digest` (`make` loads it).
    pub fn model(
        &self,
        digest: &Digest,
        make: impl FnOnce() -> Result<LoadedModel, EngineError>,
    ) -> Result<Arc<LoadedModel>, EngineError> {
        self.models.get_or(digest, make)
    }

    /// A device, created once per process (tensors of two CUDA handles do not mix).
    pub fn device(
        &self,
        spec: &DeviceSpec,
        make: impl FnOnce() -> Result<candle_core::Device, EngineError>,
    ) -> Result<Arc<candle_core::Device>, EngineError> {
        self.devices.get_or(spec, make)
    }

    /// The weights of the model with `digest` on a device in its dtype.
    pub fn weights(
        &self,
        digest: &Digest,
        spec: &DeviceSpec,
        make: impl FnOnce() -> Result<Weights, EngineError>,
    ) -> Result<Arc<Weights>, EngineError> {
        self.weights.get_or(&(*digest, spec.clone()), make)
    }

    /// The base model's layers on a device, ready to run.
    pub fn decoder(
        &self,
        digest: &Digest,
        spec: &DeviceSpec,
        make: impl FnOnce() -> Result<Decoder, EngineError>,
    ) -> Result<Arc<Decoder>, EngineError> {
        self.decoders.get_or(&(*digest, spec.clone()), make)
    }

    /// The rows of a data file read as `task`.
    pub fn examples(
        &self,
        task: &Task,
        digest: &Digest,
        make: impl FnOnce() -> Result<Dataset, EngineError>,
    ) -> Result<Arc<Dataset>, EngineError> {
        self.examples
            .get_or(&(task.digest().to_string(), *digest), make)
    }

    /// The rows as a model sees them (its chat template applied).
    pub fn chat_examples(
        &self,
        task: &Task,
        data: &Digest,
        model: &Digest,
        make: impl FnOnce() -> Result<Dataset, EngineError>,
    ) -> Result<Arc<Dataset>, EngineError> {
        self.chat_examples
            .get_or(&(task.digest().to_string(), *data, *model), make)
    }

    /// An evaluation set (tokenized prompts and answers).
    pub fn eval_set(
        &self,
        id: &EvalSetId,
        make: impl FnOnce() -> Result<EvalSet, EngineError>,
    ) -> Result<Arc<EvalSet>, EngineError> {
        self.eval_sets.get_or(id, make)
    }

    /// The base model's hidden states at the input of `layers`, on a set.
    pub fn prefix(
        &self,
        id: &EvalSetId,
        layers: &[usize],
        make: impl FnOnce() -> Result<Prefix, EngineError>,
    ) -> Result<Arc<Prefix>, EngineError> {
        self.prefixes.get_or(&(id.clone(), layers.to_vec()), make)
    }
}
