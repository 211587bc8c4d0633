//! Parity with PEFT: the fixture adapter (made by `PeftModel.save_pretrained` on the tiny DINOv3
//! fixture, `init_lora_weights=False`) applied to our backbone must reproduce PEFT's
//! `last_hidden_state` within 1e-4, and what we save must reload to the same model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::common::{self, fixtures, need};
use burn::backend::NdArray;
use burn::prelude::*;
use tracknet_lora::peft::{
    AdapterConfig, AdapterTensors, CONFIG_FILE, WEIGHTS_FILE, load_adapter, save_adapter,
};
use tracknet_lora::{LoraLinear, LoraSettings, select_targets};
use tracknet_vit::ModelBackend;
use tracknet_vit::backbone::Backbone;
use tracknet_vit::hf::read_safetensors;
use tracknet_vit::model::adapter_base_dir;

type B = NdArray<f32>;

/// `(in, out)` of every projection, by path.
fn projection_dims<Bk: ModelBackend>(backbone: &Backbone<Bk>) -> BTreeMap<String, (usize, usize)> {
    let mut dims = BTreeMap::new();
    let _ = backbone.clone().map_projections(&mut |path: &str,
                                                   p: LoraLinear<Bk>|
     -> Result<_, ()> {
        dims.insert(path.to_string(), p.dims());
        Ok(p)
    });
    dims
}

/// The base model of an adapter: [`adapter_base_dir`] (relative to the adapter folder), else
/// relative to the adapter folder's parent, which is how the fixture is laid out
/// (`peft/adapter` names `../dinov3`, i.e. `fixtures/dinov3`: PEFT records the path as the
/// generating script saw it). The library-only rule is checked, and fails, in
/// `peft_fixture_base_model_resolves_with_adapter_base_dir` below.
pub(crate) fn resolve_base(adapter_dir: &Path, base: &str) -> PathBuf {
    let dir = adapter_base_dir(adapter_dir, base);
    if dir.join("config.json").is_file() {
        return dir;
    }
    adapter_dir.parent().map(|p| p.join(base)).unwrap_or(dir)
}

/// Build the adapter folder's base model and attach its adapters with the library functions:
/// settings from `adapter_config.json`, PEFT's targeting rules, `with_adapter`, `assign`,
/// `set_adapter_weights`. Returns the model, its settings and the adapted paths.
fn backbone_with_adapter(adapter_dir: &Path) -> (Backbone<B>, LoraSettings, Vec<String>) {
    backbone_with_adapter_on::<B>(adapter_dir, &Default::default())
}

/// [`backbone_with_adapter`] on any backend.
pub(crate) fn backbone_with_adapter_on<Bk: ModelBackend>(
    adapter_dir: &Path,
    device: &Bk::Device,
) -> (Backbone<Bk>, LoraSettings, Vec<String>) {
    need(&adapter_dir.join(CONFIG_FILE));
    need(&adapter_dir.join(WEIGHTS_FILE));
    let loaded = load_adapter(adapter_dir).unwrap();
    let settings = loaded.config.to_settings(adapter_dir).unwrap();
    let base = loaded
        .config
        .base_model_name_or_path
        .as_deref()
        .expect("the adapter names its base model");
    let base_dir = resolve_base(adapter_dir, base);
    let backbone = Backbone::<Bk>::from_snapshot(need(&base_dir), device).unwrap();

    let targets = select_targets(&backbone.projection_paths(), &settings.targets).unwrap();
    let dims = projection_dims(&backbone);
    let assigned = loaded
        .assign(&targets, &|p: &str| dims.get(p).copied())
        .unwrap();
    assert_eq!(assigned.len(), targets.len());

    let backbone = backbone
        .map_projections(&mut |path: &str, p: LoraLinear<Bk>| {
            if !targets.iter().any(|t| t == path) {
                return Ok(p);
            }
            let mut p = p.with_adapter(&settings, device)?;
            let (a, b) = assigned[path].to_tensors::<Bk>(device);
            p.set_adapter_weights(a, b)?;
            Ok::<_, tracknet_lora::LoraError>(p)
        })
        .unwrap();
    (backbone, settings, targets)
}

/// Every adapter of `backbone` in PEFT layout, by path.
fn adapters_of(backbone: &Backbone<B>) -> Vec<AdapterTensors> {
    let mut adapters = Vec::new();
    let _ = backbone.clone().map_projections(&mut |path: &str,
                                                   p: LoraLinear<B>|
     -> Result<_, ()> {
        if let Some((a, b)) = p.adapter_weights() {
            adapters.push(AdapterTensors::from_tensors(path, a, b));
        }
        Ok(p)
    });
    adapters
}

