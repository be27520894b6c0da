//! Actions: the full, self-contained description of one stage instance.
//!
//! An [`Action`] names its stage and code version, the parameters the stage reads,
//! its inputs and the environment that can change numbers; its [`Key`] is BLAKE3 over
//! exactly those ([`Action::parts`]). Inputs enter the key by the **digest of their
//! content** (a file's bytes, an upstream output blob, a weight matrix), never by an
//! upstream key: a result computed from a poisoned upstream entry has a key no clean
//! run asks for, and an upstream recomputed to identical bytes leaves every downstream
//! key, and so every downstream hit, unchanged (early cutoff).
//!
//! Next to the digests, an action says where each input can be found (a path, the
//! upstream action's key and output name) and carries `settings` that change how the
//! work runs but not what it computes (a batch size). Neither enters the key. The
//! description is stored in the cache under the key (`descriptions/`, JSON), like a
//! Bazel `Action`, so any process that reaches the cache can compute it from the key
//! alone (`c2i worker run KEY`); a reader always checks that a description hashes to
//! the key it was found under, so a forged description cannot make a worker store
//! another computation's result under an honest key.

use crate::EngineError;
use c2i_cache::{Digest, Key, KeyBuilder, KeyParts};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Format tag of stored descriptions.
pub const DESCRIPTION_FORMAT: &str = "c2i action 1";

/// One input of an action: the digest it must have (in the key) and where to find it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Input {
    /// A file read from disk (a model, a data set): BLAKE3 of its bytes (of every file,
    /// in name order, for a directory).
    File {
        digest: Digest,
        path: PathBuf,
        /// A name c2i can fetch the file by (`smollm2`) when `path` is missing on the
        /// machine that runs the action.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fetch: Option<String>,
    },
    /// An output blob of an upstream action.
    Output {
        digest: Digest,
        size: u64,
        stage: String,
        /// The upstream action (rerun from its description if the blob is lost).
        key: Key,
        output: String,
    },
    /// One weight matrix of a model file: BLAKE3 of its shape and f32 values, so the
    /// same matrix in another model file (or another pipeline) gives the same key.
    Matrix {
        digest: Digest,
        /// Hugging Face tensor name.
        name: String,
        /// The model file the matrix is read from (checked against `digest` on read).
        model: Box<Input>,
    },
}

impl Input {
    /// The content digest that enters the key.
    pub fn digest(&self) -> Digest {
        match self {
            Input::File { digest, .. }
            | Input::Output { digest, .. }
            | Input::Matrix { digest, .. } => *digest,
        }
    }
}

/// A stage instance: what to compute, from what, and its key.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    pub stage: String,
    pub version: String,
    /// What the instance is about, for people ("model.layers.3.mlp.up_proj.weight K=2").
    pub instance: String,
    /// Parameters the stage reads, by name (in the key, as canonical JSON).
    pub params: BTreeMap<String, serde_json::Value>,
    pub inputs: BTreeMap<String, Input>,
    /// How to run, not what: never in the key.
    pub settings: BTreeMap<String, serde_json::Value>,
    pub env: BTreeMap<String, String>,
    parts: KeyParts,
    key: Key,
}

/// The stored form (JSON), with its format tag and key.
#[derive(Serialize, Deserialize)]
struct Stored {
    format: String,
    key: Key,
    stage: String,
    version: String,
    instance: String,
    params: BTreeMap<String, serde_json::Value>,
    inputs: BTreeMap<String, Input>,
    #[serde(default)]
    settings: BTreeMap<String, serde_json::Value>,
    env: BTreeMap<String, String>,
}

/// Builds an [`Action`].
pub struct ActionBuilder {
    stage: String,
    version: String,
    instance: String,
    params: BTreeMap<String, serde_json::Value>,
    inputs: BTreeMap<String, Input>,
    settings: BTreeMap<String, serde_json::Value>,
    env: BTreeMap<String, String>,
    errors: Vec<String>,
}

