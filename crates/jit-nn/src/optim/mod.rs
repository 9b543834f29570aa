//! Optimizers and learning-rate schedules.
//!
//! An optimizer holds its parameters (values marked `requires_grad_(true)`) and its
//! per-parameter state. One step builds every new parameter and state value as a
//! lazy graph and computes them in one realisation together with the loss and the
//! gradients, so the update fuses with the backward pass; the new values then
//! replace the old ones in place ([`Var::assign`]), so modules that hold the
//! parameters see them.
//!
//! Three ways to step, as in Jittor and PyTorch:
//! * [`Optimizer::step`]`(&loss)`: gradients of `loss` (plus anything accumulated by
//!   [`jit_core::backward`]), update, then clear the accumulated gradients (Jittor).
//! * [`Optimizer::step_with_grads`]: gradients computed elsewhere.
//! * [`Optimizer::step_accumulated`]: the gradients accumulated by
//!   [`jit_core::backward`]; clear them with [`Optimizer::zero_grad`] (PyTorch).

mod adam;
mod lbfgs;
mod schedule;
mod sgd;

pub use adam::{Adam, AdamW};
pub use lbfgs::{Lbfgs, LbfgsOptions};
pub use schedule::{CosineAnnealing, InverseDecay, LrSchedule, LrScheduler, StepLr};
pub use sgd::Sgd;

use jit_core::{Error, Result, Var};
use std::collections::HashMap;
use std::path::Path;

/// What every optimizer does.
pub trait Optimizer {
    /// Name stored in saved state (`"sgd"`, `"adam"`, `"adamw"`).
    fn kind(&self) -> &'static str;

    /// The parameters, step count, learning rate and per-parameter state.
    fn core(&self) -> &OptimCore;

    /// Mutable access to [`Optimizer::core`].
    fn core_mut(&mut self) -> &mut OptimCore;

    /// The parameters, in the order gradients are given.
    fn params(&self) -> &[Var] {
        &self.core().params
    }

    /// The current learning rate.
    fn lr(&self) -> f64 {
        self.core().lr
    }

    /// Sets the learning rate (schedules call this).
    fn set_lr(&mut self, lr: f64) {
        self.core_mut().lr = lr;
    }

    /// Number of steps taken.
    fn steps(&self) -> u64 {
        self.core().steps
    }

    /// Sets the step count.
    fn set_steps(&mut self, steps: u64) {
        self.core_mut().steps = steps;
    }

    /// The state of parameter `index` (empty before its first update).
    fn state(&self, index: usize) -> &[Var] {
        &self.core().state[index]
    }

    /// Replaces the state of parameter `index`.
    fn set_state(&mut self, index: usize, state: Vec<Var>) {
        self.core_mut().state[index] = state;
    }

    /// New values of one parameter and its state from its gradient. `state` is empty
    /// before the first update of this parameter. Called with recording off.
    fn update(&self, index: usize, param: &Var, grad: &Var, state: &[Var]) -> Result<(Var, Vec<Var>)>;

