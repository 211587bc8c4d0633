//! A tiny QLoRA run end to end on every backend in the build (wgpu on lavapipe in CI, CUDA
//! where a device is present; NdArray as well, where the other e2e tests hold it in detail):
//! it learns, its checkpoint reloads on the same backend to the loss training logged, and it
//! predicts a clip. It trains with `training.gradient_checkpointing: true` (recomputation per
//! segment, the memory-lean step QLoRA is for), so the recomputing step runs end to end on every
//! backend; the NdArray e2e tests elsewhere train without it.

use crate::common::*;
use tracknet_vit::ModelBackend;

tracknet_testkit::backend_tests!(
    qlora_trains_reloads_evaluates_and_predicts,
    amp_fp16_trains_in_half_with_f32_weights_and_optimizer_state,
);

fn qlora_trains_reloads_evaluates_and_predicts<Bk: ModelBackend>(device: &Bk::Device) {
    let _serial = serial();
    let root = tmp("backend");
    let mut cfg = tiny_config(&root, 3);
    cfg.training.gradient_checkpointing = true;
    let run = root.join("run");
    let summary = train::<Autodiff<Bk>>(&cfg, &opts(run.clone()), device).unwrap();

    let base = summary.baseline.as_ref().unwrap()["val_loss"];
    let last = summary.history.last().unwrap()["val_loss"];
    println!("val loss untrained {base:.5} → trained {last:.5}");
    assert!(
        last.is_finite() && last < base,
        "val loss did not go down: {base} → {last}"
    );
    assert_eq!(summary.history.len(), 3);
    for f in [
        "metrics.csv",
        "adapter/adapter_model.safetensors",
        "checkpoints/last.json",
    ] {
        assert!(run.join(f).exists(), "missing {f}");
    }

    let cfg2 = run_config(&run, &[]).unwrap();
    let ckpt = checkpoint_dir(&run, "last").unwrap();
    let model = load_run_model::<Bk>(&cfg2, &ckpt, device).unwrap();
    let splits = tracknet_train::data::scan_splits(&cfg2).unwrap();
    let r = evaluate(&model, splits.val, &cfg2, None, 0, device).unwrap();
    assert!(
        (r.loss - last).abs() < 1e-4 * last.abs().max(1.0),
        "eval {} vs training's {}",
        r.loss,
        last
    );

    let out = root.join("pred");
    let p = predict(
        &model,
        &cfg2,
        &root.join("data/game3/Clip1"),
        &out,
        0.5,
        device,
        None,
    )
    .unwrap();
    assert_eq!(p.frames, 8);
    let csv = std::fs::read_to_string(out.join("predictions.csv")).unwrap();
    assert_eq!(csv.lines().count(), 9, "{csv}");
}

