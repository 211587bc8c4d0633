//! `data`: the input pipeline's throughput.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::{Value, json};
use tracknet_data::{DatasetIndex, LoaderOptions, SynthOptions};

use super::args::DataArgs;
use super::case::median;
use crate::error::{TrainError, io_err};

/// A scratch folder removed when dropped.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> Result<Self, TrainError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "tracknet-bench-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&p).map_err(io_err(&p))?;
        Ok(Self(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `data`: decode + preprocess throughput of 1280×720 synthetic frames to 512×288, with one
/// and two loader workers.
pub fn data(a: &DataArgs) -> Result<Value, TrainError> {
    let frames = a.frames.unwrap_or(if a.quick { 16 } else { 96 }).max(1);
    let repeats = a.repeats.unwrap_or(if a.quick { 1 } else { 3 }).max(1);
    let clips = frames.div_ceil(32).max(1);
    let per_clip = frames.div_ceil(clips);
    let tmp = TempDir::new("data")?;
    let root = tmp.0.join("synthetic");
    let t = Instant::now();
    let summary = tracknet_data::generate(
        &root,
        &SynthOptions {
            games: 1,
            clips,
            frames: per_clip,
            size: (1280, 720),
            seed: 3,
            overwrite: false,
            jpeg_quality: 90,
            ball_scale: 1.0,
            distractors: 2,
        },
    )?;
    let gen_seconds = t.elapsed().as_secs_f64();
    tracing::info!(
        "data: generated {} frames at 1280x720 in {gen_seconds:.1}s",
        summary.frames
    );
    let (index, _) = DatasetIndex::scan(&root, &["game1".to_string()], false)?;
    let mut rows = Vec::new();
    for workers in [1usize, 2] {
        let opts = LoaderOptions {
            batch_size: 8,
            shuffle: false,
            num_workers: workers,
            prefetch: 2 * workers,
            resize: [512, 288],
            normalize: true,
            flip_prob: 0.5,
            heatmap_size: [256, 144],
            sigma: 2.0,
            ..LoaderOptions::default()
        };
        let mut fps = Vec::new();
        let mut n = 0;
        for _ in 0..repeats {
            let r = tracknet_data::measure_throughput(&index, &opts, usize::MAX)?;
            n = r.frames;
            fps.push(r.frames_per_sec);
        }
        tracing::info!(
            "data: {workers} worker(s): {:.1} frames/s (median)",
            median(&fps)
        );
        rows.push(json!({
            "workers": workers,
            "frames": n,
            "frames_per_sec": fps,
            "frames_per_sec_median": median(&fps),
        }));
    }
    Ok(json!({
        "kind": "data",
        "case": "data",
        "quick": a.quick,
        "source_size": [1280, 720],
        "target_size": [512, 288],
        "heatmap_size": [256, 144],
        "frames": summary.frames,
        "generate_seconds": gen_seconds,
        "workers": rows,
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    }))
}
