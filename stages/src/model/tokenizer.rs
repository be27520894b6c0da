//! A `tokenizers::Tokenizer` built from a GGUF file's metadata (no tokenizer.json),
//! and what a model file says of its special tokens.
//!
//! GGUF keeps either a byte-level BPE (`tokenizer.ggml.model = gpt2`: SmolLM2, Qwen,
//! Llama 3) with its merges, or a SentencePiece BPE (`llama`: Gemma, Llama 2, Mistral)
//! with one score per piece; plus the token types, and the name of the pre-tokenizer
//! (`tokenizer.ggml.pre`). We rebuild the pipeline the original `tokenizer.json` used:
//!
//! - byte-level BPE: for each known `pre` value its split regex. SmolLM2 (`smollm`)
//!   splits digits one by one and then applies GPT-2's byte-level regex **without** a
//!   prefix space (candle's own GGUF helper falls back to a prefix space for unknown
//!   `pre` values, which shifts every token of a SmolLM2 prompt).
//! - SentencePiece BPE: the merges are derived from the scores the way Hugging Face's
//!   converter does (every split of a piece into two pieces of the vocabulary, ranked
//!   by the score of the merged piece), with byte fallback, spaces written `▁`, and a
//!   leading `▁` only when `tokenizer.ggml.add_space_prefix` says so (not for Gemma).
//!
//! Control tokens (type 3) are special, user-defined ones (type 4) are matched whole
//! on the raw text (llama.cpp's converter writes their `▁` back as spaces). When the
//! file asks for a BOS token (`tokenizer.ggml.add_bos_token`, Gemma), a post-processor
//! adds it, and [`encode_prompt`] (add special tokens) gets it while [`encode`] (a
//! continuation) does not.

use super::gguf::Meta;
use super::ModelError;
use candle_core::quantized::gguf_file;
use std::collections::HashMap;
use std::path::Path;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::prepend::Prepend;
use tokenizers::normalizers::replace::Replace;
use tokenizers::normalizers::unicode::NFC;
use tokenizers::normalizers::utils::Sequence as NormalizerSequence;
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::TemplateProcessing;
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

/// Builds the tokenizer of a GGUF file: byte-level BPE (`gpt2`) or SentencePiece BPE
/// (`llama`).
pub fn tokenizer_from_gguf(ct: &gguf_file::Content, path: &Path) -> Result<Tokenizer, ModelError> {
    let meta = Meta::new(ct, path);
    let model = meta.str("tokenizer.ggml.model")?;
    let tokens = strings(ct, path, "tokenizer.ggml.tokens")?;
    let types = token_types(ct, path, tokens.len())?;
    let mut tokenizer = match model.as_str() {
        "gpt2" => byte_level_bpe(ct, path, &tokens)?,
        "llama" => sentencepiece_bpe(ct, path, &tokens, &types)?,
        other => {
            return Err(tok_err(
                path,
                format!(
                    "tokenizer.ggml.model: expected `gpt2` (byte-level BPE) or `llama` \
                     (SentencePiece BPE), found `{other}`"
                ),
            ))
        }
    };
    // Control tokens (type 3) such as <|im_start|> are matched whole and special;
    // user-defined ones (type 4) are matched whole on the raw text.
    let specials: Vec<AddedToken> = types
        .iter()
        .zip(&tokens)
        .filter(|(t, _)| **t == 3)
        .map(|(_, tok)| AddedToken::from(tok.clone(), true))
        .collect();
    if !specials.is_empty() {
        tokenizer
            .add_special_tokens(specials)
            .map_err(|e| tok_err(path, e))?;
    }
    let user: Vec<AddedToken> = types
        .iter()
        .zip(&tokens)
        .filter(|(t, _)| **t == 4)
        .map(|(_, tok)| AddedToken::from(tok.clone(), false).normalized(false))
        .collect();
    if !user.is_empty() {
        tokenizer.add_tokens(user).map_err(|e| tok_err(path, e))?;
    }
    let default_bos = model == "llama";
    if meta
        .opt_bool("tokenizer.ggml.add_bos_token")?
        .unwrap_or(default_bos)
    {
        let bos = meta
            .opt_u32("tokenizer.ggml.bos_token_id")?
            .ok_or_else(|| {
                tok_err(
                    path,
                    "tokenizer.ggml.add_bos_token is set but there is no bos_token_id",
                )
            })?;
        let text = tokens.get(bos as usize).ok_or_else(|| {
            tok_err(
                path,
                format!("bos_token_id {bos} is outside the vocabulary"),
            )
        })?;
        let template = TemplateProcessing::builder()
            .try_single(format!("{text} $A"))
            .and_then(|b| b.try_pair(format!("{text} $A $B")))
            .map_err(|e| tok_err(path, e))?
            .special_tokens(vec![(text.clone(), bos)])
            .build()
            .map_err(|e| tok_err(path, e))?;
        tokenizer.with_post_processor(Some(template));
    }
    Ok(tokenizer)
}

