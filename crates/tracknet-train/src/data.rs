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
///
/// A set this tool generated carries a stamp of its options ([`tracknet_data::SYNTH_STAMP`]);
/// when the stamp differs from the config's (the settings changed since), the set is made
/// again. A folder without a stamp is somebody's data and is used as it is.
pub fn ensure_synthetic(cfg: &RunConfig, log: &mut dyn FnMut(&str)) -> Result<(), TrainError> {
    let Some(s) = &cfg.data.synthetic else {
        return Ok(());
    };
    let root = &cfg.data.root;
    let opts = SynthOptions {
        games: s.games,
        clips: s.clips,
        frames: s.frames,
        size: (s.size[0] as u32, s.size[1] as u32),
        seed: s.seed,
        overwrite: false,
        jpeg_quality: 90,
        ball_scale: s.ball_scale,
        distractors: s.distractors,
    };
    let want = tracknet_data::synth_stamp(&opts);
    let overwrite = if root.exists() {
        match tracknet_data::read_synth_stamp(root) {
            None => return Ok(()),
            Some(have) if have == want => return Ok(()),
            Some(have) => {
                log(&format!(
                    "synthetic clips in {} were made with other settings ({have}); making them again",
                    root.display()
                ));
                true
            }
        }
    } else {
        false
    };
    log(&format!(
        "generating synthetic clips in {} ({} games x {} clips x {} frames at {}x{}, seed {}, ball scale {}, {} static distractors)",
        root.display(),
        s.games,
        s.clips,
        s.frames,
        s.size[0],
        s.size[1],
        s.seed,
        s.ball_scale,
        s.distractors
    ));
    let summary = crate::progress::generate_synthetic(root, &SynthOptions { overwrite, ..opts })?;
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
        num_workers: t.data_loader.num_workers,
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
        sequence_length: d.sequence.frames(),
        sequence_stride: d.sequence.stride.max(1),
    }
}

/// `images [n, 3·frames, H, W]`, `heatmaps [n,1,Hh,Wh]`, `masks [n,1,Hh,Wh]` for samples `range`
/// of a batch.
pub fn batch_tensors<B: Backend>(
    batch: &Batch,
    range: std::ops::Range<usize>,
    device: &B::Device,
) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    let (h, w) = batch.image_hw;
    let (hh, hw) = batch.heatmap_hw;
    let n = range.len();
    let c = batch.channels;
    let img = c * h * w;
    let hm = hh * hw;
    let slice = |v: &[f32], per: usize| v[range.start * per..range.end * per].to_vec();
    (
        Tensor::from_data(
            TensorData::new(slice(&batch.images, img), [n, c, h, w]),
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

#[cfg(test)]
mod tests {
    use super::*;
    use tracknet_config::SyntheticConfig;

    fn config(root: &std::path::Path, seed: u64) -> RunConfig {
        let mut cfg = RunConfig::default();
        cfg.data.root = root.to_path_buf();
        cfg.data.synthetic = Some(SyntheticConfig {
            games: 1,
            clips: 1,
            frames: 2,
            size: [64, 36],
            seed,
            ball_scale: 1.0,
            distractors: 2,
        });
        cfg
    }

    #[test]
    fn stale_synthetic_sets_are_made_again_and_foreign_folders_kept() {
        let dir = std::env::temp_dir().join(format!("tracknet-ensure-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let root = dir.join("set");
        let mut lines = Vec::new();
        let mut log = |s: &str| lines.push(s.to_string());
        ensure_synthetic(&config(&root, 1), &mut log).unwrap();
        let stamp = tracknet_data::read_synth_stamp(&root).unwrap();
        assert!(stamp.contains("seed=1"), "{stamp}");
        // Same settings: left alone.
        ensure_synthetic(&config(&root, 1), &mut log).unwrap();
        // Other settings: made again, and said so.
        ensure_synthetic(&config(&root, 2), &mut log).unwrap();
        let stamp = tracknet_data::read_synth_stamp(&root).unwrap();
        assert!(stamp.contains("seed=2"), "{stamp}");
        assert_eq!(
            lines.iter().filter(|l| l.starts_with("generating")).count(),
            2
        );
        assert!(lines.iter().any(|l| l.contains("other settings")));
        // A folder without a stamp is somebody's data: never touched.
        let foreign = dir.join("mine");
        std::fs::create_dir_all(foreign.join("game1")).unwrap();
        ensure_synthetic(&config(&foreign, 1), &mut |_| {}).unwrap();
        assert!(tracknet_data::read_synth_stamp(&foreign).is_none());
        assert!(!foreign.join("game1/Clip1").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn max_frames_per_split_caps_each_split_and_prefetch_follows_the_loader_keys() {
        let dir = std::env::temp_dir().join(format!("tracknet-cap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cfg = config(&dir.join("set"), 4);
        if let Some(s) = cfg.data.synthetic.as_mut() {
            (s.games, s.frames) = (2, 6);
        }
        cfg.data.split.train_games = vec!["game1".into()];
        cfg.data.split.val_games = vec!["game2".into()];
        ensure_synthetic(&cfg, &mut |_| {}).unwrap();
        let all = scan_splits(&cfg).unwrap();
        assert_eq!((all.train.len(), all.val.len()), (6, 6));
        cfg.data.max_frames_per_split = Some(4);
        let capped = scan_splits(&cfg).unwrap();
        assert_eq!((capped.train.len(), capped.val.len()), (4, 4));
        // The first frames in index order are kept.
        assert_eq!(capped.train.frames[..], all.train.frames[..4]);
        // `prefetch_factor` batches per worker in flight; `num_workers` threads.
        cfg.training.data_loader.prefetch_factor = 3;
        cfg.training.data_loader.num_workers = 2;
        let o = loader_options(&cfg, 1, true, 4);
        assert_eq!((o.prefetch, o.num_workers), (6, 2));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
