//! Each architecture / decoder / LoRA key of `model:` reaches the model it builds: the value
//! changes the built shapes, initial values or — with identical weights copied in — the output.

use burn::backend::{Autodiff, NdArray};
use burn::module::AutodiffModule;
use burn::prelude::*;
use tracknet_config::RunConfig;
use tracknet_lora::params::{collect_params, load_params};
use tracknet_vit::backbone::Backbone;
use tracknet_vit::model::HeatmapModel;

type B = NdArray<f32>;
type AD = Autodiff<B>;

/// A tiny random-init DINOv3 heatmap model, LoRA and quantization off, with `extra` overrides.
fn cfg(extra: &[&str]) -> RunConfig {
    let mut ov: Vec<String> = [
        "model.backbone.pretrained=false",
        "model.pretrained_model_name=null",
        "model.backbone.hidden_size=32",
        "model.backbone.num_hidden_layers=1",
        "model.backbone.num_attention_heads=2",
        "model.backbone.intermediate_size=64",
        "model.backbone.num_register_tokens=2",
        "model.decoder.channels=[32,16]",
        "model.decoder.upsample=[2]",
        "model.heatmap.size=[8,4]",
        "data.preprocess.resize=[64,32]",
    ]
    .map(String::from)
    .to_vec();
    ov.extend(extra.iter().map(|s| s.to_string()));
    RunConfig::default().with_overrides(&ov).unwrap()
}

fn build<Bk: tracknet_vit::ModelBackend>(extra: &[&str]) -> HeatmapModel<Bk> {
    HeatmapModel::<Bk>::from_config(&cfg(extra).model, &Default::default())
        .unwrap()
        .0
}

/// `dst` with every parameter of `src` copied in (same shapes required).
fn with_weights_of(dst: HeatmapModel<B>, src: &HeatmapModel<B>) -> HeatmapModel<B> {
    let all = collect_params::<B, _>(src, |_, _| true);
    load_params(dst, &all, &|_| false).unwrap()
}

fn input<Bk: Backend>() -> Tensor<Bk, 4> {
    let v: Vec<f32> = (0..3 * 32 * 64)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    Tensor::<Bk, 1>::from_floats(v.as_slice(), &Default::default()).reshape([1, 3, 32, 64])
}

fn heat<Bk: tracknet_vit::ModelBackend>(m: &HeatmapModel<Bk>) -> Vec<f32> {
    m.forward(input())
        .into_data()
        .convert::<f32>()
        .into_vec()
        .unwrap()
}

fn tokens<Bk: tracknet_vit::ModelBackend>(m: &HeatmapModel<Bk>) -> Vec<f32> {
    m.backbone
        .forward(input())
        .last_hidden_state
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn shape_of(m: &HeatmapModel<B>, path: &str) -> Vec<usize> {
    collect_params::<B, _>(m, |p, _| p == path)
        .remove(path)
        .unwrap_or_else(|| panic!("no parameter {path}"))
        .0
}

#[test]
fn attention_heads_rope_theta_and_layer_norm_eps_change_the_output_with_the_same_weights() {
    let base = build::<B>(&[]);
    let same = with_weights_of(build(&[]), &base);
    assert_eq!(
        max_diff(&tokens(&base), &tokens(&same)),
        0.0,
        "copying is exact"
    );
    for key in [
        "model.backbone.num_attention_heads=4",
        "model.backbone.rope_theta=10000.0",
        "model.backbone.layer_norm_eps=1.0",
    ] {
        let other = with_weights_of(build(&[key]), &base);
        let d = max_diff(&tokens(&base), &tokens(&other));
        assert!(d > 1e-4, "{key}: output unchanged ({d})");
    }
}

#[test]
fn rope_augmentation_off_trains_on_the_inference_coordinates() {
    let device = Default::default();
    // Training mode (autodiff on) against the same weights without autodiff. The draws come
    // from a seeded stream: the backend's generator is shared with the tests running beside
    // this one, and some of its draws (a shift near 0, a rescale near 1) move the tokens by
    // less than the bound below (6.4e-5 was seen).
    let train_vs_infer = |m: &HeatmapModel<AD>| {
        tracknet_lora::rng::with_stream(7, || max_diff(&tokens(m), &tokens(&m.valid())))
    };
    let on = build::<AD>(&[]);
    match &on.backbone {
        Backbone::Dinov3(d) => assert!(d.rope_augments(), "transformers' default rescale 2.0"),
        Backbone::Vit(_) | Backbone::Dinov2(_) => panic!("expected DINOv3"),
    }
    let d = train_vs_infer(&on);
    assert!(d > 1e-4, "augmented training coordinates: {d}");
    let off = build::<AD>(&["model.backbone.rope_augmentation=false"]);
    assert_eq!(train_vs_infer(&off), 0.0);
    // ViT has no RoPE: the key is named in a warning.
    let (_, report) = HeatmapModel::<B>::from_config(
        &cfg(&[
            "model.backbone.family=vit",
            "model.backbone.num_register_tokens=0",
            "model.backbone.rope_augmentation=false",
        ])
        .model,
        &device,
    )
    .unwrap();
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("model.backbone.rope_augmentation")),
        "{:?}",
        report.warnings
    );
}

