//! Evaluation metrics on host heatmaps.
//!
//! * Location: [`argmax`] (first maximum) and [`soft_argmax`] (softmax over `value / T`,
//!   expectation of the pixel coordinates).
//! * Mean L2 error and PCK@r in heatmap pixels over frames with visibility > 0, using the argmax.
//! * TrackNet detection (TrackNetV2 convention): the model "fires" when the peak value is
//!   `> threshold`. Visible ball: fires within tolerance → TP; fires farther away → FP (not
//!   also FN); does not fire → FN. Invisible ball: fires → FP; silent → TN. The tolerance is
//!   given in pixels of a 512-wide frame and scaled to the heatmap: `tol_hm = tol * Wh / 512`.
//! * The TrackNet papers' protocol ([`ProtocolCounts`], TrackNetV2–V4's evaluation): the same
//!   per-frame decision, but the distance is measured in pixels of the *original* frame (the
//!   coordinates of `Label.csv`) against `protocol_tolerance_px` (5 px by default, as at
//!   1280×720), and false positives are split: FP1 = fires on a visible ball but too far
//!   away, FP2 = fires on a frame without a visible ball. Visibility-0 frames are negatives.
//!   Accuracy `(TP+TN)/all`, precision `TP/(TP+FP1+FP2)`, recall `TP/(TP+FN)`, and F1 from
//!   those counts, so a run can be held against published numbers.

use crate::error::DataError;
use crate::loader::SampleMeta;

/// Metric settings.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct MetricOptions {
    /// Peak value above which the model is said to detect a ball.
    pub threshold: f32,
    /// Detection tolerance in pixels of a 512-wide frame (scaled by `Wh / 512`).
    pub tolerance_px: f32,
    /// PCK radius in heatmap pixels.
    pub pck_radius: f32,
    /// Softmax temperature for [`soft_argmax`].
    pub soft_temperature: f32,
    /// The TrackNet protocol's tolerance in pixels of the original frame (not scaled).
    pub protocol_tolerance_px: f32,
}

impl Default for MetricOptions {
    fn default() -> Self {
        MetricOptions {
            threshold: 0.5,
            tolerance_px: 4.0,
            pck_radius: 3.0,
            soft_temperature: 0.1,
            protocol_tolerance_px: 5.0,
        }
    }
}

/// Per-frame counts of the TrackNet papers' protocol and the ratios computed from them.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct ProtocolCounts {
    /// Tolerance used, in original-frame pixels.
    pub tolerance_px: f32,
    /// Visible ball, detected within the tolerance.
    pub tp: usize,
    /// No visible ball, nothing detected.
    pub tn: usize,
    /// Visible ball, detected farther than the tolerance.
    pub fp1: usize,
    /// No visible ball, something detected.
    pub fp2: usize,
    /// Visible ball, nothing detected.
    #[serde(rename = "fn")]
    pub fn_: usize,
    /// `(tp + tn) / frames`.
    pub accuracy: f32,
    /// `tp / (tp + fp1 + fp2)`.
    pub precision: f32,
    /// `tp / (tp + fn)`.
    pub recall: f32,
    /// Harmonic mean of precision and recall.
    pub f1: f32,
}

impl ProtocolCounts {
    /// Fills in the ratios from the counts (0 where a denominator is 0).
    fn finish(mut self) -> Self {
        let frames = self.tp + self.tn + self.fp1 + self.fp2 + self.fn_;
        self.accuracy = ratio(self.tp + self.tn, frames);
        self.precision = ratio(self.tp, self.tp + self.fp1 + self.fp2);
        self.recall = ratio(self.tp, self.tp + self.fn_);
        self.f1 = f1(self.precision, self.recall);
        self
    }
}

/// `a / b`, 0 when `b` is 0.
fn ratio(a: usize, b: usize) -> f32 {
    if b == 0 { 0.0 } else { a as f32 / b as f32 }
}

/// Harmonic mean of precision and recall, 0 when both are 0.
fn f1(precision: f32, recall: f32) -> f32 {
    if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    }
}

/// Final metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct EvalMetrics {
    /// Frames seen.
    pub frames: usize,
    /// Frames with a visible ball.
    pub visible: usize,
    /// True positives.
    pub tp: usize,
    /// False positives (far peak on a visible ball, or a peak on an invisible one).
    pub fp: usize,
    /// False negatives (visible ball, no peak above threshold).
    pub fn_: usize,
    /// True negatives.
    pub tn: usize,
    /// `tp / (tp + fp)`, 0 when undefined.
    pub precision: f32,
    /// `tp / (tp + fn)`, 0 when undefined.
    pub recall: f32,
    /// Harmonic mean of precision and recall, 0 when undefined.
    pub f1: f32,
    /// `(tp + tn) / frames`.
    pub accuracy: f32,
    /// Mean argmax L2 error in heatmap pixels over visible frames.
    pub mean_l2: f32,
    /// Mean soft-argmax L2 error in heatmap pixels over visible frames.
    pub mean_l2_soft: f32,
    /// Fraction of visible frames with argmax error `<= pck_radius`.
    pub pck: f32,
    /// The TrackNet papers' protocol (distances in original-frame pixels, FP split in two).
    pub protocol: ProtocolCounts,
}

