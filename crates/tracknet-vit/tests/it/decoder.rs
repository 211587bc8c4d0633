//! Decoder and heatmap head: shapes, init statistics, residual identity, parameter counts,
//! validation messages, bilinear resize values and gradient flow.

use burn::backend::{Autodiff, NdArray};
use burn::module::Module;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Distribution, Tensor, TensorData, Tolerance};
use tracknet_vit::decoder::{
    DecoderError, DecoderNorm, DecoderNormKind, HeatmapDecoderConfig, ResidualBlockConfig,
    bilinear_resize, channel_dropout2d, group_norm_groups, kaiming_conv2d,
};
use tracknet_vit::head::HeatmapHeadConfig;

type B = NdArray;
type AD = Autodiff<NdArray>;

fn randn<Bk: burn::tensor::backend::Backend>(shape: [usize; 4]) -> Tensor<Bk, 4> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
}

fn std_of(t: Tensor<B, 4>) -> f64 {
    let v = t.into_data().to_vec::<f32>().unwrap();
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt()
}

#[test]
fn vit_s_setting_gives_full_resolution_heatmap() {
    let device = Default::default();
    let cfg = HeatmapDecoderConfig::new(vec![384, 256, 128, 64], vec![2, 2, 2], [256, 144]);
    let decoder = cfg.init::<B>(&device).unwrap();
    let head = HeatmapHeadConfig::new(64).init::<B>(&device);
    let features = decoder.forward(randn([1, 384, 18, 32]));
    assert_eq!(features.dims(), [1, 64, 144, 256]);
    let heatmap = head.forward(features);
    assert_eq!(heatmap.dims(), [1, 1, 144, 256]);
    assert!(!heatmap.is_nan().any().into_scalar());
}

#[test]
fn short_upsample_list_is_padded_with_one() {
    let cfg = HeatmapDecoderConfig::new(vec![4, 8, 8], vec![2], [10, 6]);
    assert_eq!(cfg.stage_factors(), vec![2, 1]);
    let decoder = cfg.init::<B>(&Default::default()).unwrap();
    assert_eq!(decoder.stages.len(), 2);
    assert_eq!(decoder.stages[0].upsample, 2);
    assert_eq!(decoder.stages[1].upsample, 1);
    // Projection only where the channel count changes.
    assert!(decoder.stages[0].proj.is_some());
    assert!(decoder.stages[1].proj.is_none());
    // 3x5 -> x2 -> 6x10 == heatmap size, so no final resize is needed either.
    assert_eq!(
        decoder.stages[1]
            .forward(decoder.stages[0].forward(randn([2, 4, 3, 5])))
            .dims(),
        [2, 8, 6, 10]
    );
    assert_eq!(decoder.forward(randn([2, 4, 3, 5])).dims(), [2, 8, 6, 10]);
}

#[test]
fn group_count_is_largest_power_of_two_up_to_32() {
    for (channels, groups) in [
        (64, 32),
        (48, 16),
        (24, 8),
        (3, 1),
        (32, 32),
        (1024, 32),
        (6, 2),
    ] {
        assert_eq!(group_norm_groups(channels), groups, "channels = {channels}");
    }
}

#[test]
fn kaiming_std_uses_pytorch_fan_out() {
    let device = Default::default();
    // Full conv: fan_out = 512 * 3 * 3.
    let conv = kaiming_conv2d::<B>([256, 512], 3, 1, &device);
    let expected = (2.0f64 / (512.0 * 9.0)).sqrt();
    let got = std_of(conv.weight.val());
    assert!(
        (got / expected - 1.0).abs() < 0.1,
        "std {got} vs {expected}"
    );
    let bias = conv
        .bias
        .unwrap()
        .val()
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    assert!(bias.iter().all(|&b| b == 0.0));

    // Depthwise: PyTorch does not divide fan_out by groups -> same std as a full conv.
    let dw = kaiming_conv2d::<B>([512, 512], 3, 512, &device);
    assert_eq!(dw.weight.dims(), [512, 1, 3, 3]);
    let got = std_of(dw.weight.val());
    assert!(
        (got / expected - 1.0).abs() < 0.1,
        "depthwise std {got} vs {expected}"
    );
}

#[test]
fn block_with_zeroed_convs_is_identity() {
    let device = Default::default();
    let mut block = ResidualBlockConfig::new(8)
        .with_use_se(true)
        .with_se_reduction(2)
        .init::<B>(&device)
        .unwrap();
    let x = randn::<B>([2, 8, 5, 7]);
    // Freshly initialised, the block changes its input.
    let diff = (block.forward(x.clone()) - x.clone())
        .abs()
        .max()
        .into_scalar();
    assert!(
        diff > 1e-3,
        "init block should not be the identity, max diff {diff}"
    );

    block.dw.weight = block.dw.weight.map(|w| w.zeros_like());
    block.pw.weight = block.pw.weight.map(|w| w.zeros_like());
    let se = block.se.as_mut().unwrap();
    se.reduce.weight = se.reduce.weight.clone().map(|w| w.zeros_like());
    se.expand.weight = se.expand.weight.clone().map(|w| w.zeros_like());
    block
        .forward(x.clone())
        .into_data()
        .assert_approx_eq::<f32>(&x.into_data(), Tolerance::absolute(1e-6));
}

