//! Checkpoint naming schemes, strict weight checking, snapshot resolution and random configs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, NdArray};
use burn::module::{ModuleVisitor, Param};
use burn::prelude::*;
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use tracknet_testkit::{fixtures, scratch};
use tracknet_vit::backbone::{Backbone, BackboneArch};
use tracknet_vit::dinov3::Dinov3Config;
use tracknet_vit::error::VitError;
use tracknet_vit::hf::{
    HostTensor, KeyMapping, canonical_key, read_safetensors, resolve_snapshot_in,
};
use tracknet_vit::vit::bicubic_matrix;

use crate::common;

type B = NdArray<f32>;

fn write_safetensors(path: &Path, tensors: &BTreeMap<String, HostTensor>) {
    let bytes: BTreeMap<&String, Vec<u8>> = tensors
        .iter()
        .map(|(k, t)| (k, t.data.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let views = tensors.iter().map(|(k, t)| {
        (
            k.clone(),
            TensorView::new(Dtype::F32, t.shape.clone(), &bytes[k]).unwrap(),
        )
    });
    std::fs::write(path, safetensors::serialize(views, &None).unwrap()).unwrap();
}

/// Copy fixture `model` into a scratch snapshot, passing its tensors through `edit`.
fn edited_snapshot(
    model: &str,
    name: &str,
    edit: impl FnOnce(&mut BTreeMap<String, HostTensor>),
) -> PathBuf {
    let src = fixtures().join(model);
    let dir = scratch(name);
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let mut tensors = read_safetensors(&src.join("model.safetensors")).unwrap();
    edit(&mut tensors);
    write_safetensors(&dir.join("model.safetensors"), &tensors);
    dir
}

fn rename(tensors: &mut BTreeMap<String, HostTensor>, f: impl Fn(&str) -> String) {
    *tensors = std::mem::take(tensors)
        .into_iter()
        .map(|(k, t)| (f(&k), t))
        .collect();
}

/// How the DINOv3 fixture names its blocks: `model.layer.` (transformers 5.23) or the
/// published `layer.` (newer transformers).
fn layer_prefix(snapshot: &Path) -> &'static str {
    let keys = read_safetensors(&snapshot.join("model.safetensors")).unwrap();
    if keys.keys().any(|k| k.starts_with("model.layer.")) {
        "model.layer."
    } else {
        "layer."
    }
}

/// The checkpoint key of `snapshot`'s tensor whose canonical name is `canonical`, whatever
/// naming scheme the snapshot uses.
fn stored_key(snapshot: &Path, canonical: &str) -> String {
    let arch = BackboneArch::from_config_file(&snapshot.join("config.json")).unwrap();
    let want = KeyMapping::Canonical(canonical.to_string());
    read_safetensors(&snapshot.join("model.safetensors"))
        .unwrap()
        .into_keys()
        .find(|k| canonical_key(&arch, k) == want)
        .unwrap_or_else(|| panic!("{}: no tensor for {canonical}", snapshot.display()))
}

/// Max abs difference between `last_hidden_state` of the fixture model and the one in `dir`.
fn output_difference(model: &str, dir: &Path) -> f32 {
    let device = Default::default();
    let reference = Backbone::<B>::from_snapshot(&fixtures().join(model), &device).unwrap();
    let renamed = Backbone::<B>::from_snapshot(dir, &device).unwrap();
    let io = read_safetensors(&fixtures().join(model).join("io.safetensors")).unwrap();
    let pixels: Tensor<B, 4> = io["pixel_values"].to_tensor(&device).unwrap();
    let a = reference.forward(pixels.clone()).last_hidden_state;
    let b = renamed.forward(pixels).last_hidden_state;
    (a - b).abs().max().into_scalar()
}

/// `(missing, unexpected, mismatched)` of a `VitError::Weights`.
type WeightProblems = (
    Vec<String>,
    Vec<String>,
    Vec<(String, Vec<usize>, Vec<usize>)>,
);

fn weights_error(dir: &Path) -> WeightProblems {
    match Backbone::<B>::from_snapshot(dir, &Default::default()) {
        Err(VitError::Weights {
            missing,
            unexpected,
            mismatched,
            ..
        }) => (missing, unexpected, mismatched),
        other => panic!("expected VitError::Weights, got {other:?}"),
    }
}

#[test]
fn dinov3_published_names_load_to_the_same_model() {
    let dir = edited_snapshot("dinov3", "dinov3-published", |t| {
        rename(t, |k| k.strip_prefix("model.").unwrap_or(k).to_string());
        assert!(t.keys().any(|k| k.starts_with("layer.0.attention.q_proj")));
    });
    assert_eq!(output_difference("dinov3", &dir), 0.0);
}

#[test]
fn vit_old_names_with_prefix_and_pooler_load_to_the_same_model() {
    let src = fixtures().join("vit");
    let arch = BackboneArch::from_config_file(&src.join("config.json")).unwrap();
    let last = common::config_usize(&src, "num_hidden_layers") - 1;
    let dir = edited_snapshot("vit", "vit-old", |t| {
        rename(t, |k| {
            // From the fixture's scheme to transformers 5's, then to the old one.
            let k = match canonical_key(&arch, k) {
                KeyMapping::Canonical(c) => c,
                KeyMapping::Ignored => k.strip_prefix("vit.").unwrap_or(k).to_string(),
                KeyMapping::Split(..) => unreachable!("ViT has no fused projection"),
            };
            let k = k
                .replace("layers.", "encoder.layer.")
                .replace("attention.q_proj", "attention.attention.query")
                .replace("attention.k_proj", "attention.attention.key")
                .replace("attention.v_proj", "attention.attention.value")
                .replace("attention.o_proj", "attention.output.dense")
                .replace("mlp.fc1", "intermediate.dense")
                .replace("mlp.fc2", "output.dense");
            format!("vit.{k}")
        });
        t.insert(
            "vit.pooler.dense.bias".into(),
            HostTensor {
                shape: vec![2],
                data: vec![1.0, 2.0],
            },
        );
        let query = format!("vit.encoder.layer.{last}.attention.attention.query.weight");
        let fc2 = format!("vit.encoder.layer.{last}.output.dense.weight");
        assert!(t.contains_key(&query), "{query}");
        assert!(t.contains_key(&fc2), "{fc2}");
    });
    assert_eq!(output_difference("vit", &dir), 0.0);
}

#[test]
fn sharded_checkpoint_loads_every_shard() {
    let src = fixtures().join("dinov3");
    let dir = scratch("sharded");
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let tensors = read_safetensors(&src.join("model.safetensors")).unwrap();
    let (first, second): (BTreeMap<_, _>, BTreeMap<_, _>) = tensors
        .into_iter()
        .partition(|(k, _)| k.starts_with(&format!("{}0.", layer_prefix(&src))));
    assert!(!first.is_empty() && !second.is_empty());
    let mut weight_map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", &first),
        ("model-00002-of-00002.safetensors", &second),
    ] {
        write_safetensors(&dir.join(file), part);
        for key in part.keys() {
            weight_map.insert(key.clone(), file.into());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    assert_eq!(output_difference("dinov3", &dir), 0.0);
}

#[test]
fn missing_tensor_is_named() {
    // The last layer's query weight, under whatever name the fixture stores it.
    let src = fixtures().join("dinov3");
    let last = common::config_usize(&src, "num_hidden_layers") - 1;
    let canonical = format!("model.layer.{last}.attention.q_proj.weight");
    let key = stored_key(&src, &canonical);
    let dir = edited_snapshot("dinov3", "missing", |t| {
        t.remove(&key).unwrap();
    });
    let (missing, unexpected, mismatched) = weights_error(&dir);
    assert_eq!(missing, vec![canonical]);
    assert!(unexpected.is_empty() && mismatched.is_empty());
}

#[test]
fn wrong_shape_is_named_with_both_shapes() {
    let key = stored_key(&fixtures().join("dinov3"), "norm.weight");
    let dir = edited_snapshot("dinov3", "shape", |t| {
        let norm = t.get_mut(&key).unwrap();
        let c = norm.shape[0];
        norm.shape = vec![c - 1];
        norm.data.truncate(c - 1);
    });
    let (missing, unexpected, mismatched) = weights_error(&dir);
    let stored = read_safetensors(&fixtures().join("dinov3/model.safetensors")).unwrap();
    let c = stored[&key].shape[0];
    // Named as the checkpoint names it.
    assert_eq!(mismatched, vec![(key, vec![c], vec![c - 1])]);
    assert!(missing.is_empty() && unexpected.is_empty());
}

#[test]
fn unexpected_tensor_is_named() {
    // A bias on a projection the model builds without one (`key_bias: false`, transformers'
    // default); a fixture whose config has a key bias gets a tensor no model has.
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("dinov3/config.json")).unwrap())
            .unwrap();
    let extra = if config["key_bias"].as_bool().unwrap_or(false) {
        "model.layer.0.attention.r_proj.bias"
    } else {
        "model.layer.0.attention.k_proj.bias"
    };
    let norm_bias = stored_key(&fixtures().join("dinov3"), "norm.bias");
    let dir = edited_snapshot("dinov3", "unexpected", |t| {
        let c = t[&norm_bias].shape[0];
        t.insert(
            extra.into(),
            HostTensor {
                shape: vec![c],
                data: vec![0.0; c],
            },
        );
    });
    let (missing, unexpected, mismatched) = weights_error(&dir);
    assert_eq!(unexpected, vec![extra.to_string()]);
    assert!(missing.is_empty() && mismatched.is_empty());
}

