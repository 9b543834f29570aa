//! Stochastic gradient descent with momentum, dampening, Nesterov momentum and
//! weight decay, as `torch.optim.SGD` defines them:
//!
//! ```text
//! g = g + weight_decay * p
//! buf = g                                    (first step)
//! buf = momentum * buf + (1 - dampening) * g (later steps)
//! g = g + momentum * buf  (nesterov)  or  g = buf
//! p = p - lr * g
//! ```

use super::{parse_hyper, OptimCore, Optimizer};
use jit_core::{Error, Result, Var};
use std::collections::HashMap;

/// SGD. Build with [`Sgd::new`] and the `with_*` setters.
pub struct Sgd {
    core: OptimCore,
    momentum: f64,
    dampening: f64,
    weight_decay: f64,
    nesterov: bool,
}

impl Sgd {
    /// Plain SGD with learning rate `lr` over `params`.
    pub fn new(params: Vec<Var>, lr: f64) -> Result<Sgd> {
        Ok(Sgd {
            core: OptimCore::new("Sgd::new", params, lr)?,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        })
    }

    /// Momentum factor (0 disables the momentum buffer).
    pub fn with_momentum(mut self, momentum: f64) -> Sgd {
        self.momentum = momentum;
        self
    }

    /// Dampening of the momentum.
    pub fn with_dampening(mut self, dampening: f64) -> Sgd {
        self.dampening = dampening;
        self
    }

    /// L2 penalty added to the gradient.
    pub fn with_weight_decay(mut self, weight_decay: f64) -> Sgd {
        self.weight_decay = weight_decay;
        self
    }

    /// Nesterov momentum; needs momentum > 0 and zero dampening (as in PyTorch).
    pub fn with_nesterov(mut self, nesterov: bool) -> Result<Sgd> {
        if nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            return Err(Error::argument("Sgd", "Nesterov momentum requires a momentum and zero dampening"));
        }
        self.nesterov = nesterov;
        Ok(self)
    }
}

impl Optimizer for Sgd {
    fn kind(&self) -> &'static str {
        "sgd"
    }
    fn core(&self) -> &OptimCore {
        &self.core
    }
    fn core_mut(&mut self) -> &mut OptimCore {
        &mut self.core
    }
    fn state_names(&self) -> &'static [&'static str] {
        &["momentum_buffer"]
    }

    fn update(&self, _index: usize, p: &Var, g: &Var, state: &[Var]) -> Result<(Var, Vec<Var>)> {
        let mut g = g.clone();
        if self.weight_decay != 0.0 {
            g = g.try_add(&p.try_mul(self.weight_decay)?)?;
        }
        let mut new_state = vec![];
        if self.momentum != 0.0 {
            let buf = match state.first() {
                None => g.clone(),
                Some(b) => b.try_mul(self.momentum)?.try_add(&g.try_mul(1.0 - self.dampening)?)?,
            };
            g = if self.nesterov { g.try_add(&buf.try_mul(self.momentum)?)? } else { buf.clone() };
            new_state.push(buf);
        }
        Ok((p.try_sub(&g.try_mul(self.core.lr)?)?, new_state))
    }

    fn hyper_parameters(&self) -> HashMap<String, String> {
        HashMap::from([
            ("momentum".into(), format!("{:e}", self.momentum)),
            ("dampening".into(), format!("{:e}", self.dampening)),
            ("weight_decay".into(), format!("{:e}", self.weight_decay)),
            ("nesterov".into(), self.nesterov.to_string()),
        ])
    }

    fn set_hyper_parameters(&mut self, h: &HashMap<String, String>) -> Result<()> {
        self.momentum = parse_hyper(h, "momentum")?.unwrap_or(self.momentum);
        self.dampening = parse_hyper(h, "dampening")?.unwrap_or(self.dampening);
        self.weight_decay = parse_hyper(h, "weight_decay")?.unwrap_or(self.weight_decay);
        self.nesterov = parse_hyper(h, "nesterov")?.unwrap_or(self.nesterov);
        Ok(())
    }
}
