//! The kernel IR: one fused loop nest.
//!
//! A kernel loops over an output domain of rank `out_rank` (indices `i0..`), and
//! optionally over a reduction domain of rank `red_rank` (indices following the
//! output ones). Per output position it runs:
//!
//! 1. the `inner` values for every point of the reduction domain, folding each
//!    [`Reduction`] into an accumulator;
//! 2. the `body` values, which may read the accumulators with [`Inst::Acc`];
//! 3. the [`Output`] stores.
//!
//! Inputs are contiguous buffers read through flat offsets written as index
//! expressions. Sizes, strides and offsets are kernel arguments (`a0..`), as are the
//! domain sizes, so one compiled kernel serves every size of the same structure. The
//! canonical text ([`Kernel`]'s `Display`) is what the cache key hashes.

use crate::dtype::DType;
use crate::expr::IndexExpr;
use crate::meta::{BinaryOp, Distribution, ReduceOp, UnaryOp};
use std::fmt;

/// Index of a value inside its phase's list.
pub type ValueId = usize;

/// One SSA instruction.
#[derive(Debug, Clone, PartialEq)]
pub enum Inst {
    /// Element of input `input` at flat `offset`; `fill` where `guard` is zero.
    Load {
        /// Input buffer.
        input: usize,
        /// Flat element offset over the loop indices.
        offset: IndexExpr,
        /// Read only where non-zero.
        guard: Option<IndexExpr>,
        /// Value where the guard fails.
        fill: f64,
    },
    /// Element of input `input` at flat `offset + v * at.stride`, where `v` is the
    /// integer value `at.value`; 0 where `guard` is zero or `v` lies outside
    /// `0..at.extent` (a data-dependent load: `gather`).
    Gather {
        /// Input buffer.
        input: usize,
        /// The flat offset without the indexed dimension's part.
        offset: IndexExpr,
        /// The data-dependent part.
        at: Indirect,
        /// Read only where non-zero.
        guard: Option<IndexExpr>,
    },
    /// A constant that shapes the kernel (a padding value, a guard's fill).
    Const(f64),
    /// Value parameter `k` of the launch (the value of a `full` leaf, a mean's scale):
    /// not part of the cache key, so `x * 0.5` and `x * 0.25` share one kernel.
    Param(usize),
    /// The value of an index expression.
    Index(IndexExpr),
    /// Philox random number for element `counter` of the stream keyed by the kernel
    /// argument `seed_arg`.
    Random {
        /// Argument holding the seed (as i64 bits).
        seed_arg: usize,
        /// Distribution.
        dist: Distribution,
        /// Element counter.
        counter: IndexExpr,
    },
    /// Unary op.
    Unary(UnaryOp, ValueId),
    /// Binary op (operands of equal dtype).
    Binary(BinaryOp, ValueId, ValueId),
    /// `where(c, a, b)`.
    Where(ValueId, ValueId, ValueId),
    /// Conversion to the value's dtype.
    Cast(ValueId),
    /// Result of reduction `k` (body only).
    Acc(usize),
}

/// The data-dependent part of a flat offset: `v * stride` for the integer value `v`
/// of `value` (a value of the same phase), valid when `0 <= v < extent`.
#[derive(Debug, Clone, PartialEq)]
pub struct Indirect {
    /// The value that holds the index.
    pub value: ValueId,
    /// Elements per step of the index.
    pub stride: IndexExpr,
    /// Number of valid index values.
    pub extent: IndexExpr,
}

impl Indirect {
    /// The offset this part can add at most: `(extent - 1) * stride` (its least is
    /// 0), for interval checks.
    pub fn max_offset(&self) -> IndexExpr {
        (self.extent.clone() - 1) * self.stride.clone()
    }
}

/// A value: its instruction and its dtype.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    /// What computes it.
    pub inst: Inst,
    /// Its dtype (f16 / bf16 values are computed in f32).
    pub dtype: DType,
}

/// A reduction over the reduction domain.
#[derive(Debug, Clone, PartialEq)]
pub struct Reduction {
    /// The combining op.
    pub op: ReduceOp,
    /// The value (in `inner`) to fold.
    pub value: ValueId,
    /// Result dtype.
    pub dtype: DType,
}