#[test]
fn all_weight_problems_are_reported_at_once() {
    // Missing tensors are named canonically, the others as the checkpoint names them.
    let src = fixtures().join("vit");
    let (fc1_bias, norm_bias) = (
        stored_key(&src, "layers.0.mlp.fc1.bias"),
        stored_key(&src, "layernorm.bias"),
    );
    let dir = edited_snapshot("vit", "all-problems", |t| {
        t.remove(&fc1_bias).unwrap();
        let n = t[&norm_bias].data.len();
        t.get_mut(&norm_bias).unwrap().shape = vec![1, n];
        t.insert(
            "classifier.weight".into(),
            HostTensor {
                shape: vec![1],
                data: vec![0.0],
            },
        );
    });
    let (missing, unexpected, mismatched) = weights_error(&dir);
    assert_eq!(missing, vec!["layers.0.mlp.fc1.bias".to_string()]);
    assert_eq!(unexpected, vec!["classifier.weight".to_string()]);
    assert_eq!(mismatched.len(), 1);
    assert_eq!(mismatched[0].0, norm_bias);
    let message = Backbone::<B>::from_snapshot(&dir, &Default::default())
        .unwrap_err()
        .to_string();
    for name in [
        "layers.0.mlp.fc1.bias",
        "classifier.weight",
        norm_bias.as_str(),
    ] {
        assert!(message.contains(name), "{message}");
    }
}

