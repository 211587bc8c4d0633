//! End to end on CPU with a tiny model: QLoRA (NF4 + double quant + LoRA) training, checkpoints,
//! resume equality, a kill in the middle of a checkpoint, eval, predict.

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::backend::{Autodiff, NdArray};
use tracknet_config::RunConfig;
use tracknet_train::checkpoint::{read_pointer, read_safetensors};
use tracknet_train::eval::evaluate;
use tracknet_train::predict::{checkpoint_dir, load_run_model, predict, run_config};
use tracknet_train::{TrainOptions, train};

type AD = Autodiff<NdArray>;
type B = NdArray;
use burn::prelude::Backend as _;

/// Burn's NdArray backend seeds one process-wide RNG (`Backend::seed`), so two trainings in
/// parallel test threads would interleave their draws (model init, dropout) and no longer be
/// reproducible: the tests that train in this process take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn tiny_config(root: &Path, epochs: usize) -> RunConfig {
    let yaml = format!(
        r#"
model:
  model_name: tiny
  pretrained_model_name: null
  backbone: {{ pretrained: false, freeze: true, family: dinov3, hidden_size: 32, num_hidden_layers: 1,
              num_attention_heads: 2, intermediate_size: 64, num_register_tokens: 2 }}
  decoder: {{ channels: [32, 16, 8], upsample: [2, 2] }}
  heatmap: {{ size: [32, 16], sigma: 1.5 }}
  lora: {{ enabled: true, r: 4, lora_alpha: 8, lora_dropout: 0.0, target_modules: null }}
  quantization: {{ enabled: true, quant_type: nf4, use_double_quant: true, compute_dtype: float32 }}
data:
  root: {root}
  split: {{ train_games: [game1, game2], val_games: [game3] }}
  preprocess: {{ resize: [128, 64], normalize: true, flip_prob: 0.5 }}
  synthetic: {{ games: 3, clips: 1, frames: 8, size: [160, 90], seed: 3, distractors: 0 }}
training:
  seed: 11
  batch_size: 4
  epochs: {epochs}
  grad_clip_norm: 1.0
  backbone_freeze_epochs: 0
  data_loader: {{ num_workers: 2, prefetch_factor: 2 }}
  optimizer: {{ name: adamw, lr: 5.0e-3, weight_decay: 0.01 }}
  scheduler: {{ name: cosine, warmup_epochs: 1, warmup_start_factor: 0.1 }}
  loss: {{ name: mse }}
  preview_frames: 2
  log_every: 1
"#,
        root = root.join("data").display()
    );
    RunConfig::from_yaml_str(&yaml).unwrap()
}

/// [`tiny_config`] with `key=value` overrides.
fn tiny(root: &Path, epochs: usize, overrides: &[&str]) -> RunConfig {
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    tiny_config(root, epochs)
        .with_overrides(&overrides)
        .unwrap()
}

fn tmp(name: &str) -> PathBuf {
    tracknet_testkit::scratch(&format!("e2e-{name}"))
}

fn opts(run_dir: PathBuf) -> TrainOptions {
    TrainOptions {
        run_dir,
        quiet: true,
        ..TrainOptions::default()
    }
}

fn last_weights(run: &Path) -> Vec<(String, Vec<f32>)> {
    let dir = read_pointer(&run.join("checkpoints"), "last").expect("a last checkpoint");
    let (t, _) = read_safetensors(&dir.join("trainable.safetensors")).unwrap();
    t.into_iter().map(|(k, (_, v))| (k, v)).collect()
}

