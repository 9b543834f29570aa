//! Index expressions: the small typed AST that `reindex` and `reindex_reduce` use to
//! map loop indices to positions in another shape.
//!
//! Expressions are built with ordinary operators and read like the arithmetic they
//! stand for:
//!
//! ```
//! use kernels::IndexExpr as E;
//! // reflect padding by 2 of a dimension of size 5, over output index i0
//! let j = E::idx(0) - 2;
//! let reflected = E::c(4) - (E::c(4) - j.abs()).abs();
//! assert_eq!(reflected.eval(&[0]), 2);
//! assert_eq!(reflected.eval(&[8]), 2);
//! ```
//!
//! Constructors fold constants (`x + 0` is `x`, `2 * 3` is `6`), so composing
//! reindexes by substitution keeps expressions small.

use std::fmt;
use std::ops::{Add, Mul, Neg, Sub};

/// A comparison inside an index expression; evaluates to 1 or 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CmpOp {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

impl CmpOp {
    /// The C / Rust spelling of the comparison.
    pub fn symbol(self) -> &'static str {
        match self {
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
        }
    }
}

/// An integer expression over the loop indices `i0 .. in` of a kernel.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IndexExpr {
    /// An integer constant.
    Const(i64),
    /// Loop index `i_k`.
    Idx(usize),
    /// Kernel argument `a_k`: a size, stride or offset passed at launch, so that the
    /// compiled kernel does not depend on it.
    Arg(usize),
    /// `a + b`
    Add(Box<IndexExpr>, Box<IndexExpr>),
    /// `a - b`
    Sub(Box<IndexExpr>, Box<IndexExpr>),
    /// `a * b`
    Mul(Box<IndexExpr>, Box<IndexExpr>),
    /// Floor division (rounds toward negative infinity); division by zero gives 0.
    FloorDiv(Box<IndexExpr>, Box<IndexExpr>),
    /// Floor modulo (result has the sign of the divisor); modulo zero gives 0.
    Mod(Box<IndexExpr>, Box<IndexExpr>),
    /// `min(a, b)`
    Min(Box<IndexExpr>, Box<IndexExpr>),
    /// `max(a, b)`
    Max(Box<IndexExpr>, Box<IndexExpr>),
    /// Comparison, 1 when true and 0 when false.
    Cmp(CmpOp, Box<IndexExpr>, Box<IndexExpr>),
    /// `if cond != 0 { then } else { other }`.
    Select(Box<IndexExpr>, Box<IndexExpr>, Box<IndexExpr>),
}

use IndexExpr as E;

fn floor_div(a: i64, b: i64) -> i64 {
    if b == 0 {
        return 0;
    }
    let q = a.wrapping_div(b);
    if (a % b != 0) && ((a < 0) != (b < 0)) {
        q - 1
    } else {
        q
    }
}

fn floor_mod(a: i64, b: i64) -> i64 {
    if b == 0 {
        return 0;
    }
    let r = a.wrapping_rem(b);
    if r != 0 && ((r < 0) != (b < 0)) {
        r + b
    } else {
        r
    }
}

/// Divisors up to this value stay literal in kernels (see
/// [`IndexExpr::lift_constants`]).
pub const LITERAL_DIVISOR: i64 = 8;

/// An index multiplied by a constant of at most this magnitude keeps the constant
/// literal in kernels (see [`IndexExpr::lift_constants`]).
pub const LITERAL_STRIDE: i64 = 2;

impl IndexExpr {
    /// A constant.
    pub fn c(v: i64) -> IndexExpr {
        E::Const(v)
    }

    /// Loop index `i_k`.
    pub fn idx(k: usize) -> IndexExpr {
        E::Idx(k)
    }

    /// The constant value, if this is a constant.
    pub fn as_const(&self) -> Option<i64> {
        match self {
            E::Const(v) => Some(*v),
            _ => None,
        }
    }

    /// Floor division by `rhs`.
    pub fn floor_div(self, rhs: impl Into<IndexExpr>) -> IndexExpr {
        let rhs = rhs.into();
        match (self.as_const(), rhs.as_const()) {
            (Some(a), Some(b)) => E::Const(floor_div(a, b)),
            (_, Some(1)) => self,
            _ => E::FloorDiv(Box::new(self), Box::new(rhs)),
        }
    }

