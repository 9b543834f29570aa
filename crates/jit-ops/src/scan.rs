//! Cumulative operators: `torch.cumsum`, `cumprod`, `cummax`, `cummin`.
//!
//! A scan is a few passes of a radix-4 Hillis-Steele scan: after the pass of stride
//! `s`, position `i` holds the combination of the `4s` inputs ending at `i`; each
//! pass is one fused kernel of four shifted reads (reindexes with the identity as
//! overflow) and stores its result, so an `n`-long scan takes `ceil(log4 n)` kernels
//! and `O(n log n)` work, all of it parallel. Floating-point sums are therefore
//! added in a tree order, not left to right as PyTorch's CPU loop does: results
//! agree to rounding (a tree sum's error grows with `log n`, a sequential one's with
//! `n`). Gradients follow from the meta-ops (a shifted read's gradient is a shifted
//! scatter); `cummax` / `cummin` return their values as a gather at the indices, so
//! the gradient goes to the position of each running extreme, as in PyTorch.

use crate::shape::ShapeOps;
use jit_core::{normalize_dim, BinaryOp, DType, Error, IndexExpr as E, Result, Var};

/// Inputs combined per pass of the scan.
const RADIX: usize = 4;

/// Cumulative operators along one dim. Dims may be negative.
pub trait ScanOps {
    /// `torch.cumsum`: running sums along `dim` (integers and bool in i64).
    fn cumsum(&self, dim: isize) -> Result<Var>;
    /// `torch.cumprod`: running products along `dim` (integers and bool in i64).
    fn cumprod(&self, dim: isize) -> Result<Var>;
    /// `torch.cummax`: running maxima along `dim` and their positions (i64): the
    /// latest position of the maximum on ties, and NaN, once met, stays (with the
    /// latest NaN's position), as PyTorch.
    fn cummax(&self, dim: isize) -> Result<(Var, Var)>;
    /// `torch.cummin`: as [`ScanOps::cummax`] for minima.
    fn cummin(&self, dim: isize) -> Result<(Var, Var)>;
}

/// `y` moved `by` positions forward along `d`; the first `by` positions hold `fill`.
fn shifted(y: &Var, d: usize, by: usize, fill: f64) -> Result<Var> {
    let mut exprs: Vec<E> = (0..y.ndim()).map(E::idx).collect();
    exprs[d] = E::idx(d) - by as i64;
    y.reindex(y.shape(), exprs, fill, vec![])
}

/// The strides of the passes of a scan over `n` elements.
fn strides(n: usize) -> Vec<usize> {
    let mut out = vec![];
    let mut s = 1;
    while s < n {
        out.push(s);
        s *= RADIX;
    }
    out
}

/// The dim of a scan (dim 0 or -1 of a 0-d value is allowed, as in PyTorch).
fn scan_dim(op: &str, x: &Var, dim: isize) -> Result<Option<usize>> {
    if x.ndim() == 0 {
        return if dim == 0 || dim == -1 {
            Ok(None)
        } else {
            Err(Error::Dim { op: op.into(), dim, ndim: 0, shape: vec![] })
        };
    }
    normalize_dim(op, dim, x.shape()).map(Some)
}

/// Running `op` (add or mul, `identity` its neutral element) along `dim`.
fn scan(x: &Var, dim: isize, op: BinaryOp, identity: f64, name: &str) -> Result<Var> {
    let Some(d) = scan_dim(name, x, dim)? else {
        return Ok(x.clone());
    };
    let x = if x.dtype().is_float() { x.clone() } else { x.cast(DType::I64) };
    let n = x.shape()[d];
    let passes = strides(n);
    let mut y = x;
    for (k, &s) in passes.iter().enumerate() {
        let mut acc = y.clone();
        for t in 1..RADIX {
            if t * s >= n {
                break;
            }
            acc = acc.binary(op, &shifted(&y, d, t * s, identity)?)?;
        }
        // each pass reads its input four times: store it rather than recompute
        y = if k + 1 < passes.len() { acc.materialize() } else { acc };
    }
    Ok(y)
}

/// Positions of the running maximum (`max`) or minimum along `dim`.
fn running_extreme(x: &Var, dim: isize, max: bool, name: &str) -> Result<(Var, Var)> {
    let Some(d) = scan_dim(name, x, dim)? else {
        return Ok((x.clone(), Var::zeros(&[], DType::I64)));
    };
    if x.dtype() == DType::Bool {
        return Err(Error::dtype(name, "not defined for bool; cast to an integer first"));
    }
    let n = x.shape()[d];
    let mut v = x.detach();
    let mut i = Var::index(x.shape(), d, DType::I64)?;
    let pos = Var::index(x.shape(), d, DType::I64)?;
    let passes = strides(n);
    for (k, &s) in passes.iter().enumerate() {
        // `v`, `i`: the extreme of the window of `s` ending at each position (later
        // windows first); an earlier window wins only where it is strictly better
        // and the later one is not NaN
        let (mut av, mut ai) = (v.clone(), i.clone());
        for t in 1..RADIX {
            let by = t * s;
            if by >= n {
                break;
            }
            let (bv, bi) = (shifted(&v, d, by, 0.0)?, shifted(&i, d, by, 0.0)?);
            let mut keep = if max { av.ge(&bv)? } else { av.le(&bv)? };
            if x.dtype().is_float() {
                keep = keep.logical_or(&av.ne(&av)?)?;
            }
            let earlier = pos.ge(by as i64)?.logical_and(keep.logical_not())?;
            av = Var::where_(&earlier, &bv, &av)?;
            ai = Var::where_(&earlier, &bi, &ai)?;
        }
        let last = k + 1 == passes.len();
        v = if last { av } else { av.materialize() };
        i = if last { ai } else { ai.materialize() };
    }
    // the values as a gather: the gradient reaches the extreme's position
    Ok((x.gather(d as isize, &i)?, i))
}

impl ScanOps for Var {
    fn cumsum(&self, dim: isize) -> Result<Var> {
        scan(self, dim, BinaryOp::Add, 0.0, "cumsum")
    }

    fn cumprod(&self, dim: isize) -> Result<Var> {
        scan(self, dim, BinaryOp::Mul, 1.0, "cumprod")
    }

    fn cummax(&self, dim: isize) -> Result<(Var, Var)> {
        running_extreme(self, dim, true, "cummax")
    }

    fn cummin(&self, dim: isize) -> Result<(Var, Var)> {
        running_extreme(self, dim, false, "cummin")
    }
}
