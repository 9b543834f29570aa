//! The meta-operator descriptors: the whole primitive set that every user-level
//! operation lowers to. A descriptor says *what* one node computes; its output shape
//! and dtype are carried by the graph node that holds it.

use crate::expr::IndexExpr;

/// Element-wise functions of one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// `-x`
    Neg,
    /// `|x|`
    Abs,
    /// `e^x` (floats)
    Exp,
    /// natural logarithm (floats)
    Log,
    /// square root (floats)
    Sqrt,
    /// `1 / sqrt(x)` (floats)
    Rsqrt,
    /// `1 / x` (floats)
    Recip,
    /// sine (floats)
    Sin,
    /// cosine (floats)
    Cos,
    /// hyperbolic tangent (floats)
    Tanh,
    /// `1 / (1 + e^-x)` (floats)
    Sigmoid,
    /// error function (floats)
    Erf,
    /// round toward negative infinity (identity on integers)
    Floor,
    /// round half to even, as `torch.round` (identity on integers)
    Round,
    /// logical not (bool)
    Not,
}

impl UnaryOp {
    /// Every unary op.
    pub const ALL: [UnaryOp; 15] = [
        UnaryOp::Neg,
        UnaryOp::Abs,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Recip,
        UnaryOp::Sin,
        UnaryOp::Cos,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Erf,
        UnaryOp::Floor,
        UnaryOp::Round,
        UnaryOp::Not,
    ];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Abs => "abs",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Rsqrt => "rsqrt",
            UnaryOp::Recip => "recip",
            UnaryOp::Sin => "sin",
            UnaryOp::Cos => "cos",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Erf => "erf",
            UnaryOp::Floor => "floor",
            UnaryOp::Round => "round",
            UnaryOp::Not => "not",
        }
    }

    /// True for the ops defined only on floats (transcendentals, roots, reciprocal).
    pub fn float_only(self) -> bool {
        !matches!(self, UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Floor | UnaryOp::Round | UnaryOp::Not)
    }

    /// The op on an f64.
    pub fn eval_f64(self, x: f64) -> f64 {
        match self {
            UnaryOp::Neg => -x,
            UnaryOp::Abs => x.abs(),
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Rsqrt => 1.0 / x.sqrt(),
            UnaryOp::Recip => 1.0 / x,
            UnaryOp::Sin => x.sin(),
            UnaryOp::Cos => x.cos(),
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Sigmoid => {
                if x >= 0.0 {
                    1.0 / (1.0 + (-x).exp())
                } else {
                    let e = x.exp();
                    e / (1.0 + e)
                }
            }
            UnaryOp::Erf => libm::erf(x),
            UnaryOp::Floor => x.floor(),
            UnaryOp::Round => x.round_ties_even(),
            UnaryOp::Not => f64::from(u8::from(x == 0.0)),
        }
    }

    /// The op on an integer or bool (0/1). Only meaningful for the ops that are not
    /// [`float_only`](Self::float_only).
    pub fn eval_i64(self, x: i64) -> i64 {
        match self {
            UnaryOp::Neg => x.wrapping_neg(),
            UnaryOp::Abs => x.wrapping_abs(),
            UnaryOp::Not => i64::from(x == 0),
            _ => x,
        }
    }
}

/// Element-wise functions of two inputs of equal shape and dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a * b`
    Mul,
    /// true division for floats, floor division for integers
    Div,
    /// `a ^ b`
    Pow,
    /// maximum, NaN-propagating (as `torch.maximum`)
    Max,
    /// minimum, NaN-propagating (as `torch.minimum`)
    Min,
    /// remainder with the sign of the divisor (as `torch.remainder`)
    Mod,
    /// `a == b` (bool result)
    Eq,
    /// `a != b` (bool result)
    Ne,
    /// `a < b` (bool result)
    Lt,
    /// `a <= b` (bool result)
    Le,
    /// `a > b` (bool result)
    Gt,
    /// `a >= b` (bool result)
    Ge,
    /// logical and (bool), bitwise and (integers)
    And,
    /// logical or (bool), bitwise or (integers)
    Or,
}

