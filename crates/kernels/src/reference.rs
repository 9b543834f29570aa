//! The reference backend: a plain interpreter of single meta-ops.
//!
//! Floats are computed in f64 and integers in i64; each result is rounded (or
//! wrapped) to the output dtype when it is stored, exactly once. It is the oracle
//! that every other backend is tested against, so it favours obviousness over speed.

use crate::buffer::{Element, HostBuffer};
use crate::dtype::DType;
use crate::error::KernelError;
use crate::meta::{Distribution, MetaOp, ReduceOp};
use crate::random;
use half::{bf16, f16};

/// One input of an operation: its data and its shape.
pub type Input<'a> = (&'a HostBuffer, &'a [usize]);

/// Row-major strides of a shape.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    strides
}

/// Calls `f(flat, index)` for every position of `shape` in row-major order.
pub fn for_each_index(shape: &[usize], mut f: impl FnMut(usize, &[i64])) {
    let n: usize = shape.iter().product();
    if n == 0 {
        return;
    }
    let mut idx = vec![0i64; shape.len()];
    for flat in 0..n {
        f(flat, &idx);
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            if (idx[d] as usize) < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

fn flat_of(index: &[i64], strides: &[usize]) -> usize {
    index.iter().zip(strides).map(|(&i, &s)| i as usize * s).sum()
}

/// Builds a buffer of `dtype` whose element `k` is `src[map[k]]`, or `fill` where the
/// map is `None`. Values are copied exactly (no round trip through f64).
fn take(src: &HostBuffer, map: &[Option<usize>], fill: f64) -> HostBuffer {
    fn go<T: Element>(v: &[T], map: &[Option<usize>], fill: f64) -> HostBuffer {
        let fill = T::from_f64(fill);
        T::into_buffer(map.iter().map(|m| m.map_or(fill, |i| v[i])).collect())
    }
    match src {
        HostBuffer::Bool(v) => go::<bool>(v, map, fill),
        HostBuffer::U8(v) => go::<u8>(v, map, fill),
        HostBuffer::I32(v) => go::<i32>(v, map, fill),
        HostBuffer::I64(v) => go::<i64>(v, map, fill),
        HostBuffer::F16(v) => go::<f16>(v, map, fill),
        HostBuffer::BF16(v) => go::<bf16>(v, map, fill),
        HostBuffer::F32(v) => go::<f32>(v, map, fill),
        HostBuffer::F64(v) => go::<f64>(v, map, fill),
    }
}

fn in_range(index: &[i64], shape: &[usize]) -> bool {
    index.iter().zip(shape).all(|(&i, &n)| i >= 0 && (i as usize) < n)
}

fn wrong_inputs(op: &MetaOp, want: usize, got: usize) -> KernelError {
    KernelError::Internal { op: op.name().to_string(), reason: format!("expected {want} inputs, got {got}") }
}

/// Runs one meta-op on host buffers and returns the output.
pub fn eval(
    op: &MetaOp,
    inputs: &[Input<'_>],
    out_shape: &[usize],
    out_dtype: DType,
) -> Result<HostBuffer, KernelError> {
    let n: usize = out_shape.iter().product();
    let arity = match op {
        MetaOp::Full { .. } | MetaOp::Index { .. } | MetaOp::Random { .. } => 0,
        MetaOp::Binary(_) => 2,
        MetaOp::Where => 3,
        MetaOp::Extern(e) => e.arity(),
        MetaOp::Gather { .. } | MetaOp::Scatter { .. } => 2,
        _ => 1,
    };
    if inputs.len() != arity {
        return Err(wrong_inputs(op, arity, inputs.len()));
    }
    // fail with an out-of-memory error, not an abort, when the output cannot exist
    drop(HostBuffer::try_zeros(out_dtype, n)?);
    Ok(match op {
        MetaOp::Extern(e) => e.run_reference(inputs, out_dtype)?,
        MetaOp::Full { value } => HostBuffer::filled(out_dtype, n, *value),
        MetaOp::Index { dim } => {
            let strides = contiguous_strides(out_shape);
            let (stride, size) = (strides.get(*dim).copied().unwrap_or(1), out_shape.get(*dim).copied().unwrap_or(1));
            HostBuffer::from_i64s(out_dtype, (0..n).map(|k| ((k / stride) % size.max(1)) as i64))
        }
        MetaOp::Random { seed, dist } => {
            let vals = (0..n as u64).map(|k| match *dist {
                Distribution::Uniform { low, high } => low + (high - low) * random::uniform(*seed, k),
                Distribution::Normal { mean, std } => mean + std * random::normal(*seed, k),
            });
            HostBuffer::from_f64s(out_dtype, vals)
        }
        MetaOp::Unary(u) => {
            let x = inputs[0].0;
            if x.dtype().is_float() {
                HostBuffer::from_f64s(out_dtype, x.to_f64_vec().into_iter().map(|v| u.eval_f64(v)))
            } else {
                HostBuffer::from_i64s(out_dtype, x.to_i64_vec().into_iter().map(|v| u.eval_i64(v)))
            }
        }
        MetaOp::Binary(b) => {
            let (x, y) = (inputs[0].0, inputs[1].0);
            if x.dtype().is_float() {
                let (xs, ys) = (x.to_f64_vec(), y.to_f64_vec());
                HostBuffer::from_f64s(out_dtype, xs.iter().zip(&ys).map(|(&p, &q)| b.eval_f64(p, q)))
            } else {
                let (xs, ys) = (x.to_i64_vec(), y.to_i64_vec());
                HostBuffer::from_i64s(out_dtype, xs.iter().zip(&ys).map(|(&p, &q)| b.eval_i64(p, q)))
            }
        }
        MetaOp::Where => {
            // Pick element k of a where the condition holds, else element k of b,
            // copying exactly from the concatenation a ++ b.
            let c = inputs[0].0.to_i64_vec();
            let both = concat(inputs[1].0, inputs[2].0);
            let pick: Vec<Option<usize>> = (0..n).map(|k| Some(if c[k] != 0 { k } else { n + k })).collect();
            take(&both, &pick, 0.0)
        }
        MetaOp::Cast => inputs[0].0.cast(out_dtype),
        MetaOp::Reshape | MetaOp::Materialize => inputs[0].0.clone(),
        MetaOp::BroadcastTo { new_dims } => {
            let (x, in_shape) = inputs[0];
            let in_strides = contiguous_strides(in_shape);
            // out dim -> input dim (or None for new dims)
            let mut map_dims = Vec::with_capacity(out_shape.len());
            let mut next = 0;
            for d in 0..out_shape.len() {
                if new_dims.contains(&d) {
                    map_dims.push(None);
                } else {
                    map_dims.push(Some(next));
                    next += 1;
                }
            }
            let mut map = Vec::with_capacity(n);
            for_each_index(out_shape, |_, idx| {
                let mut flat = 0;
                for (d, m) in map_dims.iter().enumerate() {
                    if let Some(k) = *m {
                        let i = if in_shape[k] == 1 { 0 } else { idx[d] as usize };
                        flat += i * in_strides[k];
                    }
                }
                map.push(Some(flat));
            });
            take(x, &map, 0.0)
        }
        MetaOp::Reindex { exprs, overflow, conds } => {
            let (x, in_shape) = inputs[0];
            let in_strides = contiguous_strides(in_shape);
            let mut map = Vec::with_capacity(n);
            let mut src = vec![0i64; in_shape.len()];
            for_each_index(out_shape, |_, idx| {
                for (s, e) in src.iter_mut().zip(exprs) {
                    *s = e.eval(idx);
                }
                let ok = in_range(&src, in_shape) && conds.iter().all(|c| c.eval(idx) != 0);
                map.push(ok.then(|| flat_of(&src, &in_strides)));
            });
            take(x, &map, *overflow)
        }
        MetaOp::Reduce { op, axes, keepdims: _ } => {
            let (x, in_shape) = inputs[0];
            let kept: Vec<usize> = (0..in_shape.len()).filter(|d| !axes.contains(d)).collect();
            let kept_shape: Vec<usize> = kept.iter().map(|&d| in_shape[d]).collect();
            let kept_strides = contiguous_strides(&kept_shape);
            let targets = (0..in_shape.len()).map(|d| kept.iter().position(|&k| k == d));
            let targets: Vec<Option<usize>> = targets.collect();
            let mut out_of = Vec::with_capacity(x.len());
            for_each_index(in_shape, |_, idx| {
                let flat: usize =
                    targets.iter().enumerate().filter_map(|(d, t)| t.map(|k| idx[d] as usize * kept_strides[k])).sum();
                out_of.push(flat);
            });
            accumulate(*op, x, &out_of.into_iter().map(Some).collect::<Vec<_>>(), n, out_dtype)
        }
        MetaOp::ReindexReduce { op, exprs, conds } => {
            let (x, in_shape) = inputs[0];
            let out_strides = contiguous_strides(out_shape);
            let mut dst = vec![0i64; out_shape.len()];
            let mut out_of = Vec::with_capacity(x.len());
            for_each_index(in_shape, |_, idx| {
                for (s, e) in dst.iter_mut().zip(exprs) {
                    *s = e.eval(idx);
                }
                let ok = in_range(&dst, out_shape) && conds.iter().all(|c| c.eval(idx) != 0);
                out_of.push(ok.then(|| flat_of(&dst, &out_strides)));
            });
            accumulate(*op, x, &out_of, n, out_dtype)
        }
        MetaOp::Gather { dim } => {
            let ((x, in_shape), (index, _)) = (inputs[0], inputs[1]);
            let in_strides = contiguous_strides(in_shape);
            let mut map = Vec::with_capacity(n);
            let mut src = vec![0i64; in_shape.len()];
            for_each_index(out_shape, |k, idx| {
                src.copy_from_slice(idx);
                src[*dim] = index.get_i64(k);
                map.push(in_range(&src, in_shape).then(|| flat_of(&src, &in_strides)));
            });
            take(x, &map, 0.0)
        }
        MetaOp::Scatter { op, dim } => {
            let ((x, in_shape), (index, _)) = (inputs[0], inputs[1]);
            let out_strides = contiguous_strides(out_shape);
            let mut out_of = Vec::with_capacity(x.len());
            let mut dst = vec![0i64; out_shape.len()];
            for_each_index(in_shape, |k, idx| {
                dst.copy_from_slice(idx);
                dst[*dim] = index.get_i64(k);
                out_of.push(in_range(&dst, out_shape).then(|| flat_of(&dst, &out_strides)));
            });
            accumulate(*op, x, &out_of, n, out_dtype)
        }
    })
}

/// Combines element `k` of `x` into output `out_of[k]` with `op`, in f64 or i64.
fn accumulate(op: ReduceOp, x: &HostBuffer, out_of: &[Option<usize>], n: usize, out_dtype: DType) -> HostBuffer {
    let comb = op.combiner();
    if x.dtype().is_float() {
        let mut acc = vec![op.identity_f64(); n];
        for (k, o) in out_of.iter().enumerate() {
            if let Some(o) = *o {
                acc[o] = comb.eval_f64(acc[o], x.get_f64(k));
            }
        }
        HostBuffer::from_f64s(out_dtype, acc)
    } else {
        let mut acc = vec![op.identity_i64(); n];
        for (k, o) in out_of.iter().enumerate() {
            if let Some(o) = *o {
                acc[o] = comb.eval_i64(acc[o], x.get_i64(k));
            }
        }
        // Untouched integer outputs of max/min keep the dtype's extreme value.
        let acc = acc.into_iter().map(|v| clamp_to_dtype(v, out_dtype));
        HostBuffer::from_i64s(out_dtype, acc)
    }
}

fn clamp_to_dtype(v: i64, dtype: DType) -> i64 {
    match dtype {
        DType::Bool => v.clamp(0, 1),
        DType::U8 => v.clamp(0, 255),
        DType::I32 => v.clamp(i64::from(i32::MIN), i64::from(i32::MAX)),
        _ => v,
    }
}

fn concat(a: &HostBuffer, b: &HostBuffer) -> HostBuffer {
    fn go<T: Element>(a: &[T], b: &[T]) -> HostBuffer {
        T::into_buffer(a.iter().chain(b).copied().collect())
    }
    match (a, b) {
        (HostBuffer::Bool(a), HostBuffer::Bool(b)) => go(a, b),
        (HostBuffer::U8(a), HostBuffer::U8(b)) => go(a, b),
        (HostBuffer::I32(a), HostBuffer::I32(b)) => go(a, b),
        (HostBuffer::I64(a), HostBuffer::I64(b)) => go(a, b),
        (HostBuffer::F16(a), HostBuffer::F16(b)) => go(a, b),
        (HostBuffer::BF16(a), HostBuffer::BF16(b)) => go(a, b),
        (HostBuffer::F32(a), HostBuffer::F32(b)) => go(a, b),
        (HostBuffer::F64(a), HostBuffer::F64(b)) => go(a, b),
        // Mixed dtypes cannot reach here (checked when the graph is built); convert.
        (a, b) => concat(a, &b.cast(a.dtype())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::IndexExpr as E;

    #[test]
    fn transpose_by_reindex() {
        let x = HostBuffer::F32(vec![1., 2., 3., 4., 5., 6.]);
        let op = MetaOp::Reindex { exprs: vec![E::idx(1), E::idx(0)], overflow: 0.0, conds: vec![] };
        let y = eval(&op, &[(&x, &[2, 3])], &[3, 2], DType::F32).unwrap();
        assert_eq!(y.to_f64_vec(), vec![1., 4., 2., 5., 3., 6.]);
    }

    #[test]
    fn pad_overflow_and_conditions() {
        let x = HostBuffer::I32(vec![7, 8]);
        let op = MetaOp::Reindex { exprs: vec![E::idx(0) - 1], overflow: -1.0, conds: vec![E::idx(0).ne_(2)] };
        let y = eval(&op, &[(&x, &[2])], &[4], DType::I32).unwrap();
        assert_eq!(y.to_i64_vec(), vec![-1, 7, -1, -1]);
    }

    #[test]
    fn reduce_and_scatter() {
        let x = HostBuffer::F64(vec![1., 2., 3., 4., 5., 6.]);
        let op = MetaOp::Reduce { op: ReduceOp::Sum, axes: vec![0], keepdims: false };
        assert_eq!(eval(&op, &[(&x, &[2, 3])], &[3], DType::F64).unwrap().to_f64_vec(), vec![5., 7., 9.]);
        let op = MetaOp::Reduce { op: ReduceOp::Max, axes: vec![1], keepdims: true };
        assert_eq!(eval(&op, &[(&x, &[2, 3])], &[2, 1], DType::F64).unwrap().to_f64_vec(), vec![3., 6.]);
        // scatter-add every element into position i % 2
        let op = MetaOp::ReindexReduce { op: ReduceOp::Sum, exprs: vec![E::idx(0).modulo(2)], conds: vec![] };
        assert_eq!(eval(&op, &[(&x, &[6])], &[3], DType::F64).unwrap().to_f64_vec(), vec![9., 12., 0.]);
    }

    #[test]
    fn where_picks_exactly() {
        let c = HostBuffer::Bool(vec![true, false, true]);
        let a = HostBuffer::I64(vec![i64::MAX, 1, 2]);
        let b = HostBuffer::I64(vec![0, i64::MIN, 0]);
        let y = eval(&MetaOp::Where, &[(&c, &[3]), (&a, &[3]), (&b, &[3])], &[3], DType::I64).unwrap();
        assert_eq!(y.to_i64_vec(), vec![i64::MAX, i64::MIN, 2]);
    }

    #[test]
    fn wrong_arity_is_an_error_not_a_panic() {
        let err = eval(&MetaOp::Where, &[], &[1], DType::F32).unwrap_err();
        assert!(err.to_string().contains("where"));
    }
}