    /// Floor modulo by `rhs`.
    pub fn modulo(self, rhs: impl Into<IndexExpr>) -> IndexExpr {
        let rhs = rhs.into();
        match (self.as_const(), rhs.as_const()) {
            (Some(a), Some(b)) => E::Const(floor_mod(a, b)),
            (_, Some(1)) => E::Const(0),
            _ => E::Mod(Box::new(self), Box::new(rhs)),
        }
    }

    /// `min(self, rhs)`
    pub fn min(self, rhs: impl Into<IndexExpr>) -> IndexExpr {
        let rhs = rhs.into();
        match (self.as_const(), rhs.as_const()) {
            (Some(a), Some(b)) => E::Const(a.min(b)),
            _ if self == rhs => self,
            _ => E::Min(Box::new(self), Box::new(rhs)),
        }
    }

    /// `max(self, rhs)`
    pub fn max(self, rhs: impl Into<IndexExpr>) -> IndexExpr {
        let rhs = rhs.into();
        match (self.as_const(), rhs.as_const()) {
            (Some(a), Some(b)) => E::Const(a.max(b)),
            _ if self == rhs => self,
            _ => E::Max(Box::new(self), Box::new(rhs)),
        }
    }

    /// `|self|`, written as `max(self, -self)`.
    pub fn abs(self) -> IndexExpr {
        let neg = -self.clone();
        self.max(neg)
    }

    /// `clamp(self, lo, hi)`.
    pub fn clamp(self, lo: i64, hi: i64) -> IndexExpr {
        self.max(lo).min(hi)
    }

    fn cmp(op: CmpOp, a: IndexExpr, b: IndexExpr) -> IndexExpr {
        match (a.as_const(), b.as_const()) {
            (Some(x), Some(y)) => E::Const(i64::from(match op {
                CmpOp::Lt => x < y,
                CmpOp::Le => x <= y,
                CmpOp::Eq => x == y,
                CmpOp::Ne => x != y,
            })),
            _ => E::Cmp(op, Box::new(a), Box::new(b)),
        }
    }

    /// `self < rhs` as 1/0.
    pub fn lt(self, rhs: impl Into<IndexExpr>) -> IndexExpr {
        Self::cmp(CmpOp::Lt, self, rhs.into())
    }

    /// `self <= rhs` as 1/0.
    pub fn le(self, rhs: impl Into<IndexExpr>) -> IndexExpr {
        Self::cmp(CmpOp::Le, self, rhs.into())
    }

    /// `self >= rhs` as 1/0.
    pub fn ge(self, rhs: impl Into<IndexExpr>) -> IndexExpr {
        Self::cmp(CmpOp::Le, rhs.into(), self)
    }

    /// `self > rhs` as 1/0.
    pub fn gt(self, rhs: impl Into<IndexExpr>) -> IndexExpr {
        Self::cmp(CmpOp::Lt, rhs.into(), self)
    }

    /// `self == rhs` as 1/0.
    pub fn eq_(self, rhs: impl Into<IndexExpr>) -> IndexExpr {
        Self::cmp(CmpOp::Eq, self, rhs.into())
    }

    /// `self != rhs` as 1/0.
    pub fn ne_(self, rhs: impl Into<IndexExpr>) -> IndexExpr {
        Self::cmp(CmpOp::Ne, self, rhs.into())
    }

    /// `if self != 0 { then } else { other }`.
    pub fn select(self, then: impl Into<IndexExpr>, other: impl Into<IndexExpr>) -> IndexExpr {
        let (then, other) = (then.into(), other.into());
        match self.as_const() {
            Some(0) => other,
            Some(_) => then,
            None if then == other => then,
            None => E::Select(Box::new(self), Box::new(then), Box::new(other)),
        }
    }

    /// Evaluates with the given loop indices. Indices the expression does not mention
    /// may be missing; a mentioned index beyond `idx` reads as 0, and so does every
    /// kernel argument.
    pub fn eval(&self, idx: &[i64]) -> i64 {
        self.eval_args(idx, &[])
    }

