//! 4-bit snapshots as transformers + bitsandbytes save them (`$TRACKNET_FIXTURES/bnb_serialized/*/`,
//! every folder there): read with the codes as stored, the 4-bit model's own output reproduced,
//! LoRA trained on them, and a config that disagrees with the stored format refused by key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, NdArray};
use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::Distribution;
use tracknet_config::RunConfig;
use tracknet_lora::{BaseLinear, LoraLinear};
use tracknet_quant::{Absmax, QuantType, Quantized4, dequantize_4bit, quantize_4bit};
use tracknet_vit::backbone::{Backbone, BackboneArch};
use tracknet_vit::hf::{
    KeyMapping, MappedSafetensors, canonical_key, read_safetensors, read_stored,
};
use tracknet_vit::model::HeatmapModel;

use crate::common;
use common::{fixtures, need};

type B = NdArray<f32>;
type AD = Autodiff<B>;

/// Every snapshot folder under `bnb_serialized/` (at least one).
pub(crate) fn snapshots() -> Vec<PathBuf> {
    let root = fixtures().join("bnb_serialized");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(need(&root))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(
        !dirs.is_empty(),
        "no snapshot folders in {}",
        root.display()
    );
    for d in &dirs {
        for f in ["config.json", "model.safetensors", "io.safetensors"] {
            need(&d.join(f));
        }
    }
    dirs
}

/// Our tensor name → its name in `dir`'s `model.safetensors` (the checkpoint may use the hub's
/// spelling: `layer.N…`, `attention.attention.query`), from the file's header.
fn checkpoint_keys(dir: &Path) -> BTreeMap<String, String> {
    let arch = BackboneArch::from_config_file(&dir.join("config.json")).unwrap();
    let file = MappedSafetensors::open(&dir.join("model.safetensors")).unwrap();
    file.entries()
        .keys()
        .filter_map(|k| match canonical_key(&arch, k) {
            KeyMapping::Canonical(ours) => Some((ours, k.clone())),
            _ => None,
        })
        .collect()
}

/// `(path, 4-bit data)` of every projection whose base is 4-bit.
fn stored_layers(backbone: &Backbone<B>) -> Vec<(String, Quantized4)> {
    let mut out = Vec::new();
    let _ = backbone.clone().map_projections(&mut |path: &str,
                                                   p: LoraLinear<B>|
     -> Result<_, ()> {
        if let BaseLinear::Quant(q) = &p.base {
            out.push((path.to_string(), q.to_quantized()));
        }
        Ok(p)
    });
    out
}

fn quantized_snapshot_settings(dir: &Path) -> (QuantType, bool) {
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let q = &cfg["quantization_config"];
    (
        q["bnb_4bit_quant_type"].as_str().unwrap().parse().unwrap(),
        q["bnb_4bit_use_double_quant"].as_bool().unwrap(),
    )
}