#[test]
fn truncated_safetensors_names_the_file() {
    let src = fixtures().join("dinov3");
    let dir = scratch("truncated");
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    match Backbone::<B>::from_snapshot(&dir, &Default::default()) {
        Err(e @ VitError::Safetensors { .. }) => {
            assert!(
                e.to_string()
                    .contains(&dir.join("model.safetensors").display().to_string())
            );
        }
        other => panic!("expected VitError::Safetensors, got {other:?}"),
    }
}

#[test]
fn half_precision_tensors_are_converted_to_f32() {
    let dir = scratch("half");
    let values = [1.0f32, -2.5, 0.333_333_34, 65504.0];
    let f16: Vec<u8> = values
        .iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .collect();
    let bf16: Vec<u8> = values
        .iter()
        .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
        .collect();
    let views = vec![
        ("a", TensorView::new(Dtype::F16, vec![2, 2], &f16).unwrap()),
        ("b", TensorView::new(Dtype::BF16, vec![4], &bf16).unwrap()),
    ];
    let path = dir.join("half.safetensors");
    std::fs::write(&path, safetensors::serialize(views, &None).unwrap()).unwrap();
    let read = read_safetensors(&path).unwrap();
    let expect_f16: Vec<f32> = values
        .iter()
        .map(|v| half::f16::from_f32(*v).to_f32())
        .collect();
    let expect_bf16: Vec<f32> = values
        .iter()
        .map(|v| half::bf16::from_f32(*v).to_f32())
        .collect();
    assert_eq!(read["a"].shape, vec![2, 2]);
    assert_eq!(read["a"].data, expect_f16);
    assert_eq!(read["b"].data, expect_bf16);
    assert_eq!(read["a"].data[1], -2.5);
}

