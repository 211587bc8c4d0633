//! A backbone written as an HF snapshot loads back to the same outputs.

use burn::backend::NdArray;
use burn::prelude::*;
use burn::tensor::Distribution;
use tracknet_vit::backbone::{Backbone, BackboneArch};
use tracknet_vit::export::save_snapshot;

#[test]
fn exported_snapshot_round_trips() {
    let device = Default::default();
    let cfg = serde_json::json!({
        "model_type": "dinov3_vit", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "num_register_tokens": 2, "patch_size": 16, "key_bias": false
    });
    let arch =
        BackboneArch::from_config_str(&cfg.to_string(), std::path::Path::new("test")).unwrap();
    let a = Backbone::<NdArray>::random(&arch, &device).unwrap();
    let dir = std::env::temp_dir().join(format!("tracknet-export-{}", std::process::id()));
    save_snapshot(&a, &cfg, &dir).unwrap();
    let b = Backbone::<NdArray>::from_snapshot(&dir, &device).unwrap();
    let x = Tensor::<NdArray, 4>::random([1, 3, 32, 48], Distribution::Normal(0.0, 1.0), &device);
    let err: f32 = (a.forward(x.clone()).last_hidden_state - b.forward(x).last_hidden_state)
        .abs()
        .max()
        .into_scalar();
    assert!(err < 1e-6, "{err}");
}
