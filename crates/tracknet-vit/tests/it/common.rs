//! Helpers shared by the tests that read the reference fixtures.

use std::path::Path;

pub use tracknet_testkit::{fixtures, need};

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
