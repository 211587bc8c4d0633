//! PEFT adapters in either module naming: transformers 4 (the hub's, `…attention.attention.query`,
//! DINOv2's fused `mlp.weights_in`) and transformers 5 (`…attention.q_proj`, `mlp.gate_proj`).
//! Every `peft*` folder of the fixture root reproduces PEFT's output through
//! `model.lora.adapter_path`; `target_modules` may use either spelling; what we save is in the
//! names current PEFT + transformers load, and loads back to the same model.

use std::path::{Path, PathBuf};

use crate::common::{self, fixtures, need};
use crate::peft_parity::{max_abs, resolve_base};
use burn::backend::NdArray;
use burn::prelude::*;
use tracknet_lora::TargetSpec;
use tracknet_lora::peft::{CONFIG_FILE, load_adapter, read_adapter_config};
use tracknet_vit::ModelBackend;
use tracknet_vit::backbone::Backbone;
use tracknet_vit::hf::read_safetensors;
use tracknet_vit::model::HeatmapModel;

type B = NdArray<f32>;

/// Every `peft*/` folder of the fixture root (an `adapter/` and an `io.safetensors`); the
/// DINOv2 ones in both namings must be among them.
fn adapter_folders() -> Vec<PathBuf> {
    let root = fixtures();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(need(&root))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("peft"))
        })
        .collect();
    dirs.sort();
    for name in [
        "peft_dinov2",
        "peft_dinov2_t4",
        "peft_dinov2_registers",
        "peft_dinov2_registers_t4",
    ] {
        assert!(
            dirs.iter().any(|d| d.ends_with(name)),
            "no `{name}/` in {}",
            root.display()
        );
    }
    for d in &dirs {
        need(&d.join("adapter").join(CONFIG_FILE));
        need(&d.join("io.safetensors"));
    }
    dirs
}

/// The heatmap model on the adapter's base, the adapter loaded through `adapter_path`.
fn model_with_adapter<Bk: ModelBackend>(
    adapter_dir: &Path,
    device: &Bk::Device,
) -> (HeatmapModel<Bk>, Vec<String>) {
    let config = read_adapter_config(adapter_dir).unwrap();
    let base = resolve_base(
        adapter_dir,
        config
            .base_model_name_or_path
            .as_deref()
            .expect("the adapter names its base model"),
    );
    let mut overrides = common::tiny_model_on(need(&base));
    overrides.extend([
        "model.lora.enabled=true".into(),
        format!("model.lora.adapter_path={}", adapter_dir.display()),
    ]);
    let cfg = tracknet_config::RunConfig::default()
        .with_overrides(&overrides)
        .unwrap();
    let (model, report) = HeatmapModel::<Bk>::from_config(&cfg.model, device).unwrap();
    (model, report.lora_targets)
}

fn io<Bk: Backend>(folder: &Path, device: &Bk::Device) -> (Tensor<Bk, 4>, Tensor<Bk, 3>) {
    let io = read_safetensors(need(&folder.join("io.safetensors"))).unwrap();
    (
        io["pixel_values"].to_tensor(device).unwrap(),
        io["last_hidden_state"].to_tensor(device).unwrap(),
    )
}

tracknet_testkit::backend_tests!(every_peft_adapter_folder_reproduces_peft_in_either_naming);

fn every_peft_adapter_folder_reproduces_peft_in_either_naming<Bk: ModelBackend>(
    device: &Bk::Device,
) {
    for folder in adapter_folders() {
        let adapter_dir = folder.join("adapter");
        let (model, targets) = model_with_adapter::<Bk>(&adapter_dir, device);
        // Every factor of the file landed: one target per file entry, two per fused SwiGLU.
        let in_file = load_adapter(&adapter_dir).unwrap().tensors;
        let fused = in_file.keys().filter(|p| p.ends_with("weights_in")).count();
        assert_eq!(targets.len(), in_file.len() + fused, "{}", folder.display());
        let (pixels, expected) = io::<Bk>(&folder, device);
        let err = max_abs(model.backbone.forward(pixels).last_hidden_state, expected);
        assert!(err < 1e-4, "{}: max abs error {err}", folder.display());
    }
}