/// Every tensor of a checkpoint file is stored as f32.
fn all_f32(file: &Path) {
    let bytes = std::fs::read(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(!st.names().is_empty(), "{}: empty", file.display());
    for (name, view) in st.tensors() {
        assert_eq!(
            view.dtype(),
            safetensors::Dtype::F32,
            "{}: {name}",
            file.display()
        );
    }
}

/// `training.amp: true, precision: fp16` against `amp: false`, same seed: on a backend with
/// f16 arithmetic (wgpu on lavapipe, CUDA) the step computes in f16 with fp16 loss scaling —
/// the run learns, its numbers differ from the f32 run's, the checkpoint records the loss
/// scaler, and weights and optimizer state are f32. On NdArray (no f16) amp runs in f32: the
/// same numbers as `amp: false`, and no scaler.
fn amp_fp16_trains_in_half_with_f32_weights_and_optimizer_state<Bk: ModelBackend>(
    device: &Bk::Device,
) {
    let _serial = serial();
    let root = tmp("amp");
    let run = |amp: bool| {
        let mut cfg = tiny(&root, 2, &[]);
        cfg.training.amp = amp;
        cfg.training.precision = tracknet_config::Precision::Fp16;
        let dir = root.join(format!("run-amp-{amp}"));
        let summary = train::<Autodiff<Bk>>(&cfg, &opts(dir.clone()), device).unwrap();
        let rows: Vec<(f64, f64)> = summary
            .history
            .iter()
            .map(|r| (r["train_loss"], r["val_loss"]))
            .collect();
        (dir, summary.baseline.unwrap()["val_loss"], rows)
    };
    let (dir16, base, half) = run(true);
    let (_, base32, full) = run(false);
    assert!(
        (base - base32).abs() < 1e-6 * base.abs(),
        "the untrained evaluation is f32 in both: {base} vs {base32}"
    );
    println!("amp fp16 {half:?}\nf32      {full:?}");
    let ckpt = checkpoint_dir(&dir16, "last").unwrap();
    all_f32(&ckpt.join("trainable.safetensors"));
    all_f32(&ckpt.join("optimizer.safetensors"));
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ckpt.join("state.json")).unwrap()).unwrap();
    let f16 = tracknet_quant::autocast::supports::<Bk>(device, burn::tensor::FloatDType::F16);
    if !f16 {
        assert_eq!(half, full, "an f32 backend gives amp's run the f32 numbers");
        assert!(state.get("loss_scaler").is_none(), "{state}");
        return;
    }
    let last = half.last().unwrap().1;
    assert!(
        last.is_finite() && last < base,
        "amp run did not learn: {base} → {last}"
    );
    assert!(
        half != full,
        "amp fp16 gave the f32 run's numbers: {half:?}"
    );
    for ((t16, v16), (t32, v32)) in half.iter().zip(&full) {
        assert!(
            (t16 - t32).abs() < 0.05 * t32.abs(),
            "train loss {t16} vs f32 {t32}"
        );
        assert!(
            (v16 - v32).abs() < 0.05 * v32.abs(),
            "val loss {v16} vs f32 {v32}"
        );
    }
    let scale = state["loss_scaler"]["scale"].as_f64().unwrap();
    assert!(scale > 0.0 && scale <= 65536.0, "{state}");
    // The scaler is restored on resume: stopped after epoch 1 and resumed, the run ends with
    // the uninterrupted run's scaler (scale and count of good steps).
    let mut cfg = tiny(&root, 2, &[]);
    cfg.training.amp = true;
    cfg.training.precision = tracknet_config::Precision::Fp16;
    let parted = root.join("run-amp-parted");
    let mut o = opts(parted.clone());
    o.stop_after_epoch = Some(1);
    train::<Autodiff<Bk>>(&cfg, &o, device).unwrap();
    let o = tracknet_train::TrainOptions {
        resume: true,
        stop_after_epoch: None,
        ..opts(parted.clone())
    };
    train::<Autodiff<Bk>>(&cfg, &o, device).unwrap();
    let resumed: serde_json::Value = serde_json::from_slice(
        &std::fs::read(checkpoint_dir(&parted, "last").unwrap().join("state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(resumed["loss_scaler"], state["loss_scaler"]);
    assert!(
        state["loss_scaler"]["good_steps"].as_u64().unwrap() > 4,
        "{state}"
    );

    // The loss scale enters the backward and `unscale` takes it out again: the same f16 step
    // at scale 1024 and at scale 1 reports the same loss and, unscaled, the same gradients.
    let cfg = tiny(&root, 1, &[]);
    let (model, _) =
        tracknet_vit::model::HeatmapModel::<Autodiff<Bk>>::from_config(&cfg.model, device).unwrap();
    let loss_fn = tracknet_train::eval::loss_from_config(&cfg);
    let batch = first_batch(&cfg);
    let step = |loss_scale: f64| {
        let plan = tracknet_train::trainer::StepPlan {
            micro: 4,
            recompute: false,
            shards: 1,
            precision: tracknet_train::amp::StepPrecision {
                dtype: Some(burn::tensor::FloatDType::F16),
                loss_scale,
            },
        };
        let (loss, g) = tracknet_train::trainer::step_grads(&model, &loss_fn, &batch, plan, device);
        let n = tracknet_train::optim::grad_norm::<Autodiff<Bk>, _>(&model, &g);
        let (_, unscaled) = tracknet_train::trainer::unscale(&model, g, n, loss_scale);
        (loss, n, unscaled)
    };
    let (l1, n1, u1) = step(1.0);
    let (l2, n2, u2) = step(1024.0);
    println!("scale 1: loss {l1} norm {n1}; scale 1024: loss {l2} norm {n2} (unscaled {u2})");
    assert!((l1 - l2).abs() < 1e-4 * l1.abs(), "{l1} vs {l2}");
    assert!((n2 / n1 - 1024.0).abs() < 0.02 * 1024.0, "{n1} vs {n2}");
    assert!((u1 - u2).abs() < 0.02 * u1, "{u1} vs {u2}");
}
