//! Detection / localisation metrics on hand-computed cases.
use std::path::PathBuf;

use tracknet_data::{
    EvalMetrics, MetricOptions, MetricsAccumulator, SampleMeta, argmax, soft_argmax,
};

const W: usize = 64;
const H: usize = 32;

fn meta(visibility: u8, xy: Option<(f32, f32)>) -> SampleMeta {
    SampleMeta {
        index: 0,
        path: PathBuf::from("x.jpg"),
        inputs: vec![PathBuf::from("x.jpg")],
        visibility,
        xy_orig: xy,
        xy_heatmap: xy,
        orig_size: (W as u32, H as u32),
        flipped: false,
    }
}

fn peak(x: usize, y: usize, v: f32) -> Vec<f32> {
    let mut hm = vec![0.05; W * H];
    hm[y * W + x] = v;
    hm
}

#[test]
fn tracknet_detection_counts_and_localisation() {
    // tolerance 32 px at 512 wide -> 32 * 64 / 512 = 4 heatmap px.
    let opts = MetricOptions {
        threshold: 0.5,
        tolerance_px: 32.0,
        pck_radius: 3.0,
        soft_temperature: 0.1,
    };
    let cases = [
        (peak(12, 10, 0.9), meta(1, Some((10.0, 10.0)))), // TP, d = 2
        (peak(30, 20, 0.9), meta(2, Some((10.0, 10.0)))), // far peak: FP, d = sqrt(500)
        (peak(10, 10, 0.3), meta(1, Some((10.0, 10.0)))), // below threshold: FN, d = 0
        (peak(5, 5, 0.8), meta(0, None)),                 // fires on invisible: FP
        (peak(5, 5, 0.2), meta(0, None)),                 // silent on invisible: TN
    ];
    let mut acc = MetricsAccumulator::new(opts);
    // Two updates to check accumulation across batches.
    let first: Vec<f32> = cases[..2].iter().flat_map(|c| c.0.clone()).collect();
    let rest: Vec<f32> = cases[2..].iter().flat_map(|c| c.0.clone()).collect();
    let metas: Vec<SampleMeta> = cases.iter().map(|c| c.1.clone()).collect();
    acc.update(&first, &metas[..2], (H, W)).unwrap();
    acc.update(&rest, &metas[2..], (H, W)).unwrap();
    let m: EvalMetrics = acc.finish();
    assert_eq!(
        (m.frames, m.visible, m.tp, m.fp, m.fn_, m.tn),
        (5, 3, 1, 2, 1, 1)
    );
    assert!((m.precision - 1.0 / 3.0).abs() < 1e-6);
    assert!((m.recall - 0.5).abs() < 1e-6);
    assert!((m.f1 - 0.4).abs() < 1e-6);
    assert!((m.accuracy - 0.4).abs() < 1e-6);
    let l2 = (2.0 + 500f32.sqrt() + 0.0) / 3.0;
    assert!((m.mean_l2 - l2).abs() < 1e-4, "{}", m.mean_l2);
    assert!((m.pck - 2.0 / 3.0).abs() < 1e-6);
}

#[test]
fn default_tolerance_scales_with_heatmap_width() {
    // Default 4 px at 512 -> 0.5 px at 64 wide: a 1 px miss is FP, an exact hit TP.
    let mut acc = MetricsAccumulator::new(MetricOptions::default());
    let pred: Vec<f32> = [peak(11, 10, 0.9), peak(10, 10, 0.9)].concat();
    acc.update(
        &pred,
        &[meta(1, Some((10.0, 10.0))), meta(1, Some((10.0, 10.0)))],
        (H, W),
    )
    .unwrap();
    let m = acc.finish();
    assert_eq!((m.tp, m.fp, m.fn_, m.tn), (1, 1, 0, 0));
    assert_eq!(m.pck, 1.0);
    assert!((m.mean_l2 - 0.5).abs() < 1e-6);
}

#[test]
fn empty_and_shape_errors() {
    let m = MetricsAccumulator::new(MetricOptions::default()).finish();
    assert_eq!(m, EvalMetrics::default());
    let mut acc = MetricsAccumulator::new(MetricOptions::default());
    let err = acc
        .update(&[0.0; 10], &[meta(0, None)], (H, W))
        .unwrap_err();
    assert!(err.to_string().contains("expected 2048"), "{err}");
}

#[test]
fn argmax_and_soft_argmax() {
    let hm = peak(7, 3, 2.0);
    assert_eq!(argmax(&hm, W), (7.0, 3.0, 2.0));
    let (sx, sy) = soft_argmax(&hm, W, 0.05);
    assert!(
        (sx - 7.0).abs() < 1e-3 && (sy - 3.0).abs() < 1e-3,
        "{sx},{sy}"
    );
    // Two equal peaks: soft-argmax lands in between, argmax picks the first.
    let mut two = vec![0.0; W * H];
    two[4 * W + 10] = 1.0;
    two[4 * W + 20] = 1.0;
    let (sx, sy) = soft_argmax(&two, W, 0.01);
    assert!(
        (sx - 15.0).abs() < 1e-3 && (sy - 4.0).abs() < 1e-3,
        "{sx},{sy}"
    );
    assert_eq!(argmax(&two, W).0, 10.0);
    // Uniform map: the centre of the grid.
    let (ux, uy) = soft_argmax(&[1.0; 6], 3, 1.0);
    assert!((ux - 1.0).abs() < 1e-6 && (uy - 0.5).abs() < 1e-6);
}
