//! One gradient rule per meta-operator. Every rule builds meta-ops, so backward
//! graphs fuse like forward ones:
//!
//! | forward | backward |
//! |---|---|
//! | element-wise | element-wise (reads the inputs it names in [`saved_inputs`]) |
//! | `broadcast_to` | `reduce(sum)` over the new and stretched dims |
//! | `reduce(sum)` | `broadcast_to` |
//! | `reduce(max/min)` | `where(x == out)`, shared evenly between ties (as `torch.amax`) |
//! | `reindex` | `reindex_reduce(sum)` with the same index expressions |
//! | `reindex_reduce(sum)` | `reindex` with the same index expressions |
//! | `gather` | `scatter(sum)` with the same index |
//! | `scatter(sum)` | `gather` with the same index |
//! | `cast` | `cast` back (float to float) |
//! | `where` | `where` on the gradient |

use super::Ctx;
use crate::error::Result;
use crate::var::Var;
use kernels::{BinaryOp, ConvPass, ExternOp, IndexExpr, MetaOp, ReduceOp, UnaryOp};

/// False for ops whose output carries no gradient at all.
pub(super) fn differentiable(op: &MetaOp) -> bool {
    match op {
        MetaOp::Full { .. } | MetaOp::Index { .. } | MetaOp::Random { .. } => false,
        MetaOp::Unary(u) => *u != UnaryOp::Not,
        MetaOp::Binary(b) => !(b.is_comparison() || b.is_logical()),
        _ => true,
    }
}

/// Which inputs the rule of `op` reads (the others are not kept alive for backward).
/// Rules that read the op's output save every input, so that the output can be
/// recomputed when its node is gone.
pub(super) fn saved_inputs(op: &MetaOp, n: usize) -> Vec<bool> {
    let all = vec![true; n];
    let none = vec![false; n];
    match op {
        MetaOp::Unary(u) => match u {
            UnaryOp::Neg | UnaryOp::Floor | UnaryOp::Round | UnaryOp::Not => none,
            _ => all,
        },
        MetaOp::Binary(b) => match b {
            BinaryOp::Add | BinaryOp::Sub => none,
            _ => all,
        },
        MetaOp::Where => {
            let mut v = none;
            v[0] = true;
            v
        }
        MetaOp::Reduce { op: ReduceOp::Sum, .. } | MetaOp::ReindexReduce { op: ReduceOp::Sum, .. } => none,
        MetaOp::Reduce { .. } | MetaOp::ReindexReduce { .. } | MetaOp::Extern(_) => all,
        // the index only
        MetaOp::Gather { .. } | MetaOp::Scatter { op: ReduceOp::Sum, .. } => vec![false, true],
        MetaOp::Scatter { .. } => all,
        _ => none,
    }
}

