//! The training loop: micro-batched gradient accumulation, global-norm clipping, AdamW/SGD over
//! trainable parameters only, warmup + cosine schedule, backbone freeze schedule, validation
//! each epoch, checkpoints and exact resume. What it writes into the run folder (metrics,
//! curves, checkpoint folders) is [`crate::run_folder`]'s.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::PathBuf;
use std::time::Instant;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use tracknet_config::RunConfig;
use tracknet_data::{Batch, BatchLoader};
use tracknet_vit::ModelBackend;
use tracknet_vit::model::HeatmapModel;
use tracknet_vit::rng::{draw_seed, with_stream};

use crate::amp::{LossScaler, StepPrecision, step_dtype};
use crate::checkpoint::{
    PartialEpoch, QuantRecord, RunState, init_params_from, read_pointer, read_safetensors,
};
use crate::data::{batch_tensors, ensure_synthetic, loader_options, scan_splits};
use crate::error::{TrainError, io_err};
use crate::eval::{evaluate, loss_from_config, skip_report, summary_line, write_previews};
use crate::optim::{
    OptimKind, Optimizer, accumulate, clip_grads, grad_norm, params_finite, scale_grads,
};
use crate::progress::{Progress, fmt_secs};
mod step;

pub use step::{
    StepPlan, next_micro_batch, parallel_shards, replica, step_grads, train_step, unscale, update,
};

pub use crate::run_folder::{
    CheckpointHook, Restored, load_checkpoint, load_trainable, metrics_row,
};
use crate::run_folder::{CheckpointWriter, copy_adapter, save_checkpoint, write_metrics};
use crate::schedule::LrSchedule;
use crate::stop::StopFlag;
use tracknet_quant::autocast::autocast;

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Run folder (config, metrics, curves, previews, checkpoints, adapter).
    pub run_dir: PathBuf,
    /// Continue from `run_dir/checkpoints/last.json`.
    pub resume: bool,
    /// Stop (checkpointed) after this epoch, to be continued with `resume`.
    pub stop_after_epoch: Option<usize>,
    /// No progress output.
    pub quiet: bool,
    /// Start the decoder and head from this checkpoint folder (another run's, e.g. a
    /// pre-training stage) instead of random init.
    pub init_from: Option<PathBuf>,
    /// Called half-way through each checkpoint write (tests only; see [`CheckpointHook`]).
    pub mid_checkpoint: Option<CheckpointHook>,
    /// Read before every optimizer step: once set (the CLI sets it on SIGINT / SIGTERM), the
    /// run writes its `last` checkpoint at that step and returns [`TrainError::Stopped`];
    /// `resume` continues it to the uninterrupted run's weights and metrics.
    pub stop: Option<StopFlag>,
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// The run folder.
    pub run_dir: PathBuf,
    /// Rows of metrics.csv.
    pub history: Vec<BTreeMap<String, f64>>,
    /// Metrics of the untrained model on the validation split (`None` when resumed from a
    /// checkpoint of a version that did not keep them).
    pub baseline: Option<BTreeMap<String, f64>>,
}

/// The loss's starting bias for the 1×1 head (focal: a 0.1 prior on every pixel).
pub fn with_head_bias_init<B: Backend>(
    mut model: HeatmapModel<B>,
    loss_fn: &crate::loss::HeatmapLoss,
) -> HeatmapModel<B> {
    if let Some(b) = loss_fn.head_bias_init()
        && let Some(bias) = model.head.conv.bias.take()
    {
        model.head.conv.bias =
            Some(bias.map(|t| t.zeros_like().add_scalar(b).detach().require_grad()));
    }
    model
}

