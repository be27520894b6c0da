//! Dense f32 weights in Hugging Face layout and names, loaded from GGUF (dequantized
//! once) or from a safetensors checkpoint, and written back as safetensors.
//!
//! GGUF stores the Q and K projections of llama models permuted for interleaved
//! rotary embeddings; we un-permute them on load
//! (`w.reshape(n_head, head_dim/2, 2, d_in).transpose(1, 2).reshape(d_out, d_in)`) so
//! every matrix, gradient and exported tensor uses the usual Hugging Face layout and
//! the model applies the usual half-split rotary embedding.

use super::config::LlamaConfig;
use super::tokenizer::tokenizer_from_gguf;
use super::{MatrixId, MatrixKind, ModelError};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

/// A model's dense weights (f32, CPU), keyed by Hugging Face tensor names.
#[derive(Debug, Clone)]
pub struct Weights {
    pub config: LlamaConfig,
    pub tensors: BTreeMap<String, Tensor>,
    /// Where the weights were read from.
    pub source: PathBuf,
}

/// A loaded model file: weights, and the tokenizer when the file carries one.
pub struct LoadedModel {
    pub weights: Weights,
    pub tokenizer: Tokenizer,
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

/// GGUF tensor name -> Hugging Face tensor name for the non-matrix tensors.
fn hf_name_of_gguf(name: &str) -> Option<String> {
    match name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    match tail {
        "attn_norm.weight" => Some(format!("model.layers.{layer}.input_layernorm.weight")),
        "ffn_norm.weight" => Some(format!(
            "model.layers.{layer}.post_attention_layernorm.weight"
        )),
        _ => MatrixKind::ALL
            .into_iter()
            .find(|k| tail == format!("{}.weight", k.gguf_name()))
            .map(|k| MatrixId::new(layer, k).hf_name()),
    }
}

/// Undoes llama.cpp's Q/K permutation: rows go from interleaved pairs back to halves.
pub fn unpermute_qk(w: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let (d_out, d_in) = w.dims2()?;
    let head_dim = d_out / n_head;
    w.reshape((n_head, head_dim / 2, 2, d_in))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((d_out, d_in))
}

impl Weights {
    /// Reads and dequantizes every tensor of a llama GGUF file, and its tokenizer.
    pub fn load_gguf(path: &Path) -> Result<LoadedModel, ModelError> {
        let mut file = std::io::BufReader::new(std::fs::File::open(path).map_err(io_err(path))?);
        let ct = super::gguf::read_content(&mut file, path)?;
        let config = LlamaConfig::from_gguf(&ct, path)?;
        let tokenizer = tokenizer_from_gguf(&ct, path)?;
        let dev = Device::Cpu;
        let mut tensors = BTreeMap::new();
        let mut names: Vec<&String> = ct.tensor_infos.keys().collect();
        names.sort();
        for name in names {
            let Some(hf) = hf_name_of_gguf(name) else {
                tracing::debug!(tensor = name.as_str(), "ignoring GGUF tensor");
                continue;
            };
            let q = ct.tensor(&mut file, name, &dev).map_err(candle_err(path))?;
            let mut t = q.dequantize(&dev).map_err(candle_err(path))?;
            if let Some(id) = MatrixId::from_hf_name(&hf) {
                let heads = match id.kind {
                    MatrixKind::Q => Some(config.num_attention_heads),
                    MatrixKind::K => Some(config.num_key_value_heads),
                    _ => None,
                };
                if let Some(n) = heads {
                    t = unpermute_qk(&t, n).map_err(candle_err(path))?;
                }
            }
            tensors.insert(hf, t);
        }
        let weights = Weights {
            config,
            tensors,
            source: path.to_path_buf(),
        };
        weights.check()?;
        Ok(LoadedModel { weights, tokenizer })
    }

