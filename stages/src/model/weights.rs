//! Dense weights in the canonical layout and names (see [`super::names`]), loaded
//! from GGUF (dequantized once) or from a Hugging Face directory through the family
//! adapters ([`super::family`]), and written back as safetensors in the family's own
//! Hugging Face names and layout.

use super::config::ModelConfig;
use super::family;
use super::names::{VectorKind, EMBED, FINAL_NORM, LM_HEAD};
use super::tokenizer::{tokenizer_from_gguf, SpecialTokens};
use super::{MatrixId, MatrixKind, ModelError};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

/// A model's dense weights (f32, CPU unless moved), keyed by canonical tensor names.
#[derive(Debug, Clone)]
pub struct Weights {
    pub config: ModelConfig,
    pub tensors: BTreeMap<String, Tensor>,
    /// Where the weights were read from.
    pub source: PathBuf,
}

/// A loaded model file: weights, the tokenizer, and what the file says of its special
/// tokens and chat template.
pub struct LoadedModel {
    pub weights: Weights,
    pub tokenizer: Tokenizer,
    pub special: SpecialTokens,
}

fn candle_err(path: &Path) -> impl Fn(candle_core::Error) -> ModelError + '_ {
    move |e| ModelError::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The dtypes weights can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SaveDType {
    F32,
    Bf16,
    F16,
}

impl SaveDType {
    pub fn dtype(self) -> DType {
        match self {
            SaveDType::F32 => DType::F32,
            SaveDType::Bf16 => DType::BF16,
            SaveDType::F16 => DType::F16,
        }
    }

    /// The name Hugging Face's `torch_dtype` uses.
    pub fn torch_name(self) -> &'static str {
        match self {
            SaveDType::F32 => "float32",
            SaveDType::Bf16 => "bfloat16",
            SaveDType::F16 => "float16",
        }
    }
}

