//! Errors of the LoRA crate.

use std::path::PathBuf;

/// Everything that can go wrong when targeting, wrapping or (de)serialising adapters.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    /// PEFT raises here too: a LoRA that adapts nothing would silently train nothing.
    #[error(
        "lora.target_modules {targets} matched none of the model's {count} linear layers; some of their paths: {sample}. \
         Names match a whole path or its last dotted segments (PEFT's rule); a single string is a full-match regex; null auto-detects"
    )]
    NoTargetMatched {
        /// The targets as given.
        targets: String,
        /// How many linear layers the model has.
        count: usize,
        /// A sample of linear-layer paths.
        sample: String,
    },
    /// A target regex that does not compile.
    #[error("lora.target_modules: invalid regular expression `{pattern}`: {message}")]
    BadRegex {
        /// The pattern.
        pattern: String,
        /// The regex error.
        message: String,
    },
    /// A value out of range.
    #[error("{key}: {message}")]
    Invalid {
        /// Config key.
        key: String,
        /// What was expected.
        message: String,
    },
    /// Reading or writing an adapter file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A malformed adapter file.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The adapter's tensors do not fit the model; every problem is listed.
    #[error("{path}: adapter does not fit the model:{}", list_problems(.missing, .unexpected, .mismatched))]
    Mismatch {
        /// The safetensors file.
        path: PathBuf,
        /// Keys the model needs that the file lacks.
        missing: Vec<String>,
        /// Keys in the file the model has no place for.
        unexpected: Vec<String>,
        /// `(key, expected shape, found shape)`.
        mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
    },
    /// A 4-bit operation failed.
    #[error(transparent)]
    Quant(#[from] tracknet_quant::QuantError),
}

fn list_problems(
    missing: &[String],
    unexpected: &[String],
    mismatched: &[(String, Vec<usize>, Vec<usize>)],
) -> String {
    let mut s = String::new();
    for k in missing {
        s.push_str(&format!("\n  missing tensor {k}"));
    }
    for k in unexpected {
        s.push_str(&format!("\n  unexpected tensor {k}"));
    }
    for (k, e, f) in mismatched {
        s.push_str(&format!(
            "\n  tensor {k}: expected shape {e:?}, found {f:?}"
        ));
    }
    s
}