/// Train `cfg` on backend `B` (an autodiff backend whose inner backend runs the 4-bit ops).
pub fn train<B>(
    cfg: &RunConfig,
    opts: &TrainOptions,
    device: &B::Device,
) -> Result<TrainSummary, TrainError>
where
    B: AutodiffBackend + ModelBackend,
    B::InnerBackend: ModelBackend,
{
    let t = &cfg.training;
    let say = |s: &str| {
        if !opts.quiet {
            tracing::info!("{s}");
        }
    };
    // Every bar and progress line of the run (its evaluations' too) follows `opts.quiet`.
    crate::progress::set_quiet(opts.quiet);
    cfg.validate()?;
    // An adapter to start from brings its own LoRA settings: the run (and its config.yaml,
    // checkpoints, saved adapters) uses those.
    let (model_cfg, adapter_notes) = tracknet_vit::model::with_adapter_config(&cfg.model)?;
    let cfg = &RunConfig {
        model: model_cfg,
        ..cfg.clone()
    };
    for w in adapter_notes.iter().chain(&cfg.warnings()) {
        tracing::warn!("{w}");
    }
    if !opts.resume {
        refuse_used_folder(&opts.run_dir)?;
    }
    fs::create_dir_all(&opts.run_dir).map_err(io_err(&opts.run_dir))?;
    let ckpt_root = opts.run_dir.join("checkpoints");
    let preview_dir = opts.run_dir.join("previews");

    let mut log = |s: &str| say(s);
    ensure_synthetic(cfg, &mut log)?;
    let splits = scan_splits(cfg)?;
    // A report that skipped rows is a warning, which `--quiet` keeps.
    for (name, report) in [
        ("train split: ", &splits.train_report),
        ("val split:   ", &splits.val_report),
    ] {
        let line = format!("{name}{}", report.to_string().trim_end());
        if report.skipped.is_empty() {
            say(&line);
        } else {
            tracing::warn!("{line}");
        }
    }
    if splits.train.is_empty() || splits.val.is_empty() {
        return Err(TrainError::NoFrames {
            train: splits.train.len(),
            val: splits.val.len(),
            root: cfg.data.root.clone(),
        });
    }

    // Model: the same seed rebuilds the same frozen base on resume.
    B::seed(device, t.seed);
    let (model, build) =
        HeatmapModel::<B>::from_config_frames(&cfg.model, cfg.data.sequence.frames(), device)?;
    model.check_input_size(cfg.data.preprocess.resize)?;
    say(&format!("backbone: {}", build.backbone_source));
    if let Some(note) = &build.input_note {
        say(note);
    }
    for w in &build.warnings {
        tracing::warn!("{w}");
    }
    if cfg.model.quantization.enabled {
        say(&format!(
            "quantization memory report:\n{}",
            model.memory_report()
        ));
    }
    if !build.lora_targets.is_empty() {
        say(&format!(
            "LoRA on {} layers (r={}, alpha={})",
            build.lora_targets.len(),
            cfg.model.lora.r,
            cfg.model.lora.lora_alpha
        ));
    }
    say(&model.param_report().to_string());

    let loss_fn = loss_from_config(cfg);
    let batch_size = t.batch_size.max(1);
    let steps_per_epoch = {
        let n = splits.train.len().div_ceil(batch_size);
        let n = if t.data_loader.drop_last {
            splits.train.len() / batch_size
        } else {
            n
        };
        t.steps_per_epoch.map_or(n, |cap| cap.min(n)).max(1)
    };
    let schedule = LrSchedule::from_config(t, steps_per_epoch);
    let kind = OptimKind::from_config(&t.optimizer);

    let mut model = with_head_bias_init(model, &loss_fn);
    if let (Some(dir), false) = (&opts.init_from, opts.resume) {
        let file = dir.join("trainable.safetensors");
        let (tensors, _) = read_safetensors(&file)?;
        let (m, n) = init_params_from(
            model,
            &tensors,
            |k| k.starts_with("decoder.") || k.starts_with("head."),
            &file,
        )?;
        model = m;
        say(&format!(
            "decoder and head initialised from {} ({n} tensors)",
            dir.display()
        ));
    }
    let mut opt = Optimizer::<B::InnerBackend>::new(kind);
    let mut state = RunState {
        epoch: 0,
        global_step: 0,
        best_score: None,
        best_epoch: None,
        best_metric: t.best_metric.clone(),
        history: Vec::new(),
        config_yaml: cfg.to_yaml_string(),
        quantization: quant_record(cfg, &build.backbone_source),
        loss_scaler: None,
        baseline: None,
        partial_epoch: None,
    };
    if opts.resume {
        let dir = read_pointer(&ckpt_root, "last").ok_or_else(|| TrainError::NoCheckpoint {
            pointer: ckpt_root.join("last.json"),
            which: "last".into(),
        })?;
        let (m, o, s) = load_checkpoint::<B>(&dir, cfg, model, kind, device)?;
        model = m;
        opt = o;
        state = s;
        say(&format!(
            "resumed from {} (epoch {}, step {})",
            dir.display(),
            state.epoch,
            state.global_step
        ));
    } else {
        let r = evaluate(
            &model.valid(),
            splits.val.clone(),
            cfg,
            t.val_steps,
            0,
            device,
        )?;
        say(&format!("untrained: {}", summary_line(&r)));
        state.baseline = Some(metrics_row(0, f64::NAN, &r, 0.0, 0.0));
        tracknet_data::write_atomic(
            &opts.run_dir.join("config.yaml"),
            cfg.to_yaml_string().as_bytes(),
        )?;
    }

    let clip = t.effective_grad_clip_norm().filter(|c| *c > 0.0);
    let recompute = t.gradient_checkpointing;
    // `training.amp`: the step's autocast dtype on this backend, and fp16's loss scaler (as
    // saved in the checkpoint when resumed).
    let (amp_dtype, amp_note) = step_dtype::<B>(t, device);
    if let Some(note) = amp_note {
        tracing::warn!("{note}");
    }
    let mut scaler = LossScaler::for_dtype(amp_dtype).map(|s| state.loss_scaler.unwrap_or(s));
    if let Some(d) = amp_dtype {
        say(&format!(
            "mixed precision: matrix ops in {d:?}, f32 weights and optimizer state{}",
            scaler.map_or(String::new(), |s| format!(", loss scale {}", s.scale))
        ));
    }
    let (shards, note) = parallel_shards(t.parallel_shards, &model);
    if let Some(note) = note {
        say(&note);
    }
    let mut micro = if t.micro_batch_size == 0 {
        batch_size
    } else {
        t.micro_batch_size.min(batch_size)
    };
    let mut writer = CheckpointWriter {
        root: &ckpt_root,
        cfg,
        written: 0,
        hook: opts.mid_checkpoint.as_ref(),
    };
    // A checkpoint written part-way through an epoch continues that epoch.
    let first_epoch = state
        .partial_epoch
        .as_ref()
        .map_or(state.epoch + 1, |p| p.epoch);
    for epoch in first_epoch..=t.epochs {
        let started = Instant::now();
        let partial = state.partial_epoch.take().filter(|p| p.epoch == epoch);
        // `backbone_freeze_epochs` holds back the base backbone of a full fine-tuning only:
        // LoRA adapters, LoRA biases and `modules_to_save` train from step 0, and a
        // `freeze: true` backbone is never unfrozen. Held-back parameters get no gradient (so
        // they neither move nor enter the clipping norm).
        if !cfg.model.lora.enabled && !cfg.model.backbone.freeze && t.backbone_freeze_epochs > 0 {
            let trains = epoch > t.backbone_freeze_epochs;
            model = model.set_backbone_base_trainable(trains);
        }
        let mut loader = BatchLoader::starting_at(
            splits.train.clone(),
            loader_options(cfg, epoch, true, batch_size),
            partial.as_ref().map_or(0, |p| p.batches),
        )?;
        let progress = Progress::new(epoch, t.epochs, steps_per_epoch, t.log_every);
        let (mut i, mut loss_sum, mut steps, mut skipped, earlier_secs) =
            partial.as_ref().map_or((0, 0.0, 0usize, 0usize, 0.0), |p| {
                (p.steps, p.loss_sum, p.updates, p.fp16_skipped, p.seconds)
            });
        while i < steps_per_epoch {
            if let Some(signal) = opts.stop.as_ref().and_then(StopFlag::requested) {
                state.partial_epoch = Some(PartialEpoch {
                    epoch,
                    batches: loader.position(),
                    steps: i,
                    loss_sum,
                    updates: steps,
                    fp16_skipped: skipped,
                    seconds: earlier_secs + started.elapsed().as_secs_f64(),
                });
                save_checkpoint(&mut writer, "last", &model, &opt, &state)?;
                return Err(TrainError::Stopped {
                    signal,
                    epoch,
                    step: i,
                    run_dir: opts.run_dir.clone(),
                });
            }
            let Some(batch) = loader.next() else { break };
            let batch = batch?;
            i += 1;
            // Per-step seed: dropout masks are a function of the step, so a resumed run draws
            // the same ones as an uninterrupted run.
            B::seed(device, t.seed.wrapping_add(1 + state.global_step as u64));
            let lr = schedule.lr(state.global_step);
            let loss_scale = scaler.map_or(1.0, |s| s.scale);
            let mut retries = 0usize;
            let (loss, grads) = loop {
                let attempt = catch_unwind(AssertUnwindSafe(|| {
                    let plan = StepPlan {
                        micro,
                        recompute,
                        shards,
                        precision: StepPrecision {
                            dtype: amp_dtype,
                            loss_scale,
                        },
                    };
                    step_grads(&model, &loss_fn, &batch, plan, device)
                }));
                match attempt {
                    Ok(r) => break r,
                    Err(panic) => {
                        let msg = panic_message(&panic);
                        if !msg.to_lowercase().contains("out of memory") {
                            resume_unwind(panic);
                        }
                        let next = next_micro_batch(t, micro, retries)?;
                        say(&format!(
                            "out of memory at micro-batch {micro}; retrying with {next}"
                        ));
                        micro = next;
                        retries += 1;
                    }
                }
            };
            let gnorm = grad_norm::<B, _>(&model, &grads);
            let finite = loss.is_finite() && gnorm.is_finite();
            if let Some(s) = scaler.as_mut() {
                // fp16 overflow: skip the step with a smaller scale (GradScaler), unless the
                // scale is spent, which is the non-finite error below.
                let taken = s.update(finite);
                state.loss_scaler = Some(*s);
                if !taken && !s.exhausted() {
                    state.global_step += 1;
                    skipped += 1;
                    continue;
                }
            }
            if !finite {
                // The weights before this step are saved when they are still finite (a bad
                // batch); weights that are themselves NaN/inf never replace the last checkpoint.
                let saved = if params_finite(&model) {
                    let dir = save_checkpoint(&mut writer, "last", &model, &opt, &state)?;
                    format!(
                        "the weights before this step are saved as the `last` checkpoint {}",
                        dir.display()
                    )
                } else {
                    match read_pointer(&ckpt_root, "last") {
                        Some(dir) => format!(
                            "the weights are no longer finite, so the `last` checkpoint {} was kept",
                            dir.display()
                        ),
                        None => {
                            "the weights are no longer finite and no checkpoint was written yet"
                                .into()
                        }
                    }
                };
                return Err(TrainError::NonFinite {
                    what: if loss.is_finite() {
                        "gradient".into()
                    } else {
                        "loss".into()
                    },
                    epoch,
                    step: i,
                    global_step: state.global_step,
                    saved,
                });
            }
            let (grads, gnorm) = unscale::<B>(&model, grads, gnorm, loss_scale);
            model = update(model, &mut opt, grads, gnorm, clip, lr);
            state.global_step += 1;
            loss_sum += loss;
            steps += 1;
            progress.step(i, loss_sum / steps as f64, lr);
        }

        if let Some(line) =
            skip_report(&format!("epoch {epoch} training"), &loader.report().skipped)
        {
            tracing::warn!("{line}");
        }
        if skipped > 0 {
            say(&format!(
                "epoch {epoch}: {skipped} fp16 step(s) skipped for overflowing gradients; loss \
                 scale now {}",
                scaler.map_or(1.0, |s| s.scale)
            ));
        }
        drop(loader);
        let r = evaluate(
            &model.valid(),
            splits.val.clone(),
            cfg,
            t.val_steps,
            t.preview_frames,
            device,
        )?;
        if let Some(line) = skip_report(&format!("epoch {epoch} validation"), &r.skipped) {
            tracing::warn!("{line}");
        }
        if t.preview_frames > 0 {
            fs::create_dir_all(&preview_dir).map_err(io_err(&preview_dir))?;
            write_previews(&preview_dir, &format!("epoch-{epoch:03}"), &r)?;
        }
        let secs = earlier_secs + started.elapsed().as_secs_f64();
        let row = metrics_row(
            epoch,
            loss_sum / steps.max(1) as f64,
            &r,
            schedule.lr(state.global_step.saturating_sub(1)),
            secs,
        );
        say(&format!(
            "epoch {epoch}/{} done in {}: train loss {:.5} | {}",
            t.epochs,
            fmt_secs(secs),
            row["train_loss"],
            summary_line(&r)
        ));
        state.history.push(row.clone());
        state.epoch = epoch;
        write_metrics(&opts.run_dir, &state.history)?;

        let score = score_of(&row, &t.best_metric);
        let better = match state.best_score {
            None => true,
            Some(b) if t.best_metric_higher_is_better() => score > b,
            Some(b) => score < b,
        };
        if better && score.is_finite() {
            state.best_score = Some(score);
            state.best_epoch = Some(epoch);
            save_checkpoint(&mut writer, "best", &model, &opt, &state)?;
        }
        let last = save_checkpoint(&mut writer, "last", &model, &opt, &state)?;
        if cfg.model.lora.enabled {
            copy_adapter(&last.join("adapter"), &opts.run_dir.join("adapter"))?;
        }
        if opts.stop_after_epoch == Some(epoch) {
            say(&format!(
                "stopping after epoch {epoch} as asked; continue with --resume {}",
                opts.run_dir.display()
            ));
            break;
        }
    }
    Ok(TrainSummary {
        run_dir: opts.run_dir.clone(),
        history: state.history,
        baseline: state.baseline,
    })
}

