//! Reductions.

use jit_core::{normalize_dims, DType, Error, ReduceOp, Result, Var};

/// Reductions with PyTorch semantics. An empty `dims` list reduces every dim (as
/// `torch.sum(x, dim=[])` does).
pub trait ReduceOps {
    /// Sum over `dims`; bool and integer inputs give i64.
    fn sum(&self, dims: &[isize], keepdim: bool) -> Result<Var>;
    /// Sum of every element (rank 0).
    fn sum_all(&self) -> Result<Var>;
    /// Mean over `dims` (floating-point inputs only, as in PyTorch).
    fn mean(&self, dims: &[isize], keepdim: bool) -> Result<Var>;
    /// Mean of every element (rank 0).
    fn mean_all(&self) -> Result<Var>;
    /// Maximum over `dims` (`torch.amax`); NaN-propagating.
    fn max(&self, dims: &[isize], keepdim: bool) -> Result<Var>;
    /// Minimum over `dims` (`torch.amin`); NaN-propagating.
    fn min(&self, dims: &[isize], keepdim: bool) -> Result<Var>;
    /// Product over `dims`; bool and integer inputs give i64.
    fn prod(&self, dims: &[isize], keepdim: bool) -> Result<Var>;
    /// Variance over `dims`, divided by `N - 1` when `unbiased`, else by `N`.
    fn var(&self, dims: &[isize], unbiased: bool, keepdim: bool) -> Result<Var>;
    /// Standard deviation: the square root of [`var`](Self::var).
    fn std(&self, dims: &[isize], unbiased: bool, keepdim: bool) -> Result<Var>;
    /// Index (i64) of the first maximum along `dim`; NaN counts as the maximum.
    fn argmax(&self, dim: isize, keepdim: bool) -> Result<Var>;
    /// Index (i64) of the first minimum along `dim`; NaN counts as the minimum.
    fn argmin(&self, dim: isize, keepdim: bool) -> Result<Var>;
    /// `log(sum(exp(x)))` over `dims`, computed shifted by the maximum so that it
    /// neither overflows nor underflows (`torch.logsumexp`); `-inf` over no elements.
    fn logsumexp(&self, dims: &[isize], keepdim: bool) -> Result<Var>;
    /// The `p`-norm over `dims` (`torch.linalg.vector_norm`): `(sum |x|^p)^(1/p)` for
    /// `p > 0`, the largest `|x|` for `p = inf`. The gradient of a zero vector is
    /// zero, as in PyTorch.
    fn norm(&self, p: f64, dims: &[isize], keepdim: bool) -> Result<Var>;
}

/// `shape` without the dims in `axes`.
fn reduced_shape(shape: &[usize], axes: &[usize]) -> Vec<isize> {
    shape.iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, &d)| d as isize).collect()
}

/// `sign(x) |x|^(p-1)`, the derivative of `|x|^p / p`, zero where `x` is.
fn signed_power(x: &Var, p: f64) -> Result<Var> {
    if p == 2.0 {
        return Ok(x.clone());
    }
    let sign = x.gt(0.0)?.cast(x.dtype()).try_sub(x.lt(0.0)?.cast(x.dtype()))?;
    if p == 1.0 {
        return Ok(sign);
    }
    Var::where_(&x.ne(0.0)?, &sign.try_mul(&x.abs().pow(p - 1.0)?)?, 0.0)
}

fn axes(op: &str, x: &Var, dims: &[isize]) -> Result<Vec<usize>> {
    if dims.is_empty() {
        return Ok((0..x.ndim()).collect());
    }
    if x.ndim() == 0 {
        // A scalar accepts dim 0 / -1 and reduces nothing.
        normalize_dims(op, dims, x.shape())?;
        return Ok(vec![]);
    }
    normalize_dims(op, dims, x.shape())
}

fn isize_axes(ax: &[usize]) -> Vec<isize> {
    ax.iter().map(|&a| a as isize).collect()
}

fn count(x: &Var, axes: &[usize]) -> usize {
    axes.iter().map(|&a| x.shape()[a]).product()
}

fn widen_for_sum(x: &Var) -> Var {
    if x.dtype().is_float() {
        x.clone()
    } else {
        x.cast(DType::I64)
    }
}

fn need_float(op: &str, x: &Var) -> Result<()> {
    if x.dtype().is_float() {
        Ok(())
    } else {
        Err(Error::DType {
            op: op.into(),
            msg: format!("needs a floating-point input, got {} (cast it first, e.g. .cast(DType::F32))", x.dtype()),
        })
    }
}

