//! The `data` section: dataset location, split, preprocessing.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `data:` — where the TrackNet dataset lives and how frames are prepared.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct DataConfig {
    /// Dataset root (`<root>/<game>/<clip>/...`).
    pub root: PathBuf,
    /// Which games train and which validate.
    pub split: SplitConfig,
    /// Resize / normalization / augmentation.
    pub preprocess: PreprocessConfig,
    /// Multi-frame input.
    pub sequence: SequenceConfig,
    /// `true`: any malformed clip or label row is an error; `false`: skipped with a report.
    pub strict: bool,
    /// When set, a synthetic dataset is generated at `root` if `root` does not exist.
    pub synthetic: Option<SyntheticConfig>,
    /// Cap on frames per split (after indexing), for quick runs. `null`: no cap.
    pub max_frames_per_split: Option<usize>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            root: PathBuf::from("data/tracknet"),
            split: SplitConfig::default(),
            preprocess: PreprocessConfig::default(),
            sequence: SequenceConfig::default(),
            strict: false,
            synthetic: None,
            max_frames_per_split: None,
        }
    }
}

/// `data.split:` — game directory names per split.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct SplitConfig {
    /// Training games (non-empty).
    pub train_games: Vec<String>,
    /// Validation games (non-empty).
    pub val_games: Vec<String>,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self {
            train_games: (1..=9).map(|i| format!("game{i}")).collect(),
            val_games: vec!["game10".into()],
        }
    }
}

/// `data.preprocess:`
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct PreprocessConfig {
    /// Network input size `[W, H]`; both divisible by `model.backbone.patch_size`.
    pub resize: [usize; 2],
    /// Normalize with the ImageNet mean/std.
    pub normalize: bool,
    /// Probability of a horizontal flip per training sample, in [0, 1].
    pub flip_prob: f64,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self {
            resize: [512, 288],
            normalize: true,
            flip_prob: 0.0,
        }
    }
}

impl PreprocessConfig {
    /// Input width.
    pub fn width(&self) -> usize {
        self.resize[0]
    }
    /// Input height.
    pub fn height(&self) -> usize {
        self.resize[1]
    }
}

/// `data.sequence:` — multi-frame samples, as TrackNet v2–v4: `length` frames ending at the
/// labelled frame, `stride` frames apart, stacked on the channel axis (`[3·length, H, W]`).
/// Frames before the clip start repeat the clip's first frame; a sample never crosses a clip.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct SequenceConfig {
    /// Use multi-frame samples.
    pub enabled: bool,
    /// Frames per sample, the labelled frame last (1..=16).
    pub length: usize,
    /// Frames between consecutive frames of a sample (≥ 1; 1 = adjacent frames).
    pub stride: usize,
}

impl SequenceConfig {
    /// Frames per sample as the model sees them: `length` when enabled, else 1.
    pub fn frames(&self) -> usize {
        if self.enabled { self.length.max(1) } else { 1 }
    }
}

impl Default for SequenceConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            length: 1,
            stride: 1,
        }
    }
}

/// `data.synthetic:` — parameters of the generated stand-in dataset.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct SyntheticConfig {
    /// Number of games.
    pub games: usize,
    /// Clips per game.
    pub clips: usize,
    /// Frames per clip.
    pub frames: usize,
    /// Frame size `[W, H]`.
    pub size: [usize; 2],
    /// RNG seed; the same seed gives the same dataset.
    pub seed: u64,
    /// Ball radius relative to the generator's default (1.0); larger is easier.
    pub ball_scale: f32,
    /// Static ball-like blobs per clip (balls lying on the court): only motion tells them
    /// from the ball in play, which is what multi-frame input learns.
    pub distractors: usize,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            games: 10,
            clips: 2,
            frames: 16,
            size: [512, 288],
            seed: 0,
            ball_scale: 1.0,
            distractors: 2,
        }
    }
}
