//! The `tracknet` command line: config selection, `key=value` overrides, backend dispatch.

use std::path::PathBuf;

use burn::backend::NdArray;
use clap::{Args, Parser, Subcommand};
use tracknet_config::RunConfig;
use tracknet_vit::ModelBackend;
use tracknet_vit::model::HeatmapModel;

use crate::backend::{InferenceJob, device_spec, train_on, with_inference};
use crate::error::{TrainError, io_err};
use crate::eval::{EvalResult, evaluate, summary_line};
use crate::predict::{PredictSummary, checkpoint_dir, load_run_model, predict, run_config};
use crate::quickstart::{QuickstartOptions, result_table};
use crate::stop::StopFlag;
use crate::trainer::TrainOptions;

/// Memory-efficient (LoRA / 4-bit QLoRA) fine-tuning of a TrackNet ball-heatmap model.
#[derive(Parser, Debug)]
#[command(name = "tracknet", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// `--quiet` was given (only `train` has it): no bars, no progress lines, warnings kept.
    pub fn quiet(&self) -> bool {
        matches!(&self.command, Command::Train(a) if a.quiet)
    }
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train (no config: the embedded synthetic QLoRA default).
    Train(TrainArgs),
    /// Evaluate a run's checkpoint on its validation split.
    Eval(RunArgs),
    /// Predict the ball in an image, a folder of frames or a Clip folder.
    Predict(PredictArgs),
    /// Write synthetic TrackNet clips.
    Synth(SynthArgs),
    /// Show which layers would be quantized, why others not, and the measured memory.
    QuantizeReport(ConfigArgs),
    /// Write a run's model for the Python stack: 4-bit (bitsandbytes) and merged f32 backbone
    /// snapshots, the PEFT adapter, decoder and head.
    Export(ExportArgs),
}

/// `export` arguments.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The run folder.
    #[arg(long)]
    pub run: PathBuf,
    /// `best` or `last`.
    #[arg(long, default_value = "best")]
    pub checkpoint: String,
    /// Output folder (must not exist, or be empty).
    #[arg(long)]
    pub out: PathBuf,
}

/// Which configuration: one combined file, or model + data + training files (as the
/// original's `--model_name/--data_name/--training_name`), plus `key=value` overrides.
#[derive(Args, Debug, Clone, Default)]
pub struct ConfigArgs {
    /// A combined file with `model:`, `data:`, `training:` (YAML or TOML).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Model file (e.g. configs/model/vit_qlora_heatmap.yaml).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Data file (e.g. configs/data/tracknet.yaml).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Training file (e.g. configs/training/default.yaml).
    #[arg(long)]
    pub training: Option<PathBuf>,
    /// Dotted overrides, e.g. `training.optimizer.lr=1e-4 model.lora.r=8`.
    #[arg(value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

/// `train` arguments.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Run folder (default: `<training.output_dir>/<model_name>-NNN`, the next free number).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Continue the run in this folder from its last checkpoint (uses its config.yaml); a
    /// quick-start's folder continues both stages.
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    /// Stop, checkpointed, after this epoch (continue later with --resume).
    #[arg(long)]
    pub stop_after_epoch: Option<usize>,
    /// Start the decoder and head from another run's checkpoint: a checkpoint folder, or a run
    /// folder (its best checkpoint), e.g. a pre-training stage's.
    #[arg(long, value_name = "DIR", conflicts_with = "resume")]
    pub init_from: Option<PathBuf>,
    /// `cpu`, `cuda[:N]` or `wgpu` (overrides training.device).
    #[arg(long)]
    pub device: Option<String>,
    /// No progress output.
    #[arg(long)]
    pub quiet: bool,
}

/// `eval` arguments.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The run folder.
    #[arg(long)]
    pub run: PathBuf,
    /// `best` or `last`.
    #[arg(long, default_value = "best")]
    pub checkpoint: String,
    /// `cpu`, `cuda[:N]` or `wgpu`.
    #[arg(long)]
    pub device: Option<String>,
    /// Overrides applied to the run's config (e.g. `data.root=/data/tracknet`).
    #[arg(value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

