//! Export of the adapted model: a Hugging Face directory (model.safetensors with the
//! replaced matrix dense, in the family's own tensor names and layout and in the
//! dtype `output.dtype` asks for; config.json naming the family's `model_type` and
//! architecture; tokenizer.json and tokenizer_config.json) loadable by candle and by
//! transformers, and on request the factored form of the replaced matrix (U·S and Vᵀ
//! per block) that is actually smaller.
//!
//! An export records what it was made from and the BLAKE3 of every file it wrote
//! (`c2i-export.json`); a later run with the same model and candidate finds it and
//! writes nothing. The stamp is removed before any file is rewritten and written
//! last, and every file is written to a temporary name and renamed into place, so a
//! crash at any point leaves either no stamp or a stamp that matches the files.

use crate::ctx::Ctx;
use crate::runner::{write_atomic, Inputs};
use crate::stages::evaluate::Candidate;
use crate::EngineError;
use c2i_cache::ActionEntry;
use c2i_stages::compress::{dense_candidate, factored_candidate};
use c2i_stages::factor::from_safetensors;
use c2i_stages::model::family::{hf_config, SpecialIds};
use c2i_stages::model::tokenizer::SpecialTokens;
use c2i_stages::model::weights::{save_safetensors, SaveDType};
use c2i_stages::model::ModelConfig;
use candle_core::{Device, Tensor};
use std::collections::BTreeMap;
use std::path::Path;

pub use c2i_stages::export::schema::{ExportInfo, FactoredInfo, Written};

/// BLAKE3 of a file, streamed.
fn file_digest(path: &Path) -> Result<String, EngineError> {
    let mut h = blake3::Hasher::new();
    let f = std::fs::File::open(path).map_err(io(path))?;
    h.update_reader(f).map_err(io(path))?;
    Ok(h.finalize().to_hex().to_string())
}

