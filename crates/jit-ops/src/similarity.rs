//! Normalised vectors and their similarity: PyTorch's `F.normalize` and
//! `F.cosine_similarity` (used by feature-matching losses such as the contextual
//! loss, and by patch matching in style swap).

use crate::reduce::ReduceOps;
use jit_core::{Error, Result, Var};

fn positive_eps(op: &str, eps: f64) -> Result<()> {
    if eps.is_nan() || eps < 0.0 {
        return Err(Error::argument(op, format!("eps must be non-negative, got {eps}")));
    }
    Ok(())
}

/// `torch.nn.functional.normalize`: `x / max(||x||_p, eps)` along `dim` (PyTorch's
/// defaults: `p` 2, `dim` 1, `eps` 1e-12).
pub fn normalize(x: &Var, p: f64, dim: isize, eps: f64) -> Result<Var> {
    positive_eps("normalize", eps)?;
    x.try_div(&x.norm(p, &[dim], true)?.maximum(eps)?)
}

/// `torch.nn.functional.cosine_similarity`: `sum(a b) / (max(||a||, eps) max(||b||, eps))`
/// along `dim`, after broadcasting `a` and `b` (PyTorch's defaults: `dim` 1, `eps`
/// 1e-8); the result has `dim` removed.
pub fn cosine_similarity(a: &Var, b: &Var, dim: isize, eps: f64) -> Result<Var> {
    if let Some(v) = crate::autocast::widened(&[a, b]) {
        return cosine_similarity(&v[0], &v[1], dim, eps);
    }
    positive_eps("cosine_similarity", eps)?;
    let shape = jit_core::broadcast_shapes("cosine_similarity", a.shape(), b.shape())?;
    let (a, b) = (a.broadcast_as(&shape)?, b.broadcast_as(&shape)?);
    let dot = a.try_mul(&b)?.sum(&[dim], false)?;
    let na = a.norm(2.0, &[dim], false)?.maximum(eps)?;
    let nb = b.norm(2.0, &[dim], false)?.maximum(eps)?;
    dot.try_div(&na.try_mul(&nb)?)
}
