//! A generator of random meta-op graphs for differential testing: element-wise
//! chains, broadcasts, reindex compositions (permute, strided slice, pad, flip),
//! reductions, scatters, gathers and scatters through host-data indices, reshapes,
//! shared sub-expressions and several outputs.
//!
//! A graph is a pure function of its seed, so it can be rebuilt under each backend
//! setting and a failure reproduced from the printed seed.
//!
//! Discontinuous ops (the condition of `where`, `floor`) only read host-data inputs,
//! which are exact on every backend: on computed values a one-ulp difference between
//! two correct summation orders could flip them (two means of the same numbers that
//! tie in exact arithmetic, say) and make the comparison meaningless.

use crate::{Nd, Rng};
use jit_core::{IndexExpr as E, ReduceOp};
use jit_ops::prelude::*;

/// A generated graph: the values to realise and a log of how they were built.
pub struct Graph {
    /// The values to compare.
    pub outputs: Vec<Var>,
    /// One line per op, for failure reports.
    pub log: Vec<String>,
    /// The host-data inputs (marked `requires_grad` when built for gradients).
    pub inputs: Vec<Var>,
}

fn pick<'a>(rng: &mut Rng, nodes: &'a [Var]) -> &'a Var {
    &nodes[rng.below(nodes.len())]
}

/// Keeps values in a well-conditioned range so that fused and unfused rounding
/// differences stay small relative to the values.
fn squash(x: &Var) -> Var {
    x.tanh()
}

/// Builds the graph for `seed`.
pub fn random_graph(seed: u64) -> Result<Graph> {
    random_graph_with(seed, false)
}

