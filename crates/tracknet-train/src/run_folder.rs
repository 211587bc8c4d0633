//! A run folder's outputs, apart from the loop that produces them: `metrics.csv` and
//! `curves.png` after every epoch, atomic checkpoint folders (trainable tensors, optimizer
//! state, `state.json`, the PEFT adapter) and reading them back for resume, eval and predict.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::backend::AutodiffBackend;
use tracknet_config::RunConfig;
use tracknet_vit::ModelBackend;
use tracknet_vit::model::{HeatmapModel, lora_settings};

use crate::checkpoint::{
    RunState, check_optimizer_fits, collect_params, commit_checkpoint, load_params,
    optimizer_from_tensors, optimizer_tensors, read_safetensors, required_tensors, to_safetensors,
};
use crate::error::{TrainError, io_err};
use crate::optim::{OptimKind, Optimizer};

/// Called with a checkpoint's ordinal (1-based, counted in this process) once its weights are
/// on disk and before the rest is: tests kill the process there to show that the previous
/// checkpoint survives. Production runs have none.
#[derive(Clone)]
pub struct CheckpointHook(pub Arc<dyn Fn(usize) + Send + Sync>);

impl std::fmt::Debug for CheckpointHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CheckpointHook")
    }
}

/// BatchNorm's running mean / variance (Burn's `RunningState` fields).
fn is_running_stat(path: &str) -> bool {
    path.ends_with(".running_mean") || path.ends_with(".running_var")
}

/// One metrics.csv row.
pub fn metrics_row(
    epoch: usize,
    train_loss: f64,
    r: &crate::eval::EvalResult,
    lr: f64,
    secs: f64,
) -> BTreeMap<String, f64> {
    let m = &r.metrics;
    BTreeMap::from([
        ("epoch".to_string(), epoch as f64),
        ("train_loss".to_string(), train_loss),
        ("val_loss".to_string(), r.loss),
        ("precision".to_string(), m.precision as f64),
        ("recall".to_string(), m.recall as f64),
        ("f1".to_string(), m.f1 as f64),
        ("accuracy".to_string(), m.accuracy as f64),
        ("pck".to_string(), m.pck as f64),
        ("l2".to_string(), m.mean_l2 as f64),
        ("lr".to_string(), lr),
        ("seconds".to_string(), secs),
    ])
}

/// A checkpoint folder's `state.json`, its metrics history checked.
pub fn read_state(dir: &Path) -> Result<RunState, TrainError> {
    let path = dir.join("state.json");
    let raw = fs::read(&path).map_err(io_err(&path))?;
    let state: RunState = serde_json::from_slice(&raw).map_err(|source| TrainError::StateJson {
        path: path.clone(),
        source,
    })?;
    check_history(&state.history, &path)?;
    Ok(state)
}

/// Every metrics row of a loaded `state.json` has every column (`metrics.csv` and the plots
/// read them all), else an error naming the row and the key.
fn check_history(history: &[BTreeMap<String, f64>], file: &Path) -> Result<(), TrainError> {
    let problems: Vec<String> = history
        .iter()
        .enumerate()
        .flat_map(|(i, row)| {
            CSV_COLUMNS
                .iter()
                .filter(|c| !row.contains_key(**c))
                .map(move |c| format!("history[{i}] lacks `{c}`"))
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(TrainError::IncompleteHistory {
            path: file.to_path_buf(),
            columns: CSV_COLUMNS.to_vec(),
            problems,
        })
    }
}

pub(crate) const CSV_COLUMNS: [&str; 11] = [
    "epoch",
    "train_loss",
    "val_loss",
    "precision",
    "recall",
    "f1",
    "accuracy",
    "pck",
    "l2",
    "lr",
    "seconds",
];

/// metrics.csv and curves.png, rewritten atomically after every epoch.
pub(crate) fn write_metrics(
    run_dir: &Path,
    history: &[BTreeMap<String, f64>],
) -> Result<(), TrainError> {
    let csv = tracknet_data::csv_text(
        &CSV_COLUMNS,
        history.iter().map(|row| {
            CSV_COLUMNS
                .iter()
                .map(|c| row.get(*c).map_or(String::new(), |v| format!("{v}")))
                .collect::<Vec<_>>()
        }),
    );
    tracknet_data::write_atomic(&run_dir.join("metrics.csv"), csv.as_bytes())?;
    let series = |k: &str| {
        history
            .iter()
            .map(|r| (r["epoch"] as f32, r[k] as f32))
            .collect::<Vec<_>>()
    };
    use tracknet_data::viz::{Panel, Series, save_panels_png};
    let loss = Panel::new("Loss", "epoch", "loss")
        .integer_x()
        .with(Series::new("train", series("train_loss")))
        .with(Series::new("validation", series("val_loss")));
    let scores = Panel::new("Validation detection", "epoch", "score")
        .integer_x()
        .y_range(0.0, 1.0)
        .right_axis("L2 error (heatmap px)")
        .with(Series::new("F1", series("f1")))
        .with(Series::new("PCK", series("pck")))
        .with(Series::new("L2", series("l2")).on_right());
    save_panels_png(
        &run_dir.join("curves.png"),
        "Training curves",
        (960, 760),
        &[loss, scores],
    )?;
    Ok(())
}

/// Write a complete checkpoint folder and point `pointer` at it.
/// Where a run's checkpoints go, and how many were written (the kill test hook counts them).
pub(crate) struct CheckpointWriter<'a> {
    pub(crate) root: &'a Path,
    pub(crate) cfg: &'a RunConfig,
    pub(crate) written: usize,
    pub(crate) hook: Option<&'a CheckpointHook>,
}