    /// Evaluates with loop indices and kernel arguments (missing ones read as 0).
    pub fn eval_args(&self, idx: &[i64], args: &[i64]) -> i64 {
        let ev = |e: &IndexExpr| e.eval_args(idx, args);
        match self {
            E::Const(v) => *v,
            E::Idx(k) => idx.get(*k).copied().unwrap_or(0),
            E::Arg(k) => args.get(*k).copied().unwrap_or(0),
            E::Add(a, b) => ev(a).wrapping_add(ev(b)),
            E::Sub(a, b) => ev(a).wrapping_sub(ev(b)),
            E::Mul(a, b) => ev(a).wrapping_mul(ev(b)),
            E::FloorDiv(a, b) => floor_div(ev(a), ev(b)),
            E::Mod(a, b) => floor_mod(ev(a), ev(b)),
            E::Min(a, b) => ev(a).min(ev(b)),
            E::Max(a, b) => ev(a).max(ev(b)),
            E::Cmp(op, a, b) => {
                let (x, y) = (ev(a), ev(b));
                i64::from(match op {
                    CmpOp::Lt => x < y,
                    CmpOp::Le => x <= y,
                    CmpOp::Eq => x == y,
                    CmpOp::Ne => x != y,
                })
            }
            E::Select(c, t, o) => {
                if ev(c) != 0 {
                    ev(t)
                } else {
                    ev(o)
                }
            }
        }
    }

    /// Replaces every constant whose magnitude exceeds 1 by a fresh kernel argument,
    /// appending its value to `args`. Constants 0, 1 and -1 stay: they shape the code
    /// (a unit stride, a zero offset), the others are sizes a new input may change.
    /// Small divisors (at most [`LITERAL_DIVISOR`]: strides, kernel sizes, dilations)
    /// stay too, so that the code divides by a constant (a multiply and a shift, no
    /// division instruction) and equal guards can be shared; so do small strides of
    /// an index (at most [`LITERAL_STRIDE`]: the step of a stride-2 window or phase),
    /// so that a vector loop knows its step.
    pub fn lift_constants(&self, args: &mut Vec<i64>) -> IndexExpr {
        let mut bin = |a: &IndexExpr, b: &IndexExpr, f: fn(Box<IndexExpr>, Box<IndexExpr>) -> IndexExpr| {
            let a = a.lift_constants(args);
            let b = b.lift_constants(args);
            f(Box::new(a), Box::new(b))
        };
        match self {
            E::Const(v) if v.unsigned_abs() > 1 => {
                args.push(*v);
                E::Arg(args.len() - 1)
            }
            E::Const(_) | E::Idx(_) | E::Arg(_) => self.clone(),
            E::Mul(a, b) if matches!((&**a, &**b), (E::Idx(_), E::Const(c)) | (E::Const(c), E::Idx(_)) if c.unsigned_abs() <= LITERAL_STRIDE as u64) => {
                self.clone()
            }
            E::Add(a, b) => bin(a, b, E::Add),
            E::Sub(a, b) => bin(a, b, E::Sub),
            E::Mul(a, b) => bin(a, b, E::Mul),
            E::FloorDiv(a, b) | E::Mod(a, b) if b.as_const().is_some_and(|d| (2..=LITERAL_DIVISOR).contains(&d)) => {
                let a = Box::new(a.lift_constants(args));
                match self {
                    E::FloorDiv(..) => E::FloorDiv(a, b.clone()),
                    _ => E::Mod(a, b.clone()),
                }
            }
            E::FloorDiv(a, b) => bin(a, b, E::FloorDiv),
            E::Mod(a, b) => bin(a, b, E::Mod),
            E::Min(a, b) => bin(a, b, E::Min),
            E::Max(a, b) => bin(a, b, E::Max),
            E::Cmp(op, a, b) => {
                let a = a.lift_constants(args);
                let b = b.lift_constants(args);
                E::Cmp(*op, Box::new(a), Box::new(b))
            }
            E::Select(c, t, o) => {
                let c = c.lift_constants(args);
                let t = t.lift_constants(args);
                let o = o.lift_constants(args);
                E::Select(Box::new(c), Box::new(t), Box::new(o))
            }
        }
    }

