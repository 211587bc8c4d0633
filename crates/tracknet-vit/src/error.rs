//! Errors of the backbones and of Hugging Face snapshot loading.

use std::path::PathBuf;

/// Everything that can go wrong when resolving, reading or running a backbone.
///
/// Every variant names the file, key or tensor involved so that a failed run says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum VitError {
    /// A file could not be read (missing, permissions, ...).
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// `config.json` (or a sharded index) is not valid JSON or has wrong types.
    #[error("invalid {path}: {message}")]
    Json { path: PathBuf, message: String },

    /// The configuration is readable but describes something this crate cannot build.
    #[error("unsupported configuration in {path}: {message}")]
    Config { path: PathBuf, message: String },

    /// A weights file is truncated, corrupt or not safetensors at all.
    #[error("{path} is not a valid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },

    /// A tensor has a dtype that cannot be converted to f32.
    #[error("{path}: tensor `{key}` has dtype {dtype}; expected F32, F16, BF16 or F64")]
    Dtype {
        path: PathBuf,
        key: String,
        dtype: String,
    },

    /// The same canonical tensor name is provided twice (for example under both naming schemes).
    #[error("{path}: tensor `{key}` is given twice (as `{first}` and `{second}`)")]
    DuplicateTensor {
        path: PathBuf,
        key: String,
        first: String,
        second: String,
    },

    /// A model id or directory could not be resolved to a local snapshot.
    #[error("snapshot `{name}` not found locally (no download is attempted{hint}); looked in:\n{}",
        .searched.iter().map(|p| format!("  - {}", p.display())).collect::<Vec<_>>().join("\n"))]
    SnapshotNotFound {
        name: String,
        searched: Vec<PathBuf>,
        hint: String,
    },

    /// The weights do not match the architecture of `config.json`. All problems are listed at once.
    #[error("weights in {snapshot} do not match the model: {}", describe_weights(.missing, .unexpected, .mismatched))]
    Weights {
        snapshot: PathBuf,
        /// Canonical names the model needs but the checkpoint lacks.
        missing: Vec<String>,
        /// Checkpoint names the model does not use (and that are not known-unused).
        unexpected: Vec<String>,
        /// `(name, expected shape, found shape)`.
        mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
    },

    /// A bitsandbytes 4-bit tensor or `quantization_config` that cannot be read.
    #[error("{path}: {source}")]
    Bnb {
        path: PathBuf,
        #[source]
        source: tracknet_quant::QuantError,
    },

    /// The input tensor cannot be processed by the backbone.
    #[error("invalid backbone input of shape {shape:?}: {message}")]
    Input { shape: Vec<usize>, message: String },
    /// Multi-frame input on a backbone that takes neither 3 channels nor 3 per frame.
    #[error(
        "data.sequence.length: {frames} frames need a backbone with 3 input channels (inflated) \
         or {}; this one takes {channels}",
        3 * frames
    )]
    InputFrames { frames: usize, channels: usize },
}

fn describe_weights(
    missing: &[String],
    unexpected: &[String],
    mismatched: &[(String, Vec<usize>, Vec<usize>)],
) -> String {
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("missing [{}]", missing.join(", ")));
    }
    if !unexpected.is_empty() {
        parts.push(format!("unexpected [{}]", unexpected.join(", ")));
    }
    if !mismatched.is_empty() {
        let items: Vec<String> = mismatched
            .iter()
            .map(|(k, e, f)| format!("{k}: expected {e:?}, found {f:?}"))
            .collect();
        parts.push(format!("mismatched shapes [{}]", items.join(", ")));
    }
    parts.join("; ")
}