impl ActionBuilder {
    /// `value` as JSON; an error is kept for [`ActionBuilder::build`] to report.
    fn json(&mut self, what: &str, name: &str, value: impl Serialize) -> Option<serde_json::Value> {
        serde_json::to_value(value)
            .map_err(|e| self.errors.push(format!("{what} {name}: {e}")))
            .ok()
    }

    pub fn param(mut self, name: &str, value: impl Serialize) -> Self {
        if let Some(v) = self.json("parameter", name, value) {
            self.params.insert(name.to_string(), v);
        }
        self
    }

    pub fn input(mut self, name: &str, input: Input) -> Self {
        self.inputs.insert(name.to_string(), input);
        self
    }

    /// Computed on `device` (its device and dtype replace the CPU's in the environment,
    /// so CPU and GPU results never share a key).
    pub fn on(mut self, device: &DeviceSpec) -> Self {
        self.env = environment(device);
        self
    }

    pub fn setting(mut self, name: &str, value: impl Serialize) -> Self {
        if let Some(v) = self.json("setting", name, value) {
            self.settings.insert(name.to_string(), v);
        }
        self
    }

    pub fn build(self) -> Result<Action, EngineError> {
        if !self.errors.is_empty() {
            return Err(EngineError::Invalid(format!(
                "{} action: {}",
                self.stage,
                self.errors.join("; ")
            )));
        }
        Action::assemble(
            self.stage,
            self.version,
            self.instance,
            self.params,
            self.inputs,
            self.settings,
            self.env,
        )
    }
}

impl Action {
    /// Starts an action of `stage` at code `version`, in this build's environment.
    pub fn builder(stage: &str, version: &str, instance: impl Into<String>) -> ActionBuilder {
        ActionBuilder {
            stage: stage.to_string(),
            version: version.to_string(),
            instance: instance.into(),
            params: BTreeMap::new(),
            inputs: BTreeMap::new(),
            settings: BTreeMap::new(),
            env: environment(&DeviceSpec::cpu()),
            errors: Vec::new(),
        }
    }

    fn assemble(
        stage: String,
        version: String,
        instance: String,
        params: BTreeMap<String, serde_json::Value>,
        inputs: BTreeMap<String, Input>,
        settings: BTreeMap<String, serde_json::Value>,
        env: BTreeMap<String, String>,
    ) -> Result<Action, EngineError> {
        let mut b = KeyBuilder::new(stage.as_str(), version.as_str());
        for (k, v) in &params {
            b = b.param(k.as_str(), v);
        }
        for (k, i) in &inputs {
            b = b.input(k.as_str(), i.digest());
        }
        for (k, v) in &env {
            b = b.env(k.as_str(), v.as_str());
        }
        let parts = b.build()?;
        let key = parts.key();
        Ok(Action {
            stage,
            version,
            instance,
            params,
            inputs,
            settings,
            env,
            parts,
            key,
        })
    }

    /// The action's key.
    pub fn key(&self) -> Key {
        self.key
    }

    /// What the key is made of (stored in the entry, for `status --why`).
    pub fn parts(&self) -> &KeyParts {
        &self.parts
    }

    /// A parameter, typed.
    pub fn param<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T, EngineError> {
        let v = self
            .params
            .get(name)
            .ok_or_else(|| self.bad(name, "is missing"))?;
        serde_json::from_value(v.clone()).map_err(|e| self.bad(name, &e.to_string()))
    }

    /// A setting, typed, or `default` when absent.
    pub fn setting<T: serde::de::DeserializeOwned>(&self, name: &str, default: T) -> T {
        self.settings
            .get(name)
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or(default)
    }

    /// An input by name.
    pub fn input(&self, name: &str) -> Result<&Input, EngineError> {
        self.inputs
            .get(name)
            .ok_or_else(|| self.bad(name, "input is missing"))
    }

    fn bad(&self, field: &str, what: &str) -> EngineError {
        EngineError::Invalid(format!(
            "{} action {} ({}): `{field}` {what}",
            self.stage,
            self.key.short(),
            self.instance
        ))
    }

