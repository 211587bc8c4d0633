//! A tiny QLoRA run end to end on every backend in the build (wgpu on lavapipe in CI, CUDA
//! where a device is present; NdArray as well, where the other e2e tests hold it in detail):
//! it learns, its checkpoint reloads on the same backend to the loss training logged, and it
//! predicts a clip. It trains with `training.gradient_checkpointing: true` (recomputation per
//! segment, the memory-lean step QLoRA is for), so the recomputing step runs end to end on every
//! backend; the NdArray e2e tests elsewhere train without it.

use crate::common::*;
use tracknet_vit::ModelBackend;

tracknet_testkit::backend_tests!(qlora_trains_reloads_evaluates_and_predicts);

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
    )
    .unwrap();
    assert_eq!(p.frames, 8);
    let csv = std::fs::read_to_string(out.join("predictions.csv")).unwrap();
    assert_eq!(csv.lines().count(), 9, "{csv}");
}