/// `(x, y, value)` of the first maximum of a `[h, w]` heatmap.
pub fn argmax(heatmap: &[f32], w: usize) -> (f32, f32, f32) {
    let mut best = (0usize, f32::NEG_INFINITY);
    for (i, &v) in heatmap.iter().enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    let w = w.max(1);
    ((best.0 % w) as f32, (best.0 / w) as f32, best.1)
}

/// Expected `(x, y)` under `softmax(heatmap / temperature)` (max-subtracted for stability).
pub fn soft_argmax(heatmap: &[f32], w: usize, temperature: f32) -> (f32, f32) {
    let w = w.max(1);
    let t = if temperature > 0.0 { temperature } else { 1.0 };
    let max = heatmap.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let (mut sum, mut sx, mut sy) = (0.0f64, 0.0f64, 0.0f64);
    for (i, &v) in heatmap.iter().enumerate() {
        let e = f64::from(((v - max) / t).exp());
        sum += e;
        sx += e * (i % w) as f64;
        sy += e * (i / w) as f64;
    }
    if sum > 0.0 && sum.is_finite() {
        ((sx / sum) as f32, (sy / sum) as f32)
    } else {
        (0.0, 0.0)
    }
}

/// Accumulates metrics over batches.
#[derive(Debug, Clone, Default)]
pub struct MetricsAccumulator {
    opts: MetricOptions,
    m: EvalMetrics,
    l2_sum: f64,
    l2_soft_sum: f64,
    pck_hits: usize,
}

impl MetricsAccumulator {
    /// New accumulator.
    pub fn new(opts: MetricOptions) -> Self {
        MetricsAccumulator {
            opts,
            ..Default::default()
        }
    }

    /// Adds predictions `[B, 1, Hh, Wh]` for the samples in `meta` (targets are
    /// `meta.xy_heatmap`). `heatmap_hw` is `(Hh, Wh)`.
    pub fn update(
        &mut self,
        pred: &[f32],
        meta: &[SampleMeta],
        heatmap_hw: (usize, usize),
    ) -> Result<(), DataError> {
        let (h, w) = heatmap_hw;
        let plane = h * w;
        if plane == 0 || pred.len() != meta.len() * plane {
            return Err(DataError::Shape(format!(
                "expected {} predicted values ({} samples x {h} x {w}), got {}",
                meta.len() * plane,
                meta.len(),
                pred.len()
            )));
        }
        let tol = self.opts.tolerance_px * w as f32 / 512.0;
        for (hm, sample) in pred.chunks_exact(plane).zip(meta) {
            self.m.frames += 1;
            let (px, py, peak) = argmax(hm, w);
            let fires = peak > self.opts.threshold;
            match sample.xy_heatmap.filter(|_| sample.visibility > 0) {
                Some((tx, ty)) => {
                    self.m.visible += 1;
                    let d = ((px - tx).powi(2) + (py - ty).powi(2)).sqrt();
                    let (sx, sy) = soft_argmax(hm, w, self.opts.soft_temperature);
                    self.l2_sum += f64::from(d);
                    self.l2_soft_sum += f64::from(((sx - tx).powi(2) + (sy - ty).powi(2)).sqrt());
                    if d <= self.opts.pck_radius {
                        self.pck_hits += 1;
                    }
                    match (fires, d <= tol) {
                        (true, true) => self.m.tp += 1,
                        (true, false) => self.m.fp += 1,
                        (false, _) => self.m.fn_ += 1,
                    }
                    // The same error in original-frame pixels (per axis: the resize need not
                    // keep the aspect ratio; a mirror keeps distances).
                    let (ow, oh) = (sample.orig_size.0 as f32, sample.orig_size.1 as f32);
                    let d_orig = ((px - tx) * ow / w as f32).hypot((py - ty) * oh / h as f32);
                    let p = &mut self.m.protocol;
                    match (fires, d_orig <= self.opts.protocol_tolerance_px) {
                        (true, true) => p.tp += 1,
                        (true, false) => p.fp1 += 1,
                        (false, _) => p.fn_ += 1,
                    }
                }
                None if fires => {
                    self.m.fp += 1;
                    self.m.protocol.fp2 += 1;
                }
                None => {
                    self.m.tn += 1;
                    self.m.protocol.tn += 1;
                }
            }
        }
        Ok(())
    }

    /// Final numbers (ratios are 0 when their denominator is 0).
    pub fn finish(&self) -> EvalMetrics {
        let mut m = self.m;
        m.precision = ratio(m.tp, m.tp + m.fp);
        m.recall = ratio(m.tp, m.tp + m.fn_);
        m.f1 = f1(m.precision, m.recall);
        m.accuracy = ratio(m.tp + m.tn, m.frames);
        m.protocol.tolerance_px = self.opts.protocol_tolerance_px;
        m.protocol = m.protocol.finish();
        if m.visible > 0 {
            m.mean_l2 = (self.l2_sum / m.visible as f64) as f32;
            m.mean_l2_soft = (self.l2_soft_sum / m.visible as f64) as f32;
            m.pck = ratio(self.pck_hits, m.visible);
        }
        m
    }
}