    /// The stored description (pretty JSON).
    pub fn to_json(&self) -> Result<Vec<u8>, EngineError> {
        let s = Stored {
            format: DESCRIPTION_FORMAT.to_string(),
            key: self.key,
            stage: self.stage.clone(),
            version: self.version.clone(),
            instance: self.instance.clone(),
            params: self.params.clone(),
            inputs: self.inputs.clone(),
            settings: self.settings.clone(),
            env: self.env.clone(),
        };
        Ok(serde_json::to_vec_pretty(&s)?)
    }

    /// Reads a stored description and checks that it is the one of `expected`.
    pub fn from_json(bytes: &[u8], expected: &Key) -> Result<Action, EngineError> {
        let bad = |why: String| {
            EngineError::Corrupt(format!("the stored description of {expected} {why}"))
        };
        let s: Stored =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("is not valid: {e}")))?;
        if s.format != DESCRIPTION_FORMAT {
            return Err(bad(format!(
                "has format `{}`, this c2i reads `{DESCRIPTION_FORMAT}`",
                s.format
            )));
        }
        let a = Action::assemble(
            s.stage, s.version, s.instance, s.params, s.inputs, s.settings, s.env,
        )?;
        if a.key != *expected || s.key != *expected {
            return Err(bad(format!(
                "hashes to {}, not to the key it is stored under",
                a.key
            )));
        }
        Ok(a)
    }
}