/// The gradient of each input of the node in `ctx`, given the gradient `g` of its
/// output (`None` for inputs that take none).
pub(super) fn backward(ctx: &Ctx<'_>, g: &Var) -> Result<Vec<Option<Var>>> {
    Ok(match ctx.op {
        MetaOp::Full { .. } | MetaOp::Index { .. } | MetaOp::Random { .. } => vec![],
        MetaOp::Unary(u) => vec![unary(ctx, *u, g)?],
        MetaOp::Binary(b) => {
            let (ga, gb) = binary(ctx, *b, g)?;
            vec![ga, gb]
        }
        MetaOp::Where => {
            let cond = ctx.input(0)?;
            let zero = g.zeros_like();
            let ga = ctx.wants(1).then(|| Var::where_meta(&cond, g, &zero)).transpose()?;
            let gb = ctx.wants(2).then(|| Var::where_meta(&cond, &zero, g)).transpose()?;
            vec![None, ga, gb]
        }
        MetaOp::Cast => {
            let dt = ctx.in_dtype(0);
            vec![dt.is_float().then(|| g.cast(dt))]
        }
        MetaOp::Reshape => vec![Some(g.reshape(&isize_shape(ctx.in_shape(0)))?)],
        MetaOp::Materialize => vec![Some(g.clone())],
        MetaOp::BroadcastTo { new_dims } => vec![Some(unbroadcast(g, ctx.in_shape(0), new_dims)?)],
        MetaOp::Reindex { exprs, conds, .. } => {
            vec![Some(g.reindex_reduce(ReduceOp::Sum, ctx.in_shape(0), exprs.clone(), conds.clone())?)]
        }
        MetaOp::Reduce { op, axes, keepdims } => vec![Some(reduce(ctx, *op, axes, *keepdims, g)?)],
        MetaOp::Extern(e) => extern_rule(ctx, *e, g)?,
        MetaOp::Gather { dim } => {
            let index = ctx.input(1)?;
            vec![Some(g.scatter_indexed(ReduceOp::Sum, *dim, &index, ctx.in_shape(0))?), None]
        }
        MetaOp::Scatter { op, dim } => {
            let index = ctx.input(1)?;
            let g_at = g.gather_indexed(*dim, &index)?;
            let gx = match op {
                ReduceOp::Sum => g_at,
                ReduceOp::Prod => {
                    let out_at = ctx.output()?.gather_indexed(*dim, &index)?;
                    &(&g_at * &out_at) / &ctx.input(0)?
                }
                ReduceOp::Max | ReduceOp::Min => {
                    // shared evenly between the sources that reached the extreme
                    let x = ctx.input(0)?;
                    let out = ctx.output()?;
                    let hit = x.binary(BinaryOp::Eq, &out.gather_indexed(*dim, &index)?)?.cast(x.dtype());
                    let count = hit.scatter_indexed(ReduceOp::Sum, *dim, &index, out.shape())?;
                    // (an index out of range reads 0: no gradient, no division by 0)
                    let count_at = count.gather_indexed(*dim, &index)?.maximum(1.0)?;
                    &(&g_at * &hit) / &count_at
                }
            };
            vec![Some(gx), None]
        }
        MetaOp::ReindexReduce { op, exprs, conds } => {
            let shape = ctx.in_shape(0).to_vec();
            let g_at = g.reindex(&shape, exprs.clone(), 0.0, conds.clone())?;
            let gx = match op {
                ReduceOp::Sum => g_at,
                ReduceOp::Prod => {
                    let out_at = ctx.output()?.reindex(&shape, exprs.clone(), 0.0, conds.clone())?;
                    &(&g_at * &out_at) / &ctx.input(0)?
                }
                ReduceOp::Max | ReduceOp::Min => {
                    let x = ctx.input(0)?;
                    let out = ctx.output()?;
                    let out_at = out.reindex(&shape, exprs.clone(), 0.0, conds.clone())?;
                    let hit = x.binary(BinaryOp::Eq, &out_at)?.cast(x.dtype());
                    let count = hit.reindex_reduce(ReduceOp::Sum, out.shape(), exprs.clone(), conds.clone())?;
                    let count_at = count.maximum(1.0)?.reindex(&shape, exprs.clone(), 1.0, conds.clone())?;
                    &(&g_at * &hit) / &count_at
                }
            };
            vec![Some(gx)]
        }
    })
}