/// `predict` arguments.
#[derive(Args, Debug)]
pub struct PredictArgs {
    /// The run folder.
    #[arg(long)]
    pub run: PathBuf,
    /// An image, a folder of frames, or a Clip folder.
    #[arg(long)]
    pub input: PathBuf,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// `best` or `last`.
    #[arg(long, default_value = "best")]
    pub checkpoint: String,
    /// A PEFT adapter folder (e.g. trained in Python) to predict with instead of the run's
    /// adapter; it must fit the run's backbone.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// Peak value above which the ball counts as visible (default: training.eval.threshold).
    #[arg(long)]
    pub threshold: Option<f32>,
    /// `cpu`, `cuda[:N]` or `wgpu`.
    #[arg(long)]
    pub device: Option<String>,
    /// Overrides applied to the run's config.
    #[arg(value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

/// `synth` arguments.
#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Output folder (must not exist or be empty).
    #[arg(long)]
    pub out: PathBuf,
    /// Games.
    #[arg(long, default_value_t = 2)]
    pub games: usize,
    /// Clips per game.
    #[arg(long, default_value_t = 2)]
    pub clips: usize,
    /// Frames per clip.
    #[arg(long, default_value_t = 30)]
    pub frames: usize,
    /// Frame size `WxH`.
    #[arg(long, default_value = "512x288")]
    pub size: String,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Ball radius relative to the default (larger is easier).
    #[arg(long, default_value_t = 1.0)]
    pub ball_scale: f32,
    /// Static balls lying on the court per clip (only motion tells them from the ball).
    #[arg(long, default_value_t = 2)]
    pub distractors: usize,
    /// Replace an existing non-empty folder.
    #[arg(long)]
    pub overwrite: bool,
}

/// Resolve the configuration the arguments name (none: the embedded quick-start).
pub fn load_config(args: &ConfigArgs) -> Result<RunConfig, TrainError> {
    Ok(
        match (&args.config, &args.model, &args.data, &args.training) {
            (Some(c), None, None, None) => RunConfig::load_combined(c, &args.overrides)?,
            (None, Some(m), Some(d), Some(t)) => {
                RunConfig::load_composed(m, d, t, &args.overrides)?
            }
            (None, None, None, None) => RunConfig::from_yaml_str(crate::QUICKSTART_CONFIG)?
                .with_overrides(&args.overrides)?,
            _ => return Err(TrainError::ConfigSelection),
        },
    )
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> Result<(), TrainError> {
    match cli.command {
        Command::Train(a) => cmd_train(a),
        Command::Eval(a) => cmd_eval(a),
        Command::Predict(a) => cmd_predict(a),
        Command::Synth(a) => cmd_synth(a),
        Command::QuantizeReport(a) => cmd_quantize_report(a),
        Command::Export(a) => cmd_export(a),
    }
}

fn next_run_dir(cfg: &RunConfig) -> PathBuf {
    let base = &cfg.training.output_dir;
    (1..)
        .map(|i| base.join(format!("{}-{i:03}", cfg.model.model_name)))
        .find(|p| !p.exists())
        .unwrap_or_else(|| base.join(&cfg.model.model_name))
}

fn cmd_train(a: TrainArgs) -> Result<(), TrainError> {
    let c = &a.config;
    if a.resume.is_none()
        && c.config.is_none()
        && c.model.is_none()
        && c.data.is_none()
        && c.training.is_none()
    {
        return cmd_quickstart(a, false);
    }
    if let Some(root) = a.resume.clone()
        && crate::quickstart::is_quickstart_run(&root)
    {
        return cmd_quickstart(
            TrainArgs {
                run_dir: Some(root),
                ..a
            },
            true,
        );
    }
    let (cfg, run_dir, resume) = match &a.resume {
        Some(dir) => (run_config(dir, &a.config.overrides)?, dir.clone(), true),
        None => {
            let cfg = load_config(&a.config)?;
            let dir = a.run_dir.clone().unwrap_or_else(|| next_run_dir(&cfg));
            (cfg, dir, false)
        }
    };
    let init_from = match &a.init_from {
        Some(dir) if dir.join("checkpoints").is_dir() => Some(checkpoint_dir(dir, "best")?),
        other => other.clone(),
    };
    let opts = TrainOptions {
        run_dir,
        resume,
        stop_after_epoch: a.stop_after_epoch,
        quiet: a.quiet,
        init_from,
        mid_checkpoint: None,
        stop: Some(on_signals()?),
    };
    tracing::info!("run folder: {}", opts.run_dir.display());
    say_checkpointing(&cfg, opts.quiet);
    let summary = train_on(&cfg, &opts, a.device.as_deref())?;
    print_finish(&summary);
    Ok(())
}

/// The first SIGINT / SIGTERM asks the command to stop where it can without losing anything
/// ([`crate::stop`]); a second one ends the process at once.
fn on_signals() -> Result<StopFlag, TrainError> {
    StopFlag::on_signals().map_err(io_err("signal handlers"))
}

/// The embedded default in two stages ([`crate::quickstart`]), then its result table.
fn cmd_quickstart(a: TrainArgs, resume: bool) -> Result<(), TrainError> {
    let pre = crate::quickstart::pretrain_config(&a.config.overrides)?;
    let root = a.run_dir.clone().unwrap_or_else(|| next_run_dir(&pre));
    let opts = QuickstartOptions {
        root,
        overrides: a.config.overrides.clone(),
        quiet: a.quiet,
        device: a.device.clone(),
        stop: Some(on_signals()?),
        resume,
    };
    let result = crate::quickstart::run(&opts, &mut |summary| print_finish(summary))?;
    println!("{}", result_table(&result));
    Ok(())
}

fn print_finish(summary: &crate::TrainSummary) {
    if let (Some(first), Some(last)) = (summary.baseline.as_ref(), summary.history.last()) {
        tracing::info!(
            "finished: val F1 {:.3} (before training {:.3}), PCK {:.3} (before {:.3}), L2 {:.2}px (before {:.2}px); run folder {}",
            last["f1"],
            first["f1"],
            last["pck"],
            first["pck"],
            last["l2"],
            first["l2"],
            summary.run_dir.display()
        );
    }
}

/// Says that recomputation is on (its effect is memory, which a user cannot see otherwise).
fn say_checkpointing(cfg: &RunConfig, quiet: bool) {
    if cfg.training.gradient_checkpointing && !quiet {
        tracing::info!(
            "training.gradient_checkpointing: on (each transformer block and decoder stage is \
             run again in the backward pass; one segment's activations are kept at a time)"
        );
    }
}

/// `eval`'s work on one backend.
struct Eval<'a> {
    cfg: &'a RunConfig,
    ckpt: &'a std::path::Path,
    val: std::sync::Arc<tracknet_data::DatasetIndex>,
}