#[test]
fn decoder_activation_changes_the_heatmap_with_the_same_weights() {
    let gelu = build::<B>(&[]);
    let relu = with_weights_of(build(&["model.decoder.activation=relu"]), &gelu);
    assert!(max_diff(&heat(&gelu), &heat(&relu)) > 1e-6);
}

#[test]
fn architecture_sizes_and_initial_values_follow_the_keys() {
    // intermediate_size: the MLP widths.
    let m = build::<B>(&["model.backbone.intermediate_size=48"]);
    assert_eq!(
        shape_of(&m, "backbone.model.layer.0.mlp.up_proj.base.weight"),
        [32, 48]
    );
    // num_register_tokens: 1 CLS + R registers + patches in the token sequence.
    let m = build::<B>(&["model.backbone.num_register_tokens=3"]);
    let grid = (32 / 16) * (64 / 16);
    assert_eq!(tokens(&m).len(), (1 + 3 + grid) * 32);
    // patch_size: the patch kernel and the grid.
    let m = build::<B>(&["model.backbone.patch_size=8"]);
    assert_eq!(
        shape_of(&m, "backbone.embeddings.patch_embeddings.weight"),
        [32, 3, 8, 8]
    );
    assert_eq!(tokens(&m).len(), (1 + 2 + 4 * 8) * 32);
    // layerscale_value: LayerScale's initial value.
    let m = build::<B>(&["model.backbone.layerscale_value=0.25"]);
    let ls = collect_params::<B, _>(&m, |p, _| p.ends_with("layer_scale1.lambda1"));
    let (_, values) = ls.values().next().unwrap();
    assert!(values.iter().all(|&v| v == 0.25), "{values:?}");
    // family: classic ViT.
    let m = build::<B>(&[
        "model.backbone.family=vit",
        "model.backbone.num_register_tokens=0",
    ]);
    assert!(matches!(m.backbone, Backbone::Vit(_)));
    // family: DINOv2, with registers when it has register tokens, SwiGLU from use_gated_mlp.
    let m = build::<B>(&[
        "model.backbone.family=dinov2",
        "model.backbone.num_register_tokens=0",
    ]);
    assert!(matches!(m.backbone, Backbone::Dinov2(_)));
    assert_eq!(tokens(&m).len(), (1 + grid) * 32);
    assert_eq!(
        shape_of(&m, "backbone.encoder.layer.0.mlp.fc1.base.weight"),
        [32, 64]
    );
    let m = build::<B>(&[
        "model.backbone.family=dinov2",
        "model.backbone.num_register_tokens=3",
        "model.backbone.use_gated_mlp=true",
    ]);
    assert_eq!(tokens(&m).len(), (1 + 3 + grid) * 32);
    // SwiGLU keeps two thirds of the MLP width, rounded up to a multiple of 8 (64 → 48).
    assert_eq!(
        shape_of(&m, "backbone.encoder.layer.0.mlp.gate_proj.base.weight"),
        [32, 48]
    );
}

