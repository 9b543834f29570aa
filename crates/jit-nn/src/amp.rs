//! Mixed-precision training: [`autocast`] (re-exported from `jit-ops`) runs matrix
//! products and convolutions in f16 or bf16 while the parameters stay f32 (the
//! master weights), and [`GradScaler`] scales the loss so that small gradients survive
//! half precision, skipping the steps whose gradients overflowed. PyTorch's recipe:
//!
//! ```
//! # fn main() -> jit_core::Result<()> {
//! use jit_nn::amp::{autocast, GradScaler};
//! use jit_nn::layers::Linear;
//! use jit_nn::optim::Adam;
//! use jit_nn::prelude::*;
//! use jit_nn::{Module, ModuleExt};
//!
//! let model = Linear::new(8, 4, true)?;
//! let mut opt = Adam::new(model.parameters(), 1e-3)?;
//! let mut scaler = GradScaler::new();
//! let x = Var::randn(&[16, 8], DType::F32)?;
//! let target = Var::zeros(&[16, 4], DType::F32);
//! let loss = autocast(DType::F16, || -> Result<Var> {
//!     let y = model.forward(&x)?; // f16
//!     mse_loss(&y, &target, Reduction::Mean) // f32
//! })??;
//! let outcome = scaler.step(&mut opt, &loss)?;
//! assert!(!outcome.skipped);
//! # Ok(())
//! # }
//! ```

use crate::optim::Optimizer;
use jit_core::{DType, Error, Result, Var};
pub use jit_ops::autocast::{autocast, autocast_dtype, autocast_off};
use jit_ops::ReduceOps;

/// Dynamic loss scaling (PyTorch's `torch.amp.GradScaler`). The loss is multiplied
/// by the scale before differentiation; the gradients are divided by it before the
/// optimizer sees them. A step whose gradients hold an infinity or a NaN is skipped
/// (parameters, optimizer state and step count unchanged) and the scale is
/// multiplied by the backoff factor; after `growth_interval` steps in a row without
/// one, it is multiplied by the growth factor. The check, the unscaling and the
/// update are computed in the same pass as the gradients: a step costs one
/// realisation and one scalar read back, skipped or not.
#[derive(Debug, Clone, PartialEq)]
pub struct GradScaler {
    scale: f64,
    growth_factor: f64,
    backoff_factor: f64,
    growth_interval: u64,
    growth_tracker: u64,
    enabled: bool,
}

/// What one [`GradScaler`] step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScaledStep {
    /// True when a gradient was not finite and the step was skipped.
    pub skipped: bool,
    /// The scale the gradients were computed with.
    pub scale: f64,
    /// The scale for the next step.
    pub next_scale: f64,
}

impl Default for GradScaler {
    fn default() -> Self {
        GradScaler::new()
    }
}

impl GradScaler {
    /// PyTorch's defaults: scale 2^16, growth factor 2, backoff factor 0.5, growth
    /// interval 2000.
    pub fn new() -> GradScaler {
        GradScaler {
            scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
            growth_tracker: 0,
            enabled: true,
        }
    }

    /// The starting scale (positive and finite).
    pub fn with_init_scale(mut self, scale: f64) -> Result<GradScaler> {
        if !(scale.is_finite() && scale > 0.0) {
            return Err(Error::argument("GradScaler", format!("the scale must be positive and finite, got {scale}")));
        }
        self.scale = scale;
        Ok(self)
    }

    /// The factor the scale grows by after `growth_interval` clean steps (above 1).
    pub fn with_growth_factor(mut self, factor: f64) -> Result<GradScaler> {
        if !(factor.is_finite() && factor > 1.0) {
            return Err(Error::argument(
                "GradScaler",
                format!("the growth factor must be finite and above 1, got {factor}"),
            ));
        }
        self.growth_factor = factor;
        Ok(self)
    }

    /// The factor the scale shrinks by after a skipped step (between 0 and 1).
    pub fn with_backoff_factor(mut self, factor: f64) -> Result<GradScaler> {
        if !(factor > 0.0 && factor < 1.0) {
            return Err(Error::argument(
                "GradScaler",
                format!("the backoff factor must lie strictly between 0 and 1, got {factor}"),
            ));
        }
        self.backoff_factor = factor;
        Ok(self)
    }

    /// How many clean steps in a row make the scale grow (at least 1).
    pub fn with_growth_interval(mut self, steps: u64) -> Result<GradScaler> {
        if steps == 0 {
            return Err(Error::argument("GradScaler", "the growth interval must be at least 1 step"));
        }
        self.growth_interval = steps;
        Ok(self)
    }

    /// Turns scaling on or off; off, every method passes its input through and
    /// steps are never skipped (PyTorch's `enabled=False`).
    pub fn enabled(mut self, on: bool) -> GradScaler {
        self.enabled = on;
        self
    }

    /// True when scaling is on.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The current scale (1 when disabled).
    pub fn get_scale(&self) -> f64 {
        if self.enabled {
            self.scale
        } else {
            1.0
        }
    }

    /// `loss` times the scale: differentiate this (with [`jit_core::backward`], say)
    /// and then call [`GradScaler::step_accumulated`].
    pub fn scale(&self, loss: &Var) -> Result<Var> {
        if self.enabled {
            loss.try_mul(self.scale)
        } else {
            Ok(loss.clone())
        }
    }