#[test]
fn hub_spellings_in_target_modules_select_the_same_layers_as_pefts_on_transformers_4() {
    let device = Default::default();
    let list = |names: &[&str]| TargetSpec::List(names.iter().map(|s| s.to_string()).collect());
    let ends = |paths: &[String]| {
        let mut v: Vec<String> = paths
            .iter()
            .map(|p| p.rsplit('.').next().unwrap().to_string())
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let backbone = |name: &str| Backbone::<B>::from_snapshot(need(&fixtures().join(name)), &device);
    let original = list(&["query", "key", "value", "dense"]);
    // DINOv2: `dense` is the attention output only; every layer's four attention projections.
    for name in ["dinov2", "dinov2_registers"] {
        let b = backbone(name).unwrap();
        let selected = b.select_targets(&original).unwrap();
        assert_eq!(selected.len(), 4 * b.num_layers(), "{name}");
        assert_eq!(
            ends(&selected),
            ["k_proj", "o_proj", "q_proj", "v_proj"],
            "{name}"
        );
        let ours = b.select_targets(&list(&["q_proj", "k_proj", "v_proj", "o_proj"]));
        assert_eq!(ours.unwrap(), selected, "{name}");
        // Dotted hub paths and the fused SwiGLU name work too.
        let dotted = b.select_targets(&list(&["attention.attention.query", "output.dense"]));
        assert_eq!(ends(&dotted.unwrap()), ["o_proj", "q_proj"], "{name}");
    }
    let swiglu = backbone("dinov2_registers").unwrap();
    let mlp = swiglu
        .select_targets(&list(&["weights_in", "weights_out"]))
        .unwrap();
    assert_eq!(ends(&mlp), ["down_proj", "gate_proj", "up_proj"]);
    // Classic ViT: `dense` is also both MLP layers (`intermediate.dense`, `output.dense`).
    let vit = backbone("vit").unwrap();
    let selected = vit.select_targets(&original).unwrap();
    assert_eq!(selected.len(), 6 * vit.num_layers());
    // DINOv3 never had those names: nothing matches, and the error says so.
    let err = backbone("dinov3")
        .unwrap()
        .select_targets(&original)
        .unwrap_err();
    assert!(err.to_string().contains("matched none"), "{err}");
}

#[test]
fn an_adapter_read_in_hub_names_is_saved_in_transformers_5_names_and_reloads_to_the_same_model() {
    let device = Default::default();
    for name in ["peft_dinov2_t4", "peft_dinov2_registers_t4"] {
        let folder = fixtures().join(name);
        let adapter_dir = folder.join("adapter");
        let (model, _) = model_with_adapter::<B>(&adapter_dir, &device);
        let theirs = read_adapter_config(&adapter_dir).unwrap();
        let settings = tracknet_vit::model::lora_settings(&{
            let mut m = tracknet_config::RunConfig::default().model;
            m.lora.target_modules = match theirs.to_settings(&adapter_dir).unwrap().targets {
                TargetSpec::List(v) => tracknet_config::TargetModules::List(v),
                other => panic!("{name}: list targets expected, got {other:?}"),
            };
            m.lora.r = theirs.r;
            m.lora.lora_alpha = theirs.lora_alpha;
            m
        });
        let out = std::env::temp_dir().join(format!("tracknet-peft-namings-{name}"));
        let _ = std::fs::remove_dir_all(&out);
        model
            .save_peft_adapter(
                &out,
                &settings,
                Some(theirs.base_model_name_or_path.unwrap()),
            )
            .unwrap();
        let ours = load_adapter(&out).unwrap();
        // Written in transformers 5's names, `target_modules` included.
        let written: Vec<String> = serde_json::from_value(ours.config.target_modules.clone())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        for t in &written {
            assert!(
                ![
                    "query",
                    "key",
                    "value",
                    "dense",
                    "weights_in",
                    "weights_out"
                ]
                .contains(&t.as_str()),
                "{name}: {written:?}"
            );
        }
        assert!(written.iter().any(|t| t == "q_proj"), "{name}: {written:?}");
        for path in ours.tensors.keys() {
            assert!(
                !path.contains("attention.attention") && !path.contains("weights_in"),
                "{name}: {path}"
            );
        }
        // Loaded back (base resolved beside the fixture's), the same output to the bit.
        let mut cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(CONFIG_FILE)).unwrap()).unwrap();
        let base = resolve_base(
            &adapter_dir,
            cfg["base_model_name_or_path"].as_str().unwrap(),
        );
        cfg["base_model_name_or_path"] = base.display().to_string().into();
        std::fs::write(out.join(CONFIG_FILE), cfg.to_string()).unwrap();
        let (again, _) = model_with_adapter::<B>(&out, &device);
        let _ = std::fs::remove_dir_all(&out);
        let (pixels, _) = io::<B>(&folder, &device);
        let a = model.backbone.forward(pixels.clone()).last_hidden_state;
        let b = again.backbone.forward(pixels).last_hidden_state;
        assert_eq!(max_abs(a, b), 0.0, "{name}");
    }
}