impl Weights {
    /// Reads and dequantizes every tensor of a GGUF file of a supported family, and
    /// its tokenizer.
    pub fn load_gguf(path: &Path) -> Result<LoadedModel, ModelError> {
        let mut file = std::io::BufReader::new(std::fs::File::open(path).map_err(io_err(path))?);
        let ct = super::gguf::read_content(&mut file, path)?;
        let meta = super::gguf::Meta::new(&ct, path);
        let mut config = family::config_from_gguf(&meta)?;
        let tokenizer = tokenizer_from_gguf(&ct, path)?;
        let special = SpecialTokens::from_gguf(&meta)?;
        let dev = Device::Cpu;
        // Every tensor the decoder needs must be in the file: checked before reading
        // any of them, so a header naming absent layers costs nothing.
        let present: std::collections::HashSet<String> = ct
            .tensor_infos
            .keys()
            .filter_map(|n| family::canonical_of_gguf(n))
            .collect();
        if let Some(name) = expected_shapes(&config)
            .into_iter()
            .map(|(n, _)| n)
            .find(|n| !present.contains(n))
        {
            return Err(ModelError::MissingTensor {
                path: path.to_path_buf(),
                name,
            });
        }
        if ct.tensor_infos.contains_key("rope_freqs.weight") {
            let q = ct
                .tensor(&mut file, "rope_freqs.weight", &dev)
                .map_err(candle_err(path))?;
            let f: Vec<f32> = q
                .dequantize(&dev)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1())
                .map_err(candle_err(path))?;
            config.ropes[0].freq_factors = f.into_iter().map(f64::from).collect();
            config.validate(path)?;
        }
        let mut tensors = BTreeMap::new();
        let mut names: Vec<&String> = ct.tensor_infos.keys().collect();
        names.sort();
        for name in names {
            let Some(canonical) = family::canonical_of_gguf(name) else {
                tracing::debug!(tensor = name.as_str(), "ignoring GGUF tensor");
                continue;
            };
            let q = ct.tensor(&mut file, name, &dev).map_err(candle_err(path))?;
            let t = q.dequantize(&dev).map_err(candle_err(path))?;
            let t = family::from_gguf_tensor(&config, &canonical, t).map_err(candle_err(path))?;
            tensors.insert(canonical, t);
        }
        let weights = Weights {
            config,
            tensors,
            source: path.to_path_buf(),
        };
        weights.check()?;
        Ok(LoadedModel {
            weights,
            tokenizer,
            special,
        })
    }

    /// Reads a Hugging Face checkpoint directory: `config.json`, `tokenizer.json`
    /// (with `tokenizer_config.json` when present) and `model.safetensors` (or the
    /// `model-*.safetensors` shards).
    pub fn load_hf_dir(dir: &Path) -> Result<LoadedModel, ModelError> {
        let config = ModelConfig::from_hf_config(&dir.join("config.json"))?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| ModelError::Tokenizer {
            path: tok_path.clone(),
            message: e.to_string(),
        })?;
        let special = SpecialTokens::from_hf_dir(dir, &tokenizer)?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(ModelError::Format {
                path: dir.to_path_buf(),
                message: "no *.safetensors file in this directory".into(),
            });
        }
        let mut tensors = BTreeMap::new();
        for f in &files {
            for (name, t) in read_safetensors(f)? {
                // Checked here too (not only in `check`), so the error names the file.
                if !all_finite(&t) {
                    return Err(ModelError::NonFinite {
                        path: f.clone(),
                        name,
                    });
                }
                let Some(canonical) = family::canonical_of_hf(config.family, &name) else {
                    tracing::debug!(tensor = name.as_str(), "ignoring tensor");
                    continue;
                };
                let t =
                    family::from_hf_tensor(config.family, &canonical, t).map_err(candle_err(f))?;
                tensors.insert(canonical, t);
            }
        }
        let weights = Weights {
            config,
            tensors,
            source: dir.to_path_buf(),
        };
        weights.check()?;
        Ok(LoadedModel {
            weights,
            tokenizer,
            special,
        })
    }

    /// Loads a `.gguf` file or a Hugging Face directory, by what `path` is.
    pub fn load(path: &Path) -> Result<LoadedModel, ModelError> {
        if path.is_dir() {
            Self::load_hf_dir(path)
        } else if path.exists() {
            Self::load_gguf(path)
        } else {
            Err(ModelError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such file or directory",
                ),
            })
        }
    }

    /// Every tensor the forward needs is present, with the right shape, and finite.
    fn check(&self) -> Result<(), ModelError> {
        for (name, shape) in expected_shapes(&self.config) {
            let t = self
                .tensors
                .get(&name)
                .ok_or_else(|| ModelError::MissingTensor {
                    path: self.source.clone(),
                    name: name.clone(),
                })?;
            if t.dims() != shape.as_slice() {
                return Err(ModelError::Shape {
                    path: self.source.clone(),
                    name,
                    expected: shape,
                    found: t.dims().to_vec(),
                });
            }
            if t.dtype() != DType::F32 {
                return Err(ModelError::Format {
                    path: self.source.clone(),
                    message: format!(
                        "tensor {name}: expected f32 after loading, found {:?}",
                        t.dtype()
                    ),
                });
            }
        }
        for (name, t) in &self.tensors {
            if !all_finite(t) {
                return Err(ModelError::NonFinite {
                    path: self.source.clone(),
                    name: name.clone(),
                });
            }
        }
        Ok(())
    }

    /// The same weights on another device, in `dtype`.
    pub fn to_device(&self, dev: &Device, dtype: DType) -> Result<Weights, ModelError> {
        let mut out = self.clone();
        for t in out.tensors.values_mut() {
            *t = t.to_dtype(dtype)?.to_device(dev)?;
        }
        Ok(out)
    }

    /// The same weights in another dtype (f64 for finite-difference checks).
    pub fn to_dtype(&self, dtype: DType) -> Result<Weights, ModelError> {
        let mut out = self.clone();
        for t in out.tensors.values_mut() {
            *t = t.to_dtype(dtype)?;
        }
        Ok(out)
    }

    /// Every weight matrix of the model, layer by layer, in [`MatrixKind::ALL`] order.
    pub fn matrix_ids(&self) -> Vec<MatrixId> {
        (0..self.config.num_hidden_layers)
            .flat_map(|l| {
                MatrixKind::ALL
                    .into_iter()
                    .map(move |k| MatrixId::new(l, k))
            })
            .collect()
    }

    pub fn get(&self, name: &str) -> Result<&Tensor, ModelError> {
        self.tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.source.clone(),
                name: name.to_string(),
            })
    }

    /// A per-layer vector the config says the model has; `None` when it has none.
    pub fn vector(&self, layer: usize, kind: VectorKind) -> Result<Option<&Tensor>, ModelError> {
        if has_vector(&self.config, kind) {
            self.get(&kind.name(layer)).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn matrix(&self, id: MatrixId) -> Result<&Tensor, ModelError> {
        self.get(&id.hf_name())
    }

    /// The LM head: its own tensor, or the embeddings when they are tied.
    pub fn lm_head(&self) -> Result<&Tensor, ModelError> {
        if self.config.tie_word_embeddings {
            self.get(EMBED)
        } else {
            self.get(LM_HEAD)
        }
    }

    /// A copy of these weights with some matrices replaced (a candidate model).
    pub fn with_replaced(
        &self,
        replace: &BTreeMap<MatrixId, Tensor>,
    ) -> Result<Weights, ModelError> {
        let mut out = self.clone();
        for (id, t) in replace {
            let old = self.matrix(*id)?;
            if old.dims() != t.dims() {
                return Err(ModelError::Shape {
                    path: self.source.clone(),
                    name: id.hf_name(),
                    expected: old.dims().to_vec(),
                    found: t.dims().to_vec(),
                });
            }
            out.tensors.insert(id.hf_name(), t.clone());
        }
        Ok(out)
    }

    /// The tensors under the family's Hugging Face names and in its layout (Gemma's
    /// norms back to `w - 1`), in `dtype`.
    pub fn hf_tensors(&self, dtype: DType) -> Result<BTreeMap<String, Tensor>, ModelError> {
        let family = self.config.family;
        let mut out = BTreeMap::new();
        for (name, t) in &self.tensors {
            if name == LM_HEAD && self.config.tie_word_embeddings {
                continue;
            }
            let t = family::to_hf_tensor(family, name, t.clone())?.to_dtype(dtype)?;
            out.insert(family::hf_of_canonical(family, name), t);
        }
        Ok(out)
    }

    /// Writes the weights as one safetensors file in Hugging Face names and layout.
    pub fn save_safetensors(
        &self,
        path: &Path,
        metadata: &BTreeMap<String, String>,
        dtype: SaveDType,
    ) -> Result<(), ModelError> {
        save_safetensors(self.hf_tensors(dtype.dtype())?, metadata, path)
    }
}

/// Whether a model of this config has per-layer vectors of `kind`.
pub fn has_vector(c: &ModelConfig, kind: VectorKind) -> bool {
    match kind {
        VectorKind::AttnNorm | VectorKind::FfnNorm => true,
        VectorKind::AttnPostNorm | VectorKind::FfnPostNorm => c.post_norms,
        VectorKind::QNorm | VectorKind::KNorm => c.qk_norm,
        VectorKind::QBias | VectorKind::KBias | VectorKind::VBias => c.qkv_bias,
    }
}

/// Length of a per-layer vector.
pub fn vector_len(c: &ModelConfig, kind: VectorKind) -> usize {
    match kind {
        VectorKind::QNorm | VectorKind::KNorm => c.head_dim,
        VectorKind::QBias => c.q_width(),
        VectorKind::KBias | VectorKind::VBias => c.kv_width(),
        _ => c.hidden_size,
    }
}

/// Every tensor a model of this config needs, with its shape, in a fixed order.
pub fn expected_shapes(c: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let mut expect: Vec<(String, Vec<usize>)> = vec![
        (EMBED.into(), vec![c.vocab_size, c.hidden_size]),
        (FINAL_NORM.into(), vec![c.hidden_size]),
    ];
    if !c.tie_word_embeddings {
        expect.push((LM_HEAD.into(), vec![c.vocab_size, c.hidden_size]));
    }
    for l in 0..c.num_hidden_layers {
        for kind in VectorKind::ALL {
            if has_vector(c, kind) {
                expect.push((kind.name(l), vec![vector_len(c, kind)]));
            }
        }
        for kind in MatrixKind::ALL {
            let (r, cc) = c.matrix_shape(kind);
            expect.push((MatrixId::new(l, kind).hf_name(), vec![r, cc]));
        }
    }
    expect
}

/// True when every value of `t` (as f32) is finite.
fn all_finite(t: &Tensor) -> bool {
    t.to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|f| f.to_vec1::<f32>())
        .map(|v| v.iter().all(|x| x.is_finite()))
        .unwrap_or(false)
}