#[test]
fn parameter_counts_match_hand_computation() {
    let device = Default::default();
    // C = 16: dw 16*9 + 16, GroupNorm 16 + 16, pw 16*16 + 16.
    let plain = 16 * 9 + 16 + 32 + 16 * 16 + 16;
    let block = ResidualBlockConfig::new(16).init::<B>(&device).unwrap();
    assert_eq!(block.num_params(), plain);
    // SE with r = 4: hidden 4; reduce 16*4 + 4, expand 4*16 + 16.
    let se = ResidualBlockConfig::new(16)
        .with_use_se(true)
        .with_se_reduction(4)
        .init::<B>(&device)
        .unwrap();
    assert_eq!(se.num_params(), plain + (16 * 4 + 4) + (4 * 16 + 16));
    // Hidden width is at least 1: C = 4, r = 8.
    let tiny = ResidualBlockConfig::new(4)
        .init::<B>(&device)
        .unwrap()
        .num_params();
    let tiny_se = ResidualBlockConfig::new(4)
        .with_use_se(true)
        .with_se_reduction(8)
        .init::<B>(&device)
        .unwrap()
        .num_params();
    assert_eq!(tiny_se - tiny, (4 + 1) + (4 + 4));
    // Full 3x3 instead of depthwise.
    let full = ResidualBlockConfig::new(16)
        .with_use_depthwise(false)
        .init::<B>(&device)
        .unwrap();
    assert_eq!(full.num_params(), plain - 16 * 9 + 16 * 16 * 9);
    // Whole decoder [8, 4]: proj 8*4 + 4, block at C = 4: 4*9 + 4, 8, 4*4 + 4. Head: 4 + 1.
    let decoder = HeatmapDecoderConfig::new(vec![8, 4], vec![], [4, 4])
        .init::<B>(&device)
        .unwrap();
    assert_eq!(decoder.num_params(), 36 + 40 + 8 + 20);
    assert_eq!(HeatmapHeadConfig::new(4).init::<B>(&device).num_params(), 5);
}

#[test]
fn batchnorm_variant_runs_in_eval_and_train() {
    let cfg = HeatmapDecoderConfig::new(vec![6, 4], vec![2], [8, 6])
        .with_norm(DecoderNormKind::Batch)
        .with_blocks_per_stage(2);
    let decoder = cfg.init::<B>(&Default::default()).unwrap();
    assert!(matches!(
        decoder.stages[0].blocks[1].norm,
        DecoderNorm::Batch(_)
    ));
    // Burn's num_params also counts BatchNorm's running mean/var (4 + 4 per block).
    let bn = 4 + 4 + 4 + 4;
    assert_eq!(
        decoder.num_params(),
        (6 * 4 + 4) + 2 * ((4 * 9 + 4) + bn + (4 * 4 + 4))
    );
    assert_eq!(decoder.forward(randn([2, 6, 3, 4])).dims(), [2, 4, 6, 8]);
    let decoder = cfg.init::<AD>(&Default::default()).unwrap();
    assert_eq!(decoder.forward(randn([2, 6, 3, 4])).dims(), [2, 4, 6, 8]);
}

#[test]
fn invalid_configs_name_the_field() {
    let device = Default::default();
    let base = HeatmapDecoderConfig::new(vec![8, 4], vec![2], [16, 8]);
    let cases = [
        (
            HeatmapDecoderConfig {
                channels: vec![8],
                ..base.clone()
            },
            "decoder.channels:",
        ),
        (
            HeatmapDecoderConfig {
                channels: vec![8, 0],
                ..base.clone()
            },
            "decoder.channels[1]",
        ),
        (
            HeatmapDecoderConfig {
                upsample: vec![2, 2],
                ..base.clone()
            },
            "decoder.upsample:",
        ),
        (
            HeatmapDecoderConfig {
                upsample: vec![0],
                ..base.clone()
            },
            "decoder.upsample[0]",
        ),
        (
            HeatmapDecoderConfig {
                heatmap_size: [0, 8],
                ..base.clone()
            },
            "decoder.heatmap_size",
        ),
        (
            base.clone().with_use_se(true).with_se_reduction(0),
            "decoder.se_reduction",
        ),
        (base.clone().with_dropout(1.0), "decoder.dropout"),
        (base.clone().with_dropout(-0.1), "decoder.dropout"),
    ];
    for (cfg, field) in cases {
        let err = cfg.init::<B>(&device).unwrap_err();
        assert!(
            err.to_string().contains(field),
            "`{err}` should name {field}"
        );
    }
    assert_eq!(
        HeatmapDecoderConfig {
            upsample: vec![2, 2],
            ..base
        }
        .validate(),
        Err(DecoderError::TooManyUpsample { stages: 1, got: 2 })
    );
}

