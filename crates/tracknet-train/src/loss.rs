//! Heatmap losses, masked by visibility as the original's `_reduce_with_mask`:
//! `sum(loss · mask) / max(sum(mask), 1)` — frames without a visible ball contribute nothing.

use burn::prelude::*;
use burn::tensor::activation::{log_sigmoid, sigmoid};

/// Which loss, and how to read the head's output as a heatmap.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HeatmapLoss {
    /// Mean squared error on the raw head output (the output is the heatmap), each pixel
    /// weighted by `1 + (pos_weight - 1) · target`: `pos_weight` on a positive (target 1)
    /// pixel, 1 on the background.
    Mse {
        /// `training.loss.pos_weight` (1: plain MSE).
        pos_weight: f64,
    },
    /// Penalty-reduced focal loss on `sigmoid(output)` (CenterNet's, with the Gaussian target
    /// as a soft label): positives weighted by the target, negatives by `(1 - target)^beta`.
    Focal {
        /// Focusing exponent α (2 in CenterNet).
        alpha: f64,
        /// Negative down-weighting exponent β (4 in CenterNet).
        beta: f64,
        /// `training.loss.pos_weight`: multiplies the positive term, as
        /// `BCEWithLogitsLoss(pos_weight)` does (1: CenterNet's loss).
        pos_weight: f64,
    },
}

impl HeatmapLoss {
    /// `pred, target, mask: [batch, 1, H, W]` → scalar `[1]`.
    pub fn forward<B: Backend>(
        &self,
        pred: Tensor<B, 4>,
        target: Tensor<B, 4>,
        mask: Tensor<B, 4>,
    ) -> Tensor<B, 1> {
        match *self {
            Self::Mse { pos_weight } => {
                let se = (pred - target.clone()).powi_scalar(2);
                let se = if pos_weight == 1.0 {
                    se
                } else {
                    se * target.mul_scalar(pos_weight - 1.0).add_scalar(1.0)
                };
                reduce_with_mask(se, mask)
            }
            Self::Focal {
                alpha,
                beta,
                pos_weight,
            } => {
                // log σ(x) and log(1 − σ(x)) = log σ(−x) computed stably, without a clamp
                // that would zero the gradient of saturated logits.
                let p = sigmoid(pred.clone());
                let one_minus_p = p.clone().neg().add_scalar(1.0);
                let log_p = log_sigmoid(pred.clone());
                let log_1mp = log_sigmoid(pred.neg());
                let pos =
                    target.clone().mul_scalar(pos_weight) * one_minus_p.powf_scalar(alpha) * log_p;
                let neg = target.clone().neg().add_scalar(1.0).powf_scalar(beta)
                    * p.powf_scalar(alpha)
                    * log_1mp;
                let per_pixel = (pos + neg).neg() * mask.clone();
                // Normalise by the positive mass, as CenterNet normalises by the number of peaks.
                let norm = (target * mask).sum().clamp_min(1.0);
                per_pixel.sum() / norm
            }
        }
    }

    /// Initial bias of the 1×1 head: focal loss starts from a prior of 0.1 on every pixel
    /// (CenterNet's `-2.19`), so the first steps are not dominated by the many negatives.
    pub fn head_bias_init(&self) -> Option<f64> {
        match self {
            Self::Mse { .. } => None,
            Self::Focal { .. } => Some(-(0.9f64 / 0.1).ln()),
        }
    }

    /// The head output read as a heatmap in [0, 1]-ish units (for metrics and previews).
    pub fn activate<B: Backend>(&self, pred: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            Self::Mse { .. } => pred,
            Self::Focal { .. } => sigmoid(pred),
        }
    }
}

/// `sum(loss · mask) / max(sum(mask), 1)`.
pub fn reduce_with_mask<B: Backend>(loss: Tensor<B, 4>, mask: Tensor<B, 4>) -> Tensor<B, 1> {
    let denom = mask.clone().sum().clamp_min(1.0);
    (loss * mask).sum() / denom
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    type B = NdArray;

    fn t(v: &[f32]) -> Tensor<B, 4> {
        Tensor::<B, 1>::from_floats(v, &Default::default()).reshape([v.len(), 1, 1, 1])
    }

    const MSE: HeatmapLoss = HeatmapLoss::Mse { pos_weight: 1.0 };

    #[test]
    fn mse_ignores_masked_frames() {
        // Two frames of one pixel: the second is invisible (mask 0) and wildly wrong.
        let l = MSE.forward(t(&[0.5, 100.0]), t(&[1.0, 0.0]), t(&[1.0, 0.0]));
        assert!((l.into_scalar() - 0.25).abs() < 1e-6);
    }

    #[test]
    fn all_masked_gives_zero_not_nan() {
        let l = MSE.forward(t(&[3.0]), t(&[0.0]), t(&[0.0]));
        assert_eq!(l.into_scalar(), 0.0);
    }

    #[test]
    fn pos_weight_scales_the_positive_pixels() {
        // A ball pixel (target 1), a background pixel (0) and a shoulder (0.5), each 0.5 off.
        let (pred, target, mask) = (t(&[0.5, 0.5, 0.0]), t(&[1.0, 0.0, 0.5]), t(&[1.0; 3]));
        let plain = MSE.forward(pred.clone(), target.clone(), mask.clone());
        assert!((plain.into_scalar() - 0.25).abs() < 1e-6);
        let weighted = HeatmapLoss::Mse { pos_weight: 3.0 }.forward(pred, target, mask);
        // (3 · 0.25 + 1 · 0.25 + 2 · 0.25) / 3: the ball pixel counts 3×, the shoulder 2×.
        assert!((weighted.into_scalar() - 0.5).abs() < 1e-6);

        // Focal: the positive term is multiplied by pos_weight, the negative one is not.
        let logits = [0.3f32, -1.2];
        let target = [1.0f32, 0.0];
        let focal = |w: f64| {
            HeatmapLoss::Focal {
                alpha: 2.0,
                beta: 4.0,
                pos_weight: w,
            }
            .forward(t(&logits), t(&target), t(&[1.0, 1.0]))
            .into_scalar() as f64
        };
        let p = |x: f32| 1.0 / (1.0 + (-(x as f64)).exp());
        let pos = -(1.0 - p(logits[0])).powi(2) * p(logits[0]).ln();
        let neg = -p(logits[1]).powi(2) * (1.0 - p(logits[1])).ln();
        assert!((focal(1.0) - (pos + neg)).abs() < 1e-5);
        assert!((focal(5.0) - (5.0 * pos + neg)).abs() < 1e-5);
    }

    #[test]
    fn focal_matches_hand_computation() {
        let (alpha, beta) = (2.0, 4.0);
        let logits = [0.3f32, -1.2];
        let target = [1.0f32, 0.25];
        let l = HeatmapLoss::Focal {
            alpha,
            beta,
            pos_weight: 1.0,
        }
        .forward(t(&logits), t(&target), t(&[1.0, 1.0]))
        .into_scalar() as f64;
        let mut want = 0.0;
        for (x, y) in logits.iter().zip(target) {
            let p = 1.0 / (1.0 + (-(*x as f64)).exp());
            let y = y as f64;
            want -= y * (1.0 - p).powf(alpha) * p.ln()
                + (1.0 - y).powf(beta) * p.powf(alpha) * (1.0 - p).ln();
        }
        want /= 1.25;
        assert!((l - want).abs() < 1e-5, "{l} vs {want}");
    }
}
