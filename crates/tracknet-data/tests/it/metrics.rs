//! Detection / localisation metrics on hand-computed cases.
use std::path::PathBuf;

use tracknet_data::{
    EvalMetrics, MetricOptions, MetricsAccumulator, ProtocolCounts, SampleMeta, argmax, soft_argmax,
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
        protocol_tolerance_px: 5.0,
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
    // Nothing counted; the protocol records the tolerance it would have used.
    let want = EvalMetrics {
        protocol: ProtocolCounts {
            tolerance_px: 5.0,
            ..ProtocolCounts::default()
        },
        ..EvalMetrics::default()
    };
    assert_eq!(m, want);
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

/// The TrackNet papers' protocol: distances in original-frame pixels (here 1280×720 frames
/// behind a 64×32 heatmap: 20 px per heatmap column, 22.5 px per row), FP split into FP1 (too
/// far) and FP2 (no ball).
#[test]
fn tracknet_protocol_counts_in_original_frame_pixels() {
    let meta_1280 = |visibility: u8, xy: Option<(f32, f32)>| SampleMeta {
        xy_orig: xy.map(|(x, y)| (x * 20.0, y * 22.5)),
        orig_size: (1280, 720),
        ..meta(visibility, xy)
    };
    let opts = |tol: f32| MetricOptions {
        protocol_tolerance_px: tol,
        ..MetricOptions::default()
    };
    let cases = [
        (peak(10, 10, 0.9), meta_1280(1, Some((10.0, 10.0)))), // d = 0: TP
        (peak(11, 10, 0.9), meta_1280(1, Some((10.0, 10.0)))), // d = 20 px: TP at 25, FP1 at 5
        (peak(10, 11, 0.9), meta_1280(1, Some((10.0, 10.0)))), // d = 22.5 px: TP at 25, FP1 at 5
        (peak(12, 10, 0.9), meta_1280(2, Some((10.0, 10.0)))), // d = 40 px: FP1
        (peak(10, 10, 0.3), meta_1280(1, Some((10.0, 10.0)))), // silent on a ball: FN
        (peak(5, 5, 0.8), meta_1280(0, None)),                 // fires, no ball: FP2
        (peak(5, 5, 0.8), meta_1280(0, None)),                 // FP2
        (peak(5, 5, 0.2), meta_1280(0, None)),                 // TN
    ];
    let pred: Vec<f32> = cases.iter().flat_map(|c| c.0.clone()).collect();
    let metas: Vec<SampleMeta> = cases.iter().map(|c| c.1.clone()).collect();
    let run = |tol: f32| {
        let mut acc = MetricsAccumulator::new(opts(tol));
        acc.update(&pred, &metas, (H, W)).unwrap();
        acc.finish().protocol
    };
    let p = run(5.0);
    assert_eq!((p.tp, p.tn, p.fp1, p.fp2, p.fn_), (1, 1, 3, 2, 1));
    assert_eq!(p.tolerance_px, 5.0);
    assert!((p.accuracy - 2.0 / 8.0).abs() < 1e-6);
    assert!((p.precision - 1.0 / 6.0).abs() < 1e-6);
    assert!((p.recall - 0.5).abs() < 1e-6);
    assert!((p.f1 - 2.0 * (1.0 / 6.0) * 0.5 / (1.0 / 6.0 + 0.5)).abs() < 1e-6);
    let p = run(25.0);
    assert_eq!((p.tp, p.tn, p.fp1, p.fp2, p.fn_), (3, 1, 1, 2, 1));
    assert!((p.precision - 0.5).abs() < 1e-6 && (p.recall - 0.75).abs() < 1e-6);
    // The heatmap-scaled detection counts are a separate figure and do not move with it.
    let mut acc = MetricsAccumulator::new(opts(25.0));
    acc.update(&pred, &metas, (H, W)).unwrap();
    let m = acc.finish();
    assert_eq!(m.fp, m.protocol.fp1 + m.protocol.fp2 + 2);
}
