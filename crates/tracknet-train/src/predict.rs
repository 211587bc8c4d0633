//! Prediction and evaluation from a run folder: rebuild the model from the run's config (the
//! frozen base from the same snapshot or seed), load the trained weights, run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use tracknet_config::RunConfig;
use tracknet_data::{PredictionRow, PreprocessOptions, preprocess_image};
use tracknet_vit::ModelBackend;
use tracknet_vit::model::{HeatmapModel, ModelError};

use crate::checkpoint::read_pointer;
use crate::error::{TrainError, io_err};
use crate::eval::loss_from_config;
use crate::run_folder::{load_trainable, read_state};
use crate::staged::Staged;
use crate::stop::StopFlag;

/// Writes the backbone of checkpoint `ckpt` (of a run trained with `cfg`) as a Hugging Face
/// snapshot (`config.json` + `model.safetensors`) in `out`, loadable as `model.backbone.weights`
/// — how a full pre-training hands its backbone to a (Q)LoRA run.
pub fn export_backbone(cfg: &RunConfig, ckpt: &Path, out: &Path) -> Result<(), TrainError> {
    let device = Default::default();
    let model = load_run_model::<burn::backend::NdArray>(cfg, ckpt, &device)?;
    if model.quantized_weights() > 0 {
        return Err(TrainError::QuantizedExport);
    }
    let snapshot = tracknet_vit::model::snapshot_dir(&cfg.model)?;
    let extra = tracknet_vit::export::passthrough(snapshot.as_deref(), &model.backbone)
        .map_err(tracknet_vit::model::ModelError::from)?;
    tracknet_vit::export::save_snapshot(
        &model.backbone,
        &tracknet_vit::model::backbone_hf_config(&cfg.model)?,
        &extra,
        out,
    )
    .map_err(tracknet_vit::model::ModelError::from)?;
    Ok(())
}

/// `model` (a run's) with its LoRA weights replaced by the PEFT adapter in `dir`. A run
/// without LoRA gets the adapter's layers; a LoRA run's adapters must have the adapter's
/// settings (rank, scaling, targets), else an error names the one that differs.
pub fn with_adapter<B: ModelBackend>(
    model: HeatmapModel<B>,
    cfg: &RunConfig,
    dir: &Path,
    device: &B::Device,
) -> Result<HeatmapModel<B>, TrainError> {
    let theirs = tracknet_lora::peft::read_adapter_config(dir)
        .and_then(|c| c.to_settings(dir))
        .map_err(ModelError::from)?;
    let model = if cfg.model.lora.enabled {
        let ours = tracknet_vit::model::lora_settings(&cfg.model);
        let differs = [
            ("r", ours.r.to_string(), theirs.r.to_string()),
            (
                "scaling (lora_alpha, use_rslora)",
                ours.scaling().to_string(),
                theirs.scaling().to_string(),
            ),
        ];
        if let Some((key, run, adapter)) = differs.iter().find(|(_, a, b)| a != b) {
            return Err(TrainError::AdapterMismatch {
                dir: dir.to_path_buf(),
                key,
                adapter: adapter.clone(),
                run: run.clone(),
            });
        }
        model
    } else {
        model.add_lora(&theirs, device)?.0
    };
    Ok(model.load_peft_weights(dir, device)?)
}

/// The config a run was trained with (`RUN/config.yaml`), with `overrides` applied.
pub fn run_config(run_dir: &Path, overrides: &[String]) -> Result<RunConfig, TrainError> {
    Ok(RunConfig::load_combined(
        &run_dir.join("config.yaml"),
        overrides,
    )?)
}

/// The checkpoint folder `which` (`best` | `last`) of a run.
pub fn checkpoint_dir(run_dir: &Path, which: &str) -> Result<PathBuf, TrainError> {
    let root = run_dir.join("checkpoints");
    read_pointer(&root, which).ok_or_else(|| TrainError::NoCheckpoint {
        pointer: root.join(format!("{which}.json")),
        which: which.to_string(),
    })
}

