//! The model: one decoder for the llama, mistral, qwen2 and gemma3 families. Weights
//! from GGUF or safetensors through the family adapters ([`family`]), the tokenizer,
//! the config that defines a layer ([`config`]), the decoder on candle's ops
//! ([`decoder`]: the differentiable reference, any device) and on hand-written CPU
//! kernels ([`ops`]: the gradient pass and the evaluator's forward).

pub mod config;
pub mod decoder;
pub mod family;
pub mod gguf;
pub mod names;
pub mod ops;
#[cfg(test)]
pub(crate) mod tiny;
pub mod tokenizer;
pub mod weights;

pub use config::{Family, ModelConfig};
pub use decoder::{Batch, Decoder, Padding, Target};
pub use names::{MatrixId, MatrixKind};
pub use weights::{LoadedModel, Weights};

use std::path::PathBuf;

/// Errors from loading or running a model. Each names the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: field `{field}`: expected {expected}")]
    Config {
        path: PathBuf,
        field: String,
        expected: String,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: tokenizer: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("{path}: missing tensor `{name}`")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{path}: tensor `{name}` contains NaN or infinite values")]
    NonFinite { path: PathBuf, name: String },
    #[error("invalid input: {0}")]
    Input(String),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}
