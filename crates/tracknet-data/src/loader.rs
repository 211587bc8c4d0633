//! Parallel batch loader with a bounded prefetch window and deterministic output order.
//!
//! Worker threads take batch numbers from a shared counter, build the batch and send it over a
//! bounded channel; the consumer keeps a small reorder buffer and yields batches strictly in
//! batch order. A worker may only start batch `i` once batch `i - prefetch` has been yielded,
//! so at most `prefetch` batches are in flight. The sample order is a seeded shuffle of
//! `(seed, epoch)` and the flip of each sample is [`flip_decision`]`(seed, epoch, index)`, so the
//! output is identical for any number of workers.

use std::collections::BTreeMap;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use rand::SeedableRng;
use rand::seq::SliceRandom;

use crate::error::{DataError, Issue};
use crate::index::DatasetIndex;
use crate::preprocess::{
    PreprocessOptions, decode_rgb, flip_decision, image_to_chw, splitmix64, validate,
};
use crate::target::{gaussian_heatmap, scale_to_heatmap};

/// Loader settings (the training crate maps its config onto this).
#[derive(Debug, Clone, PartialEq)]
pub struct LoaderOptions {
    /// Samples per batch.
    pub batch_size: usize,
    /// Shuffle the sample order with `(seed, epoch)`.
    pub shuffle: bool,
    /// Seed for shuffling and flips.
    pub seed: u64,
    /// Epoch number, mixed into the shuffle and flip decisions.
    pub epoch: u64,
    /// Worker threads; 0 builds each batch on the consuming thread when it is asked for
    /// (no prefetch, no threads), as PyTorch's `num_workers=0`.
    pub num_workers: usize,
    /// Batches allowed in flight ahead of the consumer (0 is treated as 1).
    pub prefetch: usize,
    /// Drop a final incomplete batch.
    pub drop_last: bool,
    /// Model input `[W, H]`.
    pub resize: [u32; 2],
    /// ImageNet normalisation.
    pub normalize: bool,
    /// Probability of a horizontal flip per sample.
    pub flip_prob: f32,
    /// Heatmap `[W, H]`.
    pub heatmap_size: [u32; 2],
    /// Gaussian sigma in heatmap pixels.
    pub sigma: f32,
    /// Fail on an undecodable image instead of skipping it.
    pub strict: bool,
    /// Frames per sample (1: single frames); see [`DatasetIndex::sequence`].
    pub sequence_length: usize,
    /// Frames between a sample's frames.
    pub sequence_stride: usize,
}

impl Default for LoaderOptions {
    fn default() -> Self {
        LoaderOptions {
            batch_size: 8,
            shuffle: true,
            seed: 0,
            epoch: 0,
            num_workers: 2,
            prefetch: 2,
            drop_last: false,
            resize: [512, 288],
            normalize: true,
            flip_prob: 0.0,
            heatmap_size: [512, 288],
            sigma: 2.5,
            strict: false,
            sequence_length: 1,
            sequence_stride: 1,
        }
    }
}

impl LoaderOptions {
    fn validate(&self) -> Result<(), DataError> {
        validate(&PreprocessOptions {
            resize: self.resize,
            normalize: self.normalize,
        })?;
        if self.batch_size == 0 {
            return Err(DataError::Options("batch_size must be at least 1".into()));
        }
        if self.heatmap_size[0] == 0 || self.heatmap_size[1] == 0 {
            return Err(DataError::Options(format!(
                "heatmap_size must be positive, got {:?}",
                self.heatmap_size
            )));
        }
        if !(0.0..=1.0).contains(&self.flip_prob) {
            return Err(DataError::Options(format!(
                "flip_prob must be in [0, 1], got {}",
                self.flip_prob
            )));
        }
        if self.sequence_length == 0 || self.sequence_stride == 0 {
            return Err(DataError::Options(format!(
                "sequence length and stride must be at least 1, got {} and {}",
                self.sequence_length, self.sequence_stride
            )));
        }
        if !(self.sigma.is_finite() && self.sigma > 0.0) {
            return Err(DataError::Options(format!(
                "sigma must be positive, got {}",
                self.sigma
            )));
        }
        Ok(())
    }
}

