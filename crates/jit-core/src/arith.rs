//! Broadcasting arithmetic with PyTorch's type promotion, scalar operands and the
//! `std::ops` operators.
//!
//! The fallible methods (`try_add`, `try_mul`, `pow`, `lt`, ...) return a [`Result`].
//! The operators (`&a + &b`, `x * 0.5 + 1.0`) are a convenience that panics with the
//! same message when the shapes cannot be broadcast; use the methods where shapes
//! come from outside the program. (`add`, `sub`, `mul`, `div` and `neg` are the
//! operator traits' names, hence the `try_` prefix of the fallible forms.)

use crate::error::{Error, Result};
use crate::shape::broadcast_shapes;
use crate::var::Var;
use kernels::dtype::DTypeKind;
use kernels::{BinaryOp, DType};

/// The right-hand side of a binary op: a value or a Rust scalar.
#[derive(Clone)]
pub enum Operand {
    /// A graph value.
    Var(Var),
    /// A float scalar (does not promote a float value's dtype).
    Float(f64),
    /// An integer scalar (does not promote an integer value's dtype).
    Int(i64),
    /// A bool scalar.
    Bool(bool),
}

impl From<Var> for Operand {
    fn from(v: Var) -> Self {
        Operand::Var(v)
    }
}
impl From<&Var> for Operand {
    fn from(v: &Var) -> Self {
        Operand::Var(v.clone())
    }
}
impl From<f64> for Operand {
    fn from(v: f64) -> Self {
        Operand::Float(v)
    }
}
impl From<f32> for Operand {
    fn from(v: f32) -> Self {
        Operand::Float(f64::from(v))
    }
}
impl From<i64> for Operand {
    fn from(v: i64) -> Self {
        Operand::Int(v)
    }
}
impl From<i32> for Operand {
    fn from(v: i32) -> Self {
        Operand::Int(i64::from(v))
    }
}
impl From<bool> for Operand {
    fn from(v: bool) -> Self {
        Operand::Bool(v)
    }
}

impl Operand {
    /// PyTorch's result dtype of `x op self`: a scalar only promotes across kinds
    /// (int tensor * 0.5 is f32; f16 tensor * 0.5 stays f16).
    fn result_dtype(&self, x: DType) -> DType {
        let (kind, default) = match self {
            Operand::Var(v) => return DType::promote(x, v.dtype()),
            Operand::Float(_) => (DTypeKind::Float, DType::F32),
            Operand::Int(_) => (DTypeKind::Int, DType::I64),
            Operand::Bool(_) => (DTypeKind::Bool, DType::Bool),
        };
        if kind > x.kind() {
            default
        } else {
            x
        }
    }

    /// Materialises the operand as a value of `dtype` (scalars become rank-0 `full`).
    fn to_var(&self, dtype: DType, like: &Var) -> Var {
        let value = match self {
            Operand::Var(v) => return v.cast(dtype),
            Operand::Float(f) => *f,
            Operand::Int(i) => *i as f64,
            Operand::Bool(b) => f64::from(u8::from(*b)),
        };
        let full = Var::full(&[], value, dtype);
        if like.device() == full.device() {
            full
        } else {
            Var::pending(vec![], dtype, like.device(), kernels::MetaOp::Full { value }, vec![])
        }
    }
}

impl Var {
    /// NumPy-broadcast binary op with PyTorch promotion, computing in `compute`
    /// (derived from the operands when `None`).
    fn broadcast_binary(&self, op: BinaryOp, rhs: Operand, compute: Option<DType>) -> Result<Var> {
        let dt = compute.unwrap_or_else(|| rhs.result_dtype(self.dtype()));
        let a = self.cast(dt);
        let b = rhs.to_var(dt, self);
        let shape = broadcast_shapes(op.name(), a.shape(), b.shape())?;
        let a = a.broadcast_as(&shape)?;
        let b = b.broadcast_as(&shape)?;
        a.binary(op, &b)
    }

    /// `self + rhs` with broadcasting.
    pub fn try_add(&self, rhs: impl Into<Operand>) -> Result<Var> {
        self.arith(BinaryOp::Add, rhs.into())
    }

    /// `self - rhs` with broadcasting.
    pub fn try_sub(&self, rhs: impl Into<Operand>) -> Result<Var> {
        self.arith(BinaryOp::Sub, rhs.into())
    }

