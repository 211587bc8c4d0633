//! The `training` section: loop, optimizer, schedule, loss, evaluation, outputs.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use crate::enums::{DeviceSpec, LossName, OptimizerName, Precision, SchedulerName};

/// Metric names accepted by `training.best_metric`.
pub const BEST_METRICS: &[&str] = &["val_loss", "f1", "pck", "l2"];

/// `training:` — everything about the optimization run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct TrainingConfig {
    /// Seed for initialization, shuffling and augmentation.
    pub seed: u64,
    /// Samples per optimizer step (≥ 1).
    pub batch_size: usize,
    /// Number of epochs (≥ 1).
    pub epochs: usize,
    /// Mixed precision: compute in `precision` (fp16/bf16) where supported.
    pub amp: bool,
    /// Compute precision under `amp`.
    pub precision: Precision,
    /// Legacy gradient-clip value (max global L2 norm); used only when `grad_clip_norm` is
    /// `null`/absent. `null` or `0`: no clipping.
    pub grad_clip: Option<f64>,
    /// Max global L2 norm of the gradients before each step; wins over `grad_clip`.
    /// `0`: no clipping.
    pub grad_clip_norm: Option<f64>,
    /// Keep the backbone frozen for this many initial epochs, then unfreeze it (0: no schedule).
    pub backbone_freeze_epochs: usize,
    /// On out-of-memory, retry the batch split into smaller micro-batches.
    pub adaptive_micro_batch: bool,
    /// Smallest micro-batch the adaptive split goes down to (≥ 1).
    pub min_micro_batch_size: usize,
    /// Each OOM retry divides the micro-batch by this (≥ 2).
    pub mb_backoff_factor: usize,
    /// Maximum OOM retries per batch.
    pub oom_retries: usize,
    /// Fixed micro-batch size with gradient accumulation; `0`: no split.
    pub micro_batch_size: usize,
    /// Shards a batch is split into, run at once on separate threads (CPU backend), their
    /// gradients summed as micro-batches' are; `1`: no split.
    pub parallel_shards: usize,
    /// Loader settings.
    pub data_loader: DataLoaderConfig,
    /// Optimizer.
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule.
    pub scheduler: SchedulerConfig,
    /// Heatmap loss.
    pub loss: LossConfig,
    /// Recompute backbone activations in the backward pass to save memory.
    pub gradient_checkpointing: bool,
    /// `cpu`, `cuda`, `cuda:N` or `wgpu`.
    pub device: String,
    /// Cap on optimizer steps per epoch (`null`: the whole split).
    pub steps_per_epoch: Option<usize>,
    /// Cap on validation batches per evaluation (`null`: the whole split).
    pub val_steps: Option<usize>,
    /// Metric that selects the best checkpoint: `val_loss`, `l2` (lower is better),
    /// `f1`, `pck` (higher is better).
    pub best_metric: String,
    /// Evaluation thresholds.
    pub eval: EvalConfig,
    /// Validation frames rendered as overlay previews per epoch.
    pub preview_frames: usize,
    /// Log training metrics every this many steps (≥ 1).
    pub log_every: usize,
    /// Root of run outputs.
    pub output_dir: PathBuf,
    /// The original's separate log folder. Accepted for compatibility and has no effect: a
    /// run's logs, metrics and previews all go into its run folder (a warning says so).
    pub log_dir: Option<PathBuf>,
    /// The original's separate checkpoint folder. Accepted for compatibility and has no
    /// effect: checkpoints go into `<run>/checkpoints`, where `--resume`, `eval` and `predict`
    /// find them (a warning says so).
    pub ckpt_dir: Option<PathBuf>,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            batch_size: 32,
            epochs: 20,
            amp: true,
            precision: Precision::Fp16,
            grad_clip: Some(1.0),
            grad_clip_norm: None,
            backbone_freeze_epochs: 10,
            adaptive_micro_batch: true,
            min_micro_batch_size: 4,
            mb_backoff_factor: 2,
            oom_retries: 3,
            micro_batch_size: 0,
            parallel_shards: 2,
            data_loader: DataLoaderConfig::default(),
            optimizer: OptimizerConfig::default(),
            scheduler: SchedulerConfig::default(),
            loss: LossConfig::default(),
            gradient_checkpointing: false,
            device: "cpu".into(),
            steps_per_epoch: None,
            val_steps: None,
            best_metric: "val_loss".into(),
            eval: EvalConfig::default(),
            preview_frames: 4,
            log_every: 10,
            output_dir: PathBuf::from("outputs"),
            log_dir: None,
            ckpt_dir: None,
        }
    }
}