/// `C = op(A) op(B)` with `op` an optional transpose: `dA' = G B'ᵀ`, `dB' = A'ᵀ G`,
/// written as products of the stored inputs with transpose flags (no copies), and
/// summed over the batch where an input was broadcast.
fn extern_rule(ctx: &Ctx<'_>, op: ExternOp, g: &Var) -> Result<Vec<Option<Var>>> {
    match op {
        ExternOp::Matmul { trans_a: ta, trans_b: tb } => {
            let mm = |x: &Var, y: &Var, tx: bool, ty: bool| {
                Var::extern_op(ExternOp::Matmul { trans_a: tx, trans_b: ty }, &[x.clone(), y.clone()])
            };
            let unbatch = |d: Var, k: usize| -> Result<Var> {
                if ctx.in_shape(k)[0] == 1 && d.shape()[0] != 1 {
                    d.reduce(ReduceOp::Sum, &[0], true)
                } else {
                    Ok(d)
                }
            };
            let (a, b) = (ctx.input(0)?, ctx.input(1)?);
            if ta != tb && a.same_node(&b) && ctx.wants(0) && g.ndim() == 3 {
                // a Gram matrix A·Aᵀ (or Aᵀ·A): the two operands' gradients g·A and
                // gᵀ·A (A·gᵀ and A·g) are one product with the symmetrised gradient
                let swap = vec![IndexExpr::idx(0), IndexExpr::idx(2), IndexExpr::idx(1)];
                let gs = g.try_add(&g.reindex(g.shape(), swap, 0.0, vec![])?)?;
                let d = if tb { mm(&gs, &a, false, false)? } else { mm(&a, &gs, false, false)? };
                return Ok(vec![Some(unbatch(d, 0)?), None]);
            }
            let da = if ctx.wants(0) {
                let d = match (ta, tb) {
                    (false, false) => mm(g, &b, false, true)?,
                    (false, true) => mm(g, &b, false, false)?,
                    (true, false) => mm(&b, g, false, true)?,
                    (true, true) => mm(&b, g, true, true)?,
                };
                Some(unbatch(d, 0)?)
            } else {
                None
            };
            let db = if ctx.wants(1) {
                let d = match (ta, tb) {
                    (false, false) => mm(&a, g, true, false)?,
                    (true, false) => mm(&a, g, false, false)?,
                    (false, true) => mm(g, &a, true, false)?,
                    (true, true) => mm(g, &a, true, true)?,
                };
                Some(unbatch(d, 1)?)
            } else {
                None
            };
            Ok(vec![da, db])
        }
        // Each pass is bilinear in its two inputs and the three are adjoints of one
        // another (<dy, fwd(x, w)> = <bd(dy, w), x> = <bf(dy, x), w>), so each one's
        // gradients are the other two, to any order.
        ExternOp::Conv2d { pass, spec } => conv_pass_grads(ctx, pass, g, |p, a, b| {
            Var::extern_op(ExternOp::Conv2d { pass: p, spec }, &[a.clone(), b.clone()])
        }),
        // The host's passes on the padded grid, with the same adjoint relations
        // given their layout's contract: the forward product is zero outside the
        // valid corner `oh x ow` of the grid, and the output gradient the other two
        // passes take is zero there (conv2d's rule pads it with zeros). So the
        // forward pass's gradient is first masked to the valid corner, and the
        // gradients the other two give their output-gradient input are forward
        // products (zero outside it, where that input's producer, a zero padding,
        // takes no gradient).
        ExternOp::Conv2dShift { pass, kernel, dilation } => {
            let g = if pass == ConvPass::Forward { &valid_corner(g, kernel, dilation)? } else { g };
            conv_pass_grads(ctx, pass, g, |p, a, b| {
                Var::extern_op(ExternOp::Conv2dShift { pass: p, kernel, dilation }, &[a.clone(), b.clone()])
            })
        }
        // positions: no gradient (an i64 output is never recorded)
        ExternOp::Argsort { .. } => Ok(vec![None]),
        // the stride-2 product runs inside conv2d's own rule only (recording off)
        ExternOp::Conv2dStride2 { .. } => Err(crate::Error::argument(
            "grad",
            "the stride-2 convolution product is differentiated by conv2d's own rule, not on its own",
        )),
    }
}

/// The gradients of one pass of a convolution whose three passes are adjoints of
/// one another (`<dy, fwd(x, w)> = <bd(dy, w), x> = <bf(dy, x), w>`), so that each
/// one's gradients are the other two, to any order; `call` builds a pass.
fn conv_pass_grads(
    ctx: &Ctx<'_>,
    pass: ConvPass,
    g: &Var,
    call: impl Fn(ConvPass, &Var, &Var) -> Result<Var>,
) -> Result<Vec<Option<Var>>> {
    let (a, b) = (ctx.input(0)?, ctx.input(1)?);
    let (da, db) = match pass {
        // y = fwd(x, w): dx = bd(g, w), dw = bf(g, x)
        ConvPass::Forward => (
            ctx.wants(0).then(|| call(ConvPass::BackwardData, g, &b)),
            ctx.wants(1).then(|| call(ConvPass::BackwardFilter, g, &a)),
        ),
        // dx = bd(dy, w): d dy = fwd(g, w), dw = bf(dy, g)
        ConvPass::BackwardData => (
            ctx.wants(0).then(|| call(ConvPass::Forward, g, &b)),
            ctx.wants(1).then(|| call(ConvPass::BackwardFilter, &a, g)),
        ),
        // dw = bf(dy, x): d dy = fwd(x, g), dx = bd(dy, g)
        ConvPass::BackwardFilter => (
            ctx.wants(0).then(|| call(ConvPass::Forward, &b, g)),
            ctx.wants(1).then(|| call(ConvPass::BackwardData, &a, g)),
        ),
    };
    Ok(vec![da.transpose()?, db.transpose()?])
}