/// The trained model of a run, on backend `B`.
pub fn load_run_model<B: ModelBackend>(
    cfg: &RunConfig,
    ckpt: &Path,
    device: &B::Device,
) -> Result<HeatmapModel<B>, TrainError> {
    check_base_matches(cfg, ckpt)?;
    B::seed(device, cfg.training.seed);
    let (model, _) =
        HeatmapModel::<B>::from_config_frames(&cfg.model, cfg.data.sequence.frames(), device)?;
    model.check_input_size(cfg.data.preprocess.resize)?;
    load_trainable(ckpt, cfg, model)
}

/// The frozen base is rebuilt, not stored: refuse a config whose base would differ from the
/// one the checkpoint trained on (its `QuantRecord`: seed of a random base, code book, block
/// size, double quantization), so metrics are never computed on another base.
fn check_base_matches(cfg: &RunConfig, ckpt: &Path) -> Result<(), TrainError> {
    let path = ckpt.join("state.json");
    let Some(rec) = read_state(ckpt)?.quantization else {
        return Ok(());
    };
    let q = &cfg.model.quantization;
    let mut diffs = Vec::new();
    let mut differ = |key: &str, ckpt: String, now: String| {
        if ckpt != now {
            diffs.push(format!(
                "{key}: the checkpoint's base used {ckpt}, the config says {now}"
            ));
        }
    };
    differ(
        "model.quantization.enabled",
        "true".into(),
        q.enabled.to_string(),
    );
    differ(
        "model.quantization.quant_type",
        rec.quant_type.clone(),
        q.quant_type.as_str().into(),
    );
    differ(
        "model.quantization.blocksize",
        rec.blocksize.to_string(),
        q.blocksize.to_string(),
    );
    differ(
        "model.quantization.use_double_quant",
        rec.double_quant.to_string(),
        q.double_quant().to_string(),
    );
    if !cfg.model.uses_pretrained() {
        differ(
            "training.seed (random base)",
            rec.seed.to_string(),
            cfg.training.seed.to_string(),
        );
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(TrainError::BaseMismatch {
            path,
            differences: diffs,
        })
    }
}

/// What `predict` wrote.
#[derive(Debug, Clone)]
pub struct PredictSummary {
    /// Frames processed.
    pub frames: usize,
    /// Frames where the ball was detected.
    pub detected: usize,
    /// The CSV.
    pub csv: PathBuf,
}

/// Predict on an image, a folder of frames or a Clip folder; writes `predictions.csv`
/// (Label.csv schema + `confidence`, one row per frame), `heatmaps/`, `overlays/` and
/// `trajectory.png` into `out`, which must not exist or be empty and appears once complete
/// ([`Staged`]); once `stop` is set it stops between frames, leaving nothing at `out`. With
/// `data.sequence` each frame is predicted from it and its predecessors in file order, as in
/// training.
pub fn predict<B: ModelBackend>(
    model: &HeatmapModel<B>,
    cfg: &RunConfig,
    input: &Path,
    out: &Path,
    threshold: f32,
    device: &B::Device,
    stop: Option<&StopFlag>,
) -> Result<PredictSummary, TrainError> {
    let frames = tracknet_data::list_frames(input)?;
    let staged = Staged::new(out)?;
    let result = predict_frames(model, cfg, input, &frames, &staged, threshold, device, stop);
    let mut summary = staged.finish(result)?;
    summary.csv = out.join("predictions.csv");
    Ok(summary)
}

