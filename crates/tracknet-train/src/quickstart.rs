//! The embedded default (`cargo xtask train` with no config), in two stages, because a frozen
//! *random* backbone carries too little of the ball for adapters to find in minutes:
//! (1) a short full pre-training of the small backbone with the decoder on one synthetic
//! domain, exported as a Hugging Face snapshot; (2) QLoRA fine-tuning on another domain: that
//! snapshot's projections quantized to NF4 with double quantization, LoRA adapters trained,
//! decoder and head continued from stage 1. `key=value` overrides apply to both stages.
//! The bench's quality study runs the same stages.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::backend::NdArray;
use tracknet_config::RunConfig;
use tracknet_data::DatasetIndex;
use tracknet_vit::model::HeatmapModel;

use crate::backend::train_on;
use crate::error::TrainError;
use crate::eval::{evaluate, loss_from_config};
use crate::predict::{checkpoint_dir, export_backbone, load_run_model};
use crate::trainer::{TrainOptions, TrainSummary, metrics_row, with_head_bias_init};

/// One metrics.csv row by column.
type MetricsRow = BTreeMap<String, f64>;

/// How to run the two stages.
#[derive(Debug, Clone, Default)]
pub struct QuickstartOptions {
    /// The run folder; the stages go to `1-pretrain/` and `2-qlora/` in it.
    pub root: PathBuf,
    /// `key=value` overrides for both stages.
    pub overrides: Vec<String>,
    /// No progress output.
    pub quiet: bool,
    /// `--device`, when given.
    pub device: Option<String>,
    /// A graceful stop ([`TrainOptions::stop`]) for either stage.
    pub stop: Option<crate::stop::StopFlag>,
    /// Continue the quick-start in `root` (stopped or killed): a finished stage is kept, a
    /// stopped one resumed from its `last` checkpoint, with the overrides it started with.
    pub resume: bool,
}

/// The quick-start's own record in its run folder: the overrides both stages were built with
/// (so that `--resume ROOT` rebuilds the same stages).
pub const RECORD_FILE: &str = "quickstart.json";

/// Whether `dir` is a quick-start's run folder (it holds [`RECORD_FILE`]).
pub fn is_quickstart_run(dir: &Path) -> bool {
    dir.join(RECORD_FILE).is_file()
}

/// Stage 1's outcome.
#[derive(Debug, Clone)]
pub struct Pretrained {
    /// Its run.
    pub summary: TrainSummary,
    /// Its best checkpoint folder (where stage 2's decoder and head start from).
    pub checkpoint: PathBuf,
    /// The exported backbone snapshot (stage 2's 4-bit base).
    pub snapshot: PathBuf,
}

/// Both stages and the untrained floor, on stage 2's validation frames.
#[derive(Debug, Clone)]
pub struct QuickstartResult {
    /// Stage 1.
    pub pretrained: Pretrained,
    /// Stage 2 (its `baseline` is the stage-1 model with its backbone in 4 bits, on stage 2's
    /// clips: where QLoRA starts).
    pub qlora: TrainSummary,
    /// The stage-1 model as trained (f32 backbone) on stage 2's validation frames: what QLoRA
    /// must beat.
    pub stage1: MetricsRow,
    /// The same architecture untrained (random backbone, decoder and head).
    pub untrained: BTreeMap<String, f64>,
    /// Validation frames, and those with a visible ball.
    pub frames: (usize, usize),
}

/// Stage 1's configuration: the embedded pre-training config with `overrides`.
pub fn pretrain_config(overrides: &[String]) -> Result<RunConfig, TrainError> {
    Ok(RunConfig::from_yaml_str(crate::QUICKSTART_PRETRAIN_CONFIG)?.with_overrides(overrides)?)
}

/// Stage 2's configuration: the embedded QLoRA config with `overrides`, on `snapshot`.
pub fn finetune_config(overrides: &[String], snapshot: &Path) -> Result<RunConfig, TrainError> {
    let mut all = overrides.to_vec();
    all.push(format!("model.backbone.weights={}", snapshot.display()));
    Ok(RunConfig::from_yaml_str(crate::QUICKSTART_CONFIG)?.with_overrides(&all)?)
}