/// `base_model_name_or_path` of an adapter folder.
fn theirs_base(adapter_dir: &Path) -> String {
    load_adapter(adapter_dir)
        .unwrap()
        .config
        .base_model_name_or_path
        .expect("the adapter names its base model")
}

/// `(pixel_values, last_hidden_state)` of `peft/io.safetensors`.
fn peft_io() -> (Tensor<B, 4>, Tensor<B, 3>) {
    peft_io_on::<B>(&Default::default())
}

/// [`peft_io`] on any backend.
pub(crate) fn peft_io_on<Bk: Backend>(device: &Bk::Device) -> (Tensor<Bk, 4>, Tensor<Bk, 3>) {
    let io = read_safetensors(need(&fixtures().join("peft/io.safetensors"))).unwrap();
    (
        io["pixel_values"].to_tensor(device).unwrap(),
        io["last_hidden_state"].to_tensor(device).unwrap(),
    )
}

pub(crate) fn max_abs<Bk: Backend>(a: Tensor<Bk, 3>, b: Tensor<Bk, 3>) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).abs().max().into_scalar().elem::<f32>()
}

tracknet_testkit::backend_tests!(peft_adapter_parity_with_transformers_peft);

/// PEFT's adapter on the fixture backbone reproduces PEFT's output, on every backend.
fn peft_adapter_parity_with_transformers_peft<Bk: ModelBackend>(device: &Bk::Device) {
    let adapter_dir = fixtures().join("peft/adapter");
    let (backbone, settings, targets) = backbone_with_adapter_on::<Bk>(&adapter_dir, device);

    // What adapter_config.json asked for, read from the fixture's own file.
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(need(&adapter_dir.join(CONFIG_FILE))).unwrap())
            .unwrap();
    let r = json["r"].as_u64().unwrap() as usize;
    let alpha = json["lora_alpha"].as_f64().unwrap();
    assert_eq!(settings.r, r);
    let rslora = json["use_rslora"].as_bool().unwrap_or(false);
    let scaling = if rslora {
        alpha / (r as f64).sqrt()
    } else {
        alpha / r as f64
    };
    assert_eq!(settings.scaling(), scaling);
    // The model paths the targets select are exactly the modules the file holds adapters for.
    let in_file: Vec<String> = load_adapter(&adapter_dir)
        .unwrap()
        .tensors
        .keys()
        .cloned()
        .collect();
    let mut sorted = targets.clone();
    sorted.sort();
    assert_eq!(sorted, in_file);

    let (pixels, expected) = peft_io_on::<Bk>(device);
    let out = backbone.try_forward(pixels.clone()).unwrap();
    let err = max_abs(out.last_hidden_state, expected.clone());
    println!("peft parity: max abs error vs PEFT last_hidden_state = {err:e}");
    assert!(err < 1e-4, "max abs error {err}");

    // The adapters matter: the base model alone is much further from PEFT's output.
    let base = json["base_model_name_or_path"].as_str().unwrap();
    let base_dir = resolve_base(&adapter_dir, base);
    let plain = Backbone::<Bk>::from_snapshot(&base_dir, device).unwrap();
    let base_err = max_abs(plain.forward(pixels).last_hidden_state, expected);
    println!("peft parity: base model without adapter differs by {base_err:e}");
    assert!(base_err > 100.0 * err.max(1e-7), "{base_err} vs {err}");
}

