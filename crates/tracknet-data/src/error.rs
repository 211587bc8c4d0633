//! Typed errors and per-file issues.
//!
//! An [`Issue`] is a problem with one row / file of the dataset. Non-strict loading skips the
//! offending item and records the issue; strict loading turns it into [`DataError::Dataset`].

use std::fmt;
use std::path::PathBuf;

/// What kind of dataset problem an [`Issue`] describes (used to count them in summaries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum IssueKind {
    /// A clip folder without `Label.csv`.
    MissingLabel,
    /// `Label.csv` has an unexpected header.
    BadHeader,
    /// A row lists a frame that does not exist on disk.
    MissingFrame,
    /// A row with a wrong number of fields or an unparsable / out-of-range number.
    BadRow,
    /// A second row for the same frame name.
    DuplicateRow,
    /// A row with visibility > 0 but blank coordinates.
    BlankCoordinates,
    /// An image that could not be decoded (found at load time).
    Decode,
    /// A `Label.csv` that is neither UTF-8 nor BOM-marked UTF-16.
    BadEncoding,
}

impl IssueKind {
    /// Short human name used in summaries.
    pub fn name(self) -> &'static str {
        match self {
            IssueKind::MissingLabel => "missing Label.csv",
            IssueKind::BadHeader => "bad header",
            IssueKind::MissingFrame => "missing frame",
            IssueKind::BadRow => "bad row",
            IssueKind::DuplicateRow => "duplicate row",
            IssueKind::BlankCoordinates => "visible with blank coordinates",
            IssueKind::Decode => "undecodable image",
            IssueKind::BadEncoding => "undecodable Label.csv text",
        }
    }
}

/// One problem found in the dataset, with the file and (when it is a CSV row) the 1-based line.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Issue {
    /// File the problem is in (the CSV for row problems, the image for decode problems).
    pub file: PathBuf,
    /// 1-based line in `file`, when the problem is a CSV row.
    pub line: Option<usize>,
    /// Category, for counting.
    pub kind: IssueKind,
    /// What was expected and what was found.
    pub message: String,
}

impl Issue {
    /// The issue as strict loading reports it: the run stops here, so the message says that
    /// instead of what non-strict loading does with the row or clip ("row skipped").
    pub fn stopping(mut self) -> Self {
        for consequence in ["; rest of clip skipped", "; clip skipped", "; row skipped"] {
            if let Some(kept) = self.message.strip_suffix(consequence) {
                self.message = kept.to_string();
                break;
            }
        }
        self.message
            .push_str("; loading stops here (strict mode: `data.strict: true`)");
        self
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Errors of this crate. Messages name the file (and line) and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A dataset problem that is fatal because `strict` is set.
    #[error("{0}")]
    Dataset(Issue),
    /// An I/O operation failed.
    #[error("{path}: {op} failed: {source}")]
    Io {
        /// Path that was being accessed.
        path: PathBuf,
        /// What was being done (read, write, rename, ...).
        op: &'static str,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Encoding or decoding an image failed outside the dataset loader.
    #[error("{path}: image error: {message}")]
    Image {
        /// Image path.
        path: PathBuf,
        /// Decoder / encoder message.
        message: String,
    },
    /// A requested game folder does not exist.
    #[error("{root}: game folder `{game}` not found (expected {root}/{game}/Clip*/Label.csv)")]
    GameNotFound {
        /// Dataset root.
        root: PathBuf,
        /// Game name from the list.
        game: String,
    },
    /// Options are inconsistent (zero sizes, probabilities outside [0,1], ...).
    #[error("invalid options: {0}")]
    Options(String),
    /// Buffers handed to a function do not have the promised shape.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// The output directory exists and is not empty.
    #[error("{0}: output directory exists and is not empty (set overwrite to replace it)")]
    OutputExists(PathBuf),
    /// No image frames found at the given input.
    #[error("{0}: no .jpg/.jpeg/.png frames found")]
    NoFrames(PathBuf),
}

impl DataError {
    /// Helper to build an [`DataError::Io`].
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            op,
            source,
        }
    }
}
