//! Builders for the meta-operators. Each checks its inputs when the graph is built
//! and records a pending node; nothing is computed here.

use crate::device::Device;
use crate::error::{Error, Result};
use crate::var::Var;
use kernels::{BinaryOp, DType, ExternOp, IndexExpr, MetaOp, ReduceOp, UnaryOp};

pub(crate) fn same_device(op: &str, vars: &[&Var]) -> Result<Device> {
    let d = vars[0].device();
    for v in &vars[1..] {
        if v.device() != d {
            return Err(Error::Device {
                op: op.to_string(),
                msg: format!("inputs are on different devices ({d} and {}); move one with .to(device)", v.device()),
            });
        }
    }
    Ok(d)
}

/// Checks for [`Var::gather_indexed`] and [`Var::scatter_indexed`]: an integer
/// index, `dim` within the rank of `data` (the indexed value's shape), and an
/// indexing domain `domain` of that rank within `data` outside `dim`.
fn check_indexed(op: &str, data: &[usize], dim: usize, index: &Var, domain: &[usize]) -> Result<()> {
    if index.dtype().is_float() || index.dtype() == DType::Bool {
        return Err(Error::dtype(op, format!("the index must be an integer value, got {}", index.dtype())));
    }
    if dim >= data.len() {
        return Err(Error::Dim { op: op.into(), dim: dim as isize, ndim: data.len(), shape: data.to_vec() });
    }
    if domain.len() != data.len() {
        return Err(Error::shape(
            op,
            format!("the index of shape {domain:?} must have the rank of the indexed shape {data:?}"),
        ));
    }
    if let Some(k) = (0..data.len()).find(|&k| k != dim && domain[k] > data[k]) {
        return Err(Error::shape(
            op,
            format!("the index of shape {domain:?} exceeds the indexed shape {data:?} at dim {k}"),
        ));
    }
    Ok(())
}

fn check_exprs(op: &str, exprs: &[IndexExpr], conds: &[IndexExpr], want: usize, domain_rank: usize) -> Result<()> {
    if exprs.len() != want {
        return Err(Error::shape(op, format!("needs {want} index expressions (one per dim), got {}", exprs.len())));
    }
    for e in exprs.iter().chain(conds) {
        if let Some(k) = e.max_index() {
            if k >= domain_rank {
                return Err(Error::shape(
                    op,
                    format!("expression {e} uses loop index i{k} but the loop has only {domain_rank} dims"),
                ));
            }
        }
    }
    Ok(())
}

impl Var {
    /// Element-wise unary meta-op. Transcendental ops need a float input; `not`
    /// needs bool.
    pub fn unary(&self, op: UnaryOp) -> Result<Var> {
        let dt = self.dtype();
        if op.float_only() && !dt.is_float() {
            return Err(Error::dtype(
                op.name(),
                format!("expected a floating-point input, got {dt} with shape {:?} (cast it first)", self.shape()),
            ));
        }
        if op == UnaryOp::Not && dt != DType::Bool {
            return Err(Error::dtype("not", format!("expected a bool input, got {dt} (compare it first)")));
        }
        if op == UnaryOp::Neg && dt == DType::Bool {
            return Err(Error::dtype("neg", "negation is not defined for bool; use logical_not"));
        }
        Ok(self.unary_unchecked(op))
    }

    /// The unary node, for callers that have already made the dtype right.
    fn unary_unchecked(&self, op: UnaryOp) -> Var {
        Var::pending(self.shape().to_vec(), self.dtype(), self.device(), MetaOp::Unary(op), vec![self.clone()])
    }

    /// Element-wise binary meta-op on inputs of equal shape and dtype (use the
    /// broadcasting methods such as [`Var::try_add`] for NumPy semantics).
    pub fn binary(&self, op: BinaryOp, rhs: &Var) -> Result<Var> {
        let name = op.name();
        if self.shape() != rhs.shape() {
            return Err(Error::shape(
                name,
                format!("meta-op inputs must have equal shapes, got {:?} and {:?}", self.shape(), rhs.shape()),
            ));
        }
        if self.dtype() != rhs.dtype() {
            return Err(Error::dtype(
                name,
                format!("meta-op inputs must have equal dtypes, got {} and {}", self.dtype(), rhs.dtype()),
            ));
        }
        let dt = self.dtype();
        if op.is_logical() && dt.is_float() {
            return Err(Error::dtype(name, format!("defined for bool and integers, got {dt}")));
        }
        if dt == DType::Bool && !(op.is_logical() || op.is_comparison() || matches!(op, BinaryOp::Max | BinaryOp::Min))
        {
            return Err(Error::dtype(name, "arithmetic is not defined for bool; cast to an integer or float first"));
        }
        let device = same_device(name, &[self, rhs])?;
        let out = if op.is_comparison() { DType::Bool } else { dt };
        Ok(Var::pending(self.shape().to_vec(), out, device, MetaOp::Binary(op), vec![self.clone(), rhs.clone()]))
    }