impl TrainingConfig {
    /// The gradient-clipping max norm in force: `grad_clip_norm` if set, else `grad_clip`;
    /// `None` when that is unset or `0`.
    pub fn effective_grad_clip_norm(&self) -> Option<f64> {
        self.grad_clip_norm.or(self.grad_clip).filter(|v| *v > 0.0)
    }

    /// Whether mixed precision is in force (`amp` and a half-width `precision`).
    pub fn mixed_precision(&self) -> bool {
        self.amp && self.precision != Precision::Fp32
    }

    /// `device` parsed (`None` if it does not parse; validation reports that).
    pub fn device_spec(&self) -> Option<DeviceSpec> {
        self.device.parse().ok()
    }

    /// Whether a larger `best_metric` is better (`f1`, `pck`).
    pub fn best_metric_higher_is_better(&self) -> bool {
        matches!(self.best_metric.as_str(), "f1" | "pck")
    }
}

/// `training.data_loader:`
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct DataLoaderConfig {
    /// Loader worker threads (0: batches are built on the training thread, no prefetch).
    pub num_workers: usize,
    /// PyTorch's page-locked host buffers. No effect here (a warning says so): batches are
    /// built in ordinary host memory on every backend.
    pub pin_memory: Option<bool>,
    /// PyTorch's worker reuse across epochs. No effect here (a warning says so): loader
    /// threads are cheap and start per epoch.
    pub persistent_workers: Option<bool>,
    /// Batches prepared ahead per worker.
    pub prefetch_factor: usize,
    /// Drop the last incomplete batch.
    pub drop_last: bool,
}

impl Default for DataLoaderConfig {
    fn default() -> Self {
        Self {
            num_workers: 4,
            pin_memory: None,
            persistent_workers: None,
            prefetch_factor: 2,
            drop_last: false,
        }
    }
}

/// `training.optimizer:`
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct OptimizerConfig {
    /// `adamw` or `sgd` (case-insensitive).
    pub name: OptimizerName,
    /// Peak learning rate (> 0).
    pub lr: f64,
    /// Weight decay (≥ 0; decoupled for AdamW).
    pub weight_decay: f64,
    /// AdamW betas, each in [0, 1).
    pub betas: [f64; 2],
    /// AdamW epsilon (> 0).
    pub eps: f64,
    /// SGD momentum, in [0, 1).
    pub momentum: f64,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            name: OptimizerName::AdamW,
            lr: 5e-4,
            weight_decay: 0.05,
            betas: [0.9, 0.999],
            eps: 1e-8,
            momentum: 0.9,
        }
    }
}

/// `training.scheduler:` — per-epoch learning-rate schedule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct SchedulerConfig {
    /// `cosine` or `constant` (case-insensitive).
    pub name: SchedulerName,
    /// Linear warmup epochs (0: none).
    pub warmup_epochs: usize,
    /// Warmup starts at `lr * warmup_start_factor`, in (0, 1].
    pub warmup_start_factor: f64,
    /// Cosine floor (≥ 0).
    pub min_lr: f64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            name: SchedulerName::Cosine,
            warmup_epochs: 3,
            warmup_start_factor: 0.1,
            min_lr: 0.0,
        }
    }
}

/// `training.loss:`
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct LossConfig {
    /// `mse` or `focal` (case-insensitive).
    pub name: LossName,
    /// Focal-loss α (the Python key `alpha` is accepted too).
    #[serde(alias = "alpha")]
    pub focal_alpha: f64,
    /// Focal-loss β (the Python key `beta` is accepted too).
    #[serde(alias = "beta")]
    pub focal_beta: f64,
    /// Weight of positive (ball) pixels (`null`: 1): multiplies the positive term of `focal`
    /// (as `BCEWithLogitsLoss(pos_weight)`), and weights each `mse` pixel by
    /// `1 + (pos_weight - 1) · target`.
    pub pos_weight: Option<f64>,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            name: LossName::Mse,
            focal_alpha: 2.0,
            focal_beta: 4.0,
            pos_weight: None,
        }
    }
}

/// `training.eval:` — detection metrics.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct EvalConfig {
    /// Heatmap peak value above which the ball counts as detected, in [0, 1].
    pub threshold: f64,
    /// A detection is a true positive within this distance of the label, in input pixels
    /// at the 512×288 resize (scaled with other resizes).
    pub tolerance_px: f64,
    /// PCK radius in heatmap pixels.
    pub pck_radius: f64,
    /// The TrackNet papers' protocol (TP/TN/FP1/FP2/FN): a detection within this distance of
    /// the label in pixels of the original frame (`Label.csv`'s coordinates, not scaled) is a
    /// TP. 5 px is the usual figure for 1280×720 tennis frames.
    pub protocol_tolerance_px: f64,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            threshold: 0.5,
            tolerance_px: 4.0,
            pck_radius: 3.0,
            protocol_tolerance_px: 5.0,
        }
    }
}