/// Each token's type (`tokenizer.ggml.token_type`; 1 = normal when absent).
fn token_types(ct: &gguf_file::Content, path: &Path, n: usize) -> Result<Vec<i64>, ModelError> {
    match ct.metadata.get("tokenizer.ggml.token_type") {
        None => Ok(vec![1; n]),
        Some(gguf_file::Value::Array(items)) if items.len() == n => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                gguf_file::Value::I32(t) => Ok(i64::from(*t)),
                gguf_file::Value::U32(t) => Ok(i64::from(*t)),
                other => Err(tok_err(
                    path,
                    format!(
                        "`tokenizer.ggml.token_type`[{i}]: expected an integer, found {other:?}"
                    ),
                )),
            })
            .collect(),
        Some(_) => Err(tok_err(
            path,
            format!("`tokenizer.ggml.token_type`: expected an array of {n} integers"),
        )),
    }
}

/// Byte-level BPE from the merges, with the `pre` value's split regex.
fn byte_level_bpe(
    ct: &gguf_file::Content,
    path: &Path,
    tokens: &[String],
) -> Result<Tokenizer, ModelError> {
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

    let pre = Meta::new(ct, path)
        .opt_str("tokenizer.ggml.pre")?
        .unwrap_or_else(|| "gpt2".to_string());
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
    Ok(tokenizer)
}

/// The merges a SentencePiece BPE vocabulary implies: every split of a piece into two
/// pieces of the vocabulary, ranked by the merged piece's score (higher first), ties by
/// the ids of the two halves (Hugging Face's `SentencePieceExtractor`).
pub fn sentencepiece_merges(tokens: &[String], scores: &[f32]) -> Vec<(String, String)> {
    let ids: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut merges: Vec<(f32, usize, usize, usize)> = Vec::new();
    for (merged, piece) in tokens.iter().enumerate() {
        for (cut, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(cut);
            if let (Some(&li), Some(&ri)) = (ids.get(l), ids.get(r)) {
                merges.push((scores[merged], merged, li, ri));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.2.cmp(&b.2)).then(a.3.cmp(&b.3)));
    merges
        .into_iter()
        .map(|(_, _, l, r)| (tokens[l].clone(), tokens[r].clone()))
        .collect()
}

/// SentencePiece BPE (Gemma, Llama 2): merges from the scores, byte fallback, `▁` for
/// spaces.
fn sentencepiece_bpe(
    ct: &gguf_file::Content,
    path: &Path,
    tokens: &[String],
    types: &[i64],
) -> Result<Tokenizer, ModelError> {
    let meta = Meta::new(ct, path);
    let scores: Vec<f32> = match ct.metadata.get("tokenizer.ggml.scores") {
        Some(gguf_file::Value::Array(items)) if items.len() == tokens.len() => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                gguf_file::Value::F32(x) => Ok(*x),
                other => Err(tok_err(
                    path,
                    format!("`tokenizer.ggml.scores`[{i}]: expected a float, found {other:?}"),
                )),
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(tok_err(
                path,
                format!(
                    "`tokenizer.ggml.scores`: expected {} floats (one per token)",
                    tokens.len()
                ),
            ))
        }
    };
    // Only normal pieces merge; control, user-defined, unused and byte pieces do not.
    let mergeable: Vec<String> = tokens
        .iter()
        .zip(types)
        .map(|(t, ty)| if *ty == 1 { t.clone() } else { String::new() })
        .collect();
    let merges = sentencepiece_merges(&mergeable, &scores);
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let unk_id = meta
        .opt_u32("tokenizer.ggml.unknown_token_id")?
        .unwrap_or(0);
    let unk = tokens.get(unk_id as usize).cloned().ok_or_else(|| {
        tok_err(
            path,
            format!("unknown_token_id {unk_id} is outside the vocabulary"),
        )
    })?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .unk_token(unk)
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(|e| tok_err(path, e))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let space_prefix = meta
        .opt_bool("tokenizer.ggml.add_space_prefix")?
        .unwrap_or(true);
    let replace = Replace::new(" ", "▁").map_err(|e| tok_err(path, e))?;
    let normalizer: NormalizerWrapper = if space_prefix {
        NormalizerSequence::new(vec![Prepend::new("▁".into()).into(), replace.into()]).into()
    } else {
        replace.into()
    };
    tokenizer
        .with_normalizer(Some(normalizer))
        .map_err(|e| tok_err(path, e))?;
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new("▁", " ").map_err(|e| tok_err(path, e))?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tokenizer)
}