    /// Replaces every kernel argument `Arg(k)` by its value `args[k]`, keeping the
    /// tree's shape (so that [`IndexExpr::bounds`] can use the launch's sizes).
    /// Arguments beyond `args` are left as they are.
    pub fn bind_args(&self, args: &[i64]) -> IndexExpr {
        self.map_args(&|k| args.get(k).map_or(E::Arg(k), |&v| E::Const(v)))
    }

    /// Replaces every `Idx(k)` by `vars[k]` (composition of index maps).
    /// Indices beyond `vars` are left as they are.
    pub fn substitute(&self, vars: &[IndexExpr]) -> IndexExpr {
        let bin = |a: &IndexExpr, b: &IndexExpr| (a.substitute(vars), b.substitute(vars));
        match self {
            E::Const(v) => E::Const(*v),
            E::Arg(k) => E::Arg(*k),
            E::Idx(k) => vars.get(*k).cloned().unwrap_or(E::Idx(*k)),
            E::Add(a, b) => {
                let (a, b) = bin(a, b);
                a + b
            }
            E::Sub(a, b) => {
                let (a, b) = bin(a, b);
                a - b
            }
            E::Mul(a, b) => {
                let (a, b) = bin(a, b);
                a * b
            }
            E::FloorDiv(a, b) => {
                let (a, b) = bin(a, b);
                a.floor_div(b)
            }
            E::Mod(a, b) => {
                let (a, b) = bin(a, b);
                a.modulo(b)
            }
            E::Min(a, b) => {
                let (a, b) = bin(a, b);
                a.min(b)
            }
            E::Max(a, b) => {
                let (a, b) = bin(a, b);
                a.max(b)
            }
            E::Cmp(op, a, b) => {
                let (a, b) = bin(a, b);
                Self::cmp(*op, a, b)
            }
            E::Select(c, t, o) => c.substitute(vars).select(t.substitute(vars), o.substitute(vars)),
        }
    }

    /// The expression's direct operands (none for a constant, index or argument).
    pub fn operands(&self) -> impl Iterator<Item = &IndexExpr> {
        let ops: [Option<&IndexExpr>; 3] = match self {
            E::Const(_) | E::Idx(_) | E::Arg(_) => [None, None, None],
            E::Add(a, b)
            | E::Sub(a, b)
            | E::Mul(a, b)
            | E::FloorDiv(a, b)
            | E::Mod(a, b)
            | E::Min(a, b)
            | E::Max(a, b)
            | E::Cmp(_, a, b) => [Some(a), Some(b), None],
            E::Select(c, t, o) => [Some(c), Some(t), Some(o)],
        };
        ops.into_iter().flatten()
    }

    /// True when the expression mentions loop index `k`.
    pub fn mentions(&self, k: usize) -> bool {
        match self {
            E::Idx(i) => *i == k,
            _ => self.operands().any(|x| x.mentions(k)),
        }
    }

    /// The coefficient of loop index `k` when the expression is affine in it with a
    /// constant coefficient (`Some(0)` when it does not mention `k`).
    pub fn linear_coefficient(&self, k: usize) -> Option<i64> {
        if !self.mentions(k) {
            return Some(0);
        }
        match self {
            E::Idx(i) if *i == k => Some(1),
            E::Add(a, b) => Some(a.linear_coefficient(k)? + b.linear_coefficient(k)?),
            E::Sub(a, b) => Some(a.linear_coefficient(k)? - b.linear_coefficient(k)?),
            E::Mul(a, b) => match (a.as_const(), b.as_const()) {
                (Some(c), _) => Some(c * b.linear_coefficient(k)?),
                (_, Some(c)) => Some(c * a.linear_coefficient(k)?),
                _ => None,
            },
            _ => None,
        }
    }

    /// The largest loop index the expression mentions, if any.
    pub fn max_index(&self) -> Option<usize> {
        match self {
            E::Idx(k) => Some(*k),
            _ => self.operands().filter_map(IndexExpr::max_index).max(),
        }
    }

