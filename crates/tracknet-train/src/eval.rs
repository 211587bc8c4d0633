//! Validation: masked loss, coordinate and detection metrics, preview overlays.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::prelude::*;
use tracknet_config::RunConfig;
use tracknet_data::{
    BatchLoader, DatasetIndex, EvalMetrics, MetricOptions, MetricsAccumulator, SampleMeta,
};
use tracknet_vit::ModelBackend;
use tracknet_vit::model::HeatmapModel;

use crate::data::{batch_tensors, loader_options};
use crate::error::TrainError;
use crate::loss::HeatmapLoss;

/// The loss the config asks for.
pub fn loss_from_config(cfg: &RunConfig) -> HeatmapLoss {
    let pos_weight = cfg.training.loss.pos_weight.unwrap_or(1.0);
    match cfg.training.loss.name {
        tracknet_config::LossName::Mse => HeatmapLoss::Mse { pos_weight },
        tracknet_config::LossName::Focal => HeatmapLoss::Focal {
            alpha: cfg.training.loss.focal_alpha,
            beta: cfg.training.loss.focal_beta,
            pos_weight,
        },
    }
}

/// Metric thresholds from `training.eval`.
pub fn metric_options(cfg: &RunConfig) -> MetricOptions {
    let e = &cfg.training.eval;
    MetricOptions {
        threshold: e.threshold as f32,
        tolerance_px: e.tolerance_px as f32,
        pck_radius: e.pck_radius as f32,
        protocol_tolerance_px: e.protocol_tolerance_px as f32,
        ..MetricOptions::default()
    }
}

/// A validation frame kept for a preview image.
#[derive(Debug, Clone)]
pub struct Preview {
    /// Sample.
    pub meta: SampleMeta,
    /// Predicted heatmap `[Hh * Wh]`.
    pub heatmap: Vec<f32>,
}

/// Result of one evaluation.
#[derive(Debug, Clone)]
pub struct EvalResult {
    /// Mean masked loss over batches.
    pub loss: f64,
    /// Coordinate and detection metrics.
    pub metrics: EvalMetrics,
    /// The first frames, for previews.
    pub previews: Vec<Preview>,
    /// Heatmap `(H, W)`.
    pub heatmap_hw: (usize, usize),
    /// Frames the loader skipped (undecodable images), with path and reason.
    pub skipped: Vec<tracknet_data::Issue>,
}

/// Evaluate `model` on `index` (no autodiff: pass `model.valid()` during training).
pub fn evaluate<B: ModelBackend>(
    model: &HeatmapModel<B>,
    index: Arc<DatasetIndex>,
    cfg: &RunConfig,
    max_batches: Option<usize>,
    keep_previews: usize,
    device: &B::Device,
) -> Result<EvalResult, TrainError> {
    let loss_fn = loss_from_config(cfg);
    let batches_total = index.len().div_ceil(cfg.training.batch_size.max(1));
    let bar = crate::progress::Task::new(
        "eval",
        max_batches.map_or(batches_total, |m| m.min(batches_total)),
    );
    let mut loader = BatchLoader::new(
        index,
        loader_options(cfg, 0, false, cfg.training.batch_size),
    )?;
    let mut acc = MetricsAccumulator::new(metric_options(cfg));
    let (mut loss_sum, mut batches) = (0.0, 0usize);
    let mut previews = Vec::new();
    let mut heatmap_hw = (0, 0);
    for batch in loader.by_ref().take(max_batches.unwrap_or(usize::MAX)) {
        let batch = batch?;
        let (x, y, m) = batch_tensors::<B>(&batch, 0..batch.batch_size, device);
        let pred = model.try_forward(x)?;
        loss_sum += loss_fn
            .forward(pred.clone(), y, m)
            .into_scalar()
            .elem::<f64>();
        batches += 1;
        bar.set(batches);
        let heat: Vec<f32> = loss_fn
            .activate(pred)
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .unwrap_or_default();
        acc.update(&heat, &batch.meta, batch.heatmap_hw)?;
        heatmap_hw = batch.heatmap_hw;
        let plane = heatmap_hw.0 * heatmap_hw.1;
        for (i, meta) in batch.meta.iter().enumerate() {
            if previews.len() < keep_previews {
                previews.push(Preview {
                    meta: meta.clone(),
                    heatmap: heat[i * plane..(i + 1) * plane].to_vec(),
                });
            }
        }
    }
    Ok(EvalResult {
        loss: loss_sum / batches.max(1) as f64,
        metrics: acc.finish(),
        previews,
        heatmap_hw,
        skipped: loader.report().skipped.clone(),
    })
}

/// The loader's skip report as printed after an epoch or an evaluation: one line with the
/// count, then each frame with its reason (as the scan reports Label.csv problems). `None`
/// when nothing was skipped.
pub fn skip_report(what: &str, skipped: &[tracknet_data::Issue]) -> Option<String> {
    if skipped.is_empty() {
        return None;
    }
    let mut s = format!("{what}: skipped {} undecodable frame(s)", skipped.len());
    for issue in skipped.iter().take(20) {
        s.push_str(&format!("\n  {issue}"));
    }
    if skipped.len() > 20 {
        s.push_str(&format!("\n  ... and {} more", skipped.len() - 20));
    }
    Some(s)
}

