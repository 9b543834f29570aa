//! A portable executor of the kernel IR: evaluates one kernel value by value, in the
//! compute dtype of each value (f16 / bf16 in f32, one rounding per value), splitting
//! dense kernels across threads. It is the CPU backend's fallback and the yardstick
//! the compiled backends are checked against.

use crate::buffer::HostBuffer;
use crate::dtype::DType;
use crate::error::KernelError;
use crate::ir::{compute_dtype, Inst, Kernel, Launch, Store, Value};
use crate::meta::{Distribution, ReduceOp};
use crate::random;
use rayon::prelude::*;

#[derive(Clone, Copy, Debug)]
enum S {
    F(f64),
    I(i64),
}

impl S {
    fn f(self) -> f64 {
        match self {
            S::F(v) => v,
            S::I(v) => v as f64,
        }
    }
    fn i(self) -> i64 {
        match self {
            S::F(v) => v as i64,
            S::I(v) => v,
        }
    }
}

fn store(d: DType, v: f64) -> S {
    if d.is_float() {
        S::F(compute_dtype(d).round_f64(v))
    } else {
        S::I(d.round_f64(v) as i64)
    }
}

fn store_i(d: DType, v: i64) -> S {
    if d.is_float() {
        S::F(compute_dtype(d).round_f64(v as f64))
    } else {
        S::I(d.wrap_i64(v))
    }
}

fn read(buf: &HostBuffer, k: usize) -> S {
    if buf.dtype().is_float() {
        S::F(buf.get_f64(k))
    } else {
        S::I(buf.get_i64(k))
    }
}

struct Ctx<'a> {
    k: &'a Kernel,
    args: &'a [i64],
    params: &'a [f64],
    inputs: &'a [&'a HostBuffer],
}

impl Ctx<'_> {
    /// Element `off` of input `input`, or an error naming `op` when it lies outside.
    fn read_at(&self, op: &str, input: usize, off: i64) -> Result<S, KernelError> {
        let buf = self.inputs[input];
        if off < 0 || off as usize >= buf.len() {
            return Err(KernelError::Internal {
                op: op.into(),
                reason: format!("offset {off} outside input {input} of {} elements", buf.len()),
            });
        }
        Ok(read(buf, off as usize))
    }

    fn eval(&self, vals: &[Value], idx: &[i64], accs: &[S], out: &mut Vec<S>) -> Result<(), KernelError> {
        out.clear();
        for v in vals {
            let d = v.dtype;
            let s = match &v.inst {
                Inst::Load { input, offset, guard, fill } => {
                    let ok = guard.as_ref().is_none_or(|g| g.eval_args(idx, self.args) != 0);
                    if ok {
                        self.read_at("load", *input, offset.eval_args(idx, self.args))?
                    } else {
                        store(d, *fill)
                    }
                }
                Inst::Gather { input, offset, at, guard } => {
                    let ok = guard.as_ref().is_none_or(|g| g.eval_args(idx, self.args) != 0);
                    let v = out[at.value].i();
                    if ok && v >= 0 && v < at.extent.eval_args(idx, self.args) {
                        let off = offset.eval_args(idx, self.args) + v * at.stride.eval_args(idx, self.args);
                        self.read_at("gather", *input, off)?
                    } else {
                        store(d, 0.0)
                    }
                }
                Inst::Const(c) => leaf(d, *c),
                Inst::Param(k) => leaf(d, self.params.get(*k).copied().unwrap_or(0.0)),
                Inst::Index(e) => {
                    let i = e.eval_args(idx, self.args);
                    if d.is_float() {
                        leaf(d, i as f64)
                    } else {
                        S::I(d.wrap_i64(i))
                    }
                }
                Inst::Random { seed_arg, dist, counter } => {
                    let seed = self.args[*seed_arg] as u64;
                    let c = counter.eval_args(idx, self.args) as u64;
                    let x = match *dist {
                        Distribution::Uniform { low, high } => low + (high - low) * random::uniform(seed, c),
                        Distribution::Normal { mean, std } => mean + std * random::normal(seed, c),
                    };
                    leaf(d, x)
                }
                Inst::Unary(op, a) => match out[*a] {
                    S::F(x) => store(d, op.eval_f64(x)),
                    S::I(x) => store_i(d, op.eval_i64(x)),
                },
                Inst::Binary(op, a, b) => match (out[*a], out[*b]) {
                    (S::F(x), y) => store(d, op.eval_f64(x, y.f())),
                    (x, S::F(y)) => store(d, op.eval_f64(x.f(), y)),
                    (S::I(x), S::I(y)) => store_i(d, op.eval_i64(x, y)),
                },
                Inst::Where(c, a, b) => {
                    let pick = if out[*c].i() != 0 { out[*a] } else { out[*b] };
                    match pick {
                        S::F(x) => store(d, x),
                        S::I(x) => store_i(d, x),
                    }
                }
                // A cast rounds to the target dtype itself, also to f16 / bf16 (whose
                // other values are carried in f32 between operations).
                Inst::Cast(a) => match out[*a] {
                    S::F(x) if d.is_float() => S::F(d.round_f64(x)),
                    S::F(x) => store(d, x),
                    S::I(x) if d.is_float() => S::F(d.round_f64(x as f64)),
                    S::I(x) => store_i(d, x),
                },
                Inst::Acc(r) => accs[*r],
            };
            out.push(s);
        }
        Ok(())
    }

    /// Values of every output at one output position, and every body value.
    fn position(&self, out_idx: &[i64], red_shape: &[usize]) -> Result<(Vec<S>, Vec<S>), KernelError> {
        let k = self.k;
        let mut accs: Vec<S> = k.reductions.iter().map(|r| identity(r.op, r.dtype)).collect();
        let mut scratch = Vec::with_capacity(k.inner.len().max(k.body.len()));
        if k.red_rank > 0 {
            let n: usize = red_shape.iter().product();
            let mut idx: Vec<i64> = out_idx.to_vec();
            idx.extend(std::iter::repeat_n(0, red_shape.len()));
            for _ in 0..n {
                self.eval(&k.inner, &idx, &[], &mut scratch)?;
                for (acc, r) in accs.iter_mut().zip(&k.reductions) {
                    let comb = r.op.combiner();
                    *acc = match (*acc, scratch[r.value]) {
                        (S::I(a), S::I(b)) => S::I(comb.eval_i64(a, b)),
                        (a, b) => store(r.dtype, comb.eval_f64(a.f(), b.f())),
                    };
                }
                for d in (0..red_shape.len()).rev() {
                    let j = out_idx.len() + d;
                    idx[j] += 1;
                    if (idx[j] as usize) < red_shape[d] {
                        break;
                    }
                    idx[j] = 0;
                }
            }
        }
        self.eval(&k.body, out_idx, &accs, &mut scratch)?;
        Ok((k.outputs.iter().map(|o| scratch[o.value]).collect(), scratch))
    }
}