/// Builds the graph for `seed`; with `requires_grad` its host-data inputs are
/// parameters that gradients can be taken with respect to.
pub fn random_graph_with(seed: u64, requires_grad: bool) -> Result<Graph> {
    let mut rng = Rng::new(seed);
    let mut log = Vec::new();
    let base: Vec<usize> = (0..1 + rng.below(3)).map(|_| rng.dim_size(false)).collect();
    let mut nodes: Vec<Var> = Vec::new();
    let mut exact: Vec<Var> = Vec::new();
    for k in 0..1 + rng.below(3) {
        // inputs of the base shape or a broadcastable variant
        let mut shape = base.clone();
        for d in shape.iter_mut() {
            if rng.chance(0.25) {
                *d = 1;
            }
        }
        let x = if k > 0 && rng.chance(0.2) {
            let key = rng.next_u64();
            log.push(format!("x{k} = random normal {shape:?} key {key}"));
            Var::random(&shape, jit_core::Distribution::Normal { mean: 0.0, std: 1.0 }, DType::F32, key)?
        } else {
            log.push(format!("x{k} = input {shape:?}"));
            let x = rng.nd(&shape, -2.0, 2.0).var(DType::F32).requires_grad_(requires_grad)?;
            exact.push(x.clone());
            x
        };
        nodes.push(x);
    }
    let steps = 3 + rng.below(10);
    for _ in 0..steps {
        let a = pick(&mut rng, &nodes).clone();
        let kind = rng.below(17);
        let y = match kind {
            0 => {
                let u = ["exp_tanh", "sin", "cos", "abs", "neg", "sigmoid", "sqrt_abs", "log1p_abs", "erf", "floor"]
                    [rng.below(10)];
                log.push(format!("{u} of {:?}", a.shape()));
                match u {
                    "exp_tanh" => squash(&a).exp(),
                    "sin" => a.sin(),
                    "cos" => a.cos(),
                    "abs" => a.abs(),
                    "neg" => -&a,
                    "sigmoid" => a.sigmoid(),
                    "sqrt_abs" => (a.abs() + 0.01).sqrt(),
                    "log1p_abs" => (a.abs() + 1.0).log(),
                    "erf" => a.erf(),
                    _ => pick(&mut rng, &exact).floor(),
                }
            }
            1..=3 => {
                let b = pick(&mut rng, &nodes).clone();
                if jit_core::broadcast_shapes("t", a.shape(), b.shape()).is_err() {
                    continue;
                }
                let op = ["add", "sub", "mul", "div", "max", "min", "pow"][rng.below(7)];
                log.push(format!("{op} {:?} {:?}", a.shape(), b.shape()));
                match op {
                    "add" => &a + &b,
                    "sub" => &a - &b,
                    "mul" => squash(&(&a * &b)),
                    "div" => &a / (b.abs() + 1.0),
                    "max" => a.maximum(&b)?,
                    "min" => a.minimum(&b)?,
                    _ => (a.abs() + 0.5).pow(squash(&b))?,
                }
            }
            4 => {
                let cond = pick(&mut rng, &exact).clone();
                let b = pick(&mut rng, &nodes).clone();
                if jit_core::broadcast_shapes("t", cond.shape(), a.shape())
                    .and_then(|s| jit_core::broadcast_shapes("t", &s, b.shape()))
                    .is_err()
                {
                    continue;
                }
                let t = rng.uniform(-1.0, 1.0);
                log.push(format!("where(input {:?} > {t:.3}, {:?}, {:?})", cond.shape(), a.shape(), b.shape()));
                Var::where_(&cond.gt(t)?, &a, &b)?
            }
            5 | 6 => {
                if a.ndim() == 0 {
                    continue;
                }
                let dims: Vec<isize> = (0..a.ndim() as isize).filter(|_| rng.chance(0.5)).collect();
                let dims = if dims.is_empty() { vec![rng.below(a.ndim()) as isize] } else { dims };
                let keep = rng.chance(0.6);
                let r = ["sum", "mean", "max", "min"][rng.below(4)];
                if (r == "max" || r == "min") && a.numel() == 0 {
                    continue;
                }
                log.push(format!("{r} {:?} dims {dims:?} keep {keep}", a.shape()));
                let y = match r {
                    "sum" => a.sum(&dims, keep)?,
                    "mean" => a.mean(&dims, keep)?,
                    "max" => a.max(&dims, keep)?,
                    _ => a.min(&dims, keep)?,
                };
                squash(&y)
            }
            7 => {
                if a.ndim() < 2 {
                    continue;
                }
                let (d0, d1) = (rng.below(a.ndim()) as isize, rng.below(a.ndim()) as isize);
                log.push(format!("transpose {:?} {d0} {d1}", a.shape()));
                a.transpose(d0, d1)?
            }
            8 => {
                if a.ndim() == 0 {
                    continue;
                }
                let d = rng.below(a.ndim());
                let n = a.shape()[d] as i64;
                let start = rng.int(0, n.max(1) - 1) as isize;
                let step = 1 + rng.below(3);
                log.push(format!("slice {:?} dim {d} {start}::{step}", a.shape()));
                a.slice(d as isize, start, None, step)?
            }
            9 => {
                if a.ndim() == 0 {
                    continue;
                }
                let n = *a.shape().last().unwrap_or(&1);
                let mode = match rng.below(3) {
                    0 => PadMode::Constant(0.25),
                    1 if n > 2 => PadMode::Reflect,
                    _ => PadMode::Replicate,
                };
                let (lo, hi) = (rng.below(n.min(3)), rng.below(n.min(3)));
                log.push(format!("pad {:?} ({lo},{hi}) {mode:?}", a.shape()));
                a.pad(&[lo, hi], mode)?
            }
            10 => {
                if a.ndim() == 0 {
                    continue;
                }
                let d = rng.below(a.ndim()) as isize;
                log.push(format!("flip {:?} {d}", a.shape()));
                a.flip(&[d])?
            }
            11 => {
                log.push(format!("reshape/flatten {:?}", a.shape()));
                let f = a.flatten(0, -1)?;
                if f.numel() > 1 && f.numel() % 2 == 0 && rng.chance(0.5) {
                    f.reshape(&[2, -1])?
                } else {
                    f
                }
            }
            12 => {
                // broadcast to a larger shape with a new leading dim
                let mut s = vec![1 + rng.below(3)];
                s.extend_from_slice(a.shape());
                log.push(format!("expand {:?} -> {s:?}", a.shape()));
                let s: Vec<isize> = s.iter().map(|&d| d as isize).collect();
                a.expand(&s)?
            }
            13 => {
                if a.ndim() == 0 || a.numel() == 0 {
                    continue;
                }
                // scatter-add along the last dim into buckets i % m
                let n = *a.shape().last().unwrap_or(&1);
                let m = 1 + rng.below(n);
                let r = a.ndim();
                let mut shape = a.shape().to_vec();
                shape[r - 1] = m;
                let exprs: Vec<E> =
                    (0..r).map(|d| if d == r - 1 { E::idx(d).modulo(m as i64) } else { E::idx(d) }).collect();
                log.push(format!("scatter-add {:?} into {shape:?}", a.shape()));
                squash(&a.reindex_reduce(ReduceOp::Sum, &shape, exprs, vec![])?)
            }
            15 => {
                if a.ndim() == 0 || a.numel() == 0 {
                    continue;
                }
                // gather along a dim with random (valid) indices from host data
                let d = rng.below(a.ndim());
                let n = a.shape()[d];
                let mut shape = a.shape().to_vec();
                shape[d] = 1 + rng.below(2 * n);
                let index: Vec<i64> = (0..shape.iter().product()).map(|_| rng.int(0, n as i64 - 1)).collect();
                log.push(format!("gather {:?} dim {d} index {shape:?}", a.shape()));
                a.gather(d as isize, &Var::from_vec(index, &shape)?)?
            }
            16 => {
                if a.ndim() == 0 || a.numel() == 0 {
                    continue;
                }
                // scatter-add along a dim into m buckets chosen by host data
                let d = rng.below(a.ndim());
                let m = 1 + rng.below(a.shape()[d] + 1);
                let mut shape = a.shape().to_vec();
                shape[d] = m;
                let index: Vec<i64> = (0..a.numel()).map(|_| rng.int(0, m as i64 - 1)).collect();
                log.push(format!("scatter_add {:?} dim {d} into {shape:?}", a.shape()));
                let into = Var::zeros(&shape, DType::F32);
                squash(&into.scatter_add(d as isize, &Var::from_vec(index, a.shape())?, &a)?)
            }
            _ => {
                // softmax-like: shared sub-expression with a reduction and a broadcast
                if a.ndim() == 0 || a.numel() == 0 {
                    continue;
                }
                let d = rng.below(a.ndim()) as isize;
                log.push(format!("softmax {:?} dim {d}", a.shape()));
                a.softmax(d)?
            }
        };
        nodes.push(y);
    }
    // several outputs: the last node and up to two others
    let mut outputs = vec![nodes[nodes.len() - 1].clone()];
    for _ in 0..rng.below(3) {
        let v = pick(&mut rng, &nodes).clone();
        if !outputs.iter().any(|o| o.same_node(&v)) {
            outputs.push(v);
        }
    }
    Ok(Graph { outputs, log, inputs: exact })
}