/// A run that is not resumed starts in a folder that does not exist or is empty: a finished
/// (or stopped) run's config, metrics and checkpoints are never written over.
pub(crate) fn refuse_used_folder(dir: &std::path::Path) -> Result<(), TrainError> {
    if crate::staged::holds_files(dir)? {
        return Err(TrainError::RunFolderInUse {
            path: dir.to_path_buf(),
        });
    }
    Ok(())
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

fn quant_record(cfg: &RunConfig, base: &str) -> Option<QuantRecord> {
    let q = &cfg.model.quantization;
    q.enabled.then(|| QuantRecord {
        quant_type: q.quant_type.as_str().into(),
        blocksize: q.blocksize,
        double_quant: q.double_quant(),
        compute_dtype: q.compute_dtype.as_str().into(),
        skip_modules: q.skip_modules.clone(),
        base: base.into(),
        seed: cfg.training.seed,
    })
}

fn score_of(row: &BTreeMap<String, f64>, metric: &str) -> f64 {
    row.get(metric).copied().unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn training(yaml: &str) -> tracknet_config::TrainingConfig {
        tracknet_config::RunConfig::from_yaml_str(&format!("training: {yaml}"))
            .unwrap()
            .training
    }

    #[test]
    fn oom_search_halves_until_retries_or_the_floor_run_out() {
        let t = training("{batch_size: 32, min_micro_batch_size: 2, oom_retries: 3}");
        assert_eq!(next_micro_batch(&t, 32, 0).unwrap(), 16);
        assert_eq!(next_micro_batch(&t, 16, 1).unwrap(), 8);
        assert_eq!(next_micro_batch(&t, 8, 2).unwrap(), 4);
        // The fourth halving is refused by oom_retries, naming the micro-batch reached.
        let e = next_micro_batch(&t, 4, 3).unwrap_err().to_string();
        assert!(
            e.contains("micro-batch 4") && e.contains("oom_retries (3)"),
            "{e}"
        );
        // The floor stops it first when it is higher.
        let t = training("{batch_size: 32, min_micro_batch_size: 8, oom_retries: 10}");
        assert_eq!(next_micro_batch(&t, 32, 0).unwrap(), 16);
        let e = next_micro_batch(&t, 8, 2).unwrap_err().to_string();
        assert!(e.contains("min_micro_batch_size (8)"), "{e}");
        // A fixed micro-batch, or the search switched off: no retry at all.
        let t = training("{batch_size: 32, micro_batch_size: 8}");
        let e = next_micro_batch(&t, 8, 0).unwrap_err().to_string();
        assert!(e.contains("micro_batch_size = 8 fixes"), "{e}");
        let t = training("{batch_size: 32, adaptive_micro_batch: false}");
        assert!(next_micro_batch(&t, 32, 0).is_err());
        // `mb_backoff_factor` divides by itself, not by 2.
        let t = training("{batch_size: 32, min_micro_batch_size: 1, mb_backoff_factor: 4}");
        assert_eq!(next_micro_batch(&t, 32, 0).unwrap(), 8);
        assert_eq!(next_micro_batch(&t, 8, 1).unwrap(), 2);
    }
}