    /// The per-parameter state (names as in PyTorch's state dicts).
    fn state_names(&self) -> &'static [&'static str];

    /// Hyper-parameters as text, saved with the state and restored on load.
    fn hyper_parameters(&self) -> HashMap<String, String>;

    /// Restores hyper-parameters from saved text.
    fn set_hyper_parameters(&mut self, h: &HashMap<String, String>) -> Result<()>;

    /// One update from `grads` (one per parameter; `None` leaves that parameter and its
    /// state unchanged). `extra` values (the loss, say) are computed in the same pass.
    fn step_with_grads(&mut self, grads: &[Option<Var>], extra: &[Var]) -> Result<()> {
        let updates = self.plan_updates(grads)?;
        let mut all: Vec<Var> = extra.to_vec();
        all.extend(updates.values());
        jit_core::realize(&all)?;
        self.apply_updates(updates)
    }

    /// The first half of a step: the new parameters and states from `grads` (one
    /// per parameter; `None` skips that parameter), built as a lazy graph and not yet
    /// computed. Realise them (with anything else that should share the pass) and
    /// hand them to [`Optimizer::apply_updates`], or drop them to skip the step.
    fn plan_updates(&self, grads: &[Option<Var>]) -> Result<PlannedUpdates> {
        let params = self.params();
        if grads.len() != params.len() {
            return Err(Error::argument("step", format!("{} gradients for {} parameters", grads.len(), params.len())));
        }
        let mut updates = Vec::new();
        jit_core::no_grad(|| -> Result<()> {
            for (i, (p, g)) in params.iter().zip(grads).enumerate() {
                let Some(g) = g else { continue };
                if g.shape() != p.shape() {
                    return Err(Error::shape(
                        "step",
                        format!("parameter {i} has shape {:?} but its gradient has shape {:?}", p.shape(), g.shape()),
                    ));
                }
                let g = g.cast(p.dtype());
                let (new_p, new_s) = self.update(i, p, &g, self.state(i))?;
                updates.push((i, new_p, new_s));
            }
            Ok(())
        })?;
        Ok(PlannedUpdates(updates))
    }

    /// The second half of a step: writes the planned parameters in place, keeps the
    /// new states and counts the step.
    fn apply_updates(&mut self, updates: PlannedUpdates) -> Result<()> {
        let params = self.params().to_vec();
        for (i, new_p, new_s) in updates.0 {
            params[i].assign(&new_p)?;
            self.set_state(i, new_s.iter().map(Var::detach).collect());
        }
        self.set_steps(self.steps() + 1);
        Ok(())
    }

    /// Jittor's `optimizer.step(loss)`: the gradients of `loss` plus any accumulated by
    /// [`jit_core::backward`], one update computed together with the loss, then the
    /// accumulated gradients are cleared.
    fn step(&mut self, loss: &Var) -> Result<()> {
        let grads = self.loss_grads(loss)?;
        self.step_with_grads(&grads, std::slice::from_ref(loss))?;
        self.zero_grad();
        Ok(())
    }

    /// The gradients [`Optimizer::step`] uses: those of `loss` (lazy) plus any
    /// accumulated by [`jit_core::backward`], one per parameter.
    fn loss_grads(&self, loss: &Var) -> Result<Vec<Option<Var>>> {
        let params = self.params();
        let fresh = jit_core::grad(loss, params)?;
        params
            .iter()
            .zip(fresh)
            .map(|(p, g)| match p.grad() {
                Some(acc) => acc.try_add(&g).map(Some),
                None => Ok(Some(g)),
            })
            .collect()
    }

    /// PyTorch's `optimizer.step()`: the gradients accumulated by
    /// [`jit_core::backward`]; parameters without one are skipped.
    fn step_accumulated(&mut self) -> Result<()> {
        let grads: Vec<Option<Var>> = self.params().iter().map(Var::grad).collect();
        self.step_with_grads(&grads, &[])
    }

    /// Clears the accumulated gradients of every parameter.
    fn zero_grad(&self) {
        for p in self.params() {
            p.zero_grad();
        }
    }

    /// Saves the step count, hyper-parameters and per-parameter state to a
    /// `.safetensors` file (atomically).
    fn save(&self, path: &Path) -> Result<()> {
        let mut meta = self.hyper_parameters();
        meta.insert("optimizer".into(), self.kind().into());
        meta.insert("steps".into(), self.steps().to_string());
        meta.insert("lr".into(), format!("{:e}", self.lr()));
        meta.insert("params".into(), self.params().len().to_string());
        let mut tensors = Vec::new();
        for i in 0..self.params().len() {
            for (name, v) in self.state_names().iter().zip(self.state(i)) {
                tensors.push((format!("state.{i}.{name}"), v.clone()));
            }
        }
        crate::safetensors_io::save(path, &tensors, meta)
    }

    /// Restores what [`Optimizer::save`] wrote. The file must come from the same
    /// kind of optimizer over parameters of the same number and shapes.
    fn load(&mut self, path: &Path) -> Result<()> {
        let (tensors, meta) = crate::safetensors_io::load(path)?;
        let get = |k: &str| meta.get(k).ok_or_else(|| Error::file(path, format!("optimizer state without {k:?}")));
        let kind = get("optimizer")?;
        if kind != self.kind() {
            return Err(Error::file(path, format!("holds {kind} state, not {} state", self.kind())));
        }
        let n: usize = get("params")?.parse().map_err(|_| Error::file(path, "bad parameter count"))?;
        if n != self.params().len() {
            return Err(Error::file(
                path,
                format!("holds state for {n} parameters but this optimizer has {}", self.params().len()),
            ));
        }
        let steps: u64 = get("steps")?.parse().map_err(|_| Error::file(path, "bad step count"))?;
        let lr: f64 = get("lr")?.parse().map_err(|_| Error::file(path, "bad learning rate"))?;
        let mut by_name: HashMap<String, Var> = tensors.into_iter().collect();
        let mut states = Vec::with_capacity(n);
        for i in 0..n {
            let p = &self.params()[i];
            let mut s = Vec::new();
            for name in self.state_names() {
                let Some(v) = by_name.remove(&format!("state.{i}.{name}")) else { continue };
                // a step count is a scalar; everything else has the parameter's shape
                let want: &[usize] = if *name == "step" { &[] } else { p.shape() };
                if v.shape() != want {
                    return Err(Error::file(
                        path,
                        format!("state.{i}.{name} has shape {:?} but parameter {i} needs {want:?}", v.shape()),
                    ));
                }
                s.push(if *name == "step" { v } else { v.cast(p.dtype()) });
            }
            if !s.is_empty() && s.len() != self.state_names().len() {
                return Err(Error::file(path, format!("incomplete state for parameter {i}")));
            }
            states.push(s);
        }
        if let Some(extra) = by_name.keys().next() {
            return Err(Error::file(path, format!("unexpected tensor {extra:?} in optimizer state")));
        }
        self.set_hyper_parameters(&meta)?;
        for (i, s) in states.into_iter().enumerate() {
            self.set_state(i, s);
        }
        self.set_steps(steps);
        self.set_lr(lr);
        Ok(())
    }
}