/// Trains stage 1 (`pre`) into `dir` (with `resume`, continues or keeps what is there) and
/// exports its best checkpoint's backbone to `dir/backbone`.
pub fn pretrain(
    pre: &RunConfig,
    dir: &Path,
    quiet: bool,
    device: Option<&str>,
    stop: Option<crate::stop::StopFlag>,
    resume: bool,
) -> Result<Pretrained, TrainError> {
    let opts = TrainOptions {
        run_dir: dir.to_path_buf(),
        quiet,
        stop,
        resume,
        ..TrainOptions::default()
    };
    let summary = train_stage(pre, opts, device)?;
    let checkpoint = checkpoint_dir(dir, "best")?;
    let snapshot = dir.join("backbone");
    export_backbone(pre, &checkpoint, &snapshot)?;
    Ok(Pretrained {
        summary,
        checkpoint,
        snapshot,
    })
}

/// One stage's training. With `opts.resume`, a stage whose `last` checkpoint ends its last
/// epoch is kept as it is (its summary read back), one that has a checkpoint is continued, and
/// one that has none starts.
fn train_stage(
    cfg: &RunConfig,
    mut opts: TrainOptions,
    device: Option<&str>,
) -> Result<TrainSummary, TrainError> {
    if opts.resume {
        let last = crate::checkpoint::read_pointer(&opts.run_dir.join("checkpoints"), "last");
        match last {
            Some(dir) => {
                let state = crate::run_folder::read_state(&dir)?;
                if state.partial_epoch.is_none() && state.epoch >= cfg.training.epochs {
                    tracing::info!("{}: finished, kept", opts.run_dir.display());
                    return Ok(TrainSummary {
                        run_dir: opts.run_dir,
                        history: state.history,
                        baseline: state.baseline,
                    });
                }
                opts.init_from = None;
            }
            None => opts.resume = false,
        }
    }
    train_on(cfg, &opts, device)
}

/// Runs both stages and measures the untrained floor. `report` is called after each stage
/// with its summary (the CLI prints them). A stop on a signal in either stage is
/// [`TrainError::Stopped`] naming `opts.root`, which `resume` continues.
pub fn run(
    opts: &QuickstartOptions,
    report: &mut dyn FnMut(&TrainSummary),
) -> Result<QuickstartResult, TrainError> {
    let mut opts = opts.clone();
    let record = opts.root.join(RECORD_FILE);
    if opts.resume {
        let raw = std::fs::read(&record).map_err(crate::error::io_err(&record))?;
        let saved: Vec<String> = serde_json::from_slice::<serde_json::Value>(&raw)
            .ok()
            .and_then(|v| serde_json::from_value(v["overrides"].clone()).ok())
            .ok_or_else(|| TrainError::InvalidOption {
                option: "--resume",
                message: format!("{}: expected {{\"overrides\": [..]}}", record.display()),
            })?;
        opts.overrides = saved.into_iter().chain(opts.overrides).collect();
    } else {
        crate::trainer::refuse_used_folder(&opts.root)?;
        let json = serde_json::json!({ "overrides": opts.overrides });
        tracknet_data::write_atomic(&record, json.to_string().as_bytes())?;
    }
    run_stages(&opts, report).map_err(|e| match e {
        TrainError::Stopped {
            signal,
            epoch,
            step,
            ..
        } => TrainError::Stopped {
            signal,
            epoch,
            step,
            run_dir: opts.root.clone(),
        },
        e => e,
    })
}

fn run_stages(
    opts: &QuickstartOptions,
    report: &mut dyn FnMut(&TrainSummary),
) -> Result<QuickstartResult, TrainError> {
    let pre = pretrain_config(&opts.overrides)?;
    let (stage1, stage2) = (opts.root.join("1-pretrain"), opts.root.join("2-qlora"));
    tracing::info!(
        "== quick-start stage 1/2: full pre-training of the small backbone -> {}",
        stage1.display()
    );
    let pretrained = pretrain(
        &pre,
        &stage1,
        opts.quiet,
        opts.device.as_deref(),
        opts.stop.clone(),
        opts.resume,
    )?;
    report(&pretrained.summary);
    tracing::info!(
        "exported the pre-trained backbone as a Hugging Face snapshot: {}",
        pretrained.snapshot.display()
    );

    let cfg = finetune_config(&opts.overrides, &pretrained.snapshot)?;
    tracing::info!(
        "== quick-start stage 2/2: QLoRA (NF4 + double quant + LoRA) on new clips -> {}",
        stage2.display()
    );
    let run2 = TrainOptions {
        run_dir: stage2,
        quiet: opts.quiet,
        init_from: Some(pretrained.checkpoint.clone()),
        stop: opts.stop.clone(),
        resume: opts.resume,
        ..TrainOptions::default()
    };
    let qlora = train_stage(&cfg, run2, opts.device.as_deref())?;
    report(&qlora);

    // Both extra rows are measured on stage 2's validation frames, scanned once.
    let val = crate::data::scan_splits(&cfg)?.val;
    let (stage1, _) = stage1_on(&pre, &cfg, &pretrained.checkpoint, val.clone())?;
    let (untrained, frames) = untrained_floor(&cfg, val)?;
    Ok(QuickstartResult {
        pretrained,
        qlora,
        stage1,
        untrained,
        frames,
    })
}

