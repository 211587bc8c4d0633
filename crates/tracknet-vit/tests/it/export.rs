//! A backbone written as an HF snapshot loads back to the same outputs.

use burn::backend::NdArray;
use burn::prelude::*;
use burn::tensor::Distribution;
use tracknet_vit::backbone::{Backbone, BackboneArch};
use tracknet_vit::export::save_snapshot;

use crate::common;
use common::{fixtures, need};

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
    save_snapshot(&a, &cfg, &Default::default(), &dir).unwrap();
    let b = Backbone::<NdArray>::from_snapshot(&dir, &device).unwrap();
    let x = Tensor::<NdArray, 4>::random([1, 3, 32, 48], Distribution::Normal(0.0, 1.0), &device);
    let err: f32 = (a.forward(x.clone()).last_hidden_state - b.forward(x).last_hidden_state)
        .abs()
        .max()
        .into_scalar();
    assert!(err < 1e-6, "{err}");
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("tracknet-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn config_of(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(need(&dir.join("config.json"))).unwrap()).unwrap()
}

/// `key → (dtype, shape, bytes)` of a snapshot, keys in transformers' canonical scheme.
fn canonical_tensors(
    dir: &std::path::Path,
) -> std::collections::BTreeMap<String, tracknet_quant::StoredTensor> {
    let arch = BackboneArch::from_config_file(&dir.join("config.json")).unwrap();
    tracknet_vit::hf::read_stored(&dir.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .flat_map(|(k, t)| match tracknet_vit::hf::canonical_key(&arch, &k) {
            tracknet_vit::hf::KeyMapping::Canonical(c) => vec![(c, t)],
            tracknet_vit::hf::KeyMapping::Ignored => vec![(k, t)],
            tracknet_vit::hf::KeyMapping::Split(first, second) => {
                let (a, b) = tracknet_vit::hf::split_rows(&t).unwrap();
                vec![(first, a), (second, b)]
            }
        })
        .collect()
}

#[test]
fn an_export_of_a_fixture_snapshot_keeps_every_key_it_had_with_its_values() {
    let device = Default::default();
    for name in [
        "dinov3",
        "dinov3_gated",
        "vit",
        "dinov2",
        "dinov2_registers",
    ] {
        let src = fixtures().join(name);
        let b = Backbone::<NdArray>::from_snapshot(need(&src), &device).unwrap();
        let extra = tracknet_vit::export::passthrough(Some(&src), &b).unwrap();
        let out = tmp(&format!("keys-{name}"));
        save_snapshot(&b, &config_of(&src), &extra, &out).unwrap();
        let (a, w) = (canonical_tensors(&src), canonical_tensors(&out));
        let _ = std::fs::remove_dir_all(&out);
        assert_eq!(
            a.keys().collect::<Vec<_>>(),
            w.keys().collect::<Vec<_>>(),
            "{name}"
        );
        for (k, t) in &a {
            assert_eq!(t.to_f32(), w[k].to_f32(), "{name}: {k}");
        }
    }
    // Without a snapshot, DINOv3's mask token is written as transformers initialises it.
    let cfg = serde_json::json!({"model_type": "dinov3_vit", "hidden_size": 32,
        "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64});
    let arch = BackboneArch::from_config_str(&cfg.to_string(), std::path::Path::new("t")).unwrap();
    let b = Backbone::<NdArray>::random(&arch, &device).unwrap();
    let extra = tracknet_vit::export::passthrough(None, &b).unwrap();
    assert_eq!(extra["embeddings.mask_token"].shape, vec![1, 1, 32]);
    // DINOv2's is `[1, hidden]`, and only where its config has one.
    for (model_type, mask_token) in [
        ("dinov2", serde_json::json!(true)),
        ("dinov2", serde_json::json!(false)),
        ("dinov2_with_registers", serde_json::json!(false)),
    ] {
        let cfg = serde_json::json!({"model_type": model_type, "hidden_size": 32,
            "num_hidden_layers": 1, "num_attention_heads": 2, "use_mask_token": mask_token});
        let arch =
            BackboneArch::from_config_str(&cfg.to_string(), std::path::Path::new("t")).unwrap();
        let b = Backbone::<NdArray>::random(&arch, &device).unwrap();
        let extra = tracknet_vit::export::passthrough(None, &b).unwrap();
        let registers = model_type == "dinov2_with_registers";
        if mask_token == true || registers {
            assert_eq!(extra["embeddings.mask_token"].shape, vec![1, 32], "{cfg}");
        } else {
            assert!(extra.is_empty(), "{cfg}");
        }
    }
}

#[test]
fn bnb_serialized_snapshot_written_back_holds_the_same_4bit_bytes_and_runs_the_same() {
    let device = Default::default();
    let root = fixtures().join("bnb_serialized");
    let mut dirs: Vec<_> = std::fs::read_dir(need(&root))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty());
    for src in dirs {
        let loaded = Backbone::<NdArray>::load_snapshot(&src, &device).unwrap();
        let bnb = loaded.bnb.clone().unwrap();
        let extra = tracknet_vit::export::passthrough(Some(&src), &loaded.backbone).unwrap();
        let out = tmp("bnb-back");
        tracknet_vit::export::save_4bit_snapshot(
            &loaded.backbone,
            &config_of(&src),
            &bnb,
            &extra,
            &out,
        )
        .unwrap();
        let (a, w) = (canonical_tensors(&src), canonical_tensors(&out));
        assert_eq!(a.keys().collect::<Vec<_>>(), w.keys().collect::<Vec<_>>());
        for (k, t) in &a {
            let (t2, what) = (&w[k], k.as_str());
            if k.contains("quant_state.") {
                let j = |t: &tracknet_quant::StoredTensor| -> serde_json::Value {
                    serde_json::from_slice(&t.data).unwrap()
                };
                assert_eq!(j(t), j(t2), "{what}");
            } else if t.dtype == safetensors::Dtype::U8 {
                assert_eq!(t, t2, "{what}: bytes");
            } else {
                // bf16 absmax (as transformers saved it) is written back as the same f32 values.
                assert_eq!(t.to_f32(), t2.to_f32(), "{what}");
            }
        }
        let written = config_of(&out);
        assert_eq!(
            written["quantization_config"],
            config_of(&src)["quantization_config"]
        );
        let back = Backbone::<NdArray>::load_snapshot(&out, &device).unwrap();
        let _ = std::fs::remove_dir_all(&out);
        // An input the snapshot's own patches tile.
        let [width, height] = common::input_size(&src);
        let x = Tensor::<NdArray, 4>::random(
            [1, 3, height, width],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let d: f32 = (loaded.backbone.forward(x.clone()).last_hidden_state
            - back.backbone.forward(x).last_hidden_state)
            .abs()
            .max()
            .into_scalar();
        assert_eq!(d, 0.0, "{}", src.display());
    }
}

/// A QLoRA model on the fixture `name` (sized from its `config.json`): NF4 + double quant,
/// LoRA r 4 with random B (so the adapter changes the output), `bias: all`.
fn qlora_on_fixture(name: &str, extra: &[String]) -> tracknet_config::RunConfig {
    let src = fixtures().join(name);
    let mut o = common::tiny_model_on(need(&src));
    o.extend([
        "model.quantization.enabled=true".into(),
        "model.quantization.compute_dtype=float32".into(),
        "model.lora.enabled=true".into(),
        "model.lora.r=4".into(),
        "model.lora.lora_alpha=8".into(),
        "model.lora.lora_dropout=0".into(),
        "model.lora.bias=all".into(),
        "model.lora.init_lora_weights=false".into(),
    ]);
    o.extend(extra.iter().cloned());
    tracknet_config::RunConfig::default()
        .with_overrides(&o)
        .unwrap()
}

tracknet_testkit::backend_tests!(
    a_qlora_export_as_4bit_base_plus_adapter_equals_the_merged_snapshot_and_the_model
);

fn a_qlora_export_as_4bit_base_plus_adapter_equals_the_merged_snapshot_and_the_model<
    Bk: tracknet_vit::ModelBackend,
>(
    device: &Bk::Device,
) {
    // DINOv2 with the original project's `target_modules` (the hub's attention names).
    let original = "model.lora.target_modules=[query,key,value,dense]".to_string();
    qlora_export_round_trip::<Bk>("dinov3", &[], device);
    qlora_export_round_trip::<Bk>("dinov2", std::slice::from_ref(&original), device);
    qlora_export_round_trip::<Bk>("dinov2_registers", &[original], device);
}

fn qlora_export_round_trip<Bk: tracknet_vit::ModelBackend>(
    name: &str,
    targets: &[String],
    device: &Bk::Device,
) {
    use tracknet_vit::model::HeatmapModel;
    let device = device.clone();
    let cfg = qlora_on_fixture(name, targets);
    let (model, _) = HeatmapModel::<Bk>::from_config(&cfg.model, &device).unwrap();
    let out = tracknet_testkit::scratch(&format!("qlora-export-{name}"));
    let src = fixtures().join(name);
    let extra = tracknet_vit::export::passthrough(Some(&src), &model.backbone).unwrap();
    let bnb = tracknet_quant::BnbConfig {
        quant_type: tracknet_quant::QuantType::Nf4,
        double_quant: true,
        compute_dtype: "float32".into(),
        skip_modules: Vec::new(),
    };
    tracknet_vit::export::save_4bit_snapshot(
        &model.backbone,
        &config_of(&src),
        &bnb,
        &extra,
        &out.join("backbone-4bit"),
    )
    .unwrap();
    let merged = tracknet_vit::export::merged(model.backbone.clone());
    save_snapshot(
        &merged,
        &config_of(&src),
        &extra,
        &out.join("backbone-merged"),
    )
    .unwrap();
    model
        .save_peft_adapter(
            &out.join("adapter"),
            &tracknet_vit::model::lora_settings(&cfg.model),
            Some("backbone-4bit".into()),
        )
        .unwrap();

    // 4-bit base + adapter, the PEFT way in: `model.backbone.weights` + `model.lora.adapter_path`.
    // The config's LoRA values differ from the adapter's: the adapter's win, with a note.
    let again = qlora_on_fixture(
        name,
        &[
            format!(
                "model.backbone.weights={}",
                out.join("backbone-4bit").display()
            ),
            format!("model.lora.adapter_path={}", out.join("adapter").display()),
            "model.lora.r=16".into(),
            "model.lora.init_lora_weights=true".into(),
        ],
    );
    let (peft_way, report) = HeatmapModel::<Bk>::from_config(&again.model, &device).unwrap();
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.starts_with("model.lora.r: 4 from the adapter")),
        "{:?}",
        report.warnings
    );
    let dense = Backbone::<Bk>::from_snapshot(&out.join("backbone-merged"), &device).unwrap();
    let keys = canonical_tensors(&out.join("backbone-merged"));
    assert!(keys.contains_key("embeddings.mask_token"));
    let base4 = Backbone::<Bk>::from_snapshot(&out.join("backbone-4bit"), &device).unwrap();
    let _ = std::fs::remove_dir_all(&out);

    let [w, h] = common::input_size(&src);
    let x = Tensor::<Bk, 4>::random([2, 3, h, w], Distribution::Normal(0.0, 1.0), &device);
    let ours = model.backbone.forward(x.clone()).last_hidden_state;
    let base_plus_adapter = peft_way.backbone.forward(x.clone()).last_hidden_state;
    let merged_out = dense.forward(x.clone()).last_hidden_state;
    let base_only = base4.forward(x).last_hidden_state;
    let max = |a: Tensor<Bk, 3>, b: Tensor<Bk, 3>| -> f32 {
        (a - b).abs().max().into_scalar().elem::<f32>()
    };
    assert_eq!(max(ours.clone(), base_plus_adapter.clone()), 0.0);
    let err = max(base_plus_adapter, merged_out);
    assert!(err < 1e-4, "4-bit + adapter vs merged: {err}");
    // Without the adapter the output differs (the adapter is not a no-op here).
    let without = max(ours, base_only);
    assert!(without > 1e-3, "the adapter changed nothing: {without}");
}
