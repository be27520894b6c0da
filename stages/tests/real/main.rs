//! The stages' integration tests on the real SmolLM2 model and the shared data sets,
//! as one test binary: every test binary links candle, and on two cores each link
//! costs about a minute, so the suites are modules of one crate.

mod common;
mod data_real;
mod eval_real;
mod factor_real;
mod families;
mod fuzz_headers;
mod grad_real;
mod model_real;
mod svgrad_real;