/// Reads every tensor of a safetensors file as f32 (f16/bf16 are converted).
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>, ModelError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    parse_safetensors(&bytes, path)
}

/// [`read_safetensors`] on bytes already read; `path` names them in errors. Never
/// panics on malformed input (fuzzed in `tests/fuzz_headers.rs`).
pub fn parse_safetensors(bytes: &[u8], path: &Path) -> Result<Vec<(String, Tensor)>, ModelError> {
    if bytes.len() >= 8 {
        let mut n = [0u8; 8];
        n.copy_from_slice(&bytes[..8]);
        let claimed = u64::from_le_bytes(n);
        let have = bytes.len() as u64 - 8;
        if claimed > have {
            return Err(ModelError::Format {
                path: path.to_path_buf(),
                message: format!(
                    "not a valid safetensors file: its header claims {claimed} bytes but only \
                     {have} follow the 8-byte length (truncated file?)"
                ),
            });
        }
    }
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| ModelError::Format {
        path: path.to_path_buf(),
        message: format!("not a valid safetensors file: {e}"),
    })?;
    let mut out = Vec::new();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    for name in names {
        let view = st.tensor(&name).map_err(|e| ModelError::Format {
            path: path.to_path_buf(),
            message: format!("tensor {name}: {e}"),
        })?;
        let shape = view.shape().to_vec();
        let data = view.data();
        let t = match view.dtype() {
            safetensors::Dtype::F32 => Tensor::from_vec(
                data.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect::<Vec<_>>(),
                shape,
                &Device::Cpu,
            ),
            safetensors::Dtype::F16 => Tensor::from_vec(
                data.chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect::<Vec<_>>(),
                shape,
                &Device::Cpu,
            ),
            safetensors::Dtype::BF16 => Tensor::from_vec(
                data.chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect::<Vec<_>>(),
                shape,
                &Device::Cpu,
            ),
            other => {
                return Err(ModelError::Format {
                    path: path.to_path_buf(),
                    message: format!(
                    "tensor {name}: dtype {other:?} is not supported (expected F32, F16 or BF16)"
                ),
                })
            }
        }
        .map_err(candle_err(path))?;
        out.push((name, t));
    }
    Ok(out)
}

