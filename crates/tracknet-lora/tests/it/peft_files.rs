//! PEFT adapter files: what we write is what `PeftModel.save_pretrained` writes, and what PEFT
//! wrote (the fixture) loads.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::backend::NdArray;
use burn::prelude::*;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde_json::Value;
use tracknet_lora::peft::{
    AdapterConfig, AdapterTensors, CONFIG_FILE, KEY_PREFIX, WEIGHTS_FILE, load_adapter,
    save_adapter,
};
use tracknet_lora::{BiasMode, LoraError, LoraInit, LoraSettings, TargetSpec};
use tracknet_testkit::fixtures;

type B = NdArray<f32>;

fn fixture_adapter() -> PathBuf {
    let dir = fixtures().join("peft/adapter");
    for f in [CONFIG_FILE, WEIGHTS_FILE] {
        assert!(
            dir.join(f).is_file(),
            "fixture missing: {}",
            dir.join(f).display()
        );
    }
    dir
}

/// A fresh folder under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "tracknet-lora-peft-files-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn vals(n: usize, seed: f32) -> Vec<f32> {
    (0..n).map(|i| (i as f32 * 0.37 + seed).sin()).collect()
}

/// Two adapters of rank 3 on differently shaped layers.
fn sample_adapters() -> Vec<AdapterTensors> {
    let mk = |path: &str, d_in: usize, d_out: usize, seed: f32| {
        let device = Default::default();
        let a =
            Tensor::<B, 2>::from_data(TensorData::new(vals(3 * d_in, seed), [3, d_in]), &device);
        let b = Tensor::<B, 2>::from_data(
            TensorData::new(vals(d_out * 3, seed + 1.0), [d_out, 3]),
            &device,
        );
        AdapterTensors::from_tensors(path, a, b)
    };
    vec![
        mk("model.layer.0.attention.q_proj", 8, 8, 0.1),
        mk("model.layer.0.mlp.up_proj", 8, 16, 0.2),
    ]
}

fn sample_settings() -> LoraSettings {
    LoraSettings {
        r: 3,
        alpha: 6.0,
        dropout: 0.1,
        use_rslora: true,
        bias: BiasMode::LoraOnly,
        targets: TargetSpec::List(vec!["q_proj".into(), "up_proj".into()]),
        modules_to_save: vec!["norm".into()],
        init: LoraInit::PeftDefault,
        task_type: Some("FEATURE_EXTRACTION".into()),
    }
}

fn save_sample(dir: &Path) -> (AdapterConfig, Vec<AdapterTensors>) {
    let adapters = sample_adapters();
    let paths: Vec<String> = adapters.iter().map(|a| a.path.clone()).collect();
    let config = AdapterConfig::from_settings(&sample_settings(), &paths, Some("../dinov3".into()));
    save_adapter(dir, &config, &adapters, &Default::default()).unwrap();
    (config, adapters)
}

#[test]
fn save_then_load_round_trips_tensors_and_settings() {
    let tmp = TempDir::new("roundtrip");
    let (config, adapters) = save_sample(&tmp.0);
    let loaded = load_adapter(&tmp.0).unwrap();
    assert_eq!(loaded.config, config);
    assert_eq!(loaded.tensors.len(), adapters.len());
    for a in &adapters {
        assert_eq!(&loaded.tensors[&a.path], a, "{}", a.path);
    }
    let s = loaded.config.to_settings(&tmp.0).unwrap();
    assert_eq!(s, sample_settings());
    // No temp files are left behind by the atomic writes.
    let mut names: Vec<String> = std::fs::read_dir(&tmp.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, [CONFIG_FILE, WEIGHTS_FILE]);
}

#[test]
fn saved_weights_have_peft_keys_dtype_and_shapes() {
    let tmp = TempDir::new("keys");
    let (_, adapters) = save_sample(&tmp.0);
    let bytes = std::fs::read(tmp.0.join(WEIGHTS_FILE)).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut got: BTreeMap<String, (Dtype, Vec<usize>)> = BTreeMap::new();
    for (k, v) in st.tensors() {
        got.insert(k, (v.dtype(), v.shape().to_vec()));
    }
    let want: BTreeMap<String, (Dtype, Vec<usize>)> = [
        (
            "base_model.model.model.layer.0.attention.q_proj.lora_A.weight",
            vec![3, 8],
        ),
        (
            "base_model.model.model.layer.0.attention.q_proj.lora_B.weight",
            vec![8, 3],
        ),
        (
            "base_model.model.model.layer.0.mlp.up_proj.lora_A.weight",
            vec![3, 8],
        ),
        (
            "base_model.model.model.layer.0.mlp.up_proj.lora_B.weight",
            vec![16, 3],
        ),
    ]
    .into_iter()
    .map(|(k, s)| (k.to_string(), (Dtype::F32, s)))
    .collect();
    assert_eq!(got, want);
    // Values: row-major PyTorch layout, little-endian f32.
    let a = st
        .tensor("base_model.model.model.layer.0.mlp.up_proj.lora_B.weight")
        .unwrap();
    let v: Vec<f32> = a
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(v, adapters[1].b);
    // PEFT writes `{"format": "pt"}` metadata; transformers refuses files without it.
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap_or_default();
    assert_eq!(meta.get("format").map(String::as_str), Some("pt"));
}