/// A fake hub cache: `<root>/models--org--name/{refs/main, snapshots/<rev>/...}`.
fn fake_cache(name: &str, with_ref: bool) -> (PathBuf, PathBuf) {
    let root = scratch(name);
    let repo = root.join("models--acme--tiny-dinov3");
    let good = repo.join("snapshots").join("abc123");
    std::fs::create_dir_all(&good).unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join("dinov3").join(file), good.join(file)).unwrap();
    }
    if with_ref {
        // A second, incomplete snapshot that refs/main does not point at.
        std::fs::create_dir_all(repo.join("snapshots").join("old000")).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs").join("main"), "abc123\n").unwrap();
    }
    (root, good)
}

#[test]
fn model_id_resolves_through_refs_main_in_the_cache() {
    let (root, good) = fake_cache("cache-ref", true);
    let dir = resolve_snapshot_in("acme/tiny-dinov3", &[root], true).unwrap();
    assert_eq!(dir, good);
    let model = Backbone::<B>::from_snapshot(&dir, &Default::default()).unwrap();
    assert!(matches!(model, Backbone::Dinov3(_)));
}

#[test]
fn model_id_resolves_to_the_only_snapshot_without_refs() {
    let (root, good) = fake_cache("cache-noref", false);
    let other_root = scratch("cache-empty");
    assert_eq!(
        resolve_snapshot_in("acme/tiny-dinov3", &[other_root, root], true).unwrap(),
        good
    );
}

#[test]
fn snapshot_directory_resolves_to_itself() {
    let dir = fixtures().join("vit");
    assert_eq!(
        resolve_snapshot_in(dir.to_str().unwrap(), &[], true).unwrap(),
        dir
    );
}

#[test]
fn missing_snapshot_lists_every_place_searched() {
    let root = scratch("cache-miss");
    let err = resolve_snapshot_in("acme/absent", std::slice::from_ref(&root), false).unwrap_err();
    let message = err.to_string();
    match &err {
        VitError::SnapshotNotFound { searched, .. } => {
            assert_eq!(searched.len(), 2, "{searched:?}");
            assert_eq!(searched[0], PathBuf::from("acme/absent"));
            assert!(searched[1].starts_with(root.join("models--acme--absent")));
        }
        other => panic!("expected SnapshotNotFound, got {other:?}"),
    }
    assert!(message.contains("acme/absent"), "{message}");
    assert!(
        message.contains(&root.join("models--acme--absent").display().to_string()),
        "{message}"
    );
    assert!(message.contains("huggingface-cli download"), "{message}");
}