#[allow(clippy::too_many_arguments)]
fn predict_frames<B: ModelBackend>(
    model: &HeatmapModel<B>,
    cfg: &RunConfig,
    input: &Path,
    frames: &[PathBuf],
    staged: &Staged,
    threshold: f32,
    device: &B::Device,
    stop: Option<&StopFlag>,
) -> Result<PredictSummary, TrainError> {
    let out = staged.dir();
    let loss_fn = loss_from_config(cfg);
    let pre = PreprocessOptions {
        resize: [
            cfg.data.preprocess.resize[0] as u32,
            cfg.data.preprocess.resize[1] as u32,
        ],
        normalize: cfg.data.preprocess.normalize,
    };
    let [hw, hh] = cfg.model.heatmap.size;
    std::fs::create_dir_all(out.join("heatmaps")).map_err(io_err(out))?;
    std::fs::create_dir_all(out.join("overlays")).map_err(io_err(out))?;
    // A Clip folder's own labels, when it has them: drawn as the target in the overlays and
    // the trajectory figure.
    let labels: BTreeMap<String, Option<(f32, f32)>> = if input.join("Label.csv").is_file() {
        let (index, report) = tracknet_data::DatasetIndex::scan_clip(input)?;
        if !report.skipped.is_empty() {
            tracing::warn!("{}: {report}", input.join("Label.csv").display());
        }
        index
            .frames
            .into_iter()
            .map(|f| (f.frame_name, f.xy))
            .collect()
    } else {
        BTreeMap::new()
    };
    let mut rows = Vec::new();
    let mut track = Vec::new();
    let mut target = Vec::new();
    // Multi-frame input: frame j sees frames j-(L-1)·stride .. j, clamped to the first frame
    // (as in training); each frame is decoded once and kept while a later frame needs it.
    let (length, stride) = (cfg.data.sequence.frames(), cfg.data.sequence.stride.max(1));
    let mut cache: BTreeMap<usize, tracknet_data::Preprocessed> = BTreeMap::new();
    for (j, path) in frames.iter().enumerate() {
        staged.check(stop, "predict")?;
        let oldest = j.saturating_sub((length - 1) * stride);
        cache.retain(|&k, _| k >= oldest);
        let mut chw = Vec::with_capacity(3 * length * (pre.resize[0] * pre.resize[1]) as usize);
        for k in (0..length).rev().map(|k| j.saturating_sub(k * stride)) {
            if let std::collections::btree_map::Entry::Vacant(e) = cache.entry(k) {
                e.insert(preprocess_image(&frames[k], &pre, false)?);
            }
            chw.extend_from_slice(&cache[&k].chw);
        }
        let p = &cache[&j];
        let [w, h] = pre.resize;
        let x = Tensor::<B, 1>::from_floats(chw.as_slice(), device).reshape([
            1,
            3 * length,
            h as usize,
            w as usize,
        ]);
        let heat: Vec<f32> = loss_fn
            .activate(model.try_forward(x)?)
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .unwrap_or_default();
        let (px, py, peak) = tracknet_data::argmax(&heat, hw);
        let visible = peak > threshold;
        let (ow, oh) = p.orig_size;
        // Heatmap pixel centres → original-frame pixels (inverse of scale_to_heatmap).
        let xy = visible.then(|| (px * ow as f32 / hw as f32, py * oh as f32 / hh as f32));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let label = labels.get(&name).copied().flatten();
        let stem = path
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        tracknet_data::viz::save_heatmap_png(
            &out.join("heatmaps").join(format!("{stem}.png")),
            &heat,
            hw,
            hh,
        )?;
        tracknet_data::viz::save_overlay_png(
            &out.join("overlays").join(format!("{stem}.png")),
            path,
            &heat,
            (hw, hh),
            visible.then_some((px, py)),
            label.map(|(x, y)| (x * hw as f32 / ow as f32, y * hh as f32 / oh as f32)),
        )?;
        track.push(xy);
        target.push(label);
        rows.push(PredictionRow {
            file_name: name,
            visibility: u8::from(visible),
            xy,
            status: None,
            confidence: peak,
        });
    }
    let csv = out.join("predictions.csv");
    tracknet_data::write_predictions_csv(&csv, &rows)?;
    if let Some(first) = frames.first()
        && frames.len() > 1
    {
        tracknet_data::viz::save_trajectory_png(
            &out.join("trajectory.png"),
            first,
            &track,
            &target,
        )?;
    }
    Ok(PredictSummary {
        frames: rows.len(),
        detected: rows.iter().filter(|r| r.visibility > 0).count(),
        csv,
    })
}