#[test]
fn backbone_freeze_decides_whether_a_full_fine_tuning_trains_the_backbone() {
    let trainable = |freeze: &str| {
        let m = build::<AD>(&[freeze]);
        collect_params::<AD, _>(&m, |p, t| t && p.starts_with("backbone.")).len()
    };
    assert_eq!(trainable("model.backbone.freeze=true"), 0);
    assert!(trainable("model.backbone.freeze=false") > 10);
}

#[test]
fn decoder_dropout_and_lora_dropout_act_in_training_only() {
    // Autodiff (training): two forwards draw two masks; without dropout they agree.
    // Classic ViT: DINOv3's RoPE coordinate rescaling (transformers' train-mode augmentation)
    // would make any two training forwards differ.
    let vit = [
        "model.backbone.family=vit",
        "model.backbone.num_register_tokens=0",
    ];
    let differs = |extra: &[&str]| {
        let m = build::<AD>(&[&vit[..], extra].concat());
        let (a, b) = (tokens(&m), tokens(&m));
        let (ha, hb) = (heat(&m), heat(&m));
        max_diff(&a, &b) > 1e-3 || max_diff(&ha, &hb) > 1e-4
    };
    assert!(!differs(&[]));
    assert!(differs(&["model.decoder.dropout=0.5"]));
    let lora = [
        "model.lora.enabled=true",
        "model.lora.target_modules=null",
        "model.lora.init_lora_weights=false",
    ];
    assert!(!differs(
        &[&lora[..], &["model.lora.lora_dropout=0.0"]].concat()
    ));
    assert!(differs(
        &[&lora[..], &["model.lora.lora_dropout=0.5"]].concat()
    ));
    // Inference backend: deterministic whatever the rate.
    let m = build::<B>(
        &[
            &lora[..],
            &["model.lora.lora_dropout=0.5", "model.decoder.dropout=0.5"],
        ]
        .concat(),
    );
    assert!(max_diff(&heat(&m), &heat(&m)) < 1e-5);
}

/// Every parameter's gradient (module visiting order) after one forward + backward of `m`,
/// plain or with recomputation per segment.
fn param_grads<A: burn::tensor::backend::AutodiffBackend + tracknet_vit::ModelBackend>(
    m: &HeatmapModel<A>,
    recompute: bool,
) -> (f32, Vec<Vec<f32>>) {
    struct Grads<'a> {
        grads: &'a burn::optim::GradientsParams,
        out: Vec<Vec<f32>>,
    }
    impl<A: burn::tensor::backend::AutodiffBackend> burn::module::ModuleVisitor<A> for Grads<'_> {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<A, D>>) {
            if let Some(g) = self.grads.get::<A::InnerBackend, D>(p.id) {
                self.out
                    .push(g.into_data().convert::<f32>().into_vec().unwrap());
            }
        }
    }
    let (loss, grads) = if recompute {
        m.recomputed_grads(input(), |y| y.powi_scalar(2).mean())
    } else {
        let loss = m.forward(input()).powi_scalar(2).mean();
        let grads = burn::optim::GradientsParams::from_grads(loss.clone().backward(), m);
        (loss, grads)
    };
    let mut v = Grads {
        grads: &grads,
        out: Vec::new(),
    };
    m.visit(&mut v);
    (loss.into_scalar().elem(), v.out)
}