pub(crate) fn save_checkpoint<B: AutodiffBackend + ModelBackend>(
    writer: &mut CheckpointWriter<'_>,
    pointer: &str,
    model: &HeatmapModel<B>,
    opt: &Optimizer<B::InnerBackend>,
    state: &RunState,
) -> Result<PathBuf, TrainError>
where
    B::InnerBackend: ModelBackend,
{
    writer.written += 1;
    let n = writer.written;
    let hook = writer.hook;
    let cfg = writer.cfg;
    commit_checkpoint(writer.root, pointer, state.global_step, |dir| {
        // Trained tensors, plus BatchNorm's running statistics (no gradient, but learned from
        // the data: without them eval and predict would normalise with mean 0, variance 1).
        let params =
            collect_params::<B, _>(model, |path, trainable| trainable || is_running_stat(path));
        let mut meta = HashMap::new();
        meta.insert("format".into(), "tracknet-trainable".into());
        fs::write(
            dir.join("trainable.safetensors"),
            to_safetensors(&params, meta)?,
        )
        .map_err(io_err(dir))?;
        if let Some(hook) = hook {
            (hook.0)(n);
        }
        let (ot, om) = optimizer_tensors(opt);
        fs::write(dir.join("optimizer.safetensors"), to_safetensors(&ot, om)?)
            .map_err(io_err(dir))?;
        if cfg.model.lora.enabled {
            model.save_peft_adapter(
                &dir.join("adapter"),
                &lora_settings(&cfg.model),
                cfg.model.pretrained_model_name.clone(),
            )?;
        }
        let json = serde_json::to_vec_pretty(state).map_err(|source| TrainError::StateJson {
            path: dir.join("state.json"),
            source,
        })?;
        fs::write(dir.join("state.json"), json).map_err(io_err(dir))?;
        Ok(())
    })
}

/// A model, optimizer and run state restored from a checkpoint.
pub type Restored<B> = (
    HeatmapModel<B>,
    Optimizer<<B as AutodiffBackend>::InnerBackend>,
    RunState,
);

/// Load trainable weights, optimizer and run state from a checkpoint folder.
pub fn load_checkpoint<B: AutodiffBackend + ModelBackend>(
    dir: &Path,
    cfg: &RunConfig,
    model: HeatmapModel<B>,
    kind: OptimKind,
    device: &B::Device,
) -> Result<Restored<B>, TrainError> {
    let model = load_trainable(dir, cfg, model)?;
    let file = dir.join("optimizer.safetensors");
    let (ot, om) = read_safetensors(&file)?;
    let opt = optimizer_from_tensors::<B::InnerBackend>(kind, ot, &om, device);
    check_optimizer_fits(&model, &opt, &file)?;
    let state = read_state(dir)?;
    Ok((model, opt, state))
}

/// Load only the trained weights (for eval and predict, on any backend). Every tensor the run
/// trains must be there ([`required_tensors`]), with the model's shapes.
pub fn load_trainable<B: ModelBackend>(
    dir: &Path,
    cfg: &RunConfig,
    model: HeatmapModel<B>,
) -> Result<HeatmapModel<B>, TrainError> {
    let file = dir.join("trainable.safetensors");
    let (params, _) = read_safetensors(&file)?;
    let epoch = read_state(dir)?.weights_epoch();
    let patch = model
        .multi_frame()
        .then(|| format!("backbone.{}.", model.backbone.patch_embedding_path()));
    let required = required_tensors(cfg, epoch, patch);
    load_params(model, &params, &required, &file)
}

pub(crate) fn copy_adapter(from: &Path, to: &Path) -> Result<(), TrainError> {
    for f in [
        tracknet_lora::peft::CONFIG_FILE,
        tracknet_lora::peft::WEIGHTS_FILE,
    ] {
        let bytes = fs::read(from.join(f)).map_err(io_err(from.join(f)))?;
        tracknet_data::write_atomic(&to.join(f), &bytes)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_row_without_a_key_is_an_error_naming_it() {
        let mut row: BTreeMap<String, f64> =
            CSV_COLUMNS.iter().map(|c| (c.to_string(), 1.0)).collect();
        assert!(check_history(std::slice::from_ref(&row), Path::new("state.json")).is_ok());
        row.remove("val_loss");
        let e = check_history(&[row.clone(), row], Path::new("run/state.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("run/state.json") && e.contains("history[1] lacks `val_loss`"),
            "{e}"
        );
    }
}