/// Per-sample information carried with a batch.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SampleMeta {
    /// Position of the sample in the [`DatasetIndex`].
    pub index: usize,
    /// Image path (the labelled frame).
    pub path: PathBuf,
    /// Every input frame of the sample, oldest first (the labelled frame last); one entry for
    /// single-frame samples.
    pub inputs: Vec<PathBuf>,
    /// TrackNet visibility (0 = not visible).
    pub visibility: u8,
    /// Label in original pixels, as written in `Label.csv` (never flipped).
    pub xy_orig: Option<(f32, f32)>,
    /// Target centre in heatmap pixels, after the flip if `flipped` (what the target and the
    /// metrics use).
    pub xy_heatmap: Option<(f32, f32)>,
    /// Decoded image `(width, height)`.
    pub orig_size: (u32, u32),
    /// Whether the image and target were mirrored.
    pub flipped: bool,
}

/// One batch of host buffers, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `[B, channels, H, W]`: each sample's frames stacked oldest first, 3 channels each.
    pub images: Vec<f32>,
    /// `3 × frames per sample`.
    pub channels: usize,
    /// `[B, 1, Hh, Wh]`.
    pub heatmaps: Vec<f32>,
    /// `[B, 1, Hh, Wh]`: ones for visible balls, zeros otherwise.
    pub masks: Vec<f32>,
    /// Samples in this batch (less than requested when samples were skipped or at the end).
    pub batch_size: usize,
    /// `(H, W)` of the images.
    pub image_hw: (usize, usize),
    /// `(Hh, Wh)` of the heatmaps.
    pub heatmap_hw: (usize, usize),
    /// One entry per sample.
    pub meta: Vec<SampleMeta>,
}

/// What the loader skipped so far (in batch order, so it is deterministic too).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct LoadReport {
    /// Samples delivered.
    pub loaded: usize,
    /// Samples skipped because their image could not be decoded.
    pub skipped: Vec<Issue>,
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "loaded {} samples, skipped {} undecodable",
            self.loaded,
            self.skipped.len()
        )?;
        for issue in self.skipped.iter().take(20) {
            writeln!(f, "  {issue}")?;
        }
        Ok(())
    }
}

/// Result of [`measure_throughput`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ThroughputReport {
    /// Frames decoded and preprocessed.
    pub frames: usize,
    /// Wall time in seconds.
    pub seconds: f64,
    /// `frames / seconds`.
    pub frames_per_sec: f64,
}

struct WorkerOutput {
    batch_no: usize,
    result: Result<Option<Batch>, DataError>,
    issues: Vec<Issue>,
}

struct Shared {
    yielded: Mutex<usize>,
    cv: Condvar,
    stop: AtomicBool,
    next_job: AtomicUsize,
}

/// Iterator over batches of one epoch. Dropping it stops the workers.
pub struct BatchLoader {
    rx: Option<Receiver<WorkerOutput>>,
    workers: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
    pending: BTreeMap<usize, WorkerOutput>,
    next: usize,
    n_batches: usize,
    report: LoadReport,
    finished: bool,
    /// `num_workers: 0`: what the consuming thread needs to build batches itself.
    inline: Option<Inline>,
}

struct Inline {
    batches: Arc<Vec<Vec<usize>>>,
    index: Arc<DatasetIndex>,
    opts: Arc<LoaderOptions>,
}

/// Sample order for one epoch: identity, or a ChaCha shuffle seeded from `(seed, epoch)`.
pub fn epoch_order(len: usize, shuffle: bool, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(splitmix64(seed) ^ splitmix64(!epoch));
        order.shuffle(&mut rng);
    }
    order
}

impl BatchLoader {
    /// Starts the workers for one epoch over `index`.
    pub fn new(index: Arc<DatasetIndex>, opts: LoaderOptions) -> Result<Self, DataError> {
        Self::starting_at(index, opts, 0)
    }

