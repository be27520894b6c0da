//! The chat template a model file carries: GGUF metadata `tokenizer.chat_template`,
//! or `chat_template` in a Hugging Face directory's `tokenizer_config.json` (a string,
//! or a list of `{name, template}` of which `default` is taken). The data side renders
//! it ([`crate::data::chat`]).

use super::ModelError;
use candle_core::quantized::gguf_file;
use std::path::Path;

/// The model's chat template, `None` when the file carries none.
pub fn chat_template(path: &Path) -> Result<Option<String>, ModelError> {
    if path.is_dir() {
        let cfg = path.join("tokenizer_config.json");
        if !cfg.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&cfg).map_err(|source| ModelError::Io {
            path: cfg.clone(),
            source,
        })?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Format {
            path: cfg.clone(),
            message: format!("not valid JSON: {e}"),
        })?;
        let bad = || ModelError::Config {
            path: cfg.clone(),
            field: "chat_template".into(),
            expected: "a string, or a list of {\"name\", \"template\"} with a `default`".into(),
        };
        return match v.get("chat_template") {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(serde_json::Value::Array(xs)) => xs
                .iter()
                .find(|x| x.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|x| x.get("template")?.as_str())
                .map(|s| Some(s.to_owned()))
                .ok_or_else(bad),
            Some(_) => Err(bad()),
        };
    }
    let mut f = std::fs::File::open(path).map_err(|source| ModelError::Io {
        path: path.to_owned(),
        source,
    })?;
    let ct = super::gguf::read_content(&mut f, path)?;
    match ct.metadata.get("tokenizer.chat_template") {
        None => Ok(None),
        Some(gguf_file::Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ModelError::Config {
            path: path.to_owned(),
            field: "tokenizer.chat_template".into(),
            expected: "a string".into(),
        }),
    }
}
