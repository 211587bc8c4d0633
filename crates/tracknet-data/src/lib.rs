//! tracknet-data: everything between TrackNet files on disk and plain `f32` buffers.
//!
//! * [`index`] scans `root/game*/Clip*/NNNN.jpg` + `Label.csv` and reports bad rows with file and line.
//! * [`preprocess`] decodes, resizes, flips and normalises frames into CHW `f32`.
//! * [`target`] builds Gaussian heatmap targets and masks.
//! * [`loader`] batches samples with worker threads in a deterministic order.
//! * [`synth`] writes synthetic tennis clips in the same layout.
//! * [`metrics`] computes argmax / soft-argmax, L2, PCK and TrackNet detection scores.
//! * [`viz`] and [`io`] write heatmaps, overlays, curves, prediction CSVs atomically.
//!
//! The crate has no Burn dependency on purpose: the training crate converts [`Batch`] buffers
//! into tensors, so this crate stays testable and fast to build.

#![forbid(unsafe_code)]

pub mod error;
pub mod index;
pub mod io;
pub mod loader;
pub mod metrics;
pub mod preprocess;
pub mod synth;
pub mod target;
pub mod viz;

pub use error::{DataError, Issue, IssueKind};
pub use index::{DatasetIndex, FrameRecord, ScanReport};
pub use io::{PredictionRow, csv_text, list_frames, write_atomic, write_predictions_csv};
pub use loader::{
    Batch, BatchLoader, LoadReport, LoaderOptions, SampleMeta, ThroughputReport, measure_throughput,
};
pub use metrics::{
    EvalMetrics, MetricOptions, MetricsAccumulator, ProtocolCounts, argmax, soft_argmax,
};
pub use preprocess::{PreprocessOptions, Preprocessed, flip_decision, preprocess_image};
pub use synth::{
    SYNTH_STAMP, SynthOptions, SynthSummary, generate, generate_with_progress, read_synth_stamp,
    synth_stamp,
};
pub use target::{gaussian_heatmap, scale_to_heatmap};