/// Write one overlay PNG per preview into `dir` as `<prefix>-<i>.png`.
pub fn write_previews(
    dir: &Path,
    prefix: &str,
    result: &EvalResult,
) -> Result<Vec<PathBuf>, TrainError> {
    let mut out = Vec::new();
    for (i, p) in result.previews.iter().enumerate() {
        let path = dir.join(format!("{prefix}-{i}.png"));
        let (hh, hw) = result.heatmap_hw;
        let (px, py, _) = tracknet_data::argmax(&p.heatmap, hw);
        // The overlay is drawn on the original (unflipped) frame; eval never flips.
        tracknet_data::viz::save_overlay_png(
            &path,
            &p.meta.path,
            &p.heatmap,
            (hw, hh),
            Some((px, py)),
            p.meta.xy_heatmap,
        )?;
        out.push(path);
    }
    Ok(out)
}

/// One line for logs: `loss … f1 … pck@3 … l2 …`.
pub fn summary_line(r: &EvalResult) -> String {
    let m = &r.metrics;
    format!(
        "val loss {:.5} | P {:.3} R {:.3} F1 {:.3} acc {:.3} | PCK@r {:.3} L2 {:.2}px ({} frames, {} visible)",
        r.loss, m.precision, m.recall, m.f1, m.accuracy, m.pck, m.mean_l2, m.frames, m.visible
    )
}

/// The TrackNet papers' protocol as one line: counts, then the ratios computed from them.
pub fn protocol_line(r: &EvalResult) -> String {
    let p = &r.metrics.protocol;
    format!(
        "TrackNet protocol at {} px (original frame): TP {} TN {} FP1 {} FP2 {} FN {} | \
         accuracy {:.3} precision {:.3} recall {:.3} F1 {:.3}",
        p.tolerance_px, p.tp, p.tn, p.fp1, p.fp2, p.fn_, p.accuracy, p.precision, p.recall, p.f1
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    fn cfg(yaml: &str) -> RunConfig {
        RunConfig::from_yaml_str(yaml).unwrap()
    }

    #[test]
    fn focal_alpha_and_beta_from_the_config_shape_the_loss() {
        // α = 1, β = 2 on a positive pixel and a soft (shoulder) pixel, by hand.
        let loss = loss_from_config(&cfg(
            "training: {loss: {name: focal, focal_alpha: 1.0, focal_beta: 2.0}}",
        ));
        let t = |v: &[f32]| {
            Tensor::<NdArray, 1>::from_floats(v, &Default::default()).reshape([v.len(), 1, 1, 1])
        };
        let (logits, target) = ([0.3f32, -1.2], [1.0f32, 0.25]);
        let got = loss
            .forward(t(&logits), t(&target), t(&[1.0, 1.0]))
            .into_scalar() as f64;
        let (alpha, beta) = (1.0, 2.0);
        let mut want = 0.0;
        for (x, y) in logits.iter().zip(target) {
            let p = 1.0 / (1.0 + (-f64::from(*x)).exp());
            let y = f64::from(y);
            want -= y * (1.0 - p).powf(alpha) * p.ln()
                + (1.0 - y).powf(beta) * p.powf(alpha) * (1.0 - p).ln();
        }
        want /= 1.25; // normalised by the positive mass, as the default-α test
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        let default = loss_from_config(&cfg("training: {loss: {name: focal}}"))
            .forward(t(&logits), t(&target), t(&[1.0, 1.0]))
            .into_scalar() as f64;
        assert!((default - got).abs() > 1e-3);
    }

    #[test]
    fn eval_threshold_and_pck_radius_from_the_config_decide_the_metrics() {
        // One visible ball at (10, 5); the heatmap peaks at 0.8, two pixels to the right.
        let (w, h) = (32usize, 16usize);
        let mut heat = vec![0.0f32; w * h];
        heat[5 * w + 12] = 0.8;
        let meta = SampleMeta {
            index: 0,
            path: "x.jpg".into(),
            inputs: vec!["x.jpg".into()],
            visibility: 1,
            xy_orig: Some((10.0, 5.0)),
            xy_heatmap: Some((10.0, 5.0)),
            orig_size: (w as u32, h as u32),
            flipped: false,
        };
        let run = |yaml: &str| {
            let mut acc = MetricsAccumulator::new(metric_options(&cfg(yaml)));
            acc.update(&heat, std::slice::from_ref(&meta), (h, w))
                .unwrap();
            acc.finish()
        };
        let loose = run("training: {eval: {threshold: 0.5, pck_radius: 3.0, tolerance_px: 64.0}}");
        assert_eq!((loose.tp, loose.fn_), (1, 0));
        assert_eq!(loose.pck, 1.0);
        // A threshold above the peak: the same heatmap is a miss.
        let strict = run("training: {eval: {threshold: 0.85, tolerance_px: 64.0}}");
        assert_eq!((strict.tp, strict.fn_), (0, 1));
        // A radius below the 2-pixel error: not within PCK.
        let tight = run("training: {eval: {threshold: 0.5, pck_radius: 1.0, tolerance_px: 64.0}}");
        assert_eq!(tight.pck, 0.0);
        // The protocol's tolerance is in original-frame pixels: the 2 px miss is a TP at the
        // default 5 px and an FP1 at 1 px.
        assert_eq!((loose.protocol.tp, loose.protocol.fp1), (1, 0));
        let p = run("training: {eval: {protocol_tolerance_px: 1.0}}").protocol;
        assert_eq!((p.tp, p.fp1, p.fn_), (0, 1, 0));
    }
}