#[test]
fn qlora_trains_saves_evaluates_predicts() {
    let _serial = serial();
    let root = tmp("main");
    let cfg = tiny_config(&root, 3);
    let run = root.join("run");
    let device = Default::default();
    let summary = train::<AD>(&cfg, &opts(run.clone()), &device).unwrap();

    // Learned something: the validation loss went down from the untrained model's.
    let base = summary.baseline.as_ref().unwrap()["val_loss"];
    let last = summary.history.last().unwrap()["val_loss"];
    println!("val loss untrained {base:.5} → trained {last:.5}");
    assert!(last < base, "val loss did not go down: {base} → {last}");
    assert_eq!(summary.history.len(), 3);

    // The run folder holds what the docs promise.
    for f in [
        "config.yaml",
        "metrics.csv",
        "curves.png",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "checkpoints/last.json",
        "checkpoints/best.json",
    ] {
        assert!(run.join(f).exists(), "missing {f}");
    }
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "header + one row per epoch:\n{csv}");
    assert!(std::fs::read_dir(run.join("previews")).unwrap().count() >= 2);
    let ckpt = checkpoint_dir(&run, "last").unwrap();
    for f in [
        "trainable.safetensors",
        "optimizer.safetensors",
        "state.json",
        "adapter/adapter_model.safetensors",
    ] {
        assert!(ckpt.join(f).exists(), "checkpoint lacks {f}");
    }
    // Only trainable tensors are saved: LoRA A/B, decoder, head — never the frozen base.
    let (saved, _) = read_safetensors(&ckpt.join("trainable.safetensors")).unwrap();
    assert!(saved.keys().any(|k| k.contains(".lora_a.")));
    assert!(
        saved.keys().all(|k| !k.contains(".base.")),
        "frozen base weights were saved"
    );

    // The adapter reloads as PEFT files.
    let adapter = tracknet_lora::peft::load_adapter(&run.join("adapter")).unwrap();
    assert_eq!(adapter.config.r, 4);
    assert_eq!(adapter.tensors.len(), 6, "q/k/v/o/up/down of one layer");

    // Eval from the run folder reproduces the last epoch's validation loss.
    let cfg2 = run_config(&run, &[]).unwrap();
    // Another seed would rebuild another random frozen base: refused, naming the key.
    let other_seed = run_config(&run, &["training.seed=12".into()]).unwrap();
    let err = match load_run_model::<NdArray>(&other_seed, &ckpt, &device) {
        Ok(_) => panic!("a base built with another seed must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("training.seed"), "{err}");
    let model = load_run_model::<NdArray>(&cfg2, &ckpt, &device).unwrap();
    let splits = tracknet_train::data::scan_splits(&cfg2).unwrap();
    let r = evaluate(&model, splits.val, &cfg2, None, 0, &device).unwrap();
    assert!(
        (r.loss - last).abs() < 1e-4 * last.abs().max(1.0),
        "eval {} vs training's {}",
        r.loss,
        last
    );

    // A checkpoint that lacks a tensor the model trains is refused, naming it (before, the
    // adapter stayed at its zero initialisation and eval ran on the bare base).
    let broken = root.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    for f in ["state.json", "optimizer.safetensors"] {
        std::fs::copy(ckpt.join(f), broken.join(f)).unwrap();
    }
    let mut partial = saved.clone();
    let dropped = partial
        .keys()
        .find(|k| k.contains(".lora_b."))
        .unwrap()
        .clone();
    partial.remove(&dropped);
    let bytes = tracknet_train::checkpoint::to_safetensors(&partial, Default::default()).unwrap();
    std::fs::write(broken.join("trainable.safetensors"), bytes).unwrap();
    let err = match load_run_model::<NdArray>(&cfg2, &broken, &device) {
        Ok(_) => panic!("a checkpoint without {dropped} must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&dropped) && err.contains("missing"), "{err}");
    // Optimizer state of the wrong size is refused on resume, naming the parameter.
    std::fs::copy(
        ckpt.join("trainable.safetensors"),
        broken.join("trainable.safetensors"),
    )
    .unwrap();
    let (mut ot, om) = read_safetensors(&broken.join("optimizer.safetensors")).unwrap();
    let key = ot.keys().find(|k| k.ends_with(".m")).unwrap().clone();
    ot.get_mut(&key).unwrap().1.pop();
    ot.get_mut(&key).unwrap().0 = vec![ot[&key].1.len()];
    let bytes = tracknet_train::checkpoint::to_safetensors(&ot, om).unwrap();
    std::fs::write(broken.join("optimizer.safetensors"), bytes).unwrap();
    B::seed(&device, cfg2.training.seed);
    let fresh = tracknet_vit::model::HeatmapModel::<AD>::from_config(&cfg2.model, &device)
        .unwrap()
        .0;
    let kind = tracknet_train::optim::OptimKind::from_config(&cfg2.training.optimizer);
    let err = match tracknet_train::trainer::load_checkpoint::<AD>(
        &broken, &cfg2, fresh, kind, &device,
    ) {
        Ok(_) => panic!("mis-sized optimizer state must be refused"),
        Err(e) => e.to_string(),
    };
    let param = key.trim_end_matches(".m");
    assert!(
        err.contains(param) && err.contains("optimizer state"),
        "{err}"
    );

    // Predict on a clip folder.
    let clip = root.join("data/game3/Clip1");
    let out = root.join("pred");
    let p = predict(&model, &cfg2, &clip, &out, 0.5, &device).unwrap();
    assert_eq!(p.frames, 8);
    let csv = std::fs::read_to_string(out.join("predictions.csv")).unwrap();
    assert!(csv.starts_with("file name,visibility,x-coordinate,y-coordinate,status,confidence"));
    assert_eq!(csv.lines().count(), 9);
    assert!(out.join("overlays/0000.png").exists() && out.join("heatmaps/0000.png").exists());
    // The clip's own labels are the target track: drawn in the target colour over the frame
    // (beyond the legend's dot, which a figure without targets has too).
    let cyan = |img: &image::RgbImage| {
        img.pixels()
            .filter(|p| p.0 == tracknet_data::viz::TARGET_COLOUR)
            .count()
    };
    let traj = image::open(out.join("trajectory.png")).unwrap().to_rgb8();
    let first = image::open(clip.join("0000.jpg")).unwrap().to_rgb8();
    let legend_only = tracknet_data::viz::trajectory_figure(&first, "Clip1", &[], &[]).unwrap();
    assert!(
        cyan(&traj) > cyan(&legend_only) + 20,
        "target track drawn: {} vs {} pixels",
        cyan(&traj),
        cyan(&legend_only)
    );
}

#[test]
fn interrupted_and_resumed_run_ends_with_the_same_weights() {
    let _serial = serial();
    let root = tmp("resume");
    let device = Default::default();
    let cfg = tiny_config(&root, 2);
    let straight = root.join("straight");
    train::<AD>(&cfg, &opts(straight.clone()), &device).unwrap();

    let parted = root.join("parted");
    let mut o = opts(parted.clone());
    o.stop_after_epoch = Some(1);
    train::<AD>(&cfg, &o, &device).unwrap();
    let o = TrainOptions {
        resume: true,
        stop_after_epoch: None,
        ..opts(parted.clone())
    };
    let cfg_saved = run_config(&parted, &[]).unwrap();
    let s = train::<AD>(&cfg_saved, &o, &device).unwrap();
    assert_eq!(s.history.len(), 2);

    let (a, b) = (last_weights(&straight), last_weights(&parted));
    assert_eq!(
        a.iter().map(|x| &x.0).collect::<Vec<_>>(),
        b.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
    let max = a
        .iter()
        .zip(&b)
        .flat_map(|((_, x), (_, y))| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0f32, f32::max);
    println!("max |uninterrupted - resumed| = {max:e}");
    assert!(max <= 1e-6, "resumed run differs by {max}");
}

/// Set for the child process of the kill test: the root folder it trains in.
const KILL_CHILD: &str = "TRACKNET_E2E_KILL_CHILD";

/// The kill test's child (a no-op unless [`KILL_CHILD`] is set): trains with a checkpoint hook
/// that aborts the process half-way through the 3rd checkpoint write.
#[test]
fn child_killed_while_writing_its_third_checkpoint() {
    let Some(root) = std::env::var_os(KILL_CHILD).map(PathBuf::from) else {
        return;
    };
    let cfg = RunConfig::load_combined(&root.join("cfg.yaml"), &[]).unwrap();
    let hook = tracknet_train::trainer::CheckpointHook(std::sync::Arc::new(|n| {
        if n == 3 {
            std::process::abort();
        }
    }));
    let o = TrainOptions {
        mid_checkpoint: Some(hook),
        ..opts(root.join("run"))
    };
    let _ = train::<AD>(&cfg, &o, &Default::default());
}

#[test]
fn a_kill_while_writing_a_checkpoint_leaves_the_previous_one_usable() {
    let _serial = serial();
    let root = tmp("kill");
    let cfg = tiny_config(&root, 2);
    let cfg_path = root.join("cfg.yaml");
    cfg.save(&cfg_path).unwrap();
    let run = root.join("run");
    // Checkpoints: epoch 1 writes `best` (1) and `last` (2); the 3rd write is epoch 2's and is
    // killed half-way (after the weights, before the optimizer state and state.json) by the
    // hook the child test injects.
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_killed_while_writing_its_third_checkpoint",
            "--test-threads=1",
        ])
        .env(KILL_CHILD, &root)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the process should have been killed");

    let ckpt_root = run.join("checkpoints");
    let dir = read_pointer(&ckpt_root, "last").expect("the previous `last` survives");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["epoch"], 1);
    // The half-written folder was never named as a checkpoint.
    let leftovers: Vec<_> = std::fs::read_dir(&ckpt_root)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        leftovers.iter().any(|n| n.starts_with(".tmp-")),
        "{leftovers:?}"
    );

    // And the run continues from it.
    let status = Command::new(env!("CARGO_BIN_EXE_tracknet"))
        .args(["train", "--quiet", "--resume"])
        .arg(&run)
        .status()
        .unwrap();
    assert!(status.success());
    let dir = read_pointer(&ckpt_root, "last").unwrap();
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["epoch"], 2);
}