#[test]
fn dinov3_vits16_shaped_random_config_gives_18x32_grid_at_512x288() {
    // ViT-S/16 layout (registers, RoPE, patch 16) with a small width and depth to stay fast.
    let config = Dinov3Config {
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        num_register_tokens: 4,
        ..Dinov3Config::default()
    };
    let device = Default::default();
    let model = Backbone::<B>::random(&BackboneArch::Dinov3(config), &device).unwrap();
    let out = model
        .try_forward(Tensor::<B, 4>::zeros([1, 3, 288, 512], &device))
        .unwrap();
    assert_eq!(out.patch_grid.dims(), [1, 18, 32, 32]);
    assert_eq!(out.last_hidden_state.dims(), [1, 1 + 4 + 18 * 32, 32]);
    let err = model
        .try_forward(Tensor::<B, 4>::zeros([1, 3, 280, 512], &device))
        .unwrap_err();
    assert!(matches!(err, VitError::Input { .. }), "{err}");
}

#[test]
fn default_dinov3_config_is_vits16() {
    let c = Dinov3Config::default();
    assert_eq!(
        (
            c.hidden_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            c.intermediate_size
        ),
        (384, 12, 6, 1536)
    );
    assert_eq!(
        (c.patch_size, c.rope_theta, c.layer_norm_eps),
        (16, 100.0, 1e-5)
    );
}

#[test]
fn config_without_keys_takes_transformers_defaults() {
    let arch = BackboneArch::from_config_str(
        r#"{"model_type": "dinov3_vit", "use_swiglu_ffn": true}"#,
        Path::new("x"),
    )
    .unwrap();
    let BackboneArch::Dinov3(c) = arch else {
        panic!("not dinov3")
    };
    assert!(c.use_gated_mlp);
    assert_eq!(c.pos_embed_rescale, Some(2.0));
    assert_eq!((c.key_bias, c.query_bias), (false, true));
    let err = BackboneArch::from_config_str(r#"{"model_type": "bert"}"#, Path::new("cfg.json"))
        .unwrap_err();
    assert!(
        err.to_string().contains("bert") && err.to_string().contains("cfg.json"),
        "{err}"
    );
}

#[test]
fn vit_interpolates_position_embeddings_for_other_sizes() {
    let device = Default::default();
    let model = Backbone::<B>::from_snapshot(&fixtures().join("vit"), &device).unwrap();
    let p = model.patch_size();
    let out = model
        .try_forward(Tensor::<B, 4>::ones([1, 3, 3 * p, 6 * p], &device))
        .unwrap();
    assert_eq!(out.patch_grid.dims()[..3], [1, 3, 6]);
}

#[test]
fn bicubic_matrix_matches_pytorch_properties() {
    // Same size: identity.
    let m = bicubic_matrix(5, 5);
    for o in 0..5 {
        for i in 0..5 {
            assert_eq!(m[o * 5 + i], if o == i { 1.0 } else { 0.0 });
        }
    }
    // Rows sum to one (partition of unity), for down- and upsampling.
    for (n_in, n_out) in [(14, 32), (14, 9), (3, 7)] {
        let m = bicubic_matrix(n_in, n_out);
        for o in 0..n_out {
            let sum: f32 = m[o * n_in..(o + 1) * n_in].iter().sum();
            assert!((sum - 1.0).abs() < 1e-6, "{n_in}->{n_out} row {o}: {sum}");
        }
    }
    // PyTorch weights for t = 0.5 with A = -0.75: [-0.09375, 0.59375, 0.59375, -0.09375].
    let m = bicubic_matrix(4, 2); // output 0 samples source 0.5 (indices -1..2, first clamped)
    assert_eq!(&m[0..4], &[-0.09375 + 0.59375, 0.59375, -0.09375, 0.0]);
    // output 1 samples source 2.5 (indices 1..4, last clamped)
    assert_eq!(&m[4..8], &[0.0, -0.09375, 0.59375, 0.59375 - 0.09375]);
}

#[test]
fn rope_augmentation_runs_only_with_autodiff() {
    type A = Autodiff<NdArray<f32>>;
    let dir = fixtures().join("dinov3");
    let device = Default::default();
    let io = read_safetensors(&dir.join("io.safetensors")).unwrap();
    let expected: Tensor<A, 3> = io["last_hidden_state"].to_tensor(&device).unwrap();
    let pixels: Tensor<A, 4> = io["pixel_values"].to_tensor(&device).unwrap();

    // With pos_embed_rescale = 2.0 (set here whatever the fixture's config says), training
    // output must differ.
    let with_aug = edited_snapshot("dinov3", "with-aug", |_| {});
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(with_aug.join("config.json")).unwrap())
            .unwrap();
    config["pos_embed_rescale"] = serde_json::json!(2.0);
    std::fs::write(with_aug.join("config.json"), config.to_string()).unwrap();
    let model = Backbone::<A>::from_snapshot(&with_aug, &device).unwrap();
    // The rescale factor is drawn per forward (log-uniform in [1/2, 2]) from the process-wide
    // RNG that parallel tests share; a draw near 1 changes little (four draws once gave 7.8e-4
    // at most), so look at many draws.
    let diff = (0..24)
        .map(|_| {
            let trained = model.forward(pixels.clone()).last_hidden_state;
            (trained - expected.clone()).abs().max().into_scalar()
        })
        .fold(0.0f32, f32::max);
    assert!(diff > 1e-3, "augmentation had no effect: {diff}");

    // Without augmentation settings, autodiff gives the reference numbers.
    let edited = edited_snapshot("dinov3", "no-aug", |_| {});
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(edited.join("config.json")).unwrap())
            .unwrap();
    for key in ["pos_embed_rescale", "pos_embed_shift", "pos_embed_jitter"] {
        config[key] = serde_json::Value::Null;
    }
    std::fs::write(edited.join("config.json"), config.to_string()).unwrap();
    let model = Backbone::<A>::from_snapshot(&edited, &device).unwrap();
    let out = model.forward(pixels).last_hidden_state;
    let diff: f32 = (out - expected).abs().max().into_scalar();
    assert!(diff < 1e-4, "{diff}");
}