fn read_json(p: &Path) -> serde_json::Map<String, Value> {
    let v: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
    v.as_object().unwrap().clone()
}

/// Keys PEFT writes that carry no configuration: `peft_version` is the writer's version (PEFT
/// only uses it for a warning when loading with another version), and `auto_mapping` names the
/// Python class of a custom base model (null for us, object in the fixture); neither changes how
/// an adapter is built or loaded, so they are excluded from the value comparison. `peft_version`
/// is also excluded from the key-set comparison (we are not PEFT and must not claim a version).
const INFORMATIONAL: [&str; 2] = ["peft_version", "auto_mapping"];

#[test]
fn saved_config_has_every_key_peft_writes() {
    let tmp = TempDir::new("config");
    save_sample(&tmp.0);
    let ours = read_json(&tmp.0.join(CONFIG_FILE));
    let peft = read_json(&fixture_adapter().join(CONFIG_FILE));

    // The keys the brief names, with our values.
    assert_eq!(ours["peft_type"], "LORA");
    assert_eq!(ours["r"], 3);
    assert_eq!(ours["lora_alpha"].as_f64(), Some(6.0));
    assert_eq!(ours["lora_dropout"].as_f64(), Some(0.1));
    assert_eq!(
        ours["target_modules"],
        serde_json::json!(["q_proj", "up_proj"])
    );
    assert_eq!(ours["bias"], "lora_only");
    assert_eq!(ours["use_rslora"], true);
    assert_eq!(ours["use_dora"], false);
    assert_eq!(ours["fan_in_fan_out"], false);
    assert_eq!(ours["modules_to_save"], serde_json::json!(["norm"]));
    assert_eq!(ours["base_model_name_or_path"], "../dinov3");
    assert_eq!(ours["task_type"], "FEATURE_EXTRACTION");
    assert_eq!(ours["init_lora_weights"], true);

    let ours_keys: BTreeSet<&str> = ours.keys().map(String::as_str).collect();
    let missing: Vec<&str> = peft
        .keys()
        .map(String::as_str)
        .filter(|k| !ours_keys.contains(k) && *k != "peft_version")
        .collect();
    assert!(
        missing.is_empty(),
        "adapter_config.json lacks keys PEFT writes: {missing:?}"
    );
}

#[test]
fn fixture_config_through_our_types_writes_peft_values() {
    // PEFT's config → our settings → our JSON: every shared, non-informational key has PEFT's
    // value (numbers compared as numbers: PEFT writes `lora_alpha: 8`, we write `8.0`).
    let dir = fixture_adapter();
    let loaded = load_adapter(&dir).unwrap();
    let settings = loaded.config.to_settings(&dir).unwrap();
    let cfg = AdapterConfig::from_settings(
        &settings,
        &[],
        loaded.config.base_model_name_or_path.clone(),
    );
    let ours = cfg.to_peft_json();
    let ours = ours.as_object().unwrap();
    let peft = read_json(&dir.join(CONFIG_FILE));
    let mut differ = Vec::new();
    for (k, v) in &peft {
        if INFORMATIONAL.contains(&k.as_str()) {
            continue;
        }
        let Some(o) = ours.get(k) else { continue }; // the key set is checked above
        let same = match (v.as_f64(), o.as_f64()) {
            (Some(a), Some(b)) => a == b,
            _ => v == o,
        };
        if !same {
            differ.push(format!("{k}: PEFT {v}, ours {o}"));
        }
    }
    assert!(differ.is_empty(), "{differ:#?}");
}

/// `(in, out)` of a projection of the fixture's base model, from its `config.json`
/// (`hidden_size`, `intermediate_size`), by the projection's name.
fn base_dims(base: &serde_json::Map<String, Value>, path: &str) -> (usize, usize) {
    let get = |k: &str| {
        base.get(k)
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("base config.json lacks `{k}`")) as usize
    };
    let (hidden, inter) = (get("hidden_size"), get("intermediate_size"));
    let name = path.rsplit('.').next().unwrap_or(path);
    match name {
        "up_proj" | "gate_proj" | "fc1" => (hidden, inter),
        "down_proj" | "fc2" => (inter, hidden),
        _ => (hidden, hidden),
    }
}

