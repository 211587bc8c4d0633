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
    /// A run without the checkpoint asked for (`best`, `last`).
    #[error("checkpoint {}: no complete `{which}` checkpoint in this run", pointer.display())]
    NoCheckpoint {
        /// The pointer file that is missing or names no complete folder.
        pointer: PathBuf,
        /// `best` or `last`.
        which: String,
    },
    /// A checkpoint file whose contents do not fit the model being loaded.
    #[error("checkpoint {}: {what} does not fit the model:\n  {}", path.display(), problems.join("\n  "))]
    CheckpointMismatch {
        /// The file.
        path: PathBuf,
        /// `weights` or `optimizer state`.
        what: &'static str,
        /// One line per tensor: what is missing, unexpected or mis-sized.
        problems: Vec<String>,
    },
    /// A checkpoint whose frozen base the config would not rebuild identically.
    #[error(
        "checkpoint {}: the rebuilt frozen base would not be the one this checkpoint trained on:\n  {}",
        path.display(),
        differences.join("\n  ")
    )]
    BaseMismatch {
        /// The checkpoint's `state.json`.
        path: PathBuf,
        /// One line per setting that differs, naming its key.
        differences: Vec<String>,
    },
    /// A `state.json` whose metrics history lacks columns.
    #[error(
        "checkpoint {}: metrics history is incomplete (expected the keys {}): {}",
        path.display(),
        columns.join(", "),
        problems.join("; ")
    )]
    IncompleteHistory {
        /// The `state.json`.
        path: PathBuf,
        /// The columns every row needs.
        columns: Vec<&'static str>,
        /// `history[i] lacks `key`` per gap.
        problems: Vec<String>,
    },
    /// A `state.json` that is not the run state's JSON.
    #[error("checkpoint {}: {source}", path.display())]
    StateJson {
        /// The file.
        path: PathBuf,
        /// The parser's (or writer's) error.
        source: serde_json::Error,
    },
    /// A checkpoint tensor file that is not safetensors, or holds a tensor that is not f32.
    #[error("checkpoint {}: {problem}", path.display())]
    TensorFile {
        /// The file.
        path: PathBuf,
        /// `not a valid safetensors file: …` or `KEY: expected F32, found …`.
        problem: String,
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
    /// `wgpu` asked for in a build without the backend.
    #[error(
        "this build has no wgpu backend; rebuild with `--features wgpu` (cargo xtask … --device wgpu does)"
    )]
    NoWgpu,
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
    /// An f32 snapshot asked of a 4-bit backbone.
    #[error(
        "model.quantization.enabled: a 4-bit backbone has no dense projection weights to write as an f32 snapshot; export a run trained without quantization"
    )]
    QuantizedExport,
    /// `predict --adapter` with an adapter whose LoRA settings are not the run's.
    #[error(
        "predict --adapter: {}: {key} is {adapter} in the adapter but {run} in the run; predict with a run trained with the adapter's settings (or train from it with model.lora.adapter_path)",
        dir.display()
    )]
    AdapterMismatch {
        /// The adapter folder.
        dir: PathBuf,
        /// The setting that differs (`r`, `scaling (lora_alpha, use_rslora)`).
        key: &'static str,
        /// Its value in the adapter.
        adapter: String,
        /// Its value in the run.
        run: String,
    },
    /// `train` into a folder that already holds files, without `--resume`: nothing in it is
    /// touched.
    #[error(
        "run folder {}: it already holds files (a run?) and is left as it is; continue that run with `--resume {}`, or give another --run-dir",
        path.display(), path.display()
    )]
    RunFolderInUse {
        /// The folder.
        path: PathBuf,
    },
    /// A training stopped by a signal, its state saved as the `last` checkpoint.
    #[error(
        "stopped at epoch {epoch}, step {step}; continue with `--resume {}`",
        run_dir.display()
    )]
    Stopped {
        /// The signal (2: SIGINT, 15: SIGTERM).
        signal: i32,
        /// The epoch it stopped in (1-based).
        epoch: usize,
        /// Steps of that epoch done (0 when it stopped at the epoch's start).
        step: usize,
        /// The run folder to resume.
        run_dir: PathBuf,
    },
    /// `predict` or `export` stopped by a signal before its output was complete: nothing was
    /// left at `out`.
    #[error("{what} stopped by {}: nothing was written to {}", crate::stop::signal_name(*signal), out.display())]
    Interrupted {
        /// The signal.
        signal: i32,
        /// `predict`, `export`.
        what: &'static str,
        /// The output folder it would have written.
        out: PathBuf,
    },
    /// A bench or tool option out of its range.
    #[error("{option}: {message}")]
    InvalidOption {
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
