//! Adam and AdamW, as `torch.optim.Adam` / `torch.optim.AdamW` define them (t counts
//! from 1):
//!
//! ```text
//! Adam:  g = g + weight_decay * p          AdamW:  p = p * (1 - lr * weight_decay)
//! m = beta1 * m + (1 - beta1) * g
//! v = beta2 * v + (1 - beta2) * g^2
//! denom = sqrt(v) / sqrt(1 - beta2^t) + eps
//! p = p - lr / (1 - beta1^t) * m / denom
//! ```

use super::{parse_hyper, OptimCore, Optimizer};
use jit_core::{Error, Result, Var};
use std::collections::HashMap;

/// Adam (`decoupled = false`, L2 weight decay added to the gradient) and AdamW
/// (`decoupled = true`, weight decay applied to the parameter).
pub struct Adam {
    core: OptimCore,
    betas: (f64, f64),
    eps: f64,
    weight_decay: f64,
    decoupled: bool,
}

/// AdamW is [`Adam`] with decoupled weight decay; build it with [`AdamW::new`].
pub struct AdamW;

impl AdamW {
    /// AdamW with PyTorch's defaults: betas (0.9, 0.999), eps 1e-8, weight decay 1e-2.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(params: Vec<Var>, lr: f64) -> Result<Adam> {
        let mut a = Adam::new(params, lr)?;
        a.decoupled = true;
        a.weight_decay = 1e-2;
        Ok(a)
    }
}

impl Adam {
    /// Adam with PyTorch's defaults: betas (0.9, 0.999), eps 1e-8, no weight decay.
    pub fn new(params: Vec<Var>, lr: f64) -> Result<Adam> {
        Ok(Adam {
            core: OptimCore::new("Adam::new", params, lr)?,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
        })
    }

    /// The decay rates of the first and second moment estimates, each in `[0, 1)`.
    pub fn with_betas(mut self, beta1: f64, beta2: f64) -> Result<Adam> {
        if !(0.0..1.0).contains(&beta1) || !(0.0..1.0).contains(&beta2) {
            return Err(Error::argument("Adam", format!("betas must lie in [0, 1), got ({beta1}, {beta2})")));
        }
        self.betas = (beta1, beta2);
        Ok(self)
    }

    /// The term added to the denominator.
    pub fn with_eps(mut self, eps: f64) -> Adam {
        self.eps = eps;
        self
    }

    /// Weight decay (L2 for Adam, decoupled for AdamW).
    pub fn with_weight_decay(mut self, weight_decay: f64) -> Adam {
        self.weight_decay = weight_decay;
        self
    }
}

impl Optimizer for Adam {
    fn kind(&self) -> &'static str {
        if self.decoupled {
            "adamw"
        } else {
            "adam"
        }
    }
    fn core(&self) -> &OptimCore {
        &self.core
    }
    fn core_mut(&mut self) -> &mut OptimCore {
        &mut self.core
    }
    fn state_names(&self) -> &'static [&'static str] {
        &["exp_avg", "exp_avg_sq", "step"]
    }

    fn update(&self, _index: usize, p: &Var, g: &Var, state: &[Var]) -> Result<(Var, Vec<Var>)> {
        let (b1, b2) = self.betas;
        let mut p = p.clone();
        let mut g = g.clone();
        if self.weight_decay != 0.0 {
            if self.decoupled {
                p = p.try_mul(1.0 - self.core.lr * self.weight_decay)?;
            } else {
                g = g.try_add(&p.try_mul(self.weight_decay)?)?;
            }
        }
        // per-parameter step count, as PyTorch keeps it (a parameter skipped in
        // some steps has its own bias correction)
        let (m, v, t) = match state {
            [m, v, t] => (m.clone(), v.clone(), t.item::<f64>()? + 1.0),
            _ => (g.zeros_like(), g.zeros_like(), 1.0),
        };
        let m = m.try_mul(b1)?.try_add(&g.try_mul(1.0 - b1)?)?;
        let v = v.try_mul(b2)?.try_add(&g.try_mul(&g)?.try_mul(1.0 - b2)?)?;
        let bc1 = 1.0 - b1.powf(t);
        let bc2 = 1.0 - b2.powf(t);
        let denom = v.sqrt().try_div(bc2.sqrt())?.try_add(self.eps)?;
        let new_p = p.try_sub(&m.try_div(&denom)?.try_mul(self.core.lr / bc1)?)?;
        Ok((new_p, vec![m, v, Var::scalar(t)]))
    }

    fn hyper_parameters(&self) -> HashMap<String, String> {
        HashMap::from([
            ("beta1".into(), format!("{:e}", self.betas.0)),
            ("beta2".into(), format!("{:e}", self.betas.1)),
            ("eps".into(), format!("{:e}", self.eps)),
            ("weight_decay".into(), format!("{:e}", self.weight_decay)),
        ])
    }

    fn set_hyper_parameters(&mut self, h: &HashMap<String, String>) -> Result<()> {
        self.betas.0 = parse_hyper(h, "beta1")?.unwrap_or(self.betas.0);
        self.betas.1 = parse_hyper(h, "beta2")?.unwrap_or(self.betas.1);
        self.eps = parse_hyper(h, "eps")?.unwrap_or(self.eps);
        self.weight_decay = parse_hyper(h, "weight_decay")?.unwrap_or(self.weight_decay);
        Ok(())
    }
}