    /// Reads a Hugging Face checkpoint directory: `config.json`, `tokenizer.json` and
    /// `model.safetensors` (or the `model-*.safetensors` shards).
    pub fn load_hf_dir(dir: &Path) -> Result<LoadedModel, ModelError> {
        let config = LlamaConfig::from_hf_config(&dir.join("config.json"))?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| ModelError::Tokenizer {
            path: tok_path.clone(),
            message: e.to_string(),
        })?;
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
                tensors.insert(name, t);
            }
        }
        let weights = Weights {
            config,
            tensors,
            source: dir.to_path_buf(),
        };
        weights.check()?;
        Ok(LoadedModel { weights, tokenizer })
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
        let c = &self.config;
        let hd = c.head_dim();
        let mut expect: Vec<(String, Vec<usize>)> = vec![
            (
                "model.embed_tokens.weight".into(),
                vec![c.vocab_size, c.hidden_size],
            ),
            ("model.norm.weight".into(), vec![c.hidden_size]),
        ];
        if !c.tie_word_embeddings {
            expect.push(("lm_head.weight".into(), vec![c.vocab_size, c.hidden_size]));
        }
        for l in 0..c.num_hidden_layers {
            expect.push((
                format!("model.layers.{l}.input_layernorm.weight"),
                vec![c.hidden_size],
            ));
            expect.push((
                format!("model.layers.{l}.post_attention_layernorm.weight"),
                vec![c.hidden_size],
            ));
            for kind in MatrixKind::ALL {
                expect.push((
                    MatrixId::new(l, kind).hf_name(),
                    self.matrix_shape(kind, hd).to_vec(),
                ));
            }
        }
        for (name, shape) in expect {
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

    fn matrix_shape(&self, kind: MatrixKind, hd: usize) -> [usize; 2] {
        let c = &self.config;
        match kind {
            MatrixKind::Q => [c.num_attention_heads * hd, c.hidden_size],
            MatrixKind::K | MatrixKind::V => [c.num_key_value_heads * hd, c.hidden_size],
            MatrixKind::O => [c.hidden_size, c.num_attention_heads * hd],
            MatrixKind::Gate | MatrixKind::Up => [c.intermediate_size, c.hidden_size],
            MatrixKind::Down => [c.hidden_size, c.intermediate_size],
        }
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

    pub fn matrix(&self, id: MatrixId) -> Result<&Tensor, ModelError> {
        self.get(&id.hf_name())
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

    /// Writes the weights as one safetensors file in Hugging Face layout, with a
    /// `config.json` beside it when `with_config` is set.
    pub fn save_safetensors(
        &self,
        path: &Path,
        metadata: &BTreeMap<String, String>,
    ) -> Result<(), ModelError> {
        save_safetensors(&self.tensors, metadata, path)
    }
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
    if path.is_dir() {
        return Ok(LlamaConfig::from_hf_config(&path.join("config.json"))?.num_hidden_layers);
    }
    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    let ct = super::gguf::read_content(&mut file, path)?;
    Ok(LlamaConfig::from_gguf(&ct, path)?.num_hidden_layers)
}

/// f32 tensors as safetensors bytes with string metadata.
pub fn save_safetensors_bytes(
    tensors: &BTreeMap<String, Tensor>,
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>, ModelError> {
    serialize_safetensors(tensors, metadata, Path::new("<memory>"))
}

/// Writes f32 tensors as safetensors with string metadata, atomically (temp + rename).
pub fn save_safetensors(
    tensors: &BTreeMap<String, Tensor>,
    metadata: &BTreeMap<String, String>,
    path: &Path,
) -> Result<(), ModelError> {
    let bytes = serialize_safetensors(tensors, metadata, path)?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, &bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

fn serialize_safetensors(
    tensors: &BTreeMap<String, Tensor>,
    metadata: &BTreeMap<String, String>,
    path: &Path,
) -> Result<Vec<u8>, ModelError> {
    let mut buffers: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.to_dtype(DType::F32).map_err(candle_err(path))?;
        let v: Vec<f32> = t
            .flatten_all()
            .and_then(|f| f.to_vec1())
            .map_err(candle_err(path))?;
        buffers.push((
            name.clone(),
            t.dims().to_vec(),
            bytemuck::cast_slice(&v).to_vec(),
        ));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = buffers
        .iter()
        .map(|(n, s, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| ModelError::Format {
                    path: path.to_path_buf(),
                    message: format!("tensor {n}: {e}"),
                })
        })
        .collect::<Result<_, _>>()?;
    let meta: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    safetensors::serialize(views, Some(meta))
        .map(canonical_safetensors)
        .map_err(|e| ModelError::Format {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
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
        let first = serialize_safetensors(&tensors, &meta, p).unwrap();
        // Each HashMap gets new random keys: 20 tries would show any order dependence.
        for _ in 0..20 {
            assert_eq!(serialize_safetensors(&tensors, &meta, p).unwrap(), first);
        }
        let back = parse_safetensors(&first, p).unwrap();
        assert_eq!(back.len(), 2);
        let st = safetensors::SafeTensors::deserialize(&first).unwrap();
        assert_eq!(st.tensor("a").unwrap().shape(), &[2, 3]);
        // Not a safetensors header: returned as is.
        assert_eq!(canonical_safetensors(vec![1, 2, 3]), vec![1, 2, 3]);
    }

    #[test]
    fn gguf_names_map_to_hf() {
        assert_eq!(
            hf_name_of_gguf("blk.3.ffn_down.weight").as_deref(),
            Some("model.layers.3.mlp.down_proj.weight")
        );
        assert_eq!(
            hf_name_of_gguf("blk.0.attn_norm.weight").as_deref(),
            Some("model.layers.0.input_layernorm.weight")
        );
        assert_eq!(
            hf_name_of_gguf("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(hf_name_of_gguf("rope_freqs.weight"), None);
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() -> candle_core::Result<()> {
        // llama.cpp's convert script: w.reshape(n_head, 2, hd/2, d_in).swapaxes(1, 2).
        let (n_head, hd, d_in) = (3, 4, 5);
        let w = Tensor::arange(0f32, (n_head * hd * d_in) as f32, &Device::Cpu)?
            .reshape((n_head * hd, d_in))?;
        let permuted = w
            .reshape((n_head, 2, hd / 2, d_in))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((n_head * hd, d_in))?;
        let back = unpermute_qk(&permuted, n_head)?;
        assert_eq!(back.to_vec2::<f32>()?, w.to_vec2::<f32>()?);
        Ok(())
    }
}