    /// `where(cond, a, b)` on inputs of equal shape; `cond` is bool, `a` and `b` share
    /// a dtype.
    pub fn where_meta(cond: &Var, a: &Var, b: &Var) -> Result<Var> {
        if cond.dtype() != DType::Bool {
            return Err(Error::dtype("where", format!("condition must be bool, got {}", cond.dtype())));
        }
        if a.dtype() != b.dtype() {
            return Err(Error::dtype(
                "where",
                format!("branches must share a dtype, got {} and {}", a.dtype(), b.dtype()),
            ));
        }
        if cond.shape() != a.shape() || a.shape() != b.shape() {
            return Err(Error::shape(
                "where",
                format!(
                    "meta-op inputs must have equal shapes, got {:?}, {:?} and {:?}",
                    cond.shape(),
                    a.shape(),
                    b.shape()
                ),
            ));
        }
        let device = same_device("where", &[cond, a, b])?;
        Ok(Var::pending(a.shape().to_vec(), a.dtype(), device, MetaOp::Where, vec![cond.clone(), a.clone(), b.clone()]))
    }

    /// Converts to `dtype` (floats to integers truncate toward zero; to bool is `!= 0`).
    pub fn cast(&self, dtype: DType) -> Var {
        if dtype == self.dtype() {
            return self.clone();
        }
        Var::pending(self.shape().to_vec(), dtype, self.device(), MetaOp::Cast, vec![self.clone()])
    }

    /// Broadcast meta-op: output `shape`, where `new_dims` are the output dims the
    /// input lacks; the other output dims match the input dims in order (equal size,
    /// or input size 1 stretched).
    pub fn broadcast_to_dims(&self, shape: &[usize], new_dims: &[usize]) -> Result<Var> {
        let op = "broadcast_to";
        if new_dims.iter().any(|&d| d >= shape.len()) || shape.len() != self.ndim() + new_dims.len() {
            return Err(Error::shape(
                op,
                format!("cannot broadcast {:?} to {shape:?} with new dims {new_dims:?}", self.shape()),
            ));
        }
        let mut k = 0;
        for (d, &n) in shape.iter().enumerate() {
            if new_dims.contains(&d) {
                continue;
            }
            let m = self.shape()[k];
            if m != n && m != 1 {
                return Err(Error::shape(
                    op,
                    format!("cannot broadcast {:?} to {shape:?}: input dim {k} has size {m}, target {n}", self.shape()),
                ));
            }
            k += 1;
        }
        if new_dims.is_empty() && shape == self.shape() {
            return Ok(self.clone());
        }
        let mut new_dims = new_dims.to_vec();
        new_dims.sort_unstable();
        new_dims.dedup();
        Ok(Var::pending(
            shape.to_vec(),
            self.dtype(),
            self.device(),
            MetaOp::BroadcastTo { new_dims },
            vec![self.clone()],
        ))
    }

    /// NumPy-style broadcast to `shape` (new dims at the front).
    pub fn broadcast_as(&self, shape: &[usize]) -> Result<Var> {
        if shape.len() < self.ndim() {
            return Err(Error::shape(
                "broadcast_to",
                format!("cannot broadcast {:?} to the lower-rank shape {shape:?}", self.shape()),
            ));
        }
        let new: Vec<usize> = (0..shape.len() - self.ndim()).collect();
        self.broadcast_to_dims(shape, &new)
    }

    /// Reindex meta-op: `out[i] = self[exprs(i)]`, or `overflow` where an index is out
    /// of range or a condition is zero. One expression per input dim, over the output
    /// indices `i0..` of `shape`.
    pub fn reindex(&self, shape: &[usize], exprs: Vec<IndexExpr>, overflow: f64, conds: Vec<IndexExpr>) -> Result<Var> {
        check_exprs("reindex", &exprs, &conds, self.ndim(), shape.len())?;
        let op = MetaOp::Reindex { exprs, overflow, conds };
        Ok(Var::pending(shape.to_vec(), self.dtype(), self.device(), op, vec![self.clone()]))
    }

