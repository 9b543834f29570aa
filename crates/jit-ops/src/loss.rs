//! Losses with PyTorch's names, arguments and reductions, and the total-variation
//! helper of style-transfer code.

use crate::activation::Activations;
use crate::reduce::ReduceOps;
use jit_core::{DType, Error, Result, Var};

/// How a loss reduces its per-element values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reduction {
    /// Keep every value.
    None,
    /// The mean (PyTorch's default).
    #[default]
    Mean,
    /// The sum.
    Sum,
}

fn reduce(v: Var, r: Reduction) -> Result<Var> {
    match r {
        Reduction::None => Ok(v),
        Reduction::Mean => v.mean_all(),
        Reduction::Sum => v.sum_all(),
    }
}

fn same_shape(op: &str, a: &Var, b: &Var) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::shape(
            op,
            format!("input {:?} and target {:?} must have the same shape", a.shape(), b.shape()),
        ));
    }
    Ok(())
}

/// `F.mse_loss`: squared differences.
pub fn mse_loss(x: &Var, target: &Var, r: Reduction) -> Result<Var> {
    if let Some(v) = crate::autocast::widened(&[x, target]) {
        return mse_loss(&v[0], &v[1], r);
    }
    same_shape("mse_loss", x, target)?;
    let d = x.try_sub(target)?;
    reduce(d.try_mul(&d)?, r)
}

/// `F.l1_loss`: absolute differences.
pub fn l1_loss(x: &Var, target: &Var, r: Reduction) -> Result<Var> {
    if let Some(v) = crate::autocast::widened(&[x, target]) {
        return l1_loss(&v[0], &v[1], r);
    }
    same_shape("l1_loss", x, target)?;
    reduce(x.try_sub(target)?.abs(), r)
}

/// `F.smooth_l1_loss`: `0.5 d^2 / beta` where `|d| < beta`, else `|d| - beta / 2`
/// (`beta = 0` is the L1 loss).
pub fn smooth_l1_loss(x: &Var, target: &Var, beta: f64, r: Reduction) -> Result<Var> {
    if let Some(v) = crate::autocast::widened(&[x, target]) {
        return smooth_l1_loss(&v[0], &v[1], beta, r);
    }
    same_shape("smooth_l1_loss", x, target)?;
    if beta < 0.0 {
        return Err(Error::argument("smooth_l1_loss", format!("beta must not be negative, got {beta}")));
    }
    let a = x.try_sub(target)?.abs();
    if beta == 0.0 {
        return reduce(a, r);
    }
    let quad = a.try_mul(&a)?.try_mul(0.5 / beta)?;
    let lin = a.try_sub(0.5 * beta)?;
    reduce(Var::where_(&a.lt(beta)?, &quad, &lin)?, r)
}

/// Checks `[N, C, d..]` scores against `[N, d..]` class indices; returns C.
fn class_shapes(op: &str, scores: &Var, target: &Var) -> Result<usize> {
    let ok = scores.ndim() >= 2
        && target.ndim() == scores.ndim() - 1
        && target.shape()[0] == scores.shape()[0]
        && target.shape()[1..] == scores.shape()[2..];
    if !ok {
        return Err(Error::shape(
            op,
            format!(
                "expected scores [N, C, d..] and class indices [N, d..], got {:?} and {:?}",
                scores.shape(),
                target.shape()
            ),
        ));
    }
    if !matches!(target.dtype(), DType::I64 | DType::I32 | DType::U8) {
        return Err(Error::dtype(op, format!("class indices must be integers, got {}", target.dtype())));
    }
    Ok(scores.shape()[1])
}

/// One-hot of the target along dim 1 (`[N, C, d..]`, bool), and the mask of
/// targets that count (not `ignore_index`).
fn one_hot(scores: &Var, target: &Var, ignore_index: i64) -> Result<(Var, Var)> {
    let t = target.cast(DType::I64);
    let tb = t.reshape(
        &[target.shape()[..1].to_vec(), vec![1], target.shape()[1..].to_vec()]
            .concat()
            .iter()
            .map(|&d| d as isize)
            .collect::<Vec<_>>(),
    )?;
    let class = Var::index(scores.shape(), 1, DType::I64)?;
    let hot = class.eq(&tb)?;
    let keep = t.ne(ignore_index)?;
    Ok((hot, keep))
}