/// `(checkpoint path of the layer, quant_state JSON)` of every 4-bit layer of `dir`, as
/// bitsandbytes stored them (`<path>.weight.quant_state.bitsandbytes__<type>`).
fn quant_states(dir: &Path) -> Vec<(String, serde_json::Value)> {
    read_stored(&dir.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .filter_map(|(key, t)| {
            let (weight, _) = key.split_once(".quant_state.")?;
            let path = weight.strip_suffix(".weight")?.to_string();
            let state: serde_json::Value = serde_json::from_slice(&t.data)
                .unwrap_or_else(|e| panic!("{}: {key} is not JSON: {e}", dir.display()));
            Some((path, state))
        })
        .collect()
}

/// The block size every 4-bit layer of `dir` was stored with (its quant_state's `blocksize`).
fn stored_blocksize(dir: &Path) -> usize {
    let sizes: std::collections::BTreeSet<u64> = quant_states(dir)
        .iter()
        .map(|(path, state)| {
            state["blocksize"]
                .as_u64()
                .unwrap_or_else(|| panic!("{path}: quant_state without blocksize"))
        })
        .collect();
    assert_eq!(sizes.len(), 1, "{}: block sizes {sizes:?}", dir.display());
    sizes.into_iter().next().unwrap() as usize
}

/// `dir` with every 4-bit layer replaced by bitsandbytes' f32 dequantization of its stored
/// codes (our host dequantizer, bit-exact with `dequantize_4bit`: see the quant crate's
/// `bnb_parity`) and no `quantization_config`: the same weights as an f32 snapshot.
fn dequantized_copy(dir: &Path, out: &Path) {
    let mut raw = read_stored(&dir.join("model.safetensors")).unwrap();
    let keys: Vec<String> = raw.keys().cloned().collect();
    let mut dense = tracknet_lora::params::NamedTensors::new();
    for key in keys {
        if let Some(layer) = tracknet_quant::bnb::take_layer(&mut raw, &key).unwrap() {
            dense.insert(key, (layer.shape, dequantize_4bit(&layer.quantized)));
        }
    }
    for (key, t) in raw {
        dense.insert(key, (t.shape.clone(), t.to_f32().unwrap()));
    }
    std::fs::create_dir_all(out).unwrap();
    let bytes = tracknet_lora::params::safetensors_bytes(&dense, Default::default()).unwrap();
    std::fs::write(out.join("model.safetensors"), bytes).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("quantization_config");
    std::fs::write(out.join("config.json"), cfg.to_string()).unwrap();
}

#[test]
fn bnb_serialized_snapshots_run_the_stored_codes_and_match_the_4bit_models_own_output() {
    let device = Default::default();
    for dir in snapshots() {
        let loaded = Backbone::<B>::load_snapshot(&dir, &device)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let (quant_type, double) = quantized_snapshot_settings(&dir);
        let bnb = loaded.bnb.as_ref().expect("quantization_config read");
        assert_eq!((bnb.quant_type, bnb.double_quant), (quant_type, double));
        let layers = stored_layers(&loaded.backbone);
        assert_eq!(
            layers.len(),
            loaded.backbone.projection_paths().len(),
            "every projection of {} is 4-bit",
            dir.display()
        );
        for (path, q) in &layers {
            assert_eq!(q.quant_type, quant_type, "{path}");
            assert_eq!(matches!(q.absmax, Absmax::Double { .. }), double, "{path}");
        }
        let io = read_safetensors(&dir.join("io.safetensors")).unwrap();
        let pixels: Tensor<B, 4> = io["pixel_values"].to_tensor(&device).unwrap();
        let expected: Tensor<B, 3> = io["last_hidden_state"].to_tensor(&device).unwrap();
        let out = loaded
            .backbone
            .try_forward(pixels.clone())
            .unwrap()
            .last_hidden_state;
        assert_eq!(out.dims(), expected.dims());

        // 1. The 4-bit forward is the f32 model on bitsandbytes' dequantized weights.
        let tmp = std::env::temp_dir().join(format!(
            "tracknet-bnb-dense-{}-{}",
            std::process::id(),
            dir.file_name().unwrap().to_string_lossy()
        ));
        dequantized_copy(&dir, &tmp);
        let dense = Backbone::<B>::from_snapshot(&tmp, &device).unwrap();
        let _ = std::fs::remove_dir_all(&tmp);
        let reference = dense.forward(pixels).last_hidden_state;
        let exact: f32 = (out.clone() - reference).abs().max().into_scalar();
        assert!(
            exact < 1e-5,
            "{}: 4-bit vs dequantized f32 model {exact}",
            dir.display()
        );

        // 2. The fixture's output is bitsandbytes' CPU inference kernel
        //    (`gemv_4bit_inference_cpu_*_bf16`): activations, absmax and output in bf16 whatever
        //    the compute dtype. An f32 implementation agrees to bf16 accuracy, not to 1e-4.
        let scale: f32 = expected.clone().abs().max().into_scalar();
        let err: f32 = (out.clone() - expected.clone()).abs().max().into_scalar();
        let mean: f32 = (out - expected).abs().mean().into_scalar();
        println!(
            "{}: vs the 4-bit model's own (bf16-kernel) output: max abs {err:e}, mean abs {mean:e}, \
             max |ref| {scale}; vs the dequantized f32 model {exact:e}",
            dir.display()
        );
        assert!(err < 1e-2 * scale, "{}: max abs error {err}", dir.display());
        assert!(
            mean < 1e-3 * scale,
            "{}: mean abs error {mean}",
            dir.display()
        );
    }
}

#[test]
fn bnb_serialized_codes_are_kept_as_stored_and_equal_our_quantization_of_the_f32_weights() {
    let device = Default::default();
    for dir in snapshots() {
        let raw = read_stored(&dir.join("model.safetensors")).unwrap();
        let loaded = Backbone::<B>::load_snapshot(&dir, &device).unwrap();
        // The f32 model the snapshot was quantized from: the folder name's first part.
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let source = fixtures().join(name.split('-').next().unwrap());
        let dense = read_safetensors(need(&source.join("model.safetensors"))).unwrap();
        let (quant_type, double) = quantized_snapshot_settings(&dir);
        let blocksize = stored_blocksize(&dir);
        let (keys, source_keys) = (checkpoint_keys(&dir), checkpoint_keys(&source));
        for (path, q) in stored_layers(&loaded.backbone) {
            // The checkpoint's names are the hub's (`layer.N…`, `attention.attention.query`).
            let key = &keys[&format!("{path}.weight")];
            assert_eq!(q.packed, raw[key].data, "{key}: codes as stored");
            match &q.absmax {
                Absmax::Double { absmax_u8, .. } => {
                    assert_eq!(absmax_u8, &raw[&format!("{key}.absmax")].data, "{key}")
                }
                Absmax::Plain(a) => {
                    assert_eq!(a, &raw[&format!("{key}.absmax")].to_f32().unwrap(), "{key}")
                }
            }
            // bitsandbytes' codes of the f32 weight are the ones our quantizer gives.
            let f32_key = &source_keys[&format!("{path}.weight")];
            let ours = quantize_4bit(&dense[f32_key].data, quant_type, blocksize, double).unwrap();
            assert_eq!(
                ours.packed, q.packed,
                "{key}: codes differ from bitsandbytes'"
            );
        }
    }
}

/// A heatmap model on the snapshot `dir` (sized from its `config.json`) with `overrides` after
/// the quantization the snapshot stores and LoRA r 4.
fn model_config(dir: &Path, overrides: &[&str]) -> RunConfig {
    let (quant_type, double) = quantized_snapshot_settings(dir);
    let mut all = common::tiny_model_on(dir);
    all.extend([
        "model.quantization.enabled=true".into(),
        format!("model.quantization.quant_type={quant_type}"),
        format!("model.quantization.use_double_quant={double}"),
        format!("model.quantization.blocksize={}", stored_blocksize(dir)),
        "model.quantization.compute_dtype=float32".into(),
        "model.lora.enabled=true".into(),
        "model.lora.r=4".into(),
        "model.lora.lora_alpha=8".into(),
        "model.lora.target_modules=[q_proj,v_proj]".into(),
    ]);
    all.extend(overrides.iter().map(|s| s.to_string()));
    RunConfig::default().with_overrides(&all).unwrap()
}

#[test]
fn bnb_serialized_snapshots_train_lora_on_the_stored_codes() {
    let device = Default::default();
    for dir in snapshots() {
        let cfg = model_config(&dir, &[]);
        let (model, report) = HeatmapModel::<AD>::from_config(&cfg.model, &device)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        assert!(
            report.backbone_source.contains("bitsandbytes 4-bit"),
            "{}",
            report.backbone_source
        );
        let before: Vec<_> = stored_layers(&model.backbone.clone().valid());
        let [w, h] = common::input_size(&dir);
        let x = Tensor::<AD, 4>::random([1, 3, h, w], Distribution::Default, &device);
        let grads = model.forward(x).powi_scalar(2).mean().backward();
        let mut adapters = 0;
        let _ = model.backbone.clone().map_projections(&mut |path: &str,
                                                             p: LoraLinear<AD>|
         -> Result<_, ()> {
            if let Some(a) = &p.lora_a {
                adapters += 1;
                let g = a.weight.grad(&grads);
                assert!(g.is_some(), "{path}: the adapter gets a gradient");
                assert!(p.base.is_quantized(), "{path}: the base stays 4-bit");
            }
            Ok(p)
        });
        let layers = common::config_usize(&dir, "num_hidden_layers");
        assert_eq!(adapters, 2 * layers, "q_proj and v_proj of {layers} layers");
        // The stored codes are what the model runs on (and the shared code books hold them).
        let raw = read_stored(&dir.join("model.safetensors")).unwrap();
        let keys = checkpoint_keys(&dir);
        for (path, q) in &before {
            let key = &keys[&format!("{path}.weight")];
            assert_eq!(q.packed, raw[key].data, "{key}");
        }
        assert!(model.code_books.is_some());
        assert_eq!(
            model.quantized_weights(),
            model.memory_report().total_params()
        );
    }
}

#[test]
fn bnb_serialized_snapshot_refuses_a_config_that_disagrees_with_the_stored_format() {
    let device = Default::default();
    let dir = &snapshots()[0];
    let (quant_type, double) = quantized_snapshot_settings(dir);
    let other = match quant_type {
        QuantType::Nf4 => "fp4",
        QuantType::Fp4 => "nf4",
    };
    // A block size other than the stored one, and the name of a layer stored in 4 bits.
    let blocksize = if stored_blocksize(dir) == 64 { 128 } else { 64 };
    let states = quant_states(dir);
    let arch = BackboneArch::from_config_file(&dir.join("config.json")).unwrap();
    let ours = match canonical_key(&arch, &format!("{}.weight", states[0].0)) {
        KeyMapping::Canonical(c) => c,
        other => panic!("{}: {other:?}", states[0].0),
    };
    let layer = ours.trim_end_matches(".weight").rsplit('.').next().unwrap();
    let cases = [
        (
            "model.quantization.enabled=false".to_string(),
            "model.quantization.enabled",
        ),
        (
            format!("model.quantization.quant_type={other}"),
            "model.quantization.quant_type",
        ),
        (
            format!("model.quantization.use_double_quant={}", !double),
            "model.quantization.use_double_quant",
        ),
        (
            format!("model.quantization.blocksize={blocksize}"),
            "model.quantization.blocksize",
        ),
        (
            format!("model.quantization.skip_modules=[{layer}]"),
            "model.quantization.skip_modules",
        ),
    ];
    for (override_, key) in cases {
        let cfg = model_config(dir, &[&override_]);
        let err = HeatmapModel::<B>::from_config(&cfg.model, &device)
            .err()
            .unwrap_or_else(|| panic!("{override_} was accepted"))
            .to_string();
        assert!(err.starts_with(key), "{override_}: {err}");
        assert!(err.contains("4 bits"), "{err}");
    }
}
