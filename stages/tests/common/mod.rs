//! Helpers shared by the integration tests.

use std::path::PathBuf;

/// The team's data sets: `$C2I_SHARED_DATASETS`, else `shared/datasets` beside the
/// workspace (where CI puts it). A missing directory fails the test: these tests must
/// never pass by skipping.
#[allow(dead_code)]
pub fn shared_datasets() -> PathBuf {
    let dir = std::env::var_os("C2I_SHARED_DATASETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/datasets"));
    assert!(
        dir.is_dir(),
        "no shared data sets at {}: put shared/ beside the workspace or set C2I_SHARED_DATASETS",
        dir.display()
    );
    dir
}
