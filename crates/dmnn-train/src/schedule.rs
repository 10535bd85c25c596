//! Learning-rate schedule: linear warm-up, then step decay or cosine annealing, stepped once per
//! iteration (Burn's schedulers step per iteration).

use burn::optim::lr_scheduler::LrScheduler;
use burn::optim::LearningRate;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

/// The shape of the schedule after warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LrDecay {
    /// Multiply by `gamma` every `every_epochs` epochs (ImageNet: 0.1 every 30).
    Step {
        /// Epochs between decays.
        every_epochs: usize,
        /// Factor applied at each decay.
        gamma: f64,
    },
    /// Cosine from the base rate to 0 over the training after warm-up.
    Cosine,
}

impl std::str::FromStr for LrDecay {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cosine" => Ok(Self::Cosine),
            "step" => Ok(Self::Step { every_epochs: 30, gamma: 0.1 }),
            other => Err(format!("lr schedule '{other}' is not one of step, cosine")),
        }
    }
}

/// The schedule, as a function of the iteration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WarmupSchedule {
    /// Peak learning rate.
    pub base_lr: f64,
    /// Iterations per epoch.
    pub steps_per_epoch: usize,
    /// Total epochs.
    pub epochs: usize,
    /// Epochs of linear warm-up from `base_lr / warmup_steps` to `base_lr` (0: none).
    pub warmup_epochs: f64,
    /// Decay after warm-up.
    pub decay: LrDecay,
    /// Iterations done so far.
    pub iteration: usize,
}

impl WarmupSchedule {
    /// The learning rate of iteration `i` (0-based).
    pub fn lr_at(&self, i: usize) -> f64 {
        let warmup = (self.warmup_epochs * self.steps_per_epoch as f64).round() as usize;
        if i < warmup {
            return self.base_lr * (i + 1) as f64 / warmup as f64;
        }
        match self.decay {
            LrDecay::Step { every_epochs, gamma } => {
                let epoch = i / self.steps_per_epoch.max(1);
                self.base_lr * gamma.powi((epoch / every_epochs.max(1)) as i32)
            }
            LrDecay::Cosine => {
                let total = (self.epochs * self.steps_per_epoch).max(warmup + 1);
                let t = (i - warmup) as f64 / (total - warmup) as f64;
                0.5 * self.base_lr * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos())
            }
        }
    }
}

impl LrScheduler for WarmupSchedule {
    type Record<B: Backend> = usize;

    fn step(&mut self) -> LearningRate {
        let lr = self.lr_at(self.iteration);
        self.iteration += 1;
        lr
    }

    fn to_record<B: Backend>(&self) -> Self::Record<B> {
        self.iteration
    }

    fn load_record<B: Backend>(mut self, record: Self::Record<B>) -> Self {
        self.iteration = record;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(decay: LrDecay) -> WarmupSchedule {
        WarmupSchedule { base_lr: 0.1, steps_per_epoch: 10, epochs: 90, warmup_epochs: 1.0, decay, iteration: 0 }
    }

    #[test]
    fn warmup_then_step() {
        let s = schedule(LrDecay::Step { every_epochs: 30, gamma: 0.1 });
        assert!((s.lr_at(0) - 0.01).abs() < 1e-12);
        assert!((s.lr_at(9) - 0.1).abs() < 1e-12);
        assert!((s.lr_at(299) - 0.1).abs() < 1e-12);
        assert!((s.lr_at(300) - 0.01).abs() < 1e-12);
        assert!((s.lr_at(600) - 0.001).abs() < 1e-12);
    }

    #[test]
    fn cosine_ends_at_zero_and_resumes() {
        let mut s = schedule(LrDecay::Cosine);
        assert!(s.lr_at(899) < 1e-5);
        let first: Vec<f64> = (0..20).map(|_| s.step()).collect();
        let record = LrScheduler::to_record::<burn::backend::Flex>(&s);
        let mut resumed = schedule(LrDecay::Cosine).load_record::<burn::backend::Flex>(record);
        assert_eq!(resumed.step(), s.step());
        assert!(first[10] > first[19]);
    }
}