/// The architecture of `cfg` untrained (random backbone, decoder and head; the head's bias
/// initialised as in training) on the validation frames `val`: the floor both stages are
/// measured against.
fn untrained_floor(cfg: &RunConfig, val: Arc<DatasetIndex>) -> Result<ValRow, TrainError> {
    let mut random_cfg = cfg.clone();
    random_cfg.model.backbone.weights = None;
    random_cfg.model.pretrained_model_name = None;
    let device = Default::default();
    <NdArray as burn::prelude::Backend>::seed(&device, random_cfg.training.seed);
    let (random, _) = HeatmapModel::<NdArray>::from_config_frames(
        &random_cfg.model,
        random_cfg.data.sequence.frames(),
        &device,
    )?;
    let random = with_head_bias_init(random, &loss_from_config(&random_cfg));
    val_row(&random, &random_cfg, val)
}

/// The stage-1 model `pre` as trained (f32 backbone, its best checkpoint `ckpt`) on stage 2's
/// validation frames `val`, with `fine`'s data and metric settings.
fn stage1_on(
    pre: &RunConfig,
    fine: &RunConfig,
    ckpt: &Path,
    val: Arc<DatasetIndex>,
) -> Result<ValRow, TrainError> {
    let mut cfg = pre.clone();
    cfg.data = fine.data.clone();
    cfg.training.eval = fine.training.eval.clone();
    let model = load_run_model::<NdArray>(&cfg, ckpt, &Default::default())?;
    val_row(&model, &cfg, val)
}

/// A metrics row, and the frames and visible balls it counted.
type ValRow = (MetricsRow, (usize, usize));

/// `model` evaluated on `val` with `cfg`'s metric settings.
fn val_row(
    model: &HeatmapModel<NdArray>,
    cfg: &RunConfig,
    val: Arc<DatasetIndex>,
) -> Result<ValRow, TrainError> {
    let result = evaluate(model, val, cfg, None, 0, &Default::default())?;
    let frames = (result.metrics.frames, result.metrics.visible);
    Ok((metrics_row(0, f64::NAN, &result, 0.0, 0.0), frames))
}

/// The closing table: F1, PCK@3 and L2 of the untrained model, after stage 1 (as trained, and
/// with its backbone in 4 bits: QLoRA's start) and after stage 2.
pub fn result_table(r: &QuickstartResult) -> String {
    let row = |name: &str, m: &BTreeMap<String, f64>| {
        format!(
            "  {name:<40} {:>6.3} {:>7.3} {:>8.2}",
            m["f1"], m["pck"], m["l2"]
        )
    };
    let (frames, visible) = r.frames;
    let mut lines = vec![
        format!(
            "== quick-start result on the fine-tuning clips' validation split ({frames} frames, {visible} with a visible ball):"
        ),
        format!(
            "  {:<40} {:>6} {:>7} {:>8}",
            "model", "F1", "PCK@3", "L2 px"
        ),
        row("untrained (random init)", &r.untrained),
    ];
    lines.push(row("after stage 1 (full pre-training, f32)", &r.stage1));
    if let Some(b) = &r.qlora.baseline {
        lines.push(row("stage 1, backbone in NF4 (QLoRA's start)", b));
    }
    if let Some(last) = r.qlora.history.last() {
        lines.push(row("after stage 2 (QLoRA: NF4 + DQ + LoRA)", last));
    }
    lines.join("\n")
}