/// A deliberate crash for the fault tests: `C2I_CRASH_AT=<point>` aborts the process
/// there, as a power cut or `kill -9` would (no destructor, no cleanup).
fn crash_point(point: &str) {
    if std::env::var("C2I_CRASH_AT").is_ok_and(|v| v == point) {
        eprintln!("C2I_CRASH_AT={point}: aborting here");
        std::process::abort();
    }
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EngineError + '_ {
    move |source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `config.json` and `tokenizer_config.json` for a Hugging Face loader: the family's
/// config, and the special tokens the model file names (`name_of` gives a token's
/// text). The end-of-sequence token written is the one the evaluation stops at
/// ([`SpecialTokens::stop`]), so `generate` stops where the evaluation did.
fn hf_configs(
    config: &ModelConfig,
    special: &SpecialTokens,
    name_of: impl Fn(u32) -> Option<String>,
    dtype: SaveDType,
) -> (serde_json::Value, serde_json::Value) {
    let ids = SpecialIds {
        bos: special.bos,
        eos: special.stop(),
        pad: special.pad,
    };
    let cfg = hf_config(config, ids, dtype.torch_name());
    let mut tok = serde_json::json!({
        "model_max_length": config.max_position_embeddings,
        "add_bos_token": special.add_bos,
        "add_eos_token": false,
    });
    for (field, id) in [("bos", ids.bos), ("eos", ids.eos), ("pad", ids.pad)] {
        if let Some(text) = id.and_then(&name_of) {
            tok[format!("{field}_token")] = text.into();
        }
    }
    if let Some(t) = &special.chat_template {
        tok["chat_template"] = t.clone().into();
    }
    (cfg, tok)
}

/// Writes the adapted model under `dir/model/` (and `dir/factored.safetensors`).
/// `rehash`: compute the digests of files kept from an earlier export instead of
/// taking them from its stamp (`--frozen`).
#[allow(clippy::too_many_arguments)]
pub fn export(
    ctx: &Ctx,
    inp: &Inputs,
    best: Candidate,
    factors: &ActionEntry,
    dir: &Path,
    dense: bool,
    factored: bool,
    dtype: SaveDType,
    rehash: bool,
) -> Result<ExportInfo, EngineError> {
    let model_digest = inp.model.digest();
    let stamp_core = serde_json::json!({
        // 2: config.json names the special tokens, and tokenizer_config.json is written.
        // 3: the family's own names, layout, config.json and special tokens; a dtype.
        // 4: the stamp lists the digest of every file it vouches for.
        "layout": 4,
        "dtype": dtype,
        "model": model_digest.to_hex(),
        "matrix": best.matrix.hf_name(),
        "factors": factors.outputs.get("factors").map(|b| b.digest.to_hex()),
        "keep": best.keep(),
    });
    let model_dir = dir.join("model");
    let stamp_path = model_dir.join("c2i-export.json");
    let fpath = dir.join("factored.safetensors");
    let fblob = ctx.output(factors, "factors")?;
    let view = from_safetensors(fblob.bytes())?;
    let mut info = ExportInfo {
        dense: None,
        factored: None,
        digests: BTreeMap::new(),
    };
    if dense {
        let st = model_dir.join("model.safetensors");
        let files = [
            "model.safetensors",
            "config.json",
            "tokenizer_config.json",
            "tokenizer.json",
        ];
        let current = std::fs::read(&stamp_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        let kept = current.as_ref().filter(|c| {
            c.get("made_of") == Some(&stamp_core)
                && files.iter().all(|f| model_dir.join(f).exists())
        });
        let digests: BTreeMap<String, String> = match kept {
            Some(c) if !rehash => serde_json::from_value(c["files"].clone()).unwrap_or_default(),
            Some(_) => files
                .iter()
                .map(|f| Ok((f.to_string(), file_digest(&model_dir.join(f))?)))
                .collect::<Result<_, EngineError>>()?,
            None => {
                // The stamp goes first: from here until the new one is written, no
                // stamp vouches for files that are being replaced.
                if let Err(e) = std::fs::remove_file(&stamp_path) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        return Err(io(&stamp_path)(e));
                    }
                }
                let (path, digest) = (&inp.model_path, model_digest);
                let loaded = ctx.loaded.model(&digest, || {
                    tracing::info!(path = %path.display(), "loading model");
                    Ok(c2i_stages::model::Weights::load(path)?)
                })?;
                let w = Tensor::from_vec(
                    dense_candidate(&view, best.keep())?,
                    (view.rows(), view.cols()),
                    &Device::Cpu,
                )?;
                let adapted = loaded
                    .weights
                    .with_replaced(&BTreeMap::from([(best.matrix, w)]))?;
                std::fs::create_dir_all(&model_dir).map_err(io(&model_dir))?;
                let meta = BTreeMap::from([
                    ("format".to_string(), "pt".to_string()),
                    ("c2i_replaced".to_string(), best.matrix.hf_name()),
                    ("c2i_blocks".to_string(), best.blocks.to_string()),
                    ("c2i_keep".to_string(), best.keep().to_string()),
                ]);
                // Written to a temporary name and renamed into place.
                adapted.save_safetensors(&st, &meta, dtype)?;
                crash_point("export-after-model");
                let (config, tokenizer_config) = hf_configs(
                    &adapted.config,
                    &loaded.special,
                    |id| loaded.tokenizer.id_to_token(id),
                    dtype,
                );
                let cfg = model_dir.join("config.json");
                write_atomic(&cfg, &serde_json::to_vec_pretty(&config)?)?;
                let tcfg = model_dir.join("tokenizer_config.json");
                write_atomic(&tcfg, &serde_json::to_vec_pretty(&tokenizer_config)?)?;
                let tok = model_dir.join("tokenizer.json");
                let tmp = model_dir.join(format!(".tokenizer.json.tmp-{}", std::process::id()));
                loaded.tokenizer.save(&tmp, true).map_err(|e| {
                    EngineError::Invalid(format!(
                        "{}: cannot write the tokenizer: {e}",
                        tok.display()
                    ))
                })?;
                std::fs::rename(&tmp, &tok).map_err(io(&tok))?;
                let digests = files
                    .iter()
                    .map(|f| Ok((f.to_string(), file_digest(&model_dir.join(f))?)))
                    .collect::<Result<BTreeMap<_, _>, EngineError>>()?;
                let stamp = serde_json::json!({ "made_of": stamp_core, "files": digests });
                write_atomic(&stamp_path, &serde_json::to_vec_pretty(&stamp)?)?;
                digests
            }
        };
        for (f, d) in digests {
            info.digests.insert(format!("model/{f}"), d);
        }
        info.dense = Some(Written {
            bytes: size(&st),
            path: st,
        });
    }
    if factored {
        let fm = factored_candidate(&view, best.keep())?;
        let mut tensors = BTreeMap::new();
        let name = best.matrix.hf_name();
        for (b, blk) in fm.blocks.iter().enumerate() {
            tensors.insert(
                format!("{name}.block.{b}.us"),
                Tensor::from_vec(blk.a.clone(), (blk.rows, blk.rank), &Device::Cpu)?,
            );
            tensors.insert(
                format!("{name}.block.{b}.vt"),
                Tensor::from_vec(blk.b.clone(), (blk.rank, blk.cols), &Device::Cpu)?,
            );
        }
        let meta = BTreeMap::from([
            ("matrix".to_string(), name.clone()),
            ("rows".to_string(), fm.rows.to_string()),
            ("cols".to_string(), fm.cols.to_string()),
            (
                "block_row_starts".to_string(),
                serde_json::to_string(&fm.blocks.iter().map(|b| b.row_start).collect::<Vec<_>>())?,
            ),
            (
                "layout".to_string(),
                "W[rows of block b] = us_b · vt_b".to_string(),
            ),
        ]);
        save_safetensors(tensors, &meta, &fpath)?;
        info.digests
            .insert("factored.safetensors".into(), file_digest(&fpath)?);
        let pc = fm.param_count();
        info.factored = Some(FactoredInfo {
            bytes: size(&fpath),
            path: fpath,
            params: pc.factored,
            dense_params: pc.dense,
        });
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use c2i_stages::model::family::config_from_hf;

    fn config(dir: &Path) -> ModelConfig {
        let p = dir.join("config.json");
        std::fs::write(
            &p,
            r#"{"model_type": "llama", "vocab_size": 10, "hidden_size": 8,
                "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
                "num_key_value_heads": 1, "rms_norm_eps": 1e-5, "tie_word_embeddings": true,
                "max_position_embeddings": 64}"#,
        )
        .unwrap();
        config_from_hf(&p).unwrap()
    }

    #[test]
    fn special_tokens_named_only_where_the_model_names_them() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        let names = |id: u32| match id {
            1 => Some("<|im_start|>".to_string()),
            2 => Some("<|im_end|>".to_string()),
            _ => None,
        };
        let special = SpecialTokens {
            bos: Some(1),
            eos: Some(2),
            pad: Some(2),
            chat_template: Some("{{ x }}".into()),
            ..SpecialTokens::default()
        };
        let (cfg, tok) = hf_configs(&c, &special, names, SaveDType::Bf16);
        assert_eq!(cfg["bos_token_id"], 1);
        assert_eq!(cfg["eos_token_id"], 2);
        assert_eq!(cfg["pad_token_id"], 2);
        assert_eq!(cfg["num_hidden_layers"], 2);
        assert_eq!(cfg["model_type"], "llama");
        assert_eq!(cfg["architectures"][0], "LlamaForCausalLM");
        assert_eq!(cfg["torch_dtype"], "bfloat16");
        assert_eq!(tok["bos_token"], "<|im_start|>");
        assert_eq!(tok["eos_token"], "<|im_end|>");
        assert_eq!(tok["pad_token"], "<|im_end|>");
        assert_eq!(tok["chat_template"], "{{ x }}");
        assert_eq!(tok["model_max_length"], 64);

        // An end-of-turn token, where the file names one, is where generation stops.
        let with_eot = SpecialTokens {
            eot: Some(7),
            ..special
        };
        let (cfg, _) = hf_configs(&c, &with_eot, names, SaveDType::F32);
        assert_eq!(cfg["eos_token_id"], 7);

        let (cfg, tok) = hf_configs(&c, &SpecialTokens::default(), |_| None, SaveDType::F32);
        assert!(cfg.get("eos_token_id").is_none() && cfg.get("bos_token_id").is_none());
        assert!(tok.get("eos_token").is_none());
    }
}