    /// [`BatchLoader::new`] that yields the epoch's batches from batch number `first` on (a
    /// [`BatchLoader::position`] of an earlier loader of the same epoch): the batches a
    /// stopped epoch had not reached, without decoding those it had. The load report counts
    /// from there.
    pub fn starting_at(
        index: Arc<DatasetIndex>,
        opts: LoaderOptions,
        first: usize,
    ) -> Result<Self, DataError> {
        opts.validate()?;
        let order = epoch_order(index.len(), opts.shuffle, opts.seed, opts.epoch);
        let mut batches: Vec<Vec<usize>> = order
            .chunks(opts.batch_size)
            .map(<[usize]>::to_vec)
            .collect();
        if opts.drop_last && batches.last().is_some_and(|b| b.len() < opts.batch_size) {
            batches.pop();
        }
        let n_batches = batches.len();
        let window = opts.prefetch.max(1);
        let (tx, rx) = sync_channel::<WorkerOutput>(window);
        let first = first.min(n_batches);
        let shared = Arc::new(Shared {
            yielded: Mutex::new(first),
            cv: Condvar::new(),
            stop: AtomicBool::new(false),
            next_job: AtomicUsize::new(first),
        });
        let batches = Arc::new(batches);
        let opts = Arc::new(opts);
        let inline = (opts.num_workers == 0).then(|| Inline {
            batches: batches.clone(),
            index: index.clone(),
            opts: opts.clone(),
        });
        let threads = if inline.is_some() {
            0
        } else {
            opts.num_workers.min(n_batches.max(1))
        };
        let workers = (0..threads)
            .map(|_| {
                let (tx, shared, batches, index, opts) = (
                    tx.clone(),
                    shared.clone(),
                    batches.clone(),
                    index.clone(),
                    opts.clone(),
                );
                std::thread::spawn(move || worker(tx, &shared, &batches, &index, &opts, window))
            })
            .collect();
        Ok(BatchLoader {
            rx: Some(rx),
            workers,
            shared,
            pending: BTreeMap::new(),
            next: first,
            n_batches,
            report: LoadReport::default(),
            finished: false,
            inline,
        })
    }

    /// Loader threads running for this epoch (0 with `num_workers: 0`).
    pub fn worker_threads(&self) -> usize {
        self.workers.len()
    }

    /// Number of batches this epoch will yield at most (fewer if whole batches are skipped).
    pub fn num_batches(&self) -> usize {
        self.n_batches
    }

    /// Batches of the epoch's order consumed so far (yielded, or skipped whole): where a
    /// loader made with [`BatchLoader::starting_at`] continues.
    pub fn position(&self) -> usize {
        self.next
    }

    /// Samples loaded and skipped so far.
    pub fn report(&self) -> &LoadReport {
        &self.report
    }

    fn stop(&mut self) {
        self.finished = true;
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.cv.notify_all();
        self.rx = None;
    }
}

impl Iterator for BatchLoader {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.finished || self.next >= self.n_batches {
                return None;
            }
            if let Some(inline) = &self.inline {
                let (result, issues) =
                    build_batch(&inline.batches[self.next], &inline.index, &inline.opts);
                self.pending.insert(
                    self.next,
                    WorkerOutput {
                        batch_no: self.next,
                        result,
                        issues,
                    },
                );
            }
            if let Some(out) = self.pending.remove(&self.next) {
                self.next += 1;
                {
                    let mut y = self
                        .shared
                        .yielded
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    *y = self.next;
                }
                self.shared.cv.notify_all();
                self.report.skipped.extend(out.issues);
                match out.result {
                    Ok(Some(batch)) => {
                        self.report.loaded += batch.batch_size;
                        return Some(Ok(batch));
                    }
                    Ok(None) => continue,
                    Err(e) => {
                        self.stop();
                        return Some(Err(e));
                    }
                }
            }
            let received = self.rx.as_ref().map(|rx| rx.recv());
            match received {
                Some(Ok(out)) => {
                    self.pending.insert(out.batch_no, out);
                }
                _ => {
                    self.stop();
                    return Some(Err(DataError::Options(
                        "loader workers stopped unexpectedly".into(),
                    )));
                }
            }
        }
    }
}

