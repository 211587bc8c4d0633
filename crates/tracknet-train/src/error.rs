//! Errors of a training, evaluation or prediction run.

use std::path::PathBuf;

/// Anything that stops a run; each names the file, key, epoch or step concerned.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Configuration.
    #[error(transparent)]
    Config(#[from] tracknet_config::ConfigError),
    /// Model building.
    #[error(transparent)]
    Model(#[from] tracknet_vit::model::ModelError),
    /// Data.
    #[error(transparent)]
    Data(#[from] tracknet_data::DataError),
    /// LoRA / adapter files.
    #[error(transparent)]
    Lora(#[from] tracknet_lora::LoraError),
    /// File I/O.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A checkpoint that cannot be read or does not fit.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint file or folder.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The loss or a gradient became NaN/inf.
    #[error(
        "non-finite {what} at epoch {epoch}, step {step} (global step {global_step}); {saved}. \
         Lower training.optimizer.lr, set training.grad_clip_norm, or check the data"
    )]
    NonFinite {
        /// `loss` or `gradient`.
        what: String,
        /// Epoch (1-based).
        epoch: usize,
        /// Step within the epoch (1-based).
        step: usize,
        /// Optimizer steps before this one.
        global_step: usize,
        /// Where the last good state is (a sentence).
        saved: String,
    },
    /// Out of memory with no smaller micro-batch left to try.
    #[error(
        "out of memory at micro-batch {micro_batch} after {retries} retries; {why}. Lower \
         training.batch_size or training.min_micro_batch_size, or raise training.oom_retries"
    )]
    OutOfMemory {
        /// The micro-batch size reached.
        micro_batch: usize,
        /// Halvings tried for this batch.
        retries: usize,
        /// Why the search stopped (a sentence).
        why: String,
    },
    /// `--device` / `training.device` that names no device.
    #[error("device `{value}`: {message}")]
    Device {
        /// The value given.
        value: String,
        /// What was expected.
        message: String,
    },
    /// A CUDA device asked of a build without the `cuda` feature.
    #[error(
        "this build has no CUDA backend; rebuild with `--features cuda` (cargo xtask … --device cuda does)"
    )]
    NoCuda,
    /// Config files named in a combination that selects nothing.
    #[error(
        "give either --config FILE, or all three of --model, --data and --training (or nothing, for the embedded quick-start)"
    )]
    ConfigSelection,
    /// An output folder that would overwrite something.
    #[error("--out {}: the folder exists and is not empty (nothing was written)", path.display())]
    OutputNotEmpty {
        /// The folder.
        path: PathBuf,
    },
    /// A `WxH` size flag that does not parse.
    #[error("{flag}: expected WxH like 512x288, got `{value}`")]
    Size {
        /// The flag (`--size`).
        flag: &'static str,
        /// The value given.
        value: String,
    },
    /// A split with no usable frame.
    #[error("no usable frames (train {train}, val {val}) under {}", root.display())]
    NoFrames {
        /// Usable training frames.
        train: usize,
        /// Usable validation frames.
        val: usize,
        /// The data root.
        root: PathBuf,
    },
    /// A bench or tool option out of its range.
    #[error("{option}: {message}")]
    Option {
        /// The option (`--mode`, `--decoder`, …).
        option: &'static str,
        /// What was expected, and what was given.
        message: String,
    },
}

/// `map_err` helper for I/O.
pub fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.into();
    move |source| TrainError::Io { path, source }
}