impl BinaryOp {
    /// Every binary op.
    pub const ALL: [BinaryOp; 16] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Pow,
        BinaryOp::Max,
        BinaryOp::Min,
        BinaryOp::Mod,
        BinaryOp::Eq,
        BinaryOp::Ne,
        BinaryOp::Lt,
        BinaryOp::Le,
        BinaryOp::Gt,
        BinaryOp::Ge,
        BinaryOp::And,
        BinaryOp::Or,
    ];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Pow => "pow",
            BinaryOp::Max => "maximum",
            BinaryOp::Min => "minimum",
            BinaryOp::Mod => "remainder",
            BinaryOp::Eq => "eq",
            BinaryOp::Ne => "ne",
            BinaryOp::Lt => "lt",
            BinaryOp::Le => "le",
            BinaryOp::Gt => "gt",
            BinaryOp::Ge => "ge",
            BinaryOp::And => "logical_and",
            BinaryOp::Or => "logical_or",
        }
    }

    /// True for comparisons, whose result is bool.
    pub fn is_comparison(self) -> bool {
        matches!(self, BinaryOp::Eq | BinaryOp::Ne | BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge)
    }

    /// True for and/or, defined on bool and integers only.
    pub fn is_logical(self) -> bool {
        matches!(self, BinaryOp::And | BinaryOp::Or)
    }

    /// The op on f64 values (comparisons give 0/1).
    pub fn eval_f64(self, a: f64, b: f64) -> f64 {
        let bool_ = |c: bool| f64::from(u8::from(c));
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
            BinaryOp::Pow => a.powf(b),
            BinaryOp::Max => {
                if a.is_nan() || b.is_nan() {
                    f64::NAN
                } else {
                    a.max(b)
                }
            }
            BinaryOp::Min => {
                if a.is_nan() || b.is_nan() {
                    f64::NAN
                } else {
                    a.min(b)
                }
            }
            BinaryOp::Mod => {
                let r = a % b;
                if r != 0.0 && ((r < 0.0) != (b < 0.0)) {
                    r + b
                } else {
                    r
                }
            }
            BinaryOp::Eq => bool_(a == b),
            BinaryOp::Ne => bool_(a != b),
            BinaryOp::Lt => bool_(a < b),
            BinaryOp::Le => bool_(a <= b),
            BinaryOp::Gt => bool_(a > b),
            BinaryOp::Ge => bool_(a >= b),
            BinaryOp::And => bool_(a != 0.0 && b != 0.0),
            BinaryOp::Or => bool_(a != 0.0 || b != 0.0),
        }
    }

    /// The op on integers (wrapping arithmetic; division and remainder by zero give 0,
    /// where PyTorch raises; negative integer powers give 0 unless the base is ±1).
    pub fn eval_i64(self, a: i64, b: i64) -> i64 {
        let e = |x: IndexExpr| x.eval(&[]);
        match self {
            BinaryOp::Add => a.wrapping_add(b),
            BinaryOp::Sub => a.wrapping_sub(b),
            BinaryOp::Mul => a.wrapping_mul(b),
            BinaryOp::Div => e(IndexExpr::c(a).floor_div(b)),
            BinaryOp::Mod => e(IndexExpr::c(a).modulo(b)),
            BinaryOp::Pow => {
                if b >= 0 {
                    a.wrapping_pow(b.min(u32::MAX as i64) as u32)
                } else {
                    match a {
                        1 => 1,
                        -1 => {
                            if b % 2 == 0 {
                                1
                            } else {
                                -1
                            }
                        }
                        _ => 0,
                    }
                }
            }
            BinaryOp::Max => a.max(b),
            BinaryOp::Min => a.min(b),
            BinaryOp::Eq => i64::from(a == b),
            BinaryOp::Ne => i64::from(a != b),
            BinaryOp::Lt => i64::from(a < b),
            BinaryOp::Le => i64::from(a <= b),
            BinaryOp::Gt => i64::from(a > b),
            BinaryOp::Ge => i64::from(a >= b),
            BinaryOp::And => a & b,
            BinaryOp::Or => a | b,
        }
    }
}

/// Reductions (mean is a sum times a scale, built above this layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// Sum; identity 0.
    Sum,
    /// Product; identity 1.
    Prod,
    /// Maximum, NaN-propagating; identity -inf (the lowest integer for integers).
    Max,
    /// Minimum, NaN-propagating; identity +inf (the highest integer for integers).
    Min,
}

impl ReduceOp {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Prod => "prod",
            ReduceOp::Max => "max",
            ReduceOp::Min => "min",
        }
    }

    /// The element-wise op that combines two partial results.
    pub fn combiner(self) -> BinaryOp {
        match self {
            ReduceOp::Sum => BinaryOp::Add,
            ReduceOp::Prod => BinaryOp::Mul,
            ReduceOp::Max => BinaryOp::Max,
            ReduceOp::Min => BinaryOp::Min,
        }
    }

    /// Identity element for floats.
    pub fn identity_f64(self) -> f64 {
        match self {
            ReduceOp::Sum => 0.0,
            ReduceOp::Prod => 1.0,
            ReduceOp::Max => f64::NEG_INFINITY,
            ReduceOp::Min => f64::INFINITY,
        }
    }

    /// Identity element for an integer or bool dtype: the extreme of that dtype's
    /// range for max / min.
    pub fn identity_for(self, d: crate::DType) -> i64 {
        use crate::DType;
        match (self, d) {
            (ReduceOp::Max, DType::Bool | DType::U8) => 0,
            (ReduceOp::Max, DType::I32) => i64::from(i32::MIN),
            (ReduceOp::Min, DType::Bool) => 1,
            (ReduceOp::Min, DType::U8) => 255,
            (ReduceOp::Min, DType::I32) => i64::from(i32::MAX),
            _ => self.identity_i64(),
        }
    }

    /// Identity element for integers.
    pub fn identity_i64(self) -> i64 {
        match self {
            ReduceOp::Sum => 0,
            ReduceOp::Prod => 1,
            ReduceOp::Max => i64::MIN,
            ReduceOp::Min => i64::MAX,
        }
    }
}