/// `F.nll_loss` on log-probabilities `[N, C, d..]` and class indices `[N, d..]`;
/// targets equal to `ignore_index` (PyTorch's default -100) count for nothing, and the
/// mean is over the others. Indices out of `0..C` are not checked (they pick
/// nothing).
pub fn nll_loss(logp: &Var, target: &Var, ignore_index: i64, r: Reduction) -> Result<Var> {
    if let Some(v) = crate::autocast::widened(&[logp]) {
        return nll_loss(&v[0], target, ignore_index, r);
    }
    let op = "nll_loss";
    class_shapes(op, logp, target)?;
    let (hot, keep) = one_hot(logp, target, ignore_index)?;
    let picked = Var::where_(&hot, logp, 0.0)?.sum(&[1], false)?.try_neg()?;
    let picked = Var::where_(&keep, &picked, 0.0)?;
    match r {
        Reduction::Mean => picked.sum_all()?.try_div(&keep.cast(logp.dtype()).sum_all()?),
        other => reduce(picked, other),
    }
}

/// `F.cross_entropy` on raw scores `[N, C, d..]` and class indices `[N, d..]`, with
/// label smoothing `eps` in `[0, 1]`: `(1 - eps) * nll + eps * mean over classes of
/// -log p`.
pub fn cross_entropy(scores: &Var, target: &Var, label_smoothing: f64, ignore_index: i64, r: Reduction) -> Result<Var> {
    if let Some(v) = crate::autocast::widened(&[scores, target]) {
        return cross_entropy(&v[0], &v[1], label_smoothing, ignore_index, r);
    }
    let op = "cross_entropy";
    let c = class_shapes(op, scores, target)?;
    if !(0.0..=1.0).contains(&label_smoothing) {
        return Err(Error::argument(op, format!("label_smoothing must lie in [0, 1], got {label_smoothing}")));
    }
    let logp = scores.log_softmax(1)?;
    let (hot, keep) = one_hot(&logp, target, ignore_index)?;
    let nll = Var::where_(&hot, &logp, 0.0)?.sum(&[1], false)?.try_neg()?;
    let per = if label_smoothing > 0.0 {
        let smooth = logp.sum(&[1], false)?.try_neg()?.try_div(c as f64)?;
        nll.try_mul(1.0 - label_smoothing)?.try_add(&smooth.try_mul(label_smoothing)?)?
    } else {
        nll
    };
    let per = Var::where_(&keep, &per, 0.0)?;
    match r {
        Reduction::Mean => per.sum_all()?.try_div(&keep.cast(per.dtype()).sum_all()?),
        other => reduce(per, other),
    }
}

/// Total variation of `[N, C, H, W]` images: the sum of squared differences between
/// vertical and horizontal neighbours (`squared = true`), or of their absolute values,
/// divided by the number of images (the regulariser of optimisation-based style
/// transfer).
pub fn tv_loss(x: &Var, squared: bool) -> Result<Var> {
    use crate::shape::ShapeOps;
    let [n, _, h, w] = match *x.shape() {
        [a, b, c, d] => [a, b, c, d],
        _ => return Err(Error::shape("tv_loss", format!("input must be [N, C, H, W], got {:?}", x.shape()))),
    };
    let f = |d: Var| -> Result<Var> {
        if squared {
            d.try_mul(&d)
        } else {
            Ok(d.abs())
        }
    };
    let dh = f(x.narrow(2, 1, h.saturating_sub(1))?.try_sub(&x.narrow(2, 0, h.saturating_sub(1))?)?)?;
    let dw = f(x.narrow(3, 1, w.saturating_sub(1))?.try_sub(&x.narrow(3, 0, w.saturating_sub(1))?)?)?;
    dh.sum_all()?.try_add(&dw.sum_all()?)?.try_div(n.max(1) as f64)
}