/// `g` (`[N, C, Hp, Wp]`, a padded grid) with zeros outside the valid corner of a
/// `kernel` with `dilation`: rows below `Hp - (kh - 1) * dh`, columns below `Wp - (kw -
/// 1) * dw`.
fn valid_corner(g: &Var, kernel: [usize; 2], dilation: [usize; 2]) -> Result<Var> {
    let [_, _, hp, wp] = <[usize; 4]>::try_from(g.shape()).map_err(|_| {
        crate::Error::argument("grad", format!("a convolution's grid gradient must be 4-d, got {:?}", g.shape()))
    })?;
    let oh = hp.saturating_sub((kernel[0] - 1) * dilation[0]) as i64;
    let ow = wp.saturating_sub((kernel[1] - 1) * dilation[1]) as i64;
    let exprs = (0..4).map(IndexExpr::idx).collect();
    g.reindex(g.shape(), exprs, 0.0, vec![IndexExpr::idx(2).lt(oh), IndexExpr::idx(3).lt(ow)])
}

fn isize_shape(shape: &[usize]) -> Vec<isize> {
    shape.iter().map(|&d| d as isize).collect()
}

/// Sums `g` (of the broadcast output's shape) back to the input shape.
fn unbroadcast(g: &Var, in_shape: &[usize], new_dims: &[usize]) -> Result<Var> {
    let mut axes = Vec::new();
    let mut k = 0;
    for (d, &n) in g.shape().iter().enumerate() {
        if new_dims.contains(&d) {
            axes.push(d);
            continue;
        }
        if in_shape[k] == 1 && n != 1 {
            axes.push(d);
        }
        k += 1;
    }
    g.reduce(ReduceOp::Sum, &axes, true)?.reshape(&isize_shape(in_shape))
}

/// A reduction's output (or its gradient) stretched back over the reduced axes.
fn expand_reduced(v: &Var, in_shape: &[usize], axes: &[usize], keepdims: bool) -> Result<Var> {
    let v = if keepdims {
        v.clone()
    } else {
        let kept: Vec<isize> =
            in_shape.iter().enumerate().map(|(d, &n)| if axes.contains(&d) { 1 } else { n as isize }).collect();
        v.reshape(&kept)?
    };
    v.broadcast_to_dims(in_shape, &[])
}

fn reduce(ctx: &Ctx<'_>, op: ReduceOp, axes: &[usize], keepdims: bool, g: &Var) -> Result<Var> {
    let shape = ctx.in_shape(0);
    let gb = expand_reduced(g, shape, axes, keepdims)?;
    Ok(match op {
        ReduceOp::Sum => gb,
        ReduceOp::Prod => {
            let out = expand_reduced(&ctx.output()?, shape, axes, keepdims)?;
            &(&gb * &out) / &ctx.input(0)?
        }
        ReduceOp::Max | ReduceOp::Min => {
            let x = ctx.input(0)?;
            let out = expand_reduced(&ctx.output()?, shape, axes, keepdims)?;
            let hit = x.binary(BinaryOp::Eq, &out)?.cast(x.dtype());
            // at least 1: should a recomputed x differ from the stored max in the last
            // bit, the gradient is lost rather than turned into 0/0
            let count = hit.reduce(ReduceOp::Sum, axes, true)?.maximum(1.0)?;
            let count = expand_reduced(&count, shape, axes, true)?;
            &(&gb * &hit) / &count
        }
    })
}

