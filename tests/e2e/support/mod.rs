//! What the end-to-end tests share: a real S3 server (moto) and a tiny pipeline.

pub mod fixture;
pub mod moto;
pub mod slurm;
pub mod tiny;