/// `training.gradient_checkpointing` recomputes per segment (each block, each decoder stage):
/// the loss and every gradient must be the plain backward's (≤ 1e-5 relative), for a full
/// fine-tuning, LoRA on an f32 base and LoRA on a 4-bit base, a GroupNorm and a BatchNorm
/// decoder, DINOv3, DINOv2 (with registers and SwiGLU) and ViT.
#[test]
fn recomputation_gives_the_same_gradients_for_full_lora_and_4bit() {
    use tracknet_vit::model::{Segment, lora_settings, quant_spec};
    let device = Default::default();
    let deep = [
        "model.backbone.rope_augmentation=false",
        "model.lora.lora_dropout=0.0",
        "model.backbone.num_hidden_layers=3",
        "model.decoder.channels=[32,16,8]",
        "model.decoder.upsample=[2,2]",
    ];
    let dinov2_registers_swiglu: &[&str] = &[
        "model.backbone.family=dinov2",
        "model.backbone.use_gated_mlp=true",
    ];
    let cases: [(&[&str], bool, bool); 8] = [
        (&["model.backbone.family=dinov2"], false, false),
        (dinov2_registers_swiglu, true, true),
        (&[], false, false),
        (&[], true, false),
        (&[], true, true),
        (&["model.decoder.norm=batch"], false, false),
        (&["model.decoder.norm=batch"], true, true),
        (
            &[
                "model.backbone.family=vit",
                "model.backbone.num_register_tokens=0",
            ],
            true,
            false,
        ),
    ];
    for (extra, lora, quant) in cases {
        // RoPE augmentation off and no dropout: the forward draws nothing.
        let mut keys = [&deep[..], extra].concat();
        if !lora {
            keys.push("model.backbone.freeze=false");
        }
        let c = cfg(&keys).model;
        let mut m = build::<AD>(&keys);
        if quant {
            let spec = tracknet_quant::QuantSpec {
                double_quant: true,
                ..quant_spec(&c)
            };
            m = m.quantize_backbone(&spec, &[], &device).unwrap().0;
        }
        if lora {
            m = m.add_lora(&lora_settings(&c), &device).unwrap().0;
        }
        let what = format!("{extra:?}, lora {lora}, 4-bit {quant}");
        let segments = m.segments();
        let stages = segments
            .iter()
            .filter(|s| matches!(s, Segment::Stage(_)))
            .count();
        let batch_norm = extra.contains(&"model.decoder.norm=batch");
        assert_eq!(
            segments.len(),
            if batch_norm {
                1 + 3 + 1
            } else {
                1 + 3 + 1 + 2 + 1
            },
            "{what}: {segments:?}"
        );
        assert_eq!(stages, if batch_norm { 0 } else { 2 }, "{what}");
        let (plain_loss, plain) = param_grads(&m, false);
        let (loss, recomputed) = param_grads(&m, true);
        assert_eq!(plain_loss, loss, "{what}: the loss");
        assert!(plain.len() > 2, "{what}: {} gradients", plain.len());
        assert_eq!(plain.len(), recomputed.len(), "{what}");
        for (i, (a, b)) in plain.iter().zip(&recomputed).enumerate() {
            let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
            let d = max_diff(a, b);
            assert!(
                d <= 1e-5 * scale,
                "{what}: gradient {i} differs by {d} (max {scale})"
            );
        }
    }
}

/// A DINOv2 backbone takes a frame sequence as DINOv3 does: its patch embedding inflated, a
/// still sequence gives the single frame's heatmap.
#[test]
fn a_dinov2_backbone_inflates_for_sequences_and_a_still_one_gives_the_single_frame() {
    let device = Default::default();
    let c = cfg(&["model.backbone.family=dinov2"]).model;
    let (one, _) = HeatmapModel::<B>::from_config(&c, &device).unwrap();
    let mut three = one.clone();
    three.backbone = three.backbone.with_input_frames(3).unwrap();
    assert_eq!(three.backbone.num_channels(), 9);
    let x = input::<B>();
    let a = one.forward(x.clone());
    let b = three.forward(Tensor::cat(vec![x.clone(), x.clone(), x], 1));
    let diff: f32 = (a.clone() - b).abs().max().into_scalar();
    let scale: f32 = a.abs().max().into_scalar();
    assert!(diff <= 1e-5 * scale.max(1.0), "{diff} (scale {scale})");
    let (built, report) = HeatmapModel::<B>::from_config_frames(&c, 3, &device).unwrap();
    assert_eq!(built.backbone.num_channels(), 9);
    assert!(report.input_note.is_some_and(|n| n.contains("inflated")));
}
