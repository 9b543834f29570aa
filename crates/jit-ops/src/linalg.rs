//! Matrix products written with meta-ops: both operands are broadcast over a shared
//! `[.., M, K, N]` domain, multiplied and summed over `K`. The fusion planner turns
//! this into one reduction kernel; it is also the generated fallback for when no
//! gemm library is available.

use jit_core::{broadcast_shapes, DType, Error, ReduceOp, Result, Var};

/// `torch.matmul` for operands of rank at least 1: 1-D operands are promoted to a
/// matrix and the added dim removed afterwards; batch dims broadcast.
pub fn matmul(a: &Var, b: &Var) -> Result<Var> {
    if a.ndim() == 0 || b.ndim() == 0 {
        return Err(Error::Shape {
            op: "matmul".into(),
            msg: format!("both operands need at least one dim, got shapes {:?} and {:?}", a.shape(), b.shape()),
        });
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
    let mut shape: Vec<isize> = batch.iter().map(|&d| d as isize).collect();
    if !squeeze_m {
        shape.push(m as isize);
    }
    if !squeeze_n {
        shape.push(n as isize);
    }
    if shape.len() != out.ndim() {
        out = out.reshape(&shape)?;
    }
    Ok(out)
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
    if w.ndim() != 2 {
        return Err(Error::Shape { op: "linear".into(), msg: format!("weight must be 2-D, got {:?}", w.shape()) });
    }
    let y = matmul(x, &w.transpose(0, 1)?)?;
    match b {
        Some(b) => y.try_add(b),
        None => Ok(y),
    }
}