/// Distribution of a `random` leaf.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Distribution {
    /// Uniform on `[low, high)`.
    Uniform {
        /// Lower bound (inclusive).
        low: f64,
        /// Upper bound (exclusive).
        high: f64,
    },
    /// Normal with the given mean and standard deviation.
    Normal {
        /// Mean.
        mean: f64,
        /// Standard deviation.
        std: f64,
    },
}

/// One meta-operator. Output shape and dtype come with the node that holds it.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaOp {
    /// Leaf: every element equal to `value` (rounded to the dtype).
    Full {
        /// The value.
        value: f64,
    },
    /// Leaf: the index along `dim` at every position (iota).
    Index {
        /// The dimension.
        dim: usize,
    },
    /// Leaf: counter-based random numbers; element `k` (row-major) depends only on
    /// `seed` and `k`.
    Random {
        /// Philox key.
        seed: u64,
        /// Distribution.
        dist: Distribution,
    },
    /// Element-wise unary.
    Unary(UnaryOp),
    /// Element-wise binary on inputs of equal shape and dtype.
    Binary(BinaryOp),
    /// `where(cond, a, b)`: cond is bool; a and b have the output dtype.
    Where,
    /// Conversion to the node's dtype.
    Cast,
    /// Broadcast to the node's shape. `new_dims` lists output dims absent from the
    /// input; the remaining output dims map to input dims in order, each of equal
    /// size or of input size 1 (stretched).
    BroadcastTo {
        /// Output dims that the input does not have.
        new_dims: Vec<usize>,
    },
    /// `out[i] = in[exprs(i)]` where every expression is in range and every condition
    /// is non-zero, else `overflow`. One expression per input dim, over the output
    /// indices.
    Reindex {
        /// Input index per input dim, over output indices.
        exprs: Vec<IndexExpr>,
        /// Value where out of range or a condition fails.
        overflow: f64,
        /// Extra conditions over output indices.
        conds: Vec<IndexExpr>,
    },
    /// Reduction over `axes`.
    Reduce {
        /// The reduction.
        op: ReduceOp,
        /// Sorted, distinct axes of the input.
        axes: Vec<usize>,
        /// Keep reduced axes as size 1.
        keepdims: bool,
    },
    /// Scatter-reduce: every input element whose `exprs` (one per output dim, over the
    /// input indices) are in range and whose conditions hold is combined into that
    /// output position; untouched outputs hold the identity of `op`.
    ReindexReduce {
        /// The combining reduction.
        op: ReduceOp,
        /// Output index per output dim, over input indices.
        exprs: Vec<IndexExpr>,
        /// Extra conditions over input indices.
        conds: Vec<IndexExpr>,
    },
    /// Data-dependent reindex (`torch.gather`): inputs `(x, index)` of equal rank,
    /// output of the index's shape; `out[i] = x[i with i_dim := index[i]]` where
    /// `0 <= index[i] < x.shape[dim]`, else 0. The other dims of the index are at
    /// most the input's. `x` is read from memory (the planner stores it); the index
    /// fuses like any operand.
    Gather {
        /// The indexed dimension.
        dim: usize,
    },
    /// Data-dependent scatter-reduce (`torch.scatter_reduce` onto the identity):
    /// inputs `(src, index)` of equal shape; every `src[i]` whose `index[i]` lies in
    /// `0..shape[dim]` is combined with `op` into `out[i with i_dim := index[i]]`;
    /// untouched outputs hold the identity of `op`. The output shape comes with the
    /// node (the index's shape is at most it in the other dims).
    Scatter {
        /// The combining reduction.
        op: ReduceOp,
        /// The indexed dimension.
        dim: usize,
    },
    /// Same data, new shape (free for contiguous values).
    Reshape,
    /// The input's value, always stored in memory: a fusion boundary (what a
    /// consumer that re-reads many times, like an im2col, wants to read from).
    Materialize,
    /// A library call on materialised, contiguous inputs (see [`crate::ExternOp`]).
    Extern(crate::ExternOp),
}

impl MetaOp {
    /// Short name for messages and dumps.
    pub fn name(&self) -> &'static str {
        match self {
            MetaOp::Full { .. } => "full",
            MetaOp::Index { .. } => "index",
            MetaOp::Random { .. } => "random",
            MetaOp::Unary(u) => u.name(),
            MetaOp::Binary(b) => b.name(),
            MetaOp::Where => "where",
            MetaOp::Cast => "cast",
            MetaOp::BroadcastTo { .. } => "broadcast_to",
            MetaOp::Reindex { .. } => "reindex",
            MetaOp::Reduce { .. } => "reduce",
            MetaOp::ReindexReduce { .. } => "reindex_reduce",
            MetaOp::Gather { .. } => "gather",
            MetaOp::Scatter { .. } => "scatter",
            MetaOp::Reshape => "reshape",
            MetaOp::Materialize => "materialize",
            MetaOp::Extern(e) => e.name(),
        }
    }
}
