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

/// The embedded default: a small DINOv3-style QLoRA run on generated synthetic clips.
pub const QUICKSTART_CONFIG: &str = include_str!("../../../configs/quickstart.yaml");
