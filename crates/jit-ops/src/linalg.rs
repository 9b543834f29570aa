//! Matrix products. Float products go to the gemm library as one batched extern
//! call (differentiated by its own rule); integer products, and every product when
//! the library is switched off, are written with meta-ops: both operands are
//! broadcast over a shared `[.., M, K, N]` domain, multiplied and summed over `K`,
//! which the fusion planner turns into one reduction kernel.

use jit_core::{broadcast_shapes, DType, Error, ExternOp, ReduceOp, Result, Var};
use std::cell::Cell;
use std::sync::OnceLock;

static DEFAULT_LIBRARY: OnceLock<bool> = OnceLock::new();

thread_local! {
    static LIBRARY: Cell<Option<bool>> = const { Cell::new(None) };
}

/// True when float matrix products use the gemm library: the default, unless
/// `JIT_MATMUL=meta` is set in the environment or [`set_matmul_library`] chose
/// otherwise on this thread.
pub fn matmul_library() -> bool {
    LIBRARY
        .with(Cell::get)
        .unwrap_or_else(|| *DEFAULT_LIBRARY.get_or_init(|| std::env::var("JIT_MATMUL").map_or(true, |v| v != "meta")))
}

/// Chooses the gemm library (`true`) or the generated meta-op product for float
/// matrix products built from now on on this thread.
pub fn set_matmul_library(on: bool) {
    LIBRARY.with(|c| c.set(Some(on)));
}

/// `[.., r, c]` as `[B, r, c]` over the broadcast batch `batch`: a value without
/// batch dims (or with all of them 1) stays a single matrix that the library
/// broadcasts; a partly broadcast batch is expanded.
fn as_batch3(x: &Var, batch: &[usize]) -> Result<Var> {
    let r = x.ndim();
    let (rows, cols) = (x.shape()[r - 2] as isize, x.shape()[r - 1] as isize);
    let own: usize = x.shape()[..r - 2].iter().product();
    if own == 1 {
        return x.reshape(&[1, rows, cols]);
    }
    let x = pad_batch(x, batch.len())?;
    let x = if x.shape()[..batch.len()] == *batch {
        x
    } else {
        let mut full = batch.to_vec();
        full.extend([rows as usize, cols as usize]);
        x.broadcast_to_dims(&full, &[])?
    };
    x.reshape(&[-1, rows, cols])
}

/// `torch.matmul` for operands of rank at least 1: 1-D operands are promoted to a
/// matrix and the added dim removed afterwards; batch dims broadcast.
pub fn matmul(a: &Var, b: &Var) -> Result<Var> {
    if a.ndim() == 0 || b.ndim() == 0 {
        return Err(Error::Shape {
            op: "matmul".into(),
            msg: format!("both operands need at least one dim, got shapes {:?} and {:?}", a.shape(), b.shape()),
        });
    }
    if let Some(v) = crate::autocast::lowered(&[a, b]) {
        return matmul(&v[0], &v[1]);
    }
    let dt = DType::promote(a.dtype(), b.dtype());
    let (a2, squeeze_m) =
        if a.ndim() == 1 { (a.reshape(&[1, a.shape()[0] as isize])?, true) } else { (a.clone(), false) };
    let (b2, squeeze_n) =
        if b.ndim() == 1 { (b.reshape(&[b.shape()[0] as isize, 1])?, true) } else { (b.clone(), false) };
    let (ra, rb) = (a2.ndim(), b2.ndim());
    let (m, k) = (a2.shape()[ra - 2], a2.shape()[ra - 1]);
    let (k2, n) = (b2.shape()[rb - 2], b2.shape()[rb - 1]);
    if k != k2 {
        return Err(Error::Shape {
            op: "matmul".into(),
            msg: format!("shapes {:?} and {:?} cannot be multiplied ({k} != {k2})", a.shape(), b.shape()),
        });
    }
    let batch = broadcast_shapes("matmul", &a2.shape()[..ra - 2], &b2.shape()[..rb - 2])?;
    let mut shape: Vec<isize> = batch.iter().map(|&d| d as isize).collect();
    if !squeeze_m {
        shape.push(m as isize);
    }
    if !squeeze_n {
        shape.push(n as isize);
    }
    if dt.is_float() && matmul_library() {
        // an operand that is a pending transpose of a matrix batch is read
        // transposed in place (no copy of the transpose: a Gram matrix `F Fᵀ`)
        let (a3, trans_a) = untransposed(as_batch3(&a2.cast(dt), &batch)?);
        let (b3, trans_b) = untransposed(as_batch3(&b2.cast(dt), &batch)?);
        let out = Var::extern_op(ExternOp::Matmul { trans_a, trans_b }, &[a3, b3])?;
        return out.reshape(&shape);
    }
    let r = batch.len();
    let mut full = batch.clone();
    full.extend([m, k, n]);
    // a: [.., M, K] -> [.., M, K, N] (new last dim); b: [.., K, N] -> [.., M, K, N].
    let a_batch = pad_batch(&a2.cast(dt), r)?;
    let b_batch = pad_batch(&b2.cast(dt), r)?;
    let ab = a_batch.broadcast_to_dims(&full, &[r + 2])?;
    let bb = b_batch.broadcast_to_dims(&full, &[r])?;
    let prod = ab.try_mul(&bb)?;
    let acc = if dt.is_float() { prod } else { prod.cast(DType::I64) };
    let mut out = acc.reduce(ReduceOp::Sum, &[r + 1], false)?.cast(dt);
    if shape.len() != out.ndim() {
        out = out.reshape(&shape)?;
    }
    Ok(out)
}