fn unary(ctx: &Ctx<'_>, op: UnaryOp, g: &Var) -> Result<Option<Var>> {
    let dt = ctx.in_dtype(0);
    Ok(Some(match op {
        UnaryOp::Neg => g.try_neg()?,
        UnaryOp::Abs => {
            let x = ctx.input(0)?;
            let sign = &x.gt(0.0)?.cast(dt) - &x.lt(0.0)?.cast(dt);
            g * &sign
        }
        UnaryOp::Exp => g * &ctx.output()?,
        UnaryOp::Log => g / &ctx.input(0)?,
        UnaryOp::Sqrt => g / &(&ctx.output()? * 2.0),
        UnaryOp::Rsqrt => {
            let out = ctx.output()?;
            &(g * &(&(&out * &out) * &out)) * -0.5
        }
        UnaryOp::Recip => {
            let out = ctx.output()?;
            -(g * &(&out * &out))
        }
        UnaryOp::Sin => g * &ctx.input(0)?.cos(),
        UnaryOp::Cos => -(g * &ctx.input(0)?.sin()),
        UnaryOp::Tanh => {
            let out = ctx.output()?;
            g * &(1.0 - &(&out * &out))
        }
        UnaryOp::Sigmoid => {
            let out = ctx.output()?;
            g * &(&out * &(1.0 - &out))
        }
        UnaryOp::Erf => {
            let x = ctx.input(0)?;
            g * &(&(-(&x * &x)).exp() * std::f64::consts::FRAC_2_SQRT_PI)
        }
        UnaryOp::Floor | UnaryOp::Round => g.zeros_like(),
        UnaryOp::Not => return Ok(None),
    }))
}

fn binary(ctx: &Ctx<'_>, op: BinaryOp, g: &Var) -> Result<(Option<Var>, Option<Var>)> {
    let (wa, wb) = (ctx.wants(0), ctx.wants(1));
    let some = |c: bool, f: &dyn Fn() -> Result<Var>| -> Result<Option<Var>> { c.then(f).transpose() };
    match op {
        BinaryOp::Add => Ok((wa.then(|| g.clone()), wb.then(|| g.clone()))),
        BinaryOp::Sub => Ok((wa.then(|| g.clone()), some(wb, &|| g.try_neg())?)),
        _ => {
            let a = ctx.input(0)?;
            let b = ctx.input(1)?;
            match op {
                BinaryOp::Mul => Ok((some(wa, &|| Ok(g * &b))?, some(wb, &|| Ok(g * &a))?)),
                BinaryOp::Div => Ok((some(wa, &|| Ok(g / &b))?, some(wb, &|| Ok(-(&(g * &a) / &(&b * &b))))?)),
                BinaryOp::Pow => {
                    // PyTorch's pow_backward: 0 where the exponent is 0 (base) and
                    // where the base is 0 and the exponent is not negative (exponent).
                    let ga = some(wa, &|| {
                        let d = &(g * &b) * &a.pow(&(&b - 1.0))?;
                        Var::where_meta(&b.eq(0.0)?, &d.zeros_like(), &d)
                    })?;
                    let gb = some(wb, &|| {
                        let d = &(g * &ctx.output()?) * &a.log();
                        let skip = a.eq(0.0)?.logical_and(&b.ge(0.0)?)?;
                        Var::where_meta(&skip, &d.zeros_like(), &d)
                    })?;
                    Ok((ga, gb))
                }
                BinaryOp::Max | BinaryOp::Min => {
                    // PyTorch's maximum/minimum backward: the winner takes the
                    // gradient, ties share it evenly.
                    let half = g * 0.5;
                    let zero = g.zeros_like();
                    let tie = a.eq(&b)?;
                    let side = |x: &Var, y: &Var| -> Result<Var> {
                        let wins = if op == BinaryOp::Max { x.gt(y)? } else { x.lt(y)? };
                        Var::where_meta(&tie, &half, &Var::where_meta(&wins, g, &zero)?)
                    };
                    Ok((some(wa, &|| side(&a, &b))?, some(wb, &|| side(&b, &a))?))
                }
                BinaryOp::Mod => Ok((wa.then(|| g.clone()), some(wb, &|| Ok(-(g * &(&a / &b).floor())))?)),
                _ => Ok((None, None)),
            }
        }
    }
}