fn extreme(x: &Var, op: ReduceOp, name: &str, dims: &[isize], keepdim: bool) -> Result<Var> {
    let ax = axes(name, x, dims)?;
    if let Some(&a) = ax.iter().find(|&&a| x.shape()[a] == 0) {
        return Err(Error::Shape {
            op: name.into(),
            msg: format!("cannot reduce over dim {a} of size 0 (shape {:?}): the result has no identity", x.shape()),
        });
    }
    x.reduce(op, &ax, keepdim)
}

fn arg_extreme(x: &Var, op: ReduceOp, name: &str, dim: isize, keepdim: bool) -> Result<Var> {
    let d = axes(name, x, &[dim])?;
    let Some(&d) = d.first() else {
        // rank 0: the only index is 0
        return Ok(Var::full(&[], 0.0, DType::I64));
    };
    let n = x.shape()[d];
    if n == 0 {
        return Err(Error::Shape {
            op: name.into(),
            msg: format!("cannot take {name} over dim {d} of size 0 (shape {:?})", x.shape()),
        });
    }
    let m = x.reduce(op, &[d], true)?;
    let mut hit = x.eq(&m)?;
    if x.dtype().is_float() {
        // NaN is the result of a NaN-propagating max/min: pick the first NaN.
        hit = hit.logical_or(&x.ne(x)?)?;
    }
    let idx = Var::index(x.shape(), d, DType::I64)?;
    let cand = Var::where_(&hit, &idx, n as i64)?;
    cand.reduce(ReduceOp::Min, &[d], keepdim)
}

impl ReduceOps for Var {
    fn sum(&self, dims: &[isize], keepdim: bool) -> Result<Var> {
        let ax = axes("sum", self, dims)?;
        widen_for_sum(self).reduce(ReduceOp::Sum, &ax, keepdim)
    }

    fn sum_all(&self) -> Result<Var> {
        self.sum(&[], false)
    }

    fn mean(&self, dims: &[isize], keepdim: bool) -> Result<Var> {
        need_float("mean", self)?;
        let ax = axes("mean", self, dims)?;
        let n = count(self, &ax);
        self.reduce(ReduceOp::Sum, &ax, keepdim)?.try_mul(1.0 / n as f64)
    }

    fn mean_all(&self) -> Result<Var> {
        self.mean(&[], false)
    }

    fn max(&self, dims: &[isize], keepdim: bool) -> Result<Var> {
        extreme(self, ReduceOp::Max, "max", dims, keepdim)
    }

    fn min(&self, dims: &[isize], keepdim: bool) -> Result<Var> {
        extreme(self, ReduceOp::Min, "min", dims, keepdim)
    }

    fn prod(&self, dims: &[isize], keepdim: bool) -> Result<Var> {
        let ax = axes("prod", self, dims)?;
        widen_for_sum(self).reduce(ReduceOp::Prod, &ax, keepdim)
    }

    fn var(&self, dims: &[isize], unbiased: bool, keepdim: bool) -> Result<Var> {
        need_float("var", self)?;
        let ax = axes("var", self, dims)?;
        let n = count(self, &ax);
        // N - 1 = 0 gives 0/0 = NaN, as PyTorch does.
        let denom = if unbiased { n as f64 - 1.0 } else { n as f64 };
        let forward = |xs: &[Var]| -> Result<(Var, Vec<Var>)> {
            let x = &xs[0];
            let mean = x.reduce(ReduceOp::Sum, &ax, true)?.try_mul(1.0 / n as f64)?;
            let d = x.try_sub(&mean)?;
            let v = d.try_mul(&d)?.reduce(ReduceOp::Sum, &ax, keepdim)?.try_div(denom)?;
            Ok((v, vec![x.clone(), mean]))
        };
        // d var / dx = 2 (x - mean) / denom: the path through the mean sums to zero, so
        // the closed form saves a reduction and a materialised value in backward.
        let shape = self.shape().to_vec();
        let ax2 = ax.clone();
        let backward = move |saved: &[Var], g: &Var| -> Result<Vec<Option<Var>>> {
            let x = &saved[0];
            // Recording (higher-order gradients): differentiate through the mean too.
            let mean = if jit_core::is_grad_enabled() { x.mean(&isize_axes(&ax2), true)? } else { saved[1].clone() };
            let mean = &mean;
            let g = if keepdim {
                g.clone()
            } else {
                let kept: Vec<isize> =
                    shape.iter().enumerate().map(|(d, &s)| if ax2.contains(&d) { 1 } else { s as isize }).collect();
                g.reshape(&kept)?
            };
            Ok(vec![Some(x.try_sub(mean)?.try_mul(&g.try_mul(2.0 / denom)?)?)])
        };
        jit_core::custom_op("var", std::slice::from_ref(self), forward, std::sync::Arc::new(backward))
    }

