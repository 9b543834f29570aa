//! Losses with PyTorch's names, arguments and reductions, and the total-variation
//! helper of style-transfer code.

use crate::activation::Activations;
use crate::reduce::ReduceOps;
use jit_core::{broadcast_shapes, DType, Error, Operand, Result, Var};

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

/// `F.huber_loss`: `0.5 d^2` where `|d| < delta`, else `delta (|d| - delta / 2)`
/// (`delta` times the smooth L1 loss with `beta = delta`); `delta` must be positive.
pub fn huber_loss(x: &Var, target: &Var, delta: f64, r: Reduction) -> Result<Var> {
    if let Some(v) = crate::autocast::widened(&[x, target]) {
        return huber_loss(&v[0], &v[1], delta, r);
    }
    same_shape("huber_loss", x, target)?;
    if !(delta > 0.0 && delta.is_finite()) {
        return Err(Error::argument("huber_loss", format!("delta must be positive and finite, got {delta}")));
    }
    let a = x.try_sub(target)?.abs();
    let quad = a.try_mul(&a)?.try_mul(0.5)?;
    let lin = a.try_sub(0.5 * delta)?.try_mul(delta)?;
    reduce(Var::where_(&a.lt(delta)?, &quad, &lin)?, r)
}

/// A floating-point operand of a loss, or an error naming the loss and the argument.
fn float_arg(op: &str, what: &str, x: &Var) -> Result<()> {
    if x.dtype().is_float() {
        Ok(())
    } else {
        Err(Error::dtype(op, format!("{what} must be floating point, got {} (cast it first)", x.dtype())))
    }
}

/// Checks that an optional per-element weight broadcasts to `shape` (`what` names it).
fn weight_shape(op: &str, what: &str, w: Option<&Var>, shape: &[usize]) -> Result<()> {
    if let Some(w) = w {
        float_arg(op, what, w)?;
        let b = broadcast_shapes(op, w.shape(), shape)?;
        if b != shape {
            return Err(Error::shape(
                op,
                format!("{what} {:?} must broadcast to the input's shape {shape:?}", w.shape()),
            ));
        }
    }
    Ok(())
}

/// `F.binary_cross_entropy` on probabilities `p` in `[0, 1]`: `-w (t log p + (1 - t)
/// log(1 - p))`, each logarithm clamped at -100 as PyTorch does (so `p = 0` or `1`
/// gives a finite loss); `weight` broadcasts to the input's shape. Unlike PyTorch,
/// values of `p` outside `[0, 1]` are not checked (that would need the values on the
/// host): they give NaN. Its gradient is `w (p - t) / (p (1 - p))` where both
/// logarithms are above -100.
pub fn binary_cross_entropy(p: &Var, target: &Var, weight: Option<&Var>, r: Reduction) -> Result<Var> {
    let op = "binary_cross_entropy";
    if let Some(v) = crate::autocast::widened(&[p, target]) {
        return binary_cross_entropy(&v[0], &v[1], weight, r);
    }
    float_arg(op, "input", p)?;
    float_arg(op, "target", target)?;
    same_shape(op, p, target)?;
    weight_shape(op, "weight", weight, p.shape())?;
    let log_p = p.log().maximum(-100.0)?;
    let log_q = p.try_neg()?.try_add(1.0)?.log().maximum(-100.0)?;
    // -(t log p + (1 - t) log q) = (t - 1) log q - t log p
    let per = target.try_sub(1.0)?.try_mul(&log_q)?.try_sub(&target.try_mul(&log_p)?)?;
    let per = match weight {
        Some(w) => per.try_mul(w)?,
        None => per,
    };
    reduce(per, r)
}

/// `F.binary_cross_entropy_with_logits` on raw scores `x`:
/// `w ((1 - t) x + (1 + (pw - 1) t) softplus(-x))`, with
/// `softplus(-x) = max(-x, 0) + log(1 + exp(-|x|))`, finite for every score (the form
/// PyTorch computes). `weight` broadcasts to the input's
/// shape; `pos_weight` (the weight of positive examples, per class) broadcasts along
/// the last dims, as in PyTorch.
pub fn binary_cross_entropy_with_logits(
    x: &Var,
    target: &Var,
    weight: Option<&Var>,
    pos_weight: Option<&Var>,
    r: Reduction,
) -> Result<Var> {
    let op = "binary_cross_entropy_with_logits";
    if let Some(v) = crate::autocast::widened(&[x, target]) {
        return binary_cross_entropy_with_logits(&v[0], &v[1], weight, pos_weight, r);
    }
    float_arg(op, "input", x)?;
    float_arg(op, "target", target)?;
    same_shape(op, x, target)?;
    weight_shape(op, "weight", weight, x.shape())?;
    weight_shape(op, "pos_weight", pos_weight, x.shape())?;
    let soft = x.try_neg()?.softplus(1.0, f64::INFINITY)?;
    let soft = match pos_weight {
        Some(pw) => pw.try_sub(1.0)?.try_mul(target)?.try_add(1.0)?.try_mul(&soft)?,
        None => soft,
    };
    let per = target.try_neg()?.try_add(1.0)?.try_mul(x)?.try_add(&soft)?;
    let per = match weight {
        Some(w) => per.try_mul(w)?,
        None => per,
    };
    reduce(per, r)
}