/// How an output is written.
#[derive(Debug, Clone, PartialEq)]
pub enum Store {
    /// Row-major at the output position.
    Dense,
    /// Combined with `op` into flat `offset` (plus the data-dependent `at`, which
    /// must also lie in range) where `guard` holds; the buffer starts filled with
    /// `op`'s identity.
    Scatter {
        /// Combining op.
        op: ReduceOp,
        /// Target flat offset over the loop indices.
        offset: IndexExpr,
        /// Store only where non-zero.
        guard: IndexExpr,
        /// A data-dependent part of the offset (a body value), for `scatter`.
        at: Option<Indirect>,
        /// For a `scatter` meta-op: the loop index along which sources may meet.
        /// Positions that differ in any other loop index never write the same
        /// element, so the work may be split anywhere that keeps each line (the
        /// positions that differ only in this index) in one piece and in order,
        /// without a proof from the offsets.
        line: Option<usize>,
    },
}

/// One output of a kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// Stored dtype.
    pub dtype: DType,
    /// The body value stored.
    pub value: ValueId,
    /// How.
    pub store: Store,
}

/// A fused kernel.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Kernel {
    /// Input buffer dtypes.
    pub inputs: Vec<DType>,
    /// Rank of the output domain.
    pub out_rank: usize,
    /// Rank of the reduction domain (0: none).
    pub red_rank: usize,
    /// Values computed per reduction point.
    pub inner: Vec<Value>,
    /// Reductions of inner values.
    pub reductions: Vec<Reduction>,
    /// Values computed per output position.
    pub body: Vec<Value>,
    /// Stores.
    pub outputs: Vec<Output>,
    /// Number of integer kernel arguments.
    pub n_args: usize,
    /// Number of value parameters.
    pub n_params: usize,
}

/// The sizes a kernel runs with.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Launch {
    /// Output domain sizes.
    pub out_shape: Vec<usize>,
    /// Reduction domain sizes.
    pub red_shape: Vec<usize>,
    /// Kernel arguments.
    pub args: Vec<i64>,
    /// Value parameters.
    pub params: Vec<f64>,
    /// Number of elements of each output buffer.
    pub output_lens: Vec<usize>,
}

impl Launch {
    /// Checks that this launch fits `kernel` and that `inputs` have the kernel's
    /// dtypes; every backend calls it before running.
    pub fn check(&self, kernel: &Kernel, inputs: &[&crate::HostBuffer]) -> Result<(), crate::KernelError> {
        self.check_dtypes(kernel, inputs.iter().map(|b| b.dtype()))
    }

    /// [`Launch::check`] given the inputs' dtypes.
    pub fn check_dtypes(
        &self,
        kernel: &Kernel,
        inputs: impl ExactSizeIterator<Item = DType>,
    ) -> Result<(), crate::KernelError> {
        let bad = |reason: String| Err(crate::KernelError::Internal { op: "kernel launch".into(), reason });
        if inputs.len() != kernel.inputs.len() || self.output_lens.len() != kernel.outputs.len() {
            return bad(format!(
                "kernel takes {} inputs and {} outputs, launched with {} and {}",
                kernel.inputs.len(),
                kernel.outputs.len(),
                inputs.len(),
                self.output_lens.len()
            ));
        }
        if self.args.len() != kernel.n_args
            || self.params.len() != kernel.n_params
            || self.red_shape.len() != kernel.red_rank
            || self.out_shape.len() != kernel.out_rank
        {
            return bad("arguments, parameters or domain ranks do not match the kernel".into());
        }
        for (k, (i, d)) in inputs.zip(&kernel.inputs).enumerate() {
            if i != *d {
                return bad(format!("input {k} is {i}, the kernel reads {d}"));
            }
        }
        Ok(())
    }
}

/// The dtype arithmetic happens in: f16 and bf16 are computed in f32.
pub fn compute_dtype(d: DType) -> DType {
    match d {
        DType::F16 | DType::BF16 => DType::F32,
        d => d,
    }
}

impl Kernel {
    /// True for element-wise kernels without reductions or scatters.
    pub fn is_elementwise(&self) -> bool {
        self.red_rank == 0 && self.outputs.iter().all(|o| o.store == Store::Dense)
    }

    /// True when some output is a scatter (must not be split across threads).
    pub fn has_scatter(&self) -> bool {
        self.outputs.iter().any(|o| matches!(o.store, Store::Scatter { .. }))
    }

    /// Stable 128-bit hash of the canonical text (FNV-1a), printed as hex.
    pub fn structural_hash(&self) -> String {
        fnv128(self.to_string().as_bytes())
    }
}

