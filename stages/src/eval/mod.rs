//! Evaluation: LASER's metrics and c2i's diagnostics ([`metrics`]). The batched
//! evaluator with layer-prefix reuse will live here too.

pub mod metrics;
