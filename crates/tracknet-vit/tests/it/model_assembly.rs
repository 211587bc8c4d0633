//! The QLoRA heatmap model assembled from the seed configs: targeting, 4-bit storage, what
//! trains (PEFT's accounting), bias modes, `modules_to_save`, and the output shape.
//!
//! No pretrained snapshot here: `model.backbone.pretrained=false` builds the DINOv3 backbone
//! from the architecture fields, shrunk to 2 layers (hidden 384, 6 heads, MLP 1536, 4 register
//! tokens as ViT-S/16) to keep the test fast.

use std::collections::BTreeSet;
use std::path::PathBuf;

use burn::backend::{Autodiff, NdArray};
use burn::module::{AutodiffModule, Module};
use burn::prelude::*;
use burn::tensor::Distribution;
use tracknet_config::{RunConfig, TargetModules};
use tracknet_lora::{LoraLinear, PathVisitor};
use tracknet_vit::model::{HeatmapModel, ModelError};

type AD = Autodiff<NdArray<f32>>;

const LAYERS: usize = 2;
const HIDDEN: usize = 384;
const MLP: usize = 1536;
const R: usize = 16;

fn configs() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs"))
}

/// `vit_qlora_heatmap.yaml` + the seed data and training files, with `overrides`.
fn load(overrides: &[&str]) -> RunConfig {
    let c = configs();
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    RunConfig::load_composed(
        &c.join("model/vit_qlora_heatmap.yaml"),
        &c.join("data/tracknet.yaml"),
        &c.join("training/default.yaml"),
        &overrides,
    )
    .unwrap_or_else(|e| panic!("config does not load: {e}"))
}

/// No snapshot, a small architecture (the seed's widths, 2 layers).
const SMALL: [&str; 7] = [
    "model.backbone.pretrained=false",
    "model.backbone.num_hidden_layers=2",
    "model.backbone.hidden_size=384",
    "model.backbone.num_attention_heads=6",
    "model.backbone.intermediate_size=1536",
    "model.backbone.num_register_tokens=4",
    "model.decoder.channels=[384,256,128,64]",
];

fn small(extra: &[&str]) -> RunConfig {
    let all: Vec<&str> = SMALL.iter().chain(extra).copied().collect();
    load(&all)
}

fn build(extra: &[&str]) -> HeatmapModel<AD> {
    let cfg = small(extra);
    let (model, report) = HeatmapModel::<AD>::from_config(&cfg.model, &Default::default())
        .unwrap_or_else(|e| panic!("model does not build: {e}"));
    assert_eq!(
        report.lora_targets.len(),
        LAYERS * 6,
        "{:?}",
        report.lora_targets
    );
    model
}

/// Every float parameter: `(path, numel, trainable)`.
fn params<M: Module<AD>>(m: &M) -> Vec<(String, usize, bool)> {
    let mut out = Vec::new();
    m.visit(&mut PathVisitor::new(|p: &str, n: usize, t: bool| {
        out.push((p.to_string(), n, t))
    }));
    out
}

fn is_adapter(path: &str) -> bool {
    path.contains(".lora_a.") || path.contains(".lora_b.")
}

/// Trainable backbone parameters that are not adapters.
fn trainable_backbone_non_adapter(model: &HeatmapModel<AD>) -> BTreeSet<String> {
    params(model)
        .into_iter()
        .filter(|(p, _, t)| *t && p.starts_with("backbone.") && !is_adapter(p))
        .map(|(p, _, _)| p)
        .collect()
}

