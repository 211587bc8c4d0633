//! From the config to loaders and tensors: dataset preparation (generating the synthetic
//! default if absent), loader options, and batches as Burn tensors.

use std::sync::Arc;

use burn::prelude::*;
use tracknet_config::RunConfig;
use tracknet_data::{Batch, DatasetIndex, LoaderOptions, ScanReport, SynthOptions};

use crate::error::TrainError;

/// The train and validation splits, scanned.
pub struct Splits {
    /// Training frames.
    pub train: Arc<DatasetIndex>,
    /// Validation frames.
    pub val: Arc<DatasetIndex>,
    /// Scan report of the training games.
    pub train_report: ScanReport,
    /// Scan report of the validation games.
    pub val_report: ScanReport,
}

/// Generate the synthetic set when `data.synthetic` is set and the root does not exist yet.
pub fn ensure_synthetic(cfg: &RunConfig, log: &mut dyn FnMut(&str)) -> Result<(), TrainError> {
    let Some(s) = &cfg.data.synthetic else {
        return Ok(());
    };
    let root = &cfg.data.root;
    if root.exists() {
        return Ok(());
    }
    log(&format!(
        "generating synthetic clips in {} ({} games x {} clips x {} frames at {}x{}, seed {})",
        root.display(),
        s.games,
        s.clips,
        s.frames,
        s.size[0],
        s.size[1],
        s.seed
    ));
    let summary = tracknet_data::generate(
        root,
        &SynthOptions {
            games: s.games,
            clips: s.clips,
            frames: s.frames,
            size: (s.size[0] as u32, s.size[1] as u32),
            seed: s.seed,
            overwrite: false,
            jpeg_quality: 90,
        },
    )?;
    log(&format!(
        "  wrote {} frames (visibility 0/1/2/3: {:?})",
        summary.frames, summary.by_visibility
    ));
    Ok(())
}

/// Scan both splits; `data.max_frames_per_split` caps each.
pub fn scan_splits(cfg: &RunConfig) -> Result<Splits, TrainError> {
    let d = &cfg.data;
    let cap = |mut idx: DatasetIndex| {
        if let Some(n) = d.max_frames_per_split {
            idx.frames.truncate(n);
        }
        Arc::new(idx)
    };
    let (train, train_report) = DatasetIndex::scan(&d.root, &d.split.train_games, d.strict)?;
    let (val, val_report) = DatasetIndex::scan(&d.root, &d.split.val_games, d.strict)?;
    Ok(Splits {
        train: cap(train),
        val: cap(val),
        train_report,
        val_report,
    })
}

/// Loader options for one epoch of one split.
pub fn loader_options(
    cfg: &RunConfig,
    epoch: usize,
    training: bool,
    batch_size: usize,
) -> LoaderOptions {
    let d = &cfg.data;
    let t = &cfg.training;
    LoaderOptions {
        batch_size: batch_size.max(1),
        shuffle: training,
        seed: t.seed,
        epoch: epoch as u64,
        num_workers: t.data_loader.num_workers.max(1),
        prefetch: t.data_loader.prefetch_factor.max(1) * t.data_loader.num_workers.max(1),
        drop_last: training && t.data_loader.drop_last,
        resize: [d.preprocess.resize[0] as u32, d.preprocess.resize[1] as u32],
        normalize: d.preprocess.normalize,
        flip_prob: if training {
            d.preprocess.flip_prob as f32
        } else {
            0.0
        },
        heatmap_size: [
            cfg.model.heatmap.size[0] as u32,
            cfg.model.heatmap.size[1] as u32,
        ],
        sigma: cfg.model.heatmap.sigma as f32,
        strict: d.strict,
    }
}

/// `images [n,3,H,W]`, `heatmaps [n,1,Hh,Wh]`, `masks [n,1,Hh,Wh]` for samples `range` of a batch.
pub fn batch_tensors<B: Backend>(
    batch: &Batch,
    range: std::ops::Range<usize>,
    device: &B::Device,
) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    let (h, w) = batch.image_hw;
    let (hh, hw) = batch.heatmap_hw;
    let n = range.len();
    let img = 3 * h * w;
    let hm = hh * hw;
    let slice = |v: &[f32], per: usize| v[range.start * per..range.end * per].to_vec();
    (
        Tensor::from_data(
            TensorData::new(slice(&batch.images, img), [n, 3, h, w]),
            device,
        ),
        Tensor::from_data(
            TensorData::new(slice(&batch.heatmaps, hm), [n, 1, hh, hw]),
            device,
        ),
        Tensor::from_data(
            TensorData::new(slice(&batch.masks, hm), [n, 1, hh, hw]),
            device,
        ),
    )
}
