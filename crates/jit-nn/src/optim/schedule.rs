//! Learning-rate schedules: the rate as a function of the base rate and the step.

use super::Optimizer;

/// A learning rate as a function of the base rate and the step (from 0).
pub trait LrSchedule {
    /// The rate at `step`.
    fn lr(&self, base_lr: f64, step: u64) -> f64;
}

/// `torch.optim.lr_scheduler.StepLR`: multiply by `gamma` every `step_size` steps.
#[derive(Debug, Clone, Copy)]
pub struct StepLr {
    /// Steps between decays (at least 1).
    pub step_size: u64,
    /// Factor per decay.
    pub gamma: f64,
}

impl LrSchedule for StepLr {
    fn lr(&self, base_lr: f64, step: u64) -> f64 {
        base_lr * self.gamma.powf((step / self.step_size.max(1)) as f64)
    }
}

/// `torch.optim.lr_scheduler.CosineAnnealingLR` (its closed form): from the base rate
/// down to `eta_min` over `t_max` steps along half a cosine, then back up.
#[derive(Debug, Clone, Copy)]
pub struct CosineAnnealing {
    /// Steps of the half period (at least 1).
    pub t_max: u64,
    /// The lowest rate.
    pub eta_min: f64,
}

impl LrSchedule for CosineAnnealing {
    fn lr(&self, base_lr: f64, step: u64) -> f64 {
        let phase = std::f64::consts::PI * step as f64 / self.t_max.max(1) as f64;
        self.eta_min + (base_lr - self.eta_min) * (1.0 + phase.cos()) / 2.0
    }
}

/// Inverse-time decay `lr / (1 + decay * step)`: the AdaIN reference training's
/// `adjust_learning_rate` (decay 5e-5).
#[derive(Debug, Clone, Copy)]
pub struct InverseDecay {
    /// Decay per step.
    pub decay: f64,
}

impl LrSchedule for InverseDecay {
    fn lr(&self, base_lr: f64, step: u64) -> f64 {
        base_lr / (1.0 + self.decay * step as f64)
    }
}

/// Applies a schedule to an optimizer: remembers the base rate and sets the rate
/// for each step.
pub struct LrScheduler<S: LrSchedule> {
    /// The schedule.
    pub schedule: S,
    /// The rate at step 0.
    pub base_lr: f64,
}

impl<S: LrSchedule> LrScheduler<S> {
    /// A scheduler whose base rate is the optimizer's current rate.
    pub fn new(schedule: S, opt: &dyn Optimizer) -> LrScheduler<S> {
        LrScheduler { schedule, base_lr: opt.lr() }
    }

    /// The rate at `step`.
    pub fn lr_at(&self, step: u64) -> f64 {
        self.schedule.lr(self.base_lr, step)
    }

    /// Sets the optimizer's rate for its next step (its step count so far), and
    /// returns it.
    pub fn apply(&self, opt: &mut dyn Optimizer) -> f64 {
        let lr = self.lr_at(opt.steps());
        opt.set_lr(lr);
        lr
    }
}