    /// `self * rhs` with broadcasting.
    pub fn try_mul(&self, rhs: impl Into<Operand>) -> Result<Var> {
        self.arith(BinaryOp::Mul, rhs.into())
    }

    /// True division with broadcasting (integers are promoted to f32, as in PyTorch).
    pub fn try_div(&self, rhs: impl Into<Operand>) -> Result<Var> {
        let rhs = rhs.into();
        let dt = rhs.result_dtype(self.dtype());
        let dt = if dt.is_float() { dt } else { DType::F32 };
        self.broadcast_binary(BinaryOp::Div, rhs, Some(dt))
    }

    /// Floor division (`torch.floor_divide`): `floor(a / b)`.
    pub fn floor_divide(&self, rhs: impl Into<Operand>) -> Result<Var> {
        let rhs = rhs.into();
        let dt = rhs.result_dtype(self.dtype());
        if dt.is_float() {
            Ok(self.broadcast_binary(BinaryOp::Div, rhs, Some(dt))?.floor())
        } else {
            self.arith(BinaryOp::Div, rhs)
        }
    }

    /// Remainder with the sign of the divisor (`torch.remainder`).
    pub fn remainder(&self, rhs: impl Into<Operand>) -> Result<Var> {
        self.arith(BinaryOp::Mod, rhs.into())
    }

    /// `self ^ rhs` with broadcasting. A float tensor to a scalar power of 2, 3, 0.5,
    /// -0.5, -1 or -2 is computed as PyTorch's kernels compute it: products, `sqrt`,
    /// `rsqrt` or a reciprocal (the same values, and no general `pow` per element).
    pub fn pow(&self, rhs: impl Into<Operand>) -> Result<Var> {
        let rhs = rhs.into();
        let e = match rhs {
            Operand::Float(e) => Some(e),
            Operand::Int(e) => Some(e as f64),
            _ => None,
        };
        if let Some(e) = e.filter(|_| self.dtype().is_float()) {
            let square = || self.try_mul(self);
            match e {
                2.0 => return square(),
                3.0 => return square()?.try_mul(self),
                0.5 => return Ok(self.sqrt()),
                -0.5 => return Ok(self.rsqrt()),
                -1.0 => return Ok(self.recip()),
                -2.0 => return Ok(square()?.recip()),
                _ => {}
            }
        }
        self.arith(BinaryOp::Pow, rhs)
    }

    /// Element-wise maximum (NaN-propagating), with broadcasting.
    pub fn maximum(&self, rhs: impl Into<Operand>) -> Result<Var> {
        self.broadcast_binary(BinaryOp::Max, rhs.into(), None)
    }

    /// Element-wise minimum (NaN-propagating), with broadcasting.
    pub fn minimum(&self, rhs: impl Into<Operand>) -> Result<Var> {
        self.broadcast_binary(BinaryOp::Min, rhs.into(), None)
    }

    fn arith(&self, op: BinaryOp, rhs: Operand) -> Result<Var> {
        let dt = rhs.result_dtype(self.dtype());
        // Arithmetic on bool promotes to i64 (PyTorch gives an integer for True + True).
        let dt = if dt == DType::Bool { DType::I64 } else { dt };
        self.broadcast_binary(op, rhs, Some(dt))
    }

    fn compare(&self, op: BinaryOp, rhs: Operand) -> Result<Var> {
        self.broadcast_binary(op, rhs, None)
    }

    /// `self == rhs` (bool), with broadcasting.
    pub fn eq(&self, rhs: impl Into<Operand>) -> Result<Var> {
        self.compare(BinaryOp::Eq, rhs.into())
    }
    /// `self != rhs` (bool), with broadcasting.
    pub fn ne(&self, rhs: impl Into<Operand>) -> Result<Var> {
        self.compare(BinaryOp::Ne, rhs.into())
    }
    /// `self < rhs` (bool), with broadcasting.
    pub fn lt(&self, rhs: impl Into<Operand>) -> Result<Var> {
        self.compare(BinaryOp::Lt, rhs.into())
    }
    /// `self <= rhs` (bool), with broadcasting.
    pub fn le(&self, rhs: impl Into<Operand>) -> Result<Var> {
        self.compare(BinaryOp::Le, rhs.into())
    }
    /// `self > rhs` (bool), with broadcasting.
    pub fn gt(&self, rhs: impl Into<Operand>) -> Result<Var> {
        self.compare(BinaryOp::Gt, rhs.into())
    }
    /// `self >= rhs` (bool), with broadcasting.
    pub fn ge(&self, rhs: impl Into<Operand>) -> Result<Var> {
        self.compare(BinaryOp::Ge, rhs.into())
    }