#[test]
fn peft_adapter_save_and_reload_gives_identical_output() {
    let adapter_dir = fixtures().join("peft/adapter");
    let (backbone, settings, targets) = backbone_with_adapter(&adapter_dir);
    let (pixels, _) = peft_io();
    let before = backbone.forward(pixels.clone()).last_hidden_state;

    // Our adapter, in PEFT layout, from the model.
    let adapters = adapters_of(&backbone);
    assert_eq!(adapters.len(), targets.len());

    let out_dir = std::env::temp_dir().join(format!("tracknet-vit-peft-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out_dir);
    // Keep the base model reachable from the saved adapter, as PEFT does.
    let base = theirs_base(&adapter_dir);
    let base_abs = std::fs::canonicalize(resolve_base(&adapter_dir, &base)).unwrap();
    let config = AdapterConfig::from_settings(
        &settings,
        &targets,
        Some(base_abs.to_string_lossy().into_owned()),
    );
    save_adapter(&out_dir, &config, &adapters, &Default::default()).unwrap();

    // The saved tensors are exactly PEFT's.
    let ours = load_adapter(&out_dir).unwrap();
    let theirs = load_adapter(&adapter_dir).unwrap();
    assert_eq!(ours.tensors, theirs.tensors);

    // Reload into a fresh backbone (built from the saved folder alone).
    let (reloaded, settings2, targets2) = backbone_with_adapter(&out_dir);
    assert_eq!(settings2.r, settings.r);
    assert_eq!(settings2.scaling(), settings.scaling());
    assert_eq!(targets2, targets);
    let after = reloaded.forward(pixels).last_hidden_state;
    let diff = max_abs(before, after);
    println!("peft save→reload: max abs difference {diff:e}");
    let _ = std::fs::remove_dir_all(&out_dir);
    assert_eq!(diff, 0.0);
}

#[test]
fn peft_fixture_base_model_resolves_with_adapter_base_dir() {
    // `base_model_name_or_path` of the fixture is relative to the folder the generating script
    // ran in (`../dinov3` for `fixtures/dinov3`); the library must find it from the adapter
    // folder alone.
    let adapter_dir = fixtures().join("peft/adapter");
    let loaded = load_adapter(need(&adapter_dir)).unwrap();
    let base = loaded.config.base_model_name_or_path.unwrap();
    let dir = adapter_base_dir(&adapter_dir, &base);
    assert!(
        dir.join("config.json").is_file(),
        "adapter_base_dir({}, {base:?}) = {} has no config.json; the base model is {}",
        adapter_dir.display(),
        dir.display(),
        resolve_base(&adapter_dir, &base).display()
    );
}

/// A gated (SwiGLU) DINOv3 with adapters on every projection, `gate_proj` included: what
/// `save_adapter` writes, `load_adapter` + `assign` read back into a fresh model with the
/// identical output.
#[test]
fn gated_mlp_adapter_save_then_load_gives_identical_output() {
    use tracknet_lora::{BiasMode, LoraInit, TargetSpec};
    let base_dir = std::fs::canonicalize(need(&fixtures().join("dinov3_gated"))).unwrap();
    let device = Default::default();
    let backbone = Backbone::<B>::from_snapshot(&base_dir, &device).unwrap();
    let paths = backbone.projection_paths();
    assert!(
        paths.iter().any(|p| p.ends_with("mlp.gate_proj")),
        "the dinov3_gated fixture has no gate_proj: {paths:?}"
    );
    let settings = LoraSettings {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        use_rslora: false,
        bias: BiasMode::None,
        targets: TargetSpec::List(vec!["gate_proj".into(), "up_proj".into(), "q_proj".into()]),
        modules_to_save: Vec::new(),
        init: LoraInit::RandomB,
        task_type: None,
    };
    let targets = select_targets(&paths, &settings.targets).unwrap();
    assert!(targets.iter().any(|t| t.ends_with("gate_proj")));
    let backbone = backbone
        .map_projections(&mut |path: &str, p: LoraLinear<B>| {
            if targets.iter().any(|t| t == path) {
                p.with_adapter(&settings, &device)
            } else {
                Ok(p)
            }
        })
        .unwrap();
    let io = read_safetensors(need(&base_dir.join("io.safetensors"))).unwrap();
    let pixels: Tensor<B, 4> = io["pixel_values"].to_tensor(&device).unwrap();
    let before = backbone.forward(pixels.clone()).last_hidden_state;

    let adapters = adapters_of(&backbone);
    assert_eq!(adapters.len(), targets.len());
    let out_dir =
        std::env::temp_dir().join(format!("tracknet-vit-peft-gated-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out_dir);
    let config = AdapterConfig::from_settings(
        &settings,
        &targets,
        Some(base_dir.to_string_lossy().into_owned()),
    );
    save_adapter(&out_dir, &config, &adapters, &Default::default()).unwrap();

    let (reloaded, _, targets2) = backbone_with_adapter(&out_dir);
    let _ = std::fs::remove_dir_all(&out_dir);
    assert_eq!(targets2, targets);
    let after = reloaded.forward(pixels).last_hidden_state;
    assert_eq!(max_abs(before, after), 0.0);
}

/// The fixture backbone in a heatmap model (decoder sized to its width, input to its patch size,
/// both from its `config.json`), LoRA off.
fn fixture_model(base: &Path) -> tracknet_vit::model::HeatmapModel<B> {
    let cfg = tracknet_config::RunConfig::default()
        .with_overrides(&common::model_on(base, [24, 16]))
        .unwrap();
    tracknet_vit::model::HeatmapModel::<B>::from_config(&cfg.model, &Default::default())
        .unwrap()
        .0
}

/// Whether parameter `key` lies in a module that PEFT's `modules_to_save` entry `name` selects
/// (a module path equal to `name` or ending with `.name`).
fn in_saved_module(key: &str, name: &str) -> bool {
    key.starts_with(&format!("{name}.")) || key.contains(&format!(".{name}."))
}

#[test]
fn peft_bias_all_and_modules_to_save_adapter_reproduces_peft_and_round_trips() {
    // Made by PEFT with a `bias` mode, `modules_to_save` and every trainable tensor perturbed:
    // the file holds the LoRA factors, the biases the mode trains (`base_layer.bias` on adapted
    // layers) and the saved modules (plus PEFT's `original_module` copies, ignored). What it
    // must hold is read from its own adapter_config.json.
    let root = fixtures().join("peft_extras");
    let adapter_dir = root.join("adapter");
    let loaded = load_adapter(need(&adapter_dir)).unwrap();
    let keys: Vec<&String> = loaded.extra.keys().collect();
    let saved = loaded.config.modules_to_save.clone().unwrap_or_default();
    for name in &saved {
        assert!(
            keys.iter().any(|k| in_saved_module(k.as_str(), name)),
            "modules_to_save `{name}`: no saved parameter in {keys:?}"
        );
    }
    let in_saved = |k: &str| saved.iter().any(|name| in_saved_module(k, name));
    let trained_biases: Vec<&String> = keys
        .iter()
        .copied()
        .filter(|k| k.ends_with(".bias") && !in_saved(k.as_str()))
        .collect();
    match loaded.config.bias.as_str() {
        "none" => assert!(trained_biases.is_empty(), "{trained_biases:?}"),
        "all" => assert!(
            !trained_biases.is_empty(),
            "bias=all saved no bias: {keys:?}"
        ),
        "lora_only" => {
            for k in &trained_biases {
                let module = k.strip_suffix(".bias").unwrap();
                assert!(
                    loaded.tensors.contains_key(module),
                    "{k}: not an adapted layer"
                );
            }
        }
        other => panic!("bias mode {other:?}"),
    }
    // An adapted layer's bias, saved under PEFT's `base_layer.`, is read as the layer's own.
    let bytes = std::fs::read(need(&adapter_dir.join(WEIGHTS_FILE))).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for key in file.names() {
        if let Some(module) = key
            .strip_prefix("base_model.model.")
            .and_then(|k| k.strip_suffix(".base_layer.bias"))
        {
            assert!(loaded.tensors.contains_key(module), "{key}");
            assert!(
                loaded.extra.contains_key(&format!("{module}.bias")),
                "{key}: {keys:?}"
            );
        }
    }
    let settings = loaded.config.to_settings(&adapter_dir).unwrap();
    let base = resolve_base(
        &adapter_dir,
        loaded.config.base_model_name_or_path.as_deref().unwrap(),
    );
    let device = Default::default();
    let (model, targets) = fixture_model(need(&base))
        .add_lora(&settings, &device)
        .unwrap();
    let infos = model.projection_infos();
    let dims = |p: &str| {
        infos
            .iter()
            .find(|i| i.path == p)
            .map(|i| (i.in_features, i.out_features))
    };
    let assigned = loaded.assign(&targets, &dims).unwrap();
    let tensors: BTreeMap<String, _> = assigned
        .iter()
        .map(|(p, t)| (p.clone(), t.to_tensors::<B>(&device)))
        .collect();
    let weights = adapter_dir.join(WEIGHTS_FILE);
    let model = model
        .set_adapters(&tensors)
        .unwrap()
        .set_adapter_extras(&loaded.extra, &weights)
        .unwrap();
    let io = read_safetensors(need(&root.join("io.safetensors"))).unwrap();
    let x: Tensor<B, 4> = io["pixel_values"].to_tensor(&device).unwrap();
    let want: Tensor<B, 3> = io["last_hidden_state"].to_tensor(&device).unwrap();
    let got = model.backbone.forward(x.clone()).last_hidden_state;
    let max = max_abs(got, want.clone());
    assert!(max < 1e-4, "max |ours - PEFT| = {max}");
    // Without the biases and the saved modules the output is not PEFT's: they matter (and
    // an adapter that saved none gives the same model).
    let bare = fixture_model(&base)
        .add_lora(&settings, &device)
        .unwrap()
        .0
        .set_adapters(&tensors)
        .unwrap();
    let off = max_abs(bare.backbone.forward(x).last_hidden_state, want);
    if loaded.extra.is_empty() {
        assert!(off < 1e-4, "no extras, yet {off}");
    } else {
        assert!(off > 1e-2, "the extras changed nothing: {off}");
    }

    // What we write is what PEFT wrote (less its `original_module` / `modules_to_save.` copies).
    let ours = model.adapter_extras(&settings);
    let raw = std::fs::read(&weights).unwrap();
    let st = safetensors::SafeTensors::deserialize(&raw).unwrap();
    let peft: std::collections::BTreeSet<String> = st
        .names()
        .into_iter()
        .filter(|k| {
            !k.contains("lora_") && !k.contains("original_module") && !k.contains("modules_to_save")
        })
        .map(|k| k.strip_prefix("base_model.model.").unwrap().to_string())
        .collect();
    assert_eq!(
        ours.keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        peft
    );
    for (k, (_, v)) in &ours {
        let norm = tracknet_lora::peft::peft_extra_key(k).unwrap();
        let (_, want) = &loaded.extra[&norm];
        assert_eq!(v, want, "{k}");
    }
    // And it reloads to the same model.
    let out_dir = std::env::temp_dir().join(format!("tracknet-peft-extras-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out_dir);
    let adapters: Vec<AdapterTensors> = model
        .adapters()
        .into_iter()
        .map(|(p, a, b)| AdapterTensors::from_tensors(&p, a, b))
        .collect();
    // The base model as the loaded adapter names it.
    let config = AdapterConfig::from_settings(
        &settings,
        &targets,
        loaded.config.base_model_name_or_path.clone(),
    );
    save_adapter(&out_dir, &config, &adapters, &ours).unwrap();
    let again = load_adapter(&out_dir).unwrap();
    let _ = std::fs::remove_dir_all(&out_dir);
    assert_eq!(again.extra, loaded.extra);
}

#[test]
fn a_peft_adapter_saved_by_python_starts_a_model_through_adapter_path_and_reproduces_peft() {
    // `model.lora.adapter_path` on PEFT's own folder: the adapter's settings (r, alpha, its
    // targets) replace the config's, its weights the init, and the backbone gives PEFT's
    // `last_hidden_state`.
    let adapter_dir = fixtures().join("peft/adapter");
    let adapter = load_adapter(need(&adapter_dir)).unwrap().config;
    let base = resolve_base(
        &adapter_dir,
        adapter
            .base_model_name_or_path
            .as_deref()
            .expect("the adapter names its base model"),
    );
    // Config values that differ from the adapter's own, so that both are replaced.
    let (r, alpha) = (adapter.r, adapter.lora_alpha);
    let mut overrides = common::model_on(need(&base), [24, 16]);
    overrides.extend([
        "model.lora.enabled=true".into(),
        format!("model.lora.r={}", r + 12),
        format!("model.lora.lora_alpha={}", alpha + 24.0),
        format!("model.lora.adapter_path={}", need(&adapter_dir).display()),
    ]);
    let cfg = tracknet_config::RunConfig::default()
        .with_overrides(&overrides)
        .unwrap();
    let (model, report) =
        tracknet_vit::model::HeatmapModel::<B>::from_config(&cfg.model, &Default::default())
            .unwrap();
    for (key, value) in [
        ("model.lora.r", r.to_string()),
        ("model.lora.lora_alpha", alpha.to_string()),
    ] {
        let note = format!("{key}: {value} from the adapter");
        assert!(
            report.warnings.iter().any(|w| w.starts_with(&note)),
            "{note}: {:?}",
            report.warnings
        );
    }
    let in_file = load_adapter(&adapter_dir).unwrap().tensors.len();
    assert_eq!(report.lora_targets.len(), in_file);
    let (pixels, expected) = peft_io();
    let err = max_abs(model.backbone.forward(pixels).last_hidden_state, expected);
    assert!(err < 1e-4, "max abs error {err}");
    // Without it (the config's own fresh LoRA) the output is the base model's, far from PEFT's.
    let plain = cfg
        .with_overrides(&["model.lora.adapter_path=null".to_string()])
        .unwrap();
    let (fresh, _) =
        tracknet_vit::model::HeatmapModel::<B>::from_config(&plain.model, &Default::default())
            .unwrap();
    let (pixels, expected) = peft_io();
    assert!(max_abs(fresh.backbone.forward(pixels).last_hidden_state, expected) > 1e-3);
}
