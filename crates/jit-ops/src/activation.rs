//! Activations and clamping.

use crate::reduce::ReduceOps;
use jit_core::{normalize_dim, Error, Result, Var};

/// Activation functions with PyTorch semantics (NaN propagates through all of them).
pub trait Activations {
    /// Limits values to `[min, max]`; either bound may be absent.
    fn clamp(&self, min: Option<f64>, max: Option<f64>) -> Result<Var>;
    /// `max(x, 0)`.
    fn relu(&self) -> Result<Var>;
    /// `x` where `x > 0`, else `slope * x`.
    fn leaky_relu(&self, slope: f64) -> Result<Var>;
    /// Exact GELU: `x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))`.
    fn gelu(&self) -> Result<Var>;
    /// GELU with the tanh approximation (`approximate="tanh"`).
    fn gelu_tanh(&self) -> Result<Var>;
    /// `x * sigmoid(x)`.
    fn silu(&self) -> Result<Var>;
    /// Softmax along `dim`, computed as `exp(x - max) / sum(exp(x - max))`.
    fn softmax(&self, dim: isize) -> Result<Var>;
    /// Log-softmax along `dim`: `x - max - log(sum(exp(x - max)))`.
    fn log_softmax(&self, dim: isize) -> Result<Var>;
    /// `x` where `x > 0`, else `alpha (exp(x) - 1)`.
    fn elu(&self, alpha: f64) -> Result<Var>;
    /// `log(1 + exp(beta x)) / beta`, and `x` itself where `beta x > threshold`
    /// (PyTorch's defaults: `beta` 1, `threshold` 20).
    fn softplus(&self, beta: f64, threshold: f64) -> Result<Var>;
    /// `clamp(x / 6 + 1/2, 0, 1)`.
    fn hardsigmoid(&self) -> Result<Var>;
    /// `x * hardsigmoid(x)`.
    fn hardswish(&self) -> Result<Var>;
    /// `x * tanh(softplus(x))`.
    fn mish(&self) -> Result<Var>;
}

fn float_input(op: &str, x: &Var) -> Result<Var> {
    if x.dtype().is_float() {
        Ok(x.clone())
    } else {
        Err(Error::DType {
            op: op.into(),
            msg: format!("needs a floating-point input, got {} (cast it first)", x.dtype()),
        })
    }
}

impl Activations for Var {
    fn clamp(&self, min: Option<f64>, max: Option<f64>) -> Result<Var> {
        // min(max(x, lo), hi): with lo > hi every element becomes hi, as in PyTorch.
        let mut y = self.clone();
        if let Some(lo) = min {
            y = y.maximum(lo)?;
        }
        if let Some(hi) = max {
            y = y.minimum(hi)?;
        }
        Ok(y)
    }

    fn relu(&self) -> Result<Var> {
        self.maximum(0)
    }

    fn leaky_relu(&self, slope: f64) -> Result<Var> {
        let x = float_input("leaky_relu", self)?;
        Var::where_(&x.gt(0.0)?, &x, &x.try_mul(slope)?)
    }

    fn gelu(&self) -> Result<Var> {
        let x = float_input("gelu", self)?;
        let cdf = x.try_mul(std::f64::consts::FRAC_1_SQRT_2)?.erf().try_add(1.0)?.try_mul(0.5)?;
        x.try_mul(&cdf)
    }

    fn gelu_tanh(&self) -> Result<Var> {
        let x = float_input("gelu", self)?;
        let k = (2.0 / std::f64::consts::PI).sqrt();
        // x * x * x as PyTorch's kernel computes the cube (a product: `pow` with a
        // float exponent is a library call per element on the CPU)
        let cube = x.try_mul(&x)?.try_mul(&x)?;
        let inner = x.try_add(&cube.try_mul(0.044715)?)?.try_mul(k)?;
        x.try_mul(0.5)?.try_mul(&inner.tanh().try_add(1.0)?)
    }

    fn silu(&self) -> Result<Var> {
        let x = float_input("silu", self)?;
        x.try_mul(x.sigmoid())
    }

    fn softmax(&self, dim: isize) -> Result<Var> {
        if let Some(v) = crate::autocast::widened(&[self]) {
            return v[0].softmax(dim);
        }
        let x = float_input("softmax", self)?;
        let d = normalize_dim("softmax", dim, x.shape())?;
        if x.shape().get(d) == Some(&0) {
            return Ok(x);
        }
        // the shift only keeps exp in range: it cancels, so no gradient flows through it
        let m = x.max(&[dim], true)?.detach();
        let e = x.try_sub(&m)?.exp();
        // times the reciprocal of the sum, as PyTorch's CPU kernel: one division per
        // row instead of one per element
        let s = e.sum(&[dim], true)?;
        e.try_mul(s.recip())
    }

    fn log_softmax(&self, dim: isize) -> Result<Var> {
        if let Some(v) = crate::autocast::widened(&[self]) {
            return v[0].log_softmax(dim);
        }
        let x = float_input("log_softmax", self)?;
        let d = normalize_dim("log_softmax", dim, x.shape())?;
        if x.shape().get(d) == Some(&0) {
            return Ok(x);
        }
        // the shift only keeps exp in range: it cancels, so no gradient flows through it
        let m = x.max(&[dim], true)?.detach();
        let shifted = x.try_sub(&m)?;
        let lse = shifted.exp().sum(&[dim], true)?.log();
        shifted.try_sub(&lse)
    }

    fn elu(&self, alpha: f64) -> Result<Var> {
        let x = float_input("elu", self)?;
        // exp of the negative part only: no overflow where x is large and positive
        let neg = x.minimum(0.0)?.exp().try_sub(1.0)?.try_mul(alpha)?;
        Var::where_(&x.gt(0.0)?, &x, &neg)
    }

    fn softplus(&self, beta: f64, threshold: f64) -> Result<Var> {
        let x = float_input("softplus", self)?;
        if !beta.is_finite() || beta == 0.0 {
            return Err(Error::argument("softplus", format!("beta must be finite and non-zero, got {beta}")));
        }
        // log(1 + exp(z)) = max(z, 0) + log1p(exp(-|z|)): finite for every z; log1p(e)
        // as e - e²/2 for small e, where 1 + e would round to 1 (relative error below
        // e²/3 < 4e-7 there)
        let z = x.try_mul(beta)?;
        let e = z.abs().try_neg()?.exp();
        let log1p = Var::where_(&e.lt(1e-3)?, &e.try_sub(&e.try_mul(&e)?.try_mul(0.5)?)?, e.try_add(1.0)?.log())?;
        let soft = z.relu()?.try_add(&log1p)?.try_div(beta)?;
        Var::where_(&z.gt(threshold)?, &x, &soft)
    }

    fn hardsigmoid(&self) -> Result<Var> {
        float_input("hardsigmoid", self)?.try_div(6.0)?.try_add(0.5)?.clamp(Some(0.0), Some(1.0))
    }

    fn hardswish(&self) -> Result<Var> {
        let x = float_input("hardswish", self)?;
        x.try_mul(&x.hardsigmoid()?)
    }

    fn mish(&self) -> Result<Var> {
        let x = float_input("mish", self)?;
        x.try_mul(x.softplus(1.0, 20.0)?.tanh())
    }
}
