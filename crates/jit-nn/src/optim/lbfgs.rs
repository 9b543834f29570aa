//! L-BFGS as PyTorch's `torch.optim.LBFGS` runs it without a line search: one
//! [`Lbfgs::step`] evaluates the closure up to `max_iter` times, keeping the last
//! `history_size` curvature pairs. The two-loop recursion runs on the host over the
//! flattened parameters (f32 data, f64 dot products); the closure's loss and
//! gradients are computed by the framework as usual.

use jit_core::{Error, Result, Var};

/// L-BFGS options with PyTorch's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LbfgsOptions {
    /// Step length (1).
    pub lr: f64,
    /// Iterations per [`Lbfgs::step`] (20).
    pub max_iter: usize,
    /// Closure evaluations per step (`max_iter * 5 / 4`).
    pub max_eval: usize,
    /// Stop when the largest gradient entry is at most this (1e-7).
    pub tolerance_grad: f64,
    /// Stop when the step or the loss change is at most this (1e-9).
    pub tolerance_change: f64,
    /// Curvature pairs kept (100).
    pub history_size: usize,
}

impl Default for LbfgsOptions {
    fn default() -> Self {
        LbfgsOptions {
            lr: 1.0,
            max_iter: 20,
            max_eval: 25,
            tolerance_grad: 1e-7,
            tolerance_change: 1e-9,
            history_size: 100,
        }
    }
}

/// The optimizer and its state across steps.
pub struct Lbfgs {
    params: Vec<Var>,
    /// The options.
    pub options: LbfgsOptions,
    d: Vec<f32>,
    t: f64,
    old_dirs: Vec<Vec<f32>>,
    old_stps: Vec<Vec<f32>>,
    ro: Vec<f64>,
    h_diag: f64,
    prev_grad: Option<Vec<f32>>,
    n_iter: u64,
    /// Closure evaluations so far.
    pub func_evals: u64,
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum()
}

impl Lbfgs {
    /// An optimizer over f32 `params` (values that require gradients).
    pub fn new(params: Vec<Var>, options: LbfgsOptions) -> Result<Lbfgs> {
        if params.is_empty() {
            return Err(Error::argument("LBFGS", "no parameters to optimise"));
        }
        if let Some(p) = params.iter().find(|p| p.dtype() != jit_core::DType::F32 || !p.requires_grad()) {
            return Err(Error::argument(
                "LBFGS",
                format!("parameters must be f32 values that require gradients, got {} {:?}", p.dtype(), p.shape()),
            ));
        }
        if options.max_iter == 0 || options.history_size == 0 || options.lr <= 0.0 {
            return Err(Error::argument("LBFGS", "lr, max_iter and history_size must be positive"));
        }
        Ok(Lbfgs {
            params,
            options,
            d: vec![],
            t: 0.0,
            old_dirs: vec![],
            old_stps: vec![],
            ro: vec![],
            h_diag: 1.0,
            prev_grad: None,
            n_iter: 0,
            func_evals: 0,
        })
    }

    /// Loss and flattened gradient at the current parameters.
    fn evaluate(&mut self, closure: &mut dyn FnMut() -> Result<Var>) -> Result<(f64, Vec<f32>)> {
        let loss = closure()?;
        let grads = jit_core::grad(&loss, &self.params)?;
        let mut all = grads.clone();
        all.push(loss.clone());
        jit_core::realize(&all)?;
        self.func_evals += 1;
        let mut flat = Vec::with_capacity(self.params.iter().map(Var::numel).sum());
        for g in &grads {
            flat.extend(g.to_vec::<f32>()?);
        }
        Ok((loss.to_vec_f64()?.first().copied().unwrap_or(f64::NAN), flat))
    }

    /// Adds `t * d` to the parameters.
    fn add_step(&self, t: f64, d: &[f32]) -> Result<()> {
        let mut at = 0;
        jit_core::no_grad(|| -> Result<()> {
            for p in &self.params {
                let n = p.numel();
                let step: Vec<f32> = d[at..at + n].iter().map(|v| (f64::from(*v) * t) as f32).collect();
                at += n;
                let new = p.detach().try_add(&Var::from_vec(step, p.shape())?)?;
                p.assign(&new)?;
            }
            Ok(())
        })
    }