/// `(t, true)` when `x` (`[B, r, c]`) is a pending transpose of the last two dims of a
/// `[B, c, r]` value `t` (possibly behind a reshape to the same shape), else
/// `(x, false)`.
fn untransposed(x: Var) -> (Var, bool) {
    use jit_core::{IndexExpr as E, MetaOp};
    let mut v = x.clone();
    if v.op() == Some(MetaOp::Reshape) {
        match v.inputs().first() {
            Some(src) if src.shape() == v.shape() => v = src.clone(),
            _ => return (x, false),
        }
    }
    let swap = [E::idx(0), E::idx(2), E::idx(1)];
    match (v.op(), v.inputs().first()) {
        (Some(MetaOp::Reindex { exprs, conds, .. }), Some(src))
            if conds.is_empty()
                && exprs.as_slice() == swap.as_slice()
                && src.ndim() == 3
                && src.dtype() == x.dtype()
                && [src.shape()[0], src.shape()[2], src.shape()[1]] == *x.shape() =>
        {
            (src.clone(), true)
        }
        _ => (x, false),
    }
}

/// Adds leading size-1 dims so that the value has `batch_rank` batch dims.
fn pad_batch(x: &Var, batch_rank: usize) -> Result<Var> {
    let have = x.ndim() - 2;
    if have == batch_rank {
        return Ok(x.clone());
    }
    let mut shape: Vec<isize> = vec![1; batch_rank - have];
    shape.extend(x.shape().iter().map(|&d| d as isize));
    x.reshape(&shape)
}

/// `x @ w^T + b` with `w` of shape `[out, in]` (PyTorch's `F.linear`).
pub fn linear(x: &Var, w: &Var, b: Option<&Var>) -> Result<Var> {
    use crate::shape::ShapeOps;
    if let Some(v) = crate::autocast::lowered(&[x, w]) {
        return linear(&v[0], &v[1], b.map(crate::autocast::lower).as_ref());
    }
    if w.ndim() != 2 {
        return Err(Error::Shape { op: "linear".into(), msg: format!("weight must be 2-D, got {:?}", w.shape()) });
    }
    let y = if x.ndim() >= 1 && x.dtype() == w.dtype() && w.dtype().is_float() && matmul_library() {
        // one gemm with the weight read transposed in place: [1, rows, in] x [1, out, in]ᵀ
        let fin = *x.shape().last().unwrap_or(&0);
        if fin != w.shape()[1] {
            return Err(Error::Shape {
                op: "linear".into(),
                msg: format!(
                    "input {:?} has {fin} features but the weight {:?} expects {}",
                    x.shape(),
                    w.shape(),
                    w.shape()[1]
                ),
            });
        }
        let x3 = x.reshape(&[1, -1, fin as isize])?;
        let w3 = w.reshape(&[1, w.shape()[0] as isize, fin as isize])?;
        let y = Var::extern_op(ExternOp::Matmul { trans_a: false, trans_b: true }, &[x3, w3])?;
        let mut shape: Vec<isize> = x.shape()[..x.ndim() - 1].iter().map(|&d| d as isize).collect();
        shape.push(w.shape()[0] as isize);
        y.reshape(&shape)?
    } else {
        matmul(x, &w.transpose(0, 1)?)?
    };
    match b {
        Some(b) => y.try_add(b),
        None => Ok(y),
    }
}
