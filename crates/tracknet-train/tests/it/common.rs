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
