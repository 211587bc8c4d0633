//! Training, evaluation and prediction for the TrackNet heatmap model: losses, optimizer,
//! schedule, the loop, checkpoints, and the `tracknet` CLI's building blocks.

pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod error;
pub mod eval;
pub mod loss;
pub mod optim;
pub mod predict;
pub mod progress;
pub mod schedule;
pub mod trainer;

pub use error::TrainError;
pub use trainer::{TrainOptions, TrainSummary, train};

/// The embedded default, stage 2: QLoRA fine-tuning of the pre-trained small backbone.
pub const QUICKSTART_CONFIG: &str = include_str!("../../../configs/quickstart.yaml");
/// The embedded default, stage 1: a short full pre-training of a small DINOv3-style backbone.
pub const QUICKSTART_PRETRAIN_CONFIG: &str =
    include_str!("../../../configs/quickstart_pretrain.yaml");
