//! Human-readable outputs of a run, made from its typed report ([`schema::Report`],
//! what the engine fills and writes as `report.json`).
//!
//! - [`schema`]: report.json's types, shared by the engine and every reader.
//! - [`report`]: the Markdown report (baseline, best candidate, candidates with their
//!   prediction histograms, collapse warnings, export sizes, stage timings).
//! - [`compare`]: several runs side by side (held-out figures, search cost, the
//!   speedup of c2i over LASER per task), for `c2i compare`.
//! - [`plots`]: hand-written SVG charts (scores by layer, selection accuracy against
//!   the kept share of singular values), byte-identical for the same input.
//! - [`study`]: `c2i study`'s figures (do the score rules predict the measured gains?),
//!   its Markdown tables and one SVG scatter per rule.

pub mod compare;
pub mod plots;
pub mod report;
pub mod schema;
pub mod study;