    /// An interval containing every value the expression takes when loop index `k`
    /// ranges over `ranges[k]` (inclusive), or `None` when it cannot tell (an index
    /// without a range, a kernel argument, division by a non-constant).
    pub fn bounds(&self, ranges: &[(i64, i64)]) -> Option<(i64, i64)> {
        let b = |e: &IndexExpr| e.bounds(ranges);
        Some(match self {
            E::Const(v) => (*v, *v),
            E::Idx(k) => *ranges.get(*k)?,
            E::Arg(_) => return None,
            E::Add(x, y) => {
                let ((a, b0), (c, d)) = (b(x)?, b(y)?);
                (a.checked_add(c)?, b0.checked_add(d)?)
            }
            E::Sub(x, y) => {
                let ((a, b0), (c, d)) = (b(x)?, b(y)?);
                (a.checked_sub(d)?, b0.checked_sub(c)?)
            }
            E::Mul(x, y) => {
                let ((a, b0), (c, d)) = (b(x)?, b(y)?);
                let p = [a.checked_mul(c)?, a.checked_mul(d)?, b0.checked_mul(c)?, b0.checked_mul(d)?];
                (*p.iter().min()?, *p.iter().max()?)
            }
            E::FloorDiv(x, y) => {
                let (a, b0) = b(x)?;
                let k = y.as_const().filter(|&k| k > 0)?;
                (floor_div(a, k), floor_div(b0, k))
            }
            E::Mod(x, y) => {
                let k = y.as_const().filter(|&k| k > 0)?;
                match b(x) {
                    Some((a, b0)) if a >= 0 && b0 < k => (a, b0),
                    _ => (0, k - 1),
                }
            }
            E::Min(x, y) => {
                let ((a, b0), (c, d)) = (b(x)?, b(y)?);
                (a.min(c), b0.min(d))
            }
            // |x| written as max(x, 0 - x): the interval of the absolute value (plain
            // interval arithmetic would keep a negative lower bound)
            E::Max(x, y) if is_negation(y, x) || is_negation(x, y) => {
                let (a, b0) = b(x)?;
                if a >= 0 {
                    (a, b0)
                } else if b0 <= 0 {
                    (b0.checked_neg()?, a.checked_neg()?)
                } else {
                    (0, a.checked_neg()?.max(b0))
                }
            }
            E::Max(x, y) => {
                let ((a, b0), (c, d)) = (b(x)?, b(y)?);
                (a.max(c), b0.max(d))
            }
            E::Cmp(..) => (0, 1),
            E::Select(_, t, o) => {
                let ((a, b0), (c, d)) = (b(t)?, b(o)?);
                (a.min(c), b0.max(d))
            }
        })
    }

    /// True when the expression provably lies in `[lo, hi]` over `ranges`.
    pub fn provably_within(&self, ranges: &[(i64, i64)], lo: i64, hi: i64) -> bool {
        self.bounds(ranges).is_some_and(|(a, b)| a >= lo && b <= hi)
    }

    /// Renumbers kernel arguments: `Arg(k)` becomes `Arg(k + by)`.
    pub fn shift_args(&self, by: usize) -> IndexExpr {
        self.map_args(&|k| E::Arg(k + by))
    }

    /// The expression with every `Arg(k)` replaced by `f(k)`, same shape otherwise.
    fn map_args(&self, f: &dyn Fn(usize) -> IndexExpr) -> IndexExpr {
        let s = |e: &IndexExpr| Box::new(e.map_args(f));
        match self {
            E::Arg(k) => f(*k),
            E::Const(_) | E::Idx(_) => self.clone(),
            E::Add(a, b) => E::Add(s(a), s(b)),
            E::Sub(a, b) => E::Sub(s(a), s(b)),
            E::Mul(a, b) => E::Mul(s(a), s(b)),
            E::FloorDiv(a, b) => E::FloorDiv(s(a), s(b)),
            E::Mod(a, b) => E::Mod(s(a), s(b)),
            E::Min(a, b) => E::Min(s(a), s(b)),
            E::Max(a, b) => E::Max(s(a), s(b)),
            E::Cmp(op, a, b) => E::Cmp(*op, s(a), s(b)),
            E::Select(c, t, o) => E::Select(s(c), s(t), s(o)),
        }
    }