    fn std(&self, dims: &[isize], unbiased: bool, keepdim: bool) -> Result<Var> {
        Ok(self.var(dims, unbiased, keepdim)?.sqrt())
    }

    fn argmax(&self, dim: isize, keepdim: bool) -> Result<Var> {
        arg_extreme(self, ReduceOp::Max, "argmax", dim, keepdim)
    }

    fn argmin(&self, dim: isize, keepdim: bool) -> Result<Var> {
        arg_extreme(self, ReduceOp::Min, "argmin", dim, keepdim)
    }

    fn logsumexp(&self, dims: &[isize], keepdim: bool) -> Result<Var> {
        if let Some(v) = crate::autocast::widened(&[self]) {
            return v[0].logsumexp(dims, keepdim);
        }
        need_float("logsumexp", self)?;
        let ax = axes("logsumexp", self, dims)?;
        if count(self, &ax) == 0 {
            return self.reduce(ReduceOp::Sum, &ax, keepdim)?.log().try_add(f64::NEG_INFINITY);
        }
        // shifted by the maximum (no gradient flows through the shift: it cancels),
        // or by 0 where that is infinite or NaN
        let m = self.reduce(ReduceOp::Max, &ax, true)?.detach();
        let m = Var::where_(&m.abs().lt(f64::INFINITY)?, &m, 0.0)?;
        let lse = self.try_sub(&m)?.exp().reduce(ReduceOp::Sum, &ax, true)?.log().try_add(&m)?;
        if keepdim {
            Ok(lse)
        } else {
            lse.reshape(&reduced_shape(self.shape(), &ax))
        }
    }

    fn norm(&self, p: f64, dims: &[isize], keepdim: bool) -> Result<Var> {
        if let Some(v) = crate::autocast::widened(&[self]) {
            return v[0].norm(p, dims, keepdim);
        }
        need_float("norm", self)?;
        if p.is_nan() || p <= 0.0 {
            return Err(Error::argument("norm", format!("p must be positive (or infinite), got {p}")));
        }
        if p == f64::INFINITY {
            return extreme(&self.abs(), ReduceOp::Max, "norm", dims, keepdim);
        }
        let ax = axes("norm", self, dims)?;
        let keep_shape: Vec<isize> =
            self.shape().iter().enumerate().map(|(i, &d)| if ax.contains(&i) { 1 } else { d as isize }).collect();
        // the norm over `ax`, dims kept
        let ax_kept = ax.clone();
        let kept_norm = move |a: &Var| -> Result<Var> {
            match p {
                1.0 => a.abs().reduce(ReduceOp::Sum, &ax_kept, true),
                2.0 => Ok(a.try_mul(a)?.reduce(ReduceOp::Sum, &ax_kept, true)?.sqrt()),
                _ => a.abs().pow(p)?.reduce(ReduceOp::Sum, &ax_kept, true)?.pow(1.0 / p),
            }
        };
        let kept_norm2 = kept_norm.clone();
        let forward = |xs: &[Var]| -> Result<(Var, Vec<Var>)> {
            let a = &xs[0];
            let y = kept_norm(a)?;
            let out = if keepdim { y.clone() } else { y.reshape(&reduced_shape(a.shape(), &ax))? };
            Ok((out, vec![a.clone(), y]))
        };
        let backward = move |saved: &[Var], g: &Var| -> Result<Vec<Option<Var>>> {
            let x = &saved[0];
            // Recording (higher-order gradients): the norm again, from the input, so
            // that the gradient's dependence through it is recorded too.
            let y = if jit_core::is_grad_enabled() { kept_norm2(x)? } else { saved[1].clone() };
            let y = &y;
            // d y / d x = sign(x) |x|^(p-1) / y^(p-1), and 0 for a zero vector
            let g = g.reshape(&keep_shape)?;
            let scale = if p == 1.0 { g } else { g.try_div(&y.pow(p - 1.0)?)? };
            let dx = Var::where_(&y.gt(0.0)?, &signed_power(x, p)?.try_mul(&scale)?, 0.0)?;
            Ok(vec![Some(dx)])
        };
        jit_core::custom_op("norm", std::slice::from_ref(self), forward, std::sync::Arc::new(backward))
    }
}
