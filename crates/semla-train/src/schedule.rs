//! Learning-rate schedule: linear warmup, then cosine decay.

/// `lr(step)` for steps `0..total_steps`: rises linearly from
/// `base_lr / warmup_steps` to `base_lr` over the first `warmup_steps` steps,
/// then follows half a cosine from `base_lr` down to `min_lr` at the last step.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WarmupCosine {
    /// Peak learning rate.
    pub base_lr: f64,
    /// Final learning rate.
    pub min_lr: f64,
    /// Number of warmup steps (0: none).
    pub warmup_steps: usize,
    /// Total number of steps of the run.
    pub total_steps: usize,
}

impl WarmupCosine {
    /// The learning rate used for the update of step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.base_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps);
        if decay_steps <= 1 {
            return self.base_lr;
        }
        let progress = ((step - self.warmup_steps) as f64 / (decay_steps - 1) as f64).min(1.0);
        self.min_lr
            + 0.5 * (self.base_lr - self.min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        let s = WarmupCosine {
            base_lr: 1.0,
            min_lr: 0.1,
            warmup_steps: 4,
            total_steps: 14,
        };
        assert!((s.lr(0) - 0.25).abs() < 1e-12);
        assert!((s.lr(3) - 1.0).abs() < 1e-12);
        assert!((s.lr(4) - 1.0).abs() < 1e-12);
        // Halfway through the 10 decay steps (progress 4.5/9 = 0.5): midpoint.
        let mid =
            s.min_lr + 0.5 * (s.base_lr - s.min_lr) * (1.0 + (std::f64::consts::PI * 0.5).cos());
        assert!((mid - 0.55).abs() < 1e-12);
        assert!((s.lr(13) - 0.1).abs() < 1e-12);
        for step in 4..13 {
            assert!(s.lr(step + 1) < s.lr(step));
        }
    }
}