    /// Number of nodes (a size measure used to keep compositions in check).
    pub fn node_count(&self) -> usize {
        match self {
            E::Const(_) | E::Idx(_) | E::Arg(_) => 1,
            E::Add(a, b)
            | E::Sub(a, b)
            | E::Mul(a, b)
            | E::FloorDiv(a, b)
            | E::Mod(a, b)
            | E::Min(a, b)
            | E::Max(a, b)
            | E::Cmp(_, a, b) => 1 + a.node_count() + b.node_count(),
            E::Select(c, t, o) => 1 + c.node_count() + t.node_count() + o.node_count(),
        }
    }
}

impl From<i64> for IndexExpr {
    fn from(v: i64) -> Self {
        E::Const(v)
    }
}

impl Add for IndexExpr {
    type Output = IndexExpr;
    fn add(self, rhs: IndexExpr) -> IndexExpr {
        match (self.as_const(), rhs.as_const()) {
            (Some(a), Some(b)) => E::Const(a.wrapping_add(b)),
            (Some(0), _) => rhs,
            (_, Some(0)) => self,
            // (x + a) + b  ->  x + (a + b)
            (None, Some(b)) => match self {
                E::Add(x, a) if a.as_const().is_some() => *x + E::Const(a.as_const().unwrap_or(0) + b),
                E::Sub(x, a) if a.as_const().is_some() => *x + E::Const(b - a.as_const().unwrap_or(0)),
                s => E::Add(Box::new(s), Box::new(rhs)),
            },
            _ => E::Add(Box::new(self), Box::new(rhs)),
        }
    }
}

impl Sub for IndexExpr {
    type Output = IndexExpr;
    fn sub(self, rhs: IndexExpr) -> IndexExpr {
        match (self.as_const(), rhs.as_const()) {
            (Some(a), Some(b)) => E::Const(a.wrapping_sub(b)),
            (_, Some(0)) => self,
            (None, Some(b)) => self + E::Const(-b),
            _ if self == rhs => E::Const(0),
            _ => E::Sub(Box::new(self), Box::new(rhs)),
        }
    }
}

impl Mul for IndexExpr {
    type Output = IndexExpr;
    fn mul(self, rhs: IndexExpr) -> IndexExpr {
        match (self.as_const(), rhs.as_const()) {
            (Some(a), Some(b)) => E::Const(a.wrapping_mul(b)),
            (Some(0), _) | (_, Some(0)) => E::Const(0),
            (Some(1), _) => rhs,
            (_, Some(1)) => self,
            _ => E::Mul(Box::new(self), Box::new(rhs)),
        }
    }
}

/// True when `n` is `0 - x`.
fn is_negation(n: &IndexExpr, x: &IndexExpr) -> bool {
    matches!(n, E::Sub(z, y) if z.as_const() == Some(0) && **y == *x)
}

impl Neg for IndexExpr {
    type Output = IndexExpr;
    fn neg(self) -> IndexExpr {
        E::Const(0) - self
    }
}

macro_rules! scalar_rhs {
    ($tr:ident, $m:ident) => {
        impl $tr<i64> for IndexExpr {
            type Output = IndexExpr;
            fn $m(self, rhs: i64) -> IndexExpr {
                self.$m(E::Const(rhs))
            }
        }
    };
}
scalar_rhs!(Add, add);
scalar_rhs!(Sub, sub);
scalar_rhs!(Mul, mul);

