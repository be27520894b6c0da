//! End-to-end tests that drive the `c2i` binary, as one test binary: each test binary
//! links candle, and on two cores each link costs about a minute.

mod engine_cache;
mod executors;
mod export_model;
mod faults;
mod newcomer;
mod remote_cache;
mod study;
mod support;
mod tasks;
mod trust;