impl InferenceJob for Eval<'_> {
    type Output = EvalResult;
    fn run<B: ModelBackend>(self, device: &B::Device) -> Result<EvalResult, TrainError> {
        let model = load_run_model::<B>(self.cfg, self.ckpt, device)?;
        evaluate(&model, self.val, self.cfg, None, 0, device)
    }
}

fn cmd_eval(a: RunArgs) -> Result<(), TrainError> {
    let cfg = run_config(&a.run, &a.overrides)?;
    let ckpt = checkpoint_dir(&a.run, &a.checkpoint)?;
    let splits = crate::data::scan_splits(&cfg)?;
    let job = Eval {
        cfg: &cfg,
        ckpt: &ckpt,
        val: splits.val,
    };
    let result = with_inference(device_spec(a.device.as_deref(), &cfg)?, job)?;
    if let Some(line) = crate::eval::skip_report("evaluation", &result.skipped) {
        tracing::warn!("{line}");
    }
    println!("{} ({})", summary_line(&result), ckpt.display());
    println!("{}", crate::eval::protocol_line(&result));
    let json = serde_json::json!({
        "checkpoint": ckpt.display().to_string(),
        "val_loss": result.loss,
        "precision": result.metrics.precision, "recall": result.metrics.recall, "f1": result.metrics.f1,
        "accuracy": result.metrics.accuracy, "pck": result.metrics.pck, "l2": result.metrics.mean_l2,
        "frames": result.metrics.frames, "visible": result.metrics.visible,
        "tracknet_protocol": result.metrics.protocol,
    });
    tracknet_data::write_atomic(
        &a.run.join("eval.json"),
        serde_json::to_string_pretty(&json)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    Ok(())
}

/// `predict`'s work on one backend.
struct Predict<'a> {
    cfg: &'a RunConfig,
    ckpt: &'a std::path::Path,
    a: &'a PredictArgs,
    stop: StopFlag,
}

