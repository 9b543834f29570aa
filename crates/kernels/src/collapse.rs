//! Collapsing loop dimensions: a kernel over `[8, 512, 32, 32]` that reads every
//! input row-major over the last two dims runs the same as one over `[8, 512, 1024]`,
//! with an innermost loop of 1024 instead of 32 (longer vector loops, per-row values
//! computed once per 1024 elements instead of once per 32, fewer index divisions).
//!
//! Two adjacent dims `d, d + 1` of the output domain (or of the reduction domain)
//! merge into one index `j = i_d * n_{d+1} + i_{d+1}` when every index expression of
//! the kernel is affine in both with coefficients `c_d = c_{d+1} * n_{d+1}` at this
//! launch's sizes (then `c_d i_d + c_{d+1} i_{d+1} = c_{d+1} j`), or when either dim
//! has size 1 (its index is always 0). The output positions keep their row-major
//! order, so dense stores are unchanged. The rewritten kernel is valid for this
//! launch's arguments; it is a different IR (a different cache entry), and a launch
//! whose strides do not allow the merge keeps the original kernel.

use crate::expr::IndexExpr;
use crate::ir::{Inst, Kernel, Launch, Value};

/// The kernel with adjacent dims merged wherever its index expressions allow (see
/// the module documentation), or `None` when nothing merges. Kernels with scatter
/// outputs are left alone.
pub fn collapse_dims(kernel: &Kernel, launch: &Launch) -> Option<(Kernel, Launch)> {
    if kernel.has_scatter()
        || launch.out_shape.len() != kernel.out_rank
        || launch.red_shape.len() != kernel.red_rank
        || launch.out_shape.iter().chain(&launch.red_shape).any(|&n| n == 0)
    {
        return None;
    }
    let mut k = kernel.clone();
    let mut l = launch.clone();
    let mut changed = false;
    loop {
        let mut merged = false;
        // innermost pairs first, in the reduction domain and in the output domain
        let pairs = (0..k.red_rank.saturating_sub(1))
            .rev()
            .map(|r| (true, r))
            .chain((0..k.out_rank.saturating_sub(1)).rev().map(|o| (false, o)));
        for (red, at) in pairs {
            let d = if red { k.out_rank + at } else { at };
            if let Some(next) = merge(&k, &l, d, red) {
                (k, l) = next;
                merged = true;
                changed = true;
                break;
            }
        }
        if !merged {
            break;
        }
    }
    changed.then_some((k, l))
}

/// Every index expression of the kernel, for checks.
fn expressions(k: &Kernel) -> Vec<&IndexExpr> {
    let mut out = vec![];
    for v in k.inner.iter().chain(&k.body) {
        match &v.inst {
            Inst::Load { offset, guard, .. } => {
                out.push(offset);
                out.extend(guard);
            }
            Inst::Gather { offset, at, guard, .. } => {
                out.extend([offset, &at.stride, &at.extent]);
                out.extend(guard);
            }
            Inst::Index(e) => out.push(e),
            Inst::Random { counter, .. } => out.push(counter),
            Inst::Const(_)
            | Inst::Param(_)
            | Inst::Unary(..)
            | Inst::Binary(..)
            | Inst::Where(..)
            | Inst::Cast(_)
            | Inst::Acc(_) => {}
        }
    }
    out
}