fn unflatten(mut p: usize, shape: &[usize], idx: &mut [i64]) {
    for d in (0..shape.len()).rev() {
        let n = shape[d].max(1);
        idx[d] = (p % n) as i64;
        p /= n;
    }
}

fn to_buffer(d: DType, vals: &[S]) -> HostBuffer {
    if d.is_float() {
        HostBuffer::from_f64s(d, vals.iter().map(|s| s.f()))
    } else {
        HostBuffer::from_i64s(d, vals.iter().map(|s| s.i()))
    }
}

/// Runs `kernel` with `launch` on host inputs.
pub fn run(kernel: &Kernel, launch: &Launch, inputs: &[&HostBuffer]) -> Result<Vec<HostBuffer>, KernelError> {
    launch.check(kernel, inputs)?;
    for (o, &len) in kernel.outputs.iter().zip(&launch.output_lens) {
        // fail with an out-of-memory error, not an abort, when an output cannot exist
        drop(HostBuffer::try_zeros(o.dtype, len)?);
    }
    let ctx = Ctx { k: kernel, args: &launch.args, params: &launch.params, inputs };
    let n: usize = launch.out_shape.iter().product();
    let shape = &launch.out_shape;
    if kernel.has_scatter() {
        let mut outs: Vec<Vec<S>> = kernel
            .outputs
            .iter()
            .zip(&launch.output_lens)
            .map(|(o, &len)| {
                let init = match &o.store {
                    Store::Scatter { op, .. } => identity(*op, o.dtype),
                    Store::Dense => S::F(0.0),
                };
                vec![init; len]
            })
            .collect();
        let mut idx = vec![0i64; shape.len()];
        for p in 0..n {
            unflatten(p, shape, &mut idx);
            let (vals, body) = ctx.position(&idx, &launch.red_shape)?;
            for ((o, v), buf) in kernel.outputs.iter().zip(vals).zip(outs.iter_mut()) {
                match &o.store {
                    Store::Dense => buf[p] = v,
                    Store::Scatter { op, offset, guard, at, .. } => {
                        let mut t = offset.eval_args(&idx, &launch.args);
                        let mut hit = guard.eval_args(&idx, &launch.args) != 0;
                        if let Some(at) = at {
                            let j = body[at.value].i();
                            hit &= j >= 0 && j < at.extent.eval_args(&idx, &launch.args);
                            t += j.wrapping_mul(at.stride.eval_args(&idx, &launch.args));
                        }
                        if hit {
                            let t = t as usize;
                            let comb = op.combiner();
                            buf[t] = match (buf[t], v) {
                                (S::I(a), S::I(b)) => store_i(o.dtype, comb.eval_i64(a, b)),
                                (a, b) => store(o.dtype, comb.eval_f64(a.f(), b.f())),
                            };
                        }
                    }
                }
            }
        }
        return Ok(kernel.outputs.iter().zip(&outs).map(|(o, v)| to_buffer(o.dtype, v)).collect());
    }
    const CHUNK: usize = 1024;
    let chunks: Vec<Result<Vec<Vec<S>>, KernelError>> = (0..n.div_ceil(CHUNK))
        .into_par_iter()
        .map(|c| {
            let mut idx = vec![0i64; shape.len()];
            (c * CHUNK..((c + 1) * CHUNK).min(n))
                .map(|p| {
                    unflatten(p, shape, &mut idx);
                    ctx.position(&idx, &launch.red_shape).map(|(outs, _)| outs)
                })
                .collect()
        })
        .collect();
    let mut cols: Vec<Vec<S>> = kernel.outputs.iter().map(|_| Vec::with_capacity(n)).collect();
    for chunk in chunks {
        for row in chunk? {
            for (col, v) in cols.iter_mut().zip(row) {
                col.push(v);
            }
        }
    }
    Ok(kernel.outputs.iter().zip(&cols).map(|(o, v)| to_buffer(o.dtype, v)).collect())
}

fn identity(op: ReduceOp, d: DType) -> S {
    if d.is_float() {
        S::F(op.identity_f64())
    } else {
        S::I(op.identity_for(d))
    }
}

/// A leaf value (constant, index, random number) rounded to its own dtype, as the
/// reference backend stores it.
fn leaf(d: DType, v: f64) -> S {
    if d.is_float() {
        S::F(d.round_f64(v))
    } else {
        S::I(d.round_f64(v) as i64)
    }
}