#[test]
fn a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let _serial = serial();
    let root = tmp("nonfinite");
    let cfg = tiny_config(&root, 2);
    let run = root.join("run");
    let device = Default::default();
    let mut o = opts(run.clone());
    o.stop_after_epoch = Some(1);
    train::<AD>(&cfg, &o, &device).unwrap();
    let good = read_pointer(&run.join("checkpoints"), "last").unwrap();
    let good_weights = last_weights(&run);

    // Resume with a learning rate that blows the weights up within a step or two.
    let mut bad = cfg.clone();
    bad.training.optimizer.lr = 1e37;
    let mut o = opts(run.clone());
    o.resume = true;
    let err = train::<AD>(&bad, &o, &device).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("non-finite") && msg.contains("at epoch 2, step "),
        "{msg}"
    );
    assert!(msg.contains("was kept"), "{msg}");
    assert!(msg.contains(&good.display().to_string()), "{msg}");
    // The poisoned weights did not replace the last good checkpoint.
    assert_eq!(
        read_pointer(&run.join("checkpoints"), "last").unwrap(),
        good
    );
    assert_eq!(last_weights(&run), good_weights);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn lora_adapters_train_during_backbone_freeze_epochs() {
    // `backbone_freeze_epochs` holds back the base backbone only: adapters train from step 0.
    let _serial = serial();
    let root = tmp("freeze-lora");
    let cfg = tiny(
        &root,
        1,
        &[
            "training.backbone_freeze_epochs=1",
            "training.steps_per_epoch=2",
        ],
    );
    let run = root.join("run");
    train::<AD>(&cfg, &opts(run.clone()), &Default::default()).unwrap();
    let weights = last_weights(&run);
    let lora_b: Vec<&(String, Vec<f32>)> = weights
        .iter()
        .filter(|(k, _)| k.to_lowercase().contains("lora_b"))
        .collect();
    assert!(!lora_b.is_empty(), "no adapter weights in the checkpoint");
    // B starts at zero (PEFT's init): two steps inside the freeze epoch moved it.
    for (k, v) in lora_b {
        assert!(
            v.iter().any(|&x| x != 0.0),
            "{k} did not train during the freeze epoch"
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn batchnorm_running_stats_are_saved_and_eval_reproduces_the_run() {
    // `decoder.norm: bn`: the running statistics are learned from the data, so a checkpoint
    // without them evaluates another model.
    let _serial = serial();
    let root = tmp("bn");
    let cfg = tiny(
        &root,
        1,
        &["model.decoder.norm=bn", "training.steps_per_epoch=3"],
    );
    let run = root.join("run");
    let device = Default::default();
    let summary = train::<AD>(&cfg, &opts(run.clone()), &device).unwrap();
    let last = summary.history.last().unwrap()["val_loss"];
    let weights = last_weights(&run);
    let stats: Vec<&(String, Vec<f32>)> = weights
        .iter()
        .filter(|(k, _)| k.ends_with("running_mean") || k.ends_with("running_var"))
        .collect();
    assert!(!stats.is_empty(), "no running statistics in the checkpoint");
    assert!(
        stats
            .iter()
            .any(|(_, v)| v.iter().any(|&x| x != 0.0 && x != 1.0)),
        "the running statistics never moved from their initial values"
    );
    let cfg2 = run_config(&run, &[]).unwrap();
    let ckpt = checkpoint_dir(&run, "last").unwrap();
    let model = load_run_model::<NdArray>(&cfg2, &ckpt, &device).unwrap();
    let splits = tracknet_train::data::scan_splits(&cfg2).unwrap();
    let r = evaluate(&model, splits.val, &cfg2, None, 0, &device).unwrap();
    assert_eq!(
        r.loss, last,
        "eval of the last checkpoint vs the run's own validation"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_three_frame_run_trains_evaluates_and_predicts_from_the_cli() {
    // `data.sequence`: 3 frames stacked → a 9-channel (inflated, trainable) patch embedding.
    let _serial = serial();
    let root = tmp("sequence");
    let cfg = tiny(
        &root,
        1,
        &["data.sequence.enabled=true", "data.sequence.length=3"],
    );
    let cfg_path = root.join("cfg.yaml");
    cfg.save(&cfg_path).unwrap();
    let run = root.join("run");
    let tracknet = || Command::new(env!("CARGO_BIN_EXE_tracknet"));
    // A corrupt training frame (non-strict): its samples are skipped and each epoch says so,
    // naming the file, instead of skipping silently.
    tracknet_train::data::ensure_synthetic(&cfg, &mut |_| {}).unwrap();
    let corrupt = root.join("data/game1/Clip1/0003.jpg");
    std::fs::write(&corrupt, b"\xff\xd8 not a jpeg").unwrap();
    let out = tracknet()
        .args(["train", "--config"])
        .arg(&cfg_path)
        .arg("--run-dir")
        .arg(&run)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("input: 3 frames stacked on the channel axis (9 channels)")
            && log.contains("backbone.embeddings.patch_embeddings.weight [32, 9, 16, 16]"),
        "the parameter report shows the 9-channel patch embedding:\n{log}"
    );
    assert!(
        log.contains("epoch 1 training: skipped") && log.contains("game1/Clip1/0003.jpg"),
        "the epoch reports the undecodable frame:\n{log}"
    );
    // The embedding trained and was saved with the run.
    let (saved, _) = read_safetensors(
        &checkpoint_dir(&run, "last")
            .unwrap()
            .join("trainable.safetensors"),
    )
    .unwrap();
    let (shape, _) = &saved["backbone.embeddings.patch_embeddings.weight"];
    assert_eq!(shape, &vec![32, 9, 16, 16]);
    // A 4-bit backbone has no dense projection weights to export: refused by name, rather
    // than a snapshot that lacks them.
    let err = tracknet_train::predict::export_backbone(
        &cfg,
        &checkpoint_dir(&run, "last").unwrap(),
        &root.join("exported"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("model.quantization.enabled"), "{err}");
    assert!(!root.join("exported/model.safetensors").exists());

    let out = tracknet()
        .args(["eval", "--checkpoint", "last", "--run"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let eval: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("eval.json")).unwrap()).unwrap();
    // The run's own last validation loss, reproduced by the 3-frame model rebuilt from disk.
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let last: Vec<&str> = csv.lines().last().unwrap().split(',').collect();
    let col = header.iter().position(|h| *h == "val_loss").unwrap();
    let want: f64 = last[col].parse().unwrap();
    let got = eval["val_loss"].as_f64().unwrap();
    assert!(
        (got - want).abs() <= 1e-5 * want.abs().max(1.0),
        "{got} vs {want}"
    );

    let pred = root.join("pred");
    let out = tracknet()
        .args(["predict", "--checkpoint", "last", "--run"])
        .arg(&run)
        .arg("--input")
        .arg(root.join("data/game3/Clip1"))
        .arg("--out")
        .arg(&pred)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = std::fs::read_to_string(pred.join("predictions.csv")).unwrap();
    assert_eq!(csv.lines().count(), 9, "one row per frame:\n{csv}");
    // A run with single frames refuses the 3-frame checkpoint by name instead of mis-loading.
    let out = tracknet()
        .args(["eval", "--checkpoint", "last", "--run"])
        .arg(&run)
        .arg("data.sequence.enabled=false")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("patch_embeddings"), "{err}");
}

#[test]
fn loop_keys_steps_val_steps_previews_best_metric_micro_batch_and_clipping() {
    let _serial = serial();
    let root = tmp("loop-keys");
    let cfg = tiny(
        &root,
        2,
        &[
            "training.steps_per_epoch=1",
            "training.val_steps=1",
            "training.preview_frames=1",
            "training.best_metric=l2",
        ],
    );
    let run = root.join("run");
    let device = Default::default();
    let summary = train::<AD>(&cfg, &opts(run.clone()), &device).unwrap();
    // steps_per_epoch: one optimizer step per epoch (the split has 4 batches).
    let last = checkpoint_dir(&run, "last").unwrap();
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(last.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["global_step"], 2);
    // preview_frames: one overlay per epoch.
    assert_eq!(std::fs::read_dir(run.join("previews")).unwrap().count(), 2);
    // best_metric l2 (lower is better): `best` is the epoch with the smallest L2.
    let best = checkpoint_dir(&run, "best").unwrap();
    let best_state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(best.join("state.json")).unwrap()).unwrap();
    let l2: Vec<f64> = summary.history.iter().map(|r| r["l2"]).collect();
    let want = 1
        + (0..l2.len())
            .min_by(|&a, &b| l2[a].total_cmp(&l2[b]))
            .unwrap();
    assert_eq!(best_state["best_epoch"], want, "l2 per epoch {l2:?}");
    assert_eq!(best_state["best_metric"], "l2");
    // val_steps: validation stops after that many batches (4 frames, not the split's 8).
    let model = load_run_model::<NdArray>(&cfg, &last, &device).unwrap();
    let splits = tracknet_train::data::scan_splits(&cfg).unwrap();
    let capped = evaluate(
        &model,
        splits.val.clone(),
        &cfg,
        cfg.training.val_steps,
        0,
        &device,
    )
    .unwrap();
    let all = evaluate(&model, splits.val, &cfg, None, 0, &device).unwrap();
    assert_eq!((capped.metrics.frames, all.metrics.frames), (4, 8));

    // micro_batch_size: a batch split into micro-batches gives the batch's loss and gradients.
    B::seed(&device, 1);
    let (model, _) =
        tracknet_vit::model::HeatmapModel::<AD>::from_config(&cfg.model, &device).unwrap();
    let loss_fn = tracknet_train::eval::loss_from_config(&cfg);
    let splits = tracknet_train::data::scan_splits(&cfg).unwrap();
    let batch = tracknet_data::BatchLoader::new(
        splits.train,
        tracknet_train::data::loader_options(&cfg, 1, false, 4),
    )
    .unwrap()
    .next()
    .unwrap()
    .unwrap();
    let step =
        |micro| tracknet_train::trainer::step_grads(&model, &loss_fn, &batch, micro, &device);
    let (loss4, g4) = step(4);
    let (loss2, g2) = step(2);
    let n4 = tracknet_train::optim::grad_norm::<AD, _>(&model, &g4);
    let n2 = tracknet_train::optim::grad_norm::<AD, _>(&model, &g2);
    assert!(
        (loss4 - loss2).abs() < 1e-6 * loss4.abs().max(1.0),
        "{loss4} vs {loss2}"
    );
    assert!((n4 - n2).abs() < 1e-4 * n4, "{n4} vs {n2}");
    // grad_clip (used when grad_clip_norm is null): the clipped gradients have that norm.
    let clip_cfg = cfg
        .with_overrides(&[
            "training.grad_clip_norm=null".into(),
            "training.grad_clip=0.001".into(),
        ])
        .unwrap();
    let limit = clip_cfg.training.effective_grad_clip_norm();
    assert_eq!(limit, Some(0.001));
    assert!(
        n4 > 0.001,
        "the test needs a gradient above the limit: {n4}"
    );
    let clipped = tracknet_train::optim::clip_grads::<AD, _>(&model, g4, n4, limit);
    let n = tracknet_train::optim::grad_norm::<AD, _>(&model, &clipped);
    assert!((n - 0.001).abs() < 1e-6, "clipped norm {n}");
}

#[test]
fn backbone_freeze_epochs_hold_the_base_back_then_release_it() {
    // Full fine-tuning with `backbone_freeze_epochs: 1`: after epoch 1 the checkpoint holds
    // no backbone tensor (it did not train); after epoch 2 it does, moved from the init.
    let _serial = serial();
    let root = tmp("freeze-epochs");
    let cfg = tiny(
        &root,
        2,
        &[
            "model.lora.enabled=false",
            "model.quantization.enabled=false",
            "model.backbone.freeze=false",
            "training.backbone_freeze_epochs=1",
            "training.steps_per_epoch=1",
            "training.val_steps=1",
        ],
    );
    let run = root.join("run");
    let device = Default::default();
    let mut o = opts(run.clone());
    o.stop_after_epoch = Some(1);
    train::<AD>(&cfg, &o, &device).unwrap();
    let after1 = last_weights(&run);
    assert!(
        after1.iter().all(|(k, _)| !k.starts_with("backbone.")),
        "epoch 1 saved the backbone"
    );
    let mut o = opts(run.clone());
    o.resume = true;
    train::<AD>(&cfg, &o, &device).unwrap();
    let after2 = last_weights(&run);
    let backbone: Vec<_> = after2
        .iter()
        .filter(|(k, _)| k.starts_with("backbone."))
        .collect();
    assert!(!backbone.is_empty(), "epoch 2 trains the backbone");
    B::seed(&device, cfg.training.seed);
    let (fresh, _) =
        tracknet_vit::model::HeatmapModel::<NdArray>::from_config(&cfg.model, &device).unwrap();
    let init = tracknet_lora::params::collect_params::<NdArray, _>(&fresh, |p, _| {
        p.starts_with("backbone.")
    });
    let moved = backbone
        .iter()
        .filter(|(k, v)| init.get(k.as_str()).is_some_and(|(_, i)| i != v))
        .count();
    assert!(moved > 0, "the released backbone moved");
}

#[test]
fn cli_run_folder_follows_output_dir_and_model_name_and_says_gradient_checkpointing_and_logs_every_n()
 {
    let _serial = serial();
    let root = tmp("cli-keys");
    let out_dir = format!("training.output_dir={}", root.join("out").display());
    let cfg = tiny(
        &root,
        1,
        &[
            out_dir.as_str(),
            "training.gradient_checkpointing=true",
            "training.log_every=2",
            "training.val_steps=1",
        ],
    );
    let cfg_path = root.join("cfg.yaml");
    cfg.save(&cfg_path).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tracknet"))
        .args(["train", "--config"])
        .arg(&cfg_path)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    // No --run-dir: <output_dir>/<model_name>-NNN.
    assert!(root.join("out/tiny-001/metrics.csv").exists(), "{log}");
    assert!(log.contains("training.gradient_checkpointing: on"), "{log}");
    // log_every 2 of 4 steps (not a terminal): steps 2 and 4 are logged, 1 and 3 not.
    let steps: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("epoch 1/1 step "))
        .collect();
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert!(
        steps[0].starts_with("epoch 1/1 step 2/4") && steps[1].starts_with("epoch 1/1 step 4/4")
    );

    // compute_dtype bfloat16 on a CPU build: one note that the 4-bit matmuls run in f32.
    let out = Command::new(env!("CARGO_BIN_EXE_tracknet"))
        .args(["quantize-report", "--config"])
        .arg(&cfg_path)
        .arg("model.quantization.compute_dtype=bfloat16")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert_eq!(
        log.matches(
            "warning: this backend runs 4-bit matmuls in f32; compute_dtype BF16 applies on CUDA only"
        )
        .count(),
        1,
        "{log}"
    );
    // training.device=cuda in a build without the CUDA backend: a clear error, nothing trained.
    if !cfg!(feature = "cuda") {
        let out = Command::new(env!("CARGO_BIN_EXE_tracknet"))
            .args(["train", "--config"])
            .arg(&cfg_path)
            .arg("--run-dir")
            .arg(root.join("cuda-run"))
            .arg("training.device=cuda:0")
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(log.contains("--features cuda"), "{log}");
        assert!(!root.join("cuda-run/metrics.csv").exists());
    }
}

#[test]
fn a_qlora_run_exports_from_the_cli_and_the_export_rebuilds_the_model_and_feeds_predict() {
    use burn::prelude::*;
    let _serial = serial();
    let root = tmp("export");
    let cfg = tiny(&root, 1, &["model.lora.bias=all"]);
    let run = root.join("run");
    let device = Default::default();
    train::<AD>(&cfg, &opts(run.clone()), &device).unwrap();
    let tracknet = || Command::new(env!("CARGO_BIN_EXE_tracknet"));
    let exp = root.join("export");
    let out = tracknet()
        .args(["export", "--checkpoint", "last", "--run"])
        .arg(&run)
        .arg("--out")
        .arg(&exp)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("backbone-4bit, backbone-merged, adapter, heads.safetensors, heads.json"),
        "{said}"
    );
    for f in [
        "backbone-4bit/config.json",
        "backbone-4bit/model.safetensors",
        "backbone-merged/model.safetensors",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "heads.safetensors",
        "heads.json",
    ] {
        assert!(exp.join(f).is_file(), "{f}");
    }
    // A second export into the (now non-empty) folder is refused and changes nothing.
    let before = std::fs::read(exp.join("heads.safetensors")).unwrap();
    let again = tracknet()
        .args(["export", "--run"])
        .arg(&run)
        .arg("--out")
        .arg(&exp)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
    assert_eq!(
        std::fs::read(exp.join("heads.safetensors")).unwrap(),
        before
    );

    // The 4-bit base holds the run's codes; base + adapter, merged, and the rebuilt whole model
    // all give the run's heatmap.
    let cfg = run_config(&run, &[]).unwrap();
    let ckpt = checkpoint_dir(&run, "last").unwrap();
    let model = load_run_model::<B>(&cfg, &ckpt, &device).unwrap();
    let stored =
        tracknet_vit::backbone::Backbone::<B>::load_snapshot(&exp.join("backbone-4bit"), &device)
            .unwrap();
    assert!(stored.bnb.is_some());
    let (rebuilt, heads) = tracknet_vit::export::load_exported_model::<B>(&exp, &device).unwrap();
    assert_eq!(heads.resize, [128, 64]);
    let x = Tensor::<B, 4>::random(
        [1, 3, 64, 128],
        burn::tensor::Distribution::Default,
        &device,
    );
    let want = model.forward(x.clone());
    let err: f32 = (rebuilt.forward(x.clone()) - want.clone())
        .abs()
        .max()
        .into_scalar();
    let scale: f32 = want.clone().abs().max().into_scalar();
    assert!(
        err <= 1e-4 * scale.max(1.0),
        "rebuilt from the export: {err} (scale {scale})"
    );
    let peft_way = tracknet_vit::model::HeatmapModel {
        backbone: stored.backbone,
        decoder: model.decoder.clone(),
        head: model.head.clone(),
        code_books: stored.code_books,
    };
    let settings = tracknet_vit::model::lora_settings(&cfg.model);
    let (peft_way, _) = peft_way.add_lora(&settings, &device).unwrap();
    let peft_way = peft_way
        .load_peft_weights(&exp.join("adapter"), &device)
        .unwrap();
    let d: f32 = (peft_way.forward(x) - want).abs().max().into_scalar();
    assert_eq!(d, 0.0, "4-bit base + adapter is the run's model");

    // `predict --adapter`: the run's own adapter gives the run's predictions; a changed one
    // changes them.
    let clip = root.join("data/game3/Clip1");
    let predict_with = |adapter: Option<&Path>, out: &Path| {
        let mut c = tracknet();
        c.args(["predict", "--checkpoint", "last", "--run"])
            .arg(&run)
            .arg("--input")
            .arg(&clip)
            .arg("--out")
            .arg(out);
        if let Some(a) = adapter {
            c.arg("--adapter").arg(a);
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read_to_string(out.join("predictions.csv")).unwrap()
    };
    let plain = predict_with(None, &root.join("p0"));
    assert_eq!(
        predict_with(Some(&exp.join("adapter")), &root.join("p1")),
        plain
    );
    let mut loaded = tracknet_lora::peft::load_adapter(&exp.join("adapter")).unwrap();
    for t in loaded.tensors.values_mut() {
        t.b.iter_mut().for_each(|v| *v = *v * 3.0 + 0.05);
    }
    let changed = root.join("changed-adapter");
    let tensors: Vec<_> = loaded.tensors.values().cloned().collect();
    tracknet_lora::peft::save_adapter(&changed, &loaded.config, &tensors, &loaded.extra).unwrap();
    assert_ne!(predict_with(Some(&changed), &root.join("p2")), plain);

    // Training from the exported adapter (`model.lora.adapter_path`): the adapter's rank wins
    // over the config's, the log says so, and the run's config.yaml records it.
    let cfg_path = root.join("from-adapter.yaml");
    tiny(&root, 1, &[]).save(&cfg_path).unwrap();
    let run2 = root.join("run-from-adapter");
    let out = tracknet()
        .args(["train", "--config"])
        .arg(&cfg_path)
        .arg("--run-dir")
        .arg(&run2)
        .arg(format!(
            "model.lora.adapter_path={}",
            exp.join("adapter").display()
        ))
        .arg("model.lora.r=8")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("warning: model.lora.r: 4 from the adapter"),
        "the log names the value the adapter set:\n{log}"
    );
    assert_eq!(run_config(&run2, &[]).unwrap().model.lora.r, 4);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn bench_report_fits_memory_per_image_and_charts_it() {
    let dir = tmp("bench-report");
    // Two cases at three batch sizes with exact lines (100 MB + 50 MB/image and 80 MB +
    // 20 MB/image), one at a single batch (no line), and a failed case.
    let case = |name: &str, batch: u64, peak: f64| {
        serde_json::json!({"kind": "case", "case": name, "backend": "ndarray",
            "sizes": {"batch": batch}, "peak_rss_bytes": peak})
    };
    let mut cases = Vec::new();
    for b in [1u64, 2, 4] {
        cases.push(case("full", b, 100e6 + 50e6 * b as f64));
        cases.push(case("qlora-nf4-dq+ckpt", b, 80e6 + 20e6 * b as f64));
    }
    cases.push(case("lora", 2, 150e6));
    cases.push(
        serde_json::json!({"kind": "case", "case": "lora", "backend": "ndarray",
        "error": "exit status 1"}),
    );
    let doc = serde_json::json!({"machine": {"cpu": "test", "nproc": 2}, "cases": cases});
    let file = dir.join("bench.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tracknet-bench"))
        .arg("report")
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 16 GiB = 17179.9 MB: (17179.9 - 100) / 50 = 341.6; (17179.9 - 80) / 20 = 854.99.
    // 24 GiB = 25769.8 MB: 513.4 and 1284.5.
    assert!(
        stdout.contains("| full | ndarray | 150.0 | 200.0 | 300.0 | 50.0 | 100.0 | 341 | 513 |"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "| qlora-nf4-dq+ckpt | ndarray | 100.0 | 120.0 | 160.0 | 20.0 | 80.0 | 854 | 1284 |"
        ),
        "{stdout}"
    );
    assert!(!stdout.contains("| lora | ndarray | -"), "{stdout}");
    let png = image::open(dir.join("memory-vs-batch.png"))
        .unwrap()
        .to_rgb8();
    assert_eq!(png.dimensions(), (900, 520));
    for colour in [[31u8, 119, 180], [255, 127, 14]] {
        let n = png.pixels().filter(|p| p.0 == colour).count();
        assert!(n > 100, "series {colour:?} drawn: {n} pixels");
    }
    // No sweep in the file: no chart, no table.
    let single = dir.join("single.json");
    std::fs::write(
        &single,
        serde_json::json!({"machine": {}, "cases": [case("full", 2, 1e8)]}).to_string(),
    )
    .unwrap();
    std::fs::remove_file(dir.join("memory-vs-batch.png")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tracknet-bench"))
        .arg("report")
        .arg(&single)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("memory vs batch"));
    assert!(!dir.join("memory-vs-batch.png").exists());
}