impl InferenceJob for Predict<'_> {
    type Output = PredictSummary;
    fn run<B: ModelBackend>(self, device: &B::Device) -> Result<PredictSummary, TrainError> {
        let (cfg, a) = (self.cfg, self.a);
        let mut model = load_run_model::<B>(cfg, self.ckpt, device)?;
        if let Some(dir) = &a.adapter {
            model = crate::predict::with_adapter(model, cfg, dir, device)?;
            tracing::info!("LoRA weights from the adapter {}", dir.display());
        }
        let threshold = a.threshold.unwrap_or(cfg.training.eval.threshold as f32);
        predict(
            &model,
            cfg,
            &a.input,
            &a.out,
            threshold,
            device,
            Some(&self.stop),
        )
    }
}

fn cmd_predict(a: PredictArgs) -> Result<(), TrainError> {
    let cfg = run_config(&a.run, &a.overrides)?;
    let ckpt = checkpoint_dir(&a.run, &a.checkpoint)?;
    let job = Predict {
        cfg: &cfg,
        ckpt: &ckpt,
        a: &a,
        stop: on_signals()?,
    };
    let s = with_inference(device_spec(a.device.as_deref(), &cfg)?, job)?;
    println!(
        "{} frames, ball detected in {}; wrote {} and heatmaps/, overlays/ in {}",
        s.frames,
        s.detected,
        s.csv.display(),
        a.out.display()
    );
    Ok(())
}

fn cmd_export(a: ExportArgs) -> Result<(), TrainError> {
    let stop = on_signals()?;
    let s = crate::export::export_run(&a.run, &a.checkpoint, &a.out, Some(&stop))?;
    println!("wrote {}: {}", s.dir.display(), s.entries.join(", "));
    Ok(())
}

fn cmd_synth(a: SynthArgs) -> Result<(), TrainError> {
    let (w, h) = parse_size("--size", &a.size)?;
    let s = crate::progress::generate_synthetic(
        &a.out,
        &tracknet_data::SynthOptions {
            games: a.games,
            clips: a.clips,
            frames: a.frames,
            size: (w as u32, h as u32),
            seed: a.seed,
            overwrite: a.overwrite,
            jpeg_quality: 90,
            ball_scale: a.ball_scale,
            distractors: a.distractors,
        },
    )?;
    println!(
        "wrote {} frames in {} (visibility 0/1/2/3: {:?})",
        s.frames,
        a.out.display(),
        s.by_visibility
    );
    Ok(())
}

/// `WxH` (e.g. `512x288`) → `(W, H)`; `flag` names the option in the error.
pub fn parse_size(flag: &'static str, s: &str) -> Result<(usize, usize), TrainError> {
    let bad = || TrainError::Size {
        flag,
        value: s.to_string(),
    };
    let (w, h) = s.split_once('x').ok_or_else(bad)?;
    let (w, h): (usize, usize) = (
        w.trim().parse().map_err(|_| bad())?,
        h.trim().parse().map_err(|_| bad())?,
    );
    if w == 0 || h == 0 {
        return Err(bad());
    }
    Ok((w, h))
}

fn cmd_quantize_report(a: ConfigArgs) -> Result<(), TrainError> {
    let cfg = load_config(&a)?;
    let device = Default::default();
    let (model, build) = HeatmapModel::<NdArray>::from_config_frames(
        &cfg.model,
        cfg.data.sequence.frames(),
        &device,
    )?;
    println!("backbone: {}", build.backbone_source);
    match &build.quant_plan {
        None => println!("quantization is disabled (model.quantization.enabled: false)"),
        Some(plan) => {
            println!("{} layers quantized", plan.quantize.len());
            for (path, why) in &plan.keep {
                println!("kept in f32: {path}: {why}");
            }
            for (name, hits) in &plan.skip_matches {
                println!(
                    "skip_modules `{name}` matched {} layer(s){}",
                    hits.len(),
                    if hits.is_empty() { "" } else { ":" }
                );
                for h in hits {
                    println!("    {h}");
                }
            }
            for w in plan.warnings() {
                println!("warning: {w}");
            }
        }
    }
    println!("{}", model.memory_report());
    Ok(())
}
