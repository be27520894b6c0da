//! Content keys for actions, and the explanation of why a key changed.
//!
//! A key is BLAKE3, in derive-key mode with the context [`KEY_CONTEXT`], over a
//! sequence of fields. Every field is written as
//!
//! ```text
//! tag: u8 | name length: u64 LE | name bytes | value length: u64 LE | value bytes
//! ```
//!
//! in this order: the stage name (tag `S`, empty name), the code version (tag `V`,
//! empty name), then the parameters (`P`), the input keys (`I`) and the environment
//! fingerprint (`E`), each group sorted by name. Because every field is tagged and
//! length-prefixed the encoding is prefix-free: no two different [`KeyParts`] give
//! the same byte stream. The order in which a caller adds fields does not matter.
//!
//! Parameter values are canonical JSON (object keys sorted at every level, no
//! whitespace, serde_json's shortest round-trip formatting of numbers), so
//! `{"b":1,"a":2}` and `{"a":2,"b":1}` give the same key whatever features of
//! serde_json are turned on elsewhere. Input values are the 64-hex-digit keys (or file
//! digests) of the inputs. Environment values are free text (device, dtype, versions of
//! libraries that change numbers).
//!
//! Changing [`KEY_CONTEXT`] changes every key; do that only when the encoding changes.

use crate::error::{CacheError, Result};
use crate::hash::Key;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Domain-separation context for BLAKE3's derive-key mode.
pub const KEY_CONTEXT: &str = "c2i 2026 action key v1";

/// Everything that went into a key, kept as text so that a later run can say which
/// part differs (`c2i status --why`). Stored inside every action entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct KeyParts {
    /// The stage's name ("factors", "gradients", ...).
    pub stage: String,
    /// The stage's code version; bump it when the stage's output would change.
    pub version: String,
    /// Parameter name -> canonical JSON of its value.
    pub params: BTreeMap<String, String>,
    /// Input name -> hex key (or file digest) of the input.
    pub inputs: BTreeMap<String, String>,
    /// Environment fingerprint: name -> value (device, dtype, library versions).
    pub env: BTreeMap<String, String>,
}

impl KeyParts {
    /// The key these parts hash to.
    pub fn key(&self) -> Key {
        let mut h = blake3::Hasher::new_derive_key(KEY_CONTEXT);
        field(&mut h, b'S', "", &self.stage);
        field(&mut h, b'V', "", &self.version);
        for (tag, map) in [
            (b'P', &self.params),
            (b'I', &self.inputs),
            (b'E', &self.env),
        ] {
            for (name, value) in map {
                field(&mut h, tag, name, value);
            }
        }
        Key::from_bytes(*h.finalize().as_bytes())
    }
}

fn field(h: &mut blake3::Hasher, tag: u8, name: &str, value: &str) {
    h.update(&[tag]);
    h.update(&(name.len() as u64).to_le_bytes());
    h.update(name.as_bytes());
    h.update(&(value.len() as u64).to_le_bytes());
    h.update(value.as_bytes());
}

/// Builds the [`KeyParts`] (and so the [`Key`]) of one action.
///
/// ```
/// # use c2i_cache::{KeyBuilder, Digest};
/// let weights = Digest::of(b"model bytes");
/// let parts = KeyBuilder::new("factors", "1")
///     .param("blocks", 4)
///     .param("matrix", "model.layers.3.mlp.up_proj.weight")
///     .input("weights", weights)
///     .env("dtype", "f32")
///     .build()
///     .unwrap();
/// let key = parts.key();
/// assert_eq!(key.to_hex().len(), 64);
/// ```
#[derive(Debug)]
pub struct KeyBuilder {
    parts: KeyParts,
    errors: Vec<String>,
}

impl KeyBuilder {
    /// Starts a key for `stage` at code `version`.
    pub fn new(stage: impl Into<String>, version: impl Into<String>) -> Self {
        KeyBuilder {
            parts: KeyParts {
                stage: stage.into(),
                version: version.into(),
                ..KeyParts::default()
            },
            errors: Vec::new(),
        }
    }

    /// Adds a parameter the stage reads; its value is stored as canonical JSON.
    pub fn param(mut self, name: impl Into<String>, value: impl Serialize) -> Self {
        let name = name.into();
        match serde_json::to_value(value) {
            Ok(v) => {
                let text = canonical_json(&v);
                self.insert(Group::Param, name, text);
            }
            Err(e) => self
                .errors
                .push(format!("parameter `{name}` is not JSON: {e}")),
        }
        self
    }

    /// Adds an input: the key of an upstream action or the digest of an input file.
    pub fn input(mut self, name: impl Into<String>, key: impl Into<Key>) -> Self {
        let hex = key.into().to_hex();
        self.insert(Group::Input, name.into(), hex);
        self
    }