/// Realises a graph built for `seed` under `flags` and returns its outputs' values.
pub fn evaluate(seed: u64, flags: jit_core::Flags) -> Result<Vec<(Vec<usize>, Vec<f64>)>> {
    jit_core::with_flags(flags, || {
        let g = random_graph(seed)?;
        realize(&g.outputs)?;
        g.outputs.iter().map(|o| Ok((o.shape().to_vec(), o.to_vec_f64()?))).collect()
    })
}

/// Builds the graph for `seed` with its inputs as parameters, puts a scalar loss on
/// top (each output summed with fixed random weights) and returns the lazy gradient
/// of every input (empty when no output depends on an input).
pub fn grad_graph(seed: u64) -> Result<Vec<Var>> {
    let g = random_graph_with(seed, true)?;
    let mut rng = Rng::new(seed ^ 0x6A09_E667_F3BC_C908);
    let mut loss: Option<Var> = None;
    for o in g.outputs.iter().filter(|o| o.requires_grad()) {
        let w = rng.nd(o.shape(), -1.0, 1.0).var(DType::F32);
        let term = o.try_mul(&w)?.sum_all()?;
        loss = Some(match loss {
            Some(l) => l.try_add(&term)?,
            None => term,
        });
    }
    let Some(loss) = loss else { return Ok(vec![]) };
    jit_core::grad(&loss, &g.inputs)
}

/// The gradients of [`grad_graph`], realised under `flags`.
pub fn evaluate_grads(seed: u64, flags: jit_core::Flags) -> Result<Vec<(Vec<usize>, Vec<f64>)>> {
    jit_core::with_flags(flags, || {
        let grads = grad_graph(seed)?;
        realize(&grads)?;
        grads.iter().map(|v| Ok((v.shape().to_vec(), v.to_vec_f64()?))).collect()
    })
}

/// An input array for tests that want one.
pub fn input(rng: &mut Rng, shape: &[usize]) -> Nd {
    rng.nd(shape, -2.0, 2.0)
}

/// Graphs touching every dtype: loads, stores, casts, comparisons, reductions,
/// scatters and random numbers.
pub fn dtype_graphs() -> Vec<Var> {
    let mut out = vec![];
    for dt in DType::ALL {
        let x = Var::ones(&[3, 5], DType::F32).cast(dt);
        x.sync().expect("leaf");
        let f = x.cast(DType::F32);
        let y = ((&f * 2.0).exp() + 1.0).cast(dt);
        out.push(y.clone());
        out.push(x.eq(&y).unwrap());
        out.push(Var::where_(&x.gt(&y).unwrap(), &x, &y).unwrap());
        if dt != DType::Bool {
            out.push(x.sum(&[1], false).unwrap());
            out.push(x.max(&[0], true).unwrap());
            out.push(cat(&[x.clone(), y.clone()], 0).unwrap());
            out.push(&x * &y);
        }
        out.push(x.pad(&[1, 1], PadMode::Reflect).unwrap());
        if dt.is_float() {
            out.push(Var::randn(&[4, 3], dt).unwrap());
            out.push(x.softmax(-1).unwrap());
            out.push(x.pow(&y).unwrap().remainder(1.5).unwrap());
        } else {
            out.push(x.floor_divide(&y).unwrap());
            out.push(Var::arange(6).cast(dt).reshape(&[2, 3]).unwrap());
        }
    }
    out
}