/// Collects Burn's parameter paths (`a.b.c.weight`).
struct Paths(Vec<String>, Vec<String>);

impl<Bk: Backend> ModuleVisitor<Bk> for Paths {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.1.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.1.pop();
    }
    fn visit_float<const D: usize>(&mut self, _param: &Param<Tensor<Bk, D>>) {
        self.0.push(self.1.join("."));
    }
}

#[test]
fn projection_paths_are_hf_paths_and_burn_module_paths() {
    let device = Default::default();
    for (model, first, mlp) in [
        (
            "dinov3",
            "model.layer.0.attention.q_proj",
            "model.layer.0.mlp.up_proj",
        ),
        (
            "dinov3_gated",
            "model.layer.0.attention.q_proj",
            "model.layer.0.mlp.gate_proj",
        ),
        ("vit", "layers.0.attention.q_proj", "layers.0.mlp.fc1"),
    ] {
        let backbone = Backbone::<B>::from_snapshot(&fixtures().join(model), &device).unwrap();
        let paths = backbone.projection_paths();
        assert_eq!(paths[0], first);
        assert!(paths.contains(&mlp.to_string()));
        // Every projection weight exists in the checkpoint under `<path>.weight` (or its
        // published DINOv3 name without `model.`, as newer transformers save it).
        let keys = read_safetensors(&fixtures().join(model).join("model.safetensors")).unwrap();
        for p in &paths {
            let published = p.strip_prefix("model.").unwrap_or(p);
            assert!(
                keys.contains_key(&format!("{p}.weight"))
                    || keys.contains_key(&format!("{published}.weight")),
                "{model}: {p}"
            );
        }
        // And Burn's own module path of that weight is the same (below the enum variant).
        let mut visitor = Paths(Vec::new(), Vec::new());
        backbone.visit(&mut visitor);
        for p in &paths {
            let variant = if model == "vit" { "Vit" } else { "Dinov3" };
            assert!(
                // Projections are `LoraLinear`s: the weight sits in the (enum) dense base.
                visitor
                    .0
                    .contains(&format!("{variant}.{p}.base.Dense.weight")),
                "{model}: {p}"
            );
        }

        // map_projections visits the same paths in order and can fail.
        let mut seen = Vec::new();
        let mapped = backbone
            .map_projections(&mut |path, proj| {
                seen.push(path.to_string());
                Ok::<_, String>(proj)
            })
            .unwrap();
        assert_eq!(seen, paths);
        let err = mapped
            .map_projections(&mut |path, proj| {
                if path.ends_with("v_proj") {
                    Err(path.to_string())
                } else {
                    Ok(proj)
                }
            })
            .unwrap_err();
        assert!(
            err.ends_with("layer.0.attention.v_proj") || err.ends_with("layers.0.attention.v_proj")
        );
    }
}