#[test]
fn original_target_names_fail_on_dinov3_like_peft() {
    // The seed config keeps the original project's `["query", "key", "value", "dense"]`,
    // which name no DINOv3 module: PEFT raises, and so do we (naming targets and paths).
    let cfg = small(&[]);
    assert_eq!(
        cfg.model.lora.target_modules,
        TargetModules::List(vec![
            "query".into(),
            "key".into(),
            "value".into(),
            "dense".into()
        ])
    );
    let err = HeatmapModel::<NdArray<f32>>::from_config(&cfg.model, &Default::default())
        .expect_err("the original targets must not silently adapt nothing");
    assert!(matches!(err, ModelError::Lora(_)), "{err:?}");
    let msg = err.to_string();
    println!("{msg}");
    assert!(msg.contains("lora.target_modules"), "{msg}");
    assert!(
        msg.contains(r#"["query", "key", "value", "dense"]"#),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("{} linear layers", LAYERS * 6)),
        "{msg}"
    );
    assert!(msg.contains("model.layer.0.attention.q_proj"), "{msg}");
    assert!(msg.contains("model.layer.0.mlp.up_proj"), "{msg}");
}

#[test]
fn qlora_model_is_4bit_adapted_and_counts_match_peft() {
    let model = build(&["model.lora.target_modules=null"]);

    // Every projection: 4-bit base, rank-16 adapter.
    let mem = model.memory_report();
    println!("{mem}");
    assert_eq!(mem.layers.len(), LAYERS * 6);
    assert!(mem.layers.iter().all(|l| l.quantized), "{mem}");
    let bits = mem.quantized_bits_per_param();
    println!("bits per 4-bit weight (codes + scales + shared code books): {bits:.4}");
    assert!(bits <= 4.13 && bits > 4.0, "{bits}");
    let weights_4bit = LAYERS * (4 * HIDDEN * HIDDEN + 2 * HIDDEN * MLP);
    assert_eq!(mem.quantized_params(), weights_4bit);
    assert_eq!(model.quantized_weights(), weights_4bit);
    let mut ranks = Vec::new();
    let _ = model.backbone.clone().map_projections(&mut |path: &str,
                                                         p: LoraLinear<AD>|
     -> Result<_, ()> {
        assert!(p.base.is_quantized(), "{path}");
        ranks.push((path.to_string(), p.rank()));
        Ok(p)
    });
    assert_eq!(ranks.len(), LAYERS * 6);
    assert!(ranks.iter().all(|(_, r)| *r == Some(R)), "{ranks:?}");

    // PEFT's accounting, by hand: A + B = r·(in + out) per projection.
    let lora_per_layer = 4 * R * (HIDDEN + HIDDEN) + 2 * R * (HIDDEN + MLP);
    let lora = LAYERS * lora_per_layer;
    let decoder_head = model.decoder.num_params() + model.head.num_params();
    let report = model.param_report();
    println!("{report}");
    let frozen_outside: Vec<(String, usize)> = params(&model)
        .into_iter()
        .filter(|(p, _, t)| !t && !p.starts_with("backbone."))
        .map(|(p, n, _)| (p, n))
        .collect();
    assert!(
        frozen_outside.is_empty(),
        "decoder/head params that do not train: {frozen_outside:?}"
    );
    assert_eq!(report.trainable, lora + decoder_head);

    // bias: none → nothing of the backbone trains but the adapters.
    assert!(
        trainable_backbone_non_adapter(&model).is_empty(),
        "{:?}",
        trainable_backbone_non_adapter(&model)
    );
    let all = params(&model);
    assert!(
        all.iter()
            .filter(|(p, _, _)| !p.starts_with("backbone."))
            .all(|(_, _, t)| *t),
        "decoder and head train fully"
    );

    // Frozen backbone parameters by hand (the 4-bit weights are not parameters):
    // CLS + 4 registers + patch conv (weight, bias); per layer 2 LayerNorms (γ, β), 2 LayerScales,
    // biases of q, v, o (k has none), up, down; final LayerNorm.
    let embeddings = HIDDEN + 4 * HIDDEN + HIDDEN * 3 * 16 * 16 + HIDDEN;
    let per_layer = 2 * 2 * HIDDEN + 2 * HIDDEN + 3 * HIDDEN + MLP + HIDDEN;
    let frozen = embeddings + LAYERS * per_layer + 2 * HIDDEN;
    let frozen_seen: usize = all.iter().filter(|(_, _, t)| !t).map(|(_, n, _)| n).sum();
    assert_eq!(frozen_seen, frozen);
    assert_eq!(report.all, report.trainable + frozen + weights_4bit);
}

#[test]
fn qlora_model_forward_gives_the_seed_heatmap_size() {
    let model = build(&["model.lora.target_modules=null"]);
    // The seed resolution (data.preprocess.resize [512, 288]) gives the seed heatmap size.
    let x = Tensor::<AD, 4>::random(
        [1, 3, 288, 512],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &Default::default(),
    );
    let y = model.try_forward(x).unwrap();
    assert_eq!(y.dims(), [1, 1, 144, 256]);
    assert!(y.is_finite().all().into_scalar().to_bool());
    // A wrong size is a clear error, not a panic.
    let bad = Tensor::<AD, 4>::zeros([1, 3, 280, 512], &Default::default());
    let msg = model.try_forward(bad).unwrap_err().to_string();
    assert!(msg.contains("patch size 16"), "{msg}");
}

fn per_layer_paths(names: &[&str]) -> BTreeSet<String> {
    (0..LAYERS)
        .flat_map(|i| {
            names
                .iter()
                .map(move |n| format!("backbone.model.layer.{i}.{n}"))
        })
        .collect()
}

#[test]
fn bias_all_trains_every_backbone_bias_including_layernorm() {
    // PEFT's bias="all": every parameter whose name contains "bias" — the projections',
    // the patch convolution's and LayerNorm's (which Burn calls `beta`).
    let model = build(&["model.lora.target_modules=null", "model.lora.bias=all"]);
    let mut want = per_layer_paths(&[
        "attention.q_proj.base.bias",
        "attention.v_proj.base.bias",
        "attention.o_proj.base.bias",
        "mlp.up_proj.base.bias",
        "mlp.down_proj.base.bias",
        "norm1.beta",
        "norm2.beta",
    ]);
    want.insert("backbone.embeddings.patch_embeddings.bias".into());
    want.insert("backbone.norm.beta".into());
    assert_eq!(trainable_backbone_non_adapter(&model), want);
}

#[test]
fn bias_lora_only_trains_only_biases_of_adapted_layers() {
    let model = build_with_targets(&[
        "model.lora.target_modules=[q_proj,v_proj]",
        "model.lora.bias=lora_only",
    ]);
    let want = per_layer_paths(&["attention.q_proj.base.bias", "attention.v_proj.base.bias"]);
    assert_eq!(trainable_backbone_non_adapter(&model), want);
}

fn build_with_targets(extra: &[&str]) -> HeatmapModel<AD> {
    let cfg = small(extra);
    let (model, report) = HeatmapModel::<AD>::from_config(&cfg.model, &Default::default())
        .unwrap_or_else(|e| panic!("model does not build: {e}"));
    assert_eq!(
        report.lora_targets.len(),
        LAYERS * 2,
        "{:?}",
        report.lora_targets
    );
    model
}

#[test]
fn modules_to_save_makes_the_final_norm_trainable() {
    let model = build(&[
        "model.lora.target_modules=null",
        "model.lora.modules_to_save=[norm]",
    ]);
    let want: BTreeSet<String> = ["backbone.norm.gamma", "backbone.norm.beta"]
        .into_iter()
        .map(String::from)
        .collect();
    // Only the final norm: `norm1` / `norm2` are other modules (PEFT's suffix rule).
    assert_eq!(trainable_backbone_non_adapter(&model), want);
    // The report counts them: adapters + what trains outside the backbone + the final norm
    // (the decoder/head accounting itself is checked in the test above).
    let report = model.param_report();
    let lora = LAYERS * (4 * R * (2 * HIDDEN) + 2 * R * (HIDDEN + MLP));
    let outside: usize = params(&model)
        .iter()
        .filter(|(p, _, t)| *t && !p.starts_with("backbone."))
        .map(|(_, n, _)| n)
        .sum();
    assert_eq!(report.trainable, lora + outside + 2 * HIDDEN);
}

#[test]
fn gated_mlp_qlora_adapter_survives_save_and_load() {
    use tracknet_lora::peft::{AdapterConfig, AdapterTensors, load_adapter, save_adapter};
    // SwiGLU MLP (the gated DINOv3 variants), 4-bit base, adapters on gate_proj too.
    let cfg = small(&[
        "model.backbone.use_gated_mlp=true",
        "model.lora.target_modules=[q_proj,gate_proj,up_proj,down_proj]",
        "model.lora.init_lora_weights=false",
    ]);
    let device = Default::default();
    let (model, report) = HeatmapModel::<AD>::from_config(&cfg.model, &device).unwrap();
    assert_eq!(report.lora_targets.len(), LAYERS * 4);
    assert!(
        report
            .lora_targets
            .iter()
            .any(|t| t.ends_with("mlp.gate_proj"))
    );
    // Read before the model ever ran: the values must be the ones the model computes with
    // (Burn's lazily initialised parameters must not be drawn separately in a clone).
    let adapters: Vec<AdapterTensors> = model
        .adapters()
        .into_iter()
        .map(|(p, a, b)| AdapterTensors::from_tensors(&p, a, b))
        .collect();
    assert_eq!(adapters.len(), LAYERS * 4);
    let dir = std::env::temp_dir().join(format!("tracknet-gated-adapter-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let paths: Vec<String> = adapters.iter().map(|a| a.path.clone()).collect();
    let settings = tracknet_vit::model::lora_settings(&cfg.model);
    save_adapter(
        &dir,
        &AdapterConfig::from_settings(&settings, &paths, None),
        &adapters,
        &Default::default(),
    )
    .unwrap();
    let loaded = load_adapter(&dir).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let dims = |p: &str| {
        model
            .projection_infos()
            .into_iter()
            .find(|i| i.path == p)
            .map(|i| (i.in_features, i.out_features))
    };
    let assigned = loaded.assign(&report.lora_targets, &dims).unwrap();
    assert_eq!(assigned.len(), LAYERS * 4);
    for a in &adapters {
        assert_eq!(assigned[&a.path], a, "{}", a.path);
    }
    let tensors = assigned
        .iter()
        .map(|(p, t)| (p.clone(), t.to_tensors::<AD>(&device)))
        .collect();
    // Inference mode (no dropout): the same adapters give the same output.
    let images = Tensor::<NdArray<f32>, 4>::random(
        [1, 3, 288, 512],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let before = model.valid().forward(images.clone());
    let reloaded = model.set_adapters(&tensors).unwrap();
    let diff: f32 = (reloaded.valid().forward(images) - before)
        .abs()
        .max()
        .into_scalar();
    assert_eq!(diff, 0.0);
}

#[test]
fn sequence_input_inflates_the_patch_embedding_so_a_still_sequence_gives_the_single_frame_output() {
    let cfg = small(&["model.lora.target_modules=null"]);
    let device = Default::default();
    type B = NdArray<f32>;
    // The model built for 3 frames: a 9-channel embedding, inflated, and said so.
    let (built, report) = HeatmapModel::<B>::from_config_frames(&cfg.model, 3, &device).unwrap();
    let weight = |m: &HeatmapModel<B>| match &m.backbone {
        tracknet_vit::backbone::Backbone::Dinov3(d) => d.embeddings.patch_embeddings.weight.val(),
        tracknet_vit::backbone::Backbone::Vit(v) => {
            v.embeddings.patch_embeddings.projection.weight.val()
        }
        tracknet_vit::backbone::Backbone::Dinov2(v) => {
            v.embeddings.patch_embeddings.projection.weight.val()
        }
    };
    assert_eq!(weight(&built).dims(), [HIDDEN, 9, 16, 16]);
    let note = report
        .input_note
        .expect("a multi-frame build says how it takes the frames");
    assert!(
        note.contains("[384, 9, 16, 16]") && note.contains("inflated"),
        "{note}"
    );
    // Inflating a single-frame model (no RNG involved: the same weights otherwise).
    let (one, _) = HeatmapModel::<B>::from_config(&cfg.model, &device).unwrap();
    let mut three = one.clone();
    three.backbone = three.backbone.with_input_frames(3).unwrap();
    let (w1, w3) = (weight(&one), weight(&three));
    assert_eq!(w3.dims(), [HIDDEN, 9, 16, 16]);
    // [hidden, 9, p, p]: the 3-channel kernel repeated per frame and divided by 3.
    for f in 0..3 {
        let part = w3.clone().narrow(1, 3 * f, 3);
        assert_eq!(
            part.into_data().to_vec::<f32>().unwrap(),
            w1.clone()
                .div_scalar(3.0)
                .into_data()
                .to_vec::<f32>()
                .unwrap()
        );
    }
    // A still sequence (the same frame three times) gives the single-frame heatmap.
    let x = Tensor::<B, 4>::random([1, 3, 32, 48], Distribution::Normal(0.0, 1.0), &device);
    let a = one.forward(x.clone());
    let b = three.forward(Tensor::cat(vec![x.clone(), x.clone(), x], 1));
    let diff = (a.clone() - b).abs().max().into_scalar();
    let scale = a.clone().abs().max().into_scalar();
    assert!(
        diff <= 1e-5 * scale.max(1.0),
        "max diff {diff} (scale {scale})"
    );
    // A moving sequence does not (the frames are not averaged away).
    let y = Tensor::<B, 4>::random([1, 9, 32, 48], Distribution::Normal(0.0, 1.0), &device);
    let c = three.forward(y);
    assert!((a - c).abs().max().into_scalar() > 1e-3);
    // A 3-channel input is refused by the 3-frame model with a clear error, not a panic.
    let err = three
        .try_forward(Tensor::zeros([1, 3, 32, 48], &device))
        .unwrap_err();
    assert!(err.to_string().contains("expected 9 channels"), "{err}");
    // An already 9-channel backbone is kept as it is; any other width is refused.
    let kept = three.backbone.clone().with_input_frames(3).unwrap();
    assert_eq!(kept.num_channels(), 9);
    let err = three.backbone.clone().with_input_frames(2).unwrap_err();
    assert!(err.to_string().contains("data.sequence.length"), "{err}");
    // The HF export of a multi-frame backbone records `num_channels: 9` and loads back as one.
    let dir = std::env::temp_dir().join(format!("tracknet-seq-export-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let full = small(&[
        "model.lora.enabled=false",
        "model.quantization.enabled=false",
    ]);
    let (dense, _) = HeatmapModel::<B>::from_config_frames(&full.model, 3, &device).unwrap();
    tracknet_vit::export::save_snapshot(
        &dense.backbone,
        &tracknet_vit::model::arch_json(&full.model),
        &Default::default(),
        &dir,
    )
    .unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(json["num_channels"], 9);
    let back = tracknet_vit::backbone::Backbone::<B>::from_snapshot(&dir, &device).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(back.num_channels(), 9);
    assert_eq!(back.with_input_frames(3).unwrap().num_channels(), 9);
}

#[test]
fn sequence_patch_embedding_trains_while_the_base_backbone_stays_frozen() {
    let device = Default::default();
    let embedding: BTreeSet<String> = [
        "backbone.embeddings.patch_embeddings.weight",
        "backbone.embeddings.patch_embeddings.bias",
    ]
    .map(String::from)
    .into();
    // QLoRA: adapters and the multi-frame embedding train, nothing else in the backbone.
    let cfg = small(&["model.lora.target_modules=null"]);
    let (m, _) = HeatmapModel::<AD>::from_config_frames(&cfg.model, 3, &device).unwrap();
    assert_eq!(trainable_backbone_non_adapter(&m), embedding);
    let (m1, _) = HeatmapModel::<AD>::from_config(&cfg.model, &device).unwrap();
    assert!(trainable_backbone_non_adapter(&m1).is_empty());
    // Full fine-tuning held back by the freeze schedule: the embedding still trains.
    let cfg = small(&[
        "model.lora.enabled=false",
        "model.quantization.enabled=false",
        "model.backbone.freeze=true",
    ]);
    let (m, _) = HeatmapModel::<AD>::from_config_frames(&cfg.model, 3, &device).unwrap();
    assert_eq!(trainable_backbone_non_adapter(&m), embedding);
    let m = m.set_backbone_base_trainable(true);
    assert!(trainable_backbone_non_adapter(&m).len() > 2);
    let m = m.set_backbone_base_trainable(false);
    assert_eq!(trainable_backbone_non_adapter(&m), embedding);
}

#[test]
fn modules_to_save_reach_the_decoder_and_head_and_go_into_the_adapter() {
    // `[norm, head]`: the backbone's final norm by PEFT's rule, our head by its model-root name;
    // both are written with the adapter (PEFT names, PyTorch layout) and read back.
    let model = build(&[
        "model.lora.target_modules=null",
        "model.lora.modules_to_save=[norm,head]",
        "model.lora.bias=lora_only",
    ]);
    let cfg = small(&[
        "model.lora.target_modules=null",
        "model.lora.modules_to_save=[norm,head]",
        "model.lora.bias=lora_only",
    ]);
    let settings = tracknet_vit::model::lora_settings(&cfg.model);
    let extra = model.adapter_extras(&settings);
    let keys: BTreeSet<&str> = extra.keys().map(String::as_str).collect();
    assert!(
        keys.contains("norm.weight") && keys.contains("norm.bias"),
        "{keys:?}"
    );
    assert!(
        keys.contains("head.conv.weight") && keys.contains("head.conv.bias"),
        "{keys:?}"
    );
    // lora_only: the adapted projections' biases, under PEFT's wrapper name.
    assert!(
        keys.contains("model.layer.0.attention.q_proj.base_layer.bias"),
        "{keys:?}"
    );
    assert!(
        !keys
            .iter()
            .any(|k| k.contains("norm1") || k.starts_with("decoder.")),
        "{keys:?}"
    );
    // Read back into a model with other values: the saved ones come back exactly.
    let other = build(&[
        "model.lora.target_modules=null",
        "model.lora.modules_to_save=[norm,head]",
        "model.lora.bias=lora_only",
        "training.seed=99",
    ]);
    let mut changed = extra.clone();
    for (_, v) in changed.values_mut() {
        v.iter_mut().for_each(|x| *x += 0.5);
    }
    let reloaded = other
        .set_adapter_extras(&changed, std::path::Path::new("adapter_model.safetensors"))
        .unwrap();
    let back = reloaded.adapter_extras(&settings);
    assert_eq!(back, changed);
    // A name that matches no module is refused, naming the key.
    let cfg = small(&[
        "model.lora.target_modules=null",
        "model.lora.modules_to_save=[classifier]",
    ]);
    let err = HeatmapModel::<AD>::from_config(&cfg.model, &Default::default()).unwrap_err();
    assert!(
        err.to_string().contains("model.lora.modules_to_save")
            && err.to_string().contains("classifier"),
        "{err}"
    );
    // An extra tensor the model has no parameter for is named.
    let mut bad = extra.clone();
    bad.insert(
        "model.layer.9.norm1.bias".into(),
        (vec![HIDDEN], vec![0.0; HIDDEN]),
    );
    let err = model
        .set_adapter_extras(&bad, std::path::Path::new("adapter_model.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.layer.9.norm1.bias"), "{err}");
}
