//! Learning-rate schedule: linear warmup from `warmup_start_factor · lr`, then cosine decay to
//! `min_lr` (or constant), computed per optimizer step.

/// The schedule's shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    /// Peak learning rate.
    pub base_lr: f64,
    /// Floor of the cosine.
    pub min_lr: f64,
    /// Steps of linear warmup.
    pub warmup_steps: usize,
    /// Warmup starts at `base_lr · warmup_start_factor`.
    pub warmup_start_factor: f64,
    /// All steps of the run.
    pub total_steps: usize,
    /// Cosine decay after warmup (else constant).
    pub cosine: bool,
}

impl LrSchedule {
    /// Learning rate of step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            let frac = step as f64 / self.warmup_steps as f64;
            return self.base_lr
                * (self.warmup_start_factor + (1.0 - self.warmup_start_factor) * frac);
        }
        if !self.cosine {
            return self.base_lr;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let t = ((step - self.warmup_steps) as f64 / span).min(1.0);
        self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        let s = LrSchedule {
            base_lr: 1.0,
            min_lr: 0.0,
            warmup_steps: 10,
            warmup_start_factor: 0.1,
            total_steps: 110,
            cosine: true,
        };
        assert!((s.lr(0) - 0.1).abs() < 1e-12);
        assert!((s.lr(5) - 0.55).abs() < 1e-12);
        assert!((s.lr(10) - 1.0).abs() < 1e-12);
        assert!((s.lr(60) - 0.5).abs() < 1e-12);
        assert!(s.lr(110).abs() < 1e-12);
        let c = LrSchedule { cosine: false, ..s };
        assert_eq!(c.lr(100), 1.0);
    }
}
