//! Parity with transformers 5: the fixtures' `last_hidden_state` must be reproduced within 1e-4.

use crate::common::fixtures;
use burn::backend::NdArray;
use burn::prelude::*;
use tracknet_vit::backbone::Backbone;
use tracknet_vit::hf::read_safetensors;

type B = NdArray<f32>;

/// Runs the fixture's `pixel_values` and returns the max abs error against its `last_hidden_state`.
fn max_abs_error(model_dir: &str) -> f32 {
    let dir = fixtures().join(model_dir);
    let device = Default::default();
    let model = Backbone::<B>::from_snapshot(&dir, &device).unwrap();
    let io = read_safetensors(&dir.join("io.safetensors")).unwrap();
    let pixels: Tensor<B, 4> = io["pixel_values"].to_tensor(&device).unwrap();
    let expected: Tensor<B, 3> = io["last_hidden_state"].to_tensor(&device).unwrap();

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
    let grid_err: f32 = (out.patch_grid.reshape([b, (h / p) * (w / p), c]) - tail)
        .abs()
        .max()
        .into_scalar();
    assert_eq!(grid_err, 0.0);

    let err: f32 = (out.last_hidden_state - expected).abs().max().into_scalar();
    println!("{model_dir}: max abs error vs transformers = {err:e}");
    err
}

#[test]
fn hf_parity_dinov3() {
    let err = max_abs_error("dinov3");
    assert!(err < 1e-4, "dinov3 max abs error {err}");
}

#[test]
fn hf_parity_dinov3_gated() {
    let err = max_abs_error("dinov3_gated");
    assert!(err < 1e-4, "dinov3_gated max abs error {err}");
}

#[test]
fn hf_parity_vit() {
    let err = max_abs_error("vit");
    assert!(err < 1e-4, "vit max abs error {err}");
}