/// Number of layers of a model file, read from its header (GGUF metadata or
/// config.json) without loading any tensor.
pub fn layer_count(path: &Path) -> Result<usize, ModelError> {
    Ok(read_config(path)?.num_hidden_layers)
}

/// The config of a model file, read from its header (GGUF metadata or config.json)
/// without loading any tensor.
pub fn read_config(path: &Path) -> Result<ModelConfig, ModelError> {
    if path.is_dir() {
        return ModelConfig::from_hf_config(&path.join("config.json"));
    }
    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    let ct = super::gguf::read_content(&mut file, path)?;
    ModelConfig::from_gguf(&ct, path)
}

/// Tensors as safetensors bytes with string metadata. The map is consumed: each tensor
/// is released as soon as its bytes are in the output, so a model's gigabytes of
/// gradients are not held twice (pass the only reference to free them).
pub fn save_safetensors_bytes(
    tensors: BTreeMap<String, Tensor>,
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>, ModelError> {
    let path = Path::new("<memory>");
    let views = owned_views(tensors, path)?;
    safetensors::serialize(views, Some(hash_meta(metadata)))
        .map(canonical_safetensors)
        .map_err(|e| ModelError::Format {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// Writes tensors as safetensors with string metadata, atomically (temp + rename),
/// streaming to the file: no second copy of the data in memory, and each tensor of the
/// consumed map is released once written.
pub fn save_safetensors(
    tensors: BTreeMap<String, Tensor>,
    metadata: &BTreeMap<String, String>,
    path: &Path,
) -> Result<(), ModelError> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let views = owned_views(tensors, path)?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let format_err = |e: safetensors::SafeTensorError| ModelError::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    safetensors::serialize_to_file(views, Some(hash_meta(metadata)), &tmp).map_err(format_err)?;
    // The header in canonical order, rewritten in place (same length).
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    let mut n = [0u8; 8];
    f.read_exact(&mut n).map_err(io_err(&tmp))?;
    let len = usize::try_from(u64::from_le_bytes(n)).map_err(|_| ModelError::Format {
        path: tmp.clone(),
        message: "header length does not fit in memory".into(),
    })?;
    let mut head = vec![0u8; 8 + len];
    head[..8].copy_from_slice(&n);
    f.read_exact(&mut head[8..]).map_err(io_err(&tmp))?;
    let head = canonical_safetensors(head);
    f.seek(SeekFrom::Start(0)).map_err(io_err(&tmp))?;
    f.write_all(&head).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

fn hash_meta(metadata: &BTreeMap<String, String>) -> HashMap<String, String> {
    metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// One tensor for `safetensors::serialize`, which consumes its views in order: the
/// tensor is dropped (and, if this was its last reference, freed) once its bytes are
/// written. f32, bf16 and f16 are written as they are; anything else as f32.
struct OwnedView {
    tensor: Tensor,
    dtype: safetensors::Dtype,
}

fn owned_views(
    tensors: BTreeMap<String, Tensor>,
    path: &Path,
) -> Result<Vec<(String, OwnedView)>, ModelError> {
    let mut views = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let (want, dtype) = match t.dtype() {
            DType::BF16 => (DType::BF16, safetensors::Dtype::BF16),
            DType::F16 => (DType::F16, safetensors::Dtype::F16),
            _ => (DType::F32, safetensors::Dtype::F32),
        };
        let ready = matches!(t.device(), Device::Cpu) && t.dtype() == want && t.is_contiguous();
        let tensor = if ready {
            t
        } else {
            t.to_dtype(want)
                .and_then(|t| t.to_device(&Device::Cpu))
                .and_then(|t| t.contiguous())
                .map_err(candle_err(path))?
        };
        views.push((name, OwnedView { tensor, dtype }));
    }
    Ok(views)
}

impl safetensors::View for OwnedView {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        self.tensor.dims()
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        // One tensor's bytes at a time (the storage is behind a lock guard that cannot
        // outlive this call); `owned_views` made it a contiguous CPU tensor of `dtype`.
        let (storage, layout) = self.tensor.storage_and_layout();
        let (start, n) = (layout.start_offset(), self.tensor.elem_count());
        let bytes: Vec<u8> = match &*storage {
            candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => {
                bytemuck::cast_slice(&v[start..start + n]).to_vec()
            }
            candle_core::Storage::Cpu(candle_core::CpuStorage::BF16(v)) => {
                bytemuck::cast_slice(&v[start..start + n]).to_vec()
            }
            candle_core::Storage::Cpu(candle_core::CpuStorage::F16(v)) => {
                bytemuck::cast_slice(&v[start..start + n]).to_vec()
            }
            // Unreachable: owned_views converted every tensor.
            _ => Vec::new(),
        };
        std::borrow::Cow::Owned(bytes)
    }
    fn data_len(&self) -> usize {
        self.tensor.elem_count() * self.tensor.dtype().size_in_bytes()
    }
}

/// Rewrites a safetensors file's JSON header with its keys sorted, so the same tensors
/// and metadata always give the same bytes (and the same content hash in the cache).
///
/// `safetensors::serialize` takes the metadata as a `HashMap`, whose order is random per
/// process: the same factors hashed differently in two runs. Sorting keeps every key,
/// value and character, so the header keeps its length and the data offsets stay valid.
/// Bytes that do not parse as a header are returned unchanged (the reader reports them).
pub fn canonical_safetensors(mut bytes: Vec<u8>) -> Vec<u8> {
    let Some(len) = bytes
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .and_then(|n| usize::try_from(n).ok())
    else {
        return bytes;
    };
    let Some(header) = bytes.get(8..8usize.saturating_add(len)) else {
        return bytes;
    };
    // serde_json's map is a BTreeMap (no `preserve_order`): parsing sorts the keys.
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(header) else {
        return bytes;
    };
    let Ok(text) = serde_json::to_string(&value) else {
        return bytes;
    };
    if text.len() > len {
        return bytes;
    }
    let region = &mut bytes[8..8 + len];
    region[..text.len()].copy_from_slice(text.as_bytes());
    region[text.len()..].fill(b' ');
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safetensors_bytes_do_not_depend_on_hash_map_order() {
        let t = Tensor::arange(0f32, 6., &Device::Cpu)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        let tensors = BTreeMap::from([("b".to_string(), t.clone()), ("a".to_string(), t)]);
        let meta: BTreeMap<String, String> = (0..12)
            .map(|i| (format!("key{i}"), format!("value {i}")))
            .collect();
        let p = Path::new("x.safetensors");
        let first = save_safetensors_bytes(tensors.clone(), &meta).unwrap();
        // Each HashMap gets new random keys: 20 tries would show any order dependence.
        for _ in 0..20 {
            assert_eq!(
                save_safetensors_bytes(tensors.clone(), &meta).unwrap(),
                first
            );
        }
        // The streamed file holds the same bytes.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.safetensors");
        save_safetensors(tensors, &meta, &file).unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), first);
        let back = parse_safetensors(&first, p).unwrap();
        assert_eq!(back.len(), 2);
        let st = safetensors::SafeTensors::deserialize(&first).unwrap();
        assert_eq!(st.tensor("a").unwrap().shape(), &[2, 3]);
        // Not a safetensors header: returned as is.
        assert_eq!(canonical_safetensors(vec![1, 2, 3]), vec![1, 2, 3]);
    }

    #[test]
    fn half_precision_tensors_are_written_as_such() {
        let t = Tensor::new(&[1.5f32, -2.25, 3.0], &Device::Cpu).unwrap();
        let p = Path::new("h.safetensors");
        for (dtype, st_dtype) in [
            (DType::BF16, safetensors::Dtype::BF16),
            (DType::F16, safetensors::Dtype::F16),
            (DType::F64, safetensors::Dtype::F32),
        ] {
            let tensors = BTreeMap::from([("x".to_string(), t.to_dtype(dtype).unwrap())]);
            let bytes = save_safetensors_bytes(tensors, &BTreeMap::new()).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            assert_eq!(st.tensor("x").unwrap().dtype(), st_dtype);
            let back = parse_safetensors(&bytes, p).unwrap();
            assert_eq!(back[0].1.to_vec1::<f32>().unwrap(), vec![1.5, -2.25, 3.0]);
        }
    }
}