    /// Reduce meta-op over `axes` (already normalised, any order).
    pub fn reduce(&self, op: ReduceOp, axes: &[usize], keepdims: bool) -> Result<Var> {
        let name = op.name();
        if self.dtype() == DType::Bool && matches!(op, ReduceOp::Sum | ReduceOp::Prod) {
            return Err(Error::dtype(name, "cannot sum or multiply bool values; cast to an integer first"));
        }
        let mut axes = axes.to_vec();
        axes.sort_unstable();
        axes.dedup();
        if let Some(&a) = axes.iter().find(|&&a| a >= self.ndim()) {
            return Err(Error::Dim {
                op: name.into(),
                dim: a as isize,
                ndim: self.ndim(),
                shape: self.shape().to_vec(),
            });
        }
        let shape: Vec<usize> = if keepdims {
            self.shape().iter().enumerate().map(|(d, &n)| if axes.contains(&d) { 1 } else { n }).collect()
        } else {
            self.shape().iter().enumerate().filter(|(d, _)| !axes.contains(d)).map(|(_, &n)| n).collect()
        };
        if axes.is_empty() {
            return Ok(self.clone());
        }
        Ok(Var::pending(shape, self.dtype(), self.device(), MetaOp::Reduce { op, axes, keepdims }, vec![self.clone()]))
    }

    /// Scatter-reduce meta-op into a new value of `shape`: each input element whose
    /// `exprs` (one per output dim, over input indices) fall in range and whose
    /// conditions hold is combined with `op`; untouched outputs hold `op`'s identity.
    pub fn reindex_reduce(
        &self,
        op: ReduceOp,
        shape: &[usize],
        exprs: Vec<IndexExpr>,
        conds: Vec<IndexExpr>,
    ) -> Result<Var> {
        check_exprs("reindex_reduce", &exprs, &conds, shape.len(), self.ndim())?;
        if self.dtype() == DType::Bool && matches!(op, ReduceOp::Sum | ReduceOp::Prod) {
            return Err(Error::dtype("reindex_reduce", "cannot sum or multiply bool values; cast to an integer first"));
        }
        let op = MetaOp::ReindexReduce { op, exprs, conds };
        Ok(Var::pending(shape.to_vec(), self.dtype(), self.device(), op, vec![self.clone()]))
    }

    /// Gather meta-op (`torch.gather`): `out[i] = self[i with i_dim := index[i]]`,
    /// of the index's shape, 0 where the index lies outside `0..self.shape[dim]`.
    /// `index` is an integer value of the same rank whose other dims are at most
    /// this value's. `dim` is already normalised.
    pub fn gather_indexed(&self, dim: usize, index: &Var) -> Result<Var> {
        check_indexed("gather", self.shape(), dim, index, index.shape())?;
        let device = same_device("gather", &[self, index])?;
        let op = MetaOp::Gather { dim };
        Ok(Var::pending(index.shape().to_vec(), self.dtype(), device, op, vec![self.clone(), index.clone()]))
    }

    /// Scatter meta-op (`torch.scatter_reduce` onto `op`'s identity): a new value of
    /// `shape` where every element `self[i]` whose `index[i]` lies in
    /// `0..shape[dim]` is combined with `op` into position `i with i_dim :=
    /// index[i]`; untouched positions hold the identity. `index` is an integer
    /// value of this value's shape, whose dims other than `dim` are at most
    /// `shape`'s. `dim` is already normalised.
    pub fn scatter_indexed(&self, op: ReduceOp, dim: usize, index: &Var, shape: &[usize]) -> Result<Var> {
        if index.shape() != self.shape() {
            return Err(Error::shape(
                "scatter",
                format!("the index of shape {:?} must have the source's shape {:?}", index.shape(), self.shape()),
            ));
        }
        check_indexed("scatter", shape, dim, index, self.shape())?;
        if self.dtype() == DType::Bool && matches!(op, ReduceOp::Sum | ReduceOp::Prod) {
            return Err(Error::dtype("scatter", "cannot sum or multiply bool values; cast to an integer first"));
        }
        let device = same_device("scatter", &[self, index])?;
        let meta = MetaOp::Scatter { op, dim };
        Ok(Var::pending(shape.to_vec(), self.dtype(), device, meta, vec![self.clone(), index.clone()]))
    }

