//! A `tokenizers::Tokenizer` built from a GGUF file's metadata (no tokenizer.json).
//!
//! GGUF keeps the byte-level BPE vocabulary (`tokenizer.ggml.tokens`), the merges and
//! the token types, and names the pre-tokenizer (`tokenizer.ggml.pre`). We rebuild the
//! pipeline that the original `tokenizer.json` used for each known `pre` value:
//! SmolLM2 (`smollm`) splits digits one by one and then applies GPT-2's byte-level
//! regex **without** a prefix space (candle's own GGUF helper falls back to a prefix
//! space for unknown `pre` values, which shifts every token of a SmolLM2 prompt).

use super::config::meta_str;
use super::ModelError;
use candle_core::quantized::gguf_file;
use std::path::Path;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::tokenizer::SplitDelimiterBehavior;
use tokenizers::{AddedToken, Tokenizer};

const REGEX_QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const REGEX_LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn tok_err(path: &Path, what: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer {
        path: path.to_path_buf(),
        message: what.to_string(),
    }
}

fn strings(ct: &gguf_file::Content, path: &Path, key: &str) -> Result<Vec<String>, ModelError> {
    match ct.metadata.get(key) {
        Some(gguf_file::Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                gguf_file::Value::String(s) => Ok(s.clone()),
                other => Err(tok_err(
                    path,
                    format!("`{key}`[{i}]: expected a string, found {other:?}"),
                )),
            })
            .collect(),
        _ => Err(tok_err(
            path,
            format!("`{key}`: expected an array of strings"),
        )),
    }
}

fn split_regex(regex: &str, path: &Path) -> Result<PreTokenizerWrapper, ModelError> {
    let split = Split::new(
        SplitPattern::Regex(regex.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| tok_err(path, e))?;
    Ok(split.into())
}

/// Builds the tokenizer of a GGUF file. Only byte-level BPE (`gpt2` model) is supported.
pub fn tokenizer_from_gguf(ct: &gguf_file::Content, path: &Path) -> Result<Tokenizer, ModelError> {
    let model = meta_str(ct, path, "tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(tok_err(
            path,
            format!("tokenizer.ggml.model: expected `gpt2` (byte-level BPE), found `{model}`"),
        ));
    }
    let tokens = strings(ct, path, "tokenizer.ggml.tokens")?;
    let merges = strings(ct, path, "tokenizer.ggml.merges")?
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| {
                    tok_err(
                        path,
                        format!("tokenizer.ggml.merges[{i}] = `{m}`: expected two tokens"),
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| tok_err(path, e))?;
    let mut tokenizer = Tokenizer::new(bpe);

    let pre = meta_str(ct, path, "tokenizer.ggml.pre").unwrap_or_else(|_| "gpt2".to_string());
    let byte_level = |prefix: bool, regex: bool| ByteLevel::new(prefix, true, regex);
    let pre_tokenizer: PreTokenizerWrapper = match pre.as_str() {
        // SmolLM / SmolLM2: tokenizer.json has Sequence[Digits(individual), ByteLevel].
        "smollm" => Sequence::new(vec![
            Digits::new(true).into(),
            byte_level(false, true).into(),
        ])
        .into(),
        "qwen2" => {
            tokenizer
                .with_normalizer(Some(NFC))
                .map_err(|e| tok_err(path, e))?;
            Sequence::new(vec![
                split_regex(REGEX_QWEN2, path)?,
                byte_level(false, false).into(),
            ])
            .into()
        }
        "llama3" | "llama-bpe" | "smaug-bpe" => Sequence::new(vec![
            split_regex(REGEX_LLAMA3, path)?,
            byte_level(false, false).into(),
        ])
        .into(),
        "gpt2" | "default" => byte_level(false, true).into(),
        other => {
            return Err(tok_err(
                path,
                format!(
                    "tokenizer.ggml.pre: `{other}` is not supported (expected smollm, qwen2, llama3, llama-bpe, smaug-bpe or gpt2)"
                ),
            ))
        }
    };
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));

    // Control tokens (type 3) such as <|im_start|> are matched whole, never split.
    if let Some(gguf_file::Value::Array(types)) = ct.metadata.get("tokenizer.ggml.token_type") {
        let specials: Vec<AddedToken> = types
            .iter()
            .zip(&tokens)
            .filter(|(t, _)| matches!(t, gguf_file::Value::I32(3) | gguf_file::Value::U32(3)))
            .map(|(_, tok)| AddedToken::from(tok.clone(), true))
            .collect();
        if !specials.is_empty() {
            tokenizer
                .add_special_tokens(specials)
                .map_err(|e| tok_err(path, e))?;
        }
    }
    Ok(tokenizer)
}

/// Token ids of `text`, without special tokens added.
pub fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>, ModelError> {
    tokenizer
        .encode(text, false)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| ModelError::Tokenizer {
            path: Default::default(),
            message: format!("cannot encode {text:?}: {e}"),
        })
}