/// The fixture's base model folder: `base_model_name_or_path` as PEFT recorded it, relative to
/// the adapter folder's parent (how the fixture set is laid out).
fn fixture_base_config(dir: &Path, base: &str) -> serde_json::Map<String, Value> {
    let candidates = [dir.join(base), dir.parent().unwrap_or(dir).join(base)];
    let path = candidates
        .iter()
        .map(|d| d.join("config.json"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("fixture missing: base model of {} ({base})", dir.display()));
    read_json(&path)
}

#[test]
fn loads_the_peft_fixture_adapter() {
    // Every expectation comes from the fixture's own files: adapter_config.json for the
    // settings, the base model's config.json for the shapes.
    let dir = fixture_adapter();
    let json = read_json(&dir.join(CONFIG_FILE));
    let loaded = load_adapter(&dir).unwrap();
    let c = &loaded.config;
    assert_eq!(c.peft_type, json["peft_type"]);
    let r = json["r"].as_u64().expect("r is an integer") as usize;
    let alpha = json["lora_alpha"].as_f64().expect("lora_alpha is a number");
    assert_eq!(c.r, r);
    assert_eq!(c.lora_alpha, alpha);
    let base = json["base_model_name_or_path"]
        .as_str()
        .expect("the fixture adapter names its base model");
    assert_eq!(c.base_model_name_or_path.as_deref(), Some(base));
    let s = c.to_settings(&dir).unwrap();
    let rslora = json["use_rslora"].as_bool().unwrap_or(false);
    let scaling = if rslora {
        alpha / (r as f64).sqrt()
    } else {
        alpha / r as f64
    };
    assert_eq!(s.scaling(), scaling);
    let random_b = json["init_lora_weights"] == Value::Bool(false);
    assert_eq!(
        s.init,
        if random_b {
            LoraInit::RandomB
        } else {
            LoraInit::PeftDefault
        }
    );
    assert_eq!(s.bias.as_str(), json["bias"].as_str().unwrap_or("none"));
    // PEFT's targets: a list of names (a module path equal to one or ending with `.` + one),
    // or a regex the whole path must match.
    let target_modules = &json["target_modules"];
    let (names, pattern): (BTreeSet<String>, Option<regex::Regex>) = match target_modules {
        Value::Array(a) => {
            let names: BTreeSet<String> =
                a.iter().map(|v| v.as_str().unwrap().to_string()).collect();
            let TargetSpec::List(t) = &s.targets else {
                panic!("{:?}", s.targets)
            };
            assert_eq!(t.iter().cloned().collect::<BTreeSet<_>>(), names);
            (names, None)
        }
        Value::String(re) => {
            assert_eq!(s.targets, TargetSpec::Regex(re.clone()));
            let re = regex::Regex::new(&format!("^(?:{re})$")).unwrap();
            (BTreeSet::new(), Some(re))
        }
        other => panic!("the fixture's target_modules is neither a list nor a string: {other}"),
    };

    // Tensors: one A/B pair per adapted module, prefix stripped, each module named by the
    // targets, shapes from the base model.
    let base_cfg = fixture_base_config(&dir, base);
    let layers = base_cfg["num_hidden_layers"].as_u64().unwrap() as usize;
    assert!(!loaded.tensors.is_empty());
    let mut per_name: BTreeMap<&str, usize> = BTreeMap::new();
    for (path, t) in &loaded.tensors {
        assert!(!path.starts_with(KEY_PREFIX), "{path}");
        let name = match &pattern {
            Some(re) => {
                assert!(re.is_match(path), "{path} does not match {re}");
                path.rsplit('.').next().unwrap()
            }
            None => names
                .iter()
                .find(|n| *path == **n || path.ends_with(&format!(".{n}")))
                .unwrap_or_else(|| panic!("{path} is not among {names:?}"))
                .as_str(),
        };
        *per_name.entry(name).or_default() += 1;
        let (d_in, d_out) = base_dims(&base_cfg, path);
        assert_eq!(t.a_shape, [r, d_in], "{path}");
        assert_eq!(t.b_shape, [d_out, r], "{path}");
        assert_eq!(t.a.len(), r * d_in);
        assert_eq!(t.b.len(), d_out * r);
        if random_b {
            assert!(
                t.b.iter().any(|&v| v != 0.0),
                "{path}: B is random in the fixture"
            );
        }
    }
    // Every layer carries each adapted name once (a list names modules of every layer; a
    // regex may pick any).
    if pattern.is_none() {
        for (name, n) in &per_name {
            assert_eq!(*n, layers, "{name}: one adapter per layer");
        }
    }

    // `assign` puts every tensor on the model path of the same name.
    let targets: Vec<String> = loaded.tensors.keys().cloned().collect();
    let dims = |p: &str| Some(base_dims(&base_cfg, p));
    let map = loaded.assign(&targets, &dims).unwrap();
    assert_eq!(map.len(), loaded.tensors.len());
    assert!(map.iter().all(|(k, t)| *k == t.path));
}

/// Write a safetensors file from `(key, shape)` with arbitrary f32 values.
fn write_weights(dir: &Path, tensors: &[(&str, Vec<usize>)]) {
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, s)| {
            let n: usize = s.iter().product();
            let bytes = vals(n, 0.3).iter().flat_map(|v| v.to_le_bytes()).collect();
            (k.to_string(), s.clone(), bytes)
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = data
        .iter()
        .map(|(k, s, b)| {
            (
                k.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let bytes = safetensors::serialize(views, &None).unwrap();
    std::fs::write(dir.join(WEIGHTS_FILE), bytes).unwrap();
}

/// An `adapter_config.json` of rank 4 (the shapes the tests below write), independent of the
/// fixture set.
fn write_rank4_config(dir: &Path) {
    let settings = LoraSettings {
        r: 4,
        ..sample_settings()
    };
    let config = AdapterConfig::from_settings(&settings, &[], Some("../dinov3".into()));
    std::fs::write(
        dir.join(CONFIG_FILE),
        serde_json::to_vec(&config.to_peft_json()).unwrap(),
    )
    .unwrap();
}

#[test]
fn missing_lora_b_is_named() {
    let tmp = TempDir::new("missing-b");
    write_rank4_config(&tmp.0);
    write_weights(
        &tmp.0,
        &[
            (
                "base_model.model.model.layer.0.attention.q_proj.lora_A.weight",
                vec![4, 64],
            ),
            (
                "base_model.model.model.layer.0.attention.q_proj.lora_B.weight",
                vec![64, 4],
            ),
            (
                "base_model.model.model.layer.0.attention.v_proj.lora_A.weight",
                vec![4, 64],
            ),
        ],
    );
    let err = load_adapter(&tmp.0).unwrap_err();
    assert!(matches!(err, LoraError::Mismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(WEIGHTS_FILE), "{msg}");
    assert!(
        msg.contains(
            "missing tensor base_model.model.model.layer.0.attention.v_proj.lora_B.weight"
        ),
        "{msg}"
    );
    assert!(
        !msg.contains("q_proj"),
        "only the broken pair is reported: {msg}"
    );
}

#[test]
fn extra_tensor_is_named() {
    let tmp = TempDir::new("extra");
    write_rank4_config(&tmp.0);
    write_weights(
        &tmp.0,
        &[
            (
                "base_model.model.model.layer.0.attention.q_proj.lora_A.weight",
                vec![4, 64],
            ),
            (
                "base_model.model.model.layer.0.attention.q_proj.lora_B.weight",
                vec![64, 4],
            ),
            // The config saves `norm` (modules_to_save) and LoRA-layer biases: this is neither.
            (
                "base_model.model.model.layer.0.mlp.up_proj.weight",
                vec![64],
            ),
            ("base_model.model.norm.weight", vec![64]),
        ],
    );
    let msg = load_adapter(&tmp.0).unwrap_err().to_string();
    assert!(
        msg.contains("unexpected tensor base_model.model.model.layer.0.mlp.up_proj.weight")
            && !msg.contains("norm.weight"),
        "{msg}"
    );

    // A complete pair for a module the model does not have is refused by `assign`.
    let tmp2 = TempDir::new("extra-module");
    write_rank4_config(&tmp2.0);
    write_weights(
        &tmp2.0,
        &[
            (
                "base_model.model.model.layer.0.attention.q_proj.lora_A.weight",
                vec![4, 64],
            ),
            (
                "base_model.model.model.layer.0.attention.q_proj.lora_B.weight",
                vec![64, 4],
            ),
            (
                "base_model.model.model.layer.7.attention.q_proj.lora_A.weight",
                vec![4, 64],
            ),
            (
                "base_model.model.model.layer.7.attention.q_proj.lora_B.weight",
                vec![64, 4],
            ),
        ],
    );
    let loaded = load_adapter(&tmp2.0).unwrap();
    let targets = vec!["model.layer.0.attention.q_proj".to_string()];
    let msg = loaded
        .assign(&targets, &|_| Some((64, 64)))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(
            "unexpected tensor base_model.model.model.layer.7.attention.q_proj.lora_A.weight"
        ),
        "{msg}"
    );
    // And a model target the file does not cover is missing.
    let targets = vec![
        "model.layer.0.attention.q_proj".to_string(),
        "model.layer.7.attention.q_proj".to_string(),
        "model.layer.0.attention.v_proj".to_string(),
    ];
    let msg = loaded
        .assign(&targets, &|_| Some((64, 64)))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(
            "missing tensor base_model.model.model.layer.0.attention.v_proj.lora_A.weight"
        ),
        "{msg}"
    );
    // Wrong layer width: named with both shapes.
    let targets = vec![
        "model.layer.0.attention.q_proj".to_string(),
        "model.layer.7.attention.q_proj".to_string(),
    ];
    let msg = loaded
        .assign(&targets, &|_| Some((32, 64)))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("model.layer.0.attention.q_proj.lora_A.weight"),
        "{msg}"
    );
    assert!(msg.contains("expected shape"), "{msg}");
}

#[test]
fn truncated_file_is_named() {
    let tmp = TempDir::new("truncated");
    save_sample(&tmp.0);
    let p = tmp.0.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 17]).unwrap();
    let err = load_adapter(&tmp.0).unwrap_err();
    assert!(matches!(err, LoraError::Format { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&p.display().to_string()), "{msg}");
    assert!(msg.contains("not a valid safetensors file"), "{msg}");

    // A missing weights file names the file too.
    std::fs::remove_file(&p).unwrap();
    let msg = load_adapter(&tmp.0).unwrap_err().to_string();
    assert!(msg.contains(&p.display().to_string()), "{msg}");
}

#[test]
fn unsupported_peft_features_are_refused() {
    let tmp = TempDir::new("dora");
    let (config, _) = save_sample(&tmp.0);
    for (key, value) in [("use_dora", true), ("fan_in_fan_out", true)] {
        let mut json = config.to_peft_json();
        json[key] = Value::Bool(value);
        std::fs::write(tmp.0.join(CONFIG_FILE), serde_json::to_vec(&json).unwrap()).unwrap();
        let loaded = load_adapter(&tmp.0).unwrap();
        let msg = loaded.config.to_settings(&tmp.0).unwrap_err().to_string();
        assert!(msg.contains(key), "{msg}");
    }
}

#[test]
fn peft_keys_that_change_the_math_are_refused_by_name_and_their_defaults_accepted() {
    let tmp = TempDir::new("math-keys");
    let (config, _) = save_sample(&tmp.0);
    let set = |key: &str, value: Value| {
        let mut json = config.to_peft_json();
        json[key] = value;
        std::fs::write(tmp.0.join(CONFIG_FILE), serde_json::to_vec(&json).unwrap()).unwrap();
        load_adapter(&tmp.0).unwrap().config.to_settings(&tmp.0)
    };
    let refused = [
        ("rank_pattern", serde_json::json!({"q_proj": 8})),
        ("alpha_pattern", serde_json::json!({"v_proj": 64})),
        ("layers_to_transform", serde_json::json!([0])),
        ("layers_pattern", serde_json::json!("layer")),
        ("exclude_modules", serde_json::json!(["k_proj"])),
        ("target_parameters", serde_json::json!(["mlp.experts"])),
        ("trainable_token_indices", serde_json::json!([1, 2])),
        ("layer_replication", serde_json::json!([[0, 2]])),
        ("lora_bias", Value::Bool(true)),
        ("use_qalora", Value::Bool(true)),
        ("init_lora_weights", Value::String("pissa_niter_4".into())),
    ];
    for (key, value) in refused {
        let msg = match set(key, value.clone()) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{key} = {value} was accepted"),
        };
        assert!(msg.contains(key), "{key}: {msg}");
    }
    // PEFT's defaults for the same keys (what `save_pretrained` writes) load.
    for (key, value) in [
        ("rank_pattern", serde_json::json!({})),
        ("alpha_pattern", serde_json::json!({})),
        ("layers_to_transform", Value::Null),
        ("exclude_modules", Value::Null),
        ("lora_bias", Value::Bool(false)),
        ("init_lora_weights", Value::String("gaussian".into())),
    ] {
        assert!(
            set(key, value.clone()).is_ok(),
            "{key} = {value} was refused"
        );
    }
    // rsLoRA is honoured: scaling alpha / sqrt(r).
    let s = set("use_rslora", Value::Bool(true)).unwrap();
    assert!((s.scaling() - s.alpha / (s.r as f64).sqrt()).abs() < 1e-12);
}