#[test]
fn final_resize_reaches_non_multiple_heatmap_size() {
    let cfg = HeatmapDecoderConfig::new(vec![4, 4], vec![2], [100, 60]);
    let decoder = cfg.init::<B>(&Default::default()).unwrap();
    assert_eq!(decoder.output_size, [60, 100]);
    assert_eq!(decoder.forward(randn([1, 4, 7, 9])).dims(), [1, 4, 60, 100]);
}

#[test]
fn bilinear_resize_matches_pytorch_half_pixel_values() {
    let device = Default::default();
    // Width 2 -> 4 with align_corners = false: [0, 1] -> [0, 0.25, 0.75, 1].
    let x = Tensor::<B, 4>::from_data(TensorData::new(vec![0.0f32, 1.0], [1, 1, 1, 2]), &device);
    bilinear_resize(x, [1, 4])
        .into_data()
        .assert_approx_eq::<f32>(
            &TensorData::new(vec![0.0f32, 0.25, 0.75, 1.0], [1, 1, 1, 4]),
            Tolerance::absolute(1e-6),
        );
    // Same values as Burn's own (forward-only on ndarray) bilinear interpolate, up and down.
    let options = InterpolateOptions::new(InterpolateMode::Bilinear).with_align_corners(false);
    for (input, out) in [
        ([2, 3, 7, 9], [60, 100]),
        ([1, 2, 10, 12], [4, 5]),
        ([1, 1, 3, 4], [6, 8]),
    ] {
        let x = randn::<B>(input);
        let ours = bilinear_resize(x.clone(), out).into_data();
        let burn = interpolate(x, out, options.clone()).into_data();
        ours.assert_approx_eq::<f32>(&burn, Tolerance::absolute(1e-5));
    }
}

#[test]
fn channel_dropout_drops_whole_channels_only_with_autodiff() {
    let x = Tensor::<AD, 4>::ones([4, 32, 3, 3], &Default::default());
    let y = channel_dropout2d(x, 0.5)
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    let mut kept = 0;
    for channel in y.chunks(9) {
        assert!(
            channel.iter().all(|&v| v == channel[0]),
            "channel not uniform: {channel:?}"
        );
        assert!(
            channel[0] == 0.0 || channel[0] == 2.0,
            "value {}",
            channel[0]
        );
        kept += usize::from(channel[0] == 2.0);
    }
    assert!(kept > 0 && kept < 128, "kept {kept} of 128 channels");
    // Inference backend: identity.
    let x = randn::<B>([2, 4, 3, 3]);
    channel_dropout2d(x.clone(), 0.5)
        .into_data()
        .assert_eq(&x.into_data(), true);
}

#[test]
fn gradients_reach_head_and_first_stage() {
    let device = Default::default();
    let decoder = HeatmapDecoderConfig::new(vec![8, 6, 4], vec![2, 2], [20, 12])
        .with_use_se(true)
        .with_se_reduction(2)
        .with_dropout(0.1)
        .init::<AD>(&device)
        .unwrap();
    let head = HeatmapHeadConfig::new(4).init::<AD>(&device);
    let out = head.forward(decoder.forward(randn([2, 8, 3, 4])));
    assert_eq!(out.dims(), [2, 1, 12, 20]);
    let grads = out.powi_scalar(2).mean().backward();
    let nonzero = |g: Option<Tensor<B, 4>>| g.map(|g| g.abs().sum().into_scalar() > 0.0);
    assert_eq!(nonzero(head.conv.weight.grad(&grads)), Some(true));
    let stage = &decoder.stages[0];
    assert_eq!(
        nonzero(stage.proj.as_ref().unwrap().weight.grad(&grads)),
        Some(true)
    );
    assert_eq!(nonzero(stage.blocks[0].dw.weight.grad(&grads)), Some(true));
}

#[test]
fn norm_and_activation_kinds_deserialize_from_config_names() {
    let bn: DecoderNormKind = serde_json::from_str("\"bn\"").unwrap();
    let gn: DecoderNormKind = serde_json::from_str("\"group\"").unwrap();
    assert_eq!((bn, gn), (DecoderNormKind::Batch, DecoderNormKind::Group));
    let cfg =
        HeatmapDecoderConfig::new(vec![8, 4], vec![2], [16, 8]).with_norm(DecoderNormKind::Batch);
    let json = serde_json::to_string(&cfg).unwrap();
    assert!(json.contains("\"norm\":\"batch\""), "{json}");
    let back: HeatmapDecoderConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back.norm, DecoderNormKind::Batch);
}