/// FNV-1a over 128 bits, as 32 hex digits: stable across runs and platforms.
pub fn fnv128(bytes: &[u8]) -> String {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013B;
    let mut h = OFFSET;
    for &b in bytes {
        h ^= u128::from(b);
        h = h.wrapping_mul(PRIME);
    }
    format!("{h:032x}")
}

fn fmt_values(f: &mut fmt::Formatter<'_>, prefix: char, vals: &[Value]) -> fmt::Result {
    for (k, v) in vals.iter().enumerate() {
        write!(f, "  {prefix}{k}: {} = ", v.dtype)?;
        let r = |id: &ValueId| format!("{prefix}{id}");
        match &v.inst {
            Inst::Load { input, offset, guard, fill } => {
                write!(f, "load in{input}[{offset}]")?;
                if let Some(g) = guard {
                    write!(f, " if {g} else {fill:?}")?;
                }
            }
            Inst::Gather { input, offset, at, guard } => {
                write!(f, "gather in{input}[{offset} + {}{} * {} if < {}]", prefix, at.value, at.stride, at.extent)?;
                if let Some(g) = guard {
                    write!(f, " if {g}")?;
                }
            }
            Inst::Const(c) => write!(f, "const {c:?}")?,
            Inst::Param(k) => write!(f, "param p{k}")?,
            Inst::Index(e) => write!(f, "index {e}")?,
            Inst::Random { seed_arg, dist, counter } => write!(f, "random a{seed_arg} {dist:?} @ {counter}")?,
            Inst::Unary(op, a) => write!(f, "{} {}", op.name(), r(a))?,
            Inst::Binary(op, a, b) => write!(f, "{} {} {}", op.name(), r(a), r(b))?,
            Inst::Where(c, a, b) => write!(f, "where {} {} {}", r(c), r(a), r(b))?,
            Inst::Cast(a) => write!(f, "cast {}", r(a))?,
            Inst::Acc(k) => write!(f, "acc {k}")?,
        }
        writeln!(f)?;
    }
    Ok(())
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ins: Vec<&str> = self.inputs.iter().map(|d| d.name()).collect();
        writeln!(
            f,
            "kernel(in=[{}], out_rank={}, red_rank={}, args={}, params={})",
            ins.join(","),
            self.out_rank,
            self.red_rank,
            self.n_args,
            self.n_params
        )?;
        if self.red_rank > 0 {
            writeln!(f, " inner:")?;
            fmt_values(f, 'v', &self.inner)?;
            for (k, r) in self.reductions.iter().enumerate() {
                writeln!(f, "  acc{k}: {} = {} v{}", r.dtype, r.op.name(), r.value)?;
            }
        }
        writeln!(f, " body:")?;
        fmt_values(f, 'b', &self.body)?;
        for (k, o) in self.outputs.iter().enumerate() {
            match &o.store {
                Store::Dense => writeln!(f, "  out{k}: {} <- b{}", o.dtype, o.value)?,
                Store::Scatter { op, offset, guard, at, line } => {
                    write!(f, "  out{k}: {} <-{} b{} at [{offset}", o.dtype, op.name(), o.value)?;
                    if let Some(at) = at {
                        write!(f, " + b{} * {} if < {}", at.value, at.stride, at.extent)?;
                    }
                    write!(f, "] if {guard}")?;
                    if let Some(d) = line {
                        write!(f, ", lines along i{d}")?;
                    }
                    writeln!(f)?
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_text_and_hash_are_stable() {
        let k = Kernel {
            inputs: vec![DType::F32],
            out_rank: 1,
            body: vec![
                Value {
                    inst: Inst::Load { input: 0, offset: IndexExpr::idx(0), guard: None, fill: 0.0 },
                    dtype: DType::F32,
                },
                Value { inst: Inst::Unary(UnaryOp::Exp, 0), dtype: DType::F32 },
            ],
            outputs: vec![Output { dtype: DType::F32, value: 1, store: Store::Dense }],
            ..Kernel::default()
        };
        let text = k.to_string();
        assert!(text.contains("b1: f32 = exp b0"), "{text}");
        assert_eq!(k.structural_hash(), k.clone().structural_hash());
        let mut k2 = k.clone();
        k2.body[1].inst = Inst::Unary(UnaryOp::Log, 0);
        assert_ne!(k.structural_hash(), k2.structural_hash());
        assert_eq!(fnv128(b"").len(), 32);
    }
}