    /// One optimisation step: `closure` builds the loss from the parameters (it is
    /// called again after each update). Returns the loss at the start of the step.
    pub fn step(&mut self, closure: &mut dyn FnMut() -> Result<Var>) -> Result<f64> {
        let o = self.options;
        let (orig_loss, mut g) = self.evaluate(closure)?;
        let mut loss = orig_loss;
        if !orig_loss.is_finite() {
            return Err(Error::argument("LBFGS", format!("the loss is {orig_loss}")));
        }
        let amax = |g: &[f32]| g.iter().fold(0f64, |m, v| m.max(f64::from(v.abs())));
        if amax(&g) <= o.tolerance_grad {
            return Ok(orig_loss);
        }
        let mut evals = 1;
        let mut it = 0;
        while it < o.max_iter {
            it += 1;
            self.n_iter += 1;
            if self.n_iter == 1 {
                self.d = g.iter().map(|v| -v).collect();
                self.old_dirs.clear();
                self.old_stps.clear();
                self.ro.clear();
                self.h_diag = 1.0;
            } else {
                let prev = self.prev_grad.as_ref().expect("set after the first iteration");
                let y: Vec<f32> = g.iter().zip(prev).map(|(a, b)| a - b).collect();
                let s: Vec<f32> = self.d.iter().map(|v| (f64::from(*v) * self.t) as f32).collect();
                let ys = dot(&y, &s);
                if ys > 1e-10 {
                    if self.old_dirs.len() == o.history_size {
                        self.old_dirs.remove(0);
                        self.old_stps.remove(0);
                        self.ro.remove(0);
                    }
                    self.h_diag = ys / dot(&y, &y);
                    self.old_dirs.push(y);
                    self.old_stps.push(s);
                    self.ro.push(1.0 / ys);
                }
                let k = self.old_dirs.len();
                let mut al = vec![0.0; k];
                let mut q: Vec<f32> = g.iter().map(|v| -v).collect();
                for i in (0..k).rev() {
                    al[i] = dot(&self.old_stps[i], &q) * self.ro[i];
                    for (qv, y) in q.iter_mut().zip(&self.old_dirs[i]) {
                        *qv = (f64::from(*qv) - al[i] * f64::from(*y)) as f32;
                    }
                }
                let mut r: Vec<f32> = q.iter().map(|v| (f64::from(*v) * self.h_diag) as f32).collect();
                for (i, a) in al.iter().enumerate() {
                    let be = dot(&self.old_dirs[i], &r) * self.ro[i];
                    for (rv, s) in r.iter_mut().zip(&self.old_stps[i]) {
                        *rv = (f64::from(*rv) + (a - be) * f64::from(*s)) as f32;
                    }
                }
                self.d = r;
            }
            self.prev_grad = Some(g.clone());
            let prev_loss = loss;
            self.t = if self.n_iter == 1 {
                (1.0 / g.iter().map(|v| f64::from(v.abs())).sum::<f64>()).min(1.0) * o.lr
            } else {
                o.lr
            };
            if dot(&g, &self.d) > -o.tolerance_change {
                break;
            }
            let d = std::mem::take(&mut self.d);
            self.add_step(self.t, &d)?;
            self.d = d;
            let mut opt_cond = false;
            if it != o.max_iter {
                let (l, ng) = self.evaluate(closure)?;
                loss = l;
                g = ng;
                opt_cond = amax(&g) <= o.tolerance_grad;
                evals += 1;
            }
            if it == o.max_iter || evals >= o.max_eval || opt_cond {
                break;
            }
            if self.d.iter().fold(0f64, |m, v| m.max((f64::from(*v) * self.t).abs())) <= o.tolerance_change {
                break;
            }
            if (loss - prev_loss).abs() < o.tolerance_change {
                break;
            }
        }
        Ok(orig_loss)
    }
}