/// Merges loop indices `d` and `d + 1` (both in the output domain, or both in the
/// reduction domain when `red`), when allowed.
fn merge(k: &Kernel, l: &Launch, d: usize, red: bool) -> Option<(Kernel, Launch)> {
    let dims: Vec<usize> = l.out_shape.iter().chain(&l.red_shape).copied().collect();
    let (n0, n1) = (dims[d], dims[d + 1]);
    let trivial = n0 == 1 || n1 == 1;
    if !trivial {
        // fold constant products once the arguments are bound
        let ids: Vec<IndexExpr> = (0..dims.len()).map(IndexExpr::idx).collect();
        let ok = expressions(k).into_iter().all(|e| {
            if !e.mentions(d) && !e.mentions(d + 1) {
                return true;
            }
            let b = e.bind_args(&l.args).substitute(&ids);
            match (b.linear_coefficient(d), b.linear_coefficient(d + 1)) {
                (Some(c0), Some(c1)) => c1.checked_mul(n1 as i64) == Some(c0),
                _ => false,
            }
        });
        if !ok {
            return None;
        }
    }
    // i_d -> 0 and i_{d+1} -> j (or i_d -> j when the next dim has size 1), later
    // indices one down
    let map: Vec<IndexExpr> = (0..dims.len())
        .map(|i| match i {
            _ if i == d => {
                if n1 == 1 {
                    IndexExpr::idx(d)
                } else {
                    IndexExpr::c(0)
                }
            }
            _ if i == d + 1 => {
                if n1 == 1 {
                    IndexExpr::c(0)
                } else {
                    IndexExpr::idx(d)
                }
            }
            _ if i > d + 1 => IndexExpr::idx(i - 1),
            _ => IndexExpr::idx(i),
        })
        .collect();
    let rewrite = |vals: &[Value]| -> Vec<Value> {
        vals.iter()
            .map(|v| {
                let inst = match &v.inst {
                    Inst::Load { input, offset, guard, fill } => Inst::Load {
                        input: *input,
                        offset: offset.substitute(&map),
                        guard: guard.as_ref().map(|g| g.substitute(&map)),
                        fill: *fill,
                    },
                    Inst::Gather { input, offset, at, guard } => {
                        let mut at = at.clone();
                        at.stride = at.stride.substitute(&map);
                        at.extent = at.extent.substitute(&map);
                        Inst::Gather {
                            input: *input,
                            offset: offset.substitute(&map),
                            at,
                            guard: guard.as_ref().map(|g| g.substitute(&map)),
                        }
                    }
                    Inst::Index(e) => Inst::Index(e.substitute(&map)),
                    Inst::Random { seed_arg, dist, counter } => {
                        Inst::Random { seed_arg: *seed_arg, dist: *dist, counter: counter.substitute(&map) }
                    }
                    other => other.clone(),
                };
                Value { inst, dtype: v.dtype }
            })
            .collect()
    };
    let mut k2 = k.clone();
    k2.inner = rewrite(&k.inner);
    k2.body = rewrite(&k.body);
    let mut l2 = l.clone();
    if red {
        let r = d - k.out_rank;
        l2.red_shape[r] = n0 * n1;
        l2.red_shape.remove(r + 1);
        k2.red_rank -= 1;
    } else {
        l2.out_shape[d] = n0 * n1;
        l2.out_shape.remove(d + 1);
        k2.out_rank -= 1;
    }
    Some((k2, l2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::HostBuffer;
    use crate::dtype::DType;
    use crate::ir::{Output, Reduction, Store};
    use crate::meta::{BinaryOp, ReduceOp};
    use IndexExpr as E;

    fn load(input: usize, offset: E) -> Value {
        Value { inst: Inst::Load { input, offset, guard: None, fill: 0.0 }, dtype: DType::F32 }
    }

    /// `in0[n, c, h, w] * in1[n, c]` over [n, c, h, w], strides as arguments.
    fn scale_by_channel() -> Kernel {
        let x = E::idx(0) * E::Arg(0) + E::idx(1) * E::Arg(1) + E::idx(2) * E::Arg(2) + E::idx(3);
        Kernel {
            inputs: vec![DType::F32, DType::F32],
            out_rank: 4,
            body: vec![
                load(0, x),
                load(1, E::idx(0) * E::Arg(3) + E::idx(1)),
                Value { inst: Inst::Binary(BinaryOp::Mul, 0, 1), dtype: DType::F32 },
            ],
            outputs: vec![Output { dtype: DType::F32, value: 2, store: Store::Dense }],
            n_args: 4,
            ..Kernel::default()
        }
    }

    fn launch(out: &[usize], red: &[usize], args: Vec<i64>) -> Launch {
        Launch {
            out_shape: out.to_vec(),
            red_shape: red.to_vec(),
            args,
            params: vec![],
            output_lens: vec![out.iter().product()],
        }
    }

    fn values(n: usize, seed: usize) -> HostBuffer {
        HostBuffer::from_f64s(DType::F32, (0..n).map(|i| ((i * 7919 + seed * 31) % 1013) as f64 / 97.0 - 5.0))
    }

    #[test]
    fn contiguous_spatial_dims_and_channels_merge() {
        let (n, c, h, w) = (3, 5, 7, 9);
        let l = launch(&[n, c, h, w], &[], vec![(c * h * w) as i64, (h * w) as i64, w as i64, c as i64]);
        let k = scale_by_channel();
        let (k2, l2) = collapse_dims(&k, &l).expect("merges");
        // h and w merge; c and h do not (the channel scale is broadcast over h); n
        // and c do (both inputs row-major over them)
        assert_eq!(l2.out_shape, vec![n * c, h * w]);
        assert_eq!(k2.out_rank, 2);
        let x = values(n * c * h * w, 1);
        let s = values(n * c, 2);
        let want = crate::exec::run(&k, &l, &[&x, &s]).expect("original");
        let got = crate::exec::run(&k2, &l2, &[&x, &s]).expect("collapsed");
        assert_eq!(got[0].to_f64_vec(), want[0].to_f64_vec());
        let cpu = crate::cpu::run(&k2, &l2, &[&x, &s]).expect("cpu");
        assert_eq!(cpu[0].to_f64_vec(), want[0].to_f64_vec());
    }

    #[test]
    fn strided_or_padded_reads_do_not_merge() {
        let (n, c, h, w) = (2, 3, 4, 6);
        // rows of the input 8 apart instead of 6 (a narrowed view): h and w stay apart
        let l = launch(&[n, c, h, w], &[], vec![(c * h * 8) as i64, (h * 8) as i64, 8, c as i64]);
        let (_, l2) = collapse_dims(&scale_by_channel(), &l).expect("n and c still merge");
        assert_eq!(l2.out_shape, vec![n * c, h, w]);
        // a guard on w (padding): nothing merges with w
        let mut k = scale_by_channel();
        if let Inst::Load { guard, .. } = &mut k.body[0].inst {
            *guard = Some(E::idx(3).lt(5));
        }
        let l = launch(&[n, c, h, w], &[], vec![(c * h * w) as i64, (h * w) as i64, w as i64, c as i64]);
        let (_, l2) = collapse_dims(&k, &l).expect("n and c merge");
        assert_eq!(l2.out_shape, vec![n * c, h, w]);
    }

    #[test]
    fn reduction_dims_and_unit_dims_merge() {
        // per-(n, c) sums over [h, w], the output [n, c, 1, 1]
        let (n, c, h, w) = (2, 3, 5, 4);
        let k = Kernel {
            inputs: vec![DType::F32],
            out_rank: 4,
            red_rank: 2,
            inner: vec![load(0, E::idx(0) * E::Arg(0) + E::idx(1) * E::Arg(1) + E::idx(4) * E::Arg(2) + E::idx(5))],
            reductions: vec![Reduction { op: ReduceOp::Sum, value: 0, dtype: DType::F32 }],
            body: vec![Value { inst: Inst::Acc(0), dtype: DType::F32 }],
            outputs: vec![Output { dtype: DType::F32, value: 0, store: Store::Dense }],
            n_args: 3,
            ..Kernel::default()
        };
        let l = launch(&[n, c, 1, 1], &[h, w], vec![(c * h * w) as i64, (h * w) as i64, w as i64]);
        let (k2, l2) = collapse_dims(&k, &l).expect("merges");
        assert_eq!((l2.out_shape.clone(), l2.red_shape.clone()), (vec![n * c], vec![h * w]));
        assert_eq!((k2.out_rank, k2.red_rank), (1, 1));
        let x = values(n * c * h * w, 3);
        let want = crate::exec::run(&k, &l, &[&x]).expect("original");
        let got = crate::exec::run(&k2, &l2, &[&x]).expect("collapsed");
        assert_eq!(got[0].to_f64_vec(), want[0].to_f64_vec());
    }
}