    /// One step on the gradients of `loss` (unscaled: the scaler scales it) plus any
    /// accumulated by [`jit_core::backward`] on a [scaled](GradScaler::scale) loss;
    /// the accumulated gradients are cleared afterwards, as [`Optimizer::step`] does.
    pub fn step(&mut self, opt: &mut dyn Optimizer, loss: &Var) -> Result<ScaledStep> {
        let grads = opt.loss_grads(&self.scale(loss)?)?;
        let outcome = self.step_with_grads(opt, &grads, std::slice::from_ref(loss))?;
        opt.zero_grad();
        Ok(outcome)
    }

    /// PyTorch's `scaler.step(optimizer); scaler.update()` after
    /// `scaler.scale(loss).backward()`: one step on the accumulated (scaled)
    /// gradients. They are left in place; clear them with [`Optimizer::zero_grad`].
    pub fn step_accumulated(&mut self, opt: &mut dyn Optimizer) -> Result<ScaledStep> {
        let grads: Vec<Option<Var>> = opt.params().iter().map(Var::grad).collect();
        self.step_with_grads(opt, &grads, &[])
    }

    /// One step from gradients of the scaled loss (one per parameter; `None` leaves
    /// that parameter alone). `extra` values are computed in the same pass. The
    /// parameters must not be f16 or bf16: their gradients would be unscaled in half
    /// precision (PyTorch refuses the same); keep them f32 and run the forward pass
    /// under [`autocast`].
    pub fn step_with_grads(
        &mut self,
        opt: &mut dyn Optimizer,
        scaled_grads: &[Option<Var>],
        extra: &[Var],
    ) -> Result<ScaledStep> {
        let scale = self.get_scale();
        if !self.enabled {
            opt.step_with_grads(scaled_grads, extra)?;
            return Ok(ScaledStep { skipped: false, scale, next_scale: scale });
        }
        if let Some((i, p)) =
            opt.params().iter().enumerate().find(|(_, p)| matches!(p.dtype(), DType::F16 | DType::BF16))
        {
            return Err(Error::dtype(
                "GradScaler",
                format!(
                    "parameter {i} (shape {:?}) is {}: gradients cannot be unscaled in half precision; keep the \
                     parameters f32 and run the forward pass under autocast",
                    p.shape(),
                    p.dtype()
                ),
            ));
        }
        // 0 when every gradient is finite, NaN otherwise (0 * inf and 0 * NaN are NaN)
        let (unscaled, flag) = jit_core::no_grad(|| -> Result<(Vec<Option<Var>>, Var)> {
            let mut flag = Var::scalar(0.0f32);
            let mut unscaled = Vec::with_capacity(scaled_grads.len());
            for g in scaled_grads {
                let Some(g) = g else {
                    unscaled.push(None);
                    continue;
                };
                let nonfinite = g.cast(DType::F32).try_mul(0.0)?.sum(&[], false)?;
                flag = flag.try_add(&nonfinite)?;
                unscaled.push(Some(g.try_mul(1.0 / scale)?));
            }
            Ok((unscaled, flag))
        })?;
        let updates = opt.plan_updates(&unscaled)?;
        let mut all = vec![flag.clone()];
        all.extend(extra.iter().cloned());
        all.extend(updates.values());
        jit_core::realize(&all)?;
        let skipped = flag.item::<f32>()? != 0.0;
        if skipped {
            self.scale *= self.backoff_factor;
            self.growth_tracker = 0;
        } else {
            opt.apply_updates(updates)?;
            self.growth_tracker += 1;
            if self.growth_tracker == self.growth_interval {
                let grown = self.scale * self.growth_factor;
                if grown.is_finite() {
                    self.scale = grown;
                }
                self.growth_tracker = 0;
            }
        }
        Ok(ScaledStep { skipped, scale, next_scale: self.scale })
    }

    /// The scaler's state under PyTorch's `state_dict` names (`scale`,
    /// `growth_factor`, `backoff_factor`, `growth_interval`, `_growth_tracker`), to
    /// store with a checkpoint.
    pub fn state_dict(&self) -> Vec<(String, f64)> {
        vec![
            ("scale".into(), self.scale),
            ("growth_factor".into(), self.growth_factor),
            ("backoff_factor".into(), self.backoff_factor),
            ("growth_interval".into(), self.growth_interval as f64),
            ("_growth_tracker".into(), self.growth_tracker as f64),
        ]
    }

    /// Restores a state saved by [`GradScaler::state_dict`]; every key must be present
    /// and valid, or nothing changes.
    pub fn load_state_dict(&mut self, state: &[(String, f64)]) -> Result<()> {
        let get =
            |k: &str| {
                state.iter().find(|(n, _)| n == k).map(|(_, v)| *v).ok_or_else(|| {
                    Error::argument("GradScaler::load_state_dict", format!("the state has no {k:?} entry"))
                })
            };
        let whole = |k: &str, v: f64| -> Result<u64> {
            if v.is_finite() && v >= 0.0 && v.fract() == 0.0 {
                Ok(v as u64)
            } else {
                Err(Error::argument("GradScaler::load_state_dict", format!("{k} must be a whole number, got {v}")))
            }
        };
        let mut next = GradScaler::new()
            .enabled(self.enabled)
            .with_init_scale(get("scale")?)?
            .with_growth_factor(get("growth_factor")?)?
            .with_backoff_factor(get("backoff_factor")?)?
            .with_growth_interval(whole("growth_interval", get("growth_interval")?)?)?;
        next.growth_tracker = whole("_growth_tracker", get("_growth_tracker")?)?;
        *self = next;
        Ok(())
    }
}
