//! Parity with transformers 5: the fixtures' `last_hidden_state` must be reproduced within 1e-4,
//! on every backend in the build.

use crate::common::fixtures;
use burn::prelude::*;
use tracknet_vit::ModelBackend;
use tracknet_vit::backbone::Backbone;
use tracknet_vit::hf::read_safetensors;

tracknet_testkit::backend_tests!(
    hf_parity_dinov3,
    hf_parity_dinov3_gated,
    hf_parity_vit,
    hf_parity_dinov2,
    hf_parity_dinov2_registers,
    hf_parity_every_snapshot_folder
);

/// Runs the fixture's `pixel_values` and returns the max abs error against its `last_hidden_state`.
fn max_abs_error<B: ModelBackend>(model_dir: &str, device: &B::Device) -> f32 {
    let dir = fixtures().join(model_dir);
    let model = Backbone::<B>::from_snapshot(&dir, device).unwrap();
    let io = read_safetensors(&dir.join("io.safetensors")).unwrap();
    let pixels: Tensor<B, 4> = io["pixel_values"].to_tensor(device).unwrap();
    let expected: Tensor<B, 3> = io["last_hidden_state"].to_tensor(device).unwrap();

    let out = model.try_forward(pixels.clone()).unwrap();
    assert_eq!(out.last_hidden_state.dims(), expected.dims());

    // The patch grid is the tail of the sequence laid out row-major.
    let [b, _, h, w] = pixels.dims();
    let p = model.patch_size();
    let [_, t, c] = expected.dims();
    assert_eq!(out.patch_grid.dims(), [b, h / p, w / p, c]);
    let tail = out
        .last_hidden_state
        .clone()
        .slice([0..b, t - (h / p) * (w / p)..t, 0..c]);
    let grid_err = (out.patch_grid.reshape([b, (h / p) * (w / p), c]) - tail)
        .abs()
        .max()
        .into_scalar()
        .elem::<f32>();
    assert_eq!(grid_err, 0.0);

    let err = (out.last_hidden_state - expected)
        .abs()
        .max()
        .into_scalar()
        .elem::<f32>();
    println!("{model_dir}: max abs error vs transformers = {err:e}");
    err
}

fn hf_parity_dinov3<B: ModelBackend>(device: &B::Device) {
    let err = max_abs_error::<B>("dinov3", device);
    assert!(err < 1e-4, "dinov3 max abs error {err}");
}

fn hf_parity_dinov3_gated<B: ModelBackend>(device: &B::Device) {
    let err = max_abs_error::<B>("dinov3_gated", device);
    assert!(err < 1e-4, "dinov3_gated max abs error {err}");
}

fn hf_parity_vit<B: ModelBackend>(device: &B::Device) {
    let err = max_abs_error::<B>("vit", device);
    assert!(err < 1e-4, "vit max abs error {err}");
}

fn hf_parity_dinov2<B: ModelBackend>(device: &B::Device) {
    let err = max_abs_error::<B>("dinov2", device);
    assert!(err < 1e-4, "dinov2 max abs error {err}");
}

fn hf_parity_dinov2_registers<B: ModelBackend>(device: &B::Device) {
    let err = max_abs_error::<B>("dinov2_registers", device);
    assert!(err < 1e-4, "dinov2_registers max abs error {err}");
}

/// Every folder of the fixture root that is a transformers snapshot with its own
/// `io.safetensors` (other fixture sets bring other families and sizes), within 1e-4.
fn hf_parity_every_snapshot_folder<B: ModelBackend>(device: &B::Device) {
    let root = fixtures();
    let mut dirs: Vec<String> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("config.json").is_file())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    dirs.sort();
    for family in ["dinov3", "vit", "dinov2", "dinov2_registers"] {
        assert!(
            dirs.iter().any(|d| d == family),
            "no `{family}/` snapshot in {}",
            root.display()
        );
    }
    for dir in &dirs {
        let err = max_abs_error::<B>(dir, device);
        assert!(err < 1e-4, "{dir}: max abs error {err}");
    }
}