impl fmt::Display for IndexExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            E::Const(v) => write!(f, "{v}"),
            E::Idx(k) => write!(f, "i{k}"),
            E::Arg(k) => write!(f, "a{k}"),
            E::Add(a, b) => write!(f, "({a}+{b})"),
            E::Sub(a, b) => write!(f, "({a}-{b})"),
            E::Mul(a, b) => write!(f, "{a}*{b}"),
            E::FloorDiv(a, b) => write!(f, "floordiv({a},{b})"),
            E::Mod(a, b) => write!(f, "mod({a},{b})"),
            E::Min(a, b) => write!(f, "min({a},{b})"),
            E::Max(a, b) => write!(f, "max({a},{b})"),
            E::Cmp(op, a, b) => write!(f, "({a}{}{b})", op.symbol()),
            E::Select(c, t, o) => write!(f, "select({c},{t},{o})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_semantics() {
        assert_eq!(E::c(-7).floor_div(2).eval(&[]), -4);
        assert_eq!(E::c(-7).modulo(3).eval(&[]), 2);
        assert_eq!(E::c(7).modulo(-3).eval(&[]), -2);
        assert_eq!(E::idx(0).floor_div(0).eval(&[5]), 0);
    }

    #[test]
    fn folding_and_substitution() {
        let e = (E::idx(0) + 0) * 1 + 3 - 3;
        assert_eq!(e, E::idx(0));
        let f = E::idx(0) * 2 + 1;
        let g = f.substitute(&[E::idx(1) + 4]);
        assert_eq!(g.eval(&[0, 3]), 15);
        assert_eq!(g.max_index(), Some(1));
        assert_eq!(format!("{}", E::idx(0) * 2 + 1), "(i0*2+1)");
    }

    #[test]
    fn absolute_values_and_reflections_have_tight_bounds() {
        let r = [(0, 9)];
        let j = E::idx(0) - 1; // -1..=8
        assert_eq!(j.clone().abs().bounds(&r), Some((0, 8)));
        assert_eq!((E::idx(0) - 20).abs().bounds(&r), Some((11, 20)));
        assert_eq!((E::idx(0) + 3).abs().bounds(&r), Some((3, 12)));
        // reflection of the padded index range onto 0..=7 (size 8, pad 1 each side)
        let m = 7;
        let reflect = E::c(m) - (E::c(m) - j.abs()).abs();
        assert!(reflect.provably_within(&r, 0, m));
        for i in 0..=9 {
            let v = reflect.eval(&[i]);
            assert!((0..=m).contains(&v), "{i} -> {v}");
        }
    }

    #[test]
    fn interval_bounds() {
        let r = [(0, 9), (0, 2)];
        assert_eq!((E::idx(0) * 3 + E::idx(1)).bounds(&r), Some((0, 29)));
        assert_eq!((E::idx(0) - 2).bounds(&r), Some((-2, 7)));
        assert_eq!(E::idx(0).floor_div(4).bounds(&r), Some((0, 2)));
        assert_eq!((E::idx(0) - 5).modulo(4).bounds(&r), Some((0, 3)));
        assert!(E::idx(1).provably_within(&r, 0, 2));
        assert!(!(E::idx(1) + 1).provably_within(&r, 0, 2));
        assert_eq!(E::Arg(0).bounds(&r), None);
        let mut args = vec![];
        let lifted = (E::idx(0) * 7 + 1).lift_constants(&mut args);
        assert_eq!(args, vec![7]);
        assert_eq!(lifted.eval_args(&[2], &args), 15);
        assert_eq!(lifted.shift_args(3).eval_args(&[2], &[0, 0, 0, 7]), 15);
        // a stride-2 step stays literal, a larger one and a lone 2 do not
        let mut args = vec![];
        let lifted = (E::idx(0) * 2 + E::idx(1) * 3 + 2).lift_constants(&mut args);
        assert_eq!(args, vec![3, 2]);
        assert_eq!(lifted.eval_args(&[5, 1], &args), 15);
    }

    #[test]
    fn comparisons_and_select() {
        let e = E::idx(0).lt(3).select(E::idx(0), E::c(-1));
        assert_eq!(e.eval(&[2]), 2);
        assert_eq!(e.eval(&[3]), -1);
        assert_eq!(E::idx(0).ge(2).eval(&[2]), 1);
        assert_eq!(E::idx(0).gt(2).eval(&[2]), 0);
        assert_eq!(E::idx(0).clamp(0, 4).eval(&[9]), 4);
        assert_eq!((-E::idx(0)).abs().eval(&[-3]), 3);
    }
}