/// The special tokens a model file names, and its chat template.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// The end of a chat turn, where it is not the end-of-sequence token (Gemma's
    /// `<end_of_turn>` in instruction-tuned files).
    pub eot: Option<u32>,
    pub pad: Option<u32>,
    /// Whether prompts start with the BOS token.
    pub add_bos: bool,
    /// The Jinja chat template (GGUF `tokenizer.chat_template`, or
    /// `tokenizer_config.json`'s `chat_template`).
    pub chat_template: Option<String>,
}

impl SpecialTokens {
    pub fn from_gguf(meta: &Meta<'_>) -> Result<SpecialTokens, ModelError> {
        let model = meta.opt_str("tokenizer.ggml.model")?;
        Ok(SpecialTokens {
            bos: meta.opt_u32("tokenizer.ggml.bos_token_id")?,
            eos: meta.opt_u32("tokenizer.ggml.eos_token_id")?,
            eot: meta.opt_u32("tokenizer.ggml.eot_token_id")?,
            pad: meta.opt_u32("tokenizer.ggml.padding_token_id")?,
            add_bos: meta
                .opt_bool("tokenizer.ggml.add_bos_token")?
                .unwrap_or(model.as_deref() == Some("llama")),
            chat_template: meta.opt_str("tokenizer.chat_template")?,
        })
    }

    /// From a Hugging Face directory: ids from `config.json` (an `eos_token_id` list
    /// gives the first as eos and the second as end of turn), the BOS rule and the chat
    /// template from `tokenizer_config.json`.
    pub fn from_hf_dir(dir: &Path, tokenizer: &Tokenizer) -> Result<SpecialTokens, ModelError> {
        let read = |name: &str| -> Result<Option<serde_json::Value>, ModelError> {
            let p = dir.join(name);
            match std::fs::read_to_string(&p) {
                Ok(text) => serde_json::from_str(&text)
                    .map(Some)
                    .map_err(|e| ModelError::Config {
                        path: p.clone(),
                        field: format!("line {} column {}", e.line(), e.column()),
                        expected: format!("a JSON object ({e})"),
                    }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(ModelError::Io { path: p, source }),
            }
        };
        let cfg = read("config.json")?.unwrap_or_default();
        let tok_cfg = read("tokenizer_config.json")?.unwrap_or_default();
        let ids = |v: &serde_json::Value| -> Vec<u32> {
            match v {
                serde_json::Value::Number(n) => n.as_u64().map(|x| x as u32).into_iter().collect(),
                serde_json::Value::Array(a) => a
                    .iter()
                    .filter_map(|x| x.as_u64().map(|x| x as u32))
                    .collect(),
                _ => Vec::new(),
            }
        };
        // A token named in tokenizer_config.json: a string or {"content": ...}.
        let named = |field: &str| -> Option<u32> {
            let v = tok_cfg.get(field)?;
            let text = v.as_str().or_else(|| v.get("content")?.as_str())?;
            tokenizer.token_to_id(text)
        };
        let eos_ids = ids(&cfg["eos_token_id"]);
        Ok(SpecialTokens {
            bos: ids(&cfg["bos_token_id"])
                .first()
                .copied()
                .or_else(|| named("bos_token")),
            eos: eos_ids.first().copied().or_else(|| named("eos_token")),
            eot: eos_ids.get(1).copied(),
            pad: ids(&cfg["pad_token_id"])
                .first()
                .copied()
                .or_else(|| named("pad_token")),
            add_bos: tok_cfg["add_bos_token"].as_bool().unwrap_or(false),
            chat_template: tok_cfg["chat_template"].as_str().map(str::to_string),
        })
    }

    /// The token that ends a greedy generation: the end of a turn, else end of sequence.
    pub fn stop(&self) -> Option<u32> {
        self.eot.or(self.eos)
    }
}

/// Token ids of a prompt: with the special tokens the model's tokenizer adds (the BOS
/// token of Gemma-style models), nothing else.
pub fn encode_prompt(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>, ModelError> {
    tokenizer
        .encode(text, true)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| ModelError::Tokenizer {
            path: Default::default(),
            message: format!("cannot encode {text:?}: {e}"),
        })
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