    /// Logical and of the truth values (any dtype), with broadcasting.
    pub fn logical_and(&self, rhs: impl Into<Operand>) -> Result<Var> {
        self.broadcast_binary(BinaryOp::And, rhs.into(), Some(DType::Bool))
    }

    /// Logical or of the truth values (any dtype), with broadcasting.
    pub fn logical_or(&self, rhs: impl Into<Operand>) -> Result<Var> {
        self.broadcast_binary(BinaryOp::Or, rhs.into(), Some(DType::Bool))
    }

    /// `where(cond, a, b)` with broadcasting of all three and promotion of `a`, `b`.
    /// `cond` of any dtype is read as `!= 0`.
    pub fn where_(cond: &Var, a: impl Into<Operand>, b: impl Into<Operand>) -> Result<Var> {
        let (a, b) = (a.into(), b.into());
        let dt = match (&a, &b) {
            (Operand::Var(x), _) => b.result_dtype(x.dtype()),
            (_, Operand::Var(y)) => a.result_dtype(y.dtype()),
            (Operand::Float(_), _) | (_, Operand::Float(_)) => DType::F32,
            (Operand::Int(_), _) | (_, Operand::Int(_)) => DType::I64,
            _ => DType::Bool,
        };
        let c = cond.cast(DType::Bool);
        let a = a.to_var(dt, cond);
        let b = b.to_var(dt, cond);
        let shape = broadcast_shapes("where", c.shape(), a.shape())?;
        let shape = broadcast_shapes("where", &shape, b.shape())?;
        Var::where_meta(&c.broadcast_as(&shape)?, &a.broadcast_as(&shape)?, &b.broadcast_as(&shape)?)
    }
}

fn or_panic(r: Result<Var>, what: &str) -> Var {
    r.unwrap_or_else(|e: Error| panic!("{e} (the `{what}` operator panics; call the method to get a Result)"))
}

macro_rules! operator {
    ($tr:ident, $m:ident, $tm:ident, $sym:literal) => {
        impl<R: Into<Operand>> std::ops::$tr<R> for Var {
            type Output = Var;
            fn $m(self, rhs: R) -> Var {
                or_panic(Var::$tm(&self, rhs), $sym)
            }
        }
        impl<R: Into<Operand>> std::ops::$tr<R> for &Var {
            type Output = Var;
            fn $m(self, rhs: R) -> Var {
                or_panic(Var::$tm(self, rhs), $sym)
            }
        }
        operator!(@scalar_lhs $tr, $m, $tm, $sym, f64, i64);
    };
    (@scalar_lhs $tr:ident, $m:ident, $tm:ident, $sym:literal, $($t:ty),*) => {
        $(
            impl std::ops::$tr<Var> for $t {
                type Output = Var;
                fn $m(self, rhs: Var) -> Var {
                    std::ops::$tr::$m(self, &rhs)
                }
            }
            impl std::ops::$tr<&Var> for $t {
                type Output = Var;
                fn $m(self, rhs: &Var) -> Var {
                    let dt = Operand::from(self).result_dtype(rhs.dtype());
                    let lhs = Operand::from(self).to_var(dt, rhs);
                    or_panic(Var::$tm(&lhs, rhs), $sym)
                }
            }
        )*
    };
}

operator!(Add, add, try_add, "+");
operator!(Sub, sub, try_sub, "-");
operator!(Mul, mul, try_mul, "*");
operator!(Div, div, try_div, "/");

impl std::ops::Neg for Var {
    type Output = Var;
    fn neg(self) -> Var {
        or_panic(Var::try_neg(&self), "-")
    }
}

impl std::ops::Neg for &Var {
    type Output = Var;
    fn neg(self) -> Var {
        or_panic(Var::try_neg(self), "-")
    }
}
