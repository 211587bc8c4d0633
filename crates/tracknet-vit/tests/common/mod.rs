//! Helpers shared by the integration tests that read the reference fixtures.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The fixture root: `$TRACKNET_FIXTURES`, else the repository's `tests/fixtures`.
pub fn fixtures() -> PathBuf {
    std::env::var_os("TRACKNET_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures"))
        })
}

/// `path`, failing (not skipping) when the fixture file is missing.
pub fn need(path: &Path) -> &Path {
    assert!(path.exists(), "fixture file missing: {}", path.display());
    path
}

/// Overrides for a heatmap model on the tiny fixture backbone in `snapshot` (hidden 64): a
/// one-stage decoder, a 96×64 input and a 12×8 heatmap, no hub model.
pub fn tiny_model_on(snapshot: &Path) -> Vec<String> {
    vec![
        format!("model.backbone.weights={}", snapshot.display()),
        "model.pretrained_model_name=null".into(),
        "model.decoder.channels=[64,16]".into(),
        "model.decoder.upsample=[2]".into(),
        "model.heatmap.size=[12,8]".into(),
        "data.preprocess.resize=[96,64]".into(),
    ]
}