/// The environment that can change numbers: device, dtype, library versions. It is
/// part of every key, and a worker whose environment differs from an action's refuses
/// to compute it. Outputs do not depend on the number of threads (each reduction runs
/// in a fixed order), so the thread count is not part of it.
pub fn environment(device: &DeviceSpec) -> BTreeMap<String, String> {
    [
        ("c2i", env!("CARGO_PKG_VERSION")),
        ("device", device.device.as_str()),
        ("dtype", device.dtype.as_str()),
        ("candle", "0.11.1"),
        ("faer", "0.24"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Where an action computes: the device (`cpu`, `cuda:N`) and the weights' dtype on it
/// (`[run] device`, `[run] dtype`). Part of every action's environment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeviceSpec {
    pub device: String,
    pub dtype: String,
}

impl DeviceSpec {
    /// The CPU in f32 (the default).
    pub fn cpu() -> DeviceSpec {
        DeviceSpec {
            device: "cpu".into(),
            dtype: "f32".into(),
        }
    }

    /// Checks and normalizes `[run] device` and `[run] dtype`; on error, the field and
    /// what was expected.
    pub fn parse(device: &str, dtype: &str) -> Result<DeviceSpec, (&'static str, String)> {
        let device = match device {
            "cpu" => "cpu".to_string(),
            "cuda" => "cuda:0".to_string(),
            d => match d.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => format!("cuda:{n}"),
                _ => return Err(("run.device", format!("cpu, cuda or cuda:N (found `{d}`)"))),
            },
        };
        match dtype {
            "f32" => {}
            "bf16" if device != "cpu" => {}
            "bf16" => {
                return Err((
                    "run.dtype",
                    "f32 on the CPU (bf16 needs a CUDA device)".into(),
                ))
            }
            other => return Err(("run.dtype", format!("f32 or bf16 (found `{other}`)"))),
        }
        Ok(DeviceSpec {
            device,
            dtype: dtype.to_string(),
        })
    }

    /// The device and dtype an action was described for (its environment).
    pub fn of(action: &Action) -> Result<DeviceSpec, EngineError> {
        let get = |k: &str| action.env.get(k).map(String::as_str).unwrap_or("");
        DeviceSpec::parse(get("device"), get("dtype")).map_err(|(field, expected)| {
            EngineError::Invalid(format!(
                "{} action {}: environment `{field}`: expected {expected}",
                action.stage,
                action.key().short()
            ))
        })
    }

    pub fn is_cpu(&self) -> bool {
        self.device == "cpu"
    }

    /// The CUDA ordinal, for a CUDA device.
    pub fn cuda_ordinal(&self) -> Option<usize> {
        self.device.strip_prefix("cuda:")?.parse().ok()
    }

    pub fn dtype(&self) -> candle_core::DType {
        match self.dtype.as_str() {
            "bf16" => candle_core::DType::BF16,
            _ => candle_core::DType::F32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_dtypes_parse_and_enter_the_key() {
        assert_eq!(DeviceSpec::parse("cpu", "f32").unwrap(), DeviceSpec::cpu());
        let gpu = DeviceSpec::parse("cuda", "bf16").unwrap();
        assert_eq!(
            (gpu.device.as_str(), gpu.cuda_ordinal()),
            ("cuda:0", Some(0))
        );
        assert_eq!(
            DeviceSpec::parse("cuda:3", "f32").unwrap().cuda_ordinal(),
            Some(3)
        );
        for (d, t, field) in [
            ("gpu", "f32", "run.device"),
            ("cuda:x", "f32", "run.device"),
            ("cpu", "bf16", "run.dtype"),
            ("cpu", "f16", "run.dtype"),
        ] {
            assert_eq!(DeviceSpec::parse(d, t).unwrap_err().0, field, "{d} {t}");
        }
        let key = |d: &DeviceSpec| {
            let a = Action::builder("factors", "1", "m")
                .param("blocks", 1)
                .on(d);
            let a = a.build().unwrap();
            assert_eq!(DeviceSpec::of(&a).unwrap(), *d);
            a.key()
        };
        let cpu = key(&DeviceSpec::cpu());
        let cuda = key(&DeviceSpec::parse("cuda", "f32").unwrap());
        let bf16 = key(&DeviceSpec::parse("cuda", "bf16").unwrap());
        assert!(cpu != cuda && cuda != bf16 && cpu != bf16);
    }

    fn file(d: u8, path: &str) -> Input {
        Input::File {
            digest: Digest::from_bytes([d; 32]),
            path: PathBuf::from(path),
            fetch: None,
        }
    }

    #[test]
    fn key_is_content_not_location_nor_settings() {
        let a = Action::builder("gradients", "2", "all")
            .param("rows", [1, 2, 3])
            .input("model", file(1, "/a/model.gguf"))
            .setting("batch", 8)
            .build()
            .unwrap();
        let b = Action::builder("gradients", "2", "other words")
            .param("rows", [1, 2, 3])
            .input("model", file(1, "/elsewhere/m.gguf"))
            .setting("batch", 64)
            .build()
            .unwrap();
        assert_eq!(a.key(), b.key());
        let c = Action::builder("gradients", "2", "all")
            .param("rows", [1, 2, 3])
            .input("model", file(2, "/a/model.gguf"))
            .build()
            .unwrap();
        assert_ne!(a.key(), c.key());
        assert_eq!(a.parts().key(), a.key());
    }

    #[test]
    fn descriptions_round_trip_and_are_bound_to_their_key() {
        let a = Action::builder("factors", "2", "m K=2")
            .param("blocks", 2)
            .input(
                "matrix",
                Input::Matrix {
                    digest: Digest::from_bytes([3; 32]),
                    name: "model.layers.0.mlp.up_proj.weight".into(),
                    model: Box::new(file(1, "/m.gguf")),
                },
            )
            .build()
            .unwrap();
        let json = a.to_json().unwrap();
        assert_eq!(Action::from_json(&json, &a.key()).unwrap(), a);
        // Stored under another key, or altered: refused.
        let other = Key::from_bytes([9; 32]);
        assert!(Action::from_json(&json, &other).is_err());
        let altered = String::from_utf8(json)
            .unwrap()
            .replace("\"blocks\": 2", "\"blocks\": 4");
        let e = Action::from_json(altered.as_bytes(), &a.key()).unwrap_err();
        assert!(e.to_string().contains("hashes to"), "{e}");
        assert!(Action::from_json(b"{}", &a.key()).is_err());
    }
}
