//! Evaluation: LASER's metrics and c2i's diagnostics ([`metrics`]), and the batched
//! evaluator ([`evaluator`]) with its pieces: choice scoring with the prompt computed
//! once for all choices ([`choice`]), KV-cached greedy generation ([`generate`]) and
//! layer-prefix reuse ([`prefix`]).

pub mod choice;
pub mod evaluator;
pub mod generate;
pub mod metrics;
pub mod prefix;
pub mod race;

pub use evaluator::{
    evaluate, first_changed_layer, EvalError, EvalOptions, EvalResult, EvalSample, EvalSet,
    Forward, Gold, Prediction, SampleAnswer, SampleRecord, TaskMetrics,
};
pub use prefix::Prefix;
