//! The fusion planner: cuts the pending graph behind the requested values into
//! kernels of the IR in `kernels::ir`.
//!
//! Rules (DESIGN.md, "From graph to kernels"):
//! - element-wise, broadcast, reindex and reshape producers are inlined into their
//!   consumer, as index arithmetic and guarded loads;
//! - element-wise producers fuse into a reduction (they run in its inner loop), and
//!   element-wise consumers of a reduction over the same domain run after it in the
//!   same kernel (an epilogue: `sum(x) * (1/n)` is one kernel);
//! - sibling reductions over one domain share a kernel (merged after planning when
//!   neither needs the other), and a kernel that repeats an earlier one (same IR,
//!   sizes and inputs) is replaced by aliases of its outputs;
//! - adjacent loop dims that every index expression of a kernel reads row-major
//!   merge into one (`[8, 512, 32, 32]` runs as `[4096, 1024]`);
//! - a value is materialised when it is requested, is a scatter (`reindex_reduce`,
//!   `scatter`), feeds an extern op, is the data a `gather` reads (its index fuses),
//!   is a reduction that cannot run inside its consumer (read through a broadcast or
//!   over another domain), or has several consumers and costs more than
//!   [`RECOMPUTE_LIMIT`] to recompute (on the host backends also when its
//!   computation includes a transcendental function and both a reduction and an
//!   element-wise op read it);
//! - with fusion off every meta-op but `reshape` is its own kernel.

use crate::error::{Error, Result};
use crate::var::{State, Var};
use kernels::expr::IndexExpr as E;
use kernels::ir::{Indirect, Inst, Kernel, Launch, Output, Reduction, Store, Value, ValueId};
use kernels::{DType, MetaOp};
// Fx hashing: the planner hashes index-expression trees for every value it emits,
// and SipHash was a sixth of its time.
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

/// A shared producer costing more than this (in rough instruction units) is stored
/// rather than recomputed by each consumer.
pub const RECOMPUTE_LIMIT: usize = 24;

/// A value whose inlined computation would cost more than this is stored even with
/// one consumer: kernels stay a size that compiles quickly, and the planner's
/// recursion (one level per inlined op, every op costing at least 1) stays shallow on
/// very long chains: 256 leaves a 2x margin on a 2 MiB thread stack in a debug build.
pub const KERNEL_COST_LIMIT: usize = 256;

/// One step of a plan.
pub(crate) enum Step {
    /// Run a kernel.
    Kernel {
        /// The IR.
        kernel: Box<Kernel>,
        /// Sizes and arguments.
        launch: Launch,
        /// Values read, in the kernel's input order.
        inputs: Vec<Var>,
        /// Values written, in the kernel's output order.
        outputs: Vec<Var>,
    },
    /// A library call on materialised inputs.
    Extern {
        /// The call.
        op: kernels::ExternOp,
        /// Its inputs (materialised, contiguous).
        inputs: Vec<Var>,
        /// The value it computes.
        out: Var,
    },
    /// `out` is a reshape of the materialised `src`, or the same value as `src`
    /// computed again (see `dedupe_kernels`): same data.
    Alias {
        /// The reshaped value.
        out: Var,
        /// Its source.
        src: Var,
    },
}

fn op_and_inputs(v: &Var) -> Option<(MetaOp, Vec<Var>)> {
    match &*v.state() {
        State::Pending { op, inputs } => Some((op.clone(), inputs.clone())),
        State::Ready { .. } => None,
    }
}

fn strides(shape: &[usize]) -> Vec<i64> {
    let mut s = vec![1i64; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1] as i64;
    }
    s
}

/// Row-major flat offset of a multi-index.
fn flat(idx: &[E], shape: &[usize]) -> E {
    idx.iter().zip(strides(shape)).fold(E::c(0), |acc, (e, s)| acc + e.clone() * s)
}