#[test]
fn invalid_random_configs_are_errors_not_panics() {
    let device = Default::default();
    let bad_heads = Dinov3Config {
        hidden_size: 30,
        num_attention_heads: 4,
        ..Dinov3Config::default()
    };
    let bad_drop = Dinov3Config {
        drop_path_rate: 1.5,
        ..Dinov3Config::default()
    };
    for config in [bad_heads, bad_drop] {
        let err = Backbone::<B>::random(&BackboneArch::Dinov3(config), &device).unwrap_err();
        assert!(matches!(err, VitError::Config { .. }), "{err}");
    }
}

#[test]
fn input_size_is_checked_against_the_snapshots_patch_size_not_the_configs() {
    // The snapshot's own patch size (its `config.json`) and another one in the config, with
    // one input size that only the snapshot's patches tile and one that only the config's do.
    let snapshot = fixtures().join("dinov3");
    let patch = common::config_usize(&snapshot, "patch_size");
    let fits = |[w, h]: [usize; 2], p: usize| w.is_multiple_of(p) && h.is_multiple_of(p);
    let ok_size = common::input_size(&snapshot);
    let other = ((3 * patch / 4).max(2)..=4 * patch)
        .find(|&q| q != patch && !fits(ok_size, q) && !fits([6 * q, 4 * q], patch))
        .expect("a config patch size that tiles neither size");
    let bad_size = [6 * other, 4 * other];
    let cfg = |[w, h]: [usize; 2]| {
        let mut o = common::tiny_model_on(&snapshot);
        o.extend([
            format!("model.backbone.patch_size={other}"),
            format!("data.preprocess.resize=[{w},{h}]"),
        ]);
        tracknet_config::RunConfig::default()
            .with_overrides(&o)
            .unwrap()
    };
    let device = Default::default();
    // Fits the snapshot's patches (not the config's): valid, and the built model agrees.
    let ok = cfg(ok_size);
    ok.validate()
        .expect("the snapshot's patch size decides, not the config's");
    let (model, _) =
        tracknet_vit::model::HeatmapModel::<NdArray>::from_config(&ok.model, &device).unwrap();
    model.check_input_size(ok.data.preprocess.resize).unwrap();
    // Fits the config's patches but not the snapshot's: refused by the model check, naming the
    // key and the size.
    let bad = cfg(bad_size);
    bad.validate().unwrap();
    let err = model
        .check_input_size(bad.data.preprocess.resize)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("data.preprocess.resize") && err.contains(&format!("patch size {patch}")),
        "{err}"
    );
    // Without a snapshot the config's patch size is the model's, checked at validation.
    let random = tracknet_config::RunConfig::default().with_overrides(&[
        "model.backbone.pretrained=false".into(),
        "model.pretrained_model_name=null".into(),
        "model.heatmap.size=[12,8]".into(),
        "data.preprocess.resize=[72,48]".into(),
    ]);
    let err = match random.and_then(|c| c.validate().map(|_| c)) {
        Ok(_) => panic!("72×48 does not fit 16-pixel patches"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("data.preprocess.resize"), "{err}");
}
