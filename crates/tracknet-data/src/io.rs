//! Small file helpers: atomic writes, frame listing and the predictions CSV.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::DataError;
use crate::index::natural_key;

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique sibling path for `path` (same directory, so a rename is atomic).
pub(crate) fn temp_sibling(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// Writes `bytes` to a temporary file next to `path`, syncs it and renames it over `path`, so
/// readers never see a half-written file. Creates the parent directory if needed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| DataError::io(parent, "create directory", e))?;
    }
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(|e| DataError::io(&tmp, "create", e))?;
        f.write_all(bytes)
            .map_err(|e| DataError::io(&tmp, "write", e))?;
        f.sync_all().map_err(|e| DataError::io(&tmp, "sync", e))?;
        std::fs::rename(&tmp, path).map_err(|e| DataError::io(path, "rename", e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|e| e == "jpg" || e == "jpeg" || e == "png")
}

/// Frames to predict on: an image file itself, or the `.jpg/.jpeg/.png` files of a directory
/// (a folder of frames or a TrackNet clip folder) in natural order (`2.jpg` before `10.jpg`).
pub fn list_frames(input: &Path) -> Result<Vec<PathBuf>, DataError> {
    if input.is_file() {
        return if is_image(input) {
            Ok(vec![input.to_path_buf()])
        } else {
            Err(DataError::NoFrames(input.to_path_buf()))
        };
    }
    let entries =
        std::fs::read_dir(input).map_err(|e| DataError::io(input, "read directory", e))?;
    let mut frames = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| DataError::io(input, "read directory", e))?
            .path();
        if path.is_file() && is_image(&path) {
            frames.push(path);
        }
    }
    if frames.is_empty() {
        return Err(DataError::NoFrames(input.to_path_buf()));
    }
    frames.sort_by_key(|p| natural_key(&p.file_name().unwrap_or_default().to_string_lossy()));
    Ok(frames)
}

/// One predicted frame, in `Label.csv` terms plus a confidence.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PredictionRow {
    /// Frame file name.
    pub file_name: String,
    /// 1 when the ball was detected, 0 otherwise.
    pub visibility: u8,
    /// Position in original frame pixels; written blank when `visibility` is 0 or `None`.
    pub xy: Option<(f32, f32)>,
    /// TrackNet status, written blank when `None`.
    pub status: Option<u8>,
    /// Peak heatmap value.
    pub confidence: f32,
}

/// Header of the predictions CSV.
pub const PREDICTIONS_HEADER: &str =
    "file name,visibility,x-coordinate,y-coordinate,status,confidence";

/// CSV text of `header` and `rows`, written by the csv crate (a field holding a comma, quote
/// or line break is quoted, so a file name like `a,b.jpg` survives a round trip).
pub fn csv_text<R, F>(header: &[&str], rows: R) -> String
where
    R: IntoIterator<Item = F>,
    F: IntoIterator,
    F::Item: AsRef<[u8]>,
{
    let mut w = csv::WriterBuilder::new()
        .flexible(true)
        .from_writer(Vec::new());
    // Writing into a Vec cannot fail, and every field comes from a `&str`/`String`, so the
    // bytes are UTF-8.
    let _ = w.write_record(header);
    for row in rows {
        let _ = w.write_record(row);
    }
    let bytes = w.into_inner().unwrap_or_default();
    String::from_utf8(bytes).unwrap_or_default()
}

/// Formats predictions as CSV (the `Label.csv` schema plus `confidence`).
pub fn predictions_csv(rows: &[PredictionRow]) -> String {
    let header: Vec<&str> = PREDICTIONS_HEADER.split(',').collect();
    csv_text(
        &header,
        rows.iter().map(|r| {
            let (x, y) = match r.xy.filter(|_| r.visibility > 0) {
                Some((x, y)) => (format!("{x:.2}"), format!("{y:.2}")),
                None => (String::new(), String::new()),
            };
            let status = r.status.map(|s| s.to_string()).unwrap_or_default();
            [
                r.file_name.clone(),
                r.visibility.to_string(),
                x,
                y,
                status,
                format!("{:.4}", r.confidence),
            ]
        }),
    )
}

/// Writes the predictions CSV atomically.
pub fn write_predictions_csv(path: &Path, rows: &[PredictionRow]) -> Result<(), DataError> {
    write_atomic(path, predictions_csv(rows).as_bytes())
}