/// The input index of a reshape from `in_shape` to `out_shape` at output index
/// `idx`. Dims are matched in runs of equal element count: a dim kept as it is
/// passes its index through, merged dims combine without division, and only a dim
/// split into several divides.
fn reshape_index(idx: &[E], out_shape: &[usize], in_shape: &[usize]) -> Vec<E> {
    if out_shape.contains(&0) || in_shape.contains(&0) {
        // nothing is ever read; any in-range form will do
        return vec![E::c(0); in_shape.len()];
    }
    let mut sub = vec![E::c(0); in_shape.len()];
    let (mut o, mut i) = (0, 0);
    while o < out_shape.len() || i < in_shape.len() {
        // size-1 dims carry no information
        if o < out_shape.len() && out_shape[o] == 1 {
            o += 1;
            continue;
        }
        if i < in_shape.len() && in_shape[i] == 1 {
            i += 1;
            continue;
        }
        if o >= out_shape.len() || i >= in_shape.len() {
            break;
        }
        // grow the smaller side until the element counts meet
        let (o0, i0) = (o, i);
        let (mut po, mut pi) = (out_shape[o], in_shape[i]);
        o += 1;
        i += 1;
        while po != pi {
            if po < pi {
                po *= out_shape[o];
                o += 1;
            } else {
                pi *= in_shape[i];
                i += 1;
            }
        }
        // flat index within the run, over the output dims o0..o
        let mut flat_run = E::c(0);
        for d in o0..o {
            flat_run = flat_run * out_shape[d] as i64 + idx[d].clone();
        }
        if i - i0 == 1 {
            sub[i0] = flat_run;
        } else {
            let mut stride = 1i64;
            for d in (i0..i).rev() {
                let q = flat_run.clone().floor_div(stride);
                sub[d] = if d == i0 { q } else { q.modulo(in_shape[d] as i64) };
                stride *= in_shape[d] as i64;
            }
        }
    }
    sub
}

/// A function the host computes as a polynomial after a range reduction (or, for
/// f64, a library call): `exp`, `log`, `sin`, `cos`, `tanh`, `sigmoid`, `erf`, `pow`.
fn transcendental(op: &MetaOp) -> bool {
    use kernels::UnaryOp as U;
    match op {
        MetaOp::Unary(u) => matches!(u, U::Exp | U::Log | U::Sin | U::Cos | U::Tanh | U::Sigmoid | U::Erf),
        MetaOp::Binary(b) => *b == kernels::BinaryOp::Pow,
        _ => false,
    }
}