/// How [`kl_div`] reduces: PyTorch's `reduction` of `F.kl_div`, where `BatchMean` (the
/// sum divided by the batch size, dim 0) is the one that gives the KL divergence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KlReduction {
    /// Keep every value.
    None,
    /// The mean over every element (PyTorch's default, not the divergence's value).
    Mean,
    /// The sum divided by the size of dim 0.
    BatchMean,
    /// The sum.
    Sum,
}

/// `F.kl_div(input, target)`: `input` holds log-probabilities; the pointwise term is
/// `t (log t - input)` (0 where `t = 0`), or with `log_target` (targets given as
/// log-probabilities) `exp(t) (t - input)`. Gradients flow to both. Where `t = 0`, the
/// term and both gradients are 0; PyTorch 2.15 gives NaN for the target's gradient
/// there (from the derivative of its `xlogy(t, t)`), its other values are the same.
pub fn kl_div(input: &Var, target: &Var, reduction: KlReduction, log_target: bool) -> Result<Var> {
    let op = "kl_div";
    if let Some(v) = crate::autocast::widened(&[input, target]) {
        return kl_div(&v[0], &v[1], reduction, log_target);
    }
    float_arg(op, "input", input)?;
    float_arg(op, "target", target)?;
    same_shape(op, input, target)?;
    let per = if log_target {
        target.exp().try_mul(&target.try_sub(input)?)?
    } else {
        // t log t as 0 at t = 0 with a finite gradient there: log of 1 in its place
        let zero = target.eq(0.0)?;
        let safe = Var::where_(&zero, 1.0, target)?;
        Var::where_(&zero, 0.0, &target.try_mul(&safe.log().try_sub(input)?)?)?
    };
    match reduction {
        KlReduction::None => Ok(per),
        KlReduction::Mean => per.mean_all(),
        KlReduction::Sum => per.sum_all(),
        KlReduction::BatchMean => {
            let n = input.shape().first().copied().unwrap_or(1).max(1);
            per.sum_all()?.try_div(n as f64)
        }
    }
}

/// `torch.lerp(start, end, weight)`: `start + weight (end - start)`, computed as
/// PyTorch does (`end - (end - start)(1 - weight)` where `|weight| >= 0.5`, so that
/// `weight = 1` gives `end` exactly); `weight` is a scalar or a tensor that broadcasts.
pub fn lerp(start: &Var, end: &Var, weight: impl Into<Operand>) -> Result<Var> {
    let op = "lerp";
    float_arg(op, "start", start)?;
    float_arg(op, "end", end)?;
    if start.dtype() != end.dtype() {
        return Err(Error::dtype(
            op,
            format!("start and end must have the same dtype, got {} and {}", start.dtype(), end.dtype()),
        ));
    }
    let diff = end.try_sub(start)?;
    let scalar = |w: f64| {
        if w.abs() < 0.5 {
            start.try_add(&diff.try_mul(w)?)
        } else {
            end.try_sub(&diff.try_mul(1.0 - w)?)
        }
    };
    match weight.into() {
        Operand::Float(w) => scalar(w),
        Operand::Int(w) => scalar(w as f64),
        Operand::Bool(_) => Err(Error::dtype(op, "weight must be a number or a floating-point tensor, got a bool")),
        Operand::Var(w) => {
            if w.dtype() != start.dtype() {
                return Err(Error::dtype(
                    op,
                    format!("weight must have the dtype of start and end ({}), got {}", start.dtype(), w.dtype()),
                ));
            }
            let small = start.try_add(&diff.try_mul(&w)?)?;
            let large = end.try_sub(&diff.try_mul(&w.try_neg()?.try_add(1.0)?)?)?;
            Var::where_(&w.abs().lt(0.5)?, &small, &large)
        }
    }
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