    /// Adds one entry of the environment fingerprint.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.insert(Group::Env, name.into(), value.into());
        self
    }

    fn insert(&mut self, group: Group, name: String, value: String) {
        let (map, what) = match group {
            Group::Param => (&mut self.parts.params, "parameter"),
            Group::Input => (&mut self.parts.inputs, "input"),
            Group::Env => (&mut self.parts.env, "environment entry"),
        };
        match map.entry(name) {
            std::collections::btree_map::Entry::Occupied(e) => {
                self.errors
                    .push(format!("{what} `{}` given twice", e.key()));
            }
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(value);
            }
        }
    }

    /// The parts, or an error if a field was given twice or a parameter failed to
    /// serialise. Call [`KeyParts::key`] for the key.
    pub fn build(self) -> Result<KeyParts> {
        if self.errors.is_empty() {
            Ok(self.parts)
        } else {
            Err(CacheError::KeyField {
                stage: self.parts.stage,
                reason: self.errors.join("; "),
            })
        }
    }
}

enum Group {
    Param,
    Input,
    Env,
}

/// Canonical JSON: object keys sorted at every level, no whitespace.
pub fn canonical_json(v: &serde_json::Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => out.push_str(&Value::String(s.clone()).to_string()),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(item) = map.get(k) {
                    write_canonical(item, out);
                }
            }
            out.push('}');
        }
    }
}

/// One way in which two [`KeyParts`] of the same stage differ.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "part", rename_all = "snake_case")]
pub enum PartChange {
    /// The stage name differs (only when comparing across stages).
    Stage {
        /// Cached value.
        old: String,
        /// New value.
        new: String,
    },
    /// The code version differs.
    Version {
        /// Cached value.
        old: String,
        /// New value.
        new: String,
    },
    /// A parameter was added, removed or changed (`None` = absent on that side).
    Param {
        /// Parameter name.
        name: String,
        /// Cached value (canonical JSON).
        old: Option<String>,
        /// New value (canonical JSON).
        new: Option<String>,
    },
    /// An input's key changed, or an input was added or removed.
    Input {
        /// Input name.
        name: String,
        /// Cached key.
        old: Option<String>,
        /// New key.
        new: Option<String>,
    },
    /// An environment entry changed.
    Env {
        /// Entry name.
        name: String,
        /// Cached value.
        old: Option<String>,
        /// New value.
        new: Option<String>,
    },
}

fn show(v: &Option<String>, short: bool) -> String {
    match v {
        None => "(absent)".to_string(),
        Some(s) if short && s.len() == 64 => s[..12].to_string(),
        Some(s) => s.clone(),
    }
}

impl fmt::Display for PartChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PartChange::Stage { old, new } => write!(f, "stage {old} -> {new}"),
            PartChange::Version { old, new } => write!(f, "code version {old} -> {new}"),
            PartChange::Param { name, old, new } => write!(
                f,
                "param {name}: {} -> {}",
                show(old, false),
                show(new, false)
            ),
            PartChange::Input { name, old, new } => write!(
                f,
                "input {name} changed: {} -> {}",
                show(old, true),
                show(new, true)
            ),
            PartChange::Env { name, old, new } => write!(
                f,
                "environment {name}: {} -> {}",
                show(old, false),
                show(new, false)
            ),
        }
    }
}

/// Every difference between `old` (cached) and `new`, in a fixed order: stage,
/// version, parameters, inputs, environment (each by name).
pub fn diff_parts(old: &KeyParts, new: &KeyParts) -> Vec<PartChange> {
    let mut out = Vec::new();
    if old.stage != new.stage {
        out.push(PartChange::Stage {
            old: old.stage.clone(),
            new: new.stage.clone(),
        });
    }
    if old.version != new.version {
        out.push(PartChange::Version {
            old: old.version.clone(),
            new: new.version.clone(),
        });
    }
    type Make = fn(String, Option<String>, Option<String>) -> PartChange;
    type Fields = BTreeMap<String, String>;
    let groups: [(&Fields, &Fields, Make); 3] = [
        (&old.params, &new.params, |name, old, new| {
            PartChange::Param { name, old, new }
        }),
        (&old.inputs, &new.inputs, |name, old, new| {
            PartChange::Input { name, old, new }
        }),
        (&old.env, &new.env, |name, old, new| PartChange::Env {
            name,
            old,
            new,
        }),
    ];
    for (a, b, make) in groups {
        let names: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        for name in names {
            let (x, y) = (a.get(name), b.get(name));
            if x != y {
                out.push(make(name.clone(), x.cloned(), y.cloned()));
            }
        }
    }
    out
}

/// The cached entry closest to a new key, and how it differs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closest {
    /// The cached entry's key.
    pub key: Key,
    /// What differs, from cached to new.
    pub changes: Vec<PartChange>,
}

/// Among `candidates` of the same stage as `new`, the one with the fewest differing
/// fields; ties go to the earliest candidate (pass them most-recently-used first).
/// `None` when no candidate has the same stage name.
pub fn closest<'a, I>(new: &KeyParts, candidates: I) -> Option<Closest>
where
    I: IntoIterator<Item = (Key, &'a KeyParts)>,
{
    let mut best: Option<Closest> = None;
    for (key, parts) in candidates {
        if parts.stage != new.stage {
            continue;
        }
        let changes = diff_parts(parts, new);
        if best
            .as_ref()
            .is_none_or(|b| changes.len() < b.changes.len())
        {
            best = Some(Closest { key, changes });
        }
    }
    best
}