fn weight(op: &MetaOp) -> usize {
    match op {
        MetaOp::Unary(u) if u.float_only() => 4,
        MetaOp::Binary(kernels::BinaryOp::Pow) => 4,
        MetaOp::Reindex { .. } | MetaOp::Gather { .. } => 2,
        _ => 1,
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Phase {
    Inner,
    Body,
}

/// Why a kernel could not be built as planned: these values must be materialised.
struct Force(Vec<Var>);

struct Builder<'a> {
    root: u64,
    materialised: &'a HashSet<u64>,
    out_shape: Vec<usize>,
    red_shape: Option<Vec<usize>>,
    kernel: Kernel,
    args: Vec<i64>,
    params: Vec<f64>,
    inputs: Vec<Var>,
    /// Values that can be reached twice with the same index (see [`reused`]); only
    /// these are looked up in `memo`.
    reused: &'a HashSet<u64>,
    memo: HashMap<(Phase, u64, Vec<E>, Option<E>), ValueId>,
}

impl<'a> Builder<'a> {
    fn new(root: &Var, out_shape: Vec<usize>, graph: &'a Graph) -> Self {
        Builder {
            root: root.id(),
            materialised: &graph.materialised,
            reused: &graph.reused,
            kernel: Kernel { out_rank: out_shape.len(), ..Kernel::default() },
            out_shape,
            red_shape: None,
            args: vec![],
            params: vec![],
            inputs: vec![],
            memo: HashMap::default(),
        }
    }

    fn ranges(&self, phase: Phase) -> Vec<(i64, i64)> {
        let mut r: Vec<(i64, i64)> = self.out_shape.iter().map(|&n| (0, n as i64 - 1)).collect();
        if phase == Phase::Inner {
            if let Some(rs) = &self.red_shape {
                r.extend(rs.iter().map(|&n| (0, n as i64 - 1)));
            }
        }
        r
    }

    fn lift(&mut self, e: &E) -> E {
        e.lift_constants(&mut self.args)
    }

    fn push(&mut self, phase: Phase, inst: Inst, dtype: DType) -> ValueId {
        let list = match phase {
            Phase::Inner => &mut self.kernel.inner,
            Phase::Body => &mut self.kernel.body,
        };
        list.push(Value { inst, dtype });
        list.len() - 1
    }

    fn input_slot(&mut self, v: &Var) -> usize {
        if let Some(k) = self.inputs.iter().position(|i| i.same_node(v)) {
            return k;
        }
        self.inputs.push(v.clone());
        self.kernel.inputs.push(v.dtype());
        self.inputs.len() - 1
    }

    fn is_stored(&self, v: &Var) -> bool {
        v.id() != self.root && (v.is_realized() || self.materialised.contains(&v.id()))
    }

    fn load(&mut self, v: &Var, offset: E, guard: &Option<E>, phase: Phase) -> ValueId {
        let input = self.input_slot(v);
        let offset = self.lift(&offset);
        let guard = guard.as_ref().map(|g| self.lift(g));
        self.push(phase, Inst::Load { input, offset, guard, fill: 0.0 }, v.dtype())
    }

    /// In-range checks of `exprs` against `shape`, dropping the provable ones;
    /// `None` when every check is provable.
    fn range_checks(&self, exprs: &[E], shape: &[usize], phase: Phase) -> Option<E> {
        let ranges = self.ranges(phase);
        let mut cond: Option<E> = None;
        for (e, &n) in exprs.iter().zip(shape) {
            if e.provably_within(&ranges, 0, n as i64 - 1) {
                continue;
            }
            let c = e.clone().ge(0) * e.clone().lt(n as i64);
            cond = Some(match cond {
                None => c,
                Some(p) => p * c,
            });
        }
        cond
    }

    fn emit(&mut self, v: &Var, idx: &[E], guard: &Option<E>, phase: Phase) -> std::result::Result<ValueId, Force> {
        if !self.reused.contains(&v.id()) {
            return self.emit_uncached(v, idx, guard, phase);
        }
        let key = (phase, v.id(), idx.to_vec(), guard.clone());
        if let Some(&id) = self.memo.get(&key) {
            return Ok(id);
        }
        let id = self.emit_uncached(v, idx, guard, phase)?;
        self.memo.insert(key, id);
        Ok(id)
    }

    fn emit_uncached(
        &mut self,
        v: &Var,
        idx: &[E],
        guard: &Option<E>,
        phase: Phase,
    ) -> std::result::Result<ValueId, Force> {
        if self.is_stored(v) {
            return Ok(self.load(v, flat(idx, v.shape()), guard, phase));
        }
        let Some((op, inputs)) = op_and_inputs(v) else {
            return Ok(self.load(v, flat(idx, v.shape()), guard, phase));
        };
        let dt = v.dtype();
        Ok(match op {
            // zero is part of the kernel's structure (`relu` is `max(x, 0)`: against
            // a constant the backend can drop NaN handling for that operand); other
            // values are launch parameters, so `x * 0.5` and `x * 0.25` share a kernel
            MetaOp::Full { value } if value == 0.0 && value.is_sign_positive() => {
                self.push(phase, Inst::Const(0.0), dt)
            }
            MetaOp::Full { value } => {
                self.params.push(value);
                let k = self.params.len() - 1;
                self.push(phase, Inst::Param(k), dt)
            }
            MetaOp::Index { dim } => {
                let e = self.lift(&idx[dim]);
                self.push(phase, Inst::Index(e), dt)
            }
            MetaOp::Random { seed, dist } => {
                self.args.push(seed as i64);
                let seed_arg = self.args.len() - 1;
                let counter = self.lift(&flat(idx, v.shape()));
                self.push(phase, Inst::Random { seed_arg, dist, counter }, dt)
            }
            MetaOp::Unary(u) => {
                let a = self.emit(&inputs[0], idx, guard, phase)?;
                self.push(phase, Inst::Unary(u, a), dt)
            }
            MetaOp::Binary(b) => {
                let x = self.emit(&inputs[0], idx, guard, phase)?;
                let y = self.emit(&inputs[1], idx, guard, phase)?;
                self.push(phase, Inst::Binary(b, x, y), dt)
            }
            MetaOp::Where => {
                let c = self.emit(&inputs[0], idx, guard, phase)?;
                let x = self.emit(&inputs[1], idx, guard, phase)?;
                let y = self.emit(&inputs[2], idx, guard, phase)?;
                self.push(phase, Inst::Where(c, x, y), dt)
            }
            MetaOp::Cast => {
                let a = self.emit(&inputs[0], idx, guard, phase)?;
                self.push(phase, Inst::Cast(a), dt)
            }
            MetaOp::BroadcastTo { new_dims } => {
                let x = &inputs[0];
                let mut sub = Vec::with_capacity(x.ndim());
                let mut k = 0;
                for (d, e) in idx.iter().enumerate() {
                    if new_dims.contains(&d) {
                        continue;
                    }
                    sub.push(if x.shape()[k] == 1 { E::c(0) } else { e.clone() });
                    k += 1;
                }
                self.emit(x, &sub, guard, phase)?
            }
            MetaOp::Reindex { exprs, overflow, conds } => {
                let x = &inputs[0];
                let sub: Vec<E> = exprs.iter().map(|e| e.substitute(idx)).collect();
                let mut check = self.range_checks(&sub, x.shape(), phase);
                for c in &conds {
                    let c = c.substitute(idx);
                    if c.as_const().is_some_and(|k| k != 0) {
                        continue;
                    }
                    check = Some(match check {
                        None => c.ne_(0),
                        Some(p) => p * c.ne_(0),
                    });
                }
                match check {
                    None => self.emit(x, &sub, guard, phase)?,
                    Some(c) => {
                        let inner_guard = Some(match guard {
                            None => c.clone(),
                            Some(g) => g.clone() * c.clone(),
                        });
                        let val = self.emit(x, &sub, &inner_guard, phase)?;
                        let ce = self.lift(&c);
                        let cv = self.push(phase, Inst::Index(ce), DType::Bool);
                        let fill = self.push(phase, Inst::Const(overflow), dt);
                        self.push(phase, Inst::Where(cv, val, fill), dt)
                    }
                }
            }
            MetaOp::Materialize => return self.emit(&inputs[0], idx, guard, phase),
            MetaOp::Reshape => {
                let x = &inputs[0];
                let f = flat(idx, v.shape());
                if self.is_stored(x) || x.is_realized() {
                    // same row-major layout: the flat offset is unchanged
                    self.load(x, f, guard, phase)
                } else {
                    let sub = reshape_index(idx, v.shape(), x.shape());
                    self.emit(x, &sub, guard, phase)?
                }
            }
            MetaOp::Reduce { op, axes, keepdims } => {
                let x = &inputs[0];
                let identity: Vec<E> = (0..self.out_shape.len()).map(E::idx).collect();
                let red: Vec<usize> = axes.iter().map(|&a| x.shape()[a]).collect();
                let fits = phase == Phase::Body
                    && idx == identity.as_slice()
                    && v.shape() == self.out_shape.as_slice()
                    && guard.is_none()
                    && self.red_shape.as_ref().is_none_or(|r| *r == red);
                if !fits {
                    return Err(Force(vec![v.clone()]));
                }
                self.red_shape = Some(red);
                self.kernel.red_rank = axes.len();
                let out_rank = self.out_shape.len();
                let mut kept = 0;
                let mut inner_idx = Vec::with_capacity(x.ndim());
                for d in 0..x.ndim() {
                    if let Some(r) = axes.iter().position(|&a| a == d) {
                        inner_idx.push(E::idx(out_rank + r));
                        if keepdims {
                            kept += 1;
                        }
                    } else {
                        inner_idx.push(E::idx(kept));
                        kept += 1;
                    }
                }
                let vi = self.emit(x, &inner_idx, &None, Phase::Inner)?;
                self.kernel.reductions.push(Reduction { op, value: vi, dtype: dt });
                let k = self.kernel.reductions.len() - 1;
                self.push(Phase::Body, Inst::Acc(k), dt)
            }
            MetaOp::Gather { dim } => {
                let (x, index) = (&inputs[0], &inputs[1]);
                // the data-dependent read needs the data in memory
                if !self.is_stored(x) {
                    return Err(Force(vec![x.clone()]));
                }
                let j = self.emit(index, idx, guard, phase)?;
                let mut base = idx.to_vec();
                base[dim] = E::c(0);
                let offset = self.lift(&flat(&base, x.shape()));
                let stride = self.lift(&E::c(strides(x.shape())[dim]));
                let extent = self.lift(&E::c(x.shape()[dim] as i64));
                let guard = guard.as_ref().map(|g| self.lift(g));
                let input = self.input_slot(x);
                let at = Indirect { value: j, stride, extent };
                self.push(phase, Inst::Gather { input, offset, at, guard }, dt)
            }
            MetaOp::ReindexReduce { .. } | MetaOp::Extern(_) | MetaOp::Scatter { .. } => {
                return Err(Force(vec![v.clone()]))
            }
        })
    }

    fn finish(mut self, outputs: Vec<Output>, output_lens: Vec<usize>) -> (Kernel, Launch, Vec<Var>) {
        self.kernel.outputs = outputs;
        self.kernel.n_args = self.args.len();
        self.kernel.n_params = self.params.len();
        let launch = Launch {
            out_shape: self.out_shape,
            red_shape: self.red_shape.unwrap_or_default(),
            args: self.args,
            params: self.params,
            output_lens,
        };
        (self.kernel, launch, self.inputs)
    }
}

/// What every kernel build of one plan reads besides its root.
struct Graph {
    /// Values stored in memory (not recomputed by their consumers).
    materialised: HashSet<u64>,
    /// See [`reused`].
    reused: HashSet<u64>,
}

/// The values that a kernel can reach twice with the same index, where the
/// builder must look them up instead of emitting them again: those with more than
/// one consumer, and the inputs of broadcasts and reindexes (which can map different
/// indices to one). Along every other edge the index map is injective, so a value
/// reached twice with one index has an ancestor in this set reached twice with one
/// index, and the lookup there covers it.
fn reused(order: &[Var], consumers: &HashMap<u64, usize>, ops: &HashMap<u64, MetaOp>) -> HashSet<u64> {
    let mut set: HashSet<u64> = consumers.iter().filter(|&(_, &n)| n > 1).map(|(&id, _)| id).collect();
    for v in order {
        if matches!(ops.get(&v.id()), Some(MetaOp::BroadcastTo { .. } | MetaOp::Reindex { .. })) {
            set.extend(v.inputs().iter().map(Var::id));
        }
    }
    set
}

fn build(root: &Var, graph: &Graph) -> std::result::Result<Step, Force> {
    let materialised = &graph.materialised;
    let (op, inputs) = op_and_inputs(root).ok_or_else(|| Force(vec![]))?;
    if let MetaOp::Extern(e) = op {
        return Ok(Step::Extern { op: e, inputs, out: root.clone() });
    }
    if let MetaOp::ReindexReduce { op: rop, exprs, conds } = &op {
        let x = &inputs[0];
        let mut b = Builder::new(root, x.shape().to_vec(), graph);
        let identity: Vec<E> = (0..x.ndim()).map(E::idx).collect();
        let value = b.emit(x, &identity, &None, Phase::Body)?;
        let mut guard = b.range_checks(exprs, root.shape(), Phase::Body).unwrap_or(E::c(1));
        for c in conds {
            guard = guard * c.clone().ne_(0);
        }
        let offset = b.lift(&flat(exprs, root.shape()));
        let guard = b.lift(&guard);
        let store = Store::Scatter { op: *rop, offset, guard, at: None, line: None };
        let out = Output { dtype: root.dtype(), value, store };
        let (kernel, launch, ins) = b.finish(vec![out], vec![root.numel()]);
        return Ok(Step::Kernel { kernel: Box::new(kernel), launch, inputs: ins, outputs: vec![root.clone()] });
    }
    if let MetaOp::Scatter { op: rop, dim } = &op {
        let (src, index) = (&inputs[0], &inputs[1]);
        // On the GPU the loop runs over the source with the scattered dim last:
        // sources that differ in another dim never meet, so every line along it
        // runs in its own thread (in order within the line: deterministic), and
        // neighbouring threads touch neighbouring elements. The host keeps the
        // source's order (contiguous reads and writes along the rows; rows of the
        // dims before the scattered one run in parallel).
        let gpu = crate::flags::flags().backend == crate::flags::Backend::Cuda;
        let r = src.ndim();
        let at_loop = |k: usize| match () {
            _ if !gpu => k,
            _ if k == *dim => r - 1,
            _ if k < *dim => k,
            _ => k - 1,
        };
        let mut domain = vec![0; r];
        for k in 0..r {
            domain[at_loop(k)] = src.shape()[k];
        }
        let mut b = Builder::new(root, domain, graph);
        let at_src: Vec<E> = (0..r).map(|k| E::idx(at_loop(k))).collect();
        let value = b.emit(src, &at_src, &None, Phase::Body)?;
        let j = b.emit(index, &at_src, &None, Phase::Body)?;
        let mut base = at_src;
        base[*dim] = E::c(0);
        let offset = b.lift(&flat(&base, root.shape()));
        let stride = b.lift(&E::c(strides(root.shape())[*dim]));
        let extent = b.lift(&E::c(root.shape()[*dim] as i64));
        let at = Some(Indirect { value: j, stride, extent });
        let store = Store::Scatter { op: *rop, offset, guard: E::c(1), at, line: Some(at_loop(*dim)) };
        let out = Output { dtype: root.dtype(), value, store };
        let (kernel, launch, ins) = b.finish(vec![out], vec![root.numel()]);
        return Ok(Step::Kernel { kernel: Box::new(kernel), launch, inputs: ins, outputs: vec![root.clone()] });
    }
    if op == MetaOp::Reshape && (inputs[0].is_realized() || materialised.contains(&inputs[0].id())) {
        return Ok(Step::Alias { out: root.clone(), src: inputs[0].clone() });
    }
    let mut b = Builder::new(root, root.shape().to_vec(), graph);
    let identity: Vec<E> = (0..root.ndim()).map(E::idx).collect();
    let value = b.emit(root, &identity, &None, Phase::Body)?;
    let out = Output { dtype: root.dtype(), value, store: Store::Dense };
    let (kernel, launch, ins) = b.finish(vec![out], vec![root.numel()]);
    Ok(Step::Kernel { kernel: Box::new(kernel), launch, inputs: ins, outputs: vec![root.clone()] })
}

/// Plans the pending nodes `order` (inputs before consumers) so that `targets` end
/// up computed.
pub(crate) fn plan(order: &[Var], targets: &std::collections::HashSet<u64>, fused: bool) -> Result<Vec<Step>> {
    let mut consumers: HashMap<u64, usize> = HashMap::default();
    let mut ops: HashMap<u64, MetaOp> = HashMap::default();
    // values read by a reduction, and values read by another op
    let (mut reduced, mut mapped): (HashSet<u64>, HashSet<u64>) = Default::default();
    for v in order {
        if let Some((op, inputs)) = op_and_inputs(v) {
            for i in &inputs {
                *consumers.entry(i.id()).or_insert(0) += 1;
                if matches!(op, MetaOp::Reduce { .. }) { &mut reduced } else { &mut mapped }.insert(i.id());
            }
            ops.insert(v.id(), op);
        }
    }
    let mut m: HashSet<u64> = targets.iter().copied().collect();
    for v in order {
        let Some(op) = ops.get(&v.id()) else { continue };
        let shared = consumers.get(&v.id()).copied().unwrap_or(0) > 1;
        let store = match op {
            MetaOp::ReindexReduce { .. } | MetaOp::Scatter { .. } | MetaOp::Extern(_) | MetaOp::Materialize => true,
            MetaOp::Reshape => false,
            MetaOp::Reduce { .. } => !fused || shared,
            _ => !fused,
        };
        if store {
            m.insert(v.id());
        }
    }
    // A library call reads its inputs from memory, a gather its data.
    for v in order {
        match ops.get(&v.id()) {
            Some(MetaOp::Extern(_)) => m.extend(v.inputs().iter().filter(|i| !i.is_realized()).map(Var::id)),
            Some(MetaOp::Gather { .. }) => m.extend(v.inputs().first().filter(|i| !i.is_realized()).map(Var::id)),
            _ => {}
        }
    }
    // A stored reshape stores its source instead (the same bytes) and aliases it:
    // computing the source through the reshape's index arithmetic would re-split
    // every flat index with divisions. Consumers come after their inputs in
    // `order`, so walking it backwards follows chains of reshapes.
    for v in order.iter().rev() {
        if m.contains(&v.id()) && ops.get(&v.id()) == Some(&MetaOp::Reshape) {
            if let Some(src) = v.inputs().first().filter(|i| !i.is_realized()) {
                m.insert(src.id());
            }
        }
    }
    if fused {
        // Shared producers that are expensive to recompute are stored. On the host a
        // transcendental function (see [`transcendental`]) costs tens of vector
        // instructions per element, more than a pass over memory: a value whose
        // inlined computation has one, read both by a reduction and by an op over
        // the full domain (so computed in two loop nests, where a kernel's memo
        // cannot share it), is stored: softmax's exp(x - max), read by the row sum
        // and by the output. On the GPU recomputing is cheaper than the memory
        // traffic, and only the cost in `weight` units decides.
        let host = crate::flags::flags().backend != crate::flags::Backend::Cuda;
        let mut cost: HashMap<u64, usize> = HashMap::default();
        let mut heavy: HashSet<u64> = HashSet::default();
        for v in order {
            let Some(op) = ops.get(&v.id()) else { continue };
            let own_kernel = matches!(
                op,
                MetaOp::Reduce { .. } | MetaOp::ReindexReduce { .. } | MetaOp::Scatter { .. } | MetaOp::Extern(_)
            );
            let c = if own_kernel {
                1
            } else {
                weight(op)
                    + v.inputs()
                        .iter()
                        .map(|i| if m.contains(&i.id()) { 1 } else { cost.get(&i.id()).copied().unwrap_or(1) })
                        .sum::<usize>()
            };
            let inlined_heavy = !own_kernel
                && (transcendental(op) || v.inputs().iter().any(|i| !m.contains(&i.id()) && heavy.contains(&i.id())));
            let shared = consumers.get(&v.id()).copied().unwrap_or(0) > 1;
            let twice = host && inlined_heavy && reduced.contains(&v.id()) && mapped.contains(&v.id());
            if (shared && (c > RECOMPUTE_LIMIT || twice)) || c > KERNEL_COST_LIMIT {
                m.insert(v.id());
                cost.insert(v.id(), 1);
            } else {
                cost.insert(v.id(), c);
                if inlined_heavy {
                    heavy.insert(v.id());
                }
            }
        }
    }
    // Build in order. A reduction that cannot run inside its consumer is
    // materialised, and building resumes at the earliest such reduction: the steps
    // before it cannot read it (`order` puts inputs before consumers), the ones after
    // may have inlined it and are rebuilt. The set only grows, so this ends.
    let position: HashMap<u64, usize> = order.iter().enumerate().map(|(k, v)| (v.id(), k)).collect();
    let mut graph = Graph { materialised: m, reused: reused(order, &consumers, &ops) };
    let mut steps: Vec<(usize, Step)> = Vec::new();
    let mut k = 0;
    while k < order.len() {
        let v = &order[k];
        if !graph.materialised.contains(&v.id()) {
            k += 1;
            continue;
        }
        match build(v, &graph) {
            Ok(s) => {
                steps.push((k, s));
                k += 1;
            }
            Err(Force(forced)) => {
                let before = graph.materialised.len();
                graph.materialised.extend(forced.iter().map(Var::id));
                let resume = forced.iter().filter_map(|f| position.get(&f.id()).copied()).min();
                match resume {
                    Some(r) if graph.materialised.len() > before && r < k => {
                        steps.retain(|(at, _)| *at < r);
                        k = r;
                    }
                    _ => {
                        return Err(Error::Kernel(kernels::KernelError::Internal {
                            op: "planner".into(),
                            reason: format!("the plan did not converge at {} {:?}", v.op_name(), v.shape()),
                        }))
                    }
                }
            }
        }
    }
    let steps = steps.into_iter().map(|(_, s)| s).collect();
    Ok(if fused { collapse(merge_siblings(dedupe_kernels(steps, targets))) } else { steps })
}

/// Merges adjacent loop dims of each kernel where its index expressions allow
/// (see [`kernels::collapse`]): longer inner loops for the backends.
fn collapse(steps: Vec<Step>) -> Vec<Step> {
    steps
        .into_iter()
        .map(|step| match step {
            Step::Kernel { kernel, launch, inputs, outputs } => {
                match kernels::collapse::collapse_dims(&kernel, &launch) {
                    Some((k, l)) => Step::Kernel { kernel: Box::new(k), launch: l, inputs, outputs },
                    None => Step::Kernel { kernel, launch, inputs, outputs },
                }
            }
            other => other,
        })
        .collect()
}

/// Drops a kernel that computes exactly what an earlier kernel of the plan computes
/// (the same IR, sizes, arguments and parameters, reading the same values): later
/// kernels read the earlier outputs instead, and an alias step gives the repeated
/// value its data where something else needs it (a requested value: at the end of
/// the plan; a library call, which reads its inputs' shapes: just before it). `mean`
/// and the mean inside `var` of the same features, as `calc_mean_std` writes them,
/// are one row sum instead of two, and no step separates the kernels around them
/// (see `kernels::row_group`).
fn dedupe_kernels(steps: Vec<Step>, targets: &std::collections::HashSet<u64>) -> Vec<Step> {
    let mut seen: HashMap<String, Vec<Var>> = HashMap::default();
    // repeated value -> the earlier value it equals
    let mut same: HashMap<u64, Var> = HashMap::default();
    let mut repeated: Vec<(Var, Var)> = vec![];
    let mut aliased: HashSet<u64> = HashSet::default();
    let mut out = Vec::with_capacity(steps.len());
    let alias = |v: &Var, same: &HashMap<u64, Var>, aliased: &mut HashSet<u64>, out: &mut Vec<Step>| {
        if let Some(src) = same.get(&v.id()) {
            if aliased.insert(v.id()) {
                out.push(Step::Alias { out: v.clone(), src: src.clone() });
            }
        }
    };
    for step in steps {
        match step {
            Step::Kernel { kernel, launch, inputs, outputs } => {
                let inputs: Vec<Var> = inputs.into_iter().map(|v| same.get(&v.id()).cloned().unwrap_or(v)).collect();
                if kernel.has_scatter() {
                    out.push(Step::Kernel { kernel, launch, inputs, outputs });
                    continue;
                }
                let ids: Vec<u64> = inputs.iter().map(Var::id).collect();
                let key = format!("{kernel}|{launch:?}|{ids:?}");
                match seen.get(&key) {
                    Some(earlier) => {
                        for (o, src) in outputs.iter().zip(earlier) {
                            same.insert(o.id(), src.clone());
                            repeated.push((o.clone(), src.clone()));
                        }
                    }
                    None => {
                        seen.insert(key, outputs.clone());
                        out.push(Step::Kernel { kernel, launch, inputs, outputs });
                    }
                }
            }
            Step::Alias { out: o, src } => {
                let src = same.get(&src.id()).cloned().unwrap_or(src);
                out.push(Step::Alias { out: o, src });
            }
            Step::Extern { op, inputs, out: o } => {
                for v in &inputs {
                    alias(v, &same, &mut aliased, &mut out);
                }
                out.push(Step::Extern { op, inputs, out: o });
            }
        }
    }
    for (v, src) in repeated {
        if targets.contains(&v.id()) && !aliased.contains(&v.id()) {
            out.push(Step::Alias { out: v, src });
        }
    }
    out
}

/// Renumbers a value of kernel `b` for appending after kernel `a`.
fn shift_value(v: &Value, inputs: usize, args: usize, params: usize, vals: usize, accs: usize) -> Value {
    let inst = match &v.inst {
        Inst::Load { input, offset, guard, fill } => Inst::Load {
            input: input + inputs,
            offset: offset.shift_args(args),
            guard: guard.as_ref().map(|g| g.shift_args(args)),
            fill: *fill,
        },
        Inst::Gather { input, offset, at, guard } => Inst::Gather {
            input: input + inputs,
            offset: offset.shift_args(args),
            at: Indirect {
                value: at.value + vals,
                stride: at.stride.shift_args(args),
                extent: at.extent.shift_args(args),
            },
            guard: guard.as_ref().map(|g| g.shift_args(args)),
        },
        Inst::Const(c) => Inst::Const(*c),
        Inst::Param(k) => Inst::Param(k + params),
        Inst::Index(e) => Inst::Index(e.shift_args(args)),
        Inst::Random { seed_arg, dist, counter } => {
            Inst::Random { seed_arg: seed_arg + args, dist: *dist, counter: counter.shift_args(args) }
        }
        Inst::Unary(op, a) => Inst::Unary(*op, a + vals),
        Inst::Binary(op, a, b) => Inst::Binary(*op, a + vals, b + vals),
        Inst::Where(c, a, b) => Inst::Where(c + vals, a + vals, b + vals),
        Inst::Cast(a) => Inst::Cast(a + vals),
        Inst::Acc(k) => Inst::Acc(k + accs),
    };
    Value { inst, dtype: v.dtype }
}

/// Appends kernel `b` to kernel `a` (same domains): one pass computes both.
fn append(a: &mut Kernel, la: &mut Launch, b: &Kernel, lb: &Launch) {
    let (ni, na, np) = (a.inputs.len(), a.n_args, a.n_params);
    let (ninner, nbody, nacc) = (a.inner.len(), a.body.len(), a.reductions.len());
    a.inputs.extend(&b.inputs);
    a.inner.extend(b.inner.iter().map(|v| shift_value(v, ni, na, np, ninner, 0)));
    a.reductions.extend(b.reductions.iter().map(|r| Reduction { value: r.value + ninner, ..r.clone() }));
    a.body.extend(b.body.iter().map(|v| shift_value(v, ni, na, np, nbody, nacc)));
    a.outputs.extend(b.outputs.iter().map(|o| Output { value: o.value + nbody, ..o.clone() }));
    a.n_args += b.n_args;
    a.n_params += b.n_params;
    la.args.extend(&lb.args);
    la.params.extend(&lb.params);
    la.output_lens.extend(&lb.output_lens);
}

/// Merges reduction kernels over the same domains when the later one's inputs are
/// all available where the earlier one runs.
fn merge_siblings(steps: Vec<Step>) -> Vec<Step> {
    let mut out: Vec<Step> = Vec::with_capacity(steps.len());
    // step index that produces each value
    let mut producer: HashMap<u64, usize> = HashMap::default();
    for step in steps {
        let target = match &step {
            Step::Kernel { kernel, launch, inputs, .. } if kernel.red_rank > 0 && !kernel.has_scatter() => {
                let ready_at = inputs.iter().filter_map(|i| producer.get(&i.id()).copied()).max();
                out.iter().enumerate().position(|(k, s)| match s {
                    Step::Kernel { kernel: k2, launch: l2, .. } => {
                        k2.red_rank > 0
                            && !k2.has_scatter()
                            && l2.out_shape == launch.out_shape
                            && l2.red_shape == launch.red_shape
                            && ready_at.is_none_or(|r| r < k)
                    }
                    Step::Alias { .. } | Step::Extern { .. } => false,
                })
            }
            _ => None,
        };
        match (target, step) {
            (Some(t), Step::Kernel { kernel, launch, inputs, outputs }) => {
                if let Step::Kernel { kernel: ka, launch: la, inputs: ia, outputs: oa } = &mut out[t] {
                    append(ka, la, &kernel, &launch);
                    ia.extend(inputs);
                    for o in &outputs {
                        producer.insert(o.id(), t);
                    }
                    oa.extend(outputs);
                }
            }
            (_, step) => {
                let k = out.len();
                match &step {
                    Step::Kernel { outputs, .. } => {
                        for o in outputs {
                            producer.insert(o.id(), k);
                        }
                    }
                    Step::Alias { out: o, .. } | Step::Extern { out: o, .. } => {
                        producer.insert(o.id(), k);
                    }
                }
                out.push(step);
            }
        }
    }
    out
}
