//! `quality`: what each mode (full, LoRA, QLoRA variants) reaches from the same start.

use std::time::Instant;

use serde_json::{Value, json};

use super::args::QualityArgs;
use super::config::mode_overrides;
use super::data::TempDir;
use crate::TrainOptions;
use crate::backend::train_on;
use crate::error::TrainError;
use crate::quickstart::{finetune_config, pretrain, pretrain_config};

/// `quality`: the same short training for every mode from one shared pre-training (the
/// quick-start's stage 1); validation F1 / PCK / L2 side by side.
pub fn quality(a: &QualityArgs) -> Result<Value, TrainError> {
    // The quick-start's two domains: one full pre-training (stage 1) shared by every mode,
    // then each mode fine-tunes from its exported backbone, decoder and head on the second
    // domain with the same seed, data and steps — what 4-bit costs against f32 LoRA and full
    // fine-tuning from the same start.
    let tmp = TempDir::new("quality")?;
    // Without `--epochs` / `--pretrain-epochs` the embedded configs' own epochs apply, so the
    // study measures what `cargo xtask train` runs.
    let epochs = a.epochs.or(a.quick.then_some(1));
    let pre_epochs = a.pretrain_epochs.or(a.quick.then_some(1));
    let mut common = vec!["training.preview_frames=0".to_string()];
    if a.quick {
        common.extend([
            "data.synthetic.clips=1".to_string(),
            "data.synthetic.frames=16".to_string(),
        ]);
    }
    common.extend(a.set.iter().cloned());

    let mut pre_o = common.clone();
    pre_o.push(format!("data.root={}", tmp.0.join("data-pre").display()));
    if let Some(e) = pre_epochs {
        pre_o.push(format!("training.epochs={}", e.max(1)));
    }
    let pre = pretrain_config(&pre_o)?;
    let pre_epochs = pre.training.epochs;
    let pre_dir = tmp.0.join("run-pretrain");
    tracing::info!("quality: shared full pre-training for {pre_epochs} epoch(s)");
    let t = Instant::now();
    let pretrained = pretrain(&pre, &pre_dir, true, Some("cpu"), None, false)?;
    let pre_secs = t.elapsed().as_secs_f64();
    let (pre_summary, ckpt, snapshot) = (
        pretrained.summary,
        pretrained.checkpoint,
        pretrained.snapshot,
    );

    common.push(format!("data.root={}", tmp.0.join("data-fine").display()));
    if let Some(e) = epochs {
        common.push(format!("training.epochs={}", e.max(1)));
    }
    let mut rows = Vec::new();
    for mode in a.modes.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let mut o = mode_overrides(mode)?;
        o.extend(common.iter().cloned());
        let cfg = finetune_config(&o, &snapshot)?;
        cfg.validate()?;
        let epochs = cfg.training.epochs;
        let run_dir = tmp.0.join(format!("run-{mode}"));
        let opts = TrainOptions {
            run_dir: run_dir.clone(),
            quiet: true,
            init_from: Some(ckpt.clone()),
            ..TrainOptions::default()
        };
        tracing::info!("quality: fine-tuning {mode} for {epochs} epoch(s)");
        let t = Instant::now();
        let summary = train_on(&cfg, &opts, Some("cpu"))?;
        let secs = t.elapsed().as_secs_f64();
        let last = summary.history.last().cloned().unwrap_or_default();
        let get = |k: &str| last.get(k).copied();
        let base = |k: &str| summary.baseline.as_ref().and_then(|b| b.get(k).copied());
        tracing::info!(
            "quality: {mode}: F1 {:?} PCK {:?} L2 {:?} in {secs:.0}s",
            get("f1"),
            get("pck"),
            get("l2")
        );
        rows.push(json!({
            "mode": mode,
            "epochs": epochs,
            "seconds": secs,
            "f1": get("f1"), "pck": get("pck"), "l2": get("l2"),
            "precision": get("precision"), "recall": get("recall"),
            "val_loss": get("val_loss"), "train_loss": get("train_loss"),
            "start_f1": base("f1"), "start_pck": base("pck"), "start_l2": base("l2"),
        }));
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    let pre_last = pre_summary.history.last().cloned().unwrap_or_default();
    Ok(json!({
        "kind": "quality",
        "case": "quality",
        "quick": a.quick,
        "config": "configs/quickstart_pretrain.yaml, then configs/quickstart.yaml per mode",
        "pretrain": {
            "epochs": pre_epochs, "seconds": pre_secs,
            "f1": pre_last.get("f1"), "pck": pre_last.get("pck"), "l2": pre_last.get("l2"),
        },
        "overrides": common.iter().filter(|o| !o.starts_with("data.root=")).collect::<Vec<_>>(),
        "rows": rows,
    }))
}
