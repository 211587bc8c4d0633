//! Helpers shared by the tests that read the reference fixtures.

use std::path::Path;

pub use tracknet_testkit::{fixtures, need};

/// A snapshot's `config.json` (transformers'), failing with its path.
#[track_caller]
pub fn snapshot_config(snapshot: &Path) -> serde_json::Value {
    let path = snapshot.join("config.json");
    serde_json::from_slice(&tracknet_testkit::read(need(&path)))
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// An unsigned integer of a snapshot's `config.json` (`hidden_size`, `patch_size`,
/// `num_hidden_layers`, …), failing with the key.
#[track_caller]
pub fn config_usize(snapshot: &Path, key: &str) -> usize {
    snapshot_config(snapshot)[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{}/config.json lacks `{key}`", snapshot.display())) as usize
}

/// `[W, H]` of an input the snapshot's own patches tile as a 6×4 grid.
#[track_caller]
pub fn input_size(snapshot: &Path) -> [usize; 2] {
    let patch = config_usize(snapshot, "patch_size");
    [6 * patch, 4 * patch]
}

/// Overrides for a heatmap model on the fixture backbone in `snapshot`, sized from its
/// `config.json`: a one-stage decoder from its hidden size, an [`input_size`] input (a 6×4 patch
/// grid) and a 12×8 heatmap, no hub model.
pub fn tiny_model_on(snapshot: &Path) -> Vec<String> {
    model_on(snapshot, [12, 8])
}

/// [`tiny_model_on`] with a `[W, H]` heatmap (the decoder's 12×8 output is resampled to it).
pub fn model_on(snapshot: &Path, heatmap: [usize; 2]) -> Vec<String> {
    let hidden = config_usize(snapshot, "hidden_size");
    let [w, h] = input_size(snapshot);
    vec![
        format!("model.backbone.weights={}", snapshot.display()),
        "model.pretrained_model_name=null".into(),
        format!("model.decoder.channels=[{hidden},16]"),
        "model.decoder.upsample=[2]".into(),
        format!("model.heatmap.size=[{},{}]", heatmap[0], heatmap[1]),
        format!("data.preprocess.resize=[{w},{h}]"),
    ]
}