    /// Same data with a new shape of the same number of elements. One dim may be -1.
    pub fn reshape(&self, shape: &[isize]) -> Result<Var> {
        let n = crate::shape::numel(self.shape()).ok_or_else(|| {
            Error::shape(
                "reshape",
                format!("a value of shape {:?} has more elements than a usize counts", self.shape()),
            )
        })?;
        let known = shape.iter().filter(|&&d| d >= 0).try_fold(1usize, |a, &d| a.checked_mul(d as usize)).unwrap_or(0);
        let holes = shape.iter().filter(|&&d| d == -1).count();
        let bad = || {
            Error::shape(
                "reshape",
                format!("shape {shape:?} is invalid for a value of shape {:?} ({n} elements)", self.shape()),
            )
        };
        if holes > 1 || shape.iter().any(|&d| d < -1) {
            return Err(bad());
        }
        let new: Vec<usize> = if holes == 1 {
            if known == 0 || !n.is_multiple_of(known) {
                return Err(bad());
            }
            shape.iter().map(|&d| if d == -1 { n / known } else { d as usize }).collect()
        } else {
            shape.iter().map(|&d| d as usize).collect()
        };
        if crate::shape::numel(&new) != Some(n) {
            return Err(bad());
        }
        if new == self.shape() {
            return Ok(self.clone());
        }
        Ok(Var::pending(new, self.dtype(), self.device(), MetaOp::Reshape, vec![self.clone()]))
    }

    /// The same value, always computed into memory when realised: a fusion boundary
    /// for values that a consumer re-reads many times (an im2col reads every pixel
    /// kh x kw times), like PyTorch's `.contiguous()`. Free on realised values.
    pub fn materialize(&self) -> Var {
        if self.is_realized() {
            return self.clone();
        }
        Var::pending(self.shape().to_vec(), self.dtype(), self.device(), MetaOp::Materialize, vec![self.clone()])
    }

    /// A library call ([`ExternOp`]) on `inputs`, which share a float dtype and a
    /// device. It is computed from materialised inputs and has its own gradient rule.
    pub fn extern_op(op: ExternOp, inputs: &[Var]) -> Result<Var> {
        let name = op.name();
        let Some(first) = inputs.first() else {
            return Err(Error::argument(name, "needs at least one input"));
        };
        let dtype = first.dtype();
        if let Some(x) = inputs.iter().find(|x| x.dtype() != dtype || !op.accepts(x.dtype())) {
            let what = if op.accepts(DType::I64) { "a dtype" } else { "a floating-point dtype" };
            return Err(Error::dtype(name, format!("inputs must share {what}, got {dtype} and {}", x.dtype())));
        }
        let refs: Vec<&Var> = inputs.iter().collect();
        let device = same_device(name, &refs)?;
        let shapes: Vec<&[usize]> = inputs.iter().map(Var::shape).collect();
        let shape = op.out_shape(&shapes).map_err(|m| Error::shape(name, m))?;
        Ok(Var::pending(shape, op.out_dtype(dtype), device, MetaOp::Extern(op), inputs.to_vec()))
    }

    /// `-self` (an error for bool).
    pub fn try_neg(&self) -> Result<Var> {
        self.unary(UnaryOp::Neg)
    }
}

macro_rules! unary_methods {
    ($($name:ident => $op:ident),* $(,)?) => {
        impl Var {
            $(
                #[doc = concat!("Element-wise `", stringify!($name), "`; integer inputs are promoted to f32 where the op needs a float.")]
                pub fn $name(&self) -> Var {
                    let x = if UnaryOp::$op.float_only() && !self.dtype().is_float() { self.cast(DType::F32) } else { self.clone() };
                    x.unary_unchecked(UnaryOp::$op)
                }
            )*
        }
    };
}

unary_methods!(
    exp => Exp, log => Log, sqrt => Sqrt, rsqrt => Rsqrt, recip => Recip, sin => Sin, cos => Cos,
    tanh => Tanh, sigmoid => Sigmoid, erf => Erf,
);

impl Var {
    /// `|x|` (defined for every dtype but bool, where it is the identity).
    pub fn abs(&self) -> Var {
        if self.dtype() == DType::Bool {
            return self.clone();
        }
        self.unary_unchecked(UnaryOp::Abs)
    }

    /// Round toward negative infinity (identity on integers).
    pub fn floor(&self) -> Var {
        if !self.dtype().is_float() {
            return self.clone();
        }
        self.unary_unchecked(UnaryOp::Floor)
    }

    /// Round half to even, as `torch.round` (identity on integers).
    pub fn round(&self) -> Var {
        if !self.dtype().is_float() {
            return self.clone();
        }
        self.unary_unchecked(UnaryOp::Round)
    }

    /// Logical not (any dtype: true where the value is zero).
    pub fn logical_not(&self) -> Var {
        self.cast(DType::Bool).unary_unchecked(UnaryOp::Not)
    }
}
