//! What the end-to-end tests share: a tiny QLoRA config on generated clips, run options,
//! scratch folders, and the lock that keeps trainings in this process from interleaving.

pub use std::path::{Path, PathBuf};
pub use std::process::Command;

pub use burn::backend::{Autodiff, NdArray};
pub use tracknet_config::RunConfig;
pub use tracknet_train::checkpoint::{read_pointer, read_safetensors};
pub use tracknet_train::eval::evaluate;
pub use tracknet_train::predict::{checkpoint_dir, load_run_model, predict, run_config};
pub use tracknet_train::{TrainOptions, train};

pub type AD = Autodiff<NdArray>;
pub type B = NdArray;
pub use burn::prelude::Backend as _;

/// Burn's NdArray backend seeds one process-wide RNG (`Backend::seed`), so two trainings in
/// parallel test threads would interleave their draws (model init, dropout) and no longer be
/// reproducible: the tests that train in this process take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn tiny_config(root: &Path, epochs: usize) -> RunConfig {
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
pub fn tiny(root: &Path, epochs: usize, overrides: &[&str]) -> RunConfig {
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    tiny_config(root, epochs)
        .with_overrides(&overrides)
        .unwrap()
}

pub fn tmp(name: &str) -> PathBuf {
    tracknet_testkit::scratch(&format!("e2e-{name}"))
}

pub fn opts(run_dir: PathBuf) -> TrainOptions {
    TrainOptions {
        run_dir,
        quiet: true,
        ..TrainOptions::default()
    }
}

pub fn last_weights(run: &Path) -> Vec<(String, Vec<f32>)> {
    let dir = read_pointer(&run.join("checkpoints"), "last").expect("a last checkpoint");
    let (t, _) = read_safetensors(&dir.join("trainable.safetensors")).unwrap();
    t.into_iter().map(|(k, (_, v))| (k, v)).collect()
}

/// The first training batch of `cfg` (4 samples, epoch 1, no shuffle).
pub fn first_batch(cfg: &RunConfig) -> tracknet_data::Batch {
    let splits = tracknet_train::data::scan_splits(cfg).unwrap();
    tracknet_data::BatchLoader::new(
        splits.train,
        tracknet_train::data::loader_options(cfg, 1, false, 4),
    )
    .unwrap()
    .next()
    .unwrap()
    .unwrap()
}

/// A 3-epoch [`tiny`] run whose every step draws random numbers and divides — focal loss
/// (log-sigmoid), GroupNorm residual blocks, LoRA dropout, flips, two loader threads — with
/// its data generated; returns its config file. Reproducibility tests train it.
pub fn repro_config(root: &Path) -> PathBuf {
    let cfg = tiny(
        root,
        3,
        &[
            "training.loss.name=focal",
            "model.decoder.blocks_per_stage=1",
            "model.lora.lora_dropout=0.1",
        ],
    );
    on_disk(root, &cfg)
}

/// `cfg` saved as `root/cfg.yaml` with its synthetic data generated: what the CLI is pointed
/// at. Returns the file.
pub fn on_disk(root: &Path, cfg: &RunConfig) -> PathBuf {
    let cfg_path = root.join("cfg.yaml");
    cfg.save(&cfg_path).unwrap();
    tracknet_train::data::ensure_synthetic(cfg, &mut |_| {}).unwrap();
    cfg_path
}

/// `tracknet train --config CFG --run-dir RUN`.
pub fn train_command(cfg: &Path, run: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tracknet"));
    c.args(["train", "--config"])
        .arg(cfg)
        .arg("--run-dir")
        .arg(run);
    c
}

/// What two runs that should be the same are compared by ([`run_fingerprint`]).
pub type Fingerprint = (Vec<String>, Vec<(String, Vec<u8>)>);

/// `metrics.csv` without its wall-time column, and the bytes of every tensor file of the last
/// checkpoint (weights, optimizer state, adapter).
pub fn run_fingerprint(run: &Path) -> Fingerprint {
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let wall = header.iter().position(|h| *h == "seconds");
    let rows = csv
        .lines()
        .map(|l| {
            l.split(',')
                .enumerate()
                .filter(|(i, _)| Some(*i) != wall)
                .map(|(_, v)| v)
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    let dir = read_pointer(&run.join("checkpoints"), "last").expect("a last checkpoint");
    let files = [
        "trainable.safetensors",
        "optimizer.safetensors",
        "adapter/adapter_model.safetensors",
    ]
    .iter()
    .map(|f| (f.to_string(), std::fs::read(dir.join(f)).unwrap()))
    .collect();
    (rows, files)
}

/// The uninterrupted [`repro_config`] run, trained once per test process by the CLI: what the
/// reproducibility and stop tests compare their runs with.
pub struct Reference {
    /// Its scratch folder (the data is in it; other runs of the config go beside it).
    pub root: PathBuf,
    /// The config file.
    pub cfg: PathBuf,
    /// Its [`run_fingerprint`].
    pub fingerprint: Fingerprint,
}

pub fn reference() -> &'static Reference {
    static REFERENCE: std::sync::OnceLock<Reference> = std::sync::OnceLock::new();
    REFERENCE.get_or_init(|| {
        let root = tmp("reference");
        let cfg = repro_config(&root);
        let run = root.join("uninterrupted");
        let out = train_command(&cfg, &run).arg("--quiet").output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let fingerprint = run_fingerprint(&run);
        assert_eq!(
            fingerprint.0.len(),
            4,
            "a header and 3 epochs: {:?}",
            fingerprint.0
        );
        Reference {
            root,
            cfg,
            fingerprint,
        }
    })
}

/// `run`'s fingerprint is the [`reference`]'s, row for row and byte for byte.
pub fn assert_same_as_reference(run: &Path, what: &str) {
    let (rows, files) = run_fingerprint(run);
    let (want_rows, want_files) = &reference().fingerprint;
    assert_eq!(&rows, want_rows, "metrics.csv {what}");
    for ((name, x), (_, y)) in files.iter().zip(want_files) {
        assert!(x == y, "{name} differs {what}");
    }
}
