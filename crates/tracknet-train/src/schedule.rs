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
    /// `training.optimizer.lr` and `training.scheduler` over `epochs × steps_per_epoch` steps.
    pub fn from_config(t: &tracknet_config::TrainingConfig, steps_per_epoch: usize) -> Self {
        LrSchedule {
            base_lr: t.optimizer.lr,
            min_lr: t.scheduler.min_lr,
            warmup_steps: t.scheduler.warmup_epochs * steps_per_epoch,
            warmup_start_factor: t.scheduler.warmup_start_factor,
            total_steps: t.epochs * steps_per_epoch,
            cosine: t.scheduler.name == tracknet_config::SchedulerName::Cosine,
        }
    }

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

    #[test]
    fn scheduler_keys_from_the_config() {
        let t = tracknet_config::RunConfig::from_yaml_str(
            "training: {epochs: 5, optimizer: {lr: 2.0}, scheduler: {name: cosine, warmup_epochs: 1, \
             warmup_start_factor: 0.5, min_lr: 0.25}}",
        )
        .unwrap()
        .training;
        let s = LrSchedule::from_config(&t, 10);
        assert_eq!(s.lr(0), 1.0, "warmup starts at lr × warmup_start_factor");
        assert_eq!(s.lr(10), 2.0, "the peak after warmup_epochs × steps");
        assert!((s.lr(50) - 0.25).abs() < 1e-12, "the cosine ends at min_lr");
        assert!(s.lr(30) > 0.25 && s.lr(30) < 2.0);
        let constant = LrSchedule::from_config(
            &tracknet_config::RunConfig::from_yaml_str("training: {scheduler: {name: constant}}")
                .unwrap()
                .training,
            10,
        );
        assert_eq!(constant.lr(150), constant.base_lr);
    }
}
