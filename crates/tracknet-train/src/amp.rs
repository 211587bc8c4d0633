//! `training.amp` and `training.precision` on the backend at hand: the dtype the step's
//! autocast region computes matrix ops in ([`tracknet_quant::autocast`]), and for fp16 the
//! dynamic loss scaling of PyTorch's `GradScaler` (bf16 has f32's range and needs none).

use burn::prelude::*;
use burn::tensor::FloatDType;
use serde::{Deserialize, Serialize};
use tracknet_config::{Precision, TrainingConfig};

/// The autocast dtype of the training step for `t` on `device`, and the one-line warning when
/// `amp` asks for a dtype this backend cannot compute in (the step then runs in f32).
pub fn step_dtype<B: Backend>(
    t: &TrainingConfig,
    device: &B::Device,
) -> (Option<FloatDType>, Option<String>) {
    if !t.mixed_precision() {
        return (None, None);
    }
    let dtype = match t.precision {
        Precision::Bf16 => FloatDType::BF16,
        _ => FloatDType::F16,
    };
    if tracknet_quant::autocast::supports::<B>(device, dtype) {
        return (Some(dtype), None);
    }
    let name = tracknet_quant::autocast::backend_name::<B>(device);
    (
        None,
        Some(format!(
            "training.amp (precision {}): the {name} backend has no {} arithmetic, so training \
             runs in f32 (mixed precision runs on wgpu with fp16 and on CUDA)",
            t.precision, t.precision
        )),
    )
}

/// Dynamic loss scaling as `torch.amp.GradScaler` with its defaults: the loss is multiplied
/// by `scale` before the backward so small fp16 gradients do not flush to zero; a step whose
/// gradients overflow is skipped and the scale halved; after [`LossScaler::GROWTH_INTERVAL`]
/// good steps in a row it doubles. Saved in checkpoints, so a resumed run continues with it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    /// The current factor on the loss.
    pub scale: f64,
    /// Finite steps since the last change of `scale`.
    pub good_steps: usize,
}

impl Default for LossScaler {
    fn default() -> Self {
        Self {
            scale: Self::INIT_SCALE,
            good_steps: 0,
        }
    }
}

impl LossScaler {
    /// PyTorch's `init_scale`.
    pub const INIT_SCALE: f64 = 65536.0;
    /// PyTorch's `growth_interval`.
    pub const GROWTH_INTERVAL: usize = 2000;
    /// Below this the gradients overflow however small the loss is made: the run stops with
    /// the non-finite error instead of skipping steps forever.
    pub const MIN_SCALE: f64 = 1.0 / (1u64 << 24) as f64;

    /// The scaler a step in `dtype` starts with: fp16 only (bf16 and f32 have f32's range).
    pub fn for_dtype(dtype: Option<FloatDType>) -> Option<Self> {
        (dtype == Some(FloatDType::F16)).then(Self::default)
    }

    /// Record a step whose (scaled) gradients were `finite`. Returns whether the step is taken.
    pub fn update(&mut self, finite: bool) -> bool {
        if finite {
            self.good_steps += 1;
            if self.good_steps == Self::GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        } else {
            self.scale *= 0.5;
            self.good_steps = 0;
        }
        finite
    }

    /// Whether the scale has fallen so far that skipping is no longer a remedy.
    pub fn exhausted(&self) -> bool {
        self.scale < Self::MIN_SCALE
    }
}

/// What the step's precision is: the autocast dtype and, with fp16, the loss scaler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepPrecision {
    /// The autocast region's dtype (`None`: f32).
    pub dtype: Option<FloatDType>,
    /// The loss factor of this step (1 without loss scaling).
    pub loss_scale: f64,
}

impl StepPrecision {
    /// f32, unscaled.
    pub fn f32() -> Self {
        Self {
            dtype: None,
            loss_scale: 1.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    #[test]
    fn overflow_skips_and_halves_and_good_steps_double_after_the_interval() {
        let mut s = LossScaler::default();
        assert_eq!(s.scale, 65536.0);
        assert!(!s.update(false));
        assert_eq!((s.scale, s.good_steps), (32768.0, 0));
        for _ in 0..LossScaler::GROWTH_INTERVAL - 1 {
            assert!(s.update(true));
        }
        assert_eq!(s.scale, 32768.0);
        assert!(s.update(true));
        assert_eq!((s.scale, s.good_steps), (65536.0, 0));
        // An overflow resets the count of good steps.
        s.update(true);
        s.update(false);
        assert_eq!((s.scale, s.good_steps), (32768.0, 0));
        let mut t = LossScaler::default();
        while !t.exhausted() {
            t.update(false);
        }
        assert!(t.scale < LossScaler::MIN_SCALE && t.scale > 0.0);
    }

    #[test]
    fn ndarray_runs_amp_in_f32_and_says_so_naming_the_key() {
        let mut t = TrainingConfig::default();
        let device = Default::default();
        t.amp = true;
        t.precision = Precision::Fp16;
        let (dtype, warning) = step_dtype::<NdArray>(&t, &device);
        assert_eq!(dtype, None);
        let w = warning.expect("a warning");
        assert!(
            w.starts_with("training.amp (precision fp16): the ndarray backend has no fp16"),
            "{w}"
        );
        assert!(w.contains("runs in f32"), "{w}");
        t.amp = false;
        assert_eq!(step_dtype::<NdArray>(&t, &device), (None, None));
        t.amp = true;
        t.precision = Precision::Fp32;
        assert_eq!(step_dtype::<NdArray>(&t, &device), (None, None));
    }
}