/// New parameter and state values of one step, planned by
/// [`Optimizer::plan_updates`] and not yet written.
pub struct PlannedUpdates(Vec<(usize, Var, Vec<Var>)>);

impl PlannedUpdates {
    /// Every new value (parameters and states), to realise in one pass.
    pub fn values(&self) -> Vec<Var> {
        self.0.iter().flat_map(|(_, p, s)| std::iter::once(p.clone()).chain(s.iter().cloned())).collect()
    }

    /// How many parameters the step updates.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when the step updates no parameter.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What every optimizer keeps: its parameters, their state, the learning rate and
/// the step count.
pub struct OptimCore {
    /// The parameters.
    pub params: Vec<Var>,
    /// Per-parameter state, empty before a parameter's first update.
    pub state: Vec<Vec<Var>>,
    /// Learning rate.
    pub lr: f64,
    /// Steps taken.
    pub steps: u64,
}

impl OptimCore {
    /// A core over `params` (checked: floating point, requiring gradients).
    pub fn new(op: &str, params: Vec<Var>, lr: f64) -> Result<OptimCore> {
        check_params(op, &params)?;
        let n = params.len();
        Ok(OptimCore { params, state: vec![vec![]; n], lr, steps: 0 })
    }
}

/// Checks that every parameter requires a gradient and is floating point.
fn check_params(op: &str, params: &[Var]) -> Result<()> {
    for (i, p) in params.iter().enumerate() {
        if !p.dtype().is_float() || !p.requires_grad() {
            return Err(Error::argument(
                op,
                format!(
                    "parameter {i} (shape {:?}, {}) must be a floating-point value with requires_grad_(true)",
                    p.shape(),
                    p.dtype()
                ),
            ));
        }
    }
    Ok(())
}

/// Parses a saved hyper-parameter.
pub(crate) fn parse_hyper<T: std::str::FromStr>(h: &HashMap<String, String>, key: &str) -> Result<Option<T>> {
    match h.get(key) {
        None => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| Error::argument("load", format!("bad value {s:?} for the hyper-parameter {key}"))),
    }
}