impl Drop for BatchLoader {
    fn drop(&mut self) {
        self.stop();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn worker(
    tx: SyncSender<WorkerOutput>,
    shared: &Shared,
    batches: &[Vec<usize>],
    index: &DatasetIndex,
    opts: &LoaderOptions,
    window: usize,
) {
    loop {
        let batch_no = shared.next_job.fetch_add(1, Ordering::SeqCst);
        if batch_no >= batches.len() {
            return;
        }
        {
            let mut y = shared.yielded.lock().unwrap_or_else(|e| e.into_inner());
            while batch_no >= *y + window && !shared.stop.load(Ordering::SeqCst) {
                y = shared.cv.wait(y).unwrap_or_else(|e| e.into_inner());
            }
        }
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let built = std::panic::catch_unwind(AssertUnwindSafe(|| {
            build_batch(&batches[batch_no], index, opts)
        }));
        let (result, issues) = match built {
            Ok(r) => r,
            Err(_) => (
                Err(DataError::Options(format!(
                    "internal error while building batch {batch_no}"
                ))),
                Vec::new(),
            ),
        };
        let out = WorkerOutput {
            batch_no,
            result,
            issues,
        };
        if tx.send(out).is_err() {
            return;
        }
    }
}

/// Builds one batch; undecodable samples are skipped (non-strict) or fail the batch (strict).
fn build_batch(
    samples: &[usize],
    index: &DatasetIndex,
    opts: &LoaderOptions,
) -> (Result<Option<Batch>, DataError>, Vec<Issue>) {
    let pre = PreprocessOptions {
        resize: opts.resize,
        normalize: opts.normalize,
    };
    let (w, h) = (opts.resize[0] as usize, opts.resize[1] as usize);
    let (hw, hh) = (opts.heatmap_size[0] as usize, opts.heatmap_size[1] as usize);
    let channels = 3 * opts.sequence_length.max(1);
    let mut images = Vec::with_capacity(samples.len() * channels * w * h);
    let mut heatmaps = Vec::with_capacity(samples.len() * hw * hh);
    let mut masks = Vec::with_capacity(samples.len() * hw * hh);
    let mut meta = Vec::with_capacity(samples.len());
    let mut issues = Vec::new();
    let mut hm = vec![0.0f32; hw * hh];
    'samples: for &i in samples {
        let rec = &index.frames[i];
        let frames = index.sequence(i, opts.sequence_length, opts.sequence_stride);
        let mut decoded = Vec::with_capacity(frames.len());
        for &j in &frames {
            match decode_rgb(&index.frames[j].path) {
                Ok(img) => decoded.push(img),
                Err(issue) if opts.strict => {
                    return (Err(DataError::Dataset(issue.stopping())), issues);
                }
                Err(issue) => {
                    issues.push(issue);
                    continue 'samples;
                }
            }
        }
        // The labelled frame is the last one; its size defines the target's scale.
        let orig_size = decoded.last().map_or((0, 0), |img| img.dimensions());
        // One decision per sample: all of its frames are mirrored together.
        let flipped = flip_decision(opts.seed, opts.epoch, i as u64, opts.flip_prob);
        for img in &decoded {
            images.extend(image_to_chw(img, &pre, flipped));
        }
        // The image flip sends pixel x to `W - 1 - x` (pixel centres); the flipped target is
        // the one the unflipped pipeline computes for that mirrored label.
        let centre = rec.xy.filter(|_| rec.visibility > 0).map(|(x, y)| {
            let x = if flipped {
                orig_size.0 as f32 - 1.0 - x
            } else {
                x
            };
            scale_to_heatmap((x, y), orig_size, opts.heatmap_size)
        });
        let mask = gaussian_heatmap(&mut hm, opts.heatmap_size, centre, opts.sigma);
        heatmaps.extend_from_slice(&hm);
        masks.extend(std::iter::repeat_n(mask, hw * hh));
        meta.push(SampleMeta {
            index: i,
            path: rec.path.clone(),
            inputs: frames
                .iter()
                .map(|&j| index.frames[j].path.clone())
                .collect(),
            visibility: rec.visibility,
            xy_orig: rec.xy,
            xy_heatmap: centre,
            orig_size,
            flipped,
        });
    }
    if meta.is_empty() {
        return (Ok(None), issues);
    }
    let batch = Batch {
        images,
        channels,
        heatmaps,
        masks,
        batch_size: meta.len(),
        image_hw: (h, w),
        heatmap_hw: (hh, hw),
        meta,
    };
    (Ok(Some(batch)), issues)
}

/// Decodes and preprocesses up to `max_frames` frames (in index order) through the loader and
/// reports the rate, for the data-pipeline bench.
pub fn measure_throughput(
    index: &DatasetIndex,
    opts: &LoaderOptions,
    max_frames: usize,
) -> Result<ThroughputReport, DataError> {
    let subset = DatasetIndex {
        root: index.root.clone(),
        frames: index.frames.iter().take(max_frames).cloned().collect(),
    };
    let opts = LoaderOptions {
        shuffle: false,
        drop_last: false,
        ..opts.clone()
    };
    let start = Instant::now();
    let mut frames = 0;
    for batch in BatchLoader::new(Arc::new(subset), opts)? {
        frames += batch?.batch_size;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(ThroughputReport {
        frames,
        seconds,
        frames_per_sec: if seconds > 0.0 {
            frames as f64 / seconds
        } else {
            0.0
        },
    })
}
