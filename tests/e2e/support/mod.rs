//! What the end-to-end tests share: a real S3 server (moto) and a tiny pipeline.

pub mod moto;
pub mod tiny;
